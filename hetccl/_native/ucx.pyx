# cython: language_level=3
"""UCX's UCP API, loaded at run time (dlopen) so that hetccl builds and installs without UCX.

Which library: ``HETCCL_UCX_LIB`` (path to libucp.so) > the ``libucx-cu12`` wheel's copy > the system's
``libucp.so.0``. Everything the rdma transport needs is here: a per-process context (tag, RMA, stream
and wakeup features), workers with an event fd, endpoints from a peer's worker address with an error
handler (a dead peer fails requests instead of hanging them), tagged send/receive, memory mapping
with packed rkeys, put/get + flush, and one nogil wait that spins a bounded time and then sleeps on
the worker's event fd (plus the pair's liveness socket) with a deadline.

Why a liveness socket: UCX notices a dead peer quickly over its tcp transport, but over shared
memory only through keepalive (tens of seconds). The pair's authenticated TCP socket closes the
moment the peer process dies, so every wait also polls it.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE, PyBUF_C_CONTIGUOUS
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint64_t, uintptr_t, uint8_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset, memcpy

from hetccl._native.posix_wait cimport pollfd, poll, POLLIN, POLLOUT, POLLHUP, POLLERR, POLLNVAL, POLLRDHUP, sched_yield
from hetccl._native.atomics cimport hc_now, hc_relax

import os as _os

from hetccl.errors import HetcclTimeout, PeerLostError, TransportError, InvalidUsage

from hetccl._native.dl cimport dlopen, dlsym, dlerror, RTLD_NOW, RTLD_LOCAL

cdef extern from "<stdio.h>" nogil:
    ctypedef struct FILE
    FILE* open_memstream(char** ptr, size_t* sizeloc)
    int fclose(FILE* f)

cdef extern from "<sys/socket.h>" nogil:
    long c_recv "recv"(int fd, void* buf, size_t n, int flags)
    int MSG_PEEK
    int MSG_DONTWAIT

cdef extern from "<errno.h>" nogil:
    int errno
    int EAGAIN
    int EINTR

cdef UcpApi _api
cdef bint _loaded = False
_lib_path = None
_load_error = None

cdef UcpApi* ucp_api() noexcept nogil:
    return &_api if _loaded else NULL

# (field of UcpApi, symbol): filled by dlsym; every one is required
_SYMBOLS = (
    "ucp_get_version_string", "ucp_config_read", "ucp_config_release", "ucp_init_version", "ucp_cleanup",
    "ucp_context_print_info", "ucp_worker_create", "ucp_worker_destroy", "ucp_worker_get_address",
    "ucp_worker_release_address", "ucp_worker_progress", "ucp_worker_get_efd", "ucp_worker_arm",
    "ucp_worker_flush_nbx", "ucp_ep_create", "ucp_ep_close_nbx", "ucp_ep_flush_nbx", "ucp_tag_send_nbx",
    "ucp_tag_recv_nbx", "ucp_tag_recv_request_test", "ucp_stream_send_nbx", "ucp_stream_recv_data_nb",
    "ucp_stream_data_release", "ucp_request_check_status", "ucp_request_cancel", "ucp_request_free",
    "ucp_mem_map", "ucp_mem_unmap", "ucp_rkey_pack", "ucp_rkey_buffer_release", "ucp_ep_rkey_unpack",
    "ucp_rkey_destroy", "ucp_put_nbx", "ucp_get_nbx", "ucs_status_string", "ucp_config_modify",
    "ucp_tag_probe_nb", "ucp_tag_msg_recv_nbx",
)


def candidate_paths():
    """Where libucp is looked for, in order (see the module docstring)."""
    out = []
    env = _os.environ.get("HETCCL_UCX_LIB")
    if env:
        return [env]
    try:
        import importlib.util
        spec = importlib.util.find_spec("libucx")
        if spec is not None and spec.origin:
            out.append(_os.path.join(_os.path.dirname(spec.origin), "lib", "libucp.so.0"))
    except (ImportError, ValueError):
        pass
    out.append("libucp.so.0")
    return out


cdef int _fill(void* h) except -1:
    cdef void** slots = <void**>&_api
    cdef void* p
    for i, name in enumerate(_SYMBOLS):
        p = dlsym(h, name.encode())
        if p == NULL:
            raise OSError(f"symbol {name} missing (UCX older than 1.15?)")
        slots[i] = p
    return 0


def load():
    """Load UCX once; True if usable. The reason it is not: ``load_error()``."""
    global _loaded, _lib_path, _load_error
    cdef void* h
    if _loaded:
        return True
    if _load_error is not None:
        return False
    errors = []
    for path in candidate_paths():
        if "/" in path and not _os.path.exists(path):
            errors.append(f"{path}: no such file")
            continue
        h = dlopen(path.encode(), RTLD_NOW | RTLD_LOCAL)
        if h == NULL:
            errors.append(f"{path}: {(<bytes>dlerror()).decode(errors='replace')}")
            continue
        try:
            _fill(h)
        except OSError as e:
            errors.append(f"{path}: {e}")
            continue
        _loaded = True
        _lib_path = path
        return True
    _load_error = ("UCX not found (" + "; ".join(errors) + "); install it with "
                   "`pip install 'hetccl[rdma]'` (the libucx-cu12 wheel) or point HETCCL_UCX_LIB "
                   "at a system libucp.so")
    return False


def load_error():
    return _load_error


def library_path():
    """The libucp that was loaded (a path, or the soname the dynamic linker resolved)."""
    return _lib_path


def version():
    if not load():
        return None
    return (<bytes>_api.get_version_string()).decode()


cdef str _status(ucs_status_t st):
    return (<bytes>_api.status_string(st)).decode(errors="replace")


cdef _check(ucs_status_t st, str what):
    if st != UCS_OK:
        raise TransportError(f"UCX {what} failed: {_status(st)}")


# ---------------------------------------------------------------------------------------- context

# hetccl's defaults for UCX settings the user has not set (UCX_<name> in the environment always wins).
# TCP_TX_SEG_SIZE: UCX's tcp transport sends every eager and rendezvous fragment as one segment of
# this size (default 8 KiB): a 4 MiB message is 512 send() calls plus as many copies into bounce
# buffers and as many progress rounds on the receiver. 64 KiB segments (the size of UCX's own receive
# segments, UCX_TCP_RX_SEG_SIZE) cut that eightfold; on loopback they raised ucx_perftest's own
# tag_bw at 1-4 MiB by 1.3-1.9x here (bench/transports_rdma.py prints perftest with and without it).
# Verbs transports do not read it. A receive segment must hold a whole send segment, so a user's
# UCX_TCP_RX_SEG_SIZE leaves the send size to UCX as well.
TUNED = {"TCP_TX_SEG_SIZE": "64K"}
_TUNED_UNLESS = {"TCP_TX_SEG_SIZE": ("TCP_RX_SEG_SIZE",)}    # set by the user: leave the setting alone


def tuned_settings():
    """The UCX settings hetccl's context applies: TUNED minus what the environment decides itself."""
    env = _os.environ
    return {k: v for k, v in TUNED.items()
            if not any(("UCX_" + x) in env for x in (k, *_TUNED_UNLESS.get(k, ())))}


