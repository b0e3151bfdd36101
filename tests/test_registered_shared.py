"""comm.register moving a buffer's pages into shared memory (memory/remap.py, registration.py) and
the symmetric schedules running on registered buffers (_native/symmetric_heap.pyx, registered
regions). Multi-rank cases run through tests/launcher.py; each takes a few seconds."""
import mmap
import os

import numpy as np
import pytest

from tests.launcher import run_ranks, run_ranks_faulty

def _big(nbytes, dtype=np.float32):
    """A numpy array glibc serves as an mmapped chunk whatever its dynamic threshold (> 32 MiB)."""
    return np.empty(max(nbytes, (32 << 20) + 4096) // np.dtype(dtype).itemsize, dtype)


def _fds():
    return len(os.listdir("/proc/self/fd"))


def _memfd_maps():
    with open("/proc/self/maps") as f:
        return sum("hetccl-reg-" in line for line in f)


# ------------------------------------------------------------------ one process: the remap itself

def test_remap_keeps_address_and_contents():
    from hetccl.memory import remap
    a = _big(0)
    a[:] = np.arange(a.size, dtype=a.dtype)
    span = remap.owned_range(a)
    assert span is not None and span[0] <= a.ctypes.data < span[1]
    addr = a.ctypes.data
    fd = remap.share(*span, 1)
    try:
        assert a.ctypes.data == addr
        assert (a == np.arange(a.size, dtype=a.dtype)).all()
        a[-1] = 7.0
        assert a[-1] == 7.0 and _memfd_maps() >= 1
    finally:
        os.close(fd)
    del a                                          # glibc's free unmaps the shared range
    assert _memfd_maps() == 0


def test_safety_rule():
    from hetccl.memory import remap
    assert remap.owned_range(np.ones(10)) is None                  # heap chunk
    big = _big(0)
    assert remap.owned_range(big[10:]) is None                     # a view is not the owner
    assert remap.owned_range(np.frombuffer(bytearray(1 << 20), np.uint8)) is None
    m = mmap.mmap(-1, 1 << 20)
    lo, hi = remap.owned_range(m)
    assert hi - lo == 1 << 20
    with open(__file__, "rb") as f:                                # file mapping: never
        fm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        assert remap.owned_range(fm) is None
        fm.close()
    m.close()


# ------------------------------------------------------------------ two ranks

def _allreduce_registered(rank, size):
    import hetccl
    comm = hetccl.init(timeout=60)
    fds = _fds()
    try:
        out = {}
        for n in (64 << 20, 64 << 10):
            x, y = _big(n), _big(n)
            x = x[: n // 4] if n < (32 << 20) else x      # small: a view of a big owner, still shared
            y = y[: n // 4] if n < (32 << 20) else y
            x[:] = np.arange(x.size, dtype=np.float32) % 1000 + rank
            addr = x.ctypes.data
            hx, hy = comm.register(x), comm.register(y)
            assert hx.shared and hy.shared and x.ctypes.data == addr
            assert (x == np.arange(x.size, dtype=np.float32) % 1000 + rank).all()
            forced = None if n >= (32 << 20) else "symmetric"     # 64 KiB: the model keeps the FIFOs
            comm.allreduce(x, out=y, algorithm=forced)
            out[f"out {n}"] = comm.last_algorithm
            want = 2 * (np.arange(x.size, dtype=np.float32) % 1000) + 1
            assert (y == want).all(), (n, comm.last_algorithm)
            comm.allreduce(x, algorithm=forced)             # in place
            out[f"in {n}"] = comm.last_algorithm
            assert (x == want).all()
            comm.deregister(hx)
            comm.deregister(hy)
            assert not hx.shared
            comm.allreduce(x, out=y)                        # deregistered: the plain path again
            out[f"after {n}"] = comm.last_algorithm
            assert (y == 2 * want).all()
            del x, y
        # a small heap array: registered, not shared, plain path, correct
        s = np.full(1000, rank + 1.0, np.float32)
        hs = comm.register(s)
        assert not hs.shared
        comm.allreduce(s)
        assert (s == 3).all()
        out["small"] = comm.last_algorithm
        comm.deregister(hs)
        comm.barrier()
        out["peer maps"] = len(comm._sym.heap.peer_mappings)
        out["fds"] = _fds() - fds
        return out
    finally:
        comm.close(timeout=5.0)


def test_allreduce_registered_two_ranks():
    res = run_ranks(_allreduce_registered, 2, timeout=60)
    for r in res:
        for n in (64 << 20, 64 << 10):
            assert r[f"out {n}"] == r[f"in {n}"] == "symmetric"
            assert r[f"after {n}"] != "symmetric"
        assert r["small"] != "symmetric"
        assert r["fds"] <= 0, r
