"""Recovery on real processes: a rank killed mid-collective (rank 0, the store's host, included),
then shrink and a correct allreduce on the survivors; a second death during the shrink; revoke
from one rank reaching all, even if it dies at once; agree with the coordinator dying in the
middle; a stalled (SIGSTOP) rank fenced by the agreement's deadline; garbage on the control port.

The protocol itself, with deaths at every step of it, is tests/test_agreement.py (simulated).
Every rank returns what it saw; the parent checks. Nothing here may hang (the launcher's deadline).
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import numpy as np
import pytest

from tests.launcher import run_ranks
from tests.test_failures import _outcome

FAST = {"HETCCL_PEER_TIMEOUT": "2"}


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _check_new(new, survivors, children=False):
    """An allreduce (and with ``children`` a dup and a split) on the shrunk communicator give the
    right answers."""
    n = len(survivors)
    assert new.size == n and new.parent_ranks == survivors
    x = np.full(1001, new.parent_ranks[new.rank] + 1, np.float32)
    new.allreduce(x)
    want = sum(r + 1 for r in survivors)
    assert (x == want).all(), (x[:4], want)
    if not children:
        return float(x[0])
    d = new.dup()
    y = np.ones(3, np.int64)
    d.allreduce(y)
    assert (y == n).all()
    d.close()
    s = new.split(new.rank % 2)
    z = np.ones(5, np.float64)
    s.allreduce(z)
    assert (z == s.size).all()
    s.close()
    return float(x[0])


# ------------------------------------------------------------------------------------------------
def _kill_then_shrink(rank, size, victim):
    import hetccl
    comm = hetccl.init(timeout=30)
    x = np.ones(1 << 18, np.float32)
    comm.allreduce(x)
    if rank == victim:
        threading.Timer(0.2, _die).start()               # while an allreduce runs
    t0 = time.monotonic()
    exc, msg, _ = "none", "", 0
    while time.monotonic() - t0 < 20:
        exc, msg, _ = _outcome(comm.allreduce, x, timeout=25)
        if exc:
            break
    raised = time.monotonic()
    from hetccl.collectives import probe, single_copy_probe
    probed, negotiate = [], single_copy_probe.negotiate
    single_copy_probe.negotiate = lambda *a, **k: probed.append(1) or negotiate(*a, **k)
    measured, measure = [], probe.measure
    probe.measure = lambda *a, **k: measured.append(1) or measure(*a, **k)
    new = comm.shrink(timeout=30)
    shrunk = time.monotonic()
    model, old = new._tuner.model, comm._tuner.model
    out = {"exc": exc, "msg": msg, "failed": comm.failed_ranks(), "raised": raised,
           "shrink_s": shrunk - raised, "single_copy_probed": bool(probed),
           "single_copy_kept": model.single_copy == old.single_copy,
           "link_probed": bool(measured), "origin": model.origin, "old_origin": old.origin,
           "params_kept": model.cost.params() == old.cost.params(),
           "value": _check_new(new, [r for r in range(size) if r != victim], children=size == 4)}
    t = time.monotonic()
    comm.close(timeout=5)
    out["close_old_s"] = time.monotonic() - t
    new.close()
    return out


KILLS = [(3, "tcp", 1), (4, "shm", 0), (8, None, 0)]


@pytest.mark.parametrize("size,transport,victim", KILLS,
                         ids=[f"{n}ranks-{t or 'default'}-kill{v}" for n, t, v in KILLS])
def test_kill_mid_collective_then_shrink(size, transport, victim):
    res = run_ranks(_kill_then_shrink, size, victim, timeout=120, transports=transport,
                    victims=[victim])
    assert res[victim] is None
    live = [r for r in range(size) if r != victim]
    for r in live:
        out = res[r]
        assert out["exc"] in ("PeerLostError", "CommAborted", "CommRevoked"), (r, out)
        assert out["failed"] == [victim], (r, out)
        # a bound on a hang (the shrink's own timeout is 30 s), not a speed target; a shrink on
        # 8 ranks took 7-8 s quiet and up to 25 s under load while it re-measured the single-copy
        # verdicts at 7 ranks: it keeps the parent's instead (comm._inherited_single_copy)
        assert out["shrink_s"] < 15, (r, out)
        assert not out["single_copy_probed"] and out["single_copy_kept"], (r, out)
        # the link probe neither, where the busiest CPU keeps as many ranks (8 -> 7 and 4 -> 3 on
        # 2 CPUs: probe.inheritable); 3 -> 2 gives each rank a CPU: measured (or cached) anew
        if size in (4, 8) and os.cpu_count() == 2:
            assert not out["link_probed"] and out["origin"] in ("inherited", "cached"), (r, out)
            assert out["origin"] == "cached" or out["params_kept"], (r, out)
        assert out["close_old_s"] < 5, (r, out)
    assert len({res[r]["value"] for r in live}) == 1
    # survivors raised within a few seconds of one another (the first one noticed the death)
    first = min(res[r]["raised"] for r in live)
    assert max(res[r]["raised"] for r in live) - first < 10


# ------------------------------------------------------------------------------------------------
def _second_death(rank, size, first, second, where):
    import hetccl
    from hetccl.recovery import shrink as sh
    comm = hetccl.init(timeout=30)
    comm.barrier()
    time.sleep(0.5)                                       # everyone is out of the barrier
    if rank == first:
        _die()
    if rank == second:                                    # dies in the middle of the shrink
        if where == "build":
            orig = sh._build
            sh._build = lambda *a, **k: (_die(), orig(*a, **k))
        else:                                             # built its part, dies before confirming
            orig_agree = comm._ft.agree
            calls = []

            def agree(*a, **k):
                calls.append(1)
                if len(calls) == 2:
                    _die()
                return orig_agree(*a, **k)
            comm._ft.agree = agree
    _outcome(comm.allreduce, np.ones(4, np.float32), timeout=20)
    t = time.monotonic()
    new = comm.shrink(timeout=60)
    survivors = [r for r in range(size) if r not in (first, second)]
    out = {"shrink_s": time.monotonic() - t, "failed": comm.failed_ranks(),
           "value": _check_new(new, survivors)}
    comm.close(timeout=5)
    new.close()
    return out


@pytest.mark.parametrize("first,second,where", [(2, 0, "build"), (3, 1, "confirm")],
                         ids=["then-rank0-the-new-store-host-in-build", "then-rank1-before-confirming"])
def test_second_death_during_shrink(first, second, where):
    res = run_ranks(_second_death, 5, first, second, where, timeout=150, victims=[first, second])
    live = [r for r in range(5) if r not in (first, second)]
    for r in live:
        assert res[r]["failed"] == sorted([first, second]), res[r]
    assert len({res[r]["value"] for r in live}) == 1


# ------------------------------------------------------------------------------------------------
def _revoke_then_die(rank, size, revoker):
    import hetccl
    comm = hetccl.init(timeout=30)
    comm.barrier()
    if rank == revoker:
        time.sleep(0.5)                                   # every rank is out of the barrier
        comm.revoke()
        _die()                                            # right after: the others forward it
    t = time.monotonic()
    while not comm._ft.revoked and time.monotonic() - t < 10:
        time.sleep(0.01)
    seen = time.monotonic() - t
    after = _outcome(comm.allreduce, np.ones(4, np.float32), timeout=10)
    new = comm.shrink(timeout=30)
    out = {"seen_s": seen, "after": after[:2], "failed": comm.failed_ranks(),
           "value": _check_new(new, [r for r in range(size) if r != revoker])}
    comm.close(timeout=5)
    new.close()
    return out


def test_revoke_reaches_every_rank_even_if_the_revoker_dies_at_once():
    res = run_ranks(_revoke_then_die, 4, 2, timeout=90, victims=[2])
    for r in (0, 1, 3):
        assert res[r]["seen_s"] < 5, res[r]
        assert res[r]["after"][0] == "CommRevoked", res[r]
        assert res[r]["failed"] == [2]


# ------------------------------------------------------------------------------------------------
def _agree_coordinator_dies(rank, size):
    import hetccl
    comm = hetccl.init(timeout=30)
    comm.barrier()
    if rank == 0:                     # the coordinator: dies right after its first ACCEPT is out
        m = comm._ft.m
        orig = m._send

        def send(r, msg):
            orig(r, msg)
            if msg.get("t") == "acc":
                time.sleep(0.05)
                _die()
        m._send = send
    first = comm.agree(rank != 3)     # rank 3 votes False
    second = comm.agree(True)         # the next instance, without rank 0
    return {"first": first, "second": second, "failed": comm.failed_ranks()}


def test_agree_survives_its_coordinator_dying_mid_agreement():
    res = run_ranks(_agree_coordinator_dies, 5, timeout=90, victims=[0])
    live = [res[r] for r in range(1, 5)]
    assert all(o["first"] is False for o in live), live       # rank 3's False counts, uniformly
    assert all(o["second"] is True and o["failed"] == [0] for o in live), live


# ------------------------------------------------------------------------------------------------
def _stall(rank, size):
    import hetccl
    comm = hetccl.init(timeout=30)
    comm.barrier()
    stalled = 2
    if rank == stalled:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGSTOP)).start()
        t = time.monotonic()
        exc = _outcome(comm.agree, True)                  # stopped inside; woken by rank 0
        return {"agree": exc[:2], "woke_after": time.monotonic() - t,
                "shrink": _outcome(comm.shrink, timeout=10)[:2]}
    time.sleep(1.0)                                       # rank 2 is stopped by now
    t = time.monotonic()
    flag = comm.agree(True)
    took = time.monotonic() - t
    if rank == 0:
        os.kill(comm._cards[stalled]["pid"], signal.SIGCONT)
    new = comm.shrink(timeout=30)
    out = {"flag": flag, "took": took, "failed": comm.failed_ranks(), "value": _check_new(new, [0, 1])}
    comm.close(timeout=5)
    new.close()
    return out


def test_a_stalled_rank_is_fenced_by_the_agreement_and_raises_when_it_wakes():
    res = run_ranks(_stall, 3, timeout=90, env=FAST)
    for r in (0, 1):
        assert res[r]["flag"] is True and res[r]["failed"] == [2], res[r]
        assert 1.5 < res[r]["took"] < 8, res[r]            # HETCCL_PEER_TIMEOUT=2 of silence
    assert res[2]["agree"][0] == "CommAborted" and "excluded" in res[2]["agree"][1], res[2]
    assert res[2]["shrink"][0] == "CommAborted", res[2]


# ------------------------------------------------------------------------------------------------
def _garbage(rank, size):
    import logging

    import hetccl
    from hetccl.bootstrap.auth import client_handshake
    from hetccl.recovery.plane import _MAGIC, _PREAMBLE, fingerprint
    from hetccl.recovery.wire import frame
    comm = hetccl.init(timeout=30)
    seen = []
    if rank == 0:
        class H(logging.Handler):
            def emit(self, record):
                seen.append(record.getMessage())
        logging.getLogger("hetccl.recovery").addHandler(H())
    comm.barrier()
    if rank == 1:
        card = comm._cards[0]
        addr = (card["ctl_addr"], card["ctl_port"])
        with socket.create_connection(addr) as s:          # random bytes
            s.sendall(os.urandom(300))
            _drain(s)
        with socket.create_connection(addr) as s:          # the right preamble, a wrong secret
            s.sendall(_PREAMBLE.pack(_MAGIC, fingerprint(comm._info.secret)))
            try:
                client_handshake(s, b"x" * 32, 0, 0, b"hetccl-control", 5)
            except Exception:  # noqa: BLE001
                pass
        for hello in (b"\x7f\xff\xff\xff", frame({"t": "hi", "id": "f" * 32})):
            with socket.create_connection(addr) as s:      # authenticated, then garbage
                s.sendall(_PREAMBLE.pack(_MAGIC, fingerprint(comm._info.secret)))
                client_handshake(s, comm._info.secret, 0, 0, b"hetccl-control", 5)
                s.sendall(hello + b"\x7f\xff\xff\xff" + b"y" * 64)   # then a 2 GB frame
                _drain(s)
        for _ in range(50):                                  # and a flood of half-open ones
            socket.create_connection(addr).close()
    comm.barrier()
    flag = comm.agree(True)
    x = np.ones(16, np.float32)
    comm.allreduce(x)
    time.sleep(0.5)
    comm.close()
    return {"flag": flag, "x": float(x[0]), "warnings": seen}


def _drain(s):
    """Until the other side closes (it refused us)."""
    s.settimeout(10)
    try:
        while s.recv(100):
            pass
    except OSError:
        pass


def test_garbage_on_the_control_port_is_refused_cleanly():
    res = run_ranks(_garbage, 2, timeout=60)
    assert res[0]["flag"] and res[1]["flag"] and res[0]["x"] == 2.0
    w = " | ".join(res[0]["warnings"])
    assert "refused control connection" in w and "malformed" in w, w
