# cython: language_level=3
"""Vendor collective libraries and their device runtimes, loaded at run time (``dlopen``).

Why one module for every vendor: the NCCL API was cloned by RCCL, MCCL, ECCL and others with the
same signatures under another symbol prefix, and HCCL, CNCL and BKCL differ only in a few call
shapes (how the id is made and joined, argument order, how the asynchronous error is read). So a
library is described by *data* -- its path, its family ("nccl", "hccl", "cncl" or "bkcl") and the
symbol name of every role -- and this module holds function pointers filled by ``dlsym`` on the
library's own handle. Nothing is linked at build time: hetccl builds and installs without any
vendor SDK, and one install serves every vendor. The per-vendor tables (library names, prefixes,
enums, where each was checked) live in hetccl/bridges/nccl.py, hccl.py, cncl.py and bkcl.py.

Why ``RTLD_LOCAL`` and ``dlsym`` on the handle: two vendors ship a ``libmccl.so`` exporting the
same ``mccl*`` names (Moore Threads and MetaX). Loaded locally, neither library's symbols enter the
global scope, so each handle resolves its own functions and neither library's internal calls bind
to the other's (tests/test_bridges_nccl.py loads both test doubles in one process to show it).

Why calls release the GIL: a collective on a real device is enqueued on a stream and then waited
for; the wait (``wait_stream``) polls the stream and the communicator's asynchronous error with a
deadline, so a peer that died makes the call fail instead of hanging, and other Python threads
keep running meanwhile. A runtime without a stream query (Kunlunxin's XPU runtime has only the
blocking ``xpu_wait``) is waited for by a persistent waiter thread (``StreamWaiter``) that the
caller polls against the same deadline; a wait that outlives its deadline leaves that thread
behind in the vendor's sync and the next wait starts a new one.

Why communicator creation has a deadline for every family: a join waits inside the library for
every peer, so a peer that died after agreeing to join would hang the others. NCCL >= 2.14 joins
without blocking (``ncclCommInitRankConfig`` with ``config.blocking = 0``, then
``ncclCommGetAsyncError`` is polled and ``ncclCommAbort`` cancels it). Every other join (NCCL <
2.14 and the clones without that call, HCCL, CNCL, BKCL) runs in a helper thread
(``comm_init_deadline``) that the caller polls: past the deadline the caller stops waiting, and
the helper, still inside the library, frees the communicator itself if the join ever completes.

Return codes: the collective calls return the library's own result (0 = success); ``wait_stream``
returns 0, ``WAIT_TIMEOUT``, ``WAIT_ASYNC`` (the communicator reported an error: read it with
``async_error``) or ``WAIT_RUNTIME`` (the stream query failed: ``runtime_error``); the joins return
WAIT_OK, WAIT_TIMEOUT, WAIT_ASYNC or ``WAIT_CALL`` (the init call itself failed). The Python
bridges turn these into BridgeError with the library's own error string.
"""
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy, memset

from hetccl._native.atomics cimport hc_now, hc_load32_sc, hc_load32_rlx, hc_store32_sc, hc_xchg32, hc_relax
from hetccl._native.posix_wait cimport sched_yield

from hetccl._native.dl cimport dlopen, dlsym, dlerror, RTLD_NOW, RTLD_LOCAL

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int nanosleep(const timespec* req, timespec* rem)

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_create(pthread_t* t, const void* attr, void* (*fn)(void*) noexcept nogil, void* arg)
    int pthread_detach(pthread_t t)
    int pthread_mutex_init(pthread_mutex_t* m, const void* attr)
    int pthread_mutex_destroy(pthread_mutex_t* m)
    int pthread_mutex_lock(pthread_mutex_t* m)
    int pthread_mutex_unlock(pthread_mutex_t* m)
    int pthread_cond_init(pthread_cond_t* c, const void* attr)
    int pthread_cond_destroy(pthread_cond_t* c)
    int pthread_cond_wait(pthread_cond_t* c, pthread_mutex_t* m)
    int pthread_cond_signal(pthread_cond_t* c)


cdef struct Backoff:
    int spins
    int yields                # yields before the first sleep
    long cap_ns               # the longest sleep; 0: keep the first (a stream wait stays responsive)
    timespec ts


cdef inline void backoff_init(Backoff* b, long cap_ns, int yields=64) noexcept nogil:
    b.spins = 0
    b.yields = yields
    b.cap_ns = cap_ns
    b.ts.tv_sec = 0
    b.ts.tv_nsec = 50000


cdef inline void backoff_wait(Backoff* b) noexcept nogil:
    """One pause of a polling loop: ``yields`` yields (64 by default), then 50 us sleeps (doubling
    up to cap_ns): the CPU is left to the library's own threads and to other ranks sharing the
    core."""
    b.spins += 1
    if b.spins < b.yields:
        sched_yield()
        return
    nanosleep(&b.ts, NULL)
    if b.cap_ns > b.ts.tv_nsec:
        b.ts.tv_nsec = b.ts.tv_nsec * 2 if b.ts.tv_nsec * 2 < b.cap_ns else b.cap_ns



DEF UID_BYTES = 128          # NCCL_UNIQUE_ID_BYTES (nccl.h; RCCL and MCCL keep it)
DEF BIG_UID_BYTES = 4120     # a clone whose id size is not published: FlagCX's flagcxInnerUniqueId
                             # bound (its adaptors static_assert every vendor id fits in it)
DEF ROOT_INFO_BYTES = 4108   # HCCL_ROOT_INFO_BYTES (hccl_types.h)
DEF CLIQUE_ID_BYTES = 136    # sizeof(struct cnclCliqueId): char data[CNCL_CLIQUE_ID_BYTES_SIZE=128] + uint64_t hash (cncl.h)
DEF BKCL_ID_BYTES = 4116     # BKCLUniqueId's size is not published; FlagCX xccl_adaptor.cc
                             # static_asserts sizeof(int) + sizeof(BKCLUniqueId) <= 4120
DEF API_MAGIC = 0xcafebeef   # NCCL_API_MAGIC (nccl.h): ncclConfig_t.magic of NCCL_CONFIG_INITIALIZER
DEF CONFIG_VERSION = 21400   # ncclConfig_t.version: the layout below is NCCL 2.14's
DEF CNCL_IN_PROGRESS = 6     # CNCL_RET_ASYNC_IN_PROGRESS (cncl.h): "not an error actually"

NCCL_UNIQUE_ID_BYTES = UID_BYTES
HCCL_ROOT_INFO_BYTES = ROOT_INFO_BYTES
CNCL_CLIQUE_ID_BYTES = CLIQUE_ID_BYTES
BKCL_UNIQUE_ID_BOUND = BKCL_ID_BYTES
LARGE_UID_BYTES = BIG_UID_BYTES
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

cdef enum Family:
    F_NCCL = 0
    F_HCCL = 1
    F_CNCL = 2
    F_BKCL = 3
FAMILIES = {"nccl": F_NCCL, "hccl": F_HCCL, "cncl": F_CNCL, "bkcl": F_BKCL}
DEFAULT_ID_BYTES = {"nccl": UID_BYTES, "hccl": ROOT_INFO_BYTES, "cncl": CLIQUE_ID_BYTES, "bkcl": BKCL_ID_BYTES}

ctypedef struct uid128:
    char internal[UID_BYTES]

ctypedef struct uid_big:
    char internal[BIG_UID_BYTES]

# nccl.h ncclConfig_t as NCCL 2.14 declared it (ncclConfig_v21400). Later versions append fields;
# the library copies only ``size`` bytes and, for a ``version`` older than its own, keeps its
# defaults for every field the caller's layout does not have (init.cc parseCommConfig), so this
# short layout is valid for every NCCL (and RCCL) from 2.14 on.
ctypedef struct nccl_config_v21400:
    size_t size
    unsigned int magic
    unsigned int version
    int blocking

