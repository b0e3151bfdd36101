#!/usr/bin/env python3
"""What installing hetccl costs other programs: whole-process import times, medians of N runs.

    python bench/import_time.py                  # 10 runs per case, table + PASS/FAIL
    python bench/import_time.py --runs 20 --json bench/results/import-time.json

Cases, each a fresh ``python -c ...`` timed from fork to exit (wall clock, the whole process: the
interpreter's start, the import, the teardown), run in rounds: every round runs every case once,
the order reversed every other round, so the cases of a pair see the same machine:

* ``import torch`` with hetccl installed (torch runs its ``torch.backends`` entry points) against
  the same with TORCH_DEVICE_BACKEND_AUTOLOAD=0 (entry points skipped). Target: ratio <= 1.05.
* ``import hetccl``, against ``python -c pass`` (the interpreter alone): the difference is what
  the import costs. Target: <= 0.15 s. For comparison, ``import numpy, zmq`` and the communicator
  (``import hetccl; hetccl.init`` loads numpy, the compiled core, topology and transports).
* Inside one process (after the rounds): torch's entry-point step replayed after ``import torch``
  with autoload off, timing its scan of the installed distributions and the load + call of each
  entry point, i.e. the whole difference between the first two cases, without process noise.

One warm-up run of every case first (file caches). The hetccl timed is the one the repository's
scripts choose (bench/checkout.py): the installed package unless PYTHONPATH names the checkout.
The machine's load (/proc/loadavg) is printed before and after: on a shared host the medians move
with it. The target lines give the ratio (or difference) of the medians, which the targets are
stated in, and the median over rounds of the same-round ratio, which drifting load moves less.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from checkout import IMPORT_ROOT  # noqa: E402  (which hetccl: the installed one, or this checkout)

AUTOLOAD = "TORCH_DEVICE_BACKEND_AUTOLOAD"
# name -> (python code, environment overrides)
CASES = {
    "torch": ("import torch", {AUTOLOAD: "1"}),
    "torch autoload off": ("import torch", {AUTOLOAD: "0"}),
    "interpreter": ("pass", {}),
    "hetccl": ("import hetccl", {}),
    "numpy+zmq": ("import numpy, zmq", {}),
    "hetccl communicator": ("import hetccl; hetccl.init", {}),
}
# (case, baseline, kind, target, description)
TARGETS = (
    ("torch", "torch autoload off", "ratio", 1.05,
     "import torch with hetccl installed <= 1.05x with TORCH_DEVICE_BACKEND_AUTOLOAD=0"),
    ("hetccl", "interpreter", "difference", 0.15, "import hetccl <= 0.15 s"),
)
COMPARED = (("numpy+zmq", "interpreter"), ("hetccl communicator", "interpreter"))

# torch's _import_device_backends replayed after ``import torch`` with autoload off: the entry-point
# scan (torch's, with or without hetccl) and the load + call of each entry point (hetccl's own
# cost), timed inside the process, which machine load moves far less than whole processes
ENTRY_POINTS = """
import time
import torch
from importlib.metadata import entry_points
t0 = time.perf_counter()
found = entry_points(group="torch.backends")
t1 = time.perf_counter()
for ep in found:
    ep.load()()
t2 = time.perf_counter()
print(t1 - t0, t2 - t1, ",".join(ep.name for ep in found) or "-")
"""


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def run_once(code: str, overrides: dict) -> tuple[float, str]:
    """(wall seconds of ``python -c code``, its stdout)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", **overrides)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=IMPORT_ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"`python -c {code!r}` failed ({p.returncode}):\n{p.stderr[-2000:]}")
    if "hetccl" in p.stderr:
        print(f"[import_time] warning printed by `{code}`:\n{p.stderr.strip()}", file=sys.stderr)
    return elapsed, p.stdout


