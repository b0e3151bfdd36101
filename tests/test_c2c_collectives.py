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


# ------------------------------------------------------------------ one rank out of three mismatches

POOL = 1 << 16          # floats: the largest buffer of the plans below


def _call(comm, spec, pools):
    """Run one call described by spec = (collective, count[, a broadcast's root, else algorithm=]):
    on views of the two comm.alloc pools if given (symmetric: the symmetric schedules route by
    buffer, and alloc is collective, so the pools are allocated alike on every rank up front), else
    on numpy arrays (with HETCCL_C2C_DIRECT=on allreduce/allgather from 32 KiB take the cma
    schedules; ring by default, so that the tuner cannot pick another algorithm)."""
    coll, n, extra = spec[0], spec[1], spec[2] if len(spec) > 2 else None
    if pools is None:
        x, y, algo = np.ones(n, np.float32), np.ones(n * comm.size, np.float32), extra or "ring"
    else:
        x, y, algo = pools[0][:n], pools[1][:n * comm.size], extra
        x[:] = 1
    if coll == "allreduce":
        comm.allreduce(x, out=y[:n], algorithm=algo)
    elif coll == "allgather":
        comm.allgather(x, out=y, algorithm=algo)
    elif coll == "broadcast":
        comm.broadcast(x, root=extra)
    else:
        raise AssertionError(coll)


def _odd_one_out_rank(rank, size, plan, symmetric):
    """Rank r makes the call plan[r] (a list: those calls in order) after a barrier, and reports
    (exception class, message, seconds, (the next call's exception class, message)). The
    communicator's timeout is 30 s, so an error that took that long is the timeout, not the
    mismatch."""
    import time
    import hetccl
    comm = hetccl.init(timeout=30)
    try:
        pools = (comm.alloc(POOL, np.float32), comm.alloc(POOL, np.float32)) if symmetric else None
        comm.barrier()
        t = time.monotonic()
        try:
            for spec in plan[rank] if isinstance(plan[rank], list) else [plan[rank]]:
                _call(comm, spec, pools)
            exc, msg = None, ""
        except hetccl.HetcclError as e:
            exc, msg = type(e).__name__, str(e)
        took = time.monotonic() - t
        try:
            comm.allreduce(np.ones(4, np.float32))
            after = None, ""
        except hetccl.HetcclError as e:
            after = type(e).__name__, str(e)
        return exc, msg, took, after
    finally:
        comm.close(timeout=5)


def check_every_rank_sees_the_mismatch(results, case, words, senders=()):
    """Every rank raised (promptly, well before the 30 s timeout) an error that says "mismatched
    collective"; a rank that saw it itself raised InvalidUsage naming both calls (words), the
    others may have learnt it from the first failure (InvalidUsage "... because another rank
    failed first: mismatched collective ..."); afterwards the communicator is aborted. A rank of a
    broadcast that agrees with its root (senders, :func:`broadcast_roots`) may return, then its next
    call fails."""
    for r, (exc, msg, took, after) in enumerate(results):
        assert took < 15.0, f"rank {r} took {took:.1f} s to notice: {exc}: {msg}"
        if exc is None and r in senders:
            exc, msg, after = after[0], after[1], ("CommAborted", "")
        assert exc == "InvalidUsage", f"rank {r} ({case}): {exc}: {msg}"
        assert "mismatched collective" in msg, f"rank {r} did not say what went wrong: {msg}"
        assert after[0] == "CommAborted", f"rank {r} next call: {after}"
    direct = [m for _, m, _, _ in results if m and "another rank failed first" not in m]
    assert direct, "no rank noticed the mismatch itself"
    # when a broadcast returned on some ranks, the odd one learns it from their next call: its
    # message names that call, so only the first word (the collective it made) is certain
    need = words if all(exc is not None for exc, _, _, _ in results) else words[:1]
    assert any(all(w in m for w in need) for m in direct), (words, direct)


def broadcast_roots(plan):
    """Ranks whose broadcast may return before the mismatch reaches them: the root (it only sends,
    into FIFOs with room) and any rank that makes the very call its root makes, since a tree may
    serve it straight from the root (a binomial tree does: 3 ranks, root 2, rank 1 is its child)."""
    def bcast(spec):
        return isinstance(spec, tuple) and spec[0] == "broadcast"
    return {r for r, spec in enumerate(plan) if bcast(spec) and plan[spec[2]] == spec}


