#!/usr/bin/env python3
"""Benchmark hetccl, Open MPI and gloo in one invocation on this machine and compare them.

    python bench/run_all.py                      # 2 and 4 ranks, allreduce+allgather, 5 rounds
    python bench/run_all.py --quick              # smoke run: 4 sizes, 1 round
    python bench/run_all.py --nranks 2 --rounds 5 --sizes 8,64K,1M,64M --out /tmp/r.md
    python bench/run_all.py -c reduce_scatter,broadcast,alltoall,reduce,gather,scatter
    python bench/run_all.py --issue3             # the "full collective API" comparison (below)

Every collective of the benchmark runner can be compared (allreduce, allgather, reduce_scatter,
alltoall, broadcast, reduce, gather, scatter; root 0), through each library's own call: see
bench/peers/mpi_bench.py and bench/peers/gloo_bench.py.

``--issue3`` runs allreduce, allgather, reduce_scatter, broadcast and alltoall at 2 and 4 ranks over
8 B .. 256 MiB in x4 steps, and prints for each (ranks, collective) whether hetccl is at least as
fast as the faster of Open MPI and gloo at every size, listing the sizes where it is not.
``--issue3 --nranks 8`` runs the same sweep at 8 ranks (issue 18; ~7-10 minutes a round on 2
cores). Sizes whose runs may not fit in the memory available at the start are left out of that
rank count's sweep with a CAPPED line (``--max-mem``, ``run_bytes``).

Every library runs the same sweep through hetccl's benchmark runner (hetccl/benchmark/runner.py:
warm-up, calibrated iteration count, median over repetitions of the max over ranks). Machine
noise here is time-varying (the host moves the vCPUs between near and far placements every few
seconds), so the libraries are interleaved: each round runs every library once for every rank
count, the order of libraries rotating from round to round, and the tables show the median over
rounds of each library's per-round median. Results go to stdout and to a markdown file (--out).
The headline checks of the foundation issue are printed as PASS/FAIL lines.

Every result is checked (the ``#wrong`` column). A run that returned wrong elements keeps its rows in
the tables, marked ``(N wrong!)``, its sizes fail their checks, and run_all exits 1 (with or
without ``--strict``), as it does when a run fails. Each library's process binding (every rank's
CPU affinity as its launcher left it) is recorded in the markdown. Open MPI binds each rank to a
core by default when there are no more ranks than cores; ``hetccl run`` and the gloo launcher never
bind, so mpirun gets ``--bind-to none`` (``--mpirun-args``) and every library runs unbound.

Before the runs, hetccl's cost model is re-measured (``hetccl tune -n N`` per rank count), so the
tuner's choices come from this window rather than from whatever moment first filled the per-host
cache; ``--no-retune`` keeps the cache. The model used is recorded in the markdown.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "peers"))
from checkout import IMPORT_ROOT  # noqa: E402  (which hetccl: the installed one, or this checkout; bench/checkout.py)
from _common import load_benchmark, load_table  # noqa: E402
from ompi_job import end_job, job_files  # noqa: E402
import placement as vcpus  # noqa: E402  (the vCPUs' placement sampled during each run)

fmt, runner, _cli = load_benchmark()
_table = load_table()
aggregate, comparison_table, sizes_measured = _table.aggregate, _table.comparison_table, _table.sizes_measured
placement_lines = _table.placement_lines
LIBS, LABEL, PEERS = _table.LIBS, _table.LABEL, _table.PEERS
QUICK_SIZES = "8,64K,1M,64M"
HEADLINE_SIZES = (8, 64 << 20)
MPIRUN_ARGS = "--bind-to none"      # like hetccl run and torchrun (see --mpirun-args)
ISSUE3_COLLECTIVES = "allreduce,allgather,reduce_scatter,broadcast,alltoall"
ISSUE3_NRANKS = "2,4"
ISSUE3_SIZES = ",".join(str(x) for x in fmt.size_sweep(8, "256M", 4) + [256 << 20])

# Memory: a rank holds the interpreter, numpy and its library (~100-150 MiB measured), the
# benchmark's send and receive buffers of the size being run, and whatever the library allocates
# for the call; up to as much again is assumed (Open MPI and gloo stage through temporaries).
RANK_BASE_BYTES = 150 << 20
SCRATCH_FACTOR = 2.0
MAX_MEM_SHARE = 0.8

# (nranks, collective, size, metric, peer, factor, description); metric "busbw": hetccl >= factor*peer,
# "time": hetccl <= factor*peer
HEADLINE = (
    (2, "allreduce", 64 << 20, "busbw", "ompi", 1.5, "allreduce busbw at 64 MiB >= 1.5x Open MPI"),
    (2, "allreduce", 64 << 20, "busbw", "gloo", 2.0, "allreduce busbw at 64 MiB >= 2x gloo"),
    (2, "allreduce", 8, "time", "ompi", 2.0, "allreduce latency at 8 B <= 2x Open MPI"),
    (2, "allgather", 64 << 20, "busbw", "ompi", 1.0, "allgather busbw at 64 MiB >= 1.0x Open MPI"),
    (4, "allreduce", 8, "time", "ompi", 2.0, "allreduce latency at 8 B <= 2x Open MPI"),
    (4, "allreduce", 8, "time", "gloo", 0.1, "allreduce latency at 8 B <= 0.1x gloo"),
)


# ------------------------------------------------------------------ commands


def _hetccl_prefix() -> list[str]:
    """``python -m hetccl`` rather than the ``hetccl`` console script: the script imports whatever
    tree is installed, while ``-m`` from the repo root runs (and the ranks import) this checkout."""
    return [sys.executable, "-m", "hetccl"]


def build_command(lib: str, n: int, sweep: list[str], json_path: str, args) -> list[str]:
    py = sys.executable
    if lib == "hetccl":
        if args.hetccl_launch:
            pre = shlex.split(args.hetccl_launch.format(n=n, python=py))
        else:
            pre = [*_hetccl_prefix(), "run", "-n", str(n), "--"]
        extra = ["--no-describe"] if args.no_describe else []
        return [*pre, py, "-m", "hetccl.benchmark.cli", *extra, *sweep, "--json", json_path]
    if lib == "ompi":
        cmd = [shutil.which("mpirun") or "mpirun", "-np", str(n)]
        if n > (os.cpu_count() or 1):
            cmd.append("--oversubscribe")
        cmd += ["-x", "OPENBLAS_NUM_THREADS", "-x", "OMP_NUM_THREADS"]
        cmd += shlex.split(args.mpirun_args or "")
        return [*cmd, py, os.path.join(HERE, "peers", "mpi_bench.py"), *sweep, "--json", json_path]
    if lib == "gloo":
        return [py, os.path.join(HERE, "peers", "gloo_bench.py"), "-n", str(n), *sweep,
                "--json", json_path]
    raise ValueError(lib)


def run_env() -> dict:
    env = dict(os.environ)
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return env                        # PYTHONPATH: set by bench/checkout.py


def _busy_seconds() -> float | None:
    try:
        total, idle = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return (total - idle) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_one(cmd, log_path, timeout) -> tuple[int, float, float | None]:
    """Run *cmd* in its own process group, output to *log_path*; kill the group on timeout.

    Returns (exit code, seconds, share of the machine other processes used meanwhile): the CPU
    time all processes used (/proc/stat) minus what the run's own process tree used (rusage of
    reaped children), over wall time x CPUs.
    """
    t0 = time.monotonic()
    busy0, own0 = _busy_seconds(), _children_cpu()
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        env = run_env()
        files = job_files(cmd, env)
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                             cwd=IMPORT_ROOT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            log.write(f"\n[run_all] timed out after {timeout} s; process group killed\n")
            rc = 124
        except BaseException:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise
        finally:
            end_job(p.pid, files)     # an mpirun's ranks and segments outlive its process group
    wall = time.monotonic() - t0
    busy1, own1 = _busy_seconds(), _children_cpu()
    others = None
    if busy0 is not None and busy1 is not None and wall > 0:
        others = max(0.0, ((busy1 - busy0) - (own1 - own0)) / (wall * (os.cpu_count() or 1)))
    return rc, wall, others


def _cpu_times():
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals), idle


def cpu_busy(interval=0.5) -> float | None:
    """Fraction of all CPUs busy over *interval* seconds (None where /proc/stat is missing)."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(interval)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / (t1 - t0) if t1 > t0 else 0.0


