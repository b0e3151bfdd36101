# cython: language_level=3
"""Acquiring user buffers for the nogil core, with errors that say what to do."""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE
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


cdef int pin_allgather(object sendobj, object recvobj, int size, int rank, size_t esize,
                       Py_buffer* sv, Py_buffer* rv) except -1:
    """Pin and check an allgather's buffers: recv holds size blocks of len(send) bytes; send may be
    recv itself (in place: this rank's block of it). On error nothing stays pinned; otherwise
    release with release_allgather(sendobj is recvobj, sv, rv)."""
    cdef bint same = sendobj is recvobj
    get_buffer(recvobj, rv, True)
    if same:
        sv[0] = rv[0]
        sv.len = rv.len // size
        sv.buf = <char*>rv.buf + sv.len * rank
    else:
        try:
            get_buffer(sendobj, sv, False)
        except BaseException:
            PyBuffer_Release(rv)
            raise
    try:
        if sv.len * size != rv.len:
            raise InvalidUsage(f"allgather output has {rv.len} bytes but needs size x input = "
                               f"{size} x {sv.len} bytes")
        if sv.len % esize:
            raise InvalidUsage(f"buffer of {sv.len} bytes is not a whole number of {esize}-byte elements")
        if not same and <char*>sv.buf != <char*>rv.buf + sv.len * rank:
            check_overlap(sv, rv, False)
    except BaseException:
        release_allgather(same, sv, rv)
        raise
    return 0


cdef void release_allgather(bint same, Py_buffer* sv, Py_buffer* rv) noexcept:
    if not same:
        PyBuffer_Release(sv)
    PyBuffer_Release(rv)
