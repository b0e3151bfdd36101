#!/usr/bin/env python3
"""A/B of the CPU work one call costs, in instructions, two hetccl trees: a figure the machine's
load cannot move.

    python bench/instructions_ab.py --a /work/base --b . --nranks 4 \
        --cases allgather:8:recursive_doubling,allreduce:8:recursive_doubling

Wall-clock A/B runs (bench/dispatch_ab.py) of small calls with more ranks than cores mostly time
the scheduler handing the cores round: their ratios swing by 10% in either direction between
repeats of one command. This script answers the code question instead. Rank 0 runs under
``valgrind --tool=callgrind`` (the other ranks natively, so rank 0 seldom waits: they are always
ahead of it), makes ``--few`` and then ``--many`` calls of each case, and callgrind counts only
inside the latency path's native entry for the collective (``Hot.<collective>``, a cpdef Cython method in
both the old and the new native core: pinning, the schedule, its waits; not the Python method
around it); the difference of the two counts over the difference of the calls is the instructions
per call. (Counting the whole process does not work: start-up and connection waits vary by tens of
millions of instructions from run to run.) Each tree's ranks run inside that tree (PYTHONPATH and working
directory), built in place. Needs valgrind (``apt-get install valgrind``); the script says so if it
is missing.

``--scope call`` counts the whole public call instead (``comm.allreduce(x)`` as a user writes it:
the Python method, its argument handling, the latency path and the schedule), for each call form
of ``bench/call_forms.py``:

    python bench/instructions_ab.py --a /work/base --b . --nranks 2 --scope call \
        --cases allreduce:inplace,allreduce:out,allgather:alloc,allgather:out

The calls are driven by ``itertools.starmap`` (``functools.partial`` binds ``out=``) and consumed by
``collections.deque(..., 0)``, and callgrind counts inside ``deque_init`` (the loop: ``starmap_next``
makes each call, the deque's consumer drops its result, so freeing an allocated result is counted
too), which nothing in hetccl calls between the barriers (the loop's own cost is the same constant
in both trees), less the schedule's steps (``progress.run_step`` inclusive, by
``callgrind_annotate``: the exchanges themselves, the same code in both trees, whose polls of a late
peer's link grow with the load).
What is counted is the call's overhead around its schedule: the Python method, argument handling,
pinning, allocation, the GIL, the flight record. Nothing outside the calls is counted, so the figure
is the least of ``--repeat`` runs' totals over ``--many`` calls. ``GIL`` is how many of B's calls
released the GIL in their wait (it waited longer than Engine.hold_s: a peer made late by the load).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

CHILD = r"""
import numpy as np, hetccl
comm = hetccl.init()
p = comm.size
coll, nbytes, algo, calls = {case!r}
n = max(1, nbytes // 4)
x = np.ones(n, np.float32)
out = np.empty(n * p if coll == "allgather" else n, np.float32)
call = (lambda: comm.allgather(x, out, algorithm=algo)) if coll == "allgather" else \
    (lambda: comm.allreduce(x, out=out, algorithm=algo))
for _ in range(50):                       # learn the shape: every later call takes the same path
    call()
comm.barrier()
for _ in range(calls):
    call()
comm.barrier()
comm.close()
"""

# --scope call: the public call of each form (8 B blocks, as bench/call_forms.py), driven by starmap
CHILD_CALL = r"""
import collections, functools, itertools, numpy as np, hetccl
comm = hetccl.init()
p = comm.size
coll, form, calls = {case!r}
B = 2
x = np.arange(B, dtype=np.float32)
xp = np.arange(B * p, dtype=np.float32)
o1 = np.empty(B, np.float32)
op_ = np.empty(B * p, np.float32)
P = functools.partial
fn, args = {{
    ("allreduce", "inplace"): (comm.allreduce, (o1,)),
    ("allreduce", "out"): (P(comm.allreduce, out=o1), (x,)),
    ("allgather", "alloc"): (comm.allgather, (x,)),
    ("allgather", "out"): (P(comm.allgather, out=op_), (x,)),
    ("reduce_scatter", "alloc"): (comm.reduce_scatter, (xp,)),
    ("reduce_scatter", "out"): (P(comm.reduce_scatter, out=o1), (xp,)),
    ("alltoall", "alloc"): (comm.alltoall, (xp,)),
    ("alltoall", "out"): (P(comm.alltoall, out=op_), (xp,)),
    ("broadcast", "inplace"): (comm.broadcast, (o1,)),
    ("reduce", "alloc"): (comm.reduce, (x, 0)),
    ("reduce", "out"): (P(comm.reduce, out=o1), (x, 0)),
    ("gather", "alloc"): (comm.gather, (x, 0)),
    ("gather", "out"): (P(comm.gather, out=op_), (x, 0)),
    ("scatter", "alloc"): (comm.scatter, (xp,)),                   # root 0 (rank 0 counted)
    ("scatter", "out"): (P(comm.scatter, out=o1), (xp,)),
    ("scatter", "alloc1"): (P(comm.scatter, root=1), (xp,)),       # root 1 (rank 0 not the root)
    ("scatter", "out1"): (P(comm.scatter, out=o1, root=1), (xp,)),
    ("scatter", "np.empty"): (lambda a: comm.scatter(a, np.empty(B, np.float32)), (xp,)),
}}[(coll, form)]
if coll == "scatter" and form.startswith("alloc"):
    try:                                  # a tree whose scatter needs out=: the caller allocates
        fn(*args)
    except TypeError:
        r_ = int(form == "alloc1")
        fn, args = (lambda a: comm.scatter(a, np.empty(B, np.float32), r_)), (xp,)
for _ in range(50):                       # learn the shape
    fn(*args)
if comm.rank:                             # the native ranks busy-poll (never sleep): rank 0's data
    comm._engine.spin_s = 600.0           # is answered in a microsecond, not after a futex wake
comm.barrier()
g0 = getattr(comm._engine, "gil_releases", 0)
collections.deque(itertools.starmap(fn, itertools.repeat(args, calls)), 0)
if comm.rank == 0:                        # calls whose wait outlasted Engine.hold_s (a late peer)
    print("GIL_RELEASES", getattr(comm._engine, "gil_releases", 0) - g0, flush=True)
comm.barrier()
comm.close()
"""

WRAP = ('if [ "$HETCCL_RANK" = 0 ]; then exec valgrind --tool=callgrind --callgrind-out-file="$OUT" '
        '--toggle-collect="$TOGGLE" -q "$PY" -c "$CODE"; else exec "$PY" -c "$CODE"; fi')
# The C function of the cpdef Hot.<collective> (module collectives.pyx before the native core's
# split, latency.pyx after): __pyx_f_6hetccl_7_native_<module>_3Hot_<collective>. Both the Python
# wrapper (__pyx_pw_..., a `comm._hot.allgather(...)` from Python) and the public methods' closures
# (which call the cpdef at C level, never through the wrapper) enter it, so it is the one toggle
# that fires for every public call; toggling the wrapper as well would switch collection off again
# inside it.
TOGGLE = "__pyx_f_6hetccl_7_native_*_3Hot_{collective}"


KEEP = None                                       # --keep DIR
RELEASES: dict = {}                               # tree -> GIL releases in its last call-scope run
# --scope call: count inside deque_init (the loop, the results' release included), then leave out
# what the schedules' steps did there (progress.run_step, inclusive, by callgrind_annotate): a step is the same code in both trees (the
# algorithms do not change here), and how often it polls its links before the peer's bytes are
# there is the load's doing, not the code's
CALL_TOGGLE = "deque_init"

# the forms --scope call knows (CHILD_CALL's table), its default cases
CALL_FORMS = (("allreduce", "inplace"), ("allreduce", "out"), ("allgather", "alloc"), ("allgather", "out"),
              ("reduce_scatter", "alloc"), ("reduce_scatter", "out"), ("alltoall", "alloc"),
              ("alltoall", "out"), ("broadcast", "inplace"), ("reduce", "alloc"), ("reduce", "out"),
              ("gather", "alloc"), ("gather", "out"), ("scatter", "alloc"), ("scatter", "out"),
              ("scatter", "alloc1"), ("scatter", "out1"), ("scatter", "np.empty"))


def instructions(tree: str, nranks: int, case: tuple, timeout: float, scope: str = "entry") -> int:
    """Rank 0's total instruction count for one run of this case."""
    code = (CHILD if scope == "entry" else CHILD_CALL).format(case=case)
    toggle = TOGGLE.format(collective=case[0]) if scope == "entry" else CALL_TOGGLE
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        wrap = WRAP.replace('--toggle-collect="$TOGGLE"', " ".join(f"--toggle-collect='{t}'" for t in toggle.split()))
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), OPENBLAS_NUM_THREADS="1",
                   OMP_NUM_THREADS="1", OUT=out, PY=sys.executable, CODE=code, TOGGLE=toggle)
        p = subprocess.run([sys.executable, "-m", "hetccl", "run", "-n", str(nranks), "--",
                            "sh", "-c", wrap], env=env, cwd=os.path.abspath(tree),
                           capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0 or not os.path.exists(out):
            raise SystemExit(f"{tree}: run failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        text = open(out).read()
        m = re.search(r"GIL_RELEASES (\d+)", p.stdout)
        RELEASES[tree] = int(m.group(1)) if m else None
        if KEEP:                                  # --keep: for callgrind_annotate
            shutil.copy(out, os.path.join(KEEP, f"{os.path.basename(os.path.abspath(tree))}-"
                                                f"{'-'.join(map(str, case))}.callgrind"))
    m = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if not m or int(m.group(1)) == 0:
        raise SystemExit(f"{tree}: callgrind counted nothing inside {toggle}")
    if scope == "call":
        return int(m.group(1)) - steps(text)
    return int(m.group(1))


def steps(text: str) -> int:
    """The inclusive count of progress.run_step in a callgrind output (0: none ran)."""
    with tempfile.NamedTemporaryFile("w", suffix=".callgrind") as f:
        f.write(text)
        f.flush()
        ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", f.name], capture_output=True,
                             text=True).stdout
    m = re.search(r"^\s*([\d,]+)\s.*progress_run_step\b", ann, re.M)
    return int(m.group(1).replace(",", "")) if m else 0


def per_call(tree, nranks, case, few, many, timeout, scope="entry", repeat=3) -> float:
    if scope == "call":     # nothing outside the calls is counted: the least total over the calls
        best = None
        for _ in range(repeat):
            n = instructions(tree, nranks, case + (many,), timeout, scope)
            if best is None or n < best[0]:
                best = (n, RELEASES.get(tree))
        RELEASES[tree] = best[1]
        return best[0] / many
    a = instructions(tree, nranks, case + (few,), timeout, scope)
    b = instructions(tree, nranks, case + (many,), timeout, scope)
    return (b - a) / (many - few)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="tree A (built in place)")
    ap.add_argument("--b", required=True, help="tree B (built in place)")
    ap.add_argument("--nranks", type=int, default=4)
    ap.add_argument("--scope", choices=("entry", "call"), default="entry",
                    help="entry: inside Hot.<collective>; call: the whole public call of a form")
    ap.add_argument("--cases", default=None,
                    help="entry: collective:bytes:algorithm (allreduce and allgather); call: "
                         "collective:form (see CHILD_CALL); comma-separated")
    ap.add_argument("--few", type=int, default=500)
    ap.add_argument("--many", type=int, default=2500)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--repeat", type=int, default=3, help="--scope call: runs per tree (least kept)")
    ap.add_argument("--keep", metavar="DIR", help="keep each run's callgrind output here")
    args = ap.parse_args(argv)
    global KEEP
    KEEP = args.keep
    if KEEP:
        os.makedirs(KEEP, exist_ok=True)
    if not shutil.which("valgrind"):
        print("valgrind not found: apt-get install valgrind", file=sys.stderr)
        return 2
    if args.cases is None:
        args.cases = ("allgather:8:recursive_doubling,allreduce:8:recursive_doubling" if args.scope == "entry"
                      else ",".join(f"{c}:{f}" for c, f in CALL_FORMS))
    if args.scope == "entry":
        print(f"{args.nranks} ranks, rank 0 under callgrind; instructions per call of rank 0 inside "
              f"Hot.<collective> (({args.many} calls) - ({args.few} calls)) / {args.many - args.few}")
    else:
        print(f"{args.nranks} ranks, rank 0 under callgrind; instructions per public call of rank 0 "
              f"(the deque-driven loop, less the schedule steps), least of {args.repeat} runs of {args.many} calls")
    print(f"{'case':<34} {'A':>10} {'B':>10} {'B/A':>7}")
    for spec in args.cases.split(","):
        if args.scope == "entry":
            coll, nbytes, algo = (spec.split(":") + [""])[:3]
            case = (coll, int(nbytes), algo or None)
        else:
            case = tuple(spec.split(":"))
        row = [per_call(t, args.nranks, case, args.few, args.many, args.timeout, args.scope, args.repeat)
               for t in (args.a, args.b)]
        gil = f"  GIL {RELEASES.get(args.b)}/{args.many}" if args.scope == "call" else ""
        print(f"{spec:<34} {row[0]:>10.0f} {row[1]:>10.0f} {row[1] / row[0]:>7.3f}{gil}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
