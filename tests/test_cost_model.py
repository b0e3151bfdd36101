"""The pricing rules of the cost model (no processes): in cache and out of it, how the probe's
timings become parameters (the formulas' own byte counting, a wire's sustained rate), the per-call
path, the symmetric path's own entries, and the stored forms of a model (cache entries, tuning
files, the simulator's records) with and without the cache fields.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import types

import pytest

from hetccl.collectives import probe, tuning_file
from hetccl.collectives.allreduce import ring as ring_allreduce
from hetccl.collectives.cost_model import (CALL_LATENCY_S, CALL_S, IN_CACHE, MEASURED, OUT_OF_CACHE,
                                           PARAMS, WORKING_SET, CostModel, LinkCost, call_cost)
from hetccl.collectives.tuner import Tuner
from hetccl.memory import symmetric


def gbs(x):
    return 1 / (x * 1e9)


# What the probe measured on the 2-vCPU VM, quiet (bench/results/crossover-2026-12-06.txt and the
# probe's raw timings): in cache a byte crosses at ~6.9 GB/s and a reduction adds little; out of
# it ~4.9 GB/s, and a reduction ~16 GB/s. At 4 ranks on 2 cores the ring's beta is ~3 GB/s.
CACHE = 2 << 20


def _cost(alpha, b_in, b_out, g_in, g_out, cache=CACHE):
    return LinkCost(alpha, gbs(b_in), gbs(g_in), beta_out=gbs(b_out), gamma_out=gbs(g_out),
                    cache_bytes=cache)


def _tuner(p, cost):
    return Tuner(p, CostModel(cost, MEASURED, "test", ("c2c",)), "")


def test_in_cache_parameters_below_the_cache_out_of_cache_well_beyond_it():
    c = _cost(1e-6, 7.0, 5.0, 100.0, 16.0)
    small = int(IN_CACHE * CACHE) // WORKING_SET
    assert c.at(small) is c and c.at(1) is c
    big = c.at(int(OUT_OF_CACHE * CACHE) // WORKING_SET + 1)
    assert big.beta == pytest.approx(c.beta_out) and big.gamma == pytest.approx(c.gamma_out)
    mid = [c.at(n) for n in (small * 2, small * 3)]
    assert c.beta < mid[0].beta < mid[1].beta < c.beta_out          # log-linear in the working set
    assert c.at(10 ** 12).beta == pytest.approx(c.beta_out)
    # the measured edges on the 2-vCPU VM (2 MiB private cache): a 2-rank allreduce of 256 KiB in
    # cache, of 1 MiB mostly out; a reduce (one buffer) of 512 KiB still in
    assert c.out_of_cache(256 << 10, "allreduce") == 0.0 and c.out_of_cache(1 << 20, "allreduce") > 0.75
    assert c.out_of_cache(512 << 10, "reduce") == 0.0 and c.out_of_cache(4 << 20, "reduce") == 1.0


def test_a_model_without_the_cache_fields_prices_every_size_alike():
    c = LinkCost(1e-6, 2e-10, 5e-11)
    assert c.at(1 << 30) is c and c.out_of_cache(1 << 30) == 0.0
    # only beta_out given (gamma_out 0): gamma stays the one measured
    d = dataclasses.replace(c, beta_out=4e-10, cache_bytes=CACHE)
    assert d.at(1 << 30).beta == pytest.approx(4e-10) and d.at(1 << 30).gamma == c.gamma


def test_four_rank_reduce_in_cache_takes_the_binomial_tree():
    """Measured (4 ranks on 2 cores): binomial 31 us against reduce_scatter_gather 67 us at 128 KiB,
    121 against 251 us at 512 KiB. In cache a reduction costs little, and the tree, which reduces
    the whole buffer at every level, wins; priced with the out-of-cache gamma everywhere (one
    parameter set, as before) the tree lost at these sizes."""
    c = _cost(1.4e-6, 3.1, 3.1, 50.0, 17.0)
    t = _tuner(4, c)
    for n in (128 << 10, 512 << 10):
        assert t.select("reduce", n).name == "binomial"
    flat = LinkCost(c.alpha, c.beta_out, c.gamma_out)
    assert _tuner(4, flat).select("reduce", 128 << 10).name == "reduce_scatter_gather"


def test_two_rank_allreduce_at_32k_takes_recursive_doubling():
    """Measured: recursive doubling 5.45 us, ring 6.82 us at 32 KiB (2 ranks); the ring's saving
    of half the reduction is worth less than its second step while the data is in cache."""
    t = _tuner(2, _cost(0.4e-6, 6.9, 4.85, 100.0, 16.0))
    assert t.select("allreduce", 32 << 10).name == "recursive_doubling"
    assert t.select("allreduce", 8 << 20).name == "ring"


def test_large_calls_are_priced_out_of_cache():
    """The 8 MiB points were predicted too fast with the in-cache beta: a call of 8 MiB now pays
    the out-of-cache parameters, a call of 64 KiB the in-cache ones."""
    c = _cost(0.4e-6, 6.9, 4.85, 100.0, 16.0)
    t = _tuner(2, c)
    ring = next(a for a in t.table("allreduce", 8 << 20) if a[0].name == "ring")
    out = LinkCost(c.alpha, c.beta_out, c.gamma_out)
    assert ring[1] == pytest.approx(ring[0].cost(8 << 20, 2, out) + call_cost("allreduce", 2))
    ring64 = next(a for a in t.table("allreduce", 64 << 10) if a[0].name == "ring")
    assert ring64[1] < ring[0].cost(64 << 10, 2, out) + call_cost("allreduce", 2)


def test_the_latency_path_pays_less_per_call_than_the_full_path():
    from hetccl.collectives import schedules
    assert call_cost("allreduce", 2) == CALL_LATENCY_S < CALL_S == call_cost("barrier", 2)
    assert all(call_cost(c, 4) == (CALL_LATENCY_S if schedules.latency_path_takes(c, None) else CALL_S)
               for c in ("allreduce", "reduce", "gather", "barrier", "allgatherv"))
    assert call_cost("allreduce", 1) == 0.0


# ------------------------------------------------------------------------------------------------
# The probe's timings -> parameters
# ------------------------------------------------------------------------------------------------
def _raw(p, facts, alpha, b_in, b_out, g_in, g_out, small=256 << 10, big=4 << 20, burst=0.0):
    """The timings a probe would read on a machine that follows the formulas exactly (a token
    bucket of *burst* bytes passing its bytes for free)."""
    def ar(n, beta, gamma):
        return ring_allreduce(n, p, dataclasses.replace(facts, alpha=alpha, beta=beta, gamma=gamma))
    return {"barrier_s": alpha * math.ceil(math.log2(p)),
            "allreduce_s": ar(small, b_in, g_in) - burst * b_in,
            "allreduce_big_s": ar(big, b_out, g_out) - burst * b_out,
            "copy_s": 1e-6, "reduce_s": 1e-6 + (64 << 10) * g_in,
            "copy_big_s": 1e-4, "reduce_big_s": 1e-4 + (1 << 20) * g_out,
            "allreduce_bytes": small, "allreduce_big_bytes": big, "kernel_bytes": 64 << 10,
            "kernel_big_bytes": 1 << 20, "link_share": 1.0}


@pytest.mark.parametrize("p", [2, 3, 4, 8])
def test_fit_inverts_the_ring_allreduce_formula_in_and_out_of_cache(p):
    """beta is the value the ring allreduce's formula needs (with the gamma of the same working
    set), not the raw bytes per second: over FIFOs the fused relays count one pass per byte."""
    facts = LinkCost(0.0, 0.0, 0.0)
    want = dict(alpha=1e-6, b_in=gbs(6.9), b_out=gbs(4.8), g_in=gbs(90), g_out=gbs(16))
    c = probe.fit(_raw(p, facts, *want.values()), p, facts, cache_bytes=CACHE)
    got = (c.alpha, c.beta, c.beta_out, c.gamma, c.gamma_out)
    assert got == pytest.approx(tuple(want.values()))
    assert c.cache_bytes == CACHE and c.fifo


def test_fit_never_prices_a_byte_in_cache_above_one_out_of_it():
    facts = LinkCost(0.0, 0.0, 0.0)
    c = probe.fit(_raw(4, facts, 3e-6, gbs(1.3), gbs(1.7), gbs(50), gbs(16)), 4, facts, cache_bytes=CACHE)
    assert c.beta == c.beta_out == pytest.approx(gbs(1.7))


def test_a_wires_beta_is_its_sustained_rate_whatever_its_token_bucket_let_through():
    """A tbf-shaped link passes a burst at line rate first: a short ring alone read the 1 Gbit/s
    link at ~0.18 GB/s. The slope between the two rings cancels the burst."""
    facts = LinkCost(0.0, 0.0, 0.0, fifo=False)
    rate = gbs(0.125)
    raw = _raw(4, facts, 40e-6, rate, rate, gbs(90), gbs(16), burst=131072)
    c = probe.fit(raw, 4, facts, cache_bytes=CACHE)
    assert c.beta == pytest.approx(rate) and c.beta_out == pytest.approx(rate)
    # each ring alone, less its steps' latency, reads the link faster than its rate (the burst)
    at = dataclasses.replace(facts, alpha=40e-6, beta=0.0, gamma=gbs(90))
    alone = (raw["allreduce_s"] - ring_allreduce(256 << 10, 4, at)) / (
        ring_allreduce(256 << 10, 4, dataclasses.replace(at, beta=1.0)) - ring_allreduce(256 << 10, 4, at))
    assert alone < 0.9 * rate


@pytest.mark.parametrize("p", [2, 4, 8])
def test_a_loopback_wire_is_fitted_in_and_out_of_cache_like_the_fifos(p):
    """TCP among ranks of one host: kernel copies on the ranks' CPUs, no shaper. Each ring gives its
    own beta (the slope would read one rate at every size, and miss what a call out of cache pays)."""
    facts = LinkCost(0.0, 0.0, 0.0, fifo=False)
    want = dict(alpha=3e-6, b_in=gbs(4.5), b_out=gbs(2.4), g_in=gbs(90), g_out=gbs(16))
    raw = _raw(p, facts, *want.values())
    c = probe.fit(raw, p, facts, cache_bytes=CACHE, network=False)
    assert (c.alpha, c.beta, c.beta_out, c.gamma, c.gamma_out) == pytest.approx(tuple(want.values()))
    assert not c.fifo and c.at(64 << 20).beta == pytest.approx(gbs(2.4))
    slope = probe.fit(raw, p, facts, cache_bytes=CACHE)             # a network link: one rate
    assert slope.beta == slope.beta_out


@pytest.mark.parametrize("p", [2, 4, 5, 8])
def test_a_loopback_wires_exchange_rounds_are_fitted_apart_from_its_ring(p):
    """Over loopback TCP from 4 ranks on the runtime runs Rabenseifner and recursive doubling,
    whose pairwise rounds cost more per byte than the ring's steps: the probe times Rabenseifner
    too, and the exchange formulas (algorithm.exchange) price with what it read, the ring with its
    own beta; between the probe's two sizes the model interpolates (loopback_cache_bytes)."""
    from hetccl.collectives.allreduce import rabenseifner, recursive_doubling
    facts = LinkCost(0.0, 0.0, 0.0, fifo=False)
    big = probe.LOOPBACK_HOST_BYTES // p
    want = dict(alpha=3e-6, b_in=gbs(2.1), b_out=gbs(1.5), g_in=gbs(90), g_out=gbs(16))
    raw = _raw(p, facts, *want.values(), big=big)
    x_in, x_out = gbs(1.4), gbs(0.9)

    def rab(n, beta, beta_x, gamma):         # a non-power of two's fold: one-way, at the ring's beta
        return rabenseifner(n, p, dataclasses.replace(facts, alpha=3e-6, beta=beta, beta_x=beta_x, gamma=gamma))
    raw.update(exchange_s=rab(256 << 10, gbs(2.1), x_in, gbs(90)), exchange_big_s=rab(big, gbs(1.5), x_out, gbs(16)))
    c = probe.fit(raw, p, facts, cache_bytes=CACHE, network=False)
    assert (c.beta, c.beta_out, c.beta_x, c.beta_x_out) == pytest.approx((gbs(2.1), gbs(1.5), x_in, x_out))
    assert c.cache_bytes == probe.loopback_cache_bytes(big)
    assert c.out_of_cache(256 << 10) == 0.0 and c.out_of_cache(big) == 1.0
    # each formula gives back the time the probe read for it, in cache and out of it
    assert rabenseifner(big, p, c.at(big)) == pytest.approx(raw["exchange_big_s"])
    assert rabenseifner(256 << 10, p, c.at(256 << 10)) == pytest.approx(raw["exchange_s"])
    assert ring_allreduce(big, p, c.at(big)) == pytest.approx(raw["allreduce_big_s"])
    # recursive doubling's rounds are exchanges too; the ring's price ignores beta_x
    rd = recursive_doubling(64 << 10, p, c.at(64 << 10))
    assert rd > recursive_doubling(64 << 10, p, dataclasses.replace(c, beta_x=0.0, beta_x_out=0.0).at(64 << 10))
    assert ring_allreduce(big, p, c.at(big)) == ring_allreduce(big, p, dataclasses.replace(c, beta_x=0.0).at(big))
    # no exchange timings (a FIFO, a network link, a probe of format 6): exchanges priced by beta
    old = probe.fit(_raw(p, facts, *want.values(), big=big), p, facts, cache_bytes=CACHE, network=False)
    assert old.beta_x == old.beta_x_out == 0.0 and old.cache_bytes == CACHE


