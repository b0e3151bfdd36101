"""Reduction / copy / divide kernels (hetccl/_native/kernels.pyx + kernels.h) against numpy/ml_dtypes.

Integers must match numpy exactly (wrapping). Floats must match bit for bit the reference
`(a.astype(float32) OP b.astype(float32)).astype(dtype)` for float16/bfloat16/fp8 and numpy's own
result for float32/float64; np.minimum/np.maximum NaN and signed-zero rules included, and on x86-64
even NaN payloads and signs (the kernels apply x86's "first NaN operand wins" rule explicitly). On
other machines NaNs produced by SUM/PROD/divide are only checked for NaN-ness (and bf16/fp8 for the
canonical NaN pattern): which operand's NaN survives is up to that hardware and numpy's loops.

Both kernel sets run: the AVX2+F16C one (when the CPU has it) and the plain x86-64 baseline.
"""
from __future__ import annotations

import importlib
import importlib.util
import glob
import os
import platform

import ml_dtypes  # a required dependency: a missing one fails, it is not skipped
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE = os.path.join(os.path.dirname(HERE), "hetccl", "_native")


def _load_reduce():
    try:
        return importlib.import_module("hetccl._native.kernels")
    except ImportError:
        # hetccl/__init__ may import modules that are still being written; load the extension alone
        paths = glob.glob(os.path.join(NATIVE, "kernels.*.so")) + glob.glob(os.path.join(NATIVE, "kernels.*.pyd"))
        if not paths:
            raise ImportError("hetccl._native.kernels is not built (python setup.py build_ext --inplace)")
        spec = importlib.util.spec_from_file_location("hetccl._native.kernels", paths[0])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


R = _load_reduce()

INT8, UINT8, INT16, UINT16, INT32, UINT32, INT64, UINT64 = range(8)
FLOAT16, BFLOAT16, FLOAT32, FLOAT64, FP8_E4M3, FP8_E5M2, BOOL = range(8, 15)
SUM, PROD, MIN, MAX, AVG, BAND, BOR, BXOR = range(8)
OPS = {SUM: "sum", PROD: "prod", MIN: "min", MAX: "max", AVG: "avg", BAND: "band", BOR: "bor",
       BXOR: "bxor"}
INTS = list(range(8))
NARROW = (FLOAT16, BFLOAT16, FP8_E4M3, FP8_E5M2)
FLOATS = (FLOAT16, BFLOAT16, FLOAT32, FLOAT64, FP8_E4M3, FP8_E5M2)

try:
    from hetccl.dtypes import numpy_dtype
except Exception:  # the package may be mid-construction; same mapping as hetccl.dtypes
    _NAMES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16",
              "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2", "bool"]

    def numpy_dtype(code):
        name = _NAMES[code]
        if code in (BFLOAT16, FP8_E4M3, FP8_E5M2):
            return np.dtype(getattr(ml_dtypes, name))
        return np.dtype(name)

DTYPES = list(range(15))
EXACT_NANS = platform.machine().lower() in ("x86_64", "amd64")
UINT_OF = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def valid(dt, op):
    if op in (BAND, BOR, BXOR) and dt in FLOATS:
        return False
    if dt == BOOL and op in (SUM, PROD, AVG):
        return False
    return True


VALID = [(dt, op) for dt in DTYPES for op in OPS if valid(dt, op)]
INVALID = [(dt, op) for dt in DTYPES for op in OPS if not valid(dt, op)]


@pytest.fixture(params=["avx2", "baseline"])
def isa(request):
    got = R.select_kernel_isa(request.param)
    if got != request.param:
        R.select_kernel_isa("avx2")
        pytest.skip(f"hardware: CPU has no {request.param}")
    yield request.param
    R.select_kernel_isa("avx2")


def bits(x):
    return x.view(UINT_OF[x.dtype.itemsize])


