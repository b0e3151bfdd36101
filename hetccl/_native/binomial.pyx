# cython: language_level=3
"""Rooted schedules on binomial trees: log2 N levels from (or to) the root.

Relative ranks (``vr = (rank - root) mod size``) make every tree the same as the one rooted at 0;
vr's subtree spans vr .. vr + lowbit_mask(vr) (binomial.pxd).

* binomial broadcast: the root's buffer down the tree, one message per child;
* scatter-allgather broadcast (van de Geijn): a binomial scatter of N blocks from the root, then a
  ring allgather (ring.pyx), for large buffers;
* binomial reduce: children's partial sums are reduced into mine, then sent up to my parent.
"""
from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free

from hetccl._native.blocks cimport even_blocks
from hetccl._native.codes cimport *
from hetccl._native.engine cimport Engine
from hetccl._native.kernels cimport copy_bytes, divide_by
from hetccl._native.link cimport Seg, E_OS
from hetccl._native.progress cimport xfer
from hetccl._native.ring cimport ring_allgatherv
from hetccl._native.stream cimport seg


cdef int bcast_binomial(Engine e, char* buf, size_t nb, int root, int dtype, uint64_t count,
                        double dl) noexcept nogil:
    cdef int N = e.size, vr = (e.rank - root + N) % N, mask, rc
    cdef Seg g
    seg(&g, buf, NULL, nb, -1)
    mask = lowbit_mask(vr, N)
    if vr:
        rc = xfer(e, -1, NULL, 0, (vr - mask + root) % N, &g, 1, COLL_BROADCAST, dtype, 0, 0, count, False, dl)
        if rc < 0:
            return rc
    mask >>= 1
    while mask > 0:
        if vr + mask < N:
            rc = xfer(e, (vr + mask + root) % N, &g, 1, -1, NULL, 0, COLL_BROADCAST, dtype, 0, 0, count, False, dl)
            if rc < 0:
                return rc
        mask >>= 1
    return 0


cdef int bcast_scatter_allgather(Engine e, char* buf, size_t count, int root, int dtype,
                                 double dl) noexcept nogil:
    """van de Geijn: binomial scatter of N blocks from the root, then a ring allgather."""
    cdef int N = e.size, r = e.rank, vr = (r - root + N) % N, mask, m, n, rc = 0
    cdef size_t es = dtype_size(dtype)
    cdef size_t* boff = <size_t*>malloc(sizeof(size_t) * 2 * N)
    cdef size_t* blen
    cdef Seg* gs
    if boff == NULL:
        return E_OS
    blen = boff + N
    gs = <Seg*>malloc(sizeof(Seg) * N)
    if gs == NULL:
        free(boff)
        return E_OS
    even_blocks(count, N, es, boff, blen)
    mask = lowbit_mask(vr, N)
    if vr:                                   # receive my subtree's blocks (relative vr .. vr+mask)
        n = subtree_segs(gs, buf, boff, blen, vr, min(vr + mask, N), root, N)
        rc = xfer(e, -1, NULL, 0, (vr - mask + root) % N, gs, n, COLL_BROADCAST, dtype, 0, 1, count, False, dl)
    m = mask >> 1
    while rc >= 0 and m > 0:
        if vr + m < N:
            n = subtree_segs(gs, buf, boff, blen, vr + m, min(vr + 2 * m, N), root, N)
            rc = xfer(e, (vr + m + root) % N, gs, n, -1, NULL, 0, COLL_BROADCAST, dtype, 0, 1, count, False, dl)
        m >>= 1
    if rc >= 0:
        rc = ring_allgatherv(e, buf, boff, blen, NULL, dtype, count, COLL_BROADCAST, 2, dl)
    free(gs)
    free(boff)
    return rc


cdef int reduce_binomial(Engine e, char* sbuf, char* rbuf, size_t nb, int root, int dtype, int op,
                         uint64_t count, double dl) noexcept nogil:
    """Binomial tree: children's partial sums are reduced into mine, then sent up to my parent."""
    cdef int N = e.size, vr = (e.rank - root + N) % N, mask, m, rc
    cdef char* acc = rbuf if vr == 0 else e.scratch(nb)
    cdef const char* cur = sbuf
    cdef Seg g
    if acc == NULL:
        return E_OS
    mask = lowbit_mask(vr, N)
    m = 1
    while m < mask:                            # children vr+1, vr+2, vr+4, ... below my span
        if vr + m < N:
            seg(&g, acc, cur, nb, -1)
            rc = xfer(e, -1, NULL, 0, (vr + m + root) % N, &g, 1, COLL_REDUCE, dtype, op, 0, count, False, dl)
            if rc < 0:
                return rc
            cur = acc
        m <<= 1
    if vr:
        seg(&g, <char*>cur, NULL, nb, -1)
        return xfer(e, (vr - mask + root) % N, &g, 1, -1, NULL, 0, COLL_REDUCE, dtype, op, 0, count, False, dl)
    if cur != acc:
        copy_bytes(acc, cur, nb, 0)
    if op == OP_AVG:
        divide_by(acc, nb // dtype_size(dtype), dtype, N)
    return 0