def wait_for_quiet(max_busy: float, max_wait: float) -> float | None:
    """Sample other processes' CPU use before a run; wait (up to *max_wait* s) while it is high."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy is not None and busy > max_busy and time.monotonic() < deadline:
        time.sleep(1.0)
        busy = cpu_busy()
    return busy


def _tail(path, n=6) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = f.read().rstrip().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# ------------------------------------------------------------------ memory


def mem_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_bytes(n: int, colls, size: int) -> tuple[int, str]:
    """Bytes a run of *n* ranks may hold at *size* (RANK_BASE_BYTES + SCRATCH_FACTOR x the
    benchmark's buffers, per rank) for the hungriest of *colls*, and which one that is. Sizes are
    nccl-tests sizes: an allgather of 256 MiB writes a 256 MiB output from 256/n MiB per rank; an
    alltoall or allreduce of 256 MiB holds 256 MiB in and 256 MiB out on every rank."""
    best, which = 0, ""
    for c in colls:
        lay = fmt.layout(c, size, 4, n)
        b = lay.itemsize * (lay.send_count + lay.recv_count)
        if b > best:
            best, which = b, c
    return int(n * (RANK_BASE_BYTES + SCRATCH_FACTOR * best)), which


def memory_cap(n: int, colls, sizes, avail: int | None, share: float) -> tuple[list[int], list[str]]:
    """The sizes a run of *n* ranks can hold within *share* of *avail* bytes, and a CAPPED line
    naming what was left out and why (none when everything fits or *avail* is unknown)."""
    if avail is None or share <= 0:
        return list(sizes), []
    kept, dropped = [], []
    for size in sizes:
        need, coll = run_bytes(n, colls, size)
        (kept if need <= share * avail else dropped).append((size, need, coll))
    if not dropped:
        return [x[0] for x in kept], []
    size, need, coll = dropped[0]
    line = (f"CAPPED {n} ranks: {', '.join(fmt.format_size(x[0]) for x in dropped)} not run: "
            f"{fmt.format_size(size)} ({coll}) may need ~{need / 2**30:.1f} GiB for {n} ranks, more "
            f"than {share:.0%} of the {avail / 2**30:.1f} GiB available (free memory, or change "
            f"--max-mem)")
    return [x[0] for x in kept], [line]


# ------------------------------------------------------------------ aggregation


def headline_checks(agg) -> list[str]:
    lines = []
    for n, coll, size, metric, peer, factor, desc in HEADLINE:
        h = agg.get(("hetccl", n, coll, size))
        p = agg.get((peer, n, coll, size))
        label = f"{n} ranks: {desc}"
        if not any(k[1] == n for k in agg):
            lines.append(f"N/A   {label} ({n} ranks not run)")
            continue
        if h is None or p is None:
            missing = " and ".join(LABEL[x] for x, r in (("hetccl", h), (peer, p)) if r is None)
            lines.append(f"N/A   {label} (no data for {missing})")
            continue
        if h.get("wrong") or p.get("wrong"):
            lines.append(f"FAIL  {label}: wrong results (hetccl {h.get('wrong') or 0}, {LABEL[peer]} "
                         f"{p.get('wrong') or 0} elements)")
            continue
        best_ratio = p["best_time_us"] / h["best_time_us"]  # > 1: hetccl faster
        if metric == "busbw":
            ok = h["busbw"] >= factor * p["busbw"]
            detail = (f"hetccl {h['busbw']:.2f} GB/s vs {LABEL[peer]} {p['busbw']:.2f} GB/s "
                      f"(ratio {h['busbw'] / p['busbw'] if p['busbw'] else float('inf'):.2f}x, "
                      f"need >= {factor:g}x; best rounds {best_ratio:.2f}x)")
        else:
            ok = h["time_us"] <= factor * p["time_us"]
            detail = (f"hetccl {h['time_us']:.2f} us vs {LABEL[peer]} {p['time_us']:.2f} us "
                      f"(ratio {h['time_us'] / p['time_us']:.3f}x, need <= {factor:g}x; "
                      f"best rounds {1 / best_ratio:.3f}x)")
        lines.append(f"{'PASS' if ok else 'FAIL'}  {label}: {detail}")
    return lines


def issue3_checks(agg, nranks, colls, sizes, libs) -> list[str]:
    """Per (ranks, collective): is hetccl at least as fast as the faster peer at every size?

    Compares medians over rounds (time per call); lists each size where hetccl is slower, with
    hetccl time / faster peer time and which peer that was (and the same ratio over each library's
    fastest round, which is less sensitive to the host's slow phases)."""
    peers = [p for p in libs if p in PEERS]
    lines = []
    for n in nranks:
        for coll in colls:
            label = f"{n} ranks {coll}"
            slower, judged, missing = [], 0, []
            for size in sizes_measured(agg, n, coll, sizes):
                h = agg.get(("hetccl", n, coll, size))
                ps = [(p, agg.get((p, n, coll, size))) for p in peers]
                ps = [(p, r) for p, r in ps if r is not None]
                if h is None or not ps:
                    missing.append(size)
                    continue
                judged += 1
                if h.get("wrong"):
                    slower.append(f"{fmt.format_size(size)} (hetccl gave {h['wrong']} wrong elements)")
                    continue
                best_peer, best = min(ps, key=lambda pr: pr[1]["time_us"])
                if h["time_us"] > best["time_us"]:
                    best_min = min(r["best_time_us"] for _, r in ps)
                    slower.append(f"{fmt.format_size(size)} ({h['time_us'] / best['time_us']:.2f}x "
                                  f"{LABEL[best_peer]}; best rounds "
                                  f"{h['best_time_us'] / best_min:.2f}x)")
            if not judged:
                lines.append(f"N/A   {label}: no data for hetccl and a peer at any size")
                continue
            gap = f" ({len(missing)} size(s) without data: " \
                  f"{', '.join(fmt.format_size(x) for x in missing)})" if missing else ""
            if slower:
                lines.append(f"FAIL  {label}: hetccl slower than the faster peer at {len(slower)}/"
                             f"{judged} sizes: {', '.join(slower)}{gap}")
            else:
                lines.append(f"PASS  {label}: hetccl at least as fast as the faster peer at all "
                             f"{judged} sizes{gap}")
    return lines


# ------------------------------------------------------------------ environment report


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    info = runner.host_info()
    try:
        out = subprocess.run(["mpirun", "--version"], capture_output=True, text=True, timeout=30)
        info["mpirun"] = out.stdout.strip().splitlines()[0] if out.stdout else None
    except (OSError, subprocess.SubprocessError):
        info["mpirun"] = None
    for d in ("mpi4py", "torch", "hetccl"):
        info[d] = _version(d)
    try:
        rev = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        info["git"] = rev.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git"] = None
    return info


def retune(nranks, raw) -> list[str]:
    """Re-measure hetccl's cost model for each rank count (``hetccl tune -n N``) so the tuner's
    choices come from this quiet window, not from a busy moment the cache remembers; returns the
    model lines it printed."""
    lines = []
    for n in nranks:
        log = os.path.join(raw, f"tune-n{n}.log")
        wait_for_quiet(0.25, 30)
        rc, secs, _ = run_one([*_hetccl_prefix(), "tune", "--cache-only", "-n", str(n)], log, 300)
        got = [x.split(": ", 1)[-1] for x in _tail(log, 40).splitlines() if "measured (probe" in x]
        print(f"[run_all] hetccl tune -n {n}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in "
              f"{secs:.1f} s: {got[0] if got else '(no model printed; see ' + log + ')'}", flush=True)
        lines += got[:1]
    return lines


# ------------------------------------------------------------------ main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nranks", default="2,4", help="comma-separated rank counts (default %(default)s)")
    p.add_argument("--collectives", "-c", default="allreduce,allgather",
                   help="comma-separated collectives (default %(default)s)")
    p.add_argument("--sizes", default=None,
                   help="comma-separated sizes (default: 8 B .. 256 MiB, x2; see -f). 8 B and "
                        "64 MiB are always added for the headline checks")
    p.add_argument("-f", "--stepfactor", type=int, default=2, help="size step without --sizes")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default %(default)s)")
    p.add_argument("--reps", type=int, default=5, help="repetitions per size per run")
    p.add_argument("--min-time", type=float, default=0.03, help="seconds per repetition")
    p.add_argument("--libs", default=",".join(LIBS), help="subset of hetccl,ompi,gloo")
    p.add_argument("--alloc", choices=runner.ALLOCATIONS, default=runner.DEFAULT_ALLOCATION,
                   help="how every library's send and receive buffers are allocated (default "
                        "%(default)s: each its own anonymous mapping, page-aligned, 2 MiB-aligned "
                        "from 4 MiB, numpy's huge-page advice; 'numpy': np.empty wherever glibc "
                        "puts it). The same for every library; the markdown lists where they lay")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: sizes {QUICK_SIZES}, 1 round, 3 reps, 20 ms")
    p.add_argument("--out", default=None,
                   help="markdown output, relative to the repo root unless absolute (default "
                        "bench/RESULTS-latest.md)")
    p.add_argument("--raw-dir", default=None,
                   help="where to keep per-run JSON and logs (default: a new temporary directory)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run (default %(default)s)")
    p.add_argument("--hetccl-launch", default=None,
                   help="launcher prefix for hetccl, {n} and {python} substituted "
                        "(default: 'hetccl run -n {n} --')")
    p.add_argument("--no-describe", action="store_true", help="pass --no-describe to hetccl bench")
    p.add_argument("--mpirun-args", default=MPIRUN_ARGS,
                   help="extra mpirun arguments (default %(default)r: Open MPI binds each rank to a "
                        "core when ranks <= cores, hetccl run and torch's launcher never bind, so "
                        "every library runs unbound, like for like; '' for Open MPI's default)")
    p.add_argument("--max-busy", type=float, default=0.25,
                   help="before each run, wait while other processes keep more than this fraction "
                        "of the CPUs busy (default %(default)s)")
    p.add_argument("--wait-quiet", type=float, default=30,
                   help="longest wait for a quiet machine before each run, seconds (default %(default)s)")
    p.add_argument("--retry-noisy", type=int, default=2,
                   help="rerun a run (up to this many times) when other processes used more than "
                        "--max-busy of the CPUs during it; the last attempt is kept (default %(default)s)")
    p.add_argument("--retry-far", type=int, default=1,
                   help="rerun a run (up to this many times) when the host had the two vCPUs far apart "
                        "during it (bench/placement.py: a cache-line round trip above "
                        f"{vcpus.FAR_NS:g} ns; cache-to-cache traffic, and with it every "
                        "library's medium sizes, 3-4x slower); the last attempt is kept (default "
                        "%(default)s; 0 records the placement only)")
    p.add_argument("--no-retune", action="store_true",
                   help="keep hetccl's cached cost model instead of re-measuring it first "
                        "(`hetccl tune -n N` for each rank count, in the same quiet window)")
    p.add_argument("--max-mem", type=float, default=MAX_MEM_SHARE,
                   help="leave out the sizes whose runs may need more than this share of the "
                        "memory available at the start (MemAvailable; estimate: run_bytes), with a "
                        "CAPPED line in the checks; 0 disables the cap (default %(default)s)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 unless every headline check (with --issue3: every issue-3 check) passes")
    p.add_argument("--issue3", action="store_true",
                   help=f"preset: -c {ISSUE3_COLLECTIVES} --nranks {ISSUE3_NRANKS}, sizes 8 B .. "
                        f"256 MiB in x4 steps; prints whether hetccl is at least as fast as the "
                        f"faster peer at every size (default --out bench/RESULTS-issue3-latest.md)")
    args = p.parse_args(argv)
    if args.issue3:
        given = set(argv)
        if not given & {"--collectives", "-c"} and not any(a.startswith(("--collectives=", "-c="))
                                                           for a in argv):
            args.collectives = ISSUE3_COLLECTIVES
        if "--nranks" not in given and not any(a.startswith("--nranks=") for a in argv):
            args.nranks = ISSUE3_NRANKS
        args.sizes = args.sizes or ISSUE3_SIZES
    if args.out is None:
        args.out = os.path.join("bench", "RESULTS-issue3-latest.md" if args.issue3
                                else "RESULTS-latest.md")
    if args.quick:
        args.sizes = args.sizes or QUICK_SIZES
        args.rounds = 1
        args.reps = min(args.reps, 3)
        args.min_time = min(args.min_time, 0.02)
    return args


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through run_one, which kills the run's process group


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    nranks = [int(x) for x in args.nranks.split(",") if x.strip()]
    colls = [fmt.canonical(c) for c in args.collectives.split(",") if c.strip()]
    libs = [x.strip() for x in args.libs.split(",") if x.strip()]
    for lib in libs:
        if lib not in LIBS:
            raise SystemExit(f"unknown library {lib!r}; use {','.join(LIBS)}")
    sizes = fmt.parse_sizes(args.sizes) if args.sizes else fmt.size_sweep(8, "256M", args.stepfactor)
    if not args.issue3:   # the foundation issue's headline checks need these
        sizes = sorted(set(sizes) | set(HEADLINE_SIZES))
    sizes = sorted(set(sizes))
    avail, capped, sweeps = mem_available(), [], {}
    for n in nranks:
        fit, lines = memory_cap(n, colls, sizes, avail, args.max_mem)
        capped += lines
        sweeps[n] = ["-c", ",".join(colls), "--sizes", ",".join(str(s) for s in fit),
                     "--reps", str(args.reps), "--min-time", str(args.min_time), "--alloc", args.alloc]
    for line in capped:
        print(f"[run_all] {line}", flush=True)
    raw = args.raw_dir or tempfile.mkdtemp(prefix="hetccl-run_all-")
    os.makedirs(raw, exist_ok=True)
    env_info = environment()

    tuned = retune(nranks, raw) if "hetccl" in libs and not args.no_retune else []
    env_info["cost_models"] = tuned
    results = {}       # (lib, n, round) -> rows
    bindings = {}      # (lib, n) -> every rank's CPU affinity (runner.cpu_binding)
    runs = []          # (round, lib, n, rc, seconds, cmd, log)
    commands = {}      # (lib, n) -> command template
    t_start = time.monotonic()
    for rnd in range(args.rounds):
        order = libs[rnd % len(libs):] + libs[:rnd % len(libs)]
        for n in nranks:
            for lib in order:
                tag = f"{lib}-n{n}-r{rnd}"
                jpath = os.path.join(raw, tag + ".json")
                log = os.path.join(raw, tag + ".log")
                cmd = build_command(lib, n, sweeps[n], jpath, args)
                commands[(lib, n)] = shlex.join(cmd).replace(jpath, "OUT.json")
                left = {"noisy": max(0, args.retry_noisy), "far": max(0, args.retry_far)}
                attempt, why = 0, None
                while True:
                    busy = wait_for_quiet(args.max_busy, args.wait_quiet)
                    again = f" (retry {attempt}: {why})" if attempt else ""
                    print(f"[run_all] round {rnd + 1}/{args.rounds}  {LABEL[lib]}  {n} ranks{again} "
                          f"(other load before: {'?' if busy is None else f'{busy:.0%}'}) ...",
                          end="", flush=True)
                    if os.path.exists(jpath):
                        os.unlink(jpath)
                    watch = vcpus.Watch().start()
                    try:
                        rc, secs, others = run_one(cmd, log, args.timeout)
                    finally:
                        where = watch.stop()
                    rows = None
                    if os.path.exists(jpath):     # written even when elements were wrong (exit 1)
                        with open(jpath) as f:
                            doc = json.load(f)
                        rows = doc["rows"]
                        results[(lib, n, rnd)] = rows
                        bindings[(lib, n)] = doc.get("binding")
                    bad = sum(r.get("wrong") or 0 for r in rows or [])
                    status = "ok" if rc == 0 and rows is not None else (
                        f"WRONG RESULTS ({bad} elements)" if bad else f"FAILED (exit {rc})")
                    print(f" {status} in {secs:.1f} s"
                          f"{'' if others is None else f', other load during: {others:.0%}'}"
                          f", vCPU placement: {vcpus.describe(where)}",
                          flush=True)
                    runs.append((rnd, lib, n, rc, secs, cmd, log, busy, others, bad, where))
                    why = retry_reason(rc, rows, others, where, args.max_busy, left)
                    if why is None:
                        break
                    attempt += 1
    elapsed = time.monotonic() - t_start

    agg = aggregate(results)
    checks = issue3_checks(agg, nranks, colls, sizes, libs) if args.issue3 else headline_checks(agg)
    failed = run_failures(runs, results)
    checks = failed + capped + checks
    env_info["binding"] = {f"{LABEL[lib]}, {n} ranks": b for (lib, n), b in sorted(bindings.items())}
    md = render(args, env_info, nranks, colls, sizes, libs, agg, checks, runs, commands, raw, elapsed,
                placement_lines(results))
    out = args.out if os.path.isabs(args.out) else os.path.join(REPO, args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(md)
    with open(os.path.join(raw, "aggregate.json"), "w") as f:
        json.dump({"env": env_info, "rows": [dict(zip(("library", "nranks", "collective", "size"), k), **v)
                                             for k, v in sorted(agg.items())]}, f, indent=1)
    print()
    print(md)
    print(f"[run_all] wrote {out}; raw JSON and logs in {raw}")
    if failed:                   # a wrong result or a failed run fails the run, --strict or not
        print("\n".join(failed), file=sys.stderr)
        return 1
    if args.strict and not all(c.startswith("PASS") for c in checks):
        return 1
    return 0


def retry_reason(rc, rows, others, where, max_busy, left) -> str | None:
    """Why a run is run again: "noisy" (other processes used more than max_busy of the CPUs
    during it) or, on a quiet run, "far" (a placement sample was far, placement.Watch: on a
    loaded host the sampler's two threads seldom run at once and its samples read high), each
    while its budget in left lasts (taken from it); None keeps the run: quiet and near, out of
    retries, or failed (failures and wrong results are reported, not retried)."""
    if rc != 0 or rows is None:
        return None
    noisy = others is not None and others > max_busy
    for why, hit in (("noisy", noisy), ("far", bool(where and where["far"]) and not noisy)):
        if hit and left.get(why, 0) > 0:
            left[why] -= 1
            return why
    return None


def run_failures(runs, results) -> list[str]:
    """FAIL lines for every kept run that failed or returned wrong elements (the rows of a run
    with wrong elements stay in the tables, marked "N wrong!", so they can be seen)."""
    kept = {}
    for r in runs:
        kept[(r[0], r[1], r[2])] = r
    lines = []
    for (rnd, lib, n), r in sorted(kept.items()):
        rows = results.get((lib, n, rnd))
        bad = [x for x in rows or [] if x.get("wrong")]
        if bad:
            lines.append(f"FAIL  {LABEL[lib]}, {n} ranks, round {rnd + 1}: wrong results at "
                         + ", ".join(f"{x['collective']} {fmt.format_size(x['size'])} "
                                     f"({x['wrong']} elements)" for x in bad))
        elif r[3] != 0 or rows is None:
            lines.append(f"FAIL  {LABEL[lib]}, {n} ranks, round {rnd + 1}: the run failed "
                         f"(exit {r[3]}; log {r[6]})")
    return lines


def render(args, env, nranks, colls, sizes, libs, agg, checks, runs, commands, raw, elapsed,
           placement=None) -> str:
    L = ["# hetccl vs Open MPI vs gloo (bench/run_all.py)", ""]
    L.append(f"- date (UTC): {env['date']}; total wall time {elapsed / 60:.1f} min")
    L.append(f"- host: {env['hostname']}, nproc {env['nproc']}, CPU {env['cpu_model']}, {env['platform']}")
    L.append(f"- software: Python {env['python']}, numpy {env['numpy']}, mpi4py {env.get('mpi4py')}, "
             f"{env.get('mpirun') or 'mpirun ?'}, torch {env.get('torch')}, hetccl {env.get('hetccl') or '?'}"
             f" (git {env.get('git') or '?'})")
    L.append(f"- method: {args.rounds} interleaved round(s) (library order rotates each round); per run "
             f"and size the median over {args.reps} repetitions of ~{args.min_time * 1e3:g} ms, each "
             f"timed as max over ranks; the tables show the median over rounds. nccl-tests sizes "
             f"(allgather: total output bytes) and busbw factors; float32, sum; 1 GB/s = 1e9 B/s.")
    L.append(f"- {runner.describe_allocation(args.alloc)} (`--alloc`; where they lay: \"Buffer placement\" below).")
    L.append("- `hetccl / best peer` = best peer time / hetccl time (= busbw ratio): above 1 means "
             "hetccl is faster. `same, best rounds` compares each library's fastest round instead "
             "of its median round: the host's near/far placement changes speed up to ~3x for "
             "seconds at a time, and the fastest rounds are the most comparable.")
    for what, cpus in (env.get("binding") or {}).items():
        L.append(f"- process binding (CPU affinity of each rank, as the launcher left it), {what}: "
                 + ("not recorded" if not cpus else ", ".join(f"rank {r}: {c}" for r, c in enumerate(cpus))))
    for model in env.get("cost_models") or []:
        L.append(f"- hetccl cost model (re-measured by `hetccl tune` before the runs): {model}")
    kept = {}
    for r in runs:  # the attempt kept for each (round, library, ranks) is the last one
        kept[(r[0], r[1], r[2])] = r
    noisy = [r for r in kept.values() if (r[8] or 0) > args.max_busy]
    if noisy:
        L.append(f"- **warning: in {len(noisy)} of {len(kept)} kept runs other processes used more "
                 f"than {args.max_busy:.0%} of the CPUs during the run** (see Runs; retried up to "
                 f"{args.retry_noisy} times); treat those numbers with suspicion.")
    far = [r for r in kept.values() if r[10] and r[10]["far"] and (r[8] or 0) <= args.max_busy]
    if far:
        L.append(f"- **warning: in {len(far)} of {len(kept)} kept runs the host had the two vCPUs far "
                 f"apart for part of the run** (see Runs: vCPU placement; retried up to "
                 f"{args.retry_far} times): those runs' medium sizes may be up to ~4x slower.")
    L.append(f"- invocation: `{shlex.join([os.path.relpath(sys.argv[0], REPO) if sys.argv[0] else 'bench/run_all.py', *sys.argv[1:]])}`")
    L.append("")
    L.append("## Issue 3: hetccl at least as fast as the faster peer at every size" if args.issue3
             else "## Headline checks (foundation issue)")
    L.append("")
    L.append("```")
    L.extend(checks)
    L.append("```")
    for n in nranks:
        for coll in colls:
            L.append("")
            L.append(f"## {coll}, {n} ranks")
            L.append("")
            L.extend(comparison_table(agg, n, coll, sizes, libs))
    L.append("")
    L.append("## Buffer placement")
    L.append("")
    L.append("Every rank's send and receive buffers of 64 KiB and more, over all sizes and rounds "
             "(address modulo 64 as send/recv, with how many times each pair occurred; modulo "
             "4096; how many buffers of 4 MiB and more were wholly backed by huge pages):")
    L.append("")
    L.append("```")
    L.extend(placement or ["(no placement recorded)"])
    L.append("```")
    L.append("")
    L.append("## Commands")
    L.append("")
    L.append("Run from the repo root with OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 (and "
             "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 as root); OUT.json is the "
             "per-run result file:")
    L.append("")
    L.append("```")
    for (lib, n), cmd in sorted(commands.items(), key=lambda kv: (kv[0][1], libs.index(kv[0][0]))):
        L.append(cmd)
    L.append("```")
    L.append("")
    L.append("## Runs")
    L.append("")
    L.append(f"Raw JSON and logs: `{raw}`")
    L.append("")
    L.append("Other load: share of all CPUs used by other processes in the 0.5 s before the run "
             "started / during the run (all CPU time minus the run's own).")
    L.append("")
    L.append("vCPU placement: the round trip of a cache line between the first two CPUs, sampled every "
             "5 s during the run (bench/placement.py): median (min-max), and how many samples were far "
             f"(above {vcpus.FAR_NS:g} ns; near ~65 ns).")
    L.append("")
    L.append("| round | library | ranks | status | seconds | other load before | other load during "
             "| vCPU placement | kept |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    pct = (lambda x: "?" if x is None else f"{x:.0%}")
    last = {}
    for i, r in enumerate(runs):
        last[(r[0], r[1], r[2])] = i
    for i, (rnd, lib, n, rc, secs, _cmd, _log, busy, others, bad, where) in enumerate(runs):
        L.append(f"| {rnd + 1} | {LABEL[lib]} | {n} | "
                 f"{f'{bad} wrong' if bad else 'ok' if rc == 0 else f'exit {rc}'} | "
                 f"{secs:.1f} | {pct(busy)} | {pct(others)} | {vcpus.describe(where)} | "
                 f"{'yes' if last[(rnd, lib, n)] == i else 'no (retried)'} |")
    failures = [(r[0], r[1], r[2], r[6]) for r in runs if r[3] != 0 and not r[9]]
    if failures:
        L.append("")
        L.append("Failures (last lines of the log):")
        seen = set()
        for rnd, lib, n, log in failures:
            if (lib, n) in seen:
                continue
            seen.add((lib, n))
            L.append("")
            L.append(f"{LABEL[lib]}, {n} ranks, round {rnd + 1}:")
            L.append("```")
            L.append(_tail(log))
            L.append("```")
    L.append("")
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
