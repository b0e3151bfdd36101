"""Forced algorithms against the tuner: the tables of ``hetccl bench --algos all``.

A sweep with ``--algos all`` produces, for every collective and size, one row per algorithm forced
with ``algorithm=`` (``variant`` = the algorithm's name) and one row left to the tuner
(``variant`` = ``"auto"``, ``algo`` = what the tuner picked). :func:`summarize` pairs them up per
size; :func:`format_summary` prints one table per collective:

    size | time of each forced algorithm | auto's choice | auto time | auto/best | within15%

``within15%`` is PASS when the tuner's time is at most 1.15 x the fastest forced algorithm's at
that size (times are medians over repetitions, each the max over ranks; the repetitions of every
variant of a size are interleaved, so they saw the same machine). ``paired`` (JSON only) is the
median over repetitions of auto's time / the fastest forced time *of the same repetition*, which
cancels slow phases of the host that hit every variant alike.

This module uses only the rows (dicts), so it also serves ``bench/crossover.py`` reading JSON.
"""
from __future__ import annotations

import statistics

from . import format as fmt

AUTO = "auto"
TOLERANCE = 1.15


def summarize(rows, tolerance: float = TOLERANCE) -> list[dict]:
    """Per (collective, nranks, size) with an ``auto`` row and at least one forced row: a dict with
    collective, nranks, size, times_us {variant: median us}, predicted_us {algorithm: model us},
    best (fastest forced), best_us, auto_choice, auto_us, ratio (auto / best), paired, ok."""
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
                 "auto_us": None, "ratio": None, "paired": None, "ok": None}
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
        if auto is not None and forced and entry["best_us"] > 0:
            entry["ratio"] = auto["time_us"] / entry["best_us"]
            entry["ok"] = auto["time_us"] <= tolerance * entry["best_us"]
            reps = [r.get("times_us") or [] for r in forced.values()]
            a = auto.get("times_us") or []
            if a and all(len(x) == len(a) for x in reps):
                paired = [a[i] / min(x[i] for x in reps) for i in range(len(a))
                          if min(x[i] for x in reps) > 0]
                entry["paired"] = statistics.median(paired) if paired else None
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
    lines = [f"# {library} {collective}, {n} ranks: time per call (us) of each forced algorithm "
             f"and of the tuner's choice (auto); {pct} = auto <= {tolerance:g} x the fastest forced"]
    wa = max([len("auto choice")] + [len(e["auto_choice"] or "-") for e in entries])
    cols = [("size", 10)] + [(a, max(10, len(a))) for a in algorithms] + \
        [("auto choice", wa), ("auto", 10), ("auto/best", 9), (pct, len(pct)), ("paired", 7),
         ("note", 0)]
    lines.append("#" + "  ".join(f"{t:>{w}}" if i else f"{t:>{w - 1}}" for i, (t, w) in enumerate(cols))
                 .rstrip())
    for e in entries:
        cells = [fmt.format_size(e["size"])]
        best = e["best"]
        for a in algorithms:
            us = e["times_us"].get(a)
            cells.append(_t(us) + ("*" if a == best and len(algorithms) > 1 else ""))
        cells.append(e["auto_choice"] or "-")
        cells.append(_t(e["auto_us"]))
        cells.append("-" if e["ratio"] is None else f"{e['ratio']:.2f}x")
        cells.append("-" if e["ok"] is None else ("PASS" if e["ok"] else "FAIL"))
        cells.append("-" if e["paired"] is None else f"{e['paired']:.2f}x")
        cells.append(_note(e))
        lines.append("  ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, cols)).rstrip())
    lines.append(verdict(entries, collective, n, tolerance))
    lines.append("# paired = median over repetitions of auto / fastest forced in the same repetition"
                 + ("; * = fastest forced algorithm" if len(algorithms) > 1 else ""))
    return lines


def _note(e) -> str:
    """Why a FAIL is (or is not) the tuner's fault."""
    if e["ok"] is not False:
        return ""
    if e["auto_choice"] == e["best"]:
        return "auto ran the fastest algorithm: timing noise"
    return f"tuner picked {e['auto_choice']}, {e['best']} was faster"


def verdict(entries, collective, nranks, tolerance: float = TOLERANCE) -> str:
    """``# allreduce, 2 ranks: within15% PASS at 11/12 sizes; FAIL at 64K (1.31x)``."""
    judged = [e for e in entries if e["ok"] is not None]
    fails = [e for e in judged if not e["ok"]]
    pct = f"within{round((tolerance - 1) * 100):d}%"
    text = (f"# {collective}, {nranks} ranks: {pct} PASS at {len(judged) - len(fails)}/{len(judged)} "
            f"sizes")
    if fails:
        text += "; FAIL at " + ", ".join(
            f"{fmt.format_size(e['size'])} ({e['ratio']:.2f}x, "
            + ("same algorithm as the fastest: noise" if e["auto_choice"] == e["best"]
               else f"chose {e['auto_choice']}, fastest {e['best']}") + ")" for e in fails)
    return text
