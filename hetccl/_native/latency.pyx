# cython: language_level=3
"""The latency path of a communicator: its common collectives, for calls of a shape it has seen.

A small collective costs about as much in the Python layer (dtype lookup, the tuner, the route) as
on the wire, so a Communicator teaches its Hot object each (collective, bytes) -> algorithm it routed
plainly to a native schedule, and later calls of that shape go from here straight to the dispatch's
run_* functions (dispatch.pyx).
"""
cimport cython
from cpython.buffer cimport PyBuffer_Release
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.pycapsule cimport PyCapsule_GetPointer
from libc.stdint cimport uint64_t
from libc.string cimport memset

from hetccl._native.codes cimport *
from hetccl._native.dispatch cimport (run_allreduce, run_allgather, run_broadcast, run_reduce_scatter,
                                      run_alltoall, reduce as d_reduce, gather as d_gather,
                                      scatter as d_scatter)
from hetccl._native.engine cimport Engine
from hetccl._native.flight cimport Flight, FL_DONE, FL_NO_DTYPE, FL_RUNNING
from hetccl._native.pinning cimport check_allgather, get_buffer, release_pair
from hetccl._native.single_copy cimport run_plain

cdef extern from *:
    """
    /* The head of a numpy array object: numpy's PyArrayObject_fields, which every extension built
       against numpy's headers reads through its inline accessors (PyArray_DATA, PyArray_NDIM, ...),
       so its layout is part of numpy's ABI (unchanged from 1.7 through 2.x). */
    typedef struct {
        PyObject_HEAD
        char *data;
        int nd;
        Py_ssize_t *dimensions;
        Py_ssize_t *strides;
        PyObject *base;
        PyObject *descr;
        int flags;
    } hc_ndarray_head;
    #define HC_NPY_C_CONTIGUOUS 0x0001
    #define HC_NPY_OWNDATA 0x0004
    #define HC_NPY_WRITEABLE 0x0400
    #define HC_NPY_WARN_ON_WRITE ((int)(1U << 31))
    """
    ctypedef struct hc_ndarray_head:
        char* data
        int nd
        Py_ssize_t* dimensions
        PyObject* base
        PyObject* descr
        int flags
    int HC_NPY_C_CONTIGUOUS, HC_NPY_OWNDATA, HC_NPY_WRITEABLE, HC_NPY_WARN_ON_WRITE

cdef enum:
    HOT_BROADCAST = 0
    HOT_ALLREDUCE = 1
    HOT_ALLGATHER = 2
    HOT_ALLTOALL = 3
    HOT_REDUCE_SCATTER = 4
    HOT_REDUCE = 5
    HOT_GATHER = 6
    HOT_SCATTER = 7
    HOT_KINDS = 8

cdef enum:
    HOT_SINGLE_COPY = 1000          # not a schedule code: the plain-buffer single copy (run_plain)

SINGLE_COPY = HOT_SINGLE_COPY       # what the router learns a single-copy shape under (learn)

HOT_NAMES = ("broadcast", "allreduce", "allgather", "alltoall", "reduce_scatter", "reduce", "gather",
             "scatter")

from hetccl.ops import ReduceOp as _ReduceOp

cdef object _ndarray, _empty
try:
    import numpy as _np
    _ndarray = _np.ndarray
    _empty = _np.empty
except ImportError:                 # numpy is a dependency; without it nothing is ever hot
    _ndarray = _empty = None


cdef bint head_matches():
    """Whether this numpy's arrays have the head hc_ndarray_head reads (checked once, on arrays
    whose data pointer, shape, dtype and flags are known); if not, every buffer is pinned through
    the buffer protocol."""
    cdef hc_ndarray_head* h
    if _ndarray is None:
        return False
    for a in (_np.zeros((3, 4), _np.float32), _np.zeros(5, _np.int8)[::2], _np.zeros(0, _np.float64)):
        h = <hc_ndarray_head*><PyObject*>a
        flags = a.flags
        if (<size_t>h.data != <size_t>a.__array_interface__["data"][0] or h.nd != a.ndim
                or tuple(h.dimensions[i] for i in range(h.nd)) != a.shape or <object>h.descr is not a.dtype
                or <size_t>h.base != (0 if a.base is None else <size_t>id(a.base))
                or bool(h.flags & HC_NPY_C_CONTIGUOUS) != flags.c_contiguous
                or bool(h.flags & HC_NPY_WRITEABLE) != flags.writeable):
            return False
    ro = _np.zeros(2)
    ro.setflags(write=False)
    return not ((<hc_ndarray_head*><PyObject*>ro).flags & HC_NPY_WRITEABLE)


cdef bint DIRECT = head_matches()
NUMPY_HEAD_DIRECT = DIRECT          # for the tests: whether arrays are pinned from their head here


