#!/usr/bin/env python3
"""A/B of two hetccl trees: the 8 B allreduce's latency before and after 64 MiB allreduces on a
reused plain buffer (automatic registration shares it), runs interleaved.

    python bench/small_after_big_ab.py --a /work/main --b . --runs 6
    python bench/small_after_big_ab.py --a /work/main --b . --register   # comm.register by hand

Each run launches ``python -m hetccl run -n 2`` with PYTHONPATH set to one tree (built in place);
rank 0 reports the median per-call time of ``rounds`` rounds of ``calls`` 8-byte allreduces,
before and after four 64 MiB in-place allreduces of one reused array (``--register``: registered
with ``comm.register`` first), the big calls' median time and the algorithm they ran. The trees
alternate run by run (this host moves its vCPUs between near and far placements every few
seconds: compare medians over runs).
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
s = np.ones(2, np.float32)

def small():
    for _ in range(200):
        comm.allreduce(s)
    res = []
    for _ in range({rounds}):
        comm.barrier()
        t = time.perf_counter()
        for _ in range({calls}):
            comm.allreduce(s)
        res.append((time.perf_counter() - t) / {calls} * 1e6)
    return statistics.median(res)

before = small()
x = np.ones((64 << 20) // 4, np.float32)
if {register}:
    comm.register(x)
big = []
for _ in range(4):
    comm.barrier()
    t = time.perf_counter()
    comm.allreduce(x)
    big.append((time.perf_counter() - t) * 1e3)
algo = comm.last_algorithm
after = small()
if comm.rank == 0:
    print("RESULT", before, after, statistics.median(big[2:]), algo, flush=True)
comm.close()
"""


def one_run(tree, calls, rounds, register):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1")
    code = CHILD.format(calls=calls, rounds=rounds, register=bool(register))
    p = subprocess.run([sys.executable, "-m", "hetccl", "run", "-n", "2", "--", sys.executable, "-c",
                        code], env=env, capture_output=True, text=True, cwd=os.path.abspath(tree),
                       timeout=900)
    for line in p.stdout.splitlines():
        if "RESULT" in line:
            before, after, big, algo = line.split("RESULT", 1)[1].split()
            return float(before), float(after), float(big), algo
    raise RuntimeError(f"{tree}: no result (exit {p.returncode})\n{p.stdout}\n{p.stderr[-2000:]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--register", action="store_true", help="comm.register the 64 MiB array first")
    a = ap.parse_args(argv)
    got = {"A": [], "B": []}
    for i in range(a.runs):
        for name in (("A", "B") if i % 2 == 0 else ("B", "A")):
            r = one_run(a.a if name == "A" else a.b, a.calls, a.rounds, a.register)
            got[name].append(r)
            print(f"run {i} {name}: 8 B before {r[0]:.3f} us, after {r[1]:.3f} us; 64 MiB "
                  f"{r[2]:.1f} ms ({r[3]})", flush=True)
    for name, tree in (("A", a.a), ("B", a.b)):
        g = got[name]
        print(f"{name} {tree}: 8 B allreduce median before {statistics.median(r[0] for r in g):.3f} us, "
              f"after {statistics.median(r[1] for r in g):.3f} us (after/before "
              f"{statistics.median(r[1] / r[0] for r in g):.3f}); 64 MiB in place "
              f"{statistics.median(r[2] for r in g):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
