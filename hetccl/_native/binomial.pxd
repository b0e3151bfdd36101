# Binomial trees: their geometry (inline, shared with halving.pyx) and the rooted schedules built on
# them (binomial.pyx).
from libc.stdint cimport uint64_t
from hetccl._native.engine cimport Engine
from hetccl._native.link cimport Seg
from hetccl._native.stream cimport seg

cdef inline int lowbit_mask(int vr, int N) noexcept nogil:
    """Binomial trees: the span of relative rank vr's subtree (the root's spans the next power of
    two >= N); vr's parent is vr - span, its children vr + m for m = 1, 2, .. < span."""
    cdef int m = 1
    if vr == 0:
        while m < N:
            m <<= 1
        return m
    while not (vr & m):
        m <<= 1
    return m


cdef inline int subtree_segs(Seg* gs, char* base, size_t* boff, size_t* blen, int lo, int hi,
                             int root, int N) noexcept nogil:
    """One segment per block of relative ranks lo .. hi-1 (block of rank (i + root) % N, at its
    offset in base): a subtree's blocks as one message. Returns how many."""
    cdef int i, b, n = 0
    for i in range(lo, hi):
        b = (i + root) % N
        seg(&gs[n], base + boff[b], NULL, blen[b], -1)
        n += 1
    return n


cdef int bcast_binomial(Engine e, char* buf, size_t nb, int root, int dtype, uint64_t count,
                        double dl) noexcept nogil
cdef int bcast_scatter_allgather(Engine e, char* buf, size_t count, int root, int dtype,
                                 double dl) noexcept nogil
cdef int reduce_binomial(Engine e, char* sbuf, char* rbuf, size_t nb, int root, int dtype, int op,
                         uint64_t count, double dl) noexcept nogil