cdef class Context:
    """One UCP context per process: tag matching, RMA, streams and wakeup (event fd) features."""
    cdef ucp_handle h
    cdef readonly dict settings

    def __cinit__(self):
        cdef ucp_params_t p
        cdef void* cfg = NULL
        cdef ucs_status_t st
        self.h = NULL
        if not load():
            raise TransportError(_load_error)
        memset(&p, 0, sizeof(p))
        p.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED | UCP_PARAM_FIELD_NAME
        p.features = UCP_FEATURE_TAG | UCP_FEATURE_RMA | UCP_FEATURE_STREAM | UCP_FEATURE_WAKEUP
        p.mt_workers_shared = 1            # workers of different communicators run on different threads
        p.name = b"hetccl"
        _check(_api.config_read(NULL, NULL, &cfg), "config_read")
        self.settings = tuned_settings()
        for k, v in list(self.settings.items()):
            st = _api.config_modify(cfg, k.encode(), v.encode())
            if st != UCS_OK:                # an older UCX without this setting: keep its default
                del self.settings[k]
        st = _api.init_version(1, 15, &p, cfg, &self.h)
        _api.config_release(cfg)
        _check(st, "init")

    def print_info(self):
        """ucp_context_print_info as text: the transports and devices this context uses."""
        cdef char* buf = NULL
        cdef size_t n = 0
        cdef FILE* f = open_memstream(&buf, &n)
        if f == NULL:
            return ""
        _api.context_print_info(self.h, <void*>f)
        fclose(f)
        try:
            return buf[:n].decode(errors="replace") if buf != NULL else ""
        finally:
            free(buf)

    def __dealloc__(self):
        if self.h != NULL:
            _api.cleanup(self.h)


_context = None


def context():
    """The process's UCP context (created on first use)."""
    global _context
    if _context is None:
        _context = Context()
    return _context


# ---------------------------------------------------------------------------------------- worker

