# Link kind "shm": the pair's two shared-memory FIFOs (fifo.pxd), with the pair's socket for
# doorbells and for the peer's death. Two copies per byte (into the FIFO, out of it), but a relay
# between two such links reduces and forwards FIFO to FIFO in one pass (shm_forward). Streams a
# schedule marks (line_pick) travel as one-line messages instead (oneline.pxd).
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from hetccl._native.atomics cimport hc_load_acq, hc_store32_sc
from hetccl._native.fifo cimport *
from hetccl._native.oneline cimport line_send, line_recv, line_ready, line_room, line_sent_instead
from hetccl._native.link cimport Link, LinkKind, Stream, Seg, ssize_t, E_MISMATCH
from hetccl._native.posix_wait cimport pollfd, POLLIN, POLLHUP, POLLERR
from hetccl._native.kernels cimport (reduce_fn, copy_bytes, copy_bytes_pair, divide_by,
                                    reduce_ordered, reduce_forward)
from hetccl._native.stream cimport send_walk, recv_walk, skip_empty, MAX_MOVE
from hetccl._native.wire cimport HDR_BYTES


cdef inline ssize_t shm_write(Link* L, const char* src, size_t n) noexcept nogil:
    return <ssize_t>fifo_write(&L.fifo, src, n)

cdef inline ssize_t shm_read(Link* L, char* dst, size_t n, bint streaming) noexcept nogil:
    return <ssize_t>fifo_read(&L.fifo, dst, n, streaming)

cdef inline ssize_t shm_read_reduce(Link* L, char* dst, const char* loc, size_t n, reduce_fn fn,
                                    size_t esize, bint swap, bint streaming) noexcept nogil:
    return <ssize_t>fifo_read_reduce(&L.fifo, dst, loc, n, fn, esize, swap, streaming)

cdef inline void shm_publish(Link* L) noexcept nogil:
    fifo_publish(&L.fifo)

cdef inline void shm_release(Link* L) noexcept nogil:
    fifo_release(&L.fifo)


cdef inline size_t fifo_through(Fifo* I, Fifo* T, size_t n) noexcept nogil:
    """At most n: what can pass from I's unread bytes into T's free room now, in one contiguous
    piece of each (neither wraps)."""
    cdef size_t k = fifo_avail(I, n)
    if n > k:
        n = k
    k = I.cap - (I.rx_tail & I.mask)
    if n > k:
        n = k
    k = fifo_space(T, n)
    if n > k:
        n = k
    k = T.cap - (T.tx_head & T.mask)
    return k if n > k else n


