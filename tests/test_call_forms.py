"""Every collective's call forms on the latency path: the form that allocates its result
(``allgather(x)``, ``reduce_scatter(x)``, ``alltoall(x)``, ``scatter(x)``, ``reduce``/``gather`` on
the root), a fresh
input each call, and an explicit numeric timeout must give what the Python path gives (same values,
shape, dtype, a new array each call that later calls never touch), skip the parser once the shape is
learnt, and raise the same errors."""
from __future__ import annotations

import re

import numpy as np
import pytest

from tests.launcher import run_ranks

DTYPES = (np.float32, np.int64, np.uint8, np.float16, np.float64)


def _forms_case(rank, size):
    import hetccl
    from hetccl import InvalidUsage
    comm = hetccl.init(timeout=60)
    fails = []
    parsed = []
    real_parse = comm._parse

    def counting_parse(coll, *a, **k):          # the Python path's parser: not called once hot
        parsed.append(coll)
        return real_parse(coll, *a, **k)
    comm._parse = counting_parse

    def check(what, cond):
        if not cond:
            fails.append(what)

    def contrib(r, n, dt, salt):                 # rank r's input: small values every dtype holds
        return ((np.arange(n) * 3 + r * 7 + salt) % 50).astype(dt)

    def forms(n, dt, salt, shape=None):
        """(name, call, want) of every allocating form for n elements per block."""
        mine = contrib(rank, n, dt, salt)
        every = [contrib(r, n, dt, salt) for r in range(size)]
        big = [contrib(r, n * size, dt, salt) for r in range(size)]
        x = mine.reshape(shape) if shape is not None else mine
        xb = big[rank].reshape((size, n)) if shape is not None else big[rank]
        total = np.sum(np.stack(big), 0, dtype=dt)
        return [
            ("allgather", lambda: comm.allgather(x), np.concatenate(every)),
            ("reduce_scatter", lambda: comm.reduce_scatter(xb), total[rank * n:(rank + 1) * n]),
            ("alltoall", lambda: comm.alltoall(xb),
             np.concatenate([big[r][rank * n:(rank + 1) * n] for r in range(size)])),
            ("reduce", lambda: comm.reduce(x, size - 1),
             np.sum(np.stack(every), 0, dtype=dt) if rank == size - 1 else None),
            ("gather", lambda: comm.gather(x, 0), np.concatenate(every) if rank == 0 else None),
            ("scatter", lambda: comm.scatter(xb, root=size - 1),     # every rank's buf: the shape
             big[size - 1][rank * n:(rank + 1) * n]),
        ]

    try:
        for dt in DTYPES:
            for n, shape in ((2, None), (5, None), (6, (2, 3)), (0, None)):
                kept = {}
                for rep in range(3):                 # rep 0 teaches the latency path, 1-2 take it
                    del parsed[:]
                    for name, call, want in forms(n, dt, rep, shape):
                        what = f"{name} {np.dtype(dt).name} n={n} shape={shape} rep {rep}"
                        got = call()
                        if want is None:
                            check(f"{what}: not the root, returns None", got is None)
                            continue
                        check(f"{what}: a new 1-D {np.dtype(dt).name} array",
                              type(got) is np.ndarray and got.dtype == dt and got.shape == want.shape)
                        check(f"{what}: values", np.array_equal(got, want))
                        old = kept.get(name)
                        if old is not None:          # the last call's result is the caller's own
                            check(f"{what}: not the previous result", not np.shares_memory(old[0], got))
                            check(f"{what}: the previous result unchanged", np.array_equal(old[0], old[1]))
                        kept[name] = (got, want)
                    if rep:
                        check(f"{np.dtype(dt).name} n={n} rep {rep}: parser not called ({parsed})", not parsed)

        # a fresh input every call, a mutated input, an input that views an earlier result
        x = np.full(3, rank + 1, np.float32)
        for rep in range(3):
            del parsed[:]
            got = comm.allreduce(x.copy())
            check(f"allreduce fresh input rep {rep}", np.all(got == size * (size + 1) / 2))
            b = np.full(3, rank, np.int32) if rank else np.arange(3, dtype=np.int32) + rep
            check(f"broadcast fresh input rep {rep}", np.array_equal(comm.broadcast(b, 0), np.arange(3) + rep))
            if rep:
                check(f"fresh inputs rep {rep}: parser not called ({parsed})", not parsed)
        first = comm.allgather(x)
        x[:] = -rank
        second = comm.allgather(x)
        check("mutated input: new values", np.array_equal(second, np.repeat(-np.arange(size), 3).astype(np.float32)))
        check("mutated input: the earlier result kept", np.array_equal(first, np.repeat(np.arange(size) + 1, 3)))
        view = first[rank * 3:(rank + 1) * 3]         # this rank's block of an earlier result
        third = comm.allgather(view)
        check("input viewing an earlier result", np.array_equal(third, np.repeat(np.arange(size) + 1, 3))
              and np.array_equal(first, np.repeat(np.arange(size) + 1, 3)) and not np.shares_memory(third, first))
        out = np.zeros(3 * size, np.float32)          # in place through a view of the output
        out[rank * 3:(rank + 1) * 3] = rank + 5
        for _ in range(2):
            comm.allgather(out[rank * 3:(rank + 1) * 3], out=out)
            check("allgather input viewing its output", np.array_equal(out, np.repeat(np.arange(size) + 5, 3)))
        y = np.full(3, rank + 1.0, np.float32)
        comm.allreduce(y[:], out=y)                   # another object over the same memory
        check("allreduce input viewing its output", np.all(y == size * (size + 1) / 2))
        counts = [r + 1 for r in range(size)]        # scatterv's allocating form: counts[rank]
        for rep in range(2):
            v = np.arange(sum(counts), dtype=np.int32) + rep
            got = comm.scatter(v, counts=counts)
            lo = sum(counts[:rank])
            check(f"scatterv allocating rep {rep}: {got}", got.dtype == np.int32
                  and np.array_equal(got, np.arange(lo, lo + rank + 1) + rep))
        rs = np.ones(3 * size, np.float32)
        got = comm.reduce_scatter(rs)
        check("reduce_scatter fresh result", np.all(got == size) and np.all(rs == 1))

        # 0-d inputs: allgather/gather make size elements, allreduce/broadcast/reduce keep the shape
        for rep in range(3):
            z = np.array(rank + 1, np.float64)
            check(f"0-d allgather rep {rep}", np.array_equal(comm.allgather(z), np.arange(1, size + 1)))
            g = comm.gather(z, 0)
            check(f"0-d gather rep {rep}", np.array_equal(g, np.arange(1, size + 1)) if rank == 0 else g is None)
            r = comm.reduce(z, 0)
            check(f"0-d reduce rep {rep}", (r.shape == (1,) and r[0] == size * (size + 1) / 2) if rank == 0 else r is None)
            check(f"0-d allreduce rep {rep}", comm.allreduce(z) is z and z == size * (size + 1) / 2)

        # scatter (its output is the caller's) and an explicit timeout take the latency path too
        for rep in range(3):
            del parsed[:]
            src = np.arange(2 * size, dtype=np.int16) + rep if rank == 1 else None
            o = comm.scatter(src, np.empty(2, np.int16), root=1)
            check(f"scatter rep {rep}", np.array_equal(o, np.arange(2 * rank, 2 * rank + 2) + rep))
            t = comm.allgather(np.full(2, rank, np.int8), timeout=30.0)
            check(f"allgather timeout=30.0 rep {rep}", np.array_equal(t, np.repeat(np.arange(size), 2)))
            t = comm.allreduce(np.ones(2, np.int8), timeout=30)
            check(f"allreduce timeout=30 rep {rep}", np.all(t == size))
            if rep:
                check(f"scatter/timeouts rep {rep}: parser not called ({parsed})", not parsed)

        # errors: the Python path's, on the latency path too, and the communicator stays usable
        for hot in (False, True):
            what = "latency path" if hot else "Python path"
            n = 8 if hot else 12                      # learnt / never seen
            strided = np.ones(2 * n, np.float32)[::2]
            for name, call in (("allgather", lambda: comm.allgather(strided)),
                               ("reduce_scatter", lambda: comm.reduce_scatter(np.ones(2 * size * n, np.float32)[::2])),
                               ("alltoall", lambda: comm.alltoall(np.ones(2 * size * n, np.float32)[::2])),
                               ("reduce", lambda: comm.reduce(strided, 0)),
                               ("gather", lambda: comm.gather(strided, 0)),
                               ("scatter", lambda: comm.scatter(np.ones(2 * size * n, np.float32)[::2]))):
                if hot:                               # learn the shape with a contiguous input
                    fn = {"allgather": comm.allgather, "reduce_scatter": comm.reduce_scatter,
                          "alltoall": comm.alltoall, "scatter": comm.scatter}.get(name)
                    if fn is not None:
                        fn(np.ones(n * (1 if name == "allgather" else size), np.float32))
                    else:
                        getattr(comm, name)(np.ones(n, np.float32), 0)
                try:
                    call()
                    fails.append(f"{what}: non-contiguous {name}: no error")
                except InvalidUsage as e:
                    check(f"{what}: non-contiguous {name} says what to do ({e})", "ascontiguousarray" in str(e))
            try:
                comm.reduce_scatter(np.ones(2 * size + 1, np.float32))
                fails.append(f"{what}: uneven reduce_scatter: no error")
            except InvalidUsage as e:
                check(f"{what}: uneven reduce_scatter ({e})", "equal blocks" in str(e))
            try:                                      # every rank raises: none waits for the root
                comm.scatter(np.ones(2 * size + 1, np.float32))
                fails.append(f"{what}: uneven scatter: no error")
            except InvalidUsage as e:
                check(f"{what}: uneven scatter ({e})", "equal blocks" in str(e))
            try:
                comm.scatter(None)
                fails.append(f"{what}: scatter without out= or buf: no error")
            except InvalidUsage as e:
                check(f"{what}: scatter without out= or buf ({e})", "on every rank" in str(e))
            for name, call, _ in forms(2, np.complex64, 0):   # a dtype hetccl does not move
                try:
                    call()
                    fails.append(f"{what}: {name} of complex64: no error")
                except InvalidUsage as e:
                    check(f"{what}: {name} of complex64 names the dtype ({e})", "complex" in str(e))
            try:
                comm.allgather(object())
                fails.append(f"{what}: allgather of an object: no error")
            except InvalidUsage:
                pass
        check("usable after errors", np.all(comm.allreduce(np.ones(2, np.float32)) == size))
    finally:
        comm.close()
    return fails


