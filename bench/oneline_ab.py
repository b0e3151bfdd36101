#!/usr/bin/env python3
"""One-line messages against the FIFO for the latency path's small exchanges, in one process per
rank: the same calls with ``Engine.lines`` on and off, alternating round by round, so both see the
same machine (hetccl/_native/oneline.pxd; the hardware floor of each layout: bench/line_pingpong.py).

    python bench/oneline_ab.py --nranks 2 --rounds 30
    python bench/oneline_ab.py --nranks 2,4 --transports shm --raw bench/results/oneline-ab.txt

Cases (8 B blocks, the tuner's algorithm, as a user calls them): allreduce in place and with
``out=``, allgather with ``out=``. Prints min / p10 / median us per call of each mode and the
ratio lines/fifo of min and p10 (the quiet floor; the median is mostly the weather on a shared
host). Prints ``uptime`` before and after.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import time, numpy as np, hetccl
comm = hetccl.init()
e = comm._engine
p = comm.size
x = np.arange(2, dtype=np.float32)
o1 = np.empty(2, np.float32)
op_ = np.empty(2 * p, np.float32)
cases = {{"allreduce inplace": lambda: comm.allreduce(o1),
          "allreduce out": lambda: comm.allreduce(x, out=o1),
          "allgather out": lambda: comm.allgather(x, out=op_)}}
for f in cases.values():
    for _ in range(500):
        f()
res = {{(k, m): [] for k in cases for m in ("lines", "fifo")}}
for rnd in range({rounds}):
    for mode in (("lines", "fifo") if rnd % 2 == 0 else ("fifo", "lines")):
        e.lines = mode == "lines"
        for k, f in cases.items():
            comm.barrier()
            t = time.perf_counter()
            for _ in range({calls}):
                f()
            res[(k, mode)].append((time.perf_counter() - t) / {calls} * 1e6)
if comm.rank == 0:
    print("ALGO", comm.last_algorithm, flush=True)
    for (k, m), v in res.items():
        print("RESULT", k.replace(" ", ":"), m, *("%.4f" % t for t in v), flush=True)
comm.close()
"""


def _p10(xs):
    xs = sorted(xs)
    return xs[len(xs) // 10]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nranks", default="2")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=20000, help="calls per round, case and mode")
    ap.add_argument("--transports", default=None, help="HETCCL_TRANSPORTS for the run (default: the library's)")
    ap.add_argument("--raw", default=None, help="append the raw per-round figures to this file")
    a = ap.parse_args(argv)
    up = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    print("uptime:", up(), flush=True)
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    if a.transports:
        env["HETCCL_TRANSPORTS"] = a.transports
    for n in (int(s) for s in a.nranks.split(",")):
        p = subprocess.run([sys.executable, "-m", "hetccl", "run", "-n", str(n), "--", sys.executable,
                            "-c", CHILD.format(rounds=a.rounds, calls=a.calls)],
                           env=env, capture_output=True, text=True, timeout=1800)
        got, algo = {}, "?"
        for line in p.stdout.splitlines():
            if "ALGO " in line:
                algo = line.split("ALGO ", 1)[1]
            if "RESULT " in line:
                case, mode, *ts = line.split("RESULT ", 1)[1].split()
                got[(case.replace(":", " "), mode)] = [float(t) for t in ts]
        if not got:
            print(p.stdout, p.stderr[-3000:], file=sys.stderr)
            return 1
        if a.raw:
            with open(a.raw, "a") as f:
                for (case, mode), v in got.items():
                    f.write(f"n={n} {case.replace(' ', ':')} {mode} " + " ".join(f"{t:.4f}" for t in v) + "\n")
        print(f"\n{n} ranks, 8 B, us per call, {a.rounds} rounds x {a.calls} calls per mode "
              f"(last algorithm: {algo})")
        print(f"{'case':<20}{'mode':<7}{'min':>8}{'p10':>8}{'med':>8}   lines/fifo: min    p10")
        for case in dict.fromkeys(k for k, _ in got):
            ln, ff = got[(case, "lines")], got[(case, "fifo")]
            for mode, v in (("lines", ln), ("fifo", ff)):
                print(f"{case:<20}{mode:<7}{min(v):8.3f}{_p10(v):8.3f}{statistics.median(v):8.3f}", end="")
                print(f"   {min(ln) / min(ff):17.3f}{_p10(ln) / _p10(ff):7.3f}" if mode == "fifo" else "")
    print("\nuptime:", up(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