cdef inline ssize_t shm_forward(Stream* s, Seg* g, size_t n) noexcept nogil:
    """One fused ring step: FIFO-in (OP local) -> next rank's FIFO, and to the output if any.

    A reduction that also lands in the output (the allreduce's last reduce-scatter step) is one
    pass of the forward kernel (s.fn2): each block is combined once and stored into the next FIFO
    (ordinary stores: the peer reads it soon) and into the output (streaming stores for large
    outputs, unless in place), so the output is never re-read to be forwarded. Otherwise (AVG's
    divide, plain relays) the result goes into the FIFO and is copied from there to the output.
    Both links are FIFOs. Returns bytes consumed; 0 means wait (s.waiting says whether on a link,
    or on the send stream reaching this forwarded segment)."""
    cdef Stream* F = s.fwd
    cdef Fifo* I = &s.link.fifo
    cdef Fifo* T = &F.link.fifo
    cdef size_t rx_off, tx_off, k
    cdef char* src
    cdef char* dst
    cdef bint streaming
    skip_empty(F)
    if F.hdr_done < HDR_BYTES or F.cur >= F.nseg or not F.segs[F.cur].fwd:
        return 0                         # our own bytes must go first
    k = F.segs[F.cur].len - F.off
    if n > k:
        n = k
    n = fifo_through(I, T, n)
    rx_off = I.rx_tail & I.mask
    tx_off = T.tx_head & T.mask
    n -= n % s.esize
    if n == 0:
        s.waiting = True
        return 0
    src = I.rx_data + rx_off
    dst = T.tx_data + tx_off
    # in place (the output is the local operand) this pass has just loaded the output's lines:
    # ordinary stores then, streaming onto lines in cache costs more than it saves
    streaming = s.streaming and g.buf != g.loc
    if g.loc != NULL and g.buf != NULL and s.fn2 != NULL and not g.divide:
        reduce_forward(s.fn2, dst, g.buf + s.off, g.loc + s.off, src, n // s.esize, s.swap,
                       streaming)        # one pass: into the FIFO (cached) and the output
    else:
        if g.loc != NULL:
            reduce_ordered(s.fn, dst, g.loc + s.off, src, n // s.esize, s.swap, 0)
            if g.divide:
                divide_by(dst, n // s.esize, s.dtype, g.divide)
        else:
            copy_bytes(dst, src, n, 0)
        if g.buf != NULL:
            copy_bytes(g.buf + s.off, dst, n, streaming)
    I.rx_tail += n
    T.tx_head += n
    F.off += n
    F.pos += n
    if n >= RELEASE_EARLY:
        fifo_release(I)
        fifo_publish(T)
    return <ssize_t>n


cdef inline long shm_send(Stream* s) noexcept nogil:
    if s.line:
        return line_send(s)
    return send_walk(s, shm_write, shm_publish)

cdef enum:
    PAIR_MIN = 4096           # a fused send-and-receive step moves at least this much (else: one by one)


cdef inline long shm_pair(Stream* R) noexcept nogil:
    """Send and receive in one pass where both streams copy plain bytes: the receive stream R's
    current segment is copied out of its FIFO (no reduction, no forward) while the send stream
    R.fwd's current segment (own bytes, not a relay) is copied into the next FIFO. In the 2-rank
    ring allreduce that is the allgather step of slice j beside the first send of slice j + 1
    (paced by it: that send's dep is the receive segment, so the walks never move it alone
    ahead): one loop with both load streams in flight hides the latency of the lines coming
    from the other core behind the loads of the user's buffer (two separate passes wait for
    each in turn).
    Moves what it can now (both FIFOs permitting) and returns the bytes received; the walks
    (send_walk, recv_walk) do the rest: headers, padding, what one side alone can move."""
    cdef Stream* S = R.fwd
    cdef Fifo* I = &R.link.fifo
    cdef Fifo* T = &S.link.fifo
    cdef Seg* g
    cdef Seg* h
    cdef size_t n, k, rx_off, tx_off
    cdef char* dst
    cdef const char* src
    cdef long moved = 0
    if R.hdr_done < HDR_BYTES or S.hdr_done < HDR_BYTES or S.done:
        return 0
    if R.limit != <size_t>-1 or S.limit != <size_t>-1:
        return 0
    while moved < MAX_MOVE:
        skip_empty(R)
        skip_empty(S)
        if R.cur >= R.nseg or S.cur >= S.nseg:
            break
        g = &R.segs[R.cur]
        h = &S.segs[S.cur]
        if g.fwd or g.loc != NULL or g.buf == NULL or h.fwd or h.copy != NULL:
            break
        n = g.len - R.off
        k = h.len - S.off
        if h.dep >= 0:                   # paced by a receive segment (send_walk's rule)
            if h.dep > R.cur or (h.dep == R.cur and S.off > R.off):
                break
        if n > k:
            n = k
        if n > R.chunk:
            n = R.chunk
        n = fifo_through(I, T, n)
        rx_off = I.rx_tail & I.mask
        tx_off = T.tx_head & T.mask
        if n < PAIR_MIN:
            break
        src = h.buf + S.off
        dst = g.buf + R.off
        if (src < dst + n and dst < src + n):
            break                        # the output overlaps what is being sent: one at a time
        copy_bytes_pair(T.tx_data + tx_off, src, dst, I.rx_data + rx_off, n, R.streaming)
        I.rx_tail += n
        T.tx_head += n
        R.off += n
        R.pos += n
        S.off += n
        S.pos += n
        moved += <long>n
        if n >= RELEASE_EARLY:
            fifo_release(I)
            fifo_publish(T)
    return moved


cdef inline long shm_recv(Stream* s) noexcept nogil:
    cdef long moved = 0, r
    if s.line:
        return line_recv(s)
    if s.pair:
        moved = shm_pair(s)
    r = recv_walk(s, shm_read, shm_read_reduce, shm_release, shm_forward, shm_publish)
    if r == 0 and s.hdr_done == 0 and line_sent_instead(s):
        return E_MISMATCH                # the peer sent a one-line message: another call
    return r if r < 0 else r + moved


cdef inline bint shm_arm(Link* L, bint rx, size_t need, uint32_t how, pollfd* f,
                         uint32_t** word) noexcept nogil:
    """Raise this side's sleeping flag (how: futex or poll, see fifo.pxd) and look again: at the
    FIFO, and at the one-line channel (oneline.pxd) where a one-line stream waits; a receive wakes
    for either (the other is a mismatch the receive reports)."""
    cdef Fifo* F = &L.fifo
    cdef bint ready
    if rx:
        word[0] = &F.rx_ctl.cons_sleeping
        hc_store32_sc(word[0], how)
        ready = hc_load_acq(&F.rx_ctl.head) != F.rx_tail or line_ready(F)
    else:
        word[0] = &F.tx_ctl.prod_sleeping
        hc_store32_sc(word[0], how)
        if F.ln_tx_wait:
            ready = line_room(F)
        else:
            ready = F.cap - (F.tx_head - hc_load_acq(&F.tx_ctl.tail)) >= need
    f.fd = L.fd
    f.events = POLLIN
    return ready

cdef inline void shm_disarm(Link* L, bint rx) noexcept nogil:
    if rx:
        hc_store32_sc(&L.fifo.rx_ctl.cons_sleeping, 0)
    else:
        hc_store32_sc(&L.fifo.tx_ctl.prod_sleeping, 0)

cdef inline void shm_woken(Link* L, short revents) noexcept nogil:
    """Drain the doorbell bytes; EOF means the peer is gone."""
    cdef char junk[256]
    cdef ssize_t got
    if revents & (POLLIN | POLLHUP | POLLERR):
        while True:
            got = c_recv(L.fd, junk, 256, MSG_DONTWAIT)
            if got == 0:
                L.closed = 1
            if got <= 0:
                break


cdef inline ssize_t shm_write_now(Link* L, const char* src, size_t n) noexcept nogil:
    cdef size_t w = fifo_write(&L.fifo, src, n)
    fifo_publish(&L.fifo)
    return <ssize_t>w

cdef inline ssize_t shm_read_now(Link* L, char* dst, size_t n) noexcept nogil:
    cdef size_t r = fifo_read(&L.fifo, dst, n, 0)
    fifo_release(&L.fifo)
    return <ssize_t>r

cdef inline bint shm_ready(Link* L, bint rx, bint tx) noexcept nogil:
    if rx and hc_load_acq(&L.fifo.rx_ctl.head) != L.fifo.rx_tail:
        return True
    return tx and L.fifo.cap - (L.fifo.tx_head - hc_load_acq(&L.fifo.tx_ctl.tail)) > 0


cdef inline uint64_t line_epoch(object segment):
    """The one-line channel's epoch (oneline.pxd) of a pair's segment: 16 bits (never 0) of a hash
    of its name, which both sides know and which differs per communicator and pair."""
    cdef uint64_t h = 14695981039346656037ULL          # FNV-1a
    cdef unsigned char c
    name = getattr(segment, "name", b"")
    for c in (name.encode() if isinstance(name, str) else bytes(name)):
        h = (h ^ c) * 1099511628211ULL
    h = (h ^ (h >> 32) ^ (h >> 16)) & 0xffff
    return h if h else 1


cdef inline object shm_map(Link* L, object segment, size_t fifo_bytes, bint low):
    """Take up this side of segment's FIFO pair (segment.pyx: ShmSegment, sized by segment_bytes)."""
    if fifo_bytes & (fifo_bytes - 1) or fifo_bytes < 4096:
        raise ValueError("fifo_bytes must be a power of two >= 4096")
    if segment.size < FIFO_CTL + 2 * fifo_bytes:
        raise ValueError(f"a segment of {segment.size} bytes cannot hold two FIFOs of {fifo_bytes}")
    fifo_map(&L.fifo, <char*><uintptr_t>segment.address(), fifo_bytes, low, L.fd,
             line_epoch(segment))
    L.window = fifo_bytes
    return segment

cdef inline object shm_attach(Link* L, tuple args, bint engine):
    """args: (segment, fifo_bytes, low): low is True on the pair's lower rank."""
    segment, fifo_bytes, low = args
    return shm_map(L, segment, fifo_bytes, low)

cdef inline void shm_close(Link* L) noexcept nogil:
    pass


cdef inline void shm_kind(LinkKind* k) noexcept:
    k.name = b"shm"
    k.align = 8               # FIFO offsets stay 8-aligned: reductions read whole elements in place
    k.fuses = True
    k.futex = True
    k.line_bytes = LINE_PAYLOAD
    k.send = shm_send
    k.recv = shm_recv
    k.arm = shm_arm
    k.disarm = shm_disarm
    k.woken = shm_woken
    k.write = shm_write_now
    k.read = shm_read_now
    k.ready = shm_ready
    k.attach = shm_attach
    k.close = shm_close
