"""Single copy for plain buffers (broadcast, allgather, alltoall by cross-memory attach), the
measured routing, the fallback when the kernel refuses a read, lost and stalled peers, and buffer
registration (hetccl/memory/registration.py)."""
import gc
import json
import logging
import time

import numpy as np
import pytest

from tests.launcher import run_ranks, run_ranks_expect_failure

EVERYWHERE = {"HETCCL_C2C_DIRECT": "8", "HETCCL_TRANSPORTS": "c2c"}   # every call from 8 B takes it


def _values(n, seed, dt):
    return ((np.arange(n) * 7 + 13 * seed) % 97).astype(dt)


def _warnings():
    """A list that collects hetccl's warnings from now on (in a rank's process)."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)
    logging.getLogger("hetccl").addHandler(Keep(level=logging.WARNING))
    return records


def _correct(rank, size):
    """Every new path at odd sizes and dtypes, in place and out of place, against what the FIFO
    schedules compute; each call must have taken the single copy (last_algorithm)."""
    import ml_dtypes

    import hetccl
    comm = hetccl.init(timeout=60)
    try:
        assert all(dict(comm._tuner.model.single_copy)[c] == ((8, True),)
                   for c in ("broadcast", "allgather", "alltoall")), comm._tuner.model.single_copy
        for dt in (np.float64, np.int8, np.uint16, ml_dtypes.bfloat16):
            for n in (17, 1001, 65_537, 300_001):
                for root in {0, size - 1}:
                    b = _values(n, rank, dt) if rank == root else np.zeros(n, dt)
                    assert comm.broadcast(b, root=root) is b
                    assert comm.last_algorithm == "single_copy", (n, comm.last_algorithm)
                    assert np.array_equal(b.view(np.uint8), _values(n, root, dt).view(np.uint8)), (dt, n, root)
                x = _values(n, rank, dt)
                want = np.concatenate([_values(n, r, dt) for r in range(size)])
                out = comm.allgather(x)                                   # allocating form
                assert comm.last_algorithm == "single_copy"
                assert np.array_equal(out.view(np.uint8), want.view(np.uint8)), (dt, n)
                buf = np.zeros(n * size, dt)                              # in place
                buf[rank * n:(rank + 1) * n] = x
                comm.allgather(buf[rank * n:(rank + 1) * n], buf)
                assert np.array_equal(buf.view(np.uint8), want.view(np.uint8)), (dt, n, "in place")
                m = n - n % size
                s = _values(m, rank, dt)
                o = np.full(m, 1, dt)
                assert comm.alltoall(s, o) is o and comm.last_algorithm == "single_copy"
                blk = m // size
                want = np.concatenate([_values(m, r, dt)[rank * blk:(rank + 1) * blk] for r in range(size)])
                assert np.array_equal(o.view(np.uint8), want.view(np.uint8)), (dt, n)
                ref = np.empty_like(o)
                comm.alltoall(s, ref, algorithm="pairwise")               # forced: the FIFOs
                assert comm.last_algorithm == "pairwise" and np.array_equal(o.view(np.uint8), ref.view(np.uint8))
        w = comm.broadcast(np.full(100_001, rank, np.float32), root=0, async_op=True)   # progress thread
        assert (w.wait() == 0).all()
        return "ok"
    finally:
        comm.close(timeout=5.0)


@pytest.mark.parametrize("size", [2, 3])
def test_single_copy_plain_correct(size):
    assert run_ranks(_correct, size, timeout=180, env=EVERYWHERE) == ["ok"] * size


def _measured(rank, size):
    """Unforced: the route is the probe's verdict at the nearest measured size, the same on every
    rank; forcing an algorithm (per call or HETCCL_ALGO) keeps the call on the FIFOs."""
    import hetccl
    from hetccl.collectives.single_copy_probe import KEYS, SIZES, takes
    comm = hetccl.init(timeout=60)
    try:
        sc = dict(comm._tuner.model.single_copy)
        assert set(sc) == set(KEYS) and all(tuple(s for s, _ in sc[c]) == SIZES for c in KEYS)
        assert not any(w for k in ("allgather:doubling", "allgather:push") for _, w in sc[k])   # 2 ranks:
        # neither doubling nor push is measured
        seen = []
        for nb in (4 << 10, 8 << 10, 100 << 10, 1 << 20, 8 << 20):
            x = np.ones(nb // 8, np.float64)
            comm.broadcast(x)
            seen.append((comm.last_algorithm == "single_copy") == takes(sc["broadcast"], nb))
            comm.broadcast(x, algorithm="binomial")
            seen.append(comm.last_algorithm == "binomial")
        assert not takes(sc["broadcast"], 4 << 10)          # below the smallest measured size: FIFO
        return seen
    finally:
        comm.close(timeout=5.0)


def test_single_copy_measured_route(tmp_path):
    res = run_ranks(_measured, 2, timeout=120, env={"HETCCL_TRANSPORTS": "c2c", "XDG_CACHE_HOME": str(tmp_path)})
    assert all(all(r) for r in res), res
    assert (tmp_path / "hetccl" / "single-copy.json").exists()
    res = run_ranks(_measured, 2, timeout=120, env={"HETCCL_TRANSPORTS": "c2c", "XDG_CACHE_HOME": str(tmp_path)})
    assert all(all(r) for r in res), res                   # the second job: from the cache


def _refused(rank, size):
    """A read the kernel refuses (EPERM, as with ptrace_scope raised after set-up) on one rank: every
    rank re-runs the call on the FIFOs with the right result, warns once, and stays there."""
    import hetccl
    from hetccl._native import single_copy
    records = _warnings()
    comm = hetccl.init(timeout=60)
    try:
        if rank == 1:
            single_copy._inject_cma_failure(1)              # EPERM on its next read
        n = 50_001
        b = _values(n, 0, np.float64) if rank == 0 else np.zeros(n)
        comm.broadcast(b, root=0)
        assert np.array_equal(b, _values(n, 0, np.float64))
        assert comm._tuner.model.single_copy == ()
        out = comm.allgather(_values(n, rank, np.float32))
        assert comm.last_algorithm != "single_copy"
        assert np.array_equal(out, np.concatenate([_values(n, r, np.float32) for r in range(size)]))
        warned = [r for r in records if "refused" in r.getMessage()]
        return len(warned)
    finally:
        comm.close(timeout=5.0)


@pytest.mark.parametrize("size", [2, 3])
def test_single_copy_refused_falls_back(size):
    assert run_ranks(_refused, size, timeout=120, env=EVERYWHERE) == [1] * size


def _peer_dies(rank, size, how):
    """Rank 1 dies (before the call, or with ESRCH from its read: it raises PeerLostError) or stalls;
    rank 0 must raise (PeerLostError / HetcclTimeout) well before the deadline, not hang."""
    import os

    import hetccl
    from hetccl._native import single_copy
    comm = hetccl.init(timeout=60)
    x = np.ones(200_000, np.float64)
    comm.barrier()
    if rank == 1:
        if how == "dies":
            os._exit(0)
        if how == "stalls":
            time.sleep(6)
            return "stalled"
        single_copy._inject_cma_failure(3)                   # ESRCH: the reader sees its root gone
    try:
        return _outcome(lambda: comm.broadcast(x, root=0, timeout=3 if how == "stalls" else 20))
    finally:
        comm.abort()


def _outcome(calls):
    """What calls() ended in, and after how long: "no error", "timeout in Ns", "lost in Ns", or
    another hetccl error's class."""
    import hetccl
    t0 = time.monotonic()
    try:
        calls()
        return "no error"
    except hetccl.HetcclTimeout:
        return f"timeout in {time.monotonic() - t0:.0f}s"
    except hetccl.PeerLostError:
        return f"lost in {time.monotonic() - t0:.0f}s"
    except hetccl.HetcclError as e:
        return f"{type(e).__name__} in {time.monotonic() - t0:.0f}s"


