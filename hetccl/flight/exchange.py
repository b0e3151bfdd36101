"""Flight records over the control plane: one request/response pair, bounded and checked.

Why the control plane: a rank stuck in a collective holds its main thread (in a nogil schedule),
and the rank it waits for may be anywhere; the plane's thread answers in both, over the one
authenticated connection per process pair that already exists (recovery/plane.py).

Messages (JSON frames of recovery/wire.py):

    {"t": "flt?", "c": key, "q": id, "r": rank, "n": entries}       request: rank r's newest n entries
    {"t": "flt",  "c": key, "q": id, "r": rank, "seq": s, "entries": [...]}     the record (record.py)
    {"t": "flt!", "c": key, "q": id, "r": rank, "why": text}                   refusal

A request is checked field by field; a malformed one gets a refusal naming the field (and a logged
warning), never a dropped connection: this is diagnostics, and one bad request must not make a
process count as failed. Records that come back are checked the same way (``check_entries``); a
malformed one is reported as such. Replies nobody waits for any more are ignored. At most
MAX_ENTRIES entries travel per answer (a few KiB; frames may hold 1 MiB).

Queries (``start``) live in the plane, keyed by id, and end when every asked rank answered, or at
their deadline (the rest are "silent"); a rank whose process the plane knows dead is answered
"failed" at once. Everything here runs under the plane's lock.
"""
from __future__ import annotations

import itertools
import logging
import time

from ..recovery.wire import ProtocolError, check_int
from . import record

log = logging.getLogger("hetccl.flight")

REQUEST, RECORD, REFUSAL = "flt?", "flt", "flt!"
TYPES = (REQUEST, RECORD, REFUSAL)
MAX_ENTRIES = 64
_TOP = (1 << 53) - 1           # ids and counts stay exact in every JSON reader
_ids = itertools.count(1)


class Query:
    """One round of flight requests to the other ranks of a communicator."""

    __slots__ = ("id", "handle", "pending", "answers", "started", "deadline", "done", "then")

    def __init__(self, handle, bound, then):
        self.id = next(_ids)
        self.handle = handle
        self.pending = set()
        self.answers = {}             # rank -> answer (report.classify's format)
        self.started = time.monotonic()
        self.deadline = self.started + bound
        self.done = False
        self.then = then              # called with the query once done (outside the lock)


def _queries(plane) -> dict:
    return plane.flight_queries


def start(plane, h, n: int, bound: float, then=None) -> Query:
    """Ask every other rank of handle ``h``'s communicator for its newest ``n`` entries; answers
    arrive within ``bound`` seconds or the rank counts as silent. Under the plane's lock."""
    q = Query(h, bound, then)
    failed = h.m.failed
    for r in range(h.size):
        if r == h.rank:
            continue
        if r in failed:
            q.answers[r] = {"kind": "failed", "why": failed[r]}
            continue
        p = plane._peers.get((h.tokens[r], h.fp))
        if p is None or p.state == "dead":
            q.answers[r] = {"kind": "failed", "why": p.why if p is not None else "no control connection"}
            continue
        q.pending.add(r)
        plane.send(h.fp, h.tokens[r], {"t": REQUEST, "c": h.key, "q": q.id, "r": r, "n": int(n)})
    _queries(plane)[q.id] = q
    if not q.pending:
        finish(plane, q)
    else:
        plane._wake()
    return q


def finish(plane, q: Query) -> None:
    """End ``q``: ranks still pending are silent. Under the plane's lock."""
    if q.done:
        return
    waited = time.monotonic() - q.started
    for r in q.pending:
        q.answers[r] = {"kind": "silent", "waited": waited}
    q.pending = set()
    q.done = True
    _queries(plane).pop(q.id, None)
    if q.then is not None:
        plane._after.append(lambda: q.then(q))
    plane.cv.notify_all()


def expire(plane, now: float) -> None:
    """The plane's tick: end queries past their deadline; a rank whose process died meanwhile
    is answered "failed" at once."""
    for q in list(_queries(plane).values()):
        h = q.handle
        for r in list(q.pending):
            p = plane._peers.get((h.tokens[r], h.fp))
            if r in h.m.failed or p is None or p.state == "dead":
                q.answers[r] = {"kind": "failed", "why": h.m.failed.get(r) or (p.why if p else "")}
                q.pending.discard(r)
        if not q.pending or now >= q.deadline:
            finish(plane, q)


def wait(plane, q: Query) -> None:
    """Block (the calling thread, not the plane's) until ``q`` is done or past its deadline."""
    with plane.lock:
        while not q.done:
            left = q.deadline - time.monotonic()
            if left <= 0:
                finish(plane, q)
                break
            plane.cv.wait(min(left, 0.1))


