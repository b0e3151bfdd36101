"""Suite-wide guards: which hetccl is tested, a default per-test timeout, and a loud report of
shared-memory segments (/dev/shm/hetccl-*) that appeared during the session and were never removed.

Which hetccl (tests/launcher.py, hetccl/_checkout.py): this checkout's when PYTHONPATH names it
(``PYTHONPATH=$PWD python -m pytest``) or no built hetccl is installed, else the installed
package; the header of the run says which. When it is the installed one, the session runs in a
view of the checkout without ``hetccl/``, so commands started with ``python -c``/``-m`` cannot
pick up the source tree either.
"""
from __future__ import annotations

import os
import sys
import time

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
if REPO_ROOT not in sys.path:  # to import tests.launcher, which then sets sys.path for good
    sys.path.insert(0, REPO_ROOT)

from tests.launcher import IMPORT_ROOT, shm_segments  # noqa: E402

if IMPORT_ROOT != REPO_ROOT:
    os.chdir(IMPORT_ROOT)

DEFAULT_TIMEOUT = 300.0
_leaked: list[str] = []


def pytest_report_header(config):
    if IMPORT_ROOT == REPO_ROOT:
        return f"hetccl under test: this checkout ({REPO_ROOT})"
    import importlib.util
    where = os.path.dirname(importlib.util.find_spec("hetccl").origin)
    return (f"hetccl under test: the installed package at {where}, not this checkout's hetccl/ "
            f"(put the checkout on PYTHONPATH to test it)")


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
