#!/usr/bin/env python3
"""A/B check of two hetccl trees on one collective and size, runs interleaved.

    python bench/latency_ab.py --a /path/to/old/tree --b . --nranks 2 --runs 8
    python bench/latency_ab.py --a OLD --b . --collective allgather --bytes 64M --nranks 4

Each run launches ``python -m hetccl run -n N`` with PYTHONPATH set to one tree (built in place),
times blocking calls of the collective (by default 8-byte allreduces: the latency path once the
shape is learnt) in ``rounds`` rounds, and reports rank 0's median and minimum per-call time over
the rounds. ``--bytes`` is the output's size (allgather: every rank contributes bytes / N); the
number of calls per round shrinks with the size (``--calls`` is the count at 8 B). The trees
alternate run by run, so both see the same machine weather (this host moves its vCPUs between near
and far placements every few seconds; compare the medians over runs, and the minimum as the quiet
floor).
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
n = {nbytes} // 4
if "{collective}" == "allgather":
    x = np.ones(max(1, n // comm.size), np.float32)
    out = np.empty(x.size * comm.size, np.float32)
    call = lambda: comm.allgather(x, out)
else:
    x = np.ones(max(1, n), np.float32)
    call = lambda: comm.allreduce(x)
for _ in range({warmup}):
    call()
res = []
for _ in range({rounds}):
    comm.barrier()
    t = time.perf_counter()
    for _ in range({calls}):
        call()
    res.append((time.perf_counter() - t) / {calls} * 1e6)
if comm.rank == 0:
    print("RESULT", statistics.median(res), min(res), comm.last_algorithm, flush=True)
comm.close()
"""


def parse_bytes(s: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = s.strip().upper().rstrip("B") or "0"
    return int(float(s[:-1]) * units[s[-1]]) if s[-1] in units else int(s)


def one_run(tree: str, nranks: int, collective: str, nbytes: int, calls: int,
            rounds: int) -> tuple[float, float, str]:
    # the ranks run `python -c`, which puts the working directory first on sys.path: run them in
    # the tree, or a run started from another checkout's root would import that checkout instead
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1")
    code = CHILD.format(collective=collective, nbytes=nbytes, calls=calls, rounds=rounds,
                        warmup=max(2, calls // 10))
    p = subprocess.run([sys.executable, "-m", "hetccl", "run", "-n", str(nranks), "--",
                        sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=os.path.abspath(tree), timeout=900)
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
    ap.add_argument("--collective", choices=("allreduce", "allgather"), default="allreduce")
    ap.add_argument("--bytes", default="8", help="output bytes per call (8, 1M, 64M ...)")
    ap.add_argument("--runs", type=int, default=8, help="runs per tree (interleaved)")
    ap.add_argument("--calls", type=int, default=20000, help="calls per round at 8 B (fewer for larger)")
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args(argv)
    nbytes = parse_bytes(a.bytes)
    calls = max(3, min(a.calls, (128 << 20) // max(1, nbytes)))   # ~128 MiB moved per round
    got = {"A": [], "B": []}
    for i in range(a.runs):
        for name in (("A", "B") if i % 2 == 0 else ("B", "A")):
            tree = a.a if name == "A" else a.b
            med, mn, algo = one_run(tree, a.nranks, a.collective, nbytes, calls, a.rounds)
            got[name].append((med, mn))
            print(f"run {i} {name}: median {med:9.2f} us  min {mn:9.2f} us  ({algo})", flush=True)
    print(f"\n{a.nranks} ranks, {nbytes} B {a.collective}, us per call, over {a.runs} runs of {a.rounds} "
          f"rounds x {calls} calls")
    meds = {}
    for name, tree in (("A", a.a), ("B", a.b)):
        meds[name] = statistics.median(m for m, _ in got[name])
        mins = [m for _, m in got[name]]
        print(f"{name} {tree}: median of run medians {meds[name]:.2f}, "
              f"median of run minima {statistics.median(mins):.2f}, best {min(mins):.2f}")
    print(f"B/A (medians): {meds['B'] / meds['A']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
