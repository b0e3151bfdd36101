# cython: language_level=3
"""One pair's link for the point-to-point Endpoints (transports/endpoints.py), without the GIL.

A PairLink wraps the same Link the collective engine drives (link.pxd: shm FIFOs or a non-blocking
TCP socket), so an Endpoint moves bytes with exactly the collectives' code. It only moves what can
move *now* (``write``/``read``); ``wait`` is the engine's waiting policy for one link: spin for
spin_s, then sched_yield for yield_s, then sleep in poll() on the pair's socket (the shm peer rings
it after publishing while we said we sleep), never past the deadline, waking every 100 ms to honour
Ctrl-C. ``cma_read``/``cma_write`` are the c2c endpoint's one-copy moves between two processes.
"""
from cpython.buffer cimport PyBuffer_Release
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint64_t, uintptr_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from hetccl._native.waiting cimport pollfd, poll, POLLIN, POLLOUT, POLLHUP, POLLERR, POLLNVAL, POLLRDHUP, sched_yield
from hetccl._native.atomics cimport hc_now, hc_relax, hc_load_acq, hc_store32_sc, hc_load32_sc
from libc.stdint cimport uint32_t
from hetccl._native.buffers cimport get_buffer
from hetccl._native.c2c cimport hc_cma, hc_futex_wait
from hetccl._native.link cimport *

from hetccl.errors import HetcclTimeout, PeerLostError, TransportError


