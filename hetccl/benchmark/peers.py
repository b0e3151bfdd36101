"""The peer libraries behind the runner's adapter interface: Open MPI through mpi4py, and torch's
gloo. ``bench/peers/mpi_bench.py`` and ``gloo_bench.py`` run them alone; ``hetccl bench --compare``
runs them in the same job as hetccl (hetccl/benchmark/peer_compare.py).

MPI calls, out-of-place, with numpy buffers, as a user writes them: allreduce ``Allreduce(send,
recv, op)``, allgather ``Allgather``, reduce_scatter ``Reduce_scatter_block``, alltoall
``Alltoall``, broadcast ``Bcast(buf, root=0)``, reduce ``Reduce(..., root=0)``, gather, scatter;
Open MPI's default settings. gloo calls (tensors from ``torch.from_numpy`` share the runner's
buffers): allreduce ``dist.all_reduce(t, op)`` in place (gloo has none out of place; this favours
gloo slightly), allgather ``all_gather_into_tensor``, reduce_scatter ``reduce_scatter_tensor``,
alltoall ``all_to_all_single``, broadcast, reduce (in place), gather and scatter with lists of
views of the runner's buffers.
"""
import functools
import warnings

from . import format as fmt
from . import runner


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


class GlooAdapter(runner.Adapter):
    name = "gloo"
    extra_columns = ()
    in_place = frozenset({"allreduce", "broadcast", "reduce"})

    def __init__(self):
        import torch
        import torch.distributed as dist
        torch.set_num_threads(1)
        warnings.filterwarnings("ignore", category=FutureWarning)  # *_tensor are deprecated in 2.13
        self.torch, self.dist = torch, dist
        if not dist.is_initialized():
            dist.init_process_group("gloo", init_method="env://")
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        R = dist.ReduceOp
        self._ops = {"sum": R.SUM, "prod": R.PRODUCT, "min": R.MIN, "max": R.MAX, "avg": R.AVG,
                     "band": R.BAND, "bor": R.BOR, "bxor": R.BXOR}
        self._scalar = torch.zeros(1, dtype=torch.float64)

    def supports(self, collective, dtype, op):
        if dtype.kind not in "fiub" or dtype.name == "bfloat16":
            return f"{dtype} has no numpy-shared torch tensor (torch.from_numpy)"
        return True

    def alloc(self, collective, nbytes, dtype):
        b = super().alloc(collective, nbytes, dtype)
        b.tsend = self.torch.from_numpy(b.send)
        b.trecv = b.tsend if b.in_place else self.torch.from_numpy(b.recv)
        return b

    def bind(self, collective, b, op):
        d = self.dist
        s, r = b.tsend, b.trecv
        if collective == "allreduce":
            o = self._ops[op]
            return lambda: d.all_reduce(s, op=o)
        if collective == "allgather":
            return lambda: d.all_gather_into_tensor(r, s)
        if collective == "reduce_scatter":
            o = self._ops[op]
            return lambda: d.reduce_scatter_tensor(r, s, op=o)
        if collective == "alltoall":
            return lambda: d.all_to_all_single(r, s)
        if collective == "broadcast":
            return lambda: d.broadcast(s, src=0)
        if collective == "reduce":
            o = self._ops[op]
            return lambda: d.reduce(s, dst=0, op=o)
        if collective == "gather":  # gather_list: views of the output, one block per rank
            blocks = list(r.chunk(self.size)) if self.rank == 0 else None
            return lambda: d.gather(s, gather_list=blocks, dst=0)
        if collective == "scatter":
            blocks = list(s.chunk(self.size)) if self.rank == 0 else None
            return lambda: d.scatter(r, scatter_list=blocks, src=0)
        raise ValueError(collective)

    def sync(self):
        self.dist.barrier()

    def _reduce_scalar(self, x, op):
        self._scalar[0] = float(x)
        self.dist.all_reduce(self._scalar, op=op)
        return float(self._scalar[0])

    def max_over_ranks(self, x):
        return self._reduce_scalar(x, self.dist.ReduceOp.MAX)

    def sum_over_ranks(self, x):
        return self._reduce_scalar(x, self.dist.ReduceOp.SUM)

    def close(self):
        if self.dist.is_initialized():
            self.dist.destroy_process_group()
