# cython: language_level=3
"""The Python entry points of every collective the engine does not run itself, and the schedules
that have no family module of their own (broadcast, ring reduce_scatter, binomial reduce, linear
gather/scatter, pairwise alltoall, dissemination barrier).

Each public function validates and pins the user's buffers, then runs a whole schedule without the
GIL through ``Engine.xfer`` (one send stream and one receive stream at a time, relays fused FIFO to
FIFO between shared-memory neighbours), dispatching on the algorithm code to the family modules:
halving.pyx (Rabenseifner, recursive-halving reduce_scatter, reduce_scatter + gather), trees.pyx
(double binary tree), bruck.pyx (Bruck allgather and alltoall). Relative ranks
(``vr = (rank - root) mod size``) make every rooted tree the same as the one rooted at 0.
"""
from cpython.buffer cimport PyBuffer_Release
from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

from hetccl._native.atomics cimport hc_now
from hetccl._native.buffers cimport check_overlap, get_buffer, pin_allgather, release_allgather
from hetccl._native.binomial cimport lowbit_mask, subtree_segs
from hetccl._native.bruck cimport allgather_bruck, alltoall_bruck
from hetccl._native.codes cimport *
from hetccl._native.halving cimport allreduce_rabenseifner, reduce_rs_gather, rs_halving
from hetccl._native.trees cimport allreduce_dbtree
from hetccl._native.engine cimport Engine, Seg, even_blocks, seg, slice_len
from hetccl._native.flight cimport Flight, FL_DONE, FL_NO_DTYPE, FL_RUNNING
from hetccl._native.link cimport E_OS
from hetccl._native.reduce cimport copy_bytes, get_reduce, divide_by, store_fence, reduce_fn

from hetccl.errors import InvalidUsage


cdef class Bufs:
    """Pins up to two user buffers for the duration of a call."""
    cdef Py_buffer a, b
    cdef bint has_a, has_b

    cdef int pin(self, object x, object y, bint y_writable, bint x_writable=False) except -1:
        if x is not None:
            get_buffer(x, &self.a, x_writable)
            self.has_a = True
        if y is not None:
            if y is x:
                self.b = self.a
            else:
                get_buffer(y, &self.b, y_writable)
                self.has_b = True
        return 0

    def __dealloc__(self):
        if self.has_a:
            PyBuffer_Release(&self.a)
        if self.has_b:
            PyBuffer_Release(&self.b)


# ------------------------------------------------------------------ broadcast

cdef int bcast_binomial(Engine e, char* buf, size_t nb, int root, int dtype, uint64_t count,
                        double dl) noexcept nogil:
    cdef int N = e.size, vr = (e.rank - root + N) % N, mask, rc
    cdef Seg g
    seg(&g, buf, NULL, nb, -1)
    mask = lowbit_mask(vr, N)
    if vr:
        rc = e.xfer(-1, NULL, 0, (vr - mask + root) % N, &g, 1, COLL_BROADCAST, dtype, 0, 0, count, False, dl)
        if rc < 0:
            return rc
    mask >>= 1
    while mask > 0:
        if vr + mask < N:
            rc = e.xfer((vr + mask + root) % N, &g, 1, -1, NULL, 0, COLL_BROADCAST, dtype, 0, 0, count, False, dl)
            if rc < 0:
                return rc
        mask >>= 1
    return 0


