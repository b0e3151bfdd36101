"""More ranks than CPUs: a step is priced by the ranks at work in it (LinkCost.crowded).

The pricing (no processes): which ranks a binomial tree's levels keep at work, how crowded the
CPUs are in a step, how the probe's binomial broadcasts become beta_free, and the choices the
recorded quiet run of 2026-12-07 05:44-06:31 got wrong (bench/results/crossover-2026-12-07f.txt:
4-rank reduce at 2 MiB, 3-rank broadcast at 128 B and 32 MiB) with the parameters its probe
measured. Then a real probe of 3 ranks held to 2 CPUs, and a peer stalling in its broadcasts.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest

import hetccl
from hetccl.collectives import broadcast, probe, rooted
from hetccl.collectives.algorithm import binomial_levels
from hetccl.collectives.cost_model import MEASURED, CostModel, LinkCost
from hetccl.collectives.tuner import Tuner
from tests.launcher import run_ranks


def gbs(x):
    return 1 / (x * 1e9)


CACHE = 2 << 20


def _cost(share, alpha, beta, free=0.0, free_out=0.0, gamma=gbs(50), gamma_out=gbs(17.5)):
    return LinkCost(alpha, beta, gamma, beta_out=beta, gamma_out=gamma_out, cache_bytes=CACHE,
                    beta_free=free, beta_free_out=free_out, share=share)


def _tuner(p, cost):
    return Tuner(p, CostModel(cost, MEASURED, "test", ("c2c",)), "")


# The probe's parameters in the quiet run of 2026-12-07 (bench/results/crossover-2026-12-07f-raw,
# cache-nN): the all-ranks beta of the ring; beta_free from that run's own binomial broadcasts
# (bench/crossover_repredict.py --from-sweep: 128 KiB in cache, 8 MiB out of it).
RUN_3 = _cost(1.5, 1.455e-6, 3.542e-10, free=gbs(8.71), free_out=gbs(4.69), gamma=gbs(46.8), gamma_out=gbs(17.3))
RUN_4 = _cost(2.0, 1.574e-6, 3.436e-10, free=gbs(29.1), free_out=gbs(5.23), gamma=gbs(56.5), gamma_out=gbs(17.6))


# ------------------------------------------------------------------------------------------------
# The levels of a tree and the crowding of a step
# ------------------------------------------------------------------------------------------------
def test_binomial_levels_follow_the_native_tree():
    """binomial.pyx: the root sends to relative ranks root+m for m = 2^k down to 1; at the level of
    distance m every multiple of 2m with a partner m further works."""
    assert binomial_levels(1) == []
    assert binomial_levels(2) == [(2, 1)]
    assert binomial_levels(3) == [(2, 1), (2, 1)]            # 0->2, then 0->1: never 3 at work
    assert binomial_levels(4) == [(2, 2), (4, 1)]
    assert binomial_levels(5) == [(2, 1), (2, 2), (4, 1)]
    assert binomial_levels(8) == [(2, 4), (4, 2), (8, 1)]
    for p in range(2, 40):
        levels = binomial_levels(p)
        assert len(levels) == math.ceil(math.log2(p))
        assert sum(b for _, b in levels) == p - 1           # every block reaches the root once
        assert all(2 <= busy <= p for busy, _ in levels)


def test_crowding_runs_from_a_cpu_per_working_rank_to_every_rank_at_work():
    c = _cost(2.0, 1e-6, 3e-10, free=1e-10)                 # 4 ranks on 2 CPUs
    assert c.crowd(2, 4) == 0.0 and c.crowded(2, 4).beta == 1e-10
    assert c.crowd(4, 4) == 1.0 and c.crowded(4, 4) is c
    c8 = dataclasses.replace(c, share=4.0)                  # 8 ranks on 2 CPUs
    assert [c8.crowd(b, 8) for b in (2, 4, 6, 8)] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert c8.crowded(4, 8).beta == pytest.approx(1e-10 + (3e-10 - 1e-10) / 3)
    # no distinction: a CPU per rank, or a model without beta_free (older caches, the defaults)
    assert _cost(1.0, 1e-6, 3e-10, free=1e-10).crowded(2, 4).beta == 3e-10
    assert _cost(2.0, 1e-6, 3e-10).crowded(2, 4).beta == 3e-10


def test_beta_free_goes_in_and_out_of_cache_with_the_call():
    c = _cost(2.0, 1e-6, 3e-10, free=0.5e-10, free_out=1.5e-10)
    assert c.at(16 << 10, "broadcast").crowded(2, 4).beta == 0.5e-10
    assert c.at(64 << 20, "broadcast").crowded(2, 4).beta == pytest.approx(1.5e-10)
    mid = c.at(1 << 20, "broadcast").crowded(2, 4).beta
    assert 0.5e-10 < mid < 1.5e-10


def test_a_tree_level_with_idle_ranks_costs_less_than_one_with_all_at_work():
    """4 ranks on 2 CPUs: the binomial reduce's first level keeps all four at work, its second
    only two; a chain keeps all at work, so only the tree gets cheaper."""
    n, no = 2 << 20, dataclasses.replace(RUN_4, beta_free=0.0, beta_free_out=0.0)
    at, at_no = RUN_4.at(n, "reduce"), no.at(n, "reduce")
    assert rooted.binomial(n, 4, at) < rooted.binomial(n, 4, at_no)
    assert broadcast.chain(n, 4, at) == broadcast.chain(n, 4, at_no)
    # 2 ranks on 2 CPUs: nothing changes whatever beta_free says
    two = _cost(1.0, 0.4e-6, 1.16e-10, free=0.5e-10, free_out=0.5e-10)
    two_no = dataclasses.replace(two, beta_free=0.0, beta_free_out=0.0)
    for f in (rooted.binomial, broadcast.binomial, broadcast.scatter_allgather, rooted.reduce_scatter_gather):
        assert f(n, 2, two.at(n, "reduce")) == f(n, 2, two_no.at(n, "reduce"))


# ------------------------------------------------------------------------------------------------
# The recorded run's choices (ranks > cores)
# ------------------------------------------------------------------------------------------------
def test_four_ranks_on_two_cpus_reduce_2mib_with_the_binomial_tree():
    """Measured (pooled, two passes): binomial 588 us, reduce_scatter_gather 803 us; the model
    priced every level at the all-ranks beta and chose reduce_scatter_gather in every run since
    2026-12-06."""
    without = dataclasses.replace(RUN_4, beta_free=0.0, beta_free_out=0.0)
    assert _tuner(4, without).select("reduce", 2 << 20).name == "reduce_scatter_gather"
    t = _tuner(4, RUN_4)
    assert t.select("reduce", 2 << 20).name == "binomial"
    assert all(t.select("reduce", n).name == "binomial" for n in (8, 32 << 10, 8 << 20, 128 << 20))


def test_three_ranks_on_two_cpus_broadcast_with_the_tree_that_never_crowds_them():
    """At 3 ranks a binomial broadcast keeps at most two ranks at work (0->2, then 0->1); the chain
    keeps all three on the 2 CPUs. Measured: binomial 1.19x faster at 128 B, 1.20x at 32 MiB."""
    without = dataclasses.replace(RUN_3, beta_free=0.0, beta_free_out=0.0)
    t, t0 = _tuner(3, RUN_3), _tuner(3, without)
    for n in (128, 32 << 20):
        assert t0.select("broadcast", n).name == "chain"
        assert t.select("broadcast", n).name == "binomial"


def test_four_ranks_keep_the_chain_for_the_largest_broadcast():
    """At 128 MiB on 4 ranks the chain measured 1.18x faster than the tree (whose second level
    crowds all four ranks): beta_free out of cache, measured far out of cache, keeps it."""
    assert _tuner(4, RUN_4).select("broadcast", 128 << 20).name == "chain"


# The quiet run of 2026-12-07 17:16-17:21 (bench/results/crossover-2026-12-07j-raw): its probe's
# parameters, and the chain's time per byte taken from its sweep (bench/crossover_repredict.py
# --from-sweep: the chain at 128 KiB and 8 MiB), as today's probe times it beside the tree.
J_4 = LinkCost(1.617e-6, 3.150e-10, 1.183e-11, beta_out=3.969e-10, gamma_out=6.382e-11, cache_bytes=CACHE,
               beta_free=8.887e-11, beta_free_out=1.279e-10, beta_chain=1.484e-10, beta_chain_out=2.124e-10,
               share=2.0)
J_3 = LinkCost(1.703e-6, 3.708e-10, 1.558e-11, beta_out=3.708e-10, gamma_out=9.086e-11, cache_bytes=CACHE,
               beta_free=1.679e-10, beta_free_out=2.603e-10, beta_chain=1.079e-10, beta_chain_out=1.955e-10,
               share=1.5)


def test_four_ranks_on_two_cpus_broadcast_2mib_and_up_with_the_chain():
    """Measured (that run): chain 463 us against the tree's 602 at 2 MiB (1.30x), 1787 against
    2219 at 8 MiB, and 0.82-0.85x the tree's time at 32-128 MiB, as in every run since 2026-12-06.
    The chain priced at RELAY x beta (0.75 of the ring's byte) chose the tree; the chain's own
    measured byte chooses it. Below ~32 KiB the tree's two hops against the chain's three decide
    (one call, not a loop: docs/algorithms.md)."""
    without = dataclasses.replace(J_4, beta_chain=0.0, beta_chain_out=0.0)
    t, t0 = _tuner(4, J_4), _tuner(4, without)
    for n in (2 << 20, 8 << 20, 32 << 20, 128 << 20):
        assert t0.select("broadcast", n).name == "binomial"
        assert t.select("broadcast", n).name == "chain"
    assert all(t.select("broadcast", n).name == "binomial" for n in (8, 128, 2 << 10, 8 << 10))


def test_three_ranks_on_two_cpus_never_price_the_chain_below_the_tree():
    """On 3 ranks the tree never has more ranks at work than the 2 CPUs, the chain always three:
    measured a little cheaper per byte in that run's loops (128 KiB: 17.6 against 19.0 us), the
    chain lost to the tree 1.27-1.36x at 32-512 B there and 1.17-1.28x at 32 MiB in most runs."""
    t = _tuner(3, J_3)
    for n in (8, 128, 512, 2 << 10, 128 << 10, 2 << 20, 32 << 20, 128 << 20):
        assert t.select("broadcast", n).name == "binomial", n


# ------------------------------------------------------------------------------------------------
# The probe: beta_free from its binomial broadcasts
# ------------------------------------------------------------------------------------------------
def _raw(p, share, alpha, beta, free, free_out, small=256 << 10, wide=probe.BCAST_BIG):
    """Probe timings that the formulas turn back into these parameters (in cache and out of it
    alike for the ring, so beta_out = beta)."""
    facts = LinkCost(0.0, 0.0, 0.0, share=share)
    from hetccl.collectives.allreduce import ring
    g = gbs(50)
    at = dataclasses.replace(facts, alpha=alpha, beta=beta, gamma=g)
    tree = dataclasses.replace(at, beta_free=free)
    tree_out = dataclasses.replace(at, beta_free=free_out)
    return facts, {
        "barrier_s": alpha * math.ceil(math.log2(p)), "allreduce_s": ring(small, p, at),
        "allreduce_big_s": ring(2 << 20, p, dataclasses.replace(at, gamma=g)),
        "copy_s": 1e-6, "reduce_s": 1e-6 + (64 << 10) * g, "copy_big_s": 1e-4,
        "reduce_big_s": 1e-4 + (1 << 20) * g, "allreduce_bytes": small, "allreduce_big_bytes": 2 << 20,
        "kernel_bytes": 64 << 10, "kernel_big_bytes": 1 << 20, "link_share": 1.0,
        "bcast_s": broadcast.binomial(small, p, tree), "bcast_big_s": broadcast.binomial(wide, p, tree_out),
        "bcast_bytes": small, "bcast_big_bytes": wide}


@pytest.mark.parametrize("p,share", [(3, 1.5), (4, 2.0), (8, 4.0)])
def test_fit_inverts_the_binomial_broadcast_formula(p, share):
    facts, raw = _raw(p, share, 1.5e-6, 3.4e-10, 1.2e-10, 2.0e-10)
    c = probe.fit(raw, p, facts, cache_bytes=CACHE)
    assert (c.beta, c.beta_free, c.beta_free_out) == pytest.approx((3.4e-10, 1.2e-10, 2.0e-10))
    assert c.share == share


def test_fit_keeps_beta_free_between_a_tenth_of_beta_and_beta():
    facts, raw = _raw(4, 2.0, 1.5e-6, 3.4e-10, 1.2e-10, 2.0e-10)
    slow = dict(raw, bcast_s=raw["bcast_s"] * 10, bcast_big_s=raw["bcast_big_s"] * 10)
    c = probe.fit(slow, 4, facts, cache_bytes=CACHE)
    assert c.beta_free == pytest.approx(c.beta) and c.beta_free_out == pytest.approx(c.beta_out)
    fast = dict(raw, bcast_s=1e-9, bcast_big_s=1e-9)
    c = probe.fit(fast, 4, facts, cache_bytes=CACHE)
    assert c.beta_free == pytest.approx(0.1 * c.beta)


def test_no_beta_free_without_crowded_cpus_or_the_broadcasts():
    facts, raw = _raw(4, 2.0, 1.5e-6, 3.4e-10, 1.2e-10, 2.0e-10)
    assert probe.fit(raw, 4, dataclasses.replace(facts, share=1.0), cache_bytes=CACHE).beta_free == 0.0
    older = {k: v for k, v in raw.items() if not k.startswith("bcast")}
    assert probe.fit(older, 4, facts, cache_bytes=CACHE).beta_free == 0.0
    # one CPU: every level of the tree is as crowded as the ring; nothing to tell apart
    assert probe.solve_free(1e-3, 1 << 20, 2, LinkCost(1e-6, 3e-10, 0.0, share=2.0)) == 0.0


def _with_chain(p, raw, alpha, chain, chain_out, small=256 << 10, wide=probe.BCAST_BIG):
    """The probe's chain broadcasts as the chain formula prices them at these per-byte times."""
    c = LinkCost(alpha, 3.4e-10, 0.0, share=2.0, beta_chain=chain)
    c_out = dataclasses.replace(c, beta_chain=chain_out)
    return dict(raw, chain_s=broadcast.chain(small, p, c), chain_big_s=broadcast.chain(wide, p, c_out),
                chain_bytes=small, chain_big_bytes=wide)


@pytest.mark.parametrize("p,share", [(3, 1.5), (4, 2.0), (8, 4.0)])
def test_fit_inverts_the_chain_broadcast_formula(p, share):
    facts, raw = _raw(p, share, 1.5e-6, 3.4e-10, 1.2e-10, 2.0e-10)
    c = probe.fit(_with_chain(p, raw, 1.5e-6, 1.4e-10, 2.1e-10), p, facts, cache_bytes=CACHE)
    assert (c.beta_chain, c.beta_chain_out) == pytest.approx((1.4e-10, 2.1e-10))
    assert (c.beta_free, c.beta_free_out) == pytest.approx((1.2e-10, 2.0e-10))     # untouched
    # in between its two sizes the chain's byte runs log-linear, as beta_free does
    mid = c.at(1 << 20, "broadcast").beta_chain
    assert 1.4e-10 < mid < 2.1e-10


def test_no_beta_chain_without_crowded_cpus_or_its_broadcasts():
    facts, raw = _raw(4, 2.0, 1.5e-6, 3.4e-10, 1.2e-10, 2.0e-10)
    timed = _with_chain(4, raw, 1.5e-6, 1.4e-10, 2.1e-10)
    assert probe.fit(timed, 4, dataclasses.replace(facts, share=1.0), cache_bytes=CACHE).beta_chain == 0.0
    assert probe.fit(raw, 4, facts, cache_bytes=CACHE).beta_chain == 0.0            # older probes
    # a chain slower than its hops never prices a byte below a tenth of what was measured
    fast = dict(timed, chain_s=1e-9, chain_big_s=1e-9)
    assert probe.fit(fast, 4, facts, cache_bytes=CACHE).beta_chain == pytest.approx(0.1e-9 / (256 << 10))
    # without it the chain keeps the relay formula, with it the measured byte
    n, c = 8 << 20, _cost(2.0, 1.5e-6, 3.4e-10, free=1.2e-10, free_out=2.0e-10)
    assert broadcast.chain(n, 4, c) == pytest.approx(3 * 1.5e-6 + n * 0.75 * 3.4e-10)
    timed_c = dataclasses.replace(c, beta_chain=2.1e-10)
    assert broadcast.chain(n, 4, timed_c) == pytest.approx(3 * 1.5e-6 + n * 2.1e-10)


def test_the_chains_busiest_cpu():
    """Root and last rank one pass per byte, relays 1.5; ranks go whole onto the CPUs."""
    assert broadcast.busiest_cpu(3, 3) == 1.5          # a CPU each: the relay's pace
    assert broadcast.busiest_cpu(3, 2) == 2.0          # relay | root + last
    assert broadcast.busiest_cpu(4, 2) == 2.5
    assert broadcast.busiest_cpu(8, 2) == 5.5
    c3 = _cost(1.5, 1.5e-6, 3.7e-10, free=1.7e-10, free_out=2.6e-10)
    assert broadcast.chain_floor(3, c3) == pytest.approx(1.7e-10)    # the tree's two one-pass levels
    assert broadcast.chain_floor(4, dataclasses.replace(c3, share=2.0)) == 0.0   # its level of 4 crowds
    assert broadcast.chain_floor(3, dataclasses.replace(c3, beta_free=0.0)) == 0.0


def test_garbage_beta_free_in_a_cache_entry_is_a_miss(tmp_path):
    good = {"alpha": 1e-6, "beta": 3e-10, "gamma": 2e-11, "beta_free": 1e-10, "beta_free_out": 2e-10}
    assert LinkCost.valid_params(good)
    for bad in (-1.0, float("nan"), float("inf"), "1e-10", True):
        assert not LinkCost.valid_params(dict(good, beta_free=bad)), bad
    s = probe.shape("h", ["c2c"], 4, cpus=2, version="v")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"format": probe.FORMAT, "entries": {
        probe.cache_key(s): dict(good, beta_free_out=-3.0, **s)}}))
    assert probe.lookup(s, str(path)) is None
    assert probe.FORMAT >= 7          # entries without beta_free are measured again once


