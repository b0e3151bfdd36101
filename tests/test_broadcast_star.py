"""The single-copy broadcast whose syncs are the root's alone (broadcast_star in
_native/single_copy.pyx, 3+ ranks): results at 2-8 ranks, every root, odd sizes and addresses,
buffers past one read chunk, mixed with the all-rank-sync schedule and other single-copy calls;
a refused read or root write anywhere; a peer dying or stopping mid-call."""
import numpy as np
import pytest

from tests.launcher import run_ranks, run_ranks_expect_failure

EVERYWHERE = {"HETCCL_C2C_DIRECT": "8", "HETCCL_TRANSPORTS": "c2c"}   # every call from 8 B takes single copy

# (dtype, count): a few bytes; below the root's share (16 KiB); above it (the root writes 1/N into
# every peer); past the 2 MiB read chunk (several reads per peer)
CASES = ((np.int8, 17), (np.float64, 1001), (np.uint16, 65_537), (np.float32, 600_001))


def _values(n, seed, dt):
    return ((np.arange(n) * 7 + 13 * seed) % 97).astype(dt)


def _correct(rank, size):
    """Every root at every case, each call single copy with the right bytes; at an odd address
    (a view one byte into a larger buffer); then star and all-rank-sync calls alternating with a
    single-copy allgather and a FIFO allreduce, so the epochs the syncs count stay in step."""
    import hetccl
    from hetccl._native import single_copy
    comm = hetccl.init(timeout=60)
    try:
        for dt, n in CASES:
            for root in range(size):
                b = _values(n, root, dt) if rank == root else np.zeros(n, dt)
                assert comm.broadcast(b, root=root) is b
                assert comm.last_algorithm == "single_copy", (n, comm.last_algorithm)
                assert np.array_equal(b, _values(n, root, dt)), (dt, n, root)
        raw = np.zeros(70_001, np.uint8)
        odd = raw[1:]                                       # not aligned to anything
        if rank == size - 1:
            odd[:] = _values(70_000, 5, np.uint8)
        comm.broadcast(odd, root=size - 1)
        assert np.array_equal(odd, _values(70_000, 5, np.uint8)) and raw[0] == 0
        x = _values(3000, rank, np.float32)
        for i in range(12):
            single_copy._set_schedule(star=i % 2 == 0)
            root = i % size
            b = _values(40_000, i, np.float32) if rank == root else np.zeros(40_000, np.float32)
            comm.broadcast(b, root=root)
            assert comm.last_algorithm == "single_copy"
            assert np.array_equal(b, _values(40_000, i, np.float32)), i
            out = comm.allgather(x)
            assert comm.last_algorithm == "single_copy"
            assert np.array_equal(out, np.concatenate([_values(3000, r, np.float32) for r in range(size)]))
            y = np.full(64, rank + i, np.float32)
            comm.allreduce(y, algorithm="ring")
            assert y[0] == sum(range(size)) + size * i
        single_copy._set_schedule()
        return "ok"
    finally:
        comm.close(timeout=5.0)


@pytest.mark.parametrize("size", [2, 3, 4, 8])
def test_broadcast_star_correct(size):
    assert run_ranks(_correct, size, timeout=180, env=EVERYWHERE) == ["ok"] * size


def _refused(rank, size, who):
    """A cross-memory copy the kernel refuses (EPERM) on one rank only: a non-root's read (who
    "reader", the last rank) or the root's write of its share (who "root"): every rank re-runs the
    call on the FIFOs with the right result, and the communicator stays there."""
    import hetccl
    from hetccl._native import single_copy
    comm = hetccl.init(timeout=60)
    try:
        root = 1
        if rank == (root if who == "root" else size - 1):
            single_copy._inject_cma_failure(1)
        n = 50_001                                          # 400 KB: the root writes a share
        b = _values(n, root, np.float64) if rank == root else np.zeros(n)
        comm.broadcast(b, root=root)
        assert np.array_equal(b, _values(n, root, np.float64))
        assert comm._tuner.model.single_copy == ()
        comm.broadcast(b, root=0)
        assert comm.last_algorithm != "single_copy"
        return "ok"
    finally:
        comm.close(timeout=5.0)


