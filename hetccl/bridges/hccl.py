"""HCCL (Huawei Ascend): its own symbol set, through the same run-time binding as the NCCL family.

Signatures and enums checked in CANN's public headers as vendored by Ascend/pytorch
(third_party/hccl/inc/hccl/hccl.h and hccl_types.h):

    HcclResult HcclGetRootInfo(HcclRootInfo *rootInfo);                      // 4108-byte root info
    HcclResult HcclCommInitRootInfo(uint32_t nRanks, const HcclRootInfo *rootInfo, uint32_t rank, HcclComm *comm);
    HcclResult HcclAllReduce(void *sendBuf, void *recvBuf, uint64_t count, HcclDataType, HcclReduceOp, HcclComm, aclrtStream);
    HcclResult HcclReduceScatter(void *sendBuf, void *recvBuf, uint64_t recvCount, HcclDataType, HcclReduceOp, HcclComm, aclrtStream);
    HcclResult HcclAllGather(void *sendBuf, void *recvBuf, uint64_t sendCount, HcclDataType, HcclComm, aclrtStream);
    HcclResult HcclBroadcast(void *buf, uint64_t count, HcclDataType, uint32_t root, HcclComm, aclrtStream);
    HcclResult HcclReduce(void *sendBuf, void *recvBuf, uint64_t count, HcclDataType, HcclReduceOp, uint32_t root, HcclComm, aclrtStream);
    HcclResult HcclSend/HcclRecv(void *buf, uint64_t count, HcclDataType, uint32_t peer, HcclComm, aclrtStream);
    HcclResult HcclCommDestroy(HcclComm); HcclResult HcclGetCommAsyncError(HcclComm, HcclResult *);
    const char *HcclGetErrorString(HcclResult); HcclResult HcclGroupStart(void), HcclGroupEnd(void);

HcclDataType: INT8 0, INT16 1, INT32 2, FP16 3, FP32 4, INT64 5, UINT64 6, UINT8 7, UINT16 8,
UINT32 9, FP64 10, BFP16 11. HcclReduceOp: SUM 0, PROD 1, MAX 2, MIN 3 (no average).

The reduction dtypes follow each call's own comment in hccl.h: AllReduce and Reduce take int8,
int16, int32, float16, float32, bfloat16; ReduceScatter takes int8, int32, float16, float32,
bfloat16. bool reduces as int8 MIN/MAX (= BAND/BOR). HCCL has no abort (destroy is used) and no
version call (hetccl doctor reads the CANN install's version file).

Streams, device selection and memcpy come from ACL (libascendcl.so: aclInit, aclrtSetDevice,
aclrtCreateStream, aclrtSynchronizeStream, aclrtStreamQuery, aclrtMemcpy(dst, destMax, src,
count, kind) with ACL_MEMCPY_HOST_TO_DEVICE 1 / DEVICE_TO_HOST 2, aclGetRecentErrMsg).
"""
from __future__ import annotations

from .. import dtypes as _dt
from ..ops import ReduceOp
from .native import NativeBridge
from .vendor import Runtime, Vendor, bool_reductions

HCCL_INT8, HCCL_INT16, HCCL_INT32, HCCL_FP16, HCCL_FP32, HCCL_INT64 = 0, 1, 2, 3, 4, 5
HCCL_UINT64, HCCL_UINT8, HCCL_UINT16, HCCL_UINT32, HCCL_FP64, HCCL_BFP16 = 6, 7, 8, 9, 10, 11
HCCL_SUM, HCCL_PROD, HCCL_MAX, HCCL_MIN = 0, 1, 2, 3

_TYPES = {_dt.INT8: HCCL_INT8, _dt.INT16: HCCL_INT16, _dt.INT32: HCCL_INT32, _dt.FLOAT16: HCCL_FP16,
          _dt.FLOAT32: HCCL_FP32, _dt.BFLOAT16: HCCL_BFP16}
_OPS = {ReduceOp.SUM: HCCL_SUM, ReduceOp.PROD: HCCL_PROD, ReduceOp.MAX: HCCL_MAX, ReduceOp.MIN: HCCL_MIN}
_PER_CALL = {"allreduce": tuple(_TYPES), "reduce": tuple(_TYPES),
             "reduce_scatter": (_dt.INT8, _dt.INT32, _dt.FLOAT16, _dt.FLOAT32, _dt.BFLOAT16)}


def hccl_tables(version: int):
    out = {}
    for coll, types in _PER_CALL.items():
        for dt in types:
            for op, hop in _OPS.items():
                out[(coll, dt, op)] = (_TYPES[dt], hop)
    out.update(bool_reductions(_PER_CALL, HCCL_INT8, HCCL_MIN, HCCL_MAX))
    return out, HCCL_INT8


HCCL_ROLES = {
    "get_unique_id": "GetRootInfo", "comm_init": "CommInitRootInfo", "comm_destroy": "CommDestroy",
    "comm_get_async_error": "GetCommAsyncError", "get_error_string": "GetErrorString",
    "group_start": "GroupStart", "group_end": "GroupEnd",
    "allreduce": "AllReduce", "reduce_scatter": "ReduceScatter", "allgather": "AllGather",
    "broadcast": "Broadcast", "reduce": "Reduce", "send": "Send", "recv": "Recv",
}
HCCL_REQUIRED = ("get_unique_id", "comm_init", "comm_destroy", "get_error_string", "allreduce",
                 "reduce_scatter", "allgather", "broadcast")

ASCEND_DIRS = ("/usr/local/Ascend/ascend-toolkit/latest/lib64",
               "/usr/local/Ascend/ascend-toolkit/latest/*-linux/lib64",
               "/usr/local/Ascend/nnae/latest/lib64", "/usr/local/Ascend/latest/lib64")
ACL = Runtime(("libascendcl.so",), "acl", style="acl")


def vendor(prefix: str = "Hccl", library: str = "libhccl.so", runtime: Runtime = ACL,
           kind: str = "hccl", search_dirs=ASCEND_DIRS) -> Vendor:
    """The HCCL vendor entry (other arguments: an HCCL-ABI library under another name/prefix)."""
    return Vendor(kind=kind, family="hccl", names=(library,), prefix=prefix, roles=HCCL_ROLES,
                  required=HCCL_REQUIRED, runtime=runtime, tables=hccl_tables, memory="npu",
                  device_word="Ascend NPU", dlpack_devices=(), search_dirs=search_dirs,
                  source="Ascend/pytorch third_party/hccl/inc/hccl/hccl.h, hccl_types.h")


HCCL = vendor()


class HcclBridge(NativeBridge):
    """An island on HCCL (Ascend NPUs)."""

    def __init__(self, store, key: str, rank: int, size: int, *, vendor: Vendor = HCCL, **kw):
        super().__init__(vendor, store, key, rank, size, **kw)


def find() -> list:
    """Every HCCL library on this machine, as ``Library`` rows (usable or not, and why)."""
    from .loader import find_vendor
    return find_vendor(HCCL)