# ---- shared by every family -------------------------------------------------------------------
ctypedef int (*f_ptr)(void*) noexcept nogil                          # GetUniqueId(id*), CommDestroy/Abort(comm), ...
ctypedef int (*f_void)() noexcept nogil                              # GroupStart / GroupEnd
ctypedef const char* (*f_errstr)(int) noexcept nogil                 # GetErrorString(result)
# ---- NCCL family (nccl.h); CNCL's collectives have the same shapes (cncl.h) --------------------
ctypedef int (*f_nccl_init)(void**, int, uid128, int) noexcept nogil  # CommInitRank(comm*, nranks, id (by value), rank)
ctypedef int (*f_nccl_init_big)(void**, int, uid_big, int) noexcept nogil   # the same, id of unpublished size
ctypedef int (*f_nccl_init_cfg)(void**, int, uid128, int, nccl_config_v21400*) noexcept nogil  # CommInitRankConfig(..., config*)
ctypedef int (*f_async)(void*, int*) noexcept nogil                  # CommGetAsyncError(comm, result*)
# CommShrink(comm, excludeRanksList*, excludeRanksCount, newcomm*, config* (NULL: the parent's), shrinkFlags)
ctypedef int (*f_nccl_shrink)(void*, int*, int, void**, void*, int) noexcept nogil
ctypedef const char* (*f_lasterr)(void*) noexcept nogil              # GetLastError(comm)
ctypedef int (*f_allreduce)(const void*, void*, size_t, int, int, void*, void*) noexcept nogil   # also ReduceScatter
ctypedef int (*f_allgather)(const void*, void*, size_t, int, void*, void*) noexcept nogil
ctypedef int (*f_nccl_bcast)(const void*, void*, size_t, int, int, void*, void*) noexcept nogil
ctypedef int (*f_reduce)(const void*, void*, size_t, int, int, int, void*, void*) noexcept nogil
ctypedef int (*f_p2p)(void*, size_t, int, int, void*, void*) noexcept nogil                    # Send / Recv
# ---- HCCL (hccl.h) ----------------------------------------------------------------------------
ctypedef int (*f_hccl_init)(uint32_t, const void*, uint32_t, void**) noexcept nogil  # CommInitRootInfo
ctypedef int (*f_hccl_bcast)(void*, uint64_t, int, uint32_t, void*, void*) noexcept nogil
# ---- CNCL (cncl.h, CNCL 1.25) -----------------------------------------------------------------
# cnclInitComms(cnclComm_t* comms, int num_comm, const int* dev_list, const int* rank_list,
#               int nrank, const cnclCliqueId_t clique_id); one communicator per process here
ctypedef int (*f_cncl_init)(void**, int, const int*, const int*, int, const void*) noexcept nogil
ctypedef int (*f_cncl_async)(void*) noexcept nogil                   # cnclGetCommAsyncError(comm) -> result
ctypedef int (*f_cncl_version)(int*, int*, int*) noexcept nogil      # cnclGetLibVersion(major*, minor*, patch*)
# ---- BKCL (Kunlunxin; argument orders of FlagCX xccl_adaptor.cc and Paddle ProcessGroupBKCL) ---
ctypedef int (*f_bkcl_init)(void**, int, int, const void*) noexcept nogil   # bkcl_init_rank(ctx*, rank, nranks, id*)
ctypedef int (*f_bkcl_allreduce)(void*, const void*, void*, size_t, int, int, void*) noexcept nogil  # ctx, send, recv, count, dtype, op, stream (also reduce_scatter)
ctypedef int (*f_bkcl_allgather)(void*, const void*, size_t, void*, int, void*) noexcept nogil       # ctx, send, sendcount, recv, dtype, stream
ctypedef int (*f_bkcl_bcast)(void*, const void*, void*, size_t, int, int, void*) noexcept nogil      # ctx, send, recv, count, dtype, root, stream
ctypedef int (*f_bkcl_reduce)(void*, const void*, void*, size_t, int, int, int, void*) noexcept nogil  # ctx, send, recv, count, dtype, op, root, stream
ctypedef int (*f_bkcl_p2p)(void*, const void*, size_t, int, int, void*) noexcept nogil              # ctx, buf, count, peer, dtype, stream
# ---- device runtimes (cudart / hip / musart / mcruntime / topsrt / cnrt / xpurt; libascendcl) --
ctypedef int (*f_intp)(int*) noexcept nogil                          # GetDeviceCount(int*)
ctypedef int (*f_int)(int) noexcept nogil                            # SetDevice(int)
ctypedef int (*f_memcpy)(void*, const void*, size_t, int) noexcept nogil        # cudaMemcpy(dst, src, n, kind)
ctypedef int (*f_acl_memcpy)(void*, size_t, const void*, size_t, int) noexcept nogil  # aclrtMemcpy(dst, max, src, n, kind)
ctypedef int (*f_acl_query)(void*, int*) noexcept nogil              # aclrtStreamQuery(stream, status*)
ctypedef const char* (*f_acl_msg)() noexcept nogil                   # aclGetRecentErrMsg()
ctypedef int (*f_malloc)(void**, size_t) noexcept nogil              # cudaMalloc(void** p, size_t n)
ctypedef int (*f_malloc3)(void**, size_t, int) noexcept nogil        # aclrtMalloc(p, n, policy), xpu_malloc(p, n, kind)
ctypedef int (*f_host_alloc)(void**, size_t, unsigned int) noexcept nogil   # cudaHostAlloc(void** p, n, flags)


# ------------------------------------------------------------------------------------------------
# Helper-thread jobs: a blocking library call (a join, a stream sync) that the caller polls
# against a deadline. The job belongs to whoever finishes last: the caller frees it when the call
# is done; once the caller has given up (JOB_ABANDONED), the helper frees it, and destroys the
# communicator a late join produced, so nothing leaks and nothing is used after the caller left.
# A join runs in a thread of its own (joins are rare); stream syncs go to a persistent waiter
# thread (StreamWaiter below), which a wait that times out replaces.
# ------------------------------------------------------------------------------------------------
cdef enum:
    JOB_RUNNING = 0
    JOB_DONE = 1
    JOB_ABANDONED = 2
    JOB_JOIN = 0
    JOB_SYNC = 1
    C_WAITER_CLOSED = -1     # wait_stream's WAIT_RUNTIME detail: the waiter was closed before the sync ran
    C_WAITER_NO_THREAD = -2  # ... no waiter thread (or job) could be had

cdef struct Job:
    int kind
    int family
    void* fn                 # the init (JOB_JOIN) or the stream sync (JOB_SYNC)
    f_ptr destroy            # frees a communicator that a join abandoned by its caller produced
    f_int set_device         # the runtime's SetDevice: device state is per thread in every runtime
    int device
    int nranks
    int rank
    int big_uid
    char* uid
    void* stream
    void* comm
    int rc
    uint32_t state
    Job* next                # the waiter's queue (JOB_SYNC)
    void* core               # the WaiterCore it was queued on (compared, never followed)
    int caller_cpu           # the CPU the caller queued it from (JOB_SYNC; a hint)
    uint32_t wcpu            # 1 + the CPU the waiter runs it on, set when it starts; 0 before


cdef int _run_join(Job* j) noexcept nogil:
    cdef void* comm = NULL
    cdef int rc
    cdef uid128 u
    cdef uid_big ub
    cdef int dev = j.device
    cdef int rank = j.rank
    if j.family == F_NCCL:
        if j.big_uid:
            memcpy(ub.internal, j.uid, BIG_UID_BYTES)
            rc = (<f_nccl_init_big>j.fn)(&comm, j.nranks, ub, j.rank)
        else:
            memcpy(u.internal, j.uid, UID_BYTES)
            rc = (<f_nccl_init>j.fn)(&comm, j.nranks, u, j.rank)
    elif j.family == F_HCCL:
        rc = (<f_hccl_init>j.fn)(<uint32_t>j.nranks, j.uid, <uint32_t>j.rank, &comm)
    elif j.family == F_CNCL:
        rc = (<f_cncl_init>j.fn)(&comm, 1, &dev, &rank, j.nranks, j.uid)
    else:
        rc = (<f_bkcl_init>j.fn)(&comm, j.rank, j.nranks, j.uid)
    j.comm = comm
    return rc