def test_a_crowded_loopback_wire_hides_a_rounds_latency_behind_its_bytes():
    """More ranks than CPUs over loopback TCP: a rank waiting on its socket sleeps and its CPU
    copies another rank's bytes, so an exchange round costs the larger of alpha and its bytes
    (8 ranks on 2 cores, Rabenseifner at 64 KiB: 186 us measured, 289 priced as their sum, 188
    as the larger). FIFO ranks spin for their peer, and ranks with a CPU each have nobody to
    hand it to: there a round pays both."""
    from hetccl.collectives.allreduce import rabenseifner, recursive_doubling
    a, x, g = 19.5e-6, 1.5e-9, 1e-11
    c = LinkCost(a, 0.4e-9, g, fifo=False, beta_x=x, share=4.0)
    pieces = [32 << 10, 16 << 10, 8 << 10]
    want = 2 * sum(max(a, s * x) for s in pieces) + 7 / 8 * (64 << 10) * g
    assert rabenseifner(64 << 10, 8, c) == pytest.approx(want)
    assert recursive_doubling(1 << 10, 8, c) == pytest.approx(3 * a + 3 * (1 << 10) * g)   # latency-bound
    summed = 2 * (3 * a + sum(pieces) * x) + 7 / 8 * (64 << 10) * g
    for apart in (dataclasses.replace(c, share=1.0), dataclasses.replace(c, fifo=True, beta=x)):
        assert rabenseifner(64 << 10, 8, apart) == pytest.approx(summed)
    assert rabenseifner(64 << 10, 8, dataclasses.replace(c, beta_x=0.0, beta=x)) == pytest.approx(summed)


