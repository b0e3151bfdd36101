#!/usr/bin/env python3
"""One broadcast against a loop of them: the binomial tree and the pipelined chain, forced.

    python bench/bcast_call_vs_loop.py --nranks 4 --sizes 8,128,512,2K,8K,32K,128K
    python bench/bcast_call_vs_loop.py --nranks 3,4 --rounds 15 -o bench/results/bcast-call-vs-loop.txt

Per world size, size and algorithm, interleaved round by round (this host moves its vCPUs between
near and far placements every few seconds), three loops of calls timed on every rank (the slowest
rank's time per call, median over the rounds):

- ``loop``: broadcasts back to back, what ``hetccl bench`` and ``bench/crossover.py`` time. A
  chain's root starts the next call while later relays still forward the last one, so its p - 1
  hops overlap from call to call;
- ``+barrier``: each broadcast followed by a barrier, so no call starts before every rank has
  finished the last one: what one call costs to a program that uses the data on every rank before
  the next call, plus a barrier;
- ``barrier``: the barrier alone; ``call`` = ``+barrier`` - ``barrier``, one call's own time.

The cost model prices one call (docs/algorithms.md, "One call, not a loop").
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from checkout import IMPORT_ROOT  # noqa: E402,F401  (which hetccl: bench/checkout.py)

from hetccl.benchmark import format as fmt  # noqa: E402

ALGOS = ("binomial", "chain")

CHILD = r"""
import json, statistics, time, numpy as np, hetccl
comm = hetccl.init()
sizes, algos, rounds = {sizes!r}, {algos!r}, {rounds}
res = {{}}
t_max = np.zeros(1)
def timed(fn, calls):
    comm.barrier()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    t_max[0] = (time.perf_counter() - t) / calls
    comm.allreduce(t_max, hetccl.MAX)
    return float(t_max[0])
for nbytes in sizes:
    x = np.ones(max(1, nbytes // 4), np.float32)
    calls = max(20, min(2000, (8 << 20) // max(nbytes, 4096)))
    fns = {{}}
    for a in algos:
        fns["loop " + a] = (lambda a=a: comm.broadcast(x, 0, algorithm=a))
        fns["+barrier " + a] = (lambda a=a: (comm.broadcast(x, 0, algorithm=a), comm.barrier()))
    fns["barrier"] = comm.barrier
    for f in fns.values():
        for _ in range(20):
            f()
    times = {{k: [] for k in fns}}
    for r in range(rounds):
        for k, f in (fns.items() if r % 2 == 0 else reversed(fns.items())):
            times[k].append(timed(f, calls))
    res[nbytes] = {{k: statistics.median(v) * 1e6 for k, v in times.items()}}
if comm.rank == 0:
    print("JSON " + json.dumps(res))
comm.close()
"""


def parse_sizes(text):
    return [fmt.parse_size(s) for s in text.split(",")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nranks", default="4")
    ap.add_argument("--sizes", default="8,128,512,2K,8K,32K,128K")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("-o", "--out", help="append the table to this file too")
    args = ap.parse_args(argv)
    sizes = parse_sizes(args.sizes)
    lines = []
    for n in (int(x) for x in args.nranks.split(",")):
        code = CHILD.format(sizes=sizes, algos=ALGOS, rounds=args.rounds)
        proc = subprocess.run([sys.executable, "-m", "hetccl", "run", "-n", str(n), "--", sys.executable, "-c", code],
                              capture_output=True, text=True, timeout=1800)
        data = None
        for line in proc.stdout.splitlines():
            if "JSON " in line:
                data = json.loads(line.split("JSON ", 1)[1])
        if data is None:
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            return 1
        lines.append(f"# {n} ranks: slowest rank's us per call, median of {args.rounds} interleaved rounds; "
                     "call = +barrier - barrier")
        lines.append(f"#{'size':>7}" + "".join(f"{'loop ' + a:>15}{'call ' + a:>15}" for a in ALGOS)
                     + f"{'barrier':>10}{'loop c/b':>10}{'call c/b':>10}")
        for s in sizes:
            r = data[str(s)]
            call = {a: r["+barrier " + a] - r["barrier"] for a in ALGOS}
            lines.append(f"{fmt.format_size(s):>8}" + "".join(f"{r['loop ' + a]:15.2f}{call[a]:15.2f}" for a in ALGOS)
                         + f"{r['barrier']:10.2f}{r['loop chain'] / r['loop binomial']:10.2f}"
                         + f"{call['chain'] / call['binomial'] if call['binomial'] > 0 else float('nan'):10.2f}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
