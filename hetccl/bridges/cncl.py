"""Cambricon CNCL: its own call shapes (``cncl*``, a clique id, queues), through the run-time binding.

Signatures and enums are cncl.h's (CNCL 1.25, "Copyright (c) [2019-2025] by Cambricon", the
header Cambricon/torch_mlu's ProcessGroupCNCL and cncl_utils.h build against; FlagCX's
flagcx/adaptor/ccl/cncl_adaptor.cc and makefiles/cambricon.mk call the same functions)::

    cnclResult_t cnclGetCliqueId(cnclCliqueId_t clique_id);      // struct {char data[128]; uint64_t hash;}
    cnclResult_t cnclInitComms(cnclComm_t* comms, int num_comm, const int* dev_list,
                               const int* rank_list, int nrank, const cnclCliqueId_t clique_id);
    cnclResult_t cnclFreeComm(cnclComm_t comm);                   // = cnclDestroyComms of one
    cnclResult_t cnclAbortComm(cnclComm_t comm);
    cnclResult_t cnclAllReduce(const void* send, void* recv, size_t count, cnclDataType_t,
                               cnclReduceOp_t, cnclComm_t, cnrtQueue_t);   // also cnclReduceScatter
    cnclResult_t cnclAllGather(const void* send, void* recv, size_t count, cnclDataType_t, cnclComm_t, cnrtQueue_t);
    cnclResult_t cnclBroadcast(const void* send, void* recv, size_t count, cnclDataType_t, int root, cnclComm_t, cnrtQueue_t);
    cnclResult_t cnclReduce(const void* send, void* recv, size_t count, cnclDataType_t, cnclReduceOp_t, int root, cnclComm_t, cnrtQueue_t);
    cnclResult_t cnclSend / cnclRecv(void* buf, size_t count, cnclDataType_t, int peer, cnclComm_t, cnrtQueue_t);
    cnclResult_t cnclGroupStart(); cnclResult_t cnclGroupEnd();
    const char* cnclGetErrorStr(cnclResult_t);
    cnclResult_t cnclGetCommAsyncError(cnclComm_t);   // the state itself; CNCL_RET_ASYNC_IN_PROGRESS (6) is not an error
    cnclResult_t cnclGetLibVersion(int* major, int* minor, int* patch);

So apart from the id, the join and the asynchronous error, CNCL's collectives have nccl.h's
argument order; each process joins with one communicator (``num_comm = 1``) on its device.

cnclDataType_t: Half/Float16 0x10, Bfloat16 0x11, Float/Float32 0x12, Int8/Char 0x20, Int16 0x21,
Int32 0x22, Int64 0x23, Uint8 0x30, Uint16 0x31, Uint32 0x32, Uint64 0x33 (no 64-bit float);
cnclReduceOp_t: Sum 0, Prod 1, Max 2, Min 3 (no average). cncl.h does not say which type each call
reduces (an unsupported one returns CNCL_RET_ERR_UNSUPPORTED, which the bridge raises with CNCL's
own text), so every listed type is offered with every op; bool reduces as Uint8 MIN/MAX.

The runtime is CNRT (libcnrt.so, cnrt.h of CNRT 6.0): ``cnrtGetDeviceCount(unsigned int*)``,
``cnrtSetDevice(int)``, queues instead of streams (``cnrtQueueCreate(cnrtQueue_t*)``,
``cnrtQueueSync``, ``cnrtQueueQuery`` = cnrtErrorNotReady (1) while busy, ``cnrtQueueDestroy``),
``cnrtMemcpy(void* dst, void* src, size_t bytes, cnrtMemTransDir_t)`` with HostToDev 0, DevToDev 1,
DevToHost 2, HostToHost 3, ``cnrtMalloc(void**, size_t)`` / ``cnrtFree``, ``cnrtHostMalloc(void**,
size_t)`` / ``cnrtFreeHost``, ``cnrtGetErrorStr(cnrtRet_t)``. Both live in $NEUWARE_HOME/lib64
(/usr/local/neuware by default; FlagCX makefiles/cambricon.mk).
"""
from __future__ import annotations

