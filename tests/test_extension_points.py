"""The extension points, held honest by a transport and an algorithm declared in tests/.

``loop`` (tests/transports/loop.py) is a transport and ``reduce_broadcast``
(tests/algorithms/reduce_broadcast.py) an allreduce algorithm, each one module plus one registry
line. The conformance suite (tests/transports/) runs loop's Endpoints, the collective matrix
(tests/test_collectives.py) runs both against numpy; here: every table that must see them does
(transport matrix, cost model, probe, simulator, tuner, explain, HETCCL_ALGO), and a rank dying in
the middle of the test algorithm over the test transport is reported to the others.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from tests.launcher import run_ranks, run_ranks_expect_failure


@pytest.fixture
def test_tables(monkeypatch):
    """hetccl's transport table and algorithm registry with the test extensions, for this test only."""
    from hetccl import transports
    from hetccl.collectives import registry
    monkeypatch.setattr(transports, "ALL", list(transports.ALL))
    monkeypatch.setattr(registry, "ALGORITHMS", list(registry.ALGORITHMS))
    monkeypatch.setattr(registry, "_BY_COLLECTIVE", {k: list(v) for k, v in registry._BY_COLLECTIVE.items()})
    from tests.algorithms import registry as test_algorithms
    from tests.transports import registry as test_transports
    test_transports.install()
    test_algorithms.install()
    return transports, registry


def test_every_table_reads_the_test_transport(test_tables):
    transports, _ = test_tables
    from hetccl.collectives.cost_model import group_cost
    from hetccl.simulate.group import with_transports
    from hetccl.transports.matrix import parse_filter, transport_matrix
    loop = transports.by_name("loop")
    assert "loop" in transports.names() and transports.names()[-1] == "loop"     # the last choice
    cards = [{"rank": r, "host": h} for r, h in enumerate("aab")]
    assert transport_matrix(cards, transports.ALL, None)[0] != ["self", "loop", "loop"]
    assert transport_matrix(cards, transports.ALL, "loop") == [["self", "loop", "loop"],
                                                                ["loop", "self", "loop"],
                                                                ["loop", "loop", "self"]]
    assert "loop" not in parse_filter("^loop", transports.names())
    assert transports.is_wire("loop") and loop.link_kind in transports.wire_kinds()
    assert group_cost(["loop"]) == group_cost(["tcp"])          # no cost of its own: the costliest
    assert not group_cost(["loop"]).fifo
    assert with_transports("shm", "loop") == "loop" and with_transports("tcp", "tcp,loop") == "tcp"


def test_the_tuner_prices_and_forces_the_test_algorithm(test_tables):
    from hetccl.collectives.tuner import Tuner
    t = Tuner.with_defaults(4, forced_spec="")
    assert "reduce_broadcast" in t.explain("allreduce", 1 << 20)
    forced = Tuner.with_defaults(4, forced_spec="allreduce:reduce_broadcast")
    assert forced.select("allreduce", 64).name == "reduce_broadcast"
    assert forced.select("allreduce", 64).run is not None


def _forced_rank(rank, size):
    from tests.algorithms import registry as test_algorithms
    from tests.transports import registry as test_transports
    test_transports.install()
    test_algorithms.install()
    import hetccl
    comm = hetccl.init(timeout=60)
    try:
        out = {"transports": [comm.transport(p) for p in range(size)],
               "explain": comm.explain("allreduce", 4096)}
        x = np.arange(1000, dtype=np.int64) * (rank + 1)
        comm.allreduce(x)                                        # HETCCL_ALGO forces it
        out["algo"] = comm.last_algorithm
        out["ok"] = bool((x == np.arange(1000) * size * (size + 1) // 2).all())
        y = np.full(7, rank + 1.0)
        w = comm.allreduce(y, hetccl.MAX, async_op=True)        # queued on the progress thread
        out["async"] = bool((w.wait() == size).all())
        return out
    finally:
        comm.close()


def test_forced_test_algorithm_over_the_test_transport():
    res = run_ranks(_forced_rank, 3, timeout=90, transports="loop",
                    env={"HETCCL_ALGO": "allreduce:reduce_broadcast"})
    for r, out in enumerate(res):
        assert out["transports"] == ["self" if p == r else "loop" for p in range(3)], out
        assert out["algo"] == "reduce_broadcast" and out["ok"] and out["async"], out
        assert "-> reduce_broadcast" in out["explain"] and "forced by HETCCL_ALGO" in out["explain"]


def _kill_rank(rank, size, victim, stamp_path):
    from tests.algorithms import registry as test_algorithms
    from tests.transports import registry as test_transports
    test_transports.install()
    test_algorithms.install()
    import hetccl
    comm = hetccl.init(timeout=30)
    x = np.ones((4 << 20) // 4, dtype=np.float32)
    comm.allreduce(x, algorithm="reduce_broadcast")
    if rank == victim:
        def die():
            with open(stamp_path, "w") as f:
                f.write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Timer(0.3, die).start()
    end = time.monotonic() + 30
    while time.monotonic() < end:
        try:
            comm.allreduce(x, algorithm="reduce_broadcast", timeout=25)
        except Exception as e:  # noqa: BLE001
            caught = time.time()
            comm.close(timeout=3.0)
            return {"exc": type(e).__name__, "msg": str(e), "at": caught}
    return {"exc": None}


def test_a_rank_killed_mid_test_algorithm_over_the_test_transport(tmp_path):
    stamp = tmp_path / "killed_at"
    res = run_ranks_expect_failure(_kill_rank, 3, 1, str(stamp), timeout=60, transports="loop")
    assert not res[1][0], f"the victim returned: {res[1]}"
    killed_at = float(stamp.read_text())
    for r in (0, 2):
        ok, out = res[r]
        assert ok and out["exc"] in ("PeerLostError", "HetcclError", "TransportError"), (r, out)
        assert out["at"] - killed_at < 10.0, (r, out)
    assert any("rank 1" in res[r][1]["msg"] for r in (0, 2)), res
