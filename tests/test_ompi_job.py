"""An Open MPI job that a runner kills leaves nothing behind (bench/ompi_job.py, used by
tests/launcher.py's commands and the bench runners that start mpirun): no rank still running (mpirun
starts each in a process group of its own) and none of its shared-memory segments in /dev/shm."""
import os
import sys
import time

from tests.launcher import ompi_job, start_command, stop_command
from tests.mpirun_util import clean_env, mpirun_or_skip

RANK = ("from mpi4py import MPI; import numpy as np, time; "
        "MPI.COMM_WORLD.Allreduce(np.ones(1 << 16), np.empty(1 << 16)); time.sleep(120)")


def test_only_open_mpi_launches_get_files_and_the_users_choice_is_kept():
    env = {}
    assert ompi_job.job_files([sys.executable, "-m", "hetccl", "run", "-n", "2"], env) is None and env == {}
    env = {"OMPI_MCA_btl_sm_backing_directory": "/somewhere"}
    assert ompi_job.job_files(["mpirun", "-np", "2", "x"], env) is None
    env = {}
    d = ompi_job.job_files(["ip", "netns", "exec", "h0", "/usr/bin/mpirun", "-np", "2"], env)
    try:
        assert os.path.isdir(d) and set(env.values()) == {d}, env
    finally:
        ompi_job.end_job(None, d)
    assert not os.path.exists(d)


def test_a_killed_mpirun_job_leaves_no_ranks_and_no_segments(tmp_path):
    mpirun = mpirun_or_skip()
    p = start_command([mpirun, "-np", "2", "--oversubscribe", sys.executable, "-c", RANK],
                      env=clean_env(), output=str(tmp_path / "out"))
    files, ranks = p.job_files, []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None:
            segments = [n for n in os.listdir(files) if n.startswith("sm_segment.")]
            ranks = [pid for pid in ompi_job.session_pids(p.pid) if pid != p.pid]
            if len(segments) == 2 and len(ranks) >= 2:
                break
            time.sleep(0.1)
        assert len(segments) == 2 and p.poll() is None, (segments, (tmp_path / "out").read_text())
    finally:
        stop_command(p)                       # as a runner's time-out does
    assert not os.path.exists(files)
    time.sleep(0.2)
    alive = [pid for pid in ranks if os.path.exists(f"/proc/{pid}") and
             open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive, alive
