"""Flight-record entries as plain data: what a peer answers, what a dump holds, what reports read.

An entry (a JSON object) describes one collective call of one communicator at one rank:

    {"seq": 1042, "coll": "allreduce", "state": "running", "bytes": 8, "count": 2,
     "dtype": "float32", "op": "SUM", "root": null, "algo": "recursive_doubling", "error": "",
     "issued_ago": 58.1, "started_ago": 58.1, "ended_ago": null}

``seq`` counts the communicator's collective calls from 1 (every rank calls the same collectives
in the same order, so equal numbers mean the same call on every rank); ``state`` is queued
(non-blocking, behind earlier ones), running, done or failed (``error``: the exception's class);
the ``*_ago`` fields are seconds before the moment the record was taken (null: not yet), which
keeps records of hosts whose clocks disagree comparable.
"""
from __future__ import annotations

import time

STATES = ("queued", "running", "done", "failed")
OPEN = ("queued", "running")
MAX_NAME = 64            # longest collective, algorithm, dtype or error name carried


def entries(flight, last: int = 0, now: float | None = None) -> list:
    """The native ring's newest ``last`` entries (all if 0), oldest first, as entry dicts."""
    from ..dtypes import NAMES
    from ..ops import ReduceOp
    now = time.monotonic() if now is None else now
    out = []
    for (seq, coll, state, nbytes, count, dtype, op, root, algo, err, t_issue, t_start,
         t_end) in flight.snapshot(last):
        out.append({
            "seq": seq, "coll": coll, "state": state, "bytes": nbytes, "count": count,
            "dtype": NAMES[dtype] if dtype is not None and dtype < len(NAMES) else None,
            "op": ReduceOp(op).name if op is not None and op < len(ReduceOp) else None,
            "root": root, "algo": algo, "error": err,
            "issued_ago": _ago(now, t_issue), "started_ago": _ago(now, t_start),
            "ended_ago": _ago(now, t_end)})
    return out


def _ago(now, t):
    return None if t is None else round(max(0.0, now - t), 3)


def shape(e: dict) -> str:
    """'8 B, 2 x float32, SUM, ring' (what is known of it)."""
    parts = [_bytes(e.get("bytes") or 0)] if e.get("bytes") or e.get("dtype") else []
    if e.get("dtype"):
        parts.append(f"{e.get('count', 0)} x {e['dtype']}")
    if e.get("op"):
        parts.append(e["op"])
    if e.get("root") is not None:
        parts.append(f"root {e['root']}")
    if e.get("algo"):
        parts.append(e["algo"])
    return ", ".join(parts)


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def call(e: dict) -> str:
    """'allreduce #12 (8 B, 2 x float32, SUM, ring)'."""
    what = shape(e)
    return f"{e['coll']} #{e['seq']}" + (f" ({what})" if what else "")


def describe(e: dict) -> str:
    """One entry in words: 'allreduce #12 (8 B, ...) done 3.1 s ago'."""
    head = call(e)
    st = e["state"]
    if st == "done":
        return f"{head} done {secs(e.get('ended_ago'))} ago"
    if st == "failed":
        return f"{head} failed ({e.get('error') or 'error'}) {secs(e.get('ended_ago'))} ago"
    if st == "running":
        return f"{head} running for {secs(e.get('started_ago'))}"
    return f"{head} queued for {secs(e.get('issued_ago'))}"


def secs(v) -> str:
    return "?" if v is None else f"{v:.1f} s"
