"""One rank of an island test, run under mpirun by tests/test_islands.py and test_bridges_mpi.py.

``python tests/islands_worker.py CASE``: CASE picks the islands (see ``BRIDGES``), then every
collective of the matrix is checked exactly against numpy (``mixed``: then the cached composed
route, ending with a revoke); a mismatch raises (non-zero exit, the test prints the output).
``route_dead`` (tests/test_islands_route.py, under ``mpirun --with-ft ulfm``): a peer dies during
cached-route calls. The last line of a rank that passed: ``RESULT rank=R checks=N islands=...``.
"""
import os
import sys

import ml_dtypes
import numpy as np

import hetccl
from hetccl import dtypes
from hetccl.ops import ReduceOp

BRIDGES = {
    "mixed": {0: "mpi", 1: "mpi"},             # island A = MPI ranks 0,1; island B = hetccl ranks 2,3
    "unequal": {0: "mpi", 1: "mpi", 2: "mpi"},  # 3 + 1
    "whole": "mpi",                            # the whole communicator is one MPI island
    "topofile": None,                          # the islands come from HETCCL_TOPO_FILE's bridge fields
}
INTS = ["int8", "uint8", "int32", "int64", "uint64"]
FLOATS = ["float16", "bfloat16", "float32", "float64"]
INT_OPS = list(ReduceOp)
FLOAT_OPS = [ReduceOp.SUM, ReduceOp.PROD, ReduceOp.MIN, ReduceOp.MAX, ReduceOp.AVG]
BOOL_OPS = [ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR, ReduceOp.MIN, ReduceOp.MAX]
SIZES = [0, 1, 7, 1001]
LARGE = (1 << 18) + 3


def np_dtype(name):
    return np.dtype(getattr(ml_dtypes, name)) if name == "bfloat16" else np.dtype(name)


def data(name, op, n, rank):
    """Small exact values: sums, products and quarter-averages are representable in every dtype."""
    i = np.arange(n)
    if name == "bool":
        return ((i + rank) % 3 == 0)
    v = ((i + rank) % 2 + 1) if op == ReduceOp.PROD else ((i * 7 + rank * 3) % 5 + 1)
    return v.astype(np_dtype(name))


def expected(name, op, n, size):
    rows = np.stack([data(name, op, n, r) for r in range(size)]) if n else np.zeros((size, 0), np_dtype(name))
    if name == "bool":
        f = {ReduceOp.BAND: np.logical_and, ReduceOp.MIN: np.logical_and, ReduceOp.BOR: np.logical_or,
             ReduceOp.MAX: np.logical_or, ReduceOp.BXOR: np.logical_xor}[op]
        return f.reduce(rows, axis=0) if n else rows[0]
    wide = rows.astype(np.float64 if name in FLOATS else np.int64)
    if op == ReduceOp.SUM:
        out = wide.sum(0)
    elif op == ReduceOp.PROD:
        out = wide.prod(0)
    elif op == ReduceOp.MIN:
        out = wide.min(0)
    elif op == ReduceOp.MAX:
        out = wide.max(0)
    elif op == ReduceOp.AVG:
        out = wide.sum(0) / size if name in FLOATS else wide.sum(0) // size   # values > 0: trunc == floor
    else:
        f = {ReduceOp.BAND: np.bitwise_and, ReduceOp.BOR: np.bitwise_or, ReduceOp.BXOR: np.bitwise_xor}[op]
        out = f.reduce(rows, axis=0) if n else rows[0]
    return np.asarray(out).astype(np_dtype(name))


