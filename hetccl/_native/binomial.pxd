# Binomial-tree geometry shared by the rooted schedules (inline only, no module behind it).

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