def _mismatch_case(rank, size):
    """A wrong dtype or count on one rank raises the same InvalidUsage whether the shape was learnt
    (latency path) or not (Python path); each scenario on its own dup(), which the error aborts."""
    import hetccl
    from hetccl import InvalidUsage
    comm = hetccl.init(timeout=60)
    msgs = {}
    try:
        for kind in ("dtype", "count"):
            for hot in (False, True):
                c = comm.dup()
                good = lambda: np.ones(2, np.float32)                            # noqa: E731
                bad = {"dtype": lambda: np.ones(1, np.float64),                   # same bytes
                       "count": lambda: np.ones(3, np.float32)}[kind]
                if hot:
                    for _ in range(2):
                        c.allgather(good())
                try:
                    c.allgather(good() if rank == 0 else bad())
                    msgs[(kind, hot)] = "no error"
                except InvalidUsage as e:
                    msgs[(kind, hot)] = re.sub(r"#\d+", "#N", str(e))
                c.close()
    finally:
        comm.close()
    return msgs


@pytest.mark.parametrize("size", [2, 3])
def test_allocating_forms_match_the_python_path(size):
    results = run_ranks(_forms_case, size, timeout=240)
    fails = [f"rank {r}: {f}" for r, fs in enumerate(results) for f in fs]
    assert not fails, "\n".join(fails)


