# A pair of single-producer single-consumer byte FIFOs in a shared-memory segment: the bytes of the
# shm and c2c link kinds (link_shm.pxd). Every function moves as many bytes as it can *now* and
# returns at once; waiting is the engine's (progress.pyx).
#
# Protocol (lock-free):
#   head: bytes ever published by the producer; tail: bytes ever released by the consumer.
#   The producer copies into data[head % cap ...] and then publishes head (seq_cst); the consumer
#   reads data[tail % cap ...] and then publishes tail. cons_sleeping/prod_sleeping implement the
#   "spin, then block" handshake: a side about to sleep sets its flag (seq_cst) and re-checks; the
#   other side checks the flag after every publish and, if set, wakes it (fifo_wake_peer): with a
#   futex wake on the flag when the sleeper waits on this one pair (SLEEP_FUTEX), else with one
#   doorbell byte on the pair's socket, which the sleeper is poll()ing (SLEEP_POLL). The same socket
#   reports the peer's death (EOF).
#
# Segment layout (segment.pyx maps it): FIFO_CTL bytes of control blocks (this side's and the
# peer's FifoCtl; then, from LINE_ACKS, the one-line messages' acknowledgement words and rings,
# oneline.pxd), then the two FIFOs of cap bytes each; the lower rank of the pair produces into
# the first one. A c2c segment continues with the c2c control slots and windows (c2c.pxd).
from libc.stdint cimport uint64_t, uint32_t
from hetccl._native.atomics cimport hc_load_acq, hc_store_sc, hc_load32_sc, hc_xchg32
from hetccl._native.c2c cimport hc_futex_wake
from hetccl._native.kernels cimport reduce_fn, copy_bytes, reduce_ordered

cdef extern from "<sys/types.h>" nogil:
    ctypedef long ssize_t