from .. import dtypes as _dt
from ..ops import ReduceOp
from .vendor import Runtime, Vendor, bool_reductions

cnclHalf, cnclBfloat16, cnclFloat = 0x10, 0x11, 0x12
cnclInt8, cnclInt16, cnclInt32, cnclInt64 = 0x20, 0x21, 0x22, 0x23
cnclUint8, cnclUint16, cnclUint32, cnclUint64 = 0x30, 0x31, 0x32, 0x33
cnclChar = cnclInt8
cnclSum, cnclProd, cnclMax, cnclMin = 0, 1, 2, 3

_TYPES = {_dt.FLOAT16: cnclHalf, _dt.BFLOAT16: cnclBfloat16, _dt.FLOAT32: cnclFloat,
          _dt.INT8: cnclInt8, _dt.INT16: cnclInt16, _dt.INT32: cnclInt32, _dt.INT64: cnclInt64,
          _dt.UINT8: cnclUint8, _dt.UINT16: cnclUint16, _dt.UINT32: cnclUint32, _dt.UINT64: cnclUint64}
_OPS = {ReduceOp.SUM: cnclSum, ReduceOp.PROD: cnclProd, ReduceOp.MAX: cnclMax, ReduceOp.MIN: cnclMin}
_REDUCING = ("allreduce", "reduce_scatter", "reduce")


def cncl_tables(version: int):
    out = {(coll, dt, op): (t, o) for coll in _REDUCING for dt, t in _TYPES.items() for op, o in _OPS.items()}
    out.update(bool_reductions(_REDUCING, cnclUint8, cnclMin, cnclMax))
    return out, cnclChar


CNCL_ROLES = {
    "get_version": "GetLibVersion", "get_unique_id": "GetCliqueId", "comm_init": "InitComms",
    "comm_destroy": "FreeComm", "comm_abort": "AbortComm", "comm_get_async_error": "GetCommAsyncError",
    "get_error_string": "GetErrorStr", "group_start": "GroupStart", "group_end": "GroupEnd",
    "allreduce": "AllReduce", "reduce_scatter": "ReduceScatter", "allgather": "AllGather",
    "broadcast": "Broadcast", "reduce": "Reduce", "send": "Send", "recv": "Recv",
}
CNCL_REQUIRED = ("get_unique_id", "comm_init", "comm_destroy", "get_error_string", "allreduce",
                 "reduce_scatter", "allgather", "broadcast")

NEUWARE_DIRS = ("/usr/local/neuware/lib64", "/usr/local/neuware/lib")
# cnrtMemTransDir_t of host->host, host->device, device->host, device->device
CNRT_KINDS = (3, 0, 2, 1)
CNRT_ROLES = {"stream_create": "QueueCreate", "stream_synchronize": "QueueSync", "stream_query": "QueueQuery",
              "stream_destroy": "QueueDestroy", "get_error_string": "GetErrorStr",
              "host_alloc": "HostMalloc", "free_host": "FreeHost"}
CNRT = Runtime(("libcnrt.so",), "cnrt", not_ready=1, roles=CNRT_ROLES, kinds=CNRT_KINDS, host_alloc_args=2,
               search_dirs=NEUWARE_DIRS)


def vendor(prefix: str = "cncl", library: str = "libcncl.so", runtime: Runtime = CNRT, kind: str = "cncl",
           search_dirs=NEUWARE_DIRS, dlpack_devices=()) -> Vendor:
    """The CNCL row (other arguments: a CNCL-ABI library under another name/prefix, e.g. a test double)."""
    return Vendor(kind=kind, family="cncl", names=(library,), prefix=prefix, roles=CNCL_ROLES,
                  required=CNCL_REQUIRED, runtime=runtime, tables=cncl_tables, memory="mlu",
                  device_word="Cambricon MLU", dlpack_devices=dlpack_devices, search_dirs=search_dirs,
                  source="cncl.h (CNCL 1.25); Cambricon/torch_mlu ProcessGroupCNCL; FlagCX cncl_adaptor.cc; cnrt.h (CNRT 6.0)")


CNCL = vendor()
