"""The pairwise alltoall's window (_native/linear.pyx alltoall_pairwise, progress.pyx run_pairs):
up to four steps under way at once, each finished step's place taken by the next. Right results
with equal and uneven blocks (zero-length ones too), blocks larger than a FIFO (the sends wait for
room on several links at once), on 3 ranks (a window of two), 4 (three) and 6 (four, sliding); and
a peer dying or stopping mid-call ends in an error on every other rank, not a hang."""
import numpy as np
import pytest

from tests.launcher import run_ranks, run_ranks_expect_failure


def _block(src, dst, n, dt):
    return ((np.arange(n) * 7 + 13 * src + 5 * dst) % 97).astype(dt)


def _counts(size, seed):
    """counts[s][d]: elements rank s sends rank d (some zero, some past a FIFO of 1 MiB)."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 70_000, (size, size))
    c[rng.random((size, size)) < 0.2] = 0
    c[0, size - 1] = 300_001                    # 1.2 MB of float32: more than the FIFO holds
    return c


def _window_rank(rank, size):
    import hetccl
    comm = hetccl.init(timeout=60)
    try:
        for dt, n in ((np.float32, 1), (np.int8, 4_099), (np.float32, 300_001)):
            x = np.concatenate([_block(rank, d, n, dt) for d in range(size)])
            out = np.zeros_like(x)
            comm.alltoall(x, out, algorithm="pairwise")
            want = np.concatenate([_block(s, rank, n, dt) for s in range(size)])
            assert comm.last_algorithm == "pairwise" and np.array_equal(out, want), (dt, n)
        for seed in range(2):
            c = _counts(size, seed)
            x = np.concatenate([_block(rank, d, c[rank, d], np.float32) for d in range(size)])
            out = np.full(int(c[:, rank].sum()), -1, np.float32)
            comm.alltoall(x, out, send_counts=list(c[rank]), recv_counts=list(c[:, rank]))
            want = np.concatenate([_block(s, rank, c[s, rank], np.float32) for s in range(size)])
            assert comm.last_algorithm == "pairwise" and np.array_equal(out, want), seed
        return True
    finally:
        comm.close()


@pytest.mark.parametrize("size", [3, 4, 6])
def test_pairwise_window_results(size):
    assert all(run_ranks(_window_rank, size, timeout=120))


def _mid_call(rank, size, how):
    """In a loop of pairwise alltoalls, rank 1 dies (SIGKILL from a thread, at any point of a call)
    or stops (SIGSTOP: every other rank raises at the call's 3 s timeout, then rank 0 lets it go
    on): every other rank must raise well before the deadline."""
    import os
    import signal
    import threading

    import hetccl
    from tests.test_single_copy_plain import _outcome
    comm = hetccl.init(timeout=60)
    pids = comm.allgather(np.array([os.getpid()], np.int64))
    x = np.full(size << 16, rank, np.float32)
    out = np.empty_like(x)
    t = 3 if how == "stops" else 20
    comm.alltoall(x, out, algorithm="pairwise", timeout=t)
    comm.barrier()
    if rank == 1:
        sig = signal.SIGKILL if how == "dies" else signal.SIGSTOP
        threading.Timer(0.05, os.kill, (os.getpid(), sig)).start()
    try:
        return _outcome(lambda: [comm.alltoall(x, out, algorithm="pairwise", timeout=t)
                                 for _ in range(100_000)])
    finally:
        if rank == 0 and how == "stops":
            os.kill(int(pids[1]), signal.SIGCONT)
        comm.abort()


@pytest.mark.parametrize("how", ["dies", "stops"])
def test_pairwise_window_peer_fails_mid_call(how):
    res = run_ranks_expect_failure(_mid_call, 4, how, timeout=60)
    for rank, (ok, r) in enumerate(res):
        if rank == 1:
            continue
        assert ok and r != "no error" and float(r.split(" in ")[1][:-1]) < 15, res


def test_the_cost_model_prices_the_window_the_native_loop_keeps():
    """The pairwise price overlaps the latencies of the exchanges under way at once (one per
    WINDOW of them) and not their bytes; its WINDOW is the native loop's."""
    from types import SimpleNamespace
    from hetccl._native import linear
    from hetccl.collectives import alltoall
    assert alltoall.WINDOW == linear.PAIRWISE_WINDOW
    lat = SimpleNamespace(alpha=1.0, beta=0.0)
    assert [alltoall.pairwise(64, p, lat) for p in (3, 4, 5, 6, 9, 10)] == [1.0, 1.0, 1.0, 2.0, 2.0, 3.0]
    byte = SimpleNamespace(alpha=0.0, beta=1.0)
    assert alltoall.pairwise(800, 8, byte) == 700.0
