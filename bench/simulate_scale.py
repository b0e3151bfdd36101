#!/usr/bin/env python3
"""How fast ``hetccl simulate`` is at cluster scale: wall time, CPU time and peak memory.

    python bench/simulate_scale.py                     # 100,000 ranks, 20 sizes, 3 runs
    python bench/simulate_scale.py --ranks 16384,100000 --runs 5

For each rank count: ``hetccl topo --synth`` writes a mixed-vendor cluster (8 accelerators per host,
nvidia 60% / hygon 25% / ascend 15%, 8 x 400 Gbit/s rails, 3:1 oversubscription), then
``hetccl simulate --sizes 1K..512M`` (20 sizes, allreduce) runs in a fresh process, timed from
outside (reading the file included); peak memory is the child's max RSS. Target: < 10 s and < 2 GiB
at 100,000 ranks. The machine's load average is printed with each run: CPU time is the figure a
shared machine does not inflate.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkout import IMPORT_ROOT as ROOT  # noqa: E402  (which hetccl: installed, or this checkout; bench/checkout.py)
# `hetccl simulate` in this process, then its own peak memory (the synth run is another process)
MEASURED = ("import resource, sys; from hetccl.cli import main; rc = main(sys.argv[1:]); "
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
SPEC = "ranks={n},accel=8,vendors=nvidia:60+hygon:25+ascend:15,nics=8,nic_gbps=400,oversub=3"


def run(cmd, env):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rss = next((int(ln.split()[1]) / 1024 for ln in p.stdout.splitlines() if ln.startswith("MAXRSS ")), 0.0)
    return wall, cpu, rss, p.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", default="100000")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    env = dict(os.environ)                                  # PYTHONPATH: bench/checkout.py
    env.pop("HETCCL_TUNING_FILE", None)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.ranks.split(",")):
            topo = os.path.join(tmp, f"c{n}.json")
            w, c, _, out = run([sys.executable, "-m", "hetccl", "topo", "--synth", SPEC.format(n=n), "-o", topo], env)
            print(f"# {n} ranks: --synth {w:.1f} s ({os.path.getsize(topo) / 1e6:.0f} MB file): {out.strip()}")
            walls, cpus, rss = [], [], 0.0
            for k in range(args.runs):
                load = os.getloadavg()[0]
                w, c, m, out = run([sys.executable, "-c", MEASURED, "simulate", "--topo", topo, "--sizes", "1K..512M",
                                    "--json", os.path.join(tmp, "out.json")], env)
                walls.append(w)
                cpus.append(c)
                rss = max(rss, m)
                print(f"  run {k + 1}: wall {w:.2f} s, cpu {c:.2f} s, load average {load:.2f}", flush=True)
            good = statistics.median(walls) < 10 and rss < 2048
            ok &= good
            print(f"{n} ranks x 20 sizes: median wall {statistics.median(walls):.2f} s, median cpu "
                  f"{statistics.median(cpus):.2f} s, peak memory {rss:.0f} MiB "
                  f"(target < 10 s, < 2048 MiB): {'PASS' if good else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