def test_mismatch_errors_are_the_same_on_the_latency_path():
    results = run_ranks(_mismatch_case, 2, timeout=120)
    for rank, msgs in enumerate(results):
        for kind in ("dtype", "count"):
            cold, hot = msgs[(kind, False)], msgs[(kind, True)]
            assert "mismatched collective" in cold and "every rank must call" in cold, (rank, kind, cold)
            assert hot == cold, (rank, kind, cold, hot)


def _torch_case(rank, size, port):
    """torch's all_gather into a fresh list of tensors (what most torch programs write) and
    all_gather_into_tensor pass the group's timeout explicitly: they take the latency path too."""
    import atexit
    import os
    import sys

    import torch
    import torch.distributed as dist

    import hetccl.torch  # noqa: F401
    atexit.register(lambda: (sys.stdout.flush(), os._exit(0)))   # skip torch's slow teardown
    torch.set_num_threads(1)
    dist.init_process_group("hetccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    from torch.distributed import distributed_c10d as c10d
    comm = c10d._get_default_group().communicator
    parsed = []
    real_parse = comm._parse
    comm._parse = lambda coll, *a, **k: (parsed.append(coll), real_parse(coll, *a, **k))[1]
    fails = []
    for rep in range(3):
        del parsed[:]
        x = torch.arange(3, dtype=torch.float32) + 10 * rank + rep
        outs = [torch.empty(3) for _ in range(size)]
        dist.all_gather(outs, x)
        want = [torch.arange(3, dtype=torch.float32) + 10 * r + rep for r in range(size)]
        if not all(torch.equal(o, w) for o, w in zip(outs, want)):
            fails.append(f"all_gather rep {rep}: {[o.tolist() for o in outs]}")
        flat = torch.empty(3 * size)
        dist.all_gather_into_tensor(flat, x)
        if not torch.equal(flat, torch.cat(want)):
            fails.append(f"all_gather_into_tensor rep {rep}: {flat.tolist()}")
        if rep and parsed:
            fails.append(f"rep {rep}: the parser ran for {parsed}")
    dist.destroy_process_group()
    return fails


def test_torch_all_gather_takes_the_latency_path():
    pytest.importorskip("torch")
    from tests.launcher import free_port
    results = run_ranks(_torch_case, 2, free_port(), timeout=120)
    fails = [f"rank {r}: {f}" for r, fs in enumerate(results) for f in fs]
    assert not fails, "\n".join(fails)


# ------------------------------------------------------------------ the GIL held into the wait

def _ticking():
    """A Python thread that notes the time every 2 ms: (stop, ticks)."""
    import threading
    import time
    ticks, stop = [], threading.Event()

    def tick():
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.002)
    t = threading.Thread(target=tick, daemon=True)
    t.start()
    return stop, ticks


