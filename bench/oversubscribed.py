"""100 allreduces of 1 MiB with more ranks than cores (default 8 ranks), hetccl beside Open MPI and
gloo, each under its own launcher on the same machine, one after the other.

    python bench/oversubscribed.py                  # all three, 8 ranks, 100 x 1 MiB float32 SUM
    python bench/oversubscribed.py -n 8 --iters 100 --libs hetccl,mpi

Each rank times its loop (after one warm-up call and a barrier); the reported time is the slowest
rank's. hetccl ranks waiting on a peer spin briefly, then yield, then sleep on a futex or poll (at
once when oversubscribed), so 8 ranks on 2 cores make progress instead of livelocking. The
non-blocking variant (``--async``) issues every allreduce with async_op=True and waits at the end:
the communicator's progress thread drives them without the GIL.
"""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from checkout import IMPORT_ROOT  # noqa: E402  (which hetccl: the installed one, or this checkout; bench/checkout.py)


def _loop(allreduce, barrier, iters, nbytes):
    import numpy as np
    x = np.ones(nbytes // 4, np.float32)
    allreduce(x)
    barrier()
    t = time.perf_counter()
    for _ in range(iters):
        allreduce(x)
    return time.perf_counter() - t


def rank_hetccl(iters, nbytes, use_async):
    import numpy as np
    import hetccl
    comm = hetccl.init()
    if use_async:
        x = np.ones(nbytes // 4, np.float32)
        comm.allreduce(x)
        comm.barrier()
        t = time.perf_counter()
        works = [comm.allreduce(x, async_op=True) for _ in range(iters)]
        for w in works:
            w.wait()
        el = time.perf_counter() - t
    else:
        el = _loop(comm.allreduce, comm.barrier, iters, nbytes)
    worst = float(comm.allreduce(np.array([el]), hetccl.MAX)[0])
    if comm.rank == 0:
        print(f"RESULT hetccl{'-async' if use_async else ''} {worst:.4f} {comm.transport(1 % comm.size)}",
              flush=True)
    comm.close()


def rank_mpi(iters, nbytes):
    import numpy as np
    from mpi4py import MPI
    c = MPI.COMM_WORLD
    out = np.empty(nbytes // 4, np.float32)
    el = _loop(lambda x: c.Allreduce(x, out, MPI.SUM), c.Barrier, iters, nbytes)
    worst = c.allreduce(el, MPI.MAX)
    if c.Get_rank() == 0:
        print(f"RESULT mpi {worst:.4f}", flush=True)


def rank_gloo(iters, nbytes):
    import numpy as np
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo")
    el = _loop(lambda x: dist.all_reduce(torch.from_numpy(x)), dist.barrier, iters, nbytes)
    t = torch.tensor([el], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if dist.get_rank() == 0:
        print(f"RESULT gloo {float(t[0]):.4f}", flush=True)
    dist.destroy_process_group()


def _launch(lib, n, iters, nbytes, use_async, timeout):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": IMPORT_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    me = [sys.executable, os.path.abspath(__file__), "--rank-of", lib, "--iters", str(iters),
          "--bytes", str(nbytes)] + (["--async"] if use_async else [])
    if lib == "hetccl":
        cmd = [sys.executable, "-m", "hetccl", "run", "-n", str(n), "--"] + me
    elif lib == "mpi":
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        cmd = ["mpirun", "-np", str(n), "--oversubscribe"] + me
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"] + me
    t = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t
    for line in p.stdout.splitlines():
        if "RESULT" in line:
            parts = line.split("RESULT", 1)[1].split()
            return parts[0], float(parts[1]), wall, " ".join(parts[2:])
    raise RuntimeError(f"{lib} failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--bytes", type=int, default=1 << 20)
    ap.add_argument("--libs", default="hetccl,hetccl-async,mpi,gloo")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--rank-of", help=argparse.SUPPRESS)
    ap.add_argument("--async", dest="use_async", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.rank_of == "hetccl":
        return rank_hetccl(a.iters, a.bytes, a.use_async)
    if a.rank_of == "mpi":
        return rank_mpi(a.iters, a.bytes)
    if a.rank_of == "gloo":
        return rank_gloo(a.iters, a.bytes)
    print(f"{a.n} ranks on {os.cpu_count()} cores, {a.iters} x allreduce of {a.bytes} bytes (float32 SUM)\n")
    print("| library | time for all calls (s, slowest rank) | per call (ms) | launcher wall (s) | link |")
    print("|---|---|---|---|---|")
    for lib in a.libs.split(","):
        base = lib.split("-")[0]
        try:
            name, secs, wall, link = _launch(base, a.n, a.iters, a.bytes, lib.endswith("async"), a.timeout)
        except (RuntimeError, subprocess.TimeoutExpired, FileNotFoundError) as e:
            lines = [x for x in str(e).splitlines() if x.strip()]
            print(f"| {lib} | failed: {lines[-1] if lines else type(e).__name__} | | | |")
            continue
        print(f"| {name} | {secs:.3f} | {secs / a.iters * 1e3:.2f} | {wall:.1f} | {link} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
