/* Test double of a device runtime, in both call styles hetccl binds: cudart-style under the prefix
 * "fakert" (fakertStreamCreate, fakertMemcpy(dst, src, n, kind), ...) and Ascend-ACL-style under
 * "fakeacl" (fakeaclrtCreateStream, fakeaclrtMemcpy(dst, destMax, src, n, kind), ...). "Device"
 * memory is host memory; streams are checked handles. Not a vendor runtime.
 *   FAKERT_DEVICES=<n>   number of devices (default 1); 0 = no device (cudaErrorNoDevice, 100)
 *   FAKERT_BUSY=1        streams never finish (StreamQuery: cudaErrorNotReady 600 / ACL status 1),
 *                        to exercise the bridge's deadline and async-error checks
 *   FAKERT_NO_PINNED=1   no pinned host allocator (HostAlloc / aclrtMallocHost fail), to exercise
 *                        staging through pageable memory
 * Allocations (Malloc / HostAlloc, both styles) are malloc-backed and tracked: freeing an unknown
 * pointer fails like cudaFree does, and fakertLiveAllocations() lets a test check for leaks.
 * fakert_hang_next_waits(n) makes the next n calls of fakexpu_wait block until
 * fakert_release_waits() (a device sync that never returns, for the stream waiter's replacement);
 * fakert_hung_waits() says how many are blocked now. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>

enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidMemcpyDirection = 21,
       cudaErrorNoDevice = 100, cudaErrorInvalidDevice = 101, cudaErrorInvalidResourceHandle = 400 };
#define STREAM_MAGIC 0x53545245u
typedef struct { uint32_t magic; } stream_t;
static char last_msg[128];

static int ndev(void) { const char *s = getenv("FAKERT_DEVICES"); return s ? atoi(s) : 1; }
static int fail(int code, const char *what) { snprintf(last_msg, sizeof last_msg, "fakert: %s", what); return code; }
static int good(void *s) { return s && ((stream_t *)s)->magic == STREAM_MAGIC; }

int fakertGetDeviceCount(int *n) {
    if (!n) return cudaErrorInvalidValue;
    *n = 0;
    if (ndev() <= 0) return fail(cudaErrorNoDevice, "no CUDA-capable device is detected");
    *n = ndev();
    return cudaSuccess;
}
int fakertSetDevice(int d) { return d >= 0 && d < ndev() ? cudaSuccess : fail(cudaErrorInvalidDevice, "invalid device ordinal"); }
int fakertStreamCreate(void **s) {
    if (!s) return cudaErrorInvalidValue;
    stream_t *t = malloc(sizeof *t); t->magic = STREAM_MAGIC; *s = t;
    return cudaSuccess;
}
int fakertStreamSynchronize(void *s) { return good(s) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle, "invalid resource handle"); }
static int busy(void) { const char *s = getenv("FAKERT_BUSY"); return s && *s == '1'; }
int fakertStreamQuery(void *s) { int rc = fakertStreamSynchronize(s); return rc ? rc : busy() ? 600 : cudaSuccess; }
int fakertStreamDestroy(void *s) {
    if (!good(s)) return fail(cudaErrorInvalidResourceHandle, "invalid resource handle");
    ((stream_t *)s)->magic = 0; free(s);
    return cudaSuccess;
}
int fakertMemcpy(void *d, const void *s, size_t n, int kind) {
    if (kind < 0 || kind > 4) return fail(cudaErrorInvalidMemcpyDirection, "invalid copy direction for memcpy");
    if (n && (!d || !s)) return fail(cudaErrorInvalidValue, "invalid argument");
    memmove(d, s, n);
    return cudaSuccess;
}
/* ---- tracked allocations ------------------------------------------------------------------- */
typedef struct alloc { void *p; struct alloc *next; } alloc_t;
static alloc_t *live;
static long nlive;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int pinned_off(void) { const char *s = getenv("FAKERT_NO_PINNED"); return s && *s == '1'; }

