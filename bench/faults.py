"""The fault-injection suite's full run (tests/faults): hundreds of injected faults, judged, then a
soak of create/shrink/destroy cycles counting every rank's resources.

    PYTHONPATH=$PWD python bench/faults.py | tee bench/results/faults-DATE.txt    # the full run
    PYTHONPATH=$PWD python bench/faults.py --faults 30 --soak 50 --no-grid       # a short one
    PYTHONPATH=$PWD python bench/faults.py --only "Scenario(kind='kill', n=8, ...)"   # one line again

1. The grid: every scenario kind (tests/faults/harness.py) over its rank counts, paths (shm, tcp,
   c2c, symmetric buffers, netns hosts, an MPI island) and victims (rank 0 = the store's host, a
   middle rank, the last rank).
2. Random draws from ``--seed`` (printed; the same seed draws the same scenarios) until at least
   ``--faults`` faults were injected in all (a second-death trial injects two).
3. The soak: ``--soak`` cycles of dup, shrink, allreduce, close on ``--soak-ranks`` ranks; each rank
   counts its fds, threads, hetccl mappings, /dev/shm segments and child processes after a warm-up
   cycle and at the end.

Each trial prints one line: index, class, wall time, the survivors' slowest detection (s after the
fault), the shrink time (first detection to the last survivor's new communicator), the errors the
survivors raised, and the Scenario, which reproduces it (``--only``). Then the tables and the
targets: 0 crash, 0 hang, 0 wrong; every survivor raises within 10 s of a death and within the
timeout + 2 s of a stall; at 8 ranks shrink within 5 s of detection; 0 leaks after the soak.
Scenarios this machine cannot run (no root: netns and private /dev/shm; no ULFM MPI) are skipped
and listed.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from tests.faults import harness as H  # noqa: E402
from tests.faults.harness import CLASSES, Scenario  # noqa: E402
from tests.faults import ranks as R  # noqa: E402
from tests.faults.ranks import RESOURCES  # noqa: E402


def victims(n):
    return sorted({0, n // 2, n - 1})


def grid(can):
    """The systematic part: (kind, paths, sizes, victims) crossed, paths rotating where a full cross
    would only repeat itself."""
    out = []
    paths = ("shm", "tcp", "c2c", "symmetric")
    for n in (2, 3, 4, 8):
        for path in paths:
            for v in victims(n):
                out.append(Scenario("kill", n=n, path=path, victim=v, delay=0.05 + 0.1 * v / n))
    for i, (kind, n) in enumerate((k, n) for k in ("stall", "abort", "close") for n in (2, 3, 4, 8)):
        for j, v in enumerate((0, n - 1)):
            out.append(Scenario(kind, n=n, path=paths[(i + j) % 4], victim=v, delay=0.2,
                                op="allreduce" if kind == "close" else H.OPS[(i + j) % 2]))
    for n in (3, 4, 8):
        for j, (v, s) in enumerate(((0, 1), (1, 0), (n - 1, n // 2))):
            out.append(Scenario("second", n=n, path=paths[j % 3], victim=v, second=s, delay=0.1,
                                at=R.SECOND_AT[j]))
    if can["netns"]:
        for n in (3, 4):
            for v in victims(n):
                out.append(Scenario("kill", n=n, path="netns", victim=v, delay=0.2))
        for d in (0.1, 0.3, 0.5):
            out.append(Scenario("link", n=4, path="netns", delay=d, count=1 << 18))
    if can["private_shm"]:
        for n in (2, 3, 4):
            out.append(Scenario("shm_init", n=n, path="c2c"))
            out.append(Scenario("shm_alloc", n=n, path="c2c", count=1 << 18))
    if can["mpi"]:
        for v in range(4):
            for op in ("allreduce", "broadcast"):
                out.append(Scenario("island", n=4, path="mpi", victim=v, delay=0.2, op=op))
    return out


def faults_of(sc):
    return 2 if sc.kind == "second" else 1


def line(i, out):
    d = max(out["detect_s"]) if out["detect_s"] else float("nan")
    s = out.get("shrink_s", float("nan"))
    errs = " ".join(f"{k}x{v}" for k, v in sorted(out["errors"].items()))
    text = (f"{i:>4} {out['class']:<5} {out['wall_s']:>6.1f}s  detect {d:>6.2f}  shrink {s:>6.2f}  "
            f"{errs:<42} {out['scenario']}")
    return text + "".join(f"\n       {w}" for w in out["why"])


def soak(n, cycles, every):
    from tests.faults.ranks import soak as soak_rank
    from tests.launcher import run_ranks
    t = time.time()
    res = run_ranks(soak_rank, n, cycles, every, timeout=120 + 3 * cycles)
    print(f"\n# soak: {cycles} cycles (dup, shrink, allreduce, close both) on {n} ranks, "
          f"{time.time() - t:.0f} s; per rank {', '.join(RESOURCES)}: after warm-up -> at the end")
    leaks = 0
    for r, o in enumerate(res):
        grew = [f"{k} +{a - b}" for k, a, b in zip(RESOURCES, o["after"], o["before"]) if a > b]
        leaks += len(grew)
        mid = " ".join(str(s) for s in o["samples"][:: max(1, len(o["samples"]) // 5)])
        print(f"  rank {r}: {o['before']} -> {o['after']}  wrong {o['wrong']}  {o['s'] / cycles * 1e3:.0f} ms "
              f"per cycle  {'LEAK ' + ', '.join(grew) if grew else 'no growth'}   (samples: {mid})")
    return leaks, sum(o["wrong"] for o in res)


def summary(outs, skipped, soak_result):
    print("\n# outcomes by scenario kind (faults injected; trials by class)")
    print(f"{'kind':<10} {'faults':>6} " + " ".join(f"{c:>6}" for c in CLASSES))
    for kind in H.KINDS:
        rows = [o for o in outs if o["kind"] == kind]
        if rows:
            print(f"{kind:<10} {sum(o['faults'] for o in rows):>6} "
                  + " ".join(f"{sum(o['class'] == c for o in rows):>6}" for c in CLASSES))
    total = sum(o["faults"] for o in outs)
    print(f"{'all':<10} {total:>6} " + " ".join(f"{sum(o['class'] == c for o in outs):>6}" for c in CLASSES))

    print("\n# detection: seconds from the fault to each survivor's raise")
    print(f"{'kind':<10} {'raises':>6} {'median':>7} {'p95':>7} {'max':>7} {'bound':>6} {'over':>5}")
    for kind in H.KINDS:
        ds = sorted(d for o in outs if o["kind"] == kind for d in o["detect_s"])
        if ds:
            bound = H.STALL_S if kind == "stall" else H.DEATH_S
            p95 = ds[min(len(ds) - 1, int(0.95 * len(ds)))]
            print(f"{kind:<10} {len(ds):>6} {statistics.median(ds):>7.3f} {p95:>7.3f} {ds[-1]:>7.3f} "
                  f"{bound:>6g} {sum(d > bound for d in ds):>5}")

    print("\n# shrink: first detection to the last survivor's new communicator, by rank count")
    print(f"{'ranks':>5} {'trials':>6} {'median':>7} {'max':>7}   (kill, second, close, abort, island, link)")
    for n in sorted({o["n"] for o in outs}):
        ss = sorted(o["shrink_s"] for o in outs if o["n"] == n and "shrink_s" in o)
        if ss:
            print(f"{n:>5} {len(ss):>6} {statistics.median(ss):>7.3f} {ss[-1]:>7.3f}")
    e8 = sorted(o["shrink_s"] for o in outs if o["n"] == 8 and o["kind"] != "stall" and "shrink_s" in o)

    print("\n# targets")
    count = {c: sum(o["class"] == c for o in outs) for c in CLASSES}
    death = [d for o in outs if o["kind"] != "stall" for d in o["detect_s"]]
    stall = [d for o in outs if o["kind"] == "stall" for d in o["detect_s"]]
    print(f"  injected faults: {total} (target >= 200)")
    print(f"  crashes {count['crash']}, hangs {count['hang']}, wrong results {count['wrong']} (target 0 each); "
          f"errors {count['error']}, slow {count['slow']}")
    if death:
        print(f"  survivors raising within {H.DEATH_S:g} s of a death/abort/close/cut: "
              f"{sum(d <= H.DEATH_S for d in death)}/{len(death)} (max {max(death):.2f} s)")
    if stall:
        print(f"  survivors raising within the timeout + 2 s ({H.STALL_S:g} s) of a stall: "
              f"{sum(d <= H.STALL_S for d in stall)}/{len(stall)} (max {max(stall):.2f} s)")
    if e8:
        print(f"  shrink at 8 ranks within 5 s of detection: {sum(s <= 5 for s in e8)}/{len(e8)} "
              f"(max {e8[-1]:.2f} s); the next allreduce was checked in every trial (wrong: see above)")
    if soak_result is not None:
        print(f"  soak: {soak_result[0]} resource counts grew, {soak_result[1]} wrong results (target 0)")
    for what, why in skipped.items():
        print(f"  not run: {what}: {why}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faults", type=int, default=200, help="random draws until this many faults in all")
    ap.add_argument("--seed", type=int, default=None, help="of the random draws (default: a fresh one)")
    ap.add_argument("--no-grid", action="store_true", help="random draws only")
    ap.add_argument("--soak", type=int, default=1000, help="create/shrink/destroy cycles (0: none)")
    ap.add_argument("--soak-ranks", type=int, default=4)
    ap.add_argument("--only", action="append", default=[], help="run these Scenario lines only")
    a = ap.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    reasons = {"netns": H.netns_reason(), "private_shm": H.private_shm_reason(), "mpi": H.mpi_reason()}
    can = {k: v is None for k, v in reasons.items()}
    skipped = {k: v for k, v in reasons.items() if v}
    print(f"# bench/faults.py: seed {seed}, load {os.getloadavg()[0]:.1f} (1-min average) at the start, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    if a.only:
        todo = [eval(s, {"Scenario": Scenario}) for s in a.only]     # noqa: S307 - the user's own lines
    else:
        todo = [] if a.no_grid else grid(can)
    outs, rng, i = [], random.Random(seed), 0
    while todo or (not a.only and sum(o["faults"] for o in outs) < a.faults):
        sc = todo.pop(0) if todo else H.draw(rng, **can)
        out = H.run(sc)
        out["faults"] = faults_of(sc)
        outs.append(out)
        i += 1
        print(line(i, out), flush=True)
    soak_result = None
    if a.soak and not a.only:
        soak_result = soak(a.soak_ranks, a.soak, max(1, a.soak // 10))
    summary(outs, skipped, soak_result)
    print(f"# load {os.getloadavg()[0]:.1f} at the end, {time.strftime('%H:%M:%S UTC', time.gmtime())}")
    bad = sum(o["class"] in ("crash", "hang", "wrong") for o in outs) + (soak_result[0] if soak_result else 0)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
