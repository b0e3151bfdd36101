"""The Communicator: a group of ranks and the collectives they call together.

Python decides (validate, describe the call, pick an algorithm); the Cython engine moves and reduces
bytes without the GIL. A call costs a handful of Python operations whatever the message size.

Ordering rule: every rank of a communicator must issue the same collectives in the same order (as
in MPI and NCCL). Each message carries a header with the call's sequence number, collective, count,
dtype and op, so a violation raises InvalidUsage on the ranks that see it, and the communicator is
then aborted so that every other rank raises too instead of hanging.
"""
import logging
import os

import numpy as np

from . import config, dtypes
from .collectives.tuner import Tuner
from .errors import CommAborted, HetcclError, InvalidUsage, PeerLostError
from .ops import ReduceOp, as_op
from .topology.select import format_matrix

log = logging.getLogger("hetccl")

_ndarray = np.ndarray
_NUMPY = dtypes._NUMPY
_ERRORS_BY_NAME = {}


def _dtype_code(buf) -> int:
    if type(buf) is _ndarray:
        code = _NUMPY.get(buf.dtype)
        return code if code is not None else dtypes.from_numpy(buf.dtype)
    if isinstance(buf, np.ndarray):
        return dtypes.from_numpy(buf.dtype)
    try:
        fmt = memoryview(buf).format
    except TypeError:
        raise InvalidUsage(f"{type(buf).__name__} is not a buffer; pass a numpy array or another "
                           f"buffer-protocol object") from None
    return dtypes.from_format(fmt)


