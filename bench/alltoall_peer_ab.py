"""Open MPI's alltoall against hetccl's single copy in the same processes, on the same buffers.

Run under mpirun (hetccl bootstraps from Open MPI's environment), e.g.
``python bench/ompi_job.py mpirun -np 2 --bind-to none python bench/alltoall_peer_ab.py --sizes 2M,8M``
``python bench/ompi_job.py mpirun -np 8 --oversubscribe --bind-to none python bench/alltoall_peer_ab.py --sizes 8M,32M``
(bench/ompi_job.py: nothing of the job stays in /dev/shm, whatever its end).

Why: both libraries move an alltoall block by one ``process_vm_readv`` per peer (``strace`` of
either library's ranks shows the same calls, the same lengths, one iovec each), so what separates
them is how the calls are ordered and synchronised, and where the buffers lie. Separate runs put
the user's buffers at different heap addresses in each library's processes (glibc's dynamic mmap
threshold and each library's own allocations decide it), and a kernel copy between buffers whose
offsets differ modulo 64 runs slower (measured here, one process reading another: 8-10% for 1 MiB
reads, 2-3% for 4 MiB): a few percent between two separate runs can be placement, not schedule. Here every path copies the same buffers, in the same processes,
alternating repetition by repetition (the order drawn afresh each repetition, the same on every
rank), so the machine's load and the placement are shared.

Paths: **ompi** (``MPI_Alltoall``), **hetccl** (``comm.alltoall(x, out=y)``, forced onto the
single copy at every size as a probe verdict would send it), and with ``--schedule-ab`` two
variants of hetccl's schedule (``single_copy._set_schedule``): **own-before-post**, the order
before, in which a rank that found every peer ready copies its own block before its last sync's
post instead of between the post and the wait; **spin-first**, the waits spin for the engine's
spin_s before they yield, as Open MPI's ranks spin when there are no more ranks than cores;
**yield-only**, the waits yield for up to 50 ms before they sleep on a futex (the engine's
yield_s, 500 us), as Open MPI's oversubscribed ranks yield and never sleep: at 8 ranks on 2 cores
an 8 MiB call waits for milliseconds, so hetccl's ranks sleep and are woken where Open MPI's
yield. A repetition is barrier, ``--calls`` calls; the slowest rank's
time counts (the runner's method); CPU time (user + system, ``getrusage``) is summed over ranks.
Prints per size the median time and CPU time of each path and, paired per repetition, each
path's time over Open MPI's (median). Every result is checked.

``-c allgather`` times ``MPI_Allgather`` against hetccl's single-copy allgather the same way (the
``hetccl`` path in the orders the probe chose per size). ``--orders pull,push,doubling`` adds a
path per single-copy order forced at every size (the arrival-order read, the allgather's write of
each block into every peer's output, recursive doubling); ``--tuned`` adds hetccl as its router
sends the call unforced (``tuned``: FIFO or single copy, and the order, as the probe measured;
its line names the algorithm and the probe's order masks): the figure a user gets.
``--pairwise`` adds hetccl's FIFO pairwise exchange forced at every size (``algorithm="pairwise"``),
with its window of steps under way (``pairwise``) and one step at a time (``pairwise-1``,
``_native.linear._set_window(1)``).
``--placements`` gives each library the buffers of several placements in the same repetitions
(paths ``ompi@P``, ``hetccl@P``; the schedule variants run on the first): ``mapped``, the
benchmark runner's allocation (hetccl/memory/mapped.py ``mapped_empty``: its own mapping,
page-aligned, 2 MiB-aligned from 4 MiB); ``numpy``, np.empty wherever glibc puts it in this
process; ``S:R``, mapped buffers moved S bytes (send) and R bytes (receive) past their boundary,
e.g. ``16:48``, the offsets modulo 64 np.empty gave in bench/run_all.py's separate runs. Each
path's ratio is to ``ompi`` on the first placement.
"""
import argparse
import dataclasses
import random
import resource
import statistics
import time

import numpy as np
from mpi4py import MPI

import hetccl
from hetccl._native import linear as native_linear
from hetccl._native import single_copy as native_sc
from hetccl.benchmark.runner import huge_page_bytes, mapped_empty


