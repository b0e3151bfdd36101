#!/usr/bin/env python3
"""Loopback TCP: does the probe see what a job pays? The probe as the runtime runs it now (cache
format 7: the ring and Rabenseifner's exchange rounds, in loops of probe.LOOPBACK_REP_S, the big
ones beyond the host's cache, probe_sizes) against the probe of format 6 (the ring alone, its big
ring at 2-4 MiB), each priced against long runs of the algorithms the runtime runs over such a
wire (ring, Rabenseifner, recursive doubling) in the same job, rounds interleaved, so both probes
and the long runs see the same machine.

    python -m hetccl run -n 2 -- python bench/loopback_probe_ab.py      # HETCCL_TRANSPORTS=tcp is set here
    python -m hetccl run -n 4 -- python bench/loopback_probe_ab.py --rounds 3
    python -m hetccl run -n 8 -- python bench/loopback_probe_ab.py --rounds 2 --sizes 64K,256K,1M,4M

Why: the probe of format 6 timed only the ring; from 4 ranks on the runtime runs recursive
doubling and Rabenseifner over loopback TCP at most sizes, whose pairwise exchange rounds paid
1.3-1.6x the ring's time per byte, and every algorithm paid 1.2-1.8x more per byte once the host's
ranks together worked on more than the cache they share (bench/results/validate-sim-2026-12-07f.json:
predictions 24-63% too fast at 4 and 8 ranks, 26-27% at 2 ranks 16-64 MiB).

The long runs: per size and algorithm, calls back to back for about --min-time seconds, five
times; the median of the slowest rank's time per call (as bench/validate_sim.py's runner times a
job). Each cell: measured us, then predicted / measured - 1 by the format-7 and format-6 fits.
The line "chosen" prices, per size, the algorithm each fit's tuner would pick against the long run
of that algorithm. Run it on a quiet machine: under load every rank shares CPUs with other
processes anyway.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HETCCL_TRANSPORTS", "tcp")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import checkout  # noqa: E402,F401  (which hetccl: installed, or this checkout; bench/checkout.py)

import numpy as np  # noqa: E402

SIZES = "64K,256K,1M,4M,16M"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.03)
    ap.add_argument("--sizes", default=SIZES)
    args = ap.parse_args()
    import hetccl
    from hetccl import dtypes
    from hetccl.benchmark.format import format_size, parse_sizes
    from hetccl.collectives import allreduce, probe, schedules
    from hetccl.collectives.registry import ALGO_DISSEMINATION, ALGO_RABENSEIFNER, ALGO_RD, ALGO_RING
    from hetccl.ops import ReduceOp
    comm = hetccl.init(timeout=600)
    eng, p = comm.context.engine, comm.size
    facts = comm.context.tuner.model.cost
    share = max(1.0, comm.local_size / probe.usable_cpus())
    sizes = parse_sizes(args.sizes)
    algos = {"ring": (ALGO_RING, allreduce.ring), "rabenseifner": (ALGO_RABENSEIFNER, allreduce.rabenseifner),
             "recursive_doubling": (ALGO_RD, allreduce.recursive_doubling)}

    def slowest(x: float) -> float:
        return float(probe._max_over_ranks(eng, np.array([x]), 600)[0])

    def long_run(n: int, code: int) -> float:
        b = np.zeros(n // 4, np.float32)

        def call():
            schedules.allreduce(eng, b, b, dtypes.FLOAT32, int(ReduceOp.SUM), code, 600)
        call()
        k = int(slowest(float(max(1, int(args.min_time / max(1e-6, probe._batch(call, 1)))))))
        times = []
        for _ in range(5):
            schedules.barrier(eng, ALGO_DISSEMINATION, 600)
            times.append(slowest(probe._batch(call, k) / k))
        return float(np.median(times))

    def probe_now():
        big, _ = probe.probe_sizes(share, False, comm.local_size)
        raw = probe.measure(eng, p, 600, big, probe.LOOPBACK_REP_S, exchange=True)
        return probe.fit(raw, p, facts, probe.private_cache_bytes(), network=False)

    def probe_format6():
        big, cache = probe.probe_sizes(share, False)
        raw = probe.measure(eng, p, 600, big, probe.LOOPBACK_REP_S)
        return probe.fit(raw, p, facts, cache, network=False)

    if comm.rank == 0:
        print(f"# {p} ranks over {'+'.join(comm.context.tuner.model.link_classes)}, {probe.usable_cpus()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}; per size and algorithm: measured us, "
              f"predicted / measured - 1 by the probe now (format 7) / of format 6", flush=True)
    for rnd in range(args.rounds):
        fits = {"now": probe_now(), "format 6": probe_format6()}
        measured = {(n, a): long_run(n, code) for n in sizes for a, (code, _) in algos.items()
                    if a != "recursive_doubling" or n <= (1 << 20)}
        if comm.rank != 0:
            continue
        print(f"round {rnd} (load {os.getloadavg()[0]:.1f})")
        chosen = {k: [] for k in fits}
        for n in sizes:
            cells = []
            for a, (_, formula) in algos.items():
                if (n, a) not in measured:
                    continue
                t = measured[(n, a)]
                err = {k: formula(n, p, f.at(n, "allreduce")) / t - 1 for k, f in fits.items()}
                cells.append(f"{a} {t * 1e6:.0f} us {err['now']:+.0%} / {err['format 6']:+.0%}")
            for k, f in fits.items():
                priced = {a: formula(n, p, f.at(n, "allreduce")) for a, (_, formula) in algos.items()
                          if (n, a) in measured}
                pick = min(priced, key=priced.get)
                chosen[k].append(f"{format_size(n)} {pick} {priced[pick] / measured[(n, pick)] - 1:+.0%}")
            print(f"  {format_size(n):>5} | " + " | ".join(cells), flush=True)
        for k, cells in chosen.items():
            print(f"  chosen by the probe {k}: " + ", ".join(cells), flush=True)
    comm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
