#!/usr/bin/env python3
"""Where hetccl's algorithms cross over, and whether the tuner follows: the within-15% check of every
collective with more than one algorithm, and a PNG per collective for allreduce and allgather.

Let it run the sweeps (``hetccl run -n N`` for each N, one after the other; before each, ``hetccl
tune -n N`` re-measures the cost model so it belongs to the same quiet window)::

    python bench/crossover.py --run --nranks 2,3,4 -b 8 -e 256M -f 4 --reps 15 --min-time 0.01

``--run`` sweeps, per world size, every collective that has more than one algorithm there (the
registry decides; ``-c`` to choose), or plot JSON written by ``hetccl bench --algos all --json FILE``
(one file per world size)::

    hetccl run -n 2 -- hetccl bench --algos all -c allreduce,allgather -b 8 -e 256M --json ar2.json
    python bench/crossover.py ar2.json ar3.json ar4.json

For every collective and world size it prints the table of ``hetccl bench --algos all`` (time of
each forced algorithm, the tuner's choice, chosen/best, within15%, auto's own time) and a verdict:
a size passes when the forced time of the algorithm the tuner chose is at most 1.15 x the fastest
forced time. Forced and auto calls take the same code path (the communicator's latency path learns
a forced algorithm under its name), so this compares algorithms, not paths
(hetccl/benchmark/compare.py).

With ``--run``, every point is measured in ``--passes`` full passes (default 2): the same sweep,
same repetitions, every world size, one pass after the other; passes after the first price with a
copy of the first pass's cost model (snapshot_cost_models), so the tuner makes the same choices (a
choice that differs is reported). The output gives each pass's verdicts, then the count of sizes
that passed in each pass side by side with the pooled verdict: every variant's repetitions of all
passes together, judged by the same rule. The pooled verdict is the overall one (exit status 1 with
``--strict`` on FAIL; a wrong result anywhere fails it too). Where the passes disagree about a size, that size is listed with both
ratios: the disagreement is the measured run-to-run variation there. ``--again FILE`` (one per
world size) judges JSON of a further pass with the input, without running anything.
Beside it, the model check: for the algorithm the tuner chose at each size, the cost model's
predicted time against its measured time (within 2x passes), with its own summary lines.

Each PNG (``bench/crossover_<collective>.png``, for ``--plot``, default allreduce,allgather) has
one panel per world size: time per call (log) against size (log), one line per forced algorithm,
the tuner's measured time (``auto``, black dashed) with a ring around the algorithm it chose at
each size, the cost model's prediction for each algorithm (thin dotted, same colour;
``--no-model`` hides it), and a red cross under the sizes where the chosen algorithm is slower
than 1.15 x the fastest forced algorithm.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "peers"))
from checkout import IMPORT_ROOT  # noqa: E402,F401  (which hetccl: the installed one, or this checkout; bench/checkout.py)
from _common import load_benchmark  # noqa: E402

fmt, runner, _cli = load_benchmark()
compare = importlib.import_module(fmt.__name__.rsplit(".", 1)[0] + ".compare")

PLOTTED = "allreduce,allgather"
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink")


def load_rows(paths) -> list[dict]:
    """Rows with a ``variant`` from every JSON file (later files win for the same world size)."""
    by_n = {}
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        rows = [r for r in doc.get("rows", []) if r.get("variant") is not None]
        if not rows:
            print(f"crossover: {path} has no per-algorithm rows (was it run with --algos all?)",
                  file=sys.stderr)
            continue
        n = doc.get("nranks") or rows[0].get("nranks")
        by_n.setdefault(n, {})
        for r in rows:
            by_n[n][(r["collective"], r["size"], r["variant"])] = r
    return [r for n in sorted(by_n) for r in by_n[n].values()]


def _size_label(x, _pos=None):
    x = int(round(x))
    for unit, mult in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if x >= mult:
            return f"{x / mult:g}{unit}"
    return f"{x}B"


def _ticks(lo, hi, most=10):
    """Powers of two from <= lo to >= hi, every 2^k-th one so there are at most *most*."""
    a, b = max(0, int(lo).bit_length() - 1), max(1, int(hi - 1).bit_length())
    step = 1
    while (b - a) // step + 1 > most:
        step += 1
    return [1 << e for e in range(a, b + step, step) if lo <= (1 << e) <= hi] or [lo, hi]


def plot_collective(rows, collective, path, tolerance=compare.TOLERANCE, model=True) -> list[str]:
    """Draw one PNG for *collective* (a panel per world size); return the verdict lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullLocator

    mine = [r for r in rows if r["collective"] == collective]
    worlds = sorted({r["nranks"] for r in mine})
    if not worlds:
        return []
    algos = compare.algorithms_of(mine, collective)
    colour = {a: COLOURS[i % len(COLOURS)] for i, a in enumerate(algos)}
    fig, axes = plt.subplots(1, len(worlds), figsize=(5.2 * len(worlds) + 0.6, 4.6), squeeze=False,
                             sharex=True, sharey=True)
    ticks = _ticks(min(r["size"] for r in mine), max(r["size"] for r in mine))
    verdicts = []
    for ax, n in zip(axes[0], worlds):
        rs = [r for r in mine if r["nranks"] == n]
        summary = compare.summarize(rs, tolerance)
        verdicts.append(compare.verdict(summary, collective, n, tolerance).lstrip("# "))
        for a in algos:
            pts = sorted((r["size"], r["time_us"]) for r in rs if r["variant"] == a)
            if pts:
                ax.plot(*zip(*pts), "-o", color=colour[a], ms=3.5, lw=1.6, label=a)
            if model:
                pred = sorted((e["size"], e["predicted_us"][a]) for e in summary
                              if e["predicted_us"].get(a) is not None)
                if pred:
                    ax.plot(*zip(*pred), ":", color=colour[a], lw=1.1, alpha=0.8,
                            label=f"{a} (model)")
        auto = sorted((e["size"], e["auto_us"], e["auto_choice"]) for e in summary
                      if e["auto_us"] is not None)
        if auto:
            ax.plot([p[0] for p in auto], [p[1] for p in auto], "--x", color="black", ms=5, lw=1.0,
                    label="auto (tuner)")
            # ring the chosen algorithm's own point at each size
            for size, _us, choice in auto:
                t = next((e["times_us"].get(choice) for e in summary if e["size"] == size), None)
                if t is not None and choice in colour:
                    ax.plot([size], [t], "o", ms=10, mfc="none", mec=colour[choice], mew=1.6)
        fails = [e for e in summary if e["ok"] is False]
        if fails:
            ymin = min(r["time_us"] for r in rs)
            ax.plot([e["size"] for e in fails], [ymin / 1.6] * len(fails), "x", color="red", ms=8,
                    mew=2, label=f"chosen > {tolerance:g}x best")
        judged = [e for e in summary if e["ok"] is not None]
        ax.set_title(f"{collective}, {n} ranks  (choice within {round((tolerance - 1) * 100)}%: "
                     f"{sum(e['ok'] for e in judged)}/{len(judged)})", fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(FuncFormatter(_size_label))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.set_xlabel("size (bytes, nccl-tests convention)")
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", axis="y", alpha=0.12)
    axes[0][0].set_ylabel("time per call (us)")
    handles, labels = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    from matplotlib.lines import Line2D
    handles.append(Line2D([], [], marker="o", ms=10, mfc="none", mec="grey", ls="none"))
    labels.append("tuner's choice")
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8,
               frameon=False)
    fig.suptitle(f"hetccl {collective}: forced algorithms vs the tuner (median of max over ranks)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.1 if len(labels) <= 6 else 0.15, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return verdicts


def multi_algorithm_collectives(n: int) -> list[str]:
    """Benchmarkable collectives with more than one algorithm the flat tuner can run at n ranks."""
    from hetccl.collectives.tuner import Tuner
    t = Tuner.with_defaults(n, forced_spec="")
    out = []
    for coll in fmt.COLLECTIVES:
        runnable = {a.name for size in (64, 1 << 20, 64 << 20) for a, c in t.table(coll, size)
                    if c is not None and c != float("inf")}
        if len(runnable) > 1:
            out.append(coll)
    return out


def _sweep_command(n, colls, sweep, jpath):
    import run_all
    return [*run_all._hetccl_prefix(), "run", "-n", str(n), "--", sys.executable, "-m",
            "hetccl.benchmark.cli", "-c", colls, *sweep, "--json", jpath]


def _launch(cmd, n, what, log, timeout) -> None:
    import run_all
    print(f"[crossover] {shlex.join(cmd)}", flush=True)
    rc, secs, others = run_all.run_one(cmd, log, timeout)
    load = "" if others is None else f", other load during: {others:.0%}"
    print(f"[crossover] {n} ranks{what}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {secs:.1f} s "
          f"(log {log}{load})", flush=True)
    if rc != 0:
        print(run_all._tail(log, 15), file=sys.stderr)


def _raw_dir(args) -> str:
    if not args.raw_dir:
        args.raw_dir = tempfile.mkdtemp(prefix="hetccl-crossover-")
    os.makedirs(args.raw_dir, exist_ok=True)
    return args.raw_dir


def run_sweeps(args) -> list[list[str]]:
    """Run ``hetccl bench --algos all`` under ``hetccl run -n N`` for each N, ``--passes`` times;
    return the JSON paths of each pass. Passes after the first read the first pass's cost model."""
    sys.path.insert(0, HERE)
    import run_all
    raw = _raw_dir(args)
    sweep = ["--algos", "all", "--reps", str(args.reps), "--min-time", str(args.min_time),
             "--no-describe"]
    sweep += ["--sizes", args.sizes] if args.sizes else \
        ["-b", args.minbytes, "-e", args.maxbytes, "-f", str(args.stepfactor)]
    worlds = [int(x) for x in args.nranks.split(",") if x.strip()]
    passes = []
    for k in range(1, max(1, args.passes) + 1):
        paths = []
        for n in worlds:
            colls = args.collectives or ",".join(multi_algorithm_collectives(n))
            if not colls:
                print(f"[crossover] {n} ranks: no collective has more than one algorithm", flush=True)
                continue
            if k == 1 and not args.no_retune:
                tune = [*run_all._hetccl_prefix(), "tune", "-n", str(n), "-o", os.path.join(raw, f"tune-n{n}.json")]
                rc, secs, _ = run_all.run_one(tune, os.path.join(raw, f"tune-n{n}.log"), 300)
                print(f"[crossover] {shlex.join(tune)}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} "
                      f"in {secs:.1f} s", flush=True)
                print(run_all._tail(os.path.join(raw, f"tune-n{n}.log"), 12), flush=True)
            tag = f"algos-n{n}" + ("" if k == 1 else f"-pass{k}")
            jpath = os.path.join(raw, tag + ".json")
            cache = os.path.join(raw, f"cache-n{n}")
            saved = os.environ.get("XDG_CACHE_HOME")
            if k > 1 and os.path.isdir(cache):      # the first pass's cost model (snapshot_cost_models)
                os.environ["XDG_CACHE_HOME"] = cache
            try:
                _launch(_sweep_command(n, colls, sweep, jpath), n, f" pass {k}",
                        os.path.join(raw, tag + ".log"), args.timeout)
            finally:
                if saved is None:
                    os.environ.pop("XDG_CACHE_HOME", None)
                else:
                    os.environ["XDG_CACHE_HOME"] = saved
            if k == 1:
                snapshot_cost_models(cache)
            if os.path.exists(jpath):
                paths.append(jpath)
        passes.append(paths)
    return passes


def snapshot_cost_models(where) -> str:
    """Copy the per-host cost-model cache as the sweep just left it into *where* (an
    XDG_CACHE_HOME), every entry marked quiet, so that later passes' communicators price with
    the numbers the sweep priced with: an entry probed under load is otherwise probed again by
    the next communicators (collectives/probe.py) and could change the tuner's choices."""
    from hetccl.collectives import probe
    entries = probe.read_entries(probe.cache_path())
    dest = os.path.join(where, "hetccl", os.path.basename(probe.cache_path()))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "w") as f:
        json.dump({"format": probe.FORMAT, "entries": {k: dict(v, noisy=False)
                                                       for k, v in entries.items()}}, f, indent=1)
    return where


