/* Test double of the NCCL API (nccl.h ABI) under the made-up prefix "fakeccl": hetccl loads it
 * through the same NCCL-family binding as libnccl, by name + prefix. Not NVIDIA's library: host
 * memory only, synchronous, see fakecore.h. Enum values and result codes are nccl.h's.
 *
 * Built with -DPFX=<prefix> it exports the same API under another prefix (tests build two
 * libmccl.so with PFX=mccl and different -DFAKE_VERSION, as Moore Threads and MetaX both ship, to
 * show that the two load in one process and neither binds to the other's symbols: GetVersion reads
 * the version through an exported function, a call that the dynamic linker could interpose). */
#include "fakecore.h"
#ifndef PFX
#define PFX fakeccl
#endif
#ifndef FAKE_VERSION
#define FAKE_VERSION 22703
#endif
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define F(name) CAT(PFX, name)

typedef struct { char internal[128]; } uid_t128;
enum { ncclSuccess, ncclUnhandledCudaError, ncclSystemError, ncclInternalError, ncclInvalidArgument,
       ncclInvalidUsage, ncclRemoteError, ncclInProgress, ncclTimeout };

/* ncclDataType_t 0..11 -> core kinds (nccl.h: no 16-bit integers, no bool) */
static const int dt_kind[] = {K_I8, K_U8, K_I32, K_U32, K_I64, K_U64, K_F16, K_F32, K_F64, K_BF16, K_E4M3, K_E5M2};
static int kind(int dt) { return dt >= 0 && dt < 12 ? dt_kind[dt] : K_NONE; }
static int op_of(int op) { return op >= 0 && op <= 4 ? op : O_NONE; }   /* sum prod max min avg */

static int res(int core) {
    switch (core) {
    case C_OK: return ncclSuccess;
    case C_BADARG: return ncclInvalidArgument;
    case C_TOOBIG: return ncclInvalidUsage;
    case C_TIMEOUT: return ncclTimeout;
    default: return ncclSystemError;
    }
}

/* exported on purpose (see the top): the library's own call to it goes through the PLT */
__attribute__((noinline)) int F(FakeBuiltVersion)(void) { return FAKE_VERSION; }
static int version_code(void) { const char *s = getenv("FAKECCL_VERSION"); return s ? atoi(s) : F(FakeBuiltVersion)(); }

int F(GetVersion)(int *v) { if (!v) return ncclInvalidArgument; *v = version_code(); return ncclSuccess; }
int F(GetUniqueId)(uid_t128 *id) {
    if (!id) return ncclInvalidArgument;
    if (injected(NULL, "GetUniqueId")) return ncclSystemError;
    make_id(id->internal, sizeof id->internal);
    return ncclSuccess;
}
int F(CommInitRank)(fcomm **comm, int nranks, uid_t128 id, int rank) {
    if (!comm) return ncclInvalidArgument;
    if (injected(NULL, "CommInitRank")) return ncclSystemError;
    return res(core_init(comm, nranks, id.internal, rank));
}

/* ---- non-blocking creation (nccl.h >= 2.14: ncclCommInitRankConfig, ncclConfig_t.blocking) ----
 * The config is read as nccl.h lays it out: size_t size, unsigned magic (0xcafebeef), unsigned
 * version, then int blocking (only for version >= 2.14.0, as NCCL does). blocking = 0: the join
 * runs in a thread, the call returns ncclInProgress at once with the communicator, and
 * CommGetAsyncError reports ncclInProgress until the thread is done. CommAbort stops a join
 * that is still waiting. FAKECCL_NONBLOCKING_CALLS=<n> makes every call on such a communicator
 * (and GroupEnd) return ncclInProgress, as NCCL may while it is still enqueueing, and the next n
 * CommGetAsyncError polls answer ncclInProgress although the work is done (the stream is empty). */
typedef struct { size_t size; unsigned int magic; unsigned int version; int blocking; } config_v21400;

