"""The c2c transport's single-copy allreduce/allgather (cma and window modes) over the full
dtype x op x size matrix of tests/test_collectives.py, plus the failure paths only c2c has."""
import numpy as np
import pytest

from tests.launcher import run_ranks, run_ranks_expect_failure
from tests.test_collectives import (_check_summaries, _large_rank, _matrix_rank, allgather_plan,
                                    allreduce_plan)

CASES = [(2, "cma"), (3, "cma"), (4, "window"), (2, "window")]


@pytest.mark.parametrize("size,mode", CASES, ids=[f"{n}ranks-{m}" for n, m in CASES])
def test_c2c_matrix(size, mode):
    ar, ag = allreduce_plan(size, size > 3), allgather_plan(size, size > 3)
    results = run_ranks(_matrix_rank, size, ar, ag, "c2c", timeout=240, transports="c2c",
                        env={"HETCCL_C2C_MODE": mode, "HETCCL_C2C_DIRECT": "on"})
    s = _check_summaries(results, size)
    assert s["cases"] >= len(ar) + len(ag)


@pytest.mark.parametrize("mode", ["cma", "window"])
def test_c2c_64mib_two_ranks(mode):
    results = run_ranks(_large_rank, 2, "c2c", timeout=180, transports="c2c",
                        env={"HETCCL_C2C_MODE": mode, "HETCCL_C2C_DIRECT": "on"})
    for r, s in enumerate(results):
        assert not s["failures"], (r, s["failures"])
    assert results[0]["digest"] == results[1]["digest"]


def _describe_rank(rank, size):
    import hetccl
    comm = hetccl.init(timeout=60)
    try:
        return comm.describe(), [comm.transport(p) for p in range(size)]
    finally:
        comm.close()


def test_describe_reports_mode_and_matrix():
    (d0, t0), _ = run_ranks(_describe_rank, 2, timeout=60, env={"HETCCL_C2C_DIRECT": "on"})
    assert t0 == ["self", "c2c"]                       # c2c outranks shm by default
    assert "c2c on " in d0 and ": cma (" in d0 and "single-copy ring allreduce/allgather: allreduce from 32768 bytes, allgather from 32768 bytes" in d0
    (d1, t1), _ = run_ranks(_describe_rank, 2, timeout=60, env={"HETCCL_C2C_MODE": "window"})
    assert t1 == ["self", "c2c"] and ": window (HETCCL_C2C_MODE=window)" in d1
    assert "single-copy ring allreduce/allgather: off (HETCCL_C2C_DIRECT=on" in d1   # the default
    (_, t2), _ = run_ranks(_describe_rank, 2, timeout=60, transports="^c2c")
    assert t2 == ["self", "shm"]


def _mismatch_rank(rank, size):
    import hetccl
    comm = hetccl.init(timeout=20)
    x = np.ones(1 << 16, np.float32)
    if rank == 0:
        comm.allreduce(x)                              # single-copy schedule
    else:
        comm.broadcast(x, root=1)                      # a FIFO schedule: a different collective
        comm.barrier()                                 # fails once rank 0 aborts
    return "no error"


def test_mismatched_collective_raises_instead_of_hanging():
    res = run_ranks_expect_failure(_mismatch_rank, 2, timeout=60, transports="c2c")
    texts = [t for ok, t in res]
    assert not any(ok for ok, _ in res), res
    assert "mismatched collective" in texts[0], texts[0]


def _dies_rank(rank, size, mode):
    import os
    import hetccl
    comm = hetccl.init(timeout=30)
    x = np.ones(8 << 20, np.float32)
    comm.allreduce(x)
    if rank == 1:
        os._exit(3)                                    # vanish without closing
    comm.allreduce(x)
    return "no error"


@pytest.mark.parametrize("mode", ["cma", "window"])
def test_peer_death_raises_peer_lost(mode):
    res = run_ranks_expect_failure(_dies_rank, 2, mode, timeout=60, transports="c2c",
                                   env={"HETCCL_C2C_MODE": mode, "HETCCL_C2C_DIRECT": "on"})
    ok0, text0 = res[0]
    assert not ok0 and "PeerLostError" in text0, text0


def _oversubscribed_rank(rank, size, use_async):
    import hetccl
    comm = hetccl.init(timeout=200)
    try:
        x = np.full(1 << 18, rank + 1, np.float32)      # 1 MiB
        want = size * (size + 1) / 2
        if use_async:                                   # driven by the progress thread, GIL released
            works = [comm.allreduce(x.copy(), async_op=True) for _ in range(100)]
            outs = [w.wait(200) for w in works]
        else:
            outs = [comm.allreduce(x.copy()) for _ in range(100)]
        assert all((o == want).all() for o in outs)
        return comm.transport((rank + 1) % size)
    finally:
        comm.close()


@pytest.mark.parametrize("use_async", [False, True], ids=["blocking", "async"])
def test_8_ranks_on_2_cores_complete_100_allreduces_of_1mib(use_async):
    res = run_ranks(_oversubscribed_rank, 8, use_async, timeout=300)
    assert set(res) == {"c2c"}


@pytest.mark.parametrize("size,mode", [(3, "cma"), (4, "window")])
def test_every_other_collective_over_c2c_fifos(size, mode):
    """broadcast, reduce, reduce_scatter, alltoall, gather, scatter... ride the c2c pairs' FIFOs."""
    from tests.test_more_collectives import SIZES, _collectives
    res = run_ranks(_collectives, size, SIZES, timeout=240, transports="c2c",
                    env={"HETCCL_C2C_MODE": mode, "HETCCL_C2C_DIRECT": "on"})
    for checked, _ in res:
        assert f"n={SIZES[-1]}" in checked


def test_split_and_async_over_c2c():
    from tests.test_more_collectives import _p2p_async_split
    sizes = run_ranks(_p2p_async_split, 4, timeout=120, transports="c2c")
    assert sizes == [2, 2, 2, 2]
