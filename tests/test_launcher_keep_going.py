"""Launchers that let survivors go on. ``hetccl run --keep-going``: a rank that dies or fails stops
no one; the status and the last line say who was lost. Without the flag the first failure still
stops every rank. Open MPI's mpirun: only with ``--with-ft ulfm``."""
from __future__ import annotations

import signal
import sys
import textwrap

import pytest

from tests.launcher import run_command

HETCCL_RUN = [sys.executable, "-m", "hetccl", "run"]

# Rank 1 leaves a segment it owns in /dev/shm (as a rank killed mid-set-up would), then meets its
# fate; the others wait until it is gone, check that the launcher already removed its segment,
# and finish. ``FATE`` is "kill" (SIGKILL), an exit status, or "ok".
SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    rank, fate = int(os.environ["HETCCL_RANK"]), sys.argv[1].split(",")
    job = os.environ["HETCCL_JOB_ID"]
    if rank == 1:
        seg = f"/dev/shm/hetccl-pair-{os.getpid()}-{job}-test"
        open(seg, "w").close()
        with open(sys.argv[2] + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {seg}")
        os.rename(sys.argv[2] + ".tmp", sys.argv[2])      # the others never read half of it
    me = fate[rank] if rank < len(fate) else "ok"
    if me == "kill":
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
    if me not in ("ok", "sleep"):
        time.sleep(0.3)
        sys.exit(int(me))
    if me == "sleep":
        time.sleep(60)
    if rank == 1:
        sys.exit(0)
    deadline = time.monotonic() + 15
    while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
        time.sleep(0.01)
    pid, seg = open(sys.argv[2]).read().split()
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        except OSError:
            break
        time.sleep(0.01)
    time.sleep(0.5)                                  # the launcher polls every 20 ms
    print("done; rank 1's segment", "left" if os.path.exists(seg) else "removed", flush=True)
""")


def _run(tmp_path, fate: str, *flags, timeout=60):
    script = tmp_path / "fate.py"
    script.write_text(SCRIPT)
    return run_command(HETCCL_RUN + [*flags, "-n", "3", "--", "python", str(script), fate,
                                     str(tmp_path / "rank1")], timeout=timeout)


def _last_line(p) -> str:
    return p.stderr.strip().splitlines()[-1]


def test_keep_going_survivors_finish_after_a_kill(tmp_path):
    p = _run(tmp_path, "ok,kill", "--keep-going")
    assert p.returncode == 0, p.stderr
    assert "hetccl run: rank 1 was killed by SIGKILL; the others keep running (--keep-going)" \
        in p.stderr
    for r in (0, 2):   # they ran to the end, and the dead rank's segment was gone already
        assert f"[{r}]: done; rank 1's segment removed" in p.stdout.splitlines(), p.stdout
    assert _last_line(p) == "hetccl run: finished: 2 of 3 ranks exited 0; lost 1: rank 1 (SIGKILL)"


def test_without_keep_going_a_kill_stops_everyone(tmp_path):
    p = _run(tmp_path, "ok,kill")
    assert p.returncode == 128 + signal.SIGKILL, p.stderr
    assert "rank 1 exited with status 137 (killed by SIGKILL); stopping the others" in p.stderr
    assert "done" not in p.stdout and "finished" not in p.stderr


def test_keep_going_an_error_exit_fails_the_job_but_stops_no_one(tmp_path):
    # rank 1 exits 3 (an error the program reported), rank 2 is killed (a failure it survives)
    p = _run(tmp_path, "ok,3,kill", "--keep-going")
    assert p.returncode == 3, p.stderr
    assert "rank 1 exited with status 3; the others keep running" in p.stderr
    assert "rank 2 was killed by SIGKILL; the others keep running" in p.stderr
    assert "[0]: done" in p.stdout                    # rank 0 was not stopped
    assert _last_line(p) == ("hetccl run: failed (status 3): 1 of 3 ranks exited 0; "
                             "lost 1: rank 2 (SIGKILL); errors 1: rank 1 (status 3)")


def test_keep_going_every_rank_killed_is_a_failure(tmp_path):
    p = _run(tmp_path, "kill,kill,kill", "--keep-going")
    assert p.returncode == 128 + signal.SIGKILL, p.stderr
    assert _last_line(p) == ("hetccl run: failed (status 137): 0 of 3 ranks exited 0; lost 3: "
                             "rank 0 (SIGKILL), rank 1 (SIGKILL), rank 2 (SIGKILL)")


def test_keep_going_without_failures_and_with_a_timeout(tmp_path):
    p = _run(tmp_path, "ok,ok", "--keep-going")
    assert p.returncode == 0, p.stderr
    assert _last_line(p) == "hetccl run: finished: 3 of 3 ranks exited 0; lost 0"
    p = _run(tmp_path, "sleep,kill,sleep", "--keep-going", "--timeout", "5")
    assert p.returncode == 124, p.stderr
    assert _last_line(p) == ("hetccl run: failed (status 124): 0 of 3 ranks exited 0; lost 1: "
                             "rank 1 (SIGKILL); stopped 2: rank 0, rank 2")


def test_keep_going_in_the_usage():
    p = run_command(HETCCL_RUN + ["--help"], timeout=30)
    assert p.returncode == 0 and "--keep-going" in p.stdout


# ------------------------------------------------------------------------------------------------
# Open MPI's mpirun: survivors of a killed rank run on only with --with-ft ulfm (docs/launching.md)
# ------------------------------------------------------------------------------------------------
MPI_SCRIPT = textwrap.dedent("""
    import os, signal, time
    rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
    time.sleep(0.5)
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(2.5)
    print("rank", rank, "done", flush=True)
""")


@pytest.mark.parametrize("ft", [False, True])
def test_mpirun_keeps_survivors_only_with_ft_ulfm(tmp_path, ft):
    from tests.mpirun_util import clean_env, mpirun_or_skip

    mpirun = mpirun_or_skip()
    script = tmp_path / "mpi_fate.py"
    script.write_text(MPI_SCRIPT)
    flags = ["--with-ft", "ulfm"] if ft else []
    p = run_command([mpirun, "-np", "3", "--oversubscribe", *flags, sys.executable, str(script)],
                    timeout=60, env=clean_env())
    done = sorted(int(line.split()[1]) for line in p.stdout.splitlines() if line.endswith(" done"))
    if ft:    # the others run to the end; mpirun's status and output say nothing of the death
        assert (p.returncode, done) == (0, [0, 2]), p.stdout + p.stderr
    else:     # the first abnormal exit ends the job
        assert p.returncode == 128 + signal.SIGKILL and done == [], p.stdout + p.stderr
        assert "exited on" in p.stderr and "signal 9" in p.stderr, p.stderr
