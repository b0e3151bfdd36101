"""The Communicator: a group of ranks and the collectives they call together.

Python decides (validate, describe the call, pick an algorithm); the Cython engine moves and reduces
bytes without the GIL. A call costs a handful of Python operations whatever the message size.

Ordering rule: every rank of a communicator must issue the same collectives in the same order (as
in MPI and NCCL). Each message carries a header with the call's sequence number, collective, count,
dtype and op, so a violation raises InvalidUsage on the ranks that see it, and the communicator is
then aborted so that every other rank raises too instead of hanging.
"""
import collections
import dataclasses
import logging
import os
import threading
import time
import weakref

import numpy as np

from . import config, dtypes
from . import flight as _flight
from . import recovery as _recovery
from . import transports as _transports
from ._native import engine as _eng
from ._native.flight import Flight as _Flight
from .bootstrap.env import detect
from .bootstrap.rendezvous import connect_store
from .bootstrap.store import StoreClient
from .bridges import formation as _formation
from .collectives import hierarchical, probe, registry, schedules
from .collectives import single_copy_probe as _single_copy_probe
from .collectives import islands as _islands
from .collectives import island_route as _island_route
from .collectives import staged as _staged
from .collectives.algorithm import ALGO_ISLANDS, ALGO_PAIRWISE, ALGO_RING
from .collectives.decide import decide as _decide, explain as _explain
from .collectives.tuner import Tuner
from .context import Context
from .errors import (CommAborted, CommRevoked, HetcclError, HetcclTimeout, InvalidUsage, PeerLostError,
                     PeerProtocolError)
from .flight.record import entries as _flight_entries
from .memory.registration import AUTO_MIN, Registry
from .memory.symmetric import MIN_BYTES as _SYM_MIN, NEEDS as _SYM_NEEDS, SymmetricMemory, auto_routes as _sym_auto_routes
from .ops import ReduceOp, as_op
from .p2p import ANY_SOURCE, P2PChannel
from .recovery.membership import EXCLUDED, FAILED, REVOKED
from .recovery.shrink import shrink as _shrink
from .topology.cards import bind_block, card_entry, crowded
from .transports.c2c import direct_thresholds, ptrace_policy as _c2c_ptrace_policy
from .transports.matrix import format_matrix
from .transports.mesh import connect_mesh
from .transports.netif import listen_address

log = logging.getLogger("hetccl")

_ndarray = np.ndarray
_NUMPY = dtypes._NUMPY
_ERRORS_BY_NAME = {}


def _c2c_direct_min():
    """Smallest call (bytes) that runs single-copy when every pair is c2c (inf: never; None: off)."""
    t = direct_thresholds()
    return None if t is None else {k: (v if v is not None else float("inf")) for k, v in t.items()}


def _plain_single_copy(engine, tuner, rank, cards, matrix, local_size, timeout, shrunk_from=None):
    """((collective, ((size, single copy faster), ...)), ...) for the single-copy routes of plain
    buffers (broadcast, allgather, alltoall by CMA reads, CostModel.single_copy): measured against
    the FIFOs (collectives/single_copy_probe.py) where every pair is c2c in cma mode, or a shrunk
    communicator's parent's (_inherited_single_copy); HETCCL_C2C_DIRECT=off keeps every call on the
    FIFOs, a size in bytes sends every call from that size (the same on every rank: the job's
    environment)."""
    if not schedules.single_copy.usable(engine):
        return ()
    spec = os.environ.get("HETCCL_C2C_DIRECT", "").strip().lower()
    t = direct_thresholds() if spec else {}             # validates the value
    if t is None:
        return ()
    if spec and spec not in ("on", "1", "yes"):
        return tuple((c, ((min(t.values()), True),)) for c in _single_copy_probe.COLLECTIVES)
    inherited = _inherited_single_copy(shrunk_from, matrix)
    if inherited:
        return inherited
    mins = _single_copy_probe.negotiate(engine, tuner, rank, {k for row in matrix for k in row},
                                        local_size, cards[0]["host"], timeout)
    return tuple(mins.items())


def _inherited_model(shrunk_from, cards, matrix):
    """A shrunk communicator's parent's cost model where it holds for the survivors
    (probe.inheritable: the same links and ranks on the busiest CPU), else None (they probe, or
    find their shape cached). Probing again at 7 of 8 ranks on 2 cores took 1.5-1.8 s of a shrink
    on a loaded host while the survivors waited."""
    if shrunk_from is None:
        return None
    parent = shrunk_from[0]
    model = getattr(getattr(parent, "tuner", None), "model", None)
    return probe.inheritable(model, parent.cards, parent.matrix, cards, matrix)


def _inherited_single_copy(shrunk_from, matrix):
    """A shrunk communicator's single-copy verdicts: its parent's, when the survivors' pairs use the
    same link classes, else None. Measuring them again at one rank fewer (a size the cache has not
    seen) was most of a shrink: 7 of 8 ranks on 2 cores spent 6-23 s in it while the survivors
    waited to go on. The parent's are the same on every survivor (it negotiated them), they choose
    between two correct routes only, and they move little with one rank fewer; a communicator made
    later with ``init()`` measures (or finds cached) its own."""
    if shrunk_from is None:
        return None
    parent = shrunk_from[0]
    model = getattr(getattr(parent, "tuner", None), "model", None)
    if model is None or not model.single_copy:
        return None
    if {k for row in parent.matrix for k in row} != {k for row in matrix for k in row}:
        return None
    return model.single_copy


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


_DONE = threading.Lock()      # a Work completes once: by its operation, or cancelled by abort/close
ABORT_GRACE = 1.0             # s an operation may still run after its communicator was aborted
LINGER_S = 3.0                # s the store's host stays for the others to read why it failed
# Oversubscribed: a step moving this much (send and receive) sleeps at once instead of yielding
# first, while other jobs load the host (progress.pyx host_loaded: 1-minute load average >= ranks +
# CPUs); on a host running only this job every wait yields first. Measured on the 2-vCPU VM: quiet,
# sleeping at once made 4- and 8-rank ring calls of 128 KiB-2 MiB 1.1-3.7x slower (bench/RESULTS.md
# "More ranks than cores: the wait policy"); loaded by other jobs (load average 19-33), it made the
# 8-rank ring allreduce of 2 and 8 MiB 1.5-3x faster (bench/oversubscribed.py --ab,
# bench/results/ar8-ab-*-2026-12-07m.txt). 512 KiB: an 8-rank 2 MiB ring step.
HANDOVER_BYTES = 512 << 10
MAX_ISLAND_ROUTES = 64        # allreduce shapes whose composed route a communicator keeps (then all forgotten)


class _Life:
    """Whether a communicator is still usable, shared with its Work objects (which must never wait
    forever on a communicator that was aborted or closed)."""

    __slots__ = ("engine", "dead_at")

    def __init__(self, engine):
        self.engine = engine
        self.dead_at = None                   # time.monotonic() of the abort/close/interrupt

    def error(self, what):
        """The exception an operation of a dead communicator raises (CommAborted, CommRevoked or
        PeerLostError, after the engine's interrupt)."""
        return self.engine.interrupt_error(what)


class Work:
    """Handle of a non-blocking operation (``async_op=True``).

    ``wait()`` returns the operation's result (its output buffer) or re-raises its error;
    ``test()``/``is_completed()`` poll. Operations run in issue order on the communicator's progress
    thread, which drives them without the GIL while the caller computes. If the communicator is
    aborted or closed, pending operations raise CommAborted (those not started at once, a running
    one when it stops or at the latest ABORT_GRACE seconds later): ``wait()`` never waits forever."""

    __slots__ = ("_event", "_result", "_exc", "_fn", "_args", "_what", "_out", "_life", "_seq")

    def __init__(self, what, fn, args, out, life=None):
        self._event = threading.Event()
        self._result = None
        self._exc = None
        self._fn, self._args, self._what, self._out = fn, args, what, out
        self._life = life
        self._seq = 0                         # its flight-record entry (hetccl/flight/)

    def _finish(self, exc=None) -> bool:
        """Complete with exc (None: success), unless already complete; True if this call did."""
        with _DONE:
            if self._event.is_set():
                return False
            self._exc = exc
            self._event.set()
        return True

    def _await(self, limit) -> bool:
        """Wait for completion (limit s, None: no limit); a dead communicator's Work completes
        with its error ABORT_GRACE s after the abort even if its operation has not stopped."""
        life, ev = self._life, self._event
        if life is None:
            return ev.wait(limit)
        end = None if limit is None else time.monotonic() + limit
        while True:
            left = None if end is None else end - time.monotonic()
            if ev.wait(0.25 if left is None else min(max(left, 0.0), 0.25)):
                return True
            dead = life.dead_at
            if dead is not None and time.monotonic() - dead >= ABORT_GRACE:
                self._finish(life.error(self._what))
                return True
            if left is not None and left <= 0.25:
                return ev.is_set()

    def wait(self, timeout=None):
        if not self._event.is_set() and not self._await(None if timeout is None else config.timeout(timeout)):
            raise HetcclTimeout(f"{self._what} did not complete within {timeout} s")
        if self._exc is not None:
            raise self._exc
        return self._out

    def test(self) -> bool:
        return self._event.is_set()

    is_completed = test

    def exception(self):
        return self._exc if self._event.is_set() else None

    def __repr__(self):
        return f"<hetccl.Work {self._what} {'done' if self.test() else 'pending'}>"


