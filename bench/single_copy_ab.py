"""Single copy against the FIFO algorithm, same processes, interleaved: the routes of a plain-buffer call.

Run under the launcher, e.g.
``python -m hetccl run -n 2 -- python bench/single_copy_ab.py --reps 7``.
For broadcast, allgather and alltoall at each size, it times, through the public call a user's loop
makes (``comm.broadcast(x)``: after its first call every later one takes the latency path,
_native/latency.pyx):

* **fifo**: the FIFO algorithm the tuner picks (``algorithm=`` forced, so the call cannot go single
  copy);
* **single**: the single-copy schedule (the router forced onto it for this size, as a probe verdict
  would send it);
* **parser** (``--parser``): the single-copy schedule through the parser and router on every call,
  the route single copy took before it had a latency-path entry;
* with ``--schedule-ab``, the single-copy schedules as they were before two changes
  (``_set_schedule``): column **old-sched**, in a broadcast the root writes no share and the peers
  read everything, in allgather and alltoall every rank waits for all peers at the entry before
  its first read instead of reading each peer as it arrives; column **spin-first**, every sync
  spins for the engine's spin_s before it yields instead of yielding from the first poll; column
  **own-first**, allgather and alltoall copy the rank's own block before they post their arrival
  instead of the first time no peer is ready.
* with ``--steps-ab``, the single copy's other read orders (single_copy_probe.ORDERS): column
  **doubling**, allgather by recursive doubling over CMA (power-of-two rank counts of 4 or more),
  whatever the probe's verdict, while the **single** column then reads in arrival order at every
  size (without ``--steps-ab`` it reads in the order the probe chose). The route column names
  the order an unforced call takes.
* with ``--bcast-ab`` (broadcast only): column **all-sync**, the single-copy broadcast with the two
  all-rank syncs it had before its syncs became the root's alone (``broadcast_star``), and the FIFO
  tree the tuner did not pick (**binomial** or **chain**), forced;
* with ``--mpi`` (launched by ``python bench/ompi_job.py mpirun ...``, mpi4py installed): column **mpi**, Open MPI's call on the
  same buffers (``Bcast``, ``Allgather``, ``Alltoall``), in the same rounds.

Paths alternate repetition by repetition, in an order drawn afresh for each repetition (the same
on every rank), so all see the same machine (this host is shared) and none always runs right after
the same other path: with the order only rotating, a column always preceded by the FIFO's came out
up to 15% slower than the same schedule in another column (8 ranks on 2 cores). A repetition is barrier, ``--calls`` calls, each rank timing its own block, the
slowest rank's time counting (the benchmark runner's method). Prints the median time per call of
each path, FIFO over single, for the A/B columns the median of each repetition's time over the
single column's in the same repetition (paired: less noisy on a shared host), the route an unforced call takes, and the probe's verdicts
(collectives/single_copy_probe.py). Every single-copy result is checked against the FIFO's.
"""
import argparse
import dataclasses
import random
import statistics
import time

import numpy as np

import hetccl
from hetccl._native import single_copy as native_sc
from hetccl.collectives.single_copy_probe import ALL_SIZES as ALL
from hetccl.collectives.single_copy_probe import ORDERS

_runs_doubling = ORDERS[("allgather", "doubling")]


def _size(spec):
    spec = spec.strip().upper()
    return int(spec[:-1]) << {"K": 10, "M": 20}[spec[-1]] if spec[-1] in "KM" else int(spec)