def test_ranks_taking_turns_on_a_cpu_share_its_cache():
    """The working set that meets a CPU's private cache is that of every rank taking turns on it:
    8 ranks on 2 CPUs run a 256 KiB ring mostly out of cache (4 x 768 KiB per 2 MiB), a 64 KiB
    call in it; one rank per CPU keeps 256 KiB in."""
    alone = _cost(1e-6, 7.0, 5.0, 100.0, 16.0)
    crowded = dataclasses.replace(alone, share=4.0)
    assert alone.out_of_cache(256 << 10) == 0.0 and crowded.out_of_cache(64 << 10) == 0.0
    assert crowded.out_of_cache(256 << 10) > 0.75 and crowded.out_of_cache(1 << 20) == 1.0
    assert crowded.at(256 << 10).beta > alone.at(256 << 10).beta
    # the same on the knee a loopback wire's probe set (loopback_cache_bytes): 8 ranks' 1 MiB ring
    # is out of it, as measured (2.5-3.2 ns per byte against 2.1-2.2 at 256 KiB)
    wire = LinkCost(2e-5, 7e-10, 1e-11, fifo=False, beta_out=1.5e-9, cache_bytes=probe.loopback_cache_bytes(4 << 20),
                    beta_x=1.6e-9, share=4.0)
    assert wire.out_of_cache(256 << 10) == 0.0 and wire.out_of_cache(1 << 20) == 1.0
    assert dataclasses.replace(wire, share=1.0).out_of_cache(1 << 20) == 0.0


