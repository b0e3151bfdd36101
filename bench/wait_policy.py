#!/usr/bin/env python3
"""The engine's wait policies side by side in one run: per-call time of a few collective shapes
with more ranks than cores, the policy switched round by round inside the same processes.

    python bench/wait_policy.py -n 8 --cases allreduce:1048576,allreduce:65536,allreduce:8:recursive_doubling
    python bench/wait_policy.py -n 4 --cases allgather:8:recursive_doubling,allreduce:8:recursive_doubling

A policy is ``yield_us:handover_bytes`` (spin 0, as oversubscribed ranks run): sched_yield for
yield_us before sleeping, and steps moving handover_bytes or more sleep at once (0: never), here
whatever the host's load (the engine hands over only while other jobs load it). The default
compares yielding first everywhere (500:0, the engine's policy on a host running only this job)
with sleeping at once in steps of 64 KiB or more (500:65536) and sleeping at once everywhere (0:0).
Rounds rotate through the policies, so every policy
sees the same placement of the ranks on the vCPUs (which changes an oversubscribed call's time
2-3x from one run to the next); the table gives each policy's min, p25 and median over its rounds.
A round leaves the placement to the next (rounds that sleep let the scheduler spread the ranks), so
two policies that act alike on a case (500:0 and 500:65536 on 8 B steps) can still differ by the
round that precedes them: run the policies in two orders (``--policies``) before concluding.
Rank 0 prints; ``uptime`` before and after says how loaded the machine was.
"""
import argparse
import os
import subprocess
import sys

CHILD = r"""
import statistics, time, numpy as np, hetccl
from hetccl._native import progress
comm = hetccl.init()
e = comm._engine
progress._set_handover_load(0.0)     # handover_bytes acts whatever the host's load
pols = {pols!r}
for coll, nb, algo in {cases!r}:
    n = max(1, nb // 4)
    x = np.ones(n, np.float32)
    out = np.empty(n * comm.size if coll == "allgather" else n, np.float32)
    call = (lambda: comm.allgather(x, out, algorithm=algo)) if coll == "allgather" else \
        (lambda: comm.allreduce(x, out=out, algorithm=algo))
    call()
    comm.barrier()
    t = time.perf_counter()
    for _ in range(3):
        call()
    one = (time.perf_counter() - t) / 3
    calls = np.array([max(1, min(20000, int({budget} / max(one, 1e-7))))], np.int64)
    comm.allreduce(calls, op="min")
    calls = int(calls[0])
    res = {{p: [] for p in pols}}
    for r in range({rounds} * len(pols)):
        p = pols[r % len(pols)]
        y, h = p.split(":")
        e.spin_s, e.yield_s, e.handover_bytes = 0.0, float(y) * 1e-6, int(h)
        comm.barrier()
        t = time.perf_counter()
        for _ in range(calls):
            call()
        res[p].append((time.perf_counter() - t) / calls * 1e6)
    if comm.rank == 0:
        print(f"{{coll}} {{nb}} B ({{comm.last_algorithm}}, {{calls}} calls a round)")
        for p, v in res.items():
            v = sorted(v)
            print(f"  {{p:>12}}  min {{v[0]:10.2f}}  p25 {{v[len(v) // 4]:10.2f}}  median "
                  f"{{statistics.median(v):10.2f}} us", flush=True)
comm.close()
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--nranks", type=int, default=8)
    ap.add_argument("--cases", default="allreduce:1048576,allreduce:65536,allreduce:8:recursive_doubling")
    ap.add_argument("--policies", default="500:65536,500:0,0:0")
    ap.add_argument("--rounds", type=int, default=8, help="rounds per policy")
    ap.add_argument("--budget", type=float, default=0.05, help="seconds per round")
    args = ap.parse_args(argv)
    cases = []
    for c in args.cases.split(","):
        p = c.split(":")
        cases.append((p[0], int(p[1]), p[2] if len(p) > 2 and p[2] else None))
    code = CHILD.format(pols=args.policies.split(","), cases=cases, rounds=args.rounds, budget=args.budget)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    p = subprocess.run([sys.executable, "-m", "hetccl", "run", "-n", str(args.nranks), "--",
                        sys.executable, "-c", code], env=env, timeout=1800)
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    return p.returncode


if __name__ == "__main__":
    sys.exit(main())