cdef class Worker:
    """A UCP worker: its own progress engine and event fd. thread_safe: MULTI instead of SERIALIZED."""
    cdef ucp_handle h
    cdef readonly Context ctx
    cdef readonly int efd
    cdef readonly bytes address

    def __cinit__(self, Context ctx, bint thread_safe=True):
        cdef ucp_worker_params_t p
        cdef void* addr = NULL
        cdef size_t alen = 0
        self.h = NULL
        self.ctx = ctx
        memset(&p, 0, sizeof(p))
        p.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE | UCP_WORKER_PARAM_FIELD_EVENTS
        p.thread_mode = UCS_THREAD_MODE_MULTI if thread_safe else UCS_THREAD_MODE_SERIALIZED
        p.events = UCP_WAKEUP_RMA | UCP_WAKEUP_TAG_SEND | UCP_WAKEUP_TAG_RECV | UCP_WAKEUP_TX | UCP_WAKEUP_RX
        _check(_api.worker_create(ctx.h, &p, &self.h), "worker_create")
        _check(_api.worker_get_efd(self.h, &self.efd), "worker_get_efd")
        _check(_api.worker_get_address(self.h, &addr, &alen), "worker_get_address")
        self.address = (<char*>addr)[:alen]
        _api.worker_release_address(self.h, addr)

    def progress(self):
        with nogil:
            n = _api.worker_progress(self.h)
        return n

    cdef uintptr_t handle(self):
        return <uintptr_t>self.h

    def discard_unexpected(self, uint64_t tag, uint64_t mask, double timeout=1.0):
        """Receive and drop every message that arrived for (tag, mask) and was never received (a
        closed connection's leftovers on a shared worker), so they do not pile up in UCX's unexpected
        queue. Rendezvous messages whose sender is gone are cancelled after ``timeout``. Returns how
        many were dropped."""
        cdef ucp_tag_recv_info_t info
        cdef ucp_request_param_t prm
        cdef void* msg
        cdef void* buf
        cdef ucs_status_ptr_t p
        cdef double deadline = hc_now() + timeout
        cdef int dropped = 0
        if self.h == NULL:
            return 0
        memset(&prm, 0, sizeof(prm))
        with nogil:
            _api.worker_progress(self.h)
            while True:
                msg = _api.tag_probe_nb(self.h, tag, mask, 1, &info)
                if msg == NULL:
                    break
                buf = malloc(info.length if info.length > 0 else 1)
                p = _api.tag_msg_recv_nbx(self.h, buf, info.length, msg, &prm)
                if ucs_ptr_is_ptr(p):
                    if wait_request(self.h, self.efd, -1, NULL, p, deadline, 0.0, 0.0) != W_DONE:
                        _api.request_cancel(self.h, p)
                        while _api.request_check_status(p) == UCS_INPROGRESS and hc_now() < deadline + 1.0:
                            _api.worker_progress(self.h)
                    if _api.request_check_status(p) == UCS_INPROGRESS:
                        _api.request_free(p)     # UCX still owns buf: leave it allocated
                        dropped += 1
                        continue
                    _api.request_free(p)
                free(buf)
                dropped += 1
        return dropped

    def close(self):
        if self.h != NULL:
            _api.worker_destroy(self.h)
            self.h = NULL

    def __dealloc__(self):
        self.close()


def worker_handle(Worker w):
    """The raw ucp_worker_h (for the engine's UCX links)."""
    return <uintptr_t>w.h


# ---------------------------------------------------------------------------------------- waiting

cdef enum:
    W_DONE = 0
    W_TIMEOUT = -1
    W_LOST = -2
    W_INTERRUPTED = -4


cdef bint sock_closed(int fd) noexcept nogil:
    """The liveness socket reports EOF or an error (the peer process is gone or closed)."""
    cdef char b
    cdef long r
    if fd < 0:
        return False
    r = c_recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT)
    if r == 0:
        return True
    if r < 0:
        return not (errno == EAGAIN or errno == EINTR)
    return False


cdef int sleep_on(ucp_handle worker, int efd, int sock, double deadline) noexcept nogil:
    """Arm the worker and poll its event fd and the liveness socket (<= 100 ms). W_LOST if the socket
    closed; 0 otherwise (woken, timed out a slice, or events were already pending)."""
    cdef pollfd fds[2]
    cdef int nf = 1, ms
    if _api.worker_arm(worker) == UCS_ERR_BUSY:
        return 0
    fds[0].fd = efd
    fds[0].events = POLLIN
    fds[0].revents = 0
    if sock >= 0:
        fds[1].fd = sock
        fds[1].events = POLLIN | POLLRDHUP
        fds[1].revents = 0
        nf = 2
    ms = <int>((deadline - hc_now()) * 1000.0) + 1
    if ms > 100:
        ms = 100
    if ms < 0:
        ms = 0
    poll(fds, nf, ms)
    if nf == 2 and fds[1].revents and sock_closed(sock):
        return W_LOST
    return 0