def _size(spec):
    spec = spec.strip().upper()
    return int(spec[:-1]) << {"K": 10, "M": 20}[spec[-1]] if spec[-1] in "KM" else int(spec)


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _placement(a):
    addr = a.__array_interface__["data"][0]
    huge = huge_page_bytes([(addr, a.nbytes)])[0]
    return (f"{'heap' if addr < 0x7000_0000_0000 else 'mmap'}+{addr % 64}"
            + ("" if huge < 0 else f" ({huge / a.nbytes:.0%} huge)"))


def _buffers(spec, count_in, count_out):
    """(send, recv) float32 arrays of one placement (see the module docstring)."""
    if spec == "numpy":
        return np.empty(count_in, np.float32), np.empty(count_out, np.float32)
    if spec == "mapped":
        return mapped_empty(count_in, np.float32), mapped_empty(count_out, np.float32)
    s_off, r_off = (int(v) for v in spec.split(":"))
    if s_off % 4 or r_off % 4:
        raise SystemExit(f"--placements {spec}: offsets must be multiples of 4 (float32)")

    def moved(count, off):
        return mapped_empty(count + off // 4, np.float32)[off // 4:]
    return moved(count_in, s_off), moved(count_out, r_off)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2M,8M", help="bytes of the output (nccl-tests' size)")
    ap.add_argument("-c", "--collective", default="alltoall", choices=("alltoall", "allgather"))
    ap.add_argument("--placements", default="numpy",
                    help="comma-separated buffer placements: numpy, mapped, S:R (default %(default)s)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--schedule-ab", action="store_true", help="also time three variants of hetccl's schedule")
    ap.add_argument("--orders", default="",
                    help="comma-separated single-copy orders to time as paths of their own, each forced at "
                         "every size: pull (the arrival-order read), and for allgather push (3+ ranks) and "
                         "doubling (powers of two from 4)")
    ap.add_argument("--pairwise", action="store_true",
                    help="also time hetccl's FIFO pairwise exchange (path 'pairwise': algorithm='pairwise', "
                         "never single copy), alltoall only")
    ap.add_argument("--tuned", action="store_true",
                    help="also time hetccl as the router sends the call (path 'tuned': the probe's verdicts, "
                         "FIFO or single copy and its order), not forced onto the single copy")
    a = ap.parse_args()
    mc = MPI.COMM_WORLD
    comm = hetccl.init()
    n = comm.size
    coll = a.collective
    places = [p.strip() for p in a.placements.split(",") if p.strip()]
    lines = []
    for nb in map(_size, a.sizes.split(",")):
        count_out = nb // 4
        count_in = count_out // n if coll == "allgather" else count_out
        bufs = {}
        for pl in places:
            x, y = _buffers(pl, count_in, count_out)
            x[:] = np.arange(count_in, dtype=np.float32) + 1e6 * comm.rank
            y.fill(0)
            bufs[pl] = (x, y)
        x0 = bufs[places[0]][0]
        ref = np.empty(count_out, np.float32)
        (mc.Alltoall if coll == "alltoall" else mc.Allgather)(x0, ref)
        eng = comm._engine
        has_window = hasattr(native_linear, "_set_window")   # (a hetccl without the pairwise window: none)
        has_push = hasattr(eng, "ag_push")           # (a hetccl without the push order: none)
        model_orders = (eng.ag_doubling, eng.ag_push if has_push else 0)
        tuned_y = _buffers(places[0], count_in, count_out)[1]      # the placement of the others
        tuned_y.fill(0)
        tuned_x = bufs[places[0]][0]
        tuned = (lambda: comm.alltoall(tuned_x, tuned_y)) if coll == "alltoall" else (
            lambda: comm.allgather(tuned_x, tuned_y))
        tuned_algo = None
        if a.tuned:
            tuned()
            tuned_algo = comm.last_algorithm
        saved = comm._tuner.model
        sc = dict(saved.single_copy)
        sc[coll] = ((nb, True),)
        forced = dataclasses.replace(saved, single_copy=tuple(sc.items()))
        comm._tuner.model = forced
        comm._hot.forget()
        paths = {}
        for pl, (x, y) in bufs.items():
            tag = "" if len(places) == 1 else f"@{pl}"
            if coll == "alltoall":
                paths[f"ompi{tag}"] = (lambda x=x, y=y: mc.Alltoall(x, y), y)
                paths[f"hetccl{tag}"] = (lambda x=x, y=y: comm.alltoall(x, y), y)
            else:
                paths[f"ompi{tag}"] = (lambda x=x, y=y: mc.Allgather(x, y), y)
                paths[f"hetccl{tag}"] = (lambda x=x, y=y: comm.allgather(x, y), y)
        first_ompi, first_h = list(paths)[:2]
        if a.schedule_ab:
            for k in ("own-before-post", "spin-first", "yield-only"):
                paths[k] = paths[first_h]
        orders = [o.strip() for o in a.orders.split(",") if o.strip()]
        for o in orders:
            paths[o] = paths[first_h]
        yield_s = comm._engine.yield_s
        every = (1 << 64) - 1

        def set_orders(doubling, push):
            eng.ag_doubling = doubling
            if has_push:
                eng.ag_push = push

        def switch(name):
            if has_window:
                native_linear._set_window(1 if name == "pairwise-1" else 4)
            native_sc._set_schedule(spin=name == "spin-first", own_in_finish=name != "own-before-post")
            comm._engine.yield_s = 50e-3 if name == "yield-only" else yield_s
            if name in orders:
                set_orders(every if name == "doubling" else 0, every if name == "push" else 0)
            else:
                set_orders(*model_orders)
            comm._tuner.model = saved if name == "tuned" else forced
            comm._auto_register = name == "tuned"     # forced paths stay single copy on reused >= 32 MiB buffers
            comm._hot.forget()
        if a.tuned:
            paths["tuned"] = (tuned, tuned_y)
        if a.pairwise and coll == "alltoall":
            fifo_x, fifo_y = tuned_x, _buffers(places[0], count_in, count_out)[1]
            paths["pairwise"] = (lambda: comm.alltoall(fifo_x, fifo_y, algorithm="pairwise"), fifo_y)
            if has_window:
                paths["pairwise-1"] = paths["pairwise"]
        names = list(paths)
        for k in names:
            switch(k)
            paths[k][0]()
            paths[k][0]()
        times = {k: [] for k in names}
        cpus = {k: [] for k in names}
        for r in range(a.reps):
            for k in random.Random(r).sample(names, len(names)):   # same order on every rank
                switch(k)
                fn, y = paths[k]
                fn()
                mc.Barrier()
                c0, t0 = _cpu(), time.perf_counter()
                for _ in range(a.calls):
                    fn()
                t1, c1 = time.perf_counter(), _cpu()
                times[k].append(mc.allreduce((t1 - t0) / a.calls, op=MPI.MAX))
                cpus[k].append(mc.allreduce((c1 - c0) / a.calls, op=MPI.SUM))
                assert np.array_equal(y, ref), (k, nb)
                y.fill(0)
        switch(first_h)
        paths[first_h][0]()
        assert comm.last_algorithm == "single_copy", comm.last_algorithm
        comm._tuner.model = saved
        comm._auto_register = True
        comm._hot.forget()
        set_orders(*model_orders)
        med = {k: statistics.median(times[k]) for k in names}
        cpu = {k: statistics.median(cpus[k]) for k in names}
        paired = {k: statistics.median(times[k][j] / times[first_ompi][j] for j in range(a.reps))
                  for k in names}
        lines.append(f"{nb:>10} " + " ".join(f"{med[k] * 1e6:>10.1f} {cpu[k] * 1e6:>9.1f} {paired[k]:>6.3f}"
                                             for k in names))
        if tuned_algo is not None:
            lines.append(f"{'':>10} tuned: {tuned_algo} (probe's orders: doubling {model_orders[0]:#x}, "
                         f"push {model_orders[1]:#x})")
        for pl, (x, y) in bufs.items():
            where = mc.gather(f"x {_placement(x)} y {_placement(y)}")
            lines.append(f"{'':>10} {pl} buffers (rank: heap|mmap + address mod 64, share on huge pages): "
                         + "; ".join(f"{r}: {w}" for r, w in enumerate(where or [])))
    if comm.rank == 0:
        print(f"{coll}, {n} ranks, {a.reps} repetitions x {a.calls} calls; per path: time per call (us, "
              f"slowest rank, median), CPU time per call (us, all ranks), time over {first_ompi}'s "
              f"(paired median)")
        print(f"{'bytes':>10} " + " ".join(f"{k[:26]:>26}" for k in names))
        print("\n".join(lines))
    comm.close()


if __name__ == "__main__":
    main()
