# cython: language_level=3
"""Vendor collective libraries and their device runtimes, loaded at run time (``dlopen``).

Why one module for every vendor: the NCCL API was cloned by RCCL, MCCL and others with the same
signatures under another symbol prefix, and HCCL differs only in a few calls (root info instead of
a unique id, broadcast in place). So a library is described by *data* -- its path, its family
("nccl" or "hccl") and the symbol name of every role -- and this module holds function pointers
filled by ``dlsym``. Nothing is linked at build time: hetccl builds and installs without any vendor
SDK, and one install serves every vendor. The per-vendor tables (library names, prefixes, where
each was checked) live in hetccl/bridges/nccl.py and hccl.py.

Why calls release the GIL: a collective on a real device is enqueued on a stream and then waited
for; the wait (``wait_stream``) spins on the stream's query function and the communicator's
asynchronous error with a deadline, so a peer that died makes the call fail instead of hanging
(NCCL's documented way to detect it), and other Python threads keep running meanwhile.

Why communicator creation can be non-blocking: ``ncclCommInitRank`` waits inside the library for
every peer, with no deadline, so a peer that died after agreeing to join hangs every other rank.
NCCL >= 2.14 has ``ncclCommInitRankConfig`` with ``config.blocking = 0``: it returns at once
(``ncclInProgress``) and ``ncclCommGetAsyncError`` reports the state until the join is done, so
``comm_init_nonblocking`` polls it without the GIL, up to a deadline. On such a communicator every
later call may also return ``ncclInProgress`` before its work is on the stream; ``wait_stream``
(``nonblocking=True``) therefore trusts the stream only once the state has left ``ncclInProgress``.

Return codes: the collective calls return the library's own result (0 = success); ``wait_stream``
returns 0, ``WAIT_TIMEOUT``, ``WAIT_ASYNC`` (the communicator reported an error: read it with
``async_error``) or ``WAIT_RUNTIME`` (the stream query failed: ``runtime_error``);
``comm_init_nonblocking`` returns WAIT_OK, WAIT_TIMEOUT, WAIT_ASYNC or ``WAIT_CALL`` (the init call
itself failed). The Python bridges turn these into BridgeError with the library's own error string.
"""
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.string cimport memcpy, memset

from hetccl._native.atomics cimport hc_now
from hetccl._native.waiting cimport sched_yield

from hetccl._native.dl cimport dlopen, dlsym, dlerror, RTLD_NOW, RTLD_LOCAL

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int nanosleep(const timespec* req, timespec* rem)



cdef struct Backoff:
    int spins
    long cap_ns               # the longest sleep; 0: keep the first (a stream wait stays responsive)
    timespec ts


cdef inline void backoff_init(Backoff* b, long cap_ns) noexcept nogil:
    b.spins = 0
    b.cap_ns = cap_ns
    b.ts.tv_sec = 0
    b.ts.tv_nsec = 50000


cdef inline void backoff_wait(Backoff* b) noexcept nogil:
    """One pause of a polling loop: 64 yields, then 50 us sleeps (doubling up to cap_ns): the CPU
    is left to the library's own threads and to other ranks sharing the core."""
    b.spins += 1
    if b.spins < 64:
        sched_yield()
        return
    nanosleep(&b.ts, NULL)
    if b.cap_ns > b.ts.tv_nsec:
        b.ts.tv_nsec = b.ts.tv_nsec * 2 if b.ts.tv_nsec * 2 < b.cap_ns else b.cap_ns


DEF UID_BYTES = 128          # NCCL_UNIQUE_ID_BYTES (nccl.h; RCCL and MCCL keep it)
DEF ROOT_INFO_BYTES = 4108   # HCCL_ROOT_INFO_BYTES (hccl_types.h)
DEF API_MAGIC = 0xcafebeef   # NCCL_API_MAGIC (nccl.h): ncclConfig_t.magic of NCCL_CONFIG_INITIALIZER
DEF CONFIG_VERSION = 21400   # ncclConfig_t.version: the layout below is NCCL 2.14's

