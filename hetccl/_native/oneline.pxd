# One-line messages between the two ranks of an shm or c2c pair: a stream of at most LINE_PAYLOAD
# bytes travels as one 64-byte line that carries its own flag, so the receiver polls that line
# alone and the message crosses between the cores as one cache-line transfer. The FIFO
# (fifo.pxd) needs two in series: the receiver polls the head counter's line, then reads the data
# line (bench/line_pingpong.py measures the difference). NCCL's LL and LL128 protocols put the flag
# in the data for the same reason; on a CPU the stores of one core become visible in order
# (release/acquire), so one flag word written after the payload covers the whole line.
#
# A schedule opts a stream in (line_pick) where both ranks agree it fits: the stream's size and
# the schedule are the same on both sides of a matched call, so both pick the line or both the FIFO.
#
# Each direction has a ring of LINE_SLOTS lines (fifo.pxd: the layout). Message k (1, 2, ... per
# direction) goes into slot k % LINE_SLOTS with flag = epoch << 48 | k, written last; the receiver
# takes the line only when the flag equals exactly the one it expects, so a line left from an
# earlier message in that slot (k - LINE_SLOTS), a zeroed line, or one of another epoch (the epoch
# is derived from the segment's name, which differs per communicator and pair) is never taken as
# new. The second word is the call's header condensed (collective, dtype, op, phase, 16 bits of
# the call's sequence number and of its count): a line with the right flag and a different header
# is a mismatch (E_MISMATCH), as a FIFO stream's header is. The receiver acknowledges each message
# it consumed in its acknowledgement word; the sender reuses a slot only once the message that used
# it before has been acknowledged (read again only when the ring looks full).
#
# Waiting is the engine's (progress.pyx), through the FIFO's sleeping flags: the sender checks the
# peer's cons_sleeping after storing a flag (seq_cst, as fifo_publish does), the receiver the
# peer's prod_sleeping after acknowledging, and shm_arm (link_shm.pxd) re-checks the line a waiting
# one-line stream needs before the engine sleeps (ln_rx_wait / ln_tx_wait say which).
#
# Messages on one pair and direction are consumed in the order they were sent, one-line or FIFO
# alike, so a one-line receive that finds FIFO bytes waiting (and, looking again, still no line)
# has a peer that sent something else: E_MISMATCH; likewise a FIFO receive waiting for a header
# that finds a line (shm_recv). A sender stores the line before it publishes anything later, and
# the receiver looks at the FIFO's head before it looks at the line again, so a line that exists
# is always seen first.
from libc.stdint cimport uint64_t, uint32_t, uint8_t
from libc.string cimport memcpy, memset
from hetccl._native.atomics cimport hc_load_acq, hc_store_sc, hc_load32_sc
from hetccl._native.fifo cimport Fifo, Line, LINE_SLOTS, LINE_PAYLOAD, fifo_wake_peer
from hetccl._native.kernels cimport reduce_ordered, divide_by
from hetccl._native.link cimport Link, Stream, Seg, E_MISMATCH
from hetccl._native.wire cimport HDR_BYTES, put_header


cdef inline uint64_t line_check(const uint8_t* h) noexcept nogil:
    """A wire header (wire.pxd) in one word: bytes 4..7 (collective, dtype, op, phase), then the low
    16 bits of the call's sequence number and of the count."""
    return ((<const uint32_t*>(h + 4))[0] | ((<uint64_t>(<const uint32_t*>(h + 8))[0] & 0xffff) << 32)
            | (((<const uint64_t*>(h + 16))[0] & 0xffff) << 48))


cdef inline void line_header(uint8_t* h, uint64_t check, int rank) noexcept nogil:
    """The header a check word stands for (what a mismatch reports; sequence and count: 16 bits)."""
    put_header(h, check & 0xff, (check >> 8) & 0xff, (check >> 16) & 0xff, (check >> 24) & 0xff,
               <uint32_t>((check >> 32) & 0xffff), check >> 48, rank)


cdef inline bint line_pick(Stream* s, bint on) noexcept nogil:
    """Send or receive stream s (open_stream's, one plain segment, nothing forwarded) as one line if
    on and its link's kind has lines (LinkKind.line_bytes) that hold it. Both ranks of a matched
    call decide alike (the size and the schedule are the same on both sides)."""
    s.line = (on and s.nseg == 1 and s.total <= s.link.kind.line_bytes and s.fwd == NULL
              and s.segs[0].copy == NULL and not s.segs[0].fwd)
    return s.line


cdef inline bint line_ready(Fifo* F) noexcept nogil:
    """The next message from the peer is in its line."""
    cdef uint64_t k = F.ln_got + 1
    return hc_load_acq(&F.ln_rx[k & (LINE_SLOTS - 1)].flag) == (F.ln_epoch | k)


