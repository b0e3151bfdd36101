#!/usr/bin/env python3
"""The tuner check of a recorded crossover run, re-decided by today's cost model: no job runs.

    python bench/crossover_repredict.py bench/results/crossover-2026-12-07f-raw
    python bench/crossover_repredict.py RAW_DIR --without-free   # the model before beta_free, same run
    python bench/crossover_repredict.py RAW_DIR --ring-from-sweep   # a format <= 9 probe's cold in-cache ring

A ``bench/crossover.py --run`` directory keeps, per world size N, every pass's sweep
(``algos-nN.json``, ``algos-nN-pass2.json``: the forced time of every algorithm at every size) and
the cost model the sweep priced with (``cache-nN/hetccl/cost-model.json``, the probe's entry for
N local ranks, with the probe's raw timings). This script rebuilds that model with today's code
(the entry's timings re-fitted by today's ``probe.fit`` when they are all there, else its stored
parameters), lets today's tuner choose at every recorded point, and judges the choice as
``bench/crossover.py`` does: the pooled forced time (all passes' repetitions) of the chosen
algorithm within 1.15 x the fastest forced one. It prints, per collective and world size, the
recorded verdict beside the re-decided one, every point whose verdict changed, and the totals.

Points the run sent single copy (``auto`` ran ``single_copy``: the single-copy probe's verdict,
not the cost model's) keep their recorded verdict; so do points without forced columns.

What it cannot see: a quantity a new probe times that the recorded probe did not. Such a
parameter is taken from the recorded sweep itself with ``--from-sweep`` (see ``probe_from_sweep``:
the same call the probe times, at the sweep's nearest sizes) and said so in the output.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from checkout import IMPORT_ROOT  # noqa: E402,F401  (which hetccl: bench/checkout.py)

from hetccl.benchmark import compare  # noqa: E402
from hetccl.benchmark import format as fmt  # noqa: E402
from hetccl.collectives import probe  # noqa: E402
from hetccl.collectives.cost_model import CACHED, PARAMS, CostModel, LinkCost  # noqa: E402
from hetccl.collectives.tuner import Tuner  # noqa: E402
from hetccl.simulate.costs import STREAM_MIN, _fifo  # noqa: E402

SINGLE_COPY = "single_copy"


def load_passes(raw_dir, n) -> list[list[dict]]:
    """Every pass's rows of world size n (pass 1 first)."""
    paths = [os.path.join(raw_dir, f"algos-n{n}.json")]
    paths += sorted(glob.glob(os.path.join(raw_dir, f"algos-n{n}-pass*.json")))
    out = []
    for p in paths:
        if os.path.exists(p):
            with open(p) as f:
                out.append(json.load(f)["rows"])
    return out