class Checker:
    def __init__(self, comm):
        self.comm, self.n = comm, 0

    def same(self, got, want, what):
        self.n += 1
        if got.shape != want.shape or not np.array_equal(got.view(np.uint8), want.view(np.uint8)):
            bad = np.flatnonzero(got.view(np.uint8) != want.view(np.uint8))[:5] if got.shape == want.shape else []
            raise AssertionError(f"rank {self.comm.rank}: {what}: got {got[:8]} want {want[:8]} "
                                 f"(first differing bytes {list(bad)}, algorithm {self.comm.last_algorithm})")

    def allreduce(self, name, op, n, algorithm=None, form=None, in_place=True):
        c = self.comm
        x = data(name, op, n, c.rank)
        want = expected(name, op, n, c.size)
        what = f"allreduce {name} {op.name} n={n} algorithm={algorithm} form={form} in_place={in_place}"
        if form is not None:               # one composed form, bypassing the choice
            out = x if in_place else np.empty_like(x)
            c._islands.allreduce(x, out, dtypes.from_numpy(x.dtype), op, 60.0, None, form)
        else:
            out = c.allreduce(x, op, out=None if in_place else np.empty_like(x), algorithm=algorithm)
        self.same(out, want, what)

    def allgather(self, name, n, algorithm=None, in_place=False):
        c = self.comm
        blocks = [np.arange(n).astype(np_dtype(name)) + r if name != "bool" else (np.arange(n) + r) % 2 == 0
                  for r in range(c.size)]
        want = np.concatenate(blocks) if n else np.zeros(0, np_dtype(name))
        if in_place:
            out = np.zeros(c.size * n, np_dtype(name))
            out[c.rank * n:(c.rank + 1) * n] = blocks[c.rank]
            c.allgather(out, out=out, algorithm=algorithm)
        else:
            out = c.allgather(blocks[c.rank].copy(), algorithm=algorithm)
        self.same(out, want, f"allgather {name} n={n} algorithm={algorithm} in_place={in_place}")

    def broadcast(self, name, n, root, algorithm=None):
        c = self.comm
        want = (np.arange(n) % 7).astype(np_dtype(name))
        x = want.copy() if c.rank == root else np.zeros(n, np_dtype(name))
        c.broadcast(x, root=root, algorithm=algorithm)
        self.same(x, want, f"broadcast {name} n={n} root={root} algorithm={algorithm}")


def matrix(chk, forms=(), large=True):
    """Every op on every dtype and size, forced through the islands and chosen by the tuner
    (``large``: also 2^18+3 elements, more than the NCCL ABI double's 1 MiB slot)."""
    for name in INTS + FLOATS + ["bool"]:
        ops = BOOL_OPS if name == "bool" else INT_OPS if name in INTS else FLOAT_OPS
        for op in ops:
            for n in SIZES:
                chk.allreduce(name, op, n, algorithm="islands")
                if chk.comm.last_algorithm is None:
                    raise AssertionError("no algorithm recorded")
                for form in forms:
                    chk.allreduce(name, op, n, form=form)
            chk.allreduce(name, op, 1001, in_place=False, algorithm="islands")
            chk.allreduce(name, op, 1001)              # the tuner's choice
    for name, op in (("float32", ReduceOp.SUM), ("int32", ReduceOp.BXOR), ("bfloat16", ReduceOp.AVG),
                     ("float64", ReduceOp.AVG), ("int64", ReduceOp.AVG)) if large else ():
        chk.allreduce(name, op, LARGE, algorithm="islands")
        for form in forms:
            chk.allreduce(name, op, LARGE, form=form)
    for name in ("int32", "bfloat16", "float64", "bool"):
        for n in (0, 1, 5, 1001):
            chk.allgather(name, n, algorithm="islands")
            chk.allgather(name, n, algorithm="islands", in_place=True)
        chk.allgather(name, 1001)
    for root in range(chk.comm.size):
        for n in (0, 1, 1001) + ((LARGE,) if large else ()):
            chk.broadcast("float32", n, root, algorithm="islands")
        chk.broadcast("bfloat16", 33, root)


