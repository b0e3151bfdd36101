"""The simulator against a recorded job: what bench/validate_sim.py measures and
tests/test_simulate.py re-checks.

A record is what a real job's communicator saw (its topology, the load of its machine, the cost
model it probed, its bridges' prices) and what it measured (time per size and variant, and the
algorithm it ran). ``predict`` feeds exactly that to the simulator through the path of
``hetccl simulate --topo FILE --cost-model TUNING_FILE``: the record's model is written as a
tuning file and read back by costs.py, and group.py's planners choose and price.
"""
from __future__ import annotations

import json
import os
import tempfile

JUDGED_FROM = 64 << 10     # sizes from here on are held to TOLERANCE; smaller ones are reported
TOLERANCE = 0.25
SLACK = 0.10               # the CI check: a point recorded outside TOLERANCE may not get worse by more

# How bench/validate_sim.py makes one measured point robust to the machine's transient noise: a
# point's repetitions (interleaved with every other size's by the benchmark runner, so consecutive
# repetitions lie seconds apart) are cut, in the order they ran, into BATCHES windows of time; the
# point's time is the median of the batches' medians, and its spread how far those medians lie
# apart. A judged point whose spread exceeds REMEASURE is measured again in the same job (as many
# batches more) and priced on the median of all its batches: one slow window of the machine, or of
# a shaped link, then moves one batch of six, not the point.
BATCHES = 3
REMEASURE = 0.15


def batched(times_us, batches=BATCHES) -> dict:
    """{"time_us": median of the batch medians, "batches_us": the batch medians, "spread": (largest -
    smallest batch median) / their median} of a point's repetitions in the order they ran, cut
    into ``batches`` consecutive windows (fewer when there are fewer repetitions; one window: the
    plain median, spread 0)."""
    import statistics
    ts = [float(t) for t in times_us]
    if not ts:
        raise ValueError("a point without repetitions")
    k = max(1, min(int(batches), len(ts)))
    cuts = [round(i * len(ts) / k) for i in range(k + 1)]
    meds = [statistics.median(ts[a:b]) for a, b in zip(cuts, cuts[1:])]
    mid = statistics.median(meds)
    return {"time_us": mid, "batches_us": meds, "spread": (max(meds) - min(meds)) / mid if mid > 0 else 0.0}


def measure(sweep, sizes, batches=BATCHES, remeasure=REMEASURE) -> list[dict]:
    """Rows (size, variant, time_us, times_us, algo, batches_us, spread, remeasured) of the points
    ``sweep(sizes)`` times (bench/validate_sim.py: the benchmark runner's rows, every repetition
    in ``times_us`` in the order it ran), each priced on its batches (``batched``); the judged
    sizes whose batches disagree by more than ``remeasure`` (``unsteady``; None: never) are swept
    again and priced on the batches of both sweeps. ``sweep`` is collective where the rows are
    the same on every rank (the runner's times are maxima over ranks): every rank then times the
    same sizes again."""
    keep = ("size", "variant", "time_us", "times_us", "algo")
    rows = [{k: r.get(k) for k in keep} for r in sweep(list(sizes))]
    for r in rows:
        r.update(batched(r["times_us"], batches), remeasured=False)
    again = unsteady(rows, remeasure) if remeasure is not None else []
    if again:
        more = {(r["size"], r.get("variant")): r for r in sweep(again)}
        for r in rows:
            m = more.get((r["size"], r["variant"]))
            if m is not None:
                r["times_us"] = list(r["times_us"]) + list(m["times_us"])
                r.update(batched(r["times_us"], 2 * batches), remeasured=True)
    return rows


def unsteady(rows, limit=REMEASURE) -> list[int]:
    """The judged sizes (>= JUDGED_FROM) at which some row's batches disagree by more than
    ``limit`` (rows as bench/validate_sim.py keeps them: "size", "spread"), ascending."""
    return sorted({r["size"] for r in rows if r["size"] >= JUDGED_FROM and r.get("spread", 0.0) > limit})


def drift(rows) -> float | None:
    """How the machine's speed moved during a job: the median, over its judged points, of the
    first batch's median over the point's time (rows as ``measure`` makes them; None without
    batches). The job's cost model is probed at its start, the first batch timed right after it:
    far from 1 (the 8-rank tcp job of the run of 2026-12-07 19:36 read 0.59, its first batch
    within -13% to +27% of the prediction and the later ones 1.5-2x slower), the points are judged
    against a machine other than the one the model was measured on."""
    import statistics
    ratios = [r["batches_us"][0] / r["time_us"] for r in rows
              if r["size"] >= JUDGED_FROM and r.get("batches_us") and r.get("time_us")]
    return statistics.median(ratios) if ratios else None


