#!/usr/bin/env python3
"""How well an island's bridge probe prices the calls a loop makes: the probe as it runs now
(collectives/islands.py IslandPlan._probe: warm loops at 8 B, 64 and 256 KiB, 1, 4 and 16 MiB) against the
probe of before 2026-12-07 08:00 (one call per size at 8 B x20, 1 and 16 MiB, buffers evicted
by the previous collective's 16 MiB call), both against the bridge's calls timed in loops, in one
job, interleaved round by round (so load moves all three alike).

    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 python bench/ompi_job.py mpirun -np 4 --oversubscribe \\
        python bench/bridge_probe_ab.py [--rounds 5] [--sizes 64K,256K,1M,4M,16M]

Ranks 0,1 are an MPI island, 2,3 on hetccl (bench/validate_sim.py's islands case); ranks 2,3
sleep while the MPI island is timed. Prints how long creating the communicator took (it runs the
probe), then, per collective of the composed allreduce (reduce_scatter, allgather) and the leaders'
reduce, and size, the median over rounds of: the loop's time, each probe's price (bridge_time
through its points) and price / loop.
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
from islands_phases import sleepy_barrier  # noqa: E402

OLD_SIZES = (8, 1 << 20, 16 << 20)
OLD_SMALL_CALLS = 20
COLLS = ("reduce_scatter", "allgather", "reduce")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="64K,256K,1M,4M,16M")
    args = ap.parse_args(argv)
    import hetccl
    from hetccl import dtypes
    from hetccl.benchmark import format as fmt
    from hetccl.bridges.base import COLLECTIVES
    from hetccl.collectives import islands
    from hetccl.ops import ReduceOp
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    t_init = time.perf_counter()
    comm = hetccl.init(timeout=600, bridges={0: "mpi", 1: "mpi"})
    t_init = time.perf_counter() - t_init
    f32, SUM = dtypes.FLOAT32, ReduceOp.SUM
    sizes = fmt.parse_sizes(args.sizes)
    plan = comm.context.islands
    rows = {}                                    # (coll, size, what) -> [per round]
    try:
        b = plan.bridge if plan.mine == 0 else None
        s = 2
        bufs = {n: (np.ones(n // 4, np.float32), np.empty(n // 4, np.float32))
                for n in sorted(set(sizes) | set(OLD_SIZES))}
        sync = np.zeros(1, np.float32)

        def one(coll, n):
            a, r = bufs[n]
            count = a.size - a.size % s
            if coll == "reduce_scatter":
                b.reduce_scatter(a, r, count // s, f32, SUM)
            elif coll == "reduce":
                b.reduce(a, r, count, f32, SUM, 0)
            else:
                b.allgather(a, r, count // s, f32)

        def slowest(t):
            """The slowest MPI-island rank's seconds (both island ranks call it)."""
            w = np.array([t], np.float32)
            b.allreduce(w, w, 1, f32, ReduceOp.MAX)
            return float(w[0])

        def timed(coll, n, k, warm):
            if warm:
                one(coll, n)
            b.allreduce(sync, sync, 1, f32, SUM)
            t0 = time.perf_counter()
            for _ in range(k):
                one(coll, n)
            return slowest((time.perf_counter() - t0) / k)

        def old_probe():
            """Seconds at OLD_SIZES per collective, one repetition of the old probe's order."""
            out = {}
            for coll in COLLECTIVES:
                if coll not in COLLS:
                    continue
                out[coll] = [timed(coll, n, OLD_SMALL_CALLS if n == OLD_SIZES[0] else 1, False) for n in OLD_SIZES]
            return out

        for rnd in range(args.rounds):
            sleepy_barrier(world)
            if b is None:
                continue
            # the old probe: REPS repetitions, median per size, one collective after the other
            reps = [old_probe() for _ in range(islands.REPS)]
            islands._measured.clear()
            new = plan._probe()
            for ci, coll in enumerate(COLLECTIVES):
                if coll not in COLLS:
                    continue
                old_t = [statistics.median(r[coll][i] for r in reps) for i in range(len(OLD_SIZES))]
                old_pts = islands.price_points(old_t, OLD_SIZES)
                new_pts = islands.price_points(new[islands.PRICE_FIELDS * ci:islands.PRICE_FIELDS * (ci + 1)])
                for n in sizes:
                    loop = timed(coll, n, max(1, (16 << 20) // n), True)
                    rows.setdefault((coll, n, "loop"), []).append(loop)
                    rows.setdefault((coll, n, "old"), []).append(islands.bridge_time(old_pts, n))
                    rows.setdefault((coll, n, "new"), []).append(islands.bridge_time(new_pts, n))
        sleepy_barrier(world)
        if comm.rank == 0:
            print(f"# bridge probe A/B, {args.rounds} rounds; load average {os.getloadavg()[0]:.2f}; "
                  f"creating the communicator (with the islands' probe) took {t_init:.2f} s")
            print(f"{'collective':<15} {'size':>6} {'loop us':>10} {'old probe':>10} {'old/loop':>9} "
                  f"{'new probe':>10} {'new/loop':>9}")
            for coll in COLLS:
                for n in sizes:
                    loop = statistics.median(rows[(coll, n, "loop")])
                    old = statistics.median(rows[(coll, n, "old")])
                    new = statistics.median(rows[(coll, n, "new")])
                    print(f"{coll:<15} {fmt.format_size(n):>6} {loop * 1e6:10.1f} {old * 1e6:10.1f} "
                          f"{old / loop:9.2f} {new * 1e6:10.1f} {new / loop:9.2f}")
    finally:
        comm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