static int track(void **p, size_t n) {
    if (!p) return cudaErrorInvalidValue;
    *p = NULL;
    if (ndev() <= 0) return fail(cudaErrorNoDevice, "no CUDA-capable device is detected");
    alloc_t *a = malloc(sizeof *a);
    void *m = malloc(n ? n : 1);
    if (!a || !m) { free(a); free(m); return fail(2, "out of memory"); }
    memset(m, 0xA5, n);                 /* poison: a test reading unstaged memory sees garbage */
    pthread_mutex_lock(&lock);
    a->p = m; a->next = live; live = a; nlive++;
    pthread_mutex_unlock(&lock);
    *p = m;
    return cudaSuccess;
}
static int untrack(void *p) {
    if (!p) return cudaSuccess;          /* cudaFree(NULL) is a no-op */
    pthread_mutex_lock(&lock);
    for (alloc_t **q = &live; *q; q = &(*q)->next) {
        if ((*q)->p == p) {
            alloc_t *a = *q; *q = a->next; nlive--;
            pthread_mutex_unlock(&lock);
            free(a->p); free(a);
            return cudaSuccess;
        }
    }
    pthread_mutex_unlock(&lock);
    return fail(cudaErrorInvalidValue, "invalid argument (free of a pointer not allocated here)");
}
long fakertLiveAllocations(void) { pthread_mutex_lock(&lock); long n = nlive; pthread_mutex_unlock(&lock); return n; }
int fakertMalloc(void **p, size_t n) { return track(p, n); }
int fakertFree(void *p) { return untrack(p); }
int fakertHostAlloc(void **p, size_t n, unsigned int flags) {
    (void)flags;
    return pinned_off() ? fail(cudaErrorInvalidValue, "pinned memory disabled (FAKERT_NO_PINNED)") : track(p, n);
}
int fakertFreeHost(void *p) { return untrack(p); }

const char *fakertGetErrorString(int rc) {
    switch (rc) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case 600: return "device not ready";
    default: return "unrecognized error code";
    }
}

/* ---- ACL style (acl_rt.h): aclError = int, ACL_ERROR_NONE = 0 --------------------------------- */
enum { ACL_ERROR_NONE = 0, ACL_ERROR_INVALID_PARAM = 100000, ACL_ERROR_RT_NO_DEVICE = 107002 };
int fakeaclrtGetDeviceCount(uint32_t *n) {
    if (!n) return ACL_ERROR_INVALID_PARAM;
    *n = 0;
    if (ndev() <= 0) return fail(ACL_ERROR_RT_NO_DEVICE, "no NPU device found");
    *n = (uint32_t)ndev();
    return ACL_ERROR_NONE;
}
int fakeaclrtSetDevice(int32_t d) { return d >= 0 && d < ndev() ? ACL_ERROR_NONE : fail(ACL_ERROR_INVALID_PARAM, "invalid device id"); }
int fakeaclrtCreateStream(void **s) { return fakertStreamCreate(s) ? ACL_ERROR_INVALID_PARAM : ACL_ERROR_NONE; }
int fakeaclrtSynchronizeStream(void *s) { return good(s) ? ACL_ERROR_NONE : fail(ACL_ERROR_INVALID_PARAM, "invalid stream"); }
int fakeaclrtStreamQuery(void *s, int *status) {
    if (!good(s) || !status) return fail(ACL_ERROR_INVALID_PARAM, "invalid stream");
    *status = busy() ? 1 : 0;  /* ACL_STREAM_STATUS_COMPLETE = 0, NOT_READY = 1 */
    return ACL_ERROR_NONE;
}
int fakeaclrtDestroyStream(void *s) { return fakertStreamDestroy(s) ? ACL_ERROR_INVALID_PARAM : ACL_ERROR_NONE; }
int fakeaclrtMemcpy(void *d, size_t dmax, const void *s, size_t n, int kind) {
    if (n > dmax) return fail(ACL_ERROR_INVALID_PARAM, "destination smaller than the copy");
    return fakertMemcpy(d, s, n, kind) ? ACL_ERROR_INVALID_PARAM : ACL_ERROR_NONE;
}
const char *fakeaclGetRecentErrMsg(void) { return last_msg[0] ? last_msg : NULL; }
static int acl_inits;
int fakeaclInit(const char *config) { (void)config; return acl_inits++ ? 100002 /* ACL_ERROR_REPEAT_INITIALIZE */ : ACL_ERROR_NONE; }
int fakeaclrtMalloc(void **p, size_t n, int policy) {
    if (policy < 0 || policy > 5) return fail(ACL_ERROR_INVALID_PARAM, "invalid memory policy");
    if (n == 0) return fail(ACL_ERROR_INVALID_PARAM, "size must not be 0");   /* as aclrtMalloc */
    return track(p, n) ? ACL_ERROR_INVALID_PARAM : ACL_ERROR_NONE;
}
int fakeaclrtFree(void *p) { return untrack(p) ? ACL_ERROR_INVALID_PARAM : ACL_ERROR_NONE; }
int fakeaclrtMallocHost(void **p, size_t n) {
    if (pinned_off()) return fail(ACL_ERROR_INVALID_PARAM, "pinned memory disabled (FAKERT_NO_PINNED)");
    return track(p, n) ? ACL_ERROR_INVALID_PARAM : ACL_ERROR_NONE;
}
int fakeaclrtFreeHost(void *p) { return untrack(p) ? ACL_ERROR_INVALID_PARAM : ACL_ERROR_NONE; }

