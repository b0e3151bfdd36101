#!/usr/bin/env python3
"""The probe of cache format 13 against today's, and both against a job's loops of the ring, in
one job, rounds interleaved: which one's rings read what a job's loop of the same call pays, how
well each one's fitted model prices those loops, and how long each probe takes.

    python -m hetccl run -n 2 -- python bench/probe_loops_ab.py --rounds 3
    HETCCL_TRANSPORTS=^c2c python -m hetccl run -n 4 -- python bench/probe_loops_ab.py --rounds 3

- "old": probe.measure as cache format 13 ran it on one host: the in-cache ring by itself, the big
  ring (PROBE_BIG / ranks per CPU) interleaved with the kernels (KERNEL_BIG) and the other
  quantities in repetitions of REP_S (FIFOs), REPS of them; the cut the private cache;
- "new": probe.measure as negotiate runs it now (probe.plan_for): each ring by itself in
  LOOP_REPS loops of RING_LOOP_S, the big ring and kernels beyond the cache per CPU
  (probe.cache_per_cpu), the cut measured between the private and the shared level by the ring
  between them (probe.fit_cut) or, when other processes took more than probe.NOISY of the CPUs
  meanwhile, the private cache (probe.loaded_cut);
- "job": loops of the ring alone, 5 of --loop-ms after two untimed calls, the median of the slowest
  rank's time per call (bench/probe_groups_ab.py's ``alone``, the validation runner's way), at the
  in-cache ring's size, 1 MiB and both probes' big sizes.

Printed: each probe's rings against the job's loops at the same size, each fitted model's price
of the job's loops (allreduce.ring on LinkCost.at, plus the call's path, cost_model.call_cost),
and each probe's wall time (median over rounds).
"""
import argparse
import os
import statistics
import sys
import hetccl
from hetccl.collectives import probe
from hetccl.collectives.allreduce import ring
from hetccl.collectives.cost_model import PARAMS, call_cost

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_groups_ab import alone  # noqa: E402 - the job's loops, as that script times them


def run_probe(ctx, way):
    """(raw timings, seconds, big ring bytes, cache cut) of one probe of *way* ("old", "new"); the
    new one's cut as negotiate sets it from the other processes' load during it (probe.loaded_cut,
    known on rank 0)."""
    _, big, cache, opts = probe.plan_for(ctx)
    kept = probe.APART, probe.kernel_big_bytes
    if way == "old":
        share = max(1.0, ctx.local_size / probe.usable_cpus())
        if opts["warm"]:                                     # FIFOs: format 13's sizes and repetitions
            big = max(probe.PROBE_BIG // 2, int(probe.PROBE_BIG / share))
            opts = dict(opts, ring_rep_s=probe.REP_S)
        cache = probe.private_cache_bytes()
        opts = dict(opts, ring_reps=probe.REPS, mid_bytes=0)
        probe.APART, probe.kernel_big_bytes = ("allreduce_s",), (lambda b: probe.KERNEL_BIG)
    try:
        raw, secs, other = probe._probe(ctx.engine, ctx.rank, ctx.size, ctx.timeout, big, **opts)
        return raw, secs, big, cache if way == "old" else probe.loaded_cut(cache, other), other
    finally:
        probe.APART, probe.kernel_big_bytes = kept


def fitted(ctx, raw, cache):
    classes = tuple(sorted({k for row in ctx.matrix for k in row} - {"self"}))
    share = max(1.0, ctx.local_size / probe.usable_cpus())
    facts = probe._link_cost([0.0] * len(PARAMS), classes, ctx.engine, probe._fifo_bytes(ctx.local_size), share)
    return probe.fit(raw, ctx.size, facts, cache_bytes=cache, network=False, private_bytes=probe.private_cache_bytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loop-ms", type=float, default=30.0, help="the job's loop (the validation's runner: 30 ms)")
    args = ap.parse_args()
    comm = hetccl.init()
    ctx = comm.context
    load0 = os.getloadavg()
    ways = ("old", "new", "job")
    probes = {w: [] for w in ways[:2]}
    job = {}
    sizes = None
    for r in range(args.rounds):
        for way in (ways if r % 2 == 0 else ways[::-1]):
            if way != "job":
                probes[way].append(run_probe(ctx, way))
                continue
            if sizes is None:                            # round 0 runs a probe of each first
                sizes = sorted({probes["new"][0][0]["allreduce_bytes"], 1 << 20,
                                probes["old"][0][2], probes["new"][0][2]})
            for n in sizes:
                job.setdefault(n, []).append(alone(ctx.engine, n, ctx.timeout, args.loop_ms * 1e-3))
    if ctx.rank == 0:
        links, share = "+".join(ctx.tuner.model.link_classes), ctx.local_size / probe.usable_cpus()
        jmed = {n: statistics.median(v) for n, v in job.items()}
        print(f"# {ctx.size} ranks over {links}, {share:g} ranks per CPU, {args.rounds} rounds; load average "
              f"{' '.join(f'{x:.1f}' for x in load0)} -> {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print("job    " + "  ".join(f"{n >> 10}K {t * 1e6:.0f} us" for n, t in jmed.items()))
        for way, runs in probes.items():
            secs = statistics.median(x[1] for x in runs)
            rings = []
            for key, kb in (("allreduce_s", "allreduce_bytes"), ("allreduce_big_s", "allreduce_big_bytes")):
                n = int(runs[0][0][kb])
                t = statistics.median(x[0][key] for x in runs)
                rings.append(f"{n >> 10}K {t * 1e6:.0f} us" + (f" ({t / jmed[n]:.2f}x job)" if n in jmed else ""))
            costs = [fitted(ctx, raw, cache) for raw, _, _, cache, _ in runs]
            prices = []
            for n, t in jmed.items():
                pred = statistics.median(ring(n, ctx.size, c.at(n, "allreduce")) + call_cost("allreduce", ctx.size)
                                         for c in costs)
                prices.append(f"{n >> 10}K {pred / t - 1:+.0%}")
            c = costs[len(costs) // 2]
            other = " ".join("?" if x[4] is None else f"{x[4]:.0%}" for x in runs)
            print(f"{way:<6} probe {secs * 1e3:.0f} ms ({' '.join(f'{x[1] * 1e3:.0f}' for x in runs)}; other load "
                  f"{other}); rings "
                  f"{'; '.join(rings)}; beta {1 / c.beta / 1e9:.2f} out {1 / c.beta_out / 1e9:.2f} GB/s, cut "
                  f"{c.cache_bytes / 2**20:.0f} MiB; priced vs job: {'  '.join(prices)}")
    comm.close()


if __name__ == "__main__":
    main()
