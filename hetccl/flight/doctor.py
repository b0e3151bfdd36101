"""``hetccl doctor --flight FILE|DIR ...``: dumped flight records, the ranks side by side.

Reads files written by dump.py (a file, or every ``*.json`` of a directory; one per process),
groups the communicators by key, and for each prints a table of the ranks' last calls, their
newest calls side by side, and the verdict of report.py at the earliest call some rank is stuck
in: who has not entered it, who is elsewhere. Files that are not flight records are named and
skipped. Ages are shifted to the newest dump, so files dumped a little apart still compare.
"""
from __future__ import annotations

import glob
import json
import os
import time

from ..recovery.wire import ProtocolError
from .exchange import check_entries
from .record import OPEN, describe, secs
from .report import classify, ranges, render, suspects
from .dump import FORMAT

SIDE_BY_SIDE_RANKS = 8       # wider communicators get the table only
SIDE_BY_SIDE_CALLS = 8
_MAX_FILE = 64 << 20
MAX_DUMPED = 1 << 16         # entries per communicator in a file (the ring holds 256)


def load(paths) -> tuple[list, list]:
    """([(path, record)], [problem texts]) of the files at ``paths`` (files or directories)."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            files += sorted(glob.glob(os.path.join(p, "*.json")))
        else:
            files.append(p)
    good, bad = [], []
    for f in files:
        try:
            if os.path.getsize(f) > _MAX_FILE:
                raise ValueError(f"larger than {_MAX_FILE >> 20} MiB")
            with open(f) as fh:
                rec = json.load(fh)
            good.append((f, _checked(rec)))
        except (OSError, ValueError, ProtocolError, TypeError, KeyError) as e:
            bad.append(f"{f}: not a hetccl flight record ({e})")
    return good, bad


def _checked(rec) -> dict:
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise ValueError(f"no \"format\": \"{FORMAT}\"")
    if not isinstance(rec.get("time"), (int, float)) or not isinstance(rec.get("communicators"), list):
        raise ValueError("no dump time or communicator list")
    comms = []
    for c in rec["communicators"]:
        if not (isinstance(c, dict) and isinstance(c.get("key"), str) and type(c.get("rank")) is int
                and type(c.get("size")) is int and 0 <= c["rank"] < c["size"]):
            raise ValueError("a communicator without key, rank or size")
        comms.append(dict(c, entries=check_entries(c.get("entries"), MAX_DUMPED)))
    return dict(rec, communicators=comms)


def _shifted(entries, by: float) -> list:
    """Entries with their ages made relative to a dump ``by`` seconds later."""
    out = []
    for e in entries:
        e = dict(e)
        for f in ("issued_ago", "started_ago", "ended_ago"):
            if e.get(f) is not None:
                e[f] = round(e[f] + by, 3)
        out.append(e)
    return out


def groups(records) -> list:
    """[(key, {rank: (path, record, communicator)})], by first appearance."""
    out = {}
    newest = max((r["time"] for _, r in records), default=0.0)
    for path, rec in records:
        for c in rec["communicators"]:
            c = dict(c, entries=_shifted(c["entries"], newest - rec["time"]))
            out.setdefault(c["key"], {})[c["rank"]] = (path, rec, c)
    return list(out.items())


def verdict(ranks: dict, size: int) -> list:
    """The lines that name who the communicator waits for (report.py), at the earliest call some
    rank is stuck in; or why nothing is stuck."""
    opened = {r: next((e for e in c["entries"] if e["state"] in OPEN), None)
              for r, (_, _, c) in ranks.items()}
    stuck = [e for e in opened.values() if e is not None]
    if not stuck:
        last = {r: c["seq"] for r, (_, _, c) in ranks.items()}
        if len(set(last.values())) <= 1:
            return [f"no call in flight: every rank recorded has completed its calls (last #{max(last.values(), default=0)})"]
        low = min(last.values())
        return [f"no call in flight, but the ranks' last calls differ: ranks "
                f"{ranges(r for r, s in last.items() if s == low)} are at #{low}, others up to "
                f"#{max(last.values())}"]
    first = min(stuck, key=lambda e: e["seq"])
    answers = {r: {"kind": "record", "entries": c["entries"]} for r, (_, _, c) in ranks.items()}
    for r in range(size):
        answers.setdefault(r, {"kind": "refused", "why": "no dump file for this rank"})
    classes = classify(first["seq"], first["coll"], answers)
    lines = [f"stuck: {first['coll']} #{first['seq']}; "
             + (f"suspects: rank{'s' if len(suspects(classes)) > 1 else ''} {ranges(suspects(classes))}"
                if suspects(classes) else "no rank stands out (all are in it)")]
    return lines + ["  " + line for line in render(classes, first["seq"], first["coll"], too=False)]


def _cell(e) -> str:
    if e is None:
        return ""
    st = e["state"]
    if st == "running":
        return f"{e['coll']} RUNNING {secs(e.get('started_ago'))}"
    if st == "failed":
        return f"{e['coll']} FAILED {e.get('error') or ''}".rstrip()
    return f"{e['coll']} {st}"


def side_by_side(ranks: dict) -> list:
    rs = sorted(ranks)
    top = max(c["seq"] for _, _, c in ranks.values())
    seqs = range(max(1, top - SIDE_BY_SIDE_CALLS + 1), top + 1)
    cols = []
    for r in rs:
        c = ranks[r][2]
        by = {e["seq"]: e for e in c["entries"]}
        cols.append([("-" if s > c["seq"] else _cell(by.get(s))) for s in seqs])
    width = max([len(f"rank {r}") for r in rs] + [len(x) for col in cols for x in col]) + 2
    lines = ["        " + "".join(f"rank {r}".ljust(width) for r in rs)]
    for i, s in enumerate(seqs):
        lines.append(f"  #{s:<5}" + "".join(col[i].ljust(width) for col in cols))
    return [line.rstrip() for line in lines]


def render_group(key: str, ranks: dict) -> list:
    any_c = next(iter(ranks.values()))[2]
    size = any_c["size"]
    lines = [f"communicator {any_c.get('id', '?')} of job {str(any_c.get('job', '?'))[:16]} "
             f"(key {key[:12]}), {size} rank{'s' if size > 1 else ''}; records of ranks "
             f"{ranges(ranks)}" + (f"; none from ranks {ranges(set(range(size)) - set(ranks))}"
                                   if len(ranks) < size else "")]
    lines.append(f"  {'rank':<6}{'process':<28}{'calls':<8}last call")
    for r in sorted(ranks):
        path, rec, c = ranks[r]
        proc = f"{rec.get('host', '?')} pid {rec.get('pid', '?')}"
        last = describe(c["entries"][-1]) if c["entries"] else "none yet"
        lines.append(f"  {r:<6}{proc[:27]:<28}{c['seq']:<8}{last}")
    if len(ranks) <= SIDE_BY_SIDE_RANKS and any(c["entries"] for _, _, c in ranks.values()):
        lines.append("  the newest calls side by side (RUNNING/FAILED: at the dump; -: not entered):")
        lines += ["  " + x for x in side_by_side(ranks)]
    lines += ["  " + x for x in verdict(ranks, size)]
    return lines


def main(paths) -> int:
    if not paths:
        print("usage: hetccl doctor --flight FILE|DIR [...]  (files written on SIGUSR1 or by "
              "hetccl.flight.dump(); default directory: $HETCCL_FLIGHT_DIR, else "
              "<temp dir>/hetccl-flight-<uid>)")
        return 2
    records, problems = load(paths)
    for p in problems:
        print(p)
    if not records:
        print("no flight records found in " + ", ".join(paths))
        return 1
    times = [r["time"] for _, r in records]
    print(f"hetccl flight records: {len(records)} file{'s' if len(records) > 1 else ''}, dumped "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(max(times)))}"
          + (f" (within {max(times) - min(times):.1f} s)" if len(records) > 1 else "")
          + "; ages are before the newest dump")
    for key, ranks in groups(records):
        print()
        print("\n".join(render_group(key, ranks)))
    return 0
