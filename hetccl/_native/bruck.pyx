# cython: language_level=3
"""Bruck's algorithms: ceil(log2 N) steps for any N, the latency choice for small messages.

Both work in "rotated" positions (position i of rank r is about rank r + i) without rotating any
buffer: the positions map onto the user's buffers (wrapping at most once for allgather, one block
per position for alltoall), and each step is one ``progress.xfer`` of many segments.
"""
from libc.stdlib cimport malloc, free

from hetccl._native.codes cimport *
from hetccl._native.engine cimport Engine
from hetccl._native.link cimport Seg, E_OS
from hetccl._native.progress cimport xfer
from hetccl._native.stream cimport seg
from hetccl._native.kernels cimport copy_bytes


cdef int wrapped_segs(Seg* g, char* base, size_t nb, int first, int n, int N) noexcept nogil:
    """Segments for blocks first, first+1, ... (n of them, modulo N) of base: one, or two when the
    run wraps past block N-1. Returns how many."""
    cdef int k = N - first if first + n > N else n
    seg(&g[0], base + <size_t>first * nb, NULL, <size_t>k * nb, -1)
    if k == n:
        return 1
    seg(&g[1], base, NULL, <size_t>(n - k) * nb, -1)
    return 2


cdef int allgather_bruck(Engine e, const char* sbuf, char* rbuf, size_t nb, int dtype,
                         double dl) noexcept nogil:
    """Step k (d = 2^k): send my first min(d, N-d) positions to rank r-d, receive rank r+d's into
    positions d.. . Position i is block (r + i) % N of the output, so it lands in place."""
    cdef int N = e.size, r = e.rank, d = 1, k = 0, n, ns, nr, rc = 0
    cdef Seg gs[2]
    cdef Seg gr[2]
    if sbuf != rbuf + nb * r:
        copy_bytes(rbuf + nb * r, sbuf, nb, 0)
    while d < N and rc >= 0:
        n = d if d < N - d else N - d
        ns = wrapped_segs(gs, rbuf, nb, r, n, N)
        nr = wrapped_segs(gr, rbuf, nb, (r + d) % N, n, N)
        rc = xfer(e, (r - d + N) % N, gs, ns, (r + d) % N, gr, nr, COLL_ALLGATHER, dtype, 0, 32 + k,
                    nb // dtype_size(dtype), False, dl)
        d <<= 1
        k += 1
    return rc


cdef inline int top_bit(int i) noexcept nogil:
    cdef int b = 0
    while (i >> (b + 1)) > 0:
        b += 1
    return b


cdef int alltoall_bruck(Engine e, const char* sbuf, char* rbuf, size_t nb, int dtype,
                        double dl) noexcept nogil:
    """Position i starts as my block for rank r+i and travels i ranks forward: at step k (d = 2^k)
    every position with bit k set goes to rank r+d, and rank r-d's come back in its place. A
    position's last hop (its top bit) lands in the output at block r-i; earlier hops alternate
    between two scratch slots, because the slot being sent cannot take what arrives meanwhile."""
    cdef int N = e.size, r = e.rank, d = 1, k = 0, i, n, rc = 0
    cdef char* scr = e.scratch(2 * <size_t>N * nb)
    cdef char** cur = <char**>malloc(sizeof(char*) * N + sizeof(Seg) * 2 * N)
    cdef Seg* gs
    cdef Seg* gr
    cdef char* nxt
    if scr == NULL or cur == NULL:
        free(cur)
        return E_OS
    gs = <Seg*>(cur + N)
    gr = gs + N
    for i in range(N):
        cur[i] = <char*>sbuf + <size_t>((r + i) % N) * nb
    copy_bytes(rbuf + <size_t>r * nb, sbuf + <size_t>r * nb, nb, 0)
    while d < N and rc >= 0:
        n = 0
        for i in range(1, N):
            if not (i & d):
                continue
            if top_bit(i) == k:
                nxt = rbuf + <size_t>((r - i + N) % N) * nb
            elif cur[i] == scr + <size_t>i * nb:
                nxt = scr + <size_t>(N + i) * nb
            else:
                nxt = scr + <size_t>i * nb
            seg(&gs[n], cur[i], NULL, nb, -1)
            seg(&gr[n], nxt, NULL, nb, -1)
            cur[i] = nxt
            n += 1
        rc = xfer(e, (r + d) % N, gs, n, (r - d + N) % N, gr, n, COLL_ALLTOALL, dtype, 0, 128 + k,
                    0, False, dl)        # count 0 like pairwise: a mix of the two reads "algorithm"
        d <<= 1
        k += 1
    free(cur)
    return rc
