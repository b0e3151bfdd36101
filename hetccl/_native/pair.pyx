# cython: language_level=3
"""One pair's link for the point-to-point Endpoints (transports/endpoints.py), without the GIL.

A PairLink wraps the same Link the collective engine drives (link.pxd), of the same link kinds
(links.pyx), so an Endpoint moves bytes with exactly the collectives' code. It only moves what can
move *now* (``write``/``read``, the kind's raw movers); ``wait`` is the engine's waiting policy for
one link: spin for spin_s, then sched_yield for yield_s, then sleep the way the kind arms it (a
futex on the pair's flag for shm, poll() on the socket for tcp), never past the deadline, waking
every 100 ms to honour Ctrl-C. ``cma_read``/``cma_write`` are the c2c endpoint's one-copy moves
between two processes.
"""
from cpython.buffer cimport PyBuffer_Release
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint64_t, uint32_t, uintptr_t
from libc.string cimport memset

from hetccl._native.atomics cimport hc_now, hc_relax, hc_load32_sc
from hetccl._native.c2c cimport hc_cma, hc_futex_wait
from hetccl._native.fifo cimport SLEEP_POLL, SLEEP_FUTEX
from hetccl._native.link cimport Link, LinkKind, ssize_t
from hetccl._native.links cimport kind_named, unlinked
from hetccl._native.pinning cimport get_buffer
from hetccl._native.posix_wait cimport pollfd, poll, POLLIN, POLLHUP, POLLERR, POLLNVAL, POLLRDHUP, sched_yield

from hetccl.errors import HetcclTimeout, PeerLostError, TransportError


