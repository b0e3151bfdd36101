/* Test double shared by fakeccl.c (NCCL API) and fakehccl.c (HCCL API): a communicator over host
 * memory, so hetccl's vendor binding can be exercised for real on a machine without a GPU.
 *
 * NOT a vendor library: it implements the *ABI* (symbol names, argument order, enum values, result
 * codes) of the NCCL/HCCL calls hetccl uses, with host memcpy and host reductions. One rank works
 * in private memory; N ranks map one file (named inside the unique id, in $FAKECCL_DIR or /tmp,
 * unlinked as soon as every rank has mapped it) holding a process-shared barrier, one slot per rank
 * and one mailbox per ordered pair for send/recv. Every collective runs synchronously in the call
 * (the stream argument is ignored): slot <- send, barrier, combine every slot in rank order,
 * barrier.
 *
 * Failure knobs, read at every call (tests set them per process):
 *   FAKECCL_FAIL=<Call>       the named call (e.g. AllReduce) fails with a system error
 *   FAKECCL_ASYNC_ERROR=<n>   CommGetAsyncError reports n
 *   FAKECCL_SLOT_BYTES=<n>    per-rank slot size (default 1 MiB); larger messages fail cleanly
 *   FAKECCL_WAIT=<s>          how long a join waits for its peers (default 60)
 *   FAKECCL_INIT_HANG=1       this rank's join never happens (CommInitRank waits WAIT_SECONDS and
 *                             times out; a non-blocking CommInitRankConfig stays in progress until
 *                             aborted), so its peers wait for it: a peer that never arrives
 *
 * Joining (core_init) waits for the shared file, for rank 0's header and for every rank to have
 * mapped it, each with a WAIT_SECONDS deadline and an abort flag (a non-blocking join runs in a
 * thread that CommAbort stops): no wait in it is unbounded.
 */
#ifndef FAKECORE_H
#define FAKECORE_H
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { K_I8, K_U8, K_I16, K_U16, K_I32, K_U32, K_I64, K_U64, K_F16, K_BF16, K_F32, K_F64, K_E4M3,
       K_E5M2, K_NONE };
enum { O_SUM, O_PROD, O_MAX, O_MIN, O_AVG, O_NONE };
enum { C_OK, C_BADARG, C_TOOBIG, C_SYS, C_TIMEOUT, C_INJECTED };

static const size_t k_size[] = {1, 1, 2, 2, 4, 4, 8, 8, 2, 2, 4, 8, 1, 1};
#define FAKE_MAGIC 0x46414b45434f5245ULL  /* "FAKECORE" */
#define ID_MAGIC "FAKEID01"
/* how long a join or a send/recv waits for its peers (FAKECCL_WAIT seconds, default 60) */
static double wait_seconds(void) { const char *s = getenv("FAKECCL_WAIT"); return s ? atof(s) : 60.0; }
#define WAIT_SECONDS wait_seconds()

typedef struct {
    _Atomic uint64_t ready;
    _Atomic int attached;
    _Atomic int left;
    int nranks;
    size_t slot;
    pthread_barrier_t bar;
} hdr_t;

typedef struct { _Atomic int full; size_t n; } mbox_t;

typedef struct {
    uint64_t magic;
    int rank, nranks;
    size_t slot, map_bytes;
    hdr_t *hdr;
    char *slots;         /* nranks * slot */
    mbox_t *boxes;       /* nranks * nranks headers, then nranks * nranks * slot bytes */
    char *boxdata;
    char *scratch;
    char last_error[256];
    char id[128];        /* the unique id it joined with (a shrink names its child after it) */
    /* a non-blocking join (fakeccl.c): its thread, abort flag and result; join_state is
     * ncclInProgress (7) while it runs, then the core result mapped to the API's code */
    pthread_t joiner;
    int joining;
    _Atomic int join_abort;
    _Atomic int join_state;
    int join_nranks, join_rank;
    char join_id[128];
    _Atomic int busy_polls;   /* CommGetAsyncError polls still answering ncclInProgress after a call */
} fcomm;

static char g_last_error[256];