cdef void _job_done(Job* j, int rc) noexcept nogil:
    """The helper's side of a finished job: publish ``rc``; free the job (and a late join's
    communicator) if the caller has already left."""
    j.rc = rc
    if hc_xchg32(&j.state, JOB_DONE) == JOB_ABANDONED:     # the caller has left: clean up alone
        if j.kind == JOB_JOIN and rc == 0 and j.comm != NULL and j.destroy != NULL:
            j.destroy(j.comm)
        free(j.uid)
        free(j)


cdef void* _job_main(void* arg) noexcept nogil:
    cdef Job* j = <Job*>arg
    cdef int rc = 0
    if j.set_device != NULL:
        rc = j.set_device(j.device)
    if rc == 0:
        rc = _run_join(j)
    _job_done(j, rc)
    return NULL


cdef Job* _job_start(Job* j) noexcept nogil:
    """Run the join ``j`` in a detached helper thread; NULL (and ``j`` freed) if no thread could
    start."""
    cdef pthread_t t
    if pthread_create(&t, NULL, _job_main, j) != 0:
        free(j.uid)
        free(j)
        return NULL
    pthread_detach(t)
    return j


cdef void _job_finish(Job* j) noexcept nogil:
    free(j.uid)
    free(j)


cdef bint _job_abandon(Job* j) noexcept nogil:
    """Stop waiting for ``j``: True if the helper now owns it; False if it finished meanwhile
    (then the caller still owns it and reads its result)."""
    return hc_xchg32(&j.state, JOB_ABANDONED) != JOB_DONE


# ---- the persistent stream waiter ---------------------------------------------------------------
# A runtime without a stream query (XPU: only the blocking xpu_wait) can only be waited for by a
# thread that calls the blocking sync while the caller polls a deadline. Starting that thread per
# wait cost 35-50 us a call; a waiter thread that lives on between waits costs the hand-over only:
# two context switches when it shares its caller's CPU (about 1.3 us on this project's VM), a
# cache line when it runs on another. It stays awake after each sync (WAITER_SPIN_S), so
# back-to-back calls find it awake, then sleeps on a condition variable until the next job.
#
# Ownership: a WaiterCore is shared by its thread and its owner (the StreamWaiter). The owner
# leaves by setting ``retired`` under the lock (close, or a wait that timed out while the thread
# sits in the vendor's sync); from then on the core belongs to the thread alone, which finishes the
# sync it is in (however long that takes), frees the core and exits. The owner starts a new core
# for the next wait, so a stuck sync never blocks later calls, and the stuck thread uses nothing of
# the new one: its core, its job (freed by whoever finishes last, as above) and the stream handle.
#
# After fork() the child has the parent's cores but none of their threads (and maybe a core lock
# held by one): a fork counter, bumped in the child, marks every core made before the fork as
# stale, and the child's first wait starts a thread of its own without touching them.
cdef extern from *:
    """
    #include <pthread.h>
    static volatile int hetccl_ccl_waiters_alive = 0;
    static volatile unsigned hetccl_ccl_forks = 0;
    static inline int hetccl_ccl_waiters_add(int v) {
        return __atomic_add_fetch(&hetccl_ccl_waiters_alive, v, __ATOMIC_SEQ_CST);
    }
    static void hetccl_ccl_in_child(void) {
        hetccl_ccl_forks++;
        hetccl_ccl_waiters_alive = 0;
    }
    static int hetccl_ccl_fork_hook(void) { return pthread_atfork(NULL, NULL, hetccl_ccl_in_child); }
    """
    int hetccl_ccl_waiters_add(int v) nogil
    unsigned hetccl_ccl_forks
    int hetccl_ccl_fork_hook()

hetccl_ccl_fork_hook()

DEF WAITER_SPIN_S = 50e-6    # after a sync, poll this long, then sleep until a job is queued
DEF WAITER_RELAX_S = 10e-6   # ... spinning (not yielding) at most this long of it, when on another CPU
DEF CALLER_RELAX_POLLS = 64  # a caller spins this many polls for its sync to start on another CPU

cdef extern from "<sched.h>" nogil:
    int sched_getcpu()

cdef struct WaiterCore:
    pthread_mutex_t mu
    pthread_cond_t cv
    Job* head                # queued syncs, oldest first (under mu)
    Job* tail
    uint32_t queued          # len(queue): written under mu, read unlocked by the spinning thread
    uint32_t retired         # the owner has left (under mu; read unlocked while spinning)
    int sleeping             # the thread waits on cv (under mu)
    f_ptr sync               # the runtime's blocking stream sync
    f_int set_device         # selected once when the thread starts (NULL: leave the thread's default)
    int device
    unsigned forks           # hetccl_ccl_forks when made: another value means this is a forked child


cdef void _jobs_fail(Job* j, int rc) noexcept nogil:
    """End syncs that were queued and will not run (the waiter was closed, or no thread could
    take them over) with ``rc``, which the caller reports as a runtime error; freed here when
    their caller has already left."""
    cdef Job* nxt
    while j != NULL:
        nxt = j.next
        _job_done(j, rc)
        j = nxt


cdef void _waiter_spin(WaiterCore* w, int caller_cpu) noexcept nogil:
    """Stay awake a little for the next job, so back-to-back waits cost no wake-up. On the CPU
    the last caller queued from, it yields: the caller (the one to queue the next job) runs only
    when this thread lets it. On another CPU it spins a while (CPU relax), so it sees the next job
    at once, then yields too."""
    cdef double now = hc_now()
    cdef double until = now + WAITER_SPIN_S
    cdef double relax_until = now + WAITER_RELAX_S
    while hc_load32_rlx(&w.queued) == 0 and hc_load32_rlx(&w.retired) == 0:
        now = hc_now()
        if now > until:
            return
        if now < relax_until and caller_cpu >= 0 and sched_getcpu() != caller_cpu:
            hc_relax()
        else:
            sched_yield()


cdef void* _waiter_main(void* arg) noexcept nogil:
    cdef WaiterCore* w = <WaiterCore*>arg
    cdef Job* j
    cdef int dev_rc = 0
    cdef int caller_cpu = -1
    if w.set_device != NULL:
        dev_rc = w.set_device(w.device)
    pthread_mutex_lock(&w.mu)
    while not w.retired:
        j = w.head
        if j == NULL:
            pthread_mutex_unlock(&w.mu)
            _waiter_spin(w, caller_cpu)
            pthread_mutex_lock(&w.mu)
            if w.head == NULL and not w.retired:
                w.sleeping = 1
                pthread_cond_wait(&w.cv, &w.mu)
                w.sleeping = 0
            continue
        w.head = j.next
        if w.head == NULL:
            w.tail = NULL
        hc_store32_sc(&w.queued, w.queued - 1)
        pthread_mutex_unlock(&w.mu)
        caller_cpu = j.caller_cpu                      # (j may be freed once done)
        hc_store32_sc(&j.wcpu, <uint32_t>(sched_getcpu() + 1))
        if hc_load32_sc(&j.state) == JOB_ABANDONED:   # its caller left before it started
            _job_done(j, 0)
        else:
            _job_done(j, dev_rc if dev_rc != 0 else (<f_ptr>j.fn)(j.stream))
        pthread_mutex_lock(&w.mu)
    pthread_mutex_unlock(&w.mu)                        # retired: the queue was taken by the owner
    pthread_cond_destroy(&w.cv)
    pthread_mutex_destroy(&w.mu)
    free(w)
    hetccl_ccl_waiters_add(-1)
    return NULL


cdef WaiterCore* _waiter_start(f_ptr sync, f_int set_device, int device) noexcept nogil:
    """A new core with its thread running; NULL if memory or a thread could not be had."""
    cdef pthread_t t
    cdef WaiterCore* w = <WaiterCore*>calloc(1, sizeof(WaiterCore))
    if w == NULL:
        return NULL
    w.sync, w.set_device, w.device, w.forks = sync, set_device, device, hetccl_ccl_forks
    pthread_mutex_init(&w.mu, NULL)
    pthread_cond_init(&w.cv, NULL)
    hetccl_ccl_waiters_add(1)
    if pthread_create(&t, NULL, _waiter_main, w) != 0:
        hetccl_ccl_waiters_add(-1)
        pthread_cond_destroy(&w.cv)
        pthread_mutex_destroy(&w.mu)
        free(w)
        return NULL
    pthread_detach(t)
    return w


