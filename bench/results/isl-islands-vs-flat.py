# Every recorded islands validation job in bench/results: at each size where the runtime's choice
# (auto row) ran a flat algorithm, the composed form's measured time (islands row, same job) over
# the flat one's. Above 1: the flat route was the faster.
#   python bench/results/isl-islands-vs-flat.py > bench/results/isl-islands-vs-flat-2026-12-08.txt
import glob
import json
from collections import defaultdict
name = "islands mpi(0,1)+hetccl(2,3)"
agg = defaultdict(list)
files = sorted(glob.glob("bench/results/validate-sim-2026-12-0*.json")) + sorted(glob.glob("bench/results/isl-validate-*.json"))
for f in files:
    rec = json.load(open(f))["records"].get(name)
    if not rec or "error" in rec:
        continue
    m = {(r["size"], r["variant"]): (r["time_us"], r["algo"]) for r in rec["rows"]}
    for n in sorted({k[0] for k in m}):
        ta, ran = m[(n, "auto")]
        if n >= 16384 and ran != "islands":
            agg[n].append(round(m[(n, "islands")][0] / ta, 2))
print(f"# {len(files)} files")
for n, v in sorted(agg.items()):
    print(f"{n >> 10:>6} KiB: composed/flat {sorted(v)}; flat faster in {sum(x > 1 for x in v)}/{len(v)}")
