"""The ``rdma`` transport (UCX) across two real processes: the Endpoint contract, then collectives.

Each rank builds an authenticated pair socket through the job's store (as transports/mesh.py does
for a communicator), opens an RdmaEndpoint over it and runs the cases of rdma_cases.py. Skipped,
with the reason, when UCX cannot be loaded (install the ``rdma`` extra: libucx-cu12).
"""
import os
import socket
import time

import pytest

from tests.launcher import run_ranks, run_ranks_expect_failure
from tests.transports import rdma_cases as cases


def _ucx_reason():
    try:
        from hetccl._native import ucx
    except ImportError as e:
        return f"hetccl._native.ucx is not built ({e})"
    return None if ucx.load() else ucx.load_error()


REASON = _ucx_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"UCX cannot be loaded: {REASON}")


class Pair:
    """This rank's store connection and, on rank 0, a listener the peer connects to (authenticated
    with the job secret), so that endpoints can be opened and closed many times."""

    def __init__(self, rank, timeout=120.0):
        from hetccl.bootstrap.env import detect
        from hetccl.bootstrap.rendezvous import connect_store
        self.rank, self.peer, self.timeout = rank, 1 - rank, timeout
        self.conn = connect_store(detect(), timeout=timeout)
        self.info = self.conn.info
        self.store = self.conn.client
        self.listener = None
        if rank == 0:
            self.listener = socket.create_server(("127.0.0.1", 0))
            self.store.set("pair/port", str(self.listener.getsockname()[1]).encode())
        self.port = int(bytes(self.store.get("pair/port", timeout=timeout)))
        self.n = 0

    def socket(self):
        from hetccl.bootstrap.auth import client_handshake, server_handshake
        self.n += 1
        cid = f"rdma-test-{self.n}".encode()
        if self.rank == 0:
            self.listener.settimeout(self.timeout)
            s, _ = self.listener.accept()
            got = server_handshake(s, self.info.secret, 0, cid, self.timeout)
            assert got == 1, got
        else:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
            client_handshake(s, self.info.secret, 1, 0, cid, self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def endpoint(self):
        from hetccl.transports.rdma import RdmaEndpoint
        return RdmaEndpoint(self.socket(), self.peer, timeout=self.timeout)

    def close(self):
        if self.listener is not None:
            self.listener.close()
        self.conn.close()


def _run_cases(rank, size, names):
    pair = Pair(rank)
    out = {}
    try:
        for name in names:
            with pair.endpoint() as ep:
                out[name] = getattr(cases, name)(ep, rank, 1 - rank)
                ep.close()              # idempotent: __exit__ closes again
    finally:
        pair.close()
    return out


@pytest.mark.parametrize("name", ["case_connect_close", "case_sizes", "case_many_outstanding",
                                  "case_tag_ordering", "case_put_get"])
def test_endpoint_contract(name):
    res = run_ranks(_run_cases, 2, [name], timeout=240)
    assert all(name in r for r in res), res


def _peer_dies(rank, size):
    pair = Pair(rank)
    ep = pair.endpoint()
    return cases.case_peer_dies(ep, rank, 1 - rank, deadline=60.0)


def test_peer_dying_mid_transfer_fails_within_deadline():
    res = run_ranks_expect_failure(_peer_dies, 2, timeout=180)
    ok1, took = res[1]
    assert ok1, took
    assert took < 30.0, f"PeerLostError came only after {took:.1f} s"
    assert not res[0][0]             # rank 0 died on purpose


def _fds():
    return len(os.listdir("/proc/self/fd"))


def _rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cycles(rank, size, n):
    import numpy as np
    pair = Pair(rank)
    try:
        one = np.zeros(1, np.uint8)

        def cycle():
            with pair.endpoint() as ep:
                r = ep.irecv(one, 0)
                ep.isend(np.ones(1, np.uint8), 0).wait(60)
                r.wait(60)
        for _ in range(50):              # warm-up: UCX's memory pools and caches settle
            cycle()
        fd0, rss0 = _fds(), _rss_kib()
        t = time.monotonic()
        for _ in range(n):
            cycle()
        return {"fds": _fds() - fd0, "rss_kib": _rss_kib() - rss0, "s": time.monotonic() - t}
    finally:
        pair.close()


def test_1000_connect_close_cycles_leak_nothing():
    res = run_ranks(_cycles, 2, 1000, timeout=600)
    for r, d in enumerate(res):
        assert d["fds"] <= 0, f"rank {r} leaked {d['fds']} file descriptors over 1000 cycles"
        assert d["rss_kib"] < 16 << 10, f"rank {r} grew by {d['rss_kib']} KiB over 1000 cycles"


def _garbage_address(rank, size):
    from hetccl.errors import TransportError
    from hetccl.transports.rdma import RdmaEndpoint
    pair = Pair(rank)
    try:
        s = pair.socket()
        if rank == 1:                    # authenticated, but speaks garbage instead of an address
            s.sendall(b"GARBAGE!" + bytes(64))
            s.recv(1)                    # until rank 0 hangs up
            s.close()
            return "sent"
        t = time.monotonic()
        try:
            RdmaEndpoint(s, 1, timeout=30)
        except TransportError as e:
            return (str(e), time.monotonic() - t)
        finally:
            s.close()
        return ("accepted garbage", 0)
    finally:
        pair.close()


def test_garbage_address_is_refused():
    res = run_ranks(_garbage_address, 2, timeout=120)
    msg, took = res[0]
    assert "malformed UCX address" in msg, msg
    assert took < 10, took


def test_score_follows_rdma_hardware(monkeypatch):
    """rdma outranks tcp only when UCX has RDMA hardware; without it, only when forced."""
    from hetccl.topology.select import transport_matrix
    from hetccl.transports import ALL
    from hetccl.transports import rdma
    cards = [{"host": "a"}, {"host": "b"}, {"host": "a"}]
    assert rdma.rdma_wires(["tcp/eth0", "rc_mlx5/mlx5_0:1", "ud_verbs/mlx5_0:1", "sysv/memory"]) == \
        ["rc_mlx5/mlx5_0:1", "ud_verbs/mlx5_0:1"]
    monkeypatch.setattr(rdma, "_wires", ["rc_mlx5/mlx5_0:1"])
    assert transport_matrix(cards, ALL, None)[0] == ["self", "rdma", "shm"]
    monkeypatch.setattr(rdma, "_wires", [])
    assert transport_matrix(cards, ALL, None)[0] == ["self", "tcp", "shm"]
    assert transport_matrix(cards, ALL, "rdma")[0] == ["self", "rdma", "rdma"]