# ------------------------------------------------------------------ passes
#
# On this kind of host a few seconds of a slow vCPU placement can slow one variant's repetitions
# even though every variant of a size runs back to back within each repetition. So every point is
# measured the same way in every pass, and nothing is re-measured selectively: a pass's verdict is
# reported whole, the pooled verdict (all passes' repetitions together, same rule) is the overall
# one, and a size the passes disagree about is listed with each pass's ratio.


def _groups_of(rows):
    """[(collective, nranks, rows)] in the table order."""
    out = []
    for coll in [c for c in fmt.COLLECTIVES if any(r["collective"] == c for r in rows)]:
        for n in sorted({r["nranks"] for r in rows if r["collective"] == coll}):
            out.append((coll, n, [r for r in rows if r["collective"] == coll and r["nranks"] == n]))
    return out


def pool(passes) -> list[dict]:
    """One row per (collective, nranks, size, variant) over every pass: the repetitions of all
    passes together (``times_us``) and their median (``time_us``); ``algos`` lists auto's choices
    when the passes differ."""
    by_key = {}
    for rows in passes:
        for r in rows:
            by_key.setdefault((r["collective"], r["nranks"], r["size"], r["variant"]), []).append(r)
    out = []
    for key, rs in by_key.items():
        times = [t for r in rs for t in (r.get("times_us") or [r["time_us"]])]
        row = dict(rs[0], times_us=times, time_us=statistics.median(times), passes=len(rs))
        algos = list(dict.fromkeys(r.get("algo") for r in rs))
        if len(algos) > 1:
            row["algos"] = algos
        out.append(row)
    return out


