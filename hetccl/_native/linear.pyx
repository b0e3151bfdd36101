# cython: language_level=3
"""Schedules that talk to every peer in turn, one message each: N-1 steps.

* linear gather / scatter: the root receives (sends) every other rank's block, in rank order from
  root+1 (blocks of any sizes: gatherv, scatterv);
* pairwise alltoall: at step k send my block for rank+k and receive rank-k's block for me (blocks
  of any sizes: alltoallv), up to WINDOW steps under way at once.
"""
from hetccl._native.codes cimport *
from hetccl._native.engine cimport Engine
from hetccl._native.kernels cimport copy_bytes
from hetccl._native.link cimport Seg, Stream
from hetccl._native.progress cimport open_stream, run_pairs, xfer
from hetccl._native.stream cimport seg

cdef enum:
    WINDOW = 4          # pairwise alltoall steps under way at once (2 streams each: MAX_WAIT, progress.pxd)

PAIRWISE_WINDOW = WINDOW    # for the cost model's price of the window (collectives/alltoall.py WINDOW)


cdef int gather_linear(Engine e, char* sbuf, size_t slen, char* rbuf, size_t* blocks, int root,
                       int dtype, double dl) noexcept nogil:
    """blocks: N byte offsets in rbuf, then N byte lengths (the root's only)."""
    cdef int N = e.size, i, src, rc = 0
    cdef Seg g
    if e.rank != root:
        seg(&g, sbuf, NULL, slen, -1)
        return xfer(e, root, &g, 1, -1, NULL, 0, COLL_GATHER, dtype, 0, 0, 0, False, dl)
    copy_bytes(rbuf + blocks[root], sbuf, slen, 0)
    for i in range(1, N):
        src = (root + i) % N
        seg(&g, rbuf + blocks[src], NULL, blocks[N + src], -1)
        rc = xfer(e, -1, NULL, 0, src, &g, 1, COLL_GATHER, dtype, 0, 0, 0, False, dl)
        if rc < 0:
            break
    return rc


cdef int scatter_linear(Engine e, char* sbuf, char* rbuf, size_t rlen, size_t* blocks, int root,
                        int dtype, double dl) noexcept nogil:
    """blocks: N byte offsets in sbuf, then N byte lengths (the root's only)."""
    cdef int N = e.size, i, dst, rc = 0
    cdef Seg g
    if e.rank != root:
        seg(&g, rbuf, NULL, rlen, -1)
        return xfer(e, -1, NULL, 0, root, &g, 1, COLL_SCATTER, dtype, 0, 0, 0, False, dl)
    copy_bytes(rbuf, sbuf + blocks[root], rlen, 0)
    for i in range(1, N):
        dst = (root + i) % N
        seg(&g, sbuf + blocks[dst], NULL, blocks[N + dst], -1)
        rc = xfer(e, dst, &g, 1, -1, NULL, 0, COLL_SCATTER, dtype, 0, 0, 0, False, dl)
        if rc < 0:
            break
    return rc


cdef int _window = WINDOW         # the steps alltoall_pairwise keeps under way (_set_window)


def _set_window(int steps=WINDOW):
    """How many steps the pairwise alltoall keeps under way (1 to WINDOW; 1: one step at a time,
    the schedule before the window). For the benchmark's same-process A/B only."""
    global _window
    _window = max(1, min(WINDOW, steps))


cdef int alltoall_pairwise(Engine e, char* sbuf, char* rbuf, size_t* offs, int dtype,
                           double dl) noexcept nogil:
    """offs: N send offsets, N send lengths, N receive offsets, N receive lengths (bytes).

    Step k sends my block for rank+k and receives rank-k's block, as Open MPI's pairwise exchange
    orders them; up to WINDOW steps are under way at once (progress.pyx: run_pairs), a finished
    step's place taken by the next. One step at a time, a step waited for its two peers even
    when the other peers' blocks could move: with more ranks than cores each step then waited
    for a peer to be given a core. With the window, a rank fills the FIFOs of every peer of its
    window (at 8 ranks a whole 128 KiB-1 MiB block fits one FIFO) and drains the ones whose
    bytes have come, in any order; with the steps in one order on every rank and a bounded
    window, every pair direction carries one message per call, as before (Open MPI's linear_sync
    bounds its outstanding requests alike)."""
    cdef int N = e.size, r = e.rank, k, i, w, to, frm, rc = 0, left
    cdef size_t* slen = offs + N
    cdef size_t* roff = offs + 2 * N
    cdef size_t* rlen = offs + 3 * N
    cdef size_t es = dtype_size(dtype)
    cdef Seg gs[WINDOW]
    cdef Seg gr[WINDOW]
    cdef Stream snd[WINDOW]
    cdef Stream rcv[WINDOW]
    copy_bytes(rbuf + roff[r], sbuf + offs[r], slen[r], 0)
    if N == 2:                  # one step: the exchange as every two-rank schedule runs it
        to = 1 - r
        seg(&gs[0], sbuf + offs[to], NULL, slen[to], -1)
        seg(&gr[0], rbuf + roff[to], NULL, rlen[to], -1)
        return xfer(e, to, &gs[0], 1, to, &gr[0], 1, COLL_ALLTOALL, dtype, 0, 1, 0, False, dl)
    w = N - 1 if N - 1 < _window else _window
    k = 1
    for i in range(w):
        open_step(e, &snd[i], &rcv[i], &gs[i], &gr[i], sbuf, rbuf, offs, k, dtype, es)
        k += 1
    left = N - 1
    while left > 0:
        i = run_pairs(e, snd, rcv, w, dl)
        if i < 0:
            return i
        left -= 1
        if k < N:
            open_step(e, &snd[i], &rcv[i], &gs[i], &gr[i], sbuf, rbuf, offs, k, dtype, es)
            k += 1
    return rc


cdef inline void open_step(Engine e, Stream* snd, Stream* rcv, Seg* gs, Seg* gr, char* sbuf, char* rbuf,
                           size_t* offs, int k, int dtype, size_t es) noexcept nogil:
    """Step k of the pairwise alltoall in one slot of its window: my block to rank+k, rank-k's to me."""
    cdef int N = e.size, to = (e.rank + k) % N, frm = (e.rank - k + N) % N
    seg(gs, sbuf + offs[to], NULL, offs[N + to], -1)
    seg(gr, rbuf + offs[2 * N + frm], NULL, offs[3 * N + frm], -1)
    open_stream(e, snd, to, gs, 1, COLL_ALLTOALL, dtype, 0, k, 0, es, True)
    open_stream(e, rcv, frm, gr, 1, COLL_ALLTOALL, dtype, 0, k, 0, es, False)
    snd.streaming = e.stream_out
    rcv.streaming = e.stream_out
