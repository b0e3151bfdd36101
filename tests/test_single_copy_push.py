"""The single-copy allgather that writes each rank's block into every peer's output ("push",
_native/single_copy.pyx read_peers), routed by the probe's verdicts (collectives/single_copy_probe.py
ORDERS, apply_orders): right results at odd sizes, every dtype width and in place on 3, 5 and 8
ranks, mixed with arrival-order reads in one loop; the fallback when a write is refused; and a peer
dying, stalling or publishing a bad output address mid-call ends in an error on every survivor, not
a hang. The probe's verdict rows and masks for the order are checked too."""
import dataclasses

import numpy as np
import pytest

from tests.launcher import run_ranks, run_ranks_expect_failure
from tests.test_single_copy_plain import EVERYWHERE, _outcome, _values


def _route_push(comm, from_bytes):
    """Verdicts as the probe gives them where push won from from_bytes: single copy at every
    measured size, push from from_bytes, doubling nowhere; set on the model and the engine as
    comm.py does."""
    from hetccl.collectives import single_copy_probe as p
    sizes = p.SIZES
    verdicts = dict(comm._tuner.model.single_copy)
    verdicts.update({"allgather": tuple((s, True) for s in sizes),
                     "allgather:doubling": tuple((s, False) for s in sizes),
                     "allgather:push": tuple((s, s >= from_bytes) for s in sizes)})
    comm._tuner.model = dataclasses.replace(comm._tuner.model, single_copy=tuple(verdicts.items()))
    p.apply_orders(comm._engine, comm._tuner.model.single_copy)
    comm._hot.forget()


def _correct(rank, size):
    """Routed push against the expected blocks, out of place and in place, odd counts and item
    sizes 1-8, calls below the push sizes (arrival-order reads) between them: the epochs must stay
    aligned across the two orders."""
    import hetccl
    from hetccl._native import single_copy
    comm = hetccl.init(timeout=60)
    try:
        _route_push(comm, 128 << 10)
        before = single_copy.push_calls()
        pushed = 0
        for dt, n in ((np.int8, 300_001), (np.float64, 1_031), (np.float32, 65_537), (np.int16, 8_193),
                      (np.int64, 33_333), (np.uint8, 4_099)):
            x = _values(n, rank, dt)
            want = np.concatenate([_values(n, r, dt) for r in range(size)])
            out = np.zeros(n * size, dt)
            comm.allgather(x, out)
            assert comm.last_algorithm == "single_copy", comm.last_algorithm
            assert np.array_equal(out, want), (dt, n)
            buf = np.zeros(n * size, dt)                      # in place
            buf[rank * n:(rank + 1) * n] = x
            comm.allgather(buf[rank * n:(rank + 1) * n], buf)
            assert np.array_equal(buf, want), (dt, n, "in place")
            pushed += 2 * (out.nbytes > 64 << 10)             # nearest measured size 128 KiB or above
        assert single_copy.push_calls() - before == pushed, (single_copy.push_calls() - before, pushed)
        return "ok"
    finally:
        comm.close(timeout=5.0)


@pytest.mark.parametrize("size", [3, 5, 8])
def test_routed_push_correct(size):
    assert run_ranks(_correct, size, timeout=150, env=EVERYWHERE) == ["ok"] * size


def _refused(rank, size):
    """A write refused (EPERM) on rank 1: every rank falls back to the FIFOs together with the
    right result, and the next call works."""
    import hetccl
    from hetccl._native import single_copy
    comm = hetccl.init(timeout=60)
    try:
        _route_push(comm, 0)
        if rank == 1:
            single_copy._inject_cma_failure(1)                       # EPERM on its next write
        for _ in range(2):
            out = comm.allgather(_values(50_001, rank, np.float32))
            assert np.array_equal(out, np.concatenate([_values(50_001, r, np.float32) for r in range(size)]))
        assert comm._tuner.model.single_copy == ()
        return comm.last_algorithm != "single_copy"
    finally:
        comm.close(timeout=5.0)


def test_push_refused_falls_back():
    assert run_ranks(_refused, 3, timeout=90, env=EVERYWHERE) == [True] * 3


def _mid_call(rank, size, how):
    """In a loop of routed push allgathers, rank 1 dies (SIGKILL from a thread, at any point of a
    call), stops (SIGSTOP: every other rank raises at the call's 3 s timeout, then rank 0 lets it
    go on) or publishes an unmapped output address (its writers get EFAULT): every other rank
    must raise well before the deadline."""
    import os
    import signal
    import threading

    import hetccl
    from hetccl._native import single_copy
    comm = hetccl.init(timeout=60)
    pids = comm.allgather(np.array([os.getpid()], np.int64))
    _route_push(comm, 0)
    n = 1 << 18
    x = np.full(n, rank, np.float32)
    out = np.empty(n * size, np.float32)
    t = 3 if how == "stops" else 20
    before = single_copy.push_calls()
    for _ in range(3):
        comm.allgather(x, out, timeout=t)
    assert comm.last_algorithm == "single_copy" and single_copy.push_calls() - before == 3
    comm.barrier()
    if rank == 1:
        if how == "garbage":
            single_copy._inject_bad_address(size)                 # every peer's slot
        else:
            sig = signal.SIGKILL if how == "dies" else signal.SIGSTOP
            threading.Timer(0.05, os.kill, (os.getpid(), sig)).start()
    try:
        return _outcome(lambda: [comm.allgather(x, out, timeout=t) for _ in range(100_000)])
    finally:
        if rank == 0 and how == "stops":
            os.kill(int(pids[1]), signal.SIGCONT)              # let it go on, into an error of its own
        comm.abort()


@pytest.mark.parametrize("how", ["dies", "stops", "garbage"])
def test_push_peer_fails_mid_call(how):
    res = run_ranks_expect_failure(_mid_call, 3, how, timeout=60, env=EVERYWHERE)
    for rank, (ok, r) in enumerate(res):
        if rank == 1 and how != "garbage":
            continue
        assert ok and r != "no error" and float(r.split(" in ")[1][:-1]) < 15, res
        if how == "dies":
            assert r.startswith("lost"), res
        assert how != "garbage" or rank == 1 or r.startswith("PeerProtocolError"), res   # alive: not "lost"


def test_push_order_rows_and_mask():
    """The probe times push from 3 ranks, keeps its rows beside doubling's, and routes it by the
    same size buckets; an order never both pushes and doubles at one size."""
    from hetccl._native.single_copy import _doubling_bucket
    from hetccl.collectives import single_copy_probe as p
    assert "allgather:push" in p.KEYS
    assert not p.ORDERS[("allgather", "push")](2) and p.ORDERS[("allgather", "push")](3)
    rows = [(s, {"fifo": [10.0] * 7, "single": [5.0] * 7, "doubling": [4.5] * 7,
                 "push": [3.0] * 7 if s >= 8 << 20 else [6.0] * 7}) for s in p.SIZES]
    v = p.verdicts(rows, None, "allgather")
    assert [w for _, w in v["allgather:push"]] == [s >= 8 << 20 for s in p.SIZES]
    assert [w for _, w in v["allgather:doubling"]] == [s < 8 << 20 for s in p.SIZES]
    m = p.order_mask(v["allgather:push"])
    assert m & p.order_mask(v["allgather:doubling"]) == 0
    assert (m >> _doubling_bucket(16 << 20) & 1) and not (m >> _doubling_bucket(1 << 20) & 1)
