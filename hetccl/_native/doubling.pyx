# cython: language_level=3
"""Log-step schedules at distances 2^k: ceil(log2 N) exchanges of whole buffers, the latency
choices for small messages.

* recursive doubling allreduce: exchange with rank ^ 2^k and reduce, log2 N steps; ranks beyond the
  largest power of two fold in first (hand their input to a partner) and get the result at the end;
* recursive doubling allgather (powers of two; otherwise the ring): exchange the blocks gathered so
  far with rank ^ 2^k, doubling them each step;
* between two ranks of an shm or c2c pair, an exchange that fits in one line (48 bytes) goes as a
  one-line message (oneline.pxd), which the receiver polls as one cache line;
* dissemination barrier: round k sends an empty message to rank + 2^k and waits for rank - 2^k's.
"""
from libc.stdint cimport uint64_t

from hetccl._native.codes cimport *
from hetccl._native.engine cimport Engine
from hetccl._native.kernels cimport copy_bytes
from hetccl._native.link cimport Stream, Seg
from hetccl._native.oneline cimport line_pick
from hetccl._native.progress cimport open_stream, run_step, xfer
from hetccl._native.ring cimport allgather_ring
from hetccl._native.stream cimport seg


cdef int exchange(Engine e, int peer, char* src, char* dst, const char* loc, size_t nbytes,
                  size_t count, int dtype, int op, int phase, bint do_send, bint do_recv,
                  long divide, double dl) noexcept nogil:
    """Send src to peer and/or receive into dst (reduced with loc, divided by divide), whole
    buffers, as one-line messages where they fit (oneline.pxd); in place (src == dst) the receive
    trails the send."""
    cdef Seg sseg, rseg
    cdef Stream snd, rcv
    cdef size_t es = dtype_size(dtype)
    seg(&sseg, src, NULL, nbytes, -1)
    seg(&rseg, dst, loc, nbytes, -1)
    rseg.divide = divide
    if do_send:
        open_stream(e, &snd, peer, &sseg, 1, COLL_ALLREDUCE, dtype, op, phase, count, es, True)
        line_pick(&snd, e.lines)
    if do_recv:
        open_stream(e, &rcv, peer, &rseg, 1, COLL_ALLREDUCE, dtype, op, phase, count, es, False)
        line_pick(&rcv, e.lines)
    if do_send and do_recv and src == dst:
        rcv.limit = 0          # in place: never reduce over bytes not yet sent (raised as they go)
        snd.dep = NULL
        return run_step(e, &snd, &rcv, True, dl)
    return run_step(e, &snd if do_send else NULL, &rcv if do_recv else NULL, False, dl)


cdef int allreduce_rd(Engine e, char* sbuf, char* rbuf, size_t count, int dtype, int op,
                      double dl) noexcept nogil:
    cdef int N = e.size, r = e.rank, p = 1, rem, nr, mask, pr, peer, rc, phase = 1
    cdef size_t nbytes = count * dtype_size(dtype)
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
            rc = exchange(e, r + 1, sbuf, NULL, NULL, nbytes, count, dtype, op, 200, True, False, 0, dl)
            if rc < 0:
                return rc
            return exchange(e, r + 1, NULL, rbuf, NULL, nbytes, count, dtype, op, 201, False, True, 0, dl)
        rc = exchange(e, r - 1, NULL, rbuf, sbuf, nbytes, count, dtype, op, 200, False, True, 0, dl)
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
        rc = exchange(e, peer, cur, rbuf, cur, nbytes, count, dtype, op, phase, True, True,
                      N if (op == OP_AVG and mask * 2 == p) else 0, dl)
        if rc < 0:
            return rc
        cur = rbuf
        mask <<= 1
        phase += 1
    if r < 2 * rem:
        return exchange(e, r - 1, rbuf, NULL, NULL, nbytes, count, dtype, op, 201, True, False, 0, dl)
    return 0


cdef int allgather_rd(Engine e, char* sbuf, char* rbuf, size_t nb, int dtype, double dl) noexcept nogil:
    cdef int N = e.size, r = e.rank, mask = 1, peer, rc, phase = 1
    cdef Seg sseg, rseg
    cdef Stream snd, rcv
    cdef size_t es = dtype_size(dtype), count = nb // es
    if N & (N - 1):
        return allgather_ring(e, sbuf, rbuf, nb, dtype, dl)
    if sbuf != rbuf + nb * r:
        copy_bytes(rbuf + nb * r, sbuf, nb, 0)
    while mask < N:
        peer = r ^ mask
        seg(&sseg, rbuf + nb * (r & ~(mask - 1)), NULL, nb * mask, -1)
        seg(&rseg, rbuf + nb * (peer & ~(mask - 1)), NULL, nb * mask, -1)
        open_stream(e, &snd, peer, &sseg, 1, COLL_ALLGATHER, dtype, 0, phase, count, es, True)
        open_stream(e, &rcv, peer, &rseg, 1, COLL_ALLGATHER, dtype, 0, phase, count, es, False)
        line_pick(&snd, e.lines)
        line_pick(&rcv, e.lines)
        rc = run_step(e, &snd, &rcv, False, dl)
        if rc < 0:
            return rc
        mask <<= 1
        phase += 1
    return 0


cdef int barrier_dissemination(Engine e, double dl) noexcept nogil:
    """ceil(log2 N) rounds of empty messages to rank+2^k from rank-2^k."""
    cdef int rc = 0, N = e.size, r = e.rank, k = 1, phase = 0
    cdef Seg gs, gr
    seg(&gs, NULL, NULL, 0, -1)
    seg(&gr, NULL, NULL, 0, -1)
    while k < N and rc >= 0:
        rc = xfer(e, (r + k) % N, &gs, 1, (r - k + N) % N, &gr, 1, COLL_BARRIER, -1, 0, phase, 0, False, dl)
        k <<= 1
        phase += 1
    return rc
