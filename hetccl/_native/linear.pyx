# cython: language_level=3
"""Schedules that talk to every peer in turn, one message each: N-1 steps.

* linear gather / scatter: the root receives (sends) every other rank's block, in rank order from
  root+1 (blocks of any sizes: gatherv, scatterv);
* pairwise alltoall: at step k send my block for rank+k and receive rank-k's block for me (blocks
  of any sizes: alltoallv).
"""
from hetccl._native.codes cimport *
from hetccl._native.engine cimport Engine
from hetccl._native.kernels cimport copy_bytes
from hetccl._native.link cimport Seg
from hetccl._native.progress cimport xfer
from hetccl._native.stream cimport seg


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


cdef int alltoall_pairwise(Engine e, char* sbuf, char* rbuf, size_t* offs, int dtype,
                           double dl) noexcept nogil:
    """offs: N send offsets, N send lengths, N receive offsets, N receive lengths (bytes)."""
    cdef int N = e.size, r = e.rank, k, to, frm, rc = 0
    cdef size_t* slen = offs + N
    cdef size_t* roff = offs + 2 * N
    cdef size_t* rlen = offs + 3 * N
    cdef Seg gs, gr
    copy_bytes(rbuf + roff[r], sbuf + offs[r], slen[r], 0)
    for k in range(1, N):
        to = (r + k) % N
        frm = (r - k + N) % N
        seg(&gs, sbuf + offs[to], NULL, slen[to], -1)
        seg(&gr, rbuf + roff[frm], NULL, rlen[frm], -1)
        rc = xfer(e, to, &gs, 1, frm, &gr, 1, COLL_ALLTOALL, dtype, 0, k, 0, False, dl)
        if rc < 0:
            break
    return rc
