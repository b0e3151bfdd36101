# cython: language_level=3
"""One native entry per collective: pin and check the buffers, then dispatch on the algorithm code.

The Python layer decides which algorithm runs and passes its code (codes.pxd: ALGO_*); this module
is the one place that maps a code to its schedule, in a family module each (ring.pyx,
doubling.pyx, binomial.pyx, halving.pyx, trees.pyx, bruck.pyx, linear.pyx). A code that names no
schedule of the collective raises InvalidUsage before anything runs.

Every entry brackets its schedule with Engine.begin / Engine.end (engine.pyx): the schedule runs
without the GIL and must not raise, so everything that can fail (pinning, checks, allocations) comes
first. The ``run_*`` halves take buffers pinned already; the latency path (latency.pyx) calls them.
"""
from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free

from hetccl._native.atomics cimport hc_now
from hetccl._native.binomial cimport bcast_binomial, bcast_scatter_allgather, reduce_binomial
from hetccl._native.bruck cimport allgather_bruck, alltoall_bruck
from hetccl._native.codes cimport *
from hetccl._native.doubling cimport allreduce_rd, allgather_rd, barrier_dissemination
from hetccl._native.engine cimport Engine
from hetccl._native.gil cimport PyThreadState, gil_off, gil_on
from hetccl._native.halving cimport allreduce_rabenseifner, reduce_rs_gather, reduce_scatter_halving
from hetccl._native.kernels cimport copy_bytes
from hetccl._native.linear cimport gather_linear, scatter_linear, alltoall_pairwise
from hetccl._native.pinning cimport (Pins, check_alltoall, check_op, check_reduction, pin_allgather,
                                     release_pair)
from hetccl._native.ring cimport (allreduce_ring, allgather_ring, ring_allgatherv, reduce_scatter_ring,
                                  bcast_chain)
from hetccl._native.trees cimport allreduce_dbtree

from hetccl._native.codes import COLLECTIVE_NAMES
from hetccl.errors import InvalidUsage


cdef int schedule(bint known, int coll, int algo) except -1:
    """Raise unless algo names a schedule of coll (known)."""
    if not known:
        raise InvalidUsage(f"algorithm code {algo} names no {COLLECTIVE_NAMES[coll]} schedule of the "
                           f"native engine (the Python layer passes collectives/algorithm.py's codes)")
    return 0


cdef size_t* blocks_of(counts, int N, size_t es, str what) except NULL:
    """N byte offsets then N byte lengths of blocks of counts[b] elements, in C (free() them):
    a schedule between Engine.begin and Engine.end must not touch Python objects."""
    cdef size_t* o
    cdef size_t total = 0
    cdef int i
    if len(counts) != N:
        raise InvalidUsage(f"{what} needs one count per rank ({N}), got {len(counts)}")
    for c in counts:
        if c < 0:
            raise InvalidUsage(f"{what} counts must be >= 0, got {c}")
    o = <size_t*>malloc(sizeof(size_t) * 2 * N + 1)
    if o == NULL:
        raise MemoryError()
    for i in range(N):
        o[i] = total
        o[N + i] = <size_t>counts[i] * es
        total += o[N + i]
    return o


cdef size_t blocks_total(size_t* o, int N) noexcept:
    return o[N - 1] + o[2 * N - 1] if N else 0


# ------------------------------------------------------------------ allreduce

def allreduce(Engine e, sendobj, recvobj, int dtype, int op, int algo, double timeout):
    """recv = reduction over ranks of send (send may be recv: in place)."""
    cdef Pins p = Pins()
    p.pin(sendobj, recvobj, True, sendobj is recvobj)
    run_allreduce(e, &p.a, &p.b, sendobj is recvobj, dtype, op, algo, timeout)


cdef int run_allreduce(Engine e, Py_buffer* a, Py_buffer* b, bint inplace, int dtype, int op, int algo,
                       double timeout) except -1:
    cdef int rc
    cdef PyThreadState* ts
    cdef double dl
    cdef size_t count
    e.check_usable()
    check_reduction(a, b, inplace, dtype, op)
    schedule(algo == ALGO_RING or algo == ALGO_RD or algo == ALGO_RABENSEIFNER or algo == ALGO_DBTREE,
             COLL_ALLREDUCE, algo)
    count = <size_t>b.len // dtype_size(dtype)
    dl = hc_now() + timeout
    e.begin("allreduce", b.len)
    ts = gil_off(e, dl - timeout)
    if algo == ALGO_RING:
        rc = allreduce_ring(e, <char*>a.buf, <char*>b.buf, count, dtype, op, dl)
    elif algo == ALGO_RD:
        rc = allreduce_rd(e, <char*>a.buf, <char*>b.buf, count, dtype, op, dl)
    elif algo == ALGO_RABENSEIFNER:
        rc = allreduce_rabenseifner(e, <char*>a.buf, <char*>b.buf, count, dtype, op, dl)
    else:
        rc = allreduce_dbtree(e, <char*>a.buf, <char*>b.buf, count, dtype, op, dl)
    gil_on(e, ts)
    e.end(rc, "allreduce", timeout)
    return 0


