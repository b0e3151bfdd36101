#!/usr/bin/env python3
"""The composed islands allreduce through the public call, layer by layer, against the plan's own run.

    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 python bench/ompi_job.py mpirun -np 4 --oversubscribe \\
        python bench/islands_route_ab.py [--size 64K] [--calls 100] [--rounds 10]

The job is bench/islands_phases.py's: ranks 0,1 an MPI island, 2,3 on hetccl, forced to the
composed form. Every variant runs the same schedule (the form ``decide`` picks) on the same
buffers; they differ only in how much of the public call's Python runs before it:

- ``plan``: ``IslandPlan.allreduce`` called directly;
- ``parse+plan``: the call's argument parser (``Communicator._parse``) first;
- ``decide+plan``: the parser and the decision (``Context.decide``);
- ``route``: ``Communicator._route`` (parser outside it), which runs the plan: the public call's
  path before the cached route;
- ``whole``: ``comm.allreduce(..., algorithm="islands")``: after its first call, the shape's
  cached route (collectives/island_route.py);
- ``whole yield``: the same, the MPI bridge's waits yielding from the first MPI_Test (``SPINS`` 0,
  as hetccl's own waits do with more ranks than CPUs) instead of spinning 2000 Tests first;
- ``plan+pad``: ``plan`` after a busy loop as long as the route's own CPU (``--pad-us``).

Per variant: the slowest rank's time per call, each rank's CPU per call (``time.process_time``)
and involuntary context switches (getrusage), the median over the rounds, variants interleaved
round by round (same process set: CPU time and the order of the columns are what to compare under
load). ``--route-cpu`` first times the route alone on each rank, the plan (and the cached route's
steps) replaced by a no-op.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import checkout  # noqa: E402,F401  (which hetccl: installed, or this checkout)
from islands_job import islands_job  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="64K")
    ap.add_argument("--calls", type=int, default=100, help="calls per variant per round")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--pad-us", type=float, default=4.4, help="plan+pad: busy microseconds before the plan")
    ap.add_argument("--route-cpu", action="store_true", help="also time the route alone (no communication)")
    args = ap.parse_args(argv)
    from hetccl import dtypes
    from hetccl.benchmark import format as fmt
    from hetccl.ops import ReduceOp
    with islands_job() as (world, comm, plan):
        n = fmt.parse_sizes(args.size)[0]
        f32, SUM = dtypes.FLOAT32, ReduceOp.SUM
        src, dst = np.ones(n // 4, np.float32), np.empty(n // 4, np.float32)
        form = comm.context.decide("allreduce", n, "islands", f32, SUM)[1]
        bridge = plan.bridge

        def whole():
            comm.allreduce(src, out=dst, algorithm="islands")

        def run_plan():
            plan.allreduce(src, dst, f32, SUM, 600.0, None, form)

        def parse_plan():
            c = comm._parse("allreduce", src, dst, op=SUM, algorithm="islands")
            plan.allreduce(c.send, c.recv, c.dtype, c.op, c.timeout, None, form)

        def decide_plan():
            c = comm._parse("allreduce", src, dst, op=SUM, algorithm="islands")
            f = comm.context.decide("allreduce", c.nbytes, "islands", c.dtype, c.op)[1]
            plan.allreduce(c.send, c.recv, c.dtype, c.op, c.timeout, None, f)

        def route():
            comm._route(comm._parse("allreduce", src, dst, op=SUM, algorithm="islands"))

        def pad_plan():
            end = time.perf_counter() + args.pad_us * 1e-6
            while time.perf_counter() < end:
                pass
            run_plan()

        def whole_yield():
            if bridge is None:
                return whole()
            bridge.SPINS = 0                     # this bridge's waits yield from the first MPI_Test
            try:
                whole()
            finally:
                del bridge.SPINS                 # back to the class's
        variants = {"plan": run_plan, "parse+plan": parse_plan, "decide+plan": decide_plan, "route": route,
                    "whole": whole, "whole yield": whole_yield, "plan+pad": pad_plan}
        route_cpu = None
        if args.route_cpu:
            whole()
            world.Barrier()
            real, routes = plan.allreduce, dict(comm._island_routes or {})
            plan.allreduce = lambda *a, **k: None          # the route alone: nothing moves
            for k, v in routes.items():                    # (the cached route's steps neither)
                comm._island_routes[k] = (v[0], lambda *a: None, *v[2:])
            try:
                c0 = time.thread_time()
                for _ in range(20000):
                    whole()
                route_cpu = (time.thread_time() - c0) / 20000
            finally:
                plan.allreduce = real
                comm._island_routes.update(routes)
        res = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                for _ in range(3):
                    fn()
                world.Barrier()
                r0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
                for _ in range(args.calls):
                    fn()
                t, c = (time.perf_counter() - t0) / args.calls, (time.process_time() - c0) / args.calls
                sw = (resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - r0.ru_nivcsw) / args.calls
                res[name].append((t, c, sw))
        med = {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in res.items()}
        every = world.gather((med, route_cpu), root=0)
        if comm.rank == 0:
            print(f"# {fmt.format_size(n)}, form {form}, {args.calls} calls x {args.rounds} rounds; load average "
                  f"{os.getloadavg()[0]:.2f}")
            if args.route_cpu:
                print("# the route alone, CPU us per call per rank: "
                      + " ".join(f"{r * 1e6:.2f}" for _, r in every))
            print(f"{'variant':>12} {'wall us':>9} {'CPU us/rank':>30} {'CPU sum':>8}  invol csw/rank")
            for k in variants:
                cpu = [m[k][1] * 1e6 for m, _ in every]
                print(f"{k:>12} {max(m[k][0] for m, _ in every) * 1e6:9.1f} "
                      f"{' '.join(f'{x:7.1f}' for x in cpu):>30} {sum(cpu):8.1f}  "
                      + " ".join(f"{m[k][2]:5.1f}" for m, _ in every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
