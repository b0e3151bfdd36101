"""The transport conformance suite: every Endpoint implementation (transports/endpoint.py) must pass
all of it. Transports come from registry.FACTORIES (one line per transport); each case runs on two
spawned ranks (tests/launcher.py) with a hard deadline."""
import os
import time

import numpy as np
import pytest

from hetccl.errors import InvalidUsage
from tests.launcher import free_port, run_ranks, run_ranks_expect_failure
from tests.transports.registry import FACTORIES

NAMES = sorted(FACTORIES)


def _factory(name):
    f = FACTORIES[name]
    why = f.unavailable()
    if why:
        pytest.skip(why)
    return name


def _run(fn, name, *args, timeout=90, expect_failure=False):
    port = free_port()
    env = dict(FACTORIES[name].env)
    if expect_failure:
        return run_ranks_expect_failure(fn, 2, name, port, *args, timeout=timeout, env=env)
    return run_ranks(fn, 2, name, port, *args, timeout=timeout, env=env)


def _start(rank, name, port):
    f = FACTORIES[name]
    f.start(rank, port)
    return f


def _pattern(n, seed):
    """n bytes that differ per seed and never repeat with a power-of-two period."""
    return np.resize(((np.arange(4093) * 31 + seed * 7) % 256).astype(np.uint8), n)


# ---------------------------------------------------------------- connect and close

def _connect_close(rank, size, name, port):
    f = _start(rank, name, port)
    ep = f.open()
    assert ep.peer == 1 - rank and ep.transport == FACTORIES[name].transport
    a = np.array([rank + 10], np.int64)
    b = np.zeros(1, np.int64)
    r = ep.irecv(b, tag=5)
    ep.isend(a, tag=5).wait(10)
    r.wait(10)
    assert b[0] == 11 - rank
    ep.close()
    ep.close()                                      # idempotent
    with pytest.raises(Exception):
        ep.isend(a)
    f.stop()
    return "ok"


@pytest.mark.parametrize("name", NAMES)
def test_connect_and_close(name):
    _run(_connect_close, _factory(name))


# ---------------------------------------------------------------- sizes 0 B .. 256 MiB

SIZES = [0, 1, 7, 4096, (64 << 10) - 1, (64 << 10) + 3, 1 << 20, (16 << 20) + 5, 256 << 20]


def _sizes(rank, size, name, port):
    f = _start(rank, name, port)
    ep = f.open()
    times = {}
    for n in SIZES:
        if rank == 0:
            buf = _pattern(n, n)
            t = time.monotonic()
            ep.isend(buf, tag=1).wait(60)
            ack = np.zeros(1, np.int64)
            ep.irecv(ack, tag=2).wait(60)
            assert ack[0] == n
            times[n] = time.monotonic() - t
        else:
            got = np.empty(n, np.uint8)
            ep.irecv(got, tag=1).wait(60)
            assert np.array_equal(got, _pattern(n, n)), f"{n} bytes arrived corrupted"
            ep.isend(np.array([n], np.int64), tag=2).wait(60)
        del n
    ep.close()
    f.stop()
    return times


@pytest.mark.parametrize("name", NAMES)
def test_send_recv_zero_to_256mib(name):
    _run(_sizes, _factory(name), timeout=120)


# ---------------------------------------------------------------- many outstanding, tag order

def _outstanding(rank, size, name, port):
    f = _start(rank, name, port)
    ep = f.open()
    rng = np.random.default_rng(7)
    sizes = [int(s) for s in rng.choice([0, 8, 1000, 70000, 300000], 300)]
    tags = [int(t) for t in rng.integers(0, 4, 300)]
    if rank == 0:                                   # every send posted before any is waited for
        bufs = [_pattern(n, i) for i, n in enumerate(sizes)]
        reqs = [ep.isend(b, tag=t) for b, t in zip(bufs, tags)]
        for r in reqs:
            r.wait(60)
        done = np.zeros(1, np.int64)
        ep.irecv(done, tag=99).wait(60)
    else:                                           # receives posted tag by tag, in reverse tag order
        order = sorted(range(300), key=lambda i: (-tags[i], i))
        outs = {i: np.empty(sizes[i], np.uint8) for i in range(300)}
        reqs = {i: ep.irecv(outs[i], tag=tags[i]) for i in order}
        for i in order:
            reqs[i].wait(60)
        for i in range(300):
            assert np.array_equal(outs[i], _pattern(sizes[i], i)), f"message {i} (tag {tags[i]}) out of order"
        ep.isend(np.ones(1, np.int64), tag=99).wait(60)
    ep.close()
    f.stop()
    return "ok"


