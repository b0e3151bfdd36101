#!/usr/bin/env python3
"""Each collective's call forms at small sizes: the form that allocates its result (what most users
write) against the ``out=`` form, through the public API, in one process so both see the same
machine.

    python bench/call_forms.py --nranks 2,4 --runs 3
    python bench/call_forms.py --base /path/to/main --nranks 2,4 --runs 3   # + main, runs alternating
    python bench/call_forms.py --nranks 2 --torch      # + torch's all_gather forms

Every block is 8 B (two float32): allreduce, broadcast and reduce move 8 B per rank; allgather and
gather contribute 8 B per rank; reduce_scatter, alltoall and scatter hold one 8 B block per rank.
The forms of one collective:

* ``out``: the caller's output buffer, reused every call (``allgather(x, out=o)``);
* ``alloc``: the library makes the result (``allgather(x)``), a new array each call;
* ``inplace`` / ``fresh``: allreduce and broadcast have no allocating form; ``fresh`` passes a new
  input each call (``allreduce(x.copy())``, what ``y = allreduce(x.copy())`` users write), and its
  time includes that copy; ``copy;in`` makes the same copy and drops it, then runs the in-place
  form on the reused buffer: fresh - copy;in is what a fresh input costs hetccl beyond the copy;
* scatter's ``alloc`` is ``scatter(x)`` (every rank passes the root's length; on a tree whose
  scatter needs ``out=``, the caller's ``np.empty`` form, said in a NOTE line), its ``np.empty``
  ``scatter(x, numpy.empty(...))``: the output the caller allocates each call;
* ``np.empty``/``x.copy``: the allocation alone, in the same loop shape (the floor any allocating
  form pays on top of its ``out=`` form).

The cases of one run are interleaved round by round (this host moves its two vCPUs between near and
far placements every few seconds, and it is shared): compare the minimum and 10th percentile, which
are the quiet floor; the median is mostly the weather. ``extra`` is alloc - out (allocating forms)
or fresh - inplace; the target is extra <= 0.2 us (the allocation included). Print ``uptime``
alongside, and keep the raw output (``--raw FILE``). Each tree's ranks run in that tree (``--tree``,
default ``.``; built in place).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import os, statistics, time, numpy as np, hetccl
comm = hetccl.init()
p, r = comm.size, comm.rank
B = 2                                   # float32 elements per 8 B block
x = np.arange(B, dtype=np.float32)
xp = np.arange(B * p, dtype=np.float32)
o1 = np.empty(B, np.float32)
op_ = np.empty(B * p, np.float32)
cases = {{
    ("allreduce", "out"): lambda: comm.allreduce(x, out=o1),
    ("allreduce", "inplace"): lambda: comm.allreduce(o1),
    ("allreduce", "fresh"): lambda: comm.allreduce(x.copy()),
    ("allreduce", "copy;in"): lambda: (x.copy(), comm.allreduce(o1)),
    ("allgather", "out"): lambda: comm.allgather(x, out=op_),
    ("allgather", "alloc"): lambda: comm.allgather(x),
    ("reduce_scatter", "out"): lambda: comm.reduce_scatter(xp, out=o1),
    ("reduce_scatter", "alloc"): lambda: comm.reduce_scatter(xp),
    ("broadcast", "inplace"): lambda: comm.broadcast(o1),
    ("broadcast", "fresh"): lambda: comm.broadcast(x.copy()),
    ("broadcast", "copy;in"): lambda: (x.copy(), comm.broadcast(o1)),
    ("alltoall", "out"): lambda: comm.alltoall(xp, out=op_),
    ("alltoall", "alloc"): lambda: comm.alltoall(xp),
    ("reduce", "out"): lambda: comm.reduce(x, 0, out=o1),
    ("reduce", "alloc"): lambda: comm.reduce(x, 0),
    ("gather", "out"): lambda: comm.gather(x, 0, out=op_),
    ("gather", "alloc"): lambda: comm.gather(x, 0),
    ("scatter", "out"): lambda: comm.scatter(xp, o1, 0),
    ("scatter", "alloc"): lambda: comm.scatter(xp),
    ("scatter", "np.empty"): lambda: comm.scatter(xp, np.empty(B, np.float32), 0),
    ("np.empty", "px8B"): lambda: np.empty(B * p, np.float32),
    ("x.copy", "8B"): lambda: x.copy(),
}}
try:                                    # a tree whose scatter needs out=: the caller allocates
    comm.scatter(xp)
except TypeError:
    cases[("scatter", "alloc")] = cases[("scatter", "np.empty")]
    if r == 0:
        print("NOTE scatter alloc = the caller's np.empty (this tree's scatter needs out=)", flush=True)
if {torch!r}:
    import socket, warnings, torch, torch.distributed as dist
    warnings.simplefilter("ignore", FutureWarning)
    import hetccl.torch                                       # noqa: F401 - registers "hetccl"
    torch.set_num_threads(1)
    port = np.zeros(1, np.int64)
    if r == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port[0] = s.getsockname()[1]
    comm.broadcast(port, root=0)
    dist.init_process_group("hetccl", init_method=f"tcp://127.0.0.1:{{int(port[0])}}", rank=r,
                            world_size=p)
    tx = torch.arange(B, dtype=torch.float32)
    tl = [torch.empty(B) for _ in range(p)]
    tt = torch.empty(B * p)
    cases[("torch.all_gather", "out")] = lambda: dist.all_gather_into_tensor(tt, tx)
    cases[("torch.all_gather", "list")] = lambda: dist.all_gather(tl, tx)
    cases[("torch.all_gather", "alloc")] = lambda: dist.all_gather([torch.empty(B) for _ in range(p)], tx)
names = [k for k in cases if {only!r} is None or k[0] in {only!r} or k[0] in ("np.empty", "x.copy")]
budget = {budget}
calls = {{}}
for k in names:                            # warm up (the latency path learns each shape), calibrate
    f = cases[k]
    for _ in range(50):
        f()
    comm.barrier()
    t = time.perf_counter()
    for _ in range(200):
        f()
    one = (time.perf_counter() - t) / 200
    n = np.array([max(10, min(50000, int(budget / max(one, 1e-8))))], np.int64)
    comm.allreduce(n, op="min")
    calls[k] = int(n[0])
res = {{k: [] for k in names}}
for _ in range({rounds}):
    for k in names:
        f, n = cases[k], calls[k]
        comm.barrier()
        t = time.perf_counter()
        for _ in range(n):
            f()
        res[k].append((time.perf_counter() - t) / n * 1e6)
if r == 0:
    for k in names:
        print("RESULT", k[0], k[1], calls[k], *res[k], flush=True)
if {torch!r}:
    dist.destroy_process_group()
comm.close()
"""

