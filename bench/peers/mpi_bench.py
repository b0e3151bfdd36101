"""Open MPI through mpi4py, measured with hetccl's benchmark runner (same method, same table).

    python bench/ompi_job.py mpirun -np 2 python bench/peers/mpi_bench.py -c allreduce,allgather -b 8 -e 256M --json ompi.json
    python bench/ompi_job.py mpirun -np 4 --oversubscribe python bench/peers/mpi_bench.py --sizes 8,64K,1M,64M

(As root add ``--allow-run-as-root`` or set OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1.)
Calls, out-of-place, with numpy buffers, exactly as a user would write them:
allreduce ``Allreduce(send, recv, op)``, allgather ``Allgather(send, recv)``, reduce_scatter
``Reduce_scatter_block(send, recv, op)``, alltoall ``Alltoall(send, recv)``, broadcast
``Bcast(buf, root=0)``, reduce ``Reduce(send, recv, op, root=0)``, gather ``Gather(send, recv,
root=0)``, scatter ``Scatter(send, recv, root=0)``. Open MPI's default settings
(it picks its shared-memory transport and algorithms itself).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import limit_threads, load_benchmark, load_peers  # noqa: E402

limit_threads()
fmt, runner, cli = load_benchmark()
MpiAdapter = load_peers().MpiAdapter


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="mpi_bench.py", description=__doc__.split("\n\n")[0])
    cli.add_sweep_arguments(p)
    args = p.parse_args(argv)
    adapter = MpiAdapter()
    if adapter.rank == 0:
        print(f"# {adapter.library_version}", flush=True)
    return cli.run_from_args(adapter, args, argv=[sys.executable, __file__, *argv],
                             library_version=adapter.library_version)


if __name__ == "__main__":
    sys.exit(main())
