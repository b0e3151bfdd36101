"""Correctness of allreduce and allgather against numpy.

Each multi-rank test is ONE group of spawned ranks that loops over a whole matrix of cases
(dtype x op x count x algorithm x in/out-of-place) and returns a summary; spawning costs ~1 s per
group on the 2-core test box, a collective costs micro- to milliseconds.

How a rank checks a case without shipping data to the parent: every rank's input is a pure
function of (case seed, rank), so each rank builds all N inputs, computes the numpy reference
itself and compares. Each rank also returns a short digest of every result, and the parent checks
that all ranks got bit-identical results.

Reference rules (see the kernels' contract in hetccl/_native/kernels.pxd):
* integers: exact, with two's-complement wraparound for SUM/PROD; AVG = truncating division of the
  sum (inputs are kept small enough that the sum does not wrap);
* MIN/MAX and everything of allgather: exact (allgather is compared byte for byte);
* floating SUM/PROD/AVG: within the error of ~N roundings in the dtype (fp16/bf16 are widened
  to float32 per combine step and rounded back);
* fp8 SUM/PROD/AVG: bit-exact against the exact result computed in float64 and rounded once. An
  error bound of N roundings is vacuous in fp8 (unit roundoff 1/8 or 1/16: at 3+ ranks it admits an
  all-zero output), so the inputs make rounding once the only correct answer whatever the
  reduction order: at 2 ranks any inputs (one combine in float32 is exact, then one rounding); at
  3+ ranks values whose every partial sum or product is exact in the fp8 type (small integers,
  signed powers of two), so each combine step rounds nothing and only AVG's division rounds, once.
Outputs are views into larger arrays whose guard bytes must stay untouched (no overruns).
"""
from __future__ import annotations

import array
import functools
import hashlib
import importlib.util
import re
import time

import numpy as np
import pytest

from tests.launcher import run_ranks

# ml_dtypes is a required dependency: a missing one fails the suite, it is not skipped. It is
# imported where a bfloat16/fp8 dtype is made (np_dtype), not here: its extension takes ~0.5 s of
# CPU to load, and every spawned rank imports this module (and the modules that import from it).
if importlib.util.find_spec("ml_dtypes") is None:
    raise ImportError("ml_dtypes is missing: pip install -e '.[test]' (it is a required dependency)")

INTS = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"]
FLOATS = ["float16", "bfloat16", "float32", "float64"]
FP8 = ["float8_e4m3fn", "float8_e5m2"]
ARITH = ["SUM", "PROD", "MIN", "MAX", "AVG"]
BITWISE = ["BAND", "BOR", "BXOR"]
EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7, "float32": 2.0 ** -23, "float64": 2.0 ** -52}
# (fp8 has no tolerance: its references are exact, see the module docstring)
CANON = {None: None, "ring": "ring", "rd": "recursive_doubling",
         "recursive_doubling": "recursive_doubling", "reduce_broadcast": "reduce_broadcast"}
GUARD = 24           # guard bytes on each side of every output view
GUARD_BYTE = 0xA5


def np_dtype(name: str) -> np.dtype:
    if name in ("bfloat16",) + tuple(FP8):
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def ops_for(dt: str) -> list[str]:
    if dt in INTS:
        return ARITH + BITWISE
    if dt == "bool":
        return ["BAND", "BOR", "BXOR", "MIN", "MAX"]
    return ARITH


# ------------------------------------------------------------------------------------------------
# Inputs and references (used inside the ranks)
# ------------------------------------------------------------------------------------------------
SHIFT = 17  # rank r's input is base[SHIFT*r : SHIFT*r + n]: one RNG call per case, distinct ranks


def make_base(dt: str, op: str, n: int, size: int, seed: int) -> np.ndarray:
    """Inputs of all ranks of one case; rank r's is ``base[SHIFT*r : SHIFT*r + n]``."""
    rng = np.random.default_rng([seed, n, size])
    m = n + SHIFT * size
    d = np_dtype(dt)
    if dt == "bool":
        p = {"BAND": 0.85, "BOR": 0.15}.get(op, 0.5)
        return rng.random(m) < p
    if dt in INTS:
        info = np.iinfo(d)
        if op == "AVG":  # the sum of `size` values must not wrap
            hi = info.max // size      # symmetric: abs() of the sum cannot overflow either
            lo = -hi if info.min < 0 else 0
        else:
            lo, hi = info.min, info.max
        return rng.integers(lo, hi, m, dtype=d, endpoint=True)
    big = dt in FP8
    if big and size > 2 and op in ("SUM", "AVG"):    # every partial sum exact (see the docstring)
        top = 2 if dt == "float8_e4m3fn" else 1      # |partial| <= 16 (e4m3: 3 bits) or 8 (e5m2: 2)
        return rng.integers(-top, top, m, endpoint=True).astype(d)
    if big and size > 2 and op == "PROD":            # signed powers of two: every product exact
        return rng.choice([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0], m).astype(d)
    if op in ("SUM", "AVG"):
        v = rng.uniform(-4.0 if big else -1.0, 4.0 if big else 1.0, m)
    elif op == "PROD":
        v = rng.uniform(0.5, 2.0, m) * rng.choice([-1.0, 1.0], m)
    else:
        v = rng.uniform(-100.0, 100.0, m)
    return v.astype(d)