# (collective, form compared, its baseline form)
PAIRS = [("allreduce", "fresh", "inplace"), ("allreduce", "fresh", "copy;in"), ("allreduce", "inplace", "out"),
         ("allgather", "alloc", "out"), ("reduce_scatter", "alloc", "out"),
         ("broadcast", "fresh", "inplace"), ("broadcast", "fresh", "copy;in"), ("alltoall", "alloc", "out"), ("reduce", "alloc", "out"),
         ("gather", "alloc", "out"), ("scatter", "alloc", "out"), ("scatter", "np.empty", "out"),
         ("torch.all_gather", "list", "out"), ("torch.all_gather", "alloc", "out")]


def one_run(tree, nranks, rounds, budget, torch, only) -> dict:
    # the ranks run `python -c`, which puts the working directory first on sys.path: run them in
    # the tree, or a run started from another checkout's root would import that checkout instead
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1")
    code = CHILD.format(rounds=rounds, budget=budget, torch=torch, only=only)
    p = subprocess.run([sys.executable, "-m", "hetccl", "run", "-n", str(nranks), "--",
                        sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=os.path.abspath(tree), timeout=1800)
    got = {}
    for line in p.stdout.splitlines():
        if line.startswith("NOTE "):
            print(f"  {tree}: {line[5:]}", flush=True)
        if "RESULT " in line:
            coll, form, calls, *rounds_ = line.split("RESULT ", 1)[1].split()
            got[(coll, form)] = [float(t) for t in rounds_]
    if not got:
        raise RuntimeError(f"no results (exit {p.returncode})\n{p.stdout}\n{p.stderr[-3000:]}")
    return got


def _p10(xs):
    xs = sorted(xs)
    return xs[len(xs) // 10]


def table(nranks, runs) -> list[str]:
    every = {}
    for got in runs:
        for k, v in got.items():
            every.setdefault(k, []).extend(v)
    lines = [f"{nranks} ranks, 8 B blocks, us per call over {len(runs)} run(s) x "
             f"{len(next(iter(runs[0].values())))} rounds (min / p10 / median)",
             f"{'collective':<18}{'form':<9}{'min':>8}{'p10':>8}{'med':>8}   {'vs':<8}{'min':>8}{'p10':>8}"
             f"{'extra min':>11}{'extra p10':>11}"]
    for coll, form, base in PAIRS:
        a, b = every.get((coll, form)), every.get((coll, base))
        if a is None or b is None:
            continue
        lines.append(f"{coll:<18}{form:<9}{min(a):8.2f}{_p10(a):8.2f}{statistics.median(a):8.2f}   "
                     f"{base:<8}{min(b):8.2f}{_p10(b):8.2f}{min(a) - min(b):11.2f}{_p10(a) - _p10(b):11.2f}")
    for k, v in every.items():
        if k[0] in ("np.empty", "x.copy"):
            lines.append(f"{k[0]:<18}{k[1]:<9}{min(v):8.2f}{_p10(v):8.2f}{statistics.median(v):8.2f}"
                         f"   (allocation alone)")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=".", help="the hetccl tree to run (built in place)")
    ap.add_argument("--base", default=None,
                    help="another tree (e.g. main, built in place), its runs alternating with --tree's")
    ap.add_argument("--nranks", default="2,4")
    ap.add_argument("--runs", type=int, default=3, help="runs per tree")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--budget", type=float, default=0.05, help="seconds per round and case")
    ap.add_argument("--torch", action="store_true", help="also torch.distributed's all_gather forms")
    ap.add_argument("--only", default=None, help="comma-separated collectives (default: all)")
    ap.add_argument("--raw", default=None, help="append the raw per-round output to this file")
    a = ap.parse_args(argv)
    only = None if a.only is None else a.only.split(",")
    trees = [a.tree] + ([a.base] if a.base else [])
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    for n in (int(s) for s in a.nranks.split(",")):
        runs = {t: [] for t in trees}
        for i in range(a.runs):
            for t in (trees if i % 2 == 0 else trees[::-1]):   # alternate: the same weather for both
                runs[t].append(one_run(t, n, a.rounds, a.budget, a.torch, only))
                if a.raw:
                    with open(a.raw, "a") as f:
                        for k, v in runs[t][-1].items():
                            f.write(f"tree={t} n={n} run={i} {k[0]} {k[1]} " +
                                    " ".join(f"{x:.3f}" for x in v) + "\n")
        for t in trees:
            print(f"\n== tree {t}\n" + "\n".join(table(n, runs[t])), flush=True)
        up = subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()
        print(f"uptime: {up}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
