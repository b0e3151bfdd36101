"""Who a stuck collective waits for: the ranks' flight records compared at one sequence number.

Pure logic, shared by the watchdog and the timeout's error (fed with the peers' answers over the
control plane) and by ``hetccl doctor --flight`` (fed with dumped files). Given call number S (the
one a rank is stuck in) and what every rank says about itself, each rank falls in one class:

* ``behind``     its newest call is before S: it has not entered S (the usual culprit: it is busy
                 elsewhere, or stuck in an earlier call itself);
* ``silent``     it did not answer within the bound: the process is stopped, or its host is gone;
* ``failed``     the control plane knows it failed (its process died, or it was fenced);
* ``mismatch``   its call S is another collective: the ranks' calls differ;
* ``unknown``    it refused (it closed the communicator) or sent a malformed record;
* ``ahead``      it is past S (S has left its ring);
* ``completed``  it finished S (a rooted or one-sided call can finish early on some ranks);
* ``failed_at``  its S failed;
* ``waiting``    it is in S too.

The first classes are the suspects; ``waiting`` ranks are listed compactly.
"""
from __future__ import annotations

from .record import OPEN, call, describe, secs

SUSPECTS = ("behind", "silent", "failed", "mismatch", "unknown")
ORDER = SUSPECTS + ("ahead", "failed_at", "completed", "waiting")
DETAIL = 8               # lines per class before the rest are summarised as a rank list


def classify(seq: int, coll: str, answers: dict) -> dict:
    """{class: [(rank, text)]} for the ranks of ``answers`` ({rank: answer}) at call ``seq`` of
    collective ``coll``. An answer is {"kind": "record", "entries": [...]} (newest last),
    {"kind": "silent", "waited": s}, {"kind": "failed", "why": ...}, {"kind": "refused", "why":
    ...} or {"kind": "malformed", "why": ...}."""
    out = {k: [] for k in ORDER}
    for r in sorted(answers):
        kind, text = _one(r, seq, coll, answers[r])
        out[kind].append((r, text))
    return out


def _one(r, seq, coll, a):
    kind = a.get("kind")
    if kind == "silent":
        return "silent", (f"rank {r} did not answer within {a.get('waited', 0):.1f} s: stopped, or its "
                          f"host is gone")
    if kind == "failed":
        return "failed", f"rank {r} failed: {a.get('why', '')}"
    if kind == "refused":
        return "unknown", f"rank {r} gave no record: {a.get('why', '')}"
    if kind != "record":
        return "unknown", f"rank {r} answered with a malformed flight record ({a.get('why', '')})"
    ents = a.get("entries") or []
    newest = ents[-1] if ents else None
    at = next((e for e in ents if e["seq"] == seq), None)
    if at is not None:
        if at["coll"] != coll:
            return "mismatch", f"rank {r} called {call(at)}, not {coll}: the ranks' calls differ"
        if at["state"] in OPEN:
            return "waiting", f"rank {r} is in {coll} #{seq} too"
        if at["state"] == "done":
            return "completed", f"rank {r} completed {coll} #{seq} {secs(at.get('ended_ago'))} ago"
        return "failed_at", f"rank {r}: {describe(at)}"
    if newest is None:
        return "behind", f"rank {r} has made no collective call on this communicator yet (#{seq} would be its first)"
    n = newest["seq"]
    if n > seq:
        return "ahead", f"rank {r} is past #{seq}: {describe(newest)}"
    ago = secs(newest.get("ended_ago"))
    if newest["state"] == "done":
        return "behind", f"rank {r} finished {newest['coll']} #{n} {ago} ago and has not entered #{seq}"
    if newest["state"] == "failed":
        return "behind", (f"rank {r}'s {newest['coll']} #{n} failed ({newest.get('error') or 'error'}) "
                          f"{ago} ago; it has not entered #{seq}")
    return "behind", f"rank {r} is still in {describe(newest)} and has not entered #{seq}"


def ranges(ranks) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8' (a cpulist, spaced)."""
    from ..topology.discover import format_cpulist
    return format_cpulist(ranks).replace(",", ", ")


def render(classes: dict, seq: int, coll: str, detail: int = DETAIL, too: bool = True) -> list:
    """The lines of a report: every suspect (up to ``detail`` per class, then a rank list), then
    the others by class (``too``: the waiting ranks wait beside the reporting one)."""
    lines = []
    for kind in ORDER:
        items = classes.get(kind) or []
        if not items:
            continue
        if kind == "waiting":
            who = ranges(r for r, _ in items)
            lines.append(f"rank{'s' if len(items) > 1 else ''} {who} {'are' if len(items) > 1 else 'is'} "
                         f"in {coll} #{seq}{' too' if too else ''}")
            continue
        for _, text in items[:detail]:
            lines.append(text)
        if len(items) > detail:
            lines.append(f"... and {len(items) - detail} more like that: ranks "
                         f"{ranges(r for r, _ in items[detail:])}")
    return lines


def suspects(classes: dict) -> list:
    """The ranks a stuck call waits for (not there yet, silent, failed, calling something else)."""
    return sorted(r for k in SUSPECTS for r, _ in classes.get(k) or ())


class Report:
    """A hang report: ``text`` (a header and one line per finding), ``suspects`` (ranks),
    ``classes`` ({class: [(rank, text)]})."""

    def __init__(self, header: str, seq: int, coll: str, classes: dict):
        self.header, self.seq, self.coll, self.classes = header, seq, coll, classes
        self.suspects = suspects(classes)
        self.lines = render(classes, seq, coll)

    @property
    def text(self) -> str:
        return "\n".join([self.header] + ["  " + line for line in self.lines])

    def __str__(self):
        return self.text


def hang_report(rank: int, size: int, mine: dict, answers: dict) -> Report:
    """The report of rank ``rank`` (of ``size``) stuck in entry ``mine``, from its peers' answers."""
    since = mine.get("started_ago") if mine.get("started_ago") is not None else mine.get("issued_ago")
    ended = mine.get("ended_ago")
    waited = f"waited {secs(since - ended)}" if ended is not None and since is not None else \
        f"waiting for {secs(since)}"
    header = f"hang report: {call(mine)} on rank {rank} of {size}, {waited}:"
    classes = classify(mine["seq"], mine["coll"], answers)
    r = Report(header, mine["seq"], mine["coll"], classes)
    if not r.suspects and size > 1:
        r.lines.append("no rank stands out: every rank that answered is in this call (a slow link, "
                       "or a rank waiting inside a vendor library?)")
    return r
