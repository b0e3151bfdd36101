"""Vendor-bridge benchmarks (issue 7), run under mpirun: every variant in the same processes, interleaved.

    # (a) mixed islands: 4 ranks, ranks 0-1 on the MPI bridge + ranks 2-3 on hetccl shm, against
    #     hetccl alone and Open MPI alone (target: mixed >= 0.8x the faster pure one at 16 MiB)
    python bench/ompi_job.py mpirun -np 4 --oversubscribe python bench/bridges.py mixed --sizes 64K,1M,4M,16M
    # (b) dispatch overhead: comm.allreduce of 8 B on a communicator that is one MPI island against
    #     mpi4py's Allreduce on the same MPI communicator and buffer (target: <= 2 us added per call)
    python bench/ompi_job.py mpirun -np 2 python bench/bridges.py dispatch

(As root add ``--allow-run-as-root`` or set OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1.)

Method: a repetition runs ``--iters`` calls of one variant between two MPI barriers; its time is the
slowest rank's; variants alternate repetition by repetition (so a noisy moment hits all of them), and
each figure is the median over ``--reps`` repetitions. Every result is checked against the exact
sum (#wrong). Columns as nccl-tests: size count type redop time(us) algbw busbw #wrong.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkout import IMPORT_ROOT  # noqa: E402,F401  (which hetccl: the installed one, or this checkout; bench/checkout.py)

import numpy as np  # noqa: E402

import hetccl  # noqa: E402


def parse_size(text):
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(float(text[:-1] if text[-1:] in "KMG" else text) * mult)


def human(n):
    for unit, k in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= k and n % k == 0:
            return f"{n // k}{unit}"
    return str(n)


class Variant:
    """One way to run the allreduce: name, a call(send, recv), and its collected repetition times."""

    def __init__(self, name, call):
        self.name, self.call, self.times, self.wrong = name, call, [], 0


def interleaved(world, variants, send, want, iters, reps, warmup=2):
    """Median seconds per call of every variant, repetitions alternating between variants."""
    from mpi4py import MPI
    recv = np.empty_like(send)
    for v in variants:
        v.times, v.wrong = [], 0
        for _ in range(warmup):
            v.call(send, recv)
        v.wrong += int(np.count_nonzero(recv != want))
    for _ in range(reps):
        for v in variants:
            world.Barrier()
            t0 = time.perf_counter()
            for _ in range(iters):
                v.call(send, recv)
            dt = (time.perf_counter() - t0) / iters
            v.times.append(world.allreduce(dt, op=MPI.MAX))
        # check the last result of every variant too
    for v in variants:
        v.call(send, recv)
        v.wrong += int(np.count_nonzero(recv != want))
        v.wrong = world.allreduce(v.wrong, op=MPI.SUM)
    return {v.name: statistics.median(v.times) for v in variants}


def header(title):
    return [f"# {title}",
            f"# {'size':>10} {'count':>10} {'type':>7} {'redop':>5} {'time(us)':>11} {'algbw':>7} {'busbw':>7} {'#wrong':>6}",
            f"# {'(B)':>10} {'(elements)':>10} {'':>7} {'':>5} {'':>11} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6}"]


def row(n, t, p, wrong):
    algbw = n / t / 1e9
    return (f"  {n:>10} {n // 4:>10} {'float':>7} {'sum':>5} {t * 1e6:>11.2f} {algbw:>7.2f} "
            f"{algbw * 2 * (p - 1) / p:>7.2f} {wrong:>6}")


def mixed(args, world):
    """(a): the mixed communicator (its own choice, and forced through the islands), hetccl alone,
    Open MPI alone; all allreduce float32 SUM out of place."""
    from mpi4py import MPI
    rank, p = world.Get_rank(), world.Get_size()
    pure = hetccl.init(timeout=300, bridges="none")
    half = {r: "mpi" for r in range(p // 2)}
    mix = pure.split(0, rank, bridges=half)
    variants = [
        Variant("mixed", lambda s, r: mix.allreduce(s, out=r)),
        Variant("mixed:islands", lambda s, r: mix.allreduce(s, out=r, algorithm="islands")),
        Variant("hetccl", lambda s, r: pure.allreduce(s, out=r)),
        Variant("openmpi", lambda s, r: world.Allreduce(s, r, MPI.SUM)),
    ]
    results = {}
    for n in args.sizes:
        count = n // 4
        send = np.full(count, rank + 1, np.float32)
        want = np.full(count, p * (p + 1) / 2, np.float32)
        iters = max(1, min(args.iters, int(args.budget / max(n, 1))))
        results[n] = interleaved(world, variants, send, want, iters, args.reps)
        results[n]["_wrong"] = {v.name: v.wrong for v in variants}
        results[n]["_choice"] = (mix.allreduce(send, out=np.empty_like(send)), mix.last_algorithm)[1]
    if rank == 0:
        islands = mix.describe().splitlines()
        print(f"# bench/bridges.py mixed: {p} ranks; " + next(x for x in islands if x.startswith("islands")))
        for v in variants:
            print("\n".join(header(f"allreduce, {v.name}")))
            for n in args.sizes:
                print(row(n, results[n][v.name], p, results[n]["_wrong"][v.name]))
        print("# ratio = faster pure one (hetccl, openmpi) time / mixed time; target >= 0.8 at 16M")
        print(f"# {'size':>10} {'mixed':>9} {'islands':>9} {'choice':>14}")
        for n in args.sizes:
            r = results[n]
            best = min(r["hetccl"], r["openmpi"])
            print(f"  {human(n):>10} {best / r['mixed']:>9.2f} {best / r['mixed:islands']:>9.2f} {r['_choice']:>14}")
        print(mix.explain("allreduce", max(args.sizes)))
    mix.close()
    pure.close()


def dispatch(args, world):
    """(b): comm.allreduce (8 B, in place) on a whole-communicator MPI island vs mpi4py's Allreduce
    on the island's own MPI communicator and the same buffer."""
    from mpi4py import MPI
    comm = hetccl.init(timeout=300, bridges="mpi")
    if comm.context.islands is None or not comm.context.islands.whole:
        raise SystemExit("dispatch: the communicator did not become one MPI island")
    mcomm = comm.context.islands.bridge.comm
    x = np.zeros(2, np.float32)
    want = np.zeros(2, np.float32)
    v_hetccl = Variant("hetccl->mpi", lambda s, r: comm.allreduce(x, algorithm="islands"))
    v_direct = Variant("mpi4py", lambda s, r: mcomm.Allreduce(MPI.IN_PLACE, x, MPI.SUM))

    def nonblocking(s, r):                 # what the bridge calls: MPI_Iallreduce polled with MPI_Test
        req = mcomm.Iallreduce(MPI.IN_PLACE, x, MPI.SUM)
        while not req.Test():
            pass
    v_nb = Variant("mpi4py Iallreduce+Test", nonblocking)
    v_auto = Variant("hetccl auto", lambda s, r: comm.allreduce(x))
    variants = [v_hetccl, v_direct, v_nb, v_auto]
    med = interleaved(world, variants, x, want, args.iters, args.reps)
    comm.allreduce(x)
    choice = comm.last_algorithm
    if world.Get_rank() == 0:
        p = world.Get_size()
        print(f"# bench/bridges.py dispatch: {p} ranks, one MPI island; 8 B float32 sum in place, "
              f"{args.iters} calls x {args.reps} interleaved reps (median)")
        for v in variants:
            print("\n".join(header(f"allreduce, {v.name}")))
            print(row(8, med[v.name], p, v.wrong))
        added = (med["hetccl->mpi"] - med["mpi4py Iallreduce+Test"]) * 1e6
        nbc = (med["mpi4py Iallreduce+Test"] - med["mpi4py"]) * 1e6
        print(f"# added per call by hetccl's dispatch: {added:.2f} us over the same non-blocking MPI call "
              f"(target <= 2 us); the non-blocking call itself costs {nbc:.2f} us more than the blocking "
              f"Allreduce (the price of the deadline); the tuner's own choice at 8 B: {choice}")
    comm.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("mixed", "dispatch"))
    ap.add_argument("--sizes", default="64K,1M,4M,16M", help="mixed: message sizes (bytes, K/M suffixes)")
    ap.add_argument("--iters", type=int, default=None, help="calls per repetition")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions per variant")
    ap.add_argument("--budget", type=float, default=64 << 20, help="mixed: bytes per repetition at most")
    args = ap.parse_args()
    args.sizes = [parse_size(s) for s in args.sizes.split(",")]
    if args.iters is None:
        args.iters = 200 if args.part == "dispatch" else 20
    if args.reps is None:
        args.reps = 21 if args.part == "dispatch" else 7
    from mpi4py import MPI
    (mixed if args.part == "mixed" else dispatch)(args, MPI.COMM_WORLD)


if __name__ == "__main__":
    main()