@pytest.mark.parametrize("p", [4, 8])
def test_a_crowded_loopback_rings_steps_hide_their_latency_and_fit_inverts_them(p):
    """Over loopback TCP on crowded CPUs a ring step sends n/p while the previous rank's n/p
    arrives: it costs the larger of alpha and its bytes, as an exchange round does (8 ranks on 2
    cores: 256 KiB in 554-579 us, 1 MiB in 2.7-3.3 ms). The probe's rings are fitted to that
    formula, and the formula gives back their times."""
    from hetccl.collectives.allreduce import rabenseifner
    alpha, b_in, b_out, g = 19e-6, 1.2e-9, 1.6e-9, 1e-11
    c = LinkCost(alpha, b_in, g, fifo=False, beta_x=1.6e-9, share=p / 2)
    n = 256 << 10
    assert ring_allreduce(n, p, c) == pytest.approx(2 * (p - 1) * max(alpha, n / p * b_in) + (p - 1) / p * n * g)
    assert ring_allreduce(n, p, dataclasses.replace(c, share=1.0)) > ring_allreduce(n, p, c)   # pays both
    facts = LinkCost(0.0, 0.0, 0.0, fifo=False, share=p / 2)
    big = probe.LOOPBACK_HOST_BYTES // p

    def timed(formula, size, beta, **x):
        return formula(size, p, dataclasses.replace(c, beta=beta, gamma=g, **x))
    raw = {"barrier_s": alpha * math.ceil(math.log2(p)), "allreduce_s": timed(ring_allreduce, n, b_in),
           "allreduce_big_s": timed(ring_allreduce, big, b_out), "copy_s": 1e-6, "reduce_s": 1e-6 + (64 << 10) * g,
           "copy_big_s": 1e-4, "reduce_big_s": 1e-4 + (1 << 20) * g, "allreduce_bytes": n,
           "allreduce_big_bytes": big, "kernel_bytes": 64 << 10, "kernel_big_bytes": 1 << 20, "link_share": 1.0,
           "exchange_s": timed(rabenseifner, n, b_in), "exchange_big_s": timed(rabenseifner, big, b_out, beta_x=1.6e-9)}
    fitted = probe.fit(raw, p, facts, cache_bytes=CACHE, network=False)
    assert (fitted.beta, fitted.beta_out) == pytest.approx((b_in, b_out), rel=1e-6)
    assert ring_allreduce(n, p, fitted.at(n)) == pytest.approx(raw["allreduce_s"])


@pytest.mark.parametrize("p", [4, 8])
def test_fit_inverts_the_exchange_formula_where_rounds_hide_their_latency(p):
    """beta_x solves Rabenseifner's formula also where some rounds cost their latency and others
    their bytes (piecewise linear in beta_x): the formula gives back the probe's time."""
    from hetccl.collectives.allreduce import rabenseifner
    facts = LinkCost(0.0, 0.0, 0.0, fifo=False, share=p / 2)
    big = probe.LOOPBACK_HOST_BYTES // p
    alpha, x_in, x_out = 100e-6, gbs(0.7), gbs(0.5)
    raw = _raw(p, facts, alpha, gbs(2.1), gbs(1.5), gbs(90), gbs(16), big=big)

    def rab(n, beta, beta_x, gamma):
        return rabenseifner(n, p, dataclasses.replace(facts, alpha=alpha, beta=beta, beta_x=beta_x, gamma=gamma))
    raw.update(exchange_s=rab(256 << 10, gbs(2.1), x_in, gbs(90)), exchange_big_s=rab(big, gbs(1.5), x_out, gbs(16)))
    rounds = [(256 << 10) / 2 ** k * x_in for k in range(1, p.bit_length())]     # the halving's pieces
    assert min(rounds) < alpha < max(rounds)            # some rounds latency-bound, some byte-bound
    c = probe.fit(raw, p, facts, cache_bytes=CACHE, network=False)
    assert (c.beta_x, c.beta_x_out) == pytest.approx((x_in, x_out), rel=1e-6)
    assert rabenseifner(256 << 10, p, c.at(256 << 10)) == pytest.approx(raw["exchange_s"])