# ------------------------------------------------------------------------------------------------
# The recorded run, re-decided offline (bench/crossover_repredict.py)
# ------------------------------------------------------------------------------------------------
RECORDED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "results",
                        "crossover-2026-12-07f-raw")


@pytest.mark.skipif(not os.path.isdir(RECORDED), reason="the recorded crossover run is not in this checkout")
def test_the_recorded_crossover_run_re_decided_loses_no_point(capsys):
    """Its own probe (no beta_free) re-decides the run as it ran: 225/228, but for four points
    whose schedule changed since: the 4-rank alltoall at 32 B-2 KiB, where the run timed the
    pairwise exchange one step at a time (Bruck 1.16-1.30x faster) and today's price is of the
    windowed one (1.19-1.43x faster than Bruck at those sizes in
    bench/results/crossover-alltoall-2026-12-07n.txt): 221/228. With beta_free taken from the
    run's own binomial broadcasts the three misses pass (224/228)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "crossover_repredict", os.path.join(os.path.dirname(RECORDED), "..", "crossover_repredict.py"))
    repredict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(repredict)
    repredict.main([RECORDED])
    out = capsys.readouterr().out
    assert "recorded 225/228, re-decided by today's model 221/228" in out
    assert "alltoall        recorded 12/12 -> 8/12; changed: 32B bruck 1.00x -> pairwise" in out
    repredict.main([RECORDED, "--from-sweep"])
    out = capsys.readouterr().out
    assert "broadcast       recorded 11/13 -> 13/13" in out
    assert "recorded 225/228, re-decided by today's model 224/228" in out    # the 4 alltoall points


# ------------------------------------------------------------------------------------------------
# A real probe with more ranks than CPUs, and a peer stalling in its broadcasts
# ------------------------------------------------------------------------------------------------
def _two_cpus():
    cpus = sorted(os.sched_getaffinity(0))[:2]
    os.sched_setaffinity(0, cpus)
    return len(cpus)


def _crowded_probe_case(rank, size, root):
    os.environ["XDG_CACHE_HOME"] = root
    cpus = _two_cpus()
    comm = hetccl.init(timeout=60)
    m = comm.context.tuner.model
    x = np.full(1000, rank + 1.0, dtype=np.float32)
    comm.broadcast(x, root=0)
    out = {"cpus": cpus, "origin": m.origin, "raw": dict(m.raw), "share": m.cost.share,
           "free": (m.cost.beta_free, m.cost.beta_free_out), "beta": (m.cost.beta, m.cost.beta_out),
           "chain": (m.cost.beta_chain, m.cost.beta_chain_out),
           "value": float(x[0]), "describe": m.describe()}
    comm.close()
    return out


def test_three_ranks_on_two_cpus_probe_beta_free(tmp_path):
    res = run_ranks(_crowded_probe_case, 3, str(tmp_path), timeout=120)
    if res[0]["cpus"] < 2:
        pytest.skip("one CPU: every level of a tree is crowded")
    for r in res:
        assert r["origin"] == MEASURED and r["value"] == 1.0
        assert r["share"] == 1.5
        assert r["free"] == res[0]["free"]                   # rank 0's numbers everywhere
    raw = res[0]["raw"]
    # the broadcast at FREE_SIZES[0], and so the in-cache ring (1.5 ranks per CPU: in_cache_ring_bytes)
    assert raw["bcast_bytes"] == raw["allreduce_bytes"] == 262140 and raw["bcast_big_bytes"] == probe.BCAST_BIG
    assert raw["bcast_us"] > 0 and raw["bcast_big_us"] > 0 and raw["chain_us"] > 0 and raw["chain_big_us"] > 0
    assert raw["chain_bytes"] == raw["bcast_bytes"] and raw["chain_big_bytes"] == probe.BCAST_BIG
    assert all(r["chain"] == res[0]["chain"] and min(r["chain"]) > 0 for r in res)
    (free, free_out), (beta, beta_out) = res[0]["free"], res[0]["beta"]
    assert 0.1 * beta <= free <= beta and 0.1 * beta_out <= free_out <= beta_out
    assert "ranks per CPU" in res[0]["describe"]
    (e,) = probe.read_entries(str(tmp_path / "hetccl" / "cost-model.json")).values()
    assert (e["local"], e["cpus"], e["beta_free"], e["beta_chain"]) == (3, 2, free, res[0]["chain"][0])


def _stalled_tree_case(rank, size, root, algo=None):
    import time as _time
    os.environ["XDG_CACHE_HOME"] = root
    _two_cpus()
    real_measure, real_bcast = probe.measure, probe.schedules.broadcast

    def stalling(engine, buf, root_, dtype, code, timeout):    # rank 2 stalls in the probe's broadcasts
        if algo is None or code == algo:                       # (of one algorithm: algo)
            _time.sleep(6.0)
        return real_bcast(engine, buf, root_, dtype, code, timeout)

    def measure(*a, **k):
        if rank == 2 and k.get("crowded", a[5] if len(a) > 5 else False):
            probe.schedules.broadcast = stalling
        try:
            return real_measure(*a, **k)
        finally:
            probe.schedules.broadcast = real_bcast
    probe.measure = measure
    t0 = _time.monotonic()
    try:
        hetccl.init(timeout=2)
    except hetccl.HetcclError as e:
        return {"error": type(e).__name__, "message": str(e), "secs": _time.monotonic() - t0}
    return {"error": None, "secs": _time.monotonic() - t0}


@pytest.mark.parametrize("algo", [None, probe.ALGO_CHAIN], ids=["every-broadcast", "chain"])
def test_a_peer_stalling_in_the_probes_broadcast_fails_init_and_caches_nothing(tmp_path, algo):
    res = run_ranks(_stalled_tree_case, 3, str(tmp_path), algo, timeout=60)
    assert all(r["error"] is not None for r in res), res
    assert any(r["error"] == "HetcclTimeout" for r in res[:2]), res
    assert probe.read_entries(str(tmp_path / "hetccl" / "cost-model.json")) == {}
