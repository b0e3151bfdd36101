# An engine's error state: what stops its schedules (the lifecycle's interrupt word and in-use
# guard, life.pxd) and what went wrong in one (the peer, the mismatched headers, a signal's
# exception), and the exception each turns into (failure.pyx).
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint32_t
from hetccl._native.life cimport HcLife, hc_life_intr

cdef struct Failure:
    HcLife life               # interrupt word, in-use counter, eventfd (life.pxd)
    bint broken               # an error left the links in an unknown state: the engine is unusable
    int peer                  # the peer the error is about (-1: not known yet)
    uint8_t got[32]           # E_MISMATCH: the header that arrived (or that the peer published) ...
    uint8_t want[32]          # ... and the one this rank expected
    PyObject* pending         # E_INTERRUPTED: the exception a signal handler raised (a reference)


cdef inline bint interrupted(Failure* f) noexcept nogil:
    return hc_life_intr(&f.life) != 0

cdef inline void note_peer(Failure* f, int peer) noexcept nogil:
    """Name the peer of an error, unless one is named already (the first cause wins)."""
    if f.peer < 0:
        f.peer = peer

cdef void note_mismatch(Failure* f, int peer, const uint8_t* got, const uint8_t* want) noexcept nogil
cdef int check_signals(Failure* f) noexcept nogil

cdef int failure_init(Failure* f) except -1
cdef void failure_free(Failure* f) noexcept
cdef int enter(Failure* f, int rank, str what) except -1
cdef object interrupt_error(Failure* f, int rank, str what)
cdef int check_usable(Failure* f, int rank) except -1
cdef int raise_error(Failure* f, int rank, int rc, str what, double timeout) except -1
