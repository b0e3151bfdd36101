"""Which cache cut predicts the one-host jobs of a recorded simulator run (bench/validate_sim.py
--out): no job runs. Two tables.

- ``--fixed``: every FIFO case re-predicted with the cut replaced by fixed values (the private
  level, 4 and 8 MiB, the L3 per rank, ...), beside the cut the record's probe used.
- default: the measured cut (probe.fit_cut), emulated. Records made before the probe timed its
  ring between the caches hold no such ring, so its time is taken from the job's own loops (the
  points' measured times, log-interpolated between the two sizes around the middle ring; where the
  job ran another algorithm at that size, its time stands in for the ring's): the probe's
  loop-timed rings read within 0.99-1.07x of the jobs' loops of the same calls
  (bench/results/probe-loops-ab-*-2026-12-07m.txt). probe.fit with the private level gives the cut.

- ``--runs``: runs made with the measured cut, per one-host case: points within 25% as run (with
  the cut its probe took: the private level when other processes took more than probe.NOISY of
  the CPUs during it, probe.loaded_cut), and with the cut its own ring between the caches gives
  when the load is ignored.

    python bench/cut_repredict.py bench/results/validate-sim-2026-12-07m.json [--fixed]
    python bench/cut_repredict.py --runs bench/results/cut-validate-*.json
"""
import copy
import json
import math
import sys

from hetccl.collectives import probe
from hetccl.collectives.cost_model import LinkCost, all_fifo
from hetccl.simulate.costs import STREAM_MIN, _fifo
from hetccl.simulate.validate import JUDGED_FROM, TOLERANCE, compare

MIB = 1 << 20
PRIVATE, SHARED = 1 * MIB, 16 * MIB        # the EPYC host of the records: 1 MiB L2, 32 MiB L3 for 2 vCPUs


def score(name, rec, cut=None):
    if cut is not None:
        rec = copy.deepcopy(rec)
        rec["model"]["cache_bytes"] = cut
    rows = compare(name, rec, rec.get("transports"))
    big = [r for r in rows if r["size"] >= JUDGED_FROM and r["error"] is not None]
    auto = [r for r in rows if r["variant"] == "auto"]
    return (sum(abs(r["error"]) <= TOLERANCE for r in big), len(big), sum(r["same"] for r in auto), len(auto),
            " ".join(f"{r['error'] * 100:+.0f}%" for r in big))


def fifo_cases(d):
    for name, rec in d["records"].items():
        if name.startswith("local") and "error" not in rec:
            yield name, rec, all_fifo([c for c in rec["model"]["links"].split("+") if c])


def as_seconds(raw_us):
    return {(k[:-3] + "_s" if k.endswith("_us") else k): (v * 1e-6 if k.endswith("_us") else v)
            for k, v in raw_us.items()}


def fitted_cut(rec, raw):
    share = max(1.0, float(rec.get("load", 1.0)))
    facts = LinkCost(0.0, 0.0, 0.0, fifo=True, stream_min=STREAM_MIN, fifo_bytes=_fifo(rec["local"]), share=share)
    return probe.fit(raw, rec["ranks"], facts, cache_bytes=SHARED, network=False, private_bytes=PRIVATE).cache_bytes


def runs(paths):
    for path in paths:
        d = json.load(open(path))
        print(f"# {path}")
        was = now = total = 0
        for name, rec in d["records"].items():
            if "error" in rec:
                print(f"  {name}: {rec['error'][:100]}")
                continue
            k, m, _, _, errs = score(name, rec)
            raw = rec.get("probe_raw") or {}
            print(f"  {name:16s} load {rec['loadavg_before']:4.1f}, {rec['model']['detail'].split(', ', 1)[-1]:28s} "
                  f"cut {rec['model']['cache_bytes'] / MIB:5.2f} MiB: {k}/{m}; errors >= 64 KiB: {errs}")
            alt = k
            if "allreduce_mid_us" in raw:
                cut = fitted_cut(rec, as_seconds(raw))
                alt, _, _, _, errs = score(name, rec, cut)
                print(f"  {'':16s} middle ring {raw['allreduce_mid_bytes'] / 1024:.0f} KiB {raw['allreduce_mid_us']:.0f} "
                      f"us -> cut {cut / MIB:5.2f} MiB: {alt}/{m}; errors >= 64 KiB: {errs}")
            was, now, total = was + k, now + alt, total + m
        print(f"# {was}/{total} within 25% as run; {now}/{total} with the cut of each probe's own middle ring")


def middle_ring(rec):
    """(bytes, seconds) of the ring between the caches: the job's own time at that size."""
    share = max(1.0, float(rec.get("load", 1.0)))
    n = probe.mid_ring_bytes(share, PRIVATE, SHARED)
    pts = {r["size"]: r["time_us"] * 1e-6 for r in rec["rows"] if r["variant"] == "auto"}
    lo, hi = max(s for s in pts if s <= n), min(s for s in pts if s >= n)
    if lo == hi:
        return n, pts[lo]
    w = math.log(n / lo) / math.log(hi / lo)
    return n, math.exp(math.log(pts[lo]) + w * (math.log(pts[hi]) - math.log(pts[lo])))


def measured_cut(rec):
    n, t = middle_ring(rec)
    raw = dict(as_seconds(rec["probe_raw"]), allreduce_mid_s=t, allreduce_mid_bytes=n)
    return n, t, fitted_cut(rec, raw)


def main(argv):
    if argv[0] == "--runs":
        return runs(argv[1:]) or 0
    path, fixed = argv[0], "--fixed" in argv
    d = json.load(open(path))
    print("# python bench/cut_repredict.py " + " ".join(argv))
    if fixed:
        cuts = [("as recorded", None), ("the private level, 1 MiB", lambda r: PRIVATE),
                ("4 MiB", lambda r: 4 * MIB), ("8 MiB", lambda r: 8 * MIB),
                ("the L3 per rank, 32 MiB / ranks on the host (ranks_per_cache too)", lambda r: 2 * SHARED / r["local"]),
                ("16 MiB at 1 rank per CPU, the private 1 MiB beyond",
                 lambda r: SHARED if r["local"] <= 2 else PRIVATE)]
        for label, fn in cuts:
            lines, ok, total = [], 0, 0
            for name, rec, fifo in fifo_cases(d):
                cut = rec["model"]["cache_bytes"] if fn is None or not fifo else fn(rec)
                k, m, same, auto, errs = score(name, rec, cut)
                ok, total = ok + k, total + m
                lines.append(f"  {name:16s} cut {cut / MIB:5.2f} MiB  {k}/{m} within 25%, same choice {same}/{auto}; "
                             f"errors >= 64 KiB: {errs}")
            print(f"== {label}: {ok}/{total}\n" + "\n".join(lines))
        return 0
    was = now = total = 0
    for name, rec, fifo in fifo_cases(d):
        k0, m, *_ = score(name, rec, rec["model"]["cache_bytes"])
        if not fifo:
            print(f"  {name:16s} (a loopback wire: its own cut, unchanged) {k0}/{m}")
            was, now, total = was + k0, now + k0, total + m
            continue
        n, t, cut = measured_cut(rec)
        k, m, same, auto, errs = score(name, rec, cut)
        print(f"  {name:16s} middle ring {n >> 10} KiB at {t * 1e6:.0f} us -> cut {cut / MIB:.2f} MiB: {k0} -> {k} "
              f"of {m}, same choice {same}/{auto}; errors: {errs}")
        was, now, total = was + k0, now + k, total + m
    print(f"# one host: {was} -> {now} of {total} points >= 64 KiB within 25%")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