cdef int wait_many(ucp_handle worker, int efd, int sock, EpState* eps, void** reqs, Py_ssize_t n,
                   double deadline, double spin_s, double yield_s) noexcept nogil:
    """Drive the worker until every one of reqs[0..n) completes, with the spin-then-block policy of
    every hetccl wait: spin spin_s since the worker last made progress, then sched_yield until
    spin_s + yield_s (an oversubscribed core goes to the peer), then sleep on the worker's event fd.
    Requests are checked oldest first (they finish roughly in posting order), so a window of n
    costs one status check per progress round. Returns W_DONE, W_TIMEOUT, W_LOST (peer failed or
    its socket closed) or W_INTERRUPTED (a signal is pending)."""
    cdef double now = hc_now(), idle_since = now, last_sig = now
    cdef Py_ssize_t first = 0
    cdef int rc, tries
    while True:
        while first < n and _api.request_check_status(reqs[first]) != UCS_INPROGRESS:
            first += 1
        if first == n:
            return W_DONE
        if _api.worker_progress(worker):
            idle_since = 0.0
            continue
        if eps != NULL and eps.failed:
            return W_LOST
        now = hc_now()
        if idle_since == 0.0:
            idle_since = now
        if now > deadline:
            return W_TIMEOUT
        if now - last_sig > 0.1:
            last_sig = now
            with gil:
                if PyErr_CheckSignals() != 0:
                    return W_INTERRUPTED
        if now - idle_since < spin_s:
            hc_relax()
            continue
        if now - idle_since < spin_s + yield_s:
            sched_yield()
            continue
        rc = sleep_on(worker, efd, sock, deadline)
        if rc == W_LOST:
            for tries in range(64):      # bytes already delivered still complete the requests
                _api.worker_progress(worker)
                while first < n and _api.request_check_status(reqs[first]) != UCS_INPROGRESS:
                    first += 1
                if first == n:
                    return W_DONE
            return W_LOST
        idle_since = 0.0                 # woken: spin again before the next sleep
    return W_DONE


cdef inline int wait_request(ucp_handle worker, int efd, int sock, EpState* eps, void* req, double deadline,
                             double spin_s, double yield_s) noexcept nogil:
    return wait_many(worker, efd, sock, eps, &req, 1, deadline, spin_s, yield_s)


# ---------------------------------------------------------------------------------------- endpoint

cdef void _on_ep_error(void* arg, ucp_handle ep, ucs_status_t status) noexcept nogil:
    cdef EpState* s = <EpState*>arg
    s.failed = 1
    s.status = status


cdef class Request:
    """One outstanding UCP operation on an Endpoint: a request handle (or completed at once), the
    buffer it uses (held until completion) and, for receives, the expected length."""
    cdef void* req
    cdef void* req2          # put: the flush that makes it visible
    cdef Py_buffer view
    cdef bint has_view
    cdef readonly Endpoint ep
    cdef readonly size_t nbytes
    cdef int kind            # 0 send, 1 recv, 2 put, 3 get
    cdef ucs_status_t status
    cdef bint finished

    def __cinit__(self):
        self.req = NULL
        self.req2 = NULL
        self.has_view = False
        self.finished = False
        self.status = UCS_OK

    cdef int settle(self) noexcept nogil:
        """Collect finished request handles; 1 once everything of this operation is done."""
        cdef ucs_status_t st
        cdef ucp_tag_recv_info_t info
        if self.finished:
            return 1
        if self.req != NULL:
            if self.kind == 1:
                st = _api.tag_recv_request_test(self.req, &info)
                if st == UCS_OK and info.length != self.nbytes:
                    st = UCS_ERR_MESSAGE_TRUNCATED
            else:
                st = _api.request_check_status(self.req)
            if st == UCS_INPROGRESS:
                return 0
            _api.request_free(self.req)
            self.req = NULL
            if st != UCS_OK and self.status == UCS_OK:
                self.status = st
        if self.req2 != NULL:
            st = _api.request_check_status(self.req2)
            if st == UCS_INPROGRESS:
                return 0
            _api.request_free(self.req2)
            self.req2 = NULL
            if st != UCS_OK and self.status == UCS_OK:
                self.status = st
        self.finished = True
        return 1

    cdef inline void* pending(self) noexcept nogil:
        """The UCP handle this operation still waits for (NULL once settled)."""
        return self.req if self.req != NULL else self.req2

    cdef _release(self):
        if self.has_view:
            PyBuffer_Release(&self.view)
            self.has_view = False
        self.ep._outstanding.discard(self)

    cdef _result(self):
        self._release()
        if self.status == UCS_OK:
            return self.nbytes
        if self.status == UCS_ERR_MESSAGE_TRUNCATED:
            raise InvalidUsage(f"a message from rank {self.ep.peer} does not match the receive buffer of "
                               f"{self.nbytes} bytes; sizes must match (a receive buffer must be exactly "
                               f"the size of the send)")
        raise PeerLostError(f"rank {self.ep.peer} was lost during a UCX transfer ({_status(self.status)})")

    def test(self):
        """Advance the worker once; True once done (then wait() returns at once)."""
        if not self.finished:
            self.ep.worker.progress()
            self.settle()
        return self.finished

    def wait(self, timeout=None):
        """Block (spin, yield, then sleep on the event fd) until done; returns the bytes moved."""
        return self.ep.wait_all((self,), timeout)

    cdef cancel(self):
        """Cancel what is pending and wait (briefly) for UCX to give the buffer back."""
        cdef double deadline = hc_now() + 5.0
        if self.req != NULL:
            _api.request_cancel(self.ep.worker.h, self.req)
        if self.req2 != NULL:
            _api.request_cancel(self.ep.worker.h, self.req2)
        while not self.settle() and hc_now() < deadline:
            _api.worker_progress(self.ep.worker.h)
        if not self.finished:         # UCX still owns the buffer: keep it alive rather than free it
            _leaked.append(self)

    def __dealloc__(self):
        if self.req != NULL:
            _api.request_free(self.req)
        if self.req2 != NULL:
            _api.request_free(self.req2)
        if self.has_view:
            PyBuffer_Release(&self.view)


