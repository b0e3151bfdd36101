"""The own block of a single-copy alltoall or allgather (_native/single_copy.pyx, read_peers and
finish_own_refusable): a rank that found every peer ready at every look copies it between its last
sync's post and its wait, not before the post. Staggered arrivals aim at that path (the last rank
to arrive finds everyone ready) and at the other one (the first finds nobody ready and copies it
while it waits); results at odd block sizes and dtypes, 2-8 ranks, and a peer dying or stalling in
such a loop."""
import os
import time

import numpy as np
import pytest

from tests.launcher import run_ranks, run_ranks_expect_failure
from tests.test_single_copy_plain import EVERYWHERE, _values, _victim_in_loop

LATE = 0.2          # s the last rank waits before each call: every other rank has posted by then


def _staggered(rank, size):
    """Rank size-1 enters every call LATE after the others; the results match the FIFO schedules'
    bit for bit. Returns how many of its calls the late rank copied its block after the post."""
    import ml_dtypes

    import hetccl
    from hetccl._native import single_copy
    comm = hetccl.init(timeout=60)
    late = rank == size - 1
    try:
        before, calls = single_copy._own_copies_after_post(), 0
        for dt in (np.int8, np.float64, ml_dtypes.bfloat16):
            for blk in (5, 1001, 65_537):            # odd: >= 8 B at 2 ranks
                s = _values(blk * size, rank, dt)
                o = np.full(blk * size, 3, dt)
                if late:
                    time.sleep(LATE)
                assert comm.alltoall(s, o) is o and comm.last_algorithm == "single_copy"
                calls += 1
                want = np.concatenate([_values(blk * size, r, dt)[rank * blk:(rank + 1) * blk]
                                       for r in range(size)])
                assert np.array_equal(o.view(np.uint8), want.view(np.uint8)), (dt, blk)
                ref = np.empty_like(o)
                comm.alltoall(s, ref, algorithm="pairwise")
                assert np.array_equal(o.view(np.uint8), ref.view(np.uint8)), (dt, blk)
            x = _values(1001, rank, dt)
            if late:
                time.sleep(LATE)
            out = comm.allgather(x)
            assert comm.last_algorithm == "single_copy"
            calls += 1
            want = np.concatenate([_values(1001, r, dt) for r in range(size)])
            assert np.array_equal(out.view(np.uint8), want.view(np.uint8)), dt
        return (single_copy._own_copies_after_post() - before, calls) if late else "ok"
    finally:
        comm.close(timeout=5.0)


@pytest.mark.parametrize("size", [2, 3, 4, 8])
def test_own_block_after_post_staggered(size):
    res = run_ranks(_staggered, size, timeout=180, env=EVERYWHERE)
    assert res[:-1] == ["ok"] * (size - 1), res
    after_post, calls = res[-1]
    assert calls == 12 and after_post >= calls // 2, res     # the path aimed at ran


def _late_peer_fails(rank, size, how):
    """A loop of staggered single-copy alltoalls (rank 2 enters each call a few ms late, so it
    copies its block after its last post); rank 1 dies (SIGKILL) or stops (SIGSTOP) at some point
    of the loop. Ranks 0 and 2 must raise PeerLostError or HetcclTimeout well before the deadline."""
    import hetccl
    comm = hetccl.init(timeout=60)
    pids = comm.allgather(np.array([os.getpid()], np.int64))
    blk = 50_001
    s = _values(blk * size, rank, np.float32)
    o = np.empty_like(s)
    rng = np.random.default_rng(rank)

    def call(t):
        if rank == 2:
            time.sleep(float(rng.uniform(0, 0.004)))
        comm.alltoall(s, o, timeout=t)
    for _ in range(3):
        call(20)
    assert comm.last_algorithm == "single_copy"
    return _victim_in_loop(comm, rank, 1, pids, how, lambda t: [call(t) for _ in range(100_000)], 0.1)


@pytest.mark.parametrize("how,expect", [("dies", ("lost",)), ("stops", ("timeout", "lost"))])
def test_own_block_after_post_peer_fails(how, expect):
    res = run_ranks_expect_failure(_late_peer_fails, 3, how, timeout=60, env=EVERYWHERE)
    for r in (0, 2):
        ok, text = res[r]
        assert ok and text.startswith(expect) and float(text.split(" in ")[1][:-1]) < 15, (r, res)
