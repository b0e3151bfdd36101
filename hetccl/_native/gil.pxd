# The GIL around a schedule (dispatch.pyx). A schedule runs without the GIL, but releasing and
# retaking it costs ~400 instructions, more than a tenth of a whole 8-byte allreduce whose peers are
# already there. So a call of the latency path (latency.pyx sets Engine.hold_gil around it) enters
# its schedule still holding the GIL, and the wait lets it go (progress.idle: let_go) once the call
# has waited Engine.hold_s, or before it sleeps; every other call releases it at once, as before.
# Bounded: other Python threads wait at most hold_s longer for the GIL (between calls the
# interpreter hands it over as for any Python code), and timeouts, interrupts and lost peers are
# seen as usual (the wait checks them with or without the GIL).
# Between gil_off and gil_on an entry runs only C: the schedule and plain arithmetic (the GIL may
# be gone, whatever Cython believes). A schedule entered any other way (``with nogil``) never has
# Engine.held set, so its waits leave the GIL alone.
from cpython.pystate cimport PyThreadState
from hetccl._native.engine cimport Engine

cdef extern from "Python.h":
    PyThreadState* PyEval_SaveThread() nogil
    void PyEval_RestoreThread(PyThreadState*) nogil


cdef inline PyThreadState* gil_off(Engine e, double start) noexcept:
    """A schedule begins at `start` (the GIL held): release the GIL now and return the thread state
    for gil_on, or, when the call asked to hold it (hold_gil), return NULL and leave it to the wait
    from start + hold_s on."""
    e.released = NULL
    e.held = e.hold_gil and e.hold_s > 0
    e.hold_gil = False
    if e.held:
        e.hold_end = start + e.hold_s
        return NULL
    return PyEval_SaveThread()


cdef inline void let_go(Engine e) noexcept nogil:
    """The wait of a schedule that holds the GIL (e.held): release it until the schedule ends."""
    if e.held:
        e.held = False
        e.gil_releases += 1
        e.released = PyEval_SaveThread()


cdef inline void gil_on(Engine e, PyThreadState* ts) noexcept nogil:
    """The schedule ended: retake the GIL, whichever of gil_off or let_go released it."""
    e.held = False
    if ts == NULL:
        ts = e.released
        e.released = NULL
    if ts != NULL:
        PyEval_RestoreThread(ts)
