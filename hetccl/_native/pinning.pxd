# Pinning and checking user buffers (implemented in pinning.pyx).

cdef class Pins:
    cdef Py_buffer a, b
    cdef bint has_a, has_b
    cdef int pin(self, object x, object y, bint y_writable, bint x_writable=*) except -1

# Acquire C-contiguous buffers from any buffer-protocol object (numpy arrays, bytearray, ...).
cdef int get_buffer(object obj, Py_buffer* view, bint writable) except -1
cdef int pin_rooted(object obj, int root, int size, size_t esize, Py_buffer* view) except -1
cdef int check_overlap(Py_buffer* a, Py_buffer* b, bint same) except -1
cdef int pin_pair(object sendobj, object recvobj, Py_buffer* sv, Py_buffer* rv) except -1
cdef void release_pair(bint same, Py_buffer* sv, Py_buffer* rv) noexcept
cdef int pin_allgather(object sendobj, object recvobj, int size, int rank, size_t esize,
                       Py_buffer* sv, Py_buffer* rv) except -1
cdef int check_allgather(bint same, int size, int rank, size_t esize, Py_buffer* sv,
                         Py_buffer* rv) except -1
cdef int check_op(int dtype, int op) except -1
cdef int check_alltoall(Py_buffer* a, Py_buffer* b, int dtype, int size) except -1
cdef int check_reduction(Py_buffer* sv, Py_buffer* rv, bint inplace, int dtype, int op) except -1
cdef int pin_allreduce(object sendobj, object recvobj, int dtype, int op, Py_buffer* sv,
                       Py_buffer* rv) except -1
