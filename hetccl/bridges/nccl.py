"""The NCCL-API family: NCCL and the libraries that clone its API under a name and a prefix.

One binding (_native/ccl_api.pyx, loaded by ``dlopen``) serves them all; each entry below is data:
the file names, the symbol prefix, the device runtime that owns its streams, and which dtypes and
ops it reduces exactly. Where each fact was checked:

| kind | library (first found wins) | prefix | runtime (prefix) | memory | source |
|---|---|---|---|---|---|
| nccl | libnccl.so.2 (pip ``nvidia-nccl-cu12``: nvidia/nccl/lib), /usr/local/cuda | nccl | libcudart.so.12 (cuda) | cuda | nccl.h of the nvidia-nccl-cu12 2.32.3 wheel (enums, result codes, signatures, NCCL_UNIQUE_ID_BYTES 128) |
| rccl | librccl.so.1, /opt/rocm/lib; Hygon DTK: /opt/dtk/rccl/lib/librccl.so | nccl | libamdhip64.so (hip; DTK: /opt/dtk/lib, /opt/dtk/hip/lib, also libgalaxyhip.so) | rocm | ROCm/rccl src/init.cc (implements nccl.h's API with hip); FlagCX Makefile (DEVICE_HOME=CCL_HOME=/opt/rocm for USE_AMD); Hygon DTK layout: uccl-project/uccl docs/proposal/hygon-dtk-p2p.md (DTK root /opt/dtk, same libamdhip64.so name, RCCL at /opt/dtk/rccl/lib/librccl.so), DTK users' LD_LIBRARY_PATH lines (/opt/dtk/hip/lib/libgalaxyhip.so as vLLM's CUDART path) |
| mccl | libmccl.so, /usr/local/musa/lib (Moore Threads) | mccl | libmusart.so (musa) | musa | FlagCX makefiles/musa.mk (CCL_LINK -lmccl -lmusa, /usr/local/musa); InfiniCore infiniccl_moore (mccl.h, mcclFloat, musaStream_t); XLA-MUSA musa runtime loader (libmusart.so) |
| mccl_metax | libmccl.so, /opt/maca/lib64 (MetaX) | mccl | libmcruntime.so (mc) | maca | FlagCX makefiles/metax.mk (CCL_LINK -lmccl, /opt/maca, DEVICE_LINK -lmcruntime) and flagcx/adaptor/ccl/mccl_adaptor.cc (mcclGetVersion ... mcclGetLastError); tilelang-metax / deep_jit notes (libmcruntime.so, mcSetDevice) |
| ixccl | libnccl.so, /usr/local/corex/lib (Iluvatar CoreX) | nccl | libcudart.so (cuda) | corex | FlagCX Makefile (USE_ILUVATAR: DEVICE_HOME=CCL_HOME=/usr/local/corex, CCL_LINK -lnccl, DEVICE_LINK -lcudart) |
| eccl | libeccl.so, /usr/lib, /opt/tops/lib (Enflame) | eccl | libtopsrt.so (tops), /opt/tops/lib | gcu | FlagCX flagcx/adaptor/ccl/eccl_adaptor.cc (written by Enflame: ecclGetVersion, ecclGetUniqueId, ecclCommInitRank(comm*, nranks, id by value, rank), ecclAllReduce/ReduceScatter/AllGather/Broadcast/Reduce/Send/Recv in nccl.h's argument order, ecclCommGetAsyncError(comm, result*), ecclCommAbort, ecclGetErrorString, ecclGetLastError, ecclGroupStart/End; it casts flagcxDataType_t/flagcxRedOp_t values straight to ECCL's, and flagcx.h numbers them as nccl.h does: int8 0 ... bfloat16 9, sum 0 ... min 3) and makefiles/enflame.mk (-leccl from /usr, -ltopsrt from /opt/tops/lib); TopsRT: FlagCX device/tops_adaptor.cc (topsGetDeviceCount, topsSetDevice, topsStreamCreate, topsStreamSynchronize, topsStreamQuery, topsStreamDestroy, topsMemcpy, topsMalloc/Free, topsHostMalloc(ptr, size, flags)/topsHostFree) and the TopsRT header's topsMemcpyKind (HostToHost 0, HostToDevice 1, DeviceToHost 2, DeviceToDevice 3) and topsErrorNotReady = 600 |

ECCL's id (ecclUniqueId) has no published size: FlagCX only asserts it fits its 4120-byte buffer,
so hetccl makes and passes it in a buffer of that size (``uid_bytes=LARGE_UID_BYTES``; see
CclLibrary). Its config call is not known, so ECCL always joins through the helper thread.

Not NCCL-compatible, so not here: Cambricon CNCL (cncl.py), Kunlunxin BKCL/XCCL (bkcl.py), Huawei
HCCL (hccl.py).

Dtype and op tables (``supports()`` answers from them; anything else runs on hetccl's own path):

* NCCL: int8/uint8/int32/uint32/int64/uint64/float16/float32/float64 with SUM/PROD/MIN/MAX;
  bfloat16 and AVG (floating types only: NCCL's integer average is not specified as hetccl's
  truncating one) from 2.10; fp8 e4m3fn/e5m2 from 2.24 ("NCCL added support for Float8e4m3 and
  Float8e5m2 in 2.24", pytorch/pytorch#152706). bool reduces as uint8 with MIN/MAX (= BAND/BOR).
  No bitwise ops, no 16-bit integers.
* RCCL: as NCCL (its version codes follow NCCL's) but no fp8 reductions: RCCL's fp8 is the FNUZ
  variant on MI300 (OCP fp8 only from gfx950 / ROCm 7, openxla/xla#38269), not ml_dtypes' e4m3fn.
* MCCL (both vendors), Iluvatar: the pre-2.10 NCCL set only (bfloat16/AVG are not confirmed in
  public sources for them).
* ECCL: the pre-2.10 NCCL set plus bfloat16 (FlagCX's Enflame adaptor passes flagcxBfloat16 = 9
  through); no AVG (not confirmed).

Data movement (allgather, broadcast, send/recv) is byte-wise (ncclUint8) for every dtype.

libmccl.so (two vendors) and Iluvatar's libnccl.so are looked for only in their vendors' install
directories, never through LD_LIBRARY_PATH / ldconfig, so one file is never reported as two vendors.
"""
from __future__ import annotations

