"""Endpoint-contract cases, each ``case(ep, rank, peer)`` run by both ranks of a pair.

Written against hetccl/transports/endpoint.py only, so the parametrised conformance suite can call
them for any transport (one-sided cases check ``ep.one_sided`` first). Each returns a small summary
or raises AssertionError with what went wrong.
"""
import os
import time

import numpy as np

from hetccl.errors import PeerLostError

T = 120.0     # per-wait deadline: generous, the machine is shared


def pattern(n: int, seed: int) -> np.ndarray:
    return ((np.arange(n, dtype=np.uint64) * 2654435761 + seed) % 251).astype(np.uint8)


def case_connect_close(ep, rank, peer):
    """One byte each way, then close (twice: close is idempotent)."""
    out = np.zeros(1, np.uint8)
    r = ep.irecv(out, 1)
    ep.isend(np.array([rank + 1], np.uint8), 1).wait(T)
    r.wait(T)
    assert out[0] == peer + 1, out
    return "ok"


SIZES = [0, 1, 7, 4095, 65536, (1 << 20) + 3, 16 << 20, 64 << 20]


def case_sizes(ep, rank, peer, sizes=SIZES):
    """0 B .. 64 MiB both ways at once, contents checked."""
    for i, n in enumerate(sizes):
        got = np.empty(n, np.uint8)
        r = ep.irecv(got, 100 + i)
        s = ep.isend(pattern(n, rank), 100 + i)
        assert s.wait(T) == n
        assert r.wait(T) == n
        assert np.array_equal(got, pattern(n, peer)), f"{n} bytes: payload differs"
    return len(sizes)


def case_many_outstanding(ep, rank, peer, n=256):
    """n receives with distinct tags posted in reverse order, n sends in order, all in flight."""
    bufs = [np.empty(64 + k, np.uint8) for k in range(n)]
    recvs = [ep.irecv(bufs[k], 1000 + k) for k in reversed(range(n))]
    sends = [ep.isend(pattern(64 + k, rank * 7 + k), 1000 + k) for k in range(n)]
    for q in sends + recvs:
        q.wait(T)
    for k in range(n):
        assert np.array_equal(bufs[k], pattern(64 + k, peer * 7 + k)), f"message {k} differs"
    return n


def case_tag_ordering(ep, rank, peer, n=200):
    """Messages of one tag arrive in posting order, also interleaved with another tag."""
    got = [np.empty(2, np.int64) for _ in range(n)]
    recvs = [ep.irecv(got[k], 5 if k % 2 else 6) for k in range(n)]
    sends = [ep.isend(np.array([k, k % 2], np.int64), 5 if k % 2 else 6) for k in range(n)]
    for q in sends + recvs:
        q.wait(T)
    seq = [int(g[0]) for g in got]
    assert seq == list(range(n)), f"out of order: {seq[:20]}..."
    return n


def case_put_get(ep, rank, peer, nbytes=4 << 20):
    """Rank 1 registers a window; rank 0 puts a pattern into it, reads part back with get, then
    tells rank 1, which checks its memory. Only for one-sided endpoints."""
    if not ep.one_sided:
        return "skipped: not one-sided"
    if rank == 1:
        win = np.zeros(nbytes, np.uint8)
        region = ep.register(win)
        blob = region.pack()
        ep.isend(np.array([len(blob)], np.int64), 1).wait(T)
        ep.isend(np.frombuffer(blob, np.uint8), 2).wait(T)
        done = np.zeros(1, np.uint8)
        ep.irecv(done, 3).wait(T)           # waiting progresses our worker (emulated RMA needs it)
        assert done[0] == 1
        assert np.array_equal(win[4096:4096 + (1 << 20)], pattern(1 << 20, 9)), "put data not visible"
        assert not win[:4096].any() and not win[4096 + (1 << 20):].any(), "put wrote outside its range"
        region.close()
        return "target ok"
    n = np.zeros(1, np.int64)
    ep.irecv(n, 1).wait(T)
    blob = np.empty(int(n[0]), np.uint8)
    ep.irecv(blob, 2).wait(T)
    remote = ep.remote_region(blob.tobytes())
    assert remote.nbytes == nbytes
    src = pattern(1 << 20, 9)
    assert ep.put(src, remote, 4096, src.nbytes).wait(T) == src.nbytes
    back = np.empty(1 << 16, np.uint8)
    assert ep.get(back, remote, 4096 + 1000, back.nbytes).wait(T) == back.nbytes
    assert np.array_equal(back, src[1000:1000 + back.nbytes]), "get returned other bytes"
    ep.isend(np.array([1], np.uint8), 3).wait(T)
    remote.close()
    return "origin ok"


def case_peer_dies(ep, rank, peer, deadline=60.0):
    """Rank 0 starts a 64 MiB send and dies (os._exit); rank 1's receive must raise PeerLostError
    well within the deadline instead of hanging."""
    if rank == 0:
        ready = np.zeros(1, np.uint8)
        ep.irecv(ready, 1).wait(T)
        ep.isend(pattern(64 << 20, 1), 2)
        time.sleep(0.002)
        os._exit(3)
    big = np.empty(64 << 20, np.uint8)
    r = ep.irecv(big, 2)
    ep.isend(np.array([1], np.uint8), 1).wait(T)
    t = time.monotonic()
    try:
        r.wait(deadline)
    except PeerLostError:
        return time.monotonic() - t
    raise AssertionError("a receive from a dead peer completed")