# ------------------------------------------------------------------ allgather

def allgather(Engine e, sendobj, recvobj, int dtype, int algo, double timeout):
    """recv = concatenation over ranks of send (send may be recv: in place, each rank's block
    already in its place)."""
    cdef Py_buffer sv, rv
    cdef bint same = sendobj is recvobj
    e.check_usable()
    pin_allgather(sendobj, recvobj, e.size, e.rank, dtype_size(dtype), &sv, &rv)
    try:
        run_allgather(e, &sv, &rv, dtype, algo, timeout)
    finally:
        release_pair(same, &sv, &rv)


cdef int run_allgather(Engine e, Py_buffer* sv, Py_buffer* rv, int dtype, int algo, double timeout) except -1:
    """On buffers pin_allgather checked (sv: this rank's block, which may lie in rv)."""
    cdef int rc
    cdef PyThreadState* ts
    cdef double dl
    schedule(algo == ALGO_RING or algo == ALGO_RD or algo == ALGO_BRUCK, COLL_ALLGATHER, algo)
    dl = hc_now() + timeout
    e.begin("allgather", <size_t>rv.len)
    ts = gil_off(e, dl - timeout)
    if algo == ALGO_RING:
        rc = allgather_ring(e, <char*>sv.buf, <char*>rv.buf, <size_t>sv.len, dtype, dl)
    elif algo == ALGO_RD:
        rc = allgather_rd(e, <char*>sv.buf, <char*>rv.buf, <size_t>sv.len, dtype, dl)
    else:
        rc = allgather_bruck(e, <char*>sv.buf, <char*>rv.buf, <size_t>sv.len, dtype, dl)
    gil_on(e, ts)
    e.end(rc, "allgather", timeout)
    return 0


def allgatherv(Engine e, sendobj, recvobj, counts, int dtype, int algo, double timeout):
    """recvobj = every rank's sendobj concatenated in rank order; counts[b] elements from rank b."""
    cdef Pins p = Pins()
    cdef int rc, N = e.size
    cdef double dl
    cdef size_t es = dtype_size(dtype), total
    cdef size_t* o
    schedule(algo == ALGO_RING, COLL_ALLGATHER, algo)
    p.pin(sendobj, recvobj, True)
    o = blocks_of(counts, N, es, "allgatherv")
    try:
        total = blocks_total(o, N)
        if <size_t>p.a.len != o[N + e.rank] or <size_t>p.b.len != total:
            raise InvalidUsage(f"allgatherv: rank {e.rank} passes {p.a.len // es} elements (counts say "
                               f"{counts[e.rank]}) into an output of {p.b.len // es} (counts add up to {total // es})")
        dl = hc_now() + timeout
        e.begin("allgatherv", total)
        with nogil:
            rc = ring_allgatherv(e, <char*>p.b.buf, o, o + N, <char*>p.a.buf, dtype, total // es,
                                 COLL_ALLGATHER, 9, dl)
        e.end(rc, "allgatherv", timeout)
    finally:
        free(o)


# ------------------------------------------------------------------ reduce_scatter

def reduce_scatter(Engine e, sendobj, recvobj, counts, int dtype, int op, int algo, double timeout):
    """recvobj = this rank's block of the reduction of every rank's sendobj (equal blocks, or
    counts[b] elements for rank b: reduce_scatterv)."""
    cdef Pins p = Pins()
    cdef int N = e.size
    cdef size_t es = dtype_size(dtype)
    cdef size_t* o
    check_op(dtype, op)
    p.pin(sendobj, recvobj, True)
    if counts is None:
        run_reduce_scatter(e, &p.a, &p.b, dtype, op, algo, timeout)
        return
    o = blocks_of(counts, N, es, "reduce_scatterv")
    try:
        if blocks_total(o, N) != <size_t>p.a.len:
            raise InvalidUsage(f"reduce_scatter input has {p.a.len // es} elements but counts add up "
                               f"to {blocks_total(o, N) // es}")
        run_rs_blocks(e, &p.a, &p.b, o, dtype, op, algo, timeout)
    finally:
        free(o)


