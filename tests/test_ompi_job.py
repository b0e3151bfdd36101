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


def test_the_wrapper_of_scripts_run_under_mpirun_leaves_nothing_when_interrupted():
    """``python bench/ompi_job.py mpirun ...`` (how bench/README.md starts scripts that run under
    mpirun): Ctrl-C or a SIGTERM while the ranks hold their segments kills the ranks and removes
    the job's directory; a command that is no mpirun launch runs unchanged."""
    import signal
    import subprocess
    mpirun = mpirun_or_skip()
    env = {k: v for k, v in {**os.environ, **clean_env()}.items() if v is not None}
    wrapper = ompi_job.__file__
    marker = f"hetccl-wrapper-test-{os.getpid()}"
    p = subprocess.Popen([sys.executable, wrapper, "--timeout", "100", mpirun, "-np", "2", "--oversubscribe",
                          sys.executable, "-c", f"{RANK}  # {marker}"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prefix = f"ompi-job-{p.pid}-"
    try:
        deadline, segments = time.monotonic() + 60, []
        while time.monotonic() < deadline and p.poll() is None:
            dirs = [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
            segments = [n for n in os.listdir(f"/dev/shm/{dirs[0]}") if n.startswith("sm_segment.")] if dirs else []
            if len(segments) == 2:
                break
            time.sleep(0.1)
        assert len(segments) == 2 and p.poll() is None, segments
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 130
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
    time.sleep(0.2)
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read() and " Z " not in open(f"/proc/{pid}/stat").read():
                    left.append(pid)
        except OSError:
            pass
    assert not left, left
    out = subprocess.run([sys.executable, wrapper, "--", sys.executable, "-c", "print('as is')"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0 and out.stdout == "as is\n", out
