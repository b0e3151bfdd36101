"""examples/elastic_ddp.py end to end: 4 ranks lose one (launch rank 2; or rank 0, which served
torch's store, and then another one killed from the outside at a random moment) and train on:
the survivors' parameters are identical and equal to one process's run without failures, the
loss falls at every step, and each failure costs at most one step. Under ``hetccl run
--keep-going`` and under Open MPI's ``mpirun --with-ft ulfm``; and the recovery's resync when a
survivor is one step ahead of the others."""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import sys
import threading
import time
from datetime import timedelta

import pytest

from tests.launcher import REPO_ROOT, free_port, run_command, run_ranks, start_command, stop_command

torch = pytest.importorskip("torch")

EXAMPLE = os.path.join(REPO_ROOT, "examples", "elastic_ddp.py")
HETCCL_RUN = [sys.executable, "-m", "hetccl", "run", "-n", "4", "--keep-going", "--",
              sys.executable, EXAMPLE, "--reference"]

_PREFIX = r"^(?:\[\d+\]: )?"
STEP = re.compile(_PREFIX + r"step +(\d+) loss ([\d.]+) ranks (\d+)$", re.M)
RECOVERY = re.compile(_PREFIX + r"recovery \d+: lost launch ranks \[([\d, ]*)\]; (\d+) ranks left .*"
                      r"resumed at step (\d+); steps lost (\d+)$", re.M)
HASH = re.compile(_PREFIX + r"launch rank (\d+) \(group rank \d+ of \d+\): final params sha256 (\w+)$",
                  re.M)
FINAL = re.compile(_PREFIX + r"final: (\d+) ranks .*parameters identical on every survivor: (\w+)$", re.M)
REFERENCE = re.compile(_PREFIX + r"reference \(one process, no failure\): max \|difference\| (\S+)$",
                       re.M)
PID = re.compile(_PREFIX + r"launch rank (\d+) of 4: pid (\d+)$", re.M)


def check_run(out: str, steps: int, lost_ranks: list[int]) -> list[tuple[list[int], int]]:
    """What every run must show; returns the recoveries as (lost launch ranks, steps lost)."""
    recoveries = [([int(r) for r in m.group(1).split(",")], int(m.group(4)))
                  for m in RECOVERY.finditer(out)]
    assert sorted(r for lost, _ in recoveries for r in lost) == sorted(lost_ranks), out
    assert all(lost <= 1 for _, lost in recoveries), recoveries      # at most the step in flight
    losses = {}
    for m in STEP.finditer(out):            # a step is printed again only if its printer died
        losses[int(m.group(1))] = float(m.group(2))
    assert len(losses) >= steps - len(recoveries) and max(losses) == steps - 1, sorted(losses)
    ordered = [losses[s] for s in sorted(losses)]
    assert all(b < a for a, b in zip(ordered, ordered[1:])), f"the loss did not fall: {ordered}"
    survivors = 4 - len(lost_ranks)
    hashes = {int(m.group(1)): m.group(2) for m in HASH.finditer(out)}
    assert sorted(hashes) == sorted(set(range(4)) - set(lost_ranks)), out
    assert len(set(hashes.values())) == 1, f"the survivors' parameters differ: {hashes}"
    final = FINAL.search(out)
    assert final and int(final.group(1)) == survivors and final.group(2) == "yes", out
    assert float(REFERENCE.search(out).group(1)) < 1e-5, out                # the same trajectory
    return recoveries