def test_beta_free_runs_between_the_two_broadcasts_that_measured_it():
    """A tree level whose ranks have a CPU each keeps its in-cache advantage past the private
    cache while its message fits the FIFO: beta_free moves from its in-cache value at the small
    broadcast's size to beta_free_out at the big one's, log-linear in the call's size, not by
    the working-set knee of beta (4 ranks on 2 cores: binomial reduce 577 us at 2 MiB, priced
    870 with beta_free_out from the knee on)."""
    from hetccl.collectives.cost_model import FREE_SIZES
    from hetccl.collectives.rooted import binomial
    assert FREE_SIZES == (probe.PROBE_BYTES, probe.BCAST_BIG)
    c = dataclasses.replace(_cost(1.3e-6, 3.45, 3.34, 135, 16.5), beta_free=gbs(20.0), beta_free_out=gbs(3.5),
                            share=2.0)
    assert c.at(128 << 10, "reduce").beta_free == c.at(256 << 10, "reduce").beta_free == gbs(20.0)
    assert c.at(8 << 20, "reduce").beta_free == c.at(64 << 20, "reduce").beta_free == pytest.approx(gbs(3.5))
    assert c.at(2 << 20, "reduce").beta_free == pytest.approx(gbs(20.0) + 0.6 * (gbs(3.5) - gbs(20.0)))
    assert c.at(2 << 20, "reduce").beta == pytest.approx(gbs(3.34))       # beta keeps its own knee
    knee = dataclasses.replace(c.at(2 << 20, "reduce"), beta_free=gbs(3.5))
    assert binomial(2 << 20, 4, c.at(2 << 20, "reduce")) < 0.9 * binomial(2 << 20, 4, knee)
    assert dataclasses.replace(c, beta_free=0.0).at(2 << 20, "reduce").beta_free == 0.0


def test_a_loopback_wire_probes_its_big_rings_beyond_the_hosts_cache(monkeypatch):
    """Its bytes are kernel copies through socket buffers the host's ranks share: the big rings
    shrink with the ranks on the host so that together they work beyond the host's cache."""
    monkeypatch.setattr(probe, "cache_per_cpu", lambda cpu=0: 2 << 20)
    assert probe.probe_sizes(1.0, False, 2) == (16 << 20, 2 << 20)
    assert probe.probe_sizes(2.0, False, 4) == (8 << 20, 2 << 20)
    assert probe.probe_sizes(4.0, False, 8) == (4 << 20, 2 << 20)
    assert probe.probe_sizes(16.0, False, 64)[0] == probe.PROBE_BIG // 2
    assert probe.probe_sizes(1.0, True, 2)[0] == probe.PROBE_BIG_WIRE          # a network link: no


def test_only_a_wire_between_hosts_is_a_network_link():
    assert probe.network_link(("c2c", "tcp"), 2, 4)
    assert not probe.network_link(("tcp",), 4, 4)                   # loopback TCP
    assert not probe.network_link(("c2c", "shm"), 2, 4)             # no wire at all


def test_private_cache_is_the_largest_level_one_cpu_has_to_itself(tmp_path, monkeypatch):
    base = tmp_path / "cpu0" / "cache"
    for idx, (typ, size, shared) in enumerate([("Data", "48K", "0"), ("Instruction", "64K", "0"),
                                               ("Unified", "2048K", "0"), ("Unified", "491520K", "0-1")]):
        d = base / f"index{idx}"
        d.mkdir(parents=True)
        (d / "type").write_text(typ + "\n")
        (d / "size").write_text(size + "\n")
        (d / "shared_cpu_list").write_text(shared + "\n")
    monkeypatch.setattr(probe, "_CPU_SYSFS", str(tmp_path))
    assert probe.private_cache_bytes() == 2 << 20
    # a 480 MiB "L3" is the socket's across dies: no cut of its own (SHARED_CACHE_MAX)
    assert probe.cache_per_cpu() == 2 << 20
    monkeypatch.setattr(probe, "_CPU_SYSFS", str(tmp_path / "missing"))
    assert probe.private_cache_bytes() == 0 and probe.cache_per_cpu() == 0 and probe.cache_levels() == []


def _fake_sysfs(root, levels):
    base = root / "cpu0" / "cache"
    for idx, (typ, size, shared) in enumerate(levels):
        d = base / f"index{idx}"
        d.mkdir(parents=True)
        (d / "type").write_text(typ + "\n")
        (d / "size").write_text(size + "\n")
        (d / "shared_cpu_list").write_text(shared + "\n")


def test_the_cache_cut_is_the_cache_per_cpu_shared_level_included(tmp_path, monkeypatch):
    """The 2-vCPU AMD EPYC host: 1 MiB L2 per vCPU, one 32 MiB L3 for both, 16 MiB per CPU, where
    the jobs' 2-rank rings kept their in-cache rate up to 1-4 MiB; the probe's out-of-cache ring
    lies beyond that cut (16 MiB at 2 ranks, 8 at 4, 4 at 8) and its kernels with it."""
    _fake_sysfs(tmp_path, [("Data", "32K", "0"), ("Instruction", "32K", "0"), ("Unified", "1024K", "0"),
                           ("Unified", "32768K", "0-1")])
    monkeypatch.setattr(probe, "_CPU_SYSFS", str(tmp_path))
    assert probe.cache_levels() == [(32 << 10, 1), (1 << 20, 1), (32 << 20, 2)]
    assert probe.private_cache_bytes() == 1 << 20
    assert probe.cache_per_cpu() == 16 << 20
    assert [probe.probe_sizes(s, False)[0] >> 20 for s in (1.0, 2.0, 4.0)] == [16, 8, 4]
    for share in (1.0, 2.0, 4.0):
        big, cache = probe.probe_sizes(share, False)
        assert LinkCost(1e-6, 1e-10, 1e-11, beta_out=2e-10, cache_bytes=cache, share=share).out_of_cache(big) == 1.0
        assert probe.kernel_big_bytes(big) == big // 2
    assert probe.kernel_big_bytes(probe.PROBE_BIG_WIRE) == probe.KERNEL_BIG
    # a shared level over four CPUs (list with ranges and singles), garbage in another level
    tree = tmp_path / "other"
    _fake_sysfs(tree, [("Unified", "512K", "3"), ("Unified", "16M", "0,2-3,5"), ("Unified", "12Q", "0-1"),
                       ("Data", "64K", "x-y")])
    monkeypatch.setattr(probe, "_CPU_SYSFS", str(tree))
    assert probe.cache_levels() == [(512 << 10, 1), (16 << 20, 4)]
    assert probe.cache_per_cpu() == 4 << 20
    assert probe.beyond_cache_bytes(64 << 30, 1.0) == probe.BIG_RING_MAX      # bounded