from .. import dtypes as _dt
from .._native.ccl_api import LARGE_UID_BYTES
from ..ops import ReduceOp
from .native import NativeBridge
from .vendor import Runtime, Vendor, bool_reductions

# nccl.h ncclDataType_t and ncclRedOp_t
ncclInt8, ncclUint8, ncclInt32, ncclUint32, ncclInt64, ncclUint64 = 0, 1, 2, 3, 4, 5
ncclFloat16, ncclFloat32, ncclFloat64, ncclBfloat16, ncclFloat8e4m3, ncclFloat8e5m2 = 6, 7, 8, 9, 10, 11
ncclSum, ncclProd, ncclMax, ncclMin, ncclAvg = 0, 1, 2, 3, 4

_BASE_TYPES = {_dt.INT8: ncclInt8, _dt.UINT8: ncclUint8, _dt.INT32: ncclInt32, _dt.UINT32: ncclUint32,
               _dt.INT64: ncclInt64, _dt.UINT64: ncclUint64, _dt.FLOAT16: ncclFloat16,
               _dt.FLOAT32: ncclFloat32, _dt.FLOAT64: ncclFloat64}
_OPS = {ReduceOp.SUM: ncclSum, ReduceOp.PROD: ncclProd, ReduceOp.MAX: ncclMax, ReduceOp.MIN: ncclMin}
_REDUCING = ("allreduce", "reduce_scatter", "reduce")

V2_10, V2_24 = 21000, 22400   # NCCL version codes (2.10.0, 2.24.0)


