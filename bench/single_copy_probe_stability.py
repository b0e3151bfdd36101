"""How stable the single-copy probe's verdicts are: the probe measured --runs times on one communicator.

Run under the launcher, e.g.
``python -m hetccl run -n 4 -- python bench/single_copy_probe_stability.py --runs 5 -c allgather,broadcast --sizes 512K,2M,8M``.

Each run is one measurement of collectives/single_copy_probe.py (``measure``: the paths' blocks
interleaved, undecided sizes extended), as a new communicator on this host takes it. For every run
it prints the verdict per size three ways, all from that run's timings:

* **old**: the rule before (single copy wins by MARGIN in the median time *and* the median paired
  ratio of the first 5 repetitions, 3 above 8 MiB; no read orders);
* **new**: ``verdicts`` with no history (what a host measured for the first time gets);
* **kept**: ``verdicts`` given the previous run's verdicts (what a host re-measured because it was
  busy gets: an undecided size keeps the last verdict).

A verdict is ``F`` (FIFO), ``S`` (single copy, arrival order) or ``D`` (single copy by doubling).
The summary counts, per rule and size, how many runs gave the most common verdict. Also printed:
each run's repetitions per size (extended ones show more) and the seconds it took.
"""
import argparse
import collections
import json
import time

import numpy as np

import hetccl
from hetccl.collectives import single_copy_probe as p

OLD_REPS, OLD_LARGE_REPS = 5, 3


def _size(spec):
    spec = spec.strip().upper()
    return int(spec[:-1]) << {"K": 10, "M": 20}[spec[-1]] if spec[-1] in "KM" else int(spec)


def old_rule(nb, times) -> str:
    k = OLD_LARGE_REPS if nb > p.BLOCK_BYTES else OLD_REPS
    f, s = np.array(times["fifo"][:k]), np.array(times["single"][:k])
    return "S" if np.median(s) < p.MARGIN * np.median(f) and np.median(s / f) < p.MARGIN else "F"


def letters(v, coll) -> dict:
    order = dict(v.get(f"{coll}:doubling", ()))
    return {nb: ("D" if order.get(nb) else "S") if won else "F" for nb, won in v[coll]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="512K,2M,8M")
    ap.add_argument("-c", "--collectives", default="allgather,broadcast")
    ap.add_argument("--json", help="write every run's per-repetition times (us) here (rank 0)")
    a = ap.parse_args()
    comm = hetccl.init()
    if not comm._tuner.model.single_copy:
        raise SystemExit("no single-copy route on this communicator (every pair c2c in cma mode needed)")
    sizes = tuple(map(_size, a.sizes.split(",")))
    colls = tuple(a.collectives.split(","))
    got = {rule: collections.defaultdict(list) for rule in ("old", "new", "kept")}
    prev = {c: None for c in colls}
    raw = []
    for run in range(a.runs):
        t0 = time.perf_counter()
        rows = p.measure(comm._engine, comm._tuner, 60.0, sizes=sizes, collectives=colls)
        took = time.perf_counter() - t0
        if not rows:
            raise SystemExit("a cross-memory read was refused")
        raw.append({c: [[nb, {k: [round(t * 1e6, 1) for t in ts] for k, ts in times.items()}]
                        for nb, times in v] for c, v in rows.items()})
        line = []
        for c in colls:
            new, kept = letters(p.verdicts(rows[c], None, c), c), p.verdicts(rows[c], prev[c], c)
            prev[c] = kept
            kept = letters(kept, c)
            for nb, times in rows[c]:
                for rule, v in (("old", old_rule(nb, times)), ("new", new[nb]), ("kept", kept[nb])):
                    got[rule][(c, nb)].append(v)
                med = {k: np.median(t) * 1e6 for k, t in times.items()}
                line.append(f"{c} {nb >> 10}K: old {old_rule(nb, times)} new {new[nb]} kept {kept[nb]}"
                            f" reps {len(times['fifo'])} us " + "/".join(f"{k} {v:.0f}" for k, v in med.items()))
        if comm.rank == 0:
            print(f"run {run + 1} ({took:.1f} s):\n  " + "\n  ".join(line), flush=True)
    if comm.rank == 0 and a.json:
        with open(a.json, "w") as f:
            json.dump({"ranks": comm.size, "runs": raw}, f)
    if comm.rank == 0:
        print(f"{comm.size} ranks, {a.runs} runs: verdicts per run, and runs agreeing with the most common")
        for rule in ("old", "new", "kept"):
            for key, vs in got[rule].items():
                top = collections.Counter(vs).most_common(1)[0][1]
                print(f"  {rule:>4} {key[0]:>9} {key[1] >> 10:>6}K: {''.join(vs)}  {top}/{len(vs)}")
    comm.close()


if __name__ == "__main__":
    main()
