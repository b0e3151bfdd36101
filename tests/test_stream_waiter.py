"""The stream waiter: how a bridge waits for a runtime without a stream query (Kunlunxin's XPU
runtime has only the blocking ``xpu_wait``) and still keeps its deadline.

Against the fake XPU-style runtime (tests/fakeccl/fakert.c, prefix ``fakexpu_``), whose
``fakexpu_wait`` can be told to block until released (``fakert_hang_next_waits``): a device sync
that never returns. Checked: one persistent thread serves every wait; a wait past its deadline
returns WAIT_TIMEOUT and the next wait runs on a new thread while the old one is still stuck;
waits queued behind a stuck sync move to the new thread; closing never waits for a stuck thread,
and the stuck thread frees itself and exits once its sync returns; concurrent callers share one
waiter; a forked child starts its own thread; the BKCL bridge raises the timeout, aborts without
hanging, and a new bridge works while the old sync is still stuck.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
import warnings

import numpy as np
import pytest

import hetccl.dtypes as dt
from hetccl._native import ccl_api
from hetccl._native.ccl_api import WAIT_OK, WAIT_RUNTIME, WAIT_TIMEOUT, StreamWaiter
from hetccl.bridges import loader, native
from hetccl.bridges.device_buffers import from_numpy
from hetccl.errors import HetcclTimeout, InvalidUsage
from hetccl.ops import ReduceOp
from tests import fakeccl


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    return fakeccl.build_or_skip(tmp_path_factory)


@pytest.fixture
def fake(libs):
    """The fake runtime's hang control (the same handle as the binding's: same path, so the same
    library state); every hung sync is released when the test ends, and the waiter threads it
    left must then exit."""
    before = ccl_api.waiter_threads()
    rt = ctypes.CDLL(libs["fakert"])
    yield rt
    rt.fakert_release_waits()
    _until(lambda: ccl_api.waiter_threads() <= before, "the waiter threads exit once their sync returns")


def _until(cond, what, limit=10.0):
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


@pytest.fixture
def xpu(libs, fake):
    """(runtime, stream, make_waiter) on the fake XPU runtime (no stream query); the waiters made
    are closed, hung syncs released and the stream destroyed at the end."""
    rt = loader.load_runtime(fakeccl.bkcl_vendor(libs).runtime)
    assert not rt.has_query
    rc, stream = rt.stream_create()
    assert rc == 0
    made = []

    def make(device=-1):
        made.append(StreamWaiter(rt, device))
        return made[-1]
    yield rt, stream, make
    for w in made:
        w.close()
    fake.fakert_release_waits()
    rt.stream_destroy(stream)


def test_one_thread_serves_every_wait(xpu):
    rt, s, make = xpu
    w = make(0)
    assert not w.running and w.threads_started == 0              # started lazily
    for _ in range(300):
        assert rt.wait_stream(s, None, 0, 5.0, False, w) == (WAIT_OK, 0)
    assert w.running and w.threads_started == 1
    w.close()
    assert not w.running


def test_a_sync_that_never_returns_times_out_and_a_new_thread_takes_over(xpu, fake):
    rt, s, make = xpu
    w = make(0)
    base = ccl_api.waiter_threads()
    assert rt.wait_stream(s, None, 0, 5.0, False, w) == (WAIT_OK, 0)
    fake.fakert_hang_next_waits(1)
    t0 = time.monotonic()
    assert rt.wait_stream(s, None, 0, 0.2, False, w)[0] == WAIT_TIMEOUT
    assert 0.2 <= time.monotonic() - t0 < 3
    assert fake.fakert_hung_waits() == 1                           # the old thread is still inside
    t0 = time.monotonic()
    for _ in range(20):                                            # later waits: a new thread
        assert rt.wait_stream(s, None, 0, 5.0, False, w) == (WAIT_OK, 0)
    assert time.monotonic() - t0 < 3
    assert w.threads_started == 2 and fake.fakert_hung_waits() == 1
    assert ccl_api.waiter_threads() == base + 2                    # the stuck one and the new one
    t0 = time.monotonic()
    w.close()
    assert time.monotonic() - t0 < 0.5                             # close never waits for the stuck one
    fake.fakert_release_waits()                                    # the stuck sync returns: it frees itself
    _until(lambda: ccl_api.waiter_threads() == base, "both threads exited")


def _stuck_then_queued(rt, s, w, fake, first_timeout, meanwhile=lambda: None):
    """Wait "a" (``first_timeout``) in a thread whose sync hangs, then "b" (20 s) queued behind it;
    run ``meanwhile`` once b is queued: each one's (result, seconds)."""
    out = {}

    def wait(name, timeout):
        t0 = time.monotonic()
        out[name] = rt.wait_stream(s, None, 0, timeout, False, w), time.monotonic() - t0

    fake.fakert_hang_next_waits(1)
    a = threading.Thread(target=wait, args=("a", first_timeout))
    a.start()
    _until(lambda: fake.fakert_hung_waits() == 1, "the first sync is stuck")
    b = threading.Thread(target=wait, args=("b", 20.0))
    b.start()
    _until(lambda: w.pending == 1 or "a" in out, "the second sync is queued")
    meanwhile()
    a.join(10)
    b.join(10)
    return out


