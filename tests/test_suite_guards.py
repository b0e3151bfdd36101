"""The suite's own guards (tests/conftest.py): under ``--only-hardware-skips`` (what CI runs) a
test skipped for anything but missing hardware fails the session."""
from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = '''
import pytest

def test_runs():
    pass

def test_no_gpu():
    pytest.skip("hardware: needs a CUDA device")

@pytest.mark.skipif(True, reason="hardware: needs 2 CUDA devices")
def test_two_gpus():
    pass
'''

BROKEN = '''
import pytest

def test_missing_package():
    pytest.importorskip("a_package_that_is_not_installed_anywhere")
'''


def _pytest(tmp_path, body, *opts):
    (tmp_path / "test_cases.py").write_text(body)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
           "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path / "test_cases.py"), *opts]
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)


def test_hardware_skips_pass_and_other_skips_fail_only_in_ci_mode(tmp_path):
    ok = _pytest(tmp_path, CASES, "--only-hardware-skips")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "1 passed, 2 skipped" in ok.stdout
    broken = _pytest(tmp_path, CASES + BROKEN, "--only-hardware-skips")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "skipped for something other than hardware" in broken.stdout
    assert "test_missing_package: could not import 'a_package_that_is_not_installed_anywhere'" in broken.stdout
    dev = _pytest(tmp_path, CASES + BROKEN)             # a developer's run: skips stay skips
    assert dev.returncode == 0, dev.stdout + dev.stderr