def _byte_view(buf, writable) -> memoryview:
    """A flat byte view of a C-contiguous buffer (numpy views cover ml_dtypes types too)."""
    if isinstance(buf, np.ndarray):
        if not buf.flags.c_contiguous:
            raise InvalidUsage("the buffer is not C-contiguous; pass numpy.ascontiguousarray(x)")
        if writable and not buf.flags.writeable:
            raise InvalidUsage("the receive buffer is read-only; pass a writable array")
        return memoryview(buf.reshape(-1).view(np.uint8))
    mv = memoryview(buf)
    if writable and mv.readonly:
        raise InvalidUsage("the receive buffer is read-only; pass a writable buffer")
    return mv.cast("B")


def _nbytes(buf) -> int:
    return buf.nbytes if type(buf) is _ndarray else memoryview(buf).nbytes


def _new_like(buf, count, what):
    if not isinstance(buf, np.ndarray):
        raise InvalidUsage(f"{what} of a non-numpy buffer needs out= (an output buffer)")
    return np.empty((count,), dtype=buf.dtype)


def _done(what, out) -> Work:
    """A Work that is already complete (a call that finished synchronously)."""
    w = Work(what, None, None, out)
    w._event.set()
    return w


class Call:
    """One collective call as every route reads it, made by ``Communicator._parse`` (the one
    buffer and argument parser): the collective, the send and receive buffers (``recv`` made when
    the caller passed none and may), the dtype and op codes (checked), root, counts, the timeout in
    force, the requested algorithm, ``async_op``, the bytes the tuner prices (``nbytes``) and what
    the call returns (``result``). Python-scheduled algorithms (``Algorithm.run``) receive it."""

    __slots__ = ("coll", "send", "recv", "dtype", "op", "root", "counts", "rcounts", "timeout",
                 "algorithm", "async_op", "nbytes", "result")

    def __init__(self, coll, send, recv, dtype, op, root, counts, rcounts, timeout, algorithm,
                 async_op, nbytes, result):
        self.coll, self.send, self.recv, self.dtype, self.op = coll, send, recv, dtype, op
        self.root, self.counts, self.rcounts, self.timeout = root, counts, rcounts, timeout
        self.algorithm, self.async_op, self.nbytes, self.result = algorithm, async_op, nbytes, result


def _ints(counts):
    return None if counts is None else [int(c) for c in counts]


def _size(buf):
    return buf.size if isinstance(buf, np.ndarray) else 0


def _my_block(c, p, r):
    """Rank r's block of the input (reduce_scatter, scatter): counts[r], else len(buf) / size."""
    return c.counts[r] if c.counts is not None else _size(c.send) // p


# What each collective's call looks like, for the parser: whether it reduces (an op to check),
# how many elements a receive buffer it makes holds (None: it makes none; the caller's buffer is
# the output), and which buffer's bytes the tuner prices (times the group size for gather/scatter).
_OUT = {
    "allreduce": None,
    "allgather": lambda c, p, r: p * _size(c.send),
    "allgatherv": lambda c, p, r: sum(c.counts),
    "reduce_scatter": _my_block,
    "broadcast": None,
    "reduce": lambda c, p, r: _size(c.send) if r == c.root else None,
    "gather": lambda c, p, r: (sum(c.counts) if c.counts is not None else p * _size(c.send)) if r == c.root else None,
    "scatter": _my_block,
    "alltoall": lambda c, p, r: sum(c.rcounts) if c.rcounts is not None else _size(c.send),
    "barrier": None,
}
_REDUCES = frozenset({"allreduce", "reduce_scatter", "reduce"})
_PRICED_ON_RECV = frozenset({"allgather", "allgatherv"})
_TIMES_SIZE = {"gather": "send", "scatter": "recv"}
_ROOTED = frozenset({"broadcast", "reduce", "gather", "scatter"})

# The routes other than the flat native schedule (collectives/schedules.py), by collective: each
# adapter turns a Call into the route's own arguments.
_SYMMETRIC = {     # _native/symmetric_heap.pyx: both buffers live symmetric allocations, every pair c2c
    "allreduce": lambda e, h, c: (schedules.symmetric.allreduce, (e, h, c.send, c.recv, c.dtype, c.op, c.timeout)),
    "allgather": lambda e, h, c: (schedules.symmetric.allgather, (e, h, c.send, c.recv, c.dtype, c.timeout)),
    "reduce_scatter": lambda e, h, c: (schedules.symmetric.reduce_scatter, (e, h, c.send, c.recv, c.dtype, c.op, c.timeout)),
    "broadcast": lambda e, h, c: (schedules.symmetric.broadcast, (e, h, c.send, c.root, c.dtype, c.timeout)),
    "alltoall": lambda e, h, c: (schedules.symmetric.alltoall, (e, h, c.send, c.recv, c.dtype, c.timeout)),
}
_ISLANDS = {       # composed across vendor islands (collectives/islands.py IslandPlan)
    "allreduce": lambda p, c, a, f: (p.allreduce, (c.send, c.recv, c.dtype, c.op, c.timeout, a, f)),
    "allgather": lambda p, c, a, f: (p.allgather, (c.send, c.recv, c.dtype, a, c.timeout, f)),
    "broadcast": lambda p, c, a, f: (p.broadcast, (c.send, c.root, c.dtype, a, c.timeout, f)),
}
_PLANNER = {       # composed by the topology planner (collectives/hierarchical.py), codes < 0
    "allreduce": lambda p, c, a: (p.allreduce, (c.send, c.recv, c.dtype, c.op, c.timeout, a)),
    "allgather": lambda p, c, a: (p.allgather, (c.send, c.recv, c.dtype, a, c.timeout)),
    "broadcast": lambda p, c, a: (p.broadcast, (c.send, c.root, c.dtype, a, c.timeout)),
}
_PLAIN_SINGLE_COPY = {   # _native/single_copy.pyx: CMA reads of plain buffers, where measured faster
    "broadcast": lambda e, c: (schedules.single_copy.broadcast, (e, c.send, c.root, c.dtype, c.timeout)),
    "allgather": lambda e, c: (schedules.single_copy.allgather, (e, c.send, c.recv, c.dtype, c.timeout)),
    "alltoall": lambda e, c: (schedules.single_copy.alltoall, (e, c.send, c.recv, c.dtype, c.timeout)),
}
_SINGLE_COPY = {   # _native/single_copy.pyx: ring schedules over c2c peers' memory
    "allreduce": lambda e, c: (schedules.single_copy.allreduce, (e, c.send, c.recv, c.dtype, c.op, c.timeout)),
    "allgather": lambda e, c: (schedules.single_copy.allgather, (e, c.send, c.recv, c.dtype, c.timeout)),
}
_FLAT = {          # collectives/schedules.py: one entry per collective, keyed by algorithm code
    "allreduce": lambda e, c, a: (schedules.allreduce, (e, c.send, c.recv, c.dtype, c.op, a, c.timeout)),
    "allgather": lambda e, c, a: (schedules.allgather, (e, c.send, c.recv, c.dtype, a, c.timeout)),
    "allgatherv": lambda e, c, a: (schedules.allgatherv, (e, c.send, c.recv, c.counts, c.dtype, a, c.timeout)),
    "reduce_scatter": lambda e, c, a: (schedules.reduce_scatter,
                                       (e, c.send, c.recv, c.counts, c.dtype, c.op, a, c.timeout)),
    "broadcast": lambda e, c, a: (schedules.broadcast, (e, c.send, c.root, c.dtype, a, c.timeout)),
    "reduce": lambda e, c, a: (schedules.reduce, (e, c.send, c.recv, c.root, c.dtype, c.op, a, c.timeout)),
    "gather": lambda e, c, a: (schedules.gather, (e, c.send, c.recv, c.counts, c.root, c.dtype, a, c.timeout)),
    "scatter": lambda e, c, a: (schedules.scatter, (e, c.send, c.recv, c.counts, c.root, c.dtype, a, c.timeout)),
    "alltoall": lambda e, c, a: (schedules.alltoall,
                                 (e, c.send, c.recv, c.counts, c.rcounts, c.dtype, a, c.timeout)),
    "barrier": lambda e, c, a: (schedules.barrier, (e, a, c.timeout)),
}
# what decide() is told beyond the size (the islands price by dtype and op where they run them)
_DECIDE_BY_DTYPE = frozenset({"allreduce", "allgather", "broadcast"})


def _capture(c, fn, args):
    """A ``go`` for ``Communicator._route_rest`` that returns the route instead of running it."""
    return fn, args