/* ---- CNRT style (cnrt.h, CNRT 6.0): queues, cnrtRet_t, cnrtErrorNotReady = 1 while busy,
 * cnrtMemTransDir_t HostToDev 0, DevToDev 1, DevToHost 2, HostToHost 3 -------------------------- */
enum { cnrtSuccess = 0, cnrtErrorNotReady = 1, cnrtErrorNoDevice = 100004, cnrtErrorDeviceInvalid = 100005,
       cnrtErrorArgsInvalid = 100006, cnrtErrorInvalidResourceHandle = 100014,
       cnrtErrorMemcpyDirectionInvalid = 632013 };
int fakecnrtGetDeviceCount(unsigned int *n) {
    if (!n) return cnrtErrorArgsInvalid;
    *n = 0;
    if (ndev() <= 0) return fail(cnrtErrorNoDevice, "no MLU device is found");
    *n = (unsigned)ndev();
    return cnrtSuccess;
}
int fakecnrtSetDevice(int d) { return d >= 0 && d < ndev() ? cnrtSuccess : fail(cnrtErrorDeviceInvalid, "invalid device ordinal"); }
int fakecnrtQueueCreate(void **q) { return fakertStreamCreate(q) ? cnrtErrorArgsInvalid : cnrtSuccess; }
int fakecnrtQueueSync(void *q) { return good(q) ? cnrtSuccess : fail(cnrtErrorInvalidResourceHandle, "invalid queue"); }
int fakecnrtQueueQuery(void *q) { int rc = fakecnrtQueueSync(q); return rc ? rc : busy() ? cnrtErrorNotReady : cnrtSuccess; }
int fakecnrtQueueDestroy(void *q) { return fakertStreamDestroy(q) ? cnrtErrorInvalidResourceHandle : cnrtSuccess; }
int fakecnrtMemcpy(void *d, void *s, size_t n, int dir) {
    if (dir < 0 || dir > 5) return fail(cnrtErrorMemcpyDirectionInvalid, "invalid memcpy direction");
    if (n && (!d || !s)) return fail(cnrtErrorArgsInvalid, "invalid argument");
    memmove(d, s, n);
    return cnrtSuccess;
}
int fakecnrtMalloc(void **p, size_t n) { return track(p, n) ? cnrtErrorArgsInvalid : cnrtSuccess; }
int fakecnrtFree(void *p) { return untrack(p) ? cnrtErrorArgsInvalid : cnrtSuccess; }
int fakecnrtHostMalloc(void **p, size_t n) {
    if (pinned_off()) return fail(cnrtErrorArgsInvalid, "pinned memory disabled (FAKERT_NO_PINNED)");
    return track(p, n) ? cnrtErrorArgsInvalid : cnrtSuccess;
}
int fakecnrtFreeHost(void *p) { return untrack(p) ? cnrtErrorArgsInvalid : cnrtSuccess; }
const char *fakecnrtGetErrorStr(int rc) {
    switch (rc) {
    case cnrtSuccess: return "cnrtSuccess";
    case cnrtErrorNotReady: return "device or resource busy";
    case cnrtErrorNoDevice: return "no MLU device is found";
    case cnrtErrorDeviceInvalid: return "invalid device ordinal";
    case cnrtErrorArgsInvalid: return "invalid argument";
    case cnrtErrorInvalidResourceHandle: return "invalid resource handle";
    case cnrtErrorMemcpyDirectionInvalid: return "invalid memcpy direction";
    default: return "unknown CNRT error";
    }
}

