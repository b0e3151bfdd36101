"""Forced algorithms against the tuner: the tables of ``hetccl bench --algos all``.

A sweep with ``--algos all`` produces, for every collective and size, one row per algorithm forced
with ``algorithm=`` (``variant`` = the algorithm's name) and one row left to the tuner
(``variant`` = ``"auto"``, ``algo`` = what the tuner picked). :func:`summarize` pairs them up per
size; :func:`format_summary` prints one table per collective:

    size | time of each forced algorithm | auto's choice | chosen/best | within15% | auto | auto/chosen

The check judges the *choice*: the forced time of the algorithm the tuner chose against the
fastest forced time at that size (``chosen/best``; PASS when at most 1.15). Both are forced calls,
so both take the same code path (a forced algorithm is learnt by the communicator's latency path
like the tuner's own calls), and the comparison is like for like. Times are medians over
repetitions, each the max over ranks; the repetitions of every variant of a size are interleaved,
so they saw the same machine.

The tuner's own calls (``auto``) run the same schedule as the chosen algorithm's forced column, so
``auto/chosen`` is two measurements of one code path: how far apart it is is the measured timing
spread at that size, printed beside the check and not used by it. ``paired`` (JSON only) is the
median over repetitions of the chosen algorithm's time / the fastest forced time *of the same
repetition*, which cancels slow phases of the host that hit every variant alike.

When the chosen algorithm has no forced column (a route the sweep cannot force), the point is
judged by auto's own time against the fastest forced time and says so (``basis`` = ``"auto"``).

This module uses only the rows (dicts), so it also serves ``bench/crossover.py`` reading JSON.
"""
from __future__ import annotations

import statistics

from . import format as fmt

AUTO = "auto"
TOLERANCE = 1.15


def _paired(a, forced_reps):
    """Median over repetitions of a[i] / the fastest forced time of repetition i (None when the
    repetition counts differ)."""
    if not a or not all(len(x) == len(a) for x in forced_reps):
        return None
    vals = [a[i] / min(x[i] for x in forced_reps) for i in range(len(a))
            if min(x[i] for x in forced_reps) > 0]
    return statistics.median(vals) if vals else None


def summarize(rows, tolerance: float = TOLERANCE) -> list[dict]:
    """Per (collective, nranks, size) with an ``auto`` row and at least one forced row: a dict with
    collective, nranks, size, times_us {variant: median us}, predicted_us {algorithm: model us},
    best (fastest forced), best_us, auto_choice, chosen_us (the chosen algorithm's forced time),
    ratio (chosen / best: the check), basis ("forced", or "auto" when the choice has no forced
    column and auto's own time stood in), auto_us, auto_ratio (auto / best), spread (auto /
    chosen: one code path measured twice), paired, ok."""
    by_key = {}
    for r in rows:
        v = r.get("variant")
        if v is None:
            continue
        by_key.setdefault((r["collective"], r.get("nranks"), r["size"]), {})[v] = r
    out = []
    for (coll, n, size), variants in sorted(by_key.items(), key=lambda kv: (
            fmt.COLLECTIVES.index(kv[0][0]) if kv[0][0] in fmt.COLLECTIVES else 99,
            kv[0][1] or 0, kv[0][2])):
        auto = variants.get(AUTO)
        forced = {v: r for v, r in variants.items() if v != AUTO}
        entry = {"collective": coll, "nranks": n, "size": size,
                 "times_us": {v: r["time_us"] for v, r in variants.items()},
                 "predicted_us": {}, "best": None, "best_us": None, "auto_choice": None,
                 "chosen_us": None, "auto_us": None, "ratio": None, "auto_ratio": None,
                 "spread": None, "basis": None, "paired": None, "ok": None}
        for v, r in forced.items():
            if r.get("predicted_us") is not None:
                entry["predicted_us"][v] = r["predicted_us"]
        if auto is not None:
            entry["auto_choice"] = auto.get("algo")
            entry["auto_us"] = auto["time_us"]
            entry["predicted_choice"] = auto.get("predicted_choice")
        if forced:
            best = min(forced, key=lambda v: forced[v]["time_us"])
            entry["best"], entry["best_us"] = best, forced[best]["time_us"]
        if auto is None or not forced or entry["best_us"] <= 0:
            out.append(entry)
            continue
        chosen = forced.get(entry["auto_choice"])
        entry["auto_ratio"] = auto["time_us"] / entry["best_us"]
        judged = chosen if chosen is not None else auto
        entry["basis"] = "forced" if chosen is not None else "auto"
        if chosen is not None:
            entry["chosen_us"] = chosen["time_us"]
            if chosen["time_us"] > 0:
                entry["spread"] = auto["time_us"] / chosen["time_us"]
        entry["ratio"] = judged["time_us"] / entry["best_us"]
        entry["ok"] = judged["time_us"] <= tolerance * entry["best_us"]
        entry["paired"] = _paired(judged.get("times_us") or [],
                                  [r.get("times_us") or [] for r in forced.values()])
        out.append(entry)
    return out