_leaked = []


cdef class MemRegion:
    """Local memory mapped with ucp_mem_map (pinned and registered where the transport needs it)."""
    cdef ucp_handle memh
    cdef Context ctx
    cdef Py_buffer view
    cdef bint has_view
    cdef readonly uint64_t address
    cdef readonly size_t nbytes
    cdef readonly bytes rkey

    def __cinit__(self, Context ctx, obj):
        cdef ucp_mem_map_params_t p
        cdef void* rb = NULL
        cdef size_t rlen = 0
        self.memh = NULL
        self.ctx = ctx
        self.has_view = False
        PyObject_GetBuffer(obj, &self.view, PyBUF_SIMPLE | PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)
        self.has_view = True
        self.address = <uint64_t><uintptr_t>self.view.buf
        self.nbytes = self.view.len
        memset(&p, 0, sizeof(p))
        p.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_PROT
        p.address = self.view.buf
        p.length = self.view.len if self.view.len > 0 else 1
        p.prot = UCP_MEM_MAP_PROT_ALL
        _check(_api.mem_map(ctx.h, &p, &self.memh), "mem_map")
        _check(_api.rkey_pack(ctx.h, self.memh, &rb, &rlen), "rkey_pack")
        self.rkey = (<char*>rb)[:rlen]
        _api.rkey_buffer_release(rb)

    def close(self):
        if self.memh != NULL:
            _api.mem_unmap(self.ctx.h, self.memh)
            self.memh = NULL
        if self.has_view:
            PyBuffer_Release(&self.view)
            self.has_view = False

    def __dealloc__(self):
        self.close()


cdef class RemoteKey:
    """A peer's rkey unpacked on one endpoint, for put/get into its region."""
    cdef ucp_handle rkey
    cdef readonly uint64_t address
    cdef readonly size_t nbytes
    cdef Endpoint ep

    def __cinit__(self, Endpoint ep, bytes packed, uint64_t address, size_t nbytes):
        self.rkey = NULL
        self.ep = ep
        self.address = address
        self.nbytes = nbytes
        ep.check_open()
        _check(_api.ep_rkey_unpack(ep.h, <const char*>packed, &self.rkey), "rkey unpack")

    def close(self):
        if self.rkey != NULL:
            _api.rkey_destroy(self.rkey)
            self.rkey = NULL

    def __dealloc__(self):
        self.close()


TAG_BITS = 32
cdef uint64_t _TAG_MASK = (<uint64_t>1 << 32) - 1
cdef uint64_t _ALL = <uint64_t>-1


