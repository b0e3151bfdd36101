# The nogil collective engine: per-peer Links, byte Streams over them, the spin-yield-block waiting
# policy, and the collective schedules that drive Streams. Algorithm modules cimport this to build
# further schedules on the same primitives.
from libc.stdint cimport uint64_t, uint32_t, uint8_t
from hetccl._native.link cimport Link
from hetccl._native.reduce cimport reduce_fn
from hetccl._native.codes cimport dtype_size
from hetccl._native.c2c cimport C2CPeer
from hetccl._native.life cimport HcLife

cdef struct Seg:
    char* buf            # send: source; recv: destination
    const char* loc      # recv: local operand of the reduction (NULL: plain copy)
    size_t len
    long divide          # recv: divide each reduced piece by this (AVG finishing step); 0 = no
    bint fwd             # send: filled by the receive stream; recv: also forward into it (shm->shm)
    int dep              # send: index of the receive segment this one forwards (-1: none)
    char* copy           # send: also copy the sent bytes here (allgather's own block), or NULL

cdef struct Stream

cdef struct Stream:
    Link* link
    Seg* segs
    int nseg
    int cur
    size_t off           # bytes done in segs[cur]
    size_t pos           # payload bytes done
    size_t total         # payload bytes in all segs
    uint8_t hdr[32]      # send: header to send first; recv: header received
    uint8_t want[32]     # recv: header expected
    int hdr_done
    int pad              # shm: bytes of padding after the payload (keeps FIFO offsets 8-aligned)
    int pad_done
    reduce_fn fn
    int dtype
    size_t esize
    bint streaming
    bint done
    bint waiting         # last progress call stopped for want of data/room on a link (not a dependency)
    Stream* fwd          # recv: the send stream that forwarded segments feed (shm to shm only)
    Stream* dep          # send: the receive stream that segments' dep indices refer to
    size_t limit         # payload bytes this stream may move for now ((size_t)-1: no limit)
    bint swap            # recv: the peer's operand goes first (it has the lower rank)

cdef struct Idle:
    double since         # when the current idle period began (0: not idle)
    int iters
    double reaped        # idle time at the last look for dead peers
    Stream* all[2]       # every stream of the step (waiting or not)

cdef inline void seg(Seg* g, char* buf, const char* loc, size_t n, int dep) noexcept nogil:
    """Fill a segment: buf/loc/len, the receive segment it depends on (dep, -1: none), no extras."""
    g.buf = buf
    g.loc = loc
    g.len = n
    g.divide = 0
    g.fwd = False
    g.dep = dep
    g.copy = NULL


cdef inline size_t slice_len(size_t blen, size_t off, size_t sl) noexcept nogil:
    """Length of the slice starting at off of a block of blen bytes (0 past its end)."""
    if off >= blen:
        return 0
    return sl if blen - off > sl else blen - off


cdef inline void even_blocks(size_t count, int n, size_t es, size_t* boff, size_t* blen) noexcept nogil:
    """Split count elements into n blocks as evenly as possible (the first count % n get one more);
    offsets and lengths in bytes."""
    cdef size_t base = count // n, rem = count % n
    cdef int b
    for b in range(n):
        boff[b] = (b * base + (b if <size_t>b < rem else rem)) * es
        blen[b] = (base + (1 if <size_t>b < rem else 0)) * es