class Communicator:
    """A group of ranks connected by per-pair transports. Create with ``hetccl.init()``.

    Not thread-safe: issue calls from one thread (use ``async_op=True`` for overlap)."""

    def __init__(self, *, engine, store, server, info, cards, matrix, socks, comm_id, timeout,
                 p2p, job_id, transports, parent=None, bridge_request=None, shrunk_from=None):
        self._life = _Life(engine)            # lifecycle (see abort/close): set up first, abort()
        self._teardown = threading.Lock()     # may run from here on
        self._torn_down = False
        self._closed = False
        self._plan = self._islands = None
        self._island_routes = None            # the islands' cached composed routes (_island_allreduce)
        self._job_id = job_id
        self._transports = transports
        self._engine = engine
        self._p2p = p2p
        self._store_ok = True
        self._posted = False                    # this rank's reason won the store's key (_post_reason)
        # the process serving the store (rank 0 of the root communicator; for torch's store, when
        # rank 0's process serves it: served_by_rank0): once the control plane reports it dead,
        # the failure path stops asking the store (no 1 s waits, nor torch's warnings, per call)
        by_rank0 = isinstance(store, StoreClient) or getattr(store, "served_by_rank0", False)
        self._store_host = parent._store_host if parent is not None else (
            cards[0].get("ctl_id") if by_rank0 and info.rank != 0 else None)
        for c in cards:
            same = c["host"] == cards[info.rank]["host"] and c["bind_any"]
            p2p.peers[c["rank"]] = ("127.0.0.1" if same else c["addr"], c["p2p_port"])
        self._store = store
        self._server = server
        self._info = info
        self._cards = cards
        self._matrix = matrix
        self._socks = socks
        self._comm_id = comm_id
        self._timeout = timeout
        self._hot = schedules.Hot(engine, timeout, _NUMPY, _Flight())   # the latency path (learn() below)
        self._hot.on_refused = _weak_call(weakref.WeakMethod(self._cma_refused))   # no Hot <-> comm cycle
        self._flight = self._hot.flight       # this rank's record of its collective calls
        # the public collectives' native entries (latency.pyx: methods), shadowing the methods below
        # on this instance: a learnt call skips the Python frame; anything else comes to them
        self.__dict__.update(schedules.methods(self._hot, weakref.ref(self), type(self)))
        self._parent = parent
        self.rank = info.rank
        self.size = info.size
        self.parent_ranks = None              # shrink(): the old rank of each new rank
        self._explained = None                # the first failure's reason, once reported here
        self._bridge_request = bridge_request    # this rank's bridges= request, inherited by split()
        # what hetccl's own modules (planners, islands, symmetric memory, recovery, flight records)
        # see of this communicator: they get this, never the fields above
        self._ctx = ctx = Context(self, run=self._run, interrupt=self._interrupt,
                                  control_event=self._control_event, own_failure=self._own_failure,
                                  decide=_decide, done=_done, connect=_connect, rank=info.rank,
                                  size=info.size, engine=engine, store=store, server=server, info=info,
                                  cards=cards, matrix=matrix, comm_id=comm_id, job_id=job_id,
                                  timeout=timeout, transports=transports, bridges=bridge_request,
                                  life=self._life, flight=self._flight)
        self._ft = ctx.ft = _recovery.attach(ctx, cards, info, job_id, comm_id)   # control plane (recovery/)
        _flight.attach(ctx)
        self.local_rank = sum(c["host"] == cards[self.rank]["host"] for c in cards[:self.rank])
        self.local_size = sum(c["host"] == cards[self.rank]["host"] for c in cards)
        self._queue = collections.deque()
        self._cv = threading.Condition()
        self._worker = None
        try:                                  # measured (or cached) cost model, same on every rank
            self._tuner = ctx.tuner = Tuner(self.size, probe.negotiate(
                engine, self.rank, self.size, {k for row in matrix for k in row}, self.local_size,
                cards[self.rank]["host"], timeout, oversubscribed=engine.spin_s == 0,
                inherit=_inherited_model(shrunk_from, cards, matrix)))
        except BaseException:
            self._abort()
            self._ft.detach()
            raise
        self._plan = ctx.plan = hierarchical.planner_for(ctx, cards, oversubscribed=engine.spin_s == 0)
        self._direct_min = _c2c_direct_min() if engine.all_c2c() else None
        try:                                  # plain-buffer single copy: where it beats the FIFOs
            self._tuner.model = dataclasses.replace(self._tuner.model, single_copy=_plain_single_copy(
                engine, self._tuner, self.rank, cards, matrix, self.local_size, timeout, shrunk_from))
            _single_copy_probe.apply_orders(engine, self._tuner.model.single_copy)   # read orders
        except BaseException:
            self._abort()
            self._ft.detach()
            raise
        self._sym = SymmetricMemory(ctx, engine.all_c2c())
        self._registry = Registry(self._sym.sharing_heap)
        self._auto_register = True            # automatic registration (a knob for benchmarks' A/B)
        self._children = 0
        try:                                  # islands with vendor bridges (collective: opens them)
            self._islands = ctx.islands = _islands.plan_for(ctx, cards, shrunk_from)
        except BaseException:
            self._abort()
            self._ft.detach()
            raise
        if self._islands is not None and not (self._islands.whole or self._islands.device):
            self._island_routes = {}
        self._ft.ready()                      # failure events held while the collectives above ran

    @property
    def _pending(self):
        """Operations queued for the progress thread; a blocking call waits behind them (kept on
        the latency path's object, which the native entries read)."""
        return self._hot.pending

    @_pending.setter
    def _pending(self, n):
        self._hot.pending = n

    @property
    def _store_ok(self):
        """The store may still answer: no call on it failed, and its host is not known dead."""
        return self._store_up and not (self._store_host and self._ft.process_dead(self._store_host))

    @_store_ok.setter
    def _store_ok(self, up):
        self._store_up = up

    # ------------------------------------------------------------------ running calls

    @property
    def last_algorithm(self):
        """Name of the algorithm the last collective ran (benchmarks print it)."""
        return self._hot.last

    @last_algorithm.setter
    def last_algorithm(self, name):
        self._hot.last = name

    def _t(self, timeout):
        return self._timeout if timeout is None else config.timeout(timeout)

    def _run(self, what, fn, args, out, async_op):
        """Run one operation now, or queue it behind pending non-blocking ones (issue order)."""
        if self._life.dead_at is not None:        # aborted, closed, revoked, a peer lost: nothing
            raise self._dead_error(what)          # starts any more
        if async_op or self._pending:
            w = Work(what, fn, args, out, self._life)
            with self._cv:
                if self._life.dead_at is not None:    # aborted meanwhile: the worker may be gone
                    raise self._life.error(what)
                w._seq = self._flight.begin(what, self.last_algorithm, True)
                self._pending += 1
                self._queue.append(w)
                if self._worker is None:
                    self._worker = threading.Thread(target=self._progress, name="hetccl-progress",
                                                    daemon=True)
                    self._worker.start()
                self._cv.notify()
            return w if async_op else w.wait()
        seq = self._flight.begin(what, self.last_algorithm)
        try:
            fn(*args)
        except HetcclError as e:
            self._flight.failed(seq, e)
            raise self._failed(e, what)
        except BaseException as e:
            self._flight.failed(seq, e)
            raise
        self._flight.finished(seq)
        return out

    def _progress(self):
        """The progress thread: runs queued operations in order (the engine releases the GIL)."""
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                w = self._queue.popleft()
            if w is None:
                return
            exc = None
            self._flight.started(w._seq)
            try:
                w._fn(*w._args)
            except HetcclError as e:
                self._flight.failed(w._seq, e)
                exc = self._failed(e, w._what)
            except BaseException as e:           # noqa: BLE001 - handed to the waiter
                self._flight.failed(w._seq, e)
                exc = e
            else:
                self._flight.finished(w._seq)
            w._fn = w._args = None
            with self._cv:
                self._pending -= 1
            w._finish(exc)

    def _learn(self, c, algo):
        """Let the latency path (self._hot) take later calls of this shape, which this one just
        routed to a plain native schedule, under the same ``algorithm=`` (None: the tuner's
        choice; a forced algorithm takes the same path, so it costs what the tuner's choice of it
        costs). Only when the route depends on the size and that name alone (no topology
        planner, no symmetric allocation, and islands only where they run this shape flat for
        every dtype and op: those routes look at the buffers or at whether the choice was forced,
        and a freed allocation must raise)."""
        isl = self._islands
        if self._plan is None and self._hot_may_take(c.coll, c.nbytes) and (
                isl is None or isl.routes_flat(c.coll, c.nbytes, c.algorithm)):
            self._hot.learn(c.coll, c.nbytes, algo, self.last_algorithm, c.algorithm)

    def _hot_may_take(self, coll, nbytes):
        """Whether the buffers cannot change this shape's route: no ``comm.alloc`` allocation
        was made (a freed one must raise at any size), no registered region is shared below the
        symmetric schedules' smallest call (MIN_BYTES: smaller calls never take them unless
        forced), and the shape is not one automatic registration may route (AUTO_MIN)."""
        sym = self._sym
        if sym.active and (sym.allocated or nbytes >= _SYM_MIN):
            return False
        return not (sym.shared and nbytes >= AUTO_MIN and coll in _SYMMETRIC)

    def _forget_routes(self):
        """Drop every cached route (the latency path's and the islands'): the next call of each
        shape is routed, and learnt, anew."""
        self._hot.forget()
        if self._island_routes:
            self._island_routes.clear()

    # ------------------------------------------------------------------ the islands' cached routes

    def _island_allreduce(self, buf, op, out, timeout, algorithm):
        """A blocking allreduce of numpy arrays on a communicator whose islands may compose it. A
        shape composed before (dtype, bytes, op, in or out of place, ``algorithm=``, ``timeout=``)
        runs its cached route (collectives/island_route.py: the form's phases with their steps,
        sub-communicators and scratch resolved) under this communicator's flight record and
        failure handling, skipping the parser and the decision; any other call is routed, and a
        composed one teaches its route. An entry holds only while the cost model it was decided
        on is the tuner's (a new model: decided again); ``_forget_routes`` drops them all."""
        in_place = out is None or out is buf
        key = (buf.dtype, buf.nbytes, op, in_place, algorithm, timeout)
        hit = self._island_routes.get(key)
        if hit is not None and hit[0] is self._tuner.model and (
                in_place or (type(out) is _ndarray and out.dtype is buf.dtype and out.nbytes == key[1])):
            if self._life.dead_at is not None:
                raise self._dead_error("allreduce")
            _, run, nbytes, code, iop = hit
            flight = self._flight
            self._hot.last = "islands"
            flight.note("allreduce", nbytes, code, iop, -1)
            seq = flight.begin("allreduce", "islands")
            if in_place:
                out = buf
            try:
                run(buf, out)
            except HetcclError as e:
                flight.failed(seq, e)
                raise self._failed(e, "allreduce")
            except BaseException as e:
                flight.failed(seq, e)
                raise
            flight.finished(seq)
            return out
        c = self._parse("allreduce", buf, out, op=op, timeout=timeout, algorithm=algorithm)
        result = self._route(c)
        if self._hot.last == "islands" and not self._sym.active:
            self._learn_island_route(key, c)
        return result

    def _learn_island_route(self, key, c):
        """Keep the composed route of the allreduce ``c`` just ran under ``key`` (every rank
        routed the same call alike, so all learn it at the same call: its sub-communicators exist
        by now)."""
        a, form = _decide(self._tuner, self._plan, self._islands, "allreduce", c.nbytes, c.algorithm,
                          c.dtype, c.op)
        if a.code != ALGO_ISLANDS or form is None:
            return
        run = _island_route.route(self._islands, "allreduce", c.nbytes, c.send.dtype, c.dtype, c.op, form,
                                  c.timeout)
        if run is None:
            return
        routes = self._island_routes
        if len(routes) >= MAX_ISLAND_ROUTES:    # bounded: a program of ever new shapes must not grow
            routes.clear()
        routes[key] = (self._tuner.model, run, c.nbytes, c.dtype, int(c.op))

    # ------------------------------------------------------------------ validate, route, run

    def _parse(self, coll, send, recv=None, *, op=None, root=0, counts=None, rcounts=None,
               timeout=None, algorithm=None, async_op=False) -> Call:
        """The one buffer and argument parser: every collective's call becomes a Call here.

        Checks the dtype of the buffers (an output of another dtype than the input is refused),
        the op against the dtype, that uneven alltoall gets both count lists, and makes the
        receive buffer a numpy input may leave out."""
        if coll == "scatter":                  # the output is every rank's; the input the root's
            if recv is None:                   # the allocating form: every rank's buf gives its shape
                if not isinstance(send, np.ndarray):
                    raise InvalidUsage("scatter without out= needs buf, a numpy array of the root's "
                                       "length and dtype, on every rank (its contents are read on "
                                       "the root only)")
                code = _dtype_code(send)
                # checked on every rank (each has buf), so none is left waiting for a root that raised
                if not send.flags.c_contiguous:
                    raise InvalidUsage("the input buffer is not C-contiguous; pass "
                                       "numpy.ascontiguousarray(x) (hetccl moves contiguous memory only)")
                if counts is None and send.size % self.size:
                    raise InvalidUsage(f"scatter input of {send.size} elements does not split into "
                                       f"{self.size} equal blocks; pass counts= (scatterv) or pad the input")
            else:
                code = _dtype_code(recv)
                if self.rank == root and _dtype_code(send) != code:
                    raise InvalidUsage("scatter input and output must have the same dtype")
        elif coll == "barrier":
            code = -1
        else:
            code = _dtype_code(send)
        if coll in _REDUCES:
            if type(op) is not ReduceOp:
                op = as_op(op)
            if op >= 5 or code == dtypes.BOOL:
                dtypes.check_op(code, op)
        if coll == "alltoall" and (counts is None) != (rcounts is None):
            raise InvalidUsage("alltoallv needs both send_counts and recv_counts")
        c = Call(coll, send, recv, code, op, int(root), _ints(counts), _ints(rcounts), self._t(timeout),
                 algorithm, async_op, 0, None)
        if recv is None:
            make = _OUT[coll]
            n = make(c, self.size, self.rank) if make is not None else None
            if n is not None:
                c.recv = _new_like(send, n, coll)
            elif coll == "allreduce":
                c.recv = send
        elif recv is not send and coll in ("allreduce", "allgather") and _dtype_code(recv) != code:
            raise InvalidUsage(f"{coll} output is {dtypes.NAMES[_dtype_code(recv)]} but the input is "
                               f"{dtypes.NAMES[code]}; pass an output of the input's dtype")
        if coll == "barrier":
            c.nbytes = 0
        else:
            c.nbytes = _nbytes(c.recv if coll in _PRICED_ON_RECV else c.send if coll != "scatter" else c.recv)
            if coll in _TIMES_SIZE:
                c.nbytes *= self.size
        c.result = (c.send if coll == "broadcast" else None if coll == "barrier" else
                    c.recv if coll not in ("reduce", "gather") or self.rank == root else None)
        if coll in ("reduce", "gather") and self.rank != root:
            c.recv = None
        if coll == "scatter" and self.rank != root:
            c.send = None
        return c

    def _route(self, c: Call):
        """The one place a call's route is decided, in this order:

        1. symmetric: the buffers are live ``comm.alloc`` allocations on an all-c2c communicator
           (or ``algorithm="symmetric"``): single copy by loads and stores (memory/symmetric.py);
        2. islands direct: one vendor island spans the communicator, and its library runs this
           allreduce whole (no detour through the router's queue);
        3. the algorithm of ``decide`` (tuner, topology planner, islands: collectives/decide.py),
           run by its route: a Python schedule (``Algorithm.run``), composed across islands,
           single copy (ring over all-c2c links, HETCCL_C2C_DIRECT), single-copy alltoall (cma),
           composed by the topology planner (codes < 0), or the flat native schedule of its code.
        (The latency path and device buffers are taken before the parser, in the public methods:
        the first costs a few dict lookups and takes the allocating forms too, the second has its
        own buffers.)"""
        coll = c.coll
        self._flight.note(coll, c.nbytes // self.size if coll in _TIMES_SIZE else c.nbytes, c.dtype,
                          c.op if coll in _REDUCES else -1, c.root if coll in _ROOTED else -1)
        if coll in _SYMMETRIC and c.counts is None:
            if c.algorithm is None and self._auto_takes(c):
                return self._go(c, self._auto_call, (c, *self._route_rest(c, _capture)))
            if (self._sym.active or c.algorithm == "symmetric") and self._sym.takes(
                    coll, c.algorithm, *((c.send,) if coll == "broadcast" else (c.send, c.recv))):
                self.last_algorithm = "symmetric"
                return self._go(c, *_SYMMETRIC[coll](self._engine, self._sym.heap, c))
        return self._route_rest(c, self._go)

    def _route_rest(self, c, go):
        """Steps 2 and 3 of ``_route``; ``go(c, fn, args)`` runs the route (``_capture``: returns
        it, for automatic registration's fallback)."""
        coll = c.coll
        isl = self._islands
        if coll == "allreduce" and isl is not None and isl.whole and not c.async_op and not self._pending:
            direct = isl.direct_allreduce(c.nbytes, c.dtype, c.op, c.algorithm)
            if direct is not None:               # one MPI/NCCL island: no detour
                self.last_algorithm = "islands"
                seq = self._flight.begin("allreduce", "islands")
                try:
                    direct(c.send, c.recv)
                except Exception as e:           # noqa: BLE001 - the native library's error
                    self._flight.failed(seq, e)
                    raise self._failed(isl._failed(e), "allreduce") from None
                self._flight.finished(seq)
                return c.result
        by_dtype = coll in _DECIDE_BY_DTYPE
        a, form = _decide(self._tuner, self._plan, isl, coll, c.nbytes, c.algorithm,
                          c.dtype if by_dtype else None, c.op if coll == "allreduce" else None)
        self.last_algorithm = a.name
        algo = a.code
        if a.run is not None:                    # a schedule written in Python over the context
            return go(c, a.run, (self._ctx, c))
        if algo == ALGO_ISLANDS and coll in _ISLANDS:
            return go(c, *_ISLANDS[coll](isl, c, algo, form))
        if (coll in _PLAIN_SINGLE_COPY and c.counts is None and c.algorithm is None and isl is None
                and self._plan is None and coll not in self._tuner.forced
                and self._tuner.single_copy(coll, c.nbytes)):
            fifo = self.last_algorithm
            self.last_algorithm = "single_copy"
            if self._plan is None and self._islands is None and self._hot_may_take(coll, c.nbytes):
                self._hot.learn(coll, c.nbytes, schedules.HOT_SINGLE_COPY, "single_copy", None,
                                (algo, fifo))
            fn, args = _PLAIN_SINGLE_COPY[coll](self._engine, c)
            return go(c, self._single_copy_or_fifo, (c, fn, args, algo))
        if algo == ALGO_RING and coll in _SINGLE_COPY and self._direct_min is not None \
                and c.nbytes >= self._direct_min[coll]:
            return go(c, self._single_copy_or_fifo, (c, *_SINGLE_COPY[coll](self._engine, c), algo))
        if algo < 0 and coll in _PLANNER:
            return go(c, *_PLANNER[coll](self._plan, c, algo))
        if coll == "alltoall" and c.counts is not None and c.algorithm is None and algo != ALGO_PAIRWISE:
            algo = ALGO_PAIRWISE                 # alltoallv: only pairwise takes uneven blocks
            self.last_algorithm = "pairwise"
        if c.counts is None and schedules.latency_path_takes(coll, algo):
            self._learn(c, algo)
        return go(c, *_FLAT[coll](self._engine, c, algo))

    def _go(self, c, fn, args):
        return self._run(c.coll, fn, args, c.result, c.async_op)

    # ------------------------------------------------------------------ automatic registration

    def _auto_takes(self, c):
        """Whether this call (no algorithm forced) goes through automatic registration
        (memory/registration.py ``Registry.auto``): memory/symmetric.py ``auto_routes``, the gate
        ``hetccl simulate`` asks too (a collective with a symmetric schedule, its sized buffer of at
        least AUTO_MIN bytes, on an all-c2c communicator without islands, the symmetric path priced
        faster). Depends on the shape and the communicator only, so every rank decides alike; each
        rank's buffers then decide, in the call, whether it runs symmetric."""
        if not (self._auto_register and _sym_auto_routes(c.coll, c.nbytes, self._tuner, self._sym.shared,
                                                         self._islands, self._sym.faster)):
            return False
        if self._sym.active:                  # a freed comm.alloc buffer raises, as on every path
            self._sym.takes(c.coll, None, *((c.send,) if c.coll == "broadcast" else (c.send, c.recv)))
        return True

    def _auto_call(self, c, fn, args):
        """Run call ``c`` on the symmetric schedules if every rank's buffers are shared (its own
        registered here on their second sighting), else (every rank learns it in the schedule's
        first sync) on the plain route ``fn(*args)``."""
        plain = self.last_algorithm
        bufs = (c.send,) if c.coll == "broadcast" else (c.send, c.recv)
        self._registry.auto([bufs[i] for i in _SYM_NEEDS[c.coll]])
        sym, sargs = _SYMMETRIC[c.coll](self._engine, self._sym.heap, c)
        if sym(*sargs, True):
            self.last_algorithm = "symmetric"
            return
        self.last_algorithm = plain
        fn(*args)

    def _single_copy_or_fifo(self, c, fn, args, algo):
        """Run a plain-buffer single-copy schedule; if a cross-memory read was refused on any rank
        (EPERM/EACCES: every rank learns it in the schedule's last sync, so all come here alike),
        warn once, route this communicator's later calls to the FIFOs, and re-run this one there."""
        if fn(*args) is not False:
            return
        self._cma_refused(c.coll)
        fn, args = _FLAT[c.coll](self._engine, c, algo)
        fn(*args)

    def _cma_refused(self, coll):
        """A cross-memory read was refused during a single-copy ``coll`` (every rank learns it in
        the call's last sync, so all come here alike): warn once and keep this communicator on the
        FIFOs from now on (the caller re-runs the call there)."""
        log.warning("rank %d: cross-memory attach was refused during a single-copy %s (the kernel's "
                    "ptrace check: %s, or a peer made itself non-dumpable); this communicator uses "
                    "the shared-memory FIFOs from now on", self.rank, coll,
                    _c2c_ptrace_policy())
        self._tuner.model = dataclasses.replace(self._tuner.model, single_copy=())
        self._direct_min = None
        self._forget_routes()

    # ------------------------------------------------------------------ collectives

    def allreduce(self, buf, op=ReduceOp.SUM, out=None, *, timeout=None, algorithm=None, async_op=False):
        """Reduce ``buf`` over all ranks with ``op``; the result goes to ``out`` (default: in place).

        Returns the output buffer (a Work with async_op=True). All ranks pass the same count,
        dtype and op. Device buffers (DLPack, ``__cuda_array_interface__``) are taken on a rank
        whose island runs on a bridge for that memory (collectives/staged.py)."""
        if not (async_op or self._pending):
            try:                               # a shape seen before: straight to the schedule
                r = self._hot.allreduce(buf, out, op, algorithm, timeout)
            except HetcclError as e:
                raise self._failed(e, "allreduce")
            if r is not False:
                return r
        if type(buf) is not _ndarray:
            if _staged.is_device(buf):
                return _staged.device_call(self._ctx, "allreduce", buf, out, op=op, timeout=timeout,
                                           algorithm=algorithm, async_op=async_op)
        elif self._island_routes is not None and type(op) is ReduceOp and not (async_op or self._pending):
            return self._island_allreduce(buf, op, out, timeout, algorithm)
        return self._route(self._parse("allreduce", buf, out, op=op, timeout=timeout, algorithm=algorithm,
                                       async_op=async_op))

    def allgather(self, buf, out=None, *, timeout=None, algorithm=None, async_op=False):
        """Concatenate every rank's ``buf`` (in rank order) into ``out``; returns ``out``.

        ``out`` defaults to a new numpy array of size x len(buf) elements (numpy input only). Passing
        ``out`` as ``buf`` means in place: each rank's contribution already sits in its block of out.
        Device buffers: as for allreduce (``out`` is then required)."""
        if not (async_op or self._pending):
            try:
                r = self._hot.allgather(buf, out, algorithm, timeout)
            except HetcclError as e:
                raise self._failed(e, "allgather")
            if r is not False:
                return r
        if type(buf) is not _ndarray and _staged.is_device(buf):
            return _staged.device_call(self._ctx, "allgather", buf, out, timeout=timeout, algorithm=algorithm,
                                       async_op=async_op)
        return self._route(self._parse("allgather", buf, out, timeout=timeout, algorithm=algorithm,
                                       async_op=async_op))

    def allgatherv(self, buf, counts, out=None, *, timeout=None, algorithm=None, async_op=False):
        """Like allgather with ``counts[r]`` elements from rank r (ring)."""
        return self._route(self._parse("allgatherv", buf, out, counts=counts, timeout=timeout,
                                       algorithm=algorithm, async_op=async_op))

    def reduce_scatter(self, buf, out=None, op=ReduceOp.SUM, *, counts=None, timeout=None,
                       algorithm=None, async_op=False):
        """Reduce ``buf`` over ranks and leave block ``rank`` of the result in ``out``.

        Blocks are equal (len(buf) / size) unless ``counts`` gives each rank's (reduce_scatterv)."""
        if counts is None and not (async_op or self._pending):
            try:
                r = self._hot.reduce_scatter(buf, out, op, algorithm, timeout)
            except HetcclError as e:
                raise self._failed(e, "reduce_scatter")
            if r is not False:
                return r
        return self._route(self._parse("reduce_scatter", buf, out, op=op, counts=counts, timeout=timeout,
                                       algorithm=algorithm, async_op=async_op))

    def broadcast(self, buf, root=0, *, timeout=None, algorithm=None, async_op=False):
        """Copy root's ``buf`` into ``buf`` on every rank (in place); returns ``buf``. Device
        buffers: as for allreduce."""
        if not (async_op or self._pending):
            try:
                r = self._hot.broadcast(buf, root, algorithm, timeout)
            except HetcclError as e:
                raise self._failed(e, "broadcast")
            if r is not False:
                return r
        if type(buf) is not _ndarray and _staged.is_device(buf):
            return _staged.device_call(self._ctx, "broadcast", buf, root=root, timeout=timeout,
                                       algorithm=algorithm, async_op=async_op)
        return self._route(self._parse("broadcast", buf, buf, root=root, timeout=timeout, algorithm=algorithm,
                                       async_op=async_op))

    def reduce(self, buf, root=0, op=ReduceOp.SUM, out=None, *, timeout=None, algorithm=None,
               async_op=False):
        """Reduce ``buf`` over ranks into ``out`` on ``root`` (default: a new array there; other
        ranks return None)."""
        if not (async_op or self._pending):
            try:
                r = self._hot.reduce(buf, root, op, out, algorithm, timeout)
            except HetcclError as e:
                raise self._failed(e, "reduce")
            if r is not False:
                return r
        return self._route(self._parse("reduce", buf, out, op=op, root=root, timeout=timeout,
                                       algorithm=algorithm, async_op=async_op))

    def gather(self, buf, root=0, out=None, *, counts=None, timeout=None, algorithm=None, async_op=False):
        """Concatenate every rank's ``buf`` into ``out`` on ``root`` (gatherv with ``counts``;
        default: a new array on the root; other ranks return None)."""
        if counts is None and not (async_op or self._pending):
            try:
                r = self._hot.gather(buf, root, out, algorithm, timeout)
            except HetcclError as e:
                raise self._failed(e, "gather")
            if r is not False:
                return r
        return self._route(self._parse("gather", buf, out, root=root, counts=counts, timeout=timeout,
                                       algorithm=algorithm, async_op=async_op))

    def scatter(self, buf, out=None, root=0, *, counts=None, timeout=None, algorithm=None, async_op=False):
        """Give every rank its block of root's ``buf`` in ``out`` (scatterv with ``counts``); returns
        ``out``. ``buf`` is read on the root only (other ranks may pass None with ``out``).

        ``out`` defaults to a new numpy array of len(buf) / size elements (``counts[rank]`` with
        counts) of buf's dtype: every rank then passes a ``buf`` of the root's length and dtype,
        whose contents only the root reads."""
        if counts is None and not (async_op or self._pending):
            try:
                r = self._hot.scatter(buf, out, root, algorithm, timeout)
            except HetcclError as e:
                raise self._failed(e, "scatter")
            if r is not False:
                return r
        return self._route(self._parse("scatter", buf, out, root=root, counts=counts, timeout=timeout,
                                       algorithm=algorithm, async_op=async_op))

    def alltoall(self, buf, out=None, *, send_counts=None, recv_counts=None, timeout=None,
                 algorithm=None, async_op=False):
        """Send block r of ``buf`` to rank r and receive rank r's block for us into block r of
        ``out``. Uneven blocks (alltoallv): give ``send_counts`` and ``recv_counts``."""
        if send_counts is None and recv_counts is None and not (async_op or self._pending):
            try:
                r = self._hot.alltoall(buf, out, algorithm, timeout)
            except HetcclError as e:
                raise self._failed(e, "alltoall")
            if r is not False:
                return r
        return self._route(self._parse("alltoall", buf, out, counts=send_counts, rcounts=recv_counts,
                                       timeout=timeout, algorithm=algorithm, async_op=async_op))

    # ------------------------------------------------------------------ registered buffers

    def register(self, buf):
        """Register a buffer this process will pass to collectives again (like NCCL's user-buffer
        registration); returns a handle (also a context manager: ``with comm.register(x):``).
        Local, not collective; register alike on every rank. Where the buffer's owner holds its
        pages alone (a numpy array of 32 MiB or more, an anonymous mmap) and every pair of the communicator is
        c2c in cma mode, its pages move into shared memory at the same address (one copy, now;
        ``handle.shared``) and calls on it take the load/store single-copy schedules of
        ``comm.alloc`` memory; otherwise its pages are faulted in now instead of inside the first
        call that writes them (docs/single-copy.md). Registering the same buffer again returns
        the same handle."""
        reg = self._registry.register(buf)
        if reg.shared and not self._sym.active:
            self._sym.active = True               # calls now look at their buffers (see _learn)
            self._forget_routes()
        return reg

    def deregister(self, handle):
        """Drop one registration of ``handle`` (see ``register``); the buffer stays usable."""
        self._registry.deregister(handle)

    # ------------------------------------------------------------------ symmetric memory

    def alloc(self, shape, dtype=np.float32, *, timeout=None):
        """A numpy array in memory every local rank maps (like ``ncclMemAlloc`` / torch's
        ``symm_mem.empty`` + ``rendezvous``). Collective: every rank, same order, same shape and
        dtype (a size mismatch raises InvalidUsage on every rank). Collectives whose buffers come
        from here run single-copy on all-c2c communicators (``last_algorithm == "symmetric"``).
        Zero-filled; freed by ``free(arr)`` or ``close()``."""
        arr = self._sym.alloc(shape, dtype, self._t(timeout))
        self._forget_routes()       # calls now look at the buffers (symmetric or freed): see _learn
        return arr

    def free(self, arr):
        """Release a ``comm.alloc`` array (local, not collective). Its memory stops being shared;
        the array reads zeros afterwards and passing it to a call raises InvalidUsage."""
        self._sym.free(arr)

    def peer_view(self, arr, peer):
        """Rank ``peer``'s copy of the ``comm.alloc`` array ``arr`` (same offset, shape, dtype), mapped
        here for one-sided loads and stores (like torch's ``symm_mem`` ``get_buffer``). Order accesses
        with a collective (e.g. ``comm.barrier()``) or a flag in symmetric memory."""
        return self._sym.peer_view(arr, peer)

    def is_symmetric(self, arr) -> bool:
        """True if ``arr`` lies in a live ``comm.alloc`` allocation that peers map (all-c2c)."""
        return self._sym.is_symmetric(arr)

    # ------------------------------------------------------------------ point to point

    def send(self, buf, dst, tag=0, *, timeout=None):
        """Send ``buf`` to rank ``dst``; returns once the bytes are handed to the network (it never
        waits for the matching recv). Messages between a pair with the same tag arrive in order."""
        self._p2p.send(_byte_view(buf, False), int(dst), int(tag))

    def recv(self, buf, src=ANY_SOURCE, tag=0, *, timeout=None):
        """Receive the next message with ``tag`` from ``src`` (default: any rank) into ``buf``;
        returns the source rank. Sizes must match the send."""
        return self._p2p.recv(_byte_view(buf, True), int(src), int(tag), self._t(timeout))

    def isend(self, buf, dst, tag=0, *, timeout=None) -> "Work":
        """Non-blocking send (completes as soon as the bytes are handed over)."""
        self.send(buf, dst, tag, timeout=timeout)
        w = Work("isend", None, None, buf)
        w._event.set()
        return w

    def irecv(self, buf, src=ANY_SOURCE, tag=0, *, timeout=None) -> "Work":
        """Non-blocking receive: the Work's wait() delivers the message into ``buf``."""
        w = Work("irecv", None, None, buf)
        p2p, t = self._p2p, self._t(timeout)
        view = _byte_view(buf, True)

        def deliver():
            try:
                p2p.recv(view, int(src), int(tag), t)
            except BaseException as e:        # noqa: BLE001 - handed to the waiter
                w._exc = e
            w._event.set()
        threading.Thread(target=deliver, name="hetccl-irecv", daemon=True).start()
        return w

    def barrier(self, *, timeout=None, algorithm=None, async_op=False):
        """Return once every rank has entered the barrier (dissemination algorithm)."""
        return self._route(self._parse("barrier", None, timeout=timeout, algorithm=algorithm,
                                       async_op=async_op))

    # ------------------------------------------------------------------ sub-communicators

    def split(self, color, key=None, *, timeout=None, bridges=None):
        """A new communicator of the ranks that pass the same ``color`` (ordered by ``key``, then
        rank); ``color=None`` (or negative) joins none and returns None. Collective over this
        communicator. The child has its own links, so parent and child may be used concurrently.
        ``bridges``: as for ``hetccl.init`` (a dict is keyed by this communicator's ranks); default:
        this rank's own request."""
        t = self._t(timeout)
        c = -1 if color is None else int(color)
        mine = np.array([c, self.rank if key is None else int(key)], dtype=np.int64)
        both = self.allgather(mine, timeout=t).reshape(self.size, 2)
        self._children += 1
        if c < 0:
            return None
        group = sorted((int(both[r, 1]), r) for r in range(self.size) if both[r, 0] == c)
        members = [r for _, r in group]
        return _connect(self._info.replace(rank=members.index(self.rank), size=len(members)),
                        self._store, None, self._job_id, f"{self._comm_id}.{self._children}c{c}", t,
                        self._transports, parent=self,
                        bridges=self._bridge_request if bridges is None else _formation.requested(bridges, self.rank))

    def dup(self, *, timeout=None):
        """A new communicator with the same ranks and its own links (collective)."""
        return self.split(0, self.rank, timeout=timeout)

    # ------------------------------------------------------------------ introspection

    def describe(self) -> str:
        """Who is where and which transport links each pair of ranks."""
        hosts = {}
        for c in self._cards:
            hosts.setdefault(c["host"], []).append(c["rank"])
        lines = [f"hetccl communicator: {self.size} rank(s) on {len(hosts)} host(s)"]
        for h, ranks in hosts.items():
            lines.append(f"  host {h}: ranks {ranks}")
        if self._islands is not None:
            lines.append("islands: " + _formation.describe(self._islands.islands))
        lines.append("transport per pair:")
        lines.append(format_matrix(self._matrix))
        used = {x for row in self._matrix for x in row}
        facts = {"direct_min": self._direct_min, "single_copy": dict(self._tuner.model.single_copy),
                 "symmetric": self._sym.shared, "register_shares": self._sym.sharing_heap() is not None}
        for t in _transports.rows():
            if t.name in used:
                lines += t.describe_links(self._cards, facts)
        return "\n".join(lines)

    @property
    def context(self):
        """This communicator as hetccl's own modules see it (hetccl/context.py): not part of the
        user API, but the one door the planners, islands, recovery, the torch backend and the
        tools go through."""
        return self._ctx

    def transport(self, peer: int) -> str:
        """The transport linking this rank and ``peer`` ('self', 'shm', 'tcp')."""
        if not isinstance(peer, int) or not 0 <= peer < self.size:
            raise InvalidUsage(f"peer {peer!r} is not a rank of this communicator (0..{self.size - 1})")
        return self._matrix[self.rank][peer]

    def explain(self, collective: str, nbytes: int) -> str:
        """The cost table and choice of the tuner for one call shape."""
        if not registry.for_collective(collective):
            known = sorted({a.collective for a in registry.ALGORITHMS})
            raise InvalidUsage(f"unknown collective {collective!r}; known: {', '.join(known)}")
        text = _explain(self._tuner, self._plan, self._islands, collective, nbytes)
        if collective in _PLAIN_SINGLE_COPY and self._tuner.model.single_copy:
            rows = dict(self._tuner.model.single_copy)[collective]
            where = ", ".join(f"{n}:{'single' if won else 'fifo'}" for n, won in rows)
            for key, order_rows in self._tuner.model.single_copy:   # read orders other than arrival
                if key.startswith(f"{collective}:") and any(won for _, won in order_rows):
                    where += f"; read by {key.split(':')[1]} at " + ", ".join(
                        str(n) for n, won in order_rows if won)
            if (self._plan is None and self._islands is None and collective not in self._tuner.forced
                    and self._tuner.single_copy(collective, int(nbytes))):
                text = (f"plain buffers: single copy by cross-memory attach, measured faster at the "
                        f"nearest size ({where}):\n  -> single_copy\nthe FIFO algorithms it replaces:\n"
                        + text)
            else:
                text += f"\nsingle copy by cross-memory attach: not taken at this size (measured {where})"
        return text + "\n" + self._sym.explain(collective, int(nbytes))

    # ------------------------------------------------------------------ recovery (recovery/)

    def revoke(self):
        """Give up on this communicator everywhere: every rank's pending and later operations on it
        raise CommRevoked, promptly. Local and non-blocking; the notice is forwarded by every rank
        that gets it, so it reaches all live ranks even if this one dies right after. Typically
        followed by ``shrink()``. A revoked communicator can still ``agree``, ``shrink``, ``close``."""
        self._ft.revoke()

    def agree(self, flag=True, *, timeout=None) -> bool:
        """Fault-tolerant AND of ``flag`` over the live ranks (like ULFM's MPI_Comm_agree).

        Collective: every live rank calls it (in the same order as the other agree/shrink calls);
        it completes while ranks fail, the coordinating one included, and every rank that returns
        returns the same value: the AND of the flags of the ranks it counts as live, and those ranks
        agree on who failed (``failed_ranks()`` includes them afterwards). A rank whose process
        dies, whose host goes away, or that stays silent for HETCCL_PEER_TIMEOUT is counted failed
        (and excluded: if it wakes up, its calls raise). Works on a revoked or failed communicator.
        Raises HetcclTimeout after ``timeout`` (default: the communicator's) if a live rank never
        calls in (this rank then leaves the communicator), CommAborted if this rank was excluded."""
        return bool(self._ft.agree(bool(flag), self._t(timeout))["flag"])

    def shrink(self, *, timeout=None) -> "Communicator":
        """A new communicator of the live ranks, after a failure: collective over the survivors.

        Revokes this communicator (if not yet), agrees on which ranks failed (every survivor gets
        the same set, even if more ranks die meanwhile), and connects the survivors in their old
        order as ranks 0..k-1 (``parent_ranks`` maps them back), around a store served by the lowest
        survivor: rank 0 (the old store's host) may be among the dead. A death during the shrink
        makes it start over within ``timeout`` (default: the communicator's). The result is a
        root communicator like ``init()``'s: split/dup/close work, vendor islands are formed again
        from the survivors. This communicator stays revoked; ``close()`` it."""
        return _shrink(self._ctx, self._t(timeout))

    def flight_record(self, last=0) -> list:
        """This rank's record of its last collective calls on this communicator (``last`` newest,
        default all that are kept: 256), oldest first: dicts with ``seq`` (1, 2, ... the same
        call has the same number on every rank), ``coll``, ``state`` (queued, running, done,
        failed), ``bytes``, ``count``, ``dtype``, ``op``, ``root``, ``algo``, ``error`` and seconds
        ago (``issued_ago``, ``started_ago``, ``ended_ago``). docs/reliability.md, "Hung ranks"."""
        return _flight_entries(self._flight, int(last))

    def failed_ranks(self) -> list:
        """Ranks of this communicator known to have failed here: processes that died or whose host
        went away, ranks fenced for silence, and every rank an agree/shrink counted failed."""
        return sorted(self._ft.failed())

    def _control_event(self, event, rank, why):
        """The control plane's report (from its thread, or the caller of revoke()): a member
        failed, the communicator was revoked, or this rank was excluded from it. Running and later
        operations then fail at once: PeerLostError naming the failed rank, or CommRevoked."""
        if self._closed or event not in (FAILED, REVOKED, EXCLUDED):
            return
        log.info("rank %d: %s", self.rank, why)
        if event == FAILED:
            self._interrupt(_eng.PEER_LOST, rank)
        else:
            self._interrupt(_eng.REVOKED)

    # ------------------------------------------------------------------ failure and shutdown

    def _failed(self, e, what):
        """An error during communication: abort so every other rank raises too; returns the
        exception to raise. The first rank to fail posts its reason in the store; ranks that then
        see only a closed connection report that reason (and its error class) instead.

        After an interrupt by abort, close or revoke (``_interrupt``) the interrupt's own error is
        returned as it is: the reason is known here, and the links are close()'s to close, not this
        call's. A peer the control plane declared lost is explained like a closed connection (the
        first failure's reason asked for; the links left to close()), and the error names the
        failed ranks (_name_lost). A composed call that failed on a sub-communicator (this engine
        untouched) left this communicator's ranks at different points of it: it is aborted too, so
        that none of them waits for the others."""
        if self._explained is not None:        # reported already: later calls are aborted ones
            return self._dead_error(what)
        if isinstance(e, HetcclTimeout) and self._engine.interruption is None:
            # who it waited for, asked before the abort; a broken engine's reason is posted while
            # the peers answer (the store's host may be the stalled rank: the two waits overlap)
            first = e
            post = (lambda: self._post_reason(self._reason(first))) if self._engine.is_broken else None
            e = _flight.explain_timeout(self._ctx, e, meanwhile=post)
        i = self._engine.interruption
        if i is not None and i[0] != _eng.PEER_LOST:
            return e if isinstance(e, (CommAborted, PeerLostError)) else self._life.error(what)
        if i is not None and not isinstance(e, PeerLostError):
            e = self._life.error(what)
        elif i is None and not self._engine.is_broken:
            err = self._name_lost(e, what)
            if isinstance(e, (CommAborted, PeerLostError, HetcclTimeout)):
                self._abort()
            return err
        elif i is None and isinstance(e, CommAborted):
            return self._name_lost(e, what)    # nothing new to post
        try:
            return self._explain_failure(e, what, close=i is None)
        finally:
            self._linger()

    def _dead_error(self, what):
        """What a call on this dead communicator raises: CommAborted once a failure was explained
        here (the first error said why), else the interrupt's error, naming the failed ranks."""
        if self._explained is not None:
            return CommAborted(f"{what} on rank {self.rank}: this communicator was aborted after an "
                               f"earlier error ({self._explained}); shrink() it or create a new one")
        return self._name_lost(self._life.error(what), what)

    def _name_lost(self, e, what, wait=0.0):
        """When the control plane knows that ranks of this communicator failed, the error names
        them (a PeerLostError, ``peer`` the lowest), whatever the operation saw: a closed link, an
        interrupt, or a composed algorithm's sub-communicator failing in its own terms. Not for a
        revoked communicator, a usage error, or an abort/close of this rank's own. ``wait``: how
        long to give the plane to notice what a data link noticed first."""
        i = self._engine.interruption
        if isinstance(e, (CommRevoked, InvalidUsage)) or (i is not None and i[0] != _eng.PEER_LOST):
            return e
        failed = self._ft.failed()
        deadline = time.monotonic() + wait
        while not failed and time.monotonic() < deadline:
            time.sleep(0.05)
            failed = self._ft.failed()
        if not failed:
            return e
        err = PeerLostError(f"{what} failed on rank {self.rank}: " + "; ".join(failed.values()) +
                            "; this communicator cannot be used any more (shrink() makes one of "
                            "the live ranks)")
        err.peer = min(failed)
        err.__cause__ = e
        return err

    def _linger(self, wait=True):
        """Count this rank as failed; the rank serving the store then keeps its process alive
        (<= LINGER_S, unless not `wait`) until every rank that has not died has looked up the first
        failure's reason, so exiting at once does not hide it from them. The wait runs on a
        non-daemon thread: the error is raised at once (a stalled rank, which never looks, would
        otherwise delay the store host's raise by LINGER_S), and only the interpreter's exit waits.
        Skipped once the store has stopped answering (its rank is probably the one that died)."""
        if not self._store_ok:
            return
        try:
            seen = self._store.add(f"{self._comm_id}/failed", 1, timeout=1.0)
        except Exception:
            self._store_ok = False
            return
        if wait and self._server is not None and seen < self.size - len(self._ft.failed()):
            threading.Thread(target=self._linger_wait, name="hetccl-linger", daemon=False).start()

    def _linger_wait(self):
        deadline = time.monotonic() + LINGER_S
        try:
            while not self._closed and time.monotonic() < deadline:
                seen = self._store.add(f"{self._comm_id}/failed", 0, timeout=1.0)
                if seen >= self.size - len(self._ft.failed()):
                    return
                time.sleep(0.05)
        except Exception:
            self._store_ok = False

    def _reason(self, e):
        return f"{type(e).__name__}|rank {self.rank}: {e}"

    def _post_reason(self, text, amend=False):
        """Post why this communicator failed, for the peers that see only a closed link. The
        first rank to post wins; with ``amend`` it posts again with more to say (a timeout's hang
        report, once the peers answered; they read it after this rank's abort). Every store call is
        bounded (1 s), also when another thread holds the store connection, and none is made once
        the store stopped answering."""
        if not self._store_ok:
            return
        key = f"{self._comm_id}/abort"
        try:
            if (amend and self._posted) or self._store.add(f"{key}/posted", 1, timeout=1.0) == 1:
                self._posted = True
                self._store.set(key, text.encode(), timeout=1.0)
        except Exception:
            self._store_ok = False

    def _own_failure(self, err):
        """A failure of this rank's own outside the engine (a vendor bridge's error): post it as
        the communicator's first failure, unless it only follows one (a peer known to have failed,
        an interrupt), whose reason the peers then report; then abort without posting the abort."""
        if not self._ft.failed() and self._engine.interruption is None:
            self._post_reason(self._reason(err))
        self._abort()

    def _peer_failed(self) -> bool:
        """A rank posted why it failed or aborted (_post_reason): it will not come to close(),
        so waiting for it there would only wait out the timeout. Bounded, never raises."""
        if not self._store_ok:
            return False
        try:
            return self._store.add(f"{self._comm_id}/abort/posted", 0, timeout=1.0) > 0
        except Exception:
            self._store_ok = False
            return False

    def _explain_failure(self, e, what, close=True):
        key = f"{self._comm_id}/abort"
        if not isinstance(e, PeerLostError):   # the first failure: post why, then close the links
            self._post_reason(self._reason(e), amend=True)
            self._abort()
            return e
        if close:
            self._abort()                      # a peer went away: pass it on at once, then ask why
        if not self._store_ok:
            return self._name_lost(e, what, wait=1.0)
        died = bool(self._ft.failed())         # a process died: a reason, if any, is posted already
        try:
            reason = bytes(self._store.get(key, timeout=0.05 if died else 1.0)).decode()
        except Exception:
            self._store_ok = self._store_ok and died
            return self._name_lost(e, what, wait=1.0)
        cls_name, _, msg = reason.partition("|")
        cls = {"InvalidUsage": InvalidUsage, "PeerProtocolError": PeerProtocolError}.get(cls_name, PeerLostError)
        err = cls(f"{what} failed because another rank failed first: {msg}")
        self._explained = f"{cls_name}: {msg}"
        err.__cause__ = e
        return err

    def _interrupt(self, reason=_eng.ABORTED, peer=-1):
        """Make this rank's running and later operations fail at once, without closing anything:
        ``_engine.ABORTED`` -> CommAborted, ``REVOKED`` -> CommRevoked, ``PEER_LOST`` (``peer``: the
        lost rank) -> PeerLostError. Any thread, any number of times (the first reason wins). The
        local hook of the control plane (revoke, a peer declared dead); abort() starts with it.
        Sub-communicators of composed algorithms are interrupted too (a lost peer's number means
        nothing there: they are aborted or revoked)."""
        if self._island_routes:               # first: the woken caller may look right away
            self._island_routes.clear()       # (a cached route also checks dead_at first)
        self._engine.interrupt(reason, peer)
        if self._life.dead_at is None:
            self._life.dead_at = time.monotonic()
        self._p2p.interrupt(self._life.error)
        sub = _eng.REVOKED if reason == _eng.REVOKED else _eng.ABORTED
        for part in (self._plan, self._islands):
            if part is not None:
                part.interrupt(sub)
        with self._cv:                         # queued operations will not start: fail them now
            cancelled = [w for w in self._queue if w is not None]
            self._queue.clear()
            if self._worker is not None:
                self._queue.append(None)       # let the progress thread end after its current one
            self._pending -= len(cancelled)
            self._cv.notify()
        for w in cancelled:
            w._finish(self._life.error(w._what))

    def abort(self):
        """Stop now, from any thread, at any moment (idempotent; may race close()): running and
        later operations on this rank raise CommAborted within milliseconds, pending non-blocking
        ones too, and every link is closed once no schedule can touch it any more, so peers blocked
        on this rank raise PeerLostError (saying that this rank aborted). ``agree`` and ``shrink``
        still work afterwards (they use the control plane, not the links)."""
        if self._abort():
            self._post_reason(f"CommAborted|rank {self.rank} called comm.abort() (the application "
                              f"or its watchdog gave up on this communicator)")
            self._linger(wait=False)

    def _abort(self) -> bool:
        """abort() without telling the peers why; True if this call closed the links."""
        self._interrupt(_eng.ABORTED)
        with self._teardown:
            if self._torn_down:
                return False
            self._torn_down = True
        for part, keep in ((self._plan, {}), (self._islands, {"keep": True})):
            if part is not None:                # (a bridge that can shrink waits for shrink())
                try:
                    part.abort(**keep)
                except Exception as e:          # noqa: BLE001 - go on closing the rest
                    log.warning("abort: %s", e)
        socks, self._socks = self._socks, {}
        self._engine.close(keep=list(socks.values()))   # sockets closed after the schedules left
        self._p2p.close()
        return True

    def close(self, timeout=30.0):
        """Leave the communicator: finish pending non-blocking work and wait for every rank
        (together bounded by ``timeout``), then free links and the store. Safe from any thread and
        against a concurrent abort(); work that did not finish in time raises CommAborted."""
        with self._teardown:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        if self._worker is not None and self._worker is not threading.current_thread():
            with self._cv:
                self._queue.append(None)
                self._cv.notify()
            self._worker.join(max(0.0, deadline - time.monotonic()))
        healthy = (not self._engine.is_broken and self._life.dead_at is None
                   and not self._ft.failed() and not self._peer_failed())
        self._life.dead_at = self._life.dead_at or time.monotonic()   # nothing new starts now
        if healthy and self._plan is not None:     # sub-communicators of composed algorithms (collective)
            self._plan.close(max(1.0, deadline - time.monotonic()))
        if healthy and self._islands is not None:  # bridges and island sub-communicators (collective)
            self._islands.close(max(1.0, deadline - time.monotonic()))
        try:
            if healthy:
                self._store.barrier(f"{self._comm_id}/close", self.size,
                                    timeout=max(1.0, deadline - time.monotonic()))
        except Exception as e:
            log.info("close: not every rank reached close (%s); closing anyway", e)
        self._abort()
        if self._islands is not None:
            self._islands.release()
        self._sym.close()
        self._registry.clear()
        self._ft.detach()
        _flight.detach(self._ctx)
        if self._parent is not None:
            return                             # the store belongs to the root communicator
        try:
            self._store.close()
        finally:
            if self._server is not None:       # rank 0 serves the store: let the others leave first
                self._server.close(wait_for_clients=2.0 if self._engine.is_broken else timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self.abort()
            with self._teardown:
                self._closed = True

    def __repr__(self):
        return f"<hetccl.Communicator rank {self.rank} of {self.size}>"


def _weak_call(ref):
    """A callable that calls the method *ref* (a WeakMethod) while its object lives: the latency
    path's callbacks must not keep the communicator alive (a cycle the garbage collector would
    have to find, keeping its engine and segments until then)."""
    def call(*args):
        method = ref()
        if method is not None:
            method(*args)
    return call


def init(rank=None, size=None, *, timeout=None, transports=None, bridges=None) -> Communicator:
    """Join the job: find rank/size from the launcher, rendezvous, and connect every pair.

    rank/size: explicit values (else from hetccl run, torchrun, Open MPI, MPICH or Slurm variables).
    timeout: seconds any wait may take (default HETCCL_TIMEOUT, else 600).
    transports: like HETCCL_TRANSPORTS ('tcp', 'shm,tcp', '^shm'), to force or exclude transports.
    bridges: the native library running this rank's island ('mpi', 'nccl', ..., 'none', 'auto'), or
      a dict {world rank: kind} every rank may pass alike (bridges/formation.py; default: the topology
      file's 'bridge' field, else the device vendor's library).
    """

    t = config.timeout(timeout)
    info = detect(rank, size)
    config.setup_logging(info.rank)
    conn = connect_store(info, timeout=t)
    spec = transports if transports is not None else os.environ.get("HETCCL_TRANSPORTS")
    try:
        comm = _connect(conn.info, conn.client, conn.server, conn.job_id, "w", t, spec,
                        bridges=_formation.requested(bridges, conn.info.rank))
    except BaseException as e:
        err = conn.abort(e, grace=min(t, 30.0))   # the other ranks raise now, not at their timeout
        conn.close(timeout=min(t, 10.0))      # a stalled rank's client must not hold init past t
        if err is not e:                      # a peer closed on us: its own failure says why
            raise err from e
        raise
    log.info("rank %d/%d up:\n%s", info.rank, info.size, comm.describe())
    return comm


def _connect(info, store, server, job_id, comm_id, t, spec, parent=None, bridges=None,
             cancel=None, shrunk_from=None) -> Communicator:
    """Build the links of one communicator (the world, a split of it, or a shrink's survivors) and
    wrap them. ``cancel`` (a threading.Event with a ``reason``) abandons the mesh set-up once set;
    ``shrunk_from``: (old communicator, survivors' old ranks) of a shrink (islands may shrink)."""

    engine = _eng.Engine(info.rank, info.size)
    route = getattr(store, "local_address", None)      # this host's address towards the store
    p2p = P2PChannel(info.rank, info.size, info.secret, comm_id, t, host=listen_address(route)[1])
    try:
        bridge = _formation.card_field(bridges, card_entry(comm_id, info.rank, info.size))
        cards, matrix, socks = connect_mesh(engine, store, info.rank, info.size, info.secret, job_id,
                                            comm_id, t, spec, extra={"p2p_port": p2p.port,
                                                                     "bridge": bridge,
                                                                     **_recovery.card_fields(info.secret, route)},
                                            cancel=cancel)
    except BaseException:
        engine.close()
        p2p.close()
        raise
    if crowded(cards, info.rank) or (parent is not None and parent._engine.spin_s == 0):
        engine.spin_s = 0.0       # oversubscribed: waits yield the core at once, and sleep at once
        engine.handover_bytes = HANDOVER_BYTES    # in steps that move this much (progress.pyx)
        if parent is None:        # unbound ranks: consecutive ranks share a CPU (cards.block_cpu)
            bind_block(cards, info.rank)
    return Communicator(engine=engine, store=store, server=server, info=info, cards=cards,
                        matrix=matrix, socks=socks, comm_id=comm_id, timeout=t, p2p=p2p,
                        job_id=job_id, transports=spec, parent=parent, bridge_request=bridges,
                        shrunk_from=shrunk_from)