@pytest.mark.parametrize("name", NAMES)
def test_many_outstanding_requests_and_order_per_tag(name):
    _run(_outstanding, _factory(name))


def _unexpected_then_posted(rank, size, name, port):
    """Messages that arrive before their receive is posted are kept, in order, per tag."""
    f = _start(rank, name, port)
    ep = f.open()
    if rank == 0:
        for i in range(20):
            ep.isend(np.array([i], np.int64), tag=i % 2).wait(30)
        ep.isend(_pattern(1 << 20, 3), tag=7).wait(30)
        ep.isend(np.zeros(1, np.int64), tag=8).wait(30)            # 8 bytes, received into 16
        ep.isend(np.array([5], np.int64), tag=8).wait(30)          # the link survives a mismatch
        ep.irecv(np.zeros(1, np.int64), tag=9).wait(30)
    else:
        time.sleep(0.3)                             # everything is in flight before we look
        got = {0: [], 1: []}
        for t in (1, 0):
            for _ in range(10):
                x = np.zeros(1, np.int64)
                ep.irecv(x, tag=t).wait(30)
                got[t].append(int(x[0]))
        assert got == {0: list(range(0, 20, 2)), 1: list(range(1, 20, 2))}, got
        big = np.empty(1 << 20, np.uint8)
        ep.irecv(big, tag=7).wait(30)
        assert np.array_equal(big, _pattern(1 << 20, 3))
        with pytest.raises(InvalidUsage, match="sizes must match"):
            ep.irecv(np.zeros(2, np.int64), tag=8).wait(30)
        x = np.zeros(1, np.int64)
        ep.irecv(x, tag=8).wait(30)
        assert x[0] == 5
        ep.isend(np.ones(1, np.int64), tag=9).wait(30)
    ep.close()
    f.stop()
    return "ok"


@pytest.mark.parametrize("name", NAMES)
def test_unexpected_messages_and_size_mismatch(name):
    _run(_unexpected_then_posted, _factory(name))


# ---------------------------------------------------------------- one-sided