@pytest.mark.parametrize("who", ["reader", "root"])
def test_broadcast_star_refused_falls_back_together(who):
    assert run_ranks(_refused, 4, who, timeout=120, env=EVERYWHERE) == ["ok"] * 4


def _mid_call(rank, size, victim, how):
    """In a loop of star broadcasts from root 2 on the latency path, rank `victim` dies (SIGKILL
    from a thread, anywhere in a call) or stops (SIGSTOP). Every other rank must raise
    PeerLostError or HetcclTimeout well before the deadline: a reader waits for the root only,
    the root for every reader, so a reader that returned is caught in its next call's wait."""
    import os
    import signal
    import threading

    import hetccl
    from tests.test_single_copy_plain import _outcome
    comm = hetccl.init(timeout=60)
    pids = comm.allgather(np.array([os.getpid()], np.int64))
    x = np.full(1 << 18, rank, np.float32)                 # 1 MiB
    call = (lambda t: comm.broadcast(x, root=2, timeout=t))
    for _ in range(3):
        call(20)
    assert comm.last_algorithm == "single_copy" and x[0] == 2
    comm.barrier()
    if rank == victim:
        sig = signal.SIGKILL if how == "dies" else signal.SIGSTOP
        threading.Timer(0.05, os.kill, (os.getpid(), sig)).start()
    try:
        return _outcome(lambda: [call(2 if how == "stops" else 20) for _ in range(100_000)])
    finally:
        if rank == (victim + 1) % size and how == "stops":
            os.kill(int(pids[victim]), signal.SIGCONT)     # let it go on, into an error of its own
        comm.abort()


@pytest.mark.parametrize("victim,how", [(1, "dies"), (2, "dies"), (3, "stops"), (2, "stops")],
                         ids=["reader-dies", "root-dies", "reader-stops", "root-stops"])
def test_broadcast_star_peer_fails_mid_call(victim, how):
    res = run_ranks_expect_failure(_mid_call, 4, victim, how, timeout=60, env=EVERYWHERE)
    for r, (ok, text) in enumerate(res):
        if r == victim and how == "dies":
            continue
        if r == victim:                # resumed: it fails too, in its own time
            assert ok and text != "no error", (r, res)
            continue
        assert ok and text.startswith(("lost", "timeout")) and float(text.split(" in ")[1][:-1]) < 15, (r, res)


B0 = ("broadcast", 1 << 16, 0)                              # 256 KiB from rank 0: single copy
FIFO = ("allreduce", 1000)                                  # the FIFO ring
# {case: (plan, words)}: one rank of four makes another call; a reader waits for the root alone,
# so the odd rank's call must be seen by the root (its arrival) or by a reader's look at every peer
STAR_ODD_ONE_OUT = {
    "reader-in-fifo": ([B0, B0, B0, FIFO], ["allreduce"]),
    "reader-roots-its-own": ([B0, B0, B0, ("broadcast", 1 << 16, 3)], ["broadcast"]),
    "root-in-fifo": ([FIFO, B0, B0, B0], ["allreduce"]),
}


@pytest.mark.parametrize("case", sorted(STAR_ODD_ONE_OUT))
def test_broadcast_star_one_rank_mismatching(case):
    from tests.test_c2c_collectives import _odd_one_out_rank, broadcast_roots, check_every_rank_sees_the_mismatch
    plan, words = STAR_ODD_ONE_OUT[case]
    res = run_ranks(_odd_one_out_rank, 4, plan, False, timeout=120, transports="c2c",
                    env={"HETCCL_C2C_MODE": "cma", "HETCCL_C2C_DIRECT": "8"})
    check_every_rank_sees_the_mismatch(res, case, words, broadcast_roots(plan))
