# One peer as the engine sees it (a Link), the segments and streams that move over links, and the
# table of functions that makes a link kind (LinkKind).
#
# A link kind (link_shm.pxd, link_tcp.pxd, link_rdma.pxd, link_c2c.pxd; registered in links.pyx) is
# how bytes reach one peer: shared-memory FIFOs, a TCP socket, a UCP stream. The engine never asks
# which kind a link is: it calls the link's table. Every function of a table moves what it can *now*
# and returns at once; waiting is the engine's job (progress.pyx: spin, yield, then sleep the way
# the kinds' `arm` functions prepared).
from libc.stdint cimport uint64_t, uint32_t, uint8_t
from hetccl._native.c2c cimport C2CPeer
from hetccl._native.fifo cimport Fifo
from hetccl._native.posix_wait cimport pollfd
from hetccl._native.kernels cimport reduce_fn, dual_fn

cdef extern from "<sys/types.h>" nogil:
    ctypedef long ssize_t

# error codes of link, stream and schedule functions (negative return values; failure.pyx names them)
cdef enum:
    E_TIMEOUT = -1
    E_PEER_LOST = -2
    E_MISMATCH = -3
    E_INTERRUPTED = -4
    E_OS = -5
    E_CANCELLED = -6          # the engine was interrupted (abort, close, revoke, peer declared lost)
    E_BAD_ADDRESS = -7        # a live peer published an address not mapped in its process (EFAULT)

cdef struct Link
cdef struct Stream
cdef struct Seg

cdef struct LinkKind:
    int code                  # its index in links.pyx's registry (what Python's links.KINDS names)
    const char* name          # the transport name it serves: "shm", "tcp", "rdma", "c2c"
    size_t align              # stream payloads are padded to a multiple of this (1: no padding)
    bint fuses                # a byte FIFO in shared memory: relays go FIFO to FIFO between two such
    bint futex                # a lone waiter on one such link sleeps on a futex word, not in poll()
    size_t line_bytes         # streams this small may travel as one line (oneline.pxd; 0: never)

    # moving bytes (the engine's streams)
    long (*send)(Stream* s) noexcept nogil          # send progress: what can move now; < 0: E_*
    long (*recv)(Stream* s) noexcept nogil          # receive progress (header checked: E_MISMATCH)

    # waiting (progress.pyx): arm says how a sleeper on L learns that it can go on: it fills f
    # (fd and events to poll) and, for futex kinds, points *word at the futex word, and returns True
    # when there is work already (the sleep is skipped). rx: wait for data; else for `need` bytes
    # of room. disarm undoes arm. woken: f polled with these revents (drain doorbells); may be NULL.
    bint (*arm)(Link* L, bint rx, size_t need, uint32_t how, pollfd* f, uint32_t** word) noexcept nogil
    void (*disarm)(Link* L, bint rx) noexcept nogil
    void (*woken)(Link* L, short revents) noexcept nogil

    # raw bytes, for the point-to-point links (pair.pyx): published / released at once
    ssize_t (*write)(Link* L, const char* src, size_t n) noexcept nogil
    ssize_t (*read)(Link* L, char* dst, size_t n) noexcept nogil           # dst NULL: discard
    bint (*ready)(Link* L, bint rx, bint tx) noexcept nogil                # could either move now

    # set-up and tear-down: attach takes the kind's arguments (docs/design.md) and returns what the
    # engine keeps and closes with its links (a segment, a UCX handle) or None; engine: for an
    # Engine (True) or a point-to-point PairLink (False: raw bytes only, e.g. no staging to reduce
    # from); close frees what attach allocated natively
    object (*attach)(Link* L, tuple args, bint engine)
    void (*close)(Link* L) noexcept nogil

cdef struct Link:
    int peer
    const LinkKind* kind      # never NULL: links.pyx's "none" kind when not linked (this rank, or closed)
    int fd                    # the pair's socket: data (tcp), doorbells (shm), the peer's death (all)
    int closed                # the peer closed its end (EOF / HUP seen)
    int os_errno
    size_t window             # bytes the peer can hold unread (a FIFO); the ring slices by it; 0: no bound
    Fifo fifo                 # shm, c2c: the pair's FIFOs
    char* stage               # tcp: staging for receive-and-reduce (whole elements are reduced)
    size_t stage_cap
    size_t stage_len
    void* ucx                 # rdma: its UcxLink (ucx.pxd)
    C2CPeer c2c               # c2c: the single-copy control slots and windows (mode C2C_OFF otherwise)

cdef struct Seg:
    char* buf                 # send: source; recv: destination
    const char* loc           # recv: local operand of the reduction (NULL: plain copy)
    size_t len
    long divide               # recv: divide each reduced piece by this (AVG finishing step); 0 = no
    bint fwd                  # send: filled by the receive stream; recv: also forward into it (FIFO to FIFO)
    int dep                   # send: index of the receive segment this one forwards (-1: none)
    char* copy                # send: also copy the sent bytes here (allgather's own block), or NULL

cdef struct Stream:
    Link* link
    Seg* segs
    int nseg
    int cur
    size_t off                # bytes done in segs[cur]
    size_t pos                # payload bytes done
    size_t total              # payload bytes in all segs
    size_t chunk              # most bytes one link call moves (so sends and receives interleave)
    uint8_t hdr[32]           # send: header to send first; recv: header received
    uint8_t want[32]          # recv: header expected
    int hdr_done
    int pad                   # bytes of padding after the payload (LinkKind.align)
    int pad_done
    reduce_fn fn
    dual_fn fn2               # recv with fwd: the one-pass relay kernel (get_reduce_forward), or NULL
    int dtype
    size_t esize
    bint streaming
    bint done
    bint waiting              # last progress call stopped for want of data/room on a link (not a dependency)
    Stream* fwd               # recv: the send stream that forwarded segments feed (fusing kinds only)
    bint pair                 # recv with fwd: a plain receive and a plain send of own bytes may move
                              # in one pass (link_shm.pxd: shm_pair)
    Stream* dep               # send: the receive stream that segments' dep indices refer to
    size_t limit              # payload bytes this stream may move for now ((size_t)-1: no limit)
    bint swap                 # recv: the peer's operand goes first (it has the lower rank)
    bint line                 # one line, not the FIFO (oneline.pxd: line_pick; line_bytes kinds only)