def test_waits_queued_behind_a_stuck_sync_move_to_the_new_thread(xpu, fake):
    rt, s, make = xpu
    w = make()
    out = _stuck_then_queued(rt, s, w, fake, 0.3)
    assert out["a"][0][0] == WAIT_TIMEOUT
    assert out["b"][0] == (WAIT_OK, 0) and out["b"][1] < 5        # not the 20 s of its own deadline
    assert w.threads_started == 2


def test_close_ends_the_waits_still_queued(xpu, fake):
    rt, s, make = xpu
    w = make()
    out = _stuck_then_queued(rt, s, w, fake, 1.0, w.close)
    assert out["b"][0] == (WAIT_RUNTIME, ccl_api.WAITER_CLOSED) and out["b"][1] < 1
    assert "closed" in ccl_api.WAITER_ERRORS[ccl_api.WAITER_CLOSED]
    assert out["a"][0][0] == WAIT_TIMEOUT                          # its thread is retired, not replaced
    assert not w.running and w.threads_started == 1


def test_concurrent_callers_share_one_waiter(xpu):
    rt, s, make = xpu
    w = make()
    bad = []

    def run():
        for _ in range(100):
            r = rt.wait_stream(s, None, 0, 10.0, False, w)
            if r != (WAIT_OK, 0):
                bad.append(r)

    ts = [threading.Thread(target=run) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not bad and w.threads_started == 1


def test_the_waiter_selects_its_device_and_reports_when_it_cannot(xpu):
    rt, s, make = xpu
    w = make(3)                                                    # the fake runtime has 1 device
    assert rt.wait_stream(s, None, 0, 5.0, False, w) == (WAIT_RUNTIME, -701)   # -XPUERR_INVALID_DEVICE


def test_a_forked_child_starts_its_own_waiter(xpu):
    rt, s, make = xpu
    w = make()
    assert rt.wait_stream(s, None, 0, 5.0, False, w) == (WAIT_OK, 0)         # the parent's thread
    with warnings.catch_warnings():                   # Python >= 3.12 warns of fork() with threads:
        warnings.simplefilter("ignore", DeprecationWarning)      # the point of this test
        pid = os.fork()
    if pid == 0:                                      # the child: the parent's thread is not here
        ok = rt.wait_stream(s, None, 0, 5.0, False, w) == (WAIT_OK, 0) and w.threads_started == 2
        os._exit(0 if ok and ccl_api.waiter_threads() == 1 else 1)
    deadline = time.monotonic() + 20
    while (r := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child's wait hung")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(r[1]) == 0
    assert rt.wait_stream(s, None, 0, 5.0, False, w) == (WAIT_OK, 0) and w.threads_started == 1


def test_bkcl_bridge_with_a_stuck_sync_times_out_aborts_and_a_new_bridge_works(libs, fake):
    x = np.ones(4, np.float32)
    b = native.NativeBridge(fakeccl.bkcl_vendor(libs), fakeccl.MemStore(), "w1", 0, 1, timeout=0.3)
    b.allreduce(from_numpy(x), from_numpy(x.copy()), 4, dt.FLOAT32, ReduceOp.SUM)
    fake.fakert_hang_next_waits(1)
    t0 = time.monotonic()
    with pytest.raises(HetcclTimeout, match="did not finish within 0.3 s.*aborted"):
        b.allreduce(from_numpy(x), from_numpy(x.copy()), 4, dt.FLOAT32, ReduceOp.SUM)
    assert time.monotonic() - t0 < 3                               # the timeout and the abort: no hang
    assert fake.fakert_hung_waits() == 1
    with pytest.raises(InvalidUsage, match="closed or aborted"):
        b.allreduce(from_numpy(x), from_numpy(x.copy()), 4, dt.FLOAT32, ReduceOp.SUM)
    b.close()
    c = native.NativeBridge(fakeccl.bkcl_vendor(libs), fakeccl.MemStore(), "w2", 0, 1, timeout=5)
    try:
        y = np.zeros(4, np.float32)
        for _ in range(10):
            c.allreduce(from_numpy(x), from_numpy(y), 4, dt.FLOAT32, ReduceOp.SUM)
        np.testing.assert_array_equal(y, x)
        assert fake.fakert_hung_waits() == 1                       # still stuck: the new bridge never waited on it
    finally:
        t0 = time.monotonic()
        c.close()
        assert time.monotonic() - t0 < 0.5