def cache_entry(raw_dir, n) -> dict | None:
    """The probe's entry for n local ranks that the sweep of n ranks priced with."""
    path = os.path.join(raw_dir, f"cache-n{n}", "hetccl", "cost-model.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        entries = json.load(f)["entries"]
    mine = [e for e in entries.values() if int(e.get("local", 0)) == n and e.get("links") == "c2c"]
    return max(mine, key=lambda e: e.get("measured_at", 0), default=None)


def model_of(entry, n, extra=None) -> CostModel:
    """Today's model of a recorded probe entry: its raw timings re-fitted by probe.fit (its stored
    parameters where a timing today's fit needs is missing), plus *extra* parameters."""
    classes = entry["links"].split("+")
    share = max(1.0, int(entry["local"]) / int(entry["cpus"]))
    facts = LinkCost(0.0, 0.0, 0.0, fifo=True, stream_min=STREAM_MIN, fifo_bytes=_fifo(n), share=share)
    raw = {(k[:-3] + "_s" if k.endswith("_us") else k): (v * 1e-6 if k.endswith("_us") else v)
           for k, v in (entry.get("raw") or {}).items()}
    raw.update(extra or {})
    try:
        cost = probe.fit(raw, n, facts, cache_bytes=entry.get("cache_bytes", 0.0),
                         network=probe.network_link(classes, n, n))
    except KeyError:                      # a timing today's fit needs is not in the record
        cost = LinkCost.from_params({k: entry.get(k, 0.0) for k in PARAMS}, fifo=True,
                                    stream_min=STREAM_MIN, fifo_bytes=_fifo(n), share=share)
    return CostModel(cost, CACHED, "recorded probe", tuple(classes))


# Probe timings newer than some records, and the call of a sweep that times the same thing:
# (raw name, collective, forced algorithm, size of a ``-b 8 -f 4`` sweep): the probe's binomial
# and chain broadcasts (probe.measure, crowded) of 256 KiB in cache and 8 MiB out of it; the sweep's
# nearest sizes on the same side of the cache (128 KiB: working set 256 KiB; 2 MiB: 4 MiB).
SWEEP_EQUIVALENTS = (("bcast_s", "broadcast", "binomial", 128 << 10),
                     ("bcast_big_s", "broadcast", "binomial", 8 << 20),
                     ("chain_s", "broadcast", "chain", 128 << 10),
                     ("chain_big_s", "broadcast", "chain", 8 << 20))


def probe_from_sweep(passes, n) -> dict:
    """Probe timings a newer probe takes, read off the recorded sweep where it timed the same call
    (SWEEP_EQUIVALENTS): {raw name: seconds, its bytes}."""
    out = {}
    for name, coll, algo, want in SWEEP_EQUIVALENTS:
        times = [t for rows in passes for r in rows
                 if r["collective"] == coll and r["variant"] == algo and r["size"] == want
                 for t in (r.get("times_us") or [r["time_us"]])]
        if times:
            out[name] = statistics.median(times) * 1e-6
            out[name[:-2] + "_bytes"] = want
    return out


def ring_from_sweep(passes, nbytes=256 << 10) -> dict:
    """The probe's in-cache ring (``allreduce_s`` of *nbytes*) as the recorded sweep's loops of
    the ring allreduce paid it: the median over all passes at the sweep's sizes either side,
    log-log interpolated. For records of cache format <= 9, whose probe timed that ring cold (a
    repetition of MIN_CALLS calls right after the big ring, broadcast and kernels: 1.25-1.3x the
    sweep's loops at 3 and 4 ranks in the run of 2026-12-07 11:34); format 10 warms it
    (probe.warm_first). {} when the sweep has no ring allreduce on both sides."""
    times = {}
    for rows in passes:
        for r in rows:
            if r["collective"] == "allreduce" and r["variant"] == "ring":
                times.setdefault(r["size"], []).extend(r.get("times_us") or [r["time_us"]])
    below = [s for s in times if s <= nbytes]
    above = [s for s in times if s >= nbytes]
    if not below or not above:
        return {}
    lo, hi = max(below), min(above)
    a, b = statistics.median(times[lo]), statistics.median(times[hi])
    w = 0.0 if lo == hi else math.log(nbytes / lo) / math.log(hi / lo)
    return {"allreduce_s": math.exp((1 - w) * math.log(a) + w * math.log(b)) * 1e-6, "allreduce_bytes": nbytes}


def judge(passes, n, tuner, tolerance) -> tuple[list[dict], list[dict]]:
    """(recorded, re-decided) pooled verdicts per point, as bench/crossover.py's pooled check."""
    pooled = {}
    for rows in passes:
        for r in rows:
            pooled.setdefault((r["collective"], r["size"], r["variant"]), []).append(r)
    rows = []
    for (coll, size, variant), rs in pooled.items():
        times = [t for r in rs for t in (r.get("times_us") or [r["time_us"]])]
        rows.append(dict(rs[0], time_us=statistics.median(times)))
    recorded = [e for e in compare.summarize(rows, tolerance) if e["ok"] is not None]
    again = []
    for e in recorded:
        e = dict(e)
        forced = {v: t for v, t in e["times_us"].items() if v != compare.AUTO}
        if e["auto_choice"] != SINGLE_COPY and e["auto_choice"] in forced:
            choice = tuner.select(e["collective"], e["size"]).name
            if choice in forced:
                e["auto_choice"] = choice
                e["ratio"] = forced[choice] / e["best_us"]
                e["ok"] = forced[choice] <= tolerance * e["best_us"]
        again.append(e)
    return recorded, again


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("raw_dir", help="a bench/crossover.py --raw-dir")
    ap.add_argument("--nranks", default="2,3,4")
    ap.add_argument("--tolerance", type=float, default=compare.TOLERANCE)
    ap.add_argument("--from-sweep", action="store_true",
                    help="take the probe timings the record lacks from the sweep (probe_from_sweep)")
    ap.add_argument("--ring-from-sweep", action="store_true",
                    help="the probe's in-cache ring from the sweep's ring loops (ring_from_sweep: a record "
                         "of cache format <= 9 timed it cold)")
    ap.add_argument("--free-from-pair", action="store_true",
                    help="beta_free = the 2-rank probe's beta and beta_out (a pair with a CPU each: "
                         "a proxy measured apart from the sweep)")
    ap.add_argument("--without-free", action="store_true",
                    help="drop beta_free (every step at the all-ranks beta: the model before it), to "
                         "compare both on one run")
    args = ap.parse_args(argv)
    total_was = total_now = judged = 0
    for n in (int(x) for x in args.nranks.split(",")):
        passes = load_passes(args.raw_dir, n)
        entry = cache_entry(args.raw_dir, n)
        if not passes or entry is None:
            print(f"# {n} ranks: no sweep or no cost-model entry in {args.raw_dir}")
            continue
        extra = probe_from_sweep(passes, n) if args.from_sweep else {}
        if args.ring_from_sweep:          # at the size today's probe times (probe.in_cache_ring_bytes)
            share = max(1.0, int(entry["local"]) / int(entry["cpus"]))
            extra.update(ring_from_sweep(passes, probe.in_cache_ring_bytes(share)))
        model = model_of(entry, n, extra)
        pair = cache_entry(args.raw_dir, 2) if args.free_from_pair else None
        if pair is not None and model.cost.share > 1:
            model = dataclasses.replace(model, cost=dataclasses.replace(
                model.cost, beta_free=min(model.cost.beta, pair["beta"]),
                beta_free_out=min(model.cost.beta_out or model.cost.beta, pair["beta_out"] or pair["beta"])))
        if args.without_free:
            model = dataclasses.replace(model, cost=dataclasses.replace(model.cost, beta_free=0.0, beta_free_out=0.0))
        print(f"# {n} ranks: {model.cost.describe_params()}"
              + (f" (from the sweep: {', '.join(sorted(k for k in extra if k.endswith('_s')))})" if extra else ""))
        recorded, again = judge(passes, n, Tuner(n, model, ""), args.tolerance)
        for coll in dict.fromkeys(e["collective"] for e in recorded):
            was = [e for e in recorded if e["collective"] == coll]
            now = [e for e in again if e["collective"] == coll]
            changed = [f"{fmt.format_size(a['size'])} {a['auto_choice']} {a['ratio']:.2f}x -> "
                       f"{b['auto_choice']} {b['ratio']:.2f}x{'' if b['ok'] else ' FAIL'}"
                       for a, b in zip(was, now) if a["auto_choice"] != b["auto_choice"] or a["ok"] != b["ok"]]
            fails = [f"{fmt.format_size(b['size'])} ({b['auto_choice']} {b['ratio']:.2f}x, fastest {b['best']})"
                     for b in now if not b["ok"]]
            print(f"  {coll:<15} recorded {sum(e['ok'] for e in was)}/{len(was)} -> "
                  f"{sum(e['ok'] for e in now)}/{len(now)}"
                  + (f"; changed: {'; '.join(changed)}" if changed else "")
                  + (f"; FAIL: {', '.join(fails)}" if fails else ""))
            total_was += sum(e["ok"] for e in was)
            total_now += sum(e["ok"] for e in now)
            judged += len(now)
    print(f"# all points: recorded {total_was}/{judged}, re-decided by today's model {total_now}/{judged}")
    return 0 if judged and total_now == judged else 1


if __name__ == "__main__":
    sys.exit(main())
