/* Test double of Kunlunxin's BKCL API under the made-up prefix "fakebkcl_": the call shapes public
 * callers use (context first; bkcl_init_rank(ctx*, rank, nranks, id*); bkcl_all_gather(ctx, send,
 * sendcount, recv, dtype, stream); bkcl_send/recv(ctx, buf, count, peer, dtype, stream)). bkcl.h's
 * enum values are not public, so this double defines its own (FAKE_BKCL_*, mirrored in
 * tests/fakeccl/__init__.py), which the test's confirmed BKCL row passes: a wrong mapping would
 * reduce the wrong type. Not Kunlunxin's library: host memory only, synchronous (fakecore.h). */
#include "fakecore.h"

enum { BKCL_SUCCESS = 0, BKCL_INVALID_ARGUMENT = 1, BKCL_RUNTIME_ERROR = 2, BKCL_TIMEOUT_ERROR = 3 };
/* this double's BKCLDataType / BKCLOp values */
enum { FAKE_BKCL_UINT8 = 3, FAKE_BKCL_INT32 = 5, FAKE_BKCL_INT64 = 6, FAKE_BKCL_FLOAT16 = 7,
       FAKE_BKCL_BFLOAT16 = 8, FAKE_BKCL_FLOAT = 9, FAKE_BKCL_FLOAT64 = 10 };
enum { FAKE_BKCL_ADD = 0, FAKE_BKCL_PRODUCT = 1, FAKE_BKCL_MAX = 2, FAKE_BKCL_MIN = 3 };
#define BKCL_ID_BYTES 512

static int kind(int dt) {
    switch (dt) {
    case FAKE_BKCL_UINT8: return K_U8;   case FAKE_BKCL_INT32: return K_I32; case FAKE_BKCL_INT64: return K_I64;
    case FAKE_BKCL_FLOAT16: return K_F16; case FAKE_BKCL_BFLOAT16: return K_BF16;
    case FAKE_BKCL_FLOAT: return K_F32;  case FAKE_BKCL_FLOAT64: return K_F64;
    default: return K_NONE;
    }
}
static int op_of(int op) { return op >= 0 && op <= 3 ? op : O_NONE; }
static int res(int core) {
    switch (core) {
    case C_OK: return BKCL_SUCCESS;
    case C_BADARG: case C_TOOBIG: return BKCL_INVALID_ARGUMENT;
    case C_TIMEOUT: return BKCL_TIMEOUT_ERROR;
    default: return BKCL_RUNTIME_ERROR;
    }
}

int fakebkcl_get_unique_id(char *id) {
    if (!id) return BKCL_INVALID_ARGUMENT;
    if (injected(NULL, "get_unique_id")) return BKCL_RUNTIME_ERROR;
    make_id(id, BKCL_ID_BYTES);
    return BKCL_SUCCESS;
}
int fakebkcl_init_rank(fcomm **ctx, int rank, int nranks, const char *id) {
    if (!ctx || !id) return BKCL_INVALID_ARGUMENT;
    if (injected(NULL, "init_rank")) return BKCL_RUNTIME_ERROR;
    return res(core_init(ctx, nranks, id, rank));
}
int fakebkcl_destroy_context(fcomm *c) { return res(core_leave(c)); }
int fakebkcl_comm_abort(fcomm *c) { return res(core_leave(c)); }
int fakebkcl_group_start(void) { return BKCL_SUCCESS; }
int fakebkcl_group_end(void) { return BKCL_SUCCESS; }
int fakebkcl_all_reduce(fcomm *c, const void *s, void *r, size_t n, int dt, int op, void *q) {
    (void)q; if (injected(c, "all_reduce")) return BKCL_RUNTIME_ERROR;
    return res(core_allreduce(c, s, r, n, kind(dt), op_of(op), 0, 0));
}
int fakebkcl_reduce_scatter(fcomm *c, const void *s, void *r, size_t n, int dt, int op, void *q) {
    (void)q; return res(core_reduce_scatter(c, s, r, n, kind(dt), op_of(op)));
}
int fakebkcl_all_gather(fcomm *c, const void *s, size_t n, void *r, int dt, void *q) {
    (void)q; return res(core_allgather(c, s, r, n, kind(dt)));
}
int fakebkcl_broadcast(fcomm *c, const void *s, void *r, size_t n, int dt, int root, void *q) {
    (void)q; return res(core_broadcast(c, s, r, n, kind(dt), root));
}
int fakebkcl_reduce(fcomm *c, const void *s, void *r, size_t n, int dt, int op, int root, void *q) {
    (void)q; return res(core_allreduce(c, s, r, n, kind(dt), op_of(op), root, 1));
}
int fakebkcl_send(fcomm *c, const void *s, size_t n, int peer, int dt, void *q) {
    (void)q; return res(core_p2p(c, (void *)s, n, kind(dt), peer, 1));
}
int fakebkcl_recv(fcomm *c, void *r, size_t n, int peer, int dt, void *q) {
    (void)q; return res(core_p2p(c, r, n, kind(dt), peer, 0));
}