def rank_input(base: np.ndarray, r: int, n: int) -> np.ndarray:
    return base[SHIFT * r:SHIFT * r + n]


_UFUNC = {"SUM": np.add, "PROD": np.multiply, "MIN": np.minimum, "MAX": np.maximum,
          "BAND": np.bitwise_and, "BOR": np.bitwise_or, "BXOR": np.bitwise_xor}
_BOOL_UFUNC = {"BAND": np.logical_and, "BOR": np.logical_or, "BXOR": np.logical_xor,
               "MIN": np.logical_and, "MAX": np.logical_or}


def reference(inputs: list[np.ndarray], dt: str, op: str):
    """(expected, tolerance): tolerance None means the result must be bit-exact."""
    N = len(inputs)
    d = np_dtype(dt)
    with np.errstate(all="ignore"):
        if dt == "bool":
            return functools.reduce(_BOOL_UFUNC[op], inputs).astype(np.bool_), None
        if dt in INTS:
            if op == "AVG":
                s = functools.reduce(np.add, inputs)          # fits: inputs are small
                q = (np.abs(s) // d.type(N)) * np.sign(s) if d.kind == "i" else s // d.type(N)
                return q.astype(d), None
            return functools.reduce(_UFUNC[op], inputs).astype(d), None
        x = [a.astype(np.float64) for a in inputs]
        if op in ("MIN", "MAX"):
            return functools.reduce(_UFUNC[op], x).astype(d).astype(np.float64), None
        if dt in FP8:                     # exact in float64, rounded once, bit-exact (docstring)
            exact = functools.reduce(np.add if op != "PROD" else np.multiply, x)
            if op == "AVG":
                exact = exact / N
            return exact.astype(d).astype(np.float64), None
        eps = EPS[dt]
        if op == "PROD":
            ref = functools.reduce(np.multiply, x)
            return ref, (N + 2) * eps * np.abs(ref)
        s = functools.reduce(np.add, x)
        sabs = functools.reduce(np.add, [np.abs(a) for a in x])
        if op == "SUM":
            return s, (N + 1) * eps * sabs
        ref = s / N
        return ref, (N + 1) * eps * sabs / N + eps * np.abs(ref)


def compare(res: np.ndarray, dt: str, expected, tol) -> str | None:
    """None if ``res`` matches, else a short description of the first mismatch."""
    if tol is None and dt in INTS + ["bool"]:
        if res.tobytes() == expected.tobytes():
            return None
        bad = np.flatnonzero(res != expected)
    else:
        got = res.astype(np.float64)
        if tol is None:
            ok = got == expected
        else:
            with np.errstate(all="ignore"):
                ok = np.abs(got - expected) <= tol
        if ok.all():
            return None
        bad = np.flatnonzero(~ok)
    i = int(bad[0])
    return (f"{len(bad)} wrong element(s), first at [{i}]: got {res[i]!r}, expected "
            f"{expected[i]!r}" + (f" (tolerance {tol[i]:.3g})" if tol is not None else ""))


def guarded(n: int, d: np.dtype):
    """(big, view): view is an n-element C-contiguous slice of big, whose guard bytes are 0xA5."""
    g = GUARD // d.itemsize
    big = np.empty(n + 2 * g, dtype=d)
    big.view(np.uint8)[:] = GUARD_BYTE
    return big, big[g:g + n]


def guards_intact(big: np.ndarray, n: int) -> bool:
    g = GUARD // big.dtype.itemsize
    b = big.view(np.uint8)
    return bool((b[:g * big.dtype.itemsize] == GUARD_BYTE).all()
                and (b[(g + n) * big.dtype.itemsize:] == GUARD_BYTE).all())


def digest(a) -> str:
    return hashlib.blake2b(memoryview(a).cast("B") if not isinstance(a, np.ndarray)
                           else a.tobytes(), digest_size=6).hexdigest()


def explained_choice(comm, coll: str, nbytes: int) -> str | None:
    for line in comm.explain(coll, nbytes).splitlines():
        m = re.match(r"\s*->\s*(\S+)", line)
        if m:
            return m.group(1)
    return None


# ------------------------------------------------------------------------------------------------
# Case plans (built in the parent, executed by every rank)
# ------------------------------------------------------------------------------------------------
SMALL_COUNTS = [0, 1, 3, 7, 33, 1021]          # zero, one, fewer than N, odd, prime
CROSS_BYTES = [2 << 10, 8 << 10, 12 << 10, 40 << 10, 200 << 10, 400 << 10]   # rd/ring crossover


def allreduce_plan(size: int, light: bool, extra=()) -> list[tuple]:
    """[(dtype, op, count, algorithm, mode)] — mode 'inplace' or 'out'. ``extra``: more algorithms
    (the test algorithm of tests/algorithms/)."""
    algos = [None, "ring", "rd", *extra]
    plan = []
    dts = INTS + FLOATS + FP8 + ["bool"]
    if light:  # tcp groups: same code paths in the engine, fewer element types
        dts = ["int8", "uint16", "int32", "uint64", "float16", "bfloat16", "float32", "float64",
               "bool"]
    for dt in dts:
        for op in ops_for(dt):
            for si, n in enumerate(SMALL_COUNTS):
                for algo in algos:
                    plan.append((dt, op, n, algo, "inplace" if (si + len(plan)) % 2 else "out"))
    for dt, ops in [("float32", ["SUM", "MAX", "AVG"]), ("bfloat16", ["SUM"]), ("int32", ["SUM"]),
                    ("float64", ["PROD"]), ("uint8", ["MIN"]), ("float16", ["AVG"])]:
        for op in ops:
            for nb in CROSS_BYTES:
                n = nb // np_dtype(dt).itemsize + 3
                for algo in algos:
                    plan.append((dt, op, n, algo, "inplace" if len(plan) % 2 else "out"))
    # bigger than the 1 MiB shm FIFO of 8 local ranks / the 1 MiB tcp staging buffer, several chunks
    big = (3 << 20) // 4 + 5 if size <= 4 else (3 << 19) // 4 + 5
    for algo in algos:
        plan.append(("float32", "SUM", big, algo, "out"))
        plan.append(("int64", "BXOR", big // 2 + 1, algo, "inplace"))
    if size <= 4 and not light:   # wraps the 4 MiB FIFO of <= 4 local ranks
        plan.append(("float32", "SUM", (5 << 20) // 4 + 1, None, "inplace"))
    return plan


def allgather_plan(size: int, light: bool) -> list[tuple]:
    """[(dtype, per-rank count, algorithm, mode)] — mode 'new', 'out', 'inplace' or 'view'."""
    pow2 = size & (size - 1) == 0
    algos = [None, "ring"] + (["rd"] if pow2 else [])
    modes = ["new", "out", "inplace", "view"]
    dts = ["int8", "float16", "bfloat16", "float32", "float64", "int64", "bool", "float8_e5m2"]
    if light:
        dts = ["int8", "bfloat16", "float32", "float64"]
    plan = []
    for dt in dts:
        isz = np_dtype(dt).itemsize
        counts = SMALL_COUNTS + [nb // (isz * size) + 1 for nb in CROSS_BYTES]
        for n in counts:
            for algo in algos:
                plan.append((dt, n, algo, modes[len(plan) % 4]))
    for algo in algos:
        plan.append(("float32", ((3 << 20) // 4) // size + 7, algo, "out"))
    return plan


# ------------------------------------------------------------------------------------------------
# The rank side
# ------------------------------------------------------------------------------------------------
def _fail(summary, what, msg):
    summary["failures"].append(f"{what}: {msg}")


def _allreduce_cases(comm, hetccl, plan, summary):
    N, r = comm.size, comm.rank
    for ci, (dt, op, n, algo, mode) in enumerate(plan):
        what = f"allreduce#{ci} {dt} {op} n={n} algo={algo} {mode}"
        d = np_dtype(dt)
        base = make_base(dt, op, n, N, ci)
        inputs = [rank_input(base, k, n) for k in range(N)]
        mine = inputs[r].copy()
        big, out = guarded(n, d)
        try:
            if mode == "inplace":
                out[:] = mine
                got = comm.allreduce(out, getattr(hetccl, op), algorithm=algo)
            else:
                src = mine.copy()
                got = comm.allreduce(src, getattr(hetccl, op), out=out, algorithm=algo)
                if src.tobytes() != mine.tobytes():
                    _fail(summary, what, "the input buffer was modified by an out-of-place call")
        except Exception as e:  # noqa: BLE001 - reported; stop unless it was refused up front
            _fail(summary, what, f"{type(e).__name__}: {e}")
            if not isinstance(e, hetccl.InvalidUsage) or len(summary["failures"]) > 50:
                return False
            continue
        summary["cases"] += 1
        if got is not out:
            _fail(summary, what, f"returned {type(got).__name__} instead of the output buffer")
        if not guards_intact(big, n):
            _fail(summary, what, "wrote outside the output buffer (guard bytes changed)")
        if algo is not None and comm.last_algorithm != CANON[algo]:
            _fail(summary, what, f"last_algorithm is {comm.last_algorithm!r}, not {CANON[algo]!r}")
        if algo is None:
            nbytes = n * d.itemsize
            summary["defaults"][("allreduce", nbytes)] = comm.last_algorithm
            want = explained_choice(comm, "allreduce", nbytes)
            if want != comm.last_algorithm:
                _fail(summary, what, f"used {comm.last_algorithm!r} but explain() says {want!r}")
        expected, tol = reference(inputs, dt, op)
        bad = compare(out, dt, expected, tol)
        if bad:
            _fail(summary, what, bad)
        summary["digests"].append(digest(out))
    return True


def _allgather_cases(comm, hetccl, plan, summary):
    N, r = comm.size, comm.rank
    for ci, (dt, n, algo, mode) in enumerate(plan):
        what = f"allgather#{ci} {dt} n={n} algo={algo} {mode}"
        d = np_dtype(dt)
        rng = np.random.default_rng([ci, n, N, 7])
        raw = rng.integers(0, 256, N * n * d.itemsize, dtype=np.uint8)  # NaNs too: bytes compared
        if dt == "bool":
            raw &= 1
        expected = raw.view(d)
        mine = expected[r * n:(r + 1) * n].copy()
        big = None
        try:
            if mode == "new":
                got = comm.allgather(mine, algorithm=algo)
                out = got
                if not isinstance(got, np.ndarray) or got.dtype != d or got.shape != (N * n,):
                    _fail(summary, what, f"returned {type(got).__name__} "
                                         f"{getattr(got, 'dtype', '')} {getattr(got, 'shape', '')}")
                    continue
            else:
                big, out = guarded(N * n, d)
                if mode == "out":
                    got = comm.allgather(mine, out, algorithm=algo)
                elif mode == "inplace":
                    out[r * n:(r + 1) * n] = mine
                    got = comm.allgather(out, out, algorithm=algo)
                else:  # my block of out is the input (a view into the output)
                    out[r * n:(r + 1) * n] = mine
                    got = comm.allgather(out[r * n:(r + 1) * n], out, algorithm=algo)
                if got is not out:
                    _fail(summary, what, "did not return the output buffer")
        except Exception as e:  # noqa: BLE001 - reported; stop unless it was refused up front
            _fail(summary, what, f"{type(e).__name__}: {e}")
            if not isinstance(e, hetccl.InvalidUsage) or len(summary["failures"]) > 50:
                return False
            continue
        summary["cases"] += 1
        if big is not None and not guards_intact(big, N * n):
            _fail(summary, what, "wrote outside the output buffer (guard bytes changed)")
        if algo is not None and comm.last_algorithm != CANON[algo]:
            _fail(summary, what, f"last_algorithm is {comm.last_algorithm!r}, not {CANON[algo]!r}")
        if algo is None:
            nbytes = N * n * d.itemsize
            summary["defaults"][("allgather", nbytes)] = comm.last_algorithm
            want = explained_choice(comm, "allgather", nbytes)
            if want != comm.last_algorithm:
                _fail(summary, what, f"used {comm.last_algorithm!r} but explain() says {want!r}")
        if out.tobytes() != expected.tobytes():
            bad = np.flatnonzero(out.view(np.uint8) != expected.view(np.uint8))
            _fail(summary, what, f"{len(bad)} wrong byte(s), first at byte {bad[0]} "
                                 f"(block {bad[0] // max(1, n * d.itemsize)})")
        summary["digests"].append(digest(out))
    return True


def _buffer_protocol_cases(comm, hetccl, summary):
    """bytearray, array.array, memoryview and numpy views instead of plain numpy arrays."""
    N, r = comm.size, comm.rank

    def check(what, cond, detail=""):
        summary["cases"] += 1
        if not cond:
            _fail(summary, what, detail or "wrong result")

    # bytearray (format 'B' = uint8): in place, wraps mod 256
    n = 301
    b = bytearray((r * 37 + i) % 256 for i in range(n))
    got = comm.allreduce(b, hetccl.SUM)
    want = bytes(sum((k * 37 + i) % 256 for k in range(N)) % 256 for i in range(n))
    check("bytearray SUM", got is b and bytes(b) == want, f"got {bytes(b)[:8]!r}...")
    summary["digests"].append(digest(b))
    b = bytearray((r * 11 + i) % 256 for i in range(n))
    comm.allreduce(b, hetccl.MAX, algorithm="ring")
    want = bytes(max((k * 11 + i) % 256 for k in range(N)) for i in range(n))
    check("bytearray MAX ring", bytes(b) == want)

    # array.array('d'): in place and out of place into another array.array
    n = 1001
    a = array.array("d", (r + i * 0.5 for i in range(n)))
    comm.allreduce(a, hetccl.SUM)
    want = [sum(k + i * 0.5 for k in range(N)) for i in range(n)]
    check("array('d') SUM in place", list(a) == want, f"{list(a)[:4]} vs {want[:4]}")
    summary["digests"].append(digest(a))
    a = array.array("d", (r + i * 0.5 for i in range(n)))
    o = array.array("d", bytes(8 * n))
    got = comm.allreduce(a, hetccl.MAX, out=o, algorithm="rd")
    want = [N - 1 + i * 0.5 for i in range(n)]
    check("array('d') MAX out=array", got is o and list(o) == want
          and list(a) == [r + i * 0.5 for i in range(n)])
    # other array.array formats: int32 'i', int64 'q' and 'l', float32 'f', uint16 'H'
    for fmt, op, fn in [("i", hetccl.MIN, min), ("q", hetccl.SUM, sum), ("l", hetccl.MAX, max),
                        ("f", hetccl.SUM, sum), ("H", hetccl.BOR, None)]:
        vals = lambda k: [(k * 7 + i) % 50 - (25 if fmt in "iql" else 0) for i in range(77)]  # noqa: E731
        a = array.array(fmt, vals(r))
        comm.allreduce(a, op)
        if fn is None:
            want = [functools.reduce(lambda x, y: x | y, col) for col in zip(*(vals(k) for k in range(N)))]
        else:
            want = [fn(col) for col in zip(*(vals(k) for k in range(N)))]
        check(f"array({fmt!r}) {op.name}", list(a) == want, f"{list(a)[:5]} vs {want[:5]}")

    # memoryview of a numpy slice
    x = np.arange(100, dtype=np.int32) + r
    mv = memoryview(x)[10:60]
    comm.allreduce(mv, hetccl.SUM)
    want = np.arange(100, dtype=np.int32)
    want[10:60] = N * np.arange(10, 60) + N * (N - 1) // 2
    want[:10] += r
    want[60:] += r
    check("memoryview slice", np.array_equal(x, want), f"{x[8:12]} vs {want[8:12]}")

    # numpy: 2-D C-contiguous array, one row of it, a contiguous slice with neighbours untouched
    m = np.full((5, 7), r + 1, dtype=np.float64)
    comm.allreduce(m, hetccl.PROD)
    fact = float(np.prod(np.arange(1, N + 1)))
    check("2-D array", m.shape == (5, 7) and (m == fact).all())
    m = np.full((5, 7), r, dtype=np.int16)
    comm.allreduce(m[2], hetccl.SUM)
    want = np.full((5, 7), r, dtype=np.int16)
    want[2] = N * (N - 1) // 2
    check("row of 2-D array", np.array_equal(m, want))
    x = np.full(50, -1.0, dtype=np.float32)
    x[7:40] = r
    comm.allreduce(x[7:40], hetccl.MAX)
    check("slice, neighbours untouched", (x[7:40] == N - 1).all() and (x[:7] == -1).all()
          and (x[40:] == -1).all())
    # allreduce out= a slice of a bigger array
    big = np.full(30, 99, dtype=np.int64)
    comm.allreduce(np.full(10, r, dtype=np.int64), hetccl.SUM, out=big[10:20])
    check("out= slice", (big[10:20] == N * (N - 1) // 2).all() and (big[:10] == 99).all()
          and (big[20:] == 99).all())

    # allgather with non-numpy buffers (out= is required there)
    b = bytearray([r] * 5)
    o = bytearray(5 * N)
    got = comm.allgather(b, o)
    check("allgather bytearray", got is o and bytes(o) == bytes(k for k in range(N) for _ in range(5)))
    summary["digests"].append(digest(o))
    a = array.array("d", [r + 0.25] * 3)
    o = array.array("d", [0.0] * (3 * N))
    comm.allgather(a, o)
    check("allgather array('d')", list(o) == [k + 0.25 for k in range(N) for _ in range(3)])
    # allgather of a 2-D array: out=None gives a flat size*count array
    m = np.full((2, 3), r, dtype=np.uint8)
    got = comm.allgather(m)
    check("allgather 2-D", got.shape == (N * 6,)
          and np.array_equal(got, np.repeat(np.arange(N, dtype=np.uint8), 6)), f"{got}")


def _matrix_rank(rank, size, ar_plan, ag_plan, expect_transport):
    import hetccl
    if expect_transport in TEST_TRANSPORTS:     # the test transport and algorithm join this rank's tables
        from tests.algorithms import registry as test_algorithms
        from tests.transports import registry as test_transports
        test_transports.install()
        test_algorithms.install()
    summary = {"cases": 0, "failures": [], "digests": [], "defaults": {}}
    t0 = time.monotonic()
    comm = hetccl.init(timeout=60)
    summary["init_s"] = time.monotonic() - t0
    try:
        assert comm.rank == rank and comm.size == size
        summary["transports"] = [comm.transport(p) for p in range(size)]
        if expect_transport is not None:
            want = [("self" if p == rank else expect_transport) for p in range(size)]
            if summary["transports"] != want:
                _fail(summary, "transport", f"{summary['transports']} != {want}")
        desc = comm.describe()
        if "transport per pair" not in desc or f"{size} rank" not in desc:
            _fail(summary, "describe", desc)
        comm.barrier()
        ok = _allreduce_cases(comm, hetccl, ar_plan, summary)
        ok = ok and _allgather_cases(comm, hetccl, ag_plan, summary)
        if ok:
            try:
                _buffer_protocol_cases(comm, hetccl, summary)
            except Exception as e:  # noqa: BLE001
                _fail(summary, "buffer-protocol cases", f"{type(e).__name__}: {e}")
        if ok and size > 1 and size & (size - 1):
            # rd allgather needs a power of two: refused up front, the comm stays usable
            try:
                comm.allgather(np.zeros(4, np.float32), algorithm="rd")
                _fail(summary, "allgather rd on non-power-of-two", "did not raise")
            except hetccl.InvalidUsage as e:
                if "does not support" not in str(e) or "ring" not in str(e):
                    _fail(summary, "allgather rd on non-power-of-two", f"message: {e}")
        if ok:
            comm.barrier()
    finally:
        summary["elapsed_s"] = time.monotonic() - t0
        comm.close()
    return summary


def _check_summaries(results, size):
    fails = []
    for r, s in enumerate(results):
        fails += [f"rank {r}: {f}" for f in s["failures"]]
    assert not fails, f"{len(fails)} failure(s):\n" + "\n".join(fails[:40])
    n = {s["cases"] for s in results}
    assert len(n) == 1, f"ranks checked different numbers of cases: {n}"
    d0 = results[0]["digests"]
    for r, s in enumerate(results[1:], 1):
        if s["digests"] != d0:
            i = next((i for i, (a, b) in enumerate(zip(d0, s["digests"])) if a != b), None)
            pytest.fail(f"rank {r}'s results differ from rank 0's (first at result #{i})")
    return results[0]


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------
GROUPS = [(1, None), (2, "shm"), (3, "shm"), (4, "shm"), (8, "shm"),
          (2, "tcp"), (3, "tcp"), (4, "tcp"), (8, "tcp"), (2, "loop"), (3, "loop")]
# transports declared in tests/ (tests/transports/loop.py): their groups also run the test
# algorithm (tests/algorithms/reduce_broadcast.py), forced and as the tuner's candidate
TEST_TRANSPORTS = ("loop",)


@pytest.mark.parametrize("size,transport", GROUPS,
                         ids=[f"{n}ranks-{t or 'self'}" for n, t in GROUPS])
def test_allreduce_allgather_matrix(size, transport):
    test = transport in TEST_TRANSPORTS
    light = transport == "tcp" or size == 8 or test
    ar = allreduce_plan(size, light, ("reduce_broadcast",) if test else ())
    ag = allgather_plan(size, light)
    results = run_ranks(_matrix_rank, size, ar, ag, transport, timeout=240, transports=transport)
    s = _check_summaries(results, size)
    assert s["cases"] >= len(ar) + len(ag)
    if size > 1:
        from hetccl.collectives import registry
        from tests.algorithms.registry import TEST_ALGORITHMS
        for coll in ("allreduce", "allgather"):
            chosen = {v for (c, _), v in s["defaults"].items() if c == coll}
            names = {a.name for a in registry.for_collective(coll)}
            names |= {a.name for a in TEST_ALGORITHMS if test and a.collective == coll}
            assert chosen <= names, chosen
        if size in (2, 4):   # a crossover lies inside the sizes tried: more than one algorithm runs
            chosen = {v for (c, _), v in s["defaults"].items() if c == "allreduce"}
            assert len(chosen) >= 2 and "recursive_doubling" in chosen, s["defaults"]


def _large_rank(rank, size, transport):
    """64 MiB float32 allreduce (in place and out of place) and allgather (64 MiB output)."""
    import hetccl
    comm = hetccl.init(timeout=120)
    out = {"failures": []}
    try:
        assert comm.transport(1 - rank) == transport
        n = (64 << 20) // 4
        base = (np.arange(n, dtype=np.int64) % 1021).astype(np.float32)
        x = base + rank                                  # exact in float32
        t = time.monotonic()
        comm.allreduce(x, hetccl.SUM)
        out["allreduce_s"] = time.monotonic() - t
        out["algo"] = comm.last_algorithm
        want = 2 * base + 1
        if not np.array_equal(x, want):
            i = int(np.flatnonzero(x != want)[0])
            out["failures"].append(f"in-place allreduce: [{i}] = {x[i]} != {want[i]}")
        out["digest"] = digest(x)
        y = np.empty_like(x)
        src = base * (rank + 1)
        comm.allreduce(src, hetccl.MAX, out=y)
        if not np.array_equal(y, base * 2) or not np.array_equal(src, base * (rank + 1)):
            out["failures"].append("out-of-place MAX allreduce wrong")
        del y, src
        # past the streaming threshold with odd counts: an output off its 64-byte lines, and an
        # in-place average (the fused relay step's one-pass kernel, and its divide fallback)
        m = (20 << 20) // 2 + 3
        h = (np.arange(m, dtype=np.int64) % 61).astype(np.float16)
        y = np.empty(m + 1, np.float16)[1:]
        comm.allreduce(h * (rank + 1), out=y)
        if not np.array_equal(y, h * 3):
            out["failures"].append("out-of-place float16 SUM (odd count, unaligned output) wrong")
        v = (np.arange((17 << 20) // 4 + 1, dtype=np.int32) % 1009) * 2 + rank * 2
        comm.allreduce(v, hetccl.AVG)
        if not np.array_equal(v, (np.arange(len(v), dtype=np.int32) % 1009) * 2 + 1):
            out["failures"].append("in-place int32 AVG (odd count) wrong")
        del h, y, v
        mine = np.full(n // 2, rank + 0.5, dtype=np.float32)
        t = time.monotonic()
        g = comm.allgather(mine)
        out["allgather_s"] = time.monotonic() - t
        if not ((g[:n // 2] == 0.5).all() and (g[n // 2:] == 1.5).all()):
            out["failures"].append("allgather wrong")
    finally:
        comm.close()
    return out


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_64mib_float32_two_ranks(transport):
    results = run_ranks(_large_rank, 2, transport, timeout=180, transports=transport)
    for r, s in enumerate(results):
        assert not s["failures"], f"rank {r}: {s['failures']}"
    assert results[0]["digest"] == results[1]["digest"]
    # bandwidth-bound: the model must pick a bandwidth-optimal schedule (at 2 ranks the ring and
    # Rabenseifner are the same two exchanges of half the buffer, priced alike)
    assert results[0]["algo"] in ("ring", "rabenseifner"), results[0]


def _forced_by_env_rank(rank, size):
    import hetccl
    comm = hetccl.init(timeout=30)
    try:
        got = []
        for n in (1, 100000):
            x = np.full(n, rank + 1, dtype=np.int32)
            comm.allreduce(x, hetccl.SUM)
            assert (x == size * (size + 1) // 2).all()
            got.append(comm.last_algorithm)
            g = comm.allgather(np.full(n, rank, dtype=np.int8))
            assert np.array_equal(g, np.repeat(np.arange(size, dtype=np.int8), n))
            got.append(comm.last_algorithm)
        # an explicit algorithm= beats HETCCL_ALGO
        x = np.ones(5, dtype=np.float64)
        comm.allreduce(x, algorithm="recursive_doubling")
        got.append(comm.last_algorithm)
        assert "forced by HETCCL_ALGO" in comm.explain("allreduce", 1 << 20)
    finally:
        comm.close()
    return got


def test_hetccl_algo_env_forces_the_choice():
    res = run_ranks(_forced_by_env_rank, 2, timeout=60,
                    env={"HETCCL_ALGO": "allreduce:ring; allgather:rd"})
    for got in res:
        assert got == ["ring", "recursive_doubling"] * 2 + ["recursive_doubling"], got


# ------------------------------------------------------------------------------------------------
# Edge cases: signed zeros and NaNs, aliased in/out, barrier semantics
# ------------------------------------------------------------------------------------------------
def _edge_rank(rank, size):
    import hetccl
    comm = hetccl.init(timeout=30)
    out = {"bits": {}, "failures": []}
    try:
        # MIN/MAX/SUM over +-0 and NaN: whatever the answer, every rank must get the same bits
        a = [0.0, 1.0, np.nan, 0.0, np.nan, 2.0, -0.0, 5.0, -0.0, 0.0]
        b = [-0.0, np.nan, 1.0, np.nan, np.nan, -0.0, 0.0, -np.nan, -0.0, 0.0]
        for dt in FLOATS:
            for op in ("MIN", "MAX", "SUM"):
                for algo in ("ring", "rd"):
                    x = np.array(a if rank % 2 == 0 else b, dtype=np.float64).astype(np_dtype(dt))
                    comm.allreduce(x, getattr(hetccl, op), algorithm=algo)
                    out["bits"][(dt, op, algo)] = x.tobytes().hex()
                    got = x.astype(np.float64)
                    ref = functools.reduce(_UFUNC[op], [np.array(a if k % 2 == 0 else b)
                                                        for k in range(size)])
                    if not np.array_equal(np.isnan(got), np.isnan(ref)) or \
                            not np.array_equal(got[~np.isnan(ref)], ref[~np.isnan(ref)]):
                        out["failures"].append(f"{dt} {op} {algo}: {got} != {ref}")
        # out= another object over the same memory as the input: in place in disguise
        for algo in ("ring", "rd"):
            for n in (5, 1001, 300007):
                x = np.arange(n, dtype=np.float64) + rank
                comm.allreduce(x, out=x[:], algorithm=algo)
                if not np.array_equal(x, size * np.arange(n) + size * (size - 1) / 2):
                    out["failures"].append(f"aliased out= {algo} n={n} wrong")
        # barrier: nobody leaves before the last one arrived
        time.sleep(0.15 * rank)
        out["entered"] = time.time()
        comm.barrier()
        out["left"] = time.time()
    finally:
        comm.close()
    return out


def test_signed_zeros_nans_aliasing_and_barrier():
    res = run_ranks(_edge_rank, 4, timeout=60, transports="shm")
    fails = [f"rank {r}: {f}" for r, o in enumerate(res) for f in o["failures"]]
    last_in = max(o["entered"] for o in res)
    fails += [f"rank {r} left the barrier {last_in - o['left']:.3f}s before the last rank entered"
              for r, o in enumerate(res) if o["left"] < last_in]
    for key, bits in res[0]["bits"].items():
        others = {o["bits"][key] for o in res}
        if len(others) > 1:
            fails.append(f"{key}: ranks got different bits: "
                         + ", ".join(o["bits"][key] for o in res))
    assert not fails, "\n".join(fails)


@pytest.mark.parametrize("dt", FP8)
@pytest.mark.parametrize("size", [2, 3, 8])
def test_fp8_references_are_exact_and_reject_wrong_outputs(dt, size):
    """The fp8 references are bit-exact (no tolerance), so an all-zero output, or one off by one
    unit in the last place anywhere, fails; a bound of N roundings would accept zeros at 3+ ranks."""
    for op in ("SUM", "AVG", "PROD"):
        base = make_base(dt, op, 200, size, 7)
        ins = [rank_input(base, r, 200) for r in range(size)]
        expected, tol = reference(ins, dt, op)
        assert tol is None
        assert np.count_nonzero(expected) > 100, (op, "inputs give mostly zero results")
        d = np_dtype(dt)
        assert compare(expected.astype(d), dt, expected, tol) is None
        assert compare(np.zeros(200, d), dt, expected, tol) is not None
        off = expected.astype(d)
        i = int(np.flatnonzero(expected)[0])
        off.view(np.uint8)[i] += 1                     # the next fp8 value
        assert compare(off, dt, expected, tol) is not None