cdef inline Py_ssize_t array_nbytes(object a, int dtype) except -1:
    """A numpy array's bytes (its dtype's code known), from its head."""
    cdef hc_ndarray_head* h = <hc_ndarray_head*><PyObject*>a
    cdef Py_ssize_t n = dtype_size(dtype)
    cdef int i
    if not DIRECT:
        return a.nbytes
    for i in range(h.nd):
        n *= h.dimensions[i]
    return n


cdef extern from *:
    """
    /* numpy's own constructor PyArray_NewFromDescr, slot 94 of the C-API table numpy exports in
       the capsule _ARRAY_API (what its import_array() reads; the slots are numpy's ABI, the same
       from 1.x through 2.x). Found and checked at import (new_direct), so no numpy headers are
       needed to build. */
    typedef PyObject* (*hc_new_descr_fn)(PyTypeObject*, PyObject*, int, const Py_ssize_t*,
                                         const Py_ssize_t*, void*, int, PyObject*);
    static hc_new_descr_fn hc_new_descr = NULL;
    static PyTypeObject* hc_array_type = NULL;
    static int hc_numpy_api(void** api, PyObject* ndarray) {
        if (api == NULL || (PyObject*)api[2] != ndarray) return 0;
        hc_array_type = (PyTypeObject*)api[2];
        hc_new_descr = (hc_new_descr_fn)api[94];
        return 1;
    }
    static PyObject* hc_new_1d(PyObject* descr, Py_ssize_t n) {
        Py_INCREF(descr);                           /* the constructor steals it */
        return hc_new_descr(hc_array_type, descr, 1, &n, NULL, NULL, 0, NULL);
    }
    """
    int hc_numpy_api(void** api, PyObject* ndarray)
    object hc_new_1d(PyObject* descr, Py_ssize_t n)


cdef bint new_direct():
    """Whether new_like may call numpy's C constructor itself (~500 instructions) instead of
    ``numpy.empty`` through its Python signature (~1,100: argument parsing and converting the
    shape and the dtype, on every allocating call). Checked once: the table's array type is
    numpy.ndarray (hc_numpy_api), and the arrays it makes match numpy.empty's (type, dtype,
    shape, strides, flags, owner of their data); if not, every output comes from numpy.empty."""
    if not DIRECT:
        return False
    try:
        try:
            from numpy._core import _multiarray_umath as m
        except ImportError:                        # numpy 1.x
            from numpy.core import _multiarray_umath as m
        api = PyCapsule_GetPointer(m._ARRAY_API, NULL)
    except Exception:
        return False
    if not hc_numpy_api(<void**>api, <PyObject*>_ndarray):     # its array type is numpy.ndarray
        return False
    for dt in (_np.dtype(_np.float32), _np.dtype(_np.int8), _np.dtype(_np.complex128)):
        for n in (0, 1, 5):
            ref = _np.empty(n, dt)
            a = hc_new_1d(<PyObject*>dt, n)
            if (type(a) is not _ndarray or a.dtype is not ref.dtype or a.shape != ref.shape
                    or a.strides != ref.strides or a.base is not None
                    or a.flags.owndata != ref.flags.owndata or a.flags.writeable != ref.flags.writeable
                    or a.flags.c_contiguous != ref.flags.c_contiguous
                    or a.flags.aligned != ref.flags.aligned):
                return False
    return True


cdef bint NEW_DIRECT = new_direct()
NUMPY_NEW_DIRECT = NEW_DIRECT       # for the tests: whether outputs are made by numpy's C constructor


cdef inline object new_like(object a, int dtype, Py_ssize_t count):
    """A new 1-D array of ``count`` elements of numpy array a's dtype: what the parser makes for
    an output the caller left out (``numpy.empty((count,), a.dtype)``), made by numpy's own
    constructor where new_direct found it (Hot.result: the pool's new arrays)."""
    if NEW_DIRECT:
        return hc_new_1d((<hc_ndarray_head*><PyObject*>a).descr, count)
    return _empty(count, <object>(<hc_ndarray_head*><PyObject*>a).descr if DIRECT else a.dtype)


cdef extern from *:
    """
    #define hc_refcnt(o) Py_REFCNT(o)
    """
    Py_ssize_t hc_refcnt(PyObject* o)


cdef enum:
    # The results pool of a communicator's allocating forms (Hot.result): how many arrays it keeps,
    # and the largest it keeps (bytes; a larger result is always a new array: its allocation is
    # small against its call, and the pool must not hold much memory after the caller let go).
    POOL_SLOTS = 4
    POOL_MAX_BYTES = 65536

# what a pooled array must still be to be handed out again: a C-ordered, writable array that owns
# its data (its head is checked, as the caller may have changed its flags, shape or dtype in place
# before dropping it)
cdef int POOL_FLAGS = HC_NPY_C_CONTIGUOUS | HC_NPY_OWNDATA | HC_NPY_WRITEABLE