def whole_extra(chk):
    """One MPI island: supported calls delegate to MPI (same bits as calling MPI directly); the
    others run hetccl's own algorithms."""
    from mpi4py import MPI
    c = chk.comm
    rng = np.random.default_rng(c.rank)
    x = rng.standard_normal(4099).astype(np.float32)
    direct = np.empty_like(x)
    MPI.COMM_WORLD.Allreduce(x, direct, MPI.SUM)
    got = c.allreduce(x.copy(), algorithm="islands")
    assert c.last_algorithm == "islands", c.last_algorithm
    chk.same(got, direct, "whole-island allreduce against mpi4py's own")
    for name, op in (("bfloat16", ReduceOp.SUM), ("float16", ReduceOp.MAX), ("float32", ReduceOp.AVG)):
        chk.allreduce(name, op, 1001, algorithm="islands")
        native = name == "float32"         # AVG = MPI SUM + one division; MPI has no 16-bit floats
        if (c.last_algorithm == "islands") != native:
            raise AssertionError(f"{name} {op.name}: ran {c.last_algorithm}")
    import array
    a = array.array("q", [c.rank + 1] * 5)                 # buffer-protocol objects on the hot path
    c.allreduce(a, algorithm="islands")
    assert list(a) == [c.size * (c.size + 1) // 2] * 5 and c.last_algorithm == "islands", (list(a), c.last_algorithm)
    b = bytearray([1 << c.rank] * 3)
    c.allreduce(b, ReduceOp.BOR, algorithm="islands")
    assert list(b) == [(1 << c.size) - 1] * 3, list(b)
    chk.n += 2
    try:
        c.allreduce(np.ones(4, np.float32), ReduceOp.BAND)
    except hetccl.InvalidUsage as e:
        assert "bitwise" in str(e), e
    else:
        raise AssertionError("BAND on float32 did not raise InvalidUsage")


def latency_path(chk):
    """A shape the islands run flat for every dtype and op (a forced flat algorithm) leaves the
    router after its first call (the latency path takes it, for any dtype of that size); a call
    forced through the islands is composed every time (its later calls by its cached route)."""
    c = chk.comm
    routed, seen = [], []
    route = c._route
    c._route = lambda call: (routed.append(call.coll), seen.append((call.dtype, int(call.op))), route(call))[2]
    try:
        for name, op in (("float32", ReduceOp.SUM), ("float32", ReduceOp.MAX), ("int32", ReduceOp.SUM),
                         ("float32", ReduceOp.SUM)):
            chk.allreduce(name, op, 3, algorithm="ring")         # 12 bytes each
        if routed != ["allreduce"]:
            raise AssertionError(f"flat ring calls of one size took the router {len(routed)} times: {seen}")
        for _ in range(2):
            chk.allreduce("float32", ReduceOp.SUM, 3, algorithm="islands")
            if c.last_algorithm != "islands":
                raise AssertionError(f"a call forced through the islands ran {c.last_algorithm}")
        if routed != ["allreduce"] * 2:       # the second: the shape's cached composed route
            raise AssertionError(f"calls forced through the islands: {len(routed) - 1} of 2 routed (1 wanted)")
    finally:
        del c._route


def _counting_router(c):
    """Count the calls that go through the router (the cached route skips it): a list, appended
    to per routed call; ``del c._route`` restores it."""
    routed = []
    route = c._route
    c._route = lambda call: (routed.append(call.coll), route(call))[1]
    return routed


ROUTE_SHAPES = [("float32", ReduceOp.SUM, 1 << 14, True), ("float32", ReduceOp.MAX, 1001, False),
                ("int32", ReduceOp.BXOR, 1001, True), ("bfloat16", ReduceOp.AVG, 777, False),
                ("bool", ReduceOp.BOR, 33, True), ("float64", ReduceOp.AVG, (1 << 15) + 3, True)]


def cached_route(chk):
    """The islands' cached composed route (collectives/island_route.py): each shape's second call
    skips the router and is exact; both forms' routes exact (called directly, with a tail, with
the bridge's ``bind`` and without); a
    forced flat algorithm, a new cost model and a revoke are not served a cached route."""
    import dataclasses

    from hetccl.collectives import island_route
    c = chk.comm
    routed = _counting_router(c)
    try:
        for name, op, n, in_place in ROUTE_SHAPES:
            for k in range(3):
                chk.allreduce(name, op, n, algorithm="islands", in_place=in_place)
                if c.last_algorithm != "islands":
                    raise AssertionError(f"{name} {op.name} n={n}: ran {c.last_algorithm}")
            if routed.count("allreduce") != 1:     # (the first call's splits route allgathers)
                raise AssertionError(f"{name} {op.name} n={n}: {routed.count('allreduce')} of 3 calls "
                                     f"routed (cached: 1)")
            routed.clear()
        chk.allreduce("float32", ReduceOp.SUM, 1 << 14, algorithm="ring", in_place=True)   # forced flat
        if c.last_algorithm != "ring":
            raise AssertionError(f"algorithm='ring' after a cached islands shape ran {c.last_algorithm}")
        c._tuner.model = dataclasses.replace(c._tuner.model)            # a new cost model: decided anew
        routed.clear()
        chk.allreduce("float32", ReduceOp.SUM, 1 << 14, algorithm="islands", in_place=True)
        if routed.count("allreduce") != 1:
            raise AssertionError("a cached route outlived the cost model it was decided on")
    finally:
        del c._route
    plan = c._islands
    for form, bind in (("rails", True), ("leaders", True), ("rails", False), ("leaders", False)):
        if not bind and plan.bridge is not None:
            plan.bridge.bind = None        # the steps of a bridge without bind (island_route._fixed)
        for name, op, n, in_place in ROUTE_SHAPES:
            x = data(name, op, n, c.rank)
            out = x if in_place else np.empty_like(x)
            run = island_route.route(plan, "allreduce", x.nbytes, x.dtype, dtypes.from_numpy(x.dtype), op, form, 60.0)
            for _ in range(2):
                y = data(name, op, n, c.rank) if in_place else x
                run(y, y if in_place else out)
                chk.same(y if in_place else out, expected(name, op, n, c.size),
                         f"route {form} {name} {op.name} n={n} in_place={in_place} bind={bind}")
        if not bind and plan.bridge is not None:
            del plan.bridge.bind
    shape = ("float32", ReduceOp.SUM, 1 << 14)
    chk.allreduce(*shape, algorithm="islands", in_place=True)
    for _ in range(2):             # revoked: the cached shape raises (rank 0 never joins the first)
        try:
            c.barrier()
            if c.rank == 0:
                c.revoke()
            chk.allreduce(*shape, algorithm="islands", in_place=True)
        except hetccl.CommRevoked:
            pass
        else:
            raise AssertionError("a cached route ran on a revoked communicator")
    if c._island_routes:
        raise AssertionError("the revoked communicator kept its cached routes")
    chk.n += 1


def dead_peer(comm):
    """Rank 3 dies (SIGKILL, under ``mpirun --with-ft ulfm``) while the others run a cached
    composed route: each survivor's call raises a hetccl error, well before the timeout."""
    import signal
    import time
    x = np.ones(1 << 18, np.float32)
    for _ in range(3):
        comm.allreduce(x, algorithm="islands")
    assert comm._island_routes, "the shape was not cached"
    comm.barrier()
    if comm.rank == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    t0 = time.monotonic()
    try:
        for _ in range(1000):
            comm.allreduce(x, algorithm="islands")
        outcome = "none"
    except hetccl.HetcclError as e:
        outcome = type(e).__name__
        sys.stderr.write(f"rank {comm.rank}: {outcome}: {e}\n")
    sys.stdout.write(f"RESULT rank={comm.rank} outcome={outcome} took={time.monotonic() - t0:.2f}\n")
    sys.stdout.flush()
    comm.close(timeout=5)             # (unlinks this rank's segments)
    os._exit(0)                       # not MPI_Finalize: it may wait for the dead process


def main(case):
    if case == "route_dead":
        return dead_peer(hetccl.init(timeout=30, bridges=BRIDGES["mixed"]))
    comm = hetccl.init(timeout=120, bridges=BRIDGES[case])
    chk = Checker(comm)
    if comm._islands is None:
        raise AssertionError(f"no islands formed for case {case}")
    text = comm.explain("allreduce", 1 << 20)
    assert "islands (" in text and "(measured)" in text, text
    equal = comm._islands.equal and not comm._islands.whole
    matrix(chk, forms=("rails", "leaders") if equal else ())
    if case == "whole":
        whole_extra(chk)
    elif equal:
        latency_path(chk)
    w = comm.allreduce(np.full(5, comm.rank, np.int32), ReduceOp.SUM, algorithm="islands", async_op=True)
    assert list(w.wait()) == [sum(range(comm.size))] * 5                 # through the progress thread
    g = comm.allgather(np.full(2, comm.rank, np.int16), algorithm="islands", async_op=True).wait()
    assert list(g) == [r for r in range(comm.size) for _ in range(2)], g
    chk.n += 2
    islands = ";".join(f"{i.kind}:{','.join(map(str, i.ranks))}" for i in comm._islands.islands)
    sub = comm.split(comm.rank % 2)                  # a user split of a bridged communicator works too
    y = sub.allreduce(np.full(3, comm.rank, np.int64), algorithm="islands")
    assert list(y) == [sum(r for r in range(comm.size) if r % 2 == comm.rank % 2)] * 3, y
    sub.close()
    if case == "mixed":
        cached_route(chk)              # last: it ends with a revoke
    comm.close()
    sys.stdout.write(f"RESULT rank={comm.rank} checks={chk.n} islands={islands}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    main(sys.argv[1])
