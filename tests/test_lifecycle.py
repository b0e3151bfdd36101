"""The lifecycle contract (docs/reliability.md): abort() from any thread at any moment, close() with
pending non-blocking work, abort racing close, the control plane's interrupt hook, and the torch
backend's abort/shutdown/destroy from a watchdog thread. Nothing may crash, hang or leak, and every
rank must raise promptly.

The racy cases repeat many rounds inside one launch: each round duplicates the world communicator
(``dup``: its own FIFOs, windows, sockets), runs operations on it and aborts it from another thread
at a random moment, so that a schedule still running on released memory would crash the rank
(the code before the lifecycle contract did: SIGSEGV within a few rounds). Each rank then checks
that its fds, threads and shared-memory mappings are back to where they were.
"""
from __future__ import annotations

import os
import random
import threading
import time

import numpy as np
import pytest

from tests.launcher import free_port, run_ranks

ROUNDS = 20
BIG = 1 << 20                     # float32 elements: 4 MiB, a few ms per call here
RAISE_LOCAL_S = 1.0               # the aborting rank's running operation raises within this
RAISE_PEER_S = 5.0                # ... and its peers within this


# ------------------------------------------------------------------------------------------------
# helpers run inside the ranks
# ------------------------------------------------------------------------------------------------
def _resources():
    """(open fds, threads, mappings of hetccl shared memory) of this process."""
    with open("/proc/self/maps") as f:
        maps = sum("/hetccl-" in line for line in f)
    return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task")), maps


def _settled(before, limit=5.0):
    """_resources() once none exceeds `before` (threads end asynchronously), or as it is at limit."""
    end = time.monotonic() + limit
    while True:
        now = _resources()
        if _no_leak(before, now) or time.monotonic() > end:
            return now
        time.sleep(0.02)


def _no_leak(before, after):
    return all(a <= b for a, b in zip(after, before))


def _leak_checked(rank, one_round, rounds, seed):
    """Run one_round(world, i, rng) for i in range(rounds) after a warm-up round (i = -1: lazy
    imports, caches), on a fresh world communicator; returns the rounds' results, this rank's
    resources before and after, and whether the world still computes right."""
    import hetccl
    world = hetccl.init(timeout=60)
    rng = random.Random(seed)
    one_round(world, -1, rng)
    before = _resources()
    out = [one_round(world, i, rng) for i in range(rounds)]
    after = _settled(before)
    x = world.allreduce(np.full(5, rank + 1.0))   # the world is untouched
    world.close()
    return {"rounds": out, "before": before, "after": after,
            "world_ok": x.tolist() == [world.size * (world.size + 1) / 2] * 5}


def _check_leaks(results):
    for rank, res in enumerate(results):
        assert res["world_ok"], f"rank {rank}: the world communicator broke"
        assert _no_leak(res["before"], res["after"]), (
            f"rank {rank} leaked (fds, threads, shared-memory mappings): before {res['before']}, "
            f"after {res['after']}")


def _buffers(c, kind):
    if kind == "symmetric":                        # collective
        return {"a": c.alloc(BIG), "b": c.alloc(BIG)}
    return {"x": np.ones(BIG, np.float32), "g": np.empty(BIG * c.size, np.float32),
            "y": np.empty(BIG, np.float32), "s": np.ones(2, np.float32)}


def _op(c, kind, b):
    if kind == "allreduce":
        c.allreduce(b["x"])
    elif kind == "allgather":
        c.allgather(b["x"], out=b["g"])
    elif kind == "alltoall":
        c.alltoall(b["x"], out=b["y"])
    elif kind == "broadcast":
        c.broadcast(b["x"], root=c.size - 1)
    elif kind == "hot":                            # the latency path (latency.pyx: Hot)
        c.allreduce(b["s"])
    elif kind == "symmetric":
        c.allreduce(b["a"], out=b["b"])
    elif kind == "hierarchical":                   # the planner's sub-communicators (levels)
        c.allreduce(b["x"], algorithm="hierarchical")
    else:
        raise ValueError(kind)


