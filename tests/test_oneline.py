"""One-line messages (hetccl/_native/oneline.pxd): small exchanges between the two ranks of an shm
or c2c pair travel as one 64-byte line carrying payload, flag and header.

* every dtype and reduction op through the line gives the same bytes as through the FIFO
  (Engine.lines off: the path every other test checks), at sizes at and around the line's 48 bytes,
  for hundreds of calls in a row (the 16-slot rings are reused many times), interleaved with calls
  that go through the FIFO;
* recursive doubling at 3 and 4 ranks (fold-in steps, allgather);
* a peer that dies or stalls while the other waits on a line: PeerLostError / HetcclTimeout, not a
  hang; a line with a wrong epoch or message number is never taken; a right flag over another
  call's header, or ranks that send a line and FIFO bytes to each other, are mismatches.
"""
from __future__ import annotations

import ctypes
import os
import time

import numpy as np
import pytest

from tests.launcher import run_ranks

RD = "recursive_doubling"


def _dtypes():
    from hetccl import dtypes as D
    return [(c, D.numpy_dtype(c)) for c in range(len(D.NAMES))]


def _valid_ops(code):
    from hetccl import dtypes as D
    from hetccl.errors import InvalidUsage
    ops = []
    for op in D.ReduceOp:
        try:
            D.check_op(code, op)
        except InvalidUsage:
            continue
        ops.append(op)
    return ops


def _inputs(rng, dt, n):
    if dt.kind == "b":
        return rng.integers(0, 2, n).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(max(info.min, -100), min(info.max, 100), n, endpoint=True).astype(dt)
    return rng.uniform(-4, 4, n).astype(np.float32).astype(dt)


