# Acquire C-contiguous buffers from any buffer-protocol object (numpy arrays, bytearray, ...).
cdef int get_buffer(object obj, Py_buffer* view, bint writable) except -1
cdef int check_overlap(Py_buffer* a, Py_buffer* b, bint same) except -1
cdef int pin_allgather(object sendobj, object recvobj, int size, int rank, size_t esize,
                       Py_buffer* sv, Py_buffer* rv) except -1
cdef void release_allgather(bint same, Py_buffer* sv, Py_buffer* rv) noexcept
