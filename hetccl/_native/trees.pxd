# Tree-shaped allreduce schedules (implemented in trees.pyx).
from hetccl._native.engine cimport Engine

cdef int allreduce_dbtree(Engine e, char* sbuf, char* rbuf, size_t count, int dtype, int op,
                          double dl) noexcept nogil
