"""Failures: mismatched calls, dead ranks, timeouts, wrong secrets.

The contract (ARCHITECTURE.md, Conventions): a mismatched collective is detected, not silently
corrupted; every wait has a deadline; a lost peer raises on every survivor; after an error the
communicator raises CommAborted. Each rank records what it saw (exception class, message, how long
it took) and returns it, so the parent can check every rank's outcome; nothing here may hang.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from tests.launcher import run_ranks, run_ranks_expect_failure


def _outcome(fn, *args, **kw):
    """(exception class name or None, message, seconds) of one call."""
    t = time.monotonic()
    try:
        fn(*args, **kw)
    except Exception as e:  # noqa: BLE001
        return type(e).__name__, str(e), time.monotonic() - t
    return None, "", time.monotonic() - t


def _next_call_outcome(comm):
    return _outcome(comm.allreduce, np.ones(4, dtype=np.float32))[:2]


CLOSE_TIMEOUT = 3.0


def _check_after(rank, out, victim):
    """A call after the failure raises CommAborted, or PeerLostError naming the dead rank once the
    control plane declared it failed (docs/reliability.md)."""
    exc, msg = out["after"]
    assert exc == "CommAborted" or (exc == "PeerLostError" and f"rank {victim} failed" in msg), (rank, exc, msg)


def _close(comm):
    """close() after a failure must be bounded by its timeout (rank 0, which serves the store,
    may wait that long for the clients of dead ranks)."""
    t = time.monotonic()
    comm.close(timeout=CLOSE_TIMEOUT)
    return time.monotonic() - t


# ------------------------------------------------------------------------------------------------
# (a)-(c) mismatched calls
# ------------------------------------------------------------------------------------------------
def _mismatch_rank(rank, size, kind, algo):
    import hetccl
    comm = hetccl.init(timeout=30)
    n = 2003
    comm.allreduce(np.ones(n, dtype=np.float32), algorithm=algo)      # a good call first
    x = np.ones(n, dtype=np.float32)
    if kind == "algorithm":   # e.g. HETCCL_ALGO or a tuning file that differs between ranks
        algo = "ring" if rank == 1 else "rd"
    call = lambda: comm.allreduce(x, hetccl.SUM, algorithm=algo, timeout=20)  # noqa: E731
    if rank == 1:
        if kind == "count":
            x = np.ones(n + 1, dtype=np.float32)
        elif kind == "dtype":
            x = np.ones(n, dtype=np.int32)                            # same byte count
        elif kind == "op":
            call = lambda: comm.allreduce(x, hetccl.MAX, algorithm=algo, timeout=20)  # noqa: E731
        elif kind == "collective":
            call = lambda: comm.allgather(x, algorithm=algo, timeout=20)  # noqa: E731
    exc, msg, took = _outcome(call)
    after = _next_call_outcome(comm)
    return {"exc": exc, "msg": msg, "took": took, "after": after, "close_s": _close(comm)}


def _check_mismatch(results, kind, n_words):
    for r, res in enumerate(results):
        exc, msg = res["exc"], res["msg"]
        assert exc in ("InvalidUsage", "PeerLostError"), f"rank {r}: {exc}: {msg}"
        assert "mismatch" in msg, f"rank {r} did not say what went wrong: {exc}: {msg}"
        assert res["took"] < 5.0, f"rank {r} took {res['took']:.1f}s to notice: {msg}"
        assert res["after"][0] == "CommAborted", f"rank {r} next call: {res['after']}"
        assert res["close_s"] < CLOSE_TIMEOUT + 1.0
    # the ranks that saw the bad header name both sides' calls
    direct = [res["msg"] for res in results if res["exc"] == "InvalidUsage"]
    assert direct, "no rank raised InvalidUsage"
    assert any(all(w in m for w in n_words) for m in direct), (n_words, direct)
    assert any("every rank must call the same" in m for m in direct), direct


MISMATCH_GROUPS = [(2, "shm", "ring"), (3, "shm", "rd"), (4, "shm", "ring"),
                   (2, "tcp", "rd"), (3, "tcp", "ring"), (4, "tcp", "rd")]


@pytest.mark.parametrize("size,transport,algo", MISMATCH_GROUPS,
                         ids=[f"{n}ranks-{t}-{a}" for n, t, a in MISMATCH_GROUPS])
def test_mismatched_counts(size, transport, algo):
    res = run_ranks(_mismatch_rank, size, "count", algo, timeout=60, transports=transport)
    _check_mismatch(res, "count", ["2003 float32", "2004 float32"])


@pytest.mark.parametrize("kind,size,transport,words", [
    ("dtype", 2, "tcp", ["2003 int32", "2003 float32"]),
    ("dtype", 3, "shm", ["int32", "float32"]),
    ("op", 3, "shm", ["with MAX", "with SUM"]),
    ("op", 2, "tcp", ["MAX", "SUM"]),
    ("collective", 3, "shm", ["allgather", "allreduce"]),
    ("collective", 2, "tcp", ["allgather", "allreduce"]),
    # both calls look alike (same count, dtype, op): the message must name what differs
    ("algorithm", 3, "shm", ["algorithm"]),
])
def test_mismatched_dtype_op_or_collective(kind, size, transport, words):
    res = run_ranks(_mismatch_rank, size, kind, None, timeout=60, transports=transport)
    _check_mismatch(res, kind, words)


# ------------------------------------------------------------------------------------------------
# (d) a rank dies in the middle of a loop of large allreduces
# ------------------------------------------------------------------------------------------------
def _kill_rank(rank, size, victim, how, stamp_path):
    import hetccl
    comm = hetccl.init(timeout=30)
    x = np.ones((8 << 20) // 4, dtype=np.float32)
    comm.allreduce(x)
    if rank == victim:
        def die():
            with open(stamp_path, "w") as f:
                f.write(repr(time.time()))
            if how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(1)
        # from another thread, while the main thread is inside an allreduce (which runs nogil)
        threading.Timer(0.3, die).start()
    end = time.monotonic() + 30
    calls = 0
    while time.monotonic() < end:
        try:
            comm.allreduce(x, timeout=25)
            calls += 1
        except Exception as e:  # noqa: BLE001
            caught = time.time()
            return {"exc": type(e).__name__, "msg": str(e), "at": caught, "calls": calls,
                    "after": _next_call_outcome(comm), "close_s": _close(comm)}
    return {"exc": None, "calls": calls}


# victim 0 also takes the store down with it; the rank upstream of the victim (victim-1) is the one
# whose ring forwarding stalls on the dead rank.
KILL_GROUPS = [(2, "shm", 1, "sigkill"), (2, "tcp", 1, "exit"), (4, "shm", 0, "exit"),
               (4, "shm", 2, "sigkill"), (4, "tcp", 2, "sigkill"), (8, "shm", 0, "sigkill")]


@pytest.mark.parametrize("size,transport,victim,how", KILL_GROUPS,
                         ids=[f"{n}ranks-{t}-kill{v}-{h}" for n, t, v, h in KILL_GROUPS])
def test_rank_killed_mid_allreduce(tmp_path, size, transport, victim, how):
    stamp = tmp_path / "killed_at"
    res = run_ranks_expect_failure(_kill_rank, size, victim, how, str(stamp), timeout=45,
                                   transports=transport)
    assert not res[victim][0], f"the victim returned: {res[victim]}"
    killed_at = float(stamp.read_text())
    for r, (ok, out) in enumerate(res):
        if r == victim:
            continue
        assert ok, f"rank {r} failed instead of reporting: {out}"
        assert out["exc"] is not None, f"rank {r} never noticed that rank {victim} died: {out}"
        assert out["exc"] in ("PeerLostError", "HetcclError", "TransportError"), (r, out)
        elapsed = out["at"] - killed_at
        assert elapsed < 10.0, (f"rank {r} took {elapsed:.1f}s to raise after rank {victim} died: "
                                f"{out['exc']}: {out['msg']}")
        _check_after(r, out, victim)
        assert out["close_s"] < CLOSE_TIMEOUT + 1.0, (r, out["close_s"])
    lost = [out["msg"] for r, (ok, out) in enumerate(res) if r != victim and ok
            and out["exc"] == "PeerLostError"]
    assert any(f"rank {victim}" in m for m in lost), lost      # somebody names the dead rank


# ------------------------------------------------------------------------------------------------
# (e) a timeout: rank 1 never calls
# ------------------------------------------------------------------------------------------------
def _timeout_rank(rank, size, how):
    import hetccl
    limit = 1.0 if how == "call" else 3.0
    comm = hetccl.init(timeout=limit if how == "init" else 30)
    out = {"limit": limit}
    if rank == 0:
        x = np.ones(1000, dtype=np.float32)
        if how == "call":
            out["exc"], out["msg"], out["took"] = _outcome(comm.allreduce, x, timeout=limit)
        else:   # the communicator's default, from init(timeout=)
            out["exc"], out["msg"], out["took"] = _outcome(comm.allgather, x)
        out["after"] = _next_call_outcome(comm)
        time.sleep(2.0)         # keep the store up while rank 1 looks there
    else:
        time.sleep(limit + 1.5)  # "never" calls, as far as rank 0's deadline is concerned
        # ... then calls after rank 0 gave up. Its first call may still complete (rank 0's
        # contribution was already delivered before it gave up), but it must not hang: within
        # two calls it raises, at once.
        t = time.monotonic()
        for _ in range(2):
            out["exc"], out["msg"], _ = _outcome(comm.allreduce, np.ones(1000, np.float32),
                                                 timeout=20)
            if out["exc"]:
                break
        out["took"] = time.monotonic() - t
    out["close_s"] = _close(comm)
    return out


@pytest.mark.parametrize("how,transport", [("call", "shm"), ("init", "tcp")])
def test_timeout_when_a_rank_never_calls(how, transport):
    r0, r1 = run_ranks(_timeout_rank, 2, how, timeout=60, transports=transport)
    limit = r0["limit"]
    assert r0["exc"] == "HetcclTimeout", r0
    assert limit - 0.05 <= r0["took"] <= limit + 2.0, r0
    assert "timed out" in r0["msg"] and "rank 1" in r0["msg"], r0["msg"]
    assert "timeout=" in r0["msg"] or "HETCCL_TIMEOUT" in r0["msg"], r0["msg"]
    assert r0["after"][0] == "CommAborted", r0["after"]
    assert r1["exc"] in ("PeerLostError", "CommAborted", "HetcclError"), r1
    assert r1["took"] < 4.0, r1
    assert "rank 0" in r1["msg"], r1["msg"]


# ------------------------------------------------------------------------------------------------
# (f) abort() by one rank wakes the others; the aborted comm refuses further calls
# ------------------------------------------------------------------------------------------------
def _abort_rank(rank, size):
    import hetccl
    comm = hetccl.init(timeout=30)
    comm.barrier()
    if rank == 1:
        time.sleep(0.5)
        t = time.time()
        comm.abort()
        return {"aborted_at": t, "after": _next_call_outcome(comm), "close_s": _close(comm)}
    exc, msg, took = _outcome(comm.allreduce, np.ones(1 << 16, dtype=np.float64), timeout=20)
    return {"exc": exc, "msg": msg, "at": time.time(), "after": _next_call_outcome(comm),
            "close_s": _close(comm)}


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_abort_wakes_the_others(transport):
    res = run_ranks(_abort_rank, 3, timeout=60, transports=transport)
    assert res[1]["after"][0] == "CommAborted", res[1]
    t = res[1]["aborted_at"]
    for r in (0, 2):
        assert res[r]["exc"] == "PeerLostError", res[r]
        assert res[r]["at"] - t < 10.0, res[r]
        assert res[r]["after"][0] == "CommAborted", res[r]
        assert res[r]["close_s"] < CLOSE_TIMEOUT + 1.0


# ------------------------------------------------------------------------------------------------
# (g) wrong secret
# ------------------------------------------------------------------------------------------------
def _secret_rank(rank, size, intruder):
    import hetccl
    if rank == intruder:
        os.environ["HETCCL_SECRET"] = "not-the-job-secret-" + "0" * 20
    t = time.monotonic()
    try:
        comm = hetccl.init(timeout=4)
    except Exception as e:  # noqa: BLE001
        return {"exc": type(e).__name__, "msg": str(e), "took": time.monotonic() - t,
                "is_hetccl": isinstance(e, hetccl.HetcclError)}
    took = time.monotonic() - t
    comm.abort()
    return {"exc": None, "msg": "", "took": took}


@pytest.mark.parametrize("size,intruder", [(2, 1), (3, 2), (3, 0)])
def test_wrong_secret_cannot_join(size, intruder):
    res = run_ranks(_secret_rank, size, intruder, timeout=60)
    for r, out in enumerate(res):
        assert out["exc"] is not None, f"rank {r} joined a job with a wrong secret: {res}"
        assert out["is_hetccl"], f"rank {r}: {out}"
        assert out["took"] < 4.0 + 4.0, f"rank {r} took {out['took']:.1f}s: {out}"
    # somebody says what to check (the ranks whose store connection was refused)
    assert any("HETCCL_SECRET" in out["msg"] for out in res), res
    if intruder != 0:   # rank 0 serves the store, so the intruder is the one refused
        assert res[intruder]["exc"] == "AuthenticationError", res[intruder]