NCCL_UNIQUE_ID_BYTES = UID_BYTES
HCCL_ROOT_INFO_BYTES = ROOT_INFO_BYTES
cdef enum:
    C_WAIT_OK = 0
    C_WAIT_TIMEOUT = -1
    C_WAIT_ASYNC = -2
    C_WAIT_RUNTIME = -3
    C_WAIT_CALL = -4
    C_IN_PROGRESS = 7        # ncclInProgress: a non-blocking communicator is still working
WAIT_OK, WAIT_TIMEOUT, WAIT_ASYNC, WAIT_RUNTIME = C_WAIT_OK, C_WAIT_TIMEOUT, C_WAIT_ASYNC, C_WAIT_RUNTIME
WAIT_CALL = C_WAIT_CALL
NCCL_IN_PROGRESS = C_IN_PROGRESS
NCCL_CONFIG_VERSION = CONFIG_VERSION

ctypedef struct uid128:
    char internal[UID_BYTES]

# nccl.h ncclConfig_t as NCCL 2.14 declared it (ncclConfig_v21400). Later versions append fields;
# the library copies only ``size`` bytes and, for a ``version`` older than its own, keeps its
# defaults for every field the caller's layout does not have (init.cc parseCommConfig), so this
# short layout is valid for every NCCL (and RCCL) from 2.14 on.
ctypedef struct nccl_config_v21400:
    size_t size
    unsigned int magic
    unsigned int version
    int blocking

# ---- NCCL family (nccl.h) ---------------------------------------------------------------------
ctypedef int (*f_ptr)(void*) noexcept nogil                          # GetVersion(int*), GetUniqueId(id*), CommDestroy/Abort(comm)
ctypedef int (*f_void)() noexcept nogil                              # GroupStart / GroupEnd
ctypedef int (*f_nccl_init)(void**, int, uid128, int) noexcept nogil  # CommInitRank(comm*, nranks, id (by value), rank)
ctypedef int (*f_nccl_init_cfg)(void**, int, uid128, int, nccl_config_v21400*) noexcept nogil  # CommInitRankConfig(..., config*)
ctypedef int (*f_async)(void*, int*) noexcept nogil                  # CommGetAsyncError(comm, result*)
ctypedef const char* (*f_errstr)(int) noexcept nogil                 # GetErrorString(result)
ctypedef const char* (*f_lasterr)(void*) noexcept nogil              # GetLastError(comm)
ctypedef int (*f_allreduce)(const void*, void*, size_t, int, int, void*, void*) noexcept nogil   # also ReduceScatter
ctypedef int (*f_allgather)(const void*, void*, size_t, int, void*, void*) noexcept nogil
ctypedef int (*f_nccl_bcast)(const void*, void*, size_t, int, int, void*, void*) noexcept nogil
ctypedef int (*f_reduce)(const void*, void*, size_t, int, int, int, void*, void*) noexcept nogil
ctypedef int (*f_p2p)(void*, size_t, int, int, void*, void*) noexcept nogil                    # Send / Recv
# ---- HCCL (hccl.h) ----------------------------------------------------------------------------
ctypedef int (*f_hccl_init)(uint32_t, const void*, uint32_t, void**) noexcept nogil  # CommInitRootInfo
ctypedef int (*f_hccl_bcast)(void*, uint64_t, int, uint32_t, void*, void*) noexcept nogil
# ---- device runtimes (cudart / hip / musart / mcruntime; libascendcl) -------------------------
ctypedef int (*f_intp)(int*) noexcept nogil                          # GetDeviceCount(int*)
ctypedef int (*f_int)(int) noexcept nogil                            # SetDevice(int)
ctypedef int (*f_memcpy)(void*, const void*, size_t, int) noexcept nogil        # cudaMemcpy(dst, src, n, kind)
ctypedef int (*f_acl_memcpy)(void*, size_t, const void*, size_t, int) noexcept nogil  # aclrtMemcpy(dst, max, src, n, kind)
ctypedef int (*f_acl_query)(void*, int*) noexcept nogil              # aclrtStreamQuery(stream, status*)
ctypedef const char* (*f_acl_msg)() noexcept nogil                   # aclGetRecentErrMsg()
ctypedef int (*f_malloc)(void**, size_t) noexcept nogil              # cudaMalloc(void** p, size_t n)
ctypedef int (*f_acl_malloc)(void**, size_t, int) noexcept nogil     # aclrtMalloc(void** p, size_t n, policy)
ctypedef int (*f_host_alloc)(void**, size_t, unsigned int) noexcept nogil   # cudaHostAlloc(void** p, n, flags)


