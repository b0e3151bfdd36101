"""The collective tests over ``rdma`` (UCX streams carrying the engine's links).

The same rank functions as tests/test_collectives.py, test_more_collectives.py and
test_failures.py, with HETCCL_TRANSPORTS=rdma: results checked against numpy, transport per pair
asserted, a killed rank reported by every survivor within the deadline.
"""
import pytest

from tests.launcher import run_ranks, run_ranks_expect_failure
from tests.test_collectives import (_check_summaries, _large_rank, _matrix_rank, allgather_plan,
                                    allreduce_plan)
from tests.test_failures import _check_mismatch, _kill_rank, _mismatch_rank
from tests.test_more_collectives import SIZES, _collectives, _p2p_async_split
from tests.transports.test_rdma import REASON

pytestmark = pytest.mark.skipif(REASON is not None, reason=f"UCX cannot be loaded: {REASON}")


@pytest.mark.parametrize("size", [2, 3, 4, 8])
def test_allreduce_allgather_matrix_over_rdma(size):
    ar, ag = allreduce_plan(size, True), allgather_plan(size, True)
    results = run_ranks(_matrix_rank, size, ar, ag, "rdma", timeout=300, transports="rdma")
    s = _check_summaries(results, size)
    assert s["cases"] >= len(ar) + len(ag)


def test_64mib_float32_two_ranks_over_rdma():
    results = run_ranks(_large_rank, 2, "rdma", timeout=180, transports="rdma")
    for r, s in enumerate(results):
        assert not s["failures"], f"rank {r}: {s['failures']}"
    assert results[0]["digest"] == results[1]["digest"]


@pytest.mark.parametrize("size", [2, 3, 5])
def test_more_collectives_over_rdma(size):
    res = run_ranks(_collectives, size, SIZES, timeout=300, transports="rdma")
    for checked, _ in res:
        assert f"n={SIZES[-1]}" in checked


def test_p2p_async_split_over_rdma():
    sizes = run_ranks(_p2p_async_split, 3, timeout=120, transports="rdma")
    assert sizes == [len(range(r % 2, 3, 2)) for r in range(3)]


@pytest.mark.parametrize("size,algo", [(2, "ring"), (3, "rd")])
def test_mismatched_counts_over_rdma(size, algo):
    res = run_ranks(_mismatch_rank, size, "count", algo, timeout=60, transports="rdma")
    _check_mismatch(res, "count", ["2003 float32", "2004 float32"])


@pytest.mark.parametrize("size,victim,how", [(2, 1, "sigkill"), (4, 2, "sigkill"), (3, 0, "exit")])
def test_rank_killed_mid_allreduce_over_rdma(tmp_path, size, victim, how):
    stamp = tmp_path / "killed_at"
    res = run_ranks_expect_failure(_kill_rank, size, victim, how, str(stamp), timeout=60,
                                   transports="rdma")
    assert not res[victim][0], f"the victim returned: {res[victim]}"
    killed_at = float(stamp.read_text())
    for r, (ok, out) in enumerate(res):
        if r == victim:
            continue
        assert ok, f"rank {r} failed instead of reporting: {out}"
        assert out["exc"] in ("PeerLostError", "HetcclError", "TransportError"), (r, out)
        assert out["at"] - killed_at < 10.0, (r, out)
        assert out["after"][0] == "CommAborted", (r, out["after"])
