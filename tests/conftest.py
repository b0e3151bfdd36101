"""Suite-wide guards: which hetccl is tested, a default per-test timeout, a loud report of
shared-memory segments (/dev/shm/hetccl-*) that appeared during the session and were never removed,
``--only-hardware-skips`` (CI's mode), and the bytecode of hetccl and the tests written once for the
thousands of interpreters the suite starts (byte_compile_sources).

Which hetccl (tests/launcher.py, hetccl/_checkout.py): this checkout's when PYTHONPATH names it
(``PYTHONPATH=$PWD python -m pytest``) or no built hetccl is installed, else the installed
package; the header of the run says which. When it is the installed one, the session runs in a
view of the checkout without ``hetccl/``, so commands started with ``python -c``/``-m`` cannot
pick up the source tree either.

Skips: a test may skip only for what the machine lacks. Its reason then starts with
``"hardware: "`` (no CUDA device, two GPUs needed, a CPU without AVX-512, a machine shape). Any
other skip (a package or tool of the test extras missing, a root-only feature) means an incomplete
install: with ``--only-hardware-skips`` such a skip fails the session, so a broken install cannot
pass as a green run. Required parts (numpy, ml_dtypes, the native core) are imported, never
skipped: missing, they fail.
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
HARDWARE = "hardware: "
_leaked: list[str] = []
_skips: list[tuple[str, str]] = []     # (test id, reason) of skips that are not hardware ones


def pytest_addoption(parser):
    parser.addoption("--only-hardware-skips", action="store_true",
                     help="fail the session if a test is skipped for anything but missing hardware "
                          "(a skip reason starting with 'hardware: '): what CI runs")


def skip_reason(report) -> str:
    """The reason of a skipped test report ("Skipped: " removed)."""
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.split("Skipped: ", 1)[-1]


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = skip_reason(report)
        if not reason.startswith(HARDWARE):
            _skips.append((report.nodeid, reason))


def pytest_report_header(config):
    if IMPORT_ROOT == REPO_ROOT:
        return f"hetccl under test: this checkout ({REPO_ROOT})"
    import importlib.util
    where = os.path.dirname(importlib.util.find_spec("hetccl").origin)
    return (f"hetccl under test: the installed package at {where}, not this checkout's hetccl/ "
            f"(put the checkout on PYTHONPATH to test it)")


def byte_compile_sources() -> list[str]:
    """Write the bytecode of hetccl's and the tests' modules once, when this interpreter does not
    (``PYTHONDONTWRITEBYTECODE=1`` / ``-B``; returns the folders compiled).

    Every rank of a multi-rank test is a fresh interpreter (tests/launcher.py: spawn), and so is
    every command a test starts (``hetccl run``, mpirun, torchrun); without a ``__pycache__`` each
    one compiles every hetccl module it imports from source, ~0.15 s of CPU per process, thousands
    of processes per session. Reading bytecode is allowed under ``-B`` (only writing is not), so the
    cache is written here, once, as the interpreter would have without the flag (``__pycache__``
    is git-ignored; a source edited later is recompiled by its timestamp, as usual)."""
    if not sys.dont_write_bytecode:
        return []          # the interpreters write it themselves
    import compileall
    import importlib.util
    spec = importlib.util.find_spec("hetccl")
    folders = [*(spec.submodule_search_locations or [])] if spec else []
    folders.append(os.path.join(IMPORT_ROOT, "tests"))
    done = []
    for folder in folders:
        if os.access(folder, os.W_OK):
            compileall.compile_dir(folder, quiet=2)    # a syntax error still fails at import
            done.append(folder)
    return done


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # pyproject.toml sets `timeout = 300`; keep a default even if it is run from elsewhere.
    if hasattr(config.option, "timeout") and not config.option.timeout \
            and not config.getini("timeout"):
        config.option.timeout = DEFAULT_TIMEOUT
    byte_compile_sources()


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
    if _skips and config.getoption("only_hardware_skips"):
        terminalreporter.section("hetccl: skipped for something other than hardware (an incomplete "
                                 "install?)", red=True, bold=True)
        for nodeid, reason in _skips:
            terminalreporter.write_line(f"{nodeid}: {reason}", red=True)
    if _leaked:
        terminalreporter.section("hetccl: leaked shared-memory segments", red=True, bold=True)
        for path in _leaked:
            terminalreporter.write_line(path, red=True)


def pytest_sessionfinish(session, exitstatus):
    if _leaked and exitstatus == 0 and os.environ.get("HETCCL_TEST_ALLOW_SHM_LEAKS") != "1":
        session.exitstatus = 1  # fail the run: a leak is a bug
    if _skips and exitstatus == 0 and session.config.getoption("only_hardware_skips"):
        session.exitstatus = 1  # CI: a test skipped for a missing package or tool
