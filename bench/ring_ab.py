#!/usr/bin/env python3
"""Same-process A/B of the FIFO ring allreduce's fused steps, 2 ranks, plain numpy buffers.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python bench/ring_ab.py          # ~2 min
    python bench/ring_ab.py --size 16M --rounds 9 --dtype float16

The ring's last reduce-scatter step reduces what arrives with the local block and writes the
result both into the next rank's FIFO and into the output. It runs as one pass of the forward
kernel (ordinary stores into the FIFO; streaming ones into a large output, ordinary ones when
the output is the operand it just loaded). The last step of each slice (the finished slice copied
out of the FIFO) runs in one pass with the next slice's first send (link_shm.pxd: shm_pair).
``ring.ring_variant`` switches one process pair between that and the schedules each replaced (the
copy-out and the send apart; the reduce into the FIFO, then a copy out of it), and, as a what-if,
runs the paired and unpaired schedules on 256 KiB slices of the default FIFOs, so all run in the
same rounds on the same buffers and the host's load moves them alike: every variant after a
barrier, the order rotated round by round, the slowest rank's median of ``--reps`` calls per
round, the median over rounds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transports import _aligned, _free_port, fmt_size, parse_size, run_pair, table  # noqa: E402

# name -> ring_variant(one_pass, pair, slice_cap): the 256K-slice rows keep the default FIFOs
VARIANTS = {"now (one pass, paired copies)": (True, True, 0), "copies apart": (True, False, 0),
            "two passes, copies apart": (False, False, 0),
            "paired copies, 256K slices": (True, True, 256 << 10),
            "copies apart, 256K slices": (True, False, 256 << 10)}


NOW = next(iter(VARIANTS))


def _rank(rank, port, nbytes, dtype, rounds, reps):
    os.environ.update({"HETCCL_RANK": str(rank), "HETCCL_SIZE": "2", "HETCCL_LOCAL_RANK": str(rank),
                       "HETCCL_LOCAL_SIZE": "2", "HETCCL_STORE": f"127.0.0.1:{port}"})
    import hetccl
    from hetccl._native.ring import ring_variant
    comm = hetccl.init()
    n = nbytes // np.dtype(dtype).itemsize
    x, o, xi = (_aligned(n * np.dtype(dtype).itemsize, dtype) for _ in range(3))
    x[:] = 1                                             # in place: zeros, whose sums stay zero
    cases = [(v, place) for v in VARIANTS for place in ("out of place", "in place")]

    def call(place):
        if place == "in place":
            comm.allreduce(xi, algorithm="ring")
        else:
            comm.allreduce(x, out=o, algorithm="ring")

    res = {}
    try:
        for v, place in cases:                           # warm-up, and a check of every variant
            ring_variant(*VARIANTS[v])
            call(place)
            if not np.array_equal(o, np.full_like(o, 2)):
                raise AssertionError(f"{v}: wrong allreduce result")
        for rnd in range(rounds):
            k = rnd % len(cases)
            for v, place in cases[k:] + cases[:k]:
                ring_variant(*VARIANTS[v])
                ts = []
                for _ in range(reps):
                    comm.barrier()
                    t = time.perf_counter()
                    call(place)
                    ts.append(time.perf_counter() - t)
                res.setdefault((v, place), []).append(
                    max(comm.allgather(np.array([statistics.median(ts)]))))
    finally:
        ring_variant()
        comm.close()
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="64M", help="bytes per rank")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args(argv)
    nbytes = parse_size(a.size)
    print(f"# 2-rank ring allreduce, {fmt_size(nbytes)} {a.dtype} SUM, {a.rounds} rounds x {a.reps}; "
          f"load before: {open('/proc/loadavg').read().split()[:3]}")
    res = run_pair(_rank, _free_port(), nbytes, a.dtype, a.rounds, a.reps, timeout=900)[0]
    now = {place: statistics.median(res[(NOW, place)]) for place in ("out of place", "in place")}
    rows = []
    for (v, place), ts in res.items():
        m = statistics.median(ts)
        rows.append({"variant": v, "call": place, "GB/s (N / time)": f"{nbytes / m / 1e9:.2f}",
                     "best round GB/s": f"{nbytes / min(ts) / 1e9:.2f}",
                     "speed now / this (per round)":
                         f"{statistics.median(t / n for t, n in zip(ts, res[(NOW, place)])):.2f}",
                     "speed now / this (medians)": f"{m / now[place]:.2f}"})
    print(table(rows))
    print(f"# load after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
