"""The native bridges: NCCL family (NCCL, ECCL, two MCCLs), HCCL, CNCL and BKCL.

* Against the real libnccl of the nvidia-nccl-cu12 wheel: it loads through the run-time binding,
  reports the wheel's version, its own calls that need no GPU work (GetUniqueId, GetErrorString,
  CommInitRank's failure + GetLastError), and a bridge fails with "no CUDA device" here.
* Against ABI test doubles (tests/fakeccl: NOT vendor libraries; host-memory implementations of
  the NCCL / HCCL / cudart / ACL call ABI), loaded through the same binding by name + prefix:
  every collective x dtype x op of the tables on 2 ranks against numpy, send/recv, supports(),
  version gating, and every error path (library error -> BridgeError with the library's string,
  no device -> BridgeUnavailable on every island rank, stream timeout / async error -> abort).
  Communicator creation: the non-blocking join (CommInitRankConfig + CommGetAsyncError polls) from
  2.14 on, its deadline (a peer that never arrives -> HetcclTimeout on every rank, naming the
  ranks that never started), the blocking CommInitRank below 2.14 or without the symbol, and
  calls that return ncclInProgress on a non-blocking communicator.
* Every family (NCCL, HCCL, CNCL, BKCL, ECCL) against its double, with the same checks: every call
  on one rank, every dtype x op on two ranks, the join deadline (a peer that never starts, a join
  that never completes), a stream that never finishes and an asynchronous error (abort), no device.
* Two libmccl.so with the same ``mccl*`` symbols (Moore Threads', MetaX's) in one process, neither
  binding to the other's symbols; the same two loaded RTLD_GLOBAL (in a child) show the hazard.
* On a GPU machine only (skipped here): 2 ranks x 1 GPU allreduce through the real NCCL bridge.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.metadata
import os
import threading
import time

import numpy as np
import pytest

import hetccl.dtypes as dt
from hetccl import config
from hetccl.bridges import bkcl, hccl, loader, native, nccl, vendor
from hetccl.bridges.base import BridgeError, BridgeUnavailable
from hetccl.bridges.device_buffers import from_numpy
from hetccl.errors import HetcclTimeout, InvalidUsage
from hetccl.ops import ReduceOp
from tests import fakeccl
from tests.launcher import run_ranks

OPS = (ReduceOp.SUM, ReduceOp.PROD, ReduceOp.MIN, ReduceOp.MAX, ReduceOp.AVG, ReduceOp.BAND,
       ReduceOp.BOR, ReduceOp.BXOR)


MemStore = fakeccl.MemStore


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    return fakeccl.build_or_skip(tmp_path_factory)


def _buf(a):
    return from_numpy(a)      # host memory as the doubles' "device" memory (DLPack: test_bridge_buffers)


# ------------------------------------------------------------------------------------------------
# The real libnccl (nvidia-nccl-cu12 wheel)
# ------------------------------------------------------------------------------------------------
def _wheel_version():
    try:
        return importlib.metadata.version("nvidia-nccl-cu12")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("nvidia-nccl-cu12 is not installed (pip install -e '.[bridges]')")


def test_real_nccl_loads_from_the_wheel_and_reports_its_version():
    wheel = _wheel_version()
    lib = loader.load_library(nccl.NCCL)
    assert os.path.join("nvidia", "nccl", "lib") in lib.path
    assert vendor.version_string(lib.version()) == wheel.split(".post")[0]
    assert {"comm_abort", "comm_get_async_error", "get_last_error", "send", "recv",
            "group_start", "group_end", "reduce"} <= lib.present
    assert "invalid argument" in lib.error_string(4)        # ncclInvalidArgument, NCCL's own text


def _real_nccl_without_a_gpu():
    """The wheel's libnccl, on a machine without a CUDA device (else the test is skipped)."""
    _wheel_version()
    lib = loader.load_library(nccl.NCCL)
    if loader.device_status(nccl.NCCL, loader.load_runtime(nccl.CUDART))[0]:
        pytest.skip("hardware: this machine has a CUDA device")
    return lib


def test_real_nccl_calls_without_a_gpu_fail_with_its_own_message():
    lib = _real_nccl_without_a_gpu()
    rc, uid = lib.unique_id()                               # bootstrap only: works without a GPU
    assert rc == 0 and len(uid) == 128 and any(uid)
    rc, comm = lib.comm_init(1, uid, 0)
    assert rc == 1 and comm == 0                            # ncclUnhandledCudaError
    assert "unhandled cuda error" in lib.error_string(rc)
    assert "Cuda failure" in lib.last_error(0)


def test_real_nccl_nonblocking_join_without_a_gpu_fails_at_once_with_its_own_message():
    from hetccl._native.ccl_api import WAIT_CALL
    lib = _real_nccl_without_a_gpu()
    assert {"comm_init_config", "comm_get_async_error", "comm_abort"} <= lib.present
    assert lib.version() >= native.NONBLOCKING_SINCE         # so a bridge would join non-blocking
    rc, uid = lib.unique_id()
    t0 = time.monotonic()
    code, detail, comm = lib.comm_init_nonblocking(1, uid, 0, 30.0)
    assert time.monotonic() - t0 < 15                        # refused in the call, not after the 30 s deadline
    assert (code, detail, comm) == (WAIT_CALL, 1, 0)         # ncclUnhandledCudaError, no communicator
    assert "Cuda failure" in lib.last_error(0)


