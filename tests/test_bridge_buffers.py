"""DeviceBuffer: DLPack (numpy producers, CPU) and __cuda_array_interface__ (a fake producer: no
GPU here) parsing, contiguity/readonly/dtype errors, owner lifetime, and host staging through a
runtime (the fakert test double: host memcpy behind cudart's ABI)."""
from __future__ import annotations

import gc
import weakref

import ml_dtypes
import numpy as np
import pytest

import hetccl.dtypes as dt
from hetccl.bridges import device_buffers, loader
from hetccl.bridges.base import BridgeError
from hetccl.bridges.device_buffers import DeviceBuffer, as_device_buffer, from_cuda_array_interface
from hetccl.errors import InvalidUsage
from tests import fakeccl


class FakeCuda:
    """A producer of __cuda_array_interface__ v3 over host memory (the dict is what torch/cupy give)."""

    def __init__(self, a: np.ndarray, typestr=None, strides=None, readonly=False, stream=None, **extra):
        self.a = a
        self.__cuda_array_interface__ = {
            "shape": a.shape, "typestr": typestr or a.dtype.str, "data": (a.ctypes.data, readonly),
            "version": 3, "strides": strides, "stream": stream, **extra}


@pytest.mark.parametrize("np_dtype,code", [
    (np.int8, dt.INT8), (np.uint8, dt.UINT8), (np.int16, dt.INT16), (np.uint16, dt.UINT16),
    (np.int32, dt.INT32), (np.uint32, dt.UINT32), (np.int64, dt.INT64), (np.uint64, dt.UINT64),
    (np.float16, dt.FLOAT16), (np.float32, dt.FLOAT32), (np.float64, dt.FLOAT64), (np.bool_, dt.BOOL)])
def test_dlpack_from_numpy(np_dtype, code):
    a = np.arange(12).astype(np_dtype).reshape(3, 4)
    b = as_device_buffer(a)
    assert (b.ptr, b.nbytes, b.dtype, b.count) == (a.ctypes.data, a.nbytes, code, 12)
    assert (b.device_type, b.device_id, b.device, b.readonly) == (device_buffers.DL_CPU, 0, "cpu:0", False)


def test_dlpack_offset_view_readonly_and_strides():
    a = np.arange(20, dtype=np.float32)
    b = as_device_buffer(a[5:15])                     # byte offset / data pointer of a slice
    assert b.ptr == a.ctypes.data + 20 and b.count == 10
    ro = np.arange(4, dtype=np.int32)
    ro.flags.writeable = False
    assert as_device_buffer(ro).readonly              # versioned capsule's READ_ONLY flag
    with pytest.raises(InvalidUsage, match="read-only and the collective writes"):
        as_device_buffer(ro, writable=True)
    with pytest.raises(InvalidUsage, match=r"not C-contiguous.*\.contiguous\(\)"):
        as_device_buffer(np.arange(20, dtype=np.float32)[::2])
    with pytest.raises(InvalidUsage, match="not C-contiguous"):
        as_device_buffer(np.zeros((4, 3), np.float64).T)
    assert as_device_buffer(np.zeros((4, 1), np.float64)[:, :1]).count == 4   # size-1 dims: any stride


def test_dlpack_deleter_runs_and_owner_lives():
    a = np.arange(8, dtype=np.float64)
    ref = weakref.ref(a)
    b = as_device_buffer(a)
    del a
    gc.collect()
    assert ref() is not None                          # the capsule's manager keeps the array alive
    v = b.view(2, 3)
    del b
    gc.collect()
    assert ref() is not None and v.count == 3        # a view keeps its parent
    del v
    gc.collect()
    assert ref() is None                              # deleter ran: numpy released its reference


def test_dlpack_producer_without_max_version():
    class Old:                                        # a pre-DLPack-1.0 producer
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, stream=None):
            return self.a.__dlpack__()

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    a = np.arange(6, dtype=np.int64)
    b = as_device_buffer(Old(a))
    assert (b.ptr, b.dtype, b.readonly) == (a.ctypes.data, dt.INT64, False)


@pytest.mark.parametrize("typestr,code", [
    ("|i1", dt.INT8), ("|u1", dt.UINT8), ("<i2", dt.INT16), ("<u2", dt.UINT16), ("<i4", dt.INT32),
    ("<u4", dt.UINT32), ("<i8", dt.INT64), ("<u8", dt.UINT64), ("<f2", dt.FLOAT16),
    ("<f4", dt.FLOAT32), ("<f8", dt.FLOAT64), ("|b1", dt.BOOL), ("<V2", dt.BFLOAT16)])
def test_cuda_array_interface_typestrs(typestr, code):
    a = np.zeros(6, dtype=dt.numpy_dtype(code))
    b = as_device_buffer(FakeCuda(a, typestr=typestr))
    assert (b.ptr, b.nbytes, b.dtype, b.device_type, b.stream) == (a.ctypes.data, a.nbytes, code, device_buffers.DL_CUDA, None)


def test_cuda_array_interface_bfloat16_is_torch_convention():
    a = np.zeros(4, ml_dtypes.bfloat16)
    assert a.dtype.str == "<V2"                       # ml_dtypes' typestr, which torch also uses
    assert as_device_buffer(FakeCuda(a)).dtype == dt.BFLOAT16


