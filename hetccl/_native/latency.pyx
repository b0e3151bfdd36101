# cython: language_level=3
"""The latency path of a communicator: its common collectives, for calls of a shape it has seen.

A small collective costs about as much in the Python layer (dtype lookup, the tuner, the route) as
on the wire, so a Communicator teaches its Hot object each (collective, bytes) -> algorithm it routed
plainly to a native schedule, and later calls of that shape go from here straight to the dispatch's
run_* functions (dispatch.pyx).
"""
from libc.stdint cimport uint64_t

from hetccl._native.codes cimport *
from hetccl._native.dispatch cimport (run_allreduce, run_allgather, run_broadcast, run_reduce_scatter,
                                      run_alltoall)
from hetccl._native.engine cimport Engine
from hetccl._native.flight cimport Flight, FL_DONE, FL_NO_DTYPE, FL_RUNNING
from hetccl._native.pinning cimport Pins, pin_allgather, release_pair

cdef enum:
    HOT_BROADCAST = 0
    HOT_ALLREDUCE = 1
    HOT_ALLGATHER = 2
    HOT_ALLTOALL = 3
    HOT_REDUCE_SCATTER = 4
    HOT_KINDS = 5

HOT_NAMES = ("broadcast", "allreduce", "allgather", "alltoall", "reduce_scatter")

from hetccl.ops import ReduceOp as _ReduceOp

cdef object _ndarray
try:
    import numpy as _np
    _ndarray = _np.ndarray
except ImportError:                 # numpy is a dependency; without it nothing is ever hot
    _ndarray = None


