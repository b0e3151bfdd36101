# cython: language_level=3
"""Double binary tree allreduce (the idea of NCCL's trees, written from its description).

Two binary trees over the ranks, complementary: a rank that is a leaf in one is an inner node of
the other (the second tree is the first mirrored, r -> N-1-r, for even N, and shifted, r -> r-1,
for odd N). Each tree reduces half of the data up to its root and broadcasts it back down, both
halves at once, pipelined in slices: a rank sends slice j on while its children already push
slice j+1 into the FIFOs. Latency grows with the depth (2 log2 N steps), not with N like a ring.

The schedule is a sequence of single messages issued in the same (slice, tree) order on every
rank, so every directed link sees its messages in the order the receiver posts them; within one
(slice, tree) step the dependencies follow tree edges, hence it cannot deadlock. Slices are sized
from the call (count, N) alone, so every rank cuts the same messages.
"""
from libc.stdint cimport uint64_t

from hetccl._native.codes cimport *
from hetccl._native.blocks cimport slice_len
from hetccl._native.engine cimport Engine
from hetccl._native.link cimport Seg, E_OS
from hetccl._native.progress cimport xfer
from hetccl._native.stream cimport seg
from hetccl._native.kernels cimport copy_bytes


cdef void btree(int r, int N, int* parent, int* kids) noexcept nogil:
    """The in-order binary tree over 0..N-1 rooted at 0 (whose one child is the largest power of
    two below N): r's parent and up to two children (-1: none), from r's lowest set bit."""
    cdef int bit, h
    kids[0] = -1
    kids[1] = -1
    if r == 0:
        parent[0] = -1
        if N > 1:
            h = 1
            while h * 2 < N:
                h <<= 1
            kids[0] = h
        return
    bit = r & (-r)
    if r & (bit << 1):                   # ..11[0..]: right child of ..10
        parent[0] = r - bit
    else:                                # ..01[0..]: left child of ..10, or right child of ..00
        parent[0] = r + bit if r + bit < N else r - bit
    if bit > 1:
        kids[0] = r - bit // 2
        h = bit // 2
        while h > 0 and r + h >= N:
            h >>= 1
        if h > 0:
            kids[1] = r + h


cdef void dtree(int r, int N, int t, int* parent, int* kids) noexcept nogil:
    """Tree t (0 or 1) of the double binary tree, in real ranks."""
    cdef int pos, i
    if t == 0:
        btree(r, N, parent, kids)
        return
    pos = N - 1 - r if N % 2 == 0 else (r - 1 + N) % N
    btree(pos, N, parent, kids)
    if parent[0] >= 0:
        parent[0] = N - 1 - parent[0] if N % 2 == 0 else (parent[0] + 1) % N
    for i in range(2):
        if kids[i] >= 0:
            kids[i] = N - 1 - kids[i] if N % 2 == 0 else (kids[i] + 1) % N


cdef size_t tree_slice(size_t half, int N, size_t es) noexcept nogil:
    """Pipelining unit: an eighth of a half, between 64 KiB and a quarter of the FIFO (1 MiB, or
    256 KiB above 4 ranks per host), from the call alone so every rank agrees."""
    cdef size_t top = (1 << 20) if N <= 4 else (256 << 10), s = half // 8
    if s < (64 << 10):
        s = 64 << 10
    if s > top:
        s = top
    s -= s % es
    return s if s else es


cdef int allreduce_dbtree(Engine e, char* sbuf, char* rbuf, size_t count, int dtype, int op,
                          double dl) noexcept nogil:
    """Reduce each half up its tree, then broadcast it down; the roots hold the only reduction of
    each element, so every rank ends bit-identical. AVG: the root divides as the last sum lands."""
    cdef int N = e.size, t, j, c, ns, rc
    cdef int par[2]
    cdef int kids[4]
    cdef size_t es = dtype_size(dtype), sl, o, ln, mx
    cdef size_t hoff[2]
    cdef size_t hlen[2]
    cdef char* acc
    cdef const char* mine
    cdef bint have, streaming = e.stream_out
    cdef Seg g
    if N == 1:
        if sbuf != rbuf:
            copy_bytes(rbuf, sbuf, count * es, 0)
        return 0
    hoff[0] = 0
    hlen[0] = (count + 1) // 2 * es
    hoff[1] = hlen[0]
    hlen[1] = count * es - hlen[0]
    mx = hlen[0]
    sl = tree_slice(mx, N, es)
    ns = <int>((mx + sl - 1) // sl) if mx else 1
    for t in range(2):
        dtree(e.rank, N, t, &par[t], &kids[2 * t])
    e.stream_out = False                      # partial sums are re-read to be sent up
    for j in range(ns):                       # up: children's partial sums into mine, then to parent
        o = <size_t>j * sl
        for t in range(2):
            ln = slice_len(hlen[t], o, sl)
            acc = rbuf + hoff[t] + o
            mine = sbuf + hoff[t] + o
            have = False
            for c in range(2):
                if kids[2 * t + c] < 0:
                    continue
                seg(&g, acc, <const char*>acc if have else mine, ln, -1)
                if par[t] < 0 and op == OP_AVG and (c == 1 or kids[2 * t + 1] < 0):
                    g.divide = N
                rc = xfer(e, -1, NULL, 0, kids[2 * t + c], &g, 1, COLL_ALLREDUCE, dtype, op, 160 + t,
                            count, False, dl)
                if rc < 0:
                    return rc
                have = True
            if par[t] >= 0:
                seg(&g, acc if have else <char*>mine, NULL, ln, -1)
                rc = xfer(e, par[t], &g, 1, -1, NULL, 0, COLL_ALLREDUCE, dtype, op, 160 + t, count,
                            False, dl)
                if rc < 0:
                    return rc
    e.stream_out = streaming
    for j in range(ns):                       # down: the root's sums to every rank
        o = <size_t>j * sl
        for t in range(2):
            ln = slice_len(hlen[t], o, sl)
            acc = rbuf + hoff[t] + o
            seg(&g, acc, NULL, ln, -1)
            if par[t] >= 0:
                rc = xfer(e, -1, NULL, 0, par[t], &g, 1, COLL_ALLREDUCE, dtype, op, 170 + t, count,
                            False, dl)
                if rc < 0:
                    return rc
            for c in range(2):
                if kids[2 * t + c] >= 0:
                    rc = xfer(e, kids[2 * t + c], &g, 1, -1, NULL, 0, COLL_ALLREDUCE, dtype, op,
                                170 + t, count, False, dl)
                    if rc < 0:
                        return rc
    return 0
