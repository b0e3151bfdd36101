# The synchronisation protocol of the single-copy schedules (direct.pyx), shared with the schedules
# over symmetric allocations (symmetric.pyx): per-rank epoch counters in each c2c control slot,
# spin-then-futex waiting, and a published call header that every peer checks.
from cpython.buffer cimport Py_buffer
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from hetccl._native.engine cimport Engine

cdef enum:
    HDR_BYTES = 32
    HDR_CHECKED = 24             # magic, collective, dtype, op, phase, seq, count: must all agree
    PHASE_DIRECT = 100           # header phase of the cma/window schedules ...
    PHASE_SYMMETRIC = 101        # ... and of the schedules over symmetric allocations

cdef void fill_header(uint8_t* h, int coll, int dtype, int op, int phase, uint32_t seq,
                      uint64_t count, int rank) noexcept nogil
cdef int sync(Engine e, double deadline) noexcept nogil
cdef int enter_as(Engine e, int coll, int dtype, int op, int phase, uint64_t count, uint64_t sdesc,
                  uint64_t rdesc, double deadline) noexcept nogil

# Pin and check a single-copy allreduce's buffers (same size, whole elements, op defined; send may be
# recv: in place); release with release_allreduce(sendobj is recvobj, sv, rv).
cdef int pin_allreduce(object sendobj, object recvobj, int dtype, int op, Py_buffer* sv,
                       Py_buffer* rv) except -1
cdef void release_allreduce(bint inplace, Py_buffer* sv, Py_buffer* rv) noexcept
