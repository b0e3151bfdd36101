"""100 allreduces of 1 MiB with more ranks than cores (default 8 ranks), hetccl beside Open MPI and
gloo, each under its own launcher on the same machine, interleaved over rounds.

    python bench/oversubscribed.py                  # all, 8 ranks, 100 x 1 MiB float32 SUM, 3 rounds
    python bench/oversubscribed.py -n 8 --iters 100 --rounds 5 --libs hetccl,mpi

Each rank times its loop (after one warm-up call and a barrier); a run's time is the slowest
rank's. Every library runs the same call the same way: in place (hetccl ``allreduce(x)``, MPI
``Allreduce(IN_PLACE, x)``, gloo ``all_reduce(t)``), so none of them pays for or saves an extra
output buffer. The libraries are interleaved: each round runs every library once, the order
rotating from round to round, and the table shows every round and the median over rounds (on this
host the speed of an oversubscribed run changes 2-3x with which rank the host schedules when, so
a library measured alone in a quiet minute is not comparable). Every rank's CPU affinity as its
launcher left it is shown (mpirun does not bind oversubscribed ranks; the others never bind).

hetccl ranks waiting on a peer spin briefly, then yield, then sleep on a futex or poll (at once
when oversubscribed), so 8 ranks on 2 cores make progress instead of livelocking. The
non-blocking variant (``hetccl-async``) issues every allreduce with async_op=True and waits at the
end: the communicator's progress thread drives them without the GIL.

``--ab`` runs instead under mpirun (hetccl bootstraps from Open MPI's environment) and times Open
MPI and hetccl **in the same processes, on the same buffers**, repetition by repetition in an order
drawn afresh each repetition (the same on every rank), so the host's placement of the 8 ranks on
the 2 vCPUs, which changes an oversubscribed call's time 2-3x from one launch to the next, is
shared by every path:

    python bench/ompi_job.py mpirun -np 8 --oversubscribe --bind-to none \
        python bench/oversubscribed.py --ab -c allreduce --sizes 512K,2M,8M \
        --paths ompi,tuned,ring,rabenseifner,tuned@0,tuned@50000

Paths: ``ompi`` (MPI_Allreduce / MPI_Bcast / MPI_Allgather / MPI_Alltoall, out of place / root 0),
``tuned`` (hetccl unforced: what a user gets), an algorithm name (hetccl forced onto it), and
``PATH@Y``: that path with the engine's waits yielding for Y us before they sleep (0: sleep at
once; the engine's own policy is 500), ``PATH@Y:H`` the same with steps that move H bytes or more
(send and receive) sleeping at once whatever the host's load (``Engine.handover_bytes``; the
engine's own: 512 KiB, only while other jobs load the host, which ``tuned`` and the forced
algorithms keep); ``PATH%C``: that path with the engine's unit of one link call (``Engine.chunk``,
256K) set to C bytes; ``PATH^block`` and ``PATH^alt``: that path with every rank bound to one CPU
of the affinity the launcher gave it (``PATH^free``: on that affinity; the other paths run as
``hetccl.init`` left it), ranks r*CPUs/size (consecutive ranks together: a ring's neighbours share
a CPU but at CPU boundaries) or r % CPUs (neighbours always apart), the placements the scheduler
may leave a launch in. Buffers come from the benchmark runner's allocator (``mapped``). Prints per
size each path's median time per call (slowest rank), its spread (min and max over repetitions) and
its time over ``ompi``'s, paired per repetition (median): below 1 hetccl is faster.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from checkout import IMPORT_ROOT  # noqa: E402  (which hetccl: the installed one, or this checkout; bench/checkout.py)
import ompi_job  # noqa: E402


def _bound(rank):
    """This rank's CPU affinity, printed for the parent (``BIND rank cpus``)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    print(f"BIND {rank} {','.join(map(str, cpus)) or '?'}", flush=True)