/* ---- XPU style (xpu/runtime.h): xpu_* names, errors returned negated (XPU_ERRNO_BASE 700 + n),
 * no stream query: fakexpu_wait blocks while FAKERT_BUSY=1 (up to FAKECCL_WAIT s, default 60),
 * XPUMemcpyKind DEVICE_TO_HOST 0, HOST_TO_DEVICE 1, DEVICE_TO_DEVICE 2 ------------------------- */
enum { XPUERR_INVALID_DEVICE = 701, XPUERR_NODEV = 703, XPUERR_INVALID_PARAM = 707, XPUERR_TIMEOUT = 715 };
int fakexpu_device_count(int *n) {
    if (!n) return -XPUERR_INVALID_PARAM;
    *n = 0;
    if (ndev() <= 0) return -XPUERR_NODEV;
    *n = ndev();
    return 0;
}
int fakexpu_set_device(int d) { return d >= 0 && d < ndev() ? 0 : -XPUERR_INVALID_DEVICE; }
int fakexpu_stream_create(void **s) { return fakertStreamCreate(s) ? -XPUERR_INVALID_PARAM : 0; }
int fakexpu_stream_destroy(void *s) { return fakertStreamDestroy(s) ? -XPUERR_INVALID_PARAM : 0; }
static pthread_mutex_t hang_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hang_cv = PTHREAD_COND_INITIALIZER;
static int hang_next, hung_now;
static unsigned long releases;
void fakert_hang_next_waits(int n) { pthread_mutex_lock(&hang_lock); hang_next = n; pthread_mutex_unlock(&hang_lock); }
int fakert_hung_waits(void) { pthread_mutex_lock(&hang_lock); int n = hung_now; pthread_mutex_unlock(&hang_lock); return n; }
void fakert_release_waits(void) {
    pthread_mutex_lock(&hang_lock);
    hang_next = 0; releases++;
    pthread_cond_broadcast(&hang_cv);
    pthread_mutex_unlock(&hang_lock);
}
static void maybe_hang(void) {
    pthread_mutex_lock(&hang_lock);
    if (hang_next > 0) {
        unsigned long gen = releases;
        hang_next--; hung_now++;
        while (gen == releases) pthread_cond_wait(&hang_cv, &hang_lock);
        hung_now--;
    }
    pthread_mutex_unlock(&hang_lock);
}
int fakexpu_wait(void *s) {
    if (!good(s)) return -XPUERR_INVALID_PARAM;
    maybe_hang();
    const char *w = getenv("FAKECCL_WAIT");
    double limit = w ? atof(w) : 60.0;
    for (double t = 0; busy() && t < limit; t += 0.001) usleep(1000);
    return busy() ? -XPUERR_TIMEOUT : 0;
}
int fakexpu_memcpy(void *d, const void *s, uint64_t n, int kind) {
    if (kind < 0 || kind > 2) return -XPUERR_INVALID_PARAM;
    if (n && (!d || !s)) return -XPUERR_INVALID_PARAM;
    memmove(d, s, n);
    return 0;
}
int fakexpu_malloc(void **p, uint64_t n, int kind) {
    if (kind != 0 && kind != 1) return -XPUERR_INVALID_PARAM;
    return track(p, n) ? -XPUERR_INVALID_PARAM : 0;
}
int fakexpu_free(void *p) { return untrack(p) ? -XPUERR_INVALID_PARAM : 0; }
int fakexpu_host_alloc(void **p, uint64_t n, unsigned int flags) {
    if (flags != 0 || pinned_off()) return -XPUERR_INVALID_PARAM;
    return track(p, n) ? -XPUERR_INVALID_PARAM : 0;
}
int fakexpu_host_free(void *p) { return untrack(p) ? -XPUERR_INVALID_PARAM : 0; }