def passes_report(passes, tolerance) -> tuple[list[str], bool]:
    """Every pass's count beside the pooled verdict, per (collective, world size), and whether the
    pooled verdict passes at every size and every pass measured every point of the first."""
    pct = f"within{round((tolerance - 1) * 100):d}%"
    per_pass = [{(c, n): {e["size"]: e for e in compare.summarize(rs, tolerance) if e["ok"] is not None}
                 for c, n, rs in _groups_of(rows)} for rows in passes]
    pooled_rows = pool(passes)
    pooled = {(c, n): {e["size"]: e for e in compare.summarize(rs, tolerance) if e["ok"] is not None}
              for c, n, rs in _groups_of(pooled_rows)}
    lines = ["", f"# tuner check over {len(passes)} passes (every point measured in each; {pct} = the "
                 f"chosen algorithm's forced time <= {tolerance:g} x the fastest forced):"]
    ok, totals = True, [0] * (len(passes) + 1)
    judged_total = 0
    for (coll, n), points in pooled.items():
        counts = []
        for k, pp in enumerate(per_pass):
            got = pp.get((coll, n), {})
            counts.append(sum(bool(got.get(s, {}).get("ok")) for s in points))
            totals[k] += counts[-1]
        good = sum(bool(e["ok"]) for e in points.values())
        totals[-1] += good
        judged_total += len(points)
        notes = []
        missing = [s for s in points if any(s not in pp.get((coll, n), {}) for pp in per_pass)]
        if missing:
            ok = False
            notes.append("not measured in every pass: " + ", ".join(fmt.format_size(s) for s in missing))
        for size, e in points.items():
            ratios = [pp.get((coll, n), {}).get(size) for pp in per_pass]
            each = " / ".join("-" if x is None else f"{x['ratio']:.2f}x" for x in ratios)
            label = fmt.format_size(size)
            choices = {x["auto_choice"] for x in ratios if x is not None}
            changed = f", the tuner chose {' / '.join(sorted(choices))} in different passes" \
                if len(choices) > 1 else ""
            if not e["ok"]:
                notes.append(f"{label} FAIL pooled {e['ratio']:.2f}x (passes {each}), chose "
                             f"{e['auto_choice']}, fastest {e['best']}{changed}")
            elif None not in ratios and (len({x["ok"] for x in ratios}) > 1 or changed):
                notes.append(f"{label} passes disagree ({each}), pooled {e['ratio']:.2f}x PASS{changed}")
        ok = ok and good == len(points)
        side = ", ".join(f"pass {k + 1} {c}/{len(points)}" for k, c in enumerate(counts))
        lines.append(f"# {coll}, {n} ranks: {side}; pooled {good}/{len(points)}"
                     + (f" ({'; '.join(notes)})" if notes else ""))
    side = ", ".join(f"pass {k + 1} {totals[k]}/{judged_total}" for k in range(len(passes)))
    lines.append(f"# all points: {side}; pooled {totals[-1]}/{judged_total}")
    lines.append(f"# overall (pooled over {len(passes)} passes): {'PASS' if ok else 'FAIL'}")
    return lines, ok


