# Log-step schedules at distances 2^k (implemented in doubling.pyx): the latency choices.
from hetccl._native.engine cimport Engine

cdef int allreduce_rd(Engine e, char* sbuf, char* rbuf, size_t count, int dtype, int op,
                      double dl) noexcept nogil
cdef int allgather_rd(Engine e, char* sbuf, char* rbuf, size_t nb, int dtype, double dl) noexcept nogil
cdef int barrier_dissemination(Engine e, double dl) noexcept nogil
