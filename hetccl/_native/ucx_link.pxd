# The engine's byte-stream link over UCX (link kind LK_UCX): a UCP *stream* endpoint per pair, so
# the engine's streams map one to one onto UCX's ordered byte stream. Like tcp_write/tcp_read in
# link.pxd every function moves what it can now and returns at once; waiting stays the engine's job
# (ucx_prepare_sleep arms the worker so block() can poll its event fd).
#
# Send: one ucp_stream_send_nbx at a time straight from the caller's buffer; its bytes are reported
# as written only once UCX is done with the buffer (the engine then may overwrite it), so nothing
# is staged. Receive: ucp_stream_recv_data_nb hands over UCX's own chunk, which is copied (or
# reduced) straight into place and released when used up.
from libc.string cimport memcpy
from hetccl._native.link cimport Link, E_PEER_LOST, E_OS, tcp_write, tcp_read, tcp_read_reduce, reduce2, LK_UCX
from hetccl._native.reduce cimport reduce_fn, copy_bytes
from hetccl._native.ucx cimport (UcxLink, ucp_request_param_t, ucs_status_t, ucs_status_ptr_t,
                                 ucs_ptr_is_ptr, UCS_OK, UCS_INPROGRESS, UCS_ERR_BUSY)
cdef extern from "<sys/types.h>" nogil:
    ctypedef long ssize_t


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
            reduce2(fn, dst, loc, U.carry, 1, swap, False)
            return <ssize_t>esize
        k = n if n < <size_t>a else <size_t>a
        whole = k - k % esize
        if whole:
            reduce2(fn, dst, loc, U.rx_data + U.rx_off, whole // esize, swap, streaming)
            ucx_consumed(U, whole)
            return <ssize_t>whole
        if k == 0:
            return 0
        memcpy(U.carry, U.rx_data + U.rx_off, k)   # the chunk ends inside an element
        U.carry_len = k
        ucx_consumed(U, k)

cdef inline bint ucx_prepare_sleep(Link* L, bint rx) noexcept nogil:
    """Before block() polls the worker's event fd: True if there is work already (a chunk waiting,
    the send finished, or events pending), else the worker is armed and the fd may be polled."""
    cdef UcxLink* U = <UcxLink*>L.ucx
    if U.state.failed:
        L.closed = 1
        return True
    if rx:
        if ucx_chunk(L, U) != 0:
            return True
    elif U.tx_req != NULL and U.api.request_check_status(U.tx_req) != UCS_INPROGRESS:
        return True
    return U.api.worker_arm(U.worker) == UCS_ERR_BUSY


# dispatch for the engine: a socket-like link is either TCP or a UCP stream
cdef inline ssize_t sock_write(Link* L, const char* src, size_t n) noexcept nogil:
    return ucx_write(L, src, n) if L.kind == LK_UCX else tcp_write(L, src, n)

cdef inline ssize_t sock_read(Link* L, char* dst, size_t n) noexcept nogil:
    return ucx_read(L, dst, n) if L.kind == LK_UCX else tcp_read(L, dst, n)

cdef inline ssize_t sock_read_reduce(Link* L, char* dst, const char* loc, size_t n, reduce_fn fn,
                                     size_t esize, bint swap, bint streaming) noexcept nogil:
    if L.kind == LK_UCX:
        return ucx_read_reduce(L, dst, loc, n, fn, esize, swap, streaming)
    return tcp_read_reduce(L, dst, loc, n, fn, esize, swap, streaming)