MODEL_FACTOR = 2.0     # the model check: predicted time of the chosen algorithm within 2x of measured


def model_check(summary, collective, nranks, factor=MODEL_FACTOR) -> tuple[list[str], str, bool]:
    """Predicted against measured time of the algorithm the tuner chose, per size (the measured
    time is that algorithm's own forced column, interleaved with the others): table lines, a
    verdict line, and whether every size with a prediction is within *factor*."""
    lines = [f"# model, {collective}, {nranks} ranks: predicted vs measured time (us) of the chosen "
             f"algorithm (its forced column); within{factor:g}x = {1 / factor:g} <= predicted/measured "
             f"<= {factor:g}",
             f"#{'size':>9}  {'chosen':<22} {'predicted':>10} {'measured':>10} {'ratio':>6}  verdict"]
    judged, outside = 0, []
    for e in summary:
        choice = e["auto_choice"]
        pred, meas = e["predicted_us"].get(choice), e["times_us"].get(choice)
        if pred is None or not meas:
            continue
        ratio = pred / meas
        good = 1 / factor <= ratio <= factor
        judged += 1
        if not good:
            outside.append(f"{fmt.format_size(e['size'])} ({ratio:.2f})")
        lines.append(f"{fmt.format_size(e['size']):>10}  {choice:<22} {fmt.format_time(pred):>10} "
                     f"{fmt.format_time(meas):>10} {ratio:>6.2f}  {'ok' if good else 'OUTSIDE'}")
    verdict = (f"# model, {collective}, {nranks} ranks: within {factor:g}x at {judged - len(outside)}/"
               f"{judged} sizes" + (f"; outside at {', '.join(outside)}" if outside else ""))
    return lines + [verdict], verdict, not outside