cdef void _waiter_push(WaiterCore* w, Job* j) noexcept nogil:
    j.next = NULL
    pthread_mutex_lock(&w.mu)
    if w.tail == NULL:
        w.head = j
    else:
        w.tail.next = j
    w.tail = j
    hc_store32_sc(&w.queued, w.queued + 1)
    if w.sleeping:
        pthread_cond_signal(&w.cv)
    pthread_mutex_unlock(&w.mu)


cdef Job* _waiter_retire(WaiterCore* w) noexcept nogil:
    """The owner leaves ``w``: its thread finishes the sync it is in (if any), frees ``w`` and
    exits. Returns the jobs still queued (not started), now the caller's to move or fail."""
    cdef Job* queued
    pthread_mutex_lock(&w.mu)
    queued = w.head
    w.head = w.tail = NULL
    hc_store32_sc(&w.queued, 0)
    hc_store32_sc(&w.retired, 1)
    pthread_cond_signal(&w.cv)
    pthread_mutex_unlock(&w.mu)
    return queued


WAITER_CLOSED, WAITER_NO_THREAD = C_WAITER_CLOSED, C_WAITER_NO_THREAD
# wait_stream's own WAIT_RUNTIME details (no vendor runtime returns them: XPU's codes are -7xx,
# cudart's and the others' positive)
WAITER_ERRORS = {C_WAITER_CLOSED: "the stream waiter was closed before the sync ran (the bridge was "
                                "closed or aborted meanwhile)",
                 C_WAITER_NO_THREAD: "no stream-waiter thread could be started (out of memory or threads)"}


def waiter_threads() -> int:
    """How many stream-waiter threads are alive in this process (including retired ones still
    inside a vendor's sync): what tests check for leftovers."""
    return hetccl_ccl_waiters_add(0)


cdef class DeviceRuntime


cdef class StreamWaiter:
    """A persistent thread that runs ``runtime``'s blocking stream sync for ``wait_stream`` on a
    runtime without a stream query, so that the caller keeps its deadline: the caller queues the
    sync and polls its completion against the deadline, nogil.

    The thread starts with the first wait (and selects ``device`` first when ``device`` >= 0:
    device state is per thread). A wait that gives up (timeout, asynchronous error) while the
    thread is inside the vendor's sync replaces the thread: the stuck one is left to return on its
    own (then it frees its own state and exits; it shares nothing with its successor), and the
    next wait starts a new one. ``close()`` retires the thread the same way and never waits for
    it. ``threads_started`` counts the threads this waiter has started (1 + replacements).

    Thread-safe: several threads may wait through one StreamWaiter; their syncs run one after the
    other, in order (a bridge has one stream, so it owns one waiter). In a child made by fork()
    the first wait starts the child's own thread (the parent's is not there)."""

    cdef pthread_mutex_t _mu       # guards _core and threads_started (never held while waiting)
    cdef WaiterCore* _core
    cdef f_ptr _sync
    cdef f_int _set
    cdef int _device
    cdef int _last_wcpu            # the CPU the last sync ran on (-1: unknown): how the next caller polls
    cdef readonly int threads_started

    def __cinit__(self, DeviceRuntime runtime not None, int device=-1):
        pthread_mutex_init(&self._mu, NULL)
        self._sync = runtime._sync
        self._set = runtime._set if device >= 0 else NULL
        self._device = device
        self._last_wcpu = -1

    def __dealloc__(self):
        self._close()
        pthread_mutex_destroy(&self._mu)

    cdef Job* submit(self, void* stream) noexcept nogil:
        """Queue a sync of ``stream``; the job (the caller's until it abandons it), or NULL when
        no memory or no thread could be had."""
        cdef Job* j = <Job*>calloc(1, sizeof(Job))
        if j == NULL:
            return NULL
        j.kind, j.fn, j.stream = JOB_SYNC, <void*>self._sync, stream
        j.caller_cpu = sched_getcpu()
        pthread_mutex_lock(&self._mu)
        self._drop_stale()
        if self._core == NULL:
            self._core = _waiter_start(self._sync, self._set, self._device)
            if self._core != NULL:
                self.threads_started += 1
        if self._core == NULL:
            pthread_mutex_unlock(&self._mu)
            free(j)
            return NULL
        j.core = self._core
        _waiter_push(self._core, j)
        pthread_mutex_unlock(&self._mu)
        return j

    cdef bint give_up(self, Job* j) noexcept nogil:
        """The caller stops waiting for ``j``. False: it finished meanwhile (the caller still owns
        it and reads its result). True: the job is abandoned (its thread frees it), and the thread
        it was queued on is retired unless another caller already did: a sync that outlived its
        deadline is presumed stuck. Syncs queued behind it move to a new thread, started at once
        (their callers are polling). Under the lock, so no move races with reading ``j.core``."""
        cdef Job* moved
        cdef Job* nxt
        cdef void* core
        pthread_mutex_lock(&self._mu)
        self._drop_stale()
        core = j.core                      # read before abandoning: the job may be freed after
        if not _job_abandon(j):
            pthread_mutex_unlock(&self._mu)
            return False
        if self._core != NULL and self._core == core:
            moved = _waiter_retire(self._core)
            self._core = NULL
            if moved != NULL:
                self._core = _waiter_start(self._sync, self._set, self._device)
                if self._core == NULL:
                    _jobs_fail(moved, C_WAITER_NO_THREAD)
                else:
                    self.threads_started += 1
                    while moved != NULL:
                        nxt = moved.next
                        moved.core = self._core
                        _waiter_push(self._core, moved)
                        moved = nxt
        pthread_mutex_unlock(&self._mu)
        return True

    cdef inline void pause(self, Job* j, Backoff* b) noexcept nogil:
        """One poll's pause while ``j`` runs. The hand-over between two threads costs two context
        switches when both share a CPU (then yield at once) and a cache line when they do not
        (then spin, CPU relax, while the sync is about to start or runs on the other CPU; the
        last sync's CPU says which to expect). The budget is the backoff's: then yields, sleeps."""
        cdef uint32_t w
        if b.spins < b.yields:
            w = hc_load32_rlx(&j.wcpu)
            if w != 0 and <int>w - 1 != j.caller_cpu or \
                    w == 0 and b.spins < CALLER_RELAX_POLLS and self._last_wcpu >= 0 and \
                    self._last_wcpu != j.caller_cpu:
                b.spins += 1
                hc_relax()
                return
        backoff_wait(b)

    cdef inline void done(self, Job* j) noexcept nogil:
        """``j`` finished (still the caller's): remember where it ran, for the next ``pause``."""
        if j.wcpu != 0:
            self._last_wcpu = <int>j.wcpu - 1

    cdef inline void _drop_stale(self) noexcept nogil:
        """In a forked child, forget the parent's core (its thread is not here; it is leaked)."""
        if self._core != NULL and self._core.forks != hetccl_ccl_forks:
            self._core = NULL

    cdef void _close(self) noexcept nogil:
        pthread_mutex_lock(&self._mu)
        self._drop_stale()
        if self._core != NULL:
            _jobs_fail(_waiter_retire(self._core), C_WAITER_CLOSED)
            self._core = NULL
        pthread_mutex_unlock(&self._mu)

    def close(self):
        """Retire the thread (it finishes a sync it is in on its own; nothing here waits for it).
        Syncs still queued end with a runtime error. A later wait starts a new thread."""
        with nogil:
            self._close()

    @property
    def pending(self) -> int:
        """Syncs queued and not started yet (behind the one the thread is in)."""
        cdef int n = 0
        with nogil:
            pthread_mutex_lock(&self._mu)
            self._drop_stale()
            if self._core != NULL:
                n = hc_load32_sc(&self._core.queued)
            pthread_mutex_unlock(&self._mu)
        return n

    @property
    def running(self) -> bool:
        """Whether a thread is attached (started and neither closed nor replaced)."""
        return self._core != NULL


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

