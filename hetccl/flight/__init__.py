"""Flight records: what each rank's collectives were doing, to say who a hang waits for.

Every communicator keeps a ring of its last collective calls at this rank (``_native/flight.pyx``:
sequence number, collective, size, algorithm, state, timestamps), written natively on the latency
path and by comm.py's routes at no measurable cost. Around it:

* ``record``    entries as plain data (JSON), in words;
* ``exchange``  the control plane's request/response for a peer's record (bounded, checked);
* ``report``    the hang report: the ranks' records compared at the stuck call's number;
* ``watchdog``  HETCCL_WATCHDOG_S (the control plane's thread logs a report for a call stuck past
                it) and the report carried by a timed-out call's HetcclTimeout;
* ``dump``      files, on request and on SIGUSR1 from a live process;
* ``doctor``    ``hetccl doctor --flight FILE|DIR``: dumped records side by side, the laggard named.

The communicator calls ``attach``/``detach``; docs/reliability.md describes the whole.
"""
from __future__ import annotations

import itertools
import logging
import threading
import weakref

_live = weakref.WeakKeyDictionary()     # communicator -> creation order (what a dump holds)
_order = itertools.count()
_lock = threading.Lock()                # a dump's thread reads _live while communicators come and go


def attach(comm) -> None:
    """Register ``comm``'s record: the control plane answers for it, the watchdog watches it,
    dumps hold it (and SIGUSR1 dumps, once per process, if the program has not claimed it)."""
    from .dump import install_signal
    comm._ft.flight = comm._flight
    with _lock:
        _live[comm] = next(_order)
    try:
        install_signal(comm._ft.plane, live)
    except OSError as e:                # no pipe (fd limit): no dump on signal, nothing else lost
        logging.getLogger("hetccl").warning("flight record: no dump on SIGUSR1 (%s)", e)


def detach(comm) -> None:
    with _lock:
        _live.pop(comm, None)


def live() -> list:
    """This process's live communicators, oldest first."""
    with _lock:
        pairs = list(_live.items())
    return [c for c, _ in sorted(pairs, key=lambda kv: kv[1])]


def dump(path: str | None = None) -> str:
    """Write the flight record of every live communicator of this process (see dump.py); the
    file's path."""
    from .dump import write
    return write(live(), path)


def explain_timeout(comm, e, meanwhile=None):
    """``e`` (a HetcclTimeout of ``comm``) with the hang report (watchdog.py); ``meanwhile()``
    runs while the peers answer."""
    from .watchdog import explain_timeout
    return explain_timeout(comm, e, meanwhile)
