"""The MPI bridge: finding the library without starting MPI, what it declares it runs, the whole
communicator delegated to MPI under mpirun, the errors when MPI cannot be used, and failure like
the other bridges: a stalled peer (deadline), abort() from another thread, a dead peer."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import hetccl
from hetccl.bridges import formation
from tests.launcher import run_command, run_ranks_expect_failure
from tests.mpirun_util import clean_env, mpirun_or_skip, run_worker

BRIDGE_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_bridge_worker.py")

PROBE = r"""
import sys
from hetccl.bridges import mpi
from hetccl import dtypes
from hetccl.ops import ReduceOp
lib = mpi.find()
MPI = sys.modules["mpi4py.MPI"]
print("INIT", MPI.Is_initialized())
print("LIB", lib.kind, lib.memory, lib.usable, lib.path)
print("VERSION", lib.version)
b = mpi.MPIBridge.__new__(mpi.MPIBridge)        # the capability table needs no MPI_Init
b._types, b._ops = mpi._tables(MPI)
for name, code in (("f32", dtypes.FLOAT32), ("bf16", dtypes.BFLOAT16), ("f16", dtypes.FLOAT16),
                   ("i8", dtypes.INT8), ("bool", dtypes.BOOL)):
    print("SUP", name, " ".join(op.name for op in ReduceOp if b.supports("allreduce", code, op)))
print("MOVE", b.supports("allgather", dtypes.BFLOAT16), b.supports("broadcast", dtypes.FP8_E4M3))
"""


def _probe():
    mpirun_or_skip()
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in clean_env().items() if v is not None} | {"PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stdout + p.stderr
    return {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in p.stdout.splitlines() if " " in ln} | {
        "SUP": {ln.split()[1]: ln.split()[2:] for ln in p.stdout.splitlines() if ln.startswith("SUP")}}


def test_find_reports_open_mpi_without_initialising_it():
    out = _probe()
    assert out["INIT"] == "False"                        # probing did not call MPI_Init
    kind, memory, usable, path = out["LIB"].split(" ", 3)
    assert (kind, memory, usable) == ("mpi", "host", "False")   # not under mpirun: found, not usable
    assert "libmpi" in path and out["VERSION"].startswith("Open MPI v")


def test_supports_declares_exactly_what_mpi_reduces():
    sup = _probe()["SUP"]
    assert sup["f32"] == ["SUM", "PROD", "MIN", "MAX"]            # no AVG in MPI: hetccl divides
    assert sup["bf16"] == [] and sup["f16"] == []                 # no 16-bit float reductions
    assert sup["i8"] == ["SUM", "PROD", "MIN", "MAX", "BAND", "BOR", "BXOR"]
    assert sup["bool"] == ["MIN", "MAX", "BAND", "BOR", "BXOR"]   # as LAND/LOR/LXOR
    assert _probe()["MOVE"] == "True True"                       # data movement: any dtype


def test_whole_communicator_on_the_mpi_bridge():
    """Every op and dtype on one MPI island of 4: supported calls are MPI's own (same bits as
    mpi4py's Allreduce), the rest (float16/bfloat16, AVG's division) hetccl's."""
    rows = run_worker("whole")
    assert {r["islands"] for r in rows} == {"mpi:0,1,2,3"}


def _init_with_mpi_bridge(rank, size):
    try:
        hetccl.init(timeout=60, bridges="mpi")
    except hetccl.InvalidUsage as e:
        return str(e)
    return "no error"


def test_mpi_bridge_requested_without_mpirun_is_a_clear_error_on_every_rank():
    results = run_ranks_expect_failure(_init_with_mpi_bridge, 2, timeout=120)
    for ok, msg in results:
        assert ok, msg
        assert "bridge requested but not usable" in msg and "mpirun" in msg, msg
        assert "rank 0:" in msg and "rank 1:" in msg, msg


def test_unknown_bridge_name():
    with pytest.raises(hetccl.InvalidUsage, match="'ncll' is not a bridge"):
        formation.requested("ncll", 0)


def _bridge_job(case, timeout, limit):
    mpirun = mpirun_or_skip()
    t0 = time.monotonic()
    p = run_command([mpirun, "-np", "2", "--oversubscribe", sys.executable, BRIDGE_WORKER, case, str(timeout)],
                    timeout=limit, env=clean_env())
    rows = {int(r["rank"]): r for r in (dict(kv.split("=", 1) for kv in ln.split()[1:])
                                         for ln in p.stdout.splitlines() if ln.startswith("RESULT "))}
    return p, rows, time.monotonic() - t0


def test_mpi_bridge_stalled_peer_times_out_aborts_and_exits():
    p, rows, _ = _bridge_job("stall", 2.0, 120)
    assert p.returncode == 0 and sorted(rows) == [0, 1], p.stdout + p.stderr
    r0, r1 = rows[0], rows[1]
    assert r0["outcome"] == "HetcclTimeout" and 2.0 <= float(r0["took"]) < 8, r0
    assert r0["later"] == "InvalidUsage"                       # the aborted bridge refuses calls
    assert r1["outcome"] in ("HetcclTimeout", "BridgeError"), r1   # its peer aborted: no hang either
    assert "did not finish within 2 s" in p.stderr and "the MPI bridge was aborted" in p.stderr


def test_mpi_bridge_abort_from_another_thread_ends_a_pending_call():
    p, rows, _ = _bridge_job("abort", 60.0, 120)
    assert p.returncode == 0 and 0 in rows, p.stdout + p.stderr
    assert rows[0]["outcome"] == "BridgeError" and float(rows[0]["took"]) < 10, rows[0]
    assert rows[0]["later"] == "InvalidUsage" and "interrupted: the MPI bridge was aborted" in p.stderr


def test_mpi_bridge_dead_peer_does_not_wait_out_the_timeout():
    """A peer that exits abnormally: Open MPI's mpirun ends the job (unless run with ULFM, where
    the survivor's call raises); either way nothing waits for the 60 s deadline."""
    p, rows, took = _bridge_job("dead", 60.0, 120)
    assert took < 40, (took, p.stdout, p.stderr)
    if 0 in rows:                                              # ULFM: the survivor saw the failure
        assert rows[0]["outcome"] in ("BridgeError", "HetcclTimeout"), rows[0]
    else:
        assert p.returncode != 0 and "exited" in (p.stdout + p.stderr)
