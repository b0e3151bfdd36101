"""The single-copy allgather that writes each rank's block into every peer's output ("push",
_native/single_copy.pyx read_peers), routed by the probe's verdicts (collectives/single_copy_probe.py
ORDERS, apply_orders): right results at odd sizes, every dtype width and in place on 3, 5 and 8
ranks, mixed with arrival-order reads in one loop; the fallback when a write is refused; and a peer
dying, stalling or publishing a bad output address mid-call ends in an error on every survivor, not
a hang. The probe's verdict rows and masks for the order are checked too."""
import numpy as np
import pytest

from tests.launcher import run_ranks, run_ranks_expect_failure
from tests.test_single_copy_plain import EVERYWHERE
from tests.test_single_copy_steps import _correct, _mid_call, _refused


@pytest.mark.parametrize("size", [3, 5, 8])
def test_routed_push_correct(size):
    assert run_ranks(_correct, size, "push", timeout=150, env=EVERYWHERE) == ["ok"] * size


def test_push_refused_falls_back():
    assert run_ranks(_refused, 3, "push", timeout=90, env=EVERYWHERE) == [True] * 3


@pytest.mark.parametrize("how", ["dies", "stops", "garbage"])
def test_push_peer_fails_mid_call(how):
    res = run_ranks_expect_failure(_mid_call, 3, how, "push", 3, timeout=60, env=EVERYWHERE)
    for rank, (ok, r) in enumerate(res):
        if rank == 1 and how != "garbage":
            continue
        assert ok and r != "no error" and float(r.split(" in ")[1][:-1]) < 15, res
        if how == "dies":
            assert r.startswith("lost"), res
        assert how != "garbage" or rank == 1 or r.startswith("PeerProtocolError"), res   # alive: not "lost"


def test_push_order_rows_and_mask():
    """The probe times push from 3 ranks, keeps its rows beside doubling's, and routes it by the
    same size buckets; an order never both pushes and doubles at one size."""
    from hetccl._native.single_copy import _doubling_bucket
    from hetccl.collectives import single_copy_probe as p
    assert "allgather:push" in p.KEYS
    assert not p.ORDERS[("allgather", "push")](2) and p.ORDERS[("allgather", "push")](3)
    rows = [(s, {"fifo": [10.0] * 7, "single": [5.0] * 7, "doubling": [4.5] * 7,
                 "push": [3.0] * 7 if s >= 8 << 20 else [6.0] * 7}) for s in p.SIZES]
    v = p.verdicts(rows, None, "allgather")
    assert [w for _, w in v["allgather:push"]] == [s >= 8 << 20 for s in p.SIZES]
    assert [w for _, w in v["allgather:doubling"]] == [s < 8 << 20 for s in p.SIZES]
    m = p.order_mask(v["allgather:push"])
    assert m & p.order_mask(v["allgather:doubling"]) == 0
    assert (m >> _doubling_bucket(16 << 20) & 1) and not (m >> _doubling_bucket(1 << 20) & 1)
    big, small = p._laid_out(3 << 20), p._laid_out(1000)      # the probe's allgather buffers
    assert big.dtype == small.dtype == np.float32 and big.size == 3 << 20 and small.size == 1000
    assert big.ctypes.data % (2 << 20) == 0 and small.ctypes.data % 4096 == 0
    assert (big == 1).all() and (small == 1).all()