def check_all(rows, tolerance, label="first pass") -> tuple[list[str], bool]:
    """The within-tolerance table and verdict of every (collective, world size) in *rows*, the
    model's predicted/measured table, then a summary; and whether every judged size passed the
    tuner check (the model check is reported beside it)."""
    lines, ok, model_ok = [], True, True
    verdicts, model_verdicts = [], []
    for coll, n, rs in _groups_of(rows):
        summary = compare.summarize(rs, tolerance)
        algos = compare.algorithms_of(rs, coll)
        lines += [""] + compare.format_summary(summary, algos, coll, n, tolerance)
        judged = [e for e in summary if e["ok"] is not None]
        ok = ok and all(e["ok"] for e in judged)
        verdicts.append(compare.verdict(summary, coll, n, tolerance))
        table, verdict, good = model_check(summary, coll, n)
        lines += [""] + table
        model_verdicts.append(verdict)
        model_ok = model_ok and good
    lines += ["", "# tuner check (the chosen algorithm's forced time within tolerance of the fastest "
                  "forced algorithm, every size):"]
    lines += verdicts
    lines.append(f"# overall ({label}): {'PASS' if ok else 'FAIL'}")
    lines += ["", f"# model check (predicted time of the chosen algorithm within {MODEL_FACTOR:g}x of "
                  f"its measured time, every size):"]
    lines += model_verdicts
    lines.append(f"# model overall: {'PASS' if model_ok else 'FAIL'}")
    return lines, ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="*", help="JSON files from `hetccl bench --algos all --json`")
    p.add_argument("--run", action="store_true", help="run the sweeps (hetccl run -n N) first")
    p.add_argument("--nranks", default="2,3,4", help="with --run: world sizes (default %(default)s)")
    p.add_argument("-c", "--collectives", default=None,
                   help="collectives to run and check (default: with --run, every one with more "
                        "than one algorithm at that world size; else every one in the JSON)")
    p.add_argument("--plot", default=None,
                   help=f"collectives to draw a PNG for (default: those of {PLOTTED} in the input; "
                        f"'none' for none)")
    p.add_argument("--sizes", default=None, help="with --run: explicit sizes, e.g. 8,1K,64K,1M,64M")
    p.add_argument("-b", "--minbytes", default="8", help="with --run (default %(default)s)")
    p.add_argument("-e", "--maxbytes", default="256M", help="with --run (default %(default)s)")
    p.add_argument("-f", "--stepfactor", type=int, default=2, help="with --run (default %(default)s)")
    p.add_argument("--reps", type=int, default=15,
                   help="with --run: repetitions per size and algorithm (default %(default)s)")
    p.add_argument("--min-time", type=float, default=0.01,
                   help="with --run: seconds of one repetition (default %(default)s: short blocks, "
                        "so the algorithms of a size run within tens of ms of each other)")
    p.add_argument("--passes", type=int, default=2,
                   help="with --run: full passes over every point, each judged, then pooled "
                        "(default %(default)s)")
    p.add_argument("--again", action="append", default=[], metavar="JSON",
                   help="JSON of a further full pass (`hetccl bench --algos all`, one file per "
                        "world size) to judge and pool with the input, instead of running one")
    p.add_argument("--timeout", type=float, default=3600, help="with --run: seconds per world size")
    p.add_argument("--raw-dir", default=None, help="with --run: where the JSON and logs go")
    p.add_argument("--no-retune", action="store_true",
                   help="with --run: keep the cached cost model instead of `hetccl tune -n N` first")
    p.add_argument("--out-dir", default=HERE, help="where the PNGs go (default: bench/)")
    p.add_argument("--prefix", default="crossover_", help="PNG name prefix (default %(default)s)")
    p.add_argument("--tolerance", type=float, default=compare.TOLERANCE,
                   help="auto passes within this factor of the fastest (default %(default)s)")
    p.add_argument("--no-model", action="store_true", help="don't draw the cost model's predictions")
    p.add_argument("--strict", action="store_true", help="exit 1 unless every check passes")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    paths = list(args.json)
    more = [list(args.again)] if args.again else []
    if args.run:
        ran = run_sweeps(args)
        paths += ran[0] if ran else []
        more += [p for p in ran[1:] if p]
    if not paths:
        p.error("give JSON files or --run")
    rows = load_rows(paths)
    if not rows:
        print("crossover: nothing to plot", file=sys.stderr)
        return 1
    wanted = {fmt.canonical(c) for c in (args.collectives or "").split(",") if c.strip()}
    if wanted and not args.run:
        rows = [r for r in rows if r["collective"] in wanted]
    lines, ok = check_all(rows, args.tolerance, "first pass" if more else "one pass")
    for line in lines:
        print(line, flush=True)
    wrong = [r for rs in [rows] + [load_rows(g) for g in more] for r in rs if r.get("wrong")]
    if wrong:                    # a wrong result fails the check whatever the times say
        ok = False
        print("# FAIL: wrong results at " + ", ".join(
            f"{r['collective']} {fmt.format_size(r['size'])} {r['variant']} @{r['nranks']} "
            f"({r['wrong']} elements)" for r in wrong), flush=True)
    if more:
        passes = [rows]
        for k, group in enumerate(more, start=2):
            extra = load_rows(group)
            if wanted and not args.run:
                extra = [r for r in extra if r["collective"] in wanted]
            print(f"\n# ---------------- pass {k} ----------------", flush=True)
            for line in check_all(extra, args.tolerance, f"pass {k}")[0]:
                print(line, flush=True)
            passes.append(extra)
        lines, pooled_ok = passes_report(passes, args.tolerance)
        ok = pooled_ok and not wrong
        for line in lines:
            print(line, flush=True)
    present = list(dict.fromkeys(r["collective"] for r in rows))
    if args.plot is None:
        plots = [c for c in PLOTTED.split(",") if c in present]
    elif args.plot.strip().lower() == "none":
        plots = []
    else:
        plots = [fmt.canonical(c) for c in args.plot.split(",") if c.strip()]
    os.makedirs(args.out_dir, exist_ok=True)
    rc = 0
    for coll in plots:
        if coll not in present:
            print(f"crossover: no {coll} rows in the input", file=sys.stderr)
            rc = 1
            continue
        path = os.path.join(args.out_dir, f"{args.prefix}{coll}.png")
        plot_collective(rows, coll, path, args.tolerance, model=not args.no_model)
        print(f"[crossover] wrote {os.path.relpath(path, REPO) if path.startswith(REPO) else path}")
    if args.strict and not ok:
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