def test_a_probe_on_a_busy_host_keeps_the_private_cut(monkeypatch):
    """Other processes fill a shared cache: above NOISY of the CPUs the cut is the private cache."""
    monkeypatch.setattr(probe, "private_cache_bytes", lambda cpu=0: 1 << 20)
    assert probe.loaded_cut(16 << 20, None) == probe.loaded_cut(16 << 20, 0.1) == 16 << 20
    assert probe.loaded_cut(16 << 20, probe.NOISY + 0.01) == 1 << 20
    monkeypatch.setattr(probe, "private_cache_bytes", lambda cpu=0: 0)          # unknown: as measured
    assert probe.loaded_cut(16 << 20, 0.9) == 16 << 20


def test_ranks_sharing_a_cpu_probe_a_smaller_ring_still_out_of_cache(monkeypatch):
    monkeypatch.setattr(probe, "cache_per_cpu", lambda cpu=0: 2 << 20)
    assert probe.probe_sizes(1.0, False) == (probe.PROBE_BIG, 2 << 20)
    assert probe.probe_sizes(0.5, False) == (probe.PROBE_BIG, 2 << 20)     # fewer ranks than CPUs
    big, cache = probe.probe_sizes(4.0, False)                            # 8 ranks on 2 cores
    assert big == 2 << 20 and cache == 2 << 20
    assert LinkCost(1e-6, 1e-10, 1e-11, beta_out=2e-10, cache_bytes=cache).out_of_cache(big) == 1.0
    assert probe.probe_sizes(1.0, True)[0] == probe.PROBE_BIG_WIRE


# ------------------------------------------------------------------------------------------------
# Stored forms
# ------------------------------------------------------------------------------------------------
def test_params_round_trip_and_old_entries_stay_valid():
    c = _cost(1e-6, 7.0, 5.0, 100.0, 16.0)
    assert LinkCost.from_params(c.params()) == c
    assert LinkCost.valid_params({"alpha": 1e-6, "beta": 1e-10, "gamma": 1e-11})     # before the split
    for bad in ({"alpha": 1e-6, "beta": "1e-10", "gamma": 1e-11},
                {"alpha": 1e-6, "beta": 1e-10, "gamma": 1e-11, "beta_out": -1.0},
                {"alpha": 1e-6, "beta": 1e-10, "gamma": 1e-11, "cache_bytes": float("nan")},
                {"alpha": True, "beta": 1e-10, "gamma": 1e-11}, {"alpha": 1e-6}):
        assert not LinkCost.valid_params(bad), bad
    assert set(PARAMS) == set(c.params())


def test_the_simulator_reads_the_cache_fields_of_a_tuning_file(tmp_path):
    from hetccl.simulate.costs import model_for
    from hetccl.topology import synth, topofile
    c = _cost(1e-6, 7.0, 5.0, 100.0, 16.0)
    topo = topofile.from_dict(synth.generate("hosts=1,accel=2,vendors=cpu:100,nics=1"), "synth")
    doc = tuning_file.new_document("test", None)
    tuning_file.merge(doc, {"links": "c2c", "ranks": 2, "local": 2, "cost": c.params()})
    path = tmp_path / "tuning.json"
    path.write_text(json.dumps(doc))
    model = model_for(topo, 0.0, str(path))[0]
    assert (model.cost.beta_out, model.cost.gamma_out, model.cost.cache_bytes) == (c.beta_out, c.gamma_out, CACHE)
    assert "out of it" in model.describe()


# ------------------------------------------------------------------------------------------------
# The symmetric path's entries
# ------------------------------------------------------------------------------------------------
def _sym(p, cost):
    sm = symmetric.SymmetricMemory.__new__(symmetric.SymmetricMemory)
    sm._ctx = types.SimpleNamespace(tuner=_tuner(p, cost), size=p)
    sm._faster = {}
    return sm


def test_symmetric_allreduce_in_place_is_priced_above_out_of_place_and_decides():
    cost = _cost(0.4e-6, 6.9, 4.85, 100.0, 16.0)
    prices = _sym(2, cost).prices("allreduce", 8 << 20)
    assert set(prices) == {"symmetric in place", "symmetric out of place", "fifo"}
    assert prices["symmetric in place"] > prices["symmetric out of place"]
    # a FIFO path priced between the two forms: not taken (a rank in place makes every rank
    # run the slower form, and the route must be the same on every rank)
    sm = _sym(2, cost)
    fifo = (prices["symmetric in place"] + prices["symmetric out of place"]) / 2
    sm.prices = lambda coll, n: dict(prices, fifo=fifo)
    assert not sm.faster("allreduce", 8 << 20)
    sm = _sym(2, cost)
    sm.prices = lambda coll, n: dict(prices, fifo=prices["symmetric in place"] * 1.01)
    assert sm.faster("allreduce", 8 << 20)


