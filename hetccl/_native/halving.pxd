# Recursive halving / doubling over blocks, with the usual fold of the ranks beyond the largest
# power of two (implemented in halving.pyx): the building blocks of Rabenseifner's allreduce, the
# recursive-halving reduce_scatter and the reduce_scatter + gather reduce.
from libc.stdint cimport uint64_t
from hetccl._native.engine cimport Engine

cdef int rs_halving(Engine e, const char* sbuf, char* acc, char* out, size_t* boff, size_t* blen,
                    int dtype, int op, uint64_t count, int coll, int phase0, double dl) noexcept nogil
cdef int allreduce_rabenseifner(Engine e, char* sbuf, char* rbuf, size_t count, int dtype, int op,
                                double dl) noexcept nogil
cdef int reduce_rs_gather(Engine e, char* sbuf, char* rbuf, size_t count, int root, int dtype, int op,
                          double dl) noexcept nogil
cdef int reduce_scatter_halving(Engine e, char* sbuf, char* out, size_t* boff, size_t* blen, int dtype,
                                int op, uint64_t count, double dl) noexcept nogil
