"""``hetccl run`` (the local launcher) and tests/launcher.py (the multi-rank test harness)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.launcher import (run_command, run_ranks, run_ranks_expect_failure, shm_segments,
                            start_command, stop_command)

HETCCL_RUN = [sys.executable, "-m", "hetccl.bootstrap.launcher"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _all_dead(pids, timeout: float = 3.0) -> bool:
    """True once none of ``pids`` is alive (SIGKILL takes effect asynchronously)."""
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _pids(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"pid=(\d+)", text)]


# ------------------------------------------------------------------------------------------------
# hetccl run
# ------------------------------------------------------------------------------------------------
ENV_SCRIPT = textwrap.dedent("""
    import os, sys
    e = os.environ
    print("rank", e["HETCCL_RANK"], "of", e["HETCCL_SIZE"], "local", e["HETCCL_LOCAL_RANK"],
          e["HETCCL_LOCAL_SIZE"], "store", e["HETCCL_STORE"], "secret", len(e["HETCCL_SECRET"]),
          "job", e["HETCCL_JOB_ID"], "blas", e["OPENBLAS_NUM_THREADS"], e["OMP_NUM_THREADS"])
    print("to stderr", e["HETCCL_RANK"], file=sys.stderr)
    sys.stdout.write("no newline at the end")
