#!/usr/bin/env python3
"""A/B of the CPU work one call costs, in instructions, two hetccl trees: a figure the machine's
load cannot move.

    python bench/instructions_ab.py --a /work/base --b . --nranks 4 \
        --cases allgather:8:recursive_doubling,allreduce:8:recursive_doubling

Wall-clock A/B runs (bench/dispatch_ab.py) of small calls with more ranks than cores mostly time
the scheduler handing the cores round: their ratios swing by 10% in either direction between
repeats of one command. This script answers the code question instead. Rank 0 runs under
``valgrind --tool=callgrind`` (the other ranks natively, so rank 0 seldom waits: they are always
ahead of it), makes ``--few`` and then ``--many`` calls of each case, and callgrind counts only
inside the latency path's native entry for the collective (``Hot.<collective>``, a Cython method in
both the old and the new native core: pinning, the schedule, its waits; not the Python method
around it); the difference of the two counts over the difference of the calls is the instructions
per call. (Counting the whole process does not work: start-up and connection waits vary by tens of
millions of instructions from run to run.) Each tree's ranks run inside that tree (PYTHONPATH and working
directory), built in place. Needs valgrind (``apt-get install valgrind``); the script says so if it
is missing.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

CHILD = r"""
import numpy as np, hetccl
comm = hetccl.init()
p = comm.size
coll, nbytes, algo, calls = {case!r}
n = max(1, nbytes // 4)
x = np.ones(n, np.float32)
out = np.empty(n * p if coll == "allgather" else n, np.float32)
call = (lambda: comm.allgather(x, out, algorithm=algo)) if coll == "allgather" else \
    (lambda: comm.allreduce(x, out=out, algorithm=algo))
for _ in range(50):                       # learn the shape: every later call takes the same path
    call()
comm.barrier()
for _ in range(calls):
    call()
comm.barrier()
comm.close()
"""

WRAP = ('if [ "$HETCCL_RANK" = 0 ]; then exec valgrind --tool=callgrind --callgrind-out-file="$OUT" '
        '--toggle-collect="$TOGGLE" -q "$PY" -c "$CODE"; else exec "$PY" -c "$CODE"; fi')
# Cython's Python-visible wrapper of Hot.<collective> (module collectives.pyx before the native
# core's split, latency.pyx after): __pyx_pw_6hetccl_7_native_<module>_3Hot_<n><collective>
TOGGLE = "__pyx_pw_6hetccl_7_native_*_3Hot_*{collective}"


def instructions(tree: str, nranks: int, case: tuple, timeout: float) -> int:
    """Rank 0's total instruction count for one run of this case."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), OPENBLAS_NUM_THREADS="1",
                   OMP_NUM_THREADS="1", OUT=out, PY=sys.executable, CODE=CHILD.format(case=case),
                   TOGGLE=TOGGLE.format(collective=case[0]))
        p = subprocess.run([sys.executable, "-m", "hetccl", "run", "-n", str(nranks), "--",
                            "sh", "-c", WRAP], env=env, cwd=os.path.abspath(tree),
                           capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0 or not os.path.exists(out):
            raise SystemExit(f"{tree}: run failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        text = open(out).read()
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if not m or int(m.group(1)) == 0:
        raise SystemExit(f"{tree}: callgrind counted nothing inside {TOGGLE.format(collective=case[0])}")
    return int(m.group(1))


def per_call(tree, nranks, coll, nbytes, algo, few, many, timeout) -> float:
    a = instructions(tree, nranks, (coll, nbytes, algo, few), timeout)
    b = instructions(tree, nranks, (coll, nbytes, algo, many), timeout)
    return (b - a) / (many - few)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="tree A (built in place)")
    ap.add_argument("--b", required=True, help="tree B (built in place)")
    ap.add_argument("--nranks", type=int, default=4)
    ap.add_argument("--cases", default="allgather:8:recursive_doubling,allreduce:8:recursive_doubling",
                    help="collective:bytes:algorithm, comma-separated (allreduce and allgather)")
    ap.add_argument("--few", type=int, default=500)
    ap.add_argument("--many", type=int, default=2500)
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args(argv)
    if not shutil.which("valgrind"):
        print("valgrind not found: apt-get install valgrind", file=sys.stderr)
        return 2
    print(f"{args.nranks} ranks, rank 0 under callgrind; instructions per call of rank 0 inside "
          f"Hot.<collective> (({args.many} calls) - ({args.few} calls)) / {args.many - args.few}")
    print(f"{'case':<34} {'A':>10} {'B':>10} {'B/A':>7}")
    for spec in args.cases.split(","):
        coll, nbytes, algo = (spec.split(":") + [""])[:3]
        row = [per_call(t, args.nranks, coll, int(nbytes), algo or None, args.few, args.many,
                        args.timeout) for t in (args.a, args.b)]
        print(f"{spec:<34} {row[0]:>10.0f} {row[1]:>10.0f} {row[1] / row[0]:>7.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