def _ran_during(ticks, t0, t1):
    """Ticks inside [t0, t1], and the longest gap between the ticks around that window."""
    inside = [t for t in ticks if t0 <= t <= t1]
    around = [t0] + inside + [t1]
    return len(inside), max(b - a for a, b in zip(around, around[1:]))


def _gil_case(rank, size, what):
    """The latency path's schedules start holding the GIL (Engine.hold_s): a peer that stalls,
    never comes or dies must not freeze this rank's other Python threads, and the timeout and the
    lost peer must still be seen."""
    import os
    import time

    import hetccl
    comm = hetccl.init(timeout=30)
    e = comm._engine
    x = np.ones(2, np.float32)
    parsed = []
    real_parse = comm._parse
    comm._parse = lambda coll, *a, **k: (parsed.append(coll), real_parse(coll, *a, **k))[1]
    for _ in range(5):                          # learnt: later calls take the latency path
        comm.allreduce(x)
    comm.barrier()
    del parsed[:]
    if what == "quiet":                         # hold_s 0: released at once, never by the wait
        e.hold_s = 0
        r0 = e.gil_releases
        for _ in range(200):
            y = comm.allreduce(np.ones(2, np.float32))
        assert y[0] == size and not parsed, (y, parsed)
        e.hold_s = 20e-6
        comm.barrier()
        comm.close()
        return e.gil_releases - r0
    if rank == 1:
        if what == "dies":
            time.sleep(0.3)
            os._exit(1)
        time.sleep(0.3 if what == "stall" else 3.0)     # late, or never there within the timeout
        if what == "stall":
            comm.allreduce(np.ones(2, np.float32))
            comm.close()
        return None
    stop, ticks = _ticking()
    r0 = e.gil_releases
    t0 = time.monotonic()
    err = None
    try:
        y = comm.allreduce(np.ones(2, np.float32), timeout=0.5 if what == "never" else None)
    except hetccl.HetcclError as x_:
        err = type(x_).__name__
        y = None
    t1 = time.monotonic()
    stop.set()
    n, gap = _ran_during(ticks, t0, t1)
    out = dict(err=err, took=t1 - t0, ticks=n, gap=gap, released=e.gil_releases - r0, parsed=list(parsed),
               value=None if y is None else float(y[0]))
    if what == "stall":
        comm.close()
    return out


