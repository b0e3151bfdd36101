"""A communicator as hetccl's own modules see it: the Context.

The Communicator (comm.py) is the user's object; its fields are its own. Everything else in hetccl
that works for a communicator (the planners and islands of collectives/, symmetric memory, recovery,
the torch backend, tools) gets this explicit Context instead, made by the Communicator at creation:
what the communicator is (rank, size, engine, cards, transport matrix, store, ids, timeout, its
flight record), what
it decided (tuner, topology planner, islands) and the few things those modules may ask of it:

* ``decide(collective, nbytes, algorithm, code, op)``: the one choice of algorithm (and island form)
  for a call shape (collectives/decide.py);
* ``run(what, fn, args, out, async_op)``: run an operation now, or queue it behind pending
  non-blocking ones, with the communicator's failure handling;
* ``done(what, out)``: a completed Work; ``interrupt(reason)``; ``control_event(event, rank, why)``
  (the control plane's report); ``own_failure(err)``: this rank failed outside the engine (a
  vendor bridge): post why, abort; ``connect``: how a communicator is built (recovery's shrink).

Nothing here imports the rest of hetccl, so every layer may take a Context without an import.
"""
import weakref

from . import config


class Context:
    """Made by the Communicator (comm.py) at creation; the planners and islands are set as they are
    built. It holds the communicator and its operations weakly: a Context never keeps a dropped
    communicator alive (the control plane keeps Contexts)."""

    FIELDS = ("rank", "size", "engine", "store", "server", "info", "cards", "matrix", "comm_id",
              "job_id", "timeout", "transports", "bridges", "tuner", "plan", "islands", "ft", "life",
              "flight", "done", "connect")
    __slots__ = FIELDS + ("_comm", "_decide", "_run", "_interrupt", "_control_event", "_own_failure",
                          "__weakref__")

    def __init__(self, comm, *, run, interrupt, control_event, own_failure, **fields):
        self._comm = weakref.ref(comm)
        self._run = weakref.WeakMethod(run)
        self._interrupt = weakref.WeakMethod(interrupt)
        self._control_event = weakref.WeakMethod(control_event)
        self._own_failure = weakref.WeakMethod(own_failure)
        for k in self.FIELDS:
            setattr(self, k, fields.get(k))
        self._decide = fields["decide"]

    @property
    def comm(self):
        """The Communicator itself (its public API: split, allgather, ...), or None once dropped."""
        return self._comm()

    def run(self, what, fn, args, out, async_op):
        """Run ``fn(*args)`` as operation ``what`` of the communicator: now, or queued behind its
        pending non-blocking operations (a Work then); its errors go through the communicator's
        failure handling."""
        return self._run()(what, fn, args, out, async_op)

    def interrupt(self, reason, peer=-1):
        """Make the communicator's running and later operations fail at once (engine reason)."""
        f = self._interrupt()
        if f is not None:
            f(reason, peer)

    def control_event(self, event, rank, why):
        """The control plane's report of a failed member, a revoke or an exclusion."""
        f = self._control_event()
        if f is not None:
            f(event, rank, why)

    def own_failure(self, err):
        """This rank failed outside the engine (``err``, a vendor bridge's error): post it as the
        communicator's first failure unless it follows one, then abort the communicator."""
        f = self._own_failure()
        if f is not None:
            f(err)

    def decide(self, collective, nbytes, algorithm=None, code=None, op=None):
        """(Algorithm, island form or None) for one call shape (collectives/decide.py)."""
        return self._decide(self.tuner, self.plan, self.islands, collective, nbytes, algorithm, code, op)

    def t(self, timeout):
        """A call's timeout: the communicator's when None."""
        return self.timeout if timeout is None else config.timeout(timeout)

    @property
    def local_size(self):
        return sum(c["host"] == self.cards[self.rank]["host"] for c in self.cards)