cdef class PairLink:
    """This side of one pair's data link (see the module docstring)."""
    cdef Link L
    cdef object seg
    cdef public double spin_s
    cdef public double yield_s

    def __cinit__(self):
        memset(&self.L, 0, sizeof(Link))
        self.L.fd = -1
        self.seg = None
        self.spin_s = 20e-6
        self.yield_s = 500e-6

    def attach_tcp(self, int fd):
        self.L.kind = LK_TCP
        self.L.fd = fd

    def attach_shm(self, int fd, seg, size_t fifo_bytes, bint low):
        """Use the two FIFOs of seg (an engine.ShmSegment laid out as add_shm_link expects)."""
        cdef char* base = <char*><uintptr_t>seg.address()
        cdef RingCtl* c0 = <RingCtl*>base
        cdef RingCtl* c1 = <RingCtl*>(base + sizeof(RingCtl))
        cdef char* d0 = base + 4096
        cdef char* d1 = d0 + fifo_bytes
        self.seg = seg
        self.L.kind = LK_SHM
        self.L.fd = fd
        self.L.cap = fifo_bytes
        self.L.mask = fifo_bytes - 1
        if low:
            self.L.tx_ctl, self.L.tx_data, self.L.rx_ctl, self.L.rx_data = c0, d0, c1, d1
        else:
            self.L.tx_ctl, self.L.tx_data, self.L.rx_ctl, self.L.rx_data = c1, d1, c0, d0
        self.L.tx_head = self.L.tx_ctl.head
        self.L.tx_pub = self.L.tx_head
        self.L.tx_tail_c = self.L.tx_ctl.tail
        self.L.rx_tail = self.L.rx_ctl.tail
        self.L.rx_rel = self.L.rx_tail
        self.L.rx_head_c = self.L.rx_ctl.head

    @property
    def closed(self):
        return bool(self.L.closed)

    def close(self):
        """Stop using the link and unmap shared memory (the caller closes the socket)."""
        self.L.kind = LK_NONE
        self.L.closed = 1
        if self.seg is not None:
            self.seg.close()
            self.seg = None

    def write(self, obj, size_t off, size_t n):
        """Move up to n bytes of obj[off:] into the link now; returns bytes moved (raises
        PeerLostError if the peer is gone)."""
        cdef Py_buffer b
        cdef ssize_t w
        if self.L.kind == LK_NONE:
            raise PeerLostError("the endpoint is closed")
        get_buffer(obj, &b, False)
        try:
            if off + n > <size_t>b.len:
                raise ValueError("write past the end of the buffer")
            with nogil:
                if self.L.kind == LK_SHM:
                    w = ring_write(&self.L, <char*>b.buf + off, n)
                    ring_publish(&self.L)
                else:
                    w = tcp_write(&self.L, <char*>b.buf + off, n)
        finally:
            PyBuffer_Release(&b)
        if w < 0:
            raise PeerLostError(f"the peer closed the link ({_os_error(self.L.os_errno)})")
        return w

    def read(self, obj, size_t off, size_t n):
        """Move up to n arrived bytes into obj[off:] (obj None: discard them); returns bytes moved."""
        cdef Py_buffer b
        cdef ssize_t r
        cdef char junk[4096]
        cdef bint have = obj is not None
        if self.L.kind == LK_NONE:
            raise PeerLostError("the endpoint is closed")
        if have:
            get_buffer(obj, &b, True)
        try:
            if have and off + n > <size_t>b.len:
                raise ValueError("read past the end of the buffer")
            with nogil:
                if self.L.kind == LK_SHM:
                    r = ring_read(&self.L, <char*>b.buf + off if have else NULL, n, 0)
                    ring_release(&self.L)
                else:
                    if not have and n > 4096:
                        n = 4096
                    r = tcp_read(&self.L, <char*>b.buf + off if have else junk, n)
        finally:
            if have:
                PyBuffer_Release(&b)
        if r < 0:
            raise PeerLostError(f"the peer closed the link ({_os_error(self.L.os_errno)})")
        return r

    cdef int ready(self, bint rx, bint tx) noexcept nogil:
        """Could a read (rx) or write (tx) move bytes now?"""
        cdef pollfd f
        if self.L.kind == LK_SHM:
            if rx and hc_load_acq(&self.L.rx_ctl.head) != self.L.rx_tail:
                return 1
            if tx and self.L.cap - (self.L.tx_head - hc_load_acq(&self.L.tx_ctl.tail)) > 0:
                return 1
            return 0
        f.fd = self.L.fd
        f.events = (POLLIN if rx else 0) | (POLLOUT if tx else 0)
        f.revents = 0
        return 1 if poll(&f, 1, 0) > 0 else 0

    cdef int gone(self) noexcept nogil:
        """Has the peer hung up? (shm doorbell bytes are drained on the way)."""
        cdef pollfd f
        cdef char junk[256]
        cdef ssize_t got
        if self.L.closed:
            return 1
        f.fd = self.L.fd
        f.events = POLLIN | POLLRDHUP
        f.revents = 0
        if poll(&f, 1, 0) <= 0:
            return 0
        if f.revents & (POLLHUP | POLLERR | POLLNVAL | POLLRDHUP):
            self.L.closed = 1
            return 1
        if self.L.kind == LK_SHM and f.revents & POLLIN:
            while True:
                got = c_recv(self.L.fd, junk, 256, MSG_DONTWAIT)
                if got == 0:
                    self.L.closed = 1
                    return 1
                if got < 0:
                    return 0
        return 0

    cdef int sleep(self, bint rx, bint tx, double deadline) noexcept nogil:
        """Block until the peer wakes us, the link is ready, or it hangs up; 0 when the wait timed out
        (<= 100 ms). Shared memory: a futex wait on our flag (a futex wake leaves us on our own CPU,
        see link.pxd wake_peer; wait() asks gone() for the peer's death each time round); sockets:
        poll()."""
        cdef pollfd f
        cdef int ms, rc
        cdef uint32_t* word
        if self.L.kind == LK_SHM:
            word = &self.L.rx_ctl.cons_sleeping if rx else &self.L.tx_ctl.prod_sleeping
            if rx:
                hc_store32_sc(&self.L.rx_ctl.cons_sleeping, SLEEP_FUTEX)
            if tx:
                hc_store32_sc(&self.L.tx_ctl.prod_sleeping, SLEEP_FUTEX)
            if self.ready(rx, tx):
                rc = 1
            else:
                ms = <int>((deadline - hc_now()) * 1000.0) + 1
                if ms > 50:
                    ms = 50
                if ms > 0:
                    hc_futex_wait(word, SLEEP_FUTEX, ms)
                rc = 0 if hc_load32_sc(word) == SLEEP_FUTEX else 1
            hc_store32_sc(&self.L.rx_ctl.cons_sleeping, 0)
            hc_store32_sc(&self.L.tx_ctl.prod_sleeping, 0)
            return rc
        f.fd = self.L.fd
        f.events = (POLLIN if rx else 0) | (POLLOUT if tx else 0) | POLLRDHUP
        f.revents = 0
        ms = <int>((deadline - hc_now()) * 1000.0) + 1
        return poll(&f, 1, 100 if ms > 100 else (ms if ms > 0 else 0))

    def wait(self, bint rx, bint tx, double timeout):
        """Wait (spin, yield, then poll) until a read (rx) or write (tx) can move bytes or timeout
        seconds pass; returns True when ready, False on timeout. Raises PeerLostError if the peer
        hung up with nothing left to read."""
        cdef double start = hc_now(), now, deadline = start + timeout
        cdef int iters = 0, rc = 0
        with nogil:
            while True:
                if self.ready(rx, tx):
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
                        rc = 1 if self.ready(rx, False) else -1
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