def test_symmetric_path_loses_where_its_two_syncs_outweigh_the_bytes():
    """A slow hand-over (busy machine: alpha 40 us) makes the symmetric path's two syncs dearer
    than recursive doubling's one step at 256 KiB; at 4 MiB the single copy wins again."""
    sm = _sym(2, _cost(40e-6, 5.0, 3.7, 100.0, 17.0))
    assert not sm.faster("allreduce", 256 << 10)
    assert sm.faster("allreduce", 4 << 20)


# The 3-rank model of the quiet run of 2026-12-07 11:34 (its probe's entry, format 9): 3 ranks on
# 2 CPUs, beta_free measured by the probe's binomial broadcasts.
THREE_ON_TWO = LinkCost(1.258e-6, 2.924e-10, 1.714e-11, beta_out=2.924e-10, gamma_out=6.174e-11,
                        cache_bytes=CACHE, beta_free=1.702e-10, beta_free_out=2.161e-10, share=1.5)


def test_a_fold_is_priced_on_the_ranks_it_keeps_at_work():
    """Recursive doubling and Rabenseifner on 3 ranks fold the third rank in and out by one-way
    transfers that keep 2 of the 3 ranks at work: on 2 CPUs those pay beta_free, as a tree level
    does (recorded: recursive doubling 6.9 us at 8 KiB, the ring 8.0; the fold at the all-ranks
    beta priced 9.1 and chose the ring). A power of two has no fold: nothing changes there."""
    from hetccl.collectives.algorithm import folding
    from hetccl.collectives.allreduce import rabenseifner, recursive_doubling
    c = THREE_ON_TWO
    crowded = dataclasses.replace(c, beta_free=0.0, beta_free_out=0.0)
    n = 8 << 10
    assert folding(c, 3).beta == pytest.approx(c.beta_free)
    assert folding(c, 4) is c and folding(c, 2) is c
    saved = 2 * n * 0.5 * (c.beta - c.beta_free)          # two one-way transfers of n
    assert recursive_doubling(n, 3, crowded) - recursive_doubling(n, 3, c) == pytest.approx(saved)
    assert rabenseifner(n, 3, crowded) - rabenseifner(n, 3, c) == pytest.approx(saved)
    assert recursive_doubling(n, 4, crowded) == recursive_doubling(n, 4, c)
    t = _tuner(3, c)
    assert t.select("allreduce", 8 << 10).name == "recursive_doubling"
    assert t.select("allreduce", 2 << 10).name == "recursive_doubling"
    assert [t.select("allreduce", s).name for s in (128 << 10, 512 << 10, 2 << 20)] == ["ring"] * 3


def test_a_shrunk_communicator_inherits_its_parents_model_only_where_the_probe_would_measure_the_same():
    """probe.inheritable: the same links, the network verdict and as many ranks on the busiest CPU
    (8 -> 7 and 4 -> 3 on 2 CPUs keep it; 5 -> 4 and 3 -> 2 change it); only a measured, cached or
    inherited model, not a tuning file's entry (it holds for its size) nor the defaults."""
    from hetccl.collectives.cost_model import CACHED, DEFAULT, INHERITED, TUNED, CostModel

    def cards(*hosts):
        return [{"rank": r, "host": h, "topo": {"ncpus": 2}} for r, h in enumerate(hosts)]

    def matrix(cs, kind="c2c"):
        return [["self" if a is b else kind if a["host"] == b["host"] else "tcp" for b in cs] for a in cs]

    model = CostModel(LinkCost(2e-6, 3e-10, 2e-11), MEASURED, "", ("c2c",))
    for n, kept in ((8, True), (4, True), (5, False), (3, False)):
        old, new = cards(*"a" * n), cards(*"a" * (n - 1))
        got = probe.inheritable(model, old, matrix(old), new, matrix(new))
        assert (got is model) == kept, (n, got)
    old, new = cards(*"a" * 8), cards(*"a" * 7)
    for origin in (CACHED, INHERITED):
        m = dataclasses.replace(model, origin=origin)
        assert probe.inheritable(m, old, matrix(old), new, matrix(new)) is m
    for origin in (TUNED, DEFAULT):
        m = dataclasses.replace(model, origin=origin)
        assert probe.inheritable(m, old, matrix(old), new, matrix(new)) is None, origin
    assert probe.inheritable(None, old, matrix(old), new, matrix(new)) is None
    assert probe.inheritable(model, old, matrix(old), new, matrix(new, "shm")) is None   # other links
    old, new = cards(*"aaaabbbb"), cards(*"aaabbbb")                 # two hosts, one rank fewer on a
    assert probe.inheritable(model, old, matrix(old), new, matrix(new)) is model
    old, new = cards(*"aaab"), cards(*"aaa")                         # the network link is gone
    assert probe.inheritable(model, old, matrix(old), new, matrix(new)) is None
    old, new = cards(*"aaaaaaaab"), cards(*"aaaaaaab")               # tcp still crosses hosts
    assert probe.inheritable(model, old, matrix(old), new, matrix(new)) is model


