"""Correctness of the collectives beyond allreduce/allgather, point-to-point, non-blocking calls and
sub-communicators, against numpy.

One spawned group per (world size, transport) loops over every collective x algorithm x root x
size (0, 1, prime, not divisible by N, bigger than a shared-memory FIFO) and returns what it
checked; every rank checks its own output against a reference it computes itself.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from tests.launcher import run_ranks

SIZES = [0, 1, 7, 1000, 3_000_001]          # the last one is bigger than a 4 MiB FIFO as float64


def _base(n, size):
    return np.arange(n * size, dtype=np.float64) % 17


def _collectives(rank, size, sizes):
    import hetccl

    comm = hetccl.init(timeout=60)
    checked = []
    try:
        N = size
        for n in sizes:
            base = _base(n, N)
            for algo in ("binomial", "chain", "scatter_allgather"):
                for root in sorted({0, N - 1}):
                    x = base[:n].copy() if rank == root else np.full(n, -1.0)
                    comm.broadcast(x, root, algorithm=algo)
                    assert np.array_equal(x, base[:n]), ("broadcast", n, algo, root)
                    checked.append(f"broadcast/{algo}")
            out = comm.reduce_scatter(base * (rank + 1))
            full = base * (N * (N + 1) / 2)
            assert np.allclose(out, full[rank * n:(rank + 1) * n]), ("reduce_scatter", n)
            counts = [n + (i % 2) for i in range(N)]
            x = np.arange(sum(counts), dtype=np.float64) * (rank + 1)
            out = comm.reduce_scatter(x, counts=counts, op=hetccl.MAX)
            off = sum(counts[:rank])
            assert np.array_equal(out, (np.arange(sum(counts)) * N)[off:off + counts[rank]]), ("rsv", n)
            for root in sorted({0, N - 1}):
                r = comm.reduce(base[:n] * (rank + 1), root, op=hetccl.SUM)
                if rank == root:
                    assert np.allclose(r, base[:n] * N * (N + 1) / 2), ("reduce", n, root)
                else:
                    assert r is None
            r = comm.reduce(np.full(n, rank + 1, np.int32), 0, op=hetccl.AVG)
            if rank == 0:
                assert np.array_equal(r, np.full(n, (N + 1) // 2, np.int32)), ("reduce avg", n)
            g = comm.gather(np.full(n, rank, np.int32), root=N - 1)
            if rank == N - 1:
                assert np.array_equal(g, np.repeat(np.arange(N, dtype=np.int32), n)), ("gather", n)
            cnt = [i + n for i in range(N)]
            g = comm.gather(np.full(cnt[rank], rank, np.int16), root=0, counts=cnt)
            if rank == 0:
                assert np.array_equal(g, np.concatenate([np.full(c, i, np.int16) for i, c in enumerate(cnt)]))
            src = np.repeat(np.arange(N, dtype=np.int32), n) if rank == 0 else None
            o = np.full(n, -1, np.int32)
            comm.scatter(src, o, root=0)
            assert np.array_equal(o, np.full(n, rank, np.int32)), ("scatter", n)
            sb = np.arange(N * n, dtype=np.int64) + 1000 * rank
            ob = comm.alltoall(sb)
            exp = (np.concatenate([np.arange(rank * n, (rank + 1) * n) + 1000 * s for s in range(N)])
                   if n else np.zeros(0, np.int64))
            assert np.array_equal(ob, exp), ("alltoall", n)
            sc = [(rank + d) % 3 + n // 100 for d in range(N)]           # alltoallv
            allsc = [[(s + d) % 3 + n // 100 for d in range(N)] for s in range(N)]
            rc = [allsc[s][rank] for s in range(N)]
            sb = np.concatenate([np.full(sc[d], 100 * rank + d, np.int32) for d in range(N)])
            ob = comm.alltoall(sb, send_counts=sc, recv_counts=rc)
            assert np.array_equal(ob, np.concatenate([np.full(rc[s], 100 * s + rank, np.int32)
                                                      for s in range(N)])), ("alltoallv", n)
            cnt = [n + i for i in range(N)]
            ag = comm.allgatherv(np.full(cnt[rank], rank, np.uint8), cnt)
            assert np.array_equal(ag, np.concatenate([np.full(c, i, np.uint8) for i, c in enumerate(cnt)]))
            comm.barrier()
            checked.append(f"n={n}")
        # results identical on every rank: a digest of a float reduction via every path
        x = np.linspace(-1, 1, 1001) * (rank + 1) / 3
        digest = [comm.reduce_scatter(np.tile(x, N)).tobytes().hex()[:32]]
        return checked, digest
    finally:
        comm.close()


@pytest.mark.parametrize("size,transport", [(1, "shm"), (2, "shm"), (3, "shm"), (4, "tcp"), (5, "shm")])
def test_collectives(size, transport):
    res = run_ranks(_collectives, size, SIZES, timeout=240, transports=transport)
    for checked, _ in res:
        assert f"n={SIZES[-1]}" in checked


def _p2p_async_split(rank, size):
    import hetccl

    comm = hetccl.init(timeout=30)
    try:
        N = size
        peer, prev = (rank + 1) % N, (rank - 1) % N
        big = np.full(5_000_000, rank, np.float32)
        comm.send(big, peer, tag=7)                         # everyone sends first: must not block
        comm.send(np.array([rank]), peer, tag=3)
        small = np.empty(1, np.int64)
        assert comm.recv(small, prev, tag=3) == prev        # tags out of order
        r = np.empty_like(big)
        comm.recv(r, prev, tag=7)
        assert small[0] == prev and np.all(r == prev)
        w = comm.irecv(small, tag=5)
        comm.isend(np.array([rank * 10]), peer, tag=5).wait()
        w.wait()
        assert small[0] == prev * 10
        with pytest.raises(hetccl.InvalidUsage):
            comm.send(big, rank)                            # to myself
        # non-blocking collectives overlapped with each other and with compute
        a, b = np.ones(1 << 20, np.float32), np.arange(10, dtype=np.float64)
        w1 = comm.allreduce(a, async_op=True)
        w2 = comm.broadcast(b if rank == 0 else np.zeros(10), 0, async_op=True)
        w3 = comm.allgather(np.full(3, rank), async_op=True)
        _ = sum(range(10000))
        assert np.all(w1.wait() == N) and np.array_equal(w2.wait(), b)
        assert np.array_equal(w3.wait(), np.repeat(np.arange(N), 3))
        assert w1.test() and w1.is_completed()
        # sub-communicators, used while the parent has work in flight
        sub = comm.split(rank % 2)
        w = comm.allreduce(np.ones(1000), async_op=True)
        x = np.ones(10) * rank
        sub.allreduce(x)
        assert np.all(x == sum(r for r in range(N) if r % 2 == rank % 2))
        w.wait()
        none = comm.split(None if rank == 0 else 1)
        assert (none is None) == (rank == 0)
        d = comm.dup()
        y = np.ones(3)
        d.allreduce(y)
        assert np.all(y == N) and d.size == N and d.rank == rank
        for c in (sub, d, none):
            if c is not None:
                c.close()
        return sub.size
    finally:
        comm.close()


@pytest.mark.parametrize("size,transport", [(2, "shm"), (3, "tcp"), (4, "shm")])
def test_p2p_async_split(size, transport):
    sizes = run_ranks(_p2p_async_split, size, timeout=120, transports=transport)
    assert sizes == [len(range(r % 2, size, 2)) for r in range(size)]


def _alltoall_single_copy(rank, size, expect_min):
    """The single-copy alltoall (_native/single_copy.pyx): taken exactly where its threshold says,
    the same results as the FIFO pairwise exchange for every block size and dtype class, the same
    errors, and a mismatch with a FIFO collective on another rank is an error, not a hang."""
    import ml_dtypes

    import hetccl
    from hetccl.collectives.schedules import single_copy

    taken = []
    real = single_copy.alltoall

    def spy(*args):
        taken.append(args[1].nbytes)
        return real(*args)

    comm = hetccl.init(timeout=60)
    single_copy.alltoall = spy            # the router looks the route up in the adapter at every call
    try:
        N = size
        sc = dict(comm._tuner.model.single_copy).get("alltoall")
        if expect_min == "measured":      # the probe's verdicts (collectives/single_copy_probe.py)
            assert sc is not None and len(sc) > 1, sc
        else:
            assert sc == (None if expect_min is None else ((expect_min, True),)), (sc, expect_min)
        if expect_min is None:
            x = np.arange(N * 300_000, dtype=np.float64)
            comm.alltoall(x, np.empty_like(x))
            assert not taken
            return "off"
        for dt in (np.float64, np.int8, np.uint16, ml_dtypes.bfloat16):
            for n in (0, 1, 7, 1000, 300_001):
                sb = ((np.arange(N * n) + 100 * rank) % 97).astype(dt)
                want = np.concatenate([((np.arange(rank * n, (rank + 1) * n) + 100 * s) % 97).astype(dt)
                                       for s in range(N)])
                del taken[:]
                ob = np.full(N * n, 1, dt)
                comm._hot.forget()        # through the router (a seen shape takes the latency path, no spy)
                assert comm.alltoall(sb, ob) is ob
                assert np.array_equal(ob.view(np.uint8), want.view(np.uint8)), (dt, n)
                chosen = comm._tuner.select("alltoall", sb.nbytes).name
                single = comm._tuner.single_copy("alltoall", sb.nbytes)
                assert comm.last_algorithm == ("single_copy" if single else chosen), (comm.last_algorithm, chosen)
                assert taken == ([sb.nbytes] if single else []), (dt, n, chosen, taken)
                ob2 = np.empty_like(ob)
                comm.alltoall(sb, ob2, algorithm="bruck")        # another algorithm: the FIFOs
                assert np.array_equal(ob2.view(np.uint8), want.view(np.uint8)), (dt, n)
                assert comm.last_algorithm == "bruck" and len(taken) <= 1
        big = np.arange(N * 300_001, dtype=np.float64) + rank
        if not comm._tuner.single_copy("alltoall", big.nbytes):
            return "mismatch" if rank == 0 else "ok"     # measured slower here: the rest needs the route
        w = comm.alltoall(big, np.empty_like(big), async_op=True)     # from the progress thread
        got = w.wait()
        assert np.array_equal(got[:300_001], np.arange(rank * 300_001, (rank + 1) * 300_001, dtype=np.float64))
        frozen = np.empty_like(big)
        frozen.setflags(write=False)
        for what, call in [("in place", lambda: comm.alltoall(big, big)),
                           ("uneven", lambda: comm.alltoall(big[:-1], np.empty(big.size - 1))),
                           ("output size", lambda: comm.alltoall(big, np.empty(big.size + N))),
                           ("read-only output", lambda: comm.alltoall(big, frozen))]:
            try:
                call()
                raise AssertionError(f"alltoall {what}: no error")
            except hetccl.InvalidUsage:
                pass
        ob = np.empty_like(big)
        comm.alltoall(big, ob)
        assert np.array_equal(ob[:300_001], np.arange(rank * 300_001, (rank + 1) * 300_001, dtype=np.float64))
        # a mismatch: rank 0 enters the single copy, every other rank a FIFO broadcast from rank 1.
        # The entry sync looks at every peer while it waits (FIFO bytes, published headers,
        # hang-ups: single_copy.pyx), so rank 0 names the mismatch at any world size, before the 20 s
        # deadline. The broadcast of a rank that needs nothing from rank 0 (the root; at 3+ ranks a
        # rank the root feeds directly) completes; the others raise. Nobody waits out the deadline
        # (15 s: the deadline less a margin for a loaded machine, the bound is the point).
        t0 = time.monotonic()
        try:
            if rank == 0:
                comm.alltoall(big, ob, timeout=20)
            else:
                comm.broadcast(np.zeros(1000), root=1, timeout=20)
            outcome = "no error" if rank == 0 else "ok"
        except hetccl.HetcclError as e:
            outcome = ("mismatch" if "mismatch" in str(e) else f"unclear: {type(e).__name__}: {e}") \
                if rank == 0 else "ok"
        took = time.monotonic() - t0
        return outcome if took < 15 else f"{outcome} only after {took:.1f} s"
    finally:
        single_copy.alltoall = real
        comm.close(timeout=5.0)


@pytest.mark.parametrize("size,direct,expect", [(2, "64", 64), (3, "4096", 4096), (2, None, "measured"),
                                                (2, "off", None)])
def test_alltoall_single_copy(size, direct, expect):
    expect_min = expect
    res = run_ranks(_alltoall_single_copy, size, expect_min, timeout=240, env={"HETCCL_C2C_DIRECT": direct})
    if expect_min is None:
        assert res == ["off"] * size, res
    else:
        assert res == ["mismatch"] + ["ok"] * (size - 1), res
