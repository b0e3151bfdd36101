"""More ranks than CPUs: how the engine decides it is oversubscribed, and its waits then.

Every rank of these tests is bound to one CPU before it starts hetccl (``sched_setaffinity``), so
three ranks crowd one core whatever the machine has. Oversubscribed, waits skip the spin; with
``Engine.handover_bytes`` (``HANDOVER_BYTES``), a wait in a step that moves at least that much
sleeps at once while other jobs load the host (progress.pyx host_loaded; the tests force it with
``_set_handover_load(0)``); a ring step waits on two links, so that sleep is one futex wait on both
links' words (futex_waitv). A peer that dies or stalls while its neighbours sleep there must still
be noticed, and an abort must still wake them at once.
"""
import os
import threading
import time

import numpy as np
import pytest

from hetccl.topology import cards as _cards
from hetccl.topology.discover import parse_cpulist
from tests.launcher import run_ranks

BIG = 1 << 20            # float32 elements: 4 MiB, a ring step far above the handover size set below


def _card(cpus, kernel="k", ncpus=None):
    return {"host": "h", "topo": {"kernel": kernel, "cpus": cpus, "ncpus": ncpus or len(parse_cpulist(cpus))}}


def test_crowded_counts_the_cpus_the_machines_ranks_may_use():
    two_bound = [_card("0"), _card("1")]                  # one core each: not crowded
    assert not _cards.crowded(two_bound, 0) and _cards.oversubscription(two_bound) == 1.0
    four_on_two = [_card("0-1")] * 4
    assert _cards.crowded(four_on_two, 3) and _cards.oversubscription(four_on_two) == 2.0
    one_core = [_card("0"), _card("0")]
    assert _cards.crowded(one_core, 1)
    apart = [_card("0", "a"), _card("0", "b")]            # two machines, one rank each
    assert not _cards.crowded(apart, 0)
    old = [{"host": "h", "topo": {"kernel": "k", "ncpus": 2}}] * 3   # cards without the CPU list
    assert _cards.crowded(old, 0) and _cards.oversubscription(old) == 1.5
    assert set(parse_cpulist(_cards._cpus())) == set(os.sched_getaffinity(0))