cdef void* _open(str path) except NULL:
    cdef bytes p = path.encode()
    cdef void* h = dlopen(p, RTLD_NOW | RTLD_LOCAL)
    if h == NULL:
        err = dlerror()
        raise OSError(f"cannot load {path}: {(<bytes>err).decode(errors='replace') if err != NULL else 'dlopen failed'}")
    return h


cdef void* _sym(void* h, dict symbols, str role, bint required, str path) except? NULL:
    name = symbols.get(role)
    if not name:
        if required:
            raise OSError(f"{path}: no symbol is named for the required role {role!r}")
        return NULL
    cdef bytes b = name.encode()
    cdef void* f = dlsym(h, b)
    if f == NULL and required:
        raise OSError(f"{path} has no symbol {name} ({role}): not a library of this family, or too old")
    return f


cdef str _text(const char* s):
    return (<bytes>s).decode(errors="replace") if s != NULL else ""


cdef class CclLibrary:
    """One collective library: ``family`` "nccl" (NCCL, RCCL, MCCL, ...) or "hccl".

    ``symbols`` maps each role (``get_version``, ``get_unique_id``, ``comm_init``, ``allreduce``,
    ...) to the symbol to look up; ``required`` lists the roles that must resolve. Pointers are
    plain integers (uintptr) on the Python side: communicators, streams and device buffers."""

    cdef void* _h
    cdef readonly str path, family
    cdef readonly int uid_bytes
    cdef readonly frozenset present
    cdef f_ptr _version, _uid, _destroy, _abort
    cdef f_void _group_start, _group_end
    cdef f_nccl_init _nccl_init
    cdef f_nccl_init_cfg _nccl_init_cfg
    cdef f_hccl_init _hccl_init
    cdef f_async _async
    cdef f_errstr _errstr
    cdef f_lasterr _lasterr
    cdef f_allreduce _allreduce, _reduce_scatter
    cdef f_allgather _allgather
    cdef f_nccl_bcast _nccl_bcast
    cdef f_hccl_bcast _hccl_bcast
    cdef f_reduce _reduce
    cdef f_p2p _send, _recv

    def __cinit__(self, str path, str family, dict symbols, required):
        if family not in ("nccl", "hccl"):
            raise ValueError(f"unknown library family {family!r}")
        self.path, self.family = path, family
        self.uid_bytes = UID_BYTES if family == "nccl" else ROOT_INFO_BYTES
        self._h = _open(path)
        req = set(required)
        found = set()
        cdef void* f
        cdef dict ptrs = {}
        for role in symbols:
            f = _sym(self._h, symbols, role, role in req, path)
            if f != NULL:
                found.add(role)
                ptrs[role] = <uintptr_t>f
        missing = req - found
        if missing:
            raise OSError(f"{path}: no symbol for {sorted(missing)}")
        self.present = frozenset(found)
        self._version = <f_ptr><uintptr_t>ptrs.get("get_version", 0)
        self._uid = <f_ptr><uintptr_t>ptrs.get("get_unique_id", 0)
        self._destroy = <f_ptr><uintptr_t>ptrs.get("comm_destroy", 0)
        self._abort = <f_ptr><uintptr_t>ptrs.get("comm_abort", 0)
        self._group_start = <f_void><uintptr_t>ptrs.get("group_start", 0)
        self._group_end = <f_void><uintptr_t>ptrs.get("group_end", 0)
        if family == "nccl":
            self._nccl_init = <f_nccl_init><uintptr_t>ptrs.get("comm_init", 0)
            self._nccl_init_cfg = <f_nccl_init_cfg><uintptr_t>ptrs.get("comm_init_config", 0)
            self._nccl_bcast = <f_nccl_bcast><uintptr_t>ptrs.get("broadcast", 0)
        else:
            self._hccl_init = <f_hccl_init><uintptr_t>ptrs.get("comm_init", 0)
            self._hccl_bcast = <f_hccl_bcast><uintptr_t>ptrs.get("broadcast", 0)
        self._async = <f_async><uintptr_t>ptrs.get("comm_get_async_error", 0)
        self._errstr = <f_errstr><uintptr_t>ptrs.get("get_error_string", 0)
        self._lasterr = <f_lasterr><uintptr_t>ptrs.get("get_last_error", 0)
        self._allreduce = <f_allreduce><uintptr_t>ptrs.get("allreduce", 0)
        self._reduce_scatter = <f_allreduce><uintptr_t>ptrs.get("reduce_scatter", 0)
        self._allgather = <f_allgather><uintptr_t>ptrs.get("allgather", 0)
        self._reduce = <f_reduce><uintptr_t>ptrs.get("reduce", 0)
        self._send = <f_p2p><uintptr_t>ptrs.get("send", 0)
        self._recv = <f_p2p><uintptr_t>ptrs.get("recv", 0)

    def has(self, str role) -> bool:
        return role in self.present

    def version(self) -> int:
        """The library's version code (NCCL: 22703 for 2.27.3), or -1 when it has no GetVersion."""
        cdef int v = -1
        if self._version == NULL:
            return -1
        rc = self._version(&v)
        return v if rc == 0 else -1

    def error_string(self, int rc) -> str:
        return _text(self._errstr(rc)) if self._errstr != NULL else f"error {rc}"

    def last_error(self, uintptr_t comm) -> str:
        """The library's message for the last failure (ncclGetLastError, NCCL >= 2.13), or ""."""
        return _text(self._lasterr(<void*>comm)) if self._lasterr != NULL else ""

    def unique_id(self):
        """(rc, bytes): a new unique id (NCCL family) or root info (HCCL) for CommInitRank."""
        buf = bytearray(self.uid_bytes)
        cdef char* p = buf
        cdef int rc
        with nogil:
            rc = self._uid(p)
        return rc, bytes(buf)

    def comm_init(self, int nranks, bytes uid, int rank):
        """(rc, comm): join the communicator named by ``uid`` (every island rank, collectively)."""
        if len(uid) != self.uid_bytes:
            raise ValueError(f"unique id has {len(uid)} bytes, {self.family} needs {self.uid_bytes}")
        cdef void* comm = NULL
        cdef uid128 u
        cdef const char* up = uid
        cdef int rc
        if self.family == "nccl":
            memcpy(u.internal, up, UID_BYTES)
            with nogil:
                rc = self._nccl_init(&comm, nranks, u, rank)
        else:
            with nogil:
                rc = self._hccl_init(<uint32_t>nranks, up, <uint32_t>rank, &comm)
        return rc, <uintptr_t>comm

    def comm_init_nonblocking(self, int nranks, bytes uid, int rank, double timeout):
        """(code, detail, comm): join like ``comm_init``, but through ``CommInitRankConfig`` with
        ``blocking = 0``, polling ``CommGetAsyncError`` until the state leaves ``ncclInProgress``
        or ``timeout`` seconds have passed (first a few yields, then sleeps growing from 50 us to
        1 ms, so a join of a few ms is seen at once and a long one costs no CPU). The GIL is
        released throughout.

        ``code``: WAIT_OK (``comm`` is ready); WAIT_CALL (the call itself returned ``detail``);
        WAIT_ASYNC (the join failed with state ``detail``); WAIT_TIMEOUT. On anything but WAIT_OK
        a non-zero ``comm`` is still the library's: the caller reads its error, then aborts it."""
        if self.family != "nccl" or self._nccl_init_cfg == NULL or self._async == NULL:
            raise OSError(f"{self.path} has no non-blocking communicator creation "
                          f"(CommInitRankConfig and CommGetAsyncError)")
        if len(uid) != UID_BYTES:
            raise ValueError(f"unique id has {len(uid)} bytes, {self.family} needs {UID_BYTES}")
        cdef void* comm = NULL
        cdef uid128 u
        cdef const char* up = uid
        cdef nccl_config_v21400 cfg
        cdef int rc, state = 0, code = C_WAIT_OK
        cdef double deadline = hc_now() + timeout
        cdef Backoff bo
        memcpy(u.internal, up, UID_BYTES)
        memset(&cfg, 0, sizeof(cfg))
        cfg.size = sizeof(cfg)
        cfg.magic = API_MAGIC
        cfg.version = CONFIG_VERSION
        cfg.blocking = 0
        backoff_init(&bo, 1000000)
        with nogil:
            rc = self._nccl_init_cfg(&comm, nranks, u, rank, &cfg)
            if rc != 0 and rc != C_IN_PROGRESS:
                code = C_WAIT_CALL
                state = rc
            elif comm == NULL:
                code = C_WAIT_CALL            # "in progress" without a communicator to ask
                state = rc
            else:
                while True:
                    rc = self._async(comm, &state)
                    if rc != 0:
                        code = C_WAIT_ASYNC
                        state = rc
                        break
                    if state != C_IN_PROGRESS:
                        code = C_WAIT_OK if state == 0 else C_WAIT_ASYNC
                        break
                    if hc_now() > deadline:
                        code = C_WAIT_TIMEOUT
                        break
                    backoff_wait(&bo)
        return code, (state if code != C_WAIT_OK else 0), <uintptr_t>comm

    def comm_destroy(self, uintptr_t comm) -> int:
        cdef int rc
        with nogil:
            rc = self._destroy(<void*>comm)
        return rc

    def comm_abort(self, uintptr_t comm) -> int:
        """Abort (ncclCommAbort); a library without it (HCCL) destroys instead."""
        cdef f_ptr f = self._abort if self._abort != NULL else self._destroy
        cdef int rc
        with nogil:
            rc = f(<void*>comm)
        return rc

    def async_error(self, uintptr_t comm) -> int:
        """The communicator's asynchronous error (0 = none), or 0 when the library cannot say."""
        cdef int e = 0
        if self._async == NULL:
            return 0
        rc = self._async(<void*>comm, &e)
        return e if rc == 0 else rc

    def group_start(self) -> int:
        return self._group_start() if self._group_start != NULL else 0

    def group_end(self) -> int:
        cdef int rc = 0
        if self._group_end != NULL:
            with nogil:
                rc = self._group_end()
        return rc

    # The collectives: one nogil call each. Counts and pointers are already checked by the bridge.
    def allreduce(self, uintptr_t send, uintptr_t recv, size_t count, int dtype, int op,
                  uintptr_t comm, uintptr_t stream) -> int:
        cdef int rc
        with nogil:
            rc = self._allreduce(<const void*>send, <void*>recv, count, dtype, op, <void*>comm, <void*>stream)
        return rc

    def reduce_scatter(self, uintptr_t send, uintptr_t recv, size_t recvcount, int dtype, int op,
                       uintptr_t comm, uintptr_t stream) -> int:
        cdef int rc
        with nogil:
            rc = self._reduce_scatter(<const void*>send, <void*>recv, recvcount, dtype, op, <void*>comm,
                                      <void*>stream)
        return rc

    def allgather(self, uintptr_t send, uintptr_t recv, size_t sendcount, int dtype,
                  uintptr_t comm, uintptr_t stream) -> int:
        cdef int rc
        with nogil:
            rc = self._allgather(<const void*>send, <void*>recv, sendcount, dtype, <void*>comm, <void*>stream)
        return rc

    def broadcast(self, uintptr_t buf, size_t count, int dtype, int root, uintptr_t comm,
                  uintptr_t stream) -> int:
        """In place on every rank (NCCL: sendbuff == recvbuff; HCCL's broadcast is in place)."""
        cdef int rc
        if self.family == "nccl":
            with nogil:
                rc = self._nccl_bcast(<const void*>buf, <void*>buf, count, dtype, root, <void*>comm, <void*>stream)
        else:
            with nogil:
                rc = self._hccl_bcast(<void*>buf, <uint64_t>count, dtype, <uint32_t>root, <void*>comm, <void*>stream)
        return rc

    def reduce(self, uintptr_t send, uintptr_t recv, size_t count, int dtype, int op, int root,
               uintptr_t comm, uintptr_t stream) -> int:
        cdef int rc
        with nogil:
            rc = self._reduce(<const void*>send, <void*>recv, count, dtype, op, root, <void*>comm, <void*>stream)
        return rc

    def send(self, uintptr_t buf, size_t count, int dtype, int peer, uintptr_t comm, uintptr_t stream) -> int:
        cdef int rc
        with nogil:
            rc = self._send(<void*>buf, count, dtype, peer, <void*>comm, <void*>stream)
        return rc

    def recv(self, uintptr_t buf, size_t count, int dtype, int peer, uintptr_t comm, uintptr_t stream) -> int:
        cdef int rc
        with nogil:
            rc = self._recv(<void*>buf, count, dtype, peer, <void*>comm, <void*>stream)
        return rc


