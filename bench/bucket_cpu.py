#!/usr/bin/env python3
"""CPU time of one DDP bucket's reduction: the in-place AVG allreduce of a symmetric float32 buffer.

Run under the launcher (any tree: it uses the public API only, so the same script measures a base
checkout through its PYTHONPATH):

    python -m hetccl run -n 2 -- python bench/bucket_cpu.py [--sizes 16M,64M] [--reps 9]

Why CPU time: with DDP on a host whose cores the ranks' backward passes already fill, a bucket's
reduction runs on the process group's lane thread and takes its CPU time from backward whatever
the overlap, so the step grows by about the reduction's CPU time (``time.thread_time``), which a
loaded host inflates far less than wall time. The forms timed per size, interleaved repetition by
repetition: in place AVG (what ``hetccl.torch.hooks.symmetric_hook`` runs on a bucket), in place
SUM, out of place SUM (the fused dual-output combine) and out of place AVG. Prints, per form, the
median CPU and wall milliseconds over the repetitions on this rank (every rank prints its own).
"""
import argparse
import statistics
import time

import numpy as np

import hetccl
from hetccl.ops import ReduceOp


def _size(text: str) -> int:
    text = text.strip().upper().rstrip("B")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


FORMS = {"in place AVG": (True, ReduceOp.AVG), "in place SUM": (True, ReduceOp.SUM),
         "out of place SUM": (False, ReduceOp.SUM), "out of place AVG": (False, ReduceOp.AVG)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="16M,64M", help="bucket bytes (DDP's default buckets of a "
                    "25M-parameter MLP: 16, 64 and 16 MiB)")
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args(argv)
    sizes = [_size(s) for s in args.sizes.split(",")]
    comm = hetccl.init()
    try:
        bufs = {}
        for s in sizes:
            a, b = comm.alloc(s // 4, np.float32), comm.alloc(s // 4, np.float32)
            a[:] = np.random.default_rng(comm.rank).standard_normal(a.size, dtype=np.float32)
            b[:] = 0
            bufs[s] = (a, b)
        times = {}
        algos = set()
        for _ in range(args.reps):
            for s in sizes:
                for form, (in_place, op) in FORMS.items():
                    a, b = bufs[s]
                    comm.barrier()
                    c0, w0 = time.thread_time(), time.perf_counter()
                    comm.allreduce(a, op, out=None if in_place else b)
                    c1, w1 = time.thread_time(), time.perf_counter()
                    algos.add(comm.last_algorithm)
                    if in_place and op == ReduceOp.SUM:
                        a *= 0.5                        # keep the values bounded (not timed)
                    times.setdefault((s, form), []).append((c1 - c0, w1 - w0))
        print(f"rank {comm.rank}: algorithms {sorted(algos)}; median of {args.reps}")
        for (s, form), v in times.items():
            print(f"rank {comm.rank}: {s >> 20:4d} MiB {form:17s} cpu "
                  f"{statistics.median(c for c, _ in v) * 1e3:7.2f} ms  wall "
                  f"{statistics.median(w for _, w in v) * 1e3:7.2f} ms")
    finally:
        comm.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