def test_the_ring_between_the_caches_sits_in_the_shared_cuts_range_out_of_the_privates():
    """mid_ring_bytes on the EPYC host (1 MiB private, 16 MiB shared per CPU): 3 MiB of working
    set per CPU at 2, 4 and 8 ranks; none where the two cuts lie within 16x (no choice to read)."""
    mib = 1 << 20
    assert [probe.mid_ring_bytes(s, mib, 16 * mib) for s in (1.0, 2.0, 4.0)] == [mib, mib // 2, mib // 4]
    assert probe.mid_ring_bytes(1.0, 2 * mib, 2 * mib) == probe.mid_ring_bytes(1.0, 2 * mib, 16 * mib) == 0
    assert probe.mid_ring_bytes(1.0, 0, 16 * mib) == 0
    for share in (1.0, 2.0, 4.0):
        n = probe.mid_ring_bytes(share, mib, 16 * mib)
        c = LinkCost(1e-6, 1e-10, 1e-11, beta_out=2e-10, share=share)
        assert dataclasses.replace(c, cache_bytes=16 * mib).out_of_cache(n) == 0.0
        assert dataclasses.replace(c, cache_bytes=mib).out_of_cache(n) == 1.0


@pytest.mark.parametrize("share", [1.0, 2.0, 4.0])
def test_the_cut_is_where_the_model_prices_the_ring_between_the_caches_as_measured(share):
    """fit_cut inverts the in-cache/out-of-cache interpolation at the middle ring: a ring timed at
    the in-cache rate keeps the shared level's cut, one at the out-of-cache rate gets the private
    one, and one in between the cut that prices it as timed; fit() applies it when told the
    private level (negotiate), and keeps the cut it is given when not (a record re-fitted)."""
    p, mib = int(2 * share), 1 << 20
    facts = LinkCost(0.0, 0.0, 0.0, share=share)
    raw = _raw(p, facts, 2e-6, gbs(8.0), gbs(3.0), gbs(60), gbs(20), small=probe.in_cache_ring_bytes(share),
               big=probe.beyond_cache_bytes(16 * mib, share))
    n = probe.mid_ring_bytes(share, mib, 16 * mib)
    base = probe.fit(raw, p, facts, cache_bytes=16 * mib)

    def timed(cut):
        return ring_allreduce(n, p, dataclasses.replace(base, cache_bytes=cut).at(n, "allreduce"))
    for cut in (2 * mib, 3 * mib, 5 * mib):
        assert probe.fit_cut(base, timed(cut), n, p, mib) == pytest.approx(cut, rel=1e-6)
    assert probe.fit_cut(base, 0.5 * timed(16 * mib), n, p, mib) == 16 * mib       # faster than in cache
    assert probe.fit_cut(base, 2 * timed(mib), n, p, mib) == mib                   # slower than out of it
    raw.update(allreduce_mid_s=timed(3 * mib), allreduce_mid_bytes=n)
    assert probe.fit(raw, p, facts, cache_bytes=16 * mib, private_bytes=mib).cache_bytes == pytest.approx(3 * mib)
    assert probe.fit(raw, p, facts, cache_bytes=16 * mib).cache_bytes == 16 * mib
    assert probe.fit(raw, p, facts, cache_bytes=mib, private_bytes=mib).cache_bytes == mib    # a loaded probe's
    assert base.beta == pytest.approx(gbs(8.0)) and base.beta_out == pytest.approx(gbs(3.0))


def test_one_host_fifos_time_the_ring_between_the_caches_by_itself(monkeypatch):
    """plan(): FIFOs on one host whose CPUs share a level time the middle ring (mid_ring_bytes),
    a loopback wire and a network link do not; measure() times it apart, in MID_REPS loops,
    between the in-cache ring and the out-of-cache one."""
    monkeypatch.setattr(probe, "cache_per_cpu", lambda cpu=0: 16 << 20)
    monkeypatch.setattr(probe, "private_cache_bytes", lambda cpu=0: 1 << 20)
    assert probe.plan(("c2c",), 4, 4, 2.0)[3]["mid_bytes"] == 512 << 10
    assert probe.plan(("shm",), 2, 2, 1.0)[3]["mid_bytes"] == 1 << 20
    assert "mid_bytes" not in probe.plan(("tcp",), 4, 4, 2.0)[3]
    assert "mid_bytes" not in probe.plan(("c2c", "tcp"), 2, 4, 1.0)[3]
    monkeypatch.setattr(probe, "cache_per_cpu", lambda cpu=0: 2 << 20)          # no shared level
    assert probe.plan(("c2c",), 4, 4, 2.0)[3]["mid_bytes"] == 0
    groups = []

    def fake(engine, fns, timeout, reps=probe.REPS, **kw):
        groups.append((list(fns), reps))
        return {k: 1e-3 for k in fns}
    monkeypatch.setattr(probe, "time_per_call", fake)
    monkeypatch.setattr(probe, "_ring_link_share", lambda engine, size, timeout: 1.0)
    raw = probe.measure(None, 4, 1.0, 8 << 20, probe.RING_LOOP_S, out_of_place=True, ring_reps=probe.LOOP_REPS,
                        mid_bytes=512 << 10)
    assert groups[:3] == [(["allreduce_s"], probe.LOOP_REPS), (["allreduce_mid_s"], probe.MID_REPS),
                          (["allreduce_big_s"], probe.LOOP_REPS)]
    assert raw["allreduce_mid_bytes"] == 512 << 10 and "allreduce_mid_s" not in groups[3][0]
    groups.clear()
    assert "allreduce_mid_s" not in probe.measure(None, 4, 1.0, 8 << 20, probe.REP_S, out_of_place=True)
