"""Single copy against the FIFO algorithm, same processes, interleaved: the routes of a plain-buffer call.

Run under the launcher, e.g.
``python -m hetccl run -n 2 -- python bench/single_copy_ab.py --reps 7``.
For broadcast, allgather and alltoall at each size, it times the FIFO algorithm the tuner picks
(``algorithm=`` forced, so the call cannot go single copy) and the single-copy schedule, alternating
repetitions so both see the same machine (this host is shared; the vCPUs move between near and far
placements every few seconds). One repetition is ``--calls`` calls then a barrier, over rank 0's
clock (a broadcast root returns before the others have read). Prints the median time per call of
each path, the ratio, which path the router takes for an unforced call, and the verdicts of the
communicator's probe (collectives/single_copy_probe.py).
"""
import argparse
import statistics
import time

import numpy as np

import hetccl
from hetccl.collectives import schedules

F32 = 2          # dtypes.FLOAT32


def _size(spec):
    spec = spec.strip().upper()
    return int(spec[:-1]) << {"K": 10, "M": 20}[spec[-1]] if spec[-1] in "KM" else int(spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="32K,128K,512K,2M,8M")
    ap.add_argument("-c", "--collectives", default="broadcast,allgather,alltoall")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--calls", type=int, default=4)
    a = ap.parse_args()
    comm = hetccl.init()
    e, n, t = comm._engine, comm.size, 60.0
    sc = schedules.single_copy
    lines = []
    for coll in a.collectives.split(","):
        for nb in map(_size, a.sizes.split(",")):
            fifo = comm._tuner.select(coll, nb).name
            if coll == "broadcast":
                buf = np.ones(nb // 4, np.float32)
                paths = (lambda: comm.broadcast(buf, 0, algorithm=fifo), lambda: sc.broadcast(e, buf, 0, F32, t))
            elif coll == "allgather":
                x, out = np.ones(nb // 4 // n, np.float32), np.ones(nb // 4 // n * n, np.float32)
                paths = (lambda: comm.allgather(x, out, algorithm=fifo), lambda: sc.allgather(e, x, out, F32, t))
            else:
                x, out = np.ones(nb // 4 // n * n, np.float32), np.ones(nb // 4 // n * n, np.float32)
                paths = (lambda: comm.alltoall(x, out, algorithm=fifo), lambda: sc.alltoall(e, x, out, F32, t))
            times = ([], [])
            for fn in paths:
                fn()
            for _ in range(a.reps):
                for j, fn in enumerate(paths):
                    comm.barrier()
                    t0 = time.perf_counter()
                    for _ in range(a.calls):
                        fn()
                    comm.barrier()
                    times[j].append((time.perf_counter() - t0) / a.calls)
            f, s = statistics.median(times[0]), statistics.median(times[1])
            routed = "single_copy" if comm._tuner.single_copy(coll, nb) else fifo
            lines.append(f"{coll:>10} {nb:>9} {fifo:>20} {f * 1e6:>10.1f} {s * 1e6:>10.1f} {f / s:>7.2f}  {routed}")
    if comm.rank == 0:
        print(f"{n} ranks; probe verdicts: {dict(comm._tuner.model.single_copy)}")
        print(f"{'collective':>10} {'bytes':>9} {'FIFO algorithm':>20} {'FIFO us':>10} {'single us':>10} "
              f"{'FIFO/sc':>7}  routed")
        print("\n".join(lines))
    comm.close()


if __name__ == "__main__":
    main()