cdef class Engine:
    cdef readonly int rank
    cdef readonly int size
    cdef Link* links
    cdef uint32_t seq
    cdef public double spin_s
    cdef public double yield_s
    cdef public size_t nt_threshold
    cdef public size_t chunk
    cdef bint broken
    cdef int err_peer
    cdef uint8_t err_got[32]
    cdef uint8_t err_want[32]
    cdef object pending_exc
    cdef list segments
    cdef char* scratch_buf
    cdef size_t scratch_len
    cdef public bint stream_out     # set per call: outputs big enough for streaming stores
    cdef C2CPeer* c2c               # per peer: c2c control slots / windows (mode C2C_OFF: none)
    cdef uint32_t c2c_epoch         # c2c syncs passed (the same on every rank of the communicator)
    cdef uint32_t c2c_round         # window mode: rounds done (picks the window half to use)
    cdef HcLife life                # interrupt word, in-use counter, eventfd (life.pxd)
    cdef int state                  # ST_OPEN, ST_CLOSING, ST_RELEASED or ST_LEAKED (close())
    cdef list kept                  # objects close() closes once no schedule can touch them

    # Every entry point that runs a schedule brackets it: begin() (counts the entry, raises if the
    # engine was interrupted or broken, takes a sequence number) ... end() (leaves, raises rc's error),
    # or leave() and its own error. Nothing between the two may raise.
    cdef int begin(self, str what, size_t out_bytes) except -1
    cdef int end(self, int rc, str what, double timeout) except -1
    cdef void leave(self) noexcept nogil
    cdef int interrupt_c(self, int reason, int peer) noexcept nogil
    cdef bint interrupted(self) noexcept nogil
    cdef raise_interrupted(self, uint32_t w, str what)

    cdef void stream_init(self, Stream* s, int peer, Seg* segs, int nseg, int coll, int dtype,
                          int op, int phase, uint64_t count, size_t esize, bint is_send) noexcept nogil
    cdef void skip_empty(self, Stream* s) noexcept nogil
    cdef long send_progress(self, Stream* s) noexcept nogil
    cdef long recv_progress(self, Stream* s) noexcept nogil
    cdef int idle(self, Stream** ss, int n, Idle* st, double deadline) noexcept nogil
    cdef int block(self, Stream** ss, int n, double deadline) noexcept nogil
    cdef int reap(self, Stream** all, int n) noexcept nogil
    cdef int run2(self, Stream* snd, Stream* rcv, double deadline) noexcept nogil
    cdef int run_inplace(self, Stream* snd, Stream* rcv, double deadline) noexcept nogil
    cdef size_t slice_bytes(self, int prev, int nxt, size_t es) noexcept nogil
    cdef int check_signals(self) noexcept nogil
    cdef int fail(self, Stream* s, int rc) noexcept nogil
    cdef void note_waiting(self, Stream* snd, Stream* rcv) noexcept nogil
    cdef raise_error(self, int rc, str what, double timeout)
    cdef check_usable(self)
    cdef int run_allreduce(self, Py_buffer* sv, Py_buffer* rv, bint inplace, int dtype, int op, int algo,
                           double timeout) except -1
    cdef int run_allgather(self, Py_buffer* sv, Py_buffer* rv, int dtype, int algo, double timeout) except -1
    cdef int exchange(self, int peer, char* src, char* dst, const char* loc, size_t nbytes,
                      size_t count, int dtype, int op, int phase, bint do_send, bint do_recv,
                      long divide, double deadline) noexcept nogil
    cdef int allreduce_ring(self, char* sbuf, char* rbuf, size_t count, int dtype, int op,
                            double deadline) noexcept nogil
    cdef int allreduce_rd(self, char* sbuf, char* rbuf, size_t count, int dtype, int op,
                          double deadline) noexcept nogil
    cdef int allgather_ring(self, char* sbuf, char* rbuf, size_t nb, int dtype, double deadline) noexcept nogil
    cdef int ring_allgatherv(self, char* rbuf, size_t* boff, size_t* blen, const char* own, int dtype,
                             uint64_t count, int coll, int phase, double dl) noexcept nogil
    cdef int allgather_rd(self, char* sbuf, char* rbuf, size_t nb, int dtype, double deadline) noexcept nogil
    cdef size_t forward_piece(self, Stream* s, Seg* g, size_t n) noexcept nogil
    cdef char* scratch(self, size_t n) noexcept nogil
    cdef bint can_fuse(self, int to, int frm) noexcept nogil
    cdef int xfer(self, int to, Seg* ssegs, int ns, int frm, Seg* rsegs, int nr, int coll, int dtype,
                  int op, int phase, uint64_t count, bint fused, double deadline) noexcept nogil
