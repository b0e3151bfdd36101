# One connection to one peer, as the nogil engine sees it: either a pair of shared-memory byte FIFOs
# (transport "shm") or a non-blocking TCP socket (transport "tcp"). Every function here moves as many
# bytes as it can *now* and returns at once: waiting is the engine's job (engine.pyx: spin, yield, poll).
#
# Shared-memory FIFO protocol (single producer, single consumer, lock-free):
#   head: bytes ever published by the producer; tail: bytes ever released by the consumer.
#   The producer copies into data[head % cap ...] and then publishes head (seq_cst); the consumer
#   reads data[tail % cap ...] and then publishes tail. cons_sleeping/prod_sleeping implement the
#   "spin, then block" handshake: a side about to sleep sets its flag (seq_cst) and re-checks; the other
#   side checks the flag after every publish and, if set, wakes it (wake_peer): with a futex wake on the
#   flag when the sleeper waits on this one pair (SLEEP_FUTEX), else with one doorbell byte on the pair's
#   TCP socket, which the sleeper is poll()ing (SLEEP_POLL). The same socket reports the peer's death (EOF).
from libc.stdint cimport uint64_t, uint32_t, int64_t
from libc.string cimport memmove
cdef extern from "<sys/types.h>" nogil:
    ctypedef long ssize_t
from hetccl._native.atomics cimport (hc_load_acq, hc_store_sc, hc_load32_sc, hc_store32_sc, hc_xchg32)
from hetccl._native.c2c cimport hc_futex_wake
from hetccl._native.reduce cimport reduce_fn, copy_bytes

