# Ring-shaped schedules (implemented in ring.pyx): the bandwidth choices.
from libc.stdint cimport uint64_t
from hetccl._native.engine cimport Engine

cdef int allreduce_ring(Engine e, char* sbuf, char* rbuf, size_t count, int dtype, int op,
                        double dl) noexcept nogil
cdef int allgather_ring(Engine e, char* sbuf, char* rbuf, size_t nb, int dtype, double dl) noexcept nogil
cdef int ring_allgatherv(Engine e, char* rbuf, size_t* boff, size_t* blen, const char* own, int dtype,
                         uint64_t count, int coll, int phase, double dl) noexcept nogil
cdef int reduce_scatter_ring(Engine e, char* sbuf, char* out, size_t* boff, size_t* blen, int dtype,
                             int op, uint64_t count, double dl) noexcept nogil
cdef int bcast_chain(Engine e, char* buf, size_t nb, int root, int dtype, uint64_t count,
                     double dl) noexcept nogil
