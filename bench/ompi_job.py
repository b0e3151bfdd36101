"""Open MPI jobs that leave nothing behind, for every runner that starts mpirun (bench/run_all.py,
bench/oversubscribed.py, bench/validate_sim.py, bench/netns_bench.py, and tests/launcher.py's
commands):

    env = dict(os.environ)
    files = job_files(cmd, env)            # None unless cmd is an Open MPI launch
    p = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        p.wait(timeout)
    finally:
        end_job(p.pid, files)              # kill what is left of the session, remove the files

or ``run(cmd, env, timeout)`` for the same with captured output. Scripts that run *under* mpirun
(bench/alltoall_peer_ab.py, bench/islands_phases.py, ...) are started through it from the shell:

    python bench/ompi_job.py [--timeout S] mpirun -np 8 --oversubscribe python bench/X.py ...

which runs the command as it is (output not captured), and on its end, a time-out or Ctrl-C kills
what is left of the job and removes its files (``main``).
Why: a killed mpirun (a runner's time-out) leaves its ranks running, each in a process group of its
own (so killing the launcher's group misses them), and their btl sm segments in /dev/shm
(sm_segment.<host>.<uid>.<job>.<rank>, 16 MiB each) and PRRTE's session directory in /tmp; Open
MPI removes those only at a clean end. The segments' names carry a job id the runner cannot tell
apart from another user's, so the job gets a directory of its own instead, and only that is removed.
Standard library only (tests/launcher.py loads this file by path).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
from typing import Sequence

MPI_LAUNCHERS = ("mpirun", "mpiexec", "prterun", "orterun")
# where Open MPI's ranks put their shared-memory segments (btl sm: sm_segment.<host>.<uid>.<job>.<rank>,
# 16 MiB each) and PRRTE its session directory (ompi.<pid>: PMIx shared memory, hwloc topology)
OMPI_DIRS = ("OMPI_MCA_btl_sm_backing_directory", "PRTE_MCA_prte_tmpdir_base")


def job_files(cmd: Sequence[str], env: dict) -> str | None:
    """For an Open MPI launch (``cmd`` starts with mpirun, or ``ip netns exec NS mpirun``): a
    directory of this job's own in /dev/shm, set in ``env`` as where its ranks put their
    shared-memory segments and PRRTE its session directory. Open MPI unlinks those only when the
    job ends cleanly: a killed job leaves 16 MiB per rank in /dev/shm, named by a job id the
    launcher cannot tell apart from other users' jobs. Removed by ``end_job`` whatever the end.
    None for other commands, or when ``env`` already names these directories (the user's choice)."""
    if not any(os.path.basename(str(a)) in MPI_LAUNCHERS for a in cmd[:6]) or any(env.get(k) for k in OMPI_DIRS):
        return None
    d = tempfile.mkdtemp(prefix=f"ompi-job-{os.getpid()}-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    env.update({k: d for k in OMPI_DIRS})
    return d


def session_pids(sid: int) -> list[int]:
    """The processes of session ``sid`` (/proc/PID/stat's sixth field). A session id stays reserved
    while any of its processes lives, so these are the job's own, never another's."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
                pids.append(int(name))
    return pids


def end_job(sid: int | None, files: str | None = None) -> None:
    """SIGKILL every process left in session ``sid`` (the launch was started as its leader:
    ``start_new_session``), then remove the job's ``files`` directory (``job_files``). Killing the
    launcher's process group is not enough: mpirun starts every rank in a process group of its own,
    and a killed mpirun leaves them running."""
    for pid in session_pids(sid) if sid is not None else ():
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if files:
        shutil.rmtree(files, ignore_errors=True)


def run(cmd: Sequence[str], env: dict, timeout: float, **popen) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=...)`` in a session of its
    own that leaves nothing behind, on a time-out (subprocess.TimeoutExpired, as from run) or not."""
    env = dict(env)
    files = job_files(cmd, env)
    p = subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, **popen)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        end_job(p.pid, files)
        p.wait()
    return subprocess.CompletedProcess(list(cmd), p.returncode, out, err)


def main(argv=None) -> int:
    """``python bench/ompi_job.py [--timeout S] [--] CMD ...``: CMD (an mpirun launch; anything
    else runs unchanged) in a session of its own with its Open MPI files in a directory of its own
    (``job_files``), its output going straight to the terminal; whatever the end (CMD's own, the
    time-out, Ctrl-C or a SIGTERM to this process) nothing of the job is left running or in
    /dev/shm (``end_job``). Exits with CMD's status (124 on the time-out, like timeout(1))."""
    ap = argparse.ArgumentParser(prog="python bench/ompi_job.py", description=main.__doc__.split(":")[0])
    ap.add_argument("--timeout", type=float, default=None, help="seconds before the job is killed")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="the launch command, e.g. mpirun -np 4 python X.py")
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        ap.error("no command given")
    env = dict(os.environ)
    files = job_files(cmd, env)
    p = subprocess.Popen(cmd, env=env, start_new_session=True)

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    code = 130
    try:
        code = p.wait(timeout=a.timeout)
    except subprocess.TimeoutExpired:
        print(f"ompi_job: {cmd[0]} did not finish within {a.timeout:g} s; killed", flush=True)
        code = 124
    except KeyboardInterrupt:
        code = 130
    finally:
        end_job(p.pid, files)
        p.wait()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
