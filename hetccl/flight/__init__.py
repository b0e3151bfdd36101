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
import weakref

_live = weakref.WeakKeyDictionary()     # communicator -> creation order (what a dump holds)
_order = itertools.count()


def attach(comm) -> None:
    """Register ``comm``'s record: the control plane answers for it, the watchdog watches it,
    dumps hold it (and SIGUSR1 dumps, once per process, if the program has not claimed it)."""
    from .dump import install_signal
    comm._ft.flight = comm._flight
    _live[comm] = next(_order)
    install_signal(comm._ft.plane, live)


def detach(comm) -> None:
    _live.pop(comm, None)


def live() -> list:
    """This process's live communicators, oldest first."""
    return [c for c, _ in sorted(list(_live.items()), key=lambda kv: kv[1])]


def dump(path: str | None = None) -> str:
    """Write the flight record of every live communicator of this process (see dump.py); the
    file's path."""
    from .dump import write
    return write(live(), path)


def explain_timeout(comm, e):
    """``e`` (a HetcclTimeout of ``comm``) with the hang report (watchdog.py)."""
    from .watchdog import explain_timeout
    return explain_timeout(comm, e)
