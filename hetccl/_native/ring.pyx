# cython: language_level=3
"""Ring-shaped schedules: each rank sends to rank+1 and receives from rank-1, pipelined in slices
(a quarter of the smaller FIFO, progress.slice_bytes), so every link carries bytes all the time.

Between FIFO neighbours (shm, c2c) a relay is fused: what arrives is reduced (or copied) and
written straight into the next rank's FIFO in one pass (link_shm.pxd: shm_forward), and partial
sums never touch memory. Elsewhere a send segment waits for the receive segment it forwards.

* allreduce: reduce-scatter then allgather around the ring, 2N-2 steps per slice, one stream each way;
* allgather(v): N-1 relay steps per slice (blocks of any sizes: allgatherv, and the second half of
  the scatter-allgather broadcast);
* reduce_scatter: N-1 steps, partial sums FIFO to FIFO, or through the engine's scratch buffer;
* chain broadcast: an open ring from the root, relayed slice by slice as it arrives.
"""
from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free

from hetccl._native.blocks cimport even_blocks, slice_len
from hetccl._native.codes cimport *
from hetccl._native.engine cimport Engine
from hetccl._native.kernels cimport copy_bytes, store_fence, get_reduce_forward
from hetccl._native.link cimport Stream, Seg, E_OS
from hetccl._native.oneline cimport line_pick
from hetccl._native.progress cimport open_stream, run_step, xfer, can_fuse, slice_bytes
from hetccl._native.stream cimport seg


cdef bint _one_pass = True           # the fused relay step as one pass of the forward kernel
cdef bint _pair = True               # the allgather step beside the next slice's send, in one pass
cdef size_t _slice_cap = 0           # > 0: allreduce slices at most this long (benchmarks only)


def ring_variant(bint one_pass=True, bint pair=True, size_t slice_cap=0):
    """Benchmark hook (bench/ring_ab.py): how the next allreduce_ring calls in this process run.
    one_pass: the fused relay step as one pass of the forward kernel (the default, what the
    library runs), or the reduce into the FIFO and a copy out of it (the schedule it replaced).
    pair: the last step of each slice (a plain copy out of the FIFO) in one pass with the first
    send of the next slice (link_shm.pxd: shm_pair; the default), or each on its own.
    slice_cap: > 0 cuts the slices to at most this many bytes on the same FIFOs (what if the
    slices, not the FIFOs, were smaller); 0, the default, keeps a quarter of the FIFO. Kept for
    same-process A/B."""
    global _one_pass, _pair, _slice_cap
    _one_pass = one_pass
    _pair = pair
    _slice_cap = slice_cap


