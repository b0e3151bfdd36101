/* Test double of Cambricon's CNCL API (cncl.h, CNCL 1.25 ABI) under the made-up prefix "fakecncl".
 * Not Cambricon's library: host memory only, synchronous, see fakecore.h. Signatures, enum values
 * (cnclDataType_t 0x10.., cnclReduceOp_t), result codes and struct cnclCliqueId {char data[128];
 * uint64_t hash;} are cncl.h's; one communicator per process (num_comm = 1) as hetccl joins. */
#include "fakecore.h"

enum { CNCL_RET_SUCCESS = 0x0, CNCL_RET_ERR_INTERNAL = 0x01, CNCL_RET_ERR_UNSUPPORTED = 0x11,
       CNCL_RET_ERR_INIT = 0x51, CNCL_RET_ERR_SYSTEM = 0x02, CNCL_RET_ERR_SYS_SOCKET = 0x22,
       CNCL_RET_ASYNC_IN_PROGRESS = 0x06, CNCL_RET_ASYNC_ERROR = 0x16, CNCL_RET_ERR_ARGUMENTS = 0x07 };
typedef struct { char data[128]; uint64_t hash; } clique_id_t;

static int kind(int dt) {
    switch (dt) {
    case 0x10: return K_F16;  case 0x11: return K_BF16; case 0x12: return K_F32;
    case 0x20: return K_I8;   case 0x21: return K_I16;  case 0x22: return K_I32; case 0x23: return K_I64;
    case 0x30: return K_U8;   case 0x31: return K_U16;  case 0x32: return K_U32; case 0x33: return K_U64;
    default: return K_NONE;
    }
}
static int op_of(int op) { return op >= 0 && op <= 3 ? op : O_NONE; }   /* sum prod max min */
static int res(int core) {
    switch (core) {
    case C_OK: return CNCL_RET_SUCCESS;
    case C_BADARG: return CNCL_RET_ERR_ARGUMENTS;
    case C_TOOBIG: return CNCL_RET_ERR_UNSUPPORTED;
    case C_TIMEOUT: return CNCL_RET_ERR_SYS_SOCKET;
    default: return CNCL_RET_ERR_SYSTEM;
    }
}

int fakecnclGetLibVersion(int *major, int *minor, int *patch) {
    if (!major || !minor || !patch) return CNCL_RET_ERR_ARGUMENTS;
    *major = 1; *minor = 25; *patch = 0;
    return CNCL_RET_SUCCESS;
}
int fakecnclGetCliqueId(clique_id_t *id) {
    if (!id) return CNCL_RET_ERR_ARGUMENTS;
    if (injected(NULL, "GetCliqueId")) return CNCL_RET_ERR_INTERNAL;
    make_id(id->data, sizeof id->data);
    id->hash = 0x636e636cULL;
    return CNCL_RET_SUCCESS;
}
int fakecnclInitComms(fcomm **comms, int num_comm, const int *dev_list, const int *rank_list, int nrank,
                      const clique_id_t *clique) {
    if (!comms || num_comm != 1 || !dev_list || !rank_list || !clique) return CNCL_RET_ERR_ARGUMENTS;
    if (dev_list[0] < 0) return CNCL_RET_ERR_ARGUMENTS;
    if (injected(NULL, "InitComms")) return CNCL_RET_ERR_INIT;
    return res(core_init(comms, nrank, clique->data, rank_list[0]));
}
int fakecnclFreeComm(fcomm *c) { return res(core_leave(c)); }
int fakecnclAbortComm(fcomm *c) { return res(core_leave(c)); }
int fakecnclGetCommAsyncError(fcomm *c) {
    if (!core_check(c)) return CNCL_RET_ERR_ARGUMENTS;
    int e = async_knob();
    return e ? e : CNCL_RET_ASYNC_IN_PROGRESS;      /* queued work is "in progress", not an error */
}
const char *fakecnclGetErrorStr(int r) {
    switch (r) {
    case CNCL_RET_SUCCESS: return "CNCL_RET_SUCCESS";
    case CNCL_RET_ERR_INTERNAL: return "CNCL internal error";
    case CNCL_RET_ERR_UNSUPPORTED: return "unsupported operation";
    case CNCL_RET_ERR_INIT: return "communicators cannot be initialized";
    case CNCL_RET_ERR_SYSTEM: return "system error";
    case CNCL_RET_ERR_SYS_SOCKET: return "socket error";
    case CNCL_RET_ASYNC_ERROR: return "asynchronous error";
    case CNCL_RET_ERR_ARGUMENTS: return "illegal arguments";
    default: return "unknown CNCL error";
    }
}
int fakecnclGroupStart(void) { return CNCL_RET_SUCCESS; }
int fakecnclGroupEnd(void) { return CNCL_RET_SUCCESS; }
int fakecnclAllReduce(const void *s, void *r, size_t n, int dt, int op, fcomm *c, void *q) {
    (void)q; if (injected(c, "AllReduce")) return CNCL_RET_ERR_SYSTEM;
    return res(core_allreduce(c, s, r, n, kind(dt), op_of(op), 0, 0));
}
int fakecnclReduce(const void *s, void *r, size_t n, int dt, int op, int root, fcomm *c, void *q) {
    (void)q; return res(core_allreduce(c, s, r, n, kind(dt), op_of(op), root, 1));
}
int fakecnclReduceScatter(const void *s, void *r, size_t n, int dt, int op, fcomm *c, void *q) {
    (void)q; return res(core_reduce_scatter(c, s, r, n, kind(dt), op_of(op)));
}
int fakecnclAllGather(const void *s, void *r, size_t n, int dt, fcomm *c, void *q) {
    (void)q; return res(core_allgather(c, s, r, n, kind(dt)));
}
int fakecnclBroadcast(const void *s, void *r, size_t n, int dt, int root, fcomm *c, void *q) {
    (void)q; return res(core_broadcast(c, s, r, n, kind(dt), root));
}
int fakecnclSend(void *s, size_t n, int dt, int peer, fcomm *c, void *q) {
    (void)q; return res(core_p2p(c, s, n, kind(dt), peer, 1));
}
int fakecnclRecv(void *r, size_t n, int dt, int peer, fcomm *c, void *q) {
    (void)q; return res(core_p2p(c, r, n, kind(dt), peer, 0));
}