cdef int bcast_chain(Engine e, char* buf, size_t nb, int root, int dtype, uint64_t count,
                     double dl) noexcept nogil:
    """Pipelined chain root -> root+1 -> ...: each rank relays slice by slice as it arrives."""
    cdef int N = e.size, vr = (e.rank - root + N) % N, i, ns, rc
    cdef int to = (e.rank + 1) % N if vr < N - 1 else -1
    cdef int frm = (e.rank - 1 + N) % N if vr > 0 else -1
    cdef size_t sl = e.slice_bytes(frm if frm >= 0 else e.rank, to if to >= 0 else e.rank, dtype_size(dtype))
    cdef Seg* ss
    ns = <int>((nb + sl - 1) // sl) if nb else 1
    ss = <Seg*>malloc(sizeof(Seg) * 2 * ns)
    if ss == NULL:
        return E_OS
    for i in range(ns):
        seg(&ss[i], buf + <size_t>i * sl, NULL, sl if nb - <size_t>i * sl > sl else nb - <size_t>i * sl, i if frm >= 0 else -1)
        seg(&ss[ns + i], buf + <size_t>i * sl, NULL, ss[i].len, -1)
    if nb == 0:
        ss[0].len = 0
        ss[ns].len = 0
    rc = e.xfer(to, ss, ns if to >= 0 else 0, frm, ss + ns, ns if frm >= 0 else 0, COLL_BROADCAST, dtype,
                0, 0, count, e.can_fuse(to, frm), dl)
    free(ss)
    return rc


cdef int bcast_scatter_allgather(Engine e, char* buf, size_t count, int root, int dtype,
                                 double dl) noexcept nogil:
    """van de Geijn: binomial scatter of N blocks from the root, then a ring allgather."""
    cdef int N = e.size, r = e.rank, vr = (r - root + N) % N, mask, m, i, n, rc = 0, b
    cdef size_t es = dtype_size(dtype)
    cdef size_t* boff = <size_t*>malloc(sizeof(size_t) * 2 * N)
    cdef size_t* blen
    cdef Seg* gs
    if boff == NULL:
        return E_OS
    blen = boff + N
    gs = <Seg*>malloc(sizeof(Seg) * N)
    if gs == NULL:
        free(boff)
        return E_OS
    even_blocks(count, N, es, boff, blen)
    mask = lowbit_mask(vr, N)
    if vr:                                   # receive my subtree's blocks (relative vr .. vr+mask)
        n = subtree_segs(gs, buf, boff, blen, vr, min(vr + mask, N), root, N)
        rc = e.xfer(-1, NULL, 0, (vr - mask + root) % N, gs, n, COLL_BROADCAST, dtype, 0, 1, count, False, dl)
    m = mask >> 1
    while rc >= 0 and m > 0:
        if vr + m < N:
            n = subtree_segs(gs, buf, boff, blen, vr + m, min(vr + 2 * m, N), root, N)
            rc = e.xfer((vr + m + root) % N, gs, n, -1, NULL, 0, COLL_BROADCAST, dtype, 0, 1, count, False, dl)
        m >>= 1
    if rc >= 0:
        rc = e.ring_allgatherv(buf, boff, blen, NULL, dtype, count, COLL_BROADCAST, 2, dl)
    free(gs)
    free(boff)
    return rc


def broadcast(Engine e, obj, int root, int dtype, int algo, double timeout):
    """obj (in place) = root's obj on every rank."""
    cdef Bufs p = Bufs()
    p.pin(obj, None, False, True)
    run_broadcast(e, <char*>p.a.buf, p.a.len, root, dtype, algo, timeout)


cdef int run_broadcast(Engine e, char* buf, size_t nb, int root, int dtype, int algo,
                       double timeout) except -1:
    cdef int rc
    cdef double dl
    cdef size_t count = nb // dtype_size(dtype)
    if not 0 <= root < e.size:
        raise InvalidUsage(f"broadcast root {root} is not a rank of this communicator (0..{e.size - 1})")
    dl = hc_now() + timeout
    e.begin("broadcast", nb)
    with nogil:
        if e.size == 1:
            rc = 0
        elif algo == ALGO_CHAIN:
            rc = bcast_chain(e, buf, nb, root, dtype, count, dl)
        elif algo == ALGO_SCATTER_ALLGATHER:
            rc = bcast_scatter_allgather(e, buf, count, root, dtype, dl)
        else:
            rc = bcast_binomial(e, buf, nb, root, dtype, count, dl)
    e.end(rc, "broadcast", timeout)
    return 0


# ------------------------------------------------------------------ reduce_scatter and reduce

cdef int rs_ring(Engine e, char* sbuf, char* out, size_t* boff, size_t* blen, int dtype, int op,
                 uint64_t count, double dl) noexcept nogil:
    """Ring reduce-scatter (rank b ends with block b), sliced. Partial sums travel FIFO to FIFO
    between shared-memory neighbours; otherwise they stage in the engine's scratch buffer."""
    cdef int N = e.size, r = e.rank, T = N - 1, j, t, nsl, idx, sb, rb, rc
    cdef int prev = (r - 1 + N) % N, nxt = (r + 1) % N
    cdef size_t sl = e.slice_bytes(prev, nxt, dtype_size(dtype)), mx = 0, o, ln, tot = 0
    cdef bint fused = e.can_fuse(nxt, prev)
    cdef char* scr = NULL
    cdef Seg few[8]                            # small calls: no allocation (the latency path)
    cdef Seg* ss
    cdef Seg* rs
    for t in range(N):
        if blen[t] > mx:
            mx = blen[t]
        tot += blen[t]
    if not fused and N > 2:
        scr = e.scratch(tot)
        if scr == NULL:
            return E_OS
    nsl = <int>((mx + sl - 1) // sl) if mx else 1
    ss = &few[0] if 2 * T * nsl <= 8 else <Seg*>malloc(sizeof(Seg) * 2 * T * nsl)
    if ss == NULL:
        return E_OS
    rs = ss + T * nsl
    for j in range(nsl):
        o = <size_t>j * sl
        for t in range(T):
            idx = j * T + t
            sb = (r - 1 - t + 2 * N) % N
            rb = (r - 2 - t + 2 * N) % N
            ln = slice_len(blen[sb], o, sl)
            seg(&ss[idx], (sbuf if t == 0 else scr) + boff[sb] + o, NULL, ln, idx - 1 if t > 0 else -1)
            ln = slice_len(blen[rb], o, sl)
            if t == T - 1:                     # the last step lands my own block in the output
                seg(&rs[idx], out + o, sbuf + boff[rb] + o, ln, -1)
                rs[idx].divide = N if op == OP_AVG else 0
            else:
                seg(&rs[idx], (scr + boff[rb] + o) if scr != NULL else NULL, sbuf + boff[rb] + o, ln, -1)
    rc = e.xfer(nxt, ss, T * nsl, prev, rs, T * nsl, COLL_REDUCE_SCATTER, dtype, op, 0, count, fused, dl)
    if ss != &few[0]:
        free(ss)
    return rc


cdef int rs_recursive_halving(Engine e, char* sbuf, char* out, size_t* boff, size_t* blen, int dtype,
                              int op, uint64_t count, double dl) noexcept nogil:
    """Recursive halving (halving.pyx), partial sums in the engine's scratch, my block into out."""
    cdef char* acc = e.scratch(boff[e.size - 1] + blen[e.size - 1])
    cdef bint streaming = e.stream_out
    cdef int rc
    if acc == NULL:
        return E_OS
    e.stream_out = False                      # partial sums are re-read at once: keep them cached
    rc = rs_halving(e, sbuf, acc, out, boff, blen, dtype, op, count, COLL_REDUCE_SCATTER, 128, dl)
    e.stream_out = streaming
    return rc


def reduce_scatter(Engine e, sendobj, recvobj, counts, int dtype, int op, int algo, double timeout):
    """recvobj = this rank's block of the reduction of every rank's sendobj (blocks by counts)."""
    cdef Bufs p = Bufs()
    cdef int N = e.size, b
    cdef size_t es = dtype_size(dtype), total = 0
    cdef size_t* boff
    if get_reduce(dtype, op) == NULL:
        raise InvalidUsage(f"op {op} is not defined for dtype {dtype}")
    p.pin(sendobj, recvobj, True)
    if counts is None:
        run_reduce_scatter(e, &p.a, &p.b, dtype, op, algo, timeout)
        return
    if len(counts) != N:
        raise InvalidUsage(f"counts has {len(counts)} entries; it needs one per rank ({N})")
    boff = <size_t*>malloc(sizeof(size_t) * 2 * N)
    if boff == NULL:
        raise MemoryError()
    try:
        for b in range(N):
            if counts[b] < 0:
                raise InvalidUsage(f"reduce_scatterv counts must be >= 0, got {counts[b]}")
            boff[N + b] = <size_t>counts[b] * es
            boff[b] = total
            total += boff[N + b]
        if total != <size_t>p.a.len:
            raise InvalidUsage(f"reduce_scatter input has {p.a.len // es} elements but counts add up "
                               f"to {total // es}")
        run_rs_blocks(e, &p.a, &p.b, boff, dtype, op, algo, timeout)
    finally:
        free(boff)


cdef int run_reduce_scatter(Engine e, Py_buffer* a, Py_buffer* b, int dtype, int op, int algo,
                            double timeout) except -1:
    """reduce_scatter of equal blocks (len(a) = size x len(b)) on pinned buffers: the def entry
    point and the latency path (Hot) share it. Block offsets live on the stack up to 64 ranks."""
    cdef int N = e.size, i
    cdef size_t es = dtype_size(dtype), blk
    cdef size_t offs[2 * 64]
    cdef size_t* o = offs
    if get_reduce(dtype, op) == NULL:
        raise InvalidUsage(f"op {op} is not defined for dtype {dtype}")
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
    cdef double dl
    cdef size_t es = dtype_size(dtype)
    cdef size_t* blen = boff + N
    if <size_t>b.len != blen[e.rank]:
        raise InvalidUsage(f"reduce_scatter output of rank {e.rank} has {b.len // es} elements; "
                           f"it needs {blen[e.rank] // es}")
    dl = hc_now() + timeout
    e.begin("reduce_scatter", b.len)
    with nogil:
        if N == 1:
            copy_bytes(b.buf, a.buf, blen[0], 0)
            rc = 0
        elif algo == ALGO_RECURSIVE_HALVING:
            rc = rs_recursive_halving(e, <char*>a.buf, <char*>b.buf, boff, blen, dtype, op,
                                      <size_t>a.len // es, dl)
        else:
            rc = rs_ring(e, <char*>a.buf, <char*>b.buf, boff, blen, dtype, op, <size_t>a.len // es, dl)
    e.end(rc, "reduce_scatter", timeout)
    return 0


cdef int reduce_binomial(Engine e, char* sbuf, char* rbuf, size_t nb, int root, int dtype, int op,
                         uint64_t count, double dl) noexcept nogil:
    """Binomial tree: children's partial sums are reduced into mine, then sent up to my parent."""
    cdef int N = e.size, vr = (e.rank - root + N) % N, mask, m, rc
    cdef char* acc = rbuf if vr == 0 else e.scratch(nb)
    cdef const char* cur = sbuf
    cdef Seg g
    if acc == NULL:
        return E_OS
    mask = lowbit_mask(vr, N)
    m = 1
    while m < mask:                            # children vr+1, vr+2, vr+4, ... below my span
        if vr + m < N:
            seg(&g, acc, cur, nb, -1)
            rc = e.xfer(-1, NULL, 0, (vr + m + root) % N, &g, 1, COLL_REDUCE, dtype, op, 0, count, False, dl)
            if rc < 0:
                return rc
            cur = acc
        m <<= 1
    if vr:
        seg(&g, <char*>cur, NULL, nb, -1)
        return e.xfer((vr - mask + root) % N, &g, 1, -1, NULL, 0, COLL_REDUCE, dtype, op, 0, count, False, dl)
    if cur != acc:
        copy_bytes(acc, cur, nb, 0)
    if op == OP_AVG:
        divide_by(acc, nb // dtype_size(dtype), dtype, N)
    return 0


def reduce(Engine e, sendobj, recvobj, int root, int dtype, int op, int algo, double timeout):
    """On root, recvobj = reduction of every rank's sendobj (recvobj may be None elsewhere)."""
    cdef Bufs p = Bufs()
    cdef int rc
    cdef double dl
    cdef size_t nb
    if not 0 <= root < e.size:
        raise InvalidUsage(f"reduce root {root} is not a rank of this communicator (0..{e.size - 1})")
    if get_reduce(dtype, op) == NULL:
        raise InvalidUsage(f"op {op} is not defined for dtype {dtype}")
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
    with nogil:
        if algo == ALGO_RS_GATHER:
            rc = reduce_rs_gather(e, <char*>p.a.buf, <char*>p.b.buf if e.rank == root else NULL,
                                  nb // dtype_size(dtype), root, dtype, op, dl)
        else:
            rc = reduce_binomial(e, <char*>p.a.buf, <char*>p.b.buf if e.rank == root else NULL, nb,
                                 root, dtype, op, nb // dtype_size(dtype), dl)
    e.end(rc, "reduce", timeout)


# ------------------------------------------------------------------ gather, scatter, alltoall, barrier

def _offsets(counts, int N, size_t es, what):
    if len(counts) != N:
        raise InvalidUsage(f"{what} needs one count per rank ({N}), got {len(counts)}")
    offs, total = [], 0
    for c in counts:
        if c < 0:
            raise InvalidUsage(f"{what} counts must be >= 0, got {c}")
        offs.append(total)
        total += c * es
    return offs, total


cdef size_t* blocks_of(list offs, counts, int N, size_t es) except NULL:
    """N byte offsets then N byte lengths in C (free() them): a schedule between Engine.begin and
    Engine.end must not touch Python objects, which could raise."""
    cdef size_t* o = <size_t*>malloc(sizeof(size_t) * 2 * N + 1)
    cdef int i
    if o == NULL:
        raise MemoryError()
    try:
        for i in range(N):
            o[i] = offs[i]
            o[N + i] = <size_t>counts[i] * es
    except BaseException:
        free(o)
        raise
    return o


def gather(Engine e, sendobj, recvobj, counts, int root, int dtype, double timeout):
    """Root's recvobj = concatenation of every rank's sendobj (rank-ordered; counts for gatherv)."""
    cdef Bufs p = Bufs()
    cdef int rc = 0, N = e.size, i, src
    cdef double dl
    cdef size_t es = dtype_size(dtype), total
    cdef Seg g
    if not 0 <= root < N:
        raise InvalidUsage(f"gather root {root} is not a rank (0..{N - 1})")
    p.pin(sendobj, recvobj if e.rank == root else None, True)
    if counts is None:
        counts = [p.a.len // es] * N
    offs, total = _offsets(counts, N, es, "gather")
    if <size_t>p.a.len != <size_t>counts[e.rank] * es:
        raise InvalidUsage(f"gather input of rank {e.rank} has {p.a.len // es} elements; counts say {counts[e.rank]}")
    if e.rank == root and <size_t>p.b.len != total:
        raise InvalidUsage(f"gather output has {p.b.len // es} elements; it needs {total // es}")
    cdef size_t* ol = blocks_of(offs, counts, N, es)
    try:
        dl = hc_now() + timeout
        e.begin("gather", total)
        if e.rank != root:
            seg(&g, <char*>p.a.buf, NULL, p.a.len, -1)
            with nogil:
                rc = e.xfer(root, &g, 1, -1, NULL, 0, COLL_GATHER, dtype, 0, 0, 0, False, dl)
        else:
            copy_bytes(<char*>p.b.buf + ol[root], p.a.buf, p.a.len, 0)
            for i in range(1, N):
                src = (root + i) % N
                seg(&g, <char*>p.b.buf + ol[src], NULL, ol[N + src], -1)
                with nogil:
                    rc = e.xfer(-1, NULL, 0, src, &g, 1, COLL_GATHER, dtype, 0, 0, 0, False, dl)
                if rc < 0:
                    break
        e.end(rc, "gather", timeout)
    finally:
        free(ol)


def scatter(Engine e, sendobj, recvobj, counts, int root, int dtype, double timeout):
    """Every rank's recvobj = its block of root's sendobj (counts for scatterv)."""
    cdef Bufs p = Bufs()
    cdef int rc = 0, N = e.size, i, dst
    cdef double dl
    cdef size_t es = dtype_size(dtype), total
    cdef Seg g
    if not 0 <= root < N:
        raise InvalidUsage(f"scatter root {root} is not a rank (0..{N - 1})")
    p.pin(sendobj if e.rank == root else None, recvobj, True)
    if counts is None:
        counts = [p.b.len // es] * N
    offs, total = _offsets(counts, N, es, "scatter")
    if <size_t>p.b.len != <size_t>counts[e.rank] * es:
        raise InvalidUsage(f"scatter output of rank {e.rank} has {p.b.len // es} elements; counts say {counts[e.rank]}")
    if e.rank == root and <size_t>p.a.len != total:
        raise InvalidUsage(f"scatter input has {p.a.len // es} elements; it needs {total // es}")
    cdef size_t* ol = blocks_of(offs, counts, N, es)
    try:
        dl = hc_now() + timeout
        e.begin("scatter", p.b.len)
        if e.rank != root:
            seg(&g, <char*>p.b.buf, NULL, p.b.len, -1)
            with nogil:
                rc = e.xfer(-1, NULL, 0, root, &g, 1, COLL_SCATTER, dtype, 0, 0, 0, False, dl)
        else:
            copy_bytes(p.b.buf, <char*>p.a.buf + ol[root], p.b.len, 0)
            for i in range(1, N):
                dst = (root + i) % N
                seg(&g, <char*>p.a.buf + ol[dst], NULL, ol[N + dst], -1)
                with nogil:
                    rc = e.xfer(dst, &g, 1, -1, NULL, 0, COLL_SCATTER, dtype, 0, 0, 0, False, dl)
                if rc < 0:
                    break
        e.end(rc, "scatter", timeout)
    finally:
        free(ol)


def alltoall(Engine e, sendobj, recvobj, scounts, rcounts, int dtype, int algo, double timeout):
    """Pairwise exchange (at step k, send my block for rank+k and receive rank-k's block for me),
    or Bruck's log-step exchange (equal blocks only; bruck.pyx)."""
    cdef Bufs p = Bufs()
    cdef int N = e.size, i
    cdef size_t es = dtype_size(dtype), stot, rtot
    cdef size_t* offs
    p.pin(sendobj, recvobj, True)
    if scounts is None:
        return run_alltoall(e, &p.a, &p.b, dtype, algo, timeout)
    soffs, stot = _offsets(scounts, N, es, "alltoall send")
    roffs, rtot = _offsets(rcounts, N, es, "alltoall receive")
    if p.a.buf == p.b.buf and p.a.len:
        raise InvalidUsage("alltoall cannot run in place; pass a separate output buffer")
    if stot != <size_t>p.a.len or rtot != <size_t>p.b.len:
        raise InvalidUsage(f"alltoall counts add up to {stot // es} sent / {rtot // es} received elements, "
                           f"but the buffers hold {p.a.len // es} / {p.b.len // es}")
    if algo == ALGO_BRUCK and (len(set(scounts)) > 1 or list(scounts) != list(rcounts)):
        raise InvalidUsage("the bruck alltoall needs equal blocks; use algorithm='pairwise' for "
                           "alltoallv with uneven counts")
    offs = <size_t*>malloc(sizeof(size_t) * 4 * N)
    if offs == NULL:
        raise MemoryError()
    try:
        for i in range(N):
            offs[i] = soffs[i]
            offs[N + i] = <size_t>scounts[i] * es
            offs[2 * N + i] = roffs[i]
            offs[3 * N + i] = <size_t>rcounts[i] * es
        alltoall_blocks(e, &p.a, &p.b, offs, dtype, algo, timeout)
    finally:
        free(offs)


cdef int run_alltoall(Engine e, Py_buffer* a, Py_buffer* b, int dtype, int algo, double timeout) except -1:
    """alltoall of equal blocks (len(a) = len(b) = size x block) on pinned buffers."""
    cdef int N = e.size, i
    cdef size_t es = dtype_size(dtype), blk
    cdef size_t offs[4 * 64]
    cdef size_t* o = offs
    if a.len % (es * N) or a.len != b.len:
        raise InvalidUsage(f"alltoall needs input and output of size x block elements (here "
                           f"{a.len // es} and {b.len // es} for {N} ranks); use alltoallv for uneven blocks")
    if a.buf == b.buf and a.len:
        raise InvalidUsage("alltoall cannot run in place; pass a separate output buffer")
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
    cdef int rc = 0, N = e.size, r = e.rank, k, to, frm
    cdef double dl
    cdef char* sb = <char*>a.buf
    cdef char* rb = <char*>b.buf
    cdef size_t* slen = offs + N
    cdef size_t* roff = offs + 2 * N
    cdef size_t* rlen = offs + 3 * N
    cdef Seg gs, gr
    dl = hc_now() + timeout
    e.begin("alltoall", b.len)
    with nogil:
        if algo == ALGO_BRUCK and N > 1:
            rc = alltoall_bruck(e, sb, rb, <size_t>a.len // N, dtype, dl)
        else:
            copy_bytes(rb + roff[r], sb + offs[r], slen[r], 0)
            for k in range(1, N):
                to = (r + k) % N
                frm = (r - k + N) % N
                seg(&gs, sb + offs[to], NULL, slen[to], -1)
                seg(&gr, rb + roff[frm], NULL, rlen[frm], -1)
                rc = e.xfer(to, &gs, 1, frm, &gr, 1, COLL_ALLTOALL, dtype, 0, k, 0, False, dl)
                if rc < 0:
                    break
    e.end(rc, "alltoall", timeout)
    return 0


def barrier(Engine e, double timeout):
    """Dissemination barrier: ceil(log2 N) rounds of empty messages to rank+2^k from rank-2^k."""
    cdef int rc = 0, N = e.size, r = e.rank, k = 1, phase = 0
    cdef double dl
    cdef Seg gs, gr
    dl = hc_now() + timeout
    e.begin("barrier", 0)
    seg(&gs, NULL, NULL, 0, -1)
    seg(&gr, NULL, NULL, 0, -1)
    with nogil:
        while k < N and rc >= 0:
            rc = e.xfer((r + k) % N, &gs, 1, (r - k + N) % N, &gr, 1, COLL_BARRIER, -1, 0, phase, 0, False, dl)
            k <<= 1
            phase += 1
    e.end(rc, "barrier", timeout)


def allgatherv(Engine e, sendobj, recvobj, counts, int dtype, double timeout):
    """recvobj = every rank's sendobj concatenated in rank order; counts[b] elements from rank b."""
    cdef Bufs p = Bufs()
    cdef int rc, N = e.size, b
    cdef double dl
    cdef size_t es = dtype_size(dtype), total = 0
    cdef size_t* boff
    cdef size_t* blen
    p.pin(sendobj, recvobj, True)
    if len(counts) != N:
        raise InvalidUsage(f"allgatherv needs one count per rank ({N}), got {len(counts)}")
    boff = <size_t*>malloc(sizeof(size_t) * 2 * N)
    blen = boff + N
    for b in range(N):
        boff[b] = total
        blen[b] = <size_t>counts[b] * es
        total += blen[b]
    try:
        if <size_t>p.a.len != blen[e.rank] or <size_t>p.b.len != total:
            raise InvalidUsage(f"allgatherv: rank {e.rank} passes {p.a.len // es} elements (counts say "
                               f"{counts[e.rank]}) into an output of {p.b.len // es} (counts add up to {total // es})")
        dl = hc_now() + timeout
        e.begin("allgatherv", total)
        with nogil:
            rc = e.ring_allgatherv(<char*>p.b.buf, boff, blen, <char*>p.a.buf, dtype, total // es,
                                   COLL_ALLGATHER, 9, dl)
        e.end(rc, "allgatherv", timeout)
    finally:
        free(boff)


# ------------------------------------------------------------------ allreduce and allgather beyond the engine's own

def allreduce(Engine e, sendobj, recvobj, int dtype, int op, int algo, double timeout):
    """recv = reduction over ranks of send (send may be recv: in place) by Rabenseifner's algorithm
    or the double binary tree; ring and recursive doubling are Engine.allreduce."""
    cdef Bufs p = Bufs()
    p.pin(sendobj, recvobj, True, sendobj is recvobj)
    run_allreduce(e, &p.a, &p.b, sendobj is recvobj, dtype, op, algo, timeout)


cdef int run_allreduce(Engine e, Py_buffer* a, Py_buffer* b, bint inplace, int dtype, int op, int algo,
                       double timeout) except -1:
    cdef int rc
    cdef double dl
    cdef size_t es = dtype_size(dtype)
    if get_reduce(dtype, op) == NULL:
        raise InvalidUsage(f"op {op} is not defined for dtype {dtype}")
    if a.len != b.len:
        raise InvalidUsage(f"allreduce output has {b.len} bytes but the input has {a.len}; "
                           f"pass an output of the same size and dtype")
    check_overlap(a, b, inplace)
    if b.len % es:
        raise InvalidUsage(f"buffer of {b.len} bytes is not a whole number of {es}-byte elements")
    dl = hc_now() + timeout
    e.begin("allreduce", b.len)
    with nogil:
        if algo == ALGO_DBTREE:
            rc = allreduce_dbtree(e, <char*>a.buf, <char*>b.buf, b.len // es, dtype, op, dl)
        else:
            rc = allreduce_rabenseifner(e, <char*>a.buf, <char*>b.buf, b.len // es, dtype, op, dl)
    e.end(rc, "allreduce", timeout)
    return 0


def allgather(Engine e, sendobj, recvobj, int dtype, int algo, double timeout):
    """recv = concatenation over ranks of send by Bruck's algorithm (send may be recv: in place,
    each rank's block already in its place); ring and recursive doubling are Engine.allgather."""
    cdef Bufs p = Bufs()
    cdef int rc
    cdef double dl
    cdef size_t es = dtype_size(dtype), nb
    cdef const char* src
    p.pin(None if sendobj is recvobj else sendobj, recvobj, True)
    nb = p.b.len // e.size
    if sendobj is recvobj:
        src = <char*>p.b.buf + nb * e.rank
    else:
        src = <char*>p.a.buf
        if <size_t>p.a.len * e.size != <size_t>p.b.len:
            raise InvalidUsage(f"allgather output has {p.b.len} bytes but needs size x input = "
                               f"{e.size} x {p.a.len} bytes")
        if src != <char*>p.b.buf + nb * e.rank:
            check_overlap(&p.a, &p.b, False)
    if nb % es or p.b.len % e.size:
        raise InvalidUsage(f"allgather blocks of {p.b.len} / {e.size} bytes are not a whole number "
                           f"of {es}-byte elements")
    dl = hc_now() + timeout
    e.begin("allgather", p.b.len)
    with nogil:
        rc = allgather_bruck(e, src, <char*>p.b.buf, nb, dtype, dl)
    e.end(rc, "allgather", timeout)


# ------------------------------------------------------------------ the latency path of a communicator

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

    def broadcast(self, buf, int root, forced=None):
        cdef int dtype = self.dtype_of(buf)
        cdef Bufs p
        cdef uint64_t s
        if dtype < 0:
            return False
        hit = self.algo_of(HOT_BROADCAST, buf.nbytes, forced)
        if hit is None:
            return False
        p = Bufs()
        p.pin(buf, None, False, True)
        self.last = hit[1]
        s = self.flight.push(COLL_BROADCAST, p.a.len, dtype, FL_NO_DTYPE, root, hit[1], FL_RUNNING)
        try:
            run_broadcast(self.e, <char*>p.a.buf, p.a.len, root, dtype, <int>hit[0], self.timeout)
        except BaseException as x:
            self.flight.fail(s, x)
            raise
        self.flight.mark(s, FL_DONE, 0)
        return True

    def allreduce(self, buf, out, op, forced=None):
        cdef int dtype = self.dtype_of(buf)
        cdef Bufs p
        cdef int algo
        cdef uint64_t s
        if dtype < 0 or dtype == DT_BOOL or type(op) is not _ReduceOp or op >= OP_BAND:
            return False
        if out is None:
            out = buf
        elif out is not buf and self.dtype_of(out) != dtype:
            return False
        hit = self.algo_of(HOT_ALLREDUCE, buf.nbytes, forced)
        if hit is None:
            return False
        algo = hit[0]
        p = Bufs()
        p.pin(buf, out, True, buf is out)
        self.last = hit[1]
        s = self.flight.push(COLL_ALLREDUCE, p.b.len, dtype, op, -1, hit[1], FL_RUNNING)
        try:
            if algo == ALGO_RING or algo == ALGO_RD:
                self.e.run_allreduce(&p.a, &p.b, buf is out, dtype, op, algo, self.timeout)
            else:
                run_allreduce(self.e, &p.a, &p.b, buf is out, dtype, op, algo, self.timeout)
        except BaseException as x:
            self.flight.fail(s, x)
            raise
        self.flight.mark(s, FL_DONE, 0)
        return True

    def allgather(self, buf, out, forced=None):
        cdef int dtype = self.dtype_of(buf)
        cdef Py_buffer sv, rv
        cdef bint same = buf is out
        cdef uint64_t s = 0
        if dtype < 0 or (not same and self.dtype_of(out) != dtype):
            return False
        hit = self.algo_of(HOT_ALLGATHER, out.nbytes, forced)
        if hit is None or (hit[0] != ALGO_RING and hit[0] != ALGO_RD):
            return False
        pin_allgather(buf, out, self.e.size, self.e.rank, dtype_size(dtype), &sv, &rv)
        try:
            self.last = hit[1]
            s = self.flight.push(COLL_ALLGATHER, rv.len, dtype, FL_NO_DTYPE, -1, hit[1], FL_RUNNING)
            self.e.run_allgather(&sv, &rv, dtype, hit[0], self.timeout)
            self.flight.mark(s, FL_DONE, 0)
        except BaseException as x:
            self.flight.fail(s, x)
            raise
        finally:
            release_allgather(same, &sv, &rv)
        return True

    def alltoall(self, buf, out, forced=None):
        cdef int dtype = self.dtype_of(buf)
        cdef Bufs p
        cdef uint64_t s
        if dtype < 0 or self.dtype_of(out) != dtype:
            return False
        hit = self.algo_of(HOT_ALLTOALL, buf.nbytes, forced)
        if hit is None:
            return False
        p = Bufs()
        p.pin(buf, out, True)
        self.last = hit[1]
        s = self.flight.push(COLL_ALLTOALL, p.a.len, dtype, FL_NO_DTYPE, -1, hit[1], FL_RUNNING)
        try:
            run_alltoall(self.e, &p.a, &p.b, dtype, hit[0], self.timeout)
        except BaseException as x:
            self.flight.fail(s, x)
            raise
        self.flight.mark(s, FL_DONE, 0)
        return True

    def reduce_scatter(self, buf, out, op, forced=None):
        """Equal blocks only (reduce_scatterv's counts go through Python); op and dtypes as allreduce."""
        cdef int dtype = self.dtype_of(buf)
        cdef Bufs p
        cdef uint64_t s
        if (dtype < 0 or dtype == DT_BOOL or type(op) is not _ReduceOp or op >= OP_BAND
                or self.dtype_of(out) != dtype):
            return False
        hit = self.algo_of(HOT_REDUCE_SCATTER, buf.nbytes, forced)
        if hit is None:
            return False
        p = Bufs()
        p.pin(buf, out, True)
        self.last = hit[1]
        s = self.flight.push(COLL_REDUCE_SCATTER, p.a.len, dtype, op, -1, hit[1], FL_RUNNING)
        try:
            run_reduce_scatter(self.e, &p.a, &p.b, dtype, op, <int>hit[0], self.timeout)
        except BaseException as x:
            self.flight.fail(s, x)
            raise
        self.flight.mark(s, FL_DONE, 0)
        return True
