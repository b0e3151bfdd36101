"""Device buffers for the vendor bridges: DLPack and ``__cuda_array_interface__`` objects in, one
``DeviceBuffer`` (pointer, size, dtype, device) out; and host staging through a vendor runtime.

Why a separate type: a vendor library takes raw device pointers, and hetccl must not import any
framework (torch, cupy, jax, ...) to get them. Both exchange protocols give the pointer without
one: DLPack (``__dlpack__`` / ``__dlpack_device__``, the capsule read here with ctypes and released
through its deleter when the DeviceBuffer dies) and the CUDA Array Interface (v2/v3 dict). The
DeviceBuffer keeps the producer alive as long as it exists.

Only contiguous buffers are accepted: a collective moves ``count`` consecutive elements, and a
strided view would silently send the gaps. The error says how to fix it (``.contiguous()``).

Staging (``to_host`` / ``from_host``) is how the cross-island composition moves a device buffer
across islands: device -> pinned-or-not host memory -> hetccl's transports -> host -> device, with
the vendor runtime's blocking memcpy.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np

from .. import dtypes as _dt
from ..errors import InvalidUsage
from .base import BridgeError

# DLPack DLDeviceType (dlpack.h)
DL_CPU, DL_CUDA, DL_CUDA_HOST, DL_OPENCL, DL_VULKAN, DL_METAL, DL_VPI, DL_ROCM, DL_ROCM_HOST, \
    DL_EXT_DEV, DL_CUDA_MANAGED, DL_ONEAPI = 1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 13, 14
DEVICE_NAMES = {DL_CPU: "cpu", DL_CUDA: "cuda", DL_CUDA_HOST: "cuda_host", DL_OPENCL: "opencl",
                DL_VULKAN: "vulkan", DL_METAL: "metal", DL_VPI: "vpi", DL_ROCM: "rocm",
                DL_ROCM_HOST: "rocm_host", DL_EXT_DEV: "ext_dev", DL_CUDA_MANAGED: "cuda_managed",
                DL_ONEAPI: "oneapi"}
# memory a host pointer can be read from directly (no runtime copy needed)
HOST_READABLE = frozenset({DL_CPU, DL_CUDA_HOST, DL_ROCM_HOST, DL_CUDA_MANAGED})

# DLPack DLDataTypeCode (dlpack.h v1.1): (code, bits) -> hetccl dtype
_DL_DTYPES = {
    (0, 8): _dt.INT8, (0, 16): _dt.INT16, (0, 32): _dt.INT32, (0, 64): _dt.INT64,
    (1, 8): _dt.UINT8, (1, 16): _dt.UINT16, (1, 32): _dt.UINT32, (1, 64): _dt.UINT64,
    (2, 16): _dt.FLOAT16, (2, 32): _dt.FLOAT32, (2, 64): _dt.FLOAT64,
    (4, 16): _dt.BFLOAT16, (6, 8): _dt.BOOL, (10, 8): _dt.FP8_E4M3, (12, 8): _dt.FP8_E5M2,
}

# CUDA Array Interface typestr -> hetccl dtype. '<V2' is bfloat16 by torch's and ml_dtypes'
# convention (torch/_tensor.py _dtype_to_typestr); a 1-byte void ('<V1') could be either fp8
# format, so it needs an explicit dtype=.
_TYPESTR = {
    "i1": _dt.INT8, "u1": _dt.UINT8, "i2": _dt.INT16, "u2": _dt.UINT16, "i4": _dt.INT32,
    "u4": _dt.UINT32, "i8": _dt.INT64, "u8": _dt.UINT64, "f2": _dt.FLOAT16, "f4": _dt.FLOAT32,
    "f8": _dt.FLOAT64, "b1": _dt.BOOL, "V2": _dt.BFLOAT16,
}

# memcpy kinds shared by cudart, hip, musa and ACL (cudaMemcpyKind / aclrtMemcpyKind 0..3)
HOST_TO_HOST, HOST_TO_DEVICE, DEVICE_TO_HOST, DEVICE_TO_DEVICE = 0, 1, 2, 3


class DeviceBuffer:
    """A contiguous buffer in some memory (``device_type`` is a DLPack code), by raw pointer.

    ``dtype`` is a hetccl dtype code; ``count`` = nbytes / itemsize. ``stream`` is the producer's
    stream from ``__cuda_array_interface__`` v3 (None: already synchronised); bridges synchronise
    it before the first use. ``owner`` is kept alive (the producer, or the DLPack capsule's
    manager whose deleter runs when this object is collected)."""

    __slots__ = ("ptr", "nbytes", "dtype", "device_type", "device_id", "readonly", "stream",
                 "owner", "__weakref__")

    def __init__(self, ptr: int, nbytes: int, dtype: int, device_type: int = DL_CUDA,
                 device_id: int = 0, readonly: bool = False, stream: int | None = None, owner=None):
        if nbytes < 0 or (ptr == 0 and nbytes > 0):
            raise InvalidUsage(f"device buffer of {nbytes} bytes at address {ptr:#x} is invalid")
        if nbytes % _dt.ITEMSIZE[dtype]:
            raise InvalidUsage(f"{nbytes} bytes is not a whole number of {_dt.NAMES[dtype]} elements")
        self.ptr, self.nbytes, self.dtype = int(ptr), int(nbytes), int(dtype)
        self.device_type, self.device_id = int(device_type), int(device_id)
        self.readonly, self.stream, self.owner = bool(readonly), stream, owner

    @property
    def count(self) -> int:
        return self.nbytes // _dt.ITEMSIZE[self.dtype]

    @property
    def device(self) -> str:
        return f"{DEVICE_NAMES.get(self.device_type, f'device_type {self.device_type}')}:{self.device_id}"

    def view(self, offset: int, count: int) -> "DeviceBuffer":
        """``count`` elements starting at element ``offset`` (shares memory and owner)."""
        isz = _dt.ITEMSIZE[self.dtype]
        if offset < 0 or count < 0 or (offset + count) * isz > self.nbytes:
            raise InvalidUsage(f"view [{offset}:{offset + count}] is outside a buffer of {self.count} elements")
        return DeviceBuffer(self.ptr + offset * isz, count * isz, self.dtype, self.device_type,
                            self.device_id, self.readonly, self.stream, self)

    def __repr__(self):
        return (f"DeviceBuffer({self.count} x {_dt.NAMES[self.dtype]} on {self.device}, "
                f"ptr={self.ptr:#x}{', readonly' if self.readonly else ''})")


def is_device_buffer_like(obj) -> bool:
    return isinstance(obj, DeviceBuffer) or hasattr(obj, "__cuda_array_interface__") or \
        hasattr(obj, "__dlpack__")


def as_device_buffer(obj, dtype: int | None = None, writable: bool = False) -> DeviceBuffer:
    """A DeviceBuffer over ``obj``: a DeviceBuffer, a ``__cuda_array_interface__`` object (tried
    first: it costs no capsule) or a DLPack producer. ``dtype`` overrides the element type (needed
    for fp8 through the CUDA Array Interface); ``writable`` refuses read-only buffers."""
    if isinstance(obj, DeviceBuffer):
        buf = obj
    elif hasattr(obj, "__cuda_array_interface__"):
        buf = from_cuda_array_interface(obj, dtype)
    elif hasattr(obj, "__dlpack__"):
        buf = from_dlpack(obj, dtype)
    else:
        raise InvalidUsage(f"{type(obj).__name__} is not a device buffer: pass an object with "
                           f"__dlpack__ (torch, cupy, jax, numpy) or __cuda_array_interface__")
    if writable and buf.readonly:
        raise InvalidUsage(f"{buf!r} is read-only and the collective writes into it; pass a "
                           f"writable buffer (e.g. a copy)")
    return buf


def from_numpy(a: np.ndarray) -> DeviceBuffer:
    """A DeviceBuffer (device type CPU) over a C-contiguous numpy array of any hetccl dtype.

    numpy's own DLPack export refuses ml_dtypes' bfloat16 and fp8, so host arrays come this way."""
    if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
        raise InvalidUsage("from_numpy needs a C-contiguous numpy array; use np.ascontiguousarray")
    return DeviceBuffer(a.ctypes.data, a.nbytes, _dt.from_numpy(a.dtype), DL_CPU, 0,
                        not a.flags.writeable, None, a)


# ---- CUDA Array Interface ---------------------------------------------------------------------
def _contiguous(shape, strides, itemsize) -> bool:
    if strides is None:
        return True
    expect = itemsize
    for n, s in zip(reversed(shape), reversed(strides)):
        if n != 1 and s != expect:
            return False
        expect *= n
    return True


def from_cuda_array_interface(obj, dtype: int | None = None) -> DeviceBuffer:
    """Parse ``obj.__cuda_array_interface__`` (versions 2 and 3; numba/cupy/torch producers)."""
    cai = obj.__cuda_array_interface__
    try:
        shape = tuple(int(n) for n in cai["shape"])
        typestr = cai["typestr"]
        ptr, readonly = cai["data"]
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidUsage(f"__cuda_array_interface__ of {type(obj).__name__} is malformed ({e}): it "
                           f"needs shape, typestr and data=(ptr, readonly)") from None
    if cai.get("mask") is not None:
        raise InvalidUsage("masked __cuda_array_interface__ arrays are not supported; pass the data only")
    if len(typestr) < 3 or typestr[0] not in "<>|=":
        raise InvalidUsage(f"__cuda_array_interface__ typestr {typestr!r} is not of the form '<f4'")
    if typestr[0] == ">" and typestr[2:] != "1":
        raise InvalidUsage(f"typestr {typestr!r} is big-endian; devices are little-endian")
    if dtype is None:
        try:
            dtype = _TYPESTR[typestr[1:]]
        except KeyError:
            hint = (" (a 1-byte void is fp8 of either format: pass dtype=hetccl.dtypes.FP8_E4M3 or "
                    "FP8_E5M2)" if typestr[1:] == "V1" else "")
            raise InvalidUsage(f"__cuda_array_interface__ typestr {typestr!r} is not a type hetccl "
                               f"moves{hint}; use one of {', '.join(_dt.NAMES)}") from None
    isz = _dt.ITEMSIZE[dtype]
    if int(typestr[2:]) != isz:
        raise InvalidUsage(f"typestr {typestr!r} has {typestr[2:]}-byte elements, {_dt.NAMES[dtype]} has {isz}")
    strides = cai.get("strides")
    if not _contiguous(shape, strides, isz):
        raise InvalidUsage(f"buffer of shape {shape} with strides {tuple(strides)} is not C-contiguous; "
                           f"pass a contiguous one (torch: .contiguous(), cupy: cupy.ascontiguousarray)")
    n = math.prod(shape)
    stream = cai.get("stream")
    if stream == 0:
        raise InvalidUsage("__cuda_array_interface__ stream 0 is disallowed by the protocol (v3); "
                           "the producer must give None, 1 (legacy default) or 2 (per-thread default) or a stream")
    return DeviceBuffer(int(ptr or 0), n * isz, dtype, DL_CUDA, _cai_device(obj), bool(readonly),
                        stream, obj)


def _cai_device(obj) -> int:
    dev = getattr(obj, "device", None)     # torch.device / cupy Device; the interface itself has none
    idx = getattr(dev, "index", None)
    if idx is None:
        idx = getattr(dev, "id", None)
    return int(idx) if isinstance(idx, int) else 0


# ---- DLPack -----------------------------------------------------------------------------------
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]


class _DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", _DLPackVersion), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER),
                ("flags", ctypes.c_uint64), ("dl_tensor", _DLTensor)]


_FLAG_READ_ONLY = 1   # DLPACK_FLAG_BITMASK_READ_ONLY
_api = ctypes.pythonapi
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_SetName.restype = ctypes.c_int
_api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]


class _Consumed:
    """Owns a consumed DLPack capsule's tensor: calls the producer's deleter exactly once."""

    __slots__ = ("_managed", "_producer")

    def __init__(self, managed, producer):
        self._managed, self._producer = managed, producer

    def __del__(self):
        m, self._managed = self._managed, None
        if m is not None and m.deleter:
            m.deleter(ctypes.addressof(m))


def _capsule(obj):
    try:
        return obj.__dlpack__(max_version=(1, 0)), True
    except TypeError:                        # a pre-1.0 producer: no max_version keyword
        return obj.__dlpack__(), False


def from_dlpack(obj, dtype: int | None = None) -> DeviceBuffer:
    """Consume ``obj.__dlpack__()`` (versioned capsules when the producer has them)."""
    cap, versioned = _capsule(obj)
    name = b"dltensor_versioned" if versioned and _api.PyCapsule_IsValid(cap, b"dltensor_versioned") else b"dltensor"
    if not _api.PyCapsule_IsValid(cap, name):
        raise InvalidUsage(f"{type(obj).__name__}.__dlpack__() did not return an unused DLPack capsule")
    addr = _api.PyCapsule_GetPointer(cap, name)
    if name == b"dltensor_versioned":
        managed = _DLManagedTensorVersioned.from_address(addr)
        if managed.version.major > 1:
            raise InvalidUsage(f"DLPack {managed.version.major}.x capsule: hetccl reads 1.x")
        readonly = bool(managed.flags & _FLAG_READ_ONLY)
    else:
        managed = _DLManagedTensor.from_address(addr)
        readonly = False
    _api.PyCapsule_SetName(cap, b"used_dltensor_versioned" if name == b"dltensor_versioned" else b"used_dltensor")
    owner = _Consumed(managed, obj)          # from here on the deleter runs when we are done
    t = managed.dl_tensor
    if t.dtype.lanes != 1:
        raise InvalidUsage(f"DLPack tensor with {t.dtype.lanes} lanes per element is not supported")
    if dtype is None:
        try:
            dtype = _DL_DTYPES[(t.dtype.code, t.dtype.bits)]
        except KeyError:
            raise InvalidUsage(f"DLPack dtype (code {t.dtype.code}, {t.dtype.bits} bits) is not a type "
                               f"hetccl moves; use one of {', '.join(_dt.NAMES)}") from None
    isz = _dt.ITEMSIZE[dtype]
    if t.dtype.bits != 8 * isz:
        raise InvalidUsage(f"DLPack dtype has {t.dtype.bits}-bit elements, {_dt.NAMES[dtype]} has {8 * isz}")
    shape = [t.shape[i] for i in range(t.ndim)]
    strides = None if not t.strides else [t.strides[i] * isz for i in range(t.ndim)]
    if not _contiguous(shape, strides, isz):
        raise InvalidUsage(f"DLPack tensor of shape {tuple(shape)} is not C-contiguous; pass a "
                           f"contiguous one (torch: .contiguous(), numpy: np.ascontiguousarray)")
    n = math.prod(shape)
    ptr = (t.data or 0) + t.byte_offset
    return DeviceBuffer(ptr, n * isz, dtype, t.device.device_type, t.device.device_id, readonly,
                        None, owner)


# ---- host staging -----------------------------------------------------------------------------
def _check(runtime, rc: int, what: str) -> None:
    if rc:
        raise BridgeError(f"{what} failed: {runtime.error_string(rc)} (error {rc} from {runtime.path})")


def to_host(runtime, buf: DeviceBuffer, out: np.ndarray | None = None) -> np.ndarray:
    """Copy ``buf`` into host memory (``out`` or a new array of buf's dtype) and return it."""
    if out is None:
        out = np.empty(buf.count, dtype=_dt.numpy_dtype(buf.dtype))
    elif out.nbytes < buf.nbytes or not out.flags.c_contiguous or not out.flags.writeable:
        raise InvalidUsage(f"staging array of {out.nbytes} bytes cannot receive {buf!r}: it must be "
                           f"C-contiguous, writable and at least {buf.nbytes} bytes")
    kind = HOST_TO_HOST if buf.device_type in HOST_READABLE else DEVICE_TO_HOST
    if buf.nbytes:
        _check(runtime, runtime.memcpy(out.ctypes.data, buf.ptr, buf.nbytes, kind), "device-to-host copy")
    return out


def from_host(runtime, host, buf: DeviceBuffer) -> None:
    """Copy host array ``host`` (nbytes <= buf.nbytes) into ``buf``."""
    h = np.ascontiguousarray(host)
    if h.nbytes > buf.nbytes:
        raise InvalidUsage(f"{h.nbytes} host bytes do not fit in {buf!r}")
    if buf.readonly:
        raise InvalidUsage(f"{buf!r} is read-only; cannot copy into it")
    kind = HOST_TO_HOST if buf.device_type in HOST_READABLE else HOST_TO_DEVICE
    if h.nbytes:
        _check(runtime, runtime.memcpy(buf.ptr, h.ctypes.data, h.nbytes, kind), "host-to-device copy")
