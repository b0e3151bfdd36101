# C-level interface of the reduction / copy kernels (implemented in kernels.pyx).
# All functions are nogil and never raise: callers validate (dtype, op) before calling.

ctypedef void (*reduce_fn)(void* dst, const void* a, const void* b, size_t count,
                           bint streaming) noexcept nogil

# dst[i] = a[i] OP b[i] for i < count (elements, not bytes). dst may alias a or b.
# Returns NULL when op is not defined for dtype. AVG returns the SUM kernel (divide afterwards).
# fp16/bf16/fp8 are widened to float32, combined, and rounded back (round-to-nearest-even).
# streaming=True uses non-temporal stores for dst (for outputs >= 16 MiB that are not re-read soon);
# the caller issues store_fence() before publishing such data to another process.
cdef reduce_fn get_reduce(int dtype, int op) noexcept nogil

ctypedef void (*dual_fn)(void* d, void* e, const void* a, const void* b, size_t count,
                         int streaming) noexcept nogil

cdef extern from "kernels.h" nogil:
    enum: HK_PAGED

# d[i] = e[i] = a[i] OP b[i]: one combine, two outputs (streamed to both when streaming; d and e
# must not alias a or b). Same dtype/op rules and NULL as get_reduce. streaming | HK_PAGED: the
# inputs are on 4 KiB pages (shared memory), touched a few pages ahead (kernels.h: HK_PAGED).
cdef dual_fn get_reduce_dual(int dtype, int op) noexcept nogil

# The fused ring relay's one pass, d[i] = e[i] = a[i] OP b[i]: d (the next rank's FIFO) gets
# ordinary stores (it stays in cache for the peer), e (the output) streaming ones when streaming.
# d aliases nothing; e may be a or b (in place). Same dtype/op rules and NULL as get_reduce.
cdef dual_fn get_reduce_forward(int dtype, int op) noexcept nogil

# memcpy with optional non-temporal stores (glibc never streams on this class of machine).
cdef void copy_bytes(void* dst, const void* src, size_t n, bint streaming) noexcept nogil

# dst = dst2 = src: src is loaded once and stored twice (streamed when equally aligned).
cdef void copy_bytes_dual(void* dst, void* dst2, const void* src, size_t n,
                          bint streaming) noexcept nogil

# dst = src and dst2 = src2 (n bytes each) in one pass, dst2 streamed when streaming: a ring step's
# send into a FIFO and its receive out of one, their loads in flight together. No range may overlap.
cdef void copy_bytes_pair(void* dst, const void* src, void* dst2, const void* src2, size_t n,
                          bint streaming) noexcept nogil

# AVG finishing step: buf[i] = buf[i] / n (integers: truncating division, like NCCL's ncclAvg).
cdef void divide_by(void* buf, size_t count, int dtype, long n) noexcept nogil

# sfence (x86) / full barrier elsewhere: orders earlier streaming stores before later stores.
cdef void store_fence() noexcept nogil


cdef inline void reduce_ordered(reduce_fn fn, char* dst, const char* loc, const char* inc, size_t count,
                                bint swap, bint streaming) noexcept nogil:
    """dst = loc OP incoming, or incoming OP loc with swap (so both ranks of an exchange combine
    the lower rank's operand first: MIN/MAX of -0.0 and +0.0 then agree bit for bit)."""
    if swap:
        fn(dst, inc, loc, count, streaming)
    else:
        fn(dst, loc, inc, count, streaming)


cdef inline void reduce_forward(dual_fn fn, char* d, char* e, const char* loc, const char* inc,
                                size_t count, bint swap, bint streaming) noexcept nogil:
    """reduce_ordered's operand order, for a get_reduce_forward kernel."""
    if swap:
        fn(d, e, inc, loc, count, streaming)
    else:
        fn(d, e, loc, inc, count, streaming)
