#!/usr/bin/env python3
"""What a little CPU work next to each call costs the call, with every rank doing it or one rank only:
whether an allocating form's extra time is the allocation's position in the call (before this
rank posts its contribution) or the cores' total work (more ranks than cores).

    python -m hetccl run -n 4 -- python bench/extra_work.py --rounds 15

8 B blocks, as bench/call_forms.py; cases interleaved round by round; rank 0 prints the least,
10th percentile and median us per call:

* ``ag out`` / ``ag alloc``: ``allgather(x, out=o)`` and ``allgather(x)``;
* ``ag out+empty before`` / ``after``: the ``out=`` form with a ``numpy.empty`` of the result's size
  made by the caller before or after each call, on every rank;
* ``ag out+empty(rank0 only)``: the same on rank 0 only;
* ``ag out+spin``: a Python loop of about numpy.empty's time instead (work, no allocation);
* ``sc out`` / ``sc fresh`` / ``sc out+empty``: scatter into the same output, into a new output each
  call (what bench/call_forms.py times as scatter's "alloc": scatter has no allocating form), and
  into the same output with a ``numpy.empty`` beside it;
* ``np.empty`` / ``spin``: the extra work alone.

If the extra is the same before and after the call and for a spin as for an allocation, and larger
on every rank than on one, what a call costs is the cores' total work, wherever in the call it is.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import hetccl


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=3000)
    args = ap.parse_args(argv)
    comm = hetccl.init()
    p, r = comm.size, comm.rank
    B = 2
    x = np.arange(B, dtype=np.float32)
    op_ = np.empty(B * p, np.float32)
    xp = np.arange(B * p, dtype=np.float32)
    o1 = np.empty(B, np.float32)

    def spin():
        for _ in range(3):
            pass

    cases = {
        "ag out": lambda: comm.allgather(x, out=op_),
        "ag alloc": lambda: comm.allgather(x),
        "ag out+empty before": lambda: (np.empty(B * p, np.float32), comm.allgather(x, out=op_)),
        "ag out+empty after": lambda: (comm.allgather(x, out=op_), np.empty(B * p, np.float32)),
        "ag out+empty(rank0 only)": (lambda: (np.empty(B * p, np.float32), comm.allgather(x, out=op_)))
        if r == 0 else (lambda: comm.allgather(x, out=op_)),
        "ag out+spin": lambda: (spin(), comm.allgather(x, out=op_)),
        "sc out": lambda: comm.scatter(xp, o1, 0),
        "sc fresh": lambda: comm.scatter(xp, np.empty(B, np.float32), 0),
        "sc out+empty": lambda: (np.empty(B, np.float32), comm.scatter(xp, o1, 0)),
        "np.empty": lambda: np.empty(B * p, np.float32),
        "spin": spin,
    }
    for f in cases.values():                    # warm up: the latency path learns each shape
        for _ in range(300):
            f()
    res = {k: [] for k in cases}
    for _ in range(args.rounds):
        for k, f in cases.items():
            comm.barrier()
            t = time.perf_counter()
            for _ in range(args.calls):
                f()
            res[k].append((time.perf_counter() - t) / args.calls * 1e6)
    if r == 0:
        print(f"{p} ranks, us per call, {args.rounds} rounds of {args.calls}")
        for k, v in res.items():
            v.sort()
            print(f"{k:28s} min {v[0]:6.2f} p10 {v[len(v) // 10]:6.2f} med {v[len(v) // 2]:6.2f}")
    comm.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
