"""Open MPI's alltoall against hetccl's single copy in the same processes, on the same buffers.

Run under mpirun (hetccl bootstraps from Open MPI's environment), e.g.
``mpirun -np 2 --bind-to none python bench/alltoall_peer_ab.py --sizes 2M,8M``
``mpirun -np 8 --oversubscribe --bind-to none python bench/alltoall_peer_ab.py --sizes 8M,32M``.

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
from hetccl._native import single_copy as native_sc


def _size(spec):
    spec = spec.strip().upper()
    return int(spec[:-1]) << {"K": 10, "M": 20}[spec[-1]] if spec[-1] in "KM" else int(spec)


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _placement(a):
    addr = a.__array_interface__["data"][0]
    return f"{'heap' if addr < 0x7000_0000_0000 else 'mmap'}+{addr % 64}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2M,8M", help="bytes each rank sends in all (nccl-tests' size)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--schedule-ab", action="store_true", help="also time three variants of hetccl's schedule")
    a = ap.parse_args()
    mc = MPI.COMM_WORLD
    comm = hetccl.init()
    n = comm.size
    lines = []
    for nb in map(_size, a.sizes.split(",")):
        x = (np.arange(nb // 4, dtype=np.float32) + 1e6 * comm.rank)
        y = np.zeros_like(x)
        ref = np.empty_like(x)
        mc.Alltoall(x, ref)
        saved = comm._tuner.model
        sc = dict(saved.single_copy)
        sc["alltoall"] = ((nb, True),)
        comm._tuner.model = dataclasses.replace(saved, single_copy=tuple(sc.items()))
        comm._hot.forget()
        paths = {"ompi": lambda: mc.Alltoall(x, y), "hetccl": lambda: comm.alltoall(x, y)}
        if a.schedule_ab:
            paths["own-before-post"] = paths["spin-first"] = paths["yield-only"] = paths["hetccl"]
        yield_s = comm._engine.yield_s

        def switch(name):
            native_sc._set_schedule(spin=name == "spin-first", own_in_finish=name != "own-before-post")
            comm._engine.yield_s = 50e-3 if name == "yield-only" else yield_s
        names = list(paths)
        for k in names:
            switch(k)
            paths[k]()
            paths[k]()
        times = {k: [] for k in names}
        cpus = {k: [] for k in names}
        for r in range(a.reps):
            for k in random.Random(r).sample(names, len(names)):   # same order on every rank
                switch(k)
                paths[k]()
                mc.Barrier()
                c0, t0 = _cpu(), time.perf_counter()
                for _ in range(a.calls):
                    paths[k]()
                t1, c1 = time.perf_counter(), _cpu()
                times[k].append(mc.allreduce((t1 - t0) / a.calls, op=MPI.MAX))
                cpus[k].append(mc.allreduce((c1 - c0) / a.calls, op=MPI.SUM))
                assert np.array_equal(y, ref), (k, nb)
                y.fill(0)
        switch("hetccl")
        comm.alltoall(x, y)
        assert comm.last_algorithm == "single_copy", comm.last_algorithm
        comm._tuner.model = saved
        comm._hot.forget()
        where = mc.gather(f"x {_placement(x)} y {_placement(y)}")
        med = {k: statistics.median(times[k]) for k in names}
        cpu = {k: statistics.median(cpus[k]) for k in names}
        paired = {k: statistics.median(times[k][j] / times["ompi"][j] for j in range(a.reps)) for k in names}
        lines.append(f"{nb:>10} " + " ".join(f"{med[k] * 1e6:>10.1f} {cpu[k] * 1e6:>9.1f} {paired[k]:>6.3f}"
                                             for k in names))
        lines.append(f"{'':>10} buffers (rank: heap|mmap + address mod 64): "
                     + "; ".join(f"{r}: {w}" for r, w in enumerate(where or [])))
    if comm.rank == 0:
        print(f"{n} ranks, {a.reps} repetitions x {a.calls} calls; per path: time per call (us, slowest "
              f"rank, median), CPU time per call (us, all ranks), time over ompi's (paired median)")
        print(f"{'bytes':>10} " + " ".join(f"{k[:26]:>26}" for k in names))
        print("\n".join(lines))
    comm.close()


if __name__ == "__main__":
    main()
