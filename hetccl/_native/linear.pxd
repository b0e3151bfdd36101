# Schedules that talk to every peer in turn (implemented in linear.pyx).
from hetccl._native.engine cimport Engine

cdef int gather_linear(Engine e, char* sbuf, size_t slen, char* rbuf, size_t* blocks, int root,
                       int dtype, double dl) noexcept nogil
cdef int scatter_linear(Engine e, char* sbuf, char* rbuf, size_t rlen, size_t* blocks, int root,
                        int dtype, double dl) noexcept nogil
cdef int alltoall_pairwise(Engine e, char* sbuf, char* rbuf, size_t* offs, int dtype,
                           double dl) noexcept nogil
