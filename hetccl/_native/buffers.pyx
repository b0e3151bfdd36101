# cython: language_level=3
"""Acquiring user buffers for the nogil core, with errors that say what to do."""
from cpython.buffer cimport PyObject_GetBuffer, PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE
from libc.stdint cimport uintptr_t

from hetccl.errors import InvalidUsage


cdef int get_buffer(object obj, Py_buffer* view, bint writable) except -1:
    """Acquire a C-contiguous (optionally writable) buffer, with errors that say what to do."""
    cdef int flags = PyBUF_C_CONTIGUOUS | (PyBUF_WRITABLE if writable else 0)
    try:
        PyObject_GetBuffer(obj, view, flags)
    except (BufferError, ValueError) as e:   # numpy says ValueError for read-only / strided
        what = "output" if writable else "input"
        msg = str(e)
        if writable and ("writable" in msg or "read-only" in msg or "readonly" in msg):
            raise InvalidUsage(f"the {what} buffer is read-only; pass a writable array "
                               f"(e.g. numpy.array(x) or x.copy())") from None
        if "contiguous" in msg:
            raise InvalidUsage(f"the {what} buffer is not C-contiguous; pass numpy.ascontiguousarray(x) "
                               f"(hetccl moves contiguous memory only)") from None
        raise InvalidUsage(f"cannot use the {what} ({type(obj).__name__}) as a buffer: {msg}") from None
    except TypeError:
        raise InvalidUsage(f"{type(obj).__name__} is not a buffer; pass a numpy array, a torch CPU "
                           f"tensor or another buffer-protocol object") from None
    return 0


cdef int check_overlap(Py_buffer* a, Py_buffer* b, bint same) except -1:
    cdef uintptr_t a0 = <uintptr_t>a.buf, a1 = a0 + <uintptr_t>a.len
    cdef uintptr_t b0 = <uintptr_t>b.buf, b1 = b0 + <uintptr_t>b.len
    if same or a.len == 0 or b.len == 0:
        return 0
    if a0 == b0 and a1 == b1:
        return 0
    if a0 < b1 and b0 < a1:
        raise InvalidUsage("input and output buffers partially overlap; pass the same buffer for an "
                           "in-place operation or disjoint buffers")
    return 0