""")


def test_run_prefixes_output_and_sets_the_environment(tmp_path):
    script = tmp_path / "env_script.py"
    script.write_text(ENV_SCRIPT)
    p = run_command(HETCCL_RUN + ["-n", "3", "python", str(script)], timeout=30,
                    env={"OMP_NUM_THREADS": None, "OPENBLAS_NUM_THREADS": "7"})
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    for r in range(3):
        line = next(x for x in out if x.startswith(f"[{r}]: rank"))
        words = line.split()
        assert words[2:8] == [str(r), "of", "3", "local", str(r), "3"]
        assert words[9].startswith("127.0.0.1:") and words[11] == "64"
        assert len(words[13]) == 8
        assert words[15:] == ["7", "1"]  # set by the user: kept; unset: 1
        assert f"[{r}]: no newline at the end" in out
        assert f"[{r}]: to stderr {r}" in p.stderr.splitlines()
        assert f"to stderr" not in p.stdout
    assert len({x.split()[9] for x in out if " rank " in x}) == 1  # one store for all


def test_run_propagates_a_failing_rank_and_stops_the_others():
    code = ("import os, sys, time; r = int(os.environ['HETCCL_RANK']); "
            "print('pid=%d' % os.getpid(), flush=True); "
            "time.sleep(0.5) if r == 0 else time.sleep(60); sys.exit(3)")
    t0 = time.monotonic()
    p = run_command(HETCCL_RUN + ["-n", "2", "--", "python", "-c", code], timeout=30)
    assert time.monotonic() - t0 < 10
    assert p.returncode == 3, p.stderr
    assert "hetccl run: rank 0 exited with status 3; stopping the others" in p.stderr
    pids = _pids(p.stdout)
    assert len(pids) == 2 and _all_dead(pids)


def test_run_reports_a_rank_killed_by_a_signal():
    code = ("import os, signal, time; r = int(os.environ['HETCCL_RANK']); "
            "os.kill(os.getpid(), signal.SIGKILL) if r == 1 else time.sleep(60)")
    p = run_command(HETCCL_RUN + ["-n", "2", "python", "-c", code], timeout=30)
    assert p.returncode == 128 + signal.SIGKILL
    assert "rank 1 exited with status 137 (killed by SIGKILL)" in p.stderr


@pytest.mark.parametrize("sig, status, stubborn", [(signal.SIGINT, 130, True),
                                                   (signal.SIGTERM, 143, False)])
def test_run_stops_all_ranks_on_ctrl_c_or_sigterm(sig, status, stubborn):
    # a stubborn rank 1 ignores SIGINT/SIGTERM (as if stuck in native code): SIGKILL must follow
    code = ("import os, signal, time; r = int(os.environ['HETCCL_RANK']); "
            f"r == 1 and {stubborn} and "
            "[signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)]; "
            "print('pid=%d ready' % os.getpid(), flush=True); time.sleep(60)")
    p = start_command(HETCCL_RUN + ["-n", "2", "python", "-c", code])
    try:
        lines = []
        deadline = time.monotonic() + 20
        while len(lines) < 2 and time.monotonic() < deadline:
            line = p.stdout.readline()
            if "ready" in line:
                lines.append(line)
        assert len(lines) == 2, "ranks did not start"
        t0 = time.monotonic()
        p.send_signal(sig)
        out, err = p.communicate(timeout=20)
        assert time.monotonic() - t0 < 8
        assert p.returncode == status, err
        assert f"got {signal.Signals(sig).name}; stopping all ranks" in err
        assert _all_dead(_pids("".join(lines)))
    finally:
        stop_command(p)


def test_run_timeout_exits_124():
    t0 = time.monotonic()
    p = run_command(HETCCL_RUN + ["-n", "2", "--timeout", "1", "python", "-c",
                                  "import time; time.sleep(60)"], timeout=30)
    assert p.returncode == 124 and "timeout" in p.stderr
    assert time.monotonic() - t0 < 10


def test_run_usage_errors():
    p = run_command(HETCCL_RUN + ["-n", "2"], timeout=30)
    assert p.returncode == 2 and "usage: hetccl run" in p.stderr
    assert "missing the command" in p.stderr
    p = run_command(HETCCL_RUN + ["-n", "zero", "true"], timeout=30)
    assert p.returncode == 2 and "-n zero" in p.stderr
    p = run_command(HETCCL_RUN + ["--help"], timeout=30)
    assert p.returncode == 0 and "usage: hetccl run" in p.stdout
    p = run_command(HETCCL_RUN + ["-n", "1", "/nonexistent/program"], timeout=30)
    assert p.returncode == 127 and "cannot start" in p.stderr


def test_run_bare_python_script_and_shm_cleanup(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent("""
        import os, time
        job, r = os.environ["HETCCL_JOB_ID"], int(os.environ["HETCCL_RANK"])
        path = f"/dev/shm/hetccl-{job}-seg{r}"
        print("made", path, flush=True)
        open(path, "w").close()
        if r == 1:  # crash only once rank 0 made its segment too
            while not os.path.exists(f"/dev/shm/hetccl-{job}-seg0"):
                time.sleep(0.01)
        os._exit(0 if r == 0 else 5)   # a crash: nobody unlinks the segments
    """))
    p = run_command(HETCCL_RUN + ["-n", "2", "python", "crash.py"], timeout=30, cwd=tmp_path)
    assert p.returncode == 5, p.stderr
    made = [line.split()[-1] for line in p.stdout.splitlines() if "made" in line]
    assert len(made) == 2 and not any(os.path.exists(m) for m in made)
    assert "removed 2 shared-memory segment(s)" in p.stderr


def test_run_main_in_process_success(capfd):
    from hetccl.bootstrap.launcher import run_main

    assert run_main(["-n", "2", sys.executable, "-c", "print('hi')"]) == 0
    out = capfd.readouterr().out
    assert sorted(out.splitlines()) == ["[0]: hi", "[1]: hi"]


# ------------------------------------------------------------------------------------------------
# The test harness itself
# ------------------------------------------------------------------------------------------------
def _echo_env(rank, size, extra):
    import numpy  # imported after the harness set OPENBLAS_NUM_THREADS

    e = os.environ
    return (rank, size, extra, e["HETCCL_RANK"], e["HETCCL_SIZE"], e["HETCCL_STORE"],
            e["HETCCL_JOB_ID"], len(e["HETCCL_SECRET"]), e["OPENBLAS_NUM_THREADS"],
            e.get("HETCCL_TRANSPORTS"), e.get("MY_VAR"), numpy.__name__)


def test_run_ranks_returns_rank_ordered_results():
    res = run_ranks(_echo_env, 3, {"x": 1}, timeout=30, env={"MY_VAR": "v"},
                    transports=["shm", "tcp"])
    for r, item in enumerate(res):
        assert item[:5] == (r, 3, {"x": 1}, str(r), "3")
        assert item[7:] == (64, "1", "shm,tcp", "v", "numpy")
    assert len({item[5] for item in res}) == 1 and len({item[6] for item in res}) == 1


def _fails_on_rank_1(rank, size):
    if rank == 1:
        raise ValueError("rank one is broken")
    return rank


def test_run_ranks_forwards_the_failing_rank_traceback():
    with pytest.raises(AssertionError) as ei:
        run_ranks(_fails_on_rank_1, 3, timeout=30)
    msg = str(ei.value)
    assert "---- rank 1 of 3 ----" in msg and "ValueError: rank one is broken" in msg
    assert "_fails_on_rank_1" in msg and "rank 0 of 3" not in msg


def _hangs_on_rank_0(rank, size, pidfile):
    with open(f"{pidfile}.{rank}", "w") as f:
        f.write(str(os.getpid()))
    if rank == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # must be SIGKILLed
        time.sleep(120)
    return "ok"


def test_run_ranks_kills_a_hanging_rank_at_the_deadline(tmp_path):
    pidfile = str(tmp_path / "pid")
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"ranks \[0\] did not finish within 2s"):
        run_ranks(_hangs_on_rank_0, 2, pidfile, timeout=2)
    assert time.monotonic() - t0 < 10
    pids = [int(open(f"{pidfile}.{r}").read()) for r in range(2)]
    assert _all_dead(pids)
    assert not [c for c in _children() if c in pids]


def _children() -> list[int]:
    me = str(os.getpid())
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[1] == me and fields[0] != "Z":
                    kids.append(int(d))
            except OSError:
                pass
    return kids


def _dies_mid_collective(rank, size):
    from hetccl.bootstrap.env import detect
    from hetccl.bootstrap.rendezvous import connect_store
    from hetccl.errors import HetcclTimeout

    conn = connect_store(detect(), timeout=20)
    conn.client.barrier("started", size)
    if rank == 2:
        os._exit(1)
    try:
        conn.client.allgather("never", b"x", size, timeout=1.0)
        outcome = "no error?!"
    except HetcclTimeout as e:
        outcome = f"survivor saw: {e}"
    conn.close(timeout=10)  # rank 0 serves until rank 1 is gone too (rank 2 died: no wait)
    return outcome


def test_run_ranks_expect_failure_reports_every_rank():
    res = run_ranks_expect_failure(_dies_mid_collective, 3, timeout=30)
    assert res[2][0] is False and "exited with code 1" in res[2][1]
    for ok, text in res[:2]:
        assert ok and "ranks [2] of 3 did not contribute" in text


def _leaks_a_segment(rank, size):
    if rank == 0:
        open(f"/dev/shm/hetccl-{os.environ['HETCCL_JOB_ID']}-leak", "w").close()
    return rank


def _crashes_with_a_segment(rank, size):
    open(f"/dev/shm/hetccl-{os.environ['HETCCL_JOB_ID']}-crash{rank}", "w").close()
    raise RuntimeError("crash")


def test_run_ranks_cleans_and_reports_shm_segments():
    before = set(shm_segments())
    with pytest.raises(AssertionError, match="left behind"):
        run_ranks(_leaks_a_segment, 2, timeout=30)
    res = run_ranks_expect_failure(_crashes_with_a_segment, 2, timeout=30)
    assert not any(ok for ok, _ in res)
    assert set(shm_segments()) <= before


def test_run_command_kills_the_whole_group_on_timeout():
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print('pid=%d' % c.pid, flush=True); time.sleep(60)")
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match="did not finish within 1s") as ei:
        run_command([sys.executable, "-c", code], timeout=1)
    assert time.monotonic() - t0 < 8
    pids = _pids(str(ei.value))
    assert pids and _all_dead(pids)
    assert isinstance(run_command(["true"], timeout=5), subprocess.CompletedProcess)