def algorithms_of(rows, collective: str) -> list[str]:
    """The forced variants of *collective* in first-seen order."""
    seen = []
    for r in rows:
        v = r.get("variant")
        if r["collective"] == collective and v is not None and v != AUTO and v not in seen:
            seen.append(v)
    return seen


def _t(us):
    return "-" if us is None else fmt.format_time(us)


def format_summary(summary, algorithms, collective: str, nranks=None,
                   tolerance: float = TOLERANCE, library: str = "hetccl") -> list[str]:
    """The table of one collective (text lines, rank 0 prints them)."""
    entries = [e for e in summary if e["collective"] == collective
               and (nranks is None or e["nranks"] == nranks)]
    pct = f"within{round((tolerance - 1) * 100):d}%"
    n = nranks if nranks is not None else (entries[0]["nranks"] if entries else "?")
    lines = [f"# {library} {collective}, {n} ranks: time per call (us) of each algorithm forced and "
             f"of the tuner's own calls (auto); {pct} = the chosen algorithm's forced time <= "
             f"{tolerance:g} x the fastest forced"]
    wa = max([len("auto choice")] + [len(e["auto_choice"] or "-") for e in entries])
    cols = [("size", 10)] + [(a, max(10, len(a))) for a in algorithms] + \
        [("auto choice", wa), ("chosen/best", 11), (pct, len(pct)), ("paired", 7), ("auto", 10),
         ("auto/chosen", 11), ("note", 0)]
    lines.append("#" + "  ".join(f"{t:>{w}}" if i else f"{t:>{w - 1}}" for i, (t, w) in enumerate(cols))
                 .rstrip())
    for e in entries:
        cells = [fmt.format_size(e["size"])]
        best = e["best"]
        for a in algorithms:
            us = e["times_us"].get(a)
            cells.append(_t(us) + ("*" if a == best and len(algorithms) > 1 else ""))
        cells.append(e["auto_choice"] or "-")
        cells.append("-" if e["ratio"] is None else f"{e['ratio']:.2f}x")
        cells.append("-" if e["ok"] is None else ("PASS" if e["ok"] else "FAIL"))
        cells.append("-" if e["paired"] is None else f"{e['paired']:.2f}x")
        cells.append(_t(e["auto_us"]))
        cells.append("-" if e["spread"] is None else f"{e['spread']:.2f}x")
        cells.append(_note(e))
        lines.append("  ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, cols)).rstrip())
    lines.append(verdict(entries, collective, n, tolerance))
    lines.append("# paired = median over repetitions of the chosen algorithm / the fastest forced in "
                 "the same repetition; auto/chosen = the tuner's own calls / the chosen algorithm "
                 "forced (one code path measured twice: the timing spread at that size)"
                 + ("; * = fastest forced algorithm" if len(algorithms) > 1 else ""))
    return lines


def _note(e) -> str:
    """What a FAIL measured (a wrong choice by that margin), and a point judged without a forced
    column of its choice."""
    if e["ok"] is None:
        return ""
    basis = "" if e["basis"] == "forced" else f"judged by auto: {e['auto_choice']} has no forced column"
    if e["ok"]:
        return basis
    text = f"tuner picked {e['auto_choice']}, {e['best']} was faster"
    return f"{text}; {basis}" if basis else text


def verdict(entries, collective, nranks, tolerance: float = TOLERANCE) -> str:
    """``# allreduce, 2 ranks: within15% PASS at 11/12 sizes; FAIL at 64K (1.31x, chose ring,
    fastest bruck)``."""
    judged = [e for e in entries if e["ok"] is not None]
    fails = [e for e in judged if not e["ok"]]
    pct = f"within{round((tolerance - 1) * 100):d}%"
    text = (f"# {collective}, {nranks} ranks: {pct} PASS at {len(judged) - len(fails)}/{len(judged)} "
            f"sizes")
    if fails:
        text += "; FAIL at " + ", ".join(
            f"{fmt.format_size(e['size'])} ({e['ratio']:.2f}x, chose {e['auto_choice']}, fastest "
            f"{e['best']}" + ("" if e["basis"] == "forced" else ", judged by auto") + ")" for e in fails)
    return text
