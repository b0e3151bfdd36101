# Link kind "tcp": a connected, authenticated, non-blocking socket. Received bytes that are reduced
# go through a staging buffer (whole elements are reduced, a split one is carried over).
from libc.stdint cimport uint32_t
from libc.stdlib cimport malloc, free
from libc.string cimport memmove, memset
from hetccl._native.link cimport Link, LinkKind, Stream, E_PEER_LOST, ssize_t
from hetccl._native.posix_wait cimport pollfd, poll, POLLIN, POLLOUT
from hetccl._native.kernels cimport reduce_fn, reduce_ordered
from hetccl._native.stream cimport send_walk, recv_walk, no_forward, no_flush

cdef extern from "<sys/socket.h>" nogil:
    ssize_t tcp_send "send"(int fd, const void* buf, size_t n, int flags)
    ssize_t tcp_recv "recv"(int fd, void* buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL

cdef extern from "<errno.h>" nogil:
    int errno
    int EAGAIN
    int EWOULDBLOCK
    int EINTR


cdef inline ssize_t tcp_write(Link* L, const char* src, size_t n) noexcept nogil:
    cdef ssize_t w = tcp_send(L.fd, src, n, MSG_DONTWAIT | MSG_NOSIGNAL)
    if w >= 0:
        return w
    if errno == EAGAIN or errno == EWOULDBLOCK or errno == EINTR:
        return 0
    L.os_errno = errno
    L.closed = 1
    return E_PEER_LOST

cdef inline ssize_t tcp_read(Link* L, char* dst, size_t n) noexcept nogil:
    cdef ssize_t r = tcp_recv(L.fd, dst, n, MSG_DONTWAIT)
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

cdef inline ssize_t tcp_read_into(Link* L, char* dst, size_t n, bint streaming) noexcept nogil:
    return tcp_read(L, dst, n)

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
    reduce_ordered(fn, dst, loc, L.stage, whole // esize, swap, streaming)
    L.stage_len -= whole
    if L.stage_len:
        memmove(L.stage, L.stage + whole, L.stage_len)
    return whole


cdef inline long tcp_send_progress(Stream* s) noexcept nogil:
    return send_walk(s, tcp_write, no_flush)

cdef inline long tcp_recv_progress(Stream* s) noexcept nogil:
    return recv_walk(s, tcp_read_into, tcp_read_reduce, no_flush, no_forward, no_flush)


cdef inline bint tcp_arm(Link* L, bint rx, size_t need, uint32_t how, pollfd* f,
                         uint32_t** word) noexcept nogil:
    f.fd = L.fd
    f.events = POLLIN if rx else POLLOUT
    return False

cdef inline void tcp_disarm(Link* L, bint rx) noexcept nogil:
    pass

cdef inline ssize_t tcp_read_now(Link* L, char* dst, size_t n) noexcept nogil:
    cdef char junk[4096]
    if dst == NULL:
        return tcp_read(L, junk, n if n < 4096 else 4096)
    return tcp_read(L, dst, n)

cdef inline bint tcp_ready(Link* L, bint rx, bint tx) noexcept nogil:
    cdef pollfd f
    f.fd = L.fd
    f.events = (POLLIN if rx else 0) | (POLLOUT if tx else 0)
    f.revents = 0
    return poll(&f, 1, 0) > 0


cdef inline object tcp_attach(Link* L, tuple args, bint engine):
    """args: () or (stage_bytes,): the staging buffer of receive-and-reduce (default 1 MiB; none
    for a PairLink, which never reduces)."""
    cdef size_t stage_bytes = args[0] if args else (1 << 20 if engine else 0)
    if stage_bytes:
        L.stage = <char*>malloc(stage_bytes)
        if L.stage == NULL:
            raise MemoryError()
        memset(L.stage, 0, stage_bytes)   # pre-fault
    L.stage_cap = stage_bytes
    L.stage_len = 0
    return None

cdef inline void tcp_close(Link* L) noexcept nogil:
    if L.stage != NULL:
        free(L.stage)
        L.stage = NULL
        L.stage_cap = 0


cdef inline void tcp_kind(LinkKind* k) noexcept:
    k.name = b"tcp"
    k.align = 1
    k.fuses = False
    k.futex = False
    k.send = tcp_send_progress
    k.recv = tcp_recv_progress
    k.arm = tcp_arm
    k.disarm = tcp_disarm
    k.woken = NULL
    k.write = tcp_write
    k.read = tcp_read_now
    k.ready = tcp_ready
    k.attach = tcp_attach
    k.close = tcp_close