def _every_dtype_case(rank, size, transport):
    import hetccl
    comm = hetccl.init(timeout=30)
    e = comm._engine
    peer = 1 - rank
    rng = np.random.default_rng(1234 + rank)
    bad = []
    calls = 0
    for code, dt in _dtypes():
        es = dt.itemsize
        counts = sorted({1, 48 // es - 1, 48 // es, 48 // es + 1} - {0})
        for op in _valid_ops(code):
            for n in counts:
                x = _inputs(rng, dt, n)
                e.lines = False
                want = comm.allreduce(x.copy(), op, algorithm=RD)
                e.lines = True
                before = e.line_state(peer)["got"]
                got = comm.allreduce(x.copy(), op, algorithm=RD)
                took = e.line_state(peer)["got"] - before
                calls += 1
                if got.tobytes() != want.tobytes() or took != (n * es <= 48):
                    bad.append((dt.name, op.name, n, took, got.tobytes().hex(), want.tobytes().hex()))
    st = e.line_state(peer)
    comm.close()
    return {"bad": bad, "calls": calls, "state": st}


@pytest.mark.parametrize("transport", ["shm", "c2c"])
def test_every_dtype_and_op_matches_the_fifo(transport):
    res = run_ranks(_every_dtype_case, 2, transport, timeout=120, transports=transport)
    for r in res:
        assert r["bad"] == [], r["bad"][:5]
        assert r["state"] is not None and r["state"]["sent"] == r["state"]["got"] > 100, r["state"]
        assert r["state"]["payload"] == 48


def _many_calls_case(rank, size, calls):
    """Calls in a row, each with its own values, alternating with FIFO-sized calls every few calls:
    allreduce in place, out of place and AVG; allgather (recursive doubling, and the 2-rank ring's
    exchange) of 4..56-byte blocks."""
    import hetccl
    from hetccl import ReduceOp
    comm = hetccl.init(timeout=30)
    e = comm._engine
    bad = []
    lines = 0
    out = np.empty(2, np.float64)
    for i in range(calls):
        x = np.array([rank * 1000.0 + i, -i], np.float64)
        ref = np.array([1000.0 + 2 * i, -2.0 * i])
        if i % 3 == 0:
            y = comm.allreduce(x, algorithm=RD)               # in place
        elif i % 3 == 1:
            y = comm.allreduce(x, out=out, algorithm=RD)
        else:
            y = comm.allreduce(x, ReduceOp.AVG, algorithm=RD)
            ref = ref / 2
        if not np.array_equal(y, ref):
            bad.append((i, y.tolist(), ref.tolist()))
        m = 1 + i % 14                                        # 4..56 bytes: at and past the line
        blk = np.arange(m, dtype=np.int32) + 100 * rank + i
        g = comm.allgather(blk, algorithm=RD if i % 2 else "ring")
        if g.tolist() != (np.arange(m) + i).tolist() + (np.arange(m) + 100 + i).tolist():
            bad.append((i, "allgather", m, g.tolist()))
        lines += 1 + (4 * m <= 48)
        if i % 7 == 0:                                        # through the FIFO in between
            big = comm.allreduce(np.full(1000, rank + i, np.int64), algorithm=RD)
            if not (big == 2 * i + 1).all():
                bad.append((i, "fifo", big[:3].tolist()))
    st = e.line_state(1 - rank)
    comm.close()
    return {"bad": bad, "state": st, "lines": lines}


def test_many_calls_reuse_every_slot():
    calls = 400
    res = run_ranks(_many_calls_case, 2, calls, timeout=90, transports="shm")
    for r in res:
        assert r["bad"] == [], r["bad"][:5]
        # (the library's own small calls, e.g. agreeing on a new shape, may add lines)
        assert r["state"]["sent"] == r["state"]["got"] >= r["lines"], (r["state"], r["lines"])
        assert r["state"]["sent"] > 10 * r["state"]["slots"]


def _more_ranks_case(rank, size):
    import hetccl
    comm = hetccl.init(timeout=30)
    bad = []
    for i in range(60):
        x = np.array([rank + 1, i], np.int64)
        y = comm.allreduce(x, algorithm=RD)
        if y.tolist() != [size * (size + 1) // 2, size * i]:
            bad.append((i, y.tolist()))
        if size & (size - 1) == 0:
            g = comm.allgather(np.array([rank * 10 + i % 5], np.int16), algorithm=RD)
            if g.tolist() != [r * 10 + i % 5 for r in range(size)]:
                bad.append((i, "allgather", g.tolist()))
    lines = [comm._engine.line_state(p) for p in range(size) if p != rank]
    comm.close()
    return {"bad": bad, "lines": sum(s["got"] for s in lines if s)}


@pytest.mark.parametrize("n", [3, 4])
def test_recursive_doubling_at_more_ranks(n):
    res = run_ranks(_more_ranks_case, n, timeout=90, transports="shm")
    for r in res:
        assert r["bad"] == [], r["bad"][:5]
        assert r["lines"] >= 60


# ------------------------------------------------------------------ failures while on a line

def _warm(calls):
    """A communicator after `calls` 8 B allreduces through the line, and its input."""
    import hetccl
    comm = hetccl.init(timeout=30)
    x = np.ones(2, np.float32)
    for _ in range(calls):
        comm.allreduce(x, algorithm=RD)
    comm.barrier()
    return comm, x


def _dies_case(rank, size):
    comm, x = _warm(50)
    if rank == 1:
        time.sleep(0.3)
        os._exit(3)                       # while rank 0 waits on its line
    t = time.monotonic()
    try:
        comm.allreduce(x, algorithm=RD, timeout=20)
        return {"exc": None}
    except Exception as exc:             # noqa: BLE001 - the class is what is checked
        return {"exc": type(exc).__name__, "took": time.monotonic() - t, "msg": str(exc)}


def test_peer_dies_while_the_other_waits_on_a_line():
    r0 = run_ranks(_dies_case, 2, timeout=60, transports="shm", victims=[1])[0]
    assert r0["exc"] == "PeerLostError", r0
    assert r0["took"] < 5.0, r0


def _stalls_case(rank, size):
    comm, x = _warm(20)
    if rank == 1:
        time.sleep(2.5)                   # never calls, as far as rank 0's deadline is concerned
        comm.close()
        return {}
    t = time.monotonic()
    try:
        comm.allreduce(x, algorithm=RD, timeout=1.0)
        out = {"exc": None}
    except Exception as exc:             # noqa: BLE001
        out = {"exc": type(exc).__name__, "took": time.monotonic() - t,
               "sleeps": comm._engine.futex_sleeps}
    comm.close()
    return out


def test_peer_stalls_while_the_other_waits_on_a_line():
    r0 = run_ranks(_stalls_case, 2, timeout=60, transports="shm")[0]
    assert r0["exc"] == "HetcclTimeout", r0
    assert 0.9 <= r0["took"] < 3.0, r0
    assert r0["sleeps"] > 0, r0           # it slept (futex) rather than spinning the whole second


# ------------------------------------------------------------------ garbage and mismatches

def _write_line(addr, flag, check, payload=b""):
    buf = payload.ljust(48, b"\xa5")
    ctypes.memmove(addr + 8, ctypes.c_uint64(check).value.to_bytes(8, "little") + buf, 56)
    ctypes.c_uint64.from_address(addr).value = flag


def _garbage_case(rank, size, how):
    """Rank 1 writes a forged line into the slot rank 0 reads next, then stays out of the call."""
    import hetccl
    comm = hetccl.init(timeout=30)
    e = comm._engine
    x = np.full(2, rank + 1, np.float32)
    for _ in range(5):
        comm.allreduce(x.copy(), algorithm=RD)
    comm.barrier()
    st = e.line_state(1 - rank)
    if rank == 1:
        k = st["sent"] + 1
        addr = st["tx"] + 64 * (k % st["slots"])
        if how == "epoch":                # right message number, another epoch
            flag = (((st["epoch"] + 1) & 0xffff or 1) << 48) | k
            _write_line(addr, flag, 0, b"\x00\x00\x80\x7f" * 2)
        elif how == "stale":              # the flag of the message that used this slot before
            _write_line(addr, (st["epoch"] << 48) | (k - st["slots"]), 0, b"\x00\x00\x80\x7f" * 2)
        else:                             # right flag, another call's header
            _write_line(addr, (st["epoch"] << 48) | k, 0x0000000B01020304, b"\x00\x00\x80\x7f" * 2)
        time.sleep(2.5)
        comm.close()
        return {}
    t = time.monotonic()
    y = x.copy()
    try:
        comm.allreduce(y, algorithm=RD, timeout=1.0)
        out = {"exc": None, "y": y.tolist()}
    except Exception as exc:             # noqa: BLE001
        out = {"exc": type(exc).__name__, "took": time.monotonic() - t, "msg": str(exc),
               "y": y.tolist()}
    comm.close()
    return out


@pytest.mark.parametrize("how", ["epoch", "stale", "header"])
def test_a_forged_line_is_never_taken_as_data(how):
    r0 = run_ranks(_garbage_case, 2, how, timeout=60, transports="shm")[0]
    if how == "header":
        assert r0["exc"] == "InvalidUsage" and "mismatched collective" in r0["msg"], r0
    else:
        assert r0["exc"] == "HetcclTimeout", r0
    assert r0["y"] == [1.0, 1.0], r0      # the forged payload never reached the output


def _mismatch_case(rank, size, other):
    import hetccl
    comm = hetccl.init(timeout=30)
    comm.allreduce(np.ones(2, np.float32), algorithm=RD)
    n = 2 if rank == 0 else other
    try:
        comm.allreduce(np.ones(n, np.float32), algorithm=RD, timeout=10)
        out = {"exc": None}
    except Exception as exc:             # noqa: BLE001
        out = {"exc": type(exc).__name__, "msg": str(exc)}
    comm.close()
    return out


@pytest.mark.parametrize("other", [4, 1024])
def test_mismatched_sizes_are_reported_not_hung(other):
    """8 B against 16 B (both lines: the headers differ) and against 4 KiB (a line against FIFO
    bytes: each side finds the other channel)."""
    res = run_ranks(_mismatch_case, 2, other, timeout=60, transports="shm")
    for r in res:
        assert r["exc"] == "InvalidUsage" and "mismatched collective" in r["msg"], r