def reduce_table(types: dict, avg_types=(), ops=_OPS) -> dict:
    """{(collective, hetccl dtype, ReduceOp): (nccl dtype, nccl op)} for the given enum maps."""
    out = {}
    for coll in _REDUCING:
        for dt, ndt in types.items():
            for op, nop in ops.items():
                out[(coll, dt, op)] = (ndt, nop)
            if dt in avg_types:
                out[(coll, dt, ReduceOp.AVG)] = (ndt, ncclAvg)
    out.update(bool_reductions(_REDUCING, ncclUint8, ncclMin, ncclMax))
    return out


def nccl_tables(version: int, fp8: bool = True):
    types = dict(_BASE_TYPES)
    avg = ()
    if version >= V2_10:
        types[_dt.BFLOAT16] = ncclBfloat16
        avg = (_dt.FLOAT16, _dt.BFLOAT16, _dt.FLOAT32, _dt.FLOAT64)
    if fp8 and version >= V2_24:
        types[_dt.FP8_E4M3] = ncclFloat8e4m3
        types[_dt.FP8_E5M2] = ncclFloat8e5m2
    return reduce_table(types, avg), ncclUint8


def rccl_tables(version: int):
    return nccl_tables(version, fp8=False)


def base_tables(version: int):
    """The NCCL set every clone has (pre-2.10: no bfloat16, no AVG, no fp8)."""
    return reduce_table(dict(_BASE_TYPES)), ncclUint8


def eccl_tables(version: int):
    """ECCL: the base set plus bfloat16 (see the module docstring)."""
    return reduce_table({**_BASE_TYPES, _dt.BFLOAT16: ncclBfloat16}), ncclUint8


# role -> symbol suffix (prefix + suffix), for every NCCL-family library
NCCL_ROLES = {
    "get_version": "GetVersion", "get_unique_id": "GetUniqueId", "comm_init": "CommInitRank",
    # optional, NCCL >= 2.14: ncclCommInitRankConfig(comm*, nranks, id, rank, ncclConfig_t*); the
    # binding passes NCCL 2.14's ncclConfig_t (size, magic 0xcafebeef, version, blocking), which
    # the 2.32.3 header still begins with and NVIDIA/nccl src/init.cc parseCommConfig accepts by
    # its size and version
    "comm_init_config": "CommInitRankConfig",
    # optional, NCCL >= 2.27: ncclCommShrink(comm, int* excludeRanksList, int excludeRanksCount,
    # ncclComm_t* newcomm, ncclConfig_t* config, int shrinkFlags) (nccl.h; NCCL_SHRINK_ABORT = 1)
    "comm_shrink": "CommShrink",
    "comm_destroy": "CommDestroy", "comm_abort": "CommAbort", "comm_get_async_error": "CommGetAsyncError",
    "get_error_string": "GetErrorString", "get_last_error": "GetLastError",
    "group_start": "GroupStart", "group_end": "GroupEnd",
    "allreduce": "AllReduce", "reduce_scatter": "ReduceScatter", "allgather": "AllGather",
    "broadcast": "Broadcast", "reduce": "Reduce", "send": "Send", "recv": "Recv",
}
NCCL_REQUIRED = ("get_unique_id", "comm_init", "comm_destroy", "get_error_string", "allreduce",
                 "reduce_scatter", "allgather", "broadcast")

CUDART = Runtime(("libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0", "libcudart.so"), "cuda",
                 wheel_dirs=("nvidia/cuda_runtime/lib", "nvidia/cu13/lib"))
HIP = Runtime(("libamdhip64.so.7", "libamdhip64.so.6", "libamdhip64.so.5", "libamdhip64.so",
               "libgalaxyhip.so.5", "libgalaxyhip.so"), "hip",
              search_dirs=("/opt/rocm/lib", "/opt/dtk/lib", "/opt/dtk/hip/lib"))
MUSART = Runtime(("libmusart.so",), "musa")
MCRUNTIME = Runtime(("libmcruntime.so",), "mc")
TOPSRT = Runtime(("libtopsrt.so",), "tops", roles={"host_alloc": "HostMalloc", "free_host": "HostFree"},
                 search_dirs=("/opt/tops/lib",))