def test_cuda_array_interface_errors():
    a = np.zeros(8, np.float32)
    with pytest.raises(InvalidUsage, match="fp8 of either format: pass dtype="):
        as_device_buffer(FakeCuda(np.zeros(4, np.uint8), typestr="<V1"))
    f8 = as_device_buffer(FakeCuda(np.zeros(4, np.uint8), typestr="<V1"), dtype=dt.FP8_E5M2)
    assert f8.dtype == dt.FP8_E5M2 and f8.count == 4
    with pytest.raises(InvalidUsage, match="'<c8' is not a type hetccl moves"):
        as_device_buffer(FakeCuda(a, typestr="<c8"))
    with pytest.raises(InvalidUsage, match="big-endian"):
        as_device_buffer(FakeCuda(a, typestr=">f4"))
    with pytest.raises(InvalidUsage, match=r"strides \(8,\) is not C-contiguous"):
        as_device_buffer(FakeCuda(a, strides=(8,)))
    assert as_device_buffer(FakeCuda(a, strides=(4,))).count == 8       # explicit C strides are fine
    with pytest.raises(InvalidUsage, match="masked"):
        as_device_buffer(FakeCuda(a, mask=object()))
    with pytest.raises(InvalidUsage, match="stream 0 is disallowed"):
        as_device_buffer(FakeCuda(a, stream=0))
    with pytest.raises(InvalidUsage, match="4-byte elements, float16 has 2"):
        from_cuda_array_interface(FakeCuda(a), dtype=dt.FLOAT16)
    ro = as_device_buffer(FakeCuda(a, readonly=True))
    assert ro.readonly
    with pytest.raises(InvalidUsage, match="read-only"):
        as_device_buffer(ro, writable=True)
    with pytest.raises(InvalidUsage, match="malformed"):
        as_device_buffer(type("Bad", (), {"__cuda_array_interface__": {"shape": (2,)}})())
    with pytest.raises(InvalidUsage, match="not a device buffer"):
        as_device_buffer([1, 2, 3])
    assert as_device_buffer(FakeCuda(a, stream=7)).stream == 7          # the producer's stream is kept


def test_device_buffer_checks_and_views():
    with pytest.raises(InvalidUsage, match="not a whole number of float32"):
        DeviceBuffer(4096, 6, dt.FLOAT32)
    with pytest.raises(InvalidUsage, match="invalid"):
        DeviceBuffer(0, 8, dt.INT8)
    assert DeviceBuffer(0, 0, dt.INT8).count == 0      # empty buffers may have a null pointer
    b = DeviceBuffer(4096, 40, dt.FLOAT32, device_buffers.DL_CUDA, 1)
    v = b.view(3, 5)
    assert (v.ptr, v.count, v.device, v.owner) == (4096 + 12, 5, "cuda:1", b)
    with pytest.raises(InvalidUsage, match="outside a buffer of 10"):
        b.view(8, 5)
    assert "10 x float32 on cuda:1" in repr(b)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    libs = fakeccl.build_or_skip(tmp_path_factory)
    return loader.load_runtime(fakeccl.nccl_vendor(libs).runtime)


def test_host_staging_through_the_runtime(runtime):
    dev = np.arange(10, dtype=np.float32) * 1.5          # "device" memory of the test double
    b = DeviceBuffer(dev.ctypes.data, dev.nbytes, dt.FLOAT32, device_buffers.DL_CUDA, 0, owner=dev)
    host = device_buffers.to_host(runtime, b)
    np.testing.assert_array_equal(host, dev)
    device_buffers.from_host(runtime, np.full(10, 7, np.float32), b)
    np.testing.assert_array_equal(dev, 7)
    out = np.zeros(12, np.float32)
    assert device_buffers.to_host(runtime, b.view(2, 4), out) is out and (out[:4] == 7).all()
    with pytest.raises(InvalidUsage, match="cannot receive"):
        device_buffers.to_host(runtime, b, np.zeros(3, np.float32))
    with pytest.raises(InvalidUsage, match="do not fit"):
        device_buffers.from_host(runtime, np.zeros(11, np.float32), b)
    ro = DeviceBuffer(dev.ctypes.data, dev.nbytes, dt.FLOAT32, device_buffers.DL_CUDA, readonly=True, owner=dev)
    with pytest.raises(InvalidUsage, match="read-only"):
        device_buffers.from_host(runtime, np.zeros(2, np.float32), ro)


def test_host_staging_reports_the_runtime_error(runtime):
    class Failing:
        path = "libfailing.so"

        def memcpy(self, dst, src, n, kind):
            return 21

        def error_string(self, rc):
            return "invalid copy direction for memcpy"

    b = DeviceBuffer(4096, 8, dt.INT32, device_buffers.DL_CUDA)
    with pytest.raises(BridgeError, match="device-to-host copy failed: invalid copy direction for memcpy"):
        device_buffers.to_host(Failing(), b)
    assert runtime.memcpy(0, 0, 0, 9) == 21                # the double's own check of the kind


def test_from_numpy_for_host_dtypes_numpy_cannot_export():
    a = np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16)
    b = device_buffers.from_numpy(a)
    assert (b.dtype, b.device_type, b.nbytes) == (dt.BFLOAT16, device_buffers.DL_CPU, 12)
    with pytest.raises(InvalidUsage, match="C-contiguous"):
        device_buffers.from_numpy(a[::2])
