"""Hostile peers and secure defaults: every listener bounds what a stranger costs, the
point-to-point channel fails loudly, shared memory is checked and reaped, and no launch path runs
unauthenticated unless the user opts out (the launcher paths themselves: test_launch_modes.py).

Everything here runs in one process on loopback (two P2PChannels of a 2-rank "communicator", a
store server and client) so it stays fast; the RSS figures are the process's own.
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from hetccl.bootstrap import auth, env as envmod, rendezvous
from hetccl.bootstrap.guard import (FramingError, HandshakeGate, MessageReader, encode,
                                    message_steps, run_blocking)
from hetccl.bootstrap.store import StoreClient, StoreServer
from hetccl.errors import (AuthenticationError, HetcclTimeout, InvalidUsage, PeerLostError,
                           TransportError)
from hetccl.memory import reap
from hetccl.p2p import ANY_SOURCE, P2PChannel, _FRAME, _MAGIC

SECRET = b"s" * 32
MiB = 1 << 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _connect(addr):
    return socket.create_connection(addr, timeout=5)


# ------------------------------------------------------------------------------------------------
# Framing and the gate
# ------------------------------------------------------------------------------------------------
def test_message_caps_are_checked_before_allocation():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack(">I", 1 << 30))            # a billion frames
        with pytest.raises(FramingError, match="frames"):
            run_blocking(message_steps(4, 256), b, time.monotonic() + 2)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack(">II", 1, 0xFFFFFFFF))      # one 4 GiB frame
        with pytest.raises(FramingError, match="bytes"):
            run_blocking(message_steps(4, 256), b, time.monotonic() + 2)
    a, b = socket.socketpair()
    with a, b:
        b.setblocking(False)
        r = MessageReader(8, 1024)
        a.sendall(encode([b"x", b"yz"]) + struct.pack(">II", 1, 4096))
        time.sleep(0.05)
        with pytest.raises(FramingError):
            r.read(b)
    a, b = socket.socketpair()
    with a, b:
        b.setblocking(False)
        r = MessageReader(8, 1024)
        msg = encode([b"a", b"", b"ccc"])
        a.sendall(msg[:5])
        time.sleep(0.02)
        assert r.read(b) == []
        a.sendall(msg[5:] + encode([b"z"]))
        time.sleep(0.02)
        assert r.read(b) == [[b"a", b"", b"ccc"], [b"z"]]


def _gate(timeout=10.0, max_pending=64, secret=SECRET):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    got = []
    gate = HandshakeGate(listener, lambda who: auth.server_handshake_steps(secret, 0, b"cid", who),
                         lambda s, peer: got.append((s, peer)), timeout=timeout,
                         max_pending=max_pending)
    return listener, gate, got


def _wait_for(cond, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)


def _client(addr, secret=SECRET, rank=1):
    s = _connect(addr)
    auth.client_handshake(s, secret, rank, 0, b"cid", 5)
    return s


def test_gate_drops_silent_connections_at_their_deadline_and_keeps_serving():
    listener, gate, got = _gate(timeout=0.3)
    try:
        addr = listener.getsockname()
        idle = [_connect(addr) for _ in range(5)]
        t0 = time.monotonic()
        s = _client(addr)                                  # not held up by the silent ones
        assert time.monotonic() - t0 < 1.0
        time.sleep(0.6)
        assert gate.expired == 5 and gate.pending == 0
        for c in idle:                                      # they were closed on our side
            c.settimeout(2)
            assert c.recv(1) == b""
            c.close()
        _wait_for(lambda: got)
        assert [p for _, p in got] == [1]
        s.close()
    finally:
        gate.close()
        listener.close()
        for s, _ in got:
            s.close()


def test_gate_caps_unauthenticated_connections_dropping_the_oldest():
    listener, gate, got = _gate(max_pending=8)
    try:
        addr = listener.getsockname()
        idle = [_connect(addr) for _ in range(40)]
        time.sleep(0.3)
        assert gate.pending <= 8 and gate.dropped >= 32
        s = _client(addr)                                  # a real rank still gets through
        s.close()
        for c in idle:
            c.close()
    finally:
        gate.close()
        listener.close()
        for s, _ in got:
            s.close()


@pytest.mark.parametrize("junk", [b"", b"GET / HTTP/1.1\r\n\r\n", os.urandom(3000),
                                  b"HLK1" + b"\xff" * 10, b"HLK1" + bytes(10) + os.urandom(300)])
def test_gate_refuses_garbage(junk):
    listener, gate, got = _gate()
    try:
        addr = listener.getsockname()
        with _connect(addr) as c:
            c.settimeout(3)
            try:                                   # the gate may drop us before we finish
                c.sendall(junk)
                c.shutdown(socket.SHUT_WR)
                while c.recv(4096):
                    pass
            except OSError:
                pass
        with pytest.raises(AuthenticationError):
            _client(addr, secret=b"x" * 32)
        _client(addr).close()
        _wait_for(lambda: got)
        assert len(got) == 1 and gate.refused >= 1
    finally:
        gate.close()
        listener.close()
        for s, _ in got:
            s.close()


# ------------------------------------------------------------------------------------------------
# The store
# ------------------------------------------------------------------------------------------------
def test_store_unauthenticated_gigabyte_costs_no_memory_and_no_time():
    with StoreServer("127.0.0.1", 0, SECRET) as srv, StoreClient(srv.address, SECRET, 0, 10) as c:
        c.set("k", b"v")
        before = _rss()
        # a hello claiming 4 frames of 1 GiB, then streaming: dropped after the counts
        with _connect(srv.address) as s:
            s.sendall(struct.pack(">IIIII", 4, 1 << 30, 1 << 30, 1 << 30, 1 << 30))
            sent = 0
            try:
                chunk = b"\0" * MiB
                while sent < 256 * MiB:
                    s.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass
        t0 = time.monotonic()
        assert c.get("k") == b"v"
        assert time.monotonic() - t0 < 0.5
        assert _rss() - before < 16 * MiB
        assert sent < 256 * MiB                            # the server hung up early


def test_store_survives_many_idle_connections():
    with StoreServer("127.0.0.1", 0, SECRET) as srv:
        idle = [_connect(srv.address) for _ in range(300)]
        try:
            t0 = time.monotonic()
            with StoreClient(srv.address, SECRET, 0, 10) as c:
                c.set("a", b"1")
                assert c.get("a") == b"1"
            assert time.monotonic() - t0 < 2.0
            assert srv.gate.pending <= 64 and srv.gate.dropped >= 200
        finally:
            for s in idle:
                s.close()


def test_authenticated_store_message_over_the_caps_drops_the_sender(monkeypatch):
    from hetccl.bootstrap import store as store_mod

    monkeypatch.setattr(store_mod, "MAX_MESSAGE", 1024)
    with StoreServer("127.0.0.1", 0, SECRET) as srv:
        c = StoreClient(srv.address, SECRET, 0, 5)
        with pytest.raises((PeerLostError, HetcclTimeout)):
            c.set("big", b"x" * 4096)
        c.close()
        with StoreClient(srv.address, SECRET, 1, 5) as d:   # the server serves on
            d.set("small", b"ok")


def _hostile_server(reply: bytes):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)

    def serve():
        try:
            s, _ = ls.accept()
            s.recv(4096)
            s.sendall(reply)
            time.sleep(1.0)
            s.close()
        except OSError:
            pass
    threading.Thread(target=serve, daemon=True).start()
    return ls


@pytest.mark.parametrize("reply", [struct.pack(">II", 1, 0xFFFFFFFF), b"\xff" * 64,
                                   encode([b"HI1", b"n" * 32, b"m" * 32]), b""])
def test_store_client_against_a_hostile_server(reply):
    ls = _hostile_server(reply)
    with ls:
        before = _rss()
        with pytest.raises((AuthenticationError, HetcclTimeout, PeerLostError)):
            StoreClient(ls.getsockname(), SECRET, 0, timeout=2)
        assert _rss() - before < 16 * MiB


# ------------------------------------------------------------------------------------------------
# Point-to-point
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def pair():
    chans = [P2PChannel(r, 3, SECRET, "t", 5.0, host="127.0.0.1") for r in range(3)]
    for c in chans:
        for d in chans:
            c.peers[d.rank] = ("127.0.0.1", d.port)
    yield chans
    for c in chans:
        c.close()


def test_p2p_roundtrip_and_any_source(pair):
    a, b, c = pair
    a.send(memoryview(np.arange(10, dtype=np.int64)).cast("B"), 1, 7)
    c.send(memoryview(np.full(10, 5, dtype=np.int64)).cast("B"), 1, 7)
    got = np.zeros(10, np.int64)
    assert b.recv(memoryview(got).cast("B"), 0, 7, 5) == 0 and got[9] == 9
    assert b.recv(memoryview(got).cast("B"), ANY_SOURCE, 7, 5) == 2 and got[0] == 5


def test_p2p_silent_stranger_does_not_delay_a_receive(pair):
    a, b, _ = pair
    idle = [_connect(("127.0.0.1", b.port)) for _ in range(100)]
    try:
        got = np.zeros(4, np.int64)
        t0 = time.monotonic()
        a.send(memoryview(np.ones(4, np.int64)).cast("B"), 1, 1)
        b.recv(memoryview(got).cast("B"), 0, 1, 5)
        assert time.monotonic() - t0 < 0.5 and got.sum() == 4
    finally:
        for s in idle:
            s.close()


def test_p2p_peer_loss_wakes_every_waiting_receive(pair):
    a, b, c = pair
    a.send(memoryview(b"hello").cast("B"), 1, 0)          # a connects to b
    buf = bytearray(5)
    assert b.recv(memoryview(buf), 0, 0, 5) == 0
    errors = {}

    def waiter(name, src):
        try:
            b.recv(memoryview(bytearray(5)), src, 3, 30)
        except Exception as e:  # noqa: BLE001
            errors[name] = e
    threads = [threading.Thread(target=waiter, args=(n, s)) for n, s in
               (("direct", 0), ("any", ANY_SOURCE))]
    for t in threads:
        t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    a.close()                                              # rank 0 goes away
    for t in threads:
        t.join(5)
    assert time.monotonic() - t0 < 2.0
    assert isinstance(errors.get("direct"), PeerLostError), errors
    assert isinstance(errors.get("any"), PeerLostError), errors
    with pytest.raises(PeerLostError):                    # and later receives too
        b.recv(memoryview(bytearray(5)), 0, 9, 5)


def _authenticated_raw(dst: P2PChannel, my_rank: int) -> socket.socket:
    s = _connect(("127.0.0.1", dst.port))
    auth.client_handshake(s, SECRET, my_rank, dst.rank, dst.comm_id, 5)
    return s


def test_p2p_garbage_from_an_authenticated_peer_is_a_lost_peer(pair):
    _, b, _ = pair
    s = _authenticated_raw(b, 0)
    try:
        s.sendall(b"\xde\xad" * 20)
        with pytest.raises(PeerLostError, match="malformed"):
            b.recv(memoryview(bytearray(8)), 0, 0, 5)
    finally:
        s.close()


def test_p2p_claimed_size_is_never_allocated(pair):
    _, b, _ = pair
    s = _authenticated_raw(b, 0)
    try:
        before = _rss()
        errors = []

        def waiter():
            try:
                b.recv(memoryview(bytearray(8)), 0, 5, 5)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.1)
        s.sendall(_FRAME.pack(_MAGIC, 5, 1 << 40) + b"\0" * (4 * MiB))   # claims 1 TiB
        time.sleep(0.3)
        assert _rss() - before < 16 * MiB
        s.close()                                          # cut short: the receive must end
        t.join(5)
        assert errors and isinstance(errors[0], (InvalidUsage, PeerLostError)), errors
    finally:
        s.close()


def test_p2p_size_mismatch_is_reported(pair):
    a, b, _ = pair
    a.send(memoryview(bytearray(16)), 1, 2)
    with pytest.raises(InvalidUsage, match="sizes must match"):
        b.recv(memoryview(bytearray(8)), 0, 2, 5)


def test_p2p_works_past_fd_1024():
    hold = [socket.socket() for _ in range(1100)]     # push the channel's fds beyond select()'s
    try:
        chans = [P2PChannel(r, 2, SECRET, "fd", 5.0, host="127.0.0.1") for r in range(2)]
        try:
            for c in chans:
                for d in chans:
                    c.peers[d.rank] = ("127.0.0.1", d.port)
            assert chans[1].listener.fileno() > 1024
            chans[0].send(memoryview(b"far").cast("B"), 1, 0)
            buf = bytearray(3)
            chans[1].recv(memoryview(buf), 0, 0, 5)
            assert buf == b"far"
        finally:
            for c in chans:
                c.close()
    finally:
        for s in hold:
            s.close()


def test_p2p_send_to_a_dead_rank_raises(pair):
    a, _, c = pair
    c.close()
    with pytest.raises(PeerLostError):
        a.send(memoryview(b"x").cast("B"), 2, 0)


# ------------------------------------------------------------------------------------------------
# Shared memory
# ------------------------------------------------------------------------------------------------
def test_short_segment_is_refused_not_mapped():
    from hetccl._native.segment import ShmSegment

    name = f"/{reap.PAIR_PREFIX}{os.getpid()}-test-short"
    fd = os.open(f"/dev/shm{name}", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, 4096)
        with pytest.raises(TransportError, match="refusing to map"):
            ShmSegment(name, 64 << 20, False)               # a peer claiming 64 MiB
    finally:
        os.close(fd)
        os.unlink(f"/dev/shm{name}")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_reaper_removes_only_dead_owners_segments(tmp_path):
    dead, me = _dead_pid(), os.getpid()
    old = time.time() - 3600
    names = {"dead_old": f"{reap.PAIR_PREFIX}{dead}-job-w-0-1",
             "dead_sym": f"{reap.SYM_PREFIX}{dead}-3",
             "dead_young": f"{reap.SYM_PREFIX}{dead}-4",
             "alive": f"{reap.PAIR_PREFIX}{me}-job-w-0-1",
             "not_ours": f"other-{dead}-x"}
    for key, name in names.items():
        (tmp_path / name).write_bytes(b"x")
        if key not in ("dead_young", "alive"):
            os.utime(tmp_path / name, (old, old))
    removed = {os.path.basename(p) for p in reap.reap_dead(min_age=60, shm_dir=str(tmp_path))}
    assert removed == {names["dead_old"], names["dead_sym"]}
    # a live owner's segment stays even at age 0; the young dead one goes then
    removed = {os.path.basename(p) for p in reap.reap_dead(min_age=0, shm_dir=str(tmp_path))}
    assert removed == {names["dead_young"]}
    (tmp_path / names["dead_young"]).write_bytes(b"x")
    assert {os.path.basename(p) for p in reap.reap_pids([dead], shm_dir=str(tmp_path))} == \
        {names["dead_young"]}
    assert sorted(os.listdir(tmp_path)) == sorted([names["alive"], names["not_ours"]])


# ------------------------------------------------------------------------------------------------
# Secrets
# ------------------------------------------------------------------------------------------------
def test_secret_file_must_be_private(tmp_path):
    p = tmp_path / "s"
    p.write_text("cd" * 32 + "\n")
    p.chmod(0o600)
    assert envmod.read_secret_file(str(p)) == bytes.fromhex("cd" * 32)
    info = envmod.detect(env={"HETCCL_SECRET_FILE": str(p), "HETCCL_INSECURE": "1"})
    assert info.secret == bytes.fromhex("cd" * 32) and info.insecure
    p.chmod(0o640)
    with pytest.raises(InvalidUsage, match="chmod 600"):
        envmod.read_secret_file(str(p))
    p.chmod(0o600)
    p.write_text("")
    with pytest.raises(InvalidUsage, match="empty"):
        envmod.read_secret_file(str(p))
    link = tmp_path / "link"
    link.symlink_to(p)
    with pytest.raises(InvalidUsage, match="cannot open"):
        envmod.read_secret_file(str(link))


_LAUNCHER_ENVS = {
    "torch-env": {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                  "MASTER_ADDR": "192.0.2.10", "MASTER_PORT": "29500"},
    "slurm": {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0",
              "SLURM_NTASKS_PER_NODE": "1", "SLURM_NODEID": "1",
              "HETCCL_STORE": "192.0.2.10:29500"},
    "openmpi": {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2",
                "HETCCL_STORE": "192.0.2.10:29500"},
    "mpich": {"PMI_RANK": "1", "PMI_SIZE": "2", "HETCCL_STORE": "192.0.2.10:29500"},
    "explicit": {"HETCCL_RANK": "1", "HETCCL_SIZE": "2", "HETCCL_STORE": "192.0.2.10:29500"},
}


@pytest.mark.parametrize("name", sorted(_LAUNCHER_ENVS))
def test_no_launcher_path_runs_unauthenticated_off_loopback(name, monkeypatch, caplog):
    # 192.0.2.10 (TEST-NET-1) is never contacted: the refusal comes before any socket
    monkeypatch.setattr(rendezvous, "_secret_via_mpi", lambda info: None)   # as without mpi4py
    monkeypatch.setattr(rendezvous, "StoreClient", None)                    # would fail loudly
    monkeypatch.setattr(rendezvous, "StoreServer", None)
    info = envmod.detect(env=_LAUNCHER_ENVS[name])
    assert info.secret is None and not info.insecure
    with pytest.raises(InvalidUsage) as e:
        rendezvous.connect_store(info, timeout=1)
    assert "refusing to start an unauthenticated job" in str(e.value)
    assert "HETCCL_SECRET_FILE" in str(e.value) and "HETCCL_INSECURE=1" in str(e.value)
    # the explicit opt-out passes, with a warning
    rendezvous.require_secret(info.replace(insecure=True), "192.0.2.10")
    assert any("NOT authenticated" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------------
# The data listener of a communicator's set-up (transports/mesh.py) under fire
# ------------------------------------------------------------------------------------------------
def test_mesh_setup_gets_through_silent_and_garbage_connections():
    import json

    from hetccl._native.engine import Engine
    from hetccl.transports.mesh import connect_mesh

    out, errors = {}, []
    with StoreServer("127.0.0.1", 0, SECRET) as srv:
        stores = [StoreClient(srv.address, SECRET, r, 20) for r in range(3)]

        def rank(r):
            try:
                if r == 1:                           # arrives once the listener is under fire
                    stores[1].wait("attacked", 10)
                eng = Engine(r, 2)
                cards, matrix, socks = connect_mesh(eng, stores[r], r, 2, SECRET, "job", "m", 10.0,
                                                    "tcp")
                out[r] = sorted(socks)
                for s in socks.values():
                    s.close()
                eng.close()
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
        for t in threads:
            t.start()
        card = json.loads(stores[2].get("m/card/0", 10))
        addr = (card["addr"], card["port"])
        idle = [_connect(addr) for _ in range(100)]
        for junk in (b"\0" * 64, b"HLK1" + os.urandom(200), b"GET / HTTP/1.0\r\n\r\n"):
            with _connect(addr) as c:
                c.sendall(junk)
        t0 = time.monotonic()
        stores[2].set("attacked", b"1")
        for t in threads:
            t.join(15)
        took = time.monotonic() - t0
        for s in idle:
            s.close()
        for s in stores:
            s.close()
    assert not errors, errors
    assert out == {0: [1], 1: [0]} and took < 5.0, (out, took)
