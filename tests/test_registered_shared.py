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
    """This process's open memfds of registered regions."""
    n = 0
    for f in os.listdir("/proc/self/fd"):
        try:
            n += "hetccl-reg-" in os.readlink(f"/proc/self/fd/{f}")
        except OSError:
            pass
    return n


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
    assert remap.owned_range(np.ones(1 << 20)) is None             # 8 MiB: mmapped or not by history
    assert remap.owned_range(_big(0)) is not None
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
        # the other collectives with a symmetric schedule take registered buffers too
        a, b = _big(0)[: 1 << 20], _big(0)[: 2 << 20]
        hs = [comm.register(a), comm.register(b)]
        a[:] = rank
        comm.allgather(a, b, algorithm="symmetric")
        assert (b[: 1 << 20] == 0).all() and (b[1 << 20:] == 1).all()
        b[:] = np.arange(b.size) % 7 if rank == 0 else -1
        comm.broadcast(b, root=0, algorithm="symmetric")
        assert (b == np.arange(b.size) % 7).all()
        b[:] = rank + 1
        comm.reduce_scatter(b, a, algorithm="symmetric")
        assert (a == 3).all()
        b[:] = np.repeat(np.arange(2) + 10 * rank, 1 << 20)
        o = _big(0)[: 2 << 20]
        comm.alltoall(b, out=o, algorithm="symmetric")
        assert (o.reshape(2, -1) == (10 * np.arange(2) + rank)[:, None]).all()
        out["others"] = comm.last_algorithm
        for h in hs:
            comm.deregister(h)
        # a small heap array: registered, not shared, plain path, correct
        s = np.full(1000, rank + 1.0, np.float32)
        hs = comm.register(s)
        assert not hs.shared
        comm.allreduce(s)
        assert (s == 3).all()
        out["small"] = comm.last_algorithm
        comm.deregister(hs)
        base = np.full(3 << 12, rank + 1.0, np.float32)     # a view into the middle of a heap array
        v = base[1 << 12: 2 << 12]                            # (48 KiB: below glibc's mmap threshold)
        hv = comm.register(v)
        comm.allreduce(v)
        assert (v == 3).all() and (base[:1 << 12] == rank + 1).all()
        out["view shared"] = hv.shared
        out["view"] = comm.last_algorithm
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
        assert r["small"] != "symmetric" and r["others"] == "symmetric"
        assert not r["view shared"] and r["view"] != "symmetric", r
        assert r["fds"] <= 0, r


def _outcome(call):
    import time

    import hetccl
    t0 = time.monotonic()
    try:
        call()
        return "no error"
    except hetccl.HetcclError as e:
        return f"{type(e).__name__} in {time.monotonic() - t0:.0f}s: {e}"


def _stale(rank, size):
    """Registered, deregistered (or just dropped), freed; a new array at the same address registered
    anew: a new region id, the peers' copies of the old ones unmapped, results exact."""
    import gc

    import hetccl
    comm = hetccl.init(timeout=60)
    try:
        ids, addrs = [], []
        for k in range(3):
            x = _big(0)
            x[:] = k + rank
            h = comm.register(x)
            assert h.shared
            ids.append(comm._sym.heap.regions[-1][0])
            addrs.append(x.ctypes.data)
            comm.allreduce(x, algorithm="symmetric")
            assert (x == 2 * k + 1).all(), (k, x[:4])
            if k == 0:
                comm.deregister(h)           # then freed; k == 1: only freed (the owner dies)
            del x, h
            gc.collect()
            assert comm._sym.heap.regions == []
        comm.barrier()
        y = _big(0)
        y[:] = 1
        comm.register(y)
        comm.allreduce(y, algorithm="symmetric")             # the peers apply the drops here
        assert (y == 2).all()
        peers = [i for _, i, _ in comm._sym.heap.peer_mappings]
        return {"ids": ids, "same address": len(set(addrs)) < len(addrs), "peer ids": peers,
                "mine": comm._sym.heap.regions[-1][0]}
    finally:
        comm.close(timeout=5.0)


def test_stale_registration_not_served():
    res = run_ranks(_stale, 2, timeout=60)
    for r in res:
        assert len(set(r["ids"] + [r["mine"]])) == 4                 # ids never reused
        assert r["peer ids"] == [r["mine"]], r                       # dropped ones unmapped


def _many(rank, size):
    """Ever new registered buffers (anonymous mmaps, shareable at any size) kept alive: the peers'
    mapping cache stays bounded; and every fd and mapping goes with the communicator."""
    import hetccl
    comm = hetccl.init(timeout=60)
    fds, maps = _fds(), _memfd_maps()
    keep = []
    for k in range(40):
        m = mmap.mmap(-1, 64 << 10)
        a = np.frombuffer(m, np.float32)
        a[:] = k
        keep.append((m, a, comm.register(a)))
        assert keep[-1][2].shared
        comm.allreduce(a, algorithm="symmetric")
        assert (a == 2 * k).all()
    cached = len(comm._sym.heap.peer_mappings)
    comm.close(timeout=5.0)
    for m, a, h in keep:
        assert not h.shared
    del m, a, h
    keep.clear()
    import gc
    gc.collect()
    return {"cached": cached, "fds": _fds() - fds, "maps": _memfd_maps() - maps}