def _abort_round(world, kind, delay):
    """One round: rank 0 aborts a dup of the world after `delay` s from another thread while every
    rank calls `kind` on it in a loop. Returns (error name, message, seconds from the abort to
    the raise, calls made, algorithm of the last call)."""
    c = world.dup()
    b = _buffers(c, kind)                          # the abort is meant for the calls below
    algo = None
    if kind == "hierarchical":
        _op(c, kind, b)                            # the planner splits its sub-communicators
        algo = c.last_algorithm
    c.barrier()
    fired = []
    if world.rank == 0:
        def fire():
            time.sleep(delay)
            fired.append(time.monotonic())
            c.abort()
        th = threading.Thread(target=fire, name="test-abort")
        th.start()
    name, msg, raised, calls = "no error", "", None, 0
    try:
        end = time.monotonic() + 20.0
        while time.monotonic() < end:
            _op(c, kind, b)
            calls += 1
            algo = c.last_algorithm
    except Exception as e:  # noqa: BLE001
        name, msg, raised = type(e).__name__, str(e), time.monotonic()
    if world.rank == 0:
        th.join()
    c.close(timeout=5.0)
    c.abort()                                      # after close: a no-op
    t0 = world.broadcast(np.array([fired[0] if fired else 0.0]), root=0)[0]
    return name, msg, (raised - t0) if raised else None, calls, algo


def _abort_rounds_rank(rank, size, kinds, rounds, seed):
    def one(world, i, rng):
        kind = kinds[i % len(kinds)]
        delay = 0.0 if i % 7 == 0 else rng.uniform(0.0, 0.004 if kind == "hot" else 0.03)
        return (kind,) + _abort_round(world, kind, delay)
    return _leak_checked(rank, one, rounds, seed)


def _check_abort_rounds(results, kinds):
    _check_leaks(results)
    seen = set()
    for (k0, n0, m0, t0, calls0, algo0), (k1, n1, m1, t1, _, _) in zip(
            results[0]["rounds"], results[1]["rounds"]):
        assert n0 == "CommAborted", f"{k0}: the aborting rank got {n0}: {m0}"
        assert t0 is not None and t0 < RAISE_LOCAL_S, f"{k0}: the aborting rank raised {t0} s after abort()"
        assert n1 == "PeerLostError", f"{k1}: the peer got {n1}: {m1}"
        assert t1 is not None and t1 < RAISE_PEER_S, f"{k1}: the peer raised {t1} s after the abort"
        assert "abort()" in m1 and "rank 0" in m1, f"the peer was not told why: {m1}"
        if calls0:
            seen.add((k0, algo0))
    assert {k for k, _ in seen} == set(kinds), f"some kinds never ran a call before the abort: {seen}"
    return seen


# ------------------------------------------------------------------------------------------------
# abort from another thread at random moments
# ------------------------------------------------------------------------------------------------
RACES = {
    "shm": (["allreduce", "allgather", "alltoall", "broadcast", "hot"], "shm", {}),
    "tcp": (["allreduce", "allgather", "alltoall", "broadcast", "hot"], "tcp", {}),
    # single copy: cma reads/writes (single_copy.pyx) and symmetric buffers
    "c2c-cma": (["allreduce", "allgather", "alltoall", "symmetric", "hot"], "c2c",
                {"HETCCL_C2C_MODE": "cma", "HETCCL_C2C_DIRECT": "on"}),
    "c2c-window": (["allreduce", "allgather", "symmetric"], "c2c",
                   {"HETCCL_C2C_MODE": "window", "HETCCL_C2C_DIRECT": "on"}),
    "rdma": (["allreduce", "alltoall", "hot"], "rdma", {}),       # UCX stream links
}


@pytest.mark.parametrize("case", list(RACES))
def test_abort_from_another_thread_at_random_moments(case):
    kinds, transports, env = RACES[case]
    if transports == "rdma":
        from hetccl.transports.rdma import ucx_missing
        if ucx_missing():
            pytest.skip(ucx_missing())
    results = run_ranks(_abort_rounds_rank, 2, kinds, ROUNDS, 1234, timeout=150,
                        transports=transports, env=env)
    seen = _check_abort_rounds(results, kinds)
    algos = {a for _, a in seen}
    if case == "c2c-cma":       # the single-copy schedules really were the ones aborted: symmetric
        # buffers, and plain ones on c2c's FIFO schedules or on the CMA single copy (the probe's verdict)
        assert "symmetric" in algos and ({"ring", "pairwise", "single_copy"} & algos), algos