cdef extern from "<sys/socket.h>" nogil:
    ssize_t c_send "send"(int fd, const void* buf, size_t n, int flags)
    ssize_t c_recv "recv"(int fd, void* buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL

cdef enum:
    FIFO_CTL = 4096           # bytes of the two control blocks at the start of a segment
    LINE_ACKS = 512           # the one-line channel in them (oneline.pxd): two acknowledgement lines,
    LINE_RINGS = 1024         # then two rings of LINE_SLOTS lines, one per direction (lower rank's first)
    LINE_SLOTS = 16
    LINE_PAYLOAD = 48         # bytes of payload in one 64-byte line (after its flag and check words)
    RELEASE_EARLY = 65536     # a read or write this large publishes at once, so the peer can start

# values of FifoCtl.cons_sleeping / prod_sleeping: how the side that set the flag sleeps
cdef enum:
    SLEEP_POLL = 1            # in poll() on the pairs' sockets (it waits on several links)
    SLEEP_FUTEX = 2           # in a futex wait on that flag (it waits on this pair alone)

cdef struct FifoCtl:          # one direction's control block, every field on its own cache line
    uint64_t head
    char _p0[56]
    uint64_t tail
    char _p1[56]
    uint32_t cons_sleeping
    char _p2[60]
    uint32_t prod_sleeping
    char _p3[60]

cdef struct Line:             # one 64-byte message of the one-line channel (oneline.pxd)
    uint64_t flag             # epoch << 48 | message number (1, 2, ...), stored last
    uint64_t check            # the call's header, condensed (oneline.pxd: line_check)
    char data[LINE_PAYLOAD]


cdef struct Fifo:             # this side's view of the pair
    FifoCtl* tx_ctl
    char* tx_data
    FifoCtl* rx_ctl
    char* rx_data
    uint64_t cap
    uint64_t mask
    uint64_t tx_head          # private copies of the shared counters
    uint64_t tx_tail_c
    uint64_t tx_pub
    uint64_t rx_tail
    uint64_t rx_head_c
    uint64_t rx_rel
    int bell                  # the pair's socket: doorbell bytes for a peer asleep in poll()
    Line* ln_tx               # the one-line channel (oneline.pxd): the ring this side writes ...
    Line* ln_rx               # ... and the one it reads
    uint64_t* ln_tx_ack       # messages the peer has consumed from ln_tx (it writes this word) ...
    uint64_t* ln_rx_ack       # ... and this side from ln_rx (this side writes it)
    uint64_t ln_epoch         # this pair's epoch, in the flag word's top 16 bits (never 0)
    uint64_t ln_sent          # messages sent / consumed (private)
    uint64_t ln_got
    uint64_t ln_ack_c         # the last ln_tx_ack read
    bint ln_rx_wait           # a one-line receive / send is waiting (what shm_arm checks for)
    bint ln_tx_wait


cdef inline void fifo_map(Fifo* F, char* base, size_t cap, bint low, int bell,
                          uint64_t epoch) noexcept nogil:
    """Take up this side of the FIFO pair at base (laid out as above), continuing where the
    counters stand; epoch (1..65535, the same on both sides): the one-line channel's."""
    cdef FifoCtl* c0 = <FifoCtl*>base
    cdef FifoCtl* c1 = <FifoCtl*>(base + sizeof(FifoCtl))
    cdef char* d0 = base + FIFO_CTL
    cdef char* d1 = d0 + cap
    F.cap = cap
    F.mask = cap - 1
    F.bell = bell
    if low:
        F.tx_ctl, F.tx_data, F.rx_ctl, F.rx_data = c0, d0, c1, d1
    else:
        F.tx_ctl, F.tx_data, F.rx_ctl, F.rx_data = c1, d1, c0, d0
    F.tx_head = F.tx_ctl.head
    F.tx_pub = F.tx_head
    F.tx_tail_c = F.tx_ctl.tail
    F.rx_tail = F.rx_ctl.tail
    F.rx_rel = F.rx_tail
    F.rx_head_c = F.rx_ctl.head
    cdef Line* r0 = <Line*>(base + LINE_RINGS)
    cdef Line* r1 = r0 + LINE_SLOTS
    cdef uint64_t* a0 = <uint64_t*>(base + LINE_ACKS)
    cdef uint64_t* a1 = <uint64_t*>(base + LINE_ACKS + 64)
    if low:
        F.ln_tx, F.ln_rx, F.ln_tx_ack, F.ln_rx_ack = r0, r1, a0, a1
    else:
        F.ln_tx, F.ln_rx, F.ln_tx_ack, F.ln_rx_ack = r1, r0, a1, a0
    F.ln_epoch = epoch << 48
    F.ln_ack_c = F.ln_tx_ack[0]
    F.ln_sent = F.ln_ack_c
    F.ln_got = F.ln_rx_ack[0]
    F.ln_rx_wait = False
    F.ln_tx_wait = False


cdef inline void fifo_doorbell(Fifo* F) noexcept nogil:
    cdef char b = 1
    c_send(F.bell, &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL)   # EAGAIN: plenty of doorbells already queued


# Why a futex next to the doorbell: a byte on a socket (or pipe) is a "sync" wake-up for the Linux
# scheduler, which then moves the sleeper onto the waker's CPU whenever the waker is the only task there.
# Two ranks that spin then share one core while the other idles, and each later wait is slower, sleeps
# again and re-pairs them (measured: 128 KiB scatter_allgather broadcasts 75 -> 700 us per call after
# one sleep). A futex wake is not "sync": the sleeper stays on its own, idle, CPU.
cdef inline void fifo_wake_peer(Fifo* F) noexcept nogil:
    """The peer sleeps on this pair (it set one of its two flags): clear both, then wake it the way it
    sleeps. Clearing both lets a futex sleeper wait on either flag without missing the other's wake."""
    cdef uint32_t how = hc_xchg32(&F.tx_ctl.cons_sleeping, 0) | hc_xchg32(&F.rx_ctl.prod_sleeping, 0)
    if how & SLEEP_FUTEX:
        hc_futex_wake(&F.tx_ctl.cons_sleeping)
        hc_futex_wake(&F.rx_ctl.prod_sleeping)
    if how & SLEEP_POLL:
        fifo_doorbell(F)


cdef inline size_t fifo_space(Fifo* F, size_t want) noexcept nogil:
    cdef uint64_t space = F.cap - (F.tx_head - F.tx_tail_c)
    if space < want:
        F.tx_tail_c = hc_load_acq(&F.tx_ctl.tail)
        space = F.cap - (F.tx_head - F.tx_tail_c)
    return space

cdef inline size_t fifo_avail(Fifo* F, size_t want) noexcept nogil:
    cdef uint64_t avail = F.rx_head_c - F.rx_tail
    if avail < want:
        F.rx_head_c = hc_load_acq(&F.rx_ctl.head)
        avail = F.rx_head_c - F.rx_tail
    return avail

cdef inline size_t fifo_write(Fifo* F, const char* src, size_t n) noexcept nogil:
    """Copy up to n bytes into the FIFO (unpublished until fifo_publish). src NULL: skip (padding)."""
    cdef size_t w = fifo_space(F, n)
    cdef size_t off, first
    if w > n:
        w = n
    if w == 0:
        return 0
    if src != NULL:
        off = F.tx_head & F.mask
        first = F.cap - off
        if first >= w:
            copy_bytes(F.tx_data + off, src, w, 0)
        else:
            copy_bytes(F.tx_data + off, src, first, 0)
            copy_bytes(F.tx_data, src + first, w - first, 0)
    F.tx_head += w
    return w

cdef inline void fifo_publish(Fifo* F) noexcept nogil:
    if F.tx_head == F.tx_pub:
        return
    F.tx_pub = F.tx_head
    hc_store_sc(&F.tx_ctl.head, F.tx_head)
    if hc_load32_sc(&F.tx_ctl.cons_sleeping):
        fifo_wake_peer(F)

cdef inline void fifo_release(Fifo* F) noexcept nogil:
    if F.rx_tail == F.rx_rel:
        return
    F.rx_rel = F.rx_tail
    hc_store_sc(&F.rx_ctl.tail, F.rx_tail)
    if hc_load32_sc(&F.rx_ctl.prod_sleeping):
        fifo_wake_peer(F)

cdef inline size_t fifo_read(Fifo* F, char* dst, size_t n, bint streaming) noexcept nogil:
    """Copy up to n bytes out of the FIFO (released by fifo_release, or here if >= RELEASE_EARLY).
    dst NULL: skip (padding)."""
    cdef size_t r = fifo_avail(F, n)
    cdef size_t off, first
    if r > n:
        r = n
    if r == 0:
        return 0
    if dst != NULL:
        off = F.rx_tail & F.mask
        first = F.cap - off
        if first >= r:
            copy_bytes(dst, F.rx_data + off, r, streaming)
        else:
            copy_bytes(dst, F.rx_data + off, first, streaming)
            copy_bytes(dst + first, F.rx_data, r - first, streaming)
    F.rx_tail += r
    if r >= RELEASE_EARLY:
        fifo_release(F)
    return r

cdef inline size_t fifo_read_reduce(Fifo* F, char* dst, const char* loc, size_t n, reduce_fn fn,
                                    size_t esize, bint swap, bint streaming) noexcept nogil:
    """dst = loc OP fifo for up to n bytes (whole elements; FIFO offsets stay element-aligned)."""
    cdef size_t r = fifo_avail(F, n)
    cdef size_t off, first
    if r > n:
        r = n
    r -= r % esize
    if r == 0:
        return 0
    off = F.rx_tail & F.mask
    first = F.cap - off
    if first >= r:
        reduce_ordered(fn, dst, loc, F.rx_data + off, r // esize, swap, streaming)
    else:
        reduce_ordered(fn, dst, loc, F.rx_data + off, first // esize, swap, streaming)
        reduce_ordered(fn, dst + first, loc + first, F.rx_data, (r - first) // esize, swap, streaming)
    F.rx_tail += r
    if r >= RELEASE_EARLY:
        fifo_release(F)
    return r
