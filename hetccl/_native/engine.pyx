# cython: language_level=3
"""The Engine: one communicator's links, settings, scratch buffer and lifecycle.

An Engine owns one Link per peer (link.pxd), each of a link kind (links.pyx: shm FIFOs, a TCP
socket, a UCP stream, c2c) that a transport attached. Schedules (ring.pyx, doubling.pyx,
binomial.pyx, halving.pyx, trees.pyx, bruck.pyx, linear.pyx; chosen by dispatch.pyx) run whole
collectives over those links without the GIL, driven by progress.pyx; this module holds what they
share and the rules of entering and leaving.

Lifecycle (life.pxd): ``interrupt()`` may be called from any thread at any time; every loop of
the native core reads the interrupt word and every sleep wakes at once, so running schedules fail
within milliseconds and later ones at entry. ``close()`` interrupts, waits until no schedule is
inside, and only then unmaps the FIFOs and windows and closes what it was given to close (the
pairs' sockets). Errors and the exceptions they become: failure.pyx.
"""
from libc.stdint cimport uint32_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memset

from hetccl._native.c2c cimport C2C_OFF, C2C_CMA, C2C_WINDOW
from hetccl._native.failure cimport (Failure, failure_init, failure_free, enter, interrupt_error as
                                     _interrupt_error, check_usable as _check_usable, raise_error as
                                     _raise_error)
from hetccl._native.life cimport *
from hetccl._native.fifo cimport LINE_SLOTS, LINE_PAYLOAD
from hetccl._native.link cimport Link, LinkKind
from hetccl._native.links cimport kind_named, unlinked

import logging as _logging
import socket as _socket

from hetccl.errors import InvalidUsage

_log = _logging.getLogger("hetccl")

# Engine.interrupt reasons
ABORTED = LIFE_ABORTED          # abort() / close(): operations raise CommAborted
REVOKED = LIFE_REVOKED          # the communicator was revoked: CommRevoked
PEER_LOST = LIFE_PEER_LOST      # a peer was declared dead (peer=its rank): PeerLostError

cdef enum:
    ST_OPEN = 0
    ST_CLOSING = 1              # close() is waiting for the schedules inside to leave
    ST_RELEASED = 2             # everything unmapped and closed
    ST_LEAKED = 3               # a schedule stayed inside past the bound: resources kept for good

cdef char _empty[1]             # scratch(0): a valid pointer to no bytes