static void *join_thread(void *arg) {
    fcomm *c = arg;
    int rc = core_join(c, c->join_nranks, c->join_id, c->join_rank, &c->join_abort);
    atomic_store(&c->join_state, res(rc));
    return NULL;
}

static int inprogress_calls(void) { const char *s = getenv("FAKECCL_NONBLOCKING_CALLS"); return s ? atoi(s) : 0; }
static int pending(fcomm *c) { return c && c->joining && atomic_load(&c->join_state) == ncclInProgress; }
static int done(fcomm *c, int r) {
    int polls = inprogress_calls();
    if (r != ncclSuccess || !c || !c->joining || polls <= 0) return r;
    atomic_store(&c->busy_polls, polls);    /* "still enqueueing" for the next polls */
    return ncclInProgress;
}

int F(CommInitRankConfig)(fcomm **comm, int nranks, uid_t128 id, int rank, config_v21400 *config) {
    if (!comm) return ncclInvalidArgument;
    *comm = NULL;
    if (injected(NULL, "CommInitRankConfig")) return ncclSystemError;
    int blocking = 1;
    if (config) {
        if (config->magic != 0xcafebeef || config->size < sizeof(size_t) + 2 * sizeof(unsigned)) {
            set_err(NULL, "fakeccl: %s: ncclConfig_t not initialised by NCCL_CONFIG_INITIALIZER (size %zu)%.0zu",
                    "CommInitRankConfig", config->size, 0);
            return ncclInvalidArgument;
        }
        if (config->version >= 21400 && config->size >= sizeof(config_v21400) && config->blocking == 0)
            blocking = 0;
    }
    if (blocking) return res(core_init(comm, nranks, id.internal, rank));
    fcomm *c = calloc(1, sizeof(fcomm));
    c->joining = 1; c->join_nranks = nranks; c->join_rank = rank;
    memcpy(c->join_id, id.internal, sizeof c->join_id);
    atomic_store(&c->join_state, ncclInProgress);
    if (pthread_create(&c->joiner, NULL, join_thread, c) != 0) { free(c); return ncclSystemError; }
    *comm = c;
    return ncclInProgress;
}

/* a communicator of CommInitRankConfig (done or not) or of CommInitRank */
static int known(fcomm *c) { return c && (c->joining || c->magic == FAKE_MAGIC); }

static int leave(fcomm *c) {
    if (c && c->joining) {
        atomic_store(&c->join_abort, 1);
        pthread_join(c->joiner, NULL);
        c->joining = 0;
        if (c->magic != FAKE_MAGIC) { free(c); return ncclSuccess; }   /* the join never finished */
    }
    return res(core_leave(c));
}

/* ---- ncclCommShrink (nccl.h >= 2.27): the parent's ranks without the excluded ones (ascending),
 * numbered in order. The child's shared file is named after the parent's and the excluded ranks,
 * so every survivor finds the same one with no id passed around. The config (NULL: the parent's)
 * and the flags (NCCL_SHRINK_ABORT) change nothing in a double without operations in flight. */
int F(CommShrink)(fcomm *c, int *excl, int nexcl, fcomm **out, void *config, int flags) {
    (void)config; (void)flags;
    if (!out) return ncclInvalidArgument;
    *out = NULL;
    if (!core_check(c) || nexcl < 0 || nexcl >= c->nranks || (nexcl && !excl)) return ncclInvalidArgument;
    if (injected(c, "CommShrink")) return ncclSystemError;
    char id[128];
    memcpy(id, c->id, sizeof id);
    size_t len = strnlen(id + 8, sizeof id - 8) + 8;
    int me = c->rank;
    for (int i = 0; i < nexcl; i++) {
        if (excl[i] < 0 || excl[i] >= c->nranks || excl[i] == c->rank || (i && excl[i] <= excl[i - 1])) {
            set_err(c, "fakeccl: %s: excludeRanksList must hold other ranks, ascending (entry %zu)%.0zu",
                    "CommShrink", (size_t)i, 0);
            return ncclInvalidArgument;
        }
        if (excl[i] < c->rank) me--;
        int w = snprintf(id + len, sizeof id - len, "%c%d", i ? ',' : 'x', excl[i]);
        if (w < 0 || (size_t)w >= sizeof id - len) return ncclInternalError;
        len += (size_t)w;
    }
    return res(core_init(out, c->nranks - nexcl, id, me));
}