def test_real_nccl_bridge_says_no_cuda_device():
    _wheel_version()
    rt = loader.load_runtime(nccl.CUDART)
    if loader.device_status(nccl.NCCL, rt)[0]:
        pytest.skip("hardware: this machine has a CUDA device")
    with pytest.raises(BridgeUnavailable, match="no CUDA device: cudaGetDeviceCount returned"):
        nccl.NcclBridge(MemStore(), "t", 0, 1)


# ------------------------------------------------------------------------------------------------
# The ABI test doubles, one process
# ------------------------------------------------------------------------------------------------
def _fake(libs, monkeypatch=None, **env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return nccl.NcclBridge(MemStore(), "t", 0, 1, vendor=fakeccl.nccl_vendor(libs))


def test_fake_single_rank_every_collective(libs):
    b = nccl.NcclBridge(MemStore(), "t", 0, 1, vendor=fakeccl.nccl_vendor(libs))
    try:
        assert b.describe().startswith("fakeccl 2.27.3 bridge")
        x = np.arange(-5, 6, dtype=np.float32)
        y = np.zeros_like(x)
        b.allreduce(_buf(x), _buf(y), x.size, dt.FLOAT32, ReduceOp.SUM)
        np.testing.assert_array_equal(y, x)
        b.allreduce(_buf(y), _buf(y), x.size, dt.FLOAT32, ReduceOp.AVG)      # in place
        np.testing.assert_array_equal(y, x)
        b.reduce_scatter(_buf(x), _buf(y), x.size, dt.FLOAT32, ReduceOp.MAX)
        np.testing.assert_array_equal(y, x)
        b.reduce(_buf(x), _buf(y), x.size, dt.FLOAT32, ReduceOp.MIN, 0)
        np.testing.assert_array_equal(y, x)
        z = np.zeros(3, np.int16)                   # no int16 enum: moved as bytes
        b.allgather(_buf(np.array([7, -8, 9], np.int16)), _buf(z), 3, dt.INT16)
        np.testing.assert_array_equal(z, [7, -8, 9])
        b.broadcast(_buf(z), 3, dt.INT16, 0)
        np.testing.assert_array_equal(z, [7, -8, 9])
        r = np.zeros(3, np.int16)
        b.sendrecv(sends=[(_buf(z), 3, dt.INT16, 0)], recvs=[(_buf(r), 3, dt.INT16, 0)])
        np.testing.assert_array_equal(r, z)
        assert b.async_error() == 0
    finally:
        b.close()
    with pytest.raises(InvalidUsage, match="closed or aborted"):
        b.allreduce(_buf(x), _buf(y), x.size, dt.FLOAT32, ReduceOp.SUM)


def test_fake_supports_and_version_gating(libs, monkeypatch):
    b = _fake(libs)
    try:
        for op in (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR):
            assert not b.supports("allreduce", dt.INT32, op)    # NCCL has no bitwise ops
        assert not b.supports("allreduce", dt.INT16, ReduceOp.SUM)  # nor 16-bit integers
        assert not b.supports("allreduce", dt.INT32, ReduceOp.AVG)  # integer AVG: not hetccl's
        assert b.supports("allreduce", dt.BOOL, ReduceOp.BOR) and not b.supports("allreduce", dt.BOOL, ReduceOp.BXOR)
        assert b.supports("allreduce", dt.FP8_E4M3, ReduceOp.SUM)   # 2.27 >= 2.24
        assert b.supports("allgather", dt.INT16) and b.supports("broadcast", dt.BOOL)
        assert not b.supports("alltoall", dt.INT8)
        with pytest.raises(InvalidUsage, match="no exact allreduce of int16 with SUM"):
            b.allreduce(_buf(np.zeros(2, np.int16)), _buf(np.zeros(2, np.int16)), 2, dt.INT16, ReduceOp.SUM)
    finally:
        b.close()
    monkeypatch.setenv("FAKECCL_VERSION", "22303")          # 2.23.3: no fp8
    b = _fake(libs)
    assert not b.supports("allreduce", dt.FP8_E5M2, ReduceOp.MAX) and b.supports("allreduce", dt.BFLOAT16, ReduceOp.AVG)
    b.close()
    monkeypatch.setenv("FAKECCL_VERSION", "2804")           # 2.8.4 (old version scheme): no bf16, no AVG
    b = _fake(libs)
    assert b.describe().startswith("fakeccl 2.8.4")
    assert not b.supports("allreduce", dt.BFLOAT16, ReduceOp.SUM)
    assert not b.supports("allreduce", dt.FLOAT32, ReduceOp.AVG) and b.supports("allreduce", dt.FLOAT32, ReduceOp.PROD)
    b.close()


def test_vendor_tables():
    t, byte = nccl.rccl_tables(22703)
    assert byte == nccl.ncclUint8 and ("allreduce", dt.FP8_E4M3, ReduceOp.SUM) not in t  # RCCL fp8 is FNUZ
    assert t[("allreduce", dt.BFLOAT16, ReduceOp.AVG)] == (nccl.ncclBfloat16, nccl.ncclAvg)
    t, _ = nccl.nccl_tables(22703)
    assert t[("reduce_scatter", dt.FP8_E5M2, ReduceOp.MIN)] == (nccl.ncclFloat8e5m2, nccl.ncclMin)
    assert t[("allreduce", dt.UINT32, ReduceOp.MAX)] == (nccl.ncclUint32, nccl.ncclMax)
    assert t[("reduce", dt.BOOL, ReduceOp.BAND)] == (nccl.ncclUint8, nccl.ncclMin)
    t, _ = nccl.base_tables(99999)
    assert ("allreduce", dt.BFLOAT16, ReduceOp.SUM) not in t and ("allreduce", dt.FLOAT16, ReduceOp.AVG) not in t
    t, byte = hccl.hccl_tables(0)
    assert byte == hccl.HCCL_INT8
    assert t[("allreduce", dt.INT16, ReduceOp.PROD)] == (hccl.HCCL_INT16, hccl.HCCL_PROD)
    assert ("reduce_scatter", dt.INT16, ReduceOp.SUM) not in t     # hccl.h: ReduceScatter has no int16
    assert ("allreduce", dt.FLOAT64, ReduceOp.SUM) not in t and ("allreduce", dt.FLOAT32, ReduceOp.AVG) not in t
    assert t[("allreduce", dt.BFLOAT16, ReduceOp.MAX)] == (hccl.HCCL_BFP16, hccl.HCCL_MAX)
    assert [v.kind for v in nccl.FAMILY] == ["nccl", "rccl", "mccl", "mccl_metax", "ixccl", "eccl"]
    assert {v.prefix for v in nccl.FAMILY} == {"nccl", "mccl", "eccl"}


def test_fake_library_errors_carry_its_own_strings(libs, monkeypatch):
    b = _fake(libs)
    x = np.ones(4, np.float32)
    try:
        monkeypatch.setenv("FAKECCL_FAIL", "AllReduce")
        with pytest.raises(BridgeError, match=r"fakecclAllReduce failed with error 2: unhandled system "
                                              r"error .*injected failure in AllReduce"):
            b.allreduce(_buf(x), _buf(x), 4, dt.FLOAT32, ReduceOp.SUM)
        monkeypatch.delenv("FAKECCL_FAIL")
        big = np.zeros((1 << 20) // 4 + 1, np.float32)     # one element over the double's slot
        with pytest.raises(BridgeError, match="error 5: invalid usage.*exceeds the test double's slot"):
            b.allgather(_buf(big), _buf(big), big.size, dt.FLOAT32)
        with pytest.raises(InvalidUsage, match="has 16 bytes; the call needs 32"):
            b.allreduce(_buf(x), _buf(np.zeros(8, np.float32)), 8, dt.FLOAT32, ReduceOp.SUM)
        ro = np.ones(4, np.float32)
        ro.flags.writeable = False
        with pytest.raises(InvalidUsage, match="read-only"):
            b.allreduce(_buf(x), _buf(ro), 4, dt.FLOAT32, ReduceOp.SUM)
        b.allreduce(_buf(ro), _buf(x), 4, dt.FLOAT32, ReduceOp.SUM)   # a read-only *source* is fine
    finally:
        b.close()
    monkeypatch.setenv("FAKECCL_FAIL", "CommInitRankConfig")          # 2.27: the non-blocking join
    with pytest.raises(BridgeError, match=r"fakecclCommInitRankConfig failed with error 2: unhandled system "
                                          r"error .*injected failure in CommInitRankConfig"):
        _fake(libs)
    monkeypatch.setenv("FAKECCL_FAIL", "CommInitRank")
    monkeypatch.setenv("FAKECCL_VERSION", "21300")                     # 2.13: the blocking join
    with pytest.raises(BridgeError, match=r"fakecclCommInitRank failed with error 2.*injected failure in CommInitRank\b"):
        _fake(libs)


def test_fake_wrong_memory_type_is_refused(libs):
    v = fakeccl.nccl_vendor(libs, memory_dl=(2, 13))          # a bridge on CUDA memory
    b = nccl.NcclBridge(MemStore(), "t", 0, 1, vendor=v)
    try:
        with pytest.raises(InvalidUsage, match="needs cuda memory, got a buffer on cpu:0"):
            b.allreduce(_buf(np.ones(2, np.float32)), _buf(np.ones(2, np.float32)), 2, dt.FLOAT32, ReduceOp.SUM)
    finally:
        b.close()


def test_fake_no_device(libs, monkeypatch):
    monkeypatch.setenv("FAKERT_DEVICES", "0")
    with pytest.raises(BridgeUnavailable, match=r"no CUDA device: fakertGetDeviceCount returned 100 "
                                                r"\(no CUDA-capable device is detected\)"):
        _fake(libs)
    with pytest.raises(BridgeUnavailable, match="no Ascend NPU device: fakeaclrtGetDeviceCount returned 107002"):
        hccl.HcclBridge(MemStore(), "t", 0, 1, vendor=fakeccl.hccl_vendor(libs))


def test_fake_stream_timeout_and_async_error_abort(libs, monkeypatch):
    b = _fake(libs)
    x = np.ones(4, np.float32)
    monkeypatch.setenv("FAKERT_BUSY", "1")                   # the stream never completes
    b.timeout = 0.2
    with pytest.raises(HetcclTimeout, match="did not finish within 0.2 s.*aborted"):
        b.allreduce(_buf(x), _buf(x), 4, dt.FLOAT32, ReduceOp.SUM)
    with pytest.raises(InvalidUsage, match="closed or aborted"):
        b.allreduce(_buf(x), _buf(x), 4, dt.FLOAT32, ReduceOp.SUM)
    monkeypatch.delenv("FAKERT_BUSY")
    b = _fake(libs)
    monkeypatch.setenv("FAKERT_BUSY", "1")
    monkeypatch.setenv("FAKECCL_ASYNC_ERROR", "6")            # ncclRemoteError
    with pytest.raises(BridgeError, match="failed asynchronously with error 6: remote process exited"):
        b.allgather(_buf(x), _buf(x), 4, dt.FLOAT32)
    assert b.async_error() == 0                                  # aborted: nothing left to ask


def _roundtrip(b):
    """Every call once on a 1-rank bridge; the values it returns must be the inputs."""
    x = np.arange(6, dtype=np.float32)
    y = np.zeros_like(x)
    b.allreduce(_buf(x), _buf(y), 6, dt.FLOAT32, ReduceOp.SUM)
    b.reduce_scatter(_buf(x), _buf(y), 6, dt.FLOAT32, ReduceOp.MAX)
    b.reduce(_buf(x), _buf(y), 6, dt.FLOAT32, ReduceOp.MIN, 0)
    z = np.zeros(6, np.float32)
    b.allgather(_buf(y), _buf(z), 6, dt.FLOAT32)
    b.broadcast(_buf(z), 6, dt.FLOAT32, 0)
    r = np.zeros(6, np.float32)
    b.sendrecv(sends=[(_buf(z), 6, dt.FLOAT32, 0)], recvs=[(_buf(r), 6, dt.FLOAT32, 0)])
    return r


def test_fake_joins_nonblocking_from_2_14_and_its_calls_may_be_in_progress(libs, monkeypatch):
    b = _fake(libs)
    try:
        assert b.nonblocking                                   # 2.27.3 with CommInitRankConfig
        np.testing.assert_array_equal(_roundtrip(b), np.arange(6, dtype=np.float32))
        # every call (and GroupEnd) returns ncclInProgress and the state stays "in progress" for
        # 3 polls although the stream is already empty: the bridge accepts and waits it out
        monkeypatch.setenv("FAKECCL_NONBLOCKING_CALLS", "3")
        np.testing.assert_array_equal(_roundtrip(b), np.arange(6, dtype=np.float32))
        assert b.async_error() == 0                            # "in progress" is not an error
    finally:
        b.close()
    b = _fake(libs)
    b.timeout = 0.3                                            # the state never leaves "in progress":
    monkeypatch.setenv("FAKECCL_NONBLOCKING_CALLS", "1000000000")   # the empty stream must not count
    x = np.ones(4, np.float32)
    with pytest.raises(HetcclTimeout, match="allreduce did not finish within 0.3 s"):
        b.allreduce(_buf(x), _buf(x), 4, dt.FLOAT32, ReduceOp.SUM)
    b = _fake(libs)
    monkeypatch.setenv("FAKECCL_NONBLOCKING_CALLS", "2")
    monkeypatch.setenv("FAKECCL_ASYNC_ERROR", "6")             # the state leaves "in progress" as an error
    with pytest.raises(BridgeError, match="allgather failed asynchronously with error 6: remote process"):
        b.allgather(_buf(x), _buf(x), 4, dt.FLOAT32)


def test_fake_joins_blocking_below_2_14_or_without_the_symbol(libs, monkeypatch):
    monkeypatch.setenv("FAKECCL_FAIL", "CommInitRankConfig")  # proves the config call is not made
    monkeypatch.setenv("FAKECCL_VERSION", "21300")
    b = _fake(libs)
    try:
        assert not b.nonblocking
        np.testing.assert_array_equal(_roundtrip(b), np.arange(6, dtype=np.float32))
    finally:
        b.close()
    monkeypatch.setenv("FAKECCL_VERSION", "22703")
    v = fakeccl.nccl_vendor(libs)
    v = dataclasses.replace(v, kind="fakeccl-2.27-without-config",     # (libraries are cached per kind)
                            roles={k: x for k, x in v.roles.items() if k != "comm_init_config"})
    b = nccl.NcclBridge(MemStore(), "t", 0, 1, vendor=v)      # e.g. an MCCL without the symbol
    assert not b.nonblocking and "comm_init_config" not in b.lib.present
    b.close()
    monkeypatch.setenv("FAKECCL_FAIL", "CommInitRank")         # and the non-blocking one does not use it
    b = _fake(libs)
    assert b.nonblocking
    b.close()


def test_bridge_timeout_defaults_to_the_communicators(libs, monkeypatch):
    monkeypatch.delenv("HETCCL_TIMEOUT", raising=False)
    b = _fake(libs)
    assert b.timeout == config.DEFAULT_TIMEOUT == config.timeout() == 600
    b.close()
    monkeypatch.setenv("HETCCL_TIMEOUT", "42")
    b = _fake(libs)
    assert b.timeout == 42
    b.close()
    monkeypatch.setenv("HETCCL_TIMEOUT", "soon")
    with pytest.raises(InvalidUsage, match="HETCCL_TIMEOUT='soon' is not a number of seconds"):
        _fake(libs)


def test_fake_join_deadline_names_the_rank_that_never_started(libs, tmp_path, monkeypatch):
    """Island rank 0 of 2 whose peer agreed to form the island and then never joined."""
    monkeypatch.setenv("FAKECCL_DIR", str(tmp_path))
    store = MemStore()
    store.set("t/can/1", b"ok")                                 # the peer's agreement, then nothing
    ticks, stop = [0], threading.Event()

    def other_python_thread():                                  # runs only if the join left the GIL
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    t = threading.Thread(target=other_python_thread)
    t.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(HetcclTimeout) as e:
            nccl.NcclBridge(store, "t", 0, 2, vendor=fakeccl.nccl_vendor(libs), timeout=1.0)
    finally:
        stop.set()
        t.join()
    assert 1.0 <= time.monotonic() - t0 < 10                 # the 1 s deadline (generous: a loaded machine)
    assert ticks[0] > 100                                       # ~1000 without load
    msg = str(e.value)
    assert "fakecclCommInitRankConfig (island rank 0 of 2) did not finish within 1 s" in msg
    assert "island rank(s) [1] never started joining" in msg and "HETCCL_TIMEOUT" in msg
    assert "communicator was aborted" in msg
    assert os.listdir(tmp_path) == []                           # the aborted join left no file


def test_missing_symbols_make_the_library_unavailable(libs):
    v = nccl.custom("notccl", libs["fakert"], "fakeccl", fakeccl.nccl_vendor(libs).runtime)
    with pytest.raises(BridgeUnavailable, match="has no symbol fakecclGetUniqueId"):
        loader.load_library(v)
    v = nccl.custom("nothing", "/nonexistent/libnothing.so", "x", nccl.CUDART)
    with pytest.raises(BridgeUnavailable, match="none of /nonexistent/libnothing.so was found"):
        loader.load_library(v)


def test_fake_hccl_single_rank(libs):
    b = hccl.HcclBridge(MemStore(), "t", 0, 1, vendor=fakeccl.hccl_vendor(libs))
    try:
        x = np.array([1, -2, 3], np.int16)
        y = np.zeros_like(x)
        b.allreduce(_buf(x), _buf(y), 3, dt.INT16, ReduceOp.PROD)
        np.testing.assert_array_equal(y, x)
        assert not b.supports("reduce_scatter", dt.INT16, ReduceOp.SUM)
        b.broadcast(_buf(y), 3, dt.INT16, 0)
        np.testing.assert_array_equal(y, x)
        with pytest.raises(BridgeError, match=r"FakeHcclBroadcast failed with error 1: parameter error"):
            b.broadcast(_buf(y), 3, dt.INT16, 5)                # root out of range
    finally:
        b.close()


# ------------------------------------------------------------------------------------------------
# Two ranks through hetccl's Store: every collective x dtype x op of the tables against numpy
# ------------------------------------------------------------------------------------------------
def _values(code, rank, n):
    """Small exact values for every dtype (negatives for signed types), different per rank."""
    base = np.arange(n) % 5 + 1 + rank
    if code in (dt.INT8, dt.INT16, dt.INT32, dt.INT64) or code in dt.FLOATING:
        base = base * (1 - 2 * (np.arange(n) % 2))
    if code == dt.BOOL:
        base = (np.arange(n) + rank) % 3 == 0
    return base.astype(dt.numpy_dtype(code))


def _expected(code, op, arrays):
    if code == dt.BOOL:
        f = {ReduceOp.MIN: np.minimum, ReduceOp.BAND: np.minimum, ReduceOp.MAX: np.maximum,
             ReduceOp.BOR: np.maximum}[op]
        return f.reduce(arrays)
    wide = np.array(arrays, dtype=np.float64)
    r = {ReduceOp.SUM: wide.sum(0), ReduceOp.PROD: wide.prod(0), ReduceOp.MIN: wide.min(0),
         ReduceOp.MAX: wide.max(0), ReduceOp.AVG: wide.sum(0) / len(arrays)}[op]
    return r.astype(dt.numpy_dtype(code))


def _matrix_rank(rank, size, libdict, family):
    import hetccl
    comm = hetccl.init()
    try:
        b = native.NativeBridge(fakeccl.vendor_of(family, libdict), comm._store, f"island-{family}", rank, size)
        wrong, checked = [], 0
        n = 7
        for code in range(len(dt.NAMES)):
            mine = _values(code, rank, n)
            every = [_values(code, r, n) for r in range(size)]
            for op in OPS:
                for coll in ("allreduce", "reduce", "reduce_scatter"):
                    if not b.supports(coll, code, op):
                        continue
                    checked += 1
                    if coll == "reduce_scatter":
                        send = np.concatenate([_values(code, rank, n)] * size)
                        out = np.zeros(n, mine.dtype)
                        b.reduce_scatter(_buf(send), _buf(out), n, code, op)
                    else:
                        out = np.zeros(n, mine.dtype)
                        if coll == "allreduce":
                            b.allreduce(_buf(mine), _buf(out), n, code, op)
                        else:
                            b.reduce(_buf(mine), _buf(out), n, code, op, 1)
                            if rank != 1:
                                continue
                    exp = _expected(code, op, every)
                    if not np.array_equal(out.view(np.uint8), exp.view(np.uint8)):
                        wrong.append((coll, dt.NAMES[code], op.name, out.tolist(), exp.tolist()))
            out = np.zeros(n * size, mine.dtype)
            b.allgather(_buf(mine), _buf(out), n, code)
            if not np.array_equal(out.view(np.uint8), np.concatenate(every).view(np.uint8)):
                wrong.append(("allgather", dt.NAMES[code]))
            buf = mine.copy()
            b.broadcast(_buf(buf), n, code, 1)
            if not np.array_equal(buf.view(np.uint8), every[1].view(np.uint8)):
                wrong.append(("broadcast", dt.NAMES[code]))
        peer = 1 - rank
        got = np.zeros(n, np.int16)
        b.sendrecv(sends=[(_buf(_values(dt.INT16, rank, n)), n, dt.INT16, peer)],
                   recvs=[(_buf(got), n, dt.INT16, peer)])
        if not np.array_equal(got, _values(dt.INT16, peer, n)):
            wrong.append(("sendrecv", got.tolist()))
        nonblocking = b.nonblocking
        b.close()
        return wrong, checked, nonblocking
    finally:
        comm.close()


@pytest.mark.parametrize("family", sorted(fakeccl.VENDORS))
def test_fake_two_ranks_every_dtype_and_op(libs, family):
    # NCCL: joined non-blocking, and every call returns ncclInProgress first; the others join in
    # the helper thread (ECCL's id of unpublished size travels in a 4120-byte buffer)
    env = dict(fakeccl.env(libs), **({"FAKECCL_NONBLOCKING_CALLS": "2"} if family == "nccl" else {}))
    results = run_ranks(_matrix_rank, 2, libs, family, timeout=180, env=env)
    least = {"nccl": 100, "hccl": 50, "cncl": 100, "bkcl": 50, "eccl": 70}[family]
    for wrong, checked, nonblocking in results:
        assert wrong == []
        assert checked >= least
        assert nonblocking == (family == "nccl")


def _join_with_a_peer_that_never_arrives(rank, size, libdict, timeout, family="nccl"):
    """Island rank 1's join never happens (FAKECCL_INIT_HANG): every rank must time out."""
    import hetccl
    comm = hetccl.init()
    try:
        if rank == 1:
            os.environ["FAKECCL_INIT_HANG"] = "1"
        t0 = time.monotonic()
        try:
            native.NativeBridge(fakeccl.vendor_of(family, libdict), comm._store, "island", rank, size,
                                timeout=timeout)
        except HetcclTimeout as e:
            took = time.monotonic() - t0
            if family != "nccl":
                time.sleep(1.5)       # let the helper leave the double's join (FAKECCL_WAIT) and clean up
            return "HetcclTimeout", str(e), took
        return "formed", "", time.monotonic() - t0
    finally:
        comm.close()


@pytest.mark.parametrize("family", ["nccl", "bkcl"])
def test_fake_two_ranks_join_that_never_completes_times_out_on_every_rank(libs, family):
    # the non-blocking join (NCCL) and the helper-thread join every other family shares (every
    # family's own join call is checked by test_every_family_join_deadline_names_the_rank_that_never_started);
    # the blocking joins' helpers give up inside the double after FAKECCL_WAIT and clean up
    results = run_ranks(_join_with_a_peer_that_never_arrives, 2, libs, 2.0, family, timeout=90,
                        env=dict(fakeccl.env(libs), FAKECCL_WAIT="3"))
    for rank, (kind, msg, took) in enumerate(results):
        assert kind == "HetcclTimeout", (rank, msg)
        assert 2.0 <= took < 2.0 + 10                            # the deadline, plus load on this VM
        assert f"(island rank {rank} of 2) did not finish within 2 s" in msg
        assert "every island rank started joining" in msg
        assert ("communicator was aborted" if family == "nccl" else "helper thread") in msg
    deadline = time.monotonic() + 10
    while glob.glob(os.path.join(os.path.dirname(libs["fakeccl"]), "fakeccl-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert glob.glob(os.path.join(os.path.dirname(libs["fakeccl"]), "fakeccl-*")) == []


def _form_with_knob_on_one_rank(rank, size, libdict, bad_rank, knob, value):
    """Create a fake-NCCL island with the double's failure ``knob`` set on ``bad_rank`` only."""
    import hetccl
    comm = hetccl.init()
    try:
        if rank == bad_rank:
            os.environ[knob] = value
        try:
            nccl.NcclBridge(comm._store, "island", rank, size, vendor=fakeccl.nccl_vendor(libdict), timeout=60)
        except (BridgeUnavailable, BridgeError) as e:
            return f"{type(e).__name__}: {e}"
        return "formed"
    finally:
        comm.close()


def test_fake_a_rank_without_device_fails_every_rank(libs):
    for msg in run_ranks(_form_with_knob_on_one_rank, 2, libs, 1, "FAKERT_DEVICES", "0", timeout=120,
                         env=fakeccl.env(libs)):
        assert msg.startswith("BridgeUnavailable: fakeccl island of 2 ranks cannot form: ")
        assert "island rank 1: no CUDA device" in msg and "island rank 0" not in msg


def test_fake_unique_id_failure_on_rank0_fails_every_rank_at_once(libs):
    r0, r1 = run_ranks(_form_with_knob_on_one_rank, 2, libs, 0, "FAKECCL_FAIL", "GetUniqueId", timeout=60,
                       env=fakeccl.env(libs))
    assert r0.startswith("BridgeError: fakeccl: fakecclGetUniqueId failed with error 2")
    assert r1.startswith("BridgeError: fakeccl: island rank 0 could not create the communicator's id: ")
    assert "injected failure in GetUniqueId" in r0 and "injected failure in GetUniqueId" in r1


# ------------------------------------------------------------------------------------------------
# GPU machines only: the real NCCL through the bridge (docs/bridges.md)
# ------------------------------------------------------------------------------------------------
def _gpu_devices() -> int:
    try:
        rt = loader.load_runtime(nccl.CUDART)
        loader.load_library(nccl.NCCL)
    except BridgeUnavailable:
        return 0
    return loader.device_status(nccl.NCCL, rt)[0]


def _gpu_allreduce_rank(rank, size):
    import torch

    import hetccl
    comm = hetccl.init()
    try:
        torch.cuda.set_device(rank)
        b = nccl.NcclBridge(comm._store, "gpu-island", rank, size, device=rank)
        out = []
        for code, tdt in ((dt.FLOAT32, torch.float32), (dt.BFLOAT16, torch.bfloat16), (dt.INT64, torch.int64)):
            n = (1 << 20) + 3
            x = (torch.arange(n, device="cuda", dtype=torch.float64) % 7 + rank + 1).to(tdt)
            y = torch.empty_like(x)
            b.allreduce(x, y, n, code, ReduceOp.SUM)
            g = torch.empty(n * size, dtype=tdt, device="cuda")
            b.allgather(x, g, n, code)
            out.append((y.cpu().to(torch.float64).numpy(), g.cpu().to(torch.float64).numpy()))
        b.close()
        return out
    finally:
        comm.close()


@pytest.mark.skipif(_gpu_devices() < 1, reason="hardware: needs a CUDA device (and torch with CUDA)")
def test_gpu_one_rank_every_call_through_nccl_on_cuda_tensors():
    """One GPU: the real NCCL bridge on torch CUDA tensors, every call, and staging."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("hardware: torch has no CUDA")
    b = nccl.NcclBridge(MemStore(), "gpu1", 0, 1, device=0)
    try:
        n = (1 << 20) + 3
        x = (torch.arange(n, device="cuda", dtype=torch.float64) % 7).to(torch.float32)
        y = torch.empty_like(x)
        for coll in ("allreduce", "reduce_scatter", "reduce"):
            y.zero_()
            if coll == "reduce":
                b.reduce(x, y, n, dt.FLOAT32, ReduceOp.SUM, 0)
            else:
                getattr(b, coll)(x, y, n, dt.FLOAT32, ReduceOp.SUM)
            assert torch.equal(y, x), coll
        g = torch.empty_like(x)
        b.allgather(x, g, n, dt.FLOAT32)
        b.broadcast(g, n, dt.FLOAT32, 0)
        assert torch.equal(g, x)
        host = np.arange(1000, dtype=np.float32)
        dev = b.device_buffer(host.nbytes)
        b.copy_in(dev, host)
        back = np.zeros_like(host)
        b.copy_out(back, dev)
        np.testing.assert_array_equal(back, host)
        b.release_buffer(dev)
        assert b.nonblocking                                   # NCCL >= 2.14 joins with a deadline
    finally:
        b.close()
    assert b.live_allocations() == 0


@pytest.mark.skipif(_gpu_devices() < 2, reason="hardware: needs 2 CUDA devices (and torch with CUDA)")
def test_gpu_two_ranks_allreduce_through_nccl():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("hardware: torch has no CUDA")
    res = run_ranks(_gpu_allreduce_rank, 2, timeout=300)
    n = (1 << 20) + 3
    base = np.arange(n, dtype=np.float64) % 7
    for r in range(2):
        for y, g in res[r]:
            np.testing.assert_array_equal(y, (base + 1) + (base + 2))
            np.testing.assert_array_equal(g, np.concatenate([base + 1, base + 2]))



# ------------------------------------------------------------------------------------------------
# Every family against its double: the same checks
# ------------------------------------------------------------------------------------------------
FAMILIES = sorted(fakeccl.VENDORS)


def _bridge(libs, family, store=None, size=1, **kw):
    return native.NativeBridge(fakeccl.vendor_of(family, libs), store or MemStore(), "t", 0, size, **kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_single_rank_every_call(libs, family):
    b = _bridge(libs, family)
    try:
        np.testing.assert_array_equal(_roundtrip(b), np.arange(6, dtype=np.float32))
        assert b.supports("allreduce", dt.FLOAT32, ReduceOp.SUM) and b.supports("broadcast", dt.INT16)
        assert not b.supports("allreduce", dt.INT32, ReduceOp.BXOR)      # no family has bitwise ops
        assert b.async_error() == 0 and b.kind.startswith("fake")
    finally:
        b.close()
    with pytest.raises(InvalidUsage, match="closed or aborted"):
        _roundtrip(b)


def test_family_tables_use_each_headers_values():
    t, byte = fakeccl.bkcl_vendor({"fakebkcl": "x", "fakert": "y"}).tables(-1)
    assert byte == 3 and t[("allreduce", dt.FLOAT32, ReduceOp.SUM)] == (9, 0)     # the double's values
    assert t[("reduce", dt.BOOL, ReduceOp.MAX)] == (3, 2)
    from hetccl.bridges import cncl
    t, byte = cncl.cncl_tables(12500)
    assert byte == cncl.cnclChar == 0x20 and t[("allreduce", dt.BFLOAT16, ReduceOp.MIN)] == (0x11, 3)
    assert ("allreduce", dt.FLOAT64, ReduceOp.SUM) not in t                      # cncl.h has no 64-bit float
    t, _ = nccl.eccl_tables(-1)
    assert t[("allreduce", dt.BFLOAT16, ReduceOp.SUM)] == (nccl.ncclBfloat16, nccl.ncclSum)
    assert ("allreduce", dt.FLOAT32, ReduceOp.AVG) not in t
    with pytest.raises(BridgeUnavailable, match="bkcl.h is not public"):
        bkcl.BKCL.tables(-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_stream_timeout_and_async_error_abort(libs, family, monkeypatch):
    b = _bridge(libs, family, timeout=0.3)
    x = np.ones(4, np.float32)
    monkeypatch.setenv("FAKERT_BUSY", "1")                   # the stream never completes
    monkeypatch.setenv("FAKECCL_WAIT", "1")                  # (xpu: the helper's xpu_wait gives up later)
    t0 = time.monotonic()
    with pytest.raises(HetcclTimeout, match="did not finish within 0.3 s.*aborted"):
        b.allreduce(_buf(x), _buf(x), 4, dt.FLOAT32, ReduceOp.SUM)
    assert time.monotonic() - t0 < 5
    with pytest.raises(InvalidUsage, match="closed or aborted"):
        b.allreduce(_buf(x), _buf(x), 4, dt.FLOAT32, ReduceOp.SUM)
    if family == "bkcl":                                     # BKCL has no asynchronous-error call
        return
    monkeypatch.delenv("FAKERT_BUSY")
    b = _bridge(libs, family)
    monkeypatch.setenv("FAKERT_BUSY", "1")
    code = {"cncl": 0x16}.get(family, 6)                     # CNCL_RET_ASYNC_ERROR, ncclRemoteError, ...
    monkeypatch.setenv("FAKECCL_ASYNC_ERROR", str(code))
    with pytest.raises(BridgeError, match=f"failed asynchronously with error {code}"):
        b.allgather(_buf(x), _buf(x), 4, dt.FLOAT32)
    assert b.async_error() == 0                              # aborted: nothing left to ask


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_without_a_device(libs, family, monkeypatch):
    monkeypatch.setenv("FAKERT_DEVICES", "0")
    word = {"nccl": "CUDA", "eccl": "CUDA", "hccl": "Ascend NPU", "cncl": "Cambricon MLU",
            "bkcl": "Kunlunxin XPU"}[family]
    with pytest.raises(BridgeUnavailable, match=f"no {word} device: "):
        _bridge(libs, family)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_join_deadline_names_the_rank_that_never_started(libs, family, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKECCL_DIR", str(tmp_path))
    monkeypatch.setenv("FAKECCL_WAIT", "2")                  # how long a blocking join's helper stays
    store = MemStore()
    store.set("t/can/1", b"ok")                              # the peer's agreement, then nothing
    t0 = time.monotonic()
    with pytest.raises(HetcclTimeout) as e:
        _bridge(libs, family, store, size=2, timeout=1.0)
    assert 1.0 <= time.monotonic() - t0 < 6
    msg = str(e.value)
    assert "(island rank 0 of 2) did not finish within 1 s" in msg and "island rank(s) [1] never started" in msg
    deadline = time.monotonic() + 10                         # the helper (or the abort) removes the join's file
    while os.listdir(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_library_error_carries_its_own_string(libs, family, monkeypatch):
    b = _bridge(libs, family)
    x = np.ones(4, np.float32)
    call = {"bkcl": "all_reduce"}.get(family, "AllReduce")
    monkeypatch.setenv("FAKECCL_FAIL", call)
    text = {"cncl": "system error", "bkcl": "bkcl error 2", "hccl": "internal error"}.get(family, "unhandled system error")
    try:
        with pytest.raises(BridgeError, match=f"{b.vendor.prefix}{call} failed with error .*{text}"):
            b.allreduce(_buf(x), _buf(x), 4, dt.FLOAT32, ReduceOp.SUM)
    finally:
        b.close()


def test_unconfirmed_bkcl_row_never_runs(libs):
    v = dataclasses.replace(fakeccl.bkcl_vendor(libs), unconfirmed=bkcl.UNCONFIRMED)
    with pytest.raises(BridgeUnavailable, match="ABI is not confirmed by a public source .*BKCLDataType"):
        native.NativeBridge(v, MemStore(), "t", 0, 1)
    lib = loader.probe(v, libs["fakebkcl"])
    assert not lib.usable and "not confirmed" in lib.reason
    assert loader.probe(fakeccl.bkcl_vendor(libs), libs["fakebkcl"]).usable


# ------------------------------------------------------------------------------------------------
# Two libraries of the same prefix in one process (Moore Threads' and MetaX's libmccl.so)
# ------------------------------------------------------------------------------------------------
def test_two_mccl_libraries_in_one_process_bind_their_own_symbols(libs):
    a = loader.load_library(fakeccl.mccl_vendor(libs, "mccl_musa"))
    b = loader.load_library(fakeccl.mccl_vendor(libs, "mccl_maca"))
    assert a.path != b.path and os.path.basename(a.path) == os.path.basename(b.path) == "libmccl.so"
    # each GetVersion calls the library's own exported mcclFakeBuiltVersion through the PLT
    assert (a.version(), b.version()) == (fakeccl.MCCL_VERSIONS["mccl_musa"], fakeccl.MCCL_VERSIONS["mccl_maca"])
    bridges = [native.NativeBridge(fakeccl.mccl_vendor(libs, w), MemStore(), "t", 0, 1)
               for w in ("mccl_musa", "mccl_maca")]
    try:
        assert [x.describe().split(" bridge")[0] for x in bridges] == ["mccl_musa 2.11.4", "mccl_maca 2.16.5"]
        for x in bridges:
            np.testing.assert_array_equal(_roundtrip(x), np.arange(6, dtype=np.float32))
    finally:
        for x in bridges:
            x.close()


INTERPOSE = r"""
import ctypes, sys
first = ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)       # what hetccl never does
second = ctypes.CDLL(sys.argv[2], mode=ctypes.RTLD_LOCAL)
v = ctypes.c_int()
second.mcclGetVersion(ctypes.byref(v))
print(v.value)
"""


def test_rtld_global_would_bind_one_mccl_to_the_others_symbols(libs):
    """The hazard RTLD_LOCAL avoids, shown in a child: with MetaX's library loaded globally,
    Moore Threads' library's own call resolves to MetaX's function."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", INTERPOSE, libs["mccl_maca"], libs["mccl_musa"]],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == fakeccl.MCCL_VERSIONS["mccl_maca"]          # not musa's own 21104