def test_peer_cache_bounded_and_nothing_leaks():
    for r in run_ranks(_many, 2, timeout=60):
        assert 0 < r["cached"] <= 32 and r["fds"] <= 0 and r["maps"] <= 0, r


def _dies(rank, size, auto):
    """auto: the buffer is registered automatically (its second call), not by hand."""
    import os

    import hetccl
    comm = hetccl.init(timeout=60)
    x = _big(0)
    x[:] = 1
    if auto:
        for _ in range(2):
            comm.allreduce(x)
        assert comm._registry.lookup(x).shared
    else:
        assert comm.register(x).shared
    comm.allreduce(x, algorithm="symmetric")
    comm.barrier()
    if rank == 1:                      # killed while in a loop of registered calls
        import signal
        import threading
        threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()

    def loop():
        for _ in range(2000):
            comm.allreduce(x, timeout=20)
    try:
        return _outcome(loop)
    finally:
        comm.abort()


@pytest.mark.parametrize("auto", [False, True])
def test_peer_dies_during_registered_call(auto):
    res = run_ranks_faulty(_dies, 2, auto, timeout=60, victims=[1])
    assert res[0]["state"] == "ok" and res[0]["value"].startswith("PeerLostError"), res


def _rank0_registers(rank):
    """A communicator and a big array of ones, registered (shared) on rank 0 only."""
    import hetccl
    comm = hetccl.init(timeout=60)
    x = _big(0)
    x[:] = 1
    if rank == 0:
        assert comm.register(x).shared
    return comm, x


def _garbage(rank, size, how, algorithm):
    """Rank 1 publishes a registered region that is not what its descriptor says: a memfd of
    another name (a garbage id), or one too small for the buffer (a garbage offset/extent). Rank 0
    must raise a clean error, rank 1 too, nobody crashes or hangs."""
    import os
    comm, x = _rank0_registers(rank)
    if rank == 1:
        heap = comm._sym.heap
        rid = 1 << 22                                            # no region of this process
        fd = os.memfd_create("garbage" if how == "name" else f"hetccl-reg-{rid}", os.MFD_CLOEXEC)
        os.ftruncate(fd, 4096)
        heap.add_region(rid, fd, x.ctypes.data, x.nbytes)        # x itself stays private
        comm._sym.active = True
    try:
        return _outcome(lambda: comm.allreduce(x, algorithm=algorithm, timeout=20))
    finally:
        comm.abort()


@pytest.mark.parametrize("how,algorithm", [("name", "symmetric"), ("size", "symmetric"),
                                           ("size", None)])       # None: the tolerant entry
def test_garbage_registration_is_a_clean_error(how, algorithm):
    res = run_ranks_faulty(_garbage, 2, how, algorithm, timeout=60)
    assert all(r["state"] == "ok" for r in res), res
    r0 = res[0]["value"]
    assert r0.startswith("InvalidUsage") and "registered buffer" in r0, res
    assert res[1]["value"] != "no error", res


def _mixed(rank, size):
    """Registration is local: a rank whose buffer is shared and one whose buffer is not learn it
    in the call's first sync and all run it on the plain path: exact result, no error."""
    comm, x = _rank0_registers(rank)
    try:
        first = _outcome(lambda: comm.allreduce(x, timeout=20))
        return first, bool((x == 2).all()), comm.last_algorithm
    finally:
        comm.abort()


def test_registered_on_one_rank_only_falls_back():
    res = run_ranks_faulty(_mixed, 2, timeout=60)
    assert all(r["state"] == "ok" and r["value"][:2] == ("no error", True) for r in res), res
    assert all(r["value"][2] != "symmetric" for r in res), res


def _two_comms(rank, size):
    """The same buffer registered on two communicators: its pages move once (one memfd, whose
    region id both publish), so neither's peers are left on stale pages; dropping it on one keeps
    the other's."""
    import hetccl
    comm = hetccl.init(timeout=60)
    other = comm.dup()
    try:
        x = _big(0)
        x[:] = 1
        ha, hb = comm.register(x), other.register(x)
        assert ha.shared and hb.shared
        assert comm._sym.heap.regions[0][0] == other._sym.heap.regions[0][0]
        comm.allreduce(x, algorithm="symmetric")
        other.allreduce(x, algorithm="symmetric")
        assert (x == 4).all()
        comm.deregister(ha)
        other.allreduce(x, algorithm="symmetric")
        comm.allreduce(x)
        assert (x == 16).all() and comm.last_algorithm != "symmetric"
        return _fds()
    finally:
        other.close(timeout=5.0)
        comm.close(timeout=5.0)


def test_same_buffer_on_two_communicators():
    assert run_ranks(_two_comms, 2, timeout=60) == [2, 2]       # the region's and the dup's memfd


def _window(rank, size):
    import hetccl
    comm = hetccl.init(timeout=60)
    try:
        x = _big(0)
        x[:] = 1
        h = comm.register(x)
        comm.allreduce(x)
        assert (x == 2).all()
        return h.shared, h.populated, comm.last_algorithm
    finally:
        comm.close(timeout=5.0)


def test_window_mode_keeps_pages_private():
    """Without the ptrace permission (c2c window mode) peers could not open the memfd: register
    only pre-faults, and calls take the plain path."""
    for shared, populated, algo in run_ranks(_window, 2, timeout=60, env={"HETCCL_C2C_MODE": "window"}):
        assert not shared and populated and algo != "symmetric"
