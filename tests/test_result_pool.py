"""The allocating forms' results pool (latency.pyx, ``Hot.result``): a result is handed out again
only when nothing but the pool references it. A result the caller holds, or holds anything over
(a view, a memoryview, an array made by ``numpy.frombuffer``, a DLPack capsule, a torch tensor from
``torch.from_numpy``), must keep its values through any number of later calls; a dropped one is
reused (a loop of allocating calls allocates nothing); what comes out is what ``numpy.empty``
makes, whatever the caller did to the array before dropping it; results equal the ``out=`` form's;
and a dead or stalled peer raises from the allocating form as from any other."""
from __future__ import annotations

import numpy as np
import pytest

from tests.launcher import run_ranks


def _forms(comm, n, salt):
    """{name: (allocating call, out= call, output count)} of each allocating form, n elements per
    block, with inputs that differ by ``salt`` (so a result overwritten by a later call shows)."""
    size, rank = comm.size, comm.rank
    x = (np.arange(n) + 100 * rank + salt).astype(np.float32)
    xb = (np.arange(n * size) + 100 * rank + salt).astype(np.float32)
    return {
        "allgather": (lambda: comm.allgather(x), lambda o: comm.allgather(x, out=o), n * size),
        "reduce_scatter": (lambda: comm.reduce_scatter(xb), lambda o: comm.reduce_scatter(xb, out=o), n),
        "alltoall": (lambda: comm.alltoall(xb), lambda o: comm.alltoall(xb, out=o), n * size),
        "reduce": (lambda: comm.reduce(x, 0), lambda o: comm.reduce(x, 0, out=o), n),
        "gather": (lambda: comm.gather(x, 0), lambda o: comm.gather(x, 0, out=o), n * size),
    }


def _holders(r):
    """Ways a caller keeps a result's memory without keeping the array itself: (what, holder,
    read, values), read(holder) (None: numpy.array) giving the values seen through it, which are
    ``values`` now."""
    out = [("a view", r[1:], None, r[1:].copy()), ("a memoryview", memoryview(r), None, r.copy()),
           ("numpy.frombuffer", np.frombuffer(r, dtype=r.dtype), None, r.copy()),
           ("a DLPack capsule", r.__dlpack__(), lambda h: np.array(np.from_dlpack(_Capsule(h))), r.copy())]
    try:
        import torch
    except ImportError:
        return out
    return out + [("torch.from_numpy", torch.from_numpy(r), lambda h: h.numpy().copy(), r.copy())]


def _pool_case(rank, size):
    import hetccl
    comm = hetccl.init(timeout=60)
    hot = comm._hot
    fails = []

    def check(what, cond):
        if not cond:
            fails.append(what)

    try:
        n = 3
        for alloc, _, _ in _forms(comm, n, 0).values():
            for _ in range(3):                      # learn the shapes: later calls take the pool
                alloc()
        for name in _forms(comm, n, 0):
            mine = rank == 0 or name not in ("reduce", "gather")   # the others' result is None
            alloc, out_form, count = _forms(comm, n, 1)[name]
            want = out_form(np.empty(count, np.float32))
            want = want.copy() if mine else None
            got = alloc()
            check(f"{name}: equals the out= form ({got} vs {want})",
                  np.array_equal(got, want) if mine else got is None)
            addr = got.ctypes.data if mine else None
            del got
            again = alloc()                         # a dropped result is reused: nothing allocated
            check(f"{name}: a dropped result is reused", not mine or again.ctypes.data == addr)
            del again
            held = []                               # (what, holder, read, values when taken)
            for salt in range(2, 8):
                alloc = _forms(comm, n, salt)[name][0]
                r = alloc()
                if mine:
                    held.append(("the array", r, None, r.copy()))
                r = alloc()                         # this one is kept only through its holders
                if mine:
                    held += _holders(r)
                del r
            for salt in range(8, 16):               # later calls, every one with new values
                new = _forms(comm, n, salt)[name][0]()
                for what, h, read, values in held if mine else ():
                    if isinstance(h, np.ndarray):
                        check(f"{name}: a new result shares memory with one held through {what}",
                              not np.shares_memory(new, h))
            for what, h, read, values in held:
                seen = read(h) if read is not None else np.array(h)
                check(f"{name}: a result held through {what} changed ({seen} vs {values})",
                      np.array_equal(seen, values))
            del held
        # what the caller did to an array before dropping it does not come back
        x = np.arange(4, dtype=np.float32) + rank
        for _ in range(3):
            comm.allgather(x)
        for change in ("shape", "readonly", "dtype"):
            r = comm.allgather(x)
            addr = r.ctypes.data
            if change == "shape":
                r.shape = (size, 4)
            elif change == "readonly":
                r.setflags(write=False)
            else:
                r.dtype = np.int32
            del r
            got = comm.allgather(x)
            check(f"{change} changed before dropping: a plain result "
                  f"({got.shape}, {got.dtype}, {got.flags.writeable})",
                  got.shape == (4 * size,) and got.dtype == np.float32 and got.flags.writeable
                  and got.ctypes.data != addr
                  and np.array_equal(got, np.concatenate([np.arange(4) + r_ for r_ in range(size)])))
            del got
        # results over the pool's size limit are never pooled; the pool stays small
        big = np.ones(70_000 // 4 // size + 1, np.float32)
        for _ in range(4):
            got = comm.allgather(big)
            check("big result correct", got[0] == 1 and got.size == big.size * size)
        check("a big result is not pooled", all(a.nbytes <= 65536 for a in hot.pooled()))
        check(f"the pool holds at most 4 arrays ({len(hot.pooled())})", len(hot.pooled()) <= 4)
    finally:
        comm.close()
    return fails


class _Capsule:
    """A DLPack producer around an already made capsule (numpy.from_dlpack wants an object)."""

    def __init__(self, capsule):
        self.capsule = capsule

    def __dlpack__(self, **_):
        return self.capsule

    def __dlpack_device__(self):
        return (1, 0)


def test_held_results_are_never_reused_and_dropped_ones_are():
    results = run_ranks(_pool_case, 2, timeout=120)
    fails = [f"rank {r}: {f}" for r, fs in enumerate(results) for f in fs]
    assert not fails, "\n".join(fails)


def _peer_case(rank, size, what):
    """A peer that dies or stalls while this rank makes an allocating call of a learnt shape."""
    import os
    import time

    import hetccl
    comm = hetccl.init(timeout=30)
    x = np.ones(2, np.float32)
    for _ in range(5):
        comm.allgather(x)
    comm.barrier()
    if rank == 1:
        if what == "dies":
            time.sleep(0.3)
            os._exit(1)
        time.sleep(3.0)                            # not there within rank 0's timeout
        return None
    t0 = time.monotonic()
    try:
        comm.allgather(x, timeout=0.5 if what == "stalls" else None)
        err = None
    except hetccl.HetcclError as e:
        err = type(e).__name__
    return dict(err=err, took=time.monotonic() - t0, pooled=len(comm._hot.pooled()))


@pytest.mark.parametrize("what", ["dies", "stalls"])
def test_a_dead_or_stalled_peer_raises_from_the_allocating_form(what):
    res = run_ranks(_peer_case, 2, what, timeout=60, transports="shm",
                    victims=[1] if what == "dies" else ())[0]
    if what == "dies":
        assert res["err"] in ("PeerLostError", "CommAborted", "CommRevoked") and res["took"] < 5.0, res
    else:
        assert res["err"] == "HetcclTimeout" and 0.45 <= res["took"] < 3.0, res
    assert res["pooled"] >= 1, res                 # the calls before took the pool