def drift_note(rows, limit=0.15) -> str:
    """"; first batch x0.59 of the point (...)" when the machine's speed moved by more than
    ``limit`` during the job (``drift``), else "": bench/validate_sim.py's case lines."""
    d = drift(rows)
    return "" if d is None or abs(d - 1) <= limit else (
        f"; first batch x{d:.2f} of the point (the machine's speed moved during the job: the model was "
        f"measured at its start)")


def refit(rec) -> dict | None:
    """The cost-model parameters today's probe.fit derives from the probe timings a record kept
    (``probe_raw``, us, as the cache stores them), or None when it kept none (older records, or a
    job whose model came from a cache or a tuning file): so a change to how the probe's timings
    become parameters is judged on recorded runs too. A change to what the probe times still
    needs a new run."""
    raw_us = rec.get("probe_raw")
    if not raw_us or rec["model"].get("origin") != "measured":
        return None
    from ..collectives import probe
    from ..collectives.cost_model import LinkCost, all_fifo
    from .costs import STREAM_MIN, _fifo
    raw = {(k[:-3] + "_s" if k.endswith("_us") else k): (v * 1e-6 if k.endswith("_us") else v)
           for k, v in raw_us.items()}
    classes = [c for c in rec["model"]["links"].split("+") if c]
    facts = LinkCost(0.0, 0.0, 0.0, fifo=all_fifo(classes), stream_min=STREAM_MIN, fifo_bytes=_fifo(rec["local"]),
                     share=max(1.0, float(rec.get("load", 1.0))))
    cost = probe.fit(raw, rec["ranks"], facts, cache_bytes=rec["model"].get("cache_bytes", 0.0),
                     network=probe.network_link(classes, rec["local"], rec["ranks"]))
    return cost.params()


def reused(rec) -> bool:
    """Whether the recorded job registered its reused plain buffers automatically (the benchmark
    runner passes the same arrays at every repetition, so a runtime that registers them did):
    the record's ``auto_register``, or, in records made before they kept it, whether the model
    has the chain broadcast's parameters (``beta_chain``), which the runtime gained after
    automatic registration (2026-12-07): the records without them ran no automatic registration."""
    if "auto_register" in rec:
        return bool(rec["auto_register"])
    return "beta_chain" in rec["model"]


def predict(rec, transports=None):
    """{(size, variant): (predicted seconds, predicted choice)} from the job's record (its model's
    parameters re-fitted from its probe's timings when it kept them: refit)."""
    from ..topology import topofile
    from ..collectives import tuning_file
    from .costs import model_for
    from .group import Group
    from ..collectives.cost_model import PARAMS
    from ..collectives.islands import legacy_points
    topo = topofile.from_dict(rec["topology"], "recorded job")
    topo.source = rec.get("source", topo.source)   # discovered: the planner prices the network as the job did
    doc = tuning_file.new_document("recorded", None)
    entry = {"links": rec["model"]["links"], "ranks": rec["ranks"], "local": rec["local"],
             "cost": refit(rec) or {k: rec["model"][k] for k in PARAMS if k in rec["model"]}}
    if rec.get("bridges"):
        # records of runs before the probe timed 4 MiB hold [alpha, beta(, beta_out)]: that run's
        # bridge was priced on that line, and is predicted so
        entry["bridges"] = {kind: {c: [list(q) for q in (legacy_points(*p) if not isinstance(p[0], list) else p)]
                                   for c, p in colls.items()}
                            for kind, colls in rec["bridges"].items()}
    tmp = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    try:
        json.dump(tuning_file.merge(doc, entry), tmp)
        tmp.close()
        model, _, bridges = model_for(topo, rec["load"], tmp.name, transports)
    finally:
        os.unlink(tmp.name)
    out = {}
    groups = {}
    for row in rec["rows"]:
        v = row["variant"]
        if v not in groups:
            spec = "" if v == "auto" else f"allreduce:{v}"
            groups[v] = Group(topo, model, load=rec["load"], forced_spec=spec, bridge_prices=bridges,
                              transports=transports, reused=reused(rec))
        g = groups[v]
        n = row["size"]
        rows = g.rows("allreduce", n)
        key = g.choice_key("allreduce", n)
        out[(n, v)] = (rows.get(key, min(rows.values()) if rows else None), key)
    return out


def compare(name, rec, transports=None) -> list[dict]:
    pred = predict(rec, transports)
    table = []
    for row in rec["rows"]:
        t_pred, choice = pred[(row["size"], row["variant"])]
        meas = row["time_us"] * 1e-6
        ran = row.get("algo") or "?"
        table.append({"case": name, "size": row["size"], "variant": row["variant"], "measured_us": meas * 1e6,
                      "spread": row.get("spread"), "batches": len(row.get("batches_us") or []) or None,
                      "predicted_us": None if t_pred is None else t_pred * 1e6, "ran": ran,
                      "predicted_choice": choice,
                      "same": choice.split(":")[0] == ran,
                      "error": None if t_pred is None else t_pred / meas - 1})
    return table