# ------------------------------------------------------------------ incoming (the plane's thread)

def receive(plane, p, m: dict) -> None:
    """A flight message from process ``p``: answer a request, or file a reply."""
    if m["t"] == REQUEST:
        _answer(plane, p, m)
    else:
        _reply(plane, p, m)


def _answer(plane, p, m):
    q, c, r = m.get("q"), m.get("c"), m.get("r")
    ref = {"t": REFUSAL, "c": c if isinstance(c, str) and len(c) <= 64 else None,
           "q": q if type(q) is int and 0 <= q <= _TOP else None,
           "r": r if type(r) is int and 0 <= r <= _TOP else None}
    try:
        check_int(m, "q", 0, _TOP)
        check_int(m, "r", 0, _TOP)
        n = check_int(m, "n", 1, MAX_ENTRIES)
        if ref["c"] is None:
            raise ProtocolError("field 'c' is not a communicator key")
    except ProtocolError as e:
        log.warning("control plane: process %s sent a malformed flight request (%s); refused",
                    p.token[:8], e)
        return plane.send(p.fp, p.token, dict(ref, why=f"malformed flight request: {e}"))
    h = plane._handles.get(c)
    if h is None or h.fp != p.fp:
        why = ("this rank closed the communicator" if c in plane._gone
               else "no such communicator in this process")
        return plane.send(p.fp, p.token, dict(ref, why=why))
    if h.flight is None or r != h.rank:
        return plane.send(p.fp, p.token, dict(ref, why=f"this process is rank {h.rank} of the communicator, not {r}"))
    plane.send(p.fp, p.token, {"t": RECORD, "c": c, "q": q, "r": r, "seq": h.flight.seq,
                               "entries": record.entries(h.flight, n)})


def _reply(plane, p, m):
    q = _queries(plane).get(m.get("q")) if type(m.get("q")) is int else None
    r = m.get("r")
    if q is None or type(r) is not int or r not in q.pending or r not in q.handle.ranks_of(p.token):
        return                                    # late, or nobody asked this process for it
    if m["t"] == REFUSAL:
        answer = {"kind": "refused", "why": str(m.get("why", ""))[:300]}
    else:
        try:
            answer = {"kind": "record", "entries": check_entries(m.get("entries")),
                      "seq": check_int(m, "seq", 0, _TOP)}
        except ProtocolError as e:
            answer = {"kind": "malformed", "why": str(e)[:300]}
    q.answers[r] = answer
    q.pending.discard(r)
    if not q.pending:
        finish(plane, q)


# ------------------------------------------------------------------ checking records

_INT = {"seq": (1, _TOP), "bytes": (0, _TOP), "count": (0, _TOP)}
_STR = ("coll", "algo", "error")
_OPT_STR = ("dtype", "op")
_AGO = ("issued_ago",)
_OPT_AGO = ("started_ago", "ended_ago")


def check_entries(v, limit: int = MAX_ENTRIES) -> list:
    """A list of at most ``limit`` entries (record.py), checked field by field; clean copies,
    oldest first."""
    if not isinstance(v, list) or len(v) > limit:
        raise ProtocolError(f"entries: not a list of at most {limit}")
    out, last = [], 0
    for e in v:
        if not isinstance(e, dict):
            raise ProtocolError("an entry is not an object")
        c = {}
        for f, (lo, hi) in _INT.items():
            c[f] = check_int(e, f, lo, hi)
        for f in _STR:
            c[f] = _name(e.get(f), f)
        for f in _OPT_STR:
            c[f] = None if e.get(f) is None else _name(e.get(f), f)
        if e.get("state") not in record.STATES:
            raise ProtocolError(f"field 'state': {e.get('state')!r} is not one of {record.STATES}")
        c["state"] = e["state"]
        root = e.get("root")
        c["root"] = None if root is None else check_int(e, "root", 0, _TOP)
        for f in _AGO + _OPT_AGO:
            x = e.get(f)
            if x is None and f in _OPT_AGO:
                c[f] = None
            elif type(x) in (int, float) and 0 <= x < 1e9:
                c[f] = float(x)
            else:
                raise ProtocolError(f"field {f!r}: {x!r} is not a number of seconds")
        if c["seq"] <= last:
            raise ProtocolError("entries are not in increasing sequence order")
        last = c["seq"]
        out.append(c)
    return out


def _name(x, field):
    if not isinstance(x, str) or len(x) > record.MAX_NAME:
        raise ProtocolError(f"field {field!r}: not a string of at most {record.MAX_NAME} characters")
    return x
