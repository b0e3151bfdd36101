# Bruck's log-step schedules for any number of ranks (implemented in bruck.pyx).
from hetccl._native.engine cimport Engine

cdef int allgather_bruck(Engine e, const char* sbuf, char* rbuf, size_t nb, int dtype,
                         double dl) noexcept nogil
cdef int alltoall_bruck(Engine e, const char* sbuf, char* rbuf, size_t nb, int dtype,
                        double dl) noexcept nogil
