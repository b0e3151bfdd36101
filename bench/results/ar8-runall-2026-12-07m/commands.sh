#!/bin/bash
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONDONTWRITEBYTECODE=1
for r in 1 2 3; do
  for t in main wt; do
    if [ $t = main ]; then cd /work/main; export PYTHONPATH=/work/main XDG_CACHE_HOME=bench/results/ar8-runall-2026-12-07m/cache-main; else cd /work/wt/ar8; export PYTHONPATH=/work/wt/ar8 XDG_CACHE_HOME=bench/results/ar8-runall-2026-12-07m/cache-wt; fi
    echo "== $t round $r $(date -u +%H:%M:%S) $(uptime | sed 's/.*load/load/')"
    timeout 600 python bench/run_all.py --nranks 8 -c allreduce,broadcast --sizes 524288,2097152,8388608 --rounds 1 --libs hetccl,ompi --max-busy 1 --wait-quiet 0 --retry-noisy 0 --out bench/results/ar8-runall-2026-12-07m/$t-r$r.md --raw-dir bench/results/ar8-runall-2026-12-07m/$t-r$r-raw 2>&1 | grep -E "FAIL|PASS|Error" | head -5
  done
done
echo ALLDONE
