# cython: language_level=3
"""The nogil collective engine.

An Engine owns one Link per peer (shared-memory FIFOs or a TCP socket, see link.pxd) and runs whole
collectives without the GIL: a collective becomes one send Stream and one receive Stream per peer it
talks to, each a list of segments (pieces of the user's buffers), progressed together until done.
Receive segments either copy or reduce ("dst = local OP incoming") straight out of the transport, so a
ring allreduce never stages through a temporary buffer.

Every Stream starts with a 32-byte header (collective, dtype, op, phase, sequence number, count):
the receiver checks it before touching the payload, so ranks that call different collectives, or the
same one with different counts/dtypes/ops, get a clear error instead of corrupted data.

Waiting: spin (pause) for spin_s, then sched_yield for yield_s (so oversubscribed ranks hand their core
to the peer they wait for), then block in poll() on the peers' sockets, which a peer's doorbell byte or
its death (EOF) wakes. Deadlines are checked throughout; Ctrl-C is honoured while blocked.

Lifecycle (life.pxd): ``interrupt()`` may be called from any thread at any time; every loop here
reads the interrupt word and every sleep wakes at once, so running schedules fail within
milliseconds and later ones at entry. ``close()`` interrupts, waits until no schedule is inside, and
only then unmaps the FIFOs and windows and closes what it was given to close (the pairs' sockets).
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE, PyBUF_SIMPLE
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint64_t, uint32_t, uint8_t, uintptr_t
from libc.stdlib cimport malloc, calloc, free, realloc
from libc.string cimport memcpy, memcmp, memset

from hetccl._native.waiting cimport pollfd, poll, POLLIN, POLLOUT, POLLHUP, POLLERR, POLLNVAL, POLLRDHUP, sched_yield
from hetccl._native.atomics cimport hc_now, hc_relax, hc_load_acq, hc_store32_sc, hc_load32_sc
from hetccl._native.codes cimport *
from hetccl._native.link cimport *
from hetccl._native.ucx cimport UcxLink
from hetccl._native.ucx_link cimport sock_write, sock_read, sock_read_reduce, ucx_prepare_sleep
from hetccl._native.reduce cimport reduce_fn, get_reduce, copy_bytes, divide_by, store_fence
from hetccl._native.buffers cimport get_buffer, check_overlap, pin_allgather, release_allgather
from hetccl._native.c2c cimport C2CPeer, C2CSlot, C2C_OFF, C2C_CMA, C2C_WINDOW, C2C_SLOT_BYTES
from hetccl._native.life cimport *

import logging as _logging
import os as _os
import socket as _socket

from hetccl.errors import (HetcclTimeout, PeerLostError, InvalidUsage, CommAborted, CommRevoked,
                           TransportError)

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

cdef extern from "<sys/mman.h>" nogil:
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void* addr, size_t length)
    int shm_open(const char* name, int oflag, int mode)
    int shm_unlink(const char* name)
    int PROT_READ
    int PROT_WRITE
    int MAP_SHARED
    int MAP_POPULATE
    void* MAP_FAILED

cdef extern from "<fcntl.h>" nogil:
    int posix_fallocate(int fd, long offset, long length)
    int O_CREAT
    int O_EXCL
    int O_RDWR

cdef extern from "<unistd.h>" nogil:
    int ftruncate(int fd, long length)
    int c_close "close"(int fd)

cdef enum:
    HDR_BYTES = 32
    HDR_CHECKED = 24          # bytes 24..31 carry the sender's rank, not compared
    MAGIC = 0x314C4348        # "HCL1"
    MAX_MOVE = 1 << 20        # most bytes one progress call moves per stream, so sends and receives interleave

DTYPE_SIZE = (1, 1, 2, 2, 4, 4, 8, 8, 2, 2, 4, 8, 1, 1, 1)
cdef size_t ESIZE[15]
for _i in range(15):
    ESIZE[_i] = DTYPE_SIZE[_i]

_COLL_NAMES = {1: "allreduce", 2: "allgather", 3: "reduce_scatter", 4: "broadcast", 5: "reduce",
               6: "gather", 7: "scatter", 8: "alltoall", 9: "barrier", 10: "send/recv"}
_DT_NAMES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16",
             "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2", "bool")
_OP_NAMES = ("SUM", "PROD", "MIN", "MAX", "AVG", "BAND", "BOR", "BXOR")


cdef inline void put_header(uint8_t* h, int coll, int dtype, int op, int phase, uint32_t seq,
                            uint64_t count, int rank) noexcept nogil:
    memset(h, 0, HDR_BYTES)
    (<uint32_t*>h)[0] = MAGIC
    h[4] = <uint8_t>coll
    h[5] = <uint8_t>dtype
    h[6] = <uint8_t>op
    h[7] = <uint8_t>phase
    (<uint32_t*>(h + 8))[0] = seq
    (<uint64_t*>(h + 16))[0] = count
    (<uint32_t*>(h + 24))[0] = <uint32_t>rank


def _describe_header(bytes h):
    """Human-readable form of a 32-byte stream header (for mismatch errors)."""
    import struct
    magic, coll, dt, op, phase, seq, aux, count, sender = struct.unpack("<IBBBBIIQI4x", h)
    if magic != MAGIC:
        return "garbage (not a hetccl header)"
    dtn = _DT_NAMES[dt] if dt < len(_DT_NAMES) else f"dtype#{dt}"
    opn = _OP_NAMES[op] if op < len(_OP_NAMES) else f"op#{op}"
    # the symmetric broadcast carries its root in the op byte (symmetric.pyx): name it, so ranks
    # naming different roots read as that, not as "different algorithms"
    return (f"{_COLL_NAMES.get(coll, f'collective#{coll}')} #{seq} of {count} {dtn}"
            + (f" with {opn}" if coll in (1, 3, 5) else "")
            + (f" from root {op}" if coll == 4 and op else ""))


cdef class ShmSegment:
    """A POSIX shared-memory segment (mode 0600), mapped and pre-faulted (MAP_POPULATE).

    The creator unlinks it as soon as the peer has mapped it (see transports/shm.py), so nothing is
    left in /dev/shm even if both processes are killed afterwards."""
    cdef readonly bytes name
    cdef readonly size_t size
    cdef char* base
    cdef bint linked

    def __cinit__(self, name, size_t size, bint create):
        cdef int fd
        cdef int rc
        cdef void* p
        self.name = name.encode() if isinstance(name, str) else bytes(name)
        self.size = size
        self.base = NULL
        if create:
            fd = shm_open(self.name, O_CREAT | O_EXCL | O_RDWR, 0o600)
        else:
            fd = shm_open(self.name, O_RDWR, 0o600)
        if fd < 0:
            e = _os.strerror(_errno())
            raise TransportError(f"cannot {'create' if create else 'open'} shared memory "
                                 f"{self.name.decode()}: {e}; is /dev/shm mounted and writable? "
                                 f"(set HETCCL_TRANSPORTS=tcp to avoid shared memory)")
        self.linked = True
        if not create:
            # the size came from the peer: a smaller file would SIGBUS on first touch
            try:
                have = _os.fstat(fd).st_size
            except OSError:
                have = -1
            if have < <long long>size:
                c_close(fd)
                raise TransportError(f"shared memory {self.name.decode()} has {have} bytes, but "
                                     f"the peer said {size}; refusing to map it (a stale segment, "
                                     f"or a peer of another job)")
        if create and ftruncate(fd, size) != 0:
            e = _os.strerror(_errno())
            c_close(fd)
            shm_unlink(self.name)
            raise TransportError(f"cannot size shared memory {self.name.decode()} to {size} bytes: {e}")
        if create:
            # back every page now: on a full /dev/shm (tmpfs) this fails with ENOSPC, where
            # MAP_POPULATE would silently leave pages out and the first touch would be SIGBUS
            with nogil:
                rc = posix_fallocate(fd, 0, size)
            if rc != 0:
                c_close(fd)
                shm_unlink(self.name)
                from hetccl.memory.space import shm_space_error
                raise shm_space_error(f"shared memory {self.name.decode()}", size, rc,
                                      "set HETCCL_TRANSPORTS=tcp to avoid shared memory")
        with nogil:
            p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0)
        c_close(fd)
        if p == MAP_FAILED:
            if create:
                shm_unlink(self.name)
            raise TransportError(f"cannot map shared memory {self.name.decode()} ({size} bytes)")
        self.base = <char*>p

    def address(self):
        """Where the segment is mapped in this process (for the per-pair endpoint layer)."""
        return <uintptr_t>self.base

    def unlink(self):
        if self.linked:
            shm_unlink(self.name)
            self.linked = False

    def close(self):
        if self.base != NULL:
            munmap(self.base, self.size)
            self.base = NULL
        self.unlink()

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.size)

cdef int _errno() noexcept:
    return errno


cdef enum:
    SHM_CTL = 4096
SHM_CTL_BYTES = SHM_CTL


def shm_segment_bytes(size_t fifo_bytes):
    """Bytes of one pair's segment: two control blocks and two FIFOs of fifo_bytes."""
    return SHM_CTL + 2 * fifo_bytes