cdef int poll_ready(f_async get_async, void* comm, double deadline, int* state) noexcept nogil:
    """Poll ``CommGetAsyncError`` of a non-blocking communicator that is being made (a join, a
    shrink) until it leaves ncclInProgress or ``deadline`` passes, backing off from yields to
    1 ms sleeps: C_WAIT_OK, C_WAIT_ASYNC (``state``: its error) or C_WAIT_TIMEOUT."""
    cdef Backoff bo
    cdef int rc
    backoff_init(&bo, 1000000)
    while True:
        rc = get_async(comm, state)
        if rc != 0:
            state[0] = rc
            return C_WAIT_ASYNC
        if state[0] != C_IN_PROGRESS:
            return C_WAIT_OK if state[0] == 0 else C_WAIT_ASYNC
        if hc_now() > deadline:
            return C_WAIT_TIMEOUT
        backoff_wait(&bo)


cdef class CclLibrary:
    """One collective library of ``family`` "nccl" (NCCL, RCCL, MCCL, ECCL, ...), "hccl", "cncl"
    or "bkcl".

    ``symbols`` maps each role (``get_version``, ``get_unique_id``, ``comm_init``, ``allreduce``,
    ...) to the symbol to look up; ``required`` lists the roles that must resolve. ``uid_bytes``:
    the size of the family's id (default: the family's published size; an NCCL-API clone whose
    id size is not published passes LARGE_UID_BYTES and the id is passed by value in a buffer
    at least as large, which both the x86-64 and the AArch64 C calling conventions hand over in
    memory, so the callee reads only its own size). Pointers are plain integers (uintptr) on
    the Python side: communicators, streams and device buffers."""

    cdef void* _h
    cdef readonly str path, family
    cdef readonly int uid_bytes
    cdef readonly frozenset present
    cdef int _fam
    cdef bint _big_uid
    cdef f_ptr _uid, _destroy, _abort
    cdef void* _version
    cdef void* _init
    cdef f_void _group_start, _group_end
    cdef f_nccl_init_cfg _nccl_init_cfg
    cdef f_nccl_shrink _nccl_shrink
    cdef void* _async
    cdef f_errstr _errstr
    cdef f_lasterr _lasterr
    # NCCL-shaped collectives (NCCL family and CNCL)
    cdef f_allreduce _allreduce, _reduce_scatter
    cdef f_allgather _allgather
    cdef f_nccl_bcast _nccl_bcast
    cdef f_reduce _reduce
    cdef f_p2p _send, _recv
    # HCCL
    cdef f_hccl_bcast _hccl_bcast
    # BKCL
    cdef f_bkcl_allreduce _bk_allreduce, _bk_reduce_scatter
    cdef f_bkcl_allgather _bk_allgather
    cdef f_bkcl_bcast _bk_bcast
    cdef f_bkcl_reduce _bk_reduce
    cdef f_bkcl_p2p _bk_send, _bk_recv

    def __cinit__(self, str path, str family, dict symbols, required, int uid_bytes=0):
        if family not in FAMILIES:
            raise ValueError(f"unknown library family {family!r} (one of {', '.join(FAMILIES)})")
        self.path, self.family = path, family
        self._fam = FAMILIES[family]
        self.uid_bytes = uid_bytes or DEFAULT_ID_BYTES[family]
        if self._fam == F_NCCL and self.uid_bytes not in (UID_BYTES, BIG_UID_BYTES):
            raise ValueError(f"an NCCL-API id is {UID_BYTES} bytes, or LARGE_UID_BYTES ({BIG_UID_BYTES}) "
                             f"when its size is not published; got {self.uid_bytes}")
        self._big_uid = self._fam == F_NCCL and self.uid_bytes == BIG_UID_BYTES
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
        self._version = <void*><uintptr_t>ptrs.get("get_version", 0)
        self._uid = <f_ptr><uintptr_t>ptrs.get("get_unique_id", 0)
        self._init = <void*><uintptr_t>ptrs.get("comm_init", 0)
        self._destroy = <f_ptr><uintptr_t>ptrs.get("comm_destroy", 0)
        self._abort = <f_ptr><uintptr_t>ptrs.get("comm_abort", 0)
        self._group_start = <f_void><uintptr_t>ptrs.get("group_start", 0)
        self._group_end = <f_void><uintptr_t>ptrs.get("group_end", 0)
        self._async = <void*><uintptr_t>ptrs.get("comm_get_async_error", 0)
        self._errstr = <f_errstr><uintptr_t>ptrs.get("get_error_string", 0)
        self._lasterr = <f_lasterr><uintptr_t>ptrs.get("get_last_error", 0)
        if self._fam == F_NCCL:
            self._nccl_shrink = <f_nccl_shrink><uintptr_t>ptrs.get("comm_shrink", 0)
            self._nccl_init_cfg = <f_nccl_init_cfg><uintptr_t>ptrs.get("comm_init_config", 0)
            if self._big_uid:
                self._nccl_init_cfg = NULL          # its config call is bound to a 128-byte id
        if self._fam == F_BKCL:
            self._bk_allreduce = <f_bkcl_allreduce><uintptr_t>ptrs.get("allreduce", 0)
            self._bk_reduce_scatter = <f_bkcl_allreduce><uintptr_t>ptrs.get("reduce_scatter", 0)
            self._bk_allgather = <f_bkcl_allgather><uintptr_t>ptrs.get("allgather", 0)
            self._bk_bcast = <f_bkcl_bcast><uintptr_t>ptrs.get("broadcast", 0)
            self._bk_reduce = <f_bkcl_reduce><uintptr_t>ptrs.get("reduce", 0)
            self._bk_send = <f_bkcl_p2p><uintptr_t>ptrs.get("send", 0)
            self._bk_recv = <f_bkcl_p2p><uintptr_t>ptrs.get("recv", 0)
        else:
            self._allreduce = <f_allreduce><uintptr_t>ptrs.get("allreduce", 0)
            self._reduce_scatter = <f_allreduce><uintptr_t>ptrs.get("reduce_scatter", 0)
            self._allgather = <f_allgather><uintptr_t>ptrs.get("allgather", 0)
            self._reduce = <f_reduce><uintptr_t>ptrs.get("reduce", 0)
            self._send = <f_p2p><uintptr_t>ptrs.get("send", 0)
            self._recv = <f_p2p><uintptr_t>ptrs.get("recv", 0)
            if self._fam == F_HCCL:
                self._hccl_bcast = <f_hccl_bcast><uintptr_t>ptrs.get("broadcast", 0)
            else:
                self._nccl_bcast = <f_nccl_bcast><uintptr_t>ptrs.get("broadcast", 0)

    def has(self, str role) -> bool:
        return role in self.present

    def version(self) -> int:
        """The library's version code (NCCL: 22703 for 2.27.3; CNCL: major*10000 + minor*100 +
        patch from cnclGetLibVersion), or -1 when it has no version call."""
        cdef int v = -1, major = 0, minor = 0, patch = 0
        cdef int rc
        if self._version == NULL:
            return -1
        if self._fam == F_CNCL:
            rc = (<f_cncl_version>self._version)(&major, &minor, &patch)
            return major * 10000 + minor * 100 + patch if rc == 0 else -1
        rc = (<f_ptr>self._version)(&v)
        return v if rc == 0 else -1

    def error_string(self, int rc) -> str:
        return _text(self._errstr(rc)) if self._errstr != NULL else f"{self.family} error {rc}"

    def last_error(self, uintptr_t comm) -> str:
        """The library's message for the last failure (ncclGetLastError, NCCL >= 2.13), or ""."""
        return _text(self._lasterr(<void*>comm)) if self._lasterr != NULL else ""

    def unique_id(self):
        """(rc, bytes): a new id for the join: unique id (NCCL family), root info (HCCL), clique
        id (CNCL), BKCLUniqueId (BKCL)."""
        buf = bytearray(self.uid_bytes)
        cdef char* p = buf
        cdef int rc
        with nogil:
            rc = self._uid(p)
        return rc, bytes(buf)

    def _check_uid(self, bytes uid):
        if len(uid) != self.uid_bytes:
            raise ValueError(f"the id has {len(uid)} bytes, {self.family} needs {self.uid_bytes}")

    def comm_init(self, int nranks, bytes uid, int rank, int device=0):
        """(rc, comm): join the communicator named by ``uid`` in this thread (blocking, no
        deadline: the bridges use ``comm_init_deadline``). ``device`` is the device ordinal for
        the families that take it in the call (CNCL); the others use the thread's current one."""
        self._check_uid(uid)
        cdef Job j
        memset(&j, 0, sizeof(j))
        j.family, j.fn, j.nranks, j.rank, j.device = self._fam, self._init, nranks, rank, device
        j.big_uid = self._big_uid
        j.uid = uid
        cdef int rc
        with nogil:
            rc = _run_join(&j)
        return rc, <uintptr_t>j.comm

    def comm_init_deadline(self, int nranks, bytes uid, int rank, int device, double timeout,
                           DeviceRuntime runtime=None):
        """(code, detail, comm): join like ``comm_init``, in a helper thread polled until
        ``timeout`` seconds have passed (first yields, then sleeps growing to 1 ms; the GIL is
        released). The helper first selects ``device`` through ``runtime`` (device state is
        per thread). ``code``: WAIT_OK (``comm`` is ready), WAIT_CALL (the call, or selecting
        the device, returned ``detail``), WAIT_TIMEOUT (the helper keeps waiting inside the
        library and destroys the communicator itself should the join ever complete)."""
        self._check_uid(uid)
        cdef Job* j = <Job*>calloc(1, sizeof(Job))
        if j == NULL:
            raise MemoryError()
        cdef int n = BIG_UID_BYTES if self._big_uid else self.uid_bytes
        j.uid = <char*>calloc(1, n)
        if j.uid == NULL:
            free(j)
            raise MemoryError()
        memcpy(j.uid, <const char*>uid, self.uid_bytes)
        j.kind, j.family, j.fn, j.destroy = JOB_JOIN, self._fam, self._init, self._destroy
        j.nranks, j.rank, j.device, j.big_uid = nranks, rank, device, self._big_uid
        j.set_device = runtime._set if runtime is not None else NULL
        cdef double deadline = hc_now() + timeout
        cdef Backoff bo
        cdef int code = C_WAIT_OK, rc = 0
        cdef void* comm = NULL
        backoff_init(&bo, 1000000)
        with nogil:
            j = _job_start(j)
            if j == NULL:
                code = C_WAIT_CALL
                rc = -1
            else:
                while True:
                    if hc_load32_sc(&j.state) == JOB_DONE:
                        break
                    if hc_now() > deadline:
                        if _job_abandon(j):
                            code = C_WAIT_TIMEOUT
                        break
                    backoff_wait(&bo)
                if code == C_WAIT_OK:
                    rc, comm = j.rc, j.comm
                    _job_finish(j)
                    if rc != 0:
                        code = C_WAIT_CALL
        if code == C_WAIT_CALL and j == NULL:
            raise OSError("could not start a thread for the communicator's join")
        return code, rc, <uintptr_t>comm

    def comm_init_nonblocking(self, int nranks, bytes uid, int rank, double timeout):
        """(code, detail, comm): join like ``comm_init``, but through ``CommInitRankConfig`` with
        ``blocking = 0``, polling ``CommGetAsyncError`` until the state leaves ``ncclInProgress``
        or ``timeout`` seconds have passed (first a few yields, then sleeps growing from 50 us to
        1 ms, so a join of a few ms is seen at once and a long one costs no CPU). The GIL is
        released throughout.

        ``code``: WAIT_OK (``comm`` is ready); WAIT_CALL (the call itself returned ``detail``);
        WAIT_ASYNC (the join failed with state ``detail``); WAIT_TIMEOUT. On anything but WAIT_OK
        a non-zero ``comm`` is still the library's: the caller reads its error, then aborts it."""
        if self._fam != F_NCCL or self._nccl_init_cfg == NULL or self._async == NULL:
            raise OSError(f"{self.path} has no non-blocking communicator creation "
                          f"(CommInitRankConfig and CommGetAsyncError)")
        self._check_uid(uid)
        cdef void* comm = NULL
        cdef uid128 u
        cdef const char* up = uid
        cdef nccl_config_v21400 cfg
        cdef int rc, state = 0, code = C_WAIT_OK
        cdef double deadline = hc_now() + timeout
        cdef f_async get_async = <f_async>self._async
        memcpy(u.internal, up, UID_BYTES)
        memset(&cfg, 0, sizeof(cfg))
        cfg.size = sizeof(cfg)
        cfg.magic = API_MAGIC
        cfg.version = CONFIG_VERSION
        cfg.blocking = 0
        with nogil:
            rc = self._nccl_init_cfg(&comm, nranks, u, rank, &cfg)
            if rc != 0 and rc != C_IN_PROGRESS:
                code = C_WAIT_CALL
                state = rc
            elif comm == NULL:
                code = C_WAIT_CALL            # "in progress" without a communicator to ask
                state = rc
            else:
                code = poll_ready(get_async, comm, deadline, &state)
        return code, (state if code != C_WAIT_OK else 0), <uintptr_t>comm

    def comm_shrink(self, uintptr_t comm, exclude, int flags, double timeout):
        """(code, detail, newcomm): ``ncclCommShrink(comm, exclude, len(exclude), &newcomm, NULL,
        flags)`` (NCCL >= 2.27: a communicator of the parent's ranks without ``exclude``, numbered
        in order; the config is the parent's; ``flags`` NCCL_SHRINK_ABORT (1) first ends the
        parent's operations in flight, which a failure left hanging). Collective over the ranks
        kept. A non-blocking parent makes a non-blocking child: ``CommGetAsyncError`` is polled
        until it leaves ncclInProgress or ``timeout`` passes, GIL released, like
        ``comm_init_nonblocking`` (whose codes these are). On anything but WAIT_OK a non-zero
        ``newcomm`` is still the library's to abort."""
        if self._fam != F_NCCL or self._nccl_shrink == NULL:
            raise OSError(f"{self.path} has no CommShrink")
        cdef int n = len(exclude), i, rc, state = 0, code = C_WAIT_OK
        cdef int* ranks = <int*>malloc(sizeof(int) * (n if n > 0 else 1))
        if ranks == NULL:
            raise MemoryError()
        for i in range(n):
            ranks[i] = <int>exclude[i]
        cdef void* child = NULL
        cdef double deadline = hc_now() + timeout
        cdef f_async get_async = <f_async>self._async
        with nogil:
            rc = self._nccl_shrink(<void*>comm, ranks, n, &child, NULL, flags)
            if (rc != 0 and rc != C_IN_PROGRESS) or child == NULL:
                code = C_WAIT_CALL
                state = rc
            elif get_async != NULL:
                code = poll_ready(get_async, child, deadline, &state)
        free(ranks)
        return code, (state if code != C_WAIT_OK else 0), <uintptr_t>child

    def comm_destroy(self, uintptr_t comm) -> int:
        cdef int rc
        with nogil:
            rc = self._destroy(<void*>comm)
        return rc

    def comm_abort(self, uintptr_t comm) -> int:
        """Abort (ncclCommAbort, cnclAbortComm, bkcl_comm_abort); a library without it (HCCL)
        destroys instead."""
        cdef f_ptr f = self._abort if self._abort != NULL else self._destroy
        cdef int rc
        with nogil:
            rc = f(<void*>comm)
        return rc

    cdef int async_state(self, void* comm, int* err) noexcept nogil:
        """The communicator's asynchronous state in NCCL's terms: 0 with ``err`` = 0 (none),
        ncclInProgress (a non-blocking NCCL communicator still working) or the library's error
        code; non-zero when asking failed. CNCL returns its state (CNCL_RET_ASYNC_IN_PROGRESS =
        queued work, not an error); BKCL has no such call (never an error)."""
        cdef int rc
        err[0] = 0
        if self._async == NULL or comm == NULL:
            return 0
        if self._fam == F_CNCL:
            rc = (<f_cncl_async>self._async)(comm)
            err[0] = 0 if rc == CNCL_IN_PROGRESS else rc
            return 0
        return (<f_async>self._async)(comm, err)

    def async_error(self, uintptr_t comm) -> int:
        """The communicator's asynchronous error (0 = none), or 0 when the library cannot say."""
        cdef int e = 0
        cdef int rc = self.async_state(<void*>comm, &e)
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
    # NCCL family, CNCL and HCCL share the NCCL argument order; BKCL puts the communicator first.
    def allreduce(self, uintptr_t send, uintptr_t recv, size_t count, int dtype, int op,
                  uintptr_t comm, uintptr_t stream) -> int:
        cdef int rc
        with nogil:
            if self._fam != F_BKCL:
                rc = self._allreduce(<const void*>send, <void*>recv, count, dtype, op, <void*>comm, <void*>stream)
            else:
                rc = self._bk_allreduce(<void*>comm, <const void*>send, <void*>recv, count, dtype, op, <void*>stream)
        return rc

    def reduce_scatter(self, uintptr_t send, uintptr_t recv, size_t recvcount, int dtype, int op,
                       uintptr_t comm, uintptr_t stream) -> int:
        cdef int rc
        with nogil:
            if self._fam != F_BKCL:
                rc = self._reduce_scatter(<const void*>send, <void*>recv, recvcount, dtype, op, <void*>comm,
                                          <void*>stream)
            else:
                rc = self._bk_reduce_scatter(<void*>comm, <const void*>send, <void*>recv, recvcount, dtype, op,
                                             <void*>stream)
        return rc

    def allgather(self, uintptr_t send, uintptr_t recv, size_t sendcount, int dtype,
                  uintptr_t comm, uintptr_t stream) -> int:
        cdef int rc
        with nogil:
            if self._fam != F_BKCL:
                rc = self._allgather(<const void*>send, <void*>recv, sendcount, dtype, <void*>comm, <void*>stream)
            else:
                rc = self._bk_allgather(<void*>comm, <const void*>send, sendcount, <void*>recv, dtype, <void*>stream)
        return rc

    def broadcast(self, uintptr_t buf, size_t count, int dtype, int root, uintptr_t comm,
                  uintptr_t stream) -> int:
        """In place on every rank (NCCL, CNCL, BKCL: sendbuff == recvbuff; HCCL's is in place)."""
        cdef int rc
        with nogil:
            if self._fam == F_HCCL:
                rc = self._hccl_bcast(<void*>buf, <uint64_t>count, dtype, <uint32_t>root, <void*>comm, <void*>stream)
            elif self._fam == F_BKCL:
                rc = self._bk_bcast(<void*>comm, <const void*>buf, <void*>buf, count, dtype, root, <void*>stream)
            else:
                rc = self._nccl_bcast(<const void*>buf, <void*>buf, count, dtype, root, <void*>comm, <void*>stream)
        return rc

    def reduce(self, uintptr_t send, uintptr_t recv, size_t count, int dtype, int op, int root,
               uintptr_t comm, uintptr_t stream) -> int:
        cdef int rc
        with nogil:
            if self._fam != F_BKCL:
                rc = self._reduce(<const void*>send, <void*>recv, count, dtype, op, root, <void*>comm, <void*>stream)
            else:
                rc = self._bk_reduce(<void*>comm, <const void*>send, <void*>recv, count, dtype, op, root, <void*>stream)
        return rc

    def send(self, uintptr_t buf, size_t count, int dtype, int peer, uintptr_t comm, uintptr_t stream) -> int:
        cdef int rc
        with nogil:
            if self._fam != F_BKCL:
                rc = self._send(<void*>buf, count, dtype, peer, <void*>comm, <void*>stream)
            else:
                rc = self._bk_send(<void*>comm, <const void*>buf, count, peer, dtype, <void*>stream)
        return rc

    def recv(self, uintptr_t buf, size_t count, int dtype, int peer, uintptr_t comm, uintptr_t stream) -> int:
        cdef int rc
        with nogil:
            if self._fam != F_BKCL:
                rc = self._recv(<void*>buf, count, dtype, peer, <void*>comm, <void*>stream)
            else:
                rc = self._bk_recv(<void*>comm, <const void*>buf, count, peer, dtype, <void*>stream)
        return rc