@pytest.mark.parametrize("how,expect0", [("dies", "lost"), ("stalls", "timeout"), ("esrch", None)])
def test_single_copy_peer_lost(how, expect0):
    res = run_ranks_expect_failure(_peer_dies, 2, how, timeout=60, env=EVERYWHERE)
    ok0, r0 = res[0]
    assert ok0, res
    if expect0 is not None:
        assert r0.startswith(expect0) and float(r0.split(" in ")[1][:-1]) < 15, res
    else:                              # rank 1 read ESRCH: it raised PeerLostError; rank 0 raised too
        assert res[1] == (True, res[1][1]) and res[1][1].startswith("lost"), res
        assert r0 != "no error" and float(r0.split(" in ")[1][:-1]) < 15, res


def _hot(rank, size):
    """After its first call, a single-copy shape takes the latency path (no parser, no router) in
    every call form, with correct results; a read refused there re-runs the call on the FIFOs on
    every rank, warns once and keeps the communicator on the FIFOs."""
    import hetccl
    from hetccl._native import single_copy
    records = _warnings()
    comm = hetccl.init(timeout=60)
    try:
        n = 40_000 * size
        parsed = []
        spin = comm._engine.spin_s
        parse = comm._parse
        comm._parse = lambda *a, **k: parsed.append(a[0]) or parse(*a, **k)
        b = _values(n, 0, np.float32) if rank == 0 else np.zeros(n, np.float32)
        x = _values(n // size, rank, np.float32)
        s = _values(n, rank, np.int16)
        o = np.zeros(n, np.int16)
        blk = n // size
        for i in range(4):
            if rank != 0:
                b[:] = 0
            assert comm.broadcast(b) is b and comm.last_algorithm == "single_copy"
            assert np.array_equal(b, _values(n, 0, np.float32))
            out = comm.allgather(x)                               # allocating form
            assert comm.last_algorithm == "single_copy"
            assert np.array_equal(out, np.concatenate([_values(n // size, r, np.float32) for r in range(size)]))
            assert comm.alltoall(s, o) is o and comm.last_algorithm == "single_copy"
            assert np.array_equal(o, np.concatenate([_values(n, r, np.int16)[rank * blk:(rank + 1) * blk]
                                                     for r in range(size)]))
        assert parsed == ["broadcast", "allgather", "alltoall"], parsed     # the first call of each only
        assert comm._engine.spin_s == spin                       # the calls yield first, then put it back
        if rank == size - 1:
            single_copy._inject_cma_failure(1)                   # EPERM on its next read, in the latency path
        b[:] = _values(n, 0, np.float32) if rank == 0 else 0
        comm.broadcast(b)
        assert np.array_equal(b, _values(n, 0, np.float32)) and comm._tuner.model.single_copy == ()
        assert comm.last_algorithm != "single_copy"
        out = comm.allgather(x)
        assert comm.last_algorithm != "single_copy"
        assert np.array_equal(out, np.concatenate([_values(n // size, r, np.float32) for r in range(size)]))
        return len([r for r in records if "refused" in r.getMessage()])
    finally:
        comm.close(timeout=5.0)


@pytest.mark.parametrize("size", [2, 3])
def test_single_copy_latency_path(size):
    assert run_ranks(_hot, size, timeout=120, env=EVERYWHERE) == [1] * size


def _mid_call(rank, size, how, coll):
    """In a loop of single-copy calls on the latency path, rank 1 dies (SIGKILL from a thread, at
    any point of a call), stops (SIGSTOP: it stalls wherever it was) or publishes an unmapped
    buffer address (garbage: its peers' reads get EFAULT). Rank 0 must raise PeerLostError or
    HetcclTimeout well before the deadline, never hang or return wrong data."""
    import os
    import signal
    import threading

    import hetccl
    from hetccl._native import single_copy
    comm = hetccl.init(timeout=60)
    pids = comm.allgather(np.array([os.getpid()], np.int64))
    n = 1 << 20
    x = np.full(n, rank, np.float32)
    out = np.empty(n, np.float32)
    call = (lambda t: comm.broadcast(x, root=1, timeout=t)) if coll == "broadcast" else \
        (lambda t: comm.alltoall(x, out, timeout=t))
    for _ in range(3):
        call(20)
    assert comm.last_algorithm == "single_copy"
    comm.barrier()
    if rank == 1:
        if how == "dies":
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGKILL)).start()
        elif how == "stops":
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGSTOP)).start()
        else:
            single_copy._inject_bad_address(1)
    try:
        return _outcome(lambda: [call(2 if how == "stops" else 20) for _ in range(100_000)])
    finally:
        if rank == 0 and how == "stops":
            os.kill(int(pids[1]), signal.SIGCONT)              # let it go on, into an error of its own
        comm.abort()


@pytest.mark.parametrize("how,coll,expect0", [("dies", "broadcast", "lost"), ("stops", "alltoall", "timeout"),
                                              ("garbage", "broadcast", "PeerProtocolError"),
                                              ("garbage", "alltoall", "PeerProtocolError")])
def test_single_copy_peer_fails_mid_call(how, coll, expect0):
    """A peer that publishes an unmapped buffer address is alive: its reader raises
    PeerProtocolError (a bug on that rank), not PeerLostError, and so does the liar (from the
    reason its reader posted)."""
    res = run_ranks_expect_failure(_mid_call, 2, how, coll, timeout=60, env=EVERYWHERE)
    ok0, r0 = res[0]
    assert ok0 and r0.startswith(expect0) and float(r0.split(" in ")[1][:-1]) < 15, res
    if how != "dies":                  # the stalled or lying rank must not hang either
        ok1, r1 = res[1]
        assert ok1 and r1 != "no error" and float(r1.split(" in ")[1][:-1]) < 15, res
        assert how != "garbage" or r1.startswith("PeerProtocolError"), res


# ------------------------------------------------------------------ registration (one process)

def test_registration_cache_and_invalidation():
    from hetccl.errors import InvalidUsage
    from hetccl.memory.registration import Registry
    reg = Registry()
    a = np.empty(1 << 20, np.uint8)
    h = reg.register(a)
    assert h.live and h.nbytes == a.nbytes and h.populated
    assert reg.register(a) is h and reg.lookup(a) is h            # same memory: same handle
    assert reg.lookup(a[1:]) is None                               # another extent: not registered
    reg.deregister(h)
    assert h.live and reg.lookup(a) is h                           # one reference left
    with h:
        pass                                                       # leaving deregisters
    assert not h.live and reg.lookup(a) is None and len(reg) == 0
    with pytest.raises(InvalidUsage):
        reg.deregister(h)
    v = a[:4096]                                                   # a view: the owner is `a`
    hv = reg.register(v)
    del v
    gc.collect()
    assert hv.live                                                 # `a` still owns the memory
    addr = hv.address
    del a
    gc.collect()
    assert not hv.live and len(reg) == 0                           # owner died: the entry went
    b = np.empty(4096, np.uint8)                                   # may reuse the address
    hb = reg.register(b)
    assert hb is not hv and hb.live and (hb.address != addr or hb is not hv)
    ba = bytearray(b"x" * 10_000)                                  # no weakrefs: pinned instead
    hba = reg.register(ba)
    with pytest.raises(BufferError):
        ba.extend(b"y")                                            # cannot be resized while registered
    reg.deregister(hba)
    ba.extend(b"y")
    kept = np.arange(5000, dtype=np.int64)
    reg.register(kept)
    assert (kept == np.arange(5000)).all()                         # populating keeps the contents
    with pytest.raises(InvalidUsage):
        reg.register(np.empty((10, 10))[:, ::2])


def _register(rank, size):
    import hetccl
    comm = hetccl.init(timeout=60)
    try:
        x = np.empty(1 << 18, np.float64)
        out = np.empty(x.size * size)
        with comm.register(x) as hx, comm.register(out):
            x[:] = rank
            comm.allgather(x, out)
            assert (out.reshape(size, -1)[1] == 1).all() and hx.live
        assert not hx.live
        try:
            comm.deregister(hx)
            return "no error"
        except hetccl.InvalidUsage:
            return "ok"
    finally:
        comm.close(timeout=5.0)


def test_register_deregister_comm():
    assert run_ranks(_register, 2, timeout=60) == ["ok", "ok"]


def test_verdicts_and_cache(tmp_path, monkeypatch):
    from hetccl.collectives import single_copy_probe as p
    won = (128 << 10, 8 << 20)
    rows = [(s, {"fifo": [2.0] * 7, "single": [1.0 if s in won else 3.0] * 7}) for s in p.SIZES]
    v = p.verdicts(rows, None, "broadcast")["broadcast"]
    assert [w for _, w in v] == [s in won for s in p.SIZES]
    assert not p.takes(v, 4 << 10) and not p.takes(v, 8 << 10)      # below / at a lost size
    assert p.takes(v, 150 << 10) and not p.takes(v, 600 << 10) and p.takes(v, 12 << 20)
    assert not p.takes(v, 64 << 20) and not p.takes(v, 256 << 20)   # past 8 MiB: the 32 MiB verdict
    assert p._unmask(p._mask(v)) == v
    f = str(tmp_path / "sc.json")
    found = {c: v for c in p.KEYS}
    raw = {c: rows for c in p.COLLECTIVES}
    monkeypatch.setattr(p.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    p.store("k", found, raw, f)
    assert p.lookup("k", f) == found and p.lookup("other", f) is None
    monkeypatch.setattr(p.os, "getloadavg", lambda: (50.0, 0.0, 0.0))   # busy: measured again...
    p.store("b", found, raw, f)
    assert p.lookup("b", f) is None
    for _ in range(p.MAX_PROBES - 1):
        p.store("b", found, raw, f)
    assert p.lookup("b", f) == found                                     # ...up to MAX_PROBES times
    (tmp_path / "bad.json").write_text("{not json")
    assert p.lookup("k", str(tmp_path / "bad.json")) is None
    data = json.loads((tmp_path / "sc.json").read_text())
    assert data["k"]["rows_us"]["allgather"][0] == [8 << 10, {"fifo": [2e6] * 7, "single": [3e6] * 7}]
    data["k"]["method"] = p.METHOD - 1                                   # measured the old way: again
    (tmp_path / "sc.json").write_text(json.dumps(data))
    assert p.lookup("k", f) is None and p.previous("k", f) is None


def test_verdicts_need_a_margin_and_agreeing_repetitions():
    """Single copy wins a size only when the median of its paired ratios to the FIFO is below
    MARGIN and their median's confidence interval below 1 (or, where the ratios spread too wide,
    its median block by MARGIN and its mean block): a split decision (faster typically, slower on
    average) or a near tie goes to the FIFO (or the previous verdict)."""
    from hetccl.collectives import single_copy_probe as p
    f = [2.0] * 7
    rows = [(8 << 10, {"fifo": f, "single": [1.0] * 7}),                        # clear win
            (32 << 10, {"fifo": f, "single": [1.9] * 7}),                       # within the margin
            (128 << 10, {"fifo": f, "single": [1.0, 1.0, 1.0, 1.0, 4.0, 4.0, 4.0]}),   # split
            (512 << 10, {"fifo": f, "single": [2.5] * 7}),                      # clear loss
            (2 << 20, {"fifo": f, "single": [1.7] * 7})]                        # by the margin
    assert [w for _, w in p.verdicts(rows, None, "alltoall")["alltoall"]] == [True, False, False, False, True]
    assert p.undecided(rows[2][1]) and not p.undecided(rows[0][1]) and not p.undecided(rows[1][1])
    assert [p.calls_per_block(s) for s in p.SIZES] == [64, 64, 64, 16, 8, 8, p.LARGE_CALLS]
    assert [p.reps_for(s) for s in p.SIZES] == [p.REPS] * 6 + [p.LARGE_REPS]
    assert [p.max_reps(s) for s in p.SIZES] == [p.MAX_REPS] * 6 + [p.LARGE_MAX_REPS]


def test_cache_clear(tmp_path):
    from hetccl.collectives import single_copy_probe as p
    f = str(tmp_path / "sc.json")
    v = {c: tuple((s, True) for s in p.SIZES) for c in p.KEYS}
    rows = {c: [(s, {"fifo": [2.0], "single": [1.0]}) for s in p.SIZES] for c in p.COLLECTIVES}
    for key in ("h1|c2c|local=2|cpus=2|b", "h1|c2c|local=4|cpus=2|b", "h2|c2c|local=2|cpus=2|b"):
        p.store(key, v, rows, f, own=99)
    assert p.clear(host="h1", local=2, path=f) == 1
    assert p.lookup("h1|c2c|local=4|cpus=2|b", f) is not None and p.lookup("h1|c2c|local=2|cpus=2|b", f) is None
    assert p.clear(path=f) == 2 and not (tmp_path / "sc.json").exists()


# ------------------------------------------------------------------ 8 ranks: the route flips back

def _eight(rank, size, how):
    """8 ranks on 2 cores with verdicts shaped as the probe measured them there (single copy up to
    a size, the FIFO ring and chain above it): both routes give the right results in a loop that
    alternates them; then rank 5 dies (SIGKILL from a thread) or stops (SIGSTOP) somewhere in that
    loop, and every other rank raises PeerLostError or HetcclTimeout well before the deadline."""
    import dataclasses
    import os

    import hetccl
    comm = hetccl.init(timeout=60)
    pids = comm.allgather(np.array([os.getpid()], np.int64))
    model = comm._tuner.model
    comm._tuner.model = dataclasses.replace(model, single_copy=tuple(
        (c, ((8 << 10, True), (512 << 10, False))) for c in ("broadcast", "allgather", "alltoall")))
    comm._hot.forget()
    small, large = 2 << 10, 16 << 10                        # float32 per block: 64 and 512 KiB calls
    routes = []

    def loop(times, t):
        for i in range(times):
            n = small if i % 2 == 0 else large
            x = _values(n * size, rank, np.float32)
            b = x.copy() if rank == 3 else np.zeros(n * size, np.float32)
            comm.broadcast(b, root=3, timeout=t)
            routes.append(comm.last_algorithm == "single_copy")
            out = comm.allgather(x[:n], timeout=t)
            routes.append(comm.last_algorithm == "single_copy")
            o = comm.alltoall(x, timeout=t)
            routes.append(comm.last_algorithm == "single_copy")
            if times < 100:
                assert np.array_equal(b, _values(n * size, 3, np.float32))
                assert np.array_equal(out, np.concatenate([_values(n * size, r, np.float32)[:n]
                                                           for r in range(size)]))
                assert np.array_equal(o, np.concatenate([_values(n * size, r, np.float32)[rank * n:(rank + 1) * n]
                                                         for r in range(size)]))
    loop(4, 20)
    assert routes[:6] == [True] * 3 + [False] * 3, routes
    return _victim_in_loop(comm, rank, 5, pids, how, lambda t: loop(100_000, t), 0.05)


def _victim_in_loop(comm, rank, victim, pids, how, loop, delay):
    """Rank victim gets SIGKILL (how "dies") or SIGSTOP ("stops") delay s into loop(timeout),
    which the others run until it raises; their _outcome. A stopped victim is let go on afterwards,
    into an error of its own."""
    import os
    import signal
    import threading
    comm.barrier()
    if rank == victim:
        sig = signal.SIGKILL if how == "dies" else signal.SIGSTOP
        threading.Timer(delay, os.kill, (os.getpid(), sig)).start()
    try:
        return _outcome(lambda: loop(3 if how == "stops" else 20))
    finally:
        if rank == 0 and how == "stops":
            os.kill(int(pids[victim]), signal.SIGCONT)
        comm.abort()


@pytest.mark.parametrize("how,expect", [("dies", ("lost",)), ("stops", ("timeout", "lost"))])
def test_eight_ranks_route_flip_and_peer_fails_mid_call(how, expect):
    res = run_ranks_expect_failure(_eight, 8, how, timeout=90, env=EVERYWHERE)
    for r, (ok, text) in enumerate(res):
        if r == 5 and how == "dies":
            continue
        assert ok and text.startswith(expect) and float(text.split(" in ")[1][:-1]) < 20, (r, res)