def test_elastic_ddp_a_killed_rank_under_hetccl_run(victim=2):
    p = run_command(HETCCL_RUN + ["--steps", "10", "--kill", f"{victim}@4"], timeout=150,
                    env={"HETCCL_PEER_TIMEOUT": "5"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1] == \
        f"hetccl run: finished: 3 of 4 ranks exited 0; lost 1: rank {victim} (SIGKILL)"
    recoveries = check_run(p.stdout, 10, [victim])
    assert recoveries == [([victim], 1)]                             # killed mid-backward: 1 lost
    # the failure path does not ask torch's store once its host (rank 0) is known dead, nor wait on
    # it in a way torch complains about (C10dStore: served_by_rank0, short waits polled)
    assert "TCPStore.cpp" not in p.stderr and "socket.cpp" not in p.stderr, p.stderr[-3000:]
    assert "resumed at step 4; steps lost 1" in p.stdout


def test_elastic_ddp_rank_0_then_a_rank_killed_from_outside():
    """Rank 0 (which served torch's store) kills itself in step 3; another rank is then killed by
    the test, at whatever moment of whatever step it is in (its collectives may complete on some
    survivors and not on others)."""
    steps = 300
    p = start_command(HETCCL_RUN + ["--steps", str(steps), "--kill", "0@3"],
                      env={"HETCCL_PEER_TIMEOUT": "5"})
    errors = []
    drain = threading.Thread(target=lambda: errors.append(p.stderr.read()), daemon=True)
    drain.start()                                    # a full stderr pipe would stall the launcher
    try:
        out, pids, deadline = [], {}, time.monotonic() + 150
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            out.append(line)
            m = PID.match(line.rstrip("\n"))
            if m:
                pids[int(m.group(1))] = int(m.group(2))
            m = STEP.match(line.rstrip("\n"))
            if m and int(m.group(1)) == 20 and "ranks 3" in line:
                os.kill(pids[3], signal.SIGKILL)                     # the second failure
        rest = p.stdout.read()
        p.wait(max(1.0, deadline - time.monotonic()))
        drain.join(10)
        err = "".join(errors)
    finally:
        stop_command(p)
    text = "".join(out) + rest
    assert p.returncode == 0, text[-3000:] + err[-3000:]
    assert err.strip().splitlines()[-1] == ("hetccl run: finished: 2 of 4 ranks exited 0; lost 2: "
                                            "rank 0 (SIGKILL), rank 3 (SIGKILL)")
    recoveries = check_run(text, steps, [0, 3])
    assert recoveries[0] == ([0], 1) and recoveries[1][0] == [3]
    assert "resumed at step 3; steps lost 1" in text
    assert "TCPStore.cpp" not in err and "socket.cpp" not in err, err[-3000:]   # rank 0's store


def test_elastic_ddp_under_mpirun_with_ft_ulfm():
    """Open MPI's mpirun keeps the survivors of a SIGKILLed rank running with --with-ft ulfm (and
    exits 0: its status does not say that a rank died; the program's own output does)."""
    from tests.mpirun_util import clean_env, mpirun_or_skip

    mpirun = mpirun_or_skip()
    p = run_command([mpirun, "-np", "4", "--oversubscribe", "--with-ft", "ulfm", sys.executable,
                     EXAMPLE, "--reference", "--steps", "8", "--kill", "1@3"], timeout=150,
                    env=clean_env(HETCCL_PEER_TIMEOUT="5"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert check_run(p.stdout, 8, [1]) == [([1], 1)]


# ------------------------------------------------------------------------------------------------
# The recovery's resync: a survivor whose last collective completed is one step ahead
# ------------------------------------------------------------------------------------------------
def _load_example():
    spec = importlib.util.spec_from_file_location("elastic_ddp", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resync_case(rank, size, port):
    import argparse

    import torch.distributed as dist

    import hetccl.torch  # noqa: F401 - registers the backend
    from hetccl.torch.c10d_store import served_here

    torch.set_num_threads(1)
    dist.init_process_group("hetccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=size, timeout=timedelta(seconds=60))
    serves = served_here(dist.distributed_c10d._get_default_store())
    ex = _load_example()
    args = argparse.Namespace(seed=0, inputs=4, hidden=8, lr=0.05, momentum=0.5, samples=12,
                              batch=12, kill=[], snapshot=False)
    t = ex.Trainer(args)
    t.step = 5 if rank == 1 else 4                 # rank 1 completed step 4, the others did not
    with torch.no_grad():
        for p in t.net.parameters():
            p.add_(rank)
        for state in t.opt.state.values():
            state["momentum_buffer"].fill_(rank)
    resume, lost = t.resync(started=t.step + 1)
    momentum = {float(s["momentum_buffer"].flatten()[0]) for s in t.opt.state.values()}
    out = (resume, lost, t.step, ex.params_hash(t.net), momentum, serves)
    dist.destroy_process_group()
    return out


def test_resync_takes_the_most_advanced_survivors_state():
    res = run_ranks(_resync_case, 3, free_port(), timeout=120)
    assert {r[:3] for r in res} == {(5, 1, 5)}, res       # resumed after rank 1's step; 1 lost
    assert len({r[3] for r in res}) == 1 and all(r[4] == {1.0} for r in res), res
    assert [r[5] for r in res] == [True, False, False]       # rank 0's process serves torch's store
