/* Test double of the HCCL API (hccl.h / hccl_types.h ABI) under the made-up prefix "FakeHccl".
 * Not Huawei's library: host memory only, synchronous, see fakecore.h. Enum values and result
 * codes are hccl_types.h's (HcclDataType, HcclReduceOp, HcclResult). */
#include "fakecore.h"

enum { HCCL_SUCCESS = 0, HCCL_E_PARA = 1, HCCL_E_INTERNAL = 4, HCCL_E_NOT_SUPPORT = 5, HCCL_E_TIMEOUT = 9,
       HCCL_E_REMOTE = 21 };
#define ROOT_INFO_BYTES 4108

/* HcclDataType: int8 int16 int32 fp16 fp32 int64 uint64 uint8 uint16 uint32 fp64 bfp16 */
static const int dt_kind[] = {K_I8, K_I16, K_I32, K_F16, K_F32, K_I64, K_U64, K_U8, K_U16, K_U32, K_F64, K_BF16};
static int kind(int dt) { return dt >= 0 && dt < 12 ? dt_kind[dt] : K_NONE; }
/* HcclReduceOp: sum prod max min (no avg) */
static int op_of(int op) { return op >= 0 && op <= 3 ? op : O_NONE; }
static int res(int core) {
    switch (core) {
    case C_OK: return HCCL_SUCCESS;
    case C_BADARG: return HCCL_E_PARA;
    case C_TOOBIG: return HCCL_E_NOT_SUPPORT;
    case C_TIMEOUT: return HCCL_E_TIMEOUT;
    default: return HCCL_E_INTERNAL;
    }
}

int FakeHcclGetRootInfo(char *root) {
    if (!root) return HCCL_E_PARA;
    if (injected(NULL, "GetRootInfo")) return HCCL_E_INTERNAL;
    make_id(root, ROOT_INFO_BYTES);
    return HCCL_SUCCESS;
}
int FakeHcclCommInitRootInfo(uint32_t nranks, const char *root, uint32_t rank, fcomm **comm) {
    if (!comm || !root) return HCCL_E_PARA;
    if (injected(NULL, "CommInitRootInfo")) return HCCL_E_INTERNAL;
    return res(core_init(comm, (int)nranks, root, (int)rank));
}
int FakeHcclCommDestroy(fcomm *c) { return res(core_leave(c)); }
int FakeHcclGetCommAsyncError(fcomm *c, int *err) {
    if (!core_check(c) || !err) return HCCL_E_PARA;
    *err = async_knob();
    return HCCL_SUCCESS;
}
const char *FakeHcclGetErrorString(int r) {
    switch (r) {
    case HCCL_SUCCESS: return "success";
    case HCCL_E_PARA: return "parameter error";
    case HCCL_E_INTERNAL: return "internal error";
    case HCCL_E_NOT_SUPPORT: return "not support feature";
    case HCCL_E_TIMEOUT: return "timeout";
    case HCCL_E_REMOTE: return "error cqe";
    default: return "unknown error";
    }
}
int FakeHcclAllReduce(void *s, void *r, uint64_t n, int dt, int op, fcomm *c, void *stream) {
    (void)stream; return res(core_allreduce(c, s, r, n, kind(dt), op_of(op), 0, 0));
}
int FakeHcclReduce(void *s, void *r, uint64_t n, int dt, int op, uint32_t root, fcomm *c, void *stream) {
    (void)stream; return res(core_allreduce(c, s, r, n, kind(dt), op_of(op), (int)root, 1));
}
int FakeHcclReduceScatter(void *s, void *r, uint64_t n, int dt, int op, fcomm *c, void *stream) {
    (void)stream; return res(core_reduce_scatter(c, s, r, n, kind(dt), op_of(op)));
}
int FakeHcclAllGather(void *s, void *r, uint64_t n, int dt, fcomm *c, void *stream) {
    (void)stream; return res(core_allgather(c, s, r, n, kind(dt)));
}
int FakeHcclBroadcast(void *buf, uint64_t n, int dt, uint32_t root, fcomm *c, void *stream) {
    (void)stream; return res(core_broadcast(c, buf, buf, n, kind(dt), (int)root));
}
int FakeHcclSend(void *s, uint64_t n, int dt, uint32_t peer, fcomm *c, void *stream) {
    (void)stream; return res(core_p2p(c, s, n, kind(dt), (int)peer, 1));
}
int FakeHcclRecv(void *r, uint64_t n, int dt, uint32_t peer, fcomm *c, void *stream) {
    (void)stream; return res(core_p2p(c, r, n, kind(dt), (int)peer, 0));
}
