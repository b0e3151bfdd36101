"""``python -m hetccl.benchmark`` is ``hetccl bench`` (one process per rank, under a launcher)."""
import sys

from .cli import bench_main

sys.exit(bench_main(sys.argv[1:]))
