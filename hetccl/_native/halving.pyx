# cython: language_level=3
"""Recursive halving and doubling over blocks, for any number of ranks.

Non-powers of two fold first (as in MPICH): with p the largest power of two <= N and rem = N - p,
each even rank below 2*rem hands its whole input to the odd rank above it and sits out; the p
remaining ranks get "new ranks" nr. New rank nr owns a *superblock*: the blocks of both ranks of a
folded pair, or the one block of an unpaired rank, so the superblocks are contiguous and the
halving steps split byte ranges at block boundaries.

Each step is one ``progress.xfer`` exchange with the partner nr ^ mask; headers carry a distinct
phase per step, so ranks running different algorithms get a mismatch error, not wrong data.
"""
from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free

from hetccl._native.codes cimport *
from hetccl._native.binomial cimport lowbit_mask, subtree_segs
from hetccl._native.blocks cimport even_blocks
from hetccl._native.engine cimport Engine
from hetccl._native.link cimport Seg, E_OS
from hetccl._native.progress cimport xfer
from hetccl._native.stream cimport seg
from hetccl._native.kernels cimport copy_bytes, divide_by


cdef inline int pof2_below(int N) noexcept nogil:
    """The largest power of two <= N."""
    cdef int p = 1
    while p * 2 <= N:
        p *= 2
    return p


cdef inline int new_rank(int r, int rem) noexcept nogil:
    """r's rank among the p that stay after the fold (-1: r folded out)."""
    if r < 2 * rem:
        return r // 2 if r & 1 else -1
    return r - rem


cdef inline int old_rank(int nr, int rem) noexcept nogil:
    return nr * 2 + 1 if nr < rem else nr + rem


cdef inline int first_block(int nr, int rem) noexcept nogil:
    """First block of new rank nr's superblock (first_block(p) = N)."""
    return 2 * nr if nr < rem else nr + rem


cdef inline size_t sb_off(size_t* boff, size_t* blen, int N, int nr, int rem) noexcept nogil:
    """Byte offset where new rank nr's superblock starts (nr = p: the end of the buffer)."""
    cdef int b = first_block(nr, rem)
    return boff[b] if b < N else boff[N - 1] + blen[N - 1]


cdef int rs_halving(Engine e, const char* sbuf, char* acc, char* out, size_t* boff, size_t* blen,
                    int dtype, int op, uint64_t count, int coll, int phase0, double dl) noexcept nogil:
    """Reduce-scatter by recursive halving: block b (of every rank's sbuf) reduced over ranks.

    out != NULL: rank r's block lands in out (folded pairs: the odd rank sends the even one its
    block at the end). out == NULL: each of the p remaining ranks leaves its whole superblock in acc
    (at its natural offset), and folded-out ranks return right after the fold (Rabenseifner then
    allgathers). acc holds partial sums at natural offsets (it may be sbuf: in place). AVG divides
    where the final sums land."""
    cdef int N = e.size, r = e.rank, p = pof2_below(N), rem = N - p, nr, mask, k = 0, peer, lo = 0
    cdef int hi, mid, klo, khi, slo, shi, nrs, rc
    cdef long div = N if op == OP_AVG else 0
    cdef size_t total = boff[N - 1] + blen[N - 1], a, b
    cdef const char* cur = sbuf
    cdef Seg gs
    cdef Seg gr[2]
    if r < 2 * rem:
        if not (r & 1):                       # fold out: all my data to r + 1, my block back later
            seg(&gs, <char*>sbuf, NULL, total, -1)
            rc = xfer(e, r + 1, &gs, 1, -1, NULL, 0, coll, dtype, op, phase0, count, False, dl)
            if rc < 0 or out == NULL:
                return rc
            seg(&gr[0], out, NULL, blen[r], -1)
            return xfer(e, -1, NULL, 0, r + 1, gr, 1, coll, dtype, op, phase0 + 1, count, False, dl)
        seg(&gr[0], acc, sbuf, total, -1)
        rc = xfer(e, -1, NULL, 0, r - 1, gr, 1, coll, dtype, op, phase0, count, False, dl)
        if rc < 0:
            return rc
        cur = acc
    nr = new_rank(r, rem)
    hi = p
    mask = p >> 1
    while mask > 0:
        peer = old_rank(nr ^ mask, rem)
        mid = lo + mask
        if nr < mid:
            klo, khi, slo, shi = lo, mid, mid, hi
        else:
            klo, khi, slo, shi = mid, hi, lo, mid
        a = sb_off(boff, blen, N, slo, rem)
        seg(&gs, <char*>cur + a, NULL, sb_off(boff, blen, N, shi, rem) - a, -1)
        a = sb_off(boff, blen, N, klo, rem)
        b = sb_off(boff, blen, N, khi, rem)
        nrs = 1
        if mask > 1 or out == NULL:
            seg(&gr[0], acc + a, cur + a, b - a, -1)
        elif nr < rem:                        # last step of a folded pair: the even rank's block, mine
            seg(&gr[0], acc + boff[r - 1], cur + boff[r - 1], blen[r - 1], -1)
            seg(&gr[1], out, cur + boff[r], blen[r], -1)
            nrs = 2
        else:
            seg(&gr[0], out, cur + boff[r], blen[r], -1)
        if mask == 1:                         # the final sums land: AVG divides them here
            gr[0].divide = div
            gr[nrs - 1].divide = div
        rc = xfer(e, peer, &gs, 1, peer, gr, nrs, coll, dtype, op, phase0 + 2 + k, count, False, dl)
        if rc < 0:
            return rc
        cur = acc
        lo, hi = klo, khi
        mask >>= 1
        k += 1
    if out != NULL and nr < rem:              # unfold: the even partner's block
        seg(&gs, acc + boff[r - 1], NULL, blen[r - 1], -1)
        return xfer(e, r - 1, &gs, 1, -1, NULL, 0, coll, dtype, op, phase0 + 1, count, False, dl)
    return 0