cdef extern from "<sys/socket.h>" nogil:
    ssize_t c_send "send"(int fd, const void* buf, size_t n, int flags)
    ssize_t c_recv "recv"(int fd, void* buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL

cdef extern from "<errno.h>" nogil:
    int errno
    int EAGAIN
    int EWOULDBLOCK
    int EINTR

# error codes shared by link and engine functions (negative return values)
cdef enum:
    E_TIMEOUT = -1
    E_PEER_LOST = -2
    E_MISMATCH = -3
    E_INTERRUPTED = -4
    E_OS = -5
    E_CANCELLED = -6          # the engine was interrupted (abort, close, revoke, peer declared lost)

cdef enum LinkKind:
    LK_NONE = 0
    LK_SHM = 2
    LK_TCP = 3
    LK_UCX = 6                # a UCP stream endpoint (ucx_link.pxd)

cdef struct RingCtl:          # one direction's control block, every field on its own cache line
    uint64_t head
    char _p0[56]
    uint64_t tail
    char _p1[56]
    uint32_t cons_sleeping
    char _p2[60]
    uint32_t prod_sleeping
    char _p3[60]

cdef struct Link:
    int peer
    int kind
    int fd                    # tcp: the data socket; shm: doorbell + liveness socket
    int closed                # the peer closed its end (EOF / HUP seen)
    int os_errno
    # shm
    RingCtl* tx_ctl
    char* tx_data
    RingCtl* rx_ctl
    char* rx_data
    uint64_t cap
    uint64_t mask
    uint64_t tx_head          # private copies of the shared counters
    uint64_t tx_tail_c
    uint64_t tx_pub
    uint64_t rx_tail
    uint64_t rx_head_c
    uint64_t rx_rel
    # tcp: staging for receive-and-reduce (whole elements are reduced, the rest carried over)
    char* stage
    size_t stage_cap
    size_t stage_len
    void* ucx                 # LK_UCX: its UcxLink state (ucx.pxd)


cdef inline void doorbell(Link* L) noexcept nogil:
    cdef char b = 1
    c_send(L.fd, &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL)   # EAGAIN: plenty of doorbells already queued


# values of RingCtl.cons_sleeping / prod_sleeping: how the side that set the flag sleeps
cdef enum:
    SLEEP_POLL = 1            # in poll() on the pairs' sockets (it waits on several links)
    SLEEP_FUTEX = 2           # in a futex wait on that flag (it waits on this pair alone)

# Why a futex next to the doorbell: a byte on a socket (or pipe) is a "sync" wake-up for the Linux
# scheduler, which then moves the sleeper onto the waker's CPU whenever the waker is the only task there.
# Two ranks that spin then share one core while the other idles, and each later wait is slower, sleeps
# again and re-pairs them (measured: 128 KiB scatter_allgather broadcasts 75 -> 700 us per call after
# one sleep). A futex wake is not "sync": the sleeper stays on its own, idle, CPU.
cdef inline void wake_peer(Link* L) noexcept nogil:
    """The peer sleeps on this pair (it set one of its two flags): clear both, then wake it the way it
    sleeps. Clearing both lets a futex sleeper wait on either flag without missing the other's wake."""
    cdef uint32_t how = hc_xchg32(&L.tx_ctl.cons_sleeping, 0) | hc_xchg32(&L.rx_ctl.prod_sleeping, 0)
    if how & SLEEP_FUTEX:
        hc_futex_wake(&L.tx_ctl.cons_sleeping)
        hc_futex_wake(&L.rx_ctl.prod_sleeping)
    if how & SLEEP_POLL:
        doorbell(L)


# ---------------------------------------------------------------- shared-memory FIFO

cdef inline size_t ring_space(Link* L, size_t want) noexcept nogil:
    cdef uint64_t space = L.cap - (L.tx_head - L.tx_tail_c)
    if space < want:
        L.tx_tail_c = hc_load_acq(&L.tx_ctl.tail)
        space = L.cap - (L.tx_head - L.tx_tail_c)
    return space

cdef inline size_t ring_avail(Link* L, size_t want) noexcept nogil:
    cdef uint64_t avail = L.rx_head_c - L.rx_tail
    if avail < want:
        L.rx_head_c = hc_load_acq(&L.rx_ctl.head)
        avail = L.rx_head_c - L.rx_tail
    return avail

cdef inline size_t ring_write(Link* L, const char* src, size_t n) noexcept nogil:
    """Copy up to n bytes into the FIFO (unpublished until ring_publish). src NULL: skip (padding)."""
    cdef size_t w = ring_space(L, n)
    cdef size_t off, first
    if w > n:
        w = n
    if w == 0:
        return 0
    if src != NULL:
        off = L.tx_head & L.mask
        first = L.cap - off
        if first >= w:
            copy_bytes(L.tx_data + off, src, w, 0)
        else:
            copy_bytes(L.tx_data + off, src, first, 0)
            copy_bytes(L.tx_data, src + first, w - first, 0)
    L.tx_head += w
    return w

cdef inline void ring_publish(Link* L) noexcept nogil:
    if L.tx_head == L.tx_pub:
        return
    L.tx_pub = L.tx_head
    hc_store_sc(&L.tx_ctl.head, L.tx_head)
    if hc_load32_sc(&L.tx_ctl.cons_sleeping):
        wake_peer(L)

cdef inline void ring_release(Link* L) noexcept nogil:
    if L.rx_tail == L.rx_rel:
        return
    L.rx_rel = L.rx_tail
    hc_store_sc(&L.rx_ctl.tail, L.rx_tail)
    if hc_load32_sc(&L.rx_ctl.prod_sleeping):
        wake_peer(L)

cdef inline size_t ring_read(Link* L, char* dst, size_t n, bint streaming) noexcept nogil:
    """Copy up to n bytes out of the FIFO (released by ring_release, or here if >= 64 KiB).
    dst NULL: skip (padding)."""
    cdef size_t r = ring_avail(L, n)
    cdef size_t off, first
    if r > n:
        r = n
    if r == 0:
        return 0
    if dst != NULL:
        off = L.rx_tail & L.mask
        first = L.cap - off
        if first >= r:
            copy_bytes(dst, L.rx_data + off, r, streaming)
        else:
            copy_bytes(dst, L.rx_data + off, first, streaming)
            copy_bytes(dst + first, L.rx_data, r - first, streaming)
    L.rx_tail += r
    if r >= 65536:
        ring_release(L)
    return r

cdef inline void reduce2(reduce_fn fn, char* dst, const char* loc, const char* inc, size_t count,
                         bint swap, bint streaming) noexcept nogil:
    """dst = loc OP incoming, or incoming OP loc with swap (so both ranks of an exchange combine
    the lower rank's operand first: MIN/MAX of -0.0 and +0.0 then agree bit for bit)."""
    if swap:
        fn(dst, inc, loc, count, streaming)
    else:
        fn(dst, loc, inc, count, streaming)

cdef inline size_t ring_read_reduce(Link* L, char* dst, const char* loc, size_t n, reduce_fn fn,
                                    size_t esize, bint swap, bint streaming) noexcept nogil:
    """dst = loc OP fifo for up to n bytes (whole elements; FIFO offsets stay element-aligned)."""
    cdef size_t r = ring_avail(L, n)
    cdef size_t off, first
    if r > n:
        r = n
    r -= r % esize
    if r == 0:
        return 0
    off = L.rx_tail & L.mask
    first = L.cap - off
    if first >= r:
        reduce2(fn, dst, loc, L.rx_data + off, r // esize, swap, streaming)
    else:
        reduce2(fn, dst, loc, L.rx_data + off, first // esize, swap, streaming)
        reduce2(fn, dst + first, loc + first, L.rx_data, (r - first) // esize, swap, streaming)
    L.rx_tail += r
    if r >= 65536:
        ring_release(L)
    return r


# ---------------------------------------------------------------- TCP socket

cdef inline ssize_t tcp_write(Link* L, const char* src, size_t n) noexcept nogil:
    cdef ssize_t w = c_send(L.fd, src, n, MSG_DONTWAIT | MSG_NOSIGNAL)
    if w >= 0:
        return w
    if errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
        return 0
    L.os_errno = errno
    L.closed = 1
    return E_PEER_LOST

cdef inline ssize_t tcp_read(Link* L, char* dst, size_t n) noexcept nogil:
    cdef ssize_t r = c_recv(L.fd, dst, n, MSG_DONTWAIT)
    if r > 0:
        return r
    if r == 0:
        L.closed = 1
        return E_PEER_LOST
    if errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
        return 0
    L.os_errno = errno
    L.closed = 1
    return E_PEER_LOST

cdef inline ssize_t tcp_read_reduce(Link* L, char* dst, const char* loc, size_t n, reduce_fn fn,
                                    size_t esize, bint swap, bint streaming) noexcept nogil:
    """Receive into the staging buffer (never past this segment), reduce whole elements into dst."""
    cdef size_t room = L.stage_cap - L.stage_len
    cdef size_t want = n - L.stage_len if n > L.stage_len else 0
    cdef ssize_t r
    cdef size_t whole
    if want > room:
        want = room
    if want > 0:
        r = tcp_read(L, L.stage + L.stage_len, want)
        if r < 0:
            return r
        L.stage_len += r
    whole = L.stage_len - L.stage_len % esize
    if whole == 0:
        return 0
    reduce2(fn, dst, loc, L.stage, whole // esize, swap, streaming)
    L.stage_len -= whole
    if L.stage_len:
        memmove(L.stage, L.stage + whole, L.stage_len)
    return whole
