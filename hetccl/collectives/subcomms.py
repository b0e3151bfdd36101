"""The sub-communicators a planner (hierarchical.py, islands.py) splits off its communicator.

Why one owner for them: an abort or interrupt of the communicator must reach every sub-communicator
its composed algorithms run on, also one still being created when the abort came (the split is
collective and takes a while; the parent's abort cannot see a child before the split returns).
Children are registered here as soon as they exist, and a child made after the abort is aborted at
once and the call raises, so a rank never goes on composing on sub-communicators its peers left.
"""
import threading
import time

_ABORT = "abort"


class SubComms:
    def __init__(self, ctx):
        self.ctx = ctx
        self.building = False             # inside make(): the split's own calls are not composed
        self._made = []
        self._lock = threading.Lock()
        self._dead = None                 # None, an interrupt reason, or _ABORT

    def make(self, color, key, bridges=None):
        """comm.split(color, key, bridges=bridges), owned here; None where the split gives this
        rank none."""
        self.building = True
        comm = self.ctx.comm
        last = comm.last_algorithm            # split's own allgather must not show as the call's
        try:
            child = comm.split(color, key, bridges=bridges)
        finally:
            self.building = False
            comm.last_algorithm = last
        if child is None:
            return None
        with self._lock:
            self._made.append(child)
            dead = self._dead
        if dead is not None:
            child.abort() if dead == _ABORT else child.context.interrupt(dead)
            raise self.ctx.life.error("split")
        return child

    def _mark(self, dead):
        with self._lock:
            if self._dead != _ABORT:
                self._dead = dead
            return list(self._made)

    def interrupt(self, reason):
        """Interrupt every child (made or still being made): see Context.interrupt."""
        for c in self._mark(reason):
            c.context.interrupt(reason)

    def abort(self):
        for c in self._mark(_ABORT):
            c.abort()

    def close(self, timeout=30.0):
        """Close every child (collective on each, together within `timeout` s, and at least 1 s
        each); later ones are made anew."""
        end = time.monotonic() + timeout
        with self._lock:
            made, self._made = self._made, []
        for c in made:
            c.close(timeout=max(1.0, end - time.monotonic()))
