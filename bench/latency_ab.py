#!/usr/bin/env python3
"""A/B check of the latency path: 8-byte allreduce per call, two hetccl trees, runs interleaved.

    python bench/latency_ab.py --a /path/to/old/tree --b . --nranks 2 --runs 8

Each run launches ``python -m hetccl run -n N`` with PYTHONPATH set to one tree (built in place),
times ``calls`` blocking 8 B allreduces (the Hot path once the shape is learnt) in ``rounds``
rounds, and reports rank 0's median and minimum per-call time over the rounds. The trees alternate
run by run, so both see the same machine weather (this host moves its vCPUs between near and far
placements every few seconds; compare the medians over runs, and the minimum as the quiet floor).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import statistics, time, numpy as np, hetccl
comm = hetccl.init()
x = np.ones(2, np.float32)
for _ in range(2000):
    comm.allreduce(x)
res = []
for _ in range({rounds}):
    comm.barrier()
    t = time.perf_counter()
    for _ in range({calls}):
        comm.allreduce(x)
    res.append((time.perf_counter() - t) / {calls} * 1e6)
if comm.rank == 0:
    print("RESULT", statistics.median(res), min(res), comm.last_algorithm, flush=True)
comm.close()
"""


def one_run(tree: str, nranks: int, calls: int, rounds: int) -> tuple[float, float, str]:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1")
    code = CHILD.format(calls=calls, rounds=rounds)
    p = subprocess.run([sys.executable, "-m", "hetccl", "run", "-n", str(nranks), "--",
                        sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=600)
    for line in p.stdout.splitlines():
        if "RESULT" in line:
            med, mn, algo = line.split("RESULT", 1)[1].split()
            return float(med), float(mn), algo
    raise RuntimeError(f"{tree}: no result (exit {p.returncode})\n{p.stdout}\n{p.stderr[-2000:]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="tree A (e.g. a checkout of main, built in place)")
    ap.add_argument("--b", required=True, help="tree B")
    ap.add_argument("--nranks", type=int, default=2)
    ap.add_argument("--runs", type=int, default=8, help="runs per tree (interleaved)")
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args(argv)
    got = {"A": [], "B": []}
    for i in range(a.runs):
        for name in (("A", "B") if i % 2 == 0 else ("B", "A")):
            tree = a.a if name == "A" else a.b
            med, mn, algo = one_run(tree, a.nranks, a.calls, a.rounds)
            got[name].append((med, mn))
            print(f"run {i} {name}: median {med:7.2f} us  min {mn:7.2f} us  ({algo})", flush=True)
    print(f"\n{a.nranks} ranks, 8 B allreduce, us per call, over {a.runs} runs of {a.rounds} rounds "
          f"x {a.calls} calls")
    for name, tree in (("A", a.a), ("B", a.b)):
        meds = [m for m, _ in got[name]]
        mins = [m for _, m in got[name]]
        print(f"{name} {tree}: median of run medians {statistics.median(meds):.2f}, "
              f"median of run minima {statistics.median(mins):.2f}, best {min(mins):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