cdef class DeviceRuntime:
    """A vendor's device runtime: device count/selection, streams (queues), memcpy, device memory,
    errors.

    ``style`` "cuda" covers cudart and the runtimes with its call shapes under another prefix
    and, where needed, other role names (hip, musa, mc, tops; Cambricon's cnrt with queues;
    Kunlunxin's xpu_*): ``memcpy(dst, src, n, kind)``, ``StreamQuery(stream)`` returning
    ``not_ready`` while busy. "acl" is Ascend's libascendcl (aclrtMemcpy takes the destination
    capacity; aclrtStreamQuery reports through an out-param; aclGetRecentErrMsg takes no code).

    The differences between cuda-style runtimes are data: ``kinds`` maps the four copy
    directions (host->host, host->device, device->host, device->device) to the runtime's own
    codes (cudart 0..3; cnrt: cnrtMemcpyHostToHost 3, HostToDev 0, DevToHost 2, DevToDev 1;
    xpu: XPU_HOST_TO_DEVICE 1, XPU_DEVICE_TO_HOST 0, XPU_DEVICE_TO_DEVICE 2, no host->host);
    ``malloc_args`` is 3 where the allocator takes a memory kind (aclrtMalloc's policy,
    xpu_malloc's XPUMemoryKind; 0 = the default/main memory in both) and ``host_alloc_args`` 2
    where the pinned allocator takes no flags (cnrtHostMalloc, aclrtMallocHost). A runtime
    without a stream query (xpu: only the blocking xpu_wait) is waited for by a StreamWaiter
    thread (``wait_stream``), so its waits keep their deadline. ``errors`` names the codes of a runtime
    whose error-string function is not exported (xpu_strerror is a static inline in
    xpu/defs.h).

    Device memory (the bridges' staging buffers; optional roles, ``has_allocator`` says whether
    both resolved), signatures as published by each vendor:

    * ``cudaError_t cudaMalloc(void **devPtr, size_t size)``, ``cudaFree(void *devPtr)``
      (CUDA Runtime API, Memory Management); hip: ``hipMalloc(void **ptr, size_t size)`` /
      ``hipFree(void *ptr)`` (HIP runtime API, same shapes); MUSA ``musaMalloc`` / ``musaFree``,
      MetaX ``mcMalloc`` / ``mcFree`` and Enflame ``topsMalloc`` / ``topsFree`` clone the cudart
      names under their prefix; ``cnrtRet_t cnrtMalloc(void **pPtr, size_t bytes)`` /
      ``cnrtFree(void *ptr)`` (cnrt.h, CNRT 6.0); ``int xpu_malloc(void** pdevptr, uint64_t sz,
      XPUMemoryKind kind)`` / ``xpu_free(void*)`` (xpu/runtime.h).
    * ``aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy)``,
      ``aclrtFree(void *devPtr)`` (CANN acl_rt.h; hicann/runtime docs): policy 0 =
      ACL_MEM_MALLOC_HUGE_FIRST (huge pages above 1 MiB, normal pages below), the one used here.

    Pinned host memory (optional: staging through pageable memory works, only slower):
    ``cudaHostAlloc(void **pHost, size_t size, unsigned int flags)`` / ``cudaFreeHost(void *)``
    (hip: ``hipHostAlloc`` is the deprecated alias of ``hipHostMalloc(void **ptr, size_t size,
    unsigned int flags)``, freed by ``hipHostFree``; ``topsHostMalloc(ptr, size, flags)`` /
    ``topsHostFree``; ``xpu_host_alloc(void** ptr, uint64_t sz, unsigned int flags)`` /
    ``xpu_host_free``); two-argument: ``cnrtHostMalloc(void **pPtr, size_t bytes)`` /
    ``cnrtFreeHost``, ACL ``aclrtMallocHost(void **hostPtr, size_t size)`` /
    ``aclrtFreeHost(void *hostPtr)``."""

    cdef void* _h
    cdef readonly str path, style
    cdef readonly int not_ready        # the query's "still running" code (cudaErrorNotReady = 600)
    cdef bint _acl
    cdef int _kinds[4]
    cdef bint _malloc3, _host3
    cdef dict _errors
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
    cdef f_malloc _malloc, _host_malloc2
    cdef f_malloc3 _malloc_3
    cdef f_host_alloc _host_alloc
    cdef f_ptr _free, _free_host
    cdef readonly bint has_allocator, has_pinned, has_query
    cdef StreamWaiter _waiter      # wait_stream's default waiter (no stream query), made at first use

    def __cinit__(self, str path, str style, dict symbols, int not_ready=600, kinds=(0, 1, 2, 3),
                  int malloc_args=0, int host_alloc_args=0, dict errors=None):
        if style not in ("cuda", "acl"):
            raise ValueError(f"unknown runtime style {style!r}")
        if len(kinds) != 4:
            raise ValueError("kinds: the runtime's codes for host->host, host->device, device->host, device->device")
        self.path, self.style, self.not_ready = path, style, not_ready
        self._acl = style == "acl"
        for i in range(4):
            self._kinds[i] = kinds[i]
        self._malloc3 = (malloc_args or (3 if self._acl else 2)) == 3
        self._host3 = (host_alloc_args or (2 if self._acl else 3)) == 3
        self._errors = dict(errors or {})
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
            self.has_query = self._query != NULL
        else:
            self._acl_query = <f_acl_query>_sym(self._h, symbols, "stream_query", False, path)
            self._acl_memcpy = <f_acl_memcpy>_sym(self._h, symbols, "memcpy", True, path)
            self._acl_msg = <f_acl_msg>_sym(self._h, symbols, "get_error_string", False, path)
            self.has_query = self._acl_query != NULL
        cdef void* m = _sym(self._h, symbols, "malloc", False, path)
        self._free = <f_ptr>_sym(self._h, symbols, "free", False, path)
        cdef void* hm = _sym(self._h, symbols, "host_alloc", False, path)
        self._free_host = <f_ptr>_sym(self._h, symbols, "free_host", False, path)
        if self._malloc3:
            self._malloc_3 = <f_malloc3>m
        else:
            self._malloc = <f_malloc>m
        if self._host3:
            self._host_alloc = <f_host_alloc>hm
        else:
            self._host_malloc2 = <f_malloc>hm
        self.has_allocator = m != NULL and self._free != NULL
        self.has_pinned = hm != NULL and self._free_host != NULL

    def error_string(self, int rc) -> str:
        if self.style == "cuda":
            if self._errstr != NULL:
                return _text(self._errstr(rc))
            return self._errors.get(rc) or self._errors.get(-rc) or f"error {rc}"
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
        """Blocking copy; kind 0 host->host, 1 host->device, 2 device->host, 3 device->device
        (translated to the runtime's own code; any other value is passed as is, for the runtime to
        refuse with its own error)."""
        cdef int rc
        cdef int k = self._kinds[kind] if 0 <= kind <= 3 else kind
        with nogil:
            if not self._acl:
                rc = self._memcpy(<void*>dst, <const void*>src, nbytes, k)
            else:
                rc = self._acl_memcpy(<void*>dst, nbytes, <const void*>src, nbytes, k)
        return rc

    def malloc(self, size_t nbytes):
        """(rc, ptr): ``nbytes`` of device memory on the current device (set_device first)."""
        cdef void* p = NULL
        cdef int rc
        if not self.has_allocator:
            raise OSError(f"{self.path}: the runtime has no device allocator (malloc/free symbols)")
        with nogil:
            if self._malloc3:
                rc = self._malloc_3(&p, nbytes, 0)      # ACL_MEM_MALLOC_HUGE_FIRST / XPU_MEM_MAIN
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
            if self._host3:
                rc = self._host_alloc(&p, nbytes, 0)          # cudaHostAllocDefault
            else:
                rc = self._host_malloc2(&p, nbytes)
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
                    bint nonblocking=False, StreamWaiter waiter=None):
        """Wait for ``stream``; every ~50 us check the communicator's async error and the deadline.

        Returns (code, detail): WAIT_OK; WAIT_TIMEOUT; WAIT_ASYNC with the library's error code;
        WAIT_RUNTIME with the runtime's error code. A runtime without a query function is
        synchronised by ``waiter``'s thread (default: one StreamWaiter of this runtime, shared by
        its callers), polled the same way; past the deadline that thread stays in the runtime's
        sync until it returns, then frees itself, and the waiter starts a new thread for the next
        wait. ``nonblocking``: the communicator was made with ``blocking = 0``, so its last call
        may still be putting work on the stream while the state is ``ncclInProgress``: an empty
        stream counts as done only once the state has left it."""
        cdef void* s = <void*>stream
        cdef void* c = <void*>comm
        cdef int rc = 0, err = 0, q
        cdef double deadline = hc_now() + timeout
        cdef Backoff bo
        cdef bint query = self.has_query
        cdef bint ask = lib is not None and c != NULL
        cdef Job* j = NULL
        if not query and waiter is None:
            if self._waiter is None:
                self._waiter = StreamWaiter(self)
            waiter = self._waiter
        # the waiter thread answers within about a microsecond when awake: poll without sleeping
        # for up to 2048 polls (StreamWaiter.pause: spin when the waiter runs on another CPU, else
        # yield), so a short wait costs the hand-over, not a 50 us sleep
        backoff_init(&bo, 0, 64 if query else 2048)
        with nogil:
            if not query:
                j = waiter.submit(s)
                if j == NULL:
                    rc = C_WAIT_RUNTIME
                    err = C_WAITER_NO_THREAD
            while j != NULL or query:
                if query:
                    q = self._query_once(s)
                else:
                    q = 0 if hc_load32_sc(&j.state) == JOB_DONE else 1
                if q == 0 and nonblocking and ask:
                    if lib.async_state(c, &err) == 0 and err != 0:
                        if err != C_IN_PROGRESS:
                            rc = C_WAIT_ASYNC
                            break
                        q = 1                     # the call has not put its work on the stream yet
                    err = 0
                if q == 0:
                    rc = C_WAIT_OK
                    if not query and j.rc != 0:
                        rc, err = C_WAIT_RUNTIME, j.rc
                    break
                if q != 1:
                    rc = C_WAIT_RUNTIME
                    err = q if q != -1 else 1
                    break
                if ask:
                    if lib.async_state(c, &err) == 0 and err != 0 and err != C_IN_PROGRESS:
                        rc = C_WAIT_ASYNC
                        break
                    err = 0
                if hc_now() > deadline:
                    rc = C_WAIT_TIMEOUT
                    break
                if query:
                    backoff_wait(&bo)
                else:
                    waiter.pause(j, &bo)
            if j != NULL:
                if rc == C_WAIT_OK or not waiter.give_up(j):
                    waiter.done(j)
                    _job_finish(j)
        return rc, err


def _abi():
    """The nccl.h facts this module compiles in: ncclConfig_t's leading fields as declared here
    (offsets, and the size it passes in ``config.size``) and the constants (tests/test_nccl_abi.py
    compares them with the nccl.h of the nvidia-nccl-cu12 wheel)."""
    cdef nccl_config_v21400 c
    cdef char* p = <char*>&c
    return {"offsetof(ncclConfig_t, size)": <char*>&c.size - p,
            "offsetof(ncclConfig_t, magic)": <char*>&c.magic - p,
            "offsetof(ncclConfig_t, version)": <char*>&c.version - p,
            "offsetof(ncclConfig_t, blocking)": <char*>&c.blocking - p,
            "NCCL_UNIQUE_ID_BYTES": UID_BYTES, "sizeof(ncclUniqueId)": sizeof(uid128),
            "NCCL_API_MAGIC": API_MAGIC, "ncclInProgress": C_IN_PROGRESS}