cdef int run_reduce_scatter(Engine e, Py_buffer* a, Py_buffer* b, int dtype, int op, int algo,
                            double timeout) except -1:
    """reduce_scatter of equal blocks (len(a) = size x len(b)) on pinned buffers. Block offsets
    live on the stack up to 64 ranks."""
    cdef int N = e.size, i
    cdef size_t es = dtype_size(dtype), blk
    cdef size_t offs[2 * 64]
    cdef size_t* o = offs
    check_op(dtype, op)
    if a.len % (es * N):
        raise InvalidUsage(f"reduce_scatter input of {a.len // es} elements does not split into "
                           f"{N} equal blocks; pass counts= (reduce_scatterv) or pad the input")
    blk = <size_t>a.len // N
    if N > 64:
        o = <size_t*>malloc(sizeof(size_t) * 2 * N)
        if o == NULL:
            raise MemoryError()
    try:
        for i in range(N):
            o[i] = blk * i
            o[N + i] = blk
        run_rs_blocks(e, a, b, o, dtype, op, algo, timeout)
    finally:
        if o != offs:
            free(o)
    return 0


cdef int run_rs_blocks(Engine e, Py_buffer* a, Py_buffer* b, size_t* boff, int dtype, int op, int algo,
                       double timeout) except -1:
    """Run reduce_scatter(v) with blocks at boff[0..N) of lengths boff[N..2N) (bytes; they tile a)."""
    cdef int rc, N = e.size
    cdef PyThreadState* ts
    cdef double dl
    cdef size_t es = dtype_size(dtype)
    cdef size_t* blen = boff + N
    schedule(algo == ALGO_RING or algo == ALGO_RECURSIVE_HALVING, COLL_REDUCE_SCATTER, algo)
    if <size_t>b.len != blen[e.rank]:
        raise InvalidUsage(f"reduce_scatter output of rank {e.rank} has {b.len // es} elements; "
                           f"it needs {blen[e.rank] // es}")
    dl = hc_now() + timeout
    e.begin("reduce_scatter", b.len)
    ts = gil_off(e, dl - timeout)
    if N == 1:
        copy_bytes(b.buf, a.buf, blen[0], 0)
        rc = 0
    elif algo == ALGO_RECURSIVE_HALVING:
        rc = reduce_scatter_halving(e, <char*>a.buf, <char*>b.buf, boff, blen, dtype, op,
                                    <size_t>a.len // es, dl)
    else:
        rc = reduce_scatter_ring(e, <char*>a.buf, <char*>b.buf, boff, blen, dtype, op,
                                 <size_t>a.len // es, dl)
    gil_on(e, ts)
    e.end(rc, "reduce_scatter", timeout)
    return 0


# ------------------------------------------------------------------ broadcast and reduce

def broadcast(Engine e, obj, int root, int dtype, int algo, double timeout):
    """obj (in place) = root's obj on every rank."""
    cdef Pins p = Pins()
    p.pin(obj, None, False, True)
    run_broadcast(e, <char*>p.a.buf, p.a.len, root, dtype, algo, timeout)


cdef int run_broadcast(Engine e, char* buf, size_t nb, int root, int dtype, int algo,
                       double timeout) except -1:
    cdef int rc
    cdef PyThreadState* ts
    cdef double dl
    cdef size_t count = nb // dtype_size(dtype)
    if not 0 <= root < e.size:
        raise InvalidUsage(f"broadcast root {root} is not a rank of this communicator (0..{e.size - 1})")
    schedule(algo == ALGO_BINOMIAL or algo == ALGO_CHAIN or algo == ALGO_SCATTER_ALLGATHER,
             COLL_BROADCAST, algo)
    dl = hc_now() + timeout
    e.begin("broadcast", nb)
    ts = gil_off(e, dl - timeout)
    if e.size == 1:
        rc = 0
    elif algo == ALGO_CHAIN:
        rc = bcast_chain(e, buf, nb, root, dtype, count, dl)
    elif algo == ALGO_SCATTER_ALLGATHER:
        rc = bcast_scatter_allgather(e, buf, count, root, dtype, dl)
    else:
        rc = bcast_binomial(e, buf, nb, root, dtype, count, dl)
    gil_on(e, ts)
    e.end(rc, "broadcast", timeout)
    return 0


cpdef reduce(Engine e, sendobj, recvobj, int root, int dtype, int op, int algo, double timeout):
    """On root, recvobj = reduction of every rank's sendobj (recvobj may be None elsewhere)."""
    cdef Pins p = Pins()
    cdef int rc
    cdef PyThreadState* ts
    cdef double dl
    cdef size_t nb
    if not 0 <= root < e.size:
        raise InvalidUsage(f"reduce root {root} is not a rank of this communicator (0..{e.size - 1})")
    check_op(dtype, op)
    schedule(algo == ALGO_BINOMIAL or algo == ALGO_RS_GATHER, COLL_REDUCE, algo)
    if e.rank == root:
        if recvobj is None:
            raise InvalidUsage("reduce needs an output buffer on the root rank")
        p.pin(sendobj, recvobj, True)
        if p.a.len != p.b.len:
            raise InvalidUsage(f"reduce output has {p.b.len} bytes but the input has {p.a.len}")
    else:
        p.pin(sendobj, None, False)
    nb = p.a.len
    dl = hc_now() + timeout
    e.begin("reduce", nb)
    ts = gil_off(e, dl - timeout)
    if algo == ALGO_RS_GATHER:
        rc = reduce_rs_gather(e, <char*>p.a.buf, <char*>p.b.buf if e.rank == root else NULL,
                              nb // dtype_size(dtype), root, dtype, op, dl)
    else:
        rc = reduce_binomial(e, <char*>p.a.buf, <char*>p.b.buf if e.rank == root else NULL, nb,
                             root, dtype, op, nb // dtype_size(dtype), dl)
    gil_on(e, ts)
    e.end(rc, "reduce", timeout)


# ------------------------------------------------------------------ gather and scatter

cdef size_t* rooted_blocks(Engine e, counts, int root, size_t es, int coll, int algo, Py_buffer* mine,
                           Py_buffer* whole) except NULL:
    """Check a gather's or scatter's call and return its blocks (blocks_of; counts None: equal
    blocks of this rank's buffer): this rank's buffer (mine) is its block, the root's whole buffer
    (whole) holds every block."""
    cdef int N = e.size
    cdef size_t* o
    what = COLLECTIVE_NAMES[coll]
    if not 0 <= root < N:
        raise InvalidUsage(f"{what} root {root} is not a rank (0..{N - 1})")
    schedule(algo == ALGO_LINEAR, coll, algo)
    if counts is None:
        counts = [mine.len // es] * N
    o = blocks_of(counts, N, es, what)
    try:
        if <size_t>mine.len != o[N + e.rank]:
            raise InvalidUsage(f"{what} {'input' if coll == COLL_GATHER else 'output'} of rank {e.rank} has "
                               f"{mine.len // es} elements; counts say {counts[e.rank]}")
        if e.rank == root and <size_t>whole.len != blocks_total(o, N):
            raise InvalidUsage(f"{what} {'output' if coll == COLL_GATHER else 'input'} has {whole.len // es} "
                               f"elements; it needs {blocks_total(o, N) // es}")
    except BaseException:
        free(o)
        raise
    return o


cpdef gather(Engine e, sendobj, recvobj, counts, int root, int dtype, int algo, double timeout):
    """Root's recvobj = concatenation of every rank's sendobj (rank-ordered; counts for gatherv)."""
    cdef Pins p = Pins()
    cdef int rc
    cdef PyThreadState* ts
    cdef double dl
    cdef size_t* o
    p.pin(sendobj, recvobj if 0 <= root == e.rank else None, True)
    o = rooted_blocks(e, counts, root, dtype_size(dtype), COLL_GATHER, algo, &p.a, &p.b)
    try:
        dl = hc_now() + timeout
        e.begin("gather", blocks_total(o, e.size))
        ts = gil_off(e, dl - timeout)
        rc = gather_linear(e, <char*>p.a.buf, p.a.len, <char*>p.b.buf, o, root, dtype, dl)
        gil_on(e, ts)
        e.end(rc, "gather", timeout)
    finally:
        free(o)


cpdef scatter(Engine e, sendobj, recvobj, counts, int root, int dtype, int algo, double timeout):
    """Every rank's recvobj = its block of root's sendobj (counts for scatterv)."""
    cdef Pins p = Pins()
    cdef int rc
    cdef PyThreadState* ts
    cdef double dl
    cdef size_t* o
    p.pin(sendobj if 0 <= root == e.rank else None, recvobj, True)
    o = rooted_blocks(e, counts, root, dtype_size(dtype), COLL_SCATTER, algo, &p.b, &p.a)
    try:
        dl = hc_now() + timeout
        e.begin("scatter", p.b.len)
        ts = gil_off(e, dl - timeout)
        rc = scatter_linear(e, <char*>p.a.buf, <char*>p.b.buf, p.b.len, o, root, dtype, dl)
        gil_on(e, ts)
        e.end(rc, "scatter", timeout)
    finally:
        free(o)


# ------------------------------------------------------------------ alltoall and barrier

def alltoall(Engine e, sendobj, recvobj, scounts, rcounts, int dtype, int algo, double timeout):
    """recvobj block p = block rank of rank p's sendobj: pairwise exchange, or Bruck's log-step
    exchange (equal blocks only). scounts / rcounts (None: equal blocks): alltoallv."""
    cdef Pins p = Pins()
    cdef int N = e.size, i
    cdef size_t es = dtype_size(dtype)
    cdef size_t* so
    cdef size_t* ro
    cdef size_t* offs
    p.pin(sendobj, recvobj, True)
    if scounts is None:
        return run_alltoall(e, &p.a, &p.b, dtype, algo, timeout)
    schedule(algo == ALGO_PAIRWISE or algo == ALGO_BRUCK, COLL_ALLTOALL, algo)
    if algo == ALGO_BRUCK and (len(set(scounts)) > 1 or list(scounts) != list(rcounts)):
        raise InvalidUsage("the bruck alltoall needs equal blocks; use algorithm='pairwise' for "
                           "alltoallv with uneven counts")
    so = blocks_of(scounts, N, es, "alltoall send")
    try:
        ro = blocks_of(rcounts, N, es, "alltoall receive")
    except BaseException:
        free(so)
        raise
    try:
        if p.a.buf == p.b.buf and p.a.len:
            raise InvalidUsage("alltoall cannot run in place; pass a separate output buffer")
        if blocks_total(so, N) != <size_t>p.a.len or blocks_total(ro, N) != <size_t>p.b.len:
            raise InvalidUsage(f"alltoall counts add up to {blocks_total(so, N) // es} sent / "
                               f"{blocks_total(ro, N) // es} received elements, but the buffers hold "
                               f"{p.a.len // es} / {p.b.len // es}")
        offs = <size_t*>malloc(sizeof(size_t) * 4 * N)
        if offs == NULL:
            raise MemoryError()
        for i in range(N):
            offs[i], offs[N + i], offs[2 * N + i], offs[3 * N + i] = so[i], so[N + i], ro[i], ro[N + i]
        try:
            alltoall_blocks(e, &p.a, &p.b, offs, dtype, algo, timeout)
        finally:
            free(offs)
    finally:
        free(so)
        free(ro)


cdef int run_alltoall(Engine e, Py_buffer* a, Py_buffer* b, int dtype, int algo, double timeout) except -1:
    """alltoall of equal blocks (len(a) = len(b) = size x block) on pinned buffers."""
    cdef int N = e.size, i
    cdef size_t es = dtype_size(dtype), blk
    cdef size_t offs[4 * 64]
    cdef size_t* o = offs
    schedule(algo == ALGO_PAIRWISE or algo == ALGO_BRUCK, COLL_ALLTOALL, algo)
    check_alltoall(a, b, dtype, N)
    blk = <size_t>a.len // N
    if N > 64:
        o = <size_t*>malloc(sizeof(size_t) * 4 * N)
        if o == NULL:
            raise MemoryError()
    try:
        for i in range(N):
            o[i] = o[2 * N + i] = blk * i
            o[N + i] = o[3 * N + i] = blk
        alltoall_blocks(e, a, b, o, dtype, algo, timeout)
    finally:
        if o != offs:
            free(o)
    return 0


cdef int alltoall_blocks(Engine e, Py_buffer* a, Py_buffer* b, size_t* offs, int dtype, int algo,
                         double timeout) except -1:
    """Run alltoall(v); offs holds N send offsets, N send lengths, N receive offsets, N receive
    lengths (bytes). Bruck only for equal blocks (the callers check)."""
    cdef int rc = 0, N = e.size
    cdef PyThreadState* ts
    cdef double dl
    dl = hc_now() + timeout
    e.begin("alltoall", b.len)
    ts = gil_off(e, dl - timeout)
    if algo == ALGO_BRUCK and N > 1:
        rc = alltoall_bruck(e, <char*>a.buf, <char*>b.buf, <size_t>a.len // N, dtype, dl)
    else:
        rc = alltoall_pairwise(e, <char*>a.buf, <char*>b.buf, offs, dtype, dl)
    gil_on(e, ts)
    e.end(rc, "alltoall", timeout)
    return 0


def barrier(Engine e, int algo, double timeout):
    """Return once every rank has entered (dissemination: ceil(log2 N) rounds of empty messages)."""
    cdef int rc
    cdef double dl
    schedule(algo == ALGO_DISSEMINATION, COLL_BARRIER, algo)
    dl = hc_now() + timeout
    e.begin("barrier", 0)
    with nogil:
        rc = barrier_dissemination(e, dl)
    e.end(rc, "barrier", timeout)
