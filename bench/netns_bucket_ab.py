"""Before/after of token-bucket pricing in one run: on the netns setup of bench/netns_bench.py (2
hosts x 2 ranks, tbf 1 Gbit/s, burst 128 kB), time ring, recursive doubling and hierarchical
allreduce (and the tuner's choice) at each size, interleaved, and judge two choices made by the
same planner from the same cost model: with the tbf bucket priced (after, the tuner's real choice)
and with it ignored (before: Planner.burst = None, as before the bucket was modelled).

    python bench/netns_bucket_ab.py --sizes 8K,32K,128K,512K --reps 9
    python bench/netns_bucket_ab.py --seed 34.3,0.129,53.4     # the cost model of a given probe

--seed ALPHA_US,GBPS,GAMMA_GBPS fixes the probe's result (written into a private cost-model cache
that the ranks read), so the two pricings are compared at the cost model of a run that missed;
without it, the run's own probe decides and its alpha (34-60 us quiet, far more under load) moves
the old pricing's crossover. Verdict as in netns_bench.py's choice check: the choice's median
within 10% of the fastest of flat (ring, recursive doubling) and hierarchical.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkout import IMPORT_ROOT  # noqa: E402,F401  (which hetccl: the installed one, or this checkout; bench/checkout.py)

from bench.netns_bench import med, parse_size      # noqa: E402

ALGOS = ["ring", "recursive_doubling", "hierarchical", None]


def ab_case(rank, size, sizes, reps):
    """The two choices per size, then every algorithm timed interleaved (slowest rank's time)."""
    import numpy as np

    import hetccl
    comm = hetccl.init(timeout=300)
    plan = comm.context.plan
    before, after = {}, {}
    for n in sizes:
        flat = comm.context.tuner.select("allreduce", n)
        after[n] = plan.choose("allreduce", n, flat, False).name
        burst, plan.burst = plan.burst, None
        plan._cache.clear()
        before[n] = plan.choose("allreduce", n, flat, False).name
        plan.burst = burst
        plan._cache.clear()
    times, chosen = {}, {}
    for n in sizes:
        x = np.ones(n // 4, np.float32)
        times[n] = {str(a): [] for a in ALGOS}
        for a in ALGOS:
            comm.allreduce(x, algorithm=a)                 # warm up
            if a is None:
                chosen[n] = comm.last_algorithm
        for _ in range(reps):
            for a in ALGOS:
                comm.barrier()
                t = time.perf_counter()
                comm.allreduce(x, algorithm=a)
                w = np.array([time.perf_counter() - t])
                comm.allreduce(w, hetccl.MAX, algorithm="ring")
                times[n][str(a)].append(float(w[0]))
    model = comm.context.tuner.model.describe()
    comm.close()
    return {"times": times, "chosen": chosen, "before": before, "after": after, "model": model,
            "burst": plan.burst}


def seed_cache(cluster, alpha_us, gbps, gamma_gbps):
    """Let one short job probe (filling the private cache), then overwrite its entries."""
    cluster.run("bench.netns_bucket_ab:ab_case", [0, 1, 0, 1], args=[[8192], 1], timeout=120)
    path = os.path.join(os.environ["XDG_CACHE_HOME"], "hetccl", "cost-model.json")
    with open(path) as f:
        doc = json.load(f)
    for e in doc["entries"].values():
        e.update(alpha=alpha_us * 1e-6, beta=1 / (gbps * 1e9), gamma=1 / (gamma_gbps * 1e9), noisy=False,
                 measured_at=time.time(), probe_s=0.0, other_load=None)
    with open(path, "w") as f:
        json.dump(doc, f)


def report(name, r, sizes) -> bool:
    print(f"\n{name}: {r['model']}; token bucket {r['burst'] or 0:.0f} bytes")
    print(f"  {'size':>9} {'ring':>9} {'rd':>9} {'hier':>9} {'choice':>9}  {'before (bucket ignored)':<24} after (bucket priced)")
    ok = True
    for n in sizes:
        t = r["times"][str(n)]
        m = {k: med(v) for k, v in t.items()}
        best = min(m["ring"], m["recursive_doubling"], m["hierarchical"])

        def verdict(algo, extra=()):
            good = med(t[algo] + list(extra)) <= 1.1 * best
            return good, f"{algo:<18} {'ok' if good else 'MISS':<5}"
        before, after = r["before"][str(n)], r["after"][str(n)]
        if r["chosen"][str(n)] != after:
            raise AssertionError(f"the tuner ran {r['chosen'][str(n)]} at {n} bytes, the planner chose {after}")
        _, vb = verdict(before)
        good, va = verdict(after, t["None"])
        ok &= good
        print(f"  {n:>9} {m['ring'] * 1e6:>8.0f}u {m['recursive_doubling'] * 1e6:>8.0f}u "
              f"{m['hierarchical'] * 1e6:>8.0f}u {m['None'] * 1e6:>8.0f}u  {vb:<24} {va}")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="8K,32K,128K,512K,2M,8M,16M,32M,64M")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rate", default="1gbit")
    ap.add_argument("--seed", default=None, metavar="ALPHA_US,GBPS,GAMMA_GBPS",
                    help="fix the cost model (e.g. 34.3,0.129,53.4: the probe of the run that missed)")
    args = ap.parse_args(argv)
    from tests.netns.cluster import NetnsCluster, unavailable_reason
    why = unavailable_reason()
    if why:
        print(f"netns_bucket_ab: cannot run here: {why}", file=sys.stderr)
        return 2
    sizes = [parse_size(x) for x in args.sizes.split(",") if x.strip()]
    cache = tempfile.mkdtemp(prefix="hetccl-ab-cache-")
    os.environ["XDG_CACHE_HOME"] = cache           # the ranks inherit it: the user's cache is left alone
    ok = True
    try:
        with NetnsCluster(hosts=2, rate=args.rate) as cluster:
            if args.seed:
                seed_cache(cluster, *(float(x) for x in args.seed.split(",")))
            for name, placement in (("round-robin (0,2 | 1,3)", [0, 1, 0, 1]), ("block (0,1 | 2,3)", [0, 0, 1, 1])):
                r = cluster.run("bench.netns_bucket_ab:ab_case", placement, args=[sizes, args.reps],
                                timeout=60 + 15 * args.reps * len(sizes))[0]
                ok &= report(name, r, sizes)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"\nafter (bucket priced): {'PASS: ok at every size' if ok else 'FAIL: a MISS above'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