cdef class Endpoint:
    """A UCP endpoint to one peer's worker, with peer-failure handling (UCP_ERR_HANDLING_MODE_PEER).

    sock: the pair's liveness socket (its fd is polled in every wait; -1: none).
    rx_id, tx_id: the connection's id on this side and on the peer's. Endpoints of one process may
    share a worker (so a thousand connections do not cost a thousand workers); tag matching is per
    worker, so a UCX tag is ``connection id << 32 | user tag``: sends carry the peer's id, receives
    match ours exactly, and user tags are 0 .. 2**32-1."""
    cdef ucp_handle h
    cdef readonly Worker worker
    cdef EpState* state
    cdef readonly int peer
    cdef readonly int sock
    cdef readonly uint64_t rx_id
    cdef readonly uint64_t tx_id
    cdef public double timeout
    cdef public double spin_s
    cdef public double yield_s
    cdef public bint lost
    cdef bint sent            # a send or RMA was posted: close() flushes it out first
    cdef readonly int dropped   # unreceived messages of this connection dropped at close
    cdef set _outstanding

    def __cinit__(self, Worker worker, bytes peer_address, int peer, int sock=-1, double timeout=600.0,
                  uint64_t rx_id=0, uint64_t tx_id=0):
        cdef ucp_ep_params_t p
        self.h = NULL
        self.worker = worker
        self.peer = peer
        self.sock = sock
        self.timeout = timeout
        self.spin_s = 20e-6
        self.yield_s = 500e-6
        self.lost = False
        self.sent = False
        self.rx_id = rx_id & _TAG_MASK
        self.tx_id = tx_id & _TAG_MASK
        self._outstanding = set()
        self.state = <EpState*>malloc(sizeof(EpState))
        if self.state == NULL:
            raise MemoryError()
        self.state.failed = 0
        self.state.status = UCS_OK
        memset(&p, 0, sizeof(p))
        p.field_mask = (UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER)
        p.address = <const char*>peer_address
        p.err_mode = UCP_ERR_HANDLING_MODE_PEER
        p.err_handler.cb = _on_ep_error
        p.err_handler.arg = self.state
        _check(_api.ep_create(worker.h, &p, &self.h), f"endpoint to rank {peer}")

    cdef check_open(self):
        if self.h == NULL:
            raise InvalidUsage("this UCX endpoint is closed")
        if self.lost or self.state.failed:
            raise PeerLostError(f"rank {self.peer} is lost; this endpoint cannot be used any more")

    cdef uint64_t _tag(self, uint64_t prefix, uint64_t tag) except? 0:
        if tag > _TAG_MASK:
            raise InvalidUsage(f"rdma tags must be integers in [0, 2**32); got {tag}")
        return (prefix << 32) | tag

    cdef Request _start(self, obj, bint writable, int kind):
        cdef Request r = Request()
        if kind == 1:
            if self.h == NULL:
                raise InvalidUsage("this UCX endpoint is closed")
        else:
            self.check_open()
            self.sent = True
        r.ep = self
        r.kind = kind
        PyObject_GetBuffer(obj, &r.view, PyBUF_SIMPLE | (PyBUF_WRITABLE if writable else 0))
        r.has_view = True
        r.nbytes = r.view.len
        return r

    cdef _post(self, Request r, ucs_status_ptr_t p):
        if ucs_ptr_is_ptr(p):
            r.req = p
            self._outstanding.add(r)
        elif p != NULL:
            r.status = ucs_ptr_status(p)

    def tag_send(self, obj, uint64_t tag):
        cdef ucp_request_param_t prm
        cdef uint64_t t = self._tag(self.tx_id, tag)
        cdef Request r = self._start(obj, False, 0)
        cdef ucs_status_ptr_t p
        memset(&prm, 0, sizeof(prm))
        with nogil:
            p = _api.tag_send_nbx(self.h, r.view.buf, r.view.len, t, &prm)
        self._post(r, p)
        return r

    def tag_recv(self, obj, uint64_t tag):
        """Tagged receive of this connection's messages (the worker may serve other connections).
        Posted even once the peer has gone: what it sent before is still delivered."""
        cdef ucp_request_param_t prm
        cdef ucp_tag_recv_info_t info
        cdef uint64_t t = self._tag(self.rx_id, tag)
        cdef Request r = self._start(obj, True, 1)
        cdef ucs_status_ptr_t p
        memset(&prm, 0, sizeof(prm))
        prm.op_attr_mask = UCP_OP_ATTR_FIELD_RECV_INFO
        prm.recv_info.tag_info = &info
        info.length = r.view.len
        with nogil:
            p = _api.tag_recv_nbx(self.worker.h, r.view.buf, r.view.len, t, _ALL, &prm)
        self._post(r, p)
        if p == NULL and info.length != r.nbytes:
            r.status = UCS_ERR_MESSAGE_TRUNCATED
        return r

    def wait_all(self, reqs, timeout=None):
        """Wait for every Request of ``reqs`` (of this endpoint) in one nogil loop: the worker is
        driven without returning to Python per message (spin, yield, then sleep on the event fd).
        Returns the bytes moved in total; raises the first failure once all are settled,
        HetcclTimeout when the deadline passes, PeerLostError when the peer dies."""
        cdef double t = self.timeout if timeout is None else timeout
        cdef double deadline = hc_now() + t
        cdef Py_ssize_t n = len(reqs), k
        cdef void** handles
        cdef Request r
        cdef int rc
        cdef size_t pending_bytes
        if n == 0:
            return 0
        handles = <void**>malloc(n * sizeof(void*))
        if handles == NULL:
            raise MemoryError()
        try:
            while True:
                k = 0
                pending_bytes = 0
                for r in reqs:
                    if r.ep is not self:
                        raise InvalidUsage("wait_all: every request must belong to this endpoint")
                    if not r.settle():
                        handles[k] = r.pending()
                        pending_bytes += r.nbytes
                        k += 1
                if k == 0:
                    break
                with nogil:
                    rc = wait_many(self.worker.h, self.worker.efd, self.sock, self.state, handles, k,
                                   deadline, self.spin_s, self.yield_s)
                if rc == W_INTERRUPTED:
                    PyErr_CheckSignals()
                elif rc == W_TIMEOUT:
                    raise HetcclTimeout(f"UCX transfer of {pending_bytes} bytes ({k} operation(s)) with "
                                        f"rank {self.peer} did not complete within {t:g} s")
                elif rc == W_LOST:
                    self.lost = True
                    for r in reqs:
                        if not r.finished:
                            r.cancel()
                            r._release()
                    raise PeerLostError(f"rank {self.peer} closed its connection or died during a UCX "
                                        f"transfer of {pending_bytes} bytes")
        finally:
            free(handles)
        total, err = 0, None
        for r in reqs:
            try:
                total += r._result()
            except (InvalidUsage, PeerLostError) as e:
                err = err or e
        if err is not None:
            raise err
        return total

    cdef Request _start_rma(self, obj, RemoteKey rk, size_t offset, size_t nbytes, bint is_get):
        """A put/get request over nbytes of obj, checked against both ends' bounds."""
        cdef Request r = self._start(obj, is_get, 3 if is_get else 2)
        if nbytes > <size_t>r.view.len or offset + nbytes > rk.nbytes:
            r._release()
            raise InvalidUsage(f"{'get' if is_get else 'put'} of {nbytes} bytes at offset {offset} "
                               f"does not fit the local buffer ({r.view.len} B) and the remote region "
                               f"({rk.nbytes} B)")
        r.nbytes = nbytes
        return r

    def put(self, obj, RemoteKey rk, size_t offset, size_t nbytes):
        """Write nbytes of obj at offset of the remote region; completes once flushed (visible)."""
        cdef ucp_request_param_t prm
        cdef Request r = self._start_rma(obj, rk, offset, nbytes, False)
        cdef ucs_status_ptr_t p, f
        memset(&prm, 0, sizeof(prm))
        with nogil:
            p = _api.put_nbx(self.h, r.view.buf, nbytes, rk.address + offset, rk.rkey, &prm)
            f = _api.ep_flush_nbx(self.h, &prm)
        self._post(r, p)
        if ucs_ptr_is_ptr(f):
            r.req2 = f
            self._outstanding.add(r)
        elif f != NULL and r.status == UCS_OK:
            r.status = ucs_ptr_status(f)
        return r

    def get(self, obj, RemoteKey rk, size_t offset, size_t nbytes):
        """Read nbytes at offset of the remote region into obj."""
        cdef ucp_request_param_t prm
        cdef Request r = self._start_rma(obj, rk, offset, nbytes, True)
        cdef ucs_status_ptr_t p
        memset(&prm, 0, sizeof(prm))
        with nogil:
            p = _api.get_nbx(self.h, r.view.buf, nbytes, rk.address + offset, rk.rkey, &prm)
        self._post(r, p)
        return r

    def progress(self):
        with nogil:
            _api.worker_progress(self.worker.h)

    def close(self, double timeout=5.0):
        """Cancel outstanding operations, flush what was sent (unless the peer failed), close the
        endpoint, then drop this connection's messages that arrived but were never received (the
        worker may be shared).

        The close itself is UCX's *force* close: a graceful one waits for the peer's worker to
        acknowledge, which a peer busy elsewhere (accepting its next connection, computing) does
        only when it next makes progress, up to seconds. Everything sent has been flushed to the
        wire by then, so the peer still receives it; it sees the endpoint fail afterwards, as it
        sees the liveness socket close."""
        cdef ucp_request_param_t prm
        cdef ucs_status_ptr_t p
        cdef void* flush = NULL
        cdef double deadline = hc_now() + timeout
        cdef bint closed = True
        if self.h == NULL:
            return
        for r in list(self._outstanding):
            (<Request>r).cancel()
            (<Request>r)._release()
        memset(&prm, 0, sizeof(prm))
        with nogil:
            if self.sent and not (self.lost or self.state.failed):
                # local for what was sent; it waits for the peer only while wire-up is unfinished,
                # and a peer that has gone (liveness socket closed) ends the wait at once
                p = _api.ep_flush_nbx(self.h, &prm)
                if ucs_ptr_is_ptr(p):
                    flush = p
                    wait_request(self.worker.h, self.worker.efd, self.sock, self.state, flush, deadline,
                                 0.0, 0.0)
            prm.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS
            prm.flags = UCP_EP_CLOSE_FLAG_FORCE        # completes a pending flush as canceled
            p = _api.ep_close_nbx(self.h, &prm)
            if ucs_ptr_is_ptr(p):
                while _api.request_check_status(p) == UCS_INPROGRESS and hc_now() < deadline + 1.0:
                    _api.worker_progress(self.worker.h)
                closed = _api.request_check_status(p) != UCS_INPROGRESS
                _api.request_free(p)
            if flush != NULL:
                while _api.request_check_status(flush) == UCS_INPROGRESS and hc_now() < deadline + 1.0:
                    _api.worker_progress(self.worker.h)
                _api.request_free(flush)    # freed even if still pending: UCX releases it when done
        self.h = NULL
        if closed:
            free(self.state)        # the ep is gone: its error handler can no longer run
        self.state = NULL           # else UCX may still call it: leave the few bytes allocated
        if self.rx_id != 0:
            self.dropped = self.worker.discard_unexpected(self.rx_id << 32, _ALL << 32, 0.5)

    def __dealloc__(self):
        if self.h != NULL:
            try:
                self.close(1.0)
            except BaseException:
                pass