def measure(names: list[str], runs: int) -> dict[str, list[float]]:
    for name in names:                                   # warm-up, not counted
        run_once(*CASES[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(run_once(*CASES[name])[0])
    return times


def entry_point_work(runs: int) -> dict:
    """Medians of torch's entry-point scan and of loading + calling the entry points, seconds."""
    scans, calls = [], []
    for _ in range(runs):
        scan, call, names = run_once(ENTRY_POINTS, {AUTOLOAD: "0"})[1].split()
        scans.append(float(scan))
        calls.append(float(call))
    return {"scan": scans, "load_and_call": calls, "entry_points": names}


def where_hetccl() -> str:
    code = "import importlib.util as u, os; print(os.path.dirname(u.find_spec('hetccl').origin))"
    p = subprocess.run([sys.executable, "-c", code], cwd=IMPORT_ROOT, capture_output=True, text=True)
    return p.stdout.strip() or "not importable"


def report(times: dict[str, list[float]], runs: int, load_before: str, load_after: str,
           inside: dict | None) -> str:
    med = {name: statistics.median(v) for name, v in times.items()}
    lines = [f"# import costs ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)",
             "",
             f"- command: `python bench/import_time.py --runs {runs}`; whole-process wall time of "
             f"`python -c CODE`, median of {runs} runs per case, cases alternated within each round",
             f"- hetccl timed: {where_hetccl()}; Python {sys.version.split()[0]}, torch "
             f"{importlib.metadata.version('torch')}",
             f"- load average (1, 5, 15 min): {load_before} before, {load_after} after; "
             f"{os.cpu_count()} CPUs",
             "",
             "| case | code | median (s) | min (s) | max (s) |",
             "|---|---|---|---|---|"]
    for name, v in times.items():
        code, env = CASES[name]
        shown = " ".join([*(f"{k}={x}" for k, x in env.items()), f"python -c '{code}'"])
        lines.append(f"| {name} | `{shown}` | {med[name]:.3f} | {min(v):.3f} | {max(v):.3f} |")
    lines.append("")
    for case, base, kind, target, text in TARGETS:
        if case not in med or base not in med:
            continue
        value = med[case] / med[base] if kind == "ratio" else med[case] - med[base]
        pairs = zip(times[case], times[base])
        paired = statistics.median(a / b if kind == "ratio" else a - b for a, b in pairs)
        unit = "x" if kind == "ratio" else " s"
        verdict = "PASS" if value <= target else "FAIL"
        lines.append(f"- {verdict}: {text}: {value:.3f}{unit} of the medians ({case} "
                     f"{med[case]:.3f} s, {base} {med[base]:.3f} s); median of the same-round "
                     f"pairs {paired:.3f}{unit}")
    for case, base in COMPARED:
        if case in med and base in med:
            lines.append(f"- {case}: {med[case] - med[base]:.3f} s over the interpreter alone")
    if inside:
        scan, call = (statistics.median(inside[k]) for k in ("scan", "load_and_call"))
        share = f" = {100 * (scan + call) / med['torch autoload off']:.1f}% of `import torch` with " \
                f"autoload off" if "torch autoload off" in med else ""
        lines.append(f"- inside the process, median of {len(inside['scan'])}: torch's entry-point "
                     f"scan {1e3 * scan:.1f} ms, loading and calling the entry points "
                     f"({inside['entry_points']}) {1e3 * call:.1f} ms{share}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="timed runs per case (median)")
    ap.add_argument("--cases", default=",".join(CASES),
                    help=f"comma-separated subset of: {', '.join(CASES)}")
    ap.add_argument("--json", default="", help="also write every run's time to this file")
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    before = loadavg()
    times = measure(names, args.runs)
    inside = entry_point_work(args.runs) if "torch" in names else None
    after = loadavg()
    text = report(times, args.runs, before, after, inside)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": args.runs, "load_before": before, "load_after": after,
                       "times": times, "entry_points": inside, "report": text}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
