"""Staging between host memory and a device bridge's memory (issue 7, part 3).

With the ABI doubles of tests/fakeccl (an NCCL-API library and a cudart/ACL runtime whose "device"
memory is tracked malloc memory), a communicator of a device island (fake NCCL, or fake HCCL once)
next to a hetccl island must give exact results against numpy with

(a) host numpy buffers on every rank (the island steps stage them into the bridge's memory), and
(b) device buffers on the device island's ranks: fake-runtime allocations behind
    ``__cuda_array_interface__`` and behind DLPack (device type CUDA), where the island steps run on
    that memory and only what crosses islands is staged through host memory;

and leave no fake allocation alive after close. A device buffer on a rank without a bridge for its
memory is refused with InvalidUsage. What a GPU host runs instead: test_gpu_staged_mixed_islands.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest

from hetccl import InvalidUsage, dtypes
from hetccl.bridges import formation
from hetccl.bridges import loader, nccl
from hetccl.bridges.base import BridgeUnavailable
from hetccl.bridges.device_buffers import _DLManagedTensor
from hetccl.ops import ReduceOp
from tests import fakeccl
from tests.launcher import run_ranks

MemStore = fakeccl.MemStore


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    return fakeccl.build_or_skip(tmp_path_factory)


# ------------------------------------------------------------------ fake device memory

class FakeDeviceArray:
    """A 1-D array in the fake runtime's "device" memory, exported by ``__cuda_array_interface__``
    (v3, stream None) like a cupy/torch CUDA array, and by DLPack with device type CUDA (2)."""

    _DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda p: None)   # memory is ours to free

    def __init__(self, rt, host: np.ndarray):
        self.rt, self.dtype, self.n = rt, host.dtype, host.size
        self.ptr = ctypes.c_void_p()
        assert rt.fakertMalloc(ctypes.byref(self.ptr), ctypes.c_size_t(max(1, host.nbytes))) == 0
        ctypes.memmove(self.ptr.value, host.ctypes.data, host.nbytes)
        self._shape = (ctypes.c_int64 * 1)(self.n)

    @property
    def __cuda_array_interface__(self):
        return {"shape": (self.n,), "typestr": self.dtype.str, "data": (self.ptr.value, False),
                "version": 3, "strides": None, "stream": None}

    def numpy(self) -> np.ndarray:
        out = np.empty(self.n, self.dtype)
        ctypes.memmove(out.ctypes.data, self.ptr.value, out.nbytes)
        return out

    def free(self):
        if self.ptr.value:
            assert self.rt.fakertFree(self.ptr) == 0
            self.ptr = ctypes.c_void_p()


class FakeDLPackArray:
    """The same memory through DLPack only (an unversioned "dltensor" capsule)."""

    def __init__(self, dev: FakeDeviceArray):
        from hetccl.bridges.device_buffers import _DL_DTYPES
        self.dev = dev
        code = dtypes.from_numpy(dev.dtype)
        self._dl = next(k for k, v in _DL_DTYPES.items() if v == code)

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None, max_version=None):
        m = _DLManagedTensor()
        m.dl_tensor.data = self.dev.ptr.value
        m.dl_tensor.device.device_type, m.dl_tensor.device.device_id = 2, 0
        m.dl_tensor.ndim = 1
        m.dl_tensor.dtype.code, m.dl_tensor.dtype.bits, m.dl_tensor.dtype.lanes = self._dl[0], self._dl[1], 1
        m.dl_tensor.shape = ctypes.cast(self.dev._shape, ctypes.POINTER(ctypes.c_int64))
        m.deleter = FakeDeviceArray._DELETER
        self._keep = m                                   # the struct outlives the capsule
        new = ctypes.pythonapi.PyCapsule_New
        new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        return new(ctypes.addressof(m), b"dltensor", None)


def _fakert(libs_or_dir):
    d = libs_or_dir if isinstance(libs_or_dir, str) else os.path.dirname(libs_or_dir["fakert"])
    rt = ctypes.CDLL(os.path.join(d, "libfakert.so"))          # the same handle the bridge dlopens
    rt.fakertLiveAllocations.restype = ctypes.c_long
    rt.fakertFree.argtypes = [ctypes.c_void_p]
    return rt


# ------------------------------------------------------------------ runtime and bridge (one process)

def test_runtime_allocator_both_styles(libs):
    from hetccl._native.ccl_api import DeviceRuntime
    from hetccl.bridges.vendor import Runtime
    rt = _fakert(libs)
    base = rt.fakertLiveAllocations()
    for style, prefix in (("cuda", "fakert"), ("acl", "fakeacl")):
        r = DeviceRuntime(libs["fakert"], style, Runtime((libs["fakert"],), prefix, style=style).symbols())
        assert r.has_allocator and r.has_pinned
        rc, p = r.malloc(1000)
        assert rc == 0 and p and rt.fakertLiveAllocations() == base + 1
        src = np.arange(250, dtype=np.int32)
        back = np.zeros_like(src)
        assert r.memcpy(p, src.ctypes.data, src.nbytes, 1) == 0 and r.memcpy(back.ctypes.data, p, src.nbytes, 2) == 0
        assert np.array_equal(back, src)
        rc, h = r.host_alloc(64)
        assert rc == 0 and h and r.free_host(h) == 0 and r.free(p) == 0
        assert rt.fakertLiveAllocations() == base
        assert r.free(p) != 0                     # a pointer freed twice is refused, as by cudaFree
    acl = DeviceRuntime(libs["fakert"], "acl", Runtime((libs["fakert"],), "fakeacl", style="acl").symbols())
    assert acl.malloc(0)[0] != 0                  # aclrtMalloc refuses size 0


def test_bridge_staging_pool_reuses_and_frees_on_close(libs, monkeypatch):
    rt = _fakert(libs)
    base = rt.fakertLiveAllocations()
    b = nccl.NcclBridge(MemStore(), "t", 0, 1, vendor=fakeccl.nccl_vendor(libs, memory_dl=(2,)))
    a = b.device_buffer(10)
    assert a.nbytes == 4096 and a.device_type == 2 and b.live_allocations() == 1
    c = b.device_buffer(5000)                     # another size class: a second allocation
    assert c.nbytes == 8192 and b.live_allocations() == 2
    b.release_buffer(a)
    assert b.device_buffer(3000).ptr == a.ptr and b.live_allocations() == 2   # reused, not allocated
    x = np.arange(1000, dtype=np.float64)
    b.copy_in(c, x)
    y = np.zeros_like(x)
    b.copy_out(y, c)
    assert np.array_equal(x, y)
    h = b.host_buffer(100)                        # pinned (the fake runtime has HostAlloc)
    assert h.nbytes == 4096 and b.live_allocations() == 3
    # host numpy buffers through the bridge, staged like collectives/islands.Staging does
    from hetccl.collectives.islands import Staging
    st = Staging(b)
    s, r = np.arange(7, dtype=np.int32), np.zeros(7, np.int32)
    for _ in range(5):                            # a steady shape allocates nothing more
        st.run(b.allreduce, s, r, 7, dtypes.INT32, ReduceOp.SUM)
    assert np.array_equal(r, s) and b.live_allocations() == 5      # + send and recv
    st.release()
    b.close()
    assert b.live_allocations() == 0 and rt.fakertLiveAllocations() == base
    monkeypatch.setenv("FAKERT_NO_PINNED", "1")   # no pinned memory: pageable staging, same results
    b = nccl.NcclBridge(MemStore(), "t2", 0, 1, vendor=fakeccl.nccl_vendor(libs, memory_dl=(2,)))
    assert isinstance(b.host_buffer(10), np.ndarray) and b.live_allocations() == 0
    b.close()


def test_stageable_now_includes_the_native_bridges():
    """The NCCL family and HCCL have the staging methods, so automatic choice may pick them."""
    assert formation.stageable("nccl") and formation.stageable("hccl") and formation.stageable("rccl")


def test_real_nccl_still_says_no_cuda_device():
    try:
        loader.load_library(nccl.NCCL)
        loader.load_runtime(nccl.CUDART)
    except BridgeUnavailable as e:
        pytest.skip(f"no NCCL wheel/runtime here: {e}")
    with pytest.raises(BridgeUnavailable, match="no CUDA device"):
        nccl.NcclBridge(MemStore(), "t", 0, 1)


# ------------------------------------------------------------------ mixed communicators (run_ranks)

def _open_fake_nccl(ctx):
    """Opener: the fake NCCL-API island on "CUDA" memory (DLPack device type 2)."""
    d = os.environ["FAKECCL_DIR"]
    libs = {"fakeccl": os.path.join(d, "libfakeccl.so"), "fakert": os.path.join(d, "libfakert.so")}
    return nccl.NcclBridge(ctx.store, ctx.key_prefix, ctx.index, len(ctx.island.ranks),
                           vendor=fakeccl.nccl_vendor(libs, memory_dl=(2,)), timeout=ctx.timeout)


def _open_fake_hccl(ctx):
    from hetccl.bridges import hccl
    d = os.environ["FAKECCL_DIR"]
    libs = {"fakehccl": os.path.join(d, "libfakehccl.so"), "fakert": os.path.join(d, "libfakert.so")}
    return hccl.HcclBridge(ctx.store, ctx.key_prefix, ctx.index, len(ctx.island.ranks),
                           vendor=fakeccl.hccl_vendor(libs, memory_dl=(2,)), timeout=ctx.timeout)


OPENERS = {"fakeccl": "tests.test_bridge_staging:_open_fake_nccl",
           "fakehccl": "tests.test_bridge_staging:_open_fake_hccl"}
DTYPES = ("int32", "float32", "float64", "bfloat16", "int8")
SIZES = (1, 7, 1001, 4099)


class DeviceChecker:
    """tests/islands_worker.Checker's checks with device buffers on the device island's ranks."""

    def __init__(self, comm, rt, on_device: bool, dlpack: bool = False):
        from tests.islands_worker import Checker
        self.comm, self.rt, self.on_device, self.dlpack = comm, rt, on_device, dlpack
        self.host = Checker(comm)
        self.n = 0

    def _wrap(self, a):
        if not self.on_device:
            return a, a
        d = FakeDeviceArray(self.rt, a)
        return d, (FakeDLPackArray(d) if self.dlpack else d)

    def _back(self, d, a):
        if self.on_device:
            out = d.numpy()
            d.free()
            return out
        return a

    def allreduce(self, name, op, n, in_place=True, form=None):
        from tests.islands_worker import data, expected
        c = self.comm
        x = data(name, op, n, c.rank)
        dx, ex = self._wrap(x)
        dy, ey = self._wrap(np.zeros_like(x)) if not in_place else (dx, ex)
        if form is not None and self.on_device:
            from hetccl.bridges.device_buffers import as_device_buffer
            b = as_device_buffer(dx)
            c._islands.staged().allreduce(b, b if in_place else as_device_buffer(dy), b.dtype, op, 60.0, form)
        elif form is not None:
            c._islands.allreduce(x, x if in_place else dy, dtypes.from_numpy(x.dtype), op, 60.0, None, form)
        else:
            c.allreduce(ex, op, out=None if in_place else ey)
        got = self._back(dy, dy if not in_place else x)
        if not in_place and self.on_device:
            dx.free()
        self.host.same(got, expected(name, op, n, c.size),
                       f"device allreduce {name} {op.name} n={n} in_place={in_place} form={form} "
                       f"device={self.on_device} dlpack={self.dlpack}")
        self.n += 1

    def allgather(self, name, n, in_place=False):
        from tests.islands_worker import np_dtype
        c = self.comm
        blocks = [np.arange(n).astype(np_dtype(name)) + r for r in range(c.size)]
        want = np.concatenate(blocks)
        out = np.zeros(c.size * n, np_dtype(name))
        if in_place:
            out[c.rank * n:(c.rank + 1) * n] = blocks[c.rank]
        do, eo = self._wrap(out)
        if in_place:
            c.allgather(eo, out=eo)
        else:
            ds, es = self._wrap(blocks[c.rank].copy())
            c.allgather(es, out=eo)
            self._back(ds, None)
        self.host.same(self._back(do, out), want, f"device allgather {name} n={n} in_place={in_place}")
        self.n += 1

    def broadcast(self, name, n, root):
        from tests.islands_worker import np_dtype
        c = self.comm
        want = (np.arange(n) % 7).astype(np_dtype(name))
        x = want.copy() if c.rank == root else np.zeros(n, np_dtype(name))
        dx, ex = self._wrap(x)
        c.broadcast(ex, root=root)
        self.host.same(self._back(dx, x), want, f"device broadcast {name} n={n} root={root}")
        self.n += 1


def _matrix(chk, forms, dtypes_=DTYPES, sizes=SIZES):
    from tests.islands_worker import BOOL_OPS, FLOAT_OPS, FLOATS, INT_OPS
    for name in dtypes_:
        ops = BOOL_OPS if name == "bool" else FLOAT_OPS if name in FLOATS else INT_OPS
        for op in ops:
            for n in sizes:
                chk.allreduce(name, op, n)
            for form in forms:
                chk.allreduce(name, op, 1001, form=form)
            chk.allreduce(name, op, 1001, in_place=False)
    for name in ("int32", "bfloat16", "float64"):
        for n in (1, 5, 1001):
            chk.allgather(name, n)
            chk.allgather(name, n, in_place=True)
    for root in range(chk.comm.size):
        for n in (1, 1001):
            chk.broadcast("float32", n, root)


def _mixed_rank(rank, size, kind, device_ranks, forms, full, dev_dtypes=("float32", "int32")):
    import hetccl
    from tests.islands_worker import Checker
    for k, opener in OPENERS.items():
        formation.register(k, opener)
    rt = _fakert(os.environ["FAKECCL_DIR"])
    base = rt.fakertLiveAllocations()
    comm = hetccl.init(timeout=120, bridges={r: kind for r in device_ranks})
    islands = [(i.kind, i.ranks) for i in comm._islands.islands]
    mine = comm.rank in device_ranks
    n = 0
    if full:                                   # (a) host numpy buffers everywhere
        hchk = Checker(comm)
        _matrix(hchk, forms)
        n += hchk.n
    for dl in (False, True):                   # (b) device buffers: CUDA array interface, then DLPack
        dchk = DeviceChecker(comm, rt, mine, dlpack=dl)
        _matrix(dchk, forms if not dl else (), DTYPES if full and not dl else dev_dtypes)
        n += dchk.n
    # non-blocking calls queue the device path on the progress thread like host calls
    from tests.islands_worker import data
    x = data("float32", ReduceOp.SUM, 1001, comm.rank)
    d = FakeDeviceArray(rt, x) if mine else None
    w = comm.allreduce(d if mine else x, async_op=True)
    w.wait()
    want = sum(data("float32", ReduceOp.SUM, 1001, r) for r in range(comm.size))
    assert np.array_equal(d.numpy() if mine else x, want)
    if not mine:                               # a host-island rank is told where device buffers go
        bad = FakeDeviceArray(rt, x)
        with pytest.raises(InvalidUsage, match=rf"device buffer on rank {comm.rank}, whose island is 'hetccl'"):
            comm.allreduce(bad)
        bad.free()
    else:
        d.free()
    n += 1
    bridge = comm._islands.bridge
    held = bridge.live_allocations() if bridge is not None else 0
    comm.close()
    return islands, n, held, rt.fakertLiveAllocations() - base


def _check_mixed(results, kind, device_ranks, others):
    for islands, n, held, leaked in results:
        assert islands == [(kind, tuple(device_ranks)), ("hetccl", tuple(others))], islands
        assert n > 100 and leaked == 0
    assert all(r[2] > 0 for r in results[:len(device_ranks)])      # the pool was used ...
    # ... and bounded: a handful of size classes, not one allocation per call
    assert all(r[2] < 40 for r in results)


def test_fake_nccl_island_next_to_hetccl_host_and_device_buffers(libs):
    """2 fake-NCCL + 2 hetccl ranks: both composed forms, every op, several dtypes and sizes."""
    res = run_ranks(_mixed_rank, 4, "fakeccl", (0, 1), ("rails", "leaders"), True, timeout=900,
                    env=fakeccl.env(libs))
    _check_mixed(res, "fakeccl", (0, 1), (2, 3))


def test_fake_nccl_two_plus_one_device_buffers(libs):
    """Unequal islands (leaders form), device buffers only."""
    res = run_ranks(_mixed_rank, 3, "fakeccl", (0, 1), (), False, ("float32", "int64", "float16"), timeout=600,
                    env=fakeccl.env(libs))
    _check_mixed(res, "fakeccl", (0, 1), (2,))


def test_fake_hccl_island_next_to_hetccl(libs):
    """The HCCL family once (ACL-style runtime, aclrtMalloc with its policy; int64/float64 have no
    HCCL reduction, so those steps go through the host path)."""
    res = run_ranks(_mixed_rank, 3, "fakehccl", (0, 1), (), False, ("float32", "float64", "int8"), timeout=600,
                    env=fakeccl.env(libs))
    _check_mixed(res, "fakehccl", (0, 1), (2,))


def _refused_rank(rank, size, libdir):
    import hetccl
    rt = _fakert(libdir)
    comm = hetccl.init(timeout=60)
    d = FakeDeviceArray(rt, np.ones(4, np.float32))
    msgs = []
    for call in (lambda: comm.allreduce(d), lambda: comm.broadcast(FakeDLPackArray(d)),
                 lambda: comm.allgather(d, out=d)):
        try:
            call()
        except InvalidUsage as e:
            msgs.append(str(e))
    d.free()
    comm.close()
    return msgs


def test_device_buffer_without_a_device_island_is_refused(libs):
    for msgs in run_ranks(_refused_rank, 2, os.path.dirname(libs["fakert"]), timeout=120):
        assert len(msgs) == 3
        assert all(m.startswith("device buffer on a communicator without a CUDA island") for m in msgs)
        assert "pass a numpy array on this rank" in msgs[0]


# ------------------------------------------------------------------ a GPU host

def _gpu_devices() -> int:
    try:
        rt = loader.load_runtime(nccl.CUDART)
        loader.load_library(nccl.NCCL)
    except BridgeUnavailable:
        return 0
    return loader.device_status(nccl.NCCL, rt)[0]


def _gpu_rank(rank, size):
    import torch

    import hetccl
    torch.cuda.set_device(rank % 2)
    comm = hetccl.init(timeout=300, bridges={0: "nccl", 1: "nccl", 2: "none", 3: "none"})
    n = (1 << 20) + 3
    if rank < 2:
        x = torch.full((n,), float(rank + 1), device="cuda")
    else:
        x = np.full(n, float(rank + 1), np.float32)
    comm.allreduce(x)
    out = x.cpu().numpy() if rank < 2 else x
    g = torch.empty(n * size, device="cuda") if rank < 2 else np.empty(n * size, np.float32)
    comm.allgather(torch.full((n,), float(rank), device="cuda") if rank < 2 else np.full(n, float(rank), np.float32),
                   out=g)
    g = g.cpu().numpy() if rank < 2 else g
    comm.close()
    return out, g


@pytest.mark.skipif(_gpu_devices() < 2, reason="hardware: needs 2 CUDA devices (and torch with CUDA)")
def test_gpu_staged_mixed_islands():
    """2 ranks on NCCL with torch CUDA tensors + 2 hetccl ranks with numpy: the staged path."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("hardware: torch has no CUDA")
    n = (1 << 20) + 3
    for out, g in run_ranks(_gpu_rank, 4, timeout=600):
        np.testing.assert_array_equal(out, np.full(n, 10.0, np.float32))
        np.testing.assert_array_equal(g, np.repeat(np.arange(4, dtype=np.float32), n))