cdef int view_of(object a, int dtype, Py_buffer* v, bint writable) except -1:
    """Pin a numpy array of dtype code ``dtype`` (exact ndarray) for one call: a C-contiguous
    (writable) one straight from its head (no buffer-protocol export: the call's own reference
    keeps it alive, and v.obj stays NULL so releasing it is a no-op), anything else through the
    buffer protocol, with its errors (pinning.get_buffer)."""
    cdef hc_ndarray_head* h = <hc_ndarray_head*><PyObject*>a
    cdef int need = HC_NPY_C_CONTIGUOUS | (HC_NPY_WRITEABLE if writable else 0)
    if not DIRECT or (h.flags & need) != need or (writable and (h.flags & HC_NPY_WARN_ON_WRITE)):
        get_buffer(a, v, writable)
        return 0
    memset(v, 0, sizeof(Py_buffer))            # obj NULL: nothing to release
    v.buf = h.data
    v.len = array_nbytes(a, dtype)
    v.readonly = not writable
    v.itemsize = dtype_size(dtype)
    return 0


cdef int pin_in_out(object x, object y, int dtype, Py_buffer* a, Py_buffer* b) except -1:
    """a = input x (writable when y is x: in place), b = output y (writable; b is a copy of a when
    y is x), both numpy arrays of dtype code ``dtype``, pinned in that order (view_of), so errors
    come as the dispatch's own entries raise them. On error nothing stays pinned; otherwise release
    with release_pair(x is y, a, b)."""
    view_of(x, dtype, a, x is y)
    if y is x:
        b[0] = a[0]
        return 0
    try:
        view_of(y, dtype, b, True)
    except BaseException:
        PyBuffer_Release(a)
        raise
    return 0


