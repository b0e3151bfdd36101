# cython: language_level=3
"""Single-copy alltoall over cross-memory attach, for communicators whose every pair is ``c2c`` in
cma mode (one host, process_vm_readv permitted).

The pairwise exchange over the shm FIFOs copies every byte twice (the sender into the FIFO, the
receiver out of it), on top of the local block: per rank (N-1)/N x 2 + 1/N of the data in copies,
against (N-1)/N + 1/N for a single copy. When the copies are the bottleneck (large blocks, or more
ranks than cores, where both cores copy all the time) that is the whole gap to Open MPI, whose
shared-memory transport reads the peer's buffer once (its ``smsc/cma``): 2/3 of the time at 2
ranks, 4/7 at 4. Here each rank

1. copies its own block (while the others arrive),
2. publishes its buffers' addresses with the call header in the c2c control slots and syncs
   (direct.pxd ``enter_as``: every rank called the same collective, same count and dtype),
3. reads block ``rank`` of every peer's input straight into its output (one kernel copy each,
   peers in the order rank+1, rank+2, ... so that no two ranks read the same peer at once),
4. syncs again: nobody reads my input after that, so the call may return and the caller reuse it.

No peer has to run for a rank to make progress between the two syncs, which matters with more
ranks than cores: the FIFO exchange needs both ends of a pair on a CPU at once, a FIFO's worth of
bytes at a time.
"""
from libc.stdint cimport uintptr_t

from hetccl._native.atomics cimport hc_now
from hetccl._native.buffers cimport get_buffer
from hetccl._native.c2c cimport C2C_CMA, hc_cma
from hetccl._native.codes cimport *
from hetccl._native.direct cimport PHASE_DIRECT, enter_as, sync
from hetccl._native.engine cimport Engine
from hetccl._native.link cimport E_PEER_LOST, E_CANCELLED
from hetccl._native.life cimport hc_life_intr
from hetccl._native.reduce cimport copy_bytes, store_fence
from cpython.buffer cimport PyBuffer_Release

from hetccl.errors import InvalidUsage


cdef int alltoall_cma(Engine e, char* sbuf, char* rbuf, size_t blk, int dtype, double dl) noexcept nogil:
    """The schedule of the module docstring on pinned buffers of N blocks of blk bytes."""
    cdef int N = e.size, r = e.rank, i, p, rc
    cdef long k
    cdef bint st = blk * N >= e.nt_threshold
    copy_bytes(rbuf + blk * r, sbuf + blk * r, blk, st)
    if st:
        store_fence()
    rc = enter_as(e, COLL_ALLTOALL, dtype, 0, PHASE_DIRECT, blk * N // dtype_size(dtype),
                  <uintptr_t>sbuf, <uintptr_t>rbuf, dl)
    if rc < 0:
        return rc
    for i in range(1, N):
        if hc_life_intr(&e.life):
            return E_CANCELLED
        p = (r + i) % N
        if blk:
            k = hc_cma(e.c2c[p].pid, rbuf + blk * p, e.c2c[p].theirs.sbuf + blk * r, blk, 0)
            if k < 0:
                e.err_peer = p
                return E_PEER_LOST       # ESRCH (gone) or EFAULT (it unmapped its input: it aborted)
    return sync(e, dl)                   # every peer has read my input: the caller may reuse it


def usable(Engine e):
    """True when every pair of the communicator is c2c in cma mode (this schedule can run)."""
    cdef int p
    if e.size < 2 or not e.all_c2c():
        return False
    for p in range(e.size):
        if p != e.rank and e.c2c[p].mode != C2C_CMA:
            return False
    return True


def alltoall(Engine e, sendobj, recvobj, int dtype, double timeout):
    """recvobj block p = block rank of rank p's sendobj (equal blocks), by single-copy CMA reads."""
    cdef Py_buffer a, b
    cdef int rc, N = e.size
    cdef double dl
    cdef size_t es = dtype_size(dtype)
    e.check_usable()
    if not usable(e):
        raise InvalidUsage("the single-copy alltoall needs every pair of this communicator linked by "
                           "c2c in cma mode (one host, process_vm_readv permitted)")
    get_buffer(sendobj, &a, False)
    try:
        get_buffer(recvobj, &b, True)
    except BaseException:
        PyBuffer_Release(&a)
        raise
    try:
        if a.len % (es * N) or a.len != b.len:
            raise InvalidUsage(f"alltoall needs input and output of size x block elements (here "
                               f"{a.len // es} and {b.len // es} for {N} ranks); use alltoallv for "
                               f"uneven blocks")
        if a.buf == b.buf and a.len:
            raise InvalidUsage("alltoall cannot run in place; pass a separate output buffer")
        dl = hc_now() + timeout
        e.begin("alltoall", 0)
        with nogil:
            rc = alltoall_cma(e, <char*>a.buf, <char*>b.buf, <size_t>a.len // N, dtype, dl)
        e.end(rc, "alltoall", timeout)
    finally:
        PyBuffer_Release(&b)
        PyBuffer_Release(&a)


# Where the single copy starts to win (bytes of one rank's input), measured on the 2-vCPU VM this
# was built on against the FIFO pairwise exchange in the same processes (bench/RESULTS.md). With
# more ranks than cores the FIFO exchange also waits for both ends of a pair to be on a CPU: 4 ranks,
# single copy 1.35x at 512 KiB, 1.5x at 1-8 MiB, 2.6x at 32 MiB. With a core per rank it depends on
# the host's vCPU placement: when the two vCPUs share a cache the FIFO's cache-to-cache copies are
# cheap (single copy 0.73x at 512 KiB, 1.0x at 2 MiB, 1.1x at 8 MiB), when they do not it is
# 2.8-3.4x from 512 KiB; from 2 MiB it never lost.
MIN_BYTES = 2 << 20
MIN_BYTES_OVERSUBSCRIBED = 512 << 10


def min_bytes(Engine e, bint oversubscribed):
    """Smallest alltoall (bytes of one rank's input) routed to this schedule, or None (never).

    On by default wherever it can run (every pair c2c in cma mode), unlike the single-copy
    allreduce/allgather, which lose to the FIFO ring on this host. HETCCL_C2C_DIRECT, when set,
    rules here too: off keeps alltoall on the FIFOs, a number of bytes sets the threshold."""
    import os
    from hetccl.transports.c2c import direct_thresholds
    if not usable(e):
        return None
    spec = os.environ.get("HETCCL_C2C_DIRECT", "").strip().lower()
    if spec:
        t = direct_thresholds()               # validates the value
        if t is None:
            return None
        if spec not in ("on", "1", "yes"):
            return min(t.values())
    return MIN_BYTES_OVERSUBSCRIBED if oversubscribed else MIN_BYTES