def _one_sided(rank, size, name, port):
    f = _start(rank, name, port)
    ep = f.open()
    if not ep.one_sided:
        with pytest.raises(NotImplementedError):
            ep.register(bytearray(8))
        ep.close()
        f.stop()
        return "two-sided"
    n = 3 << 20
    if rank == 0:                                   # target: registers, then only progresses
        win = np.zeros(n, np.uint8)
        reg = ep.register(win)
        blob = np.frombuffer(reg.pack(), np.uint8)
        ep.isend(np.array([blob.size], np.int64), tag=1).wait(30)
        ep.isend(blob.copy(), tag=2).wait(30)
        win[:16] = 42                               # something for the origin to get
        ep.isend(np.ones(1, np.int64), tag=3).wait(30)
        done = np.zeros(1, np.int64)
        ep.irecv(done, tag=4).wait(60)              # waiting drives the target's progress
        assert np.array_equal(win[16:16 + n // 2], _pattern(n // 2, 9)), "put data not visible"
        assert (win[16 + n // 2:] == 0).all(), "put wrote outside its range"
        reg.close()
    else:
        k = np.zeros(1, np.int64)
        ep.irecv(k, tag=1).wait(30)
        blob = np.zeros(int(k[0]), np.uint8)
        ep.irecv(blob, tag=2).wait(30)
        ep.irecv(np.zeros(1, np.int64), tag=3).wait(30)
        remote = ep.remote_region(blob.tobytes())
        assert remote.nbytes == n
        ep.put(_pattern(n // 2, 9), remote, 16, n // 2).wait(30)
        head = np.zeros(16, np.uint8)
        ep.get(head, remote, 0, 16).wait(30)
        assert (head == 42).all(), head
        back = np.zeros(n // 2, np.uint8)
        ep.get(back, remote, 16, n // 2).wait(30)   # read-after-write: the put is visible
        assert np.array_equal(back, _pattern(n // 2, 9))
        with pytest.raises(Exception, match="does not fit"):
            ep.put(back, remote, n - 8, 16)
        ep.isend(np.ones(1, np.int64), tag=4).wait(30)
    ep.close()
    f.stop()
    return "one-sided"


@pytest.mark.parametrize("name", NAMES)
def test_put_get_for_one_sided_transports(name):
    res = _run(_one_sided, _factory(name))
    assert res[0] == res[1] == ("one-sided" if FACTORIES[name].transport in ("c2c", "rdma") else "two-sided")


# ---------------------------------------------------------------- failures

def _dead(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _peer_dies(rank, size, name, port):
    f = _start(rank, name, port)
    ep = f.open()
    n = 64 << 20
    pid = np.array([os.getpid()], np.int64)
    if rank == 1:
        ep.isend(pid, tag=0).wait(30)
        ep.isend(_pattern(n, 1), tag=1)             # mid-transfer: the FIFO / socket fills (or, for a
        time.sleep(0.2)                             # single-copy send, the receiver has not read yet)...
        os._exit(0)                                 # ...and the peer vanishes without closing anything
    ep.irecv(pid, tag=0).wait(30)
    deadline = time.monotonic() + 20
    while not _dead(int(pid[0])) and time.monotonic() < deadline:
        time.sleep(0.05)
    got = np.empty(n, np.uint8)
    t = time.monotonic()
    try:
        ep.irecv(got, tag=1).wait(30)
    except Exception as e:                          # noqa: BLE001 - the error type is the result
        return type(e).__name__, time.monotonic() - t, str(e)
    return "completed", time.monotonic() - t, ""


@pytest.mark.parametrize("name", NAMES)
def test_peer_closing_mid_transfer_raises(name):
    res = _run(_peer_dies, _factory(name), expect_failure=True, timeout=60)
    ok, (what, secs, _) = res[0]
    assert ok and what == "PeerLostError", res[0]
    assert secs < 10, f"took {secs:.1f} s to notice"


def _connect_retry(port):
    import socket
    for _ in range(500):
        try:
            return socket.create_connection(("127.0.0.1", port))
        except ConnectionRefusedError:          # rank 0 is not listening yet
            time.sleep(0.02)
    raise AssertionError("rank 0 never listened")


def _refuses_strangers(rank, size, name, port):
    import socket
    from hetccl.errors import AuthenticationError
    from hetccl.transports.pair_endpoint import connect
    f = _start(rank, name, port)
    if rank == 1:
        s = _connect_retry(port)                    # garbage, then hang up
        s.sendall(os.urandom(300))
        s.close()
        s = _connect_retry(port)                    # connects, says nothing, goes away
        time.sleep(0.3)
        s.close()
        with pytest.raises(AuthenticationError):
            connect(FACTORIES[name].transport, ("127.0.0.1", port), b"wrong secret", 1, 0, timeout=20)
    ep = f.open()                                   # the genuine peer still gets through
    x = np.array([rank], np.int64)
    y = np.zeros(1, np.int64)
    r = ep.irecv(y, tag=0)
    ep.isend(x, tag=0).wait(10)
    r.wait(10)
    assert y[0] == 1 - rank
    ep.close()
    f.stop()
    return "ok"


@pytest.mark.parametrize("name", NAMES)
def test_garbage_and_unauthenticated_peers_are_refused(name):
    _run(_refuses_strangers, _factory(name))


# ---------------------------------------------------------------- leaks

def _resources(job):
    fds = len(os.listdir("/proc/self/fd"))
    with open("/proc/self/statm") as fh:
        rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    shm = [n for n in os.listdir("/dev/shm") if job in n]
    return fds, rss, shm


def _cycles(rank, size, name, port, n):
    f = _start(rank, name, port)
    job = os.environ.get("HETCCL_JOB_ID", "ep")
    msg = np.arange(16, dtype=np.int64)
    got = np.zeros(16, np.int64)

    def cycle():
        ep = f.open()
        if rank == 0:
            ep.isend(msg, tag=0).wait(10)
        else:
            ep.irecv(got, tag=0).wait(10)
        ep.close()
    for _ in range(50):                             # warm up allocators and caches
        cycle()
    f.settle()                                      # asynchronous teardown of closed links ends
    before = _resources(job)
    for _ in range(n):
        cycle()
    f.settle()
    after = _resources(job)
    f.stop()
    return before, after


@pytest.mark.parametrize("name", NAMES)
def test_no_leaks_after_1000_connect_close_cycles(name):
    res = _run(_cycles, _factory(name), 1000, timeout=110)
    for rank, ((fd0, rss0, shm0), (fd1, rss1, shm1)) in enumerate(res):
        assert fd1 == fd0, f"rank {rank}: {fd1 - fd0} file descriptors leaked"
        assert rss1 - rss0 < 16 << 20, f"rank {rank}: RSS grew by {(rss1 - rss0) >> 20} MiB"
        assert not shm1, f"rank {rank}: shared-memory segments left: {shm1}"
