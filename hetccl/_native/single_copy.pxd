# The synchronisation protocol of the single-copy schedules (single_copy.pyx), shared with the
# schedules over symmetric allocations (symmetric_heap.pyx): per-rank epoch counters in each c2c
# control slot, spin-then-futex waiting, and a published call header (wire.pxd) that every peer checks.
from libc.stdint cimport uint64_t
from hetccl._native.engine cimport Engine

cdef int sync(Engine e, double deadline) noexcept nogil
cdef int enter_as(Engine e, int coll, int dtype, int op, int phase, uint64_t count, uint64_t sdesc,
                  uint64_t rdesc, double deadline) noexcept nogil

# The plain-buffer single-copy calls (broadcast, allgather, alltoall in cma mode) on pinned buffers:
# 1 done, 0 refused on some rank (re-run on the FIFOs). The latency path (latency.pyx) calls it.
cdef int run_plain(Engine e, int coll, Py_buffer* a, Py_buffer* b, int root, int dtype,
                   double timeout) except -1