@pytest.mark.parametrize("what", ["stall", "never", "dies"])
def test_a_late_lost_or_dead_peer_while_the_gil_is_held(what):
    res = run_ranks(_gil_case, 2, what, timeout=60, transports="shm",
                    victims=[1] if what == "dies" else ())[0]
    assert not res["parsed"], f"the call went through the parser: {res['parsed']}"
    assert res["released"] == 1, f"the wait let the GIL go {res['released']} times (1 expected)"
    # the other thread ran all along (ticks every 2 ms; a held GIL would leave one gap of the wait)
    assert res["ticks"] >= 10 and res["gap"] < 0.1, res
    if what == "stall":
        assert res["err"] is None and res["value"] == 2.0 and res["took"] >= 0.2, res
    elif what == "never":
        assert res["err"] == "HetcclTimeout" and 0.45 <= res["took"] < 3.0, res
    else:
        assert res["err"] in ("PeerLostError", "CommAborted", "CommRevoked") and res["took"] < 5.0, res


def test_hold_s_zero_releases_the_gil_at_once():
    for released in run_ranks(_gil_case, 2, "quiet", timeout=60, transports="shm"):
        assert released == 0, f"the wait let the GIL go {released} times with hold_s = 0"


# ------------------------------------------------------------------ the public methods' native entries

def _entries_case(rank, size):
    import inspect

    import hetccl
    from hetccl import ReduceOp
    from hetccl.comm import Communicator
    comm = hetccl.init(timeout=60)
    fails = []

    def check(what, cond):
        if not cond:
            fails.append(what)

    names = ("allreduce", "allgather", "reduce_scatter", "broadcast", "reduce", "gather", "scatter",
             "alltoall")
    for name in names:
        f, m = getattr(comm, name), getattr(Communicator, name)
        check(f"{name}: a native entry on the instance", name in vars(comm) and f is not m)
        sig = inspect.signature(m)
        want = sig.replace(parameters=list(sig.parameters.values())[1:])
        check(f"{name}: signature {inspect.signature(f)} != {want}", inspect.signature(f) == want)
        check(f"{name}: docstring", f.__doc__ == m.__doc__)
    x = np.full(4, rank + 1, np.float32)
    for rep in range(3):                        # positional and keyword forms, learnt and not
        check("allreduce positional op/out",
              comm.allreduce(x, ReduceOp.MAX, np.empty(4, np.float32))[0] == size)
        check("reduce positional", (comm.reduce(x, 0, ReduceOp.SUM, None) is None) == (rank != 0))
        check("gather positional", (comm.gather(x, 0, None) is None) == (rank != 0))
        out = np.empty(4, np.float32)
        check("scatter positional", comm.scatter(np.arange(4 * size, dtype=np.float32), out, 0) is out
              and out[0] == 4 * rank)
        check("reduce_scatter counts=", comm.reduce_scatter(np.ones(size, np.float32),
                                                            counts=[1] * size)[0] == size)
        check("alltoall counts", comm.alltoall(np.ones(size, np.float32), np.empty(size, np.float32),
                                               send_counts=[1] * size, recv_counts=[1] * size)[0] == 1)
        w = comm.allreduce(np.ones(2, np.float32), async_op=True)      # queued: pending
        y = comm.allreduce(np.ones(2, np.float32))                     # behind it: the Python path
        check("async then blocking", w.wait()[0] == size and y[0] == size)
        check("pending drained", comm._pending == 0 and comm._hot.pending == 0)
    try:
        comm.allreduce(np.ones(2, np.float32), out=np.empty(3, np.float32))
        fails.append("a wrong output size did not raise")
    except hetccl.InvalidUsage:
        pass
    comm.close()
    return fails


