"""What only the ``rdma`` transport (UCX) has, beyond the conformance suite it passes with every
other transport (test_conformance.py, factory "rdma"): connection ids that keep the tags of
endpoints sharing one UCX worker apart, leftovers of a closed connection dropped from the worker,
an authenticated peer that sends a malformed UCX address, the tag range, ``waitall``, and the UCX
settings hetccl applies. Skipped, with the reason, when UCX cannot be loaded (install the ``rdma``
extra: libucx-cu12).
"""
import time

import numpy as np
import pytest

from hetccl.errors import InvalidUsage
from hetccl.transports.rdma import ucx_missing
from tests.launcher import free_port, run_ranks
from tests.transports.registry import FACTORIES

REASON = ucx_missing()
pytestmark = pytest.mark.skipif(REASON is not None, reason=str(REASON))
T = 60.0


def _pair(rank, port):
    f = FACTORIES["rdma"]
    f.start(rank, port)
    return f


def _two_connections_same_tags(rank, size, port):
    """Two endpoints between the same two processes, both on each process's shared worker, with
    the same tags in flight at once: each receive gets its own connection's message."""
    f = _pair(rank, port)
    a, b = f.open(), f.open()
    assert a._worker is b._worker                  # one worker serves both connections
    n = 70000                                      # above UCX's eager limit: rendezvous too
    if rank == 0:
        reqs = [ep.isend(np.full(n, k, np.uint8), tag=t) for t in (1, 2) for k, ep in ((7, a), (9, b))]
        a.waitall([r for r in reqs if r.ep is a._ep], T)
        b.waitall([r for r in reqs if r.ep is b._ep], T)
        got = None
    else:
        bufs = {(ep, t): np.zeros(n, np.uint8) for ep in ("a", "b") for t in (2, 1)}
        rb = [b.irecv(bufs["b", t], tag=t) for t in (2, 1)]      # b's receives posted first
        ra = [a.irecv(bufs["a", t], tag=t) for t in (2, 1)]
        assert b.waitall(rb, T) == a.waitall(ra, T) == 2 * n
        got = {f"{ep}{t}": int(v[0]) for (ep, t), v in bufs.items() if (v == v[0]).all()}
    for ep in (a, b):
        ep.close()
    f.stop()
    return got


def test_endpoints_sharing_a_worker_keep_their_tags_apart():
    res = run_ranks(_two_connections_same_tags, 2, free_port(), timeout=120)
    assert res[1] == {"a1": 7, "a2": 7, "b1": 9, "b2": 9}, res[1]


def _leftovers_rank(rank, size, port):
    """Messages a connection never received are dropped from the shared worker when it closes
    (they would otherwise stay in UCX's unexpected queue for the life of the process), and a later
    connection between the same processes sees none of them."""
    f = _pair(rank, port)
    ep = f.open()
    if rank == 0:
        ep.waitall([ep.isend(np.arange(k + 1, dtype=np.int64), tag=5) for k in range(3)], T)
        ep.isend(np.ones(1, np.int64), tag=6).wait(T)
        ep2 = f.open()                                         # rank 1 opens it after closing ep
        ep2.irecv(np.zeros(1, np.int64), tag=8).wait(T)
        ep2.close()
        ep.close()
        f.stop()
        return None
    ep.irecv(np.zeros(1, np.int64), tag=6).wait(T)             # the three tag-5 ones came first
    ucx_ep = ep._ep
    ep.close()
    ep2 = f.open()
    probe = ep2.irecv(np.zeros(1, np.int64), tag=5)             # nothing of the old connection
    ep2.isend(np.ones(1, np.int64), tag=8).wait(T)
    time.sleep(0.2)
    ep2.progress()
    stale = probe.test()
    ep2.close()
    f.stop()
    return ucx_ep.dropped, stale


def test_a_closed_connections_unreceived_messages_are_dropped():
    res = run_ranks(_leftovers_rank, 2, free_port(), timeout=120)
    assert res[1] == (3, False), res[1]


def _garbage_address(rank, size, port):
    """An authenticated peer that sends garbage instead of a UCX worker address is refused."""
    import socket

    from hetccl.bootstrap.auth import client_handshake
    from hetccl.errors import TransportError
    from hetccl.transports.pair_endpoint import Listener, _env_secret
    if rank == 0:
        with Listener(_env_secret(), 0, port=port) as lst:
            t = time.monotonic()
            try:
                lst.accept("rdma", timeout=T)
            except TransportError as e:
                return str(e), time.monotonic() - t
        return "accepted garbage", 0.0
    for _ in range(500):
        try:
            s = socket.create_connection(("127.0.0.1", port))
            break
        except ConnectionRefusedError:
            time.sleep(0.02)
    client_handshake(s, _env_secret(), 1, 0, b"ep", T)
    s.sendall(b"GARBAGE!" + bytes(64))
    s.settimeout(T)
    s.recv(1)                                   # until rank 0 hangs up
    s.close()
    return "sent"