def test_block_cpu_binds_unbound_crowded_ranks_in_consecutive_blocks():
    free = [_card("0-1")] * 8
    assert [_cards.block_cpu(free, r) for r in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [_cards.block_cpu([_card("2,5")] * 4, r) for r in range(4)] == [2, 2, 5, 5]
    assert _cards.block_cpu([_card("0-1")] * 3, 0) is None          # uneven: the scheduler balances
    assert _cards.block_cpu([_card("0")] * 4, 0) is None            # one CPU
    assert _cards.block_cpu([_card("0"), _card("1")] * 2, 0) is None    # bound by the launcher
    assert _cards.block_cpu([_card("0-1")] * 2, 0) is None          # not crowded
    two_hosts = [_card("0-1", "a")] * 4 + [_card("0-3", "b")] * 4
    assert [_cards.block_cpu(two_hosts, r) for r in range(8)] == [0, 0, 1, 1, None, None, None, None]


def _bound_rank(rank, size, cpus):
    os.sched_setaffinity(0, set(cpus))
    import hetccl
    comm = hetccl.init(timeout=60)
    x = comm.allreduce(np.ones(4, np.float32))
    child = comm.dup()
    from hetccl.collectives.probe import usable_cpus
    got = (sorted(os.sched_getaffinity(0)), float(x[0]), child._engine.spin_s, sorted(_cards.affinity()),
           usable_cpus(), child._cards[rank]["topo"]["cpus"])
    child.close()
    comm.close()
    return got


def test_crowded_unbound_ranks_bind_themselves_in_blocks():
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    results = run_ranks(_bound_rank, 4, cpus, timeout=90, transports="shm")
    assert [r[0] for r in results] == [[cpus[0]], [cpus[0]], [cpus[1]], [cpus[1]]]
    assert all(r[1] == 4.0 and r[2] == 0.0 for r in results)
    # the probe and later communicators still see the two CPUs the job was given
    listed = (f"{cpus[0]},{cpus[1]}", f"{cpus[0]}-{cpus[1]}")
    assert all(r[3] == cpus and r[4] == 2 and r[5] in listed for r in results), results


def _on_one_cpu():
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _ring_rank(rank, size):
    _on_one_cpu()
    import hetccl
    from hetccl._native import progress
    from hetccl.comm import HANDOVER_BYTES
    comm = hetccl.init(timeout=60)
    e = comm._engine
    policy = (e.spin_s, e.handover_bytes)
    e.handover_bytes = 64 << 10           # the sleep-at-once policy, whatever the host's load
    progress._set_handover_load(0.0)
    x = np.full(BIG, rank + 1, np.float32)
    out = np.empty_like(x)
    for _ in range(3):
        comm.allreduce(x, out=out, algorithm="ring")
        assert float(out[0]) == float(out[-1]) == size * (size + 1) / 2
    ag = comm.allgather(np.full(BIG // size, rank, np.float32), algorithm="ring")
    assert [float(ag[b * (BIG // size)]) for b in range(size)] == list(range(size))
    small = comm.allreduce(np.ones(2, np.float32), algorithm="ring")
    child = comm.dup()                                    # a split inherits the policy
    child_policy = (child._engine.spin_s, child._engine.handover_bytes)
    child.close()
    sleeps = (e.futex_sleeps, e.poll_sleeps)
    comm.close()
    return policy, HANDOVER_BYTES, child_policy, sleeps, float(small[0])


def test_oversubscribed_ring_sleeps_on_the_futex_words_of_both_links():
    results = run_ranks(_ring_rank, 3, timeout=120, transports="shm")
    for policy, handover, child_policy, (futex, poll), small in results:
        assert policy == (0.0, handover) and child_policy == policy, policy
        assert small == 3.0
        assert futex > 0 and poll == 0, f"waits slept {futex} times on futex words, {poll} in poll()"


def test_handover_waits_for_other_jobs_on_the_host():
    from hetccl._native import progress
    try:
        progress._set_handover_load(0.0)
        assert progress._handover_now(8)
        progress._set_handover_load(1e9)
        assert not progress._handover_now(8)
        progress._set_handover_load(-1.0)           # the default: load >= ranks + CPUs
        assert not progress._handover_now(1 << 30)
    finally:
        progress._set_handover_load(-1.0)


def _crowded_ring():
    """A communicator of ranks crowded onto one CPU, after one big ring allreduce and a barrier;
    its waits in the ring's steps (above HANDOVER_BYTES) sleep at once, as on a loaded host."""
    _on_one_cpu()
    import hetccl
    from hetccl._native import progress
    progress._set_handover_load(0.0)
    comm = hetccl.init(timeout=30)
    x = np.ones(BIG, np.float32)
    comm.allreduce(x, algorithm="ring")
    comm.barrier()
    return hetccl, comm, x


def _dies_rank(rank, size, victim):
    hetccl, comm, x = _crowded_ring()
    if rank == victim:
        time.sleep(0.2)                   # the others are asleep in the ring by now
        os._exit(1)
    t = time.monotonic()
    try:
        comm.allreduce(x, algorithm="ring")
        return ("no error", time.monotonic() - t, comm._engine.futex_sleeps)
    except hetccl.HetcclError as err:
        return (type(err).__name__, time.monotonic() - t, comm._engine.futex_sleeps)


def test_a_peer_dying_while_its_neighbours_sleep_is_noticed():
    results = run_ranks(_dies_rank, 3, 1, timeout=90, transports="shm", victims=[1])
    for rank in (0, 2):
        name, took, futex = results[rank]
        assert name in ("PeerLostError", "CommAborted", "CommRevoked"), (rank, name)
        assert took < 3.0, f"rank {rank} raised {took:.2f} s into the call"
        assert futex > 0, rank


def _stall_rank(rank, size, mode):
    hetccl, comm, x = _crowded_ring()
    if rank == 1:                         # stalls: calls nothing for a while
        time.sleep(2.5 if mode == "timeout" else 0.6)
        comm.close(timeout=1.0)
        return None
    fired = []
    if mode == "abort" and rank == 0:
        def fire():
            time.sleep(0.3)
            fired.append(time.monotonic())
            comm.abort()
        threading.Thread(target=fire, daemon=True).start()
    t = time.monotonic()
    try:
        comm.allreduce(x, algorithm="ring", timeout=1.0 if mode == "timeout" else 20.0)
        return ("no error", None)
    except hetccl.HetcclError as err:
        end = time.monotonic()
        return (type(err).__name__, end - (fired[0] if fired else t))
    finally:
        comm.close(timeout=1.0)


@pytest.mark.parametrize("mode", ["timeout", "abort"])
def test_a_stalled_peer_times_the_sleepers_out_and_an_abort_wakes_them(mode):
    results = run_ranks(_stall_rank, 3, mode, timeout=90, transports="shm")
    if mode == "timeout":
        for rank in (0, 2):
            name, took = results[rank]
            assert name == "HetcclTimeout" or name in ("PeerLostError", "CommAborted"), (rank, name)
            assert took < 1.0 + 2.0, f"rank {rank}: raised {took:.2f} s into a call with timeout=1"
    else:
        name, woke = results[0]
        assert name == "CommAborted", name
        assert woke < 0.05, f"rank 0 raised {woke * 1000:.0f} ms after abort()"
