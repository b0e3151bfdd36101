"""Open MPI through mpi4py, measured with hetccl's benchmark runner (same method, same table).

    mpirun -np 2 python bench/peers/mpi_bench.py -c allreduce,allgather -b 8 -e 256M --json ompi.json
    mpirun -np 4 --oversubscribe python bench/peers/mpi_bench.py --sizes 8,64K,1M,64M

(As root add ``--allow-run-as-root`` or set OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1.)
Calls, out-of-place, with numpy buffers, exactly as a user would write them:
allreduce ``Allreduce(send, recv, op)``, allgather ``Allgather(send, recv)``, reduce_scatter
``Reduce_scatter_block(send, recv, op)``, alltoall ``Alltoall(send, recv)``, broadcast
``Bcast(buf, root=0)``, reduce ``Reduce(send, recv, op, root=0)``, gather ``Gather(send, recv,
root=0)``, scatter ``Scatter(send, recv, root=0)``. Open MPI's default settings
(it picks its shared-memory transport and algorithms itself).
"""
import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import limit_threads, load_benchmark  # noqa: E402

limit_threads()
fmt, runner, cli = load_benchmark()


class MpiAdapter(runner.Adapter):
    extra_columns = ()
    in_place = frozenset({"broadcast"})

    def __init__(self, comm=None):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        lib = MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0]
        self.name = "Open MPI" if "Open MPI" in lib else lib.split(",")[0]
        self.library_version = lib
        self._ops = {"sum": MPI.SUM, "prod": MPI.PROD, "min": MPI.MIN, "max": MPI.MAX,
                     "band": MPI.BAND, "bor": MPI.BOR, "bxor": MPI.BXOR}

    def supports(self, collective, dtype, op):
        if collective in fmt.REDUCING and op not in self._ops:
            return f"MPI has no {op} reduction"
        try:
            from mpi4py.util.dtlib import from_numpy_dtype
            from_numpy_dtype(dtype)
        except Exception as e:  # noqa: BLE001 - report any reason
            return f"no MPI datatype for {dtype}: {e}"
        return True

    def bind(self, collective, b, op):
        c = self.comm
        if collective == "allreduce":
            return functools.partial(c.Allreduce, b.send, b.recv, self._ops[op])
        if collective == "allgather":
            return functools.partial(c.Allgather, b.send, b.recv)
        if collective == "reduce_scatter":
            return functools.partial(c.Reduce_scatter_block, b.send, b.recv, self._ops[op])
        if collective == "alltoall":
            return functools.partial(c.Alltoall, b.send, b.recv)
        if collective == "broadcast":
            return functools.partial(c.Bcast, b.send, 0)
        if collective == "reduce":
            return functools.partial(c.Reduce, b.send, b.recv, self._ops[op], 0)
        if collective == "gather":
            return functools.partial(c.Gather, b.send, b.recv, 0)
        if collective == "scatter":
            return functools.partial(c.Scatter, b.send, b.recv, 0)
        raise ValueError(collective)

    def sync(self):
        self.comm.Barrier()

    def max_over_ranks(self, x):
        return float(self.comm.allreduce(float(x), op=self.MPI.MAX))

    def sum_over_ranks(self, x):
        return float(self.comm.allreduce(float(x), op=self.MPI.SUM))


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
