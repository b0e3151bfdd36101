"""The CI subset of bench/fuzz.py: 60 seconds over every target (the store protocol, framing, the
handshakes, the collective header, p2p framing, the topology file, the cost-model cache); no crash,
no hang, and every target must have run. The benchmark run (>= 1,000,000 inputs) is in
bench/RESULTS.md."""
from __future__ import annotations

import json
import os
import sys

from tests.launcher import REPO_ROOT, run_command


def test_fuzz_subset_60s(tmp_path):
    out = tmp_path / "fuzz.json"
    env = {"PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = run_command([sys.executable, os.path.join(REPO_ROOT, "bench", "fuzz.py"), "--seconds", "60",
                     "--json", str(out)], timeout=300, env=env)
    assert out.exists(), p.stdout + p.stderr
    res = json.loads(out.read_text())
    assert res["crashes"] == 0 and res["hangs"] == 0, p.stdout
    assert p.returncode == 0, p.stdout + p.stderr
    for r in res["results"]:
        assert r["inputs"] >= 500, (r["target"], p.stdout)