def random_array(dt, n, rng):
    npdt = numpy_dtype(dt)
    if dt == BOOL:
        return rng.integers(0, 2, n, dtype=np.uint8).view(np.bool_)
    if dt in (FLOAT32, FLOAT64):
        # mostly ordinary values, plus every special class
        x = rng.standard_normal(n).astype(npdt) * npdt.type(rng.choice([1e-3, 1.0, 1e3]))
        special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-40, -1e-310,
                            np.finfo(npdt).max, np.finfo(npdt).tiny], dtype=npdt)
        k = min(n, max(1, n // 8))
        x[rng.integers(0, n, k)] = rng.choice(special, k) if n else x[:0]
        return x
    # integers and narrow floats: uniformly random bit patterns (every NaN/Inf/subnormal class)
    size = npdt.itemsize
    raw = rng.integers(0, 256, n * size, dtype=np.uint8)
    return raw.view(UINT_OF[size]).view(npdt)


def reference(dt, op, a, b):
    if op == AVG:
        op = SUM
    with np.errstate(all="ignore"):
        if dt in NARROW:
            x, y = a.astype(np.float32), b.astype(np.float32)
            return {SUM: np.add, PROD: np.multiply, MIN: np.minimum, MAX: np.maximum}[op](
                x, y).astype(a.dtype)
        fn = {SUM: np.add, PROD: np.multiply, MIN: np.minimum, MAX: np.maximum,
              BAND: np.bitwise_and, BOR: np.bitwise_or, BXOR: np.bitwise_xor}[op]
        return fn(a, b).astype(a.dtype)


def canonical_nan(dt):
    return {BFLOAT16: 0x7fc0, FP8_E4M3: 0x7f, FP8_E5M2: 0x7e}.get(dt)


def assert_same(dt, op, got, want, what=""):
    gb, wb = bits(got), bits(want)
    if dt in FLOATS and op in (SUM, PROD, AVG, "div") and not EXACT_NANS:
        # NaN payloads of arithmetic results are hardware-specific (see module docstring)
        gn = np.isnan(got.astype(np.float64))
        wn = np.isnan(want.astype(np.float64))
        np.testing.assert_array_equal(gn, wn, err_msg=f"NaN positions differ {what}")
        keep = ~wn
        cn = canonical_nan(dt)
        if cn is not None:  # bf16/fp8 round every NaN to sign | one canonical pattern
            sign = 0x8000 if got.dtype.itemsize == 2 else 0x80
            assert np.all((gb[wn] & ~np.array(sign, gb.dtype)) == cn), f"non-canonical NaN {what}"
        gb, wb = gb[keep], wb[keep]
    if not np.array_equal(gb, wb):
        bad = np.nonzero(gb != wb)[0][:8]
        raise AssertionError(f"{numpy_dtype(dt)} {OPS.get(op, op)} {what}: mismatch at {bad.tolist()}:"
                             f" got {[hex(int(v)) for v in gb[bad]]} want {[hex(int(v)) for v in wb[bad]]}")


SIZES = [0, 1, 7, 33, 1000, 4099, 10007]


@pytest.mark.parametrize("dt,op", VALID, ids=[f"{numpy_dtype(d).name}-{OPS[o]}" for d, o in VALID])
def test_reduce_matches_numpy(dt, op, isa):
    rng = np.random.default_rng(1000 * dt + op)
    for n in SIZES:
        for off in (0, 1):
            a0 = random_array(dt, n + off, rng)
            b0 = random_array(dt, n + off, rng)
            a, b = a0[off:], b0[off:]
            want = reference(dt, op, a, b)
            for streaming in (False, True):
                what = f"n={n} off={off} streaming={streaming}"
                out0 = np.zeros(n + off, dtype=a.dtype)
                out = out0[off:]
                R.reduce_arrays(out, a, b, dt, op, streaming)
                assert_same(dt, op, out, want, what)
                # aliasing: dst is a, and dst is b
                a1 = a0.copy()[off:]
                R.reduce_arrays(a1, a1, b, dt, op, streaming)
                assert_same(dt, op, a1, want, what + " dst=a")
                b1 = b0.copy()[off:]
                R.reduce_arrays(b1, a, b1, dt, op, streaming)
                assert_same(dt, op, b1, want, what + " dst=b")
                # dual kernel: the same result into two outputs, equally or differently aligned
                for eoff in (off, 1 - off):
                    d2, e2 = np.zeros(n + off, a.dtype)[off:], np.zeros(n + eoff, a.dtype)[eoff:]
                    R.reduce_arrays(d2, a, b, dt, op, streaming, also=e2)
                    assert_same(dt, op, d2, want, what + f" dual eoff={eoff} (first)")
                    assert_same(dt, op, e2, want, what + f" dual eoff={eoff} (second)")
                    # the ring relay's forward kernel: into a FIFO and the output, or over an input
                    d3, e3 = np.zeros(n + 1, a.dtype)[1:], np.zeros(n + eoff, a.dtype)[eoff:]
                    R.reduce_arrays(d3, a, b, dt, op, streaming, also=e3, forward=True)
                    assert_same(dt, op, d3, want, what + f" forward eoff={eoff} (fifo)")
                    assert_same(dt, op, e3, want, what + f" forward eoff={eoff} (output)")
                    a3, b3 = a0.copy()[off:], b0.copy()[off:]
                    R.reduce_arrays(d3, a3, b3, dt, op, streaming, also=a3, forward=True)
                    assert_same(dt, op, a3, want, what + " forward in place (e=a)")
                    R.reduce_arrays(d3, a, b3, dt, op, streaming, also=b3, forward=True)
                    assert_same(dt, op, b3, want, what + " forward in place (e=b)")


@pytest.mark.parametrize("dt,op", INVALID, ids=[f"{numpy_dtype(d).name}-{OPS[o]}" for d, o in INVALID])
def test_invalid_pairs_rejected(dt, op):
    x = np.zeros(4, dtype=numpy_dtype(dt))
    with pytest.raises(ValueError):
        R.reduce_arrays(x, x, x, dt, op)


def test_out_of_range_codes_rejected():
    x = np.zeros(8, dtype=np.uint8)
    for dt, op in ((-1, SUM), (15, SUM), (0, -1), (0, 8), (99, 99)):
        with pytest.raises(ValueError):
            R.reduce_arrays(x, x, x, dt, op)


def test_short_inputs_rejected():
    x = np.zeros(8, dtype=np.float32)
    with pytest.raises(ValueError):
        R.reduce_arrays(x, x[:4], x, FLOAT32, SUM)


@pytest.mark.parametrize("dt", [FLOAT32, FLOAT64, *NARROW])
def test_minmax_nan_and_signed_zero(dt, isa):
    npdt = numpy_dtype(dt)
    vals = np.array([np.nan, -np.nan, 0.0, -0.0, 1.0, -1.0, np.inf, -np.inf], dtype=np.float32)
    if dt == FP8_E4M3:
        vals = vals[np.isfinite(vals) | np.isnan(vals)]  # no Inf in e4m3fn
    a, b = np.meshgrid(vals, vals)
    a = a.ravel().astype(npdt)
    b = b.ravel().astype(npdt)
    # repeat so both the vector body and the scalar tail see every pair
    a, b = np.tile(a, 9), np.tile(b, 9)
    for op in (MIN, MAX):
        out = np.empty_like(a)
        R.reduce_arrays(out, a, b, dt, op)
        assert_same(dt, op, out, reference(dt, op, a, b))


@pytest.mark.parametrize("dt", [FP8_E4M3, FP8_E5M2])
def test_fp8_exhaustive(dt, isa):
    npdt = numpy_dtype(dt)
    a, b = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    a, b = a.ravel().view(npdt), b.ravel().view(npdt)
    for op in (SUM, PROD, MIN, MAX):
        out = np.empty_like(a)
        R.reduce_arrays(out, a, b, dt, op)
        assert_same(dt, op, out, reference(dt, op, a, b), "all pairs")


@pytest.mark.parametrize("dt", [FLOAT16, BFLOAT16])
def test_16bit_floats_wide(dt, isa):
    """Every 16-bit pattern against a spread of partners, plus many random pairs."""
    npdt = numpy_dtype(dt)
    rng = np.random.default_rng(dt)
    everything = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(npdt)
    partners = np.array([0.0, -0.0, 1.0, -1.5, 3.0e-5, 1e-7, 6.1e-5, 1000.0, 65504.0, 0.333,
                         2.0 ** -24, np.inf, np.nan], dtype=np.float32).astype(npdt)
    partners = np.concatenate([partners, rng.integers(0, 65536, 8).astype(np.uint16).view(npdt)])
    for p in partners:
        b = np.full(65536, p, dtype=npdt)
        for op in (SUM, PROD, MIN, MAX):
            out = np.empty_like(everything)
            R.reduce_arrays(out, everything, b, dt, op)
            assert_same(dt, op, out, reference(dt, op, everything, b), f"partner {p!r}")
    a = rng.integers(0, 65536, 1 << 18).astype(np.uint16).view(npdt)
    b = rng.integers(0, 65536, 1 << 18).astype(np.uint16).view(npdt)
    for op in (SUM, PROD):
        out = np.empty_like(a)
        R.reduce_arrays(out, a, b, dt, op, True)
        assert_same(dt, op, out, reference(dt, op, a, b), "random pairs")


def test_rounding_boundaries_narrow(isa):
    """Sums that land exactly on / next to rounding ties and overflow thresholds."""
    f32 = np.float32
    targets = np.array([448, 464, 465, 479.9, 480, 496, 57344, 61439, 61440, 65504, 65519.9,
                        65520, 65536, 2.0 ** -6, 2.0 ** -7 * 1.5, 2.0 ** -10, 2.0 ** -14,
                        2.0 ** -16, 2.0 ** -17, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 1e-9],
                       dtype=np.float64)
    for dt in NARROW:
        npdt = numpy_dtype(dt)
        # x + y == t (approximately) with x, y exactly representable in dt
        with np.errstate(all="ignore"):
            xs = np.concatenate([targets, -targets]).astype(f32).astype(npdt)
            halves = (np.concatenate([targets, -targets]) / 2).astype(f32).astype(npdt)
        for a, b in ((xs, halves), (halves, halves), (xs, xs)):
            for op in (SUM, PROD):
                out = np.empty_like(a)
                R.reduce_arrays(out, a, b, dt, op)
                assert_same(dt, op, out, reference(dt, op, a, b))


def int_trunc_div(a, n):
    return np.array([(int(x) // n) if int(x) >= 0 else -((-int(x)) // n) for x in a],
                    dtype=a.dtype)


@pytest.mark.parametrize("dt", DTYPES, ids=[numpy_dtype(d).name for d in DTYPES])
def test_divide(dt, isa):
    rng = np.random.default_rng(77 + dt)
    for n in (1, 2, 3, 4, 7, 1000, 1024):          # powers of two: float32/64 multiply by 1/n
        for size in (0, 1, 5, 37, 1001):
            x = random_array(dt, size, rng)
            y = x.copy()
            R.divide_array(y, dt, n)
            if dt == BOOL or n == 1:
                want = x
            elif dt in INTS:
                want = int_trunc_div(x, n)
            else:
                with np.errstate(all="ignore"):
                    want = (x.astype(np.float32) / np.float32(n)).astype(x.dtype) if dt in NARROW \
                        else x / x.dtype.type(n)
            exact = dt not in FLOATS or n == 1  # n == 1 leaves the bits alone (NaNs included)
            assert_same(dt, MIN if exact else "div", y, want, f"n={n} size={size}")


@pytest.mark.parametrize("name", ["float32", "float64"])
def test_divide_by_a_power_of_two_is_the_division_bit_for_bit(name, isa):
    """float32/64 divide by a power of two as a multiply by its exact inverse: the same correctly
    rounded value, checked on the values where it could differ (subnormal results, the largest
    finite, infinities, signed zeros)."""
    d = np.dtype(name)
    info = np.finfo(d)
    x = np.array([info.smallest_subnormal, 3 * info.smallest_subnormal, info.tiny, info.tiny * 3,
                  info.max, -info.max, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.5, 1 / 3] * 3, dtype=d)
    x[::3] = -x[::3]
    dt = FLOAT32 if name == "float32" else FLOAT64
    for n in (2, 4, 8, 1024, 1 << 20):
        y = x.copy()
        R.divide_array(y, dt, n)
        want = x / d.type(n)
        assert y.tobytes() == want.tobytes(), (n, y, want)


def test_divide_extremes(isa):
    for dt in INTS:
        info = np.iinfo(numpy_dtype(dt))
        x = np.array([info.min, info.max, info.min + 1, info.max - 1, 0, 1, -1 if info.min else 2] * 5,
                     dtype=numpy_dtype(dt))
        for n in (2, 3, 5, 2 ** 31 - 1, 2 ** 31 + 3, 2 ** 40 + 1):
            y = x.copy()
            R.divide_array(y, dt, n)
            np.testing.assert_array_equal(y, int_trunc_div(x, n), err_msg=f"{x.dtype} / {n}")
    y = np.arange(10, dtype=np.int32)
    R.divide_array(y, INT32, 0)  # n <= 1: no-op, never a crash
    R.divide_array(y, INT32, -3)
    np.testing.assert_array_equal(y, np.arange(10, dtype=np.int32))


@pytest.mark.parametrize("streaming", [False, True])
def test_copy(streaming, isa):
    rng = np.random.default_rng(5)
    src0 = rng.integers(0, 256, 300_000, dtype=np.uint8)
    for n in (0, 1, 63, 64, 65, 4095, 4096, 4097, 100_003, 262_144):
        for soff in (0, 1, 17):
            for doff in (0, 3, 64):
                dst0 = np.zeros(n + doff + 7, dtype=np.uint8)
                R.copy_array(dst0[doff:doff + n], src0[soff:soff + n], streaming)
                assert np.array_equal(dst0[doff:doff + n], src0[soff:soff + n]), (n, soff, doff)
                assert not dst0[:doff].any() and not dst0[doff + n:].any(), (n, soff, doff)
                for eoff in (doff, doff + 1):     # dual: equally / differently aligned
                    d0, e0 = np.zeros(n + doff + 7, np.uint8), np.zeros(n + eoff + 7, np.uint8)
                    R.copy_array(d0[doff:doff + n], src0[soff:soff + n], streaming,
                                 also=e0[eoff:eoff + n])
                    for z, off in ((d0, doff), (e0, eoff)):
                        assert np.array_equal(z[off:off + n], src0[soff:soff + n]), (n, soff, off)
                        assert not z[:off].any() and not z[off + n:].any(), (n, soff, off)


def test_streaming_large_float32(isa):
    """Several tiles, dst misaligned by 4 bytes, remainders that are not whole cache lines."""
    rng = np.random.default_rng(9)
    n = 3 * 1024 * 17 + 13
    a = rng.standard_normal(n + 1).astype(np.float32)[1:]
    b = rng.standard_normal(n + 1).astype(np.float32)[1:]
    out = np.zeros(n + 1, np.float32)[1:]
    R.reduce_arrays(out, a, b, FLOAT32, SUM, True)
    assert np.array_equal(out, a + b)
    # dst not even element-aligned: falls back to ordinary stores, same result
    raw = np.zeros(n * 4 + 2, np.uint8)
    R.reduce_arrays(raw[1:1 + n * 4], a, b, FLOAT32, SUM, True)
    assert np.array_equal(raw[1:1 + n * 4].view(np.float32), a + b)


def test_dual_streaming_large(isa):
    """The dual kernel over many 256-byte blocks with heads and tails on both outputs, as the
    symmetric allreduce uses it; a second output of another length is refused."""
    rng = np.random.default_rng(11)
    n = 5 * 1024 * 33 + 7
    a = rng.standard_normal(n + 3).astype(np.float32)[3:]
    b = rng.standard_normal(n + 3).astype(np.float32)[3:]
    for doff in (0, 5):
        d = np.zeros(n + doff, np.float32)[doff:]
        e = np.zeros(n + doff, np.float32)[doff:]
        R.reduce_arrays(d, a, b, FLOAT32, SUM, True, also=e)
        assert np.array_equal(d, a + b) and np.array_equal(e, a + b), doff
    with pytest.raises(ValueError, match="second output"):
        R.reduce_arrays(d, a, b, FLOAT32, SUM, True, also=e[:-1])


def test_forward_streaming_large(isa):
    """The ring relay's forward kernel over many 256-byte blocks: the FIFO side at any 4-byte
    offset, the output with and without a head before its first 64-byte line, out of place and
    over an input (in place)."""
    rng = np.random.default_rng(13)
    n = 5 * 1024 * 33 + 7
    a = rng.standard_normal(n + 3).astype(np.float32)[3:]
    b = rng.standard_normal(n + 3).astype(np.float32)[3:]
    for doff, eoff in ((0, 0), (1, 0), (0, 5), (3, 7)):
        for streaming in (False, True):
            d = np.zeros(n + doff, np.float32)[doff:]
            e = np.zeros(n + eoff, np.float32)[eoff:]
            R.reduce_arrays(d, a, b, FLOAT32, SUM, streaming, also=e, forward=True)
            assert np.array_equal(d, a + b) and np.array_equal(e, a + b), (doff, eoff, streaming)
            x = np.zeros(n + eoff, np.float32)[eoff:]
            x[:] = a
            R.reduce_arrays(d, x, b, FLOAT32, SUM, streaming, also=x, forward=True)
            assert np.array_equal(x, a + b) and np.array_equal(d, a + b), (doff, eoff, streaming)


def test_kernel_isa_reported():
    assert R.kernel_isa() in ("avx2", "baseline")
    with pytest.raises(ValueError):
        R.select_kernel_isa("sse9")
