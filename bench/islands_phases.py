#!/usr/bin/env python3
"""The islands' composed allreduce, phase by phase: measured beside what the cost model prices.

    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 python bench/ompi_job.py mpirun -np 4 --oversubscribe \\
        python bench/islands_phases.py [--sizes 64K,256K,1M,4M,16M] [--reps 7] [--json OUT]

The job is bench/validate_sim.py's islands case: ranks 0,1 an MPI island, 2,3 on hetccl. Its
``rails`` form runs (i) each island's reduce_scatter, both islands at once, (ii) the rails' 2-rank
allreduce of a shard, (iii) each island's allgather, both islands at once. For each size this
times, in one process set:

- ``whole``: the composed call (``algorithm="islands"``);
- ``whole yield``: the same, the MPI bridge's waits yielding from the first MPI_Test (``SPINS`` 0,
  as hetccl's own waits do with more ranks than CPUs) instead of spinning 2000 Tests first;
- ``rails``: the composed form called directly (``IslandPlan._rails``), without the router:
  ``whole`` - ``rails`` is what the public call's route costs;
- ``seq``: the three phases called one after the other in Python: ``seq`` - (``rs`` + ``rail`` +
  ``ag``) is what the hand-overs between phases cost;
- ``rs``, ``rail``, ``ag``: each phase alone, every rank taking part as in the composed call;
- ``rs@mpi``, ``rs@hetccl``, ``ag@mpi``, ``ag@hetccl``: one island's step while the other
  island's ranks sleep (the step's own time on an otherwise idle machine);

- ``leaders``: the ``leaders`` form called directly (``IslandPlan._leaders_allreduce``); ``red``,
  ``bcast``: its island reduce and broadcast, both islands at once; ``lead``: its allreduce among
  the leaders while the others sleep (priced so; the JSON's ``lead in form`` is its price inside
  the form, where the bridged islands' other ranks wait in their library: ``_leaders_busy``);
  ``leaders`` - (``red`` + ``lead`` + ``bcast``) is what the waiting ranks cost the leaders;
- ``whole P1``, ``whole P2``, ``whole P3`` (``--pin``): ``whole`` with the four ranks pinned two to
  a CPU, each placement the scheduler may pick on 2 CPUs: P1 an island per CPU ({0,1}, {2,3}), P2
  a rail per CPU ({0,2}, {1,3}), P3 neither ({0,3}, {1,2}); what the composed call costs in each
  (the 256 KiB call's repetitions spread over 153-273 us in one validation run, and the unpinned
  ranks may sit in any of them);
- ``flat ring``, ``flat sched``: the flat ring through the public call (on this communicator:
  the router, since a communicator with islands has no latency path) and its native schedule
  called directly (``flat ring`` - ``flat sched``: the route's cost on a flat call);

and prints, per phase, what collectives/islands.py's IslandPricer charges (``_step``, ``_hetccl``,
``_steps``; ``whole``: the form it ran) from the communicator's own cost model and the bridge's
probed prices. So a composed prediction that is off can be traced to the phase, and the phase to the island, whose
price is off. Time per repetition: the slowest rank of the phase, a loop of calls calibrated to
~20 ms; the median over --reps repetitions, variants interleaved. The form ``whole`` runs
(``rails`` or ``leaders``) is chosen from the bridge's probed prices, so near 64 KiB it can differ
from one job to the next: the header says which ran (the phase columns are the rails form's). ``--cpu`` adds a table of the
CPU time per call summed over the four ranks (``time.process_time``): with more ranks than CPUs,
CPU a waiting rank burns is CPU the working ones lack.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import checkout  # noqa: E402,F401  (which hetccl: installed, or this checkout)
from islands_job import islands_job  # noqa: E402

LOOP_S = 0.02
LEADERS = "leaders"        # a variant only the island leaders take part in (the others sleep)
# --pin: the CPU (index among the allowed ones) of ranks 0-3 in each placement of two ranks per CPU
PLACEMENTS = {"whole P1": (0, 0, 1, 1), "whole P2": (0, 1, 0, 1), "whole P3": (0, 1, 1, 0)}


def sleepy_barrier(world):
    """All ranks of ``world`` (mpi4py) meet without burning a CPU while they wait."""
    req = world.Ibarrier()
    while not req.Test():
        time.sleep(2e-4)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64K,256K,1M,4M,16M")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", default=None, help="rank 0 writes the table here")
    ap.add_argument("--cpu", action="store_true", help="also print CPU time per call, summed over the ranks")
    ap.add_argument("--pin", action="store_true", help="also time whole with the ranks pinned two to a CPU (P1-P3)")
    args = ap.parse_args(argv)
    from hetccl import dtypes
    from hetccl.benchmark import format as fmt
    from hetccl.bridges.base import COLLECTIVES
    from hetccl.collectives import schedules
    from hetccl.collectives.algorithm import ALGO_RING
    from hetccl.collectives.islands import PROBE_SIZES
    from hetccl.ops import ReduceOp
    with islands_job() as (world, comm, plan):
        mine, s = plan.mine, len(plan.island.ranks)
        f32, SUM = dtypes.FLOAT32, ReduceOp.SUM
        sizes = fmt.parse_sizes(args.sizes)
        plan.subs()
        engine = comm._engine                     # the flat schedule, called without the router

        def variants(n):
            count = n // 4
            main_ = count - count % s
            src = np.ones(count, np.float32)
            dst = np.empty(count, np.float32)
            shard = np.ones(main_ // s, np.float32)
            big = np.empty(main_, np.float32)

            def whole():
                comm.allreduce(src, out=dst, algorithm="islands")

            def rs():
                plan._reduce_scatter(src[:main_], shard, f32, SUM, 600)

            def rail():
                plan.subs()[2].allreduce(shard, SUM, timeout=600)

            def ag():
                plan._allgather(shard, big, 600)

            def whole_yield():
                b = plan.bridge
                if b is not None:
                    b.SPINS = 0
                try:
                    comm.allreduce(src, out=dst, algorithm="islands")
                finally:
                    if b is not None:
                        del b.SPINS              # back to the class's
            def rails():
                plan._rails(src, dst, f32, SUM, 600)

            def seq():
                rs()
                rail()
                ag()

            def flat():
                comm.allreduce(src, out=dst, algorithm="ring")

            def flat_sched():
                schedules.allreduce(engine, src, dst, f32, SUM, ALGO_RING, 600.0)
            root = plan._leader_index()

            def leaders():
                plan._leaders_allreduce(src, dst, f32, SUM, 600)

            def red():
                plan._reduce(src, dst, f32, SUM, root, 600)

            def lead():
                plan.subs()[1].allreduce(dst, SUM, timeout=600)

            def bcast():
                plan._broadcast(dst, root, 600)
            return {"whole": (whole, None), "whole yield": (whole_yield, None), "rails": (rails, None),
                    "seq": (seq, None), "rs": (rs, None), "rail": (rail, None), "ag": (ag, None),
                    "rs@mpi": (rs, 0), "rs@hetccl": (rs, 1), "ag@mpi": (ag, 0), "ag@hetccl": (ag, 1),
                    "leaders": (leaders, None), "red": (red, None), "lead": (lead, LEADERS),
                    "bcast": (bcast, None),
                    "flat ring": (flat, None), "flat sched": (flat_sched, None)}

        def timed(fn, only, k):
            """(seconds, CPU seconds) per call on this rank (None: not taking part), after a sync of
            the takers (``only`` a placement: every rank, pinned to its CPU of it)."""
            if isinstance(only, tuple):
                cpus = sorted(os.sched_getaffinity(0))
                os.sched_setaffinity(0, {cpus[only[comm.rank] % len(cpus)]})
                try:
                    return timed(fn, None, k)
                finally:
                    os.sched_setaffinity(0, set(cpus))
            sleepy_barrier(world)
            if only == LEADERS:
                if plan.subs()[1] is None:
                    return None
            elif only is not None and only != mine:
                return None
            sub = plan.subs()[1 if only == LEADERS else 0] if only is not None else None
            sync = np.zeros(1, np.float32)
            if sub is not None:
                sub.allreduce(sync, SUM, timeout=600)
            else:
                comm.allreduce(sync, timeout=600)
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(k):
                fn()
            return (time.perf_counter() - t0) / k, (time.process_time() - c0) / k

        def slowest(t):
            ts = [x for x in world.allgather(t) if x is not None]
            return max(x[0] for x in ts), sum(x[1] for x in ts)

        results, cpu = {}, {}
        for n in sizes:
            vs = variants(n)
            if args.pin:
                for name, place in PLACEMENTS.items():
                    vs[name] = (vs["whole"][0], place)
            loops = {}
            for name, (fn, only) in vs.items():          # calibrate: one call, then ~LOOP_S of them
                t1 = slowest(timed(fn, only, 1))[0]
                t1 = slowest(timed(fn, only, 1))[0]
                loops[name] = max(1, int(LOOP_S / max(t1, 1e-6)))
                loops[name] = world.bcast(loops[name], root=0)
            reps = {name: [] for name in vs}
            for _ in range(args.reps):
                for name, (fn, only) in vs.items():
                    reps[name].append(slowest(timed(fn, only, loops[name])))
            results[n] = {name: statistics.median(t for t, _ in ts) for name, ts in reps.items()}
            cpu[n] = {name: statistics.median(c for _, c in ts) for name, ts in reps.items()}

        if comm.rank == 0:
            rows = []
            ran = {n: comm.context.decide("allreduce", n, "islands", f32, SUM)[1] for n in sizes}
            for n in sizes:
                code = f32
                m = results[n]
                pr = {
                    "rs@mpi": plan._step(0, "reduce_scatter", n, code, SUM),
                    "rs@hetccl": plan._step(1, "reduce_scatter", n, code, SUM),
                    "rail": plan._hetccl("allreduce", n / s, len(plan.islands)),
                    "ag@mpi": plan._step(0, "allgather", n, code, SUM),
                    "ag@hetccl": plan._step(1, "allgather", n, code, SUM),
                }
                pr["rs"] = plan._steps("reduce_scatter", n, code, SUM)
                pr["ag"] = plan._steps("allgather", n, code, SUM)
                forms = plan.forms("allreduce", n, code, SUM)
                pr["whole"] = forms.get(ran[n])
                pr.update({name: pr["whole"] for name in PLACEMENTS if name in m})
                pr["rails"], pr["leaders"] = forms.get("rails"), forms.get("leaders")
                pr["red"] = plan._steps("reduce", n, code, SUM)
                pr["lead"] = plan._hetccl("allreduce", n, len(plan.islands))          # the others idle
                pr["lead in form"] = plan._hetccl("allreduce", n, len(plan.islands), plan._leaders_busy())
                pr["bcast"] = plan._steps("broadcast", n, code, SUM)
                rows.append({"size": n, "measured_us": {k: v * 1e6 for k, v in m.items()},
                             "priced_us": {k: v * 1e6 for k, v in pr.items()}})
            print(f"# islands phases; load average {os.getloadavg()[0]:.2f}; oversubscribed {plan._over}; "
                  f"model {comm.context.tuner.model.origin} {comm.context.tuner.cost.params()}")
            print("# the composed call (whole) ran the form: " + ", ".join(f"{fmt.format_size(n)} {f}" for n, f in ran.items())
                  + " (rs, rail, ag, rails, seq: the rails form's phases; a whole that ran 'leaders' is another schedule)")
            print(f"# mpi bridge prices (seconds at {PROBE_SIZES} per collective {COLLECTIVES}): "
                  f"{[round(float(x) * 1e6, 1) for x in plan.prices[0]]} us")
            names = ["whole", "whole yield", "rails", "seq", "rs", "rail", "ag", "rs@mpi", "rs@hetccl", "ag@mpi",
                     "ag@hetccl", "leaders", "red", "lead", "bcast", "flat ring", "flat sched"]
            names += list(PLACEMENTS) if args.pin else []
            print(f"{'size':>6} " + " ".join(f"{x:>19}" for x in names) + "   (measured / priced us)")
            for r in rows:
                cells = []
                for x in names:
                    mv, pv = r["measured_us"].get(x), r["priced_us"].get(x)
                    cells.append(f"{mv:9.1f}/{pv:9.1f}" if pv is not None else f"{mv:9.1f}/{'-':>9}")
                print(f"{fmt.format_size(r['size']):>6} " + " ".join(f"{c:>19}" for c in cells))
            if args.cpu:
                print(f"{'size':>6} " + " ".join(f"{x:>11}" for x in names) + "   (CPU us per call, summed over the ranks)")
                for n in sizes:
                    print(f"{fmt.format_size(n):>6} " + " ".join(f"{cpu[n][x] * 1e6:11.1f}" for x in names))
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"rows": rows, "whole_form": {str(n): f for n, f in ran.items()}, "cpu_us": {str(n): {k: v * 1e6 for k, v in c.items()} for n, c in cpu.items()}, "prices": list(map(float, plan.prices[0])),
                               "model": comm.context.tuner.cost.params(),
                               "loadavg": os.getloadavg()[0]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
