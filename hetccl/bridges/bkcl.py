"""Kunlunxin BKCL (FlagCX's "XCCL"): snake-case ``bkcl_*`` calls with the context first, through the
run-time binding.

bkcl.h is not public (it ships in Kunlunxin's XPU SDK), and no public source found gives its enum
*values*. The function names, argument orders and types come from public callers of the library:
FlagCX flagcx/adaptor/ccl/xccl_adaptor.cc and makefiles/kunlunxin.mk (libbkcl.so in
/usr/local/xccl/so), PaddlePaddle's ProcessGroupBKCL / BKCLCommContext, and DeepLink's dipu
kunlunxin device layer::

    BKCLResult_t bkcl_get_unique_id(BKCLUniqueId* id);
    BKCLResult_t bkcl_init_rank(BKCLContext_t* ctx, int rank, int nranks, const BKCLUniqueId* id);
    BKCLResult_t bkcl_destroy_context(BKCLContext_t); BKCLResult_t bkcl_comm_abort(BKCLContext_t);
    BKCLResult_t bkcl_all_reduce(ctx, const void* send, void* recv, size_t count, BKCLDataType, BKCLOp, XPUStream);
    BKCLResult_t bkcl_reduce_scatter(ctx, const void* send, void* recv, size_t recvcount, BKCLDataType, BKCLOp, XPUStream);
    BKCLResult_t bkcl_all_gather(ctx, const void* send, size_t sendcount, void* recv, BKCLDataType, XPUStream);
    BKCLResult_t bkcl_broadcast(ctx, const void* send, void* recv, size_t count, BKCLDataType, int root, XPUStream);
    BKCLResult_t bkcl_reduce(ctx, const void* send, void* recv, size_t count, BKCLDataType, BKCLOp, int root, XPUStream);
    BKCLResult_t bkcl_send / bkcl_recv(ctx, buf, size_t count, int peer, BKCLDataType, XPUStream);
    BKCLResult_t bkcl_group_start(); BKCLResult_t bkcl_group_end();

BKCL_SUCCESS is 0 as everywhere; there is no error-string, asynchronous-error or version call
(FlagCX reports them unsupported). BKCLUniqueId's size is not public either; FlagCX asserts
``sizeof(int) + sizeof(BKCLUniqueId) <= 4120``, so hetccl makes it in a 4116-byte buffer (it is
passed by pointer, so a larger buffer is harmless).

So the stock ``BKCL`` row is *unconfirmed*: ``hetccl doctor`` lists a found libbkcl as not usable
and says why, and no bridge runs on it, rather than pass guessed type codes to a device. Whoever
has the SDK's bkcl.h passes its values: ``bkcl.vendor(enums={"BKCL_FLOAT": ..., "BKCL_ADD": ...})``
(names below) gives a confirmed row, usable with ``NativeBridge`` or ``formation.register``.

The runtime is the XPU runtime (libxpurt.so in /usr/local/xpu/so; xpu/runtime.h and xpu/defs.h,
"(C) 2018 Baidu"): ``xpu_device_count(int*)``, ``xpu_set_device(int)``,
``xpu_stream_create(XPUStream*)``, ``xpu_stream_destroy``, ``xpu_wait(XPUStream)`` (no query:
each bridge's waiter thread runs it while the caller polls the deadline; ccl_api.StreamWaiter), ``xpu_memcpy(void* dst, const void* src,
uint64_t sz, XPUMemcpyKind)`` with XPU_DEVICE_TO_HOST 0, XPU_HOST_TO_DEVICE 1, XPU_DEVICE_TO_DEVICE 2,
``xpu_malloc(void**, uint64_t, XPUMemoryKind)`` (XPU_MEM_MAIN 0) / ``xpu_free``,
``xpu_host_alloc(void**, uint64_t, unsigned flags)`` / ``xpu_host_free``; errors are
XPU_ERRNO_BASE (700) + n, returned negated, and xpu_strerror is a static inline, so their texts
are kept here (XPU_ERRORS).
"""
from __future__ import annotations

from .. import dtypes as _dt
from ..ops import ReduceOp
from .base import BridgeUnavailable
from .vendor import Runtime, Vendor, bool_reductions

# the names callers use (the values are the SDK's): hetccl dtype -> BKCLDataType name
TYPE_NAMES = {_dt.FLOAT32: "BKCL_FLOAT", _dt.FLOAT16: "BKCL_FLOAT16", _dt.BFLOAT16: "BKCL_BFLOAT16",
              _dt.FLOAT64: "BKCL_FLOAT64", _dt.UINT8: "BKCL_UINT8", _dt.INT32: "BKCL_INT32",
              _dt.INT64: "BKCL_INT64"}
OP_NAMES = {ReduceOp.SUM: "BKCL_ADD", ReduceOp.PROD: "BKCL_PRODUCT", ReduceOp.MAX: "BKCL_MAX",
            ReduceOp.MIN: "BKCL_MIN"}
