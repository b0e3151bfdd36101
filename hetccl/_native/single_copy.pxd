# The synchronisation protocol of the single-copy schedules (single_copy.pyx), shared with the
# schedules over symmetric allocations (symmetric_heap.pyx): per-rank epoch counters in each c2c
# control slot, spin-then-futex waiting, and a published call header (wire.pxd) that every peer checks.
from libc.stdint cimport uint64_t
from hetccl._native.engine cimport Engine

cdef int sync(Engine e, double deadline) noexcept nogil
cdef int enter_as(Engine e, int coll, int dtype, int op, int phase, uint64_t count, uint64_t sdesc,
                  uint64_t rdesc, double deadline) noexcept nogil