static void set_err(fcomm *c, const char *fmt, const char *what, size_t a, size_t b) {
    char *dst = c ? c->last_error : g_last_error;
    snprintf(dst, 256, fmt, what, a, b);
    if (c) memcpy(g_last_error, c->last_error, 256);
}

static double now_s(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static size_t slot_bytes(void) {
    const char *s = getenv("FAKECCL_SLOT_BYTES");
    return s ? (size_t)strtoull(s, NULL, 10) : (size_t)1 << 20;
}

static int injected(fcomm *c, const char *call) {
    const char *s = getenv("FAKECCL_FAIL");
    if (s && strcmp(s, call) == 0) {
        set_err(c, "fakeccl: injected failure in %s%.0zu%.0zu", call, 0, 0);
        return 1;
    }
    return 0;
}

/* ---- the unique id: magic + path of the shared file ------------------------------------------- */
static void make_id(char *id, size_t idbytes) {
    static _Atomic unsigned counter;
    const char *dir = getenv("FAKECCL_DIR");
    memset(id, 0, idbytes);
    memcpy(id, ID_MAGIC, 8);
    snprintf(id + 8, idbytes - 8, "%s/fakeccl-%d-%lld-%u", dir ? dir : "/tmp", (int)getpid(),
             (long long)(now_s() * 1e9), atomic_fetch_add(&counter, 1));
}

static size_t map_size(int n, size_t slot) {
    return 4096 + (size_t)n * slot + (size_t)n * n * sizeof(mbox_t) + (size_t)n * n * slot;
}

static int hang_knob(void) { const char *s = getenv("FAKECCL_INIT_HANG"); return s && atoi(s) != 0; }

/* wait until *flag (when given) is set or the deadline passes: 1 when stopped, 0 on time out */
static int stopped(_Atomic int *abort_flag) { return abort_flag && atomic_load(abort_flag); }

/* Join: the caller's zeroed ``c`` becomes rank ``rank`` of the communicator named by ``id``.
 * ``abort_flag`` (may be NULL) stops every wait; the shared file is unlinked on a failed join. */
static int core_join(fcomm *c, int nranks, const char *id, int rank, _Atomic int *abort_flag) {
    if (nranks < 1 || rank < 0 || rank >= nranks) {
        set_err(NULL, "fakeccl: %s: rank %zu of %zu ranks is out of range", "CommInitRank", rank, nranks);
        return C_BADARG;
    }
    if (memcmp(id, ID_MAGIC, 8) != 0) {
        set_err(NULL, "fakeccl: %s: not a unique id from GetUniqueId%.0zu%.0zu", "CommInitRank", 0, 0);
        return C_BADARG;
    }
    double deadline = now_s() + WAIT_SECONDS;
    if (hang_knob()) {                      /* this rank never arrives */
        while (!stopped(abort_flag) && now_s() < deadline) usleep(1000);
        set_err(NULL, "fakeccl: %s: FAKECCL_INIT_HANG: this rank never joined%.0zu%.0zu", "CommInitRank", 0, 0);
        return C_TIMEOUT;
    }
    c->rank = rank; c->nranks = nranks; c->slot = slot_bytes();
    memcpy(c->id, id, sizeof c->id);
    c->map_bytes = map_size(nranks, c->slot);
    char *base;
    if (nranks == 1) {
        base = calloc(1, c->map_bytes);
        c->hdr = (hdr_t *)base;
    } else {
        const char *path = id + 8;
        int fd = open(path, O_RDWR | O_CREAT, 0600);
        if (fd < 0) { set_err(c, "fakeccl: %s: cannot open the shared file (errno %zu)%.0zu", "CommInitRank", errno, 0); return C_SYS; }
        if (rank == 0 && ftruncate(fd, (off_t)c->map_bytes) != 0) { close(fd); unlink(path); return C_SYS; }
        struct stat st;
        while (fstat(fd, &st) == 0 && (size_t)st.st_size < c->map_bytes) {
            if (now_s() > deadline || stopped(abort_flag)) { close(fd); unlink(path); return C_TIMEOUT; }
            usleep(1000);
        }
        base = mmap(NULL, c->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (base == MAP_FAILED) { unlink(path); return C_SYS; }
        c->hdr = (hdr_t *)base;
        if (rank == 0) {
            pthread_barrierattr_t a;
            pthread_barrierattr_init(&a);
            pthread_barrierattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
            pthread_barrier_init(&c->hdr->bar, &a, (unsigned)nranks);
            c->hdr->nranks = nranks; c->hdr->slot = c->slot;
            atomic_store(&c->hdr->ready, FAKE_MAGIC);
        }
        while (atomic_load(&c->hdr->ready) != FAKE_MAGIC) {
            if (now_s() > deadline || stopped(abort_flag)) { munmap(base, c->map_bytes); unlink(path); return C_TIMEOUT; }
            usleep(1000);
        }
        if (atomic_fetch_add(&c->hdr->attached, 1) == nranks - 1)
            unlink(path);                   /* every rank has it mapped: nothing is left behind */
        while (atomic_load(&c->hdr->attached) < nranks) {   /* every rank is in: the join is done */
            if (now_s() > deadline || stopped(abort_flag)) {
                set_err(c, "fakeccl: %s: %zu of %zu ranks joined before the wait ended", "CommInitRank",
                        (size_t)atomic_load(&c->hdr->attached), nranks);
                munmap(base, c->map_bytes); unlink(path); return C_TIMEOUT;
            }
            usleep(1000);
        }
    }
    c->scratch = malloc(c->slot ? c->slot : 1);
    c->slots = base + 4096;
    c->boxes = (mbox_t *)(c->slots + (size_t)nranks * c->slot);
    c->boxdata = (char *)(c->boxes + (size_t)nranks * nranks);
    c->magic = FAKE_MAGIC;
    return C_OK;
}

static int core_init(fcomm **out, int nranks, const char *id, int rank) {
    *out = NULL;
    fcomm *c = calloc(1, sizeof(fcomm));
    int rc = core_join(c, nranks, id, rank, NULL);
    if (rc != C_OK) { free(c); return rc; }
    *out = c;
    return C_OK;
}

static int core_check(fcomm *c) { return c && c->magic == FAKE_MAGIC; }

static void core_destroy(fcomm *c) {
    if (c->nranks == 1) free(c->hdr);
    else munmap(c->hdr, c->map_bytes);
    free(c->scratch);
    c->magic = 0;
    free(c);
}

static void sync_all(fcomm *c) { if (c->nranks > 1) pthread_barrier_wait(&c->hdr->bar); }

/* ---- element conversion: every kind through double (exact for the integer ranges tests use) --- */
static float bf16_to_f(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static uint16_t f_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
static double fp8_decode(uint8_t b, int e5m2) {
    int s = b >> 7, e, m; double v;
    if (e5m2) { e = (b >> 2) & 31; m = b & 3;
        if (e == 31) return m ? NAN : (s ? -INFINITY : INFINITY);
        v = e ? ldexp(1 + m / 4.0, e - 15) : ldexp(m / 4.0, -14);
    } else { e = (b >> 3) & 15; m = b & 7;
        if (e == 15 && m == 7) return NAN;
        v = e ? ldexp(1 + m / 8.0, e - 7) : ldexp(m / 8.0, -6);
    }
    return s ? -v : v;
}
static uint8_t fp8_encode(double x, int e5m2) {  /* nearest code, ties to even (brute force) */
    if (isnan(x)) return e5m2 ? 0x7f : 0x7f;
    int best = 0; double bd = INFINITY;
    for (int b = 0; b < 256; b++) {
        double v = fp8_decode((uint8_t)b, e5m2);
        if (isnan(v)) continue;
        double d = fabs(v - x);
        if (d < bd || (d == bd && (b & 1) == 0 && (best & 1))) { bd = d; best = b; }
    }
    return (uint8_t)best;
}

static double get_el(const char *p, int k, size_t i) {
    switch (k) {
    case K_I8: return ((const int8_t *)p)[i];    case K_U8: return ((const uint8_t *)p)[i];
    case K_I16: return ((const int16_t *)p)[i];  case K_U16: return ((const uint16_t *)p)[i];
    case K_I32: return ((const int32_t *)p)[i];  case K_U32: return ((const uint32_t *)p)[i];
    case K_I64: return (double)((const int64_t *)p)[i];  case K_U64: return (double)((const uint64_t *)p)[i];
    case K_F16: return (double)((const _Float16 *)p)[i];
    case K_BF16: return bf16_to_f(((const uint16_t *)p)[i]);
    case K_F32: return ((const float *)p)[i];    case K_F64: return ((const double *)p)[i];
    case K_E4M3: return fp8_decode(((const uint8_t *)p)[i], 0);
    default: return fp8_decode(((const uint8_t *)p)[i], 1);
    }
}
static void put_el(char *p, int k, size_t i, double v) {
    switch (k) {
    case K_I8: ((int8_t *)p)[i] = (int8_t)v; break;     case K_U8: ((uint8_t *)p)[i] = (uint8_t)v; break;
    case K_I16: ((int16_t *)p)[i] = (int16_t)v; break;  case K_U16: ((uint16_t *)p)[i] = (uint16_t)v; break;
    case K_I32: ((int32_t *)p)[i] = (int32_t)v; break;  case K_U32: ((uint32_t *)p)[i] = (uint32_t)v; break;
    case K_I64: ((int64_t *)p)[i] = (int64_t)v; break;  case K_U64: ((uint64_t *)p)[i] = (uint64_t)v; break;
    case K_F16: ((_Float16 *)p)[i] = (_Float16)(float)v; break;
    case K_BF16: ((uint16_t *)p)[i] = f_to_bf16((float)v); break;
    case K_F32: ((float *)p)[i] = (float)v; break;      case K_F64: ((double *)p)[i] = v; break;
    case K_E4M3: ((uint8_t *)p)[i] = fp8_encode(v, 0); break;
    default: ((uint8_t *)p)[i] = fp8_encode(v, 1); break;
    }
}
static int is_int(int k) { return k <= K_U64; }

/* out[i] = op over ranks r of slot_r[offset + i], combined in rank order */
static void combine(fcomm *c, char *out, size_t offset, size_t count, int k, int op) {
    for (size_t i = 0; i < count; i++) {
        double acc = get_el(c->slots, k, offset + i);
        for (int r = 1; r < c->nranks; r++) {
            double v = get_el(c->slots + (size_t)r * c->slot, k, offset + i);
            switch (op) {
            case O_SUM: case O_AVG: acc += v; break;
            case O_PROD: acc *= v; break;
            case O_MAX: acc = v > acc ? v : acc; break;
            default: acc = v < acc ? v : acc; break;
            }
        }
        if (op == O_AVG) acc = is_int(k) ? trunc(acc / c->nranks) : acc / c->nranks;
        put_el(out, k, i, acc);
    }
}

static int too_big(fcomm *c, const char *call, size_t nbytes) {
    if (nbytes <= c->slot) return 0;
    set_err(c, "fakeccl: %s of %zu bytes exceeds the test double's slot (%zu bytes)", call, nbytes, c->slot);
    return 1;
}

static int check_args(fcomm *c, const char *call, int k, int op, int need_op) {
    if (!core_check(c)) { set_err(NULL, "fakeccl: %s: invalid communicator%.0zu%.0zu", call, 0, 0); return C_BADARG; }
    if (k == K_NONE) { set_err(c, "fakeccl: %s: invalid data type%.0zu%.0zu", call, 0, 0); return C_BADARG; }
    if (need_op && op == O_NONE) { set_err(c, "fakeccl: %s: invalid reduction op%.0zu%.0zu", call, 0, 0); return C_BADARG; }
    if (injected(c, call)) return C_INJECTED;
    return C_OK;
}

static int core_allreduce(fcomm *c, const void *s, void *r, size_t n, int k, int op, int root, int only_root) {
    const char *call = only_root ? "Reduce" : "AllReduce";
    int rc = check_args(c, call, k, op, 1);
    if (rc) return rc;
    size_t nb = n * k_size[k];
    if (too_big(c, call, nb)) return C_TOOBIG;
    memcpy(c->slots + (size_t)c->rank * c->slot, s, nb);
    sync_all(c);
    if (!only_root || c->rank == root) {
        combine(c, c->scratch, 0, n, k, op);
        memcpy(r, c->scratch, nb);
    }
    sync_all(c);
    return C_OK;
}

static int core_reduce_scatter(fcomm *c, const void *s, void *r, size_t n, int k, int op) {
    int rc = check_args(c, "ReduceScatter", k, op, 1);
    if (rc) return rc;
    size_t nb = n * k_size[k];
    if (too_big(c, "ReduceScatter", nb * c->nranks)) return C_TOOBIG;
    memcpy(c->slots + (size_t)c->rank * c->slot, s, nb * c->nranks);
    sync_all(c);
    combine(c, c->scratch, (size_t)c->rank * n, n, k, op);
    memcpy(r, c->scratch, nb);
    sync_all(c);
    return C_OK;
}

static int core_allgather(fcomm *c, const void *s, void *r, size_t n, int k) {
    int rc = check_args(c, "AllGather", k, 0, 0);
    if (rc) return rc;
    size_t nb = n * k_size[k];
    if (too_big(c, "AllGather", nb)) return C_TOOBIG;
    memcpy(c->slots + (size_t)c->rank * c->slot, s, nb);
    sync_all(c);
    for (int q = 0; q < c->nranks; q++) memcpy((char *)r + (size_t)q * nb, c->slots + (size_t)q * c->slot, nb);
    sync_all(c);
    return C_OK;
}

static int core_broadcast(fcomm *c, const void *s, void *r, size_t n, int k, int root) {
    int rc = check_args(c, "Broadcast", k, 0, 0);
    if (rc) return rc;
    if (root < 0 || root >= c->nranks) { set_err(c, "fakeccl: %s: root %zu out of %zu ranks", "Broadcast", root, c->nranks); return C_BADARG; }
    size_t nb = n * k_size[k];
    if (too_big(c, "Broadcast", nb)) return C_TOOBIG;
    if (c->rank == root) memcpy(c->slots + (size_t)root * c->slot, s, nb);
    sync_all(c);
    if (c->rank != root || r != s) memcpy(r, c->slots + (size_t)root * c->slot, nb);
    sync_all(c);
    return C_OK;
}

static int wait_box(mbox_t *b, int want) {
    double deadline = now_s() + WAIT_SECONDS;
    while (atomic_load(&b->full) != want) {
        if (now_s() > deadline) return C_TIMEOUT;
        sched_yield();
    }
    return C_OK;
}

static int core_p2p(fcomm *c, void *buf, size_t n, int k, int peer, int is_send) {
    const char *call = is_send ? "Send" : "Recv";
    int rc = check_args(c, call, k, 0, 0);
    if (rc) return rc;
    if (peer < 0 || peer >= c->nranks) { set_err(c, "fakeccl: %s: peer %zu out of %zu ranks", call, peer, c->nranks); return C_BADARG; }
    size_t nb = n * k_size[k];
    if (too_big(c, call, nb)) return C_TOOBIG;
    size_t pair = is_send ? (size_t)c->rank * c->nranks + peer : (size_t)peer * c->nranks + c->rank;
    mbox_t *b = c->boxes + pair;
    char *data = c->boxdata + pair * c->slot;
    if (is_send) {
        if (wait_box(b, 0)) return C_TIMEOUT;
        memcpy(data, buf, nb); b->n = nb;
        atomic_store(&b->full, 1);
    } else {
        if (wait_box(b, 1)) return C_TIMEOUT;
        if (b->n != nb) { set_err(c, "fakeccl: Recv%s of %zu bytes matched a send of %zu bytes", "", nb, b->n); atomic_store(&b->full, 0); return C_BADARG; }
        memcpy(buf, data, nb);
        atomic_store(&b->full, 0);
    }
    return C_OK;
}

static int core_leave(fcomm *c) {
    if (!core_check(c)) { set_err(NULL, "fakeccl: %s: invalid communicator%.0zu%.0zu", "CommDestroy", 0, 0); return C_BADARG; }
    core_destroy(c);
    return C_OK;
}

__attribute__((unused)) static int async_knob(void) { const char *s = getenv("FAKECCL_ASYNC_ERROR"); return s ? atoi(s) : 0; }
#endif
