#!/usr/bin/env python3
"""The probe's in-cache ring timed among all its quantities, among the in-cache ones only, by
itself in the probe's repetitions, and as loops of that call alone, in one job, rounds interleaved.

    HETCCL_TRANSPORTS=tcp python -m hetccl run -n 4 -- python bench/probe_groups_ab.py --rounds 4
    HETCCL_TRANSPORTS=tcp python -m hetccl run -n 8 -- python bench/probe_groups_ab.py --rounds 4
    HETCCL_TRANSPORTS=^c2c python -m hetccl run -n 4 -- python bench/probe_groups_ab.py --rounds 4

Why: the in-cache beta prices a job's loop of one call, and over a loopback wire among ranks
sharing CPUs the probe's 256 KiB ring read 1.2-1.7x the jobs' loops of it (4 ranks, quiet runs
bench/results/validate-sim-2026-12-07g/h/i; at 2 and 8 ranks 0.8-1.1x). Which part of the
probe's way of timing makes the gap, on a quiet machine:

- "whole": the probe's measure() as negotiate runs it (on one host the in-cache ring's repetitions
  by themselves first, probe.APART, the other quantities' interleaved);
- "mixed": measure() with every quantity's repetitions interleaved, the in-cache ring among them
  (APART empty: the probe before cache format 12);
- "apart": the same, the in-cache quantities' repetitions interleaved among themselves and the
  out-of-cache ones' among theirs (no megabyte transfer before a repetition of the small ring);
- "only": the ring by itself in the probe's repetitions (time_per_call, the probe's repetition
  length, calls per repetition and warm call);
- "alone": five loops of the ring lasting --loop-ms each after two untimed calls, the median of
  the slowest rank's time per call, as the validation's runner times a job.

Each round runs them in alternating order; printed: the median and every round's time per call
of the in-cache ring, and each median over "alone". Loaded, 4 ranks on 2 CPUs over loopback TCP
(load average 3.4): whole 856, apart 310, alone 673 us; at 8 ranks 1301, 954, 996.
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


def alone(engine, nbytes, timeout, loop_s, reps=5) -> float:
    """Seconds per call of loops of the ring of nbytes (out of place, written buffers): the median
    over *reps* loops of the slowest rank's time, as the validation's runner times a job."""
    a, b = probe._written_zeros(nbytes // 4), probe._written_zeros(nbytes // 4)

    def call():
        schedules.allreduce(engine, a, b, dtypes.FLOAT32, int(ReduceOp.SUM), ALGO_RING, timeout)
    call()
    call()
    k = probe._calls_per_rep(engine, call, timeout, loop_s)
    times = np.empty(reps)
    for i in range(reps):
        schedules.barrier(engine, ALGO_DISSEMINATION, timeout)
        t0 = time.perf_counter()
        for _ in range(k):
            call()
        times[i] = (time.perf_counter() - t0) / k
    return float(np.median(probe._max_over_ranks(engine, times, timeout)))


OUT_OF_CACHE = ("allreduce_big_s", "copy_big_s", "reduce_big_s", "bcast_big_s", "exchange_big_s")


def measure(engine, size, timeout, big, opts, apart):
    """probe.measure; *apart*: its time_per_call run twice, on the in-cache quantities and on the
    out-of-cache ones (OUT_OF_CACHE), each group's repetitions interleaved among themselves."""
    real = probe.time_per_call

    def grouped(engine, fns, timeout, **kw):
        out = {}
        for keep in (lambda k: k not in OUT_OF_CACHE, lambda k: k in OUT_OF_CACHE):
            group = {k: f for k, f in fns.items() if keep(k)}
            warm = kw.get("warm", frozenset()) & set(group)
            out.update(real(engine, group, timeout, **dict(kw, warm=warm)))
        return out
    probe.time_per_call = grouped if apart else real
    try:
        return probe.measure(engine, size, timeout, big, **opts)
    finally:
        probe.time_per_call = real


def only(engine, nbytes, timeout, opts) -> float:
    """The ring of nbytes by itself in the probe's repetitions (time_per_call with the probe's
    repetition length, calls per repetition and warm call)."""
    a, b = probe._written_zeros(nbytes // 4), probe._written_zeros(nbytes // 4)
    fns = {"allreduce_s": lambda: schedules.allreduce(engine, a, b, dtypes.FLOAT32, int(ReduceOp.SUM), ALGO_RING,
                                                      timeout)}
    return probe.time_per_call(engine, fns, timeout, rep_s={"allreduce_s": opts["ring_rep_s"]},
                               min_calls={"allreduce_s": opts["min_calls"]},
                               **probe.warm_first(fns, opts["warm"]))["allreduce_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--loop-ms", type=float, default=30.0, help="the loop's length (the validation's runner: 30 ms)")
    args = ap.parse_args()
    comm = hetccl.init()
    ctx = comm.context
    engine, size, timeout = ctx.engine, ctx.size, ctx.timeout
    _, big, _, opts = probe.plan_for(ctx)
    got = {"whole": [], "mixed": [], "apart": [], "only": [], "alone": []}
    nbytes = 0
    for r in range(args.rounds):
        ways = list(got)
        for way in (ways if r % 2 == 0 else ways[::-1]):    # round 0 starts with the probe: nbytes
            if way in ("whole", "mixed", "apart"):
                kept = probe.APART
                probe.APART = () if way == "mixed" else kept
                try:
                    raw = measure(engine, size, timeout, big, opts, apart=way == "apart")
                finally:
                    probe.APART = kept
                got[way].append(raw["allreduce_s"])
                nbytes = raw["allreduce_bytes"]
            elif way == "only":
                got[way].append(only(engine, nbytes, timeout, opts))
            else:
                got[way].append(alone(engine, nbytes, timeout, args.loop_ms * 1e-3))
    if ctx.rank == 0:
        links, share = '+'.join(ctx.tuner.model.link_classes), ctx.local_size / probe.usable_cpus()
        print(f"# {size} ranks over {links}, {share:g} ranks per CPU, the probe's in-cache ring of "
              f"{nbytes >> 10} KiB; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        med = {way: statistics.median(v) for way, v in got.items()}
        for way, v in got.items():
            print(f"{way:<6} median {med[way] * 1e6:8.1f} us   " + " ".join(f"{x * 1e6:.1f}" for x in v))
        print("   ".join(f"{way} / alone {med[way] / med['alone']:.2f}" for way in ("whole", "mixed", "apart", "only")))
    comm.close()


if __name__ == "__main__":
    main()