def ep_handle(Endpoint e):
    return <uintptr_t>e.h


# ---------------------------------------------------------------------------------------- doctor

def describe():
    """What `hetccl doctor` prints: library path, version and the transports/devices UCX offers."""
    if not load():
        return {"ok": False, "error": _load_error}
    out = {"ok": True, "path": library_path(), "version": version(), "resources": [], "error": None}
    try:
        info = context().print_info()
    except TransportError as e:
        out["error"] = str(e)
        return out
    seen = []
    for line in info.splitlines():          # "#     resource 3 :  md 1  dev 1  flags -- tcp/lo"
        if "resource" in line and "/" in line:
            parts = line.split()
            tl = parts[len(parts) - 1]
            if tl not in seen:
                seen.append(tl)
    out["resources"] = seen
    return out


# ---------------------------------------------------------------------------------------- engine links

cdef class LinkHandle:
    """The UcxLink state of one engine link (link_rdma.pxd) and the UCX objects it uses; the engine
    keeps it in its resource list and closes it with the communicator."""
    cdef UcxLink* st
    cdef readonly Endpoint ep
    cdef readonly Worker worker

    def __cinit__(self, Worker worker, Endpoint ep):
        self.st = <UcxLink*>malloc(sizeof(UcxLink))
        if self.st == NULL:
            raise MemoryError()
        memset(self.st, 0, sizeof(UcxLink))
        self.worker = worker
        self.ep = ep
        self.st.api = &_api
        self.st.worker = worker.h
        self.st.ep = ep.h
        self.st.state = ep.state
        self.st.efd = worker.efd

    def state_address(self):
        return <uintptr_t>self.st

    def close(self):
        if self.st == NULL:
            return
        if self.st.rx_data != NULL and self.ep.h != NULL:
            _api.stream_data_release(self.ep.h, self.st.rx_data)
        self.ep.close(2.0)
        if self.st.tx_req != NULL:
            _api.request_free(self.st.tx_req)
        free(self.st)
        self.st = NULL

    def __dealloc__(self):
        if self.st != NULL:
            try:
                self.close()
            except BaseException:
                pass