def _forced_single(comm, coll, nb):
    """Make the router send unforced calls of coll at nb to single copy (as a verdict would)."""
    sc = dict(comm._tuner.model.single_copy)
    sc[coll] = ((nb, True),)
    comm._tuner.model = dataclasses.replace(comm._tuner.model, single_copy=tuple(sc.items()))
    comm._hot.forget()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="32K,128K,512K,2M,8M")
    ap.add_argument("-c", "--collectives", default="broadcast,allgather,alltoall")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--parser", action="store_true", help="also time single copy through the parser")
    ap.add_argument("--schedule-ab", action="store_true",
                    help="also time the single-copy schedules without the root's share / arrival-order reads")
    ap.add_argument("--steps-ab", action="store_true",
                    help="also time the single copy's other read orders (allgather by recursive doubling)")
    ap.add_argument("--cpu", action="store_true",
                    help="also print each path's CPU time per call summed over the ranks (process_time:"
                         " less dependent on the host's load than the wall time)")
    ap.add_argument("--bcast-ab", action="store_true",
                    help="broadcast: also time the all-rank-sync single copy and the other FIFO tree")
    ap.add_argument("--mpi", action="store_true", help="also time mpi4py's call (launch with mpirun)")
    a = ap.parse_args()
    comm = hetccl.init()
    comm._auto_register = False     # plain-buffer paths only: no >= 32 MiB buffer turns symmetric
    n = comm.size
    verdicts = dict(comm._tuner.model.single_copy)
    model_orders = comm._engine.ag_doubling           # the probe's read orders (apply_orders)
    if not verdicts:
        raise SystemExit("no single-copy route on this communicator (every pair c2c in cma mode needed)")
    lines, last_header = [], None
    mpi = _mpi_world(comm) if a.mpi else None
    for coll in a.collectives.split(","):
        for nb in map(_size, a.sizes.split(",")):
            fifo = comm._tuner.select(coll, nb).name
            routed = "single_copy" if comm._tuner.single_copy(coll, nb) else fifo
            if routed == "single_copy" and coll == "allgather" and _runs_doubling(n) \
                    and model_orders >> native_sc._doubling_bucket(nb) & 1:
                routed += "/doubling"
            blk = nb // 4 // n
            x = (np.arange(blk * n, dtype=np.float32) + 1000 * comm.rank)
            if coll == "broadcast":
                out, ref = x.copy(), x.copy()
                call = lambda **kw: comm.broadcast(out, 0, **kw)    # noqa: E731
            elif coll == "allgather":
                x, out, ref = x[:blk].copy(), np.empty(blk * n, np.float32), np.empty(blk * n, np.float32)
                call = lambda **kw: comm.allgather(x, out, **kw)    # noqa: E731
            else:
                out, ref = np.empty_like(x), np.empty_like(x)
                call = lambda **kw: comm.alltoall(x, out, **kw)    # noqa: E731
            if coll == "broadcast":
                comm.broadcast(ref, 0, algorithm=fifo)
            elif coll == "allgather":
                comm.allgather(x, ref, algorithm=fifo)
            else:
                comm.alltoall(x, ref, algorithm=fifo)
            saved = comm._tuner.model
            _forced_single(comm, coll, 4 * blk * n)    # the call's bytes (nb rounded to n blocks)
            paths = {"fifo": lambda: call(algorithm=fifo), "single": call}
            if a.parser:
                paths["parser"] = lambda: comm._hot.forget() or call()
            if a.schedule_ab:
                paths["old-sched"] = call    # broadcast: no root share; allgather, alltoall: all-rank entry
                paths["spin-first"] = call   # the syncs spin (the engine's spin_s) before they yield
                paths["own-first"] = call    # allgather, alltoall: the own block copied before the entry
            if a.steps_ab and coll == "allgather" and _runs_doubling(n):
                paths["doubling"] = call     # allgather: recursive doubling over CMA
            if a.bcast_ab and coll == "broadcast":
                paths["all-sync"] = call     # the single-copy broadcast's two all-rank syncs
                for tree in ("binomial", "chain"):
                    if tree != fifo:
                        paths[tree] = lambda t=tree: call(algorithm=t)
            if mpi is not None:
                paths["mpi"] = _mpi_call(mpi, coll, x, out)

            def switch(name):
                native_sc._set_schedule(name != "old-sched", name != "old-sched", name == "spin-first",
                                        name != "own-first", star=name != "all-sync")
                comm._engine.ag_doubling = ALL if name == "doubling" else 0 if a.steps_ab else model_orders
            names = list(paths)
            times = {k: [] for k in names}
            cpus = {k: [] for k in names}
            for k in names:
                switch(k)
                paths[k]()
                paths[k]()
            for r in range(a.reps):
                order = random.Random(r).sample(names, len(names))   # same on every rank
                for k in order:
                    switch(k)
                    paths[k]()
                    comm.barrier()
                    t0, c0 = time.perf_counter(), time.process_time()
                    for _ in range(a.calls):
                        paths[k]()
                    times[k].append((time.perf_counter() - t0) / a.calls)
                    cpus[k].append((time.process_time() - c0) / a.calls)
            for k in names:                   # every schedule's result, not only the default's
                switch(k)
                if coll != "broadcast" or comm.rank != 0:   # the root's buffer is the source
                    out[:] = 0
                paths[k]()
                assert np.array_equal(out, ref), (coll, nb, k)
            native_sc._set_schedule()
            comm._engine.ag_doubling = model_orders
            paths["single"]()
            assert comm.last_algorithm == "single_copy", comm.last_algorithm
            assert np.array_equal(out, ref), (coll, nb)
            comm._tuner.model = saved
            comm._hot.forget()
            worst = comm.allreduce(np.array([t for k in names for t in times[k]]), op=hetccl.ReduceOp.MAX)
            cpu = comm.allreduce(np.array([t for k in names for t in cpus[k]]), op=hetccl.ReduceOp.SUM)
            cpu_med = {k: statistics.median(cpu[i * a.reps:(i + 1) * a.reps]) for i, k in enumerate(names)}
            med = {k: statistics.median(worst[i * a.reps:(i + 1) * a.reps]) for i, k in enumerate(names)}
            per = {k: worst[i * a.reps:(i + 1) * a.reps] for i, k in enumerate(names)}
            paired = {k: statistics.median(per[k][j] / per["single"][j] for j in range(a.reps))
                      for k in names if k not in ("fifo", "single")}
            header = " ".join(f"{k + ' us':>9}" for k in names)
            if header != last_header:           # the columns differ between collectives (--steps-ab)
                lines.append(f"{'collective':>10} {'bytes':>9} {'FIFO algorithm':>20} {header} {'FIFO/sc':>7}  routed")
                last_header = header
            lines.append(f"{coll:>10} {nb:>9} {fifo:>20} " + " ".join(f"{med[k] * 1e6:>9.1f}" for k in names)
                         + f" {med['fifo'] / med['single']:>7.2f}  {routed}")
            if a.cpu:
                lines.append(" " * 42 + "CPU time per call, all ranks (median us): "
                             + ", ".join(f"{k} {v * 1e6:.0f}" for k, v in cpu_med.items()))
            if paired:
                lines.append(" " * 42 + "each repetition's time over single's (median): "
                             + ", ".join(f"{k} {v:.3f}" for k, v in paired.items()))
    if comm.rank == 0:
        print(f"{n} ranks; probe verdicts: {verdicts}")
        print("\n".join(lines))
    comm.close()


def _mpi_world(comm):
    """mpi4py's COMM_WORLD when this job was started by mpirun over the same ranks, else exit."""
    from hetccl.benchmark.peer_compare import _mpi_adapter
    adapter, why = _mpi_adapter(comm)
    if adapter is None:
        raise SystemExit(f"--mpi: {why}")
    from mpi4py import MPI
    return MPI.COMM_WORLD


def _mpi_call(world, coll, x, out):
    """Open MPI's call on the buffers the hetccl paths use."""
    if coll == "broadcast":
        return lambda: world.Bcast(out, 0)
    if coll == "allgather":
        return lambda: world.Allgather(x, out)
    return lambda: world.Alltoall(x, out)


if __name__ == "__main__":
    main()
