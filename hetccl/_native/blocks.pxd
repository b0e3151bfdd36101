# How schedules cut a buffer: into one block per rank, and blocks into pipelining slices.

cdef inline size_t slice_len(size_t blen, size_t off, size_t sl) noexcept nogil:
    """Length of the slice starting at off of a block of blen bytes (0 past its end)."""
    if off >= blen:
        return 0
    return sl if blen - off > sl else blen - off


cdef inline void even_blocks(size_t count, int n, size_t es, size_t* boff, size_t* blen) noexcept nogil:
    """Split count elements into n blocks as evenly as possible (the first count % n get one more);
    offsets and lengths in bytes."""
    cdef size_t base = count // n, rem = count % n
    cdef int b
    for b in range(n):
        boff[b] = (b * base + (b if <size_t>b < rem else rem)) * es
        blen[b] = (base + (1 if <size_t>b < rem else 0)) * es
