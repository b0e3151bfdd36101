# The Engine: one communicator's links (one per peer), its settings and scratch buffer, and the
# lifecycle every schedule brackets itself with. The schedules (ring.pyx, doubling.pyx, ...) and
# their driver (progress.pyx) are functions of an Engine in their own modules.
from libc.stdint cimport uint32_t
from cpython.pystate cimport PyThreadState
from hetccl._native.failure cimport Failure
from hetccl._native.link cimport Link

cdef class Engine:
    cdef readonly int rank
    cdef readonly int size
    cdef Link* links                # per peer (links[rank]: none)
    cdef uint32_t seq               # calls begun (the wire header's sequence number)
    cdef public double spin_s       # waiting: spin this long, then yield ...
    cdef public double yield_s      # ... this long, then sleep (progress.pyx)
    cdef public size_t handover_bytes  # steps moving this much sleep at once (0: never; oversubscribed)
    # the latency path's calls hold the GIL into their wait (gil.pxd): hold_gil asks it of the next
    # schedule entered through gil_off (the latency path sets it around one call); held: that
    # schedule holds the GIL now; the wait lets it go at hold_end (hold_s after the schedule began)
    # or before it sleeps, and released keeps the thread state until the schedule ends
    cdef public double hold_s       # (0: release at once, like every other call)
    cdef bint hold_gil
    cdef bint held
    cdef double hold_end
    cdef PyThreadState* released
    cdef readonly unsigned long long gil_releases   # held calls whose wait let the GIL go (tests)
    cdef readonly unsigned long long futex_sleeps   # waits that slept on futex words (progress.pyx) ...
    cdef readonly unsigned long long poll_sleeps    # ... and in poll() (diagnostics, tests)
    cdef public size_t nt_threshold # outputs this large are written with streaming stores
    cdef public size_t chunk        # most bytes one link call moves
    cdef public bint lines          # small exchanges between shm/c2c pairs as one-line messages (oneline.pxd)
    cdef public bint stream_out     # set per call: outputs big enough for streaming stores
    # single_copy.pyx: bit k set: a single-copy allgather whose output is in (2^(k-1), 2^k] bytes
    # reads by recursive doubling (power-of-two sizes); the probe's verdicts, per communicator
    cdef public unsigned long long ag_doubling
    # ... bit k set: it writes its block into every peer's output instead (push)
    cdef public unsigned long long ag_push
    cdef Failure fail               # error state, interrupt word and in-use guard (failure.pxd)
    cdef list attached              # what the links' kinds keep open (segments, UCX handles)
    cdef char* scratch_buf
    cdef size_t scratch_len
    cdef uint32_t c2c_epoch         # c2c syncs passed (the same on every rank of the communicator)
    cdef uint32_t c2c_round         # window mode: rounds done (picks the window half to use)
    cdef int state                  # ST_OPEN, ST_CLOSING, ST_RELEASED or ST_LEAKED (close())
    cdef list kept                  # objects close() closes once no schedule can touch them

    # Every entry point that runs a schedule brackets it: begin() (counts the entry, raises if the
    # engine was interrupted or broken, takes a sequence number) ... end() (leaves, raises rc's error),
    # or leave() and its own error. Nothing between the two may raise.
    cdef int begin(self, str what, size_t out_bytes) except -1
    cdef int end(self, int rc, str what, double timeout) except -1
    cdef void leave(self) noexcept nogil
    cdef int interrupt_c(self, int reason, int peer) noexcept nogil
    cdef bint interrupted(self) noexcept nogil
    cdef raise_error(self, int rc, str what, double timeout)
    cdef check_usable(self)
    cdef char* scratch(self, size_t n) noexcept nogil
    cdef bint c2c_everywhere(self) noexcept nogil
