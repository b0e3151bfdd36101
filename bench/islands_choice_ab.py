#!/usr/bin/env python3
"""The islands job's route choice under two pricings of the composed call's hand-overs, against
what each route measures, in one process set.

    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 python bench/ompi_job.py mpirun -np 4 --oversubscribe \\
        python bench/islands_choice_ab.py [--sizes 64K,256K,1M,4M,16M] [--reps 7] [--pass-before 0]

The job is bench/islands_phases.py's (ranks 0,1 an MPI island, 2,3 on hetccl). Per size it asks
the communicator's own decision (``Context.decide``, the public call's) what it runs with
collectives/islands.py ``HANDOVER_PASS`` at ``--pass-before`` (the pricing before the hand-over's
bytes were priced: 0) and at the module's value, and times, interleaved repetition by
repetition, the flat algorithm the tuner picks (forced by name) and the composed form
(``algorithm="islands"``): each pricing's choice is charged the time of the route it picks, so
the two choices compare on the same measurements. Time per repetition: the slowest rank, a loop of
calls calibrated to ~20 ms; the median over --reps.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import checkout  # noqa: E402,F401  (which hetccl: installed, or this checkout)
from islands_job import islands_job  # noqa: E402
from islands_phases import LOOP_S, sleepy_barrier  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64K,256K,1M,4M,16M")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--pass-before", type=float, default=0.0, help="HANDOVER_PASS of the 'before' pricing")
    args = ap.parse_args(argv)
    from hetccl import dtypes
    from hetccl.benchmark import format as fmt
    from hetccl.collectives import islands
    from hetccl.ops import ReduceOp
    f32, SUM = dtypes.FLOAT32, ReduceOp.SUM
    after_pass = islands.HANDOVER_PASS
    with islands_job() as (world, comm, plan):
        sizes = fmt.parse_sizes(args.sizes)

        def choice(k, n):
            islands.HANDOVER_PASS = k
            plan._cache.clear()
            plan.__dict__.pop("_routes_flat", None)
            try:
                a, form = comm.context.decide("allreduce", n, None, f32, SUM)
            finally:
                islands.HANDOVER_PASS = after_pass
                plan._cache.clear()
                plan.__dict__.pop("_routes_flat", None)
            return "islands" if form else a.name
        flat = {n: comm.context.tuner.select("allreduce", n).name for n in sizes}
        chosen = {n: (choice(args.pass_before, n), choice(after_pass, n)) for n in sizes}

        def timed(n, algo, k):
            src, dst = np.ones(n // 4, np.float32), np.empty(n // 4, np.float32)
            sleepy_barrier(world)
            comm.allreduce(np.zeros(1, np.float32), timeout=600)
            t0 = time.perf_counter()
            for _ in range(k):
                comm.allreduce(src, out=dst, algorithm=algo, timeout=600)
            return (time.perf_counter() - t0) / k

        def slowest(t):
            return max(world.allgather(t))
        loops, reps = {}, {}
        for n in sizes:
            for algo in (flat[n], "islands"):
                t1 = slowest(timed(n, algo, 1))
                t1 = slowest(timed(n, algo, 1))
                loops[n, algo] = world.bcast(max(1, int(LOOP_S / max(t1, 1e-6))), root=0)
                reps[n, algo] = []
        for _ in range(args.reps):
            for n in sizes:
                for algo in (flat[n], "islands"):
                    reps[n, algo].append(slowest(timed(n, algo, loops[n, algo])))
        if comm.rank == 0:
            print(f"# islands route choice A/B; load average {os.getloadavg()[0]:.2f}; HANDOVER_PASS before "
                  f"{args.pass_before} after {after_pass}; model {comm.context.tuner.model.cost.describe_params()}")
            print(f"{'size':>6} {'flat':<19} {'flat us':>9} {'islands us':>10} {'before':<19} {'after':<19} "
                  f"{'before us':>9} {'after us':>9} {'after/before':>12}")
            worse = 0
            for n in sizes:
                t = {a: statistics.median(reps[n, a]) * 1e6 for a in (flat[n], "islands")}
                b, a = chosen[n]
                tb, ta = t["islands" if b == "islands" else flat[n]], t["islands" if a == "islands" else flat[n]]
                worse += ta > tb * 1.05
                print(f"{fmt.format_size(n):>6} {flat[n]:<19} {t[flat[n]]:9.1f} {t['islands']:10.1f} {b:<19} {a:<19} "
                      f"{tb:9.1f} {ta:9.1f} {ta / tb:12.2f}")
            print(f"# sizes where the after choice is > 5% slower than the before choice: {worse}/{len(sizes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