def test_garbage_worker_address_from_an_authenticated_peer_is_refused():
    res = run_ranks(_garbage_address, 2, free_port(), timeout=120)
    msg, took = res[0]
    assert "malformed UCX address" in msg, msg
    assert took < 10, took


def _tags_and_waitall(rank, size, port):
    f = _pair(rank, port)
    ep = f.open()
    with pytest.raises(InvalidUsage, match=r"\[0, 2\*\*32\)"):
        ep.isend(np.zeros(1, np.uint8), tag=1 << 32)
    with pytest.raises(InvalidUsage, match=r"\[0, 2\*\*32\)"):
        ep.irecv(np.zeros(1, np.uint8), tag=-1)
    top = (1 << 32) - 1
    if rank == 0:
        reqs = [ep.isend(np.full(1000 * (k + 1), k, np.uint8), tag=top) for k in range(4)]
        assert ep.waitall(reqs, T) == 10000
        ep.isend(np.zeros(3, np.uint8), tag=top).wait(T)       # received into 4 bytes
        ep.isend(np.ones(1, np.uint8), tag=top).wait(T)
    else:
        bufs = [np.zeros(1000 * (k + 1), np.uint8) for k in range(4)]
        assert ep.waitall([ep.irecv(b, tag=top) for b in bufs], T) == 10000
        assert [int(b[0]) for b in bufs] == [0, 1, 2, 3]
        small, one = np.zeros(4, np.uint8), np.zeros(1, np.uint8)
        reqs = [ep.irecv(small, tag=top), ep.irecv(one, tag=top)]
        with pytest.raises(InvalidUsage, match="sizes must match"):
            ep.waitall(reqs, T)                  # every request settled before the error is raised
        assert one[0] == 1
    assert ep.waitall([], T) == 0
    ep.close()
    f.stop()
    return "ok"


def test_tag_range_and_waitall():
    assert run_ranks(_tags_and_waitall, 2, free_port(), timeout=120) == ["ok", "ok"]


def test_tuned_ucx_settings_yield_to_the_environment(monkeypatch):
    from hetccl._native import ucx
    monkeypatch.delenv("UCX_TCP_TX_SEG_SIZE", raising=False)
    monkeypatch.delenv("UCX_TCP_RX_SEG_SIZE", raising=False)
    assert ucx.tuned_settings() == {"TCP_TX_SEG_SIZE": "64K"}
    assert ucx.context().settings == {"TCP_TX_SEG_SIZE": "64K"}      # UCX accepted it
    monkeypatch.setenv("UCX_TCP_TX_SEG_SIZE", "8K")
    assert ucx.tuned_settings() == {}
    monkeypatch.delenv("UCX_TCP_TX_SEG_SIZE")
    monkeypatch.setenv("UCX_TCP_RX_SEG_SIZE", "16K")                 # a send segment must fit
    assert ucx.tuned_settings() == {}


def test_score_follows_rdma_hardware(monkeypatch):
    """rdma outranks tcp only when UCX has RDMA hardware; without it, only when forced."""
    from hetccl.transports.matrix import transport_matrix
    from hetccl.transports import ALL, rdma
    cards = [{"host": "a"}, {"host": "b"}, {"host": "a"}]
    assert rdma.rdma_wires(["tcp/eth0", "rc_mlx5/mlx5_0:1", "ud_verbs/mlx5_0:1", "sysv/memory"]) == \
        ["rc_mlx5/mlx5_0:1", "ud_verbs/mlx5_0:1"]
    monkeypatch.setattr(rdma, "_wires", ["rc_mlx5/mlx5_0:1"])
    assert transport_matrix(cards, ALL, None)[0] == ["self", "rdma", "shm"]
    monkeypatch.setattr(rdma, "_wires", [])
    assert transport_matrix(cards, ALL, None)[0] == ["self", "tcp", "shm"]
    assert transport_matrix(cards, ALL, "rdma")[0] == ["self", "rdma", "rdma"]


def test_doctor_lines_name_the_library_its_wires_and_hetccls_settings():
    from hetccl._native import ucx
    from hetccl.transports import rdma
    lines = rdma.describe()
    assert lines[0] == f"ucx: {ucx.version()} from {ucx.library_path()}", lines
    assert any(ln.startswith("  transports/devices: ") and "tcp/" in ln for ln in lines), lines
    assert any(ln.startswith("  hetccl's UCX settings: ") for ln in lines), lines