def _loop(allreduce, barrier, iters, nbytes):
    import numpy as np
    x = np.ones(nbytes // 4, np.float32)     # in place in every library: x is input and output
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
    _bound(comm.rank)
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
    from mpi4py import MPI
    c = MPI.COMM_WORLD
    _bound(c.Get_rank())
    el = _loop(lambda x: c.Allreduce(MPI.IN_PLACE, x, MPI.SUM), c.Barrier, iters, nbytes)
    worst = c.allreduce(el, MPI.MAX)
    if c.Get_rank() == 0:
        print(f"RESULT mpi {worst:.4f}", flush=True)


def rank_gloo(iters, nbytes):
    import numpy as np
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo")
    _bound(dist.get_rank())
    el = _loop(lambda x: dist.all_reduce(torch.from_numpy(x)), dist.barrier, iters, nbytes)
    t = torch.tensor([el], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if dist.get_rank() == 0:
        print(f"RESULT gloo {float(t[0]):.4f}", flush=True)
    dist.destroy_process_group()


def ab_main(a):
    """--ab: see the module docstring (runs in every rank of an mpirun job)."""
    import random
    import numpy as np
    from mpi4py import MPI
    import hetccl
    from hetccl._native import progress
    from hetccl.benchmark.format import parse_sizes
    from hetccl.benchmark.runner import mapped_empty
    mc = MPI.COMM_WORLD
    free = os.sched_getaffinity(0)                               # as the launcher left it
    comm = hetccl.init()
    eng = comm._engine
    policy = (eng.spin_s, eng.yield_s, eng.handover_bytes, eng.chunk)
    names = [p.strip() for p in a.paths.split(",") if p.strip()]
    cpus = sorted(free)
    placements = {"": os.sched_getaffinity(0),                    # as hetccl.init left it
                  "free": free,                                   # as the launcher left it
                  "block": {cpus[comm.rank * len(cpus) // comm.size]},   # ring neighbours together
                  "alt": {cpus[comm.rank % len(cpus)]}}                  # ring neighbours apart
    out = []
    for nb in parse_sizes(a.sizes):
        n = max(comm.size, nb // 4 // comm.size * comm.size)         # the output's elements
        x = mapped_empty(n // comm.size if a.collective == "allgather" else n, np.float32)
        y = mapped_empty(n, np.float32)
        x[:] = comm.rank + 1
        blocks = np.repeat(np.arange(1, comm.size + 1, dtype=np.float32), n // comm.size)
        want = {"allreduce": np.float32(comm.size * (comm.size + 1) / 2), "broadcast": np.float32(1),
                "allgather": blocks, "alltoall": blocks}[a.collective]

        def call(path, x=x, y=y):
            base = path.split("@")[0].split("%")[0].split("^")[0]
            if a.collective == "allreduce":
                if base == "ompi":
                    return lambda: mc.Allreduce(x, y, MPI.SUM)
                algo = None if base == "tuned" else base
                return lambda: comm.allreduce(x, out=y, algorithm=algo)
            algo = None if base == "tuned" else base
            if a.collective == "allgather":
                return (lambda: mc.Allgather(x, y)) if base == "ompi" else \
                    (lambda: comm.allgather(x, y, algorithm=algo))
            if a.collective == "alltoall":
                return (lambda: mc.Alltoall(x, y)) if base == "ompi" else \
                    (lambda: comm.alltoall(x, y, algorithm=algo))
            if base == "ompi":
                return lambda: mc.Bcast(y, root=0)
            return lambda: comm.broadcast(y, 0, algorithm=algo)

        def switch(path):
            eng.spin_s, eng.yield_s, eng.handover_bytes, eng.chunk = policy
            if "%" in path:
                eng.chunk = parse_sizes(path.split("%")[1].split("@")[0])[0]
            progress._set_handover_load(-1.0)            # the engine's own: hand over when loaded
            os.sched_setaffinity(0, placements[path.split("^")[1].split("@")[0].split("%")[0]
                                               if "^" in path else ""])
            if "@" in path:
                yus, _, h = path.split("@")[1].split("%")[0].partition(":")
                eng.spin_s, eng.yield_s = 0.0, float(yus) * 1e-6
                eng.handover_bytes = parse_sizes(h)[0] if h else 0
                progress._set_handover_load(0.0)         # whatever the host's load

        def prime():
            if a.collective == "broadcast":
                y[:] = 1 if comm.rank == 0 else 0
        fns = {k: call(k) for k in names}
        algo = {}
        for k in names:
            switch(k)
            prime()
            fns[k]()
            prime()
            fns[k]()
            algo[k] = "" if k.startswith("ompi") else comm.last_algorithm
            assert np.all(y == want), (k, nb, y[:4])
        times = {k: [] for k in names}
        for r in range(a.reps):
            for k in random.Random(r).sample(names, len(names)):
                switch(k)
                prime()
                mc.Barrier()
                t0 = time.perf_counter()
                for _ in range(a.calls):
                    fns[k]()
                t1 = time.perf_counter()
                times[k].append(mc.allreduce((t1 - t0) / a.calls, op=MPI.MAX))
                assert np.all(y == want), (k, nb)
        switch("")
        first = names[0]
        for k in names:
            v = sorted(times[k])
            paired = statistics.median(times[k][j] / times[first][j] for j in range(a.reps))
            out.append(f"{nb:>10} {k:<22} {algo[k]:<20} {statistics.median(v) * 1e6:>10.1f} "
                       f"{v[0] * 1e6:>10.1f} {v[-1] * 1e6:>10.1f} {paired:>7.3f}")
    if comm.rank == 0:
        print(f"{a.collective}, {comm.size} ranks on {os.cpu_count()} CPUs, {a.reps} repetitions x {a.calls} "
              f"calls; time per call in us (slowest rank): median, min, max over repetitions; time over "
              f"{names[0]}'s paired per repetition (median)")
        print(f"{'bytes':>10} {'path':<22} {'algorithm':<20} {'median':>10} {'min':>10} {'max':>10} {'/' + names[0]:>7}")
        print("\n".join(out), flush=True)
    comm.close()


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
        # torchrun runs its script with the interpreter itself: give it the script, not python
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"] + me[1:]
    t = time.monotonic()
    p = ompi_job.run(cmd, env, timeout)   # on a time-out too, mpirun's ranks and segments go
    wall = time.monotonic() - t
    bind = {int(r): cpus for r, cpus in re.findall(r"BIND (\d+) ([\d,?]+)", p.stdout)}
    for line in p.stdout.splitlines():
        if "RESULT" in line:
            parts = line.split("RESULT", 1)[1].split()
            return float(parts[1]), wall, " ".join(parts[2:]), bind
    raise RuntimeError(f"{lib} failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")


def _binding(bind, n):
    cpus = [bind.get(r, "?") for r in range(n)]
    return "all " + cpus[0] if len(set(cpus)) == 1 else " ".join(f"{r}:{c}" for r, c in enumerate(cpus))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--bytes", type=int, default=1 << 20)
    ap.add_argument("--libs", default="hetccl,hetccl-async,mpi,gloo")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--rank-of", help=argparse.SUPPRESS)
    ap.add_argument("--async", dest="use_async", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ab", action="store_true",
                    help="same-process A/B against Open MPI (run under mpirun; module docstring)")
    ap.add_argument("-c", "--collective", default="allreduce",
                    choices=("allreduce", "broadcast", "allgather", "alltoall"), help="--ab (sizes: the output's bytes)")
    ap.add_argument("--sizes", default="512K,2M,8M", help="--ab: bytes per call")
    ap.add_argument("--paths", default="ompi,tuned,ring,rabenseifner", help="--ab: module docstring")
    ap.add_argument("--reps", type=int, default=9, help="--ab: repetitions")
    ap.add_argument("--calls", type=int, default=5, help="--ab: calls per repetition")
    a = ap.parse_args(argv)
    if a.ab:
        return ab_main(a)
    if a.rank_of == "hetccl":
        return rank_hetccl(a.iters, a.bytes, a.use_async)
    if a.rank_of == "mpi":
        return rank_mpi(a.iters, a.bytes)
    if a.rank_of == "gloo":
        return rank_gloo(a.iters, a.bytes)
    libs = [x for x in a.libs.split(",") if x]
    print(f"{a.n} ranks on {os.cpu_count()} cores, {a.iters} x allreduce of {a.bytes} bytes "
          f"(float32 SUM, in place), {a.rounds} interleaved rounds\n")
    print("| round | library | time for all calls (s, slowest rank) | per call (ms) | launcher wall (s) "
          "| link | CPU affinity per rank |")
    print("|---|---|---|---|---|---|---|")
    times = {lib: [] for lib in libs}
    for rnd in range(a.rounds):
        for lib in libs[rnd % len(libs):] + libs[:rnd % len(libs)]:
            try:
                secs, wall, link, bind = _launch(lib.split("-")[0], a.n, a.iters, a.bytes,
                                                 lib.endswith("async"), a.timeout)
            except (RuntimeError, subprocess.TimeoutExpired, FileNotFoundError) as e:
                lines = [x for x in str(e).splitlines() if x.strip()]
                print(f"| {rnd + 1} | {lib} | failed: {lines[-1] if lines else type(e).__name__} | | | | |",
                      flush=True)
                continue
            times[lib].append(secs)
            print(f"| {rnd + 1} | {lib} | {secs:.3f} | {secs / a.iters * 1e3:.2f} | {wall:.1f} | {link} | "
                  f"{_binding(bind, a.n)} |", flush=True)
    print("\n| library | runs | median time for all calls (s) | per call (ms) | min - max (s) |")
    print("|---|---|---|---|---|")
    failed = False
    for lib in libs:
        ts = times[lib]
        if len(ts) < a.rounds:
            failed = True
        if not ts:
            print(f"| {lib} | 0/{a.rounds} | failed | | |")
            continue
        med = statistics.median(ts)
        print(f"| {lib} | {len(ts)}/{a.rounds} | {med:.3f} | {med / a.iters * 1e3:.2f} | "
              f"{min(ts):.3f} - {max(ts):.3f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
