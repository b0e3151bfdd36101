"""What comm.register buys: the first collective into a fresh output, with and without registering it.

Run under the launcher, e.g. ``python -m hetccl run -n 2 -- python bench/registration.py --reps 5``.
Per size, each repetition allocates a fresh output (np.empty: pages not yet backed), then times the
first allgather into it (max over ranks), for an unregistered output and for one registered just
before (the registration's own time is printed apart: it is paid once, off the critical path of the
other ranks). Medians over repetitions; rank 0 prints one line per size.
"""
import argparse
import statistics
import time

import numpy as np

import hetccl


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,8M,32M", help="output sizes (K/M suffixes)")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    comm = hetccl.init()
    n = comm.size
    rows = []
    for spec in a.sizes.split(","):
        nb = int(spec[:-1]) << {"K": 10, "M": 20}[spec[-1]] if spec[-1] in "KM" else int(spec)
        x = np.ones(nb // 8 // n, np.float64)
        plain, registered, reg_cost = [], [], []
        for _ in range(a.reps):
            for mode in ("plain", "registered"):
                out = np.empty(x.size * n)
                h = None
                if mode == "registered":
                    t0 = time.perf_counter()
                    h = comm.register(out)
                    reg_cost.append(time.perf_counter() - t0)
                comm.barrier()
                t0 = time.perf_counter()
                comm.allgather(x, out)
                t = np.array([time.perf_counter() - t0])
                comm.allreduce(t, hetccl.ReduceOp.MAX)
                (plain if mode == "plain" else registered).append(float(t[0]))
                if h is not None:
                    comm.deregister(h)
                del out
        rows.append((nb, statistics.median(plain), statistics.median(registered), statistics.median(reg_cost),
                     comm.last_algorithm))
    if comm.rank == 0:
        print(f"{'output':>8} {'first call (us)':>16} {'registered (us)':>16} {'register (us)':>14}  algorithm")
        for nb, p, r, c, algo in rows:
            print(f"{nb:>8} {p * 1e6:>16.0f} {r * 1e6:>16.0f} {c * 1e6:>14.0f}  {algo}")
    comm.close()


if __name__ == "__main__":
    main()