# ---------------------------------------------------------------------------------------- ABI check

def _layout():
    """Offsets of every params field this module sets, as compiled from ucx.pxd's declarations
    (tests/transports/test_ucx_abi.py compares them with UCX's own headers when those are around)."""
    cdef ucp_params_t a
    cdef ucp_worker_params_t b
    cdef ucp_ep_params_t c
    cdef ucp_request_param_t d
    cdef ucp_mem_map_params_t e
    cdef ucp_tag_recv_info_t f
    cdef char* pa = <char*>&a
    cdef char* pb = <char*>&b
    cdef char* pc = <char*>&c
    cdef char* pd = <char*>&d
    cdef char* pe = <char*>&e
    cdef char* pf = <char*>&f
    return {
        "ucp_params_t.features": <char*>&a.features - pa,
        "ucp_params_t.mt_workers_shared": <char*>&a.mt_workers_shared - pa,
        "ucp_params_t.name": <char*>&a.name - pa,
        "ucp_worker_params_t.thread_mode": <char*>&b.thread_mode - pb,
        "ucp_worker_params_t.events": <char*>&b.events - pb,
        "ucp_ep_params_t.address": <char*>&c.address - pc,
        "ucp_ep_params_t.err_mode": <char*>&c.err_mode - pc,
        "ucp_ep_params_t.err_handler": <char*>&c.err_handler - pc,
        "ucp_request_param_t.flags": <char*>&d.flags - pd,
        "ucp_request_param_t.recv_info": <char*>&d.recv_info - pd,
        "ucp_mem_map_params_t.address": <char*>&e.address - pe,
        "ucp_mem_map_params_t.length": <char*>&e.length - pe,
        "ucp_mem_map_params_t.prot": <char*>&e.prot - pe,
        "ucp_tag_recv_info_t.length": <char*>&f.length - pf,
        "sizeof(ucs_status_t)": sizeof(ucs_status_t),
    }
