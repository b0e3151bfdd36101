# Link kind "rdma": a UCP *stream* endpoint per pair, so the engine's streams map one to one onto
# UCX's ordered byte stream. Like the other kinds every function moves what it can now and returns at
# once; before the engine sleeps, rdma_arm arms the worker so that poll() can wait on its event fd.
# The pair's socket only reports the peer's death.
#
# Send: one ucp_stream_send_nbx at a time straight from the caller's buffer; its bytes are reported
# as written only once UCX is done with the buffer (the engine then may overwrite it), so nothing
# is staged. Receive: ucp_stream_recv_data_nb hands over UCX's own chunk, which is copied (or
# reduced) straight into place and released when used up.
#
# Only the structs of ucx.pxd are used here: the ucx module itself (which dlopen()s UCX) is loaded
# by the rdma transport, not with the engine.
from libc.stdint cimport uint32_t, uintptr_t
from libc.string cimport memcpy
from hetccl._native.link cimport Link, LinkKind, Stream, E_PEER_LOST, E_OS, ssize_t
from hetccl._native.posix_wait cimport pollfd, POLLIN
from hetccl._native.kernels cimport reduce_fn, reduce_ordered
from hetccl._native.stream cimport send_walk, recv_walk, no_forward, no_flush
from hetccl._native.ucx cimport (UcxLink, ucp_request_param_t, ucs_status_t, ucs_status_ptr_t,
                                 ucs_ptr_is_ptr, UCS_OK, UCS_INPROGRESS, UCS_ERR_BUSY)


cdef inline ssize_t ucx_lost(Link* L) noexcept nogil:
    L.closed = 1
    return E_PEER_LOST

cdef inline ssize_t ucx_write(Link* L, const char* src, size_t n) noexcept nogil:
    cdef UcxLink* U = <UcxLink*>L.ucx
    cdef ucp_request_param_t prm
    cdef ucs_status_ptr_t p
    cdef ucs_status_t st
    if U.state.failed:
        return ucx_lost(L)
    if U.tx_req == NULL:
        if n == 0:
            return 0
        prm.op_attr_mask = 0
        p = U.api.stream_send_nbx(U.ep, src, n, &prm)
        if p == NULL:
            return <ssize_t>n                # completed at once: the buffer is free again
        if not ucs_ptr_is_ptr(p):
            return ucx_lost(L)
        U.tx_req = p
        U.tx_src = src
        U.tx_len = n
    elif src != U.tx_src or n < U.tx_len:
        return E_OS                          # the engine re-offers the same bytes until reported
    st = U.api.request_check_status(U.tx_req)
    if st == UCS_INPROGRESS:
        U.api.worker_progress(U.worker)
        st = U.api.request_check_status(U.tx_req)
        if st == UCS_INPROGRESS:
            return 0
    U.api.request_free(U.tx_req)
    U.tx_req = NULL
    if st != UCS_OK:
        return ucx_lost(L)
    return <ssize_t>U.tx_len

cdef inline ssize_t ucx_chunk(Link* L, UcxLink* U) noexcept nogil:
    """Make sure a received chunk is at hand: >0 bytes left in it, 0 none yet, <0 peer lost."""
    cdef size_t length = 0
    cdef ucs_status_ptr_t p
    if U.rx_data != NULL:
        return <ssize_t>(U.rx_len - U.rx_off)
    p = U.api.stream_recv_data_nb(U.ep, &length)
    if p == NULL:
        U.api.worker_progress(U.worker)
        p = U.api.stream_recv_data_nb(U.ep, &length)
    if p == NULL:
        return ucx_lost(L) if U.state.failed else 0
    if not ucs_ptr_is_ptr(p):
        return ucx_lost(L)
    U.rx_data = <char*>p
    U.rx_len = length
    U.rx_off = 0
    return <ssize_t>length

cdef inline void ucx_consumed(UcxLink* U, size_t k) noexcept nogil:
    U.rx_off += k
    if U.rx_off >= U.rx_len:
        U.api.stream_data_release(U.ep, U.rx_data)
        U.rx_data = NULL

cdef inline ssize_t ucx_read(Link* L, char* dst, size_t n) noexcept nogil:
    cdef UcxLink* U = <UcxLink*>L.ucx
    cdef ssize_t a = ucx_chunk(L, U)
    cdef size_t k
    if a <= 0 or n == 0:
        return a if a < 0 else 0
    k = n if n < <size_t>a else <size_t>a
    memcpy(dst, U.rx_data + U.rx_off, k)
    ucx_consumed(U, k)
    return <ssize_t>k

