"""Suite-wide guards: the repo root on sys.path, a default per-test timeout, and a loud report of
shared-memory segments (/dev/shm/hetccl-*) that appeared during the session and were never removed.
"""
from __future__ import annotations

import os
import sys
import time

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # spawned rank processes copy sys.path from here
    sys.path.insert(0, REPO_ROOT)

from tests.launcher import shm_segments  # noqa: E402

DEFAULT_TIMEOUT = 300.0
_leaked: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # pyproject.toml sets `timeout = 300`; keep a default even if it is run from elsewhere.
    if hasattr(config.option, "timeout") and not config.option.timeout \
            and not config.getini("timeout"):
        config.option.timeout = DEFAULT_TIMEOUT


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_shm_segments():
    """Segments must be unlinked once every rank has mapped them; leftovers mean a leak (or a
    crashed rank whose harness did not clean up). Reported, not removed: another job's segments
    on the same host may look the same."""
    before = set(shm_segments())
    started = time.time()
    yield
    new = []
    for path in shm_segments():
        if path in before:
            continue
        try:
            if os.stat(path).st_mtime >= started - 1:
                new.append(path)
        except OSError:
            pass  # already gone
    if new:
        _leaked.extend(new)
        print(f"\n\n!!!!!! hetccl: {len(new)} shared-memory segment(s) appeared during the "
              f"test session and were never removed: {new}\n", file=sys.stderr)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _leaked:
        terminalreporter.section("hetccl: leaked shared-memory segments", red=True, bold=True)
        for path in _leaked:
            terminalreporter.write_line(path, red=True)


def pytest_sessionfinish(session, exitstatus):
    if _leaked and exitstatus == 0 and os.environ.get("HETCCL_TEST_ALLOW_SHM_LEAKS") != "1":
        session.exitstatus = 1  # fail the run: a leak is a bug
