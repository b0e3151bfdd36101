"""Every collective x every registered algorithm against numpy, and mismatches across ranks.

One spawned group per world size (1, 2, 3, 4, 5, 8) runs, inside every rank:

* a deterministic matrix: collective x algorithm x dtype x op x count (0, 1, a prime, one not
  divisible by N, and above 4 MiB for the small world sizes), alternating in place / out of place
  and the roots;
* shapes drawn by hypothesis (counts, reduce_scatterv/alltoallv splits, roots, algorithms, dtypes,
  ops). Hypothesis runs in every rank with ``derandomize=True`` and no shrinking, so every rank
  draws the same cases in the same order and issues the same collectives.

Each rank builds all N inputs from the case seed, computes the reference itself (the rules of
tests/test_collectives.py: exact for integers, MIN/MAX and data movement, within N roundings for
floating sums and products) and checks its own output; outputs are guarded views (no overruns).
allreduce results must be bit-identical on every rank: the parent compares the ranks' digests.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.launcher import run_ranks, run_ranks_expect_failure
from tests.test_collectives import (BITWISE, FLOATS, FP8, INTS, compare, digest, guarded,
                                    guards_intact, make_base, np_dtype, ops_for, rank_input,
                                    reference)

DTYPES = INTS + FLOATS + FP8 + ["bool"]
PRIME = 13
BIG_BYTES = (4 << 20) + 4096          # above a 4 MiB shared-memory FIFO


def algorithms(collective: str, size: int) -> list[str]:
    from hetccl.collectives import registry
    return [a.name for a in registry.for_collective(collective) if a.supports(1 << 20, size)]


def counts_for(size: int) -> list[int]:
    return [0, 1, PRIME, 7 * size + 1]


def split(n: int, size: int) -> list[int]:
    """n elements in size uneven blocks (the first n % size get one more)."""
    return [n // size + (1 if b < n % size else 0) for b in range(size)]


# ------------------------------------------------------------------------------------------------
# One case of each collective, run by every rank (None: passed, else what went wrong)
# ------------------------------------------------------------------------------------------------
class Case:
    """Per-rank context: the communicator, and what every case needs to build its inputs."""

    def __init__(self, comm, hetccl):
        self.comm, self.hetccl = comm, hetccl
        self.N, self.r = comm.size, comm.rank
        self.digests = []
        self.seed = 0

    def inputs(self, dt, op, n):
        self.seed += 1
        base = make_base(dt, op, n, self.N, self.seed)
        return [rank_input(base, k, n).copy() for k in range(self.N)]

    def movement(self, dt, n):
        """Random bytes of dtype dt for every rank (NaNs included: results are compared as bytes)."""
        self.seed += 1
        d = np_dtype(dt)
        rng = np.random.default_rng([self.seed, n, self.N, 11])
        raw = rng.integers(0, 256, (self.N, n * d.itemsize), dtype=np.uint8)
        if dt == "bool":
            raw &= 1
        return [raw[k].view(d) for k in range(self.N)]

    def op(self, name):
        return getattr(self.hetccl, name)

    def allreduce(self, algo, dt, op, n, inplace):
        ins = self.inputs(dt, op, n)
        big, out = guarded(n, np_dtype(dt))
        if inplace:
            out[:] = ins[self.r]
            self.comm.allreduce(out, self.op(op), algorithm=algo)
        else:
            src = ins[self.r].copy()
            self.comm.allreduce(src, self.op(op), out=out, algorithm=algo)
            if src.tobytes() != ins[self.r].tobytes():
                return "the input was modified by an out-of-place call"
        self.digests.append(digest(out))
        return self._check(big, out, n, *reference(ins, dt, op), dt)

    def reduce_scatter(self, algo, dt, op, counts):
        total = sum(counts)
        ins = self.inputs(dt, op, total)
        big, out = guarded(counts[self.r], np_dtype(dt))
        equal = len(set(counts)) == 1
        self.comm.reduce_scatter(ins[self.r], out, self.op(op), counts=None if equal else counts,
                                 algorithm=algo)
        exp, tol = reference(ins, dt, op)
        lo = sum(counts[:self.r])
        hi = lo + counts[self.r]
        return self._check(big, out, counts[self.r], exp[lo:hi], None if tol is None else tol[lo:hi], dt)

    def reduce(self, algo, dt, op, n, root):
        ins = self.inputs(dt, op, n)
        big, out = guarded(n, np_dtype(dt))
        got = self.comm.reduce(ins[self.r], root, self.op(op), out=out if self.r == root else None,
                               algorithm=algo)
        if self.r != root:
            return None if got is None else f"non-root rank got {type(got).__name__}, not None"
        return self._check(big, out, n, *reference(ins, dt, op), dt)

    def allgather(self, algo, dt, n, inplace):
        ins = self.movement(dt, n)
        big, out = guarded(self.N * n, np_dtype(dt))
        if inplace:
            out[self.r * n:(self.r + 1) * n] = ins[self.r]
            self.comm.allgather(out, out, algorithm=algo)
        else:
            self.comm.allgather(ins[self.r], out, algorithm=algo)
        return self._same_bytes(big, out, self.N * n, np.concatenate(ins))

    def alltoall(self, algo, dt, n, counts=None):
        """Equal blocks of n, or (alltoallv) counts[s][d] elements from rank s to rank d."""
        N, r = self.N, self.r
        cnt = counts or [[n] * N for _ in range(N)]
        ins = self.movement(dt, max(sum(row) for row in cnt))
        mine = ins[r][:sum(cnt[r])]
        rc = [cnt[s][r] for s in range(N)]
        big, out = guarded(sum(rc), np_dtype(dt))
        kw = {} if counts is None else {"send_counts": cnt[r], "recv_counts": rc}
        self.comm.alltoall(mine, out, algorithm=algo, **kw)
        exp = [ins[s][sum(cnt[s][:r]):sum(cnt[s][:r + 1])] for s in range(N)]
        return self._same_bytes(big, out, sum(rc), np.concatenate(exp))

    def broadcast(self, algo, dt, n, root):
        ins = self.movement(dt, n)
        big, out = guarded(n, np_dtype(dt))
        out[:] = ins[self.r]
        self.comm.broadcast(out, root, algorithm=algo)
        return self._same_bytes(big, out, n, ins[root])

    def _check(self, big, out, n, exp, tol, dt):
        if not guards_intact(big, n):
            return "wrote outside the output (guard bytes changed)"
        return compare(out, dt, exp, tol)

    def _same_bytes(self, big, out, n, exp):
        if not guards_intact(big, n):
            return "wrote outside the output (guard bytes changed)"
        if out.tobytes() != exp.tobytes():
            bad = np.flatnonzero(out.view(np.uint8) != exp.view(np.uint8))
            return f"{len(bad)} wrong byte(s), first at byte {bad[0]}"
        return None


# ------------------------------------------------------------------------------------------------
# The matrix and the hypothesis-drawn shapes
# ------------------------------------------------------------------------------------------------
def matrix(N: int):
    """[(collective, algorithm, args...)] — the same list on every rank."""
    plan = []
    k = 0
    for n in counts_for(N):
        for dt in DTYPES:
            for op in ops_for(dt):
                for a in algorithms("allreduce", N):
                    plan.append(("allreduce", a, dt, op, n, k % 2 == 0))
                    k += 1
                for a in algorithms("reduce_scatter", N):
                    plan.append(("reduce_scatter", a, dt, op, [n] * N if k % 2 else split(n, N)))
                    k += 1
                for a in algorithms("reduce", N):
                    plan.append(("reduce", a, dt, op, n, k % N))
                    k += 1
            for a in algorithms("allgather", N):
                plan.append(("allgather", a, dt, n, k % 2 == 0))
                k += 1
            for a in algorithms("alltoall", N):
                plan.append(("alltoall", a, dt, n))
            for a in algorithms("broadcast", N):
                plan.append(("broadcast", a, dt, n, k % N))
                k += 1
    if N <= 3:                               # above a FIFO: only where ranks have a core each
        f32, i64 = BIG_BYTES // 4 + 3, BIG_BYTES // 8 + 1
        for a in algorithms("allreduce", N):
            plan += [("allreduce", a, "float32", "SUM", f32, True), ("allreduce", a, "int64", "BXOR", i64, False)]
        for a in algorithms("reduce_scatter", N):
            plan.append(("reduce_scatter", a, "float32", "AVG", split(f32, N)))
        for a in algorithms("reduce", N):
            plan.append(("reduce", a, "float64", "MAX", i64, N - 1))
        for a in algorithms("allgather", N):
            plan.append(("allgather", a, "float32", f32 // N, False))
        for a in algorithms("alltoall", N):
            plan.append(("alltoall", a, "uint8", BIG_BYTES // N + 1))
        for a in algorithms("broadcast", N):
            plan.append(("broadcast", a, "int32", f32, 0))
    return plan


def _run(case, item):
    coll, algo, *args = item
    return getattr(case, coll)(algo, *args)


def _hypothesis_cases(case, examples):
    """Shapes drawn by hypothesis, identically on every rank (derandomized, no shrinking)."""
    from hypothesis import HealthCheck, Phase, given, settings, strategies as st

    N = case.N
    colls = ["allreduce", "reduce_scatter", "reduce", "allgather", "alltoall", "alltoallv", "broadcast"]
    count = st.one_of(st.integers(0, 40), st.integers(41, 70_000), st.sampled_from([PRIME, 7 * N + 1]))
    seen = []

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data):
        coll = data.draw(st.sampled_from(colls))
        algo = data.draw(st.sampled_from(algorithms("alltoall" if coll == "alltoallv" else coll, N)))
        dt = data.draw(st.sampled_from(DTYPES))
        op = data.draw(st.sampled_from(ops_for(dt)))
        n = data.draw(count)
        root = data.draw(st.integers(0, N - 1))
        if coll == "allreduce":
            item = (coll, algo, dt, op, n, data.draw(st.booleans()))
        elif coll == "reduce_scatter":
            item = (coll, algo, dt, op, data.draw(st.lists(st.integers(0, 3000), min_size=N, max_size=N)))
        elif coll == "reduce":
            item = (coll, algo, dt, op, n, root)
        elif coll == "allgather":
            item = (coll, algo, dt, n // N, data.draw(st.booleans()))
        elif coll == "alltoall":
            item = (coll, algo, dt, n // N)
        elif coll == "alltoallv":
            cnt = data.draw(st.lists(st.lists(st.integers(0, 500), min_size=N, max_size=N),
                                     min_size=N, max_size=N))
            item = ("alltoall", "pairwise", dt, 0, cnt)
        else:
            item = (coll, algo, dt, n, root)
        bad = _run(case, item)
        seen.append(item[:2])
        if _anyone(case, bad is not None):    # all ranks stop together (a reduce: only root checks)
            raise AssertionError(f"{item if coll != 'alltoallv' else item[:3]}: "
                                 f"{bad or 'failed on another rank'}")

    one()
    return seen


def _anyone(case, flag: bool) -> bool:
    """Whether any rank raised the flag (the ranks then all take the same branch)."""
    return bool(case.comm.allreduce(np.array([flag], np.int32), case.hetccl.MAX)[0])


def _matrix_rank(rank, size, examples):
    import hetccl

    comm = hetccl.init(timeout=120)
    case = Case(comm, hetccl)
    failures, done = [], set()
    try:
        for item in matrix(size):            # no early exit: every rank issues every collective
            bad = _run(case, item)
            done.add(item[:2])
            if bad and len(failures) < 30:
                failures.append(f"{item[:4]} n/counts={item[4] if len(item) > 4 else ''}: {bad}")
        if not _anyone(case, bool(failures)):
            done.update(_hypothesis_cases(case, examples))
        return {"failures": failures, "done": sorted(done), "digests": case.digests}
    finally:
        comm.close()


WORLDS = [(1, "shm", 20), (2, "shm", 60), (3, "shm", 60), (4, "tcp", 30), (5, "shm", 40), (8, "shm", 25)]


@pytest.mark.parametrize("size,transport,examples", WORLDS, ids=[f"{n}ranks-{t}" for n, t, _ in WORLDS])
def test_every_algorithm_against_numpy(size, transport, examples):
    res = run_ranks(_matrix_rank, size, examples, timeout=300, transports=transport)
    for r, s in enumerate(res):
        assert not s["failures"], f"rank {r}:\n" + "\n".join(s["failures"])
    want = {(c, a) for c in ("allreduce", "reduce_scatter", "reduce", "allgather", "alltoall", "broadcast")
            for a in algorithms(c, size)}
    assert want <= set(map(tuple, res[0]["done"])), want - set(map(tuple, res[0]["done"]))
    for r, s in enumerate(res[1:], 1):           # allreduce: bit-identical on every rank
        assert s["digests"] == res[0]["digests"], f"rank {r}'s allreduce results differ from rank 0's"


# ------------------------------------------------------------------------------------------------
# Mismatched collectives across ranks, with the new algorithms on either side
# ------------------------------------------------------------------------------------------------
def _mismatch_rank(rank, size, mine, others, limit):
    """Rank 0 calls `mine`, the others `others` ((collective, algorithm)); every rank must raise."""
    import time

    import hetccl

    comm = hetccl.init(timeout=30)
    x = np.ones(4099, np.float32)
    coll, algo = mine if rank == 0 else others
    t = time.monotonic()
    try:
        if coll == "allreduce":
            comm.allreduce(x, algorithm=algo, timeout=limit)
        elif coll == "broadcast":
            comm.broadcast(x, 0, algorithm=algo, timeout=limit)  # rank 0 (the odd one out) is root
        elif coll == "allgather":
            comm.allgather(x, algorithm=algo, timeout=limit)
        elif coll == "reduce_scatter":
            comm.reduce_scatter(np.ones(4099 * size, np.float32), algorithm=algo, timeout=limit)
        elif coll == "alltoall":
            comm.alltoall(np.ones(4099 * size, np.float32), algorithm=algo, timeout=limit)
        elif coll == "reduce":
            comm.reduce(x, 0, algorithm=algo, timeout=limit)
        exc, msg = None, ""
    except Exception as e:  # noqa: BLE001 - reported to the parent
        exc, msg = type(e).__name__, str(e)
    took = time.monotonic() - t
    try:
        comm.allreduce(np.ones(4, np.float32))
        after = None, ""
    except Exception as e:  # noqa: BLE001
        after = type(e).__name__, str(e)
    comm.close(timeout=3.0)
    return exc, msg, took, after


MISMATCHES = [
    (4, ("allreduce", "double_binary_tree"), ("allgather", "bruck")),
    (5, ("broadcast", "chain"), ("allreduce", "double_binary_tree")),
    (3, ("allreduce", "rabenseifner"), ("allgather", "bruck")),
    (4, ("reduce_scatter", "recursive_halving"), ("alltoall", "bruck")),
    (3, ("reduce", "reduce_scatter_gather"), ("allreduce", "double_binary_tree")),
    (3, ("allreduce", "rabenseifner"), ("allreduce", "double_binary_tree")),   # same call, other schedule
    (4, ("alltoall", "bruck"), ("alltoall", "pairwise")),
]


@pytest.mark.parametrize("size,mine,others", MISMATCHES,
                         ids=[f"{n}-{a[1]}-vs-{b[1]}" for n, a, b in MISMATCHES])
def test_mismatched_collectives_fail_on_every_rank(size, mine, others):
    res = run_ranks(_mismatch_rank, size, mine, others, 20.0, timeout=90)
    for r, (exc, msg, took, after) in enumerate(res):
        assert took < 10.0, f"rank {r} took {took:.1f}s"
        if exc is None:      # a call that only sends (a broadcast root) cannot see it: the next call does
            assert mine[0] == "broadcast" and r == 0, f"rank {r} did not notice the mismatch"
            assert after[0] in ("InvalidUsage", "PeerLostError") and "mismatch" in after[1], (r, after)
            continue
        assert exc in ("InvalidUsage", "PeerLostError"), f"rank {r}: {exc}: {msg}"
        assert "mismatch" in msg, f"rank {r} did not say what went wrong: {msg}"
        assert after[0] == "CommAborted", f"rank {r}: the next call gave {after}"
    direct = [m for exc, m, _, _ in res if exc == "InvalidUsage"]
    assert any("every rank must call the same" in m for m in direct), direct
    if mine[0] == others[0]:
        assert any("algorithm" in m for m in direct), direct


def test_mismatch_where_every_rank_waits_ends_at_the_timeout():
    """Rank 0's double-tree allreduce first waits for rank 2, which (broadcast from root 0) waits
    for rank 0: no message is ever sent, so no header can reveal the mismatch. The contract is
    then the timeout: rank 0 raises HetcclTimeout and the others learn of it, none hangs."""
    limit = 3.0
    res = run_ranks(_mismatch_rank, 4, ("allreduce", "double_binary_tree"),
                    ("broadcast", "scatter_allgather"), limit, timeout=90)
    for r, (exc, msg, took, after) in enumerate(res):
        assert exc in ("HetcclTimeout", "PeerLostError"), f"rank {r}: {exc}: {msg}"
        assert "timed out" in msg, f"rank {r}: {msg}"
        assert took < limit + 8.0, f"rank {r} took {took:.1f}s"
        assert after[0] == "CommAborted", f"rank {r}: the next call gave {after}"
    assert any(exc == "HetcclTimeout" for exc, *_ in res)


# ------------------------------------------------------------------------------------------------
# Single-process checks of the registry
# ------------------------------------------------------------------------------------------------
def test_registry_families_costs_and_aliases():
    from hetccl.collectives import registry
    from hetccl.collectives.cost_model import LinkCost

    c = LinkCost(1e-6, 1 / 5e9, 1 / 8e9)
    names = {(a.collective, a.name) for a in registry.ALGORITHMS}
    for want in [("allreduce", "rabenseifner"), ("allreduce", "double_binary_tree"),
                 ("allgather", "bruck"), ("reduce_scatter", "recursive_halving"),
                 ("reduce", "reduce_scatter_gather"), ("alltoall", "bruck")]:
        assert want in names
    for a in registry.ALGORITHMS:
        if a.code < 0:          # composed (hierarchical.py): priced by the topology planner, not here
            assert a.cost(1 << 20, 4, c) == float("inf"), a.name
            continue
        for p in (1, 2, 3, 4, 5, 8, 64):
            for n in (0, 8, 1 << 20, 256 << 20):
                t = a.cost(n, p, c)
                assert t >= 0 and (p > 1 or t == 0), (a.name, a.collective, n, p, t)
        if a.collective not in ("barrier",):
            assert a.cost(1 << 26, 4, c) > a.cost(1 << 10, 4, c), (a.collective, a.name)
    for alias, name in registry.ALIASES.items():
        assert any(a.name == name for a in registry.ALGORITHMS), alias
    # the log-step algorithms win small messages, the bandwidth ones big messages, at 8 ranks
    best = lambda coll, n: min([a for a in registry.for_collective(coll) if a.code >= 0], key=lambda a: a.cost(n, 8, c)).name  # noqa: E731
    assert best("allreduce", 64) in ("recursive_doubling", "rabenseifner", "double_binary_tree")
    assert best("allreduce", 256 << 20) != "recursive_doubling"
    # the pairwise window overlaps 4 exchanges: 2 latencies at 8 ranks against Bruck's 3
    assert best("alltoall", 64) == "pairwise" and best("alltoall", 64 << 20) == "pairwise"
    assert min([a for a in registry.for_collective("alltoall") if a.code >= 0],
               key=lambda a: a.cost(64, 64, c)).name == "bruck"
    assert best("reduce_scatter", 64) == "recursive_halving"
    assert best("allgather", 8 << 20) == "ring"
