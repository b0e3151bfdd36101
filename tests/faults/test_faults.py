"""The CI subset of the fault-injection suite: what tests/test_failures.py, test_recovery.py,
test_lifecycle.py and netns/test_link_down.py do not cover already (a stall ended by SIGCONT, a
full /dev/shm at the start and at comm.alloc, a rank of an MPI island dying in a mixed
communicator), plus a few random scenarios. The full run, with its figures, is bench/faults.py.

Every case is a Scenario run by tests/faults/harness.py and must come out "ok"; a failure prints
the Scenario line, which reproduces it: ``harness.run(Scenario(...))``.
"""
from __future__ import annotations

import random
import secrets

import pytest

from tests.faults import harness as H
from tests.faults.harness import Scenario


def _ok(sc):
    out = H.run(sc)
    assert out["class"] == "ok", f"{sc} came out {out['class']}: {out['why']} ({out})"
    return out


def test_a_stalled_rank_times_the_survivors_out_and_raises_when_it_wakes():
    """SIGSTOP mid-allreduce: every survivor raises within the call's timeout + 2 s, they shrink
    (fencing the silent rank), SIGCONT: the woken rank raises at once and is told it was excluded.
    The stalled rank is rank 0, the store's host: the timed-out call's hang report and its post of
    the reason in the store each wait up to their bound for it, and must not add up (they did:
    timeout + 2.5 s)."""
    out = _ok(Scenario("stall", n=3, path="tcp", victim=0, delay=0.2))
    assert max(out["detect_s"]) <= H.STALL_S and out["wake_raise_s"] < H.WAKE_S, out


@pytest.mark.skipif(H.private_shm_reason() is not None, reason=H.private_shm_reason() or "")
@pytest.mark.parametrize("kind", ["shm_init", "shm_alloc"])
def test_a_full_dev_shm_is_a_clean_error_on_every_rank(kind):
    """In a private tmpfs on /dev/shm (a mount namespace of its own; the machine's is never
    filled): a TransportError naming the fix on every rank, nothing left behind; comm.alloc works
    again once there is room."""
    out = _ok(Scenario(kind, n=3, path="c2c", count=1 << 18))
    assert out["errors"] == {"TransportError": 3}, out


@pytest.mark.skipif(H.mpi_reason() is not None, reason=H.mpi_reason() or "")
def test_a_rank_of_an_mpi_island_dies_in_a_mixed_communicator():
    """mpirun --with-ft ulfm: MPI island {0, 1}, hetccl island {2, 3}; rank 1 dies mid-allreduce
    through the islands. Every survivor raises at once (the control plane interrupts the MPI
    bridge), the survivors shrink (the island by MPIX_Comm_shrink) and compute right."""
    out = _ok(Scenario("island", n=4, path="mpi", victim=1, delay=0.2))
    assert max(out["detect_s"]) < H.DEATH_S, out


def test_random_scenarios():
    """Two draws (kill, abort, close or second death; 2-4 ranks; shm, tcp, c2c or symmetric
    buffers; any victim and moment) from a fresh seed, printed on failure."""
    seed = secrets.randbelow(1 << 31)
    rng = random.Random(seed)
    for _ in range(2):
        sc = H.draw(rng, kinds=("kill", "abort", "close", "second"), netns=False, sizes=(2, 3, 4))
        out = H.run(sc)
        assert out["class"] == "ok", f"seed {seed}: {sc} came out {out['class']}: {out['why']}"


def test_create_shrink_destroy_cycles_leak_nothing():
    """The soak's short form (bench/faults.py runs 1,000 cycles): dup, shrink at once (the other
    ranks' revoke may reach a rank still building the dup: it must get the communicator, revoked,
    not an error), check an allreduce, close both; every rank's fds, threads, hetccl mappings,
    /dev/shm segments and child processes are back where they were."""
    from tests.faults.ranks import RESOURCES, soak
    from tests.launcher import run_ranks
    for r, o in enumerate(run_ranks(soak, 4, 25, 25, timeout=120)):
        assert o["wrong"] == 0, (r, o)
        assert all(a <= b for a, b in zip(o["after"], o["before"])), \
            f"rank {r} grew ({', '.join(RESOURCES)}): {o['before']} -> {o['after']}"


def _late_control_links(rank, size):
    import threading

    import hetccl
    from hetccl.recovery import plane as P
    from tests.faults.ranks import control_links_up, resources
    connect, go = P.ControlPlane._connect, threading.Event()

    def late(self, p, secret):                   # the connecting thread runs late (as under load)
        go.wait(30)
        return connect(self, p, secret)
    P.ControlPlane._connect = late
    comm = hetccl.init(timeout=60)
    comm.barrier()
    early = resources()
    comm.barrier()                               # both counted: now let the connection be made
    go.set()
    control_links_up(comm)
    now = resources()
    comm.close()
    return early[0], now[0]


def test_resources_are_counted_once_the_control_connections_are_up():
    """init() returns before the control plane's connections to the peers are made (a thread per
    peer): the /dev/shm and soak scenarios count fds only once they are up, or a connection made
    late (seen under load) counts as a leak of whatever ran in between."""
    from tests.launcher import run_ranks
    for r, (early, now) in enumerate(run_ranks(_late_control_links, 2, timeout=60)):
        assert now == early + 1, (r, early, now)
