"""The collective tests over ``rdma`` (UCX streams carry the engine's links), HETCCL_TRANSPORTS=rdma.

A representative subset, small enough for every run (< 60 s on an idle 2-core machine): every
collective x every registered algorithm of tests/test_algorithms.py, for 3 ranks (not a power of
two) over a reduced set of element types and every count class including one above 4 MiB, checked
against numpy with allreduce results bit-identical on every rank; a 4-rank allreduce/allgather
matrix (tests/test_collectives.py, light plan) with the transport of every pair asserted; a rank
killed mid-allreduce, reported by every survivor within the deadline; and a mismatched call.
"""
import pytest

from hetccl.transports.rdma import ucx_missing
from tests.launcher import run_ranks, run_ranks_expect_failure
from tests.test_algorithms import Case, _anyone, _run, algorithms, matrix
from tests.test_collectives import _check_summaries, _matrix_rank, allgather_plan, allreduce_plan
from tests.test_failures import _check_after, _check_mismatch, _kill_rank, _mismatch_rank

REASON = ucx_missing()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))

# one type of each family the engine reduces differently: integer, float, half, 16-bit brain
# float, and bool (logical ops); the others share these kernels and are covered over shm/tcp
DTYPES = {"int64", "uint8", "float32", "float16", "bfloat16", "bool"}
COLLECTIVES = ("allreduce", "reduce_scatter", "reduce", "allgather", "alltoall", "broadcast")


def _subset_rank(rank, size):
    import hetccl
    comm = hetccl.init(timeout=120)
    case = Case(comm, hetccl)
    failures, done = [], set()
    try:
        transports = [comm.transport(p) for p in range(size)]
        for item in matrix(size):                # (collective, algorithm, dtype, ...)
            if item[2] not in DTYPES:
                continue
            bad = _run(case, item)               # every rank runs every item: no early exit
            done.add(item[:2])
            if bad and len(failures) < 30:
                failures.append(f"{item[:4]}: {bad}")
        _anyone(case, bool(failures))
        return {"transports": transports, "failures": failures, "done": sorted(done),
                "digests": case.digests}
    finally:
        comm.close()


def test_every_collective_and_algorithm_over_rdma():
    res = run_ranks(_subset_rank, 3, timeout=240, transports="rdma")
    for r, s in enumerate(res):
        assert s["transports"] == ["self" if p == r else "rdma" for p in range(3)], s["transports"]
        assert not s["failures"], f"rank {r}:\n" + "\n".join(s["failures"])
        assert s["digests"] == res[0]["digests"], f"rank {r}'s allreduce results differ from rank 0's"
    want = {(c, a) for c in COLLECTIVES for a in algorithms(c, 3)}
    assert want <= set(map(tuple, res[0]["done"])), want - set(map(tuple, res[0]["done"]))


def test_allreduce_allgather_matrix_over_rdma_4_ranks():
    ar, ag = allreduce_plan(4, True), allgather_plan(4, True)
    s = _check_summaries(run_ranks(_matrix_rank, 4, ar, ag, "rdma", timeout=240, transports="rdma"), 4)
    assert s["cases"] >= len(ar) + len(ag)


def test_rank_killed_mid_allreduce_over_rdma(tmp_path):
    stamp = tmp_path / "killed_at"
    victim = 1
    res = run_ranks_expect_failure(_kill_rank, 3, victim, "sigkill", str(stamp), timeout=90,
                                   transports="rdma")
    assert not res[victim][0], f"the victim returned: {res[victim]}"
    killed_at = float(stamp.read_text())
    for r, (ok, out) in enumerate(res):
        if r == victim:
            continue
        assert ok, f"rank {r} failed instead of reporting: {out}"
        assert out["exc"] in ("PeerLostError", "HetcclError", "TransportError"), (r, out)
        assert out["at"] - killed_at < 10.0, (r, out)
        _check_after(r, out, victim)


def test_mismatched_counts_over_rdma():
    res = run_ranks(_mismatch_rank, 2, "count", "ring", timeout=90, transports="rdma")
    _check_mismatch(res, "count", ["2003 float32", "2004 float32"])
