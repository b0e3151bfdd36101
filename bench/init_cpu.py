#!/usr/bin/env python3
"""CPU time of ``hetccl.init()`` per rank, two checkouts A/B, interleaved round by round.

    python bench/init_cpu.py --tree /path/to/A --tree /path/to/B          # 2 and 4 ranks, 5 rounds
    python bench/init_cpu.py --tree . --sizes 2,4,8 --rounds 10 --transports shm,tcp

Each job is ``python -m hetccl run -n N`` with PYTHONPATH set to the tree and run from it, so every rank imports
that checkout. A rank reads getrusage(RUSAGE_SELF) user+sys around ``hetccl.init()`` (the import
of hetccl before it is not counted) and reports it with whether libucp is mapped into the process
after init (/proc/self/maps): a one-host job without RDMA devices should never load UCX. CPU time,
not wall time, so the figures hold on a loaded machine; every round runs every tree once, the order
reversed every other round. Printed: per tree and size, the median and min over rounds of the
per-rank mean, every round's, and how many ranks had UCX loaded. A round that measures (a cost-model
or single-copy probe the tree's cache lacks) shows as an outlier of a second or more.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

RANK = r"""
import json, os, resource, sys
import hetccl
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t0 = cpu()
comm = hetccl.init(timeout=60)
t1 = cpu()
with open("/proc/self/maps") as f:
    ucx = "libucp" in f.read()
comm.close()
print("INITCPU " + json.dumps({"rank": comm.rank, "cpu": t1 - t0, "ucx": ucx, "at": hetccl.__file__}), flush=True)
"""


def job(tree: str, n: int, transports: str | None, extra: dict) -> list[dict]:
    tree = os.path.abspath(tree)
    env = dict(os.environ, PYTHONPATH=tree, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env.update(extra)
    if transports:
        env["HETCCL_TRANSPORTS"] = transports
    out = subprocess.run([sys.executable, "-m", "hetccl", "run", "-n", str(n), "--", sys.executable, "-c", RANK],
                         env=env, cwd=tree, capture_output=True, text=True, timeout=120)
    rows = [json.loads(line.split("INITCPU ", 1)[1]) for line in out.stdout.splitlines() if "INITCPU " in line]
    if out.returncode or len(rows) != n or any(not x["at"].startswith(tree + "/") for x in rows):
        raise SystemExit(f"{tree} -n {n} failed (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, help="a checkout (repeat for A/B)")
    ap.add_argument("--sizes", default="2,4")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--transports", default=None, help="HETCCL_TRANSPORTS for every job")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="more environment for every job, e.g. HETCCL_C2C_DIRECT=off: a single-copy probe "
                         "that a tree's cache lacks (its build is its own key) would otherwise land in one "
                         "tree's rounds")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    with open("/proc/loadavg") as f:
        print(f"load before: {f.read().split()[:3]}")
    res = {(t, n): [] for t in a.tree for n in sizes}
    ucx = {(t, n): 0 for t in a.tree for n in sizes}
    for r in range(a.rounds):
        for n in sizes:
            for t in (a.tree if r % 2 == 0 else a.tree[::-1]):
                rows = job(t, n, a.transports, dict(kv.split("=", 1) for kv in a.env))
                res[t, n].append(statistics.mean(x["cpu"] for x in rows))
                ucx[t, n] += sum(x["ucx"] for x in rows)
    for n in sizes:
        for t in a.tree:
            v = res[t, n]
            print(f"{n} ranks  {t}: init CPU per rank median {statistics.median(v):.3f} s, min {min(v):.3f} s "
                  f"over {len(v)} rounds; ranks with UCX loaded: {ucx[t, n]}/{n * len(v)}; "
                  f"rounds: {' '.join(f'{x:.3f}' for x in v)}")
    with open("/proc/loadavg") as f:
        print(f"load after: {f.read().split()[:3]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
