#!/usr/bin/env python3
"""A/B of the Python dispatch: per-call time of a few collective shapes, two hetccl trees, runs
interleaved.

    python bench/dispatch_ab.py --a /tmp/hp-base --b . --nranks 2 --runs 6 \
        --cases allreduce:8:recursive_doubling,allgather:8:recursive_doubling,allreduce:1048576:ring,allreduce:67108864:ring

Each run launches ``python -m hetccl run -n N`` with PYTHONPATH set to one tree (built in place)
and times every case (``collective:bytes[:algorithm]``, float32, blocking, output buffers given,
so small calls take the latency path once their shape is learnt) in ``rounds`` short rounds; rank 0
reports every round's per-call time, and the summary gives each tree's minimum, 10th percentile and
median over all its rounds. (This host moves its vCPUs between near and far placements every few
seconds and is shared: an 8-byte call takes ~0.7 us or ~25 us depending on where the two ranks
landed, so the low percentiles compare the code and the median mostly the weather.) The algorithm is forced
when given, so both trees run the same schedule whatever their cost models measured (a forced
algorithm takes the same route as the tuner's choice of it). Trees alternate run by run, so both
see the same machine weather.
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
p = comm.size
for coll, nbytes, algo, budget in {cases!r}:
    n = max(1, nbytes // 4)
    x = np.ones(n, np.float32)
    out = np.empty(n * p if coll == "allgather" else n, np.float32)
    call = (lambda: comm.allgather(x, out, algorithm=algo)) if coll == "allgather" else \
        (lambda: comm.allreduce(x, out=out, algorithm=algo))
    call()
    comm.barrier()
    t = time.perf_counter()
    for _ in range(3):
        call()
    one = (time.perf_counter() - t) / 3
    calls = np.array([max(1, min(20000, int(budget / max(one, 1e-7))))], np.int64)
    comm.allreduce(calls, op="min")                  # every rank makes the same number of calls
    calls = int(calls[0])
    res = []
    for _ in range({rounds}):
        comm.barrier()
        t = time.perf_counter()
        for _ in range(calls):
            call()
        res.append((time.perf_counter() - t) / calls * 1e6)
    if comm.rank == 0:
        print("RESULT", coll, nbytes, comm.last_algorithm, calls, *res, flush=True)
comm.close()
"""


def parse_cases(text: str) -> list:
    out = []
    for c in text.split(","):
        parts = c.split(":")
        out.append((parts[0], int(parts[1]), parts[2] if len(parts) > 2 and parts[2] else None))
    return out


def one_run(tree: str, nranks: int, cases: list, rounds: int, budget: float) -> dict:
    # the ranks run `python -c`, which puts the working directory first on sys.path: run them in
    # the tree, or a run started from another checkout's root would import that checkout instead
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1")
    code = CHILD.format(cases=[(c, n, a, budget) for c, n, a in cases], rounds=rounds)
    p = subprocess.run([sys.executable, "-m", "hetccl", "run", "-n", str(nranks), "--",
                        sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=os.path.abspath(tree), timeout=900)
    got = {}
    for line in p.stdout.splitlines():
        if "RESULT" in line:
            coll, nbytes, algo, calls, *rounds = line.split("RESULT", 1)[1].split()
            got[(coll, int(nbytes))] = ([float(r) for r in rounds], algo, int(calls))
    if len(got) != len(cases):
        raise RuntimeError(f"{tree}: missing results (exit {p.returncode})\n{p.stdout}\n{p.stderr[-2000:]}")
    return got


def _p10(xs):
    xs = sorted(xs)
    return xs[len(xs) // 10]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="tree A (e.g. a checkout of main, built in place)")
    ap.add_argument("--b", required=True, help="tree B")
    ap.add_argument("--nranks", type=int, default=2)
    ap.add_argument("--runs", type=int, default=6, help="runs per tree (interleaved)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--budget", type=float, default=0.1, help="seconds per round and case")
    ap.add_argument("--cases", default="allreduce:8,allgather:8,allreduce:1048576,allreduce:67108864")
    args = ap.parse_args(argv)
    cases = parse_cases(args.cases)
    res = {"a": [], "b": []}
    for i in range(args.runs):
        for which in (("a", "b") if i % 2 == 0 else ("b", "a")):
            r = one_run(getattr(args, which), args.nranks, cases, args.rounds, args.budget)
            res[which].append(r)
            print(f"run {i} {which}: " + "  ".join(f"{c}:{n} min {min(v[0]):.2f} median "
                                                   f"{statistics.median(v[0]):.2f} us ({v[1]})"
                                                   for (c, n), v in r.items()), flush=True)
    print(f"\n{args.nranks} ranks, {args.runs} runs per tree x {args.rounds} rounds: per-call time (us) "
          f"over all rounds of a tree; min and p10 are the quiet floor, the median the weather")
    print(f"{'case':<20}{'A min':>9}{'B min':>9}{'B/A':>7}{'A p10':>9}{'B p10':>9}{'B/A':>7}"
          f"{'A med':>10}{'B med':>10}{'B/A':>7}  algorithm")
    for c, n, _ in cases:
        k = (c, n)
        row = []
        for stat in (min, _p10, statistics.median):
            a = stat([t for r in res["a"] for t in r[k][0]])
            b = stat([t for r in res["b"] for t in r[k][0]])
            row.append((a, b))
        algos = sorted({r[k][1] for w in res.values() for r in w})
        print(f"{c + ' ' + str(n) + ' B':<20}" + "".join(f"{a:>9.2f}{b:>9.2f}{b / a:>7.3f}" for a, b in row) +
              f"  {','.join(algos)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
