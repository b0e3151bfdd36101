"""The communicator's latency path (_native/latency.pyx: Hot): a call shape seen before goes straight to its
native schedule. It must give the same results, the same algorithm and the same errors as the
Python path it short-cuts, and never take a call it was not taught (timeouts, async operations,
dtypes only the Python path knows; a forced algorithm only under its own name)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.launcher import run_ranks


def _hot_case(rank, size):
    import ml_dtypes

    import hetccl
    from hetccl import InvalidUsage
    comm = hetccl.init(timeout=60)
    fails = []

    def check(what, cond):
        if not cond:
            fails.append(what)

    try:
        for n in (2, 1000, 300_000):          # 8 B (latency), 4 KB, 1.2 MB (ring)
            for rep in range(3):              # rep 0 teaches the hot path, reps 1-2 take it
                x = np.arange(n, dtype=np.float32) + rank + rep
                out = np.empty_like(x)
                got = comm.allreduce(x, out=out)
                check(f"allreduce {n} returns out", got is out)
                check(f"allreduce {n} rep {rep}", np.allclose(out, size * np.arange(n) + size * (size - 1) / 2 + size * rep))
                check(f"allreduce {n} algorithm", comm.last_algorithm == comm._tuner.select("allreduce", x.nbytes).name)
                y = x.copy()
                comm.allreduce(y, hetccl.MAX)             # in place
                check(f"allreduce max {n}", np.array_equal(y, np.arange(n, dtype=np.float32) + size - 1 + rep))

                b = np.full(n, rank + rep, np.int32)
                check(f"broadcast {n} returns buf", comm.broadcast(b, root=size - 1) is b)
                check(f"broadcast {n} rep {rep}", np.all(b == size - 1 + rep))

                a = np.arange(n * size, dtype=np.float64) + 1000 * rank + rep
                ao = np.empty_like(a)
                comm.alltoall(a, ao)
                want = np.concatenate([np.arange(rank * n, (rank + 1) * n) + 1000 * s + rep for s in range(size)])
                check(f"alltoall {n} rep {rep}", np.array_equal(ao, want))

                for dt, op, want_of in ((np.float32, hetccl.SUM, lambda v: v.sum(0)),
                                        (np.int64, hetccl.MAX, lambda v: v.max(0)),
                                        (np.float64, hetccl.AVG, lambda v: v.mean(0))):
                    contrib = [np.arange(n * size, dtype=dt) * (s + 1) + rep for s in range(size)]
                    ro = np.empty(n, dt)
                    got = comm.reduce_scatter(contrib[rank], out=ro, op=op)
                    want = want_of(np.stack(contrib))[rank * n:(rank + 1) * n]
                    check(f"reduce_scatter {dt.__name__} {op.name} {n} returns out", got is ro)
                    check(f"reduce_scatter {dt.__name__} {op.name} {n} rep {rep}", np.allclose(ro, want))
                    check(f"reduce_scatter {n} algorithm",
                          comm.last_algorithm == comm._tuner.select("reduce_scatter", contrib[rank].nbytes).name)

                g = np.full(n, rank * 10 + rep, np.int16)
                go = np.empty(n * size, np.int16)
                comm.allgather(g, go)
                check(f"allgather {n} rep {rep}", np.array_equal(go, np.repeat(np.arange(size) * 10 + rep, n)))

        b = np.full(2, rank, np.int32)           # the 8-byte broadcast above was learnt
        check("latency path taken", comm._hot.broadcast(b, size - 1) is b and np.all(b == size - 1))
        r = np.ones(2 * size, np.float32)              # so was the 8-byte float32 reduce_scatter
        ro = np.empty(2, np.float32)
        check("reduce_scatter latency path taken",
              comm._hot.reduce_scatter(r, ro, hetccl.SUM) is ro and np.all(ro == size))

        # what the latency path leaves to Python: changed arguments still give the right result
        r = np.arange(2 * size, dtype=np.float32) + rank
        ro = np.empty(2, np.float32)
        want = size * np.arange(2 * rank, 2 * rank + 2) + size * (size - 1) / 2
        check("rs: a plain int op is not hot", comm._hot.reduce_scatter(r, ro, 0) is False)
        comm.reduce_scatter(r, out=ro, op=0)
        check("rs int op", np.array_equal(ro, want))
        comm.reduce_scatter(r, out=ro, counts=[2] * size)
        check("rs counts (reduce_scatterv)", np.array_equal(ro, want))
        mv = memoryview(ro)
        comm.reduce_scatter(r, out=mv)
        check("rs memoryview out", np.array_equal(ro, want))
        ri = (np.arange(2 * size) + rank).astype(np.int32)       # same bytes, another dtype: not learnt
        rio = np.empty(2, np.int32)
        comm.reduce_scatter(ri, out=rio, op=hetccl.BXOR)
        wx = np.bitwise_xor.reduce(np.stack([np.arange(2 * size) + s for s in range(size)]), 0)
        check("rs int32 bxor", np.array_equal(rio, wx[2 * rank:2 * rank + 2]))
        comm.reduce_scatter(r, out=ro, algorithm="ring")
        check("rs forced ring", comm.last_algorithm == "ring" and np.array_equal(ro, want))
        comm.reduce_scatter(r, out=ro)
        check("rs unforced after forced",
              comm.last_algorithm == comm._tuner.select("reduce_scatter", r.nbytes).name
              and np.array_equal(ro, want))
        rw = comm.reduce_scatter(r, out=ro, async_op=True)
        rw.wait()
        check("rs async", np.array_equal(ro, want))

        # a forced algorithm is learnt under its own name: the next forced call takes the latency
        # path too (like for like with the tuner's calls), and an unforced call of that size still
        # gets the tuner's choice
        b = np.zeros(64, np.float32)
        check("forced chain not yet learnt", comm._hot.broadcast(b, 0, "chain") is False)
        comm.broadcast(b, algorithm="chain")
        check("forced chain", comm.last_algorithm == "chain")
        comm.broadcast(b)
        check("unforced after forced", comm.last_algorithm == comm._tuner.select("broadcast", b.nbytes).name)
        b[:] = rank + 1
        check("forced chain learnt", comm._hot.broadcast(b, size - 1, "chain") is b
              and comm.last_algorithm == "chain" and np.all(b == size))
        comm.broadcast(b, algorithm="chain")
        check("forced chain again", comm.last_algorithm == "chain")
        auto = comm._tuner.select("allreduce", 8).name
        other = next(a.name for a, c in comm._tuner.table("allreduce", 8)
                     if c is not None and c != float("inf") and a.name != auto)
        for algo in (other, auto, other):                 # learnt per name, each its own schedule
            x = np.full(2, rank + 1.0, np.float32)
            comm.allreduce(x, algorithm=algo)
            check(f"forced allreduce {algo}", comm.last_algorithm == algo and np.all(x == size * (size + 1) / 2))
        x = np.full(2, rank + 1.0, np.float32)
        check("forced allreduce on the latency path",
              comm._hot.allreduce(x, None, hetccl.SUM, other) is x and comm.last_algorithm == other
              and np.all(x == size * (size + 1) / 2))
        comm.allreduce(x)
        check("unforced allreduce after forced", comm.last_algorithm == auto)
        try:
            comm.allreduce(x, algorithm="no_such_algorithm")
            fails.append("unknown algorithm: no error")
        except InvalidUsage:
            pass

        # errors are the Python path's, and the communicator stays usable
        x = np.ones(2, np.float32)
        comm.allreduce(x, out=np.empty(2, np.float32))
        frozen = np.empty(2, np.float32)
        frozen.setflags(write=False)
        for what, call in [
            ("allreduce out dtype", lambda: comm.allreduce(x, out=np.empty(2, np.float64))),
            ("allreduce bxor float", lambda: comm.allreduce(x, hetccl.BXOR)),
            ("allreduce out size", lambda: comm.allreduce(x, out=np.empty(3, np.float32))),
            ("broadcast root", lambda: comm.broadcast(x, root=size)),
            ("alltoall in place", lambda: comm.alltoall(x, x)),
            ("reduce_scatter out size", lambda: comm.reduce_scatter(np.ones(2 * size, np.float32),
                                                                    out=np.empty(3, np.float32))),
            ("reduce_scatter bxor float", lambda: comm.reduce_scatter(np.ones(2 * size, np.float32),
                                                                      out=np.empty(2, np.float32), op=hetccl.BXOR)),
            ("reduce_scatter uneven", lambda: comm.reduce_scatter(np.ones(2 * size + 1, np.float32),
                                                                  out=np.empty(2, np.float32))),
            ("reduce_scatter read-only out", lambda: comm.reduce_scatter(np.ones(2 * size, np.float32),
                                                                         out=frozen)),
            ("alltoall uneven", lambda: comm.alltoall(np.ones(2 * size + 1, np.float32), np.empty(2 * size + 1, np.float32))),
        ]:
            try:
                call()
                fails.append(f"{what}: no error")
            except InvalidUsage:
                pass
        comm.allreduce(x)
        check("usable after errors", np.all(x == size))

        # dtypes the latency path leaves to Python (bfloat16 through ml_dtypes) still work
        h = np.ones(8, ml_dtypes.bfloat16)
        for _ in range(2):
            h[:] = 1
            comm.allreduce(h)
            check("bfloat16 allreduce", np.all(h.astype(np.float32) == size))

        # a pending async operation sends every call through the queue (issue order kept)
        w = comm.allreduce(np.ones(2, np.float32), async_op=True)
        z = np.ones(2, np.float32)
        comm.allreduce(z)
        w.wait()
        check("after async", np.all(z == size))
    finally:
        comm.close()
    return fails


@pytest.mark.parametrize("size", [2, 3])
def test_hot_path_matches_python_path(size):
    results = run_ranks(_hot_case, size, timeout=180)
    fails = [f"rank {r}: {f}" for r, fs in enumerate(results) for f in fs]
    assert not fails, "\n".join(fails)