def _family(kind, names, prefix, runtime, tables, memory, word, dl, dirs, wheel_dirs=(), wheel="",
            source="", loader=True, roles=NCCL_ROLES, uid_bytes=0):
    return Vendor(kind=kind, family="nccl", names=names, prefix=prefix, roles=roles,
                  required=NCCL_REQUIRED, runtime=runtime, tables=tables, memory=memory,
                  device_word=word, dlpack_devices=dl, search_dirs=dirs, wheel_dirs=wheel_dirs,
                  wheel=wheel, source=source, loader_search=loader, uid_bytes=uid_bytes)


NCCL = _family("nccl", ("libnccl.so.2", "libnccl.so"), "nccl", CUDART, nccl_tables, "cuda", "CUDA",
               (2, 13), ("/usr/local/cuda/lib64", "/usr/local/cuda/lib", "/usr/lib/x86_64-linux-gnu",
                         "/usr/lib64"),
               wheel_dirs=("nvidia/nccl/lib",), wheel="nvidia-nccl-cu12",
               source="nccl.h (nvidia-nccl-cu12 2.32.3 wheel)")
RCCL = _family("rccl", ("librccl.so.1", "librccl.so"), "nccl", HIP, rccl_tables, "rocm", "ROCm",
               (10,), ("/opt/rocm/lib", "/opt/rocm/lib64", "/opt/dtk/rccl/lib", "/opt/dtk/lib"),
               source="ROCm/rccl src/init.cc; FlagCX Makefile; Hygon DTK layout (uccl docs/proposal/hygon-dtk-p2p.md)")
MCCL = _family("mccl", ("libmccl.so",), "mccl", MUSART, base_tables, "musa", "MUSA", (),
               ("/usr/local/musa/lib",), source="FlagCX makefiles/musa.mk; InfiniCore infiniccl_moore",
               loader=False)
MCCL_METAX = _family("mccl_metax", ("libmccl.so",), "mccl", MCRUNTIME, base_tables, "maca", "MetaX MACA", (),
                     ("/opt/maca/lib64", "/opt/maca/lib"),
                     source="FlagCX makefiles/metax.mk, flagcx/adaptor/ccl/mccl_adaptor.cc", loader=False)
IXCCL = _family("ixccl", ("libnccl.so", "libnccl.so.2"), "nccl",
                Runtime(("libcudart.so",), "cuda"), base_tables, "corex", "Iluvatar CoreX", (),
                ("/usr/local/corex/lib", "/usr/local/corex/lib64"), source="FlagCX Makefile (USE_ILUVATAR)",
                loader=False)

ECCL = _family("eccl", ("libeccl.so",), "eccl", TOPSRT, eccl_tables, "gcu", "Enflame GCU", (),
               ("/usr/lib", "/usr/lib64", "/opt/tops/lib"),
               source="FlagCX flagcx/adaptor/ccl/eccl_adaptor.cc, device/tops_adaptor.cc, makefiles/enflame.mk",
               roles={k: v for k, v in NCCL_ROLES.items() if k != "comm_init_config"},
               uid_bytes=LARGE_UID_BYTES)

# every NCCL-family vendor, in the order `hetccl doctor` lists them
FAMILY = (NCCL, RCCL, MCCL, MCCL_METAX, IXCCL, ECCL)
BY_KIND = {v.kind: v for v in FAMILY}


def custom(kind: str, library: str, prefix: str, runtime: Runtime, *, memory: str = "cuda",
           device_word: str = "CUDA", dlpack_devices=(2, 13), tables=nccl_tables) -> Vendor:
    """A vendor not in the table: any library exporting the NCCL API under ``prefix``."""
    return _family(kind, (library,), prefix, runtime, tables, memory, device_word, dlpack_devices, ())


class NcclBridge(NativeBridge):
    """An island on NCCL or an NCCL-API clone (``vendor``: one of FAMILY, or ``custom(...)``)."""

    def __init__(self, store, key: str, rank: int, size: int, *, vendor: Vendor = NCCL, **kw):
        super().__init__(vendor, store, key, rank, size, **kw)


def find() -> list:
    """Every NCCL-family library on this machine, as ``Library`` rows (usable or not, and why)."""
    from .loader import find_vendor
    return [lib for v in FAMILY for lib in find_vendor(v)]
