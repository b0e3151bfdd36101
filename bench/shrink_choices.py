"""Do a shrunk communicator's algorithm choices hold? Its parent's cost model (n ranks, inherited
by comm.shrink() when probe.inheritable allows) against fresh probes at n-1 ranks.

    python bench/shrink_choices.py                       # the recorded quiet c2c probes, 8 -> 7
    python bench/shrink_choices.py --links shm --big 8 --max-load 0.6

The probes are the cost-model cache entries the crossover runs kept (bench/results/*-raw/**/
cost-model.json, every probe of this cache format, quiet ones by default: other load below
--max-load). For every pair (parent probe at ``--big`` ranks, fresh probe at ``--big - 1``) a tuner
of ``--big - 1`` ranks prices each collective at each size with both parameter sets (the facts,
ranks per CPU and FIFO bytes, being the survivors' in both) and counts the sizes whose choice
differs; where it differs, the regret is what the inherited choice costs over the fresh one's,
priced by the fresh probe. The same between pairs of fresh probes at ``--big - 1`` ranks is the
probe's own spread: choices that differ no more often than that are as right as a re-probe.
"""
import argparse
import glob
import itertools
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from hetccl.collectives import probe                          # noqa: E402
from hetccl.collectives.cost_model import MEASURED, CostModel  # noqa: E402
from hetccl.collectives.tuner import Tuner                    # noqa: E402

COLLECTIVES = ("allreduce", "allgather", "reduce_scatter", "broadcast", "reduce", "alltoall")
SIZES = [1 << k for k in range(3, 27, 2)]                      # 8 B .. 32 MiB, every 4x


def entries(links, local, max_load, pattern=None):
    seen = {}
    pattern = pattern or os.path.join(HERE, "results", "**", "cost-model.json")
    for path in glob.glob(pattern, recursive=True):
        with open(path) as f:
            doc = json.load(f)
        if doc.get("format") != probe.FORMAT:
            continue
        for e in doc["entries"].values():
            if e.get("links") == links and e.get("local") == local and (e.get("other_load") or 0) <= max_load:
                seen[e["measured_at"]] = e
    return [seen[k] for k in sorted(seen)]


def tuner(entry, size, links):
    share = max(1.0, size / int(entry.get("cpus", probe.usable_cpus())))
    cost = probe._link_cost([float(entry.get(k, 0.0)) for k in probe.PARAMS], tuple(links.split("+")),
                            None, probe._fifo_bytes(size), share)
    return Tuner(size, CostModel(cost, MEASURED, "", tuple(links.split("+"))), "")


def compare(a, b, size, links):
    """(differing, total, [regret]) of tuner a's choices priced by tuner b (b: the reference)."""
    ta, tb = tuner(a, size, links), tuner(b, size, links)
    diff, total, regret = 0, 0, []
    for coll in COLLECTIVES:
        for n in SIZES:
            ca, cb = ta.select(coll, n), tb.select(coll, n)
            total += 1
            if ca.name != cb.name:
                diff += 1
                regret.append(tb.price(ca, n) / tb.price(cb, n))
    return diff, total, regret


def summary(label, pairs, size, links):
    diff = total = 0
    regret = []
    for a, b in pairs:
        d, t, r = compare(a, b, size, links)
        diff, total, regret = diff + d, total + t, regret + r
    worst = f", regret median {statistics.median(regret):.3f}x max {max(regret):.3f}x" if regret else ""
    print(f"{label}: {len(pairs)} pairs, {diff}/{total} choices differ ({diff / max(1, total):.1%}){worst}")
    return diff, total, regret


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--links", default="c2c")
    ap.add_argument("--big", type=int, default=8, help="the parent's ranks (all on one host)")
    ap.add_argument("--max-load", type=float, default=0.1, help="other processes' CPU share at most")
    ap.add_argument("--caches", default=None, help="glob of the cost-model.json files to read "
                    "(default: bench/results/**/cost-model.json)")
    a = ap.parse_args()
    small = a.big - 1
    parents, fresh = (entries(a.links, n, a.max_load, a.caches) for n in (a.big, small))
    print(f"# {a.links}: {len(parents)} probes at {a.big} ranks, {len(fresh)} at {small} (cache format "
          f"{probe.FORMAT}, other load <= {a.max_load:.0%}); {len(COLLECTIVES)} collectives x "
          f"{len(SIZES)} sizes ({SIZES[0]} B .. {SIZES[-1] >> 20} MiB) priced at {small} ranks")
    if not parents or not fresh:
        sys.exit("no probes to compare")
    summary(f"inherited ({a.big}) vs fresh ({small})", list(itertools.product(parents, fresh)), small, a.links)
    summary(f"fresh ({small}) vs fresh ({small})",
            [p for pair in itertools.combinations(fresh, 2) for p in (pair, pair[::-1])], small, a.links)
    summary(f"parent ({a.big}) vs parent ({a.big}) at {small}",
            [p for pair in itertools.combinations(parents, 2) for p in (pair, pair[::-1])], small, a.links)


if __name__ == "__main__":
    main()