@cython.final
cdef class Hot:
    """The per-call work of a communicator's collectives, for calls of a shape it has seen before.

    A blocking call through the Python layer costs a dtype lookup, the parser, the tuner's cache,
    the route checks and two or three pins: a few microseconds, several times the whole 8-byte
    collective. The Communicator teaches this object each (collective, bytes) -> algorithm it
    routed plainly to a native schedule (``learn``); later calls of that shape on a numpy array of
    a known dtype come here first and go straight to the schedule. Each method returns the call's
    result (what the public method returns: the output, made here when the caller passed none,
    exactly as the parser makes it; None on a rooted collective's other ranks), or False without
    side effects when it does not take the call, and the Python path runs as before.

    The allocating forms (``allgather(x)``, ``reduce_scatter(x)``, ``alltoall(x)``, ``scatter(x)``,
    ``reduce`` and ``gather`` on the root) are the ones most programs write, so they take this path too: the key
    is the bytes the output will have, the same the parser prices, and the result is what
    ``numpy.empty`` makes, from a small pool of results nothing references any more (``result``:
    a result the caller, or anything over it, still holds is never written again). Keys are sizes,
    never buffers: a fresh input each call (``allreduce(x.copy())``) is as hot as a reused one.

    What it learns depends only on the size and on the forced algorithm, like the tuner's choice.
    A call forced with ``algorithm=`` is learnt under that name and the tuner's own calls under
    None, and both are looked up the same way (two dict lookups), so a forced algorithm costs what
    the tuner's choice of it costs: a user feature, and the benchmark's like-for-like comparison of
    algorithms (bench/crossover.py). ``timeout``: None (the communicator's) or a positive number of
    seconds (int or float); anything else is the parser's to convert or refuse.

    Every call it runs goes into the communicator's flight record (``flight``, native: a few
    stores), failures with their error's class. Its schedules start with the GIL held and free it
    only if their wait lasts (Engine.hold_s, gil.pxd): a call whose peers are there never pays
    for releasing and retaking it."""
    cdef Engine e
    cdef double timeout
    cdef dict codes                 # numpy dtype -> hetccl dtype code
    cdef object dt_last             # the last dtype seen and its code (arrays share dtype objects)
    cdef int code_last
    cdef list algos                 # per HOT_* kind: {forced name or None: {nbytes: (code, name)}}
    cdef list memo_hit              # per HOT_* kind: the last unforced hit, for memo_nb[kind] bytes
    cdef Py_ssize_t memo_nb[HOT_KINDS]   # (-1: none), so a loop of one shape skips the dict lookups
    cdef public object last         # the name of the algorithm of the last call (last_algorithm)
    cdef public int pending         # calls queued for the progress thread (comm.py): none may overtake
    cdef readonly Flight flight     # the communicator's flight record (hetccl/flight/)
    cdef PyObject* pool[POOL_SLOTS] # the results pool (result): owned references or NULL
    cdef int pool_next              # the slot a new result replaces when every one is held

    def __cinit__(self, Engine e, double timeout, dict codes, Flight flight=None):
        self.e = e
        self.flight = flight if flight is not None else Flight()
        self.timeout = timeout
        self.codes = codes
        self.dt_last = None
        self.code_last = -1
        self.algos = [{} for _ in range(HOT_KINDS)]
        self.memo_hit = [None] * HOT_KINDS
        self.unmemo()
        self.last = None
        self.pending = 0

    def __dealloc__(self):
        cdef int i
        cdef PyObject* p
        for i in range(POOL_SLOTS):
            p, self.pool[i] = self.pool[i], NULL
            Py_XDECREF(p)

    cdef object result(self, object a, int dtype, Py_ssize_t count):
        """The output of an allocating form: a 1-D array of ``count`` elements of numpy array a's
        dtype, as ``numpy.empty`` makes it (its contents undefined).

        It comes from this communicator's small pool when a pooled array of that dtype and length
        is referenced by nothing but the pool (its reference count is 1): the caller dropped it,
        and no view, memoryview, buffer export, DLPack capsule or ``torch.from_numpy`` tensor over
        it remains, since each of those holds a reference to the array. So a loop that drops each
        result (``comm.allgather(x)`` for its side effect, or ``y = comm.allgather(x)``, where
        ``y`` lets go of the result before last) gets its results without allocating or freeing
        anything: at 4 ranks on 2 cores, a new array's ~0.1 us on every rank cost the call 0.3 us
        (bench/RESULTS.md, the call forms). What a reference count cannot see is never protected:
        a raw pointer taken from the array (``ctypes.data``, ``__array_interface__``) or a weak
        reference does not keep a result from being handed out again. Results over
        POOL_MAX_BYTES, and every result where numpy's constructor is not called directly, are
        new arrays. A new result takes a free slot (or an unheld array's of another shape), else
        the oldest slot's place (that array stays the caller's)."""
        cdef PyObject* descr
        cdef PyObject* p
        cdef hc_ndarray_head* h
        cdef int i, slot = -1
        if not NEW_DIRECT or count * dtype_size(dtype) > POOL_MAX_BYTES:
            return new_like(a, dtype, count)
        descr = (<hc_ndarray_head*><PyObject*>a).descr
        for i in range(POOL_SLOTS):
            p = self.pool[i]
            if p == NULL:
                if slot < 0:
                    slot = i
                continue
            if hc_refcnt(p) != 1:                   # the caller's, or something over it
                continue
            h = <hc_ndarray_head*>p
            if (h.descr == descr and h.nd == 1 and h.dimensions[0] == count and h.base == NULL
                    and (h.flags & POOL_FLAGS) == POOL_FLAGS):
                return <object>p                    # (a new reference: the caller's)
            if slot < 0:
                slot = i
        out = hc_new_1d(descr, count)
        if slot < 0:
            slot = self.pool_next
            self.pool_next = (slot + 1) % POOL_SLOTS
        p = self.pool[slot]
        Py_INCREF(out)
        self.pool[slot] = <PyObject*>out
        Py_XDECREF(p)                               # (an unheld array is freed here)
        return out

    def pooled(self):
        """The arrays the results pool holds now (for the tests)."""
        return [<object>self.pool[i] for i in range(POOL_SLOTS) if self.pool[i] != NULL]

    cdef void unmemo(self) noexcept:
        cdef int k
        for k in range(HOT_KINDS):
            self.memo_nb[k] = -1

    cdef public object on_refused   # single copy refused: called with the collective (see plain)

    def learn(self, str collective, Py_ssize_t nbytes, int algo, str name, forced=None,
              fallback=None):
        """Remember that `collective` of nbytes, called with ``algorithm=forced`` (None: the
        tuner's choice), runs `algo` through the plain native route (at most 512 sizes per
        collective and name: past that the table starts again, so a program that uses ever new
        sizes does not grow; the names are the algorithms that ran, a handful). ``algo``
        SINGLE_COPY: the plain-buffer single copy, with ``fallback`` = (code, name) of the FIFO
        algorithm that runs the call if a cross-memory read is refused (``plain``)."""
        cdef dict d = <dict>(<dict>self.algos[HOT_NAMES.index(collective)]).setdefault(forced, {})
        if len(d) >= 512:
            d.clear()
        d[nbytes] = (algo, name) if fallback is None else (algo, name, fallback)
        self.unmemo()

    def forget(self):
        """Drop everything learnt (the routes changed)."""
        for d in self.algos:
            (<dict>d).clear()
        self.unmemo()

    cdef int dtype_of(self, object buf):
        """The dtype code of a numpy array, or -1 (not numpy, or a dtype only the Python path knows)."""
        if type(buf) is not _ndarray:
            return -1
        dt = <object>(<hc_ndarray_head*><PyObject*>buf).descr if DIRECT else buf.dtype
        if dt is not self.dt_last:
            code = self.codes.get(dt)
            if code is None:
                return -1
            self.dt_last = dt
            self.code_last = code
        return self.code_last

    cdef tuple algo_of(self, int kind, Py_ssize_t nbytes, object forced):
        """The learnt (code, name) of this call, or None."""
        if forced is None and self.memo_nb[kind] == nbytes:
            return <tuple>self.memo_hit[kind]
        by_size = (<dict>self.algos[kind]).get(forced)
        if by_size is None:
            return None
        hit = <tuple>(<dict>by_size).get(nbytes)
        if forced is None and hit is not None:
            self.memo_nb[kind] = nbytes
            self.memo_hit[kind] = hit
        return hit

    cdef double seconds(self, object timeout):
        """The call's timeout in seconds: the communicator's (None) or the caller's positive int
        or float; 0: not one this path takes."""
        if timeout is None:
            return self.timeout
        if (type(timeout) is float or type(timeout) is int) and timeout > 0:
            return timeout
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int run(self, int coll, tuple hit, Py_buffer* a, Py_buffer* b, size_t nbytes, bint inplace,
                 int dtype, int op, int root, double t) except -1:
        """Run a learnt call on pinned buffers through the dispatch's run_* half of `coll`, recorded
        in the flight ring (op and root: FL_NO_DTYPE / -1 where the collective has none)."""
        cdef int algo = <int>hit[0]
        cdef uint64_t s
        if algo == HOT_SINGLE_COPY:
            return self.plain(coll, hit, a, b, nbytes, inplace, dtype, op, root, t)
        self.last = hit[1]
        s = self.flight.push(coll, nbytes, dtype, op, root, hit[1], FL_RUNNING)
        self.e.hold_gil = True          # its wait frees the GIL only when it lasts (gil.pxd)
        try:
            if coll == COLL_ALLREDUCE:
                run_allreduce(self.e, a, b, inplace, dtype, op, algo, t)
            elif coll == COLL_ALLGATHER:
                run_allgather(self.e, a, b, dtype, algo, t)
            elif coll == COLL_BROADCAST:
                run_broadcast(self.e, <char*>a.buf, a.len, root, dtype, algo, t)
            elif coll == COLL_ALLTOALL:
                run_alltoall(self.e, a, b, dtype, algo, t)
            else:
                run_reduce_scatter(self.e, a, b, dtype, op, algo, t)
        except BaseException as x:
            self.e.hold_gil = False
            self.flight.fail(s, x)
            raise
        self.e.hold_gil = False         # (gil_off cleared it; kept clear whatever the entry did)
        self.flight.mark(s, FL_DONE, 0)
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int plain(self, int coll, tuple hit, Py_buffer* a, Py_buffer* b, size_t nbytes, bint inplace,
                   int dtype, int op, int root, double t) except -1:
        """Run a learnt plain-buffer single-copy call (run_plain), recorded like ``run``. If a
        cross-memory read was refused (on any rank: all see it in the call's last sync), the
        communicator is told (``on_refused(collective)``: it warns and routes to the FIFOs from
        then on), this object forgets what it learnt, and the call runs again on the FIFO
        algorithm it replaced, so every rank takes the same path and the caller sees one
        completed call."""
        cdef uint64_t s
        cdef int done
        self.last = hit[1]
        s = self.flight.push(coll, nbytes, dtype, op, root, hit[1], FL_RUNNING)
        try:
            done = run_plain(self.e, coll, a, b, root, dtype, t)
        except BaseException as x:
            self.flight.fail(s, x)
            raise
        self.flight.mark(s, FL_DONE, 0)
        if not done:
            if self.on_refused is not None:
                self.on_refused("broadcast" if coll == COLL_BROADCAST else
                                "allgather" if coll == COLL_ALLGATHER else "alltoall")
            self.forget()
            self.run(coll, <tuple>hit[2], a, b, nbytes, inplace, dtype, op, root, t)
        return 0

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef int rooted(self, int coll, tuple hit, object send, object recv, size_t nbytes, int dtype,
                    int op, int root, double t) except -1:
        """Run a learnt reduce, gather or scatter (equal blocks) through its whole native entry,
        recorded in the flight ring like ``run``."""
        cdef int algo = <int>hit[0]
        cdef uint64_t s
        self.last = hit[1]
        s = self.flight.push(coll, nbytes, dtype, op, root, hit[1], FL_RUNNING)
        self.e.hold_gil = True
        try:
            if coll == COLL_REDUCE:     # the whole native entries (they pin and check their buffers)
                d_reduce(self.e, send, recv, root, dtype, op, algo, t)
            elif coll == COLL_GATHER:
                d_gather(self.e, send, recv, None, root, dtype, algo, t)
            else:
                d_scatter(self.e, send, recv, None, root, dtype, algo, t)
        except BaseException as x:
            self.e.hold_gil = False
            self.flight.fail(s, x)
            raise
        self.e.hold_gil = False         # (gil_off cleared it; kept clear whatever the entry did)
        self.flight.mark(s, FL_DONE, 0)
        return 0

    cpdef object broadcast(self, buf, root, forced=None, timeout=None):
        cdef int dtype = self.dtype_of(buf)
        cdef double t = self.seconds(timeout)
        cdef Py_buffer v
        if dtype < 0 or t == 0 or type(root) is not int:
            return False
        hit = self.algo_of(HOT_BROADCAST, array_nbytes(buf, dtype), forced)
        if hit is None:
            return False
        view_of(buf, dtype, &v, True)
        try:
            self.run(COLL_BROADCAST, hit, &v, NULL, v.len, True, dtype, FL_NO_DTYPE, root, t)
        finally:
            PyBuffer_Release(&v)
        return buf

    cpdef object allreduce(self, buf, out, op, forced=None, timeout=None):
        cdef int dtype = self.dtype_of(buf)
        cdef double t = self.seconds(timeout)
        cdef Py_buffer sv, rv
        cdef bint same
        if dtype < 0 or t == 0 or dtype == DT_BOOL or type(op) is not _ReduceOp or <int>op >= OP_BAND:
            return False
        if out is None:
            out = buf
        elif out is not buf and self.dtype_of(out) != dtype:
            return False
        hit = self.algo_of(HOT_ALLREDUCE, array_nbytes(buf, dtype), forced)
        if hit is None:
            return False
        same = buf is out
        pin_in_out(buf, out, dtype, &sv, &rv)
        try:
            self.run(COLL_ALLREDUCE, hit, &sv, &rv, rv.len, same, dtype, op, -1, t)
        finally:
            release_pair(same, &sv, &rv)
        return out

    cpdef object allgather(self, buf, out, forced=None, timeout=None):
        """``out`` None: a new array of size x len(buf) elements."""
        cdef int dtype = self.dtype_of(buf)
        cdef double t = self.seconds(timeout)
        cdef Py_buffer sv, rv
        cdef bint same = buf is out
        cdef Py_ssize_t nb
        if dtype < 0 or t == 0:
            return False
        if out is None:
            nb = array_nbytes(buf, dtype) * self.e.size
            hit = self.algo_of(HOT_ALLGATHER, nb, forced)
            if hit is None:
                return False
            out = self.result(buf, dtype, nb // dtype_size(dtype))
        else:
            if not same and self.dtype_of(out) != dtype:
                return False
            hit = self.algo_of(HOT_ALLGATHER, array_nbytes(out, dtype), forced)
            if hit is None:
                return False
        view_of(out, dtype, &rv, True)              # the order of pinning.pin_allgather (its errors)
        if same:
            sv = rv
        else:
            try:
                view_of(buf, dtype, &sv, False)
            except BaseException:
                PyBuffer_Release(&rv)
                raise
        try:
            check_allgather(same, self.e.size, self.e.rank, dtype_size(dtype), &sv, &rv)
            self.run(COLL_ALLGATHER, hit, &sv, &rv, rv.len, same, dtype, FL_NO_DTYPE, -1, t)
        finally:
            release_pair(same, &sv, &rv)
        return out

    cpdef object alltoall(self, buf, out, forced=None, timeout=None):
        """``out`` None: a new array of len(buf) elements."""
        cdef int dtype = self.dtype_of(buf)
        cdef double t = self.seconds(timeout)
        cdef Py_buffer sv, rv
        cdef Py_ssize_t nb
        if dtype < 0 or t == 0 or (out is not None and self.dtype_of(out) != dtype):
            return False
        nb = array_nbytes(buf, dtype)
        hit = self.algo_of(HOT_ALLTOALL, nb, forced)
        if hit is None:
            return False
        if out is None:
            out = self.result(buf, dtype, nb // dtype_size(dtype))
        pin_in_out(buf, out, dtype, &sv, &rv)
        try:
            self.run(COLL_ALLTOALL, hit, &sv, &rv, sv.len, False, dtype, FL_NO_DTYPE, -1, t)
        finally:
            release_pair(buf is out, &sv, &rv)
        return out

    cpdef object reduce_scatter(self, buf, out, op, forced=None, timeout=None):
        """Equal blocks only (reduce_scatterv's counts go through Python); op and dtypes as allreduce.
        ``out`` None: a new array of len(buf) / size elements."""
        cdef int dtype = self.dtype_of(buf)
        cdef double t = self.seconds(timeout)
        cdef Py_buffer sv, rv
        cdef Py_ssize_t nb
        if (dtype < 0 or t == 0 or dtype == DT_BOOL or type(op) is not _ReduceOp or <int>op >= OP_BAND
                or (out is not None and self.dtype_of(out) != dtype)):
            return False
        nb = array_nbytes(buf, dtype)
        hit = self.algo_of(HOT_REDUCE_SCATTER, nb, forced)
        if hit is None:
            return False
        if out is None:
            out = self.result(buf, dtype, nb // dtype_size(dtype) // self.e.size)
        pin_in_out(buf, out, dtype, &sv, &rv)
        try:
            self.run(COLL_REDUCE_SCATTER, hit, &sv, &rv, sv.len, False, dtype, op, -1, t)
        finally:
            release_pair(buf is out, &sv, &rv)
        return out

    cpdef object reduce(self, buf, root, op, out, forced=None, timeout=None):
        """The root's result in ``out`` (None: a new array of len(buf) elements); other ranks
        return None."""
        cdef int dtype = self.dtype_of(buf)
        cdef double t = self.seconds(timeout)
        cdef Py_ssize_t nb
        if (dtype < 0 or t == 0 or type(root) is not int or dtype == DT_BOOL or type(op) is not _ReduceOp
                or <int>op >= OP_BAND):
            return False
        if root != self.e.rank:
            out = None                                  # the parser ignores it there too
        elif out is not None and self.dtype_of(out) != dtype:
            return False
        nb = array_nbytes(buf, dtype)
        hit = self.algo_of(HOT_REDUCE, nb, forced)
        if hit is None:
            return False
        if out is None and root == self.e.rank:
            out = self.result(buf, dtype, nb // dtype_size(dtype))
        self.rooted(COLL_REDUCE, hit, buf, out, nb, dtype, op, root, t)
        return out

    cpdef object gather(self, buf, root, out, forced=None, timeout=None):
        """Equal blocks only (gatherv's counts go through Python). The root's result in ``out``
        (None: a new array of size x len(buf) elements); other ranks return None."""
        cdef int dtype = self.dtype_of(buf)
        cdef double t = self.seconds(timeout)
        cdef Py_ssize_t nb
        if dtype < 0 or t == 0 or type(root) is not int:
            return False
        if root != self.e.rank:
            out = None
        elif out is not None and self.dtype_of(out) != dtype:
            return False
        nb = array_nbytes(buf, dtype)
        hit = self.algo_of(HOT_GATHER, nb * self.e.size, forced)
        if hit is None:
            return False
        if out is None and root == self.e.rank:
            out = self.result(buf, dtype, nb // dtype_size(dtype) * self.e.size)
        self.rooted(COLL_GATHER, hit, buf, out, nb, dtype, FL_NO_DTYPE, root, t)
        return out

    cpdef object scatter(self, buf, out, root, forced=None, timeout=None):
        """Equal blocks only (scatterv's counts go through Python); ``buf`` is read on the root
        only. ``out`` None: a new array of len(buf) / size elements on every rank (each passes a
        ``buf`` of the root's length and dtype)."""
        cdef int dtype
        cdef double t = self.seconds(timeout)
        cdef Py_ssize_t nb, es
        if t == 0 or type(root) is not int:
            return False
        if out is None:                                 # the allocating form: buf gives the shape
            dtype = self.dtype_of(buf)
            if dtype < 0:
                return False
            es = dtype_size(dtype)
            nb = array_nbytes(buf, dtype)
            # uneven or strided: the parser raises, on every rank alike (each has buf)
            if nb % (es * self.e.size) or not (
                    ((<hc_ndarray_head*><PyObject*>buf).flags & HC_NPY_C_CONTIGUOUS) if DIRECT
                    else buf.flags.c_contiguous):
                return False
            nb //= self.e.size
            hit = self.algo_of(HOT_SCATTER, nb * self.e.size, forced)
            if hit is None:
                return False
            out = self.result(buf, dtype, nb // es)
        else:
            dtype = self.dtype_of(out)
            if dtype < 0:
                return False
            nb = array_nbytes(out, dtype)
            hit = self.algo_of(HOT_SCATTER, nb * self.e.size, forced)
            if hit is None:
                return False
        if root != self.e.rank:
            buf = None
        elif self.dtype_of(buf) != dtype:
            return False
        self.rooted(COLL_SCATTER, hit, buf, out, nb, dtype, FL_NO_DTYPE, root, t)
        return out


# ------------------------------------------------------------------ the public methods' fast entry

from hetccl.errors import HetcclError as _HetcclError

cdef object _SUM = _ReduceOp.SUM


def methods(Hot hot, owner, cls):
    """The public collectives of one communicator (``owner``: a weak reference to it; ``cls``: its
    class) as native callables, which comm.py sets on the instance so that they shadow the class's
    methods.

    A blocking call of a learnt shape through the class's Python method costs a Python frame, its
    keyword-only defaults (CPython fills them from a dict, a lookup each, and cannot specialise such
    a call) and a second call into ``Hot``: ~1,400 instructions, a third of a whole 8-byte
    allreduce. These take the same arguments, go straight to ``Hot`` (a C call), and hand
    everything else, untouched, to the class's method, which is the one implementation (its
    docstring is the reference): a call ``Hot`` does not take, an asynchronous one, one behind
    queued ones (``hot.pending``), one with counts. Errors: as the class's method raises them."""

    def fail(e, str what):
        c = owner()
        return c._failed(e, what) if c is not None else e

    def me():
        c = owner()
        if c is None:
            raise ReferenceError("this communicator's method outlived the communicator")
        return c

    def allreduce(buf, op=_SUM, out=None, *, timeout=None, algorithm=None, async_op=False):
        if not async_op and not hot.pending:
            try:
                r = hot.allreduce(buf, out, op, algorithm, timeout)
            except _HetcclError as e:
                raise fail(e, "allreduce")
            if r is not False:
                return r
        return cls.allreduce(me(), buf, op, out, timeout=timeout, algorithm=algorithm, async_op=async_op)

    def allgather(buf, out=None, *, timeout=None, algorithm=None, async_op=False):
        if not async_op and not hot.pending:
            try:
                r = hot.allgather(buf, out, algorithm, timeout)
            except _HetcclError as e:
                raise fail(e, "allgather")
            if r is not False:
                return r
        return cls.allgather(me(), buf, out, timeout=timeout, algorithm=algorithm, async_op=async_op)

    def reduce_scatter(buf, out=None, op=_SUM, *, counts=None, timeout=None, algorithm=None,
                       async_op=False):
        if counts is None and not async_op and not hot.pending:
            try:
                r = hot.reduce_scatter(buf, out, op, algorithm, timeout)
            except _HetcclError as e:
                raise fail(e, "reduce_scatter")
            if r is not False:
                return r
        return cls.reduce_scatter(me(), buf, out, op, counts=counts, timeout=timeout, algorithm=algorithm,
                                  async_op=async_op)

    def broadcast(buf, root=0, *, timeout=None, algorithm=None, async_op=False):
        if not async_op and not hot.pending:
            try:
                r = hot.broadcast(buf, root, algorithm, timeout)
            except _HetcclError as e:
                raise fail(e, "broadcast")
            if r is not False:
                return r
        return cls.broadcast(me(), buf, root, timeout=timeout, algorithm=algorithm, async_op=async_op)

    def reduce(buf, root=0, op=_SUM, out=None, *, timeout=None, algorithm=None, async_op=False):
        if not async_op and not hot.pending:
            try:
                r = hot.reduce(buf, root, op, out, algorithm, timeout)
            except _HetcclError as e:
                raise fail(e, "reduce")
            if r is not False:
                return r
        return cls.reduce(me(), buf, root, op, out, timeout=timeout, algorithm=algorithm, async_op=async_op)

    def gather(buf, root=0, out=None, *, counts=None, timeout=None, algorithm=None, async_op=False):
        if counts is None and not async_op and not hot.pending:
            try:
                r = hot.gather(buf, root, out, algorithm, timeout)
            except _HetcclError as e:
                raise fail(e, "gather")
            if r is not False:
                return r
        return cls.gather(me(), buf, root, out, counts=counts, timeout=timeout, algorithm=algorithm,
                          async_op=async_op)

    def scatter(buf, out=None, root=0, *, counts=None, timeout=None, algorithm=None, async_op=False):
        if counts is None and not async_op and not hot.pending:
            try:
                r = hot.scatter(buf, out, root, algorithm, timeout)
            except _HetcclError as e:
                raise fail(e, "scatter")
            if r is not False:
                return r
        return cls.scatter(me(), buf, out, root, counts=counts, timeout=timeout, algorithm=algorithm,
                           async_op=async_op)

    def alltoall(buf, out=None, *, send_counts=None, recv_counts=None, timeout=None, algorithm=None,
                 async_op=False):
        if send_counts is None and recv_counts is None and not async_op and not hot.pending:
            try:
                r = hot.alltoall(buf, out, algorithm, timeout)
            except _HetcclError as e:
                raise fail(e, "alltoall")
            if r is not False:
                return r
        return cls.alltoall(me(), buf, out, send_counts=send_counts, recv_counts=recv_counts,
                            timeout=timeout, algorithm=algorithm, async_op=async_op)

    made = {"allreduce": allreduce, "allgather": allgather, "reduce_scatter": reduce_scatter,
            "broadcast": broadcast, "reduce": reduce, "gather": gather, "scatter": scatter,
            "alltoall": alltoall}
    for name, f in made.items():
        f.__doc__ = getattr(cls, name).__doc__
    return made
