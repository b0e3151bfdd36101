# cython: language_level=3
"""Pinning user buffers for the nogil core (and checking them), with errors that say what to do.

A schedule runs on raw pointers without the GIL, so every buffer it touches is pinned (the buffer
protocol's view held) for the whole call, and checked first: nothing between Engine.begin and
Engine.end may raise.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE
from libc.stdint cimport uintptr_t

from hetccl._native.codes cimport dtype_size
from hetccl._native.kernels cimport get_reduce

from hetccl._native.codes import dtype_name, op_name
from hetccl.errors import InvalidUsage


cdef class Pins:
    """Pins up to two user buffers (a, b) for the life of this object (one call)."""

    cdef int pin(self, object x, object y, bint y_writable, bint x_writable=False) except -1:
        """a = x, b = y (either None: not pinned); y is x: one pin, both views the same."""
        if x is not None:
            get_buffer(x, &self.a, x_writable)
            self.has_a = True
        if y is not None:
            if y is x:
                self.b = self.a
            else:
                get_buffer(y, &self.b, y_writable)
                self.has_b = True
        return 0

    def __dealloc__(self):
        if self.has_a:
            PyBuffer_Release(&self.a)
        if self.has_b:
            PyBuffer_Release(&self.b)


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


cdef int pin_rooted(object obj, int root, int size, size_t esize, Py_buffer* view) except -1:
    """Pin a rooted collective's buffer (written on non-roots, whole elements), after checking
    that root is a rank: released again when a check fails."""
    if not 0 <= root < size:
        raise InvalidUsage(f"root {root} is not a rank of this communicator (0..{size - 1})")
    get_buffer(obj, view, True)
    if <size_t>view.len % esize:
        n = view.len
        PyBuffer_Release(view)
        raise InvalidUsage(f"buffer of {n} bytes is not a whole number of elements")
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


cdef int pin_pair(object sendobj, object recvobj, Py_buffer* sv, Py_buffer* rv) except -1:
    """Pin recv (writable) and send; send may be recv (one pin, sv a copy of rv). On error nothing
    stays pinned; otherwise release with release_pair(sendobj is recvobj, sv, rv)."""
    get_buffer(recvobj, rv, True)
    if sendobj is recvobj:
        sv[0] = rv[0]
        return 0
    try:
        get_buffer(sendobj, sv, False)
    except BaseException:
        PyBuffer_Release(rv)
        raise
    return 0


cdef void release_pair(bint same, Py_buffer* sv, Py_buffer* rv) noexcept:
    if not same:
        PyBuffer_Release(sv)
    PyBuffer_Release(rv)


cdef int pin_allgather(object sendobj, object recvobj, int size, int rank, size_t esize,
                       Py_buffer* sv, Py_buffer* rv) except -1:
    """Pin and check an allgather's buffers (check_allgather); send may be recv itself (in place).
    On error nothing stays pinned; otherwise release with release_pair(sendobj is recvobj, sv, rv)."""
    cdef bint same = sendobj is recvobj
    pin_pair(sendobj, recvobj, sv, rv)
    try:
        check_allgather(same, size, rank, esize, sv, rv)
    except BaseException:
        release_pair(same, sv, rv)
        raise
    return 0


cdef int check_allgather(bint same, int size, int rank, size_t esize, Py_buffer* sv,
                         Py_buffer* rv) except -1:
    """An allgather's pinned buffers: recv holds size blocks of len(send) bytes; in place (same:
    sv a copy of rv), sv becomes this rank's block of recv."""
    if same:
        sv.len = rv.len // size
        sv.buf = <char*>rv.buf + sv.len * rank
    if sv.len * size != rv.len:
        raise InvalidUsage(f"allgather output has {rv.len} bytes but needs size x input = "
                           f"{size} x {sv.len} bytes")
    if sv.len % esize:
        raise InvalidUsage(f"buffer of {sv.len} bytes is not a whole number of {esize}-byte elements")
    if not same and <char*>sv.buf != <char*>rv.buf + sv.len * rank:
        check_overlap(sv, rv, False)
    return 0


cdef int check_op(int dtype, int op) except -1:
    if get_reduce(dtype, op) == NULL:
        raise InvalidUsage(f"{op_name(op)} is not defined for {dtype_name(dtype)}")
    return 0


cdef int check_reduction(Py_buffer* sv, Py_buffer* rv, bint inplace, int dtype, int op) except -1:
    """An allreduce's buffers: the same size, whole elements, not partly overlapping; op defined."""
    if sv.len != rv.len:
        raise InvalidUsage(f"allreduce output has {rv.len} bytes but the input has {sv.len}; "
                           f"pass an output of the same size and dtype")
    check_overlap(sv, rv, inplace)
    if rv.len % dtype_size(dtype):
        raise InvalidUsage(f"buffer of {rv.len} bytes is not a whole number of {dtype_name(dtype)}")
    check_op(dtype, op)
    return 0


cdef int check_alltoall(Py_buffer* a, Py_buffer* b, int dtype, int size) except -1:
    """An alltoall's buffers of equal blocks: input and output of size x block elements, apart."""
    cdef size_t es = dtype_size(dtype)
    if a.len % (es * size) or a.len != b.len:
        raise InvalidUsage(f"alltoall needs input and output of size x block elements (here "
                           f"{a.len // es} and {b.len // es} for {size} ranks); use alltoallv for "
                           f"uneven blocks")
    if a.buf == b.buf and a.len:
        raise InvalidUsage("alltoall cannot run in place; pass a separate output buffer")
    return 0


cdef int pin_allreduce(object sendobj, object recvobj, int dtype, int op, Py_buffer* sv,
                       Py_buffer* rv) except -1:
    """Pin and check an allreduce's buffers (check_reduction); send may be recv (in place). On error
    nothing stays pinned; otherwise release with release_pair(sendobj is recvobj, sv, rv)."""
    pin_pair(sendobj, recvobj, sv, rv)
    try:
        check_reduction(sv, rv, sendobj is recvobj, dtype, op)
    except BaseException:
        release_pair(sendobj is recvobj, sv, rv)
        raise
    return 0