cdef class PairLink:
    """This side of one pair's data link (see the module docstring)."""
    cdef Link L
    cdef object kept
    cdef public double spin_s
    cdef public double yield_s

    def __cinit__(self):
        memset(&self.L, 0, sizeof(Link))
        self.L.fd = -1
        self.L.kind = unlinked()
        self.kept = None
        self.spin_s = 20e-6
        self.yield_s = 500e-6

    def attach(self, str kind, int fd, *args):
        """Carry the pair's bytes by a link kind of links.KINDS over socket fd, with the kind's
        arguments (as Engine.attach)."""
        cdef const LinkKind* k = kind_named(kind)
        if self.L.kind != unlinked():
            raise ValueError("the link is attached already")
        self.L.fd = fd
        self.kept = k.attach(&self.L, args, False)
        self.L.kind = k

    @property
    def closed(self):
        return bool(self.L.closed)

    def close(self):
        """Stop using the link and release what the kind mapped (the caller closes the socket)."""
        self.L.kind.close(&self.L)
        self.L.kind = unlinked()
        self.L.closed = 1
        if self.kept is not None:
            self.kept.close()
            self.kept = None

    def write(self, obj, size_t off, size_t n):
        """Move up to n bytes of obj[off:] into the link now; returns bytes moved (raises
        PeerLostError if the peer is gone)."""
        cdef Py_buffer b
        cdef ssize_t w
        if self.L.kind == unlinked():
            raise PeerLostError("the endpoint is closed")
        get_buffer(obj, &b, False)
        try:
            if off + n > <size_t>b.len:
                raise ValueError("write past the end of the buffer")
            with nogil:
                w = self.L.kind.write(&self.L, <char*>b.buf + off, n)
        finally:
            PyBuffer_Release(&b)
        if w < 0:
            raise PeerLostError(f"the peer closed the link ({_os_error(self.L.os_errno)})")
        return w

    def read(self, obj, size_t off, size_t n):
        """Move up to n arrived bytes into obj[off:] (obj None: discard them); returns bytes moved."""
        cdef Py_buffer b
        cdef ssize_t r
        cdef bint have = obj is not None
        if self.L.kind == unlinked():
            raise PeerLostError("the endpoint is closed")
        if have:
            get_buffer(obj, &b, True)
        try:
            if have and off + n > <size_t>b.len:
                raise ValueError("read past the end of the buffer")
            with nogil:
                r = self.L.kind.read(&self.L, <char*>b.buf + off if have else NULL, n)
        finally:
            if have:
                PyBuffer_Release(&b)
        if r < 0:
            raise PeerLostError(f"the peer closed the link ({_os_error(self.L.os_errno)})")
        return r

    cdef int gone(self) noexcept nogil:
        """Has the peer hung up? (the kind's doorbell bytes are drained on the way)."""
        cdef pollfd f
        if self.L.closed:
            return 1
        f.fd = self.L.fd
        f.events = POLLIN | POLLRDHUP
        f.revents = 0
        if poll(&f, 1, 0) <= 0:
            return 0
        if f.revents & (POLLHUP | POLLERR | POLLNVAL | POLLRDHUP):
            self.L.closed = 1
        elif self.L.kind.woken != NULL:
            self.L.kind.woken(&self.L, f.revents)
        return self.L.closed

    cdef int sleep(self, bint rx, bint tx, double deadline) noexcept nogil:
        """Block until the peer wakes us, the link is ready, or it hangs up; 0 when the wait timed out
        (<= 100 ms). A futex kind (shm) sleeps on the pair's flag (a futex wake leaves us on our own
        CPU, see fifo.pxd; wait() asks gone() for the peer's death each time round); the others
        poll() what the kind armed."""
        cdef const LinkKind* k = self.L.kind
        cdef pollfd f[2]
        cdef uint32_t* wrx = NULL
        cdef uint32_t* wtx = NULL
        cdef uint32_t* word
        cdef uint32_t how = SLEEP_FUTEX if k.futex else SLEEP_POLL
        cdef int ms, rc, n = 0, i
        cdef bint ready = False
        if rx:
            ready = k.arm(&self.L, True, 1, how, &f[n], &wrx) or ready
            n += 1
        if tx:
            ready = k.arm(&self.L, False, 1, how, &f[n], &wtx) or ready
            n += 1
        ms = <int>((deadline - hc_now()) * 1000.0) + 1
        if ready:
            rc = 1
        elif k.futex:
            word = wrx if rx else wtx
            if ms > 50:
                ms = 50
            if ms > 0:
                hc_futex_wait(word, SLEEP_FUTEX, ms)
            rc = 0 if hc_load32_sc(word) == SLEEP_FUTEX else 1
        else:
            for i in range(n):
                f[i].events |= POLLRDHUP
                f[i].revents = 0
            rc = poll(f, n, 100 if ms > 100 else (ms if ms > 0 else 0))
        if rx:
            k.disarm(&self.L, True)
        if tx:
            k.disarm(&self.L, False)
        return rc

    def wait(self, bint rx, bint tx, double timeout):
        """Wait (spin, yield, then sleep) until a read (rx) or write (tx) can move bytes or timeout
        seconds pass; returns True when ready, False on timeout. Raises PeerLostError if the peer
        hung up with nothing left to read."""
        cdef double start = hc_now(), now, deadline = start + timeout
        cdef int iters = 0, rc = 0
        if self.L.kind == unlinked():
            raise PeerLostError("the endpoint is closed")
        with nogil:
            while True:
                if self.L.kind.ready(&self.L, rx, tx):
                    rc = 1
                    break
                iters += 1
                if (iters & 63) != 0 and self.spin_s > 0:
                    hc_relax()
                    continue
                now = hc_now()
                if now >= deadline:
                    rc = 0
                    break
                if now - start < self.spin_s:
                    hc_relax()
                elif now - start < self.spin_s + self.yield_s:
                    sched_yield()
                else:
                    if self.gone():
                        rc = 1 if self.L.kind.ready(&self.L, rx, False) else -1
                        break
                    if self.sleep(rx, tx, deadline) == 0:
                        with gil:
                            PyErr_CheckSignals()
        if rc < 0:
            raise PeerLostError("the peer closed the link while this side waited for it")
        return rc == 1

    def cma_read(self, int pid, obj, size_t off, uint64_t raddr, size_t n):
        """Copy n bytes at raddr in process pid into obj[off:] (one kernel copy)."""
        return _cma(pid, obj, off, raddr, n, 0)

    def cma_write(self, int pid, obj, size_t off, uint64_t raddr, size_t n):
        """Copy n bytes of obj[off:] to raddr in process pid."""
        return _cma(pid, obj, off, raddr, n, 1)


cdef _cma(int pid, obj, size_t off, uint64_t raddr, size_t n, int write):
    cdef Py_buffer b
    cdef long rc
    get_buffer(obj, &b, not write)
    try:
        if off + n > <size_t>b.len:
            raise ValueError("access past the end of the local buffer")
        with nogil:
            rc = hc_cma(pid, <char*>b.buf + off, raddr, n, write)
    finally:
        PyBuffer_Release(&b)
    if rc < 0:
        import os
        if -rc == 3:          # ESRCH
            raise PeerLostError(f"the peer process {pid} is gone")
        raise TransportError(f"cross-memory {'write' if write else 'read'} of {n} bytes at {raddr:#x} in "
                             f"process {pid} failed: {os.strerror(-rc)} (was the region closed?)")
    return n


def buffer_address(obj, bint writable=False):
    """(address, nbytes) of a C-contiguous buffer (the caller keeps obj alive while it is used)."""
    cdef Py_buffer b
    get_buffer(obj, &b, writable)
    addr, n = <uintptr_t>b.buf, b.len
    PyBuffer_Release(&b)
    return addr, n


cdef str _os_error(int e):
    import os
    return os.strerror(e) if e else "end of stream"
