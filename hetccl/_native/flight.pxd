# A communicator's flight record: a fixed ring of small structs, one per collective call, written on
# the latency path (latency.Hot) and by the Python routes (comm.py), read by the watchdog, the
# control plane's flight requests and dumps (hetccl/flight/).
#
# Why native: the 8-byte allreduce through the latency path costs well under a microsecond; a
# record made of Python objects would cost a noticeable part of that. Writing one struct costs a
# few stores and one read of the coarse monotonic clock (a vDSO read of a kernel variable, no
# TSC arithmetic: its resolution is the kernel tick, 1-4 ms, plenty for saying who hangs).
#
# Concurrency: every writer (Hot, the calling thread, the progress thread) and every reader holds
# the GIL while it touches the ring (the schedules themselves run without it, between an entry's
# open and its close), so an entry is never read half-written.
from libc.stdint cimport uint64_t, uint16_t, uint8_t, int32_t

cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk, timespec* ts)
    clockid_t CLOCK_MONOTONIC_COARSE


cdef inline double fl_now() noexcept nogil:
    """The coarse monotonic clock in seconds (same epoch as time.monotonic())."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <double>ts.tv_sec + 1e-9 * <double>ts.tv_nsec


cdef enum:
    FL_QUEUED = 1         # issued (non-blocking), waiting behind earlier operations
    FL_RUNNING = 2
    FL_DONE = 3
    FL_FAILED = 4
    FL_NO_DTYPE = 255     # dtype / op unknown or not applicable
    FL_MAX_NAMES = 1024   # distinct algorithm and error names kept (more: recorded as "?")


cdef struct FlightEntry:
    uint64_t seq          # 1, 2, ... per communicator: the n-th collective call (0: empty slot)
    uint64_t nbytes
    uint64_t count
    double t_issue        # fl_now() when the call was made
    double t_start        # ... when it started running (0: not yet)
    double t_end          # ... when it completed or failed (0: not yet)
    int32_t root          # rooted collectives: the root, else -1
    uint16_t algo         # index into Flight.names ("" unknown)
    uint16_t err          # index into Flight.names: the error's class ("" none)
    uint8_t coll          # Coll code (codes.pxd), FLIGHT_ALLGATHERV ...; 0 unknown
    uint8_t dtype         # DType code or FL_NO_DTYPE
    uint8_t op            # Op code or FL_NO_DTYPE
    uint8_t state         # FL_*


cdef class Flight:
    cdef FlightEntry* ring
    cdef uint64_t mask          # capacity - 1 (a power of two)
    cdef readonly uint64_t seq  # the last sequence number given out (0: none yet)
    cdef list names             # algorithm and error-class names; index 0 is ""
    cdef dict ids
    cdef object name_last       # the algorithm name last seen and its index (the latency path
    cdef uint16_t id_last       # repeats the same str object: one pointer compare)
    cdef FlightEntry noted      # the next Python-route call's shape (note(), consumed by begin())
    cdef bint has_note

    cdef uint16_t name_id(self, object name)
    cdef uint64_t push(self, int coll, uint64_t nbytes, int dtype, int op, int root, object algo,
                       int state) except 0
    cdef void mark(self, uint64_t s, int state, uint16_t err) noexcept
    cdef void fail(self, uint64_t s, object exc)