cdef inline ssize_t ucx_read_reduce(Link* L, char* dst, const char* loc, size_t n, reduce_fn fn,
                                    size_t esize, bint swap, bint streaming) noexcept nogil:
    """dst = loc OP incoming for whole elements, reduced straight out of UCX's chunk; an element
    split across two chunks is assembled in U.carry first."""
    cdef UcxLink* U = <UcxLink*>L.ucx
    cdef ssize_t a
    cdef size_t k, whole
    while True:
        a = ucx_chunk(L, U)
        if a <= 0:
            return a
        if U.carry_len:                      # finish the split element first
            k = esize - U.carry_len
            if k > <size_t>a:
                k = <size_t>a
            memcpy(U.carry + U.carry_len, U.rx_data + U.rx_off, k)
            U.carry_len += k
            ucx_consumed(U, k)
            if U.carry_len < esize:
                continue
            U.carry_len = 0
            reduce_ordered(fn, dst, loc, U.carry, 1, swap, False)
            return <ssize_t>esize
        k = n if n < <size_t>a else <size_t>a
        whole = k - k % esize
        if whole:
            reduce_ordered(fn, dst, loc, U.rx_data + U.rx_off, whole // esize, swap, streaming)
            ucx_consumed(U, whole)
            return <ssize_t>whole
        if k == 0:
            return 0
        memcpy(U.carry, U.rx_data + U.rx_off, k)   # the chunk ends inside an element
        U.carry_len = k
        ucx_consumed(U, k)

cdef inline ssize_t ucx_read_into(Link* L, char* dst, size_t n, bint streaming) noexcept nogil:
    return ucx_read(L, dst, n)

cdef inline long rdma_send(Stream* s) noexcept nogil:
    return send_walk(s, ucx_write, no_flush)

cdef inline long rdma_recv(Stream* s) noexcept nogil:
    return recv_walk(s, ucx_read_into, ucx_read_reduce, no_flush, no_forward, no_flush)


cdef inline bint rdma_arm(Link* L, bint rx, size_t need, uint32_t how, pollfd* f,
                          uint32_t** word) noexcept nogil:
    """Before the engine polls the worker's event fd: True if there is work already (a chunk
    waiting, the send finished, or events pending), else the worker is armed."""
    cdef UcxLink* U = <UcxLink*>L.ucx
    f.fd = U.efd
    f.events = POLLIN
    if U.state.failed:
        L.closed = 1
        return True
    if rx:
        if ucx_chunk(L, U) != 0:
            return True
    elif U.tx_req != NULL and U.api.request_check_status(U.tx_req) != UCS_INPROGRESS:
        return True
    return U.api.worker_arm(U.worker) == UCS_ERR_BUSY

cdef inline void rdma_disarm(Link* L, bint rx) noexcept nogil:
    pass

cdef inline ssize_t rdma_read_now(Link* L, char* dst, size_t n) noexcept nogil:
    cdef char junk[4096]
    if dst == NULL:
        return ucx_read(L, junk, n if n < 4096 else 4096)
    return ucx_read(L, dst, n)

cdef inline bint rdma_ready(Link* L, bint rx, bint tx) noexcept nogil:
    cdef UcxLink* U = <UcxLink*>L.ucx
    if rx and ucx_chunk(L, U) != 0:
        return True
    return tx and (U.tx_req == NULL or U.api.request_check_status(U.tx_req) != UCS_INPROGRESS)


cdef inline object rdma_attach(Link* L, tuple args, bint engine):
    """args: (handle,): a ucx.LinkHandle (worker and stream endpoint), kept and closed with the links."""
    handle, = args
    L.ucx = <void*><uintptr_t>handle.state_address()
    return handle

cdef inline void rdma_close(Link* L) noexcept nogil:
    pass


cdef inline void rdma_kind(LinkKind* k) noexcept:
    k.name = b"rdma"
    k.align = 1
    k.fuses = False
    k.futex = False
    k.send = rdma_send
    k.recv = rdma_recv
    k.arm = rdma_arm
    k.disarm = rdma_disarm
    k.woken = NULL
    k.write = ucx_write
    k.read = rdma_read_now
    k.ready = rdma_ready
    k.attach = rdma_attach
    k.close = rdma_close