cdef class Hot:
    """The per-call work of a communicator's common collectives, for calls it has seen before.

    A blocking call with the default timeout and no forced algorithm costs, through the Python
    layer, a dtype lookup, the tuner's cache, the route checks and two or three pins: about a
    microsecond, as much as the whole 8-byte collective. The Communicator teaches this object each
    (collective, bytes) -> algorithm it routed plainly to a native schedule (``learn``); later calls
    of that shape on a numpy array of a known dtype come here first and go straight to the schedule
    (``broadcast`` etc. return True), else return False without side effects and the Python path
    runs as before. What it learns depends only on the size and on the forced algorithm, like the
    tuner's choice. A call forced with ``algorithm=`` is learnt under that name and the tuner's own
    calls under None, and both are looked up the same way (two dict lookups), so a forced
    algorithm costs what the tuner's choice of it costs: a user feature, and the benchmark's
    like-for-like comparison of algorithms (bench/crossover.py).

    Every call it runs goes into the communicator's flight record (``flight``, native: a few
    stores), failures with their error's class."""
    cdef Engine e
    cdef double timeout
    cdef dict codes                 # numpy dtype -> hetccl dtype code
    cdef object dt_last             # the last dtype seen and its code (arrays share dtype objects)
    cdef int code_last
    cdef list algos                 # per HOT_* kind: {forced name or None: {nbytes: (code, name)}}
    cdef public object last         # the name of the algorithm of the last call (last_algorithm)
    cdef readonly Flight flight     # the communicator's flight record (hetccl/flight/)

    def __cinit__(self, Engine e, double timeout, dict codes, Flight flight=None):
        self.e = e
        self.flight = flight if flight is not None else Flight()
        self.timeout = timeout
        self.codes = codes
        self.dt_last = None
        self.code_last = -1
        self.algos = [{} for _ in range(HOT_KINDS)]
        self.last = None

    def learn(self, str collective, Py_ssize_t nbytes, int algo, str name, forced=None):
        """Remember that `collective` of nbytes, called with ``algorithm=forced`` (None: the
        tuner's choice), runs `algo` through the plain native route (at most 512 sizes per
        collective and name: past that the table starts again, so a program that uses ever new
        sizes does not grow; the names are the algorithms that ran, a handful)."""
        cdef dict d = <dict>(<dict>self.algos[HOT_NAMES.index(collective)]).setdefault(forced, {})
        if len(d) >= 512:
            d.clear()
        d[nbytes] = (algo, name)

    def forget(self):
        """Drop everything learnt (the routes changed)."""
        for d in self.algos:
            (<dict>d).clear()

    cdef int dtype_of(self, object buf):
        """The dtype code of a numpy array, or -1 (not numpy, or a dtype only the Python path knows)."""
        if type(buf) is not _ndarray:
            return -1
        dt = buf.dtype
        if dt is not self.dt_last:
            code = self.codes.get(dt)
            if code is None:
                return -1
            self.dt_last = dt
            self.code_last = code
        return self.code_last

    cdef object algo_of(self, int kind, Py_ssize_t nbytes, object forced):
        by_size = (<dict>self.algos[kind]).get(forced)
        if by_size is None:
            return None
        return (<dict>by_size).get(nbytes)

    cdef int run(self, int coll, object hit, Py_buffer* a, Py_buffer* b, size_t nbytes, bint inplace,
                 int dtype, int op, int root) except -1:
        """Run a learnt call on pinned buffers through the dispatch's run_* half of `coll`, recorded
        in the flight ring (op and root: FL_NO_DTYPE / -1 where the collective has none)."""
        cdef int algo = <int>hit[0]
        cdef uint64_t s
        self.last = hit[1]
        s = self.flight.push(coll, nbytes, dtype, op, root, hit[1], FL_RUNNING)
        try:
            if coll == COLL_ALLREDUCE:
                run_allreduce(self.e, a, b, inplace, dtype, op, algo, self.timeout)
            elif coll == COLL_ALLGATHER:
                run_allgather(self.e, a, b, dtype, algo, self.timeout)
            elif coll == COLL_BROADCAST:
                run_broadcast(self.e, <char*>a.buf, a.len, root, dtype, algo, self.timeout)
            elif coll == COLL_ALLTOALL:
                run_alltoall(self.e, a, b, dtype, algo, self.timeout)
            else:
                run_reduce_scatter(self.e, a, b, dtype, op, algo, self.timeout)
        except BaseException as x:
            self.flight.fail(s, x)
            raise
        self.flight.mark(s, FL_DONE, 0)
        return 0

    def broadcast(self, buf, int root, forced=None):
        cdef int dtype = self.dtype_of(buf)
        cdef Pins p
        if dtype < 0:
            return False
        hit = self.algo_of(HOT_BROADCAST, buf.nbytes, forced)
        if hit is None:
            return False
        p = Pins()
        p.pin(buf, None, False, True)
        self.run(COLL_BROADCAST, hit, &p.a, NULL, p.a.len, True, dtype, FL_NO_DTYPE, root)
        return True

    def allreduce(self, buf, out, op, forced=None):
        cdef int dtype = self.dtype_of(buf)
        cdef Pins p
        if dtype < 0 or dtype == DT_BOOL or type(op) is not _ReduceOp or op >= OP_BAND:
            return False
        if out is None:
            out = buf
        elif out is not buf and self.dtype_of(out) != dtype:
            return False
        hit = self.algo_of(HOT_ALLREDUCE, buf.nbytes, forced)
        if hit is None:
            return False
        p = Pins()
        p.pin(buf, out, True, buf is out)
        self.run(COLL_ALLREDUCE, hit, &p.a, &p.b, p.b.len, buf is out, dtype, op, -1)
        return True

    def allgather(self, buf, out, forced=None):
        cdef int dtype = self.dtype_of(buf)
        cdef Py_buffer sv, rv
        cdef bint same = buf is out
        if dtype < 0 or (not same and self.dtype_of(out) != dtype):
            return False
        hit = self.algo_of(HOT_ALLGATHER, out.nbytes, forced)
        if hit is None:
            return False
        pin_allgather(buf, out, self.e.size, self.e.rank, dtype_size(dtype), &sv, &rv)
        try:
            self.run(COLL_ALLGATHER, hit, &sv, &rv, rv.len, same, dtype, FL_NO_DTYPE, -1)
        finally:
            release_pair(same, &sv, &rv)
        return True

    def alltoall(self, buf, out, forced=None):
        cdef int dtype = self.dtype_of(buf)
        cdef Pins p
        if dtype < 0 or self.dtype_of(out) != dtype:
            return False
        hit = self.algo_of(HOT_ALLTOALL, buf.nbytes, forced)
        if hit is None:
            return False
        p = Pins()
        p.pin(buf, out, True)
        self.run(COLL_ALLTOALL, hit, &p.a, &p.b, p.a.len, False, dtype, FL_NO_DTYPE, -1)
        return True

    def reduce_scatter(self, buf, out, op, forced=None):
        """Equal blocks only (reduce_scatterv's counts go through Python); op and dtypes as allreduce."""
        cdef int dtype = self.dtype_of(buf)
        cdef Pins p
        if (dtype < 0 or dtype == DT_BOOL or type(op) is not _ReduceOp or op >= OP_BAND
                or self.dtype_of(out) != dtype):
            return False
        hit = self.algo_of(HOT_REDUCE_SCATTER, buf.nbytes, forced)
        if hit is None:
            return False
        p = Pins()
        p.pin(buf, out, True)
        self.run(COLL_REDUCE_SCATTER, hit, &p.a, &p.b, p.a.len, False, dtype, op, -1)
        return True
