"""bench/gpu_check.py without a GPU: the mixed communicator of the GPU check with its NCCL island
replaced by the NCCL-API double (host memory) and torch's gloo as the timing peer. On a GPU
machine `bash bench/gpu_check.sh` runs the real thing (docs/bridges.md)."""
from __future__ import annotations

import os
import sys

import pytest

from tests import fakeccl
from tests.launcher import IMPORT_ROOT, REPO_ROOT, run_command


def test_gpu_check_dry_run_mixed_communicator(tmp_path_factory):
    pytest.importorskip("torch")
    libs = fakeccl.build_or_skip(tmp_path_factory)
    out = os.path.join(os.path.dirname(libs["fakeccl"]), "summary.txt")
    env = dict(fakeccl.env(libs), PYTHONPATH=IMPORT_ROOT)
    p = run_command([sys.executable, "-m", "hetccl", "run", "-n", "4", "--", sys.executable,
                     os.path.join(REPO_ROOT, "bench", "gpu_check.py"), "--gpus", "2", "--fake", "--out", out, "--port", "29571"],
                    timeout=240, env=env)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    text = open(out).read()
    assert "islands [('fakeccl', [0, 1]), ('hetccl', [2, 3])]" in text
    assert "all exact" in text
    rows = [ln.split() for ln in text.splitlines() if ln.split() and ln.split()[0] in ("allreduce", "allgather", "broadcast")]
    assert len(rows) == 6 and all(float(x) > 0 for r in rows for x in r[2:])
