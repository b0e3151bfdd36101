#!/usr/bin/env python3
"""Loopback TCP: does the probe see what a job pays? The probe as the runtime runs it (the median of
repetitions that are loops of ring calls lasting probe.LOOPBACK_REP_S), the same probe with the
short repetitions of the FIFOs (probe.REP_S: one or a few calls after a barrier, what it ran
before cache format 6), and the probe with every rank on one CPU, each priced against long runs of
the ring allreduce in the same job (rounds interleaved, so all see the same machine).

    python -m hetccl run -n 2 -- python bench/loopback_probe_ab.py      # HETCCL_TRANSPORTS=tcp is set here
    python -m hetccl run -n 4 -- python bench/loopback_probe_ab.py --rounds 5
    HETCCL_TRANSPORTS=c2c python -m hetccl run -n 8 -- python bench/loopback_probe_ab.py   # FIFO rings, 8 on 2 cores

The last asks the same of the FIFOs (which keep short repetitions): 8 ranks on 2 cores ran their
4 MiB ring allreduces 28-34% slower than their probes priced in four quiet runs of
bench/validate_sim.py, while 2 and 4 ranks were within 10%.

Why: over loopback TCP, 2-8 rank jobs ran 1.4-3.1x slower at 64 KiB-4 MiB than the probe of their
fresh ranks priced them (docs/simulate.md). One explanation is that a socket's wake-up moves the
sleeper onto the waker's CPU and the ranks come to share one CPU; a probe with every rank on one
CPU measures that state. Another was the probe's statistic: the fastest of nine repetitions of
about half a millisecond, where the job pays the typical call (the probe now keeps the median).
A third is the length of a repetition: a call or a few after a barrier against the loops of tens
of milliseconds a benchmark or a training loop runs (in a quiet hour, 953 against 1787 us per
4 MiB ring at 2 ranks). This script says which predicts the long runs better. Run it on a quiet machine: under load every rank shares CPUs with other processes
anyway.

The long runs: per size, calls back to back for about --min-time seconds, five times; the median
of the slowest rank's time per call (as bench/validate_sim.py's runner times a job).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

os.environ.setdefault("HETCCL_TRANSPORTS", "tcp")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import checkout  # noqa: E402,F401  (which hetccl: installed, or this checkout; bench/checkout.py)

import numpy as np  # noqa: E402

SIZES = (256 << 10, 1 << 20, 4 << 20, 16 << 20)


@contextlib.contextmanager
def one_cpu(pin: bool):
    """With *pin*, run on the lowest CPU this process may use; its affinity is restored after."""
    cpus = os.sched_getaffinity(0)
    if not pin or len(cpus) < 2:
        yield
        return
    os.sched_setaffinity(0, {min(cpus)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.03)
    args = ap.parse_args()
    import hetccl
    from hetccl import dtypes
    from hetccl.collectives import probe, schedules
    from hetccl.collectives.allreduce import ring
    from hetccl.collectives.registry import ALGO_DISSEMINATION, ALGO_RING
    from hetccl.ops import ReduceOp
    comm = hetccl.init(timeout=600)
    eng, p = comm.context.engine, comm.size
    facts = comm.context.tuner.model.cost
    big, cache = probe.probe_sizes(max(1.0, comm.local_size / probe.usable_cpus()), False)

    def slowest(x: float) -> float:
        return float(probe._max_over_ranks(eng, np.array([x]), 600)[0])

    def long_run(n: int) -> float:
        b = np.zeros(n // 4, np.float32)

        def call():
            schedules.allreduce(eng, b, b, dtypes.FLOAT32, int(ReduceOp.SUM), ALGO_RING, 600)
        call()
        k = int(slowest(float(max(1, int(args.min_time / max(1e-6, probe._batch(call, 1)))))))
        times = []
        for _ in range(5):
            schedules.barrier(eng, ALGO_DISSEMINATION, 600)
            times.append(slowest(probe._batch(call, k) / k))
        return float(np.median(times))

    if comm.rank == 0:
        print(f"# {p} ranks over {'+'.join(comm.context.tuner.model.link_classes)}, {probe.usable_cpus()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}; "
              f"error = predicted / measured - 1 of the ring allreduce")
    for rnd in range(args.rounds):
        fitted = {}
        loop_s = probe.ring_rep_s(("tcp",), False)
        for key, pin, rep in (("loop", False, loop_s), ("one CPU", True, loop_s), ("short", False, probe.REP_S)):
            with one_cpu(pin):
                raw = probe.measure(eng, p, 600, big, rep)
            fitted[key] = probe.fit(raw, p, facts, cache, network=False)
        measured = {n: long_run(n) for n in SIZES}
        if comm.rank == 0:
            cells = []
            for n, t in measured.items():
                err = {k: ring(n, p, f.at(n, "allreduce")) / t - 1 for k, f in fitted.items()}
                cells.append(f"{n >> 10}K {t * 1e6:.0f} us: probe ({loop_s * 1e3:.0f} ms loops) {err['loop']:+.0%}, "
                             f"short reps {err['short']:+.0%}, one CPU {err['one CPU']:+.0%}")
            print(f"round {rnd} (load {os.getloadavg()[0]:.1f}) | " + " | ".join(cells), flush=True)
    comm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