cdef class Engine:
    """Links to every peer, and what the schedules share; see the module docstring."""

    def __cinit__(self, int rank, int size):
        self.fail.life.efd = -1         # __dealloc__ runs even if this raises: no eventfd yet
        if not 0 <= rank < size:
            raise ValueError(f"an engine is rank 0..size-1 of size >= 1, not rank {rank} of {size}")
        self.rank = rank
        self.size = size
        self.links = <Link*>calloc(size, sizeof(Link))
        if self.links == NULL:
            raise MemoryError()
        for i in range(size):
            self.links[i].peer = i
            self.links[i].fd = -1
            self.links[i].kind = unlinked()
        self.seq = 0
        self.spin_s = 20e-6
        self.yield_s = 500e-6
        self.handover_bytes = 0
        self.hold_s = 20e-6
        self.hold_gil = False
        self.held = False
        self.released = NULL
        self.gil_releases = 0
        self.futex_sleeps = 0
        self.poll_sleeps = 0
        self.nt_threshold = 16 << 20
        self.chunk = 256 << 10
        self.lines = True
        self.attached = []
        self.scratch_buf = NULL
        self.scratch_len = 0
        self.c2c_epoch = 0
        self.c2c_round = 0
        self.state = ST_OPEN
        self.kept = []
        failure_init(&self.fail)

    def __dealloc__(self):
        # Schedules hold a reference to the engine, so none can be inside now; a C caller that kept
        # a bare pointer and is still inside would make freeing unsafe: then leak instead.
        if hc_life_inuse(&self.fail.life):
            return
        hc_life_close_efd(&self.fail.life)
        failure_free(&self.fail)
        if self.scratch_buf != NULL:
            free(self.scratch_buf)
        if self.links != NULL:
            for i in range(self.size):
                self.links[i].kind.close(&self.links[i])
            free(self.links)
            self.links = NULL

    # ------------------------------------------------------------------ links (set-up, not hot)

    def attach(self, int peer, str kind, int fd, *args):
        """Link `peer` by a link kind of links.KINDS over the pair's socket fd (connected,
        authenticated, non-blocking), with the kind's arguments (docs/design.md). Links are attached
        before the engine's first call."""
        cdef Link* L
        cdef const LinkKind* k = kind_named(kind)
        if not 0 <= peer < self.size or peer == self.rank:
            raise ValueError(f"peer {peer} is not another rank of this engine (0..{self.size - 1})")
        if self.seq or self.state != ST_OPEN:
            raise InvalidUsage("links are attached to an engine before its first call")
        L = &self.links[peer]
        if L.kind != unlinked():
            raise InvalidUsage(f"rank {peer} is linked already (by {L.kind.name.decode()})")
        L.fd = fd
        keep = k.attach(L, args, True)
        L.kind = k
        if keep is not None:
            self.attached.append(keep)

    def link_kind(self, int peer):
        """The name of the link kind to peer ("shm", "tcp", "rdma", "c2c"), "self" or "none"."""
        if self.links[peer].kind != unlinked():
            return self.links[peer].kind.name.decode()
        return "self" if peer == self.rank else "none"

    def c2c_mode(self, int peer):
        """'cma', 'window' or None (peer not linked by c2c)."""
        return {C2C_CMA: "cma", C2C_WINDOW: "window"}.get(self.links[peer].c2c.mode)

    def all_c2c(self):
        """True when every peer is linked by c2c (the single-copy schedules then apply)."""
        return self.c2c_everywhere()

    cdef bint c2c_everywhere(self) noexcept nogil:
        cdef int i
        if self.size < 2:
            return False
        for i in range(self.size):
            if i != self.rank and self.links[i].c2c.mode == C2C_OFF:
                return False
        return True

    cdef char* scratch(self, size_t n) noexcept nogil:
        """A persistent, pre-faulted work buffer of at least n bytes (grown, never per call)."""
        cdef char* p
        if n > self.scratch_len:
            p = <char*>realloc(self.scratch_buf, n)
            if p == NULL:
                return NULL
            memset(p + self.scratch_len, 0, n - self.scratch_len)
            self.scratch_buf = p
            self.scratch_len = n
        return self.scratch_buf if self.scratch_buf != NULL else _empty

    # ------------------------------------------------------------------ lifecycle (life.pxd)

    def interrupt(self, int reason, int peer=-1):
        """Make every running and later schedule of this engine fail: ABORTED -> CommAborted,
        REVOKED -> CommRevoked, PEER_LOST -> PeerLostError naming `peer`. Any thread, any number of
        times (the first reason wins); sleepers wake within milliseconds. Links stay open (close()
        or the caller decides about them). Returns True if this call set the reason."""
        cdef int first
        if reason != LIFE_ABORTED and reason != LIFE_REVOKED and reason != LIFE_PEER_LOST:
            raise ValueError(f"interrupt reason must be ABORTED, REVOKED or PEER_LOST, not {reason}")
        if reason == LIFE_PEER_LOST and not 0 <= peer < self.size:
            raise ValueError(f"PEER_LOST needs the lost rank (0..{self.size - 1}), got {peer}")
        with nogil:
            first = self.interrupt_c(reason, peer)
        return bool(first)

    cdef int interrupt_c(self, int reason, int peer) noexcept nogil:
        """interrupt() for Cython callers holding no GIL (they must keep the engine alive)."""
        return hc_life_interrupt(&self.fail.life, reason, peer)

    cdef bint interrupted(self) noexcept nogil:
        return hc_life_intr(&self.fail.life) != 0

    @property
    def interruption(self):
        """None, or (reason, peer) of the interrupt (peer -1 unless PEER_LOST)."""
        cdef uint32_t w = hc_life_intr(&self.fail.life)
        return None if w == 0 else (life_reason(w), life_peer(w))

    @property
    def inside(self):
        """Entries inside right now (schedules; for tests and diagnostics)."""
        return hc_life_inuse(&self.fail.life)

    def close(self, double timeout=5.0, keep=()):
        """Interrupt (ABORTED), wait up to `timeout` s until no schedule is inside, then unmap the
        FIFOs and windows, close the UCX links and the eventfd, and close every object of `keep`
        (the pairs' sockets: their fds must not be reused while a schedule may still poll them).

        Returns True if this call released them. Idempotent and safe from any thread: a call while
        another is waiting returns False at once (its `keep` is closed with the first's). If a
        schedule is still inside after the bound, nothing is released (kept for the life of the
        process, logged once) rather than pulled from under it."""
        cdef int drained
        self.kept.extend(keep)
        if self.state != ST_OPEN:
            if self.state == ST_RELEASED:
                self._release_kept()
            else:
                self._hang_up()
            return False
        self.state = ST_CLOSING
        self.fail.broken = True
        with nogil:
            hc_life_interrupt(&self.fail.life, LIFE_ABORTED, -1)
            hc_life_closing(&self.fail.life)
        self._hang_up()
        with nogil:
            drained = hc_life_drain(&self.fail.life, timeout)
        if not drained:
            self.state = ST_LEAKED
            _log.warning("rank %d: a schedule is still running %g s after the communicator was "
                         "closed; its shared memory, sockets and UCX links are kept (not released) "
                         "for the life of the process", self.rank, timeout)
            return False
        for i in range(self.size):
            self.links[i].kind.close(&self.links[i])
            self.links[i].kind = unlinked()
            self.links[i].closed = 1
            self.links[i].c2c.mode = C2C_OFF
        attached, self.attached = self.attached, []
        for seg in attached:
            try:
                seg.close()
            except Exception as e:          # noqa: BLE001 - best effort, like the sockets below
                _log.debug("close: %s", e)
        hc_life_close_efd(&self.fail.life)
        self.state = ST_RELEASED
        self._release_kept()
        return True

    def _hang_up(self):
        """Shut the kept sockets down (the fds stay valid, so a schedule still polling them is
        harmless): peers see this rank go at once, even if close() then has to keep them."""
        for k in self.kept:
            if isinstance(k, _socket.socket):
                try:
                    k.shutdown(_socket.SHUT_RDWR)
                except OSError:
                    pass

    def _release_kept(self):
        kept, self.kept = self.kept, []
        for k in kept:
            try:
                k.close()
            except OSError:
                pass

    @property
    def released(self):
        """True once close() released every resource."""
        return self.state == ST_RELEASED

    cdef int begin(self, str what, size_t out_bytes) except -1:
        enter(&self.fail, self.rank, what)
        self.seq += 1
        self.stream_out = out_bytes >= self.nt_threshold
        return 0

    cdef int end(self, int rc, str what, double timeout) except -1:
        hc_life_leave(&self.fail.life)
        if rc < 0:
            _raise_error(&self.fail, self.rank, rc, what, timeout)
        return 0

    cdef void leave(self) noexcept nogil:
        hc_life_leave(&self.fail.life)

    cdef raise_error(self, int rc, str what, double timeout):
        _raise_error(&self.fail, self.rank, rc, what, timeout)

    cdef check_usable(self):
        _check_usable(&self.fail, self.rank)

    def line_state(self, int peer):
        """The one-line channel (oneline.pxd) with ``peer`` (an shm or c2c link), for tests and
        diagnostics: messages sent and received, the epoch, and the addresses of the ring this
        rank writes and the one it reads (LINE_SLOTS lines of 64 bytes each); None for other links."""
        if not 0 <= peer < self.size or self.links[peer].kind.line_bytes == 0:
            return None
        cdef Link* L = &self.links[peer]
        return {"sent": L.fifo.ln_sent, "got": L.fifo.ln_got, "epoch": L.fifo.ln_epoch >> 48,
                "tx": <size_t>L.fifo.ln_tx, "rx": <size_t>L.fifo.ln_rx, "slots": LINE_SLOTS,
                "payload": LINE_PAYLOAD}

    def interrupt_error(self, str what):
        """The exception `what` (an operation's name) raises after the interrupt (CommAborted if
        there was none: the communicator is closing)."""
        return _interrupt_error(&self.fail, self.rank, what)

    @property
    def sequence(self):
        return self.seq

    @property
    def is_broken(self):
        """True once an error left the links in an unknown state (the communicator must be aborted)."""
        return self.fail.broken