_REDUCING = ("allreduce", "reduce_scatter", "reduce")
UNCONFIRMED = ("the values of BKCLDataType and BKCLOp: bkcl.h is not public and no public caller "
               "spells them")


def tables_for(enums: dict | None):
    """The ``tables`` function of a row whose BKCL enum values are ``enums`` (name -> value)."""
    def tables(version: int):
        if enums is None:
            raise BridgeUnavailable(f"bkcl: {UNCONFIRMED}")
        types = {dt: enums[name] for dt, name in TYPE_NAMES.items() if name in enums}
        ops = {op: enums[name] for op, name in OP_NAMES.items() if name in enums}
        out = {(coll, dt, op): (t, o) for coll in _REDUCING for dt, t in types.items() for op, o in ops.items()}
        u8 = enums["BKCL_UINT8"]
        if ReduceOp.MIN in ops and ReduceOp.MAX in ops:
            out.update(bool_reductions(_REDUCING, u8, ops[ReduceOp.MIN], ops[ReduceOp.MAX]))
        return out, u8
    return tables


BKCL_ROLES = {
    "get_unique_id": "get_unique_id", "comm_init": "init_rank", "comm_destroy": "destroy_context",
    "comm_abort": "comm_abort", "group_start": "group_start", "group_end": "group_end",
    "allreduce": "all_reduce", "reduce_scatter": "reduce_scatter", "allgather": "all_gather",
    "broadcast": "broadcast", "reduce": "reduce", "send": "send", "recv": "recv",
}
BKCL_REQUIRED = ("get_unique_id", "comm_init", "comm_destroy", "allreduce", "reduce_scatter",
                 "allgather", "broadcast")

XPU_ERRORS = {700 + n: text for n, text in {
    1: "Invalid XPU device", 2: "XPU runtime not properly inited", 3: "no XPU device",
    4: "version mismatch", 5: "Device memory not enough", 6: "CPU memory not enough",
    7: "Invalid parameter", 12: "Operation not supported", 13: "Device abnormal due to previous error",
    14: "Exception in kernel execution", 15: "Kernel execution timed out", 16: "Resource busy",
    114: "Execution interrupted by user"}.items()}
# host->host has no XPUMemcpyKind: -1 makes the runtime refuse it (the bridges never ask for it)
XPU_KINDS = (-1, 1, 0, 2)
XPU_ROLES = {"get_device_count": "device_count", "set_device": "set_device", "stream_create": "stream_create",
             "stream_synchronize": "wait", "stream_query": None, "stream_destroy": "stream_destroy",
             "memcpy": "memcpy", "get_error_string": None, "malloc": "malloc", "free": "free",
             "host_alloc": "host_alloc", "free_host": "host_free"}
XPURT = Runtime(("libxpurt.so",), "xpu_", roles=XPU_ROLES, kinds=XPU_KINDS, malloc_args=3, errors=XPU_ERRORS,
                search_dirs=("/usr/local/xpu/so", "/usr/local/xpu/lib"))
# XPU's CUDA-compatible runtime (libcudart.so next to libxpurt.so): FlagCX's Kunlunxin device
# adaptor (flagcx/adaptor/device/kunlunxin_adaptor.cc, -lxpurt -lcudart) creates its streams with
# cudaStreamCreateWithFlags, queries them with cudaStreamQuery and passes them to bkcl_*. A row
# with runtime=XPU_CUDART therefore waits by query, with no hand-over to a waiter thread.
XPU_CUDART = Runtime(("libcudart.so",), "cuda", search_dirs=("/usr/local/xpu/so",))
XCCL_DIRS = ("/usr/local/xccl/so", "/usr/local/xpu/so")


def vendor(enums: dict | None = None, *, prefix: str = "bkcl_", library: str = "libbkcl.so",
           runtime: Runtime = XPURT, kind: str = "bkcl", search_dirs=XCCL_DIRS, dlpack_devices=()) -> Vendor:
    """A BKCL row; confirmed (usable) only when ``enums`` gives the SDK's values by name
    (TYPE_NAMES and OP_NAMES values, BKCL_UINT8 at least)."""
    if enums is not None and "BKCL_UINT8" not in enums:
        raise ValueError("enums must give BKCL_UINT8 (every dtype moves as bytes)")
    return Vendor(kind=kind, family="bkcl", names=(library,), prefix=prefix, roles=BKCL_ROLES,
                  required=BKCL_REQUIRED, runtime=runtime, tables=tables_for(enums), memory="xpu",
                  device_word="Kunlunxin XPU", dlpack_devices=dlpack_devices, search_dirs=search_dirs,
                  source="FlagCX xccl_adaptor.cc, makefiles/kunlunxin.mk; Paddle ProcessGroupBKCL; "
                         "xpu/runtime.h, xpu/defs.h",
                  unconfirmed="" if enums is not None else UNCONFIRMED)


BKCL = vendor()
