"""The 2-rank FIFO ring allreduce's paired copies (link_shm.pxd: shm_pair): each slice's copy out of
the FIFO runs in one pass with the next slice's copy into the other FIFO (kernels: copy_pair).

Checked here: the kernel at odd sizes and alignments, with and without streaming stores; the ring
with the pairing on and off (ring.ring_variant) at odd counts, in place and out of place, over
every FIFO transport, for integer, float and narrow-float dtypes and several ops, against numpy;
and a rank killed while its peer is inside a paired ring allreduce."""
from __future__ import annotations

import os
import signal
import threading
import time

import ml_dtypes
import numpy as np
import pytest

from tests.launcher import run_ranks, run_ranks_expect_failure


# ------------------------------------------------------------------------------------------------
# the kernel, in process
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("streaming", [False, True])
def test_copy_pair_copies_both_streams_at_any_size_and_alignment(streaming):
    from hetccl._native.kernels import copy_pair
    rng = np.random.default_rng(7)
    for n in (0, 1, 63, 64, 65, 4095, 4096, 4097, 70001, (1 << 20) + 13):
        for off in (0, 1, 8, 63):                   # the second destination off its 64-byte lines
            src = rng.integers(0, 256, n + 3, dtype=np.uint8)
            src2 = rng.integers(0, 256, n + 5, dtype=np.uint8)
            dst = np.zeros(n + 64, np.uint8)
            dst2 = np.zeros(n + 128, np.uint8)
            copy_pair(dst[3:3 + n], src[3:3 + n], dst2[off:off + n], src2[5:5 + n], streaming)
            assert np.array_equal(dst[3:3 + n], src[3:3 + n]), (n, off)
            assert np.array_equal(dst2[off:off + n], src2[5:5 + n]), (n, off)
            assert not dst[:3].any() and not dst[3 + n:].any(), (n, off)      # nothing outside
            assert not dst2[:off].any() and not dst2[off + n:].any(), (n, off)


def test_copy_pair_refuses_overlap_and_mismatched_lengths():
    from hetccl._native.kernels import copy_pair
    a = np.zeros(1 << 16, np.uint8)
    b = np.ones(1 << 16, np.uint8)
    with pytest.raises(ValueError, match="overlap"):
        copy_pair(a[:4096], b[:4096], a[100:4196], b[8192:12288])
    with pytest.raises(ValueError, match="differ in length"):
        copy_pair(a[:4096], b[:4096], a[8192:12288], b[:100])
    with pytest.raises(ValueError, match="cannot take"):
        copy_pair(a[:10], b[:4096], a[8192:12288], b[4096:8192])


# ------------------------------------------------------------------------------------------------
# the ring, 2 ranks
# ------------------------------------------------------------------------------------------------
def _dtype(name):
    return np.dtype(getattr(ml_dtypes, name)) if name == "bfloat16" else np.dtype(name)


# (dtype, op, elements): odd counts; > 16 MiB ones stream their output (the engine's threshold)
CASES = [("float32", "SUM", (16 << 20) // 4 + 7), ("float16", "AVG", (17 << 20) // 2 + 1),
         ("bfloat16", "MAX", (3 << 20) // 2 + 3), ("int8", "SUM", (3 << 20) + 5),
         ("int64", "PROD", (3 << 20) // 8 + 1), ("float64", "MIN", (5 << 20) // 8 + 3),
         ("uint16", "BAND", (3 << 20) // 2 + 11)]


def _reference(name, op, a, b):
    if op == "AVG":
        return ((a.astype(np.float32) + b.astype(np.float32)) / 2).astype(a.dtype)
    f = {"SUM": np.add, "PROD": np.multiply, "MAX": np.maximum, "MIN": np.minimum,
         "BAND": np.bitwise_and}[op]
    if name == "bfloat16" and op in ("SUM", "PROD"):
        return f(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
    return f(a, b)


def _inputs(name, n, rank):
    base = np.arange(n, dtype=np.int64) % 13         # small integers: exact in every dtype here
    return (base + 3 * rank + 1).astype(_dtype(name))


def _paired_rank(rank, size, transport):
    import hetccl
    from hetccl._native.ring import ring_variant
    comm = hetccl.init(timeout=60)
    bad = []
    try:
        assert comm.transport(1 - rank) == transport, comm.transport(1 - rank)
        for name, op, n in CASES:
            want = _reference(name, op, _inputs(name, n, 0), _inputs(name, n, 1))
            for pair in (True, False):
                ring_variant(True, pair)
                x = _inputs(name, n, rank)
                out = np.empty(n + 1, _dtype(name))[1:]        # off the 64-byte lines
                comm.allreduce(x, getattr(hetccl, op), out=out, algorithm="ring")
                if not np.array_equal(out, want):
                    i = int(np.flatnonzero(out != want)[0])
                    bad.append(f"{name} {op} n={n} paired={pair} out of place: [{i}] {out[i]} != {want[i]}")
                if not np.array_equal(x, _inputs(name, n, rank)):
                    bad.append(f"{name} {op} paired={pair}: the input changed")
                comm.allreduce(x, getattr(hetccl, op), algorithm="ring")     # in place
                if not np.array_equal(x, want):
                    i = int(np.flatnonzero(x != want)[0])
                    bad.append(f"{name} {op} n={n} paired={pair} in place: [{i}] {x[i]} != {want[i]}")
    finally:
        ring_variant()
        comm.close()
    return bad


@pytest.mark.parametrize("transport", ["c2c", "shm"])
def test_paired_ring_matches_numpy_and_the_unpaired_ring(transport):
    for r, bad in enumerate(run_ranks(_paired_rank, 2, transport, timeout=150, transports=transport)):
        assert not bad, f"rank {r}: {bad}"


def _killed_rank(rank, size, stamp_path):
    import hetccl
    comm = hetccl.init(timeout=30)
    x = np.ones((32 << 20) // 4, dtype=np.float32)
    comm.allreduce(x, algorithm="ring")
    if rank == 1:
        def die():
            with open(stamp_path, "w") as f:
                f.write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Timer(0.2, die).start()        # while the main thread is inside an allreduce
    end = time.monotonic() + 30
    calls = 0
    while time.monotonic() < end:
        try:
            comm.allreduce(x, out=np.empty_like(x), algorithm="ring", timeout=25)
            calls += 1
        except Exception as e:  # noqa: BLE001
            at = time.time()
            try:
                comm.close()
            except Exception:  # noqa: BLE001
                pass
            return {"exc": type(e).__name__, "msg": str(e), "at": at, "calls": calls}
    return {"exc": None, "calls": calls}


def test_peer_killed_mid_paired_ring_allreduce(tmp_path):
    stamp = tmp_path / "killed_at"
    res = run_ranks_expect_failure(_killed_rank, 2, str(stamp), timeout=45)
    assert not res[1][0], f"the victim returned: {res[1]}"
    ok, out = res[0]
    assert ok, f"rank 0 failed instead of reporting: {out}"
    assert out["exc"] == "PeerLostError", out
    assert "rank 1" in out["msg"], out
    assert out["at"] - float(stamp.read_text()) < 10.0, out
