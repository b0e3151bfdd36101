# The runtime's choice (auto rows, the flat ring at these sizes) in the islands job and in the plain
# 4-rank c2c job of the same validation run, re-predicted with this tree (no job runs): errors at
# 64K 256K 1M 4M 16M 64M and the probe's beta of each job.
#   PYTHONPATH=$PWD python bench/results/isl-flat-vs-local.py > bench/results/isl-flat-vs-local-2026-12-08.txt
import json
from hetccl.simulate.validate import compare
for x in "ghijkm":
    d = json.load(open(f"bench/results/validate-sim-2026-12-07{x}.json"))
    out = [f"07{x}"]
    for name in ("local n=4 c2c", "islands mpi(0,1)+hetccl(2,3)"):
        rec = d["records"][name]
        rows = [r for r in compare(name, rec) if r["size"] >= 65536 and r["variant"] == "auto"]
        ring = {r["size"]: r["measured_us"] for r in rows}
        out.append(f"{name[:13]:<13} probe beta {1 / rec['model']['beta'] / 1e9:.2f} GB/s, probe big ring ({rec.get('probe_raw', {}).get('allreduce_big_bytes', 0) >> 20} MiB) "
                   f"{rec.get('probe_raw', {}).get('allreduce_big_us', 0):.0f} us, job 16 MiB {ring.get(16 << 20, 0):.0f} us: "
                   + " ".join(f"{r['ran'][:4]}{r['error'] * 100:+.0f}" for r in rows))
    print(" | ".join(out))