int F(CommDestroy)(fcomm *c) { return leave(c); }
int F(CommAbort)(fcomm *c) { return leave(c); }
int F(CommGetAsyncError)(fcomm *c, int *err) {
    if (!known(c) || !err) return ncclInvalidArgument;
    int state = c->joining ? atomic_load(&c->join_state) : ncclSuccess;
    if (state == ncclSuccess && atomic_load(&c->busy_polls) > 0) {
        atomic_fetch_sub(&c->busy_polls, 1);
        state = ncclInProgress;
    }
    *err = state != ncclSuccess ? state : async_knob();
    return ncclSuccess;
}
const char *F(GetErrorString)(int r) {
    static const char *s[] = {"no error", "unhandled cuda error (run with NCCL_DEBUG=INFO for details)",
        "unhandled system error (run with NCCL_DEBUG=INFO for details)", "internal error - please report this issue to the NCCL developers",
        "invalid argument (run with NCCL_DEBUG=WARN for details)", "invalid usage (run with NCCL_DEBUG=WARN for details)",
        "remote process exited or there was a network error", "NCCL operation in progress", "operation timed out"};
    return r >= 0 && r < 9 ? s[r] : "unknown result code";
}
const char *F(GetLastError)(fcomm *c) { return known(c) && c->last_error[0] ? c->last_error : g_last_error; }
static _Atomic int group_depth;
int F(GroupStart)(void) { atomic_fetch_add(&group_depth, 1); return ncclSuccess; }
int F(GroupEnd)(void) {
    if (atomic_load(&group_depth) <= 0) { set_err(NULL, "fakeccl: %s without GroupStart%.0zu%.0zu", "GroupEnd", 0, 0); return ncclInvalidUsage; }
    atomic_fetch_sub(&group_depth, 1);
    return inprogress_calls() > 0 ? ncclInProgress : ncclSuccess;
}

int F(AllReduce)(const void *s, void *r, size_t n, int dt, int op, fcomm *c, void *stream) {
    (void)stream; if (pending(c)) return ncclInvalidUsage; return done(c, res(core_allreduce(c, s, r, n, kind(dt), op_of(op), 0, 0)));
}
int F(Reduce)(const void *s, void *r, size_t n, int dt, int op, int root, fcomm *c, void *stream) {
    (void)stream; if (pending(c)) return ncclInvalidUsage; return done(c, res(core_allreduce(c, s, r, n, kind(dt), op_of(op), root, 1)));
}
int F(ReduceScatter)(const void *s, void *r, size_t n, int dt, int op, fcomm *c, void *stream) {
    (void)stream; if (pending(c)) return ncclInvalidUsage; return done(c, res(core_reduce_scatter(c, s, r, n, kind(dt), op_of(op))));
}
int F(AllGather)(const void *s, void *r, size_t n, int dt, fcomm *c, void *stream) {
    (void)stream; if (pending(c)) return ncclInvalidUsage; return done(c, res(core_allgather(c, s, r, n, kind(dt))));
}
int F(Broadcast)(const void *s, void *r, size_t n, int dt, int root, fcomm *c, void *stream) {
    (void)stream; if (pending(c)) return ncclInvalidUsage; return done(c, res(core_broadcast(c, s, r, n, kind(dt), root)));
}
int F(Send)(const void *s, size_t n, int dt, int peer, fcomm *c, void *stream) {
    (void)stream; if (pending(c)) return ncclInvalidUsage; return done(c, res(core_p2p(c, (void *)s, n, kind(dt), peer, 1)));
}
int F(Recv)(void *r, size_t n, int dt, int peer, fcomm *c, void *stream) {
    (void)stream; if (pending(c)) return ncclInvalidUsage; return done(c, res(core_p2p(c, r, n, kind(dt), peer, 0)));
}
