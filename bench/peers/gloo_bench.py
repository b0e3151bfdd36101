"""torch.distributed with the gloo backend on CPU tensors, measured with hetccl's benchmark runner.

Self-launching (spawns N rank processes on this host, sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT)::

    python bench/peers/gloo_bench.py -n 2 -c allreduce,allgather -b 8 -e 256M --json gloo.json

or one process per rank under any launcher that sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
(e.g. ``torchrun --nproc-per-node 2 bench/peers/gloo_bench.py ...``); init is ``env://``.

Calls, as a user would write them (tensors made with ``torch.from_numpy`` share the runner's numpy
buffers): allreduce ``dist.all_reduce(t, op)`` -- **in place**: gloo has no out-of-place
allreduce, so we time the pure in-place call, without the copy a user wanting to keep the input
would add (this favours gloo slightly against out-of-place libraries); allgather
``dist.all_gather_into_tensor(out, t)``; reduce_scatter ``dist.reduce_scatter_tensor(out, t, op)``;
alltoall ``dist.all_to_all_single(out, t)``; broadcast ``dist.broadcast(t, src=0)``; reduce
``dist.reduce(t, dst=0, op)`` (in place); gather ``dist.gather(t, gather_list, dst=0)`` and
scatter ``dist.scatter(out, scatter_list, src=0)``, the lists being views of the runner's output /
input buffer (one block per rank; no copies). The correctness check refills the inputs first, so the
repeated in-place sums during timing (values grow, eventually to inf) do not matter.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import limit_threads, load_benchmark, load_peers  # noqa: E402

limit_threads()
fmt, runner, cli = load_benchmark()
GlooAdapter = load_peers().GlooAdapter


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nranks: int, argv, timeout=None) -> int:
    """Run this script as *nranks* processes on this host; return the first failing exit code."""
    env = dict(os.environ)
    env.update(WORLD_SIZE=str(nranks), LOCAL_WORLD_SIZE=str(nranks), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    procs = []
    for r in range(nranks):
        env_r = dict(env, RANK=str(r), LOCAL_RANK=str(r))
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv], env=env_r))
    deadline = None if timeout is None else time.monotonic() + timeout
    rc = 0

    def stop_all():
        for p in procs:
            if p.poll() is None:
                p.terminate()
        t_end = time.monotonic() + 5
        for p in procs:
            try:
                p.wait(max(0.1, t_end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                rc = failed[0]
                print(f"gloo_bench: a rank exited with {rc}; stopping the others", file=sys.stderr)
                stop_all()
                break
            if all(c == 0 for c in codes):
                break
            if deadline is not None and time.monotonic() > deadline:
                print(f"gloo_bench: timed out after {timeout} s", file=sys.stderr)
                stop_all()
                rc = 124
                break
            time.sleep(0.05)
    except KeyboardInterrupt:
        stop_all()
        rc = 128 + signal.SIGINT
    return rc


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="gloo_bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--nranks", type=int, default=None,
                   help="spawn this many ranks on this host (otherwise RANK/WORLD_SIZE must be set)")
    p.add_argument("--timeout", type=float, default=None,
                   help="with -n: stop all ranks after this many seconds")
    cli.add_sweep_arguments(p)
    args = p.parse_args(argv)
    if args.nranks is not None and "RANK" not in os.environ:
        rest, skip = [], False
        for a in argv:  # drop -n N / --timeout T for the children
            if skip:
                skip = False
                continue
            if a in ("-n", "--nranks", "--timeout"):
                skip = True
                continue
            if a.startswith(("--nranks=", "--timeout=")) or (a.startswith("-n") and a[2:].isdigit()):
                continue
            rest.append(a)
        return launch(args.nranks, rest, timeout=args.timeout)
    if "RANK" not in os.environ:
        p.error("give -n N to spawn N ranks, or run under a launcher that sets RANK/WORLD_SIZE/"
                "MASTER_ADDR/MASTER_PORT")
    adapter = GlooAdapter()
    try:
        import torch
        if adapter.rank == 0:
            print(f"# torch {torch.__version__} gloo", flush=True)
        return cli.run_from_args(adapter, args, argv=[sys.executable, __file__, *argv],
                                 library_version=f"torch {torch.__version__} gloo")
    finally:
        adapter.close()


if __name__ == "__main__":
    sys.exit(main())