class Communicator:
    """A group of ranks connected by per-pair transports. Create with ``hetccl.init()``."""

    def __init__(self, *, engine, store, server, info, cards, matrix, socks, comm_id, timeout):
        self._engine = engine
        self._store = store
        self._server = server
        self._info = info
        self._cards = cards
        self._matrix = matrix
        self._socks = socks
        self._comm_id = comm_id
        self._timeout = timeout
        self.rank = info.rank
        self.size = info.size
        self.local_rank = sum(c["host"] == cards[self.rank]["host"] for c in cards[:self.rank])
        self.local_size = sum(c["host"] == cards[self.rank]["host"] for c in cards)
        links = {matrix[self.rank][p] for p in range(self.size) if p != self.rank}
        self._tuner = Tuner(self.size, links)
        self.last_algorithm = None
        self._closed = False

    # ------------------------------------------------------------------ collectives

    def allreduce(self, buf, op=ReduceOp.SUM, out=None, *, timeout=None, algorithm=None):
        """Reduce ``buf`` over all ranks with ``op``; the result goes to ``out`` (default: in place).

        Returns the output buffer. All ranks must pass the same count, dtype and op."""
        code = _dtype_code(buf)
        if type(op) is not ReduceOp:
            op = as_op(op)
        if op >= 5 or code == dtypes.BOOL:
            dtypes.check_op(code, op)
        if out is None:
            out = buf
        algo = self._tuner.select("allreduce", buf.nbytes if type(buf) is _ndarray else memoryview(buf).nbytes, algorithm)
        self.last_algorithm = algo.name
        try:
            self._engine.allreduce(buf, out, code, op, algo.code,
                                   self._timeout if timeout is None else config.timeout(timeout))
        except HetcclError as e:
            self._after_error(e, "allreduce")
        return out

    def allgather(self, buf, out=None, *, timeout=None, algorithm=None):
        """Concatenate every rank's ``buf`` (in rank order) into ``out``; returns ``out``.

        ``out`` defaults to a new numpy array of size x len(buf) elements (numpy input only). Passing
        ``out`` as ``buf`` means in place: each rank's contribution already sits in its block of out."""
        code = _dtype_code(buf)
        if out is None:
            if not isinstance(buf, np.ndarray):
                raise InvalidUsage("allgather of a non-numpy buffer needs out= (size x the input)")
            out = np.empty((self.size * buf.size,), dtype=buf.dtype)
        nbytes = out.nbytes if type(out) is _ndarray else memoryview(out).nbytes
        algo = self._tuner.select("allgather", nbytes, algorithm)
        self.last_algorithm = algo.name
        try:
            self._engine.allgather(buf, out, code, algo.code,
                                   self._timeout if timeout is None else config.timeout(timeout))
        except HetcclError as e:
            self._after_error(e, "allgather")
        return out

    def barrier(self, *, timeout=None):
        """Return once every rank has entered the barrier."""
        self.allreduce(np.zeros(1, dtype=np.uint8), ReduceOp.MAX, timeout=timeout,
                       algorithm="recursive_doubling")

    # ------------------------------------------------------------------ introspection

    def describe(self) -> str:
        """Who is where and which transport links each pair of ranks."""
        hosts = {}
        for c in self._cards:
            hosts.setdefault(c["host"], []).append(c["rank"])
        lines = [f"hetccl communicator: {self.size} rank(s) on {len(hosts)} host(s)"]
        for h, ranks in hosts.items():
            lines.append(f"  host {h}: ranks {ranks}")
        lines.append("transport per pair:")
        lines.append(format_matrix(self._matrix))
        return "\n".join(lines)

    def transport(self, peer: int) -> str:
        return self._matrix[self.rank][peer]

    def explain(self, collective: str, nbytes: int) -> str:
        """The cost table and choice of the tuner for one call shape."""
        return self._tuner.explain(collective, int(nbytes))

    # ------------------------------------------------------------------ failure and shutdown

    def _after_error(self, e, what):
        """An error during communication: abort so every other rank raises too, then re-raise.

        The first rank to fail posts its reason in the store; ranks that then see only a closed
        connection report that reason (and its error class) instead of a bare 'peer lost'."""
        if not self._engine.is_broken:
            raise e
        key = f"{self._comm_id}/abort"
        if isinstance(e, PeerLostError):
            try:
                reason = bytes(self._store.get(key, timeout=1.0)).decode()
            except Exception:
                reason = None
            if reason:
                cls_name, _, msg = reason.partition("|")
                cls = {"InvalidUsage": InvalidUsage}.get(cls_name, PeerLostError)
                self.abort()
                raise cls(f"{what} failed because another rank failed first: {msg}") from e
        else:
            try:
                self._store.set(key, f"{type(e).__name__}|rank {self.rank}: {e}".encode())
            except Exception:
                pass
        self.abort()
        raise e

    def abort(self):
        """Close every link at once: peers blocked on this rank raise PeerLostError."""
        self._engine.close()
        for s in self._socks.values():
            try:
                s.close()
            except OSError:
                pass
        self._socks = {}

    def close(self, timeout=30.0):
        """Leave the communicator: wait (bounded) for every rank, then free links and the store."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._engine.is_broken:
                self._store.barrier(f"{self._comm_id}/close", self.size, timeout=timeout)
        except Exception as e:
            log.info("close: not every rank reached close (%s); closing anyway", e)
        self.abort()
        try:
            self._store.close()
        finally:
            if self._server is not None:
                self._server.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self.abort()
            self._closed = True

    def __repr__(self):
        return f"<hetccl.Communicator rank {self.rank} of {self.size}>"


def init(rank=None, size=None, *, timeout=None, transports=None) -> Communicator:
    """Join the job: find rank/size from the launcher, rendezvous, and connect every pair.

    rank/size: explicit values (else from hetccl run, torchrun, Open MPI, MPICH or Slurm variables).
    timeout: seconds any wait may take (default HETCCL_TIMEOUT, else 600).
    transports: like HETCCL_TRANSPORTS ('tcp', 'shm,tcp', '^shm'), to force or exclude transports.
    """
    from ._native.engine import Engine
    from .bootstrap.env import detect
    from .bootstrap.rendezvous import connect_store
    from .transports.mesh import connect_mesh

    t = config.timeout(timeout)
    info = detect(rank, size)
    config.setup_logging(info.rank)
    conn = connect_store(info, timeout=t)
    info = conn.info
    engine = Engine(info.rank, info.size)
    try:
        cards, matrix, socks = connect_mesh(engine, conn.client, info.rank, info.size, info.secret,
                                            conn.job_id, "w", t,
                                            transports if transports is not None
                                            else os.environ.get("HETCCL_TRANSPORTS"))
    except BaseException:
        engine.close()
        conn.close()
        raise
    local = sum(c["host"] == cards[info.rank]["host"] for c in cards)
    if local > (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()):
        engine.spin_s = 0.0       # oversubscribed: hand the core over at once instead of spinning
    comm = Communicator(engine=engine, store=conn.client, server=conn.server, info=info, cards=cards,
                        matrix=matrix, socks=socks, comm_id="w", timeout=t)
    log.info("rank %d/%d up:\n%s", info.rank, info.size, comm.describe())
    return comm