def test_abort_during_composed_calls_on_a_simulated_cluster(tmp_path):
    """Two simulated hosts of two ranks (HETCCL_TOPO_FILE): the hierarchical allreduce runs on the
    planner's sub-communicators, which rank 0's abort must stop too."""
    import json

    from tests.test_topology import _file_topo
    path = str(tmp_path / "2x2.json")
    json.dump(_file_topo(2, 2), open(path, "w"))
    results = run_ranks(_abort_rounds_rank, 4, ["hierarchical"], 5, 77, timeout=180,
                        env={"HETCCL_TOPO_FILE": path})
    _check_leaks(results)
    for i, r0 in enumerate(results[0]["rounds"]):
        assert r0[1] == "CommAborted" and r0[3] < RAISE_LOCAL_S, r0
        for rank in (1, 2, 3):
            _, name, msg, took, _, _ = results[rank]["rounds"][i]
            assert name in ("PeerLostError", "CommAborted"), (rank, name, msg)
            assert took is not None and took < RAISE_PEER_S, (rank, took, msg)
    assert all(r[5] == "hierarchical" for r in results[0]["rounds"]), results[0]["rounds"]


# ------------------------------------------------------------------------------------------------
# a schedule asleep (futex or poll) wakes at once, not at its 50-100 ms tick
# ------------------------------------------------------------------------------------------------
def _wake_rank(rank, size, kinds, samples):
    import hetccl
    world = hetccl.init(timeout=60)
    out = {}
    for kind in kinds:
        took = []
        for _ in range(samples):
            c = world.dup()
            if kind == "symmetric":
                a, b = c.alloc(1 << 16), c.alloc(1 << 16)
            c.barrier()
            if rank == 0:           # rank 1 calls nothing for a while: rank 0 falls asleep
                fired = []

                def fire():
                    time.sleep(0.15)
                    fired.append(time.monotonic())
                    c.abort()
                th = threading.Thread(target=fire)
                th.start()
                try:
                    if kind == "symmetric":
                        c.allreduce(a, out=b)
                    else:           # FIFO ring (c2c direct: the single-copy schedule's epoch wait)
                        c.allreduce(np.ones(1 << 16, np.float32), algorithm="ring")
                except Exception:  # noqa: BLE001
                    took.append(time.monotonic() - fired[0])
                th.join()
            else:
                time.sleep(0.3)
            c.close(timeout=2.0)
            world.barrier()
        out[kind] = took
    world.close()
    return out


@pytest.mark.parametrize("transports,kinds,env", [
    ("tcp", ["fifo"], {}),                                      # poll() on the sockets
    ("c2c", ["fifo", "direct", "symmetric"], {"HETCCL_C2C_DIRECT": "on"}),   # futex waits
], ids=["poll", "futex"])
def test_a_sleeping_schedule_wakes_at_once(transports, kinds, env):
    r0, _ = run_ranks(_wake_rank, 2, kinds, 5, timeout=90, transports=transports, env=env)
    for kind, took in r0.items():
        assert len(took) == 5, (kind, took)
        assert sorted(took)[2] < 0.010, f"{kind}: woken {sorted(took)} s after abort()"


