"""bench/transports.py's allreduce-bound section: the bound's kernels compute what its accounting
says (in process), and the section runs end to end on two real ranks at a small size."""
import importlib
import os
import sys

import numpy as np
import pytest

from tests.launcher import IMPORT_ROOT  # noqa: F401  (this checkout, for spawned children too)

REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


@pytest.fixture(scope="module")
def tr():
    """bench/transports.py by its module name (its spawned ranks unpickle functions from it; spawn
    hands them this sys.path; the module keeps bench/ on it)."""
    sys.path.insert(0, os.path.join(REPO, "bench"))
    return importlib.import_module("transports")


def _fill(bufs, rng):
    for k in ("a", "b", "as", "bs", "x8", "f3"):
        v = bufs[k].view(np.float32)
        v[:] = rng.integers(-50, 50, v.size)


@pytest.mark.parametrize("pattern, keys", [("dual-write", "abde"), ("dual-write, plain stores", "abde"),
                                           ("dual-write, shared pages", ("as", "bs", "ds", "es"))])
def test_out_of_place_bound_writes_the_sum_into_both_outputs(tr, pattern, keys):
    bufs = tr._ar_buffers(1 << 20, 64 << 10)
    _fill(bufs, np.random.default_rng(1))
    a, b = (bufs[k].view(np.float32).copy() for k in keys[:2])
    tr.allreduce_traffic(None, bufs, pattern)            # touches this process's buffers only
    for out in keys[2:]:
        assert np.array_equal(bufs[out].view(np.float32), a + b)


@pytest.mark.parametrize("pattern", ["dual-write in place", "dual-write in place, plain stores"])
def test_in_place_bound_writes_the_sum_over_both_inputs(tr, pattern):
    bufs = tr._ar_buffers(1 << 20, 64 << 10)
    _fill(bufs, np.random.default_rng(2))
    want = bufs["a"].view(np.float32) + bufs["b"].view(np.float32)
    tr.allreduce_traffic(None, bufs, pattern)
    assert np.array_equal(bufs["a"].view(np.float32), want)
    assert np.array_equal(bufs["b"].view(np.float32), want)


@pytest.mark.parametrize("pattern", ["ring alone", "ring alone, 256K slices", "one-pass ring",
                                     "one-pass ring, 256K slices", "ring alone in place",
                                     "one-pass ring in place, 256K slices", "forward-kernel ring",
                                     "forward-kernel ring in place",
                                     "forward-kernel ring in place, 256K slices", "paired ring",
                                     "paired ring, 256K slices", "paired ring in place",
                                     "paired ring in place, 256K slices"])
def test_ring_alone_runs_the_rings_kernels(tr, pattern):
    """With the peer's FIFO slice standing still (f3), the output holds what the ring would write
    had the peer sent f3 every slice: my block reduced with it, and f3 copied into the other."""
    bufs = tr._ar_buffers(1 << 20, 64 << 10)
    _fill(bufs, np.random.default_rng(3))
    x = bufs["x8"].view(np.float32).copy()
    h = x.size // 2
    sl = (tr.RING_ALONE[pattern][0] or bufs["slice"]) // 4
    peer = np.resize(bufs["f3"].view(np.float32)[:sl], h)
    tr.allreduce_traffic(None, bufs, pattern)
    o = bufs["x8" if "in place" in pattern else "o8"].view(np.float32)
    assert np.array_equal(o[h:], x[h:] + peer)
    assert np.array_equal(o[:h], peer)
    assert np.array_equal(bufs["f1"].view(np.float32)[:sl], x[h - sl:h])   # my last slice sent


def test_allreduce_bound_section_runs_on_two_ranks(tr):
    rows, summary, info = tr.allreduce_bound_rows(1 << 20, quick=True)
    assert [r["pattern"] for r in rows] == list(tr.AR_PATTERNS)
    assert all(float(r["GB/s (N / time)"]) > 0 for r in rows)
    assert info["allreduce"] and info["transport"] in ("c2c", "shm")
    assert summary[0].startswith("allreduce / its memory-traffic bound (plain buffers: ")
    assert "target >= 0.9" in summary[0]
    assert summary[1].startswith("allreduce in place / its memory-traffic bound (plain buffers: ")
    assert any(s.startswith("allreduce / the shared-memory minimum") for s in summary)
    assert any(s.startswith("where the time goes: reduce_scatter") for s in summary)
    assert any(s.startswith("the page size (shmem huge pages: ") for s in summary)
    assert any(s.startswith("allreduce, plain numpy buffers, automatic registration (") for s in summary)


def test_ring_ab_runs_every_variant_on_two_ranks(tr, capsys):
    """bench/ring_ab.py: every fused-step variant checks its result and gets a row."""
    ring_ab = importlib.import_module("ring_ab")
    ring_ab.main(["--size", "1M", "--rounds", "1", "--reps", "1"])
    out = capsys.readouterr().out
    for v in ring_ab.VARIANTS:
        assert out.count(f"| {v} |") == 2, out            # out of place and in place
