# The islands records of the validation runs of 2026-12-07 (g-m) re-predicted with HANDOVER_PASS
# (collectives/islands.py) at several values, and without it (0): no job runs.
#   PYTHONPATH=$PWD python bench/results/isl-handover-sweep.py > bench/results/isl-handover-sweep-2026-12-08.txt
import json
import hetccl.collectives.islands as I
from hetccl.simulate.validate import compare
name = "islands mpi(0,1)+hetccl(2,3)"
recs = [(x, json.load(open(f"bench/results/validate-sim-2026-12-07{x}.json"))["records"][name]) for x in "ghijkm"]
print(f"# private cache {I.private_cache() / 2**20:.3g} MiB; per run: points >= 64 KiB within 25%, same choice, "
      "errors of the composed form (islands variant) at 64K 256K 1M 4M 16M 64M | of the runtime's choice (auto)")
for k in (0.0, 0.3, 0.5, 0.8, 1.2):
    I.HANDOVER_PASS = k
    tot = ok = 0
    line = []
    for x, rec in recs:
        rows = [r for r in compare(name, rec) if r["size"] >= 65536]
        kk = sum(abs(r["error"]) <= 0.25 for r in rows)
        tot, ok = tot + len(rows), ok + kk
        isl = " ".join(f"{r['error'] * 100:+.0f}" for r in rows if r["variant"] == "islands")
        auto = " ".join(f"{r['error'] * 100:+.0f}" for r in rows if r["variant"] == "auto")
        same = sum(r["same"] for r in rows if r["variant"] == "auto")
        line.append(f"  07{x}: {kk:2d}/12 same {same}/6  islands [{isl}] | auto [{auto}]")
    print(f"HANDOVER_PASS={k}: {ok}/{tot}")
    print("\n".join(line))
