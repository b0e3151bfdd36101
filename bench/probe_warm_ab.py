"""The probe's in-cache ring timed cold and warm, against a loop of the same call, in one job.

Run under the launcher, e.g. ``python -m hetccl run -n 4 -- python bench/probe_warm_ab.py --rounds 6``.

Each round runs the probe's whole measurement (collectives/probe.py ``measure``, with the options
negotiate gives this communicator) twice, once with the in-cache ring and broadcast warmed before
each repetition (``warm_first``, cache format 10) and once cold (format 9), in alternating order,
then a loop of the 256 KiB out-of-place ring allreduce after a few untimed calls, lasting about
``--loop-ms`` (what a benchmark's block pays). It prints, per way, the median and every round's
time of the probe's ring (``allreduce_s``) and broadcast (``bcast_s``, on more ranks than CPUs)
and the loop's: warm should sit near the loop, cold above it (4 ranks on 2 CPUs, recorded: the
cold probe's ring 140 us, the sweep's loops 112).
"""
import argparse
import os
import statistics
import time

import numpy as np

import hetccl
from hetccl import dtypes
from hetccl.collectives import probe, schedules
from hetccl.collectives.registry import ALGO_DISSEMINATION, ALGO_RING
from hetccl.ops import ReduceOp


def loop_time(engine, size, timeout, loop_s) -> float:
    """Seconds per call of a loop of the probe's in-cache ring (out of place) lasting ~loop_s."""
    n = max(size, (probe.PROBE_BYTES // 4) // size * size)
    a, b = np.zeros(n, np.float32), np.zeros(n, np.float32)

    def call():
        schedules.allreduce(engine, a, b, dtypes.FLOAT32, int(ReduceOp.SUM), ALGO_RING, timeout)
    for _ in range(3):
        call()
    k = probe._calls_per_rep(engine, call, timeout, loop_s)
    schedules.barrier(engine, ALGO_DISSEMINATION, timeout)
    t0 = time.perf_counter()
    for _ in range(k):
        call()
    return float(probe._max_over_ranks(engine, np.array([(time.perf_counter() - t0) / k]), timeout)[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--loop-ms", type=float, default=10.0)
    args = ap.parse_args()
    comm = hetccl.init()
    ctx = comm.context
    engine, size, timeout = ctx.engine, ctx.size, ctx.timeout
    _, big, _, opts = probe.plan_for(ctx)
    got = {"cold": {}, "warm": {}, "loop": {"allreduce_s": []}}
    for r in range(args.rounds):
        for way in (("cold", "warm") if r % 2 == 0 else ("warm", "cold")):
            raw = probe.measure(engine, size, timeout, big, **dict(opts, warm=way == "warm"))
            for k in ("allreduce_s", "bcast_s"):
                if k in raw:
                    got[way].setdefault(k, []).append(raw[k])
        got["loop"]["allreduce_s"].append(loop_time(engine, size, timeout, args.loop_ms * 1e-3))
    if ctx.rank == 0:
        links, share = '+'.join(ctx.tuner.model.link_classes), ctx.local_size / probe.usable_cpus()
        print(f"# {size} ranks over {links}, {share:g} ranks per CPU; load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for way, d in got.items():
            for k, v in d.items():
                print(f"{way:<5} {k:<12} median {statistics.median(v) * 1e6:8.1f} us   "
                      + " ".join(f"{x * 1e6:.1f}" for x in v))
    comm.close()


if __name__ == "__main__":
    main()
