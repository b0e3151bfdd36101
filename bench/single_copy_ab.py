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
    a = ap.parse_args()
    comm = hetccl.init()
    n = comm.size
    verdicts = dict(comm._tuner.model.single_copy)
    if not verdicts:
        raise SystemExit("no single-copy route on this communicator (every pair c2c in cma mode needed)")
    lines = []
    for coll in a.collectives.split(","):
        for nb in map(_size, a.sizes.split(",")):
            fifo = comm._tuner.select(coll, nb).name
            routed = "single_copy" if comm._tuner.single_copy(coll, nb) else fifo
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
            _forced_single(comm, coll, nb)
            paths = {"fifo": lambda: call(algorithm=fifo), "single": call}
            if a.parser:
                paths["parser"] = lambda: comm._hot.forget() or call()
            if a.schedule_ab:
                paths["old-sched"] = call    # broadcast: no root share; allgather, alltoall: all-rank entry
                paths["spin-first"] = call   # the syncs spin (the engine's spin_s) before they yield
                paths["own-first"] = call    # allgather, alltoall: the own block copied before the entry

            def switch(name):
                native_sc._set_schedule(name != "old-sched", name != "old-sched", name == "spin-first",
                                        name != "own-first")
            names = list(paths)
            times = {k: [] for k in names}
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
                    t0 = time.perf_counter()
                    for _ in range(a.calls):
                        paths[k]()
                    times[k].append((time.perf_counter() - t0) / a.calls)
            native_sc._set_schedule()
            paths["single"]()
            assert comm.last_algorithm == "single_copy", comm.last_algorithm
            assert np.array_equal(out, ref), (coll, nb)
            comm._tuner.model = saved
            comm._hot.forget()
            worst = comm.allreduce(np.array([t for k in names for t in times[k]]), op=hetccl.ReduceOp.MAX)
            med = {k: statistics.median(worst[i * a.reps:(i + 1) * a.reps]) for i, k in enumerate(names)}
            per = {k: worst[i * a.reps:(i + 1) * a.reps] for i, k in enumerate(names)}
            paired = {k: statistics.median(per[k][j] / per["single"][j] for j in range(a.reps))
                      for k in names if k not in ("fifo", "single")}
            lines.append(f"{coll:>10} {nb:>9} {fifo:>20} " + " ".join(f"{med[k] * 1e6:>9.1f}" for k in names)
                         + f" {med['fifo'] / med['single']:>7.2f}  {routed}")
            if paired:
                lines.append(" " * 42 + "each repetition's time over single's (median): "
                             + ", ".join(f"{k} {v:.3f}" for k, v in paired.items()))
            header = " ".join(f"{k + ' us':>9}" for k in names)
    if comm.rank == 0:
        print(f"{n} ranks; probe verdicts: {verdicts}")
        print(f"{'collective':>10} {'bytes':>9} {'FIFO algorithm':>20} {header} {'FIFO/sc':>7}  routed")
        print("\n".join(lines))
    comm.close()


if __name__ == "__main__":
    main()
