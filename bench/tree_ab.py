#!/usr/bin/env python3
"""A/B of two hetccl trees on the same machine: allreduce and allgather at chosen sizes and ranks.

    python bench/tree_ab.py --a /path/to/old/tree --b . --nranks 2,4 --sizes 8,1M,64M --runs 6

Each run launches ``python -m hetccl run -n N -- python -m hetccl bench`` with PYTHONPATH set to one
tree (built in place) and reads its JSON rows; the trees alternate run by run (A, B, A, B, ...), so
both see the same machine weather. Per (collective, ranks, size) it prints the median over runs of
each tree's median time, and B/A (above 1: B is slower). A structural change must keep every B/A
within its noise; compare repeated runs on a quiet machine (``uptime``) before believing a change.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def one_run(tree: str, nranks: int, sizes: str, collectives: str, reps: int, min_time: float) -> list:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), OPENBLAS_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "hetccl", "run", "-n", str(nranks), "--", sys.executable, "-m", "hetccl",
           "bench", "-c", collectives, "--sizes", sizes, "--reps", str(reps), "--min-time", str(min_time),
           "--no-describe", "--json", out]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            raise SystemExit(f"{tree}: hetccl bench failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
        with open(out) as f:
            return json.load(f)["rows"]
    finally:
        os.unlink(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="the reference tree")
    ap.add_argument("--b", required=True, help="the tree under test")
    ap.add_argument("--nranks", default="2,4")
    ap.add_argument("--sizes", default="8,1M,64M")
    ap.add_argument("-c", "--collectives", default="allreduce,allgather")
    ap.add_argument("--runs", type=int, default=6, help="runs per tree, interleaved")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.1)
    args = ap.parse_args(argv)
    times = {}                      # (tree, collective, nranks, size) -> [median us per run]
    for n in (int(x) for x in args.nranks.split(",")):
        for run in range(args.runs):
            for tree in ("a", "b"):
                for row in one_run(getattr(args, tree), n, args.sizes, args.collectives, args.reps,
                                   args.min_time):
                    times.setdefault((tree, row["collective"], n, row["size"]), []).append(row["time_us"])
            print(f"# {n} ranks: run {run + 1}/{args.runs} done", file=sys.stderr, flush=True)
    print(f"# A = {os.path.abspath(args.a)}\n# B = {os.path.abspath(args.b)}")
    print(f"# {'collective':<10} {'ranks':>5} {'size':>10} {'A us':>12} {'B us':>12} {'B/A':>6}")
    for (tree, coll, n, size), a in sorted(times.items()):
        if tree != "a":
            continue
        b = times.get(("b", coll, n, size), [])
        ma, mb = statistics.median(a), statistics.median(b) if b else float("nan")
        print(f"  {coll:<10} {n:>5} {size:>10} {ma:>12.2f} {mb:>12.2f} {mb / ma:>6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
