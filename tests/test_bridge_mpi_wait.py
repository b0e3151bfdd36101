"""The MPI bridge's wait (bridges/mpi.py ``MPIBridge._wait``) against a schedule that advances only
inside MPI_Test, one step per Test once the peer has done its half (Open MPI's libnbc chain: a 16
MiB MPI_Ireduce on 2 ranks is 2048 steps of 8 KiB). No MPI here: a fake request and a fake clock
(every Test, yield and sleep advances it), so the figures are exact, whatever the machine's load.
"""
from __future__ import annotations

import threading
import types

import numpy as np
import pytest

from hetccl.bridges import mpi
from hetccl.errors import HetcclTimeout


class Clock:
    """time.monotonic/sleep and os.sched_yield of the bridge module, on a counter."""

    TEST = 1e-6                  # seconds one MPI_Test costs
    YIELD = 1e-6

    def __init__(self):
        self.t = 0.0
        self.sleeps = 0
        self.first_sleep = None

    def monotonic(self):
        return self.t

    def sleep(self, dt):
        if self.first_sleep is None:
            self.first_sleep = self.t
        self.sleeps += 1
        self.t += dt

    def sched_yield(self):
        self.t += self.YIELD


class ChainRequest:
    """Done after ``steps`` steps; a step completes in a Test made ``gap`` s or more after the
    previous one completed (the peer's half of the step takes that long)."""

    def __init__(self, clock, steps, gap):
        self.clock, self.steps, self.gap = clock, steps, gap
        self.done, self.last = 0, 0.0

    def Test(self):
        c = self.clock
        c.t += c.TEST
        if self.done < self.steps and c.t - self.last >= self.gap:
            self.done += 1
            self.last = c.t
        return self.done >= self.steps


@pytest.fixture
def bridge(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(mpi, "time", types.SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep))
    monkeypatch.setattr(mpi, "os", types.SimpleNamespace(sched_yield=clock.sched_yield))
    abandoned = list(mpi._ABANDONED)
    b = mpi.MPIBridge.__new__(mpi.MPIBridge)       # the wait needs no MPI_Init
    b.MPI = types.SimpleNamespace(Exception=type("FakeMPIException", (Exception,), {}))
    b._aborted = threading.Event()
    b._revoked, b.comm, b.timeout = None, None, 600.0
    yield b, clock
    mpi._ABANDONED[:] = abandoned


def test_a_16_mib_chain_of_steps_is_tested_through_without_sleeping(bridge):
    """The case of the bridge probe: 2048 steps of 10 us. The wait must keep testing while the
    schedule can still be advancing: done in about the steps' own time (it took a sleep of up to
    1 ms per step once past a fixed 5 ms, 0.66 s per call)."""
    b, clock = bridge
    send = np.ones(4 << 20, np.float32)             # 16 MiB
    recv = np.empty_like(send)
    req = ChainRequest(clock, steps=2048, gap=10e-6)
    b._wait(req, "reduce", send, recv)
    assert req.done == 2048
    assert clock.sleeps == 0
    assert clock.t < 2 * 2048 * 10e-6


def test_the_yield_window_grows_with_the_bytes_and_is_bounded():
    w = mpi.MPIBridge.yield_window
    assert w(()) == mpi.MPIBridge.YIELD_FOR                          # nothing known: the fixed window
    small, big = np.empty(16, np.uint8), np.empty(16 << 20, np.uint8)
    assert w((small,)) == pytest.approx(mpi.MPIBridge.YIELD_FOR, rel=1e-3)
    assert w((small, big)) == pytest.approx(mpi.MPIBridge.YIELD_FOR + (16 << 20) / mpi.MPIBridge.YIELD_RATE)
    assert w((memoryview(bytearray(1 << 20)),)) > w((small,))      # any buffer-protocol object
    assert w((big,)) < 0.1                                           # 16 MiB: under 0.1 s of yielding


def test_a_stalled_peer_sleeps_after_the_window_and_times_out(bridge):
    """A step that never comes (a stalled or dead peer): the wait stops yielding at the end of its
    window, sleeps from then on, and raises HetcclTimeout at the deadline, aborting the bridge."""
    b, clock = bridge
    b.timeout = 2.0
    send = np.ones(4 << 20, np.float32)
    req = ChainRequest(clock, steps=1, gap=1e9)
    with pytest.raises(HetcclTimeout, match="did not finish within 2 s"):
        b._wait(req, "reduce", send)
    window = mpi.MPIBridge.yield_window((send,))
    assert clock.first_sleep == pytest.approx(window, abs=1e-3)
    assert clock.sleeps > 1000                        # then it slept (up to 1 ms at a time) till the deadline
    assert b._aborted.is_set()
