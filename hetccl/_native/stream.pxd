# The progress walk of a stream, written once and specialised per link kind.
#
# A stream is a header and then segments (pieces of the user's buffers) to send to, or receive from,
# one peer (link.pxd: Stream, Seg). send_walk / recv_walk move what can move now; they take the kind's
# byte movers as arguments. Each kind calls them with its own inline movers (link_shm.pxd: shm_send),
# and the C compiler, seeing constant function arguments, inlines the movers into that kind's copy of
# the walk: the engine pays one indirect call per progress call (LinkKind.send / .recv), none per
# segment or per chunk.
from libc.string cimport memcmp
from hetccl._native.link cimport Link, Stream, Seg, E_MISMATCH, ssize_t
from hetccl._native.kernels cimport reduce_fn, copy_bytes, divide_by, store_fence
from hetccl._native.wire cimport HDR_BYTES, HDR_CHECKED

cdef enum:
    MAX_MOVE = 1 << 20        # most bytes one progress call moves per stream, so sends and receives interleave

ctypedef ssize_t (*write_fn)(Link* L, const char* src, size_t n) noexcept nogil
ctypedef ssize_t (*read_fn)(Link* L, char* dst, size_t n, bint streaming) noexcept nogil
ctypedef ssize_t (*read_reduce_fn)(Link* L, char* dst, const char* loc, size_t n, reduce_fn fn,
                                   size_t esize, bint swap, bint streaming) noexcept nogil
ctypedef void (*flush_fn)(Link* L) noexcept nogil
ctypedef ssize_t (*forward_fn)(Stream* s, Seg* g, size_t n) noexcept nogil


cdef inline void seg(Seg* g, char* buf, const char* loc, size_t n, int dep) noexcept nogil:
    """Fill a segment: buf/loc/len, the receive segment it depends on (dep, -1: none), no extras."""
    g.buf = buf
    g.loc = loc
    g.len = n
    g.divide = 0
    g.fwd = False
    g.dep = dep
    g.copy = NULL


cdef inline void skip_empty(Stream* s) noexcept nogil:
    while s.cur < s.nseg and s.off == s.segs[s.cur].len:
        s.cur += 1
        s.off = 0


cdef inline long send_walk(Stream* s, write_fn write, flush_fn publish) noexcept nogil:
    """Move what can move now: header, then own payload segments (each possibly waiting on a
    receive segment it depends on), then padding. Forwarded segments are filled by the paired
    receive stream (the kind's forward). Sets s.waiting when only the link (room) can unblock it.
    write: up to n bytes now (src NULL: padding); publish: make written bytes visible to the peer."""
    cdef Link* L = s.link
    cdef long moved = 0
    cdef ssize_t w
    cdef size_t n, allowed
    cdef Seg* g
    cdef Stream* D
    s.waiting = False
    if s.done:
        return 0
    if s.hdr_done < HDR_BYTES:
        w = write(L, <char*>s.hdr + s.hdr_done, HDR_BYTES - s.hdr_done)
        if w < 0:
            return w
        s.hdr_done += <int>w
        moved += w
        if s.hdr_done < HDR_BYTES:
            s.waiting = True
            publish(L)
            return moved
    skip_empty(s)
    while s.cur < s.nseg and moved < MAX_MOVE:
        g = &s.segs[s.cur]
        if g.fwd:
            break                        # the receive stream fills this one
        n = g.len - s.off
        if g.dep >= 0:                   # may not overtake the receive segment it forwards
            D = s.dep
            if D.cur < g.dep:
                break
            if D.cur == g.dep:
                allowed = D.off
                if allowed <= s.off:
                    break
                if n > allowed - s.off:
                    n = allowed - s.off
        if s.pos + n > s.limit:
            if s.limit <= s.pos:
                break
            n = s.limit - s.pos
        if n > s.chunk:
            n = s.chunk
        w = write(L, g.buf + s.off, n)
        if w < 0:
            return w
        if w == 0:
            s.waiting = True
            break
        if g.copy != NULL:               # copy-send: the bytes are hot in cache right now
            copy_bytes(g.copy + s.off, g.buf + s.off, w, s.streaming)
        s.off += w
        s.pos += w
        moved += w
        skip_empty(s)
        if w >= 65536:
            publish(L)                   # publish big chunks at once so the receiver can start
    if s.cur >= s.nseg:
        if s.pad_done < s.pad:
            s.pad_done += <int>write(L, NULL, s.pad - s.pad_done)
        if s.pad_done == s.pad:
            s.done = True
        else:
            s.waiting = True
    publish(L)
    return moved


cdef inline long recv_walk(Stream* s, read_fn read, read_reduce_fn read_reduce, flush_fn release,
                           forward_fn forward, flush_fn publish) noexcept nogil:
    """Move what has arrived: header (checked: E_MISMATCH, s.hdr against s.want), then payload
    copied, reduced or forwarded, then padding. Sets s.waiting when only the link (data, or room to
    forward into) can unblock it. release: hand consumed bytes back to the peer; forward: one fused
    relay step into s.fwd (kinds that fuse only); publish: the forwarded bytes (same kind)."""
    cdef Link* L = s.link
    cdef long moved = 0
    cdef ssize_t r
    cdef size_t n
    cdef Seg* g
    s.waiting = False
    if s.done:
        return 0
    if s.hdr_done < HDR_BYTES:
        r = read(L, <char*>s.hdr + s.hdr_done, HDR_BYTES - s.hdr_done, 0)
        if r < 0:
            return r
        s.hdr_done += <int>r
        moved += r
        if s.hdr_done < HDR_BYTES:
            s.waiting = True
            release(L)
            return moved
        if memcmp(s.hdr, s.want, HDR_CHECKED) != 0:
            return E_MISMATCH
    skip_empty(s)
    while s.cur < s.nseg and moved < MAX_MOVE:
        g = &s.segs[s.cur]
        n = g.len - s.off
        if s.pos + n > s.limit:
            if s.limit <= s.pos:
                break
            n = s.limit - s.pos
        if n > s.chunk:
            n = s.chunk
        if g.fwd:
            r = forward(s, g, n)
        elif g.loc == NULL:
            r = read(L, g.buf + s.off, n, s.streaming)
        else:
            r = read_reduce(L, g.buf + s.off, g.loc + s.off, n, s.fn, s.esize, s.swap, s.streaming)
            if r > 0 and g.divide:
                divide_by(g.buf + s.off, <size_t>r // s.esize, s.dtype, g.divide)
        if r < 0:
            return r
        if r == 0:
            if not g.fwd:
                s.waiting = True
            break
        s.off += r
        s.pos += r
        moved += r
        skip_empty(s)
    if s.cur >= s.nseg:
        if s.pad_done < s.pad:
            s.pad_done += <int>read(L, NULL, s.pad - s.pad_done, 0)
        if s.pad_done == s.pad:
            s.done = True
            if s.streaming:
                store_fence()
        else:
            s.waiting = True
    release(L)
    if s.fwd != NULL:
        publish(s.fwd.link)
    return moved


cdef inline ssize_t no_forward(Stream* s, Seg* g, size_t n) noexcept nogil:
    """forward of a kind that does not fuse (never called: xfer fuses only LinkKind.fuses links)."""
    return -5                            # E_OS


cdef inline void no_flush(Link* L) noexcept nogil:
    pass