SC, FIFO = ("allreduce", 1 << 16), ("allreduce", 1000)       # 256 KiB: single copy; 4 KB: FIFO ring
# {case: (plan, words the message of a rank that saw the mismatch names)}. Waiting ranks used to
# look only at the peer they waited for; the cases where that peer is not the one that reveals the
# mismatch ("sc-0-...", "headers-differ") ended at the timeout.
CMA_ODD_ONE_OUT = {
    # rank 0 in the single copy's entry sync waits for rank 1, but only rank 2 writes to it
    "sc-0-vs-fifo": ([SC, FIFO, FIFO], ["1000 float32", "65536 float32"]),
    "sc-0-vs-broadcast": ([SC, ("broadcast", 1 << 16, 2), ("broadcast", 1 << 16, 2)],
                          ["broadcast", "allreduce"]),
    # the odd one in a FIFO schedule, the two others in the single copy
    "fifo-0": ([FIFO, SC, SC], ["1000 float32", "65536 float32"]),
    "fifo-2": ([SC, SC, FIFO], ["1000 float32", "65536 float32"]),
    # two single-copy calls that differ; rank 2 waits in a FIFO receive from rank 0, writes nobody
    "headers-differ": ([SC, ("allgather", 1 << 14), ("broadcast", 1 << 16, 0)], ["allgather", "allreduce"]),
    # rank 2 makes an extra call first (a broadcast it roots returns once sent): its allreduce is
    # a later call than the others' (seen as its FIFO bytes, or as its header's sequence number)
    "later-call": ([SC, SC, [("broadcast", 1 << 10, 2), SC]], ["rank 2 called"]),
}


@pytest.mark.parametrize("case", sorted(CMA_ODD_ONE_OUT))
def test_three_ranks_one_mismatching_cma(case):
    plan, words = CMA_ODD_ONE_OUT[case]
    res = run_ranks(_odd_one_out_rank, 3, plan, False, timeout=120, transports="c2c",
                    env={"HETCCL_C2C_MODE": "cma", "HETCCL_C2C_DIRECT": "on"})
    check_every_rank_sees_the_mismatch(res, case, words, broadcast_roots(plan))


def _mixed_rank(rank, size, symmetric, rounds):
    """A correct program that keeps a FIFO call right behind every single-copy one: the ranks
    that leave the single copy's last sync first send into the FIFOs of ranks still waiting there,
    which the waiters' checks of every peer must not take for a mismatch. Ranks pause at random
    (up to 3 ms) before the calls, so that the others wait long enough to check every peer (the
    futex stage starts after 0.5 ms). Returns the calls made."""
    import random
    import time
    import hetccl
    comm = hetccl.init(timeout=120)
    pause = random.Random(rank).random
    try:
        n = 1 << 18                                      # 1 MiB: single copy (symmetric or cma)
        if symmetric:
            x, y = comm.alloc(n, np.float32), comm.alloc(n, np.float32)
        else:
            x, y = np.empty(n, np.float32), np.empty(n, np.float32)
        small = np.empty(256, np.float32)
        want = size * (size + 1) / 2
        for i in range(rounds):
            x[:] = rank + 1
            time.sleep(0.003 * pause() if pause() < 0.3 else 0)
            comm.allreduce(x, out=y, algorithm=None if symmetric else "ring")
            assert comm.last_algorithm == ("symmetric" if symmetric else "ring"), comm.last_algorithm
            assert y[0] == want and y[-1] == want, (i, y[0], y[-1])
            small[:] = rank + i
            comm.broadcast(small, root=i % size)             # FIFO: the root sends at once
            assert small[0] == (i % size) + i, (i, small[0])
            small[:] = 1
            time.sleep(0.003 * pause() if pause() < 0.1 else 0)
            comm.allreduce(small, algorithm="ring")           # FIFO ring
            assert small[0] == size, (i, small[0])
        return rounds
    finally:
        comm.close()


MIXED = [("cma", False), ("cma", True), ("window", False)]


@pytest.mark.parametrize("mode,symmetric", MIXED, ids=[f"{m}-{'symmetric' if s else 'plain'}" for m, s in MIXED])
def test_single_copy_then_fifo_calls_never_look_mismatched(mode, symmetric):
    """5 ranks on 2 cores, with the pauses of _mixed_rank: each rank looks at every peer ~200
    times per run (counted once with a temporary counter), and must never see a mismatch.
    Window mode adds the syncs between rounds of its allreduce."""
    res = run_ranks(_mixed_rank, 5, symmetric, 400, timeout=300, transports="c2c",
                    env={"HETCCL_C2C_MODE": mode, "HETCCL_C2C_DIRECT": "on"})
    assert res == [400] * 5