cdef inline bint line_room(Fifo* F) noexcept nogil:
    """The slot of the next message to send is free (its previous message was consumed)."""
    cdef uint64_t k = F.ln_sent + 1
    if k - F.ln_ack_c > LINE_SLOTS:
        F.ln_ack_c = hc_load_acq(F.ln_tx_ack)
    return k - F.ln_ack_c <= LINE_SLOTS


cdef inline long line_finished(Stream* s) noexcept nogil:
    """Stream s went as its line: done, header and payload (> 0: it moved)."""
    s.pos = s.total
    s.hdr_done = HDR_BYTES
    s.done = True
    return <long>s.total + 1


cdef inline long line_send(Stream* s) noexcept nogil:
    """Send stream s's payload and header in one line, if its slot is free. Returns > 0 when sent."""
    cdef Fifo* F = &s.link.fifo
    cdef uint64_t k = F.ln_sent + 1
    cdef Line* ln
    s.waiting = False
    if s.done:
        return 0
    if not line_room(F):
        s.waiting = True
        F.ln_tx_wait = True
        return 0
    F.ln_tx_wait = False
    ln = &F.ln_tx[k & (LINE_SLOTS - 1)]
    if s.total:
        memcpy(ln.data, s.segs[0].buf, s.total)
    ln.check = line_check(s.hdr)
    hc_store_sc(&ln.flag, F.ln_epoch | k)       # last: the payload is visible once the flag is
    F.ln_sent = k
    if hc_load32_sc(&F.tx_ctl.cons_sleeping):
        fifo_wake_peer(F)
    return line_finished(s)


cdef inline int fifo_peek_header(Fifo* F, uint8_t* h) noexcept nogil:
    """Copy what the FIFO holds of the next header (not consuming it), for a mismatch's report."""
    cdef uint64_t n = hc_load_acq(&F.rx_ctl.head) - F.rx_tail
    cdef uint64_t off = F.rx_tail & F.mask
    cdef size_t i
    memset(h, 0, HDR_BYTES)
    if n > HDR_BYTES:
        n = HDR_BYTES
    for i in range(n):
        h[i] = <uint8_t>F.rx_data[(off + i) & F.mask]
    return 0


cdef inline long line_recv(Stream* s) noexcept nogil:
    """Receive stream s's line, if it is there: check its header, copy or reduce (and divide) its
    payload into the segment, acknowledge it. Returns > 0 when received, E_MISMATCH when the peer
    sent another line or FIFO bytes instead."""
    cdef Fifo* F = &s.link.fifo
    cdef uint64_t k = F.ln_got + 1
    cdef Line* ln = &F.ln_rx[k & (LINE_SLOTS - 1)]
    cdef Seg* g = &s.segs[0]
    cdef uint64_t check
    s.waiting = False
    if s.done or s.limit < s.total:              # (in place: not before the send has gone)
        return 0
    if hc_load_acq(&ln.flag) != (F.ln_epoch | k):
        if hc_load_acq(&F.rx_ctl.head) != F.rx_tail and hc_load_acq(&ln.flag) != (F.ln_epoch | k):
            fifo_peek_header(F, s.hdr)           # the peer sent through the FIFO: another call
            return E_MISMATCH
        s.waiting = True
        F.ln_rx_wait = True
        return 0
    F.ln_rx_wait = False
    check = ln.check
    if check != line_check(s.want):
        line_header(s.hdr, check, s.link.peer)
        line_header(s.want, line_check(s.want), s.link.peer)
        return E_MISMATCH
    if s.total:
        if g.loc != NULL:
            reduce_ordered(s.fn, g.buf, g.loc, ln.data, s.total // s.esize, s.swap, 0)
            if g.divide:
                divide_by(g.buf, s.total // s.esize, s.dtype, g.divide)
        else:
            memcpy(g.buf, ln.data, s.total)
    F.ln_got = k
    hc_store_sc(F.ln_rx_ack, k)                  # the slot is free again
    if hc_load32_sc(&F.rx_ctl.prod_sleeping):
        fifo_wake_peer(F)
    return line_finished(s)


cdef inline bint line_sent_instead(Stream* s) noexcept nogil:
    """A FIFO receive waiting for its header: the peer sent a line instead (and, looking at the FIFO
    again, nothing there): fill s.hdr from the line for the mismatch's report."""
    cdef Fifo* F = &s.link.fifo
    cdef uint64_t k
    if not line_ready(F) or hc_load_acq(&F.rx_ctl.head) != F.rx_tail:
        return False
    k = F.ln_got + 1
    line_header(s.hdr, F.ln_rx[k & (LINE_SLOTS - 1)].check, s.link.peer)
    line_header(s.want, line_check(s.want), s.link.peer)     # compared as condensed
    return True
