"""Hang reports: the watchdog's (a collective waiting past HETCCL_WATCHDOG_S) and the timeout's.

The watchdog is no thread of its own: the control plane's thread, which runs anyway and wakes at
least once a second, looks at each communicator's oldest open flight entry (``tick``). Past the
threshold it asks the other ranks for their records (exchange.py) and, once they answered or the
bound passed, logs the report (report.py) on logging.getLogger("hetccl"): once per stuck call.

A call that times out (HetcclTimeout) gathers the same report before the communicator is
aborted (so the peers still describe the hang, not the abort), within TIMEOUT_BOUND, and carries
it in its message and as ``err.flight_report``. The call has waited its whole timeout already and
must raise within 2 s more, so the bound is short, and the caller's own bounded work (posting the
failure's reason in the store, whose host may be the stalled rank) runs while the peers answer
instead of after them.
"""
from __future__ import annotations

import logging
import weakref

from .. import config
from . import exchange, record
from .report import hang_report

log = logging.getLogger("hetccl")

ANSWER_BOUND = 1.5        # s the watchdog waits for the peers' records
TIMEOUT_BOUND = 1.0       # s a timed-out call waits for them (a live peer's plane answers in ms)
WATCH_ENTRIES = 4         # entries asked of each peer by the watchdog
TIMEOUT_ENTRIES = 4

_threshold = None
_reported = weakref.WeakKeyDictionary()     # control handle -> the call last reported


def threshold() -> float:
    global _threshold
    if _threshold is None:
        try:
            _threshold = config.watchdog()
        except Exception as e:                  # noqa: BLE001 - a bad value must not stop the plane
            log.warning("%s; the watchdog is off", e)
            _threshold = 0.0
    return _threshold


def tick(plane, now: float) -> None:
    """The plane's tick (its thread, under its lock)."""
    exchange.expire(plane, now)
    limit = threshold()
    if not limit:
        return
    for h in list(plane._handles.values()):
        f = h.flight
        if f is None or h.closed or h.size < 2:
            continue
        o = f.oldest_open()
        if o is None:
            continue
        seq, t_issue, t_start = o
        if now - (t_start or t_issue) < limit or _reported.get(h) == seq:
            continue
        _reported[h] = seq
        exchange.start(plane, h, WATCH_ENTRIES, ANSWER_BOUND,
                       then=lambda q, h=h, seq=seq: _log(h, seq, q))


def _log(h, seq, q):
    mine = _entry(h.flight, seq)
    if mine is None or mine["state"] not in record.OPEN:
        return                                  # it completed meanwhile
    rep = hang_report(h.rank, h.size, mine, q.answers)
    log.warning("%s\n  (HETCCL_WATCHDOG_S=%g; the call goes on waiting until its timeout)",
                rep.text, threshold())


def _entry(flight, seq):
    return next((e for e in record.entries(flight) if e["seq"] == seq), None)


def explain_timeout(ctx, e, meanwhile=None):
    """A HetcclTimeout of the communicator of Context ``ctx`` carrying the hang report (``e``
    itself if there is nothing to add: one rank, a report already there, the failed call not in the
    record). ``meanwhile()`` runs once the peers were asked, before their answers are awaited
    (always, report or not)."""
    mine = None
    if ctx.size >= 2 and getattr(e, "flight_report", None) is None:
        ents = record.entries(ctx.flight)
        mine = next((x for x in reversed(ents) if x["error"] == type(e).__name__), None) or \
            next((x for x in reversed(ents) if x["state"] in record.OPEN), None)
    if mine is None:
        if meanwhile is not None:
            meanwhile()
        return e
    h = ctx.ft
    plane = h.plane
    with plane.lock:
        q = exchange.start(plane, h, TIMEOUT_ENTRIES, TIMEOUT_BOUND)
    if meanwhile is not None:
        meanwhile()
    exchange.wait(plane, q)
    rep = hang_report(ctx.rank, ctx.size, mine, q.answers)
    log.warning("%s", rep.text)
    err = type(e)(f"{e}\n{rep.text}")
    err.flight_report = rep
    err.__cause__ = e
    return err