cdef class Engine:
    """Links to every peer plus the collective schedules; see the module docstring."""

    def __cinit__(self, int rank, int size):
        self.rank = rank
        self.size = size
        self.links = <Link*>calloc(size, sizeof(Link))
        if self.links == NULL:
            raise MemoryError()
        for i in range(size):
            self.links[i].peer = i
            self.links[i].fd = -1
        self.seq = 0
        self.spin_s = 20e-6
        self.yield_s = 500e-6
        self.nt_threshold = 16 << 20
        self.chunk = 256 << 10
        self.broken = False
        self.err_peer = -1
        self.segments = []
        self.scratch_buf = NULL
        self.scratch_len = 0
        self.c2c = <C2CPeer*>calloc(size, sizeof(C2CPeer))
        if self.c2c == NULL:
            raise MemoryError()
        self.c2c_epoch = 0
        self.c2c_round = 0
        self.state = ST_OPEN
        self.kept = []
        if hc_life_init(&self.life) < 0:
            raise OSError(_errno(), f"cannot create the engine's eventfd: {_os.strerror(_errno())}")

    def __dealloc__(self):
        # Schedules hold a reference to the engine, so none can be inside now; a C caller that kept
        # a bare pointer and is still inside would make freeing unsafe: then leak instead.
        if hc_life_inuse(&self.life):
            return
        hc_life_close_efd(&self.life)
        if self.scratch_buf != NULL:
            free(self.scratch_buf)
        if self.c2c != NULL:
            free(self.c2c)
            self.c2c = NULL
        if self.links != NULL:
            for i in range(self.size):
                if self.links[i].stage != NULL:
                    free(self.links[i].stage)
            free(self.links)
            self.links = NULL

    # ------------------------------------------------------------------ setup (Python, not hot)

    def add_tcp_link(self, int peer, int fd, size_t stage_bytes=1 << 20):
        """Use the connected, authenticated, non-blocking socket fd for all data to/from peer."""
        cdef Link* L = &self.links[peer]
        L.kind = LK_TCP
        L.fd = fd
        L.stage = <char*>malloc(stage_bytes)
        if L.stage == NULL:
            raise MemoryError()
        memset(L.stage, 0, stage_bytes)   # pre-fault
        L.stage_cap = stage_bytes
        L.stage_len = 0

    def add_shm_link(self, int peer, int fd, ShmSegment seg, size_t fifo_bytes, bint low):
        """Data to/from peer through seg's two FIFOs; fd (the pair's socket) carries doorbells."""
        if fifo_bytes & (fifo_bytes - 1) or fifo_bytes < 4096:
            raise ValueError("fifo_bytes must be a power of two >= 4096")
        cdef Link* L = &self.links[peer]
        cdef RingCtl* c0 = <RingCtl*>seg.base
        cdef RingCtl* c1 = <RingCtl*>(seg.base + sizeof(RingCtl))
        cdef char* d0 = seg.base + SHM_CTL
        cdef char* d1 = d0 + fifo_bytes
        L.kind = LK_SHM
        L.fd = fd
        L.cap = fifo_bytes
        L.mask = fifo_bytes - 1
        if low:
            L.tx_ctl, L.tx_data, L.rx_ctl, L.rx_data = c0, d0, c1, d1
        else:
            L.tx_ctl, L.tx_data, L.rx_ctl, L.rx_data = c1, d1, c0, d0
        L.tx_head = L.tx_ctl.head
        L.tx_pub = L.tx_head
        L.tx_tail_c = L.tx_ctl.tail
        L.rx_tail = L.rx_ctl.tail
        L.rx_rel = L.rx_tail
        L.rx_head_c = L.rx_ctl.head
        self.segments.append(seg)

    def add_ucx_link(self, int peer, int fd, handle):
        """Data to/from peer over a UCP stream (handle: ucx.LinkHandle, kept and closed with the
        links); fd (the pair's socket) only reports the peer's death."""
        cdef Link* L = &self.links[peer]
        L.kind = LK_UCX
        L.fd = fd
        L.ucx = <void*><uintptr_t>handle.state_address()
        self.segments.append(handle)

    def add_c2c_link(self, int peer, int fd, ShmSegment seg, size_t fifo_bytes, bint low, int mode,
                     int pid, size_t window_bytes):
        """A c2c pair: seg holds the shm FIFOs (for schedules without a single-copy form), then the
        two sides' control slots, then (window mode) one window per direction."""
        cdef C2CPeer* c
        cdef char* ctl = seg.base + SHM_CTL + 2 * fifo_bytes
        cdef char* w0 = ctl + 4096
        if mode != C2C_CMA and mode != C2C_WINDOW:
            raise ValueError("mode must be 1 (cma) or 2 (window)")
        self.add_shm_link(peer, fd, seg, fifo_bytes, low)
        c = &self.c2c[peer]
        c.mode = mode
        c.pid = pid
        c.mine = <C2CSlot*>(ctl if low else ctl + C2C_SLOT_BYTES)
        c.theirs = <C2CSlot*>(ctl + C2C_SLOT_BYTES if low else ctl)
        c.win = window_bytes if mode == C2C_WINDOW else 0
        c.win_tx = (w0 if low else w0 + window_bytes) if c.win else NULL
        c.win_rx = (w0 + window_bytes if low else w0) if c.win else NULL
        c.mine.magic = 0x4332434843324332
        c.mine.epoch = self.c2c_epoch

    def c2c_mode(self, int peer):
        """'cma', 'window' or None (peer not linked by c2c)."""
        return {C2C_CMA: "cma", C2C_WINDOW: "window"}.get(self.c2c[peer].mode)

    def all_c2c(self):
        """True when every peer is linked by c2c (the single-copy schedules then apply)."""
        if self.size < 2:
            return False
        for i in range(self.size):
            if i != self.rank and self.c2c[i].mode == C2C_OFF:
                return False
        return True

    def link_kind(self, int peer):
        if self.c2c[peer].mode != C2C_OFF:
            return "c2c"
        k = self.links[peer].kind
        return {LK_SHM: "shm", LK_TCP: "tcp", LK_UCX: "rdma"}.get(k, "self" if peer == self.rank else "none")

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
        return hc_life_interrupt(&self.life, reason, peer)

    cdef bint interrupted(self) noexcept nogil:
        return hc_life_intr(&self.life) != 0

    @property
    def interruption(self):
        """None, or (reason, peer) of the interrupt (peer -1 unless PEER_LOST)."""
        cdef uint32_t w = hc_life_intr(&self.life)
        return None if w == 0 else (life_reason(w), life_peer(w))

    @property
    def inside(self):
        """Entries inside right now (schedules; for tests and diagnostics)."""
        return hc_life_inuse(&self.life)

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
        self.broken = True
        with nogil:
            hc_life_interrupt(&self.life, LIFE_ABORTED, -1)
            hc_life_closing(&self.life)
        self._hang_up()
        with nogil:
            drained = hc_life_drain(&self.life, timeout)
        if not drained:
            self.state = ST_LEAKED
            _log.warning("rank %d: a schedule is still running %g s after the communicator was "
                         "closed; its shared memory, sockets and UCX links are kept (not released) "
                         "for the life of the process", self.rank, timeout)
            return False
        for i in range(self.size):
            self.links[i].kind = LK_NONE
            self.links[i].closed = 1
            self.c2c[i].mode = C2C_OFF
        segments, self.segments = self.segments, []
        for seg in segments:
            try:
                seg.close()
            except Exception as e:          # noqa: BLE001 - best effort, like the sockets below
                _log.debug("close: %s", e)
        hc_life_close_efd(&self.life)
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
        cdef uint32_t w = hc_life_enter(&self.life)
        if w:
            self.raise_interrupted(w, what)
        if self.broken:
            hc_life_leave(&self.life)
            self.check_usable()
        self.seq += 1
        self.stream_out = out_bytes >= self.nt_threshold
        return 0

    cdef int end(self, int rc, str what, double timeout) except -1:
        hc_life_leave(&self.life)
        if rc < 0:
            self.raise_error(rc, what, timeout)
        return 0

    cdef void leave(self) noexcept nogil:
        hc_life_leave(&self.life)

    cdef raise_interrupted(self, uint32_t w, str what):
        self.broken = True
        raise self.interrupt_error(what)

    def interrupt_error(self, str what):
        """The exception `what` (an operation's name) raises after the interrupt (CommAborted if
        there was none: the communicator is closing)."""
        cdef uint32_t w = hc_life_intr(&self.life)
        cdef int reason = life_reason(w), peer = life_peer(w)
        if reason == LIFE_REVOKED:
            return CommRevoked(f"{what} on rank {self.rank}: this communicator was revoked (its ranks "
                               f"gave up on it after a failure), so its pending and later operations "
                               f"fail; go on with a communicator of the survivors, or a new one")
        if reason == LIFE_PEER_LOST:
            err = PeerLostError(f"{what} on rank {self.rank}: rank {peer} was declared lost (it "
                                f"stopped answering); this communicator cannot be used any more")
            err.peer = peer
            return err
        return CommAborted(f"{what} on rank {self.rank}: this communicator was aborted or closed "
                           f"(comm.abort(), close(), or an earlier error); create a new one with "
                           f"hetccl.init()")

    @property
    def sequence(self):
        return self.seq

    @property
    def is_broken(self):
        """True once an error left the links in an unknown state (the communicator must be aborted)."""
        return self.broken

    # ------------------------------------------------------------------ streams

    cdef void stream_init(self, Stream* s, int peer, Seg* segs, int nseg, int coll, int dtype,
                          int op, int phase, uint64_t count, size_t esize, bint is_send) noexcept nogil:
        cdef int i
        s.link = &self.links[peer]
        s.segs = segs
        s.nseg = nseg
        s.cur = 0
        s.off = 0
        s.pos = 0
        s.total = 0
        for i in range(nseg):
            s.total += segs[i].len
        s.hdr_done = 0
        s.pad = <int>((-(<long>(s.total))) & 7) if s.link.kind == LK_SHM else 0
        s.pad_done = 0
        s.fn = get_reduce(dtype, op) if dtype >= 0 else NULL
        s.dtype = dtype
        s.esize = esize
        s.streaming = False
        s.done = False
        s.waiting = False
        s.fwd = NULL
        s.dep = NULL
        s.limit = <size_t>-1
        s.swap = peer < self.rank
        if is_send:
            put_header(s.hdr, coll, dtype, op, phase, self.seq, count, self.rank)
        else:
            put_header(s.want, coll, dtype, op, phase, self.seq, count, peer)

    cdef void skip_empty(self, Stream* s) noexcept nogil:
        while s.cur < s.nseg and s.off == s.segs[s.cur].len:
            s.cur += 1
            s.off = 0

    cdef long send_progress(self, Stream* s) noexcept nogil:
        """Move what can move now: header, then own payload segments (each possibly waiting on a
        receive segment it depends on), then padding. Forwarded segments are filled by the paired
        receive stream (forward_piece). Sets s.waiting when only the link (room) can unblock it."""
        cdef Link* L = s.link
        cdef long moved = 0
        cdef ssize_t w
        cdef size_t n, allowed
        cdef Seg* g
        cdef Stream* D
        s.waiting = False
        if s.done:
            return 0
        if s.hdr_done < HDR_BYTES:
            if L.kind == LK_SHM:
                w = ring_write(L, <char*>s.hdr + s.hdr_done, HDR_BYTES - s.hdr_done)
            else:
                w = sock_write(L, <char*>s.hdr + s.hdr_done, HDR_BYTES - s.hdr_done)
                if w < 0:
                    return w
            s.hdr_done += <int>w
            moved += w
            if s.hdr_done < HDR_BYTES:
                s.waiting = True
                if L.kind == LK_SHM:
                    ring_publish(L)
                return moved
        self.skip_empty(s)
        while s.cur < s.nseg and moved < MAX_MOVE:
            g = &s.segs[s.cur]
            if g.fwd:
                break                        # the receive stream fills this one
            n = g.len - s.off
            if g.dep >= 0:                   # may not overtake the receive segment it forwards
                D = s.dep
                if D.cur < g.dep:
                    break
                if D.cur == g.dep:
                    allowed = D.off
                    if allowed <= s.off:
                        break
                    if n > allowed - s.off:
                        n = allowed - s.off
            if s.pos + n > s.limit:
                if s.limit <= s.pos:
                    break
                n = s.limit - s.pos
            if n > self.chunk:
                n = self.chunk
            if L.kind == LK_SHM:
                w = ring_write(L, g.buf + s.off, n)
            else:
                w = sock_write(L, g.buf + s.off, n)
                if w < 0:
                    return w
            if w == 0:
                s.waiting = True
                break
            if g.copy != NULL:               # copy-send: the bytes are hot in cache right now
                copy_bytes(g.copy + s.off, g.buf + s.off, w, s.streaming)
            s.off += w
            s.pos += w
            moved += w
            self.skip_empty(s)
            if L.kind == LK_SHM and w >= 65536:
                ring_publish(L)              # publish big chunks at once so the receiver can start
        if s.cur >= s.nseg:
            if s.pad_done < s.pad:
                s.pad_done += <int>ring_write(L, NULL, s.pad - s.pad_done)
            if s.pad_done == s.pad:
                s.done = True
            else:
                s.waiting = True
        if L.kind == LK_SHM:
            ring_publish(L)
        return moved

    cdef long recv_progress(self, Stream* s) noexcept nogil:
        """Move what has arrived: header (checked), then payload copied, reduced or forwarded, then
        padding. Sets s.waiting when only the link (data, or room to forward into) can unblock it."""
        cdef Link* L = s.link
        cdef long moved = 0
        cdef ssize_t r
        cdef size_t n
        cdef Seg* g
        s.waiting = False
        if s.done:
            return 0
        if s.hdr_done < HDR_BYTES:
            if L.kind == LK_SHM:
                r = ring_read(L, <char*>s.hdr + s.hdr_done, HDR_BYTES - s.hdr_done, 0)
            else:
                r = sock_read(L, <char*>s.hdr + s.hdr_done, HDR_BYTES - s.hdr_done)
                if r < 0:
                    return r
            s.hdr_done += <int>r
            moved += r
            if s.hdr_done < HDR_BYTES:
                s.waiting = True
                if L.kind == LK_SHM:
                    ring_release(L)
                return moved
            if memcmp(s.hdr, s.want, HDR_CHECKED) != 0:
                self.err_peer = L.peer
                memcpy(self.err_got, s.hdr, HDR_BYTES)
                memcpy(self.err_want, s.want, HDR_BYTES)
                return E_MISMATCH
        self.skip_empty(s)
        while s.cur < s.nseg and moved < MAX_MOVE:
            g = &s.segs[s.cur]
            n = g.len - s.off
            if s.pos + n > s.limit:
                if s.limit <= s.pos:
                    break
                n = s.limit - s.pos
            if n > self.chunk:
                n = self.chunk
            if g.fwd:
                r = self.forward_piece(s, g, n)
            elif g.loc == NULL:
                if L.kind == LK_SHM:
                    r = ring_read(L, g.buf + s.off, n, s.streaming)
                else:
                    r = sock_read(L, g.buf + s.off, n)
            else:
                if L.kind == LK_SHM:
                    r = ring_read_reduce(L, g.buf + s.off, g.loc + s.off, n, s.fn, s.esize, s.swap,
                                         s.streaming)
                else:
                    r = sock_read_reduce(L, g.buf + s.off, g.loc + s.off, n, s.fn, s.esize, s.swap,
                                        s.streaming)
                if r > 0 and g.divide:
                    divide_by(g.buf + s.off, <size_t>r // s.esize, s.dtype, g.divide)
            if r < 0:
                return r
            if r == 0:
                if not g.fwd:
                    s.waiting = True
                break
            s.off += r
            s.pos += r
            moved += r
            self.skip_empty(s)
        if s.cur >= s.nseg:
            if s.pad_done < s.pad:
                s.pad_done += <int>ring_read(L, NULL, s.pad - s.pad_done, 0)
            if s.pad_done == s.pad:
                s.done = True
                if s.streaming:
                    store_fence()
            else:
                s.waiting = True
        if L.kind == LK_SHM:
            ring_release(L)
        if s.fwd != NULL:
            ring_publish(s.fwd.link)
        return moved

    cdef size_t forward_piece(self, Stream* s, Seg* g, size_t n) noexcept nogil:
        """One fused ring step: FIFO-in (OP local) -> next rank's FIFO, plus a copy to the output.

        The result is written once into the next rank's FIFO (cache-resident) and copied from there
        to the user's output (streaming stores for large outputs), so the output is never re-read to
        be forwarded. Both links are shared memory. Returns bytes consumed; 0 means wait (s.waiting
        says whether on a link, or on the send stream reaching this forwarded segment)."""
        cdef Stream* F = s.fwd
        cdef Link* L = s.link
        cdef Link* T = F.link
        cdef size_t rx_off, tx_off, k
        cdef char* src
        cdef char* dst
        self.skip_empty(F)
        if F.hdr_done < HDR_BYTES or F.cur >= F.nseg or not F.segs[F.cur].fwd:
            return 0                         # our own bytes must go first
        k = F.segs[F.cur].len - F.off
        if n > k:
            n = k
        k = ring_avail(L, n)
        if n > k:
            n = k
        rx_off = L.rx_tail & L.mask
        if n > L.cap - rx_off:
            n = L.cap - rx_off
        k = ring_space(T, n)
        if n > k:
            n = k
        tx_off = T.tx_head & T.mask
        if n > T.cap - tx_off:
            n = T.cap - tx_off
        n -= n % s.esize
        if n == 0:
            s.waiting = True
            return 0
        src = L.rx_data + rx_off
        dst = T.tx_data + tx_off
        if g.loc != NULL:
            reduce2(s.fn, dst, g.loc + s.off, src, n // s.esize, s.swap, 0)
            if g.divide:
                divide_by(dst, n // s.esize, s.dtype, g.divide)
        else:
            copy_bytes(dst, src, n, 0)
        if g.buf != NULL:
            copy_bytes(g.buf + s.off, dst, n, s.streaming)
        L.rx_tail += n
        T.tx_head += n
        F.off += n
        F.pos += n
        if n >= 65536:
            ring_release(L)
            ring_publish(T)
        return n

    # ------------------------------------------------------------------ waiting

    cdef int check_signals(self) noexcept nogil:
        with gil:
            try:
                _check_signals()
            except BaseException as e:
                self.pending_exc = e
                return E_INTERRUPTED
        return 0

    cdef int block(self, Stream** ss, int n, double deadline) noexcept nogil:
        """Sleep until a peer wakes us, dies, the engine is interrupted, or 100 ms (futex: 50 ms)
        pass (then look at signals).

        ss holds [send stream, receive stream], either NULL when it does not wait on its link. When
        everything waited on is one shared-memory pair, sleep in a futex wait on its flag (a futex
        wake leaves us on our own CPU, see waiting.pxd; reap() notices a dead peer within 50 ms);
        otherwise in poll() on the peers' sockets, which a doorbell byte or a peer's death (EOF) wakes.
        Either way an interrupt wakes it (life.pxd: the futex wait includes the interrupt word, the
        poll set the engine's eventfd)."""
        cdef pollfd fds[5]
        cdef int nf = 0, i, j, rc, ms
        cdef bint ready = False
        cdef Link* L
        cdef Link* T
        cdef Link* only = NULL
        cdef Stream* s
        cdef char junk[256]
        cdef ssize_t got
        cdef uint32_t how = SLEEP_FUTEX
        cdef uint32_t* word = NULL
        for i in range(n):                   # one shared-memory pair: futex; anything else: poll
            s = ss[i]
            if s == NULL or s.done:
                continue
            if s.link.kind != LK_SHM or (only != NULL and only != s.link) or \
                    ((i & 1) and s.fwd != NULL and s.fwd.link != s.link):
                how = SLEEP_POLL
                break
            only = s.link
        for i in range(n):
            s = ss[i]
            if s == NULL or s.done:
                continue
            L = s.link
            if L.kind == LK_SHM:
                if (i & 1) == 0:
                    word = &L.tx_ctl.prod_sleeping
                    hc_store32_sc(word, how)
                    if L.cap - (L.tx_head - hc_load_acq(&L.tx_ctl.tail)) > 0:
                        ready = True
                elif s.fwd != NULL and s.cur < s.nseg and s.segs[s.cur].fwd and \
                        hc_load_acq(&L.rx_ctl.head) != L.rx_tail:
                    T = s.fwd.link           # data is here; forwarding waits for room downstream
                    word = &T.tx_ctl.prod_sleeping
                    hc_store32_sc(word, how)
                    if T.cap - (T.tx_head - hc_load_acq(&T.tx_ctl.tail)) >= s.esize:
                        ready = True
                    L = T
                else:
                    word = &L.rx_ctl.cons_sleeping
                    hc_store32_sc(word, how)
                    if hc_load_acq(&L.rx_ctl.head) != L.rx_tail:
                        ready = True
                fds[nf].events = POLLIN
            elif L.kind == LK_UCX:
                ready = ucx_prepare_sleep(L, i & 1) or ready
                fds[nf].events = POLLIN
            else:
                fds[nf].events = POLLOUT if (i & 1) == 0 else POLLIN
            fds[nf].fd = (<UcxLink*>L.ucx).efd if L.kind == LK_UCX else L.fd
            fds[nf].revents = 0
            nf += 1
        if not ready and nf > 0 and how == SLEEP_FUTEX:
            ms = <int>((deadline - hc_now()) * 1000.0) + 1
            if ms > 50:
                ms = 50
            if ms > 0:
                hc_life_sleep(&self.life, word, SLEEP_FUTEX, ms)
            if hc_load32_sc(word) == SLEEP_FUTEX and not hc_life_intr(&self.life) and \
                    self.check_signals() != 0:
                return E_INTERRUPTED         # not woken (timed out or a signal): honour Ctrl-C
        elif not ready and nf > 0:
            fds[nf].fd = self.life.efd       # readable for good once interrupted
            fds[nf].events = POLLIN
            fds[nf].revents = 0
            nf += 1
            ms = <int>((deadline - hc_now()) * 1000.0) + 1
            if ms > 100:
                ms = 100
            if ms < 0:
                ms = 0
            rc = poll(fds, nf, ms)
            if rc > 0:
                for i in range(nf):
                    if fds[i].revents == 0:
                        continue
                    for j in range(self.size):
                        L = &self.links[j]
                        if L.fd != fds[i].fd:
                            continue
                        if L.kind == LK_SHM and (fds[i].revents & (POLLIN | POLLHUP | POLLERR)):
                            while True:          # drain doorbells; EOF means the peer is gone
                                got = c_recv(L.fd, junk, 256, MSG_DONTWAIT)
                                if got == 0:
                                    L.closed = 1
                                    break
                                if got < 0:
                                    break
                        if fds[i].revents & (POLLHUP | POLLERR | POLLNVAL):
                            L.closed = 1
                        break
            elif rc == 0:
                if self.check_signals() != 0:
                    return E_INTERRUPTED
        for i in range(n):
            s = ss[i]
            if s == NULL:
                continue
            L = s.link
            if L.kind == LK_SHM:
                if (i & 1) == 0:
                    hc_store32_sc(&L.tx_ctl.prod_sleeping, 0)
                else:
                    hc_store32_sc(&L.rx_ctl.cons_sleeping, 0)
                    if s.fwd != NULL:
                        hc_store32_sc(&s.fwd.link.tx_ctl.prod_sleeping, 0)
        return E_CANCELLED if hc_life_intr(&self.life) else 0

    cdef int idle(self, Stream** ss, int n, Idle* st, double deadline) noexcept nogil:
        """Nothing moved: spin, then yield, then block. Returns <0 on timeout/peer loss."""
        cdef double now, waited
        cdef int i
        st.iters += 1
        if st.since == 0 or (st.iters & 15) == 0:
            now = hc_now()
            if st.since == 0:
                st.since = now
            if hc_life_intr(&self.life):
                return E_CANCELLED
            if now > deadline:
                return E_TIMEOUT
            waited = now - st.since
            if waited > self.spin_s + self.yield_s:
                if waited - st.reaped > 0.05:
                    st.reaped = waited
                    if self.reap(st.all, 2) < 0:  # every 50 ms: is any peer of this step gone?
                        return E_PEER_LOST
                for i in range(n):        # a closed link that cannot move is a lost peer
                    if ss[i] != NULL and not ss[i].done and ss[i].link.closed:
                        self.err_peer = ss[i].link.peer
                        return E_PEER_LOST
                return self.block(ss, n, deadline)
            if waited > self.spin_s:
                sched_yield()
                return 0
        if self.spin_s > 0:
            hc_relax()
        else:
            sched_yield()
        return 0

    cdef int reap(self, Stream** all, int n) noexcept nogil:
        """Look (without waiting) for closed sockets of every link a stalled step involves, the
        ones it is not sleeping on included; a dead peer there means the step can never finish."""
        cdef pollfd fds[6]
        cdef Link* ls[6]
        cdef int nf = 0, i
        cdef char junk[256]
        cdef ssize_t got
        for i in range(n):
            if all[i] == NULL or all[i].done:
                continue
            ls[nf] = all[i].link
            nf += 1
            if all[i].fwd != NULL:
                ls[nf] = all[i].fwd.link
                nf += 1
        for i in range(nf):
            fds[i].fd = ls[i].fd
            fds[i].events = POLLIN | POLLRDHUP
            fds[i].revents = 0
        if nf == 0 or poll(fds, nf, 0) <= 0:
            return 0
        for i in range(nf):
            if fds[i].revents & (POLLHUP | POLLERR | POLLNVAL | POLLRDHUP):
                ls[i].closed = 1
            elif ls[i].kind == LK_SHM and fds[i].revents & POLLIN:
                while True:
                    got = c_recv(ls[i].fd, junk, 256, MSG_DONTWAIT)
                    if got == 0:
                        ls[i].closed = 1
                    if got <= 0:
                        break
            if ls[i].closed and self.err_peer < 0:
                self.err_peer = ls[i].peer
        for i in range(nf):
            if ls[i].closed:
                return E_PEER_LOST
        return 0

    cdef int run2(self, Stream* snd, Stream* rcv, double deadline) noexcept nogil:
        """Progress a send and a receive stream together until both are done.

        Ordering between them is carried by the streams themselves: send segments may depend on
        receive segments (snd.dep), receive segments may forward into the send stream (rcv.fwd), and
        either may carry a byte limit."""
        cdef Idle st
        cdef long a, b
        cdef size_t n
        cdef int rc
        cdef Stream* pair[2]
        st.since = 0
        st.iters = 0
        st.reaped = 0
        st.all[0] = snd
        st.all[1] = rcv
        while True:
            if hc_life_intr(&self.life):
                return E_CANCELLED
            a = 0
            b = 0
            if snd != NULL and not snd.done:
                a = self.send_progress(snd)
                if a < 0:
                    return self.fail(snd, <int>a)
            if rcv != NULL and not rcv.done:
                b = self.recv_progress(rcv)
                if b < 0:
                    return self.fail(rcv, <int>b)
            if (snd == NULL or snd.done) and (rcv == NULL or rcv.done):
                break
            if a or b:
                st.since = 0
                st.iters = 0
                st.reaped = 0
                continue
            pair[0] = snd if (snd != NULL and snd.waiting) else NULL
            pair[1] = rcv if (rcv != NULL and rcv.waiting) else NULL
            rc = self.idle(pair, 2, &st, deadline)
            if rc < 0:
                if rc == E_PEER_LOST or rc == E_TIMEOUT:
                    self.note_waiting(snd, rcv)
                return rc
        return 0

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
        return self.scratch_buf if self.scratch_buf != NULL else <char*>&self.err_got[0]

    cdef bint can_fuse(self, int to, int frm) noexcept nogil:
        """Both neighbours are shared memory: a relay can forward FIFO to FIFO."""
        return to >= 0 and frm >= 0 and self.links[to].kind == LK_SHM and self.links[frm].kind == LK_SHM

    cdef int xfer(self, int to, Seg* ssegs, int ns, int frm, Seg* rsegs, int nr, int coll, int dtype,
                  int op, int phase, uint64_t count, bint fused, double deadline) noexcept nogil:
        """Send ssegs to `to` while receiving rsegs from `frm` (a peer < 0: that side is absent).

        A send segment with dep >= 0 carries what receive segment `dep` brought (a relay); with
        fused, that happens FIFO to FIFO (receive, reduce, forward in one pass), otherwise the send
        waits until the receive has landed in memory (the caller gives both the same buffer).
        Callers set buf/loc/len/divide/dep/copy of every segment; fwd is set here."""
        cdef Stream snd, rcv
        cdef size_t es = dtype_size(dtype)
        cdef int i
        for i in range(nr):
            rsegs[i].fwd = False
        for i in range(ns):
            ssegs[i].fwd = fused and ssegs[i].dep >= 0
            if ssegs[i].fwd:
                rsegs[ssegs[i].dep].fwd = True
        if to >= 0:
            self.stream_init(&snd, to, ssegs, ns, coll, dtype, op, phase, count, es, True)
        if frm >= 0:
            self.stream_init(&rcv, frm, rsegs, nr, coll, dtype, op, phase, count, es, False)
            rcv.streaming = self.stream_out
            if to >= 0:
                snd.dep = &rcv
                if fused:
                    rcv.fwd = &snd
        if to >= 0:
            snd.streaming = self.stream_out
        i = self.run2(&snd if to >= 0 else NULL, &rcv if frm >= 0 else NULL, deadline)
        if self.stream_out:
            store_fence()
        return i

    cdef int fail(self, Stream* s, int rc) noexcept nogil:
        if self.err_peer < 0:
            self.err_peer = s.link.peer
        return rc

    cdef void note_waiting(self, Stream* snd, Stream* rcv) noexcept nogil:
        if self.err_peer >= 0:
            return
        if rcv != NULL and not rcv.done:
            self.err_peer = rcv.link.peer
        elif snd != NULL:
            self.err_peer = snd.link.peer

    # ------------------------------------------------------------------ error reporting

    cdef raise_error(self, int rc, str what, double timeout):
        cdef uint32_t w = hc_life_intr(&self.life)
        peer = self.err_peer
        self.broken = True
        if w and rc != E_MISMATCH and rc != E_INTERRUPTED:
            self.raise_interrupted(w, what)   # what a peer's loss or a time-out really followed from
        if rc == E_MISMATCH:
            got = _describe_header(bytes(self.err_got[:HDR_BYTES]))
            want = _describe_header(bytes(self.err_want[:HDR_BYTES]))
            if got == want:            # same call, different schedule: the algorithms differ
                got += f" (algorithm step {self.err_got[7]})"
                want += f" (algorithm step {self.err_want[7]}); the ranks chose different algorithms: " \
                        f"pass the same algorithm= / HETCCL_ALGO on every rank"
            raise InvalidUsage(f"mismatched collective: rank {peer} called {got}, but rank {self.rank} "
                               f"called {want}; every rank must call the same collectives in the same "
                               f"order with the same count, dtype and op")
        if rc == E_PEER_LOST:
            err = PeerLostError(f"rank {peer} closed its connection to rank {self.rank} during {what} "
                                f"(it died, was killed, or aborted after an error of its own: check its "
                                f"output); this communicator cannot be used any more")
            err.peer = peer if peer >= 0 else None
            raise err
        if rc == E_TIMEOUT:
            raise HetcclTimeout(f"{what} on rank {self.rank} timed out after {timeout:g} s waiting for "
                                f"rank {peer}; a rank may be stuck or may not have called {what} "
                                f"(raise timeout= or HETCCL_TIMEOUT if the job is just slow)")
        if rc == E_INTERRUPTED:
            exc = self.pending_exc
            self.pending_exc = None
            raise exc
        raise TransportError(f"{what} failed on rank {self.rank} (code {rc})")

    cdef check_usable(self):
        cdef uint32_t w = hc_life_intr(&self.life)
        if w:
            self.raise_interrupted(w, "this call")
        if self.broken:
            raise CommAborted("this communicator was aborted after an earlier error (or closed); "
                              "create a new one with hetccl.init()")

    # ------------------------------------------------------------------ collectives

    def allreduce(self, sendobj, recvobj, int dtype, int op, int algo, double timeout):
        """recv = reduction over ranks of send (send may be recv: in place). Raises on failure."""
        cdef Py_buffer sv, rv
        cdef bint inplace = sendobj is recvobj
        get_buffer(recvobj, &rv, True)
        if inplace:
            sv = rv
        else:
            try:
                get_buffer(sendobj, &sv, False)
            except BaseException:
                PyBuffer_Release(&rv)
                raise
        try:
            self.run_allreduce(&sv, &rv, inplace, dtype, op, algo, timeout)
        finally:
            if not inplace:
                PyBuffer_Release(&sv)
            PyBuffer_Release(&rv)

    cdef int run_allreduce(self, Py_buffer* sv, Py_buffer* rv, bint inplace, int dtype, int op, int algo,
                           double timeout) except -1:
        """Check and run a ring / recursive-doubling allreduce on pinned buffers (the def entry point
        and the communicator's latency path, collectives.Hot, share it)."""
        cdef int rc
        cdef double deadline
        self.check_usable()
        if sv.len != rv.len:
            raise InvalidUsage(f"allreduce output has {rv.len} bytes but the input has {sv.len}; "
                               f"pass an output of the same size and dtype")
        check_overlap(sv, rv, inplace)
        if rv.len % ESIZE[dtype]:
            raise InvalidUsage(f"buffer of {rv.len} bytes is not a whole number of {_DT_NAMES[dtype]}")
        if get_reduce(dtype, op) == NULL:
            raise InvalidUsage(f"{_OP_NAMES[op]} is not defined for {_DT_NAMES[dtype]}")
        deadline = hc_now() + timeout
        self.begin("allreduce", 0)
        with nogil:
            if algo == ALGO_RD:
                rc = self.allreduce_rd(<char*>sv.buf, <char*>rv.buf, <size_t>rv.len // ESIZE[dtype],
                                       dtype, op, deadline)
            else:
                rc = self.allreduce_ring(<char*>sv.buf, <char*>rv.buf, <size_t>rv.len // ESIZE[dtype],
                                         dtype, op, deadline)
        return self.end(rc, "allreduce", timeout)

    def allgather(self, sendobj, recvobj, int dtype, int algo, double timeout):
        """recv = concatenation over ranks of send (send may be recv's own block: in place)."""
        cdef Py_buffer sv, rv
        cdef bint same = sendobj is recvobj
        self.check_usable()
        pin_allgather(sendobj, recvobj, self.size, self.rank, ESIZE[dtype], &sv, &rv)
        try:
            self.run_allgather(&sv, &rv, dtype, algo, timeout)
        finally:
            release_allgather(same, &sv, &rv)

    cdef int run_allgather(self, Py_buffer* sv, Py_buffer* rv, int dtype, int algo, double timeout) except -1:
        """Run a ring / recursive-doubling allgather on buffers pin_allgather checked."""
        cdef int rc
        cdef double deadline
        deadline = hc_now() + timeout
        self.begin("allgather", <size_t>rv.len)
        with nogil:
            if algo == ALGO_RD:
                rc = self.allgather_rd(<char*>sv.buf, <char*>rv.buf, <size_t>sv.len, dtype, deadline)
            else:
                rc = self.allgather_ring(<char*>sv.buf, <char*>rv.buf, <size_t>sv.len, dtype, deadline)
        return self.end(rc, "allgather", timeout)

    # ---- ring allreduce: reduce-scatter then allgather around the ring, one pipelined stream each way

    cdef size_t slice_bytes(self, int prev, int nxt, size_t es) noexcept nogil:
        """Pipelining unit of a ring: a quarter of the smaller FIFO (4 MiB for socket-only rings)."""
        cdef size_t s = 4 << 20
        if self.links[prev].kind == LK_SHM and self.links[prev].cap // 4 < s:
            s = self.links[prev].cap // 4
        if self.links[nxt].kind == LK_SHM and self.links[nxt].cap // 4 < s:
            s = self.links[nxt].cap // 4
        return s - s % es if s >= es else es

    cdef int allreduce_ring(self, char* sbuf, char* rbuf, size_t count, int dtype, int op,
                            double deadline) noexcept nogil:
        """Ring allreduce, sliced: for each slice of every block, 2N-2 steps around the ring.

        Between shared-memory neighbours every step but the last is fused (receive, reduce and forward
        straight into the next FIFO); elsewhere a send segment waits for the receive it forwards."""
        cdef int N = self.size, r = self.rank, t, b, sb, rb, rc, nsl, j, idx, T = 2 * N - 2
        cdef int prev = (r - 1 + N) % N, nxt = (r + 1) % N
        cdef bint fused
        cdef size_t es = ESIZE[dtype]
        cdef size_t total = count * es, sl, o
        cdef Seg* ssegs
        cdef Seg* rsegs
        cdef size_t bstart[1024]
        cdef size_t blen[1024]
        cdef Stream snd, rcv
        if N == 1:
            if sbuf != rbuf:
                copy_bytes(rbuf, sbuf, total, total >= self.nt_threshold)
                store_fence()
            return 0
        if N > 1024:
            return E_OS
        even_blocks(count, N, es, bstart, blen)
        sl = self.slice_bytes(prev, nxt, es)
        nsl = <int>((blen[0] + sl - 1) // sl) if blen[0] else 1
        fused = self.links[nxt].kind == LK_SHM and self.links[prev].kind == LK_SHM
        ssegs = <Seg*>malloc(sizeof(Seg) * T * nsl * 2)
        if ssegs == NULL:
            return E_OS
        rsegs = ssegs + T * nsl
        for j in range(nsl):
            o = <size_t>j * sl
            for t in range(T):
                idx = j * T + t
                if t <= N - 2:                       # reduce-scatter: send block r-t, get r-t-1
                    sb = (r - t + N) % N
                    rb = (r - t - 1 + 2 * N) % N
                else:                                # allgather: forward the finished block
                    sb = (r + 1 - (t - N + 1) + 2 * N) % N
                    rb = (r - (t - N + 1) + 2 * N) % N
                ssegs[idx].buf = (sbuf if t == 0 else rbuf) + bstart[sb] + o
                ssegs[idx].len = slice_len(blen[sb], o, sl)
                ssegs[idx].loc = NULL
                ssegs[idx].divide = 0
                ssegs[idx].dep = idx - 1 if t > 0 else -1
                ssegs[idx].fwd = fused and t > 0
                ssegs[idx].copy = NULL
                rsegs[idx].copy = NULL
                rsegs[idx].buf = rbuf + bstart[rb] + o
                rsegs[idx].len = slice_len(blen[rb], o, sl)
                rsegs[idx].loc = sbuf + bstart[rb] + o if t <= N - 2 else NULL
                rsegs[idx].divide = N if (op == OP_AVG and t == N - 2) else 0
                rsegs[idx].dep = -1
                rsegs[idx].fwd = fused and t < T - 1
                if fused and t < N - 2:
                    rsegs[idx].buf = NULL            # partial sums never touch the output
        self.stream_init(&snd, nxt, ssegs, T * nsl, COLL_ALLREDUCE, dtype, op, 0, count, es, True)
        self.stream_init(&rcv, prev, rsegs, T * nsl, COLL_ALLREDUCE, dtype, op, 0, count, es, False)
        snd.dep = &rcv
        if fused:
            rcv.fwd = &snd
        rcv.streaming = total >= self.nt_threshold
        rc = self.run2(&snd, &rcv, deadline)
        free(ssegs)
        return rc

    # ---- recursive doubling allreduce (non-powers of two fold the extra ranks in and out)

    cdef int exchange(self, int peer, char* src, char* dst, const char* loc, size_t nbytes,
                      size_t count, int dtype, int op, int phase, bint do_send, bint do_recv,
                      long divide, double deadline) noexcept nogil:
        cdef Seg sseg, rseg
        cdef Stream snd, rcv
        cdef size_t es = ESIZE[dtype]
        sseg.buf = src
        sseg.len = nbytes
        sseg.loc = NULL
        sseg.divide = 0
        sseg.fwd = False
        sseg.dep = -1
        sseg.copy = NULL
        rseg.copy = NULL
        rseg.buf = dst
        rseg.loc = loc
        rseg.len = nbytes
        rseg.divide = divide
        rseg.fwd = False
        rseg.dep = -1
        if do_send:
            self.stream_init(&snd, peer, &sseg, 1, COLL_ALLREDUCE, dtype, op, phase, count, es, True)
        if do_recv:
            self.stream_init(&rcv, peer, &rseg, 1, COLL_ALLREDUCE, dtype, op, phase, count, es, False)
        if do_send and do_recv and src == dst:
            rcv.limit = 0          # in place: never reduce over bytes not yet sent (raised below)
            snd.dep = NULL
            return self.run_inplace(&snd, &rcv, deadline)
        return self.run2(&snd if do_send else NULL, &rcv if do_recv else NULL, deadline)

    cdef int run_inplace(self, Stream* snd, Stream* rcv, double deadline) noexcept nogil:
        """run2 for an exchange that overwrites what it sends: the receive trails the send."""
        cdef Idle st
        cdef long a, b
        cdef int rc
        cdef Stream* pair[2]
        st.since = 0
        st.iters = 0
        st.reaped = 0
        st.all[0] = snd
        st.all[1] = rcv
        while not (snd.done and rcv.done):
            if hc_life_intr(&self.life):
                return E_CANCELLED
            a = self.send_progress(snd) if not snd.done else 0
            if a < 0:
                return self.fail(snd, <int>a)
            rcv.limit = snd.pos if not snd.done else <size_t>-1
            b = self.recv_progress(rcv) if not rcv.done else 0
            if b < 0:
                return self.fail(rcv, <int>b)
            if a or b:
                st.since = 0
                st.iters = 0
                st.reaped = 0
                continue
            pair[0] = snd if snd.waiting else NULL
            pair[1] = rcv if rcv.waiting else NULL
            rc = self.idle(pair, 2, &st, deadline)
            if rc < 0:
                self.note_waiting(snd, rcv)
                return rc
        return 0

    cdef int allreduce_rd(self, char* sbuf, char* rbuf, size_t count, int dtype, int op,
                          double deadline) noexcept nogil:
        cdef int N = self.size, r = self.rank, p = 1, rem, nr, mask, pr, peer, rc, phase = 1
        cdef size_t nbytes = count * ESIZE[dtype]
        cdef char* cur = sbuf
        if N == 1:
            if sbuf != rbuf:
                copy_bytes(rbuf, sbuf, nbytes, 0)
            return 0
        while p * 2 <= N:
            p *= 2
        rem = N - p
        if r < 2 * rem:
            if r % 2 == 0:          # fold in: give my data to r+1, get the result back at the end
                rc = self.exchange(r + 1, sbuf, NULL, NULL, nbytes, count, dtype, op, 200, True, False, 0, deadline)
                if rc < 0:
                    return rc
                return self.exchange(r + 1, NULL, rbuf, NULL, nbytes, count, dtype, op, 201, False, True, 0, deadline)
            rc = self.exchange(r - 1, NULL, rbuf, sbuf, nbytes, count, dtype, op, 200, False, True, 0, deadline)
            if rc < 0:
                return rc
            cur = rbuf
            nr = r // 2
        else:
            nr = r - rem
        mask = 1
        while mask < p:
            pr = nr ^ mask
            peer = pr * 2 + 1 if pr < rem else pr + rem
            rc = self.exchange(peer, cur, rbuf, cur, nbytes, count, dtype, op, phase, True, True,
                               N if (op == OP_AVG and mask * 2 == p) else 0, deadline)
            if rc < 0:
                return rc
            cur = rbuf
            mask <<= 1
            phase += 1
        if r < 2 * rem:
            return self.exchange(r - 1, rbuf, NULL, NULL, nbytes, count, dtype, op, 201, True, False, 0, deadline)
        return 0

    # ---- allgather: ring (bandwidth) and recursive doubling (latency, powers of two)

    cdef int allgather_ring(self, char* sbuf, char* rbuf, size_t nb, int dtype, double deadline) noexcept nogil:
        """Ring allgather of equal blocks (see ring_allgatherv)."""
        cdef int N = self.size, b, rc
        cdef size_t* boff = <size_t*>malloc(sizeof(size_t) * 2 * N)
        if boff == NULL:
            return E_OS
        for b in range(N):
            boff[N + b] = nb
            boff[b] = nb * b
        rc = self.ring_allgatherv(rbuf, boff, boff + N, sbuf, dtype, nb // ESIZE[dtype], COLL_ALLGATHER,
                                  0, deadline)
        free(boff)
        return rc

    cdef int ring_allgatherv(self, char* rbuf, size_t* boff, size_t* blen, const char* own, int dtype,
                             uint64_t count, int coll, int phase, double dl) noexcept nogil:
        """Ring allgather of blocks of any sizes (rank b's at rbuf+boff[b]), sliced; relays fused
        FIFO to FIFO between shared-memory neighbours. own: where this rank's block comes from;
        when it is not already in place it is copied into the output as it is sent (hot in cache)."""
        cdef int N = self.size, r = self.rank, T = N - 1, j, k, nsl, idx, b, rc
        cdef int prev = (r - 1 + N) % N, nxt = (r + 1) % N
        cdef size_t sl = self.slice_bytes(prev, nxt, dtype_size(dtype)), mx = 0, o
        cdef char* mine = rbuf + boff[r]
        cdef bint copy_own = own != NULL and own != mine
        cdef Seg* ss
        cdef Seg* rs
        if N == 1:
            if copy_own:
                copy_bytes(mine, own, blen[r], 0)
            return 0
        for b in range(N):
            if blen[b] > mx:
                mx = blen[b]
        nsl = <int>((mx + sl - 1) // sl) if mx else 1
        ss = <Seg*>malloc(sizeof(Seg) * 2 * T * nsl)
        if ss == NULL:
            return E_OS
        rs = ss + T * nsl
        for j in range(nsl):
            o = <size_t>j * sl
            for k in range(T):
                idx = j * T + k
                b = (r - k + N) % N
                seg(&ss[idx], (<char*>own if (k == 0 and copy_own) else rbuf + boff[b]) + o, NULL,
                     slice_len(blen[b], o, sl), idx - 1 if k > 0 else -1)
                if k == 0 and copy_own:
                    ss[idx].copy = mine + o
                b = (r - k - 1 + N) % N
                seg(&rs[idx], rbuf + boff[b] + o, NULL, slice_len(blen[b], o, sl), -1)
        rc = self.xfer(nxt, ss, T * nsl, prev, rs, T * nsl, coll, dtype, 0, phase, count,
                       self.can_fuse(nxt, prev), dl)
        free(ss)
        return rc

    cdef int allgather_rd(self, char* sbuf, char* rbuf, size_t nb, int dtype, double deadline) noexcept nogil:
        cdef int N = self.size, r = self.rank, mask = 1, peer, rc, phase = 1
        cdef Seg sseg, rseg
        cdef Stream snd, rcv
        cdef size_t count = nb // ESIZE[dtype]
        if N & (N - 1):
            return self.allgather_ring(sbuf, rbuf, nb, dtype, deadline)
        if sbuf != rbuf + nb * r:
            copy_bytes(rbuf + nb * r, sbuf, nb, 0)
        while mask < N:
            peer = r ^ mask
            sseg.buf = rbuf + nb * (r & ~(mask - 1))
            sseg.len = nb * mask
            sseg.loc = NULL
            sseg.divide = 0
            rseg.buf = rbuf + nb * (peer & ~(mask - 1))
            rseg.len = nb * mask
            rseg.loc = NULL
            rseg.divide = 0
            rseg.fwd = False
            sseg.fwd = False
            rseg.dep = -1
            sseg.dep = -1
            rseg.copy = NULL
            sseg.copy = NULL
            self.stream_init(&snd, peer, &sseg, 1, COLL_ALLGATHER, dtype, 0, phase, count, ESIZE[dtype], True)
            self.stream_init(&rcv, peer, &rseg, 1, COLL_ALLGATHER, dtype, 0, phase, count, ESIZE[dtype], False)
            rc = self.run2(&snd, &rcv, deadline)
            if rc < 0:
                return rc
            mask <<= 1
            phase += 1
        return 0


cdef int _check_signals() except -1:
    return PyErr_CheckSignals()