# ------------------------------------------------------------------------------------------------
# close() with pending non-blocking work
# ------------------------------------------------------------------------------------------------
def _close_pending_rank(rank, size, rounds, seed):
    def one(world, i, rng):
        queued = 4
        matched = rng.randint(0, queued)          # how many of rank 0's operations rank 1 joins
        c = world.dup()
        x = [np.full(BIG // 4, 1.0, np.float32) for _ in range(queued if rank == 0 else matched)]
        works = [c.allreduce(v, async_op=True) for v in x]
        t = time.monotonic()
        c.close(timeout=0.3 if rank == 0 else 10.0)
        closed = time.monotonic() - t
        got = []
        for w, v in zip(works, x):
            try:
                w.wait()
                got.append("ok" if float(v[0]) == 2.0 else "wrong")
            except Exception as e:  # noqa: BLE001
                got.append(type(e).__name__)
        late = _raises(lambda: c.allreduce(np.ones(4, np.float32), async_op=True))
        return matched, got, closed, type(late).__name__
    return _leak_checked(rank, one, rounds, seed)


def test_close_with_pending_work_finishes_or_cancels_it():
    results = run_ranks(_close_pending_rank, 2, 8, 99, timeout=120, transports="shm")
    _check_leaks(results)
    for rank, res in enumerate(results):
        for matched, got, closed, late in res["rounds"]:
            assert late == "CommAborted", f"rank {rank}: an operation after close(): {late}"
            assert closed < 6.0, f"rank {rank}: close() took {closed:.1f} s"
            assert "wrong" not in got, f"rank {rank}: a completed operation has a wrong result: {got}"
            if rank == 0:     # the ones rank 1 never joined cannot finish: cancelled, not hung
                # (the one running when rank 1 closed its links sees that first)
                assert set(got[matched:]) <= {"CommAborted", "PeerLostError"}, (matched, got)
                assert got[matched + 1:].count("PeerLostError") == 0, (matched, got)
                assert set(got[:matched]) <= {"ok", "CommAborted", "PeerLostError"}, (matched, got)
            else:
                assert set(got) <= {"ok", "PeerLostError"}, got


# ------------------------------------------------------------------------------------------------
# abort twice, from several threads, racing close()
# ------------------------------------------------------------------------------------------------
def _abort_close_race_rank(rank, size, rounds, seed):
    def one(world, i, rng):
        c = world.dup()
        x = np.ones(BIG, np.float32)
        errors = []
        if rank == 0:
            go = threading.Event()

            def call(fn):
                go.wait()
                time.sleep(rng.uniform(0, 0.01))
                try:
                    fn()
                except Exception as e:  # noqa: BLE001
                    errors.append(f"{type(e).__name__}: {e}")
            threads = [threading.Thread(target=call, args=(f,)) for f in
                       (c.abort, c.abort, lambda: c.close(timeout=1.0), c.abort)]
            for th in threads:
                th.start()
            go.set()
        pending = c.allgather(x, async_op=True)
        name = "no error"
        try:
            pending.wait()
            for _ in range(2000):
                c.allreduce(x)
        except Exception as e:  # noqa: BLE001
            name = type(e).__name__
        if rank == 0:
            for th in threads:
                th.join()
            c.abort()
        c.close(timeout=5.0)
        world.barrier()
        return name, errors
    return _leak_checked(rank, one, rounds, seed)


def test_abort_twice_and_racing_close():
    results = run_ranks(_abort_close_race_rank, 2, 16, 7, timeout=120, transports="shm")
    _check_leaks(results)
    for rank, res in enumerate(results):
        for name, errors in res["rounds"]:
            assert not errors, f"rank {rank}: abort()/close() raised: {errors}"
            assert name == ("CommAborted" if rank == 0 else "PeerLostError"), (rank, name)


# ------------------------------------------------------------------------------------------------
# the control plane's hook: interrupt without closing the links
# ------------------------------------------------------------------------------------------------
def _interrupt_rank(rank, size):
    import hetccl
    from hetccl._native import engine as eng
    world = hetccl.init(timeout=60)
    out = {}
    for reason in ("REVOKED", "PEER_LOST"):
        c = world.dup()
        x = np.ones(BIG, np.float32)
        if rank == 0:
            timer = threading.Timer(0.02, c._interrupt, (getattr(eng, reason), 1))
            timer.start()
        t = time.monotonic()
        try:
            for _ in range(5000):
                c.allreduce(x)
            out[reason] = ("no error",)
        except Exception as e:  # noqa: BLE001
            took = time.monotonic() - t
            if rank == 0:
                timer.join()
                # the links stay for the control plane: nothing released, the peer still waits
                kept = not c._engine.released
                again = type(_raises(lambda: c.broadcast(x))).__name__
                w_err = type(_raises(lambda: c.allreduce(x, async_op=True))).__name__
                out[reason] = (type(e).__name__, getattr(e, "peer", None), kept, again, w_err,
                               str(e))
                c.close(timeout=2.0)               # now the peer sees rank 0 go
            else:
                out[reason] = (type(e).__name__, took)
                c.close(timeout=2.0)
        world.barrier()
    e = eng.Engine(0, 2)                            # the bare engine: reasons, first one wins
    out["first_wins"] = (e.interrupt(eng.PEER_LOST, 1), e.interrupt(eng.ABORTED), e.interruption)
    out["bad_reason"] = type(_raises(lambda: e.interrupt(7))).__name__
    out["bad_peer"] = type(_raises(lambda: e.interrupt(eng.PEER_LOST, 5))).__name__

    class Sock:
        closed = False

        def close(self):
            self.closed = True
    s1, s2 = Sock(), Sock()
    out["close"] = (e.close(keep=[s1]), s1.closed, e.close(keep=[s2]), s2.closed, e.released)
    world.close()
    return out


def _raises(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return e
    return None


def test_interrupt_hook_fails_operations_and_keeps_the_links():
    r0, r1 = run_ranks(_interrupt_rank, 2, timeout=90, transports="shm")
    name, peer, kept, again, w_err, msg = r0["REVOKED"]
    assert (name, kept, again, w_err) == ("CommRevoked", True, "CommRevoked", "CommRevoked"), r0["REVOKED"]
    name, peer, kept, again, w_err, msg = r0["PEER_LOST"]
    assert (name, peer, kept, again) == ("PeerLostError", 1, True, "PeerLostError"), r0["PEER_LOST"]
    assert "rank 1 was declared lost" in msg, msg
    for reason in ("REVOKED", "PEER_LOST"):
        assert r1[reason][0] == "PeerLostError", r1[reason]   # only once rank 0 closed
    assert r0["first_wins"] == (True, False, (3, 1)), r0["first_wins"]
    assert r0["bad_reason"] == r0["bad_peer"] == "ValueError"
    assert r0["close"] == (True, True, False, True, True), r0["close"]


# ------------------------------------------------------------------------------------------------
# a schedule still inside when close() gives up: nothing is released under it
# ------------------------------------------------------------------------------------------------
def _close_bound_rank(rank, size, rounds):
    import hetccl
    world = hetccl.init(timeout=60)
    out = []
    for _ in range(rounds):
        c = world.dup()
        x = np.ones(4 * BIG, np.float32)
        res = []
        th = None
        if rank == 0:
            def run():
                try:
                    for _ in range(100):
                        c.allreduce(x)
                    res.append("no error")
                except Exception as e:  # noqa: BLE001
                    res.append(type(e).__name__)
            th = threading.Thread(target=run)
            th.start()
            time.sleep(0.01)
            released = c._engine.close(timeout=0.0)  # no wait at all: usually the schedule is inside
            th.join()
            out.append((released, c._engine.released, res[0], c._engine.inside))
            c.abort()                                  # tells the peer why
        else:
            try:
                for _ in range(100):
                    c.allreduce(x)
            except Exception:  # noqa: BLE001
                pass
        c.close(timeout=2.0)
        world.barrier()
    world.close()
    return out


def test_close_never_releases_under_a_running_schedule():
    r0, _ = run_ranks(_close_bound_rank, 2, 6, timeout=90, transports="shm")
    for released, now, res, inside in r0:
        assert res == "CommAborted" and inside == 0, r0
        assert released == now, r0          # a give-up (False) keeps everything, for good
    assert not all(released for released, *_ in r0), f"the give-up path never ran: {r0}"


# ------------------------------------------------------------------------------------------------
# torch: abort / shutdown / destroy_process_group from a watchdog thread
# ------------------------------------------------------------------------------------------------
def _torch_rank(rank, size, port, rounds, seed):
    import atexit
    import sys
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    import hetccl.torch  # noqa: F401

    def leave():                    # torch's teardown is slow here: leave once the result is sent
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    atexit.register(leave)
    torch.set_num_threads(1)
    dist.init_process_group("hetccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=size, timeout=timedelta(seconds=60))
    rng = random.Random(seed)
    out = []
    for i in range(rounds):
        how = ("abort", "shutdown", "destroy")[i % 3]
        # shutdown finishes queued work first, bounded by the group's timeout: the two ranks stop
        # issuing at different calls, so one of them waits out that bound
        g = dist.new_group(backend="hetccl", timeout=timedelta(seconds=2))
        t = torch.ones(BIG // 4)
        delay = rng.uniform(0.0, 0.02)

        def watchdog():
            time.sleep(delay)
            if how == "abort":
                g.abort()
            elif how == "shutdown":
                g.shutdown()
            else:
                dist.destroy_process_group(g)
        acting = how != "abort" or rank == 0      # graceful ends are called by every rank
        th = threading.Thread(target=watchdog) if acting else None
        if th:
            th.start()
        works, name = [], "no error"
        try:
            for _ in range(3000):
                works.append(dist.all_reduce(t, group=g, async_op=True))
                dist.all_reduce(t, group=g)
                if len(works) > 3:
                    works.pop(0).wait()
        except Exception as e:  # noqa: BLE001
            name = type(e).__name__
        if th:
            th.join()
        pending = []
        for w in works:
            try:
                w.wait()
                pending.append("ok")
            except Exception as e:  # noqa: BLE001
                pending.append(type(e).__name__)
        if how == "abort" and rank != 0:
            g.shutdown()                          # the survivor cleans up
        dist.barrier()
        out.append((how, name, pending))
    dist.destroy_process_group()
    return out


def test_torch_abort_and_shutdown_from_a_watchdog_thread():
    pytest.importorskip("torch")
    results = run_ranks(_torch_rank, 2, free_port(), 6, 5, timeout=150, transports="shm",
                        env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    errors = {"CommAborted", "PeerLostError", "InvalidUsage", "HetcclTimeout"}   # 2 s group timeout
    for rank, rounds in enumerate(results):
        for how, name, pending in rounds:
            # after destroy_process_group(g), torch itself refuses calls on g (ValueError)
            assert name in errors or (how == "destroy" and name == "ValueError"), (rank, how, name)
            assert set(pending) <= errors | {"ok"}, (rank, how, pending)
            if how == "abort" and rank == 0:
                assert name == "CommAborted", (rank, how, name)
            elif how == "abort":        # the peer's first error may surface as a later call's
                assert "PeerLostError" in [name] + pending or name == "CommAborted", (rank, pending)


# ------------------------------------------------------------------------------------------------
# a planner's sub-communicators: one made while (or after) the parent is aborted is aborted too
# ------------------------------------------------------------------------------------------------
def test_sub_communicators_made_after_an_abort_are_aborted():
    from hetccl.collectives.subcomms import SubComms
    from types import SimpleNamespace

    from hetccl.errors import CommAborted

    class Child:
        def __init__(self):
            self.calls = []

        def abort(self):
            self.calls.append("abort")

        def _interrupt(self, reason):
            self.calls.append(("interrupt", reason))

        @property
        def context(self):                     # what SubComms asks a child: its interrupt
            return SimpleNamespace(interrupt=self._interrupt)

        def close(self):
            self.calls.append("close")

    class Life:
        def error(self, what):
            return CommAborted(what)

    class Parent:
        last_algorithm = "ring"

        def __init__(self):
            self.made = []

        def split(self, color, key, bridges=None):
            assert subs.building
            self.made.append(Child())
            return self.made[-1]

    parent = Parent()
    subs = SubComms(SimpleNamespace(comm=parent, life=Life()))   # the parent's Context
    first = subs.make(0, 0)
    subs.interrupt(2)                          # REVOKED reaches the children made so far
    assert first.calls == [("interrupt", 2)]
    with pytest.raises(CommAborted):
        subs.make(1, 0)                        # ... and one made afterwards, which also raises
    assert parent.made[1].calls == [("interrupt", 2)]
    subs.abort()
    assert [c.calls[-1] for c in parent.made] == ["abort", "abort"]
    with pytest.raises(CommAborted):
        subs.make(2, 0)
    assert parent.made[2].calls == ["abort"] and parent.last_algorithm == "ring"
    assert not subs.building


def _freed_without_gc_rank(rank, size):
    import gc
    import weakref

    import hetccl
    gc.disable()                    # only reference counting: a cycle would keep the communicator
    try:
        comm = hetccl.init(timeout=30)
        for _ in range(3):                          # learnt calls: the latency path's entries
            comm.allreduce(np.ones(4, np.float32))
            comm.allgather(np.ones(2, np.float32))
        ref = weakref.ref(comm)
        comm.close()
        del comm
        return ref() is None
    finally:
        gc.enable()


def test_a_closed_communicator_is_freed_without_the_garbage_collector():
    """Nothing inside the communicator (its latency path's native entries and callbacks) refers
    back to it: dropping the last reference frees it at once."""
    assert run_ranks(_freed_without_gc_rank, 2, timeout=60, transports="shm") == [True, True]