cdef int ag_doubling(Engine e, char* buf, size_t* boff, size_t* blen, int dtype, uint64_t count,
                     int coll, int phase0, double dl) noexcept nogil:
    """Allgather of superblocks by recursive doubling among the p remaining ranks (each holds its
    own in buf), then the odd rank of each folded pair sends the whole result to the even one."""
    cdef int N = e.size, r = e.rank, p = pof2_below(N), rem = N - p, nr = new_rank(r, rem)
    cdef int mask = 1, k = 0, peer, mlo, plo, rc
    cdef size_t total = boff[N - 1] + blen[N - 1], a, pa
    cdef Seg gs, gr
    if nr < 0:
        seg(&gr, buf, NULL, total, -1)
        return xfer(e, -1, NULL, 0, r + 1, &gr, 1, coll, dtype, 0, phase0 + 31, count, False, dl)
    while mask < p:
        peer = old_rank(nr ^ mask, rem)
        mlo = nr & ~(mask - 1)
        plo = (nr ^ mask) & ~(mask - 1)
        a = sb_off(boff, blen, N, mlo, rem)
        pa = sb_off(boff, blen, N, plo, rem)
        seg(&gs, buf + a, NULL, sb_off(boff, blen, N, mlo + mask, rem) - a, -1)
        seg(&gr, buf + pa, NULL, sb_off(boff, blen, N, plo + mask, rem) - pa, -1)
        rc = xfer(e, peer, &gs, 1, peer, &gr, 1, coll, dtype, 0, phase0 + 16 + k, count, False, dl)
        if rc < 0:
            return rc
        mask <<= 1
        k += 1
    if nr < rem:
        seg(&gs, buf, NULL, total, -1)
        return xfer(e, r - 1, &gs, 1, -1, NULL, 0, coll, dtype, 0, phase0 + 31, count, False, dl)
    return 0


