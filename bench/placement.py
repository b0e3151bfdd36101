#!/usr/bin/env python3
"""Where the host has put this VM's first two vCPUs right now, sampled while a benchmark runs:
the round trip of one cache line between two threads pinned to them.

    python bench/placement.py --seconds 30          # one sample every --period seconds, printed

The host moves the vCPUs between placements that change cache-to-cache traffic several times
over, for seconds to minutes at a time (measured on the 2-vCPU AMD EPYC VM, 2026-12-08, quiet
and loaded alike: a round trip of ~27 ns (the two vCPUs on one core), ~65 ns (one L3) and
~370-400 ns ("far"); the change from 65 to ~380 ns came with no change of load). Every
collective whose time is cache-to-cache traffic slows with it: in the 4-rank peers job of
2026-12-07m the 512 KiB allreduce took 3.5-4x longer in such a stretch, hetccl's (113 -> 474 us)
and Open MPI's (265 -> 889-1104 us) alike, mid-run (bench/results/ar4-swing-analysis-*.txt). A
benchmark that compares libraries run one after the other therefore has to know which runs
such a stretch hit: bench/run_all.py samples with Watch during every run.

Watch runs a small C program (compiled once with gcc into a cache directory; no gcc: no
samples): two threads pinned to two CPUs of this process's affinity pass a counter back and
forth for --burst milliseconds every --period seconds (the least round trip of bursts of 20;
both CPUs busy ~0.2% of the time: 10 ms every 5 s) until stopped. A sample above FAR_NS is
"far". On a loaded host the two threads are seldom on their CPUs at once and the samples read
high: they are meant for the quiet runs the benchmarks wait for.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

FAR_NS = 200.0        # round trips above this: the far placement (near ~65 ns, far ~370-400 ns)

C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static _Alignas(64) _Atomic long ping;
static _Alignas(64) _Atomic long pong;
static _Alignas(64) volatile sig_atomic_t stop;
static _Alignas(64) _Atomic int active;            /* a burst under way: the echo thread spins */
static int cpu_b;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void pin(int c) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(c, &s); sched_setaffinity(0, sizeof s, &s); }
static void on_term(int sig) { (void)sig; stop = 1; }
static void *echo(void *x) {
    (void)x; pin(cpu_b); long v = 0;
    while (!stop) {                    /* between bursts it sleeps: the benchmark keeps its CPU */
        if (!atomic_load(&active)) { usleep(1000); continue; }
        long w = atomic_load(&ping);
        if (w != v) { v = w; atomic_store(&pong, v); }
        else __builtin_ia32_pause();
    }
    return 0;
}
int main(int argc, char **argv) {
    double period = atof(argv[1]), burst = atof(argv[2]) * 1e-3, t0 = now();
    cpu_b = atoi(argv[4]);
    signal(SIGTERM, on_term);
    pin(atoi(argv[3]));
    pthread_t t; pthread_create(&t, 0, echo, 0);
    long i = 0;
    while (!stop) {
        double best = 1e12, w0 = now();
        atomic_store(&active, 1);
        while (now() - w0 < burst && !stop) {
            double s = now(); long k;
            for (k = 0; k < 20 && !stop; k++) {
                double lim = now() + 0.01;             /* the echo thread off its CPU: give up */
                atomic_store(&ping, ++i);
                while (atomic_load(&pong) != i && !stop && now() < lim) __builtin_ia32_pause();
                if (atomic_load(&pong) != i) break;
            }
            if (k == 20) { double d = (now() - s) / 20 * 1e9; if (d < best) best = d; }
        }
        atomic_store(&active, 0);
        if (best < 1e12) { printf("%.3f %.1f\n", now() - t0, best); fflush(stdout); }
        double until = now() + period;
        while (!stop && now() < until) usleep(20000);
    }
    stop = 1; pthread_join(t, 0);
    return 0;
}
"""


def _binary() -> str | None:
    """The compiled sampler (cached by source hash), or None without gcc or two CPUs."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None
    if len(cpus) < 2 or not shutil.which("gcc"):
        return None
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hetccl-bench")
    exe = os.path.join(cache, "placement-" + hashlib.sha256(C.encode()).hexdigest()[:12])
    if os.path.exists(exe):
        return exe
    os.makedirs(cache, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "placement.c")
        with open(src, "w") as f:
            f.write(C)
        tmp = os.path.join(d, "placement")
        if subprocess.run(["gcc", "-O2", "-pthread", "-o", tmp, src], capture_output=True).returncode:
            return None
        part = f"{exe}.{os.getpid()}"
        shutil.move(tmp, part)
        os.replace(part, exe)              # whole, even when two benchmarks compile at once
    return exe


def parse(text: str) -> list[tuple[float, float]]:
    """The sampler's output: (seconds since start, round trip in ns) per sample."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out.append((float(parts[0]), float(parts[1])))
            except ValueError:
                continue
    return out


def summary(samples) -> dict | None:
    """Least, median and greatest round trip (ns), the number of samples and how many were far."""
    ns = [s[1] for s in samples]
    if not ns:
        return None
    return {"min_ns": min(ns), "median_ns": statistics.median(ns), "max_ns": max(ns), "n": len(ns),
            "far": sum(1 for x in ns if x > FAR_NS)}


def describe(s: dict | None) -> str:
    """One table cell: median (min-max) ns and the far samples, or '?' without samples."""
    if not s:
        return "?"
    far = f", **{s['far']}/{s['n']} far**" if s["far"] else f", {s['n']} samples"
    return f"{s['median_ns']:.0f} ({s['min_ns']:.0f}-{s['max_ns']:.0f}) ns{far}"


class Watch:
    """Samples the placement from start() to stop() (returns summary()); a no-op without gcc."""

    def __init__(self, period: float = 5.0, burst_ms: float = 10.0):
        self.period, self.burst_ms, self.p = period, burst_ms, None

    def start(self) -> "Watch":
        exe = _binary()
        if exe is not None:
            a, b = sorted(os.sched_getaffinity(0))[:2]
            self.p = subprocess.Popen([exe, str(self.period), str(self.burst_ms), str(a), str(b)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def stop(self) -> dict | None:
        if self.p is None:
            return None
        p, self.p = self.p, None
        p.send_signal(signal.SIGTERM)
        try:
            out, _ = p.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        return summary(parse(out))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--period", type=float, default=5.0)
    ap.add_argument("--burst", type=float, default=10.0, help="milliseconds per sample")
    a = ap.parse_args(argv)
    exe = _binary()
    if exe is None:
        print("no sampler (needs gcc and two CPUs)", file=sys.stderr)
        return 1
    a_cpu, b_cpu = sorted(os.sched_getaffinity(0))[:2]
    p = subprocess.Popen([exe, str(a.period), str(a.burst), str(a_cpu), str(b_cpu)], stdout=subprocess.PIPE, text=True)
    t_end = time.monotonic() + a.seconds
    try:
        for line in p.stdout:
            print(time.strftime("%H:%M:%S", time.gmtime()), line.strip(), flush=True)
            if time.monotonic() > t_end:
                break
    finally:
        p.terminate()
        p.wait(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