cdef int allreduce_ring(Engine e, char* sbuf, char* rbuf, size_t count, int dtype, int op,
                        double dl) noexcept nogil:
    """Ring allreduce, sliced: for each slice of every block, 2N-2 steps around the ring.

    Between FIFO neighbours every step but the last is fused (receive, reduce and forward straight
    into the next FIFO); elsewhere a send segment waits for the receive it forwards."""
    cdef int N = e.size, r = e.rank, t, sb, rb, rc, nsl, j, idx, T = 2 * N - 2
    cdef int prev = (r - 1 + N) % N, nxt = (r + 1) % N
    cdef bint fused, paired
    cdef size_t es = dtype_size(dtype)
    cdef size_t total = count * es, sl, o
    cdef Seg* ssegs
    cdef Seg* rsegs
    cdef size_t bstart[1024]
    cdef size_t blen[1024]
    cdef Stream snd, rcv
    if N == 1:
        if sbuf != rbuf:
            copy_bytes(rbuf, sbuf, total, total >= e.nt_threshold)
            store_fence()
        return 0
    if N > 1024:
        return E_OS
    even_blocks(count, N, es, bstart, blen)
    sl = slice_bytes(e, prev, nxt, es)
    if _slice_cap and sl > _slice_cap >= es:
        sl = _slice_cap - _slice_cap % es
    nsl = <int>((blen[0] + sl - 1) // sl) if blen[0] else 1
    fused = can_fuse(e, nxt, prev)
    paired = fused and _pair and N == 2
    ssegs = <Seg*>malloc(sizeof(Seg) * T * nsl * 2)
    if ssegs == NULL:
        return E_OS
    rsegs = ssegs + T * nsl
    for j in range(nsl):
        o = <size_t>j * sl
        for t in range(T):
            idx = j * T + t
            if t <= N - 2:                       # reduce-scatter: send block r-t, get r-t-1
                sb = (r - t + N) % N
                rb = (r - t - 1 + 2 * N) % N
            else:                                # allgather: forward the finished block
                sb = (r + 1 - (t - N + 1) + 2 * N) % N
                rb = (r - (t - N + 1) + 2 * N) % N
            seg(&ssegs[idx], (sbuf if t == 0 else rbuf) + bstart[sb] + o, NULL,
                slice_len(blen[sb], o, sl), idx - 1 if t > 0 else -1)
            ssegs[idx].fwd = fused and t > 0
            if paired and t == 0 and j > 0:
                ssegs[idx].dep = idx - 1         # paced by the copy-out it pairs with (shm_pair)
            seg(&rsegs[idx], rbuf + bstart[rb] + o, sbuf + bstart[rb] + o if t <= N - 2 else NULL,
                slice_len(blen[rb], o, sl), -1)
            rsegs[idx].divide = N if (op == OP_AVG and t == N - 2) else 0
            rsegs[idx].fwd = fused and t < T - 1
            if fused and t < N - 2:
                rsegs[idx].buf = NULL            # partial sums never touch the output
    open_stream(e, &snd, nxt, ssegs, T * nsl, COLL_ALLREDUCE, dtype, op, 0, count, es, True)
    open_stream(e, &rcv, prev, rsegs, T * nsl, COLL_ALLREDUCE, dtype, op, 0, count, es, False)
    snd.dep = &rcv
    if fused:
        rcv.fwd = &snd
        rcv.fn2 = get_reduce_forward(dtype, op) if _one_pass else NULL
        rcv.pair = paired
    rcv.streaming = total >= e.nt_threshold     # shm_forward: not where it writes over its operand
    rc = run_step(e, &snd, &rcv, False, dl)
    free(ssegs)
    return rc


cdef int allgather_pair_line(Engine e, char* sbuf, char* rbuf, size_t nb, int dtype,
                             double dl) noexcept nogil:
    """The ring allgather of 2 ranks whose blocks fit in one line (oneline.pxd): one exchange of
    one-line messages, own block copied into place beside it."""
    cdef int peer = 1 - e.rank
    cdef size_t es = dtype_size(dtype)
    cdef Seg sseg, rseg
    cdef Stream snd, rcv
    if sbuf != rbuf + nb * e.rank:
        copy_bytes(rbuf + nb * e.rank, sbuf, nb, 0)
    seg(&sseg, sbuf, NULL, nb, -1)
    seg(&rseg, rbuf + nb * peer, NULL, nb, -1)
    open_stream(e, &snd, peer, &sseg, 1, COLL_ALLGATHER, dtype, 0, 0, nb // es, es, True)
    open_stream(e, &rcv, peer, &rseg, 1, COLL_ALLGATHER, dtype, 0, 0, nb // es, es, False)
    line_pick(&snd, True)
    line_pick(&rcv, True)
    return run_step(e, &snd, &rcv, False, dl)


cdef int allgather_ring(Engine e, char* sbuf, char* rbuf, size_t nb, int dtype, double dl) noexcept nogil:
    """Ring allgather of equal blocks (see ring_allgatherv); at 2 ranks with blocks that fit in a
    line, one exchange of one-line messages (allgather_pair_line)."""
    cdef int N = e.size, b, rc
    if N == 2 and e.lines and nb <= e.links[1 - e.rank].kind.line_bytes:
        return allgather_pair_line(e, sbuf, rbuf, nb, dtype, dl)
    cdef size_t* boff = <size_t*>malloc(sizeof(size_t) * 2 * N)
    if boff == NULL:
        return E_OS
    for b in range(N):
        boff[N + b] = nb
        boff[b] = nb * b
    rc = ring_allgatherv(e, rbuf, boff, boff + N, sbuf, dtype, nb // dtype_size(dtype), COLL_ALLGATHER,
                         0, dl)
    free(boff)
    return rc


cdef int ring_allgatherv(Engine e, char* rbuf, size_t* boff, size_t* blen, const char* own, int dtype,
                         uint64_t count, int coll, int phase, double dl) noexcept nogil:
    """Ring allgather of blocks of any sizes (rank b's at rbuf+boff[b]), sliced; relays fused
    FIFO to FIFO between FIFO neighbours. own: where this rank's block comes from; when it is not
    already in place it is copied into the output as it is sent (hot in cache)."""
    cdef int N = e.size, r = e.rank, T = N - 1, j, k, nsl, idx, b, rc
    cdef int prev = (r - 1 + N) % N, nxt = (r + 1) % N
    cdef size_t sl = slice_bytes(e, prev, nxt, dtype_size(dtype)), mx = 0, o
    cdef char* mine = rbuf + boff[r]
    cdef bint copy_own = own != NULL and own != mine
    cdef Seg* ss
    cdef Seg* rs
    if N == 1:
        if copy_own:
            copy_bytes(mine, own, blen[r], 0)
        return 0
    for b in range(N):
        if blen[b] > mx:
            mx = blen[b]
    nsl = <int>((mx + sl - 1) // sl) if mx else 1
    ss = <Seg*>malloc(sizeof(Seg) * 2 * T * nsl)
    if ss == NULL:
        return E_OS
    rs = ss + T * nsl
    for j in range(nsl):
        o = <size_t>j * sl
        for k in range(T):
            idx = j * T + k
            b = (r - k + N) % N
            seg(&ss[idx], (<char*>own if (k == 0 and copy_own) else rbuf + boff[b]) + o, NULL,
                slice_len(blen[b], o, sl), idx - 1 if k > 0 else -1)
            if k == 0 and copy_own:
                ss[idx].copy = mine + o
            b = (r - k - 1 + N) % N
            seg(&rs[idx], rbuf + boff[b] + o, NULL, slice_len(blen[b], o, sl), -1)
    rc = xfer(e, nxt, ss, T * nsl, prev, rs, T * nsl, coll, dtype, 0, phase, count,
              can_fuse(e, nxt, prev), dl)
    free(ss)
    return rc


cdef int reduce_scatter_ring(Engine e, char* sbuf, char* out, size_t* boff, size_t* blen, int dtype,
                             int op, uint64_t count, double dl) noexcept nogil:
    """Ring reduce-scatter (rank b ends with block b), sliced. Partial sums travel FIFO to FIFO
    between FIFO neighbours; otherwise they stage in the engine's scratch buffer."""
    cdef int N = e.size, r = e.rank, T = N - 1, j, t, nsl, idx, sb, rb, rc
    cdef int prev = (r - 1 + N) % N, nxt = (r + 1) % N
    cdef size_t sl = slice_bytes(e, prev, nxt, dtype_size(dtype)), mx = 0, o, ln, tot = 0
    cdef bint fused = can_fuse(e, nxt, prev)
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
    rc = xfer(e, nxt, ss, T * nsl, prev, rs, T * nsl, COLL_REDUCE_SCATTER, dtype, op, 0, count, fused, dl)
    if ss != &few[0]:
        free(ss)
    return rc


cdef int bcast_chain(Engine e, char* buf, size_t nb, int root, int dtype, uint64_t count,
                     double dl) noexcept nogil:
    """Pipelined chain root -> root+1 -> ...: each rank relays slice by slice as it arrives."""
    cdef int N = e.size, vr = (e.rank - root + N) % N, i, ns, rc
    cdef int to = (e.rank + 1) % N if vr < N - 1 else -1
    cdef int frm = (e.rank - 1 + N) % N if vr > 0 else -1
    cdef size_t sl = slice_bytes(e, frm if frm >= 0 else e.rank, to if to >= 0 else e.rank, dtype_size(dtype))
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
    rc = xfer(e, to, ss, ns if to >= 0 else 0, frm, ss + ns, ns if frm >= 0 else 0, COLL_BROADCAST, dtype,
              0, 0, count, can_fuse(e, to, frm), dl)
    free(ss)
    return rc
