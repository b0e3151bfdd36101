"""Symmetric allocations (comm.alloc / comm.free) and the single-copy collectives over them.

Every dtype x op of tests/test_collectives.py's references at 1-4 ranks, sizes 0, 1, fewer than
the ranks, prime, non-divisible and several MiB, in place and out of place, inside views at odd
offsets of two allocations (so peers' descriptors are translated, not assumed equal); the fall
back to the ordinary schedules when a buffer is not symmetric; usage errors on every rank instead
of hangs; and no /dev/shm names or mappings left behind.
"""
import os

import numpy as np
import pytest

from tests.launcher import run_ranks, run_ranks_expect_failure
from tests.test_collectives import (FLOATS, FP8, INTS, compare, digest, make_base, np_dtype, ops_for,
                                    rank_input, reference)

PREFIX = "hetccl-sym-"
COUNTS = [0, 1, 3, 7, 1021, 4099, (3 << 20) // 4 + 5]      # 4099: prime, not divisible by 2, 3, 4
GUARD = 16                                                  # elements on each side of every view


def _sym_names(pids=None):
    names = [f for f in os.listdir("/dev/shm") if f.startswith(PREFIX)]
    if pids is not None:
        names = [f for f in names if int(f[len(PREFIX):].split("-")[0]) in pids]
    return names


def _view(pool, n, dt, salt):
    """A view of n elements of dtype dt at an odd offset of the pool (a uint8 allocation), with
    guard bytes around it."""
    d = np_dtype(dt)
    off = (GUARD + salt % 5) * d.itemsize
    raw = pool[:off + (n + GUARD) * d.itemsize]
    raw[:] = 0xA5
    return raw[off:off + n * d.itemsize].view(d), raw, off, off + n * d.itemsize


def _guards_ok(raw, a, b):
    return bool((raw[:a] == 0xA5).all() and (raw[b:] == 0xA5).all())


def _plan(size):
    """[(collective, dtype, op, count, mode)]."""
    plan = []
    for dt in INTS + FLOATS + FP8 + ["bool"]:
        for op in ops_for(dt):
            for i, n in enumerate(COUNTS[:-1]):
                plan.append(("allreduce", dt, op, n, "inplace" if i % 2 else "out"))
    for dt, op in [("float32", "SUM"), ("bfloat16", "AVG"), ("int64", "BXOR")]:
        plan.append(("allreduce", dt, op, COUNTS[-1], "out"))
        plan.append(("allreduce", dt, op, COUNTS[-1], "inplace"))
    for dt in ["int8", "float16", "bfloat16", "float32", "float64", "bool", "float8_e5m2"]:
        for i, n in enumerate(COUNTS):
            plan.append(("allgather", dt, None, n // size + (i % 2), "inplace" if i % 2 else "out"))
            plan.append(("broadcast", dt, None, n, str(i % size)))
    for dt, op in [("float32", "SUM"), ("int32", "MAX"), ("float16", "AVG"), ("uint8", "BOR")]:
        for n in COUNTS:
            plan.append(("reduce_scatter", dt, op, n // size + 1, "out"))
    for dt in ["int16", "float64"]:
        for n in COUNTS:
            plan.append(("alltoall", dt, None, n // size + 1, "out"))
    return plan


def _run_case(comm, hetccl, pools, case, ci):
    """Run one case (forced onto the symmetric schedules, which small calls skip by default);
    returns (error text or None, digest)."""
    coll, dt, op, n, mode = case
    N, r = comm.size, comm.rank
    alg = "symmetric" if N > 1 else None
    d = np_dtype(dt)
    a, b = pools
    base = make_base(dt, op or "MAX", n * N, N, ci)
    inputs = [rank_input(base, k, n * N) for k in range(N)]     # n*N elements per rank
    if coll == "allreduce":
        x, xr, x0, x1 = _view(a, n, dt, ci)
        x[:] = inputs[r][:n]
        if mode == "inplace":
            comm.allreduce(x, getattr(hetccl, op), algorithm=alg)
            out, raw, lo, hi = x, xr, x0, x1
        else:
            out, raw, lo, hi = _view(b, n, dt, ci + 1)
            comm.allreduce(x, getattr(hetccl, op), out=out, algorithm=alg)
            if x.tobytes() != inputs[r][:n].tobytes():
                return "the input was modified", None
        expected, tol = reference([i[:n] for i in inputs], dt, op)
    elif coll == "allgather":
        out, raw, lo, hi = _view(b, n * N, dt, ci)
        if mode == "inplace":
            out[r * n:(r + 1) * n] = inputs[r][:n]
            comm.allgather(out, out=out, algorithm=alg)
        else:
            x, xr, _, _ = _view(a, n, dt, ci)
            x[:] = inputs[r][:n]
            comm.allgather(x, out=out, algorithm=alg)
        expected, tol = np.concatenate([i[:n] for i in inputs]), None
    elif coll == "broadcast":
        root = int(mode)
        out, raw, lo, hi = _view(a, n, dt, ci)
        out[:] = inputs[r][:n]
        comm.broadcast(out, root=root, algorithm=alg)
        expected, tol = inputs[root][:n], None
    elif coll == "reduce_scatter":
        x, xr, _, _ = _view(a, n * N, dt, ci)
        x[:] = inputs[r]
        out, raw, lo, hi = _view(b, n, dt, ci + 1)
        comm.reduce_scatter(x, out=out, op=getattr(hetccl, op), algorithm=alg)
        expected, tol = reference([i[r * n:(r + 1) * n] for i in inputs], dt, op)
    else:                                                          # alltoall
        x, xr, _, _ = _view(a, n * N, dt, ci)
        x[:] = inputs[r]
        out, raw, lo, hi = _view(b, n * N, dt, ci + 1)
        comm.alltoall(x, out=out, algorithm=alg)
        expected, tol = np.concatenate([inputs[q][r * n:(r + 1) * n] for q in range(N)]), None
    want_algo = "symmetric" if N > 1 else None
    if want_algo and comm.last_algorithm != want_algo:
        return f"last_algorithm {comm.last_algorithm!r}", None
    if not _guards_ok(raw, lo, hi):
        return "wrote outside the output view", None
    if tol is None and coll != "allreduce":
        if out.tobytes() != np.asarray(expected, dtype=d).tobytes():
            return "wrong result", None
    else:
        bad = compare(out, dt, expected, tol)
        if bad:
            return bad, None
    return None, digest(out) if coll in ("allreduce", "allgather", "broadcast") else None   # same everywhere


def _matrix_rank(rank, size):
    import hetccl
    comm = hetccl.init(timeout=120)
    fails, digests = [], []
    try:
        cap = 8 * ((3 << 20) + 4096)
        pools = (comm.alloc(cap, np.uint8), comm.alloc(cap, np.uint8))
        assert comm.is_symmetric(pools[0]) == (size > 1)
        for ci, case in enumerate(_plan(size)):
            try:
                err, dg = _run_case(comm, hetccl, pools, case, ci)
            except Exception as e:  # noqa: BLE001 - reported with the case
                err, dg = f"{type(e).__name__}: {e}", None
            if err:
                fails.append(f"{case}: {err}")
                if len(fails) > 30:
                    break
            digests.append(dg)
        return fails, digests
    finally:
        comm.close()


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_every_dtype_op_size(size):
    results = run_ranks(_matrix_rank, size, timeout=420, transports="c2c" if size > 1 else None)
    for r, (fails, _) in enumerate(results):
        assert not fails, f"rank {r}: {len(fails)} failures:\n" + "\n".join(fails[:30])
    for r, (_, dg) in enumerate(results[1:], 1):
        assert dg == results[0][1], f"rank {r}'s results differ from rank 0's"



def _streaming_rank(rank, size):
    """Out-of-place allreduce and allgather with the streaming threshold lowered to 64 KiB, so that
    the dual-output streaming kernels (heads, 256-byte blocks, tails at odd offsets) run at sizes
    the matrix keeps below the default 16 MiB threshold."""
    import hetccl
    comm = hetccl.init(timeout=120)
    try:
        comm._engine.nt_threshold = 64 << 10
        pools = (comm.alloc(8 << 20, np.uint8), comm.alloc(8 << 20, np.uint8))
        fails = []
        cases = [("allreduce", dt, op, n, "out") for dt, op in
                 [("float32", "SUM"), ("bfloat16", "MAX"), ("int64", "BXOR"), ("float16", "PROD"),
                  ("uint8", "MIN"), ("float8_e4m3fn", "SUM")] for n in (4099, (1 << 20) // 4 + 3)]
        cases += [("allgather", dt, None, n, mode) for dt in ("float32", "int8")
                  for n in (4099, (1 << 20) // 4 + 3) for mode in ("out", "inplace")]
        for ci, case in enumerate(cases):
            err, _ = _run_case(comm, hetccl, pools, case, ci)
            if err:
                fails.append(f"{case}: {err}")
        return fails
    finally:
        comm.close()


@pytest.mark.parametrize("size", [2, 3, 4])
def test_streaming_dual_output(size):
    results = run_ranks(_streaming_rank, size, timeout=240, transports="c2c")
    for r, fails in enumerate(results):
        assert not fails, f"rank {r}:\n" + "\n".join(fails)


def _exact_allreduce(inputs, op):
    """The reduction the symmetric allreduce promises, bit for bit: a sum in rank order, each
    combine rounded to the dtype (numpy / ml_dtypes widen float16 and bfloat16 to float32 and
    round back, as the kernels do), AVG then divided by the rank count in the dtype."""
    acc = inputs[0].copy()
    with np.errstate(all="ignore"):
        for x in inputs[1:]:
            acc = acc + x
        if op == "AVG":
            acc = acc / acc.dtype.type(len(inputs))
    return acc


def _bucket_rank(rank, size):
    """The in-place allreduce of a DDP bucket (symmetric_heap.pyx: L1 tiles reduced into scratch,
    ordinary stores back into the inputs, streaming ones to outputs that are not inputs): float32,
    bfloat16 and float16, SUM and AVG, sizes around tile and 256-byte block boundaries at odd
    offsets, with the default and the smallest tile, with and without streaming, and with some
    ranks in place while the others are not. Returns (failures, digests of every result)."""
    import hetccl
    comm = hetccl.init(timeout=120)
    try:
        heap = comm._sym.heap
        pools = (comm.alloc(6 << 20, np.uint8), comm.alloc(6 << 20, np.uint8))
        fails, digests = [], []
        ci = 0
        for tile, nt in ((heap.tile_bytes, 16 << 20), (4096, 64 << 10)):
            heap.tile_bytes, comm._engine.nt_threshold = tile, nt
            for dt in ("float32", "bfloat16", "float16"):
                d = np_dtype(dt)
                per_tile = tile // d.itemsize
                sizes = [1, 3, per_tile - 1, 2 * per_tile + 1, 4 * per_tile + 37]
                if dt == "float32" and nt > 1 << 20:        # a bucket-sized one: 5 MiB
                    sizes.append((5 << 20) // 4 + 3)
                for n in sizes:
                    for op in ("SUM", "AVG"):
                        for mode in ("inplace", "mixed"):
                            ci += 1
                            rng = np.random.default_rng([ci, n])
                            inputs = [(rng.standard_normal(n) * 8).astype(d) for _ in range(size)]
                            x, xr, x0, x1 = _view(pools[0], n, dt, ci)
                            x[:] = inputs[rank]
                            if mode == "inplace" or rank % 2 == 0:
                                out, raw, lo, hi = x, xr, x0, x1
                                comm.allreduce(x, getattr(hetccl, op), algorithm="symmetric")
                            else:
                                out, raw, lo, hi = _view(pools[1], n, dt, ci + 1)
                                comm.allreduce(x, getattr(hetccl, op), out=out, algorithm="symmetric")
                            case = (tile, nt, dt, n, op, mode)
                            if comm.last_algorithm != "symmetric":
                                fails.append(f"{case}: took {comm.last_algorithm}")
                            if not _guards_ok(raw, lo, hi):
                                fails.append(f"{case}: wrote outside the output view")
                            want = _exact_allreduce(inputs, op)
                            if out.tobytes() != want.tobytes():
                                bad = np.flatnonzero(out.view(np.uint8 if d.itemsize == 1 else
                                                              f"u{d.itemsize}") !=
                                                     want.view(f"u{d.itemsize}"))
                                fails.append(f"{case}: {len(bad)} element(s) differ from the exact "
                                             f"sum, first [{bad[0]}]: {out[bad[0]]!r} != {want[bad[0]]!r}")
                            digests.append(digest(out))
        return fails, digests
    finally:
        comm.close()


@pytest.mark.parametrize("size", [2, 3])
def test_in_place_bucket_allreduce_is_an_exact_sum_everywhere(size):
    results = run_ranks(_bucket_rank, size, timeout=240, transports="c2c")
    for r, (fails, _) in enumerate(results):
        assert not fails, f"rank {r}: {len(fails)} failures:\n" + "\n".join(fails[:20])
    for r, (_, dg) in enumerate(results[1:], 1):
        assert dg == results[0][1], f"rank {r}'s results differ bitwise from rank 0's"


# ------------------------------------------------------------------ alloc, free, leaks

def _maps_of(prefix):
    with open("/proc/self/maps") as f:
        return sum(prefix in line for line in f)


def _lifecycle_rank(rank, size):
    import gc

    import hetccl
    comm = hetccl.init(timeout=60)
    out = {"pid": os.getpid()}
    try:
        base_maps = _maps_of(PREFIX)
        x = comm.alloc((3, 5), np.float64)
        out["shape"], out["dtype"], out["zero"] = x.shape, str(x.dtype), bool((x == 0).all())
        out["names_while_alive"] = _sym_names({os.getpid()})     # unlinked once mapped
        out["maps_alive"] = _maps_of(PREFIX) - base_maps          # every rank's segment mapped here
        empty = comm.alloc(0, np.int32)
        out["empty"] = (empty.shape, comm.is_symmetric(empty))
        x[:] = rank + 1
        comm.allreduce(x)
        out["sum"] = float(x[0, 0])
        comm.free(x)
        out["zero_after_free"] = bool((x == 0).all())
        errors = []
        for call in (lambda: comm.allreduce(x), lambda: comm.free(x), lambda: comm.broadcast(x)):
            try:
                call()
                errors.append(None)
            except hetccl.InvalidUsage as e:
                errors.append(str(e))
        out["freed_errors"] = errors
        try:
            comm.free(np.ones(3))
            out["free_plain"] = None
        except hetccl.InvalidUsage as e:
            out["free_plain"] = str(e)
        del x
        comm.free(empty)
        del empty
        gc.collect()
        for _ in range(50):                                       # cycles: nothing accumulates
            y = comm.alloc(1000, np.float32)
            comm.free(y)
            del y
        z = comm.alloc(64, np.int64)                              # freed by close
        out["maps_after_cycles"] = _maps_of(PREFIX) - base_maps
        comm.close()
        out["closed_free"] = not comm.is_symmetric(z) if size > 1 else True
        del z
        gc.collect()
        out["maps_end"] = _maps_of(PREFIX) - base_maps
        out["fds"] = len(os.listdir("/proc/self/fd"))
        return out
    finally:
        comm.close()


@pytest.mark.parametrize("size", [1, 2, 3])
def test_alloc_free_and_no_leaks(size):
    results = run_ranks(_lifecycle_rank, size, timeout=180, transports="c2c" if size > 1 else None)
    pids = {o["pid"] for o in results}
    for o in results:
        assert o["shape"] == (3, 5) and o["dtype"] == "float64" and o["zero"]
        assert o["names_while_alive"] == []
        assert o["maps_alive"] == (size if size > 1 else 0)
        assert o["empty"] == ((0,), size > 1)
        assert o["sum"] == size * (size + 1) / 2
        assert o["zero_after_free"]
        assert all(e and "freed" in e for e in o["freed_errors"]), o["freed_errors"]
        assert o["free_plain"] and "comm.alloc" in o["free_plain"]
        assert o["maps_after_cycles"] == (size if size > 1 else 0)
        assert o["closed_free"] and o["maps_end"] == 0
    assert _sym_names(pids) == []


# ------------------------------------------------------------------ routing

def _routing_rank(rank, size):
    import hetccl
    comm = hetccl.init(timeout=60)
    try:
        # 4 MiB, on a known cost model (_sane_model): the symmetric path is priced faster
        n = 1 << 20
        a, b = comm.alloc(n, np.float32), comm.alloc(n, np.float32)
        plain = np.empty(n, np.float32)
        got = {}
        a[:] = rank + 1
        comm.allreduce(a, out=plain)                              # output not symmetric: fallback
        got["ar_mixed"] = (comm.last_algorithm, float(plain[7]))
        plain[:] = rank + 1
        comm.allreduce(plain, out=b)                              # input not symmetric: fallback
        got["ar_mixed2"] = (comm.last_algorithm, float(b[7]))
        a[:] = rank + 1
        comm.allreduce(a, out=b)
        got["ar_sym"] = (comm.last_algorithm, float(b[7]))
        b[:] = 0
        comm.allreduce(a, out=b, async_op=True).wait()            # on the progress thread
        got["ar_async"] = (comm.last_algorithm, float(b[9]))
        comm.allreduce(a, out=b, algorithm="ring")                # forcing another algorithm wins
        got["ar_forced"] = comm.last_algorithm
        small, small_out = comm.alloc(8, np.float32), comm.alloc(8, np.float32)
        comm.allreduce(small, out=small_out)                      # below MIN_BYTES: the FIFO path
        got["small_default"] = comm.last_algorithm
        comm.allreduce(small, out=small_out, algorithm="symmetric")
        got["small_forced"] = comm.last_algorithm
        g = comm.alloc(n * size, np.float32)
        comm.allgather(np.full(n, rank, np.float32), out=g)       # only the output must be symmetric
        got["ag_plain_in"] = (comm.last_algorithm, g[::n].tolist())
        comm.allgather(a, out=np.empty(n * size, np.float32))
        got["ag_plain_out"] = comm.last_algorithm
        try:
            comm.allreduce(plain, algorithm="symmetric")
            got["forced_plain"] = None
        except hetccl.InvalidUsage as e:
            got["forced_plain"] = str(e)
        got["explain"] = comm.explain("allreduce", 4 * n)
        got["describe"] = comm.describe()
        m = comm.alloc((4, 8), np.int32)                          # one-sided: put into the peer's copy
        peer = comm.peer_view(m[1:3], 1 - rank)
        comm.barrier()
        peer[:] = 100 + rank
        comm.barrier()
        got["put"] = (m[1:3] == 101 - rank).all() and (m[0] == 0).all() and (m[3] == 0).all()
        got["get"] = int(comm.peer_view(m, 1 - rank)[2, 5])       # reads the peer's copy of m
        comm.barrier()
        comm.free(m)
        try:
            peer[0, 0] = 1                                        # a view kept past free stays harmless
            comm.peer_view(m, 1 - rank)
            got["view_after_free"] = None
        except hetccl.InvalidUsage as e:
            got["view_after_free"] = str(e)
        comm.barrier()
        return got
    finally:
        comm.close()


def _sane_model(tmp_path) -> str:
    """A tuning file whose cost model (what a quiet 2-vCPU VM measures) prices the symmetric path
    faster than the FIFO path at 4 MiB: the routing below must not depend on what a probe on a
    busy machine read (the choice itself is tests/test_cost_model.py's)."""
    from hetccl.collectives import tuning_file
    from hetccl.collectives.cost_model import LinkCost
    from hetccl.topology.host import host_id
    cost = LinkCost(0.5e-6, 1.4e-10, 1e-11, beta_out=2e-10, gamma_out=6e-11, cache_bytes=2 << 20)
    doc = tuning_file.new_document(host_id(), None)
    tuning_file.merge(doc, {"links": "c2c", "ranks": 2, "local": 2, "cost": cost.params()})
    path = str(tmp_path / "tuning.json")
    tuning_file.write(path, doc)
    return path


@pytest.mark.parametrize("mode", ["auto", "window"])
def test_routing_and_fallback(mode, tmp_path):
    """The symmetric schedules need no cross-memory attach: window mode (CMA refused) runs them too."""
    env = {"HETCCL_C2C_MODE": mode, "HETCCL_TUNING_FILE": _sane_model(tmp_path)}
    for r, got in enumerate(run_ranks(_routing_rank, 2, timeout=120, transports="c2c", env=env)):
        assert got["ar_mixed"][0] != "symmetric" and got["ar_mixed"][1] == 3.0
        assert got["ar_mixed2"][0] != "symmetric" and got["ar_mixed2"][1] == 3.0
        assert got["ar_sym"] == ("symmetric", 3.0)
        assert got["ar_forced"] == "ring" and got["ar_async"] == ("symmetric", 3.0)
        assert got["small_default"] != "symmetric" and got["small_forced"] == "symmetric"
        assert got["ag_plain_in"] == ("symmetric", [0.0, 1.0])
        assert got["ag_plain_out"] != "symmetric"
        assert got["forced_plain"] and "comm.alloc" in got["forced_plain"]
        assert got["put"] and got["get"] == 100 + r
        assert "comm.alloc buffers: symmetric (single-copy allreduce" in got["describe"]
        assert got["view_after_free"] and "freed" in got["view_after_free"]
        assert "when its input and output are from comm.alloc" in got["explain"]
        assert "=> symmetric" in got["explain"] and "; taken)" in got["explain"]
        assert "; tuning file (" in got["explain"]                # priced on _sane_model


def test_shm_communicator_gets_private_memory():
    """Not all-c2c (here: c2c excluded): alloc works, collectives take the ordinary path."""
    def check(results):
        for got in results:
            assert got["ar_sym"][0] != "symmetric" and got["ar_sym"][1] == 3.0
    check(run_ranks(_plain_rank, 2, timeout=120, transports="shm"))


def _plain_rank(rank, size):
    import hetccl
    comm = hetccl.init(timeout=60)
    try:
        a, b = comm.alloc(1000, np.float32), comm.alloc(1000, np.float32)
        a[:] = rank + 1
        comm.allreduce(a, out=b)
        assert not comm.is_symmetric(a)
        return {"ar_sym": (comm.last_algorithm, float(b[3]))}
    finally:
        comm.close()


# ------------------------------------------------------------------ errors on every rank, no hang

def _mismatch_rank(rank, size):
    import hetccl
    comm = hetccl.init(timeout=60)
    try:
        try:
            comm.alloc(100 + 8 * rank, np.uint8)
            first = None
        except hetccl.InvalidUsage as e:
            first = str(e)
        x = comm.alloc(10, np.float32)                            # the communicator stays usable
        x[:] = 1
        comm.allreduce(x)
        return first, float(x[0]), _sym_names({os.getpid()})
    finally:
        comm.close()


@pytest.mark.parametrize("size", [2, 3])
def test_mismatched_alloc_sizes(size):
    for first, value, names in run_ranks(_mismatch_rank, size, timeout=120, transports="c2c"):
        assert first and "same size on every rank" in first and "108" in first
        assert value == size and names == []


def _peer_freed_rank(rank, size):
    import hetccl
    comm = hetccl.init(timeout=30)
    # 4 MiB on a known cost model (_sane_model): the symmetric path is priced faster
    a, b = comm.alloc(1 << 20, np.float32), comm.alloc(1 << 20, np.float32)
    if rank == 0:
        comm.free(a)
        comm.allreduce(b)                                         # rank 1 names a, freed here
    else:
        comm.allreduce(a)
    return "no error"


def _one_plain_rank(rank, size):
    import hetccl
    comm = hetccl.init(timeout=30)
    a = comm.alloc(1 << 20, np.float32)                          # 4 MiB: symmetric (_sane_model)
    comm.allreduce(a if rank == 0 else np.ones(1 << 20, np.float32))
    comm.barrier()
    return "no error"


@pytest.mark.parametrize("fn", [_peer_freed_rank, _one_plain_rank], ids=["peer-freed", "one-plain"])
def test_inconsistent_buffers_raise_on_every_rank(fn, tmp_path):
    results = run_ranks_expect_failure(fn, 2, timeout=90, transports="c2c",
                                       env={"HETCCL_TUNING_FILE": _sane_model(tmp_path)})
    for r, (ok, text) in enumerate(results):
        assert not ok, f"rank {r} finished: {text}"
        assert "InvalidUsage" in text and "did not finish" not in text, f"rank {r}: {text[-800:]}"


# {case: (plan, words)}: at 3 ranks one rank's call differs from the two others' (see
# tests/test_c2c_collectives.py: CMA_ODD_ONE_OUT, _odd_one_out_rank); every buffer is a view of a
# comm.alloc pool, so calls from 32 KiB take the symmetric schedules and smaller ones the FIFOs.
# The small allreduce is a ring: recursive doubling at 3 ranks starts with rank 0 sending to rank 1
# and rank 2 exchanging with rank 1, so nobody writes to rank 0 and every rank waits (only the
# timeout can end that; the FIFO schedules do not look at the c2c control slots).
SYM_SC, SYM_FIFO = ("allreduce", 1 << 16), ("allreduce", 1000, "ring")
SYM_ODD_ONE_OUT = {
    # rank 0 waits in the symmetric entry sync for rank 1, but only rank 2 writes to it
    "sc-0-vs-fifo": ([SYM_SC, SYM_FIFO, SYM_FIFO], ["1000 float32", "65536 float32"]),
    "sc-0-vs-broadcast": ([SYM_SC, ("broadcast", 1000, 2), ("broadcast", 1000, 2)],
                          ["broadcast", "allreduce"]),
    # two symmetric calls that differ; rank 2 waits in a FIFO receive from rank 0
    "headers-differ": ([SYM_SC, ("allgather", 1 << 14), ("broadcast", 1000, 0)], ["allgather", "allreduce"]),
    # all three in the symmetric schedules, one with another root / count
    "root-differs": ([("broadcast", 1 << 16, 0), ("broadcast", 1 << 16, 0), ("broadcast", 1 << 16, 1)],
                     ["broadcast", "from root 1"]),
    "count-differs": ([SYM_SC, SYM_SC, ("allreduce", 1 << 15)], ["32768 float32", "65536 float32"]),
}


@pytest.mark.parametrize("case", sorted(SYM_ODD_ONE_OUT))
def test_three_ranks_one_mismatching_symmetric(case):
    from tests.test_c2c_collectives import (_odd_one_out_rank, broadcast_roots,
                                            check_every_rank_sees_the_mismatch)
    plan, words = SYM_ODD_ONE_OUT[case]
    res = run_ranks(_odd_one_out_rank, 3, plan, True, timeout=120, transports="c2c")
    check_every_rank_sees_the_mismatch(res, case, words, broadcast_roots(plan))