def test_native_entries_take_every_form_and_hand_the_rest_to_the_methods():
    for fails in run_ranks(_entries_case, 2, timeout=90):
        assert not fails, fails


def _constructor_case(rank, size):
    import sys
    import hetccl
    from hetccl._native import latency
    comm = hetccl.init(timeout=60)
    fails = []
    if not latency.NUMPY_NEW_DIRECT:
        fails.append("numpy's C constructor was not found or did not pass its check on this numpy")
    x = np.arange(2, dtype=np.float32)
    xp = np.arange(2 * size, dtype=np.float32)
    calls = {"allgather": lambda: comm.allgather(x), "reduce_scatter": lambda: comm.reduce_scatter(xp),
             "alltoall": lambda: comm.alltoall(xp), "gather": lambda: comm.gather(x, 0),
             "reduce": lambda: comm.reduce(x, 0), "scatter": lambda: comm.scatter(xp)}
    for name, call in calls.items():
        got = ref = f = g = None             # the last result, and anything over it (flags), let go
        for _ in range(3):                                  # learn the shape
            call()
        dt = x.dtype

        def extra(held):          # references to the dtype beyond one per live result (the pool's too)
            live = {id(a) for a in comm._hot.pooled() if a.dtype is dt}
            live |= {id(a) for a in held if a is not None}
            return sys.getrefcount(dt) - len(live)
        before = extra([])
        kept = [call() for _ in range(500)]
        got = kept[-1]
        if got is None:                                     # a rooted collective's other rank
            continue
        if extra(kept) != before:                           # one reference per live result, no more
            fails.append(f"{name}: dtype references {extra(kept) - before} beyond the 500 results")
        del kept
        if extra([got]) != before:
            fails.append(f"{name}: dtype references leaked ({extra([got]) - before})")
        ref = np.empty(got.shape, got.dtype)
        f, g = got.flags, ref.flags
        if (type(got) is not np.ndarray or got.base is not None or got.strides != ref.strides
                or (f.owndata, f.writeable, f.c_contiguous, f.aligned)
                != (g.owndata, g.writeable, g.c_contiguous, g.aligned)):
            fails.append(f"{name}: not what numpy.empty makes: {got.flags} base {got.base}")
    comm.close()
    return fails


def test_allocated_results_are_numpy_empty_arrays_without_leaks():
    """The allocating forms make their result with numpy's C constructor (found at import and
    checked): each result is what numpy.empty makes (owns its data, writable, C order), and no
    reference to the dtype leaks per call."""
    for fails in run_ranks(_constructor_case, 2, timeout=90):
        assert not fails, fails


# ------------------------------------------------------------------ a peer dies in an allocating scatter

def _scatter_dies_case(rank, size, hot):
    """The root of an allocating scatter dies before it sends: the other ranks' call (on the latency
    path when ``hot``, else through the parser) raises a lost-peer error soon, never hangs."""
    import os
    import time

    import hetccl
    comm = hetccl.init(timeout=30)
    xp = np.arange(2 * size, dtype=np.float32)
    for _ in range(3 if hot else 0):            # learnt: the call below takes the latency path
        got = comm.scatter(xp, root=1)
        assert np.array_equal(got, xp[2 * rank:2 * rank + 2]), got
    comm.barrier()
    if rank == 1:
        time.sleep(0.3)
        os._exit(1)
    t0 = time.monotonic()
    try:
        got = comm.scatter(xp, root=1)
        err = None
    except hetccl.HetcclError as e:
        err = (type(e).__name__, str(e))
    return dict(err=err, took=time.monotonic() - t0)


@pytest.mark.parametrize("hot", [True, False])
def test_a_dead_root_during_an_allocating_scatter_raises(hot):
    for rank, res in enumerate(run_ranks(_scatter_dies_case, 3, hot, timeout=60, transports="shm",
                                         victims=[1])):
        if rank == 1:
            continue
        assert res["err"] is not None, f"rank {rank}: no error: {res}"
        assert res["err"][0] in ("PeerLostError", "CommAborted", "CommRevoked"), (rank, res)
        assert "1" in res["err"][1] and res["took"] < 10.0, (rank, res)
