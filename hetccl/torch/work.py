"""The torch ``Work`` handle of one hetccl call, and the lane that runs calls in issue order.

Why a ``dist.Work`` subclass: C++ callers (the DDP reducer, functional collectives) reach its
``wait`` and ``get_future`` through torch's trampoline, so errors raised by hetccl surface there
with their own type. Two facts of torch 2.13 shape it (see the notes on the torch backend):

* a future's value must be the list of result tensors: DDP uses it as the reduced bucket;
* ``Future.set_exception`` does not fail the C++ future, so a failure is stored as a value and the
  future handed out is ``raw.then(_unwrap)``, whose callback re-raises it;
* C++ calls ``wait(timedelta(0))`` to mean "no timeout".
"""
from __future__ import annotations

import collections
import threading
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import CommAborted, HetcclTimeout, InvalidUsage

ABORT_GRACE = 1.0     # s the running operation may take to stop after abort() before its Work fails


class _Failure:
    """An exception travelling as a future's value (see the module docstring)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


def _unwrap(fut):
    value = fut.value()
    if isinstance(value, _Failure):
        raise value.exc
    return value


class HetcclWork(dist.Work):
    """Completion of one operation: ``wait()`` re-raises its error; the future's value is the list
    of output tensors."""

    def __init__(self, what: str, outputs: list):
        super().__init__()
        self._what = what
        self._outputs = outputs
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._exc: BaseException | None = None
        self._raw = None            # torch Future, made on the first get_future()
        self._future = None
        self.source_rank = -1       # recv from any source: who sent it

    # -- completion (any thread, once: by the operation, or cancelled by abort/shutdown) ---------
    def _complete(self, exc: BaseException | None = None) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._exc = exc
            self._event.set()
            raw = self._raw
        if raw is not None:
            raw.set_result(self._outputs if exc is None else _Failure(exc))

    # -- the torch Work interface ----------------------------------------------------------------
    def wait(self, timeout: timedelta | None = None) -> bool:
        limit = None
        if timeout is not None:
            seconds = timeout.total_seconds() if hasattr(timeout, "total_seconds") else float(timeout)
            limit = seconds if seconds > 0 else None       # timedelta(0) = no timeout (C++)
        if not self._event.is_set() and not self._event.wait(limit):
            raise HetcclTimeout(f"hetccl {self._what} did not complete within {limit:g} s "
                                f"(Work.wait timeout); the operation keeps running until the "
                                f"process group's timeout")
        if self._exc is not None:
            raise self._exc
        return True

    def get_future(self) -> torch.futures.Future:
        with self._lock:
            if self._future is None:
                self._raw = torch.futures.Future()
                self._future = self._raw.then(_unwrap)
                if self._event.is_set():
                    self._raw.set_result(self._outputs if self._exc is None
                                         else _Failure(self._exc))
            return self._future

    def is_completed(self) -> bool:
        return self._event.is_set()

    def is_success(self) -> bool:
        return self._event.is_set() and self._exc is None

    def exception(self):
        return self._exc

    def result(self) -> list:
        self.wait()
        return self._outputs

    def _source_rank(self) -> int:
        return self.source_rank

    def __repr__(self):
        state = "done" if self._event.is_set() else "pending"
        return f"<HetcclWork {self._what} {state}>"


class Lane:
    """Runs operations one at a time, in issue order, on one daemon thread.

    A blocking call made while the lane is idle runs inline in the calling thread (no thread
    hand-off on the latency path); anything issued while earlier work is pending queues behind it,
    so every rank sees its communicator's calls in the order the program issued them.

    ``linger=False``: the thread ends as soon as the queue is empty and a new one starts with the
    next operation (for the many short-lived lanes of point-to-point receives)."""

    def __init__(self, name: str, linger: bool = True):
        self._name = name
        self._linger = linger
        self._queue: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._pending = 0
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._current: HetcclWork | None = None      # the operation the thread runs now

    def idle(self) -> bool:
        return self._pending == 0

    def stopped(self) -> bool:
        """True once the group was shut down or aborted (nothing more can be issued)."""
        return self._stopped

    def submit(self, work: HetcclWork, fn) -> HetcclWork:
        """Queue ``fn`` (no arguments); ``work`` completes when it has run."""
        with self._cv:
            if self._stopped:
                raise InvalidUsage(f"the hetccl process group is shut down; {work._what} was "
                                   f"issued after destroy_process_group()")
            self._pending += 1
            self._queue.append((work, fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cv.notify()
        return work

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    if not self._linger:
                        self._thread = None
                        return
                    self._cv.wait()
                item = self._queue.popleft()
            if item is None:
                return
            work, fn = item
            self._current = work
            exc = None
            try:
                fn()
            except BaseException as e:        # noqa: BLE001 - handed to the waiter
                exc = e
            with self._cv:
                self._pending -= 1
                self._current = None
            work._complete(exc)

    def cancel(self, why: str) -> None:
        """Stop at once (abort): queued operations fail with CommAborted now, the running one when
        it stops (the communicator's abort makes it stop) or ABORT_GRACE s later; no join."""
        with self._cv:
            self._stopped = True
            queued = [item for item in self._queue if item is not None]
            self._queue.clear()
            self._pending -= len(queued)
            current = self._current
            if self._thread is not None:
                self._queue.append(None)
            self._cv.notify()
        for work, _ in queued:
            work._complete(CommAborted(f"hetccl {work._what} was cancelled: {why}"))
        if current is not None:
            t = threading.Timer(ABORT_GRACE, current._complete,
                                (CommAborted(f"hetccl {current._what} was cancelled: {why}"),))
            t.daemon = True
            t.start()

    def stop(self, timeout: float) -> None:
        """Let queued work finish (bounded by ``timeout``), then end the thread."""
        with self._cv:
            self._stopped = True
            thread = self._thread
            if thread is None:
                return
            self._queue.append(None)
            self._cv.notify()
        thread.join(timeout)