cdef class DeviceRuntime:
    """A vendor's device runtime: device count/selection, streams, memcpy, device memory, errors.

    ``style`` "cuda" covers cudart and its clones (hip, musa, mc: same signatures and memcpy kinds
    0..3 = host->host, host->device, device->host, device->device); "acl" is Ascend's libascendcl
    (aclrtMemcpy takes the destination capacity; aclrtStreamQuery reports through an out-param).

    Device memory (the bridges' staging buffers; optional roles, ``has_allocator`` says whether
    both resolved), signatures as published by each vendor:

    * ``cudaError_t cudaMalloc(void **devPtr, size_t size)``, ``cudaFree(void *devPtr)``
      (CUDA Runtime API, Memory Management); hip: ``hipMalloc(void **ptr, size_t size)`` /
      ``hipFree(void *ptr)`` (HIP runtime API, same shapes); MUSA ``musaMalloc`` / ``musaFree`` and
      MetaX ``mcMalloc`` / ``mcFree`` clone the cudart names under their prefix.
    * ``aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy)``,
      ``aclrtFree(void *devPtr)`` (CANN acl_rt.h; hicann/runtime docs): policy 0 =
      ACL_MEM_MALLOC_HUGE_FIRST (huge pages above 1 MiB, normal pages below), the one used here.

    Pinned host memory (optional: staging through pageable memory works, only slower):
    ``cudaHostAlloc(void **pHost, size_t size, unsigned int flags)`` / ``cudaFreeHost(void *)``
    (hip: ``hipHostAlloc`` is the deprecated alias of ``hipHostMalloc(void **ptr, size_t size,
    unsigned int flags)``, freed by ``hipHostFree``); ACL ``aclrtMallocHost(void **hostPtr, size_t
    size)`` / ``aclrtFreeHost(void *hostPtr)``."""

    cdef void* _h
    cdef readonly str path, style
    cdef readonly int not_ready        # the query's "still running" code (cudaErrorNotReady = 600)
    cdef bint _acl
    cdef f_ptr _init
    cdef f_intp _count
    cdef f_int _set
    cdef f_ptr _create
    cdef f_ptr _sync, _destroy, _query
    cdef f_acl_query _acl_query
    cdef f_memcpy _memcpy
    cdef f_acl_memcpy _acl_memcpy
    cdef f_errstr _errstr
    cdef f_acl_msg _acl_msg
    cdef f_malloc _malloc, _acl_host_malloc
    cdef f_acl_malloc _acl_malloc
    cdef f_host_alloc _host_alloc
    cdef f_ptr _free, _free_host
    cdef readonly bint has_allocator, has_pinned

    def __cinit__(self, str path, str style, dict symbols, int not_ready=600):
        if style not in ("cuda", "acl"):
            raise ValueError(f"unknown runtime style {style!r}")
        self.path, self.style, self.not_ready = path, style, not_ready
        self._acl = style == "acl"
        self._h = _open(path)
        self._init = <f_ptr>_sym(self._h, symbols, "init", False, path)
        self._count = <f_intp>_sym(self._h, symbols, "get_device_count", True, path)
        self._set = <f_int>_sym(self._h, symbols, "set_device", True, path)
        self._create = <f_ptr>_sym(self._h, symbols, "stream_create", True, path)
        self._sync = <f_ptr>_sym(self._h, symbols, "stream_synchronize", True, path)
        self._destroy = <f_ptr>_sym(self._h, symbols, "stream_destroy", True, path)
        if style == "cuda":
            self._query = <f_ptr>_sym(self._h, symbols, "stream_query", False, path)
            self._memcpy = <f_memcpy>_sym(self._h, symbols, "memcpy", True, path)
            self._errstr = <f_errstr>_sym(self._h, symbols, "get_error_string", False, path)
        else:
            self._acl_query = <f_acl_query>_sym(self._h, symbols, "stream_query", False, path)
            self._acl_memcpy = <f_acl_memcpy>_sym(self._h, symbols, "memcpy", True, path)
            self._acl_msg = <f_acl_msg>_sym(self._h, symbols, "get_error_string", False, path)
        cdef void* m = _sym(self._h, symbols, "malloc", False, path)
        self._free = <f_ptr>_sym(self._h, symbols, "free", False, path)
        cdef void* hm = _sym(self._h, symbols, "host_alloc", False, path)
        self._free_host = <f_ptr>_sym(self._h, symbols, "free_host", False, path)
        if self._acl:
            self._acl_malloc = <f_acl_malloc>m
            self._acl_host_malloc = <f_malloc>hm
        else:
            self._malloc = <f_malloc>m
            self._host_alloc = <f_host_alloc>hm
        self.has_allocator = m != NULL and self._free != NULL
        self.has_pinned = hm != NULL and self._free_host != NULL

    def error_string(self, int rc) -> str:
        if self.style == "cuda":
            return _text(self._errstr(rc)) if self._errstr != NULL else f"error {rc}"
        msg = _text(self._acl_msg()) if self._acl_msg != NULL else ""
        return msg or f"error {rc}"

    def init(self) -> int:
        """The runtime's one-time initialisation where it has one (aclInit(NULL)); 0 otherwise."""
        cdef int rc = 0
        if self._init != NULL:
            with nogil:
                rc = self._init(NULL)
        return rc

    def device_count(self):
        """(rc, count). Without a driver or device the runtime returns an error code here."""
        cdef int n = 0
        cdef int rc
        with nogil:
            rc = self._count(&n)
        return rc, n

    def set_device(self, int device) -> int:
        cdef int rc
        with nogil:
            rc = self._set(device)
        return rc

    def stream_create(self):
        cdef void* s = NULL
        cdef int rc
        with nogil:
            rc = self._create(&s)
        return rc, <uintptr_t>s

    def stream_destroy(self, uintptr_t stream) -> int:
        return self._destroy(<void*>stream)

    def synchronize(self, uintptr_t stream) -> int:
        cdef int rc
        with nogil:
            rc = self._sync(<void*>stream)
        return rc

    def memcpy(self, uintptr_t dst, uintptr_t src, size_t nbytes, int kind) -> int:
        """Blocking copy; kind 0 host->host, 1 host->device, 2 device->host, 3 device->device."""
        cdef int rc
        with nogil:
            if not self._acl:
                rc = self._memcpy(<void*>dst, <const void*>src, nbytes, kind)
            else:
                rc = self._acl_memcpy(<void*>dst, nbytes, <const void*>src, nbytes, kind)
        return rc

    def malloc(self, size_t nbytes):
        """(rc, ptr): ``nbytes`` of device memory on the current device (set_device first)."""
        cdef void* p = NULL
        cdef int rc
        if not self.has_allocator:
            raise OSError(f"{self.path}: the runtime has no device allocator (malloc/free symbols)")
        with nogil:
            if self._acl:
                rc = self._acl_malloc(&p, nbytes, 0)          # ACL_MEM_MALLOC_HUGE_FIRST
            else:
                rc = self._malloc(&p, nbytes)
        return rc, <uintptr_t>p

    def free(self, uintptr_t ptr) -> int:
        cdef int rc
        with nogil:
            rc = self._free(<void*>ptr)
        return rc

    def host_alloc(self, size_t nbytes):
        """(rc, ptr): ``nbytes`` of pinned (page-locked) host memory; raise without the role."""
        cdef void* p = NULL
        cdef int rc
        if not self.has_pinned:
            raise OSError(f"{self.path}: the runtime has no pinned host allocator")
        with nogil:
            if self._acl:
                rc = self._acl_host_malloc(&p, nbytes)
            else:
                rc = self._host_alloc(&p, nbytes, 0)          # cudaHostAllocDefault
        return rc, <uintptr_t>p

    def free_host(self, uintptr_t ptr) -> int:
        cdef int rc
        with nogil:
            rc = self._free_host(<void*>ptr)
        return rc

    cdef int _query_once(self, void* stream) noexcept nogil:
        """0 done, 1 still running, else the runtime's error code (negated when it could be 1)."""
        cdef int st = 0
        cdef int rc
        if not self._acl:
            rc = self._query(stream)
            if rc == 0:
                return 0
            return 1 if rc == self.not_ready else (rc if rc != 1 else -1)
        rc = self._acl_query(stream, &st)
        if rc != 0:
            return rc if rc != 1 else -1
        return 0 if st == 0 else 1       # ACL_STREAM_STATUS_COMPLETE = 0

    def wait_stream(self, uintptr_t stream, CclLibrary lib, uintptr_t comm, double timeout,
                    bint nonblocking=False):
        """Wait for ``stream``; every ~50 us check the communicator's async error and the deadline.

        Returns (code, detail): WAIT_OK; WAIT_TIMEOUT; WAIT_ASYNC with the library's error code;
        WAIT_RUNTIME with the runtime's error code. A runtime without a query function falls back
        to a plain blocking synchronize (no deadline). ``nonblocking``: the communicator was made
        with ``blocking = 0``, so its last call may still be putting work on the stream while the
        state is ``ncclInProgress``: an empty stream counts as done only once the state has left
        it."""
        cdef void* s = <void*>stream
        cdef void* c = <void*>comm
        cdef int rc = 0, err = 0, q
        cdef double deadline = hc_now() + timeout
        cdef Backoff bo
        cdef bint has_query = (self._acl_query != NULL) if self._acl else (self._query != NULL)
        cdef f_async get_async = lib._async if lib is not None else NULL
        if not has_query:
            with nogil:
                rc = self._sync(s)
            return (WAIT_OK, 0) if rc == 0 else (WAIT_RUNTIME, rc)
        backoff_init(&bo, 0)
        with nogil:
            while True:
                q = self._query_once(s)
                if q == 0 and nonblocking and get_async != NULL and c != NULL:
                    if get_async(c, &err) == 0 and err != 0:
                        if err != C_IN_PROGRESS:
                            rc = C_WAIT_ASYNC
                            break
                        q = 1                     # the call has not put its work on the stream yet
                    err = 0
                if q == 0:
                    rc = C_WAIT_OK
                    break
                if q != 1:
                    rc = C_WAIT_RUNTIME
                    err = q if q != -1 else 1
                    break
                if get_async != NULL and c != NULL:
                    if get_async(c, &err) == 0 and err != 0 and err != C_IN_PROGRESS:
                        rc = C_WAIT_ASYNC
                        break
                    err = 0
                if hc_now() > deadline:
                    rc = C_WAIT_TIMEOUT
                    break
                backoff_wait(&bo)
        return rc, err
