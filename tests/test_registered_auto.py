"""Automatic registration (memory/registration.py ``Registry.auto``): a plain buffer of 32 MiB or
more passed to a collective again is registered (its pages shared) and the call runs the symmetric
schedules; ranks that disagree fall back to the plain path together (the tolerant symmetric entry,
_native/symmetric_heap.pyx); a forked child gets private pages (memory/remap.py ``_privatize``).
A peer dying in an automatically registered call: test_registered_shared.py (``_dies``).
Multi-rank cases run through tests/launcher.py; each takes a few seconds."""
import gc
import os

import numpy as np

from tests.launcher import run_ranks

N = ((32 << 20) + (8 << 10)) // 4            # float32 elements: a glibc mmapped chunk, even blocks


def _big(n=N, dtype=np.float32):
    return np.empty(n, dtype)


def _calls(comm, fn, n):
    """Run fn() n times; the algorithm of each call."""
    out = []
    for _ in range(n):
        fn()
        out.append(comm.last_algorithm)
    return out


def _reuse(rank, size):
    """Every collective with a symmetric schedule on plain buffers, called three times: the first
    call plain, later ones symmetric where the model prices it faster; results exact, including a
    dtype view of the same memory and contents changed between calls. A new buffer every call
    (x.copy()) is never registered; a freed owner's entry goes; small calls keep the latency path."""
    import hetccl
    comm = hetccl.init(timeout=60)
    try:
        out = {}
        fast = {c: comm._sym.faster(c, N * 4) for c in ("allreduce", "allgather", "reduce_scatter",
                                                          "broadcast", "alltoall")}
        x = _big()
        k = [0]

        def inplace():
            k[0] += 1
            x[:] = rank + k[0]                    # contents change between calls
            comm.allreduce(x)
            assert (x == 1 + 2 * k[0]).all(), (k, x[:4])
        out["allreduce in"] = _calls(comm, inplace, 3)
        assert comm._registry.auto_bytes == (x.nbytes if fast["allreduce"] else 0)
        v = x.view(np.int32)                      # another view of the same memory: same entry
        v[:] = rank + 1
        comm.allreduce(v)
        assert (v == 3).all()
        out["view"] = comm.last_algorithm
        y = _big()

        def outofplace():
            x[:] = np.arange(N, dtype=np.float32) % 100 + rank
            comm.allreduce(x, out=y)
            assert (y == 2 * (np.arange(N, dtype=np.float32) % 100) + 1).all()
        out["allreduce out"] = _calls(comm, outofplace, 3)
        half = _big(N // 2)
        g = _big()                                # each collective's needed buffer: new here

        def allgather():
            half[:] = rank + 1
            comm.allgather(half, out=g)
            assert (g[: N // 2] == 1).all() and (g[N // 2:] == 2).all()
        out["allgather"] = _calls(comm, allgather, 3)
        rs = _big()

        def reduce_scatter():
            rs[:] = rank + 1
            comm.reduce_scatter(rs, out=half)
            assert (half == 3).all()
        out["reduce_scatter"] = _calls(comm, reduce_scatter, 3)
        bc = _big()

        def broadcast():
            bc[:] = np.arange(N, dtype=np.float32) % 7 if rank == 1 else -1
            comm.broadcast(bc, root=1)
            assert (bc == np.arange(N, dtype=np.float32) % 7).all()
        out["broadcast"] = _calls(comm, broadcast, 3)
        a2, z = _big(), _big()

        def alltoall():
            a2[:] = np.repeat(np.arange(2, dtype=np.float32) + 10 * rank, N // 2)
            comm.alltoall(a2, out=z)
            assert (z.reshape(2, -1) == (10 * np.arange(2) + rank)[:, None]).all()
        out["alltoall"] = _calls(comm, alltoall, 3)

        base = _big()
        base[:] = 1
        keys = len(comm._registry._by_key)

        def fresh():
            b = base.copy()                       # a new owner every call (maybe the same address)
            comm.allreduce(b)
            assert (b == 2).all()
        out["fresh"] = _calls(comm, fresh, 4)
        out["fresh keys"] = len(comm._registry._by_key) - keys

        routed = []
        route = comm._route
        comm._route = lambda c: routed.append(c.nbytes) or route(c)
        s = np.ones(2, np.float32)
        for _ in range(5):
            comm.allreduce(s)
        out["small routed"] = routed
        comm._route = route

        regions = len(comm._sym.heap.regions)
        del x, v, y, z, half, g, rs, bc, a2
        gc.collect()
        out["regions before"] = regions
        out["regions after"] = len(comm._sym.heap.regions)
        out["auto bytes"] = comm._registry.auto_bytes
        out["fast"] = fast
        return out
    finally:
        comm.close(timeout=5.0)


def test_auto_registration_on_reuse():
    for r in run_ranks(_reuse, 2, timeout=90):
        fast = r["fast"]
        for coll in ("allreduce in", "allreduce out", "allgather", "reduce_scatter", "broadcast",
                     "alltoall"):
            algos = r[coll]
            assert algos[0] != "symmetric", (coll, r)        # first sighting: plain
            want = "symmetric" if fast[coll.split()[0]] else algos[0]
            assert algos[1:] == [want, want], (coll, r)
        assert r["view"] == ("symmetric" if fast["allreduce"] else r["allreduce in"][0]), r
        assert "symmetric" not in r["fresh"] and r["fresh keys"] == 0, r
        assert len(r["small routed"]) == 1, r                 # then the latency path takes them
        assert r["regions before"] > 0 and r["regions after"] == 0 and r["auto bytes"] == 0, r


def _disagree(rank, size):
    """Ranks decide alone: rank 0 reuses its buffer, rank 1 passes a new one each call (never
    registered) -> every call falls back to the plain path, results exact; then both reuse, but
    rank 1 starts a call later -> plain until both are registered, then symmetric. An explicit
    registration on one rank only falls back too."""
    import hetccl
    comm = hetccl.init(timeout=60)
    try:
        out = {}
        x = _big()

        def mixed():
            b = x if rank == 0 else x.copy()
            b[:] = rank + 1
            comm.allreduce(b)
            assert (b == 3).all()
        out["mixed"] = _calls(comm, mixed, 3)
        y = _big()

        def late():
            b = y if rank == 0 or late.n else _big()
            late.n += 1
            b[:] = rank + 1
            comm.allreduce(b)
            assert (b == 3).all()
        late.n = 0
        out["late"] = _calls(comm, late, 4)
        z = _big()
        if rank == 0:
            assert comm.register(z).shared
        z[:] = rank + 1
        comm.allreduce(z)
        assert (z == 3).all()
        out["one explicit"] = comm.last_algorithm
        w = _big()

        def nonblocking():                        # through the progress thread
            w[:] = rank + 1
            comm.allreduce(w, async_op=True).wait()
            assert (w == 3).all()
        out["async"] = _calls(comm, nonblocking, 3)
        out["fast"] = comm._sym.faster("allreduce", N * 4)
        return out
    finally:
        comm.close(timeout=5.0)


def test_ranks_disagreeing_fall_back():
    res = run_ranks(_disagree, 2, timeout=90)
    for r in res:
        assert "symmetric" not in r["mixed"], r
        # rank 0: sighted at call 1, registered at 2; rank 1: sighted at 2, registered at 3
        want = "symmetric" if r["fast"] else r["late"][0]
        assert r["late"][:2] == [r["late"][0]] * 2 and r["late"][0] != "symmetric", r
        assert r["late"][2:] == [want, want], r
        assert r["one explicit"] != "symmetric", r
        assert r["async"][1:] == [want, want] and r["async"][0] != "symmetric", r


def _cap(rank, size):
    """A cap below two buffers: registering the second drops the first (least recently used), whose
    region goes at the peer; the dropped one is not registered again (no copy per call)."""
    import hetccl
    comm = hetccl.init(timeout=60)
    try:
        if not comm._sym.faster("allreduce", N * 4):
            return None
        reg = comm._registry
        reg.auto_cap = 3 * N * 4 // 2
        a, b = _big(), _big()
        a[:] = b[:] = 1
        seq = []
        for buf in (a, a, b, b, a, a, a):
            comm.allreduce(buf)
            seq.append(comm.last_algorithm == "symmetric")
        assert (a == 2 ** 5).all() and (b == 4).all()
        return {"seq": seq, "bytes": reg.auto_bytes, "regions": len(comm._sym.heap.regions),
                "a": reg.lookup(a) is not None, "b": reg.lookup(b) is not None}
    finally:
        comm.close(timeout=5.0)


def test_auto_cap_drops_least_recently_used():
    for r in run_ranks(_cap, 2, timeout=90):
        if r is None:
            continue                      # the model keeps this shape on the FIFOs here
        assert r["seq"] == [False, True, False, True, False, False, False], r
        assert r["bytes"] == N * 4 and r["regions"] == 1 and r["b"] and not r["a"], r


def test_fork_child_gets_private_pages():
    """A buffer whose pages were moved into shared memory: after os.fork, parent and child each see
    only their own writes (the child re-privatized it before going on)."""
    from hetccl.memory import remap
    a = _big()
    a[:] = 1
    pages = remap.acquire(*remap.owned_range(a))
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                a[0] = 42
                os.write(w1, b"x")
                os.read(r2, 1)                       # the parent has written a[1]
                ok = a[1] == 1 and a[0] == 42 and (a[2:] == 1).all()
                with open("/proc/self/maps") as f:
                    shared = any(f"{a.ctypes.data:x}-" in line and "hetccl-reg" in line for line in f)
                code = 0 if ok and not shared else 3
            finally:
                os._exit(code)
        os.read(r1, 1)
        seen = a[0]
        a[1] = 7
        os.write(w2, b"x")
        _, status = os.waitpid(pid, 0)
        assert seen == 1 and os.WEXITSTATUS(status) == 0, (seen, status)
    finally:
        for f in (r1, w1, r2, w2):
            os.close(f)
        remap.release(pages)
