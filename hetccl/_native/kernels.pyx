# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Reduction and copy kernels (C-level interface in kernels.pxd; the loops are in kernels.h).

Each kernel is compiled twice, for plain x86-64 and for AVX2+F16C; the set is chosen once at import
from the CPU (``kernel_isa()`` says which). The Python functions at the bottom are test and
benchmark hooks; the collectives use the cdef functions.
"""
from cpython.buffer cimport (PyBUF_ANY_CONTIGUOUS, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)

from hetccl._native.codes cimport (DT_BOOL, DT_COUNT, DT_FLOAT16, DT_FP8_E5M2, OP_AVG, OP_BAND,
                                   OP_BXOR, OP_COUNT, OP_PROD, OP_SUM, dtype_size)

cdef extern from "kernels.h" nogil:
    ctypedef void (*hk_reduce_fn)(void* dst, const void* a, const void* b, size_t count,
                                  int streaming) noexcept nogil
    int hk_init() noexcept
    int hk_select(int isa) noexcept
    ctypedef void (*hk_dual_fn)(void* d, void* e, const void* a, const void* b, size_t count,
                                int streaming) noexcept nogil
    hk_reduce_fn hk_lookup(int dtype, int op) noexcept
    hk_dual_fn hk_lookup_dual(int dtype, int op) noexcept
    hk_dual_fn hk_lookup_forward(int dtype, int op) noexcept
    void hk_divide(void* buf, size_t count, int dtype, long n) noexcept
    void hk_copy(void* dst, const void* src, size_t n, int streaming) noexcept
    void hk_copy2(void* dst, void* dst2, const void* src, size_t n, int streaming) noexcept
    void hk_copy_pair(void* dst, const void* src, void* dst2, const void* src2, size_t n,
                      int streaming) noexcept
    void hk_fence() noexcept

cdef int _current_isa = hk_init()     # fp8 tables; AVX2+F16C kernels when the CPU has them

cdef int kernel_op(int dtype, int op) noexcept nogil:
    """The table column for (dtype, op), or -1 where the op is not defined for the dtype."""
    if dtype < 0 or dtype >= DT_COUNT or op < 0 or op >= OP_COUNT:
        return -1
    if op == OP_AVG:
        op = OP_SUM                                   # the caller divides afterwards
    if OP_BAND <= op <= OP_BXOR and DT_FLOAT16 <= dtype <= DT_FP8_E5M2:
        return -1                                     # bitwise ops: integers and bool only
    if dtype == DT_BOOL and (op == OP_SUM or op == OP_PROD):
        return -1                                     # ambiguous on bool: use BOR/BAND/MIN/MAX
    return op


cdef reduce_fn get_reduce(int dtype, int op) noexcept nogil:
    op = kernel_op(dtype, op)
    return NULL if op < 0 else <reduce_fn>hk_lookup(dtype, op)


cdef dual_fn get_reduce_dual(int dtype, int op) noexcept nogil:
    op = kernel_op(dtype, op)
    return NULL if op < 0 else <dual_fn>hk_lookup_dual(dtype, op)


cdef dual_fn get_reduce_forward(int dtype, int op) noexcept nogil:
    op = kernel_op(dtype, op)
    return NULL if op < 0 else <dual_fn>hk_lookup_forward(dtype, op)


cdef void copy_bytes(void* dst, const void* src, size_t n, bint streaming) noexcept nogil:
    hk_copy(dst, src, n, streaming)


cdef void copy_bytes_dual(void* dst, void* dst2, const void* src, size_t n,
                          bint streaming) noexcept nogil:
    hk_copy2(dst, dst2, src, n, streaming)


cdef void copy_bytes_pair(void* dst, const void* src, void* dst2, const void* src2, size_t n,
                          bint streaming) noexcept nogil:
    hk_copy_pair(dst, src, dst2, src2, n, streaming)


cdef void divide_by(void* buf, size_t count, int dtype, long n) noexcept nogil:
    # n <= 1 and bool are no-ops; floats divide in float (narrow floats via float32, rounded back)
    hk_divide(buf, count, dtype, n)


cdef void store_fence() noexcept nogil:
    hk_fence()


# ---- Python-level hooks (tests, benchmarks) ---------------------------------------------------

def kernel_isa():
    """Which kernel set is in use: "avx2" (AVX2+F16C) or "baseline"."""
    return "avx2" if _current_isa else "baseline"


def select_kernel_isa(str name):
    """Testing hook: switch kernel set ("avx2" or "baseline"); returns the one now in use.
    Not thread-safe against running collectives; "avx2" falls back to baseline on CPUs without it."""
    global _current_isa
    if name not in ("avx2", "baseline"):
        raise ValueError(f"unknown kernel set {name!r}; use 'avx2' or 'baseline'")
    _current_isa = hk_select(1 if name == "avx2" else 0)
    return "avx2" if _current_isa else "baseline"


def itemsize(int dtype):
    if dtype < 0 or dtype >= DT_COUNT:
        raise ValueError(f"unknown dtype code {dtype}")
    return dtype_size(dtype)


def reduce_arrays(dst, a, b, int dtype, int op, bint streaming=False, also=None,
                  bint forward=False):
    """dst[i] = a[i] OP b[i] over buffer-protocol objects (contiguous). The element count comes
    from dst's byte length; a and b must be at least as long. ValueError if OP is not defined for
    the dtype (same rule as get_reduce). AVG only sums (see divide_array). With ``also`` (as long
    as dst, aliasing neither input), the result goes to both through the dual kernel
    (get_reduce_dual); with ``forward`` too, through the ring relay's kernel (get_reduce_forward:
    ordinary stores into dst, ``streaming`` only for ``also``, which may then be a or b)."""
    cdef reduce_fn fn = get_reduce(dtype, op)
    cdef dual_fn fn2 = get_reduce_forward(dtype, op) if forward else get_reduce_dual(dtype, op)
    if fn == NULL:
        raise ValueError(f"reduction op {op} is not defined for dtype {dtype}")
    cdef Py_buffer dv, av, bv, ev
    cdef void* e = NULL
    PyObject_GetBuffer(dst, &dv, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS)
    try:
        PyObject_GetBuffer(a, &av, PyBUF_ANY_CONTIGUOUS)
        try:
            PyObject_GetBuffer(b, &bv, PyBUF_ANY_CONTIGUOUS)
            try:
                if av.len < dv.len or bv.len < dv.len:
                    raise ValueError(f"inputs have {av.len} and {bv.len} bytes, output {dv.len}")
                if dv.len % dtype_size(dtype):
                    raise ValueError(f"output size {dv.len} is not a multiple of the item size "
                                     f"{dtype_size(dtype)}")
                if also is not None:
                    PyObject_GetBuffer(also, &ev, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS)
                    e = ev.buf
                    if ev.len != dv.len:
                        PyBuffer_Release(&ev)
                        raise ValueError(f"second output has {ev.len} bytes, first {dv.len}")
                try:
                    with nogil:
                        if e != NULL:
                            fn2(dv.buf, e, av.buf, bv.buf, <size_t>dv.len // dtype_size(dtype),
                                streaming)
                        else:
                            fn(dv.buf, av.buf, bv.buf, <size_t>dv.len // dtype_size(dtype), streaming)
                        if streaming:
                            hk_fence()
                finally:
                    if e != NULL:
                        PyBuffer_Release(&ev)
            finally:
                PyBuffer_Release(&bv)
        finally:
            PyBuffer_Release(&av)
    finally:
        PyBuffer_Release(&dv)


def copy_array(dst, src, bint streaming=False, also=None):
    """Copy src's bytes into the start of dst (copy_bytes); dst must be at least as long. With
    ``also`` (at least as long as dst), into both at once (copy_bytes_dual)."""
    cdef Py_buffer dv, sv, ev
    cdef void* e = NULL
    PyObject_GetBuffer(dst, &dv, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS)
    try:
        PyObject_GetBuffer(src, &sv, PyBUF_ANY_CONTIGUOUS)
        try:
            if dv.len < sv.len:
                raise ValueError(f"destination has {dv.len} bytes, source {sv.len}")
            if also is not None:
                PyObject_GetBuffer(also, &ev, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS)
                e = ev.buf
                if ev.len < sv.len:
                    PyBuffer_Release(&ev)
                    raise ValueError(f"second destination has {ev.len} bytes, source {sv.len}")
            try:
                with nogil:
                    if e != NULL:
                        copy_bytes_dual(dv.buf, e, sv.buf, <size_t>sv.len, streaming)
                    else:
                        copy_bytes(dv.buf, sv.buf, <size_t>sv.len, streaming)
                    if streaming:
                        hk_fence()
            finally:
                if e != NULL:
                    PyBuffer_Release(&ev)
        finally:
            PyBuffer_Release(&sv)
    finally:
        PyBuffer_Release(&dv)


def copy_pair(dst, src, dst2, src2, bint streaming=False):
    """dst[:len(src)] = src and dst2[:len(src)] = src2 in one pass (copy_bytes_pair), dst2
    streamed when ``streaming``: the FIFO ring's fused send-and-receive step, for benchmarks and
    tests. src and src2 have the same length; no two of the four may overlap."""
    cdef Py_buffer bufs[4]
    cdef int got = 0, i
    cdef char* p[4]
    cdef Py_ssize_t ln[4]
    try:
        for i, (obj, flags) in enumerate(((dst, PyBUF_WRITABLE), (src, 0), (dst2, PyBUF_WRITABLE),
                                          (src2, 0))):
            PyObject_GetBuffer(obj, &bufs[i], flags | PyBUF_ANY_CONTIGUOUS)
            got += 1
            p[i] = <char*>bufs[i].buf
            ln[i] = bufs[i].len
        if ln[1] != ln[3]:
            raise ValueError(f"sources differ in length: {ln[1]} and {ln[3]} bytes")
        if ln[0] < ln[1] or ln[2] < ln[1]:
            raise ValueError(f"destinations of {ln[0]} and {ln[2]} bytes cannot take {ln[1]}")
        for i in range(4):
            for j in range(i + 1, 4):
                if p[i] < p[j] + ln[1] and p[j] < p[i] + ln[1] and ln[1]:
                    raise ValueError("copy_pair: the buffers overlap")
        with nogil:
            copy_bytes_pair(p[0], p[1], p[2], p[3], <size_t>ln[1], streaming)
            if streaming:
                hk_fence()
    finally:
        for i in range(got):
            PyBuffer_Release(&bufs[i])


def divide_array(buf, int dtype, long n):
    """buf[i] /= n in place (divide_by; element count from the byte length)."""
    if dtype < 0 or dtype >= DT_COUNT:
        raise ValueError(f"unknown dtype code {dtype}")
    cdef Py_buffer bv
    PyObject_GetBuffer(buf, &bv, PyBUF_WRITABLE | PyBUF_ANY_CONTIGUOUS)
    try:
        with nogil:
            divide_by(bv.buf, <size_t>bv.len // dtype_size(dtype), dtype, n)
    finally:
        PyBuffer_Release(&bv)