cdef int allreduce_rabenseifner(Engine e, char* sbuf, char* rbuf, size_t count, int dtype, int op,
                                double dl) noexcept nogil:
    """Rabenseifner: reduce-scatter by recursive halving, then allgather by recursive doubling.

    Every element is reduced on exactly one rank and copied to the others, so all ranks end with
    bit-identical results. N = 1 and count = 0 take the same path as everything else."""
    cdef int N = e.size, rc
    cdef size_t es = dtype_size(dtype)
    cdef size_t* boff
    cdef bint streaming = e.stream_out
    if N == 1:
        if sbuf != rbuf:
            copy_bytes(rbuf, sbuf, count * es, 0)
        return 0
    boff = <size_t*>malloc(sizeof(size_t) * 2 * N)
    if boff == NULL:
        return E_OS
    even_blocks(count, N, es, boff, boff + N)
    e.stream_out = False                      # partial sums are re-read at once: keep them cached
    rc = rs_halving(e, sbuf, rbuf, NULL, boff, boff + N, dtype, op, count, COLL_ALLREDUCE, 64, dl)
    e.stream_out = streaming
    if rc >= 0:
        rc = ag_doubling(e, rbuf, boff, boff + N, dtype, count, COLL_ALLREDUCE, 64, dl)
    free(boff)
    return rc


cdef int reduce_rs_gather(Engine e, char* sbuf, char* rbuf, size_t count, int root, int dtype, int op,
                          double dl) noexcept nogil:
    """Reduce as reduce-scatter (recursive halving) plus a binomial gather of the blocks to root.

    Every rank accumulates in a buffer of the whole size (the root's output, else the engine's
    scratch), where block b sits at its natural offset throughout; the gather moves blocks of a
    subtree (relative ranks vr .. vr+mask, wrapping past N-1) as one message of per-block segments."""
    cdef int N = e.size, r = e.rank, vr = (r - root + N) % N, mask, m, n, rc
    cdef size_t es = dtype_size(dtype), total = count * es
    cdef size_t* boff
    cdef size_t* blen
    cdef char* acc
    cdef Seg* gs
    cdef bint streaming
    if N == 1:
        if sbuf != rbuf:
            copy_bytes(rbuf, sbuf, total, 0)
        return 0
    acc = rbuf if r == root else e.scratch(total)
    boff = <size_t*>malloc(sizeof(size_t) * 2 * N + sizeof(Seg) * N)
    if acc == NULL or boff == NULL:
        free(boff)
        return E_OS
    blen = boff + N
    gs = <Seg*>(boff + 2 * N)
    even_blocks(count, N, es, boff, blen)
    streaming = e.stream_out
    e.stream_out = False                      # blocks are sent on at once: keep them cached
    rc = rs_halving(e, sbuf, acc, acc + boff[r], boff, blen, dtype, op, count, COLL_REDUCE, 128, dl)
    e.stream_out = streaming
    mask = lowbit_mask(vr, N)
    m = 1
    while rc >= 0 and m < mask:               # children's subtrees: relative ranks vr+m .. vr+2m
        if vr + m < N:
            n = subtree_segs(gs, acc, boff, blen, vr + m, min(vr + 2 * m, N), root, N)
            rc = xfer(e, -1, NULL, 0, (vr + m + root) % N, gs, n, COLL_REDUCE, dtype, op, 192, count,
                        False, dl)
        m <<= 1
    if rc >= 0 and vr:
        n = subtree_segs(gs, acc, boff, blen, vr, min(vr + mask, N), root, N)
        rc = xfer(e, (vr - mask + root) % N, gs, n, -1, NULL, 0, COLL_REDUCE, dtype, op, 192, count,
                    False, dl)
    free(boff)
    return rc


cdef int reduce_scatter_halving(Engine e, char* sbuf, char* out, size_t* boff, size_t* blen, int dtype,
                                int op, uint64_t count, double dl) noexcept nogil:
    """Recursive-halving reduce_scatter: partial sums in the engine's scratch, my block into out."""
    cdef char* acc = e.scratch(boff[e.size - 1] + blen[e.size - 1])
    cdef bint streaming = e.stream_out
    cdef int rc
    if acc == NULL:
        return E_OS
    e.stream_out = False                      # partial sums are re-read at once: keep them cached
    rc = rs_halving(e, sbuf, acc, out, boff, blen, dtype, op, count, COLL_REDUCE_SCATTER, 128, dl)
    e.stream_out = streaming
    return rc
