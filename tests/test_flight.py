"""Flight records and hang reports (hetccl/flight/, _native/flight.pyx).

Without processes: the native ring wraps and keeps the right entries; records from the network
are checked field by field; the report classes and compresses ranks. On real processes: a rank
that never calls and a stopped one are named by the watchdog's log and by the HetcclTimeout's
message; SIGUSR1 dumps live processes (one of them inside a collective, which goes on unharmed)
and ``hetccl doctor --flight`` reads the files back and names the laggard; a program's own
SIGUSR1 handler is left alone; garbage flight requests over the control plane get refusals and
leave the connection up; the latency path records every call.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np
import pytest

from tests.launcher import run_command, run_ranks, start_command, stop_command


# ------------------------------------------------------------------------------------------------
# without processes
# ------------------------------------------------------------------------------------------------
def test_the_ring_wraps_and_keeps_the_newest_entries():
    from hetccl._native.flight import Flight
    f = Flight(5)
    assert f.capacity == 8 and f.seq == 0 and f.snapshot() == [] and f.oldest_open() is None
    for i in range(1, 21):
        f.note("allreduce", 8 * i, 10, 0)                  # float32, SUM
        s = f.begin("allreduce", "ring", queued=i == 20)
        assert s == i
        if i % 3 == 0:
            f.failed(s, TimeoutError("x"))
        elif i < 19:
            f.finished(s)
    snap = f.snapshot()
    assert [e[0] for e in snap] == list(range(13, 21)), snap
    by = {e[0]: e for e in snap}
    assert by[15][2] == "failed" and by[15][9] == "TimeoutError" and by[15][12] is not None
    assert by[14][2] == "done" and by[14][3] == 8 * 14 and by[14][4] == 14 * 2 and by[14][5] == 10
    assert by[19][2] == "running" and by[20][2] == "queued" and by[20][11] is None
    assert f.oldest_open()[0] == 19
    f.started(20)
    f.finished(19)
    f.finished(20)
    assert f.oldest_open() is None and f.snapshot(2)[-1][2] == "done"
    assert [e[0] for e in f.snapshot(3)] == [18, 19, 20]
    f.finished(3)                                          # left the ring long ago: no effect
    assert [e[0] for e in f.snapshot()] == list(range(13, 21))
    f.note("broadcast", 64, 10, -1, 3)                     # a note of another collective is stale
    s = f.begin("allgather")
    assert f.snapshot(1)[0][1:9] == ("allgather", "running", 0, 0, None, None, None, "")


def test_records_from_the_network_are_checked_field_by_field():
    from hetccl.flight.exchange import MAX_ENTRIES, check_entries
    from hetccl.recovery.wire import ProtocolError
    good = {"seq": 3, "coll": "allreduce", "state": "done", "bytes": 8, "count": 2, "dtype": "float32",
            "op": "SUM", "root": None, "algo": "ring", "error": "", "issued_ago": 1.5,
            "started_ago": 1.5, "ended_ago": 1.2}
    assert check_entries([good, dict(good, seq=4, ended_ago=None, state="running")])[1]["state"] == "running"
    assert check_entries([dict(good, extra="ignored")]) == [good]
    bad = [None, "x", {}, [good] * (MAX_ENTRIES + 1), [good, good], [dict(good, seq=0)],
           [dict(good, seq=True)], [dict(good, state="sleeping")], [dict(good, bytes=-1)],
           [dict(good, coll="x" * 65)], [dict(good, algo=3)], [dict(good, issued_ago=None)],
           [dict(good, ended_ago=float("nan"))], [dict(good, started_ago="1")], [dict(good, root=-2)],
           [dict(good, dtype=["float32"])], ["entry"]]
    for v in bad:
        with pytest.raises(ProtocolError):
            check_entries(v)


def _e(seq, coll="allreduce", state="done", **kw):
    return dict({"seq": seq, "coll": coll, "state": state, "bytes": 8, "count": 2, "dtype": "float32",
                 "op": "SUM", "root": None, "algo": "ring", "error": "", "issued_ago": 9.0,
                 "started_ago": 9.0, "ended_ago": None if state in ("running", "queued") else 8.0}, **kw)


def test_the_report_names_who_is_behind_and_compresses_the_rest():
    from hetccl.flight.report import hang_report, ranges
    assert ranges([7, 0, 1, 2, 5, 8]) == "0-2, 5, 7-8" and ranges([]) == ""
    mine = _e(42, state="running", started_ago=60.0)
    answers = {1: {"kind": "record", "entries": [_e(40), _e(41, ended_ago=58.0)]},
               2: {"kind": "silent", "waited": 1.5},
               3: {"kind": "failed", "why": "its process exited"},
               4: {"kind": "record", "entries": [_e(41), _e(42, coll="broadcast", state="running")]},
               5: {"kind": "refused", "why": "this rank closed the communicator"},
               6: {"kind": "malformed", "why": "field 'seq'"},
               7: {"kind": "record", "entries": [_e(41), _e(42), _e(43, state="running")]},
               8: {"kind": "record", "entries": [_e(41, state="failed", error="PeerLostError")]},
               9: {"kind": "record", "entries": []}}
    answers.update({r: {"kind": "record", "entries": [_e(41), _e(42, state="running")]} for r in range(10, 40)})
    rep = hang_report(0, 40, mine, answers)
    t = rep.text
    assert t.startswith("hang report: allreduce #42 (8 B, 2 x float32, SUM, ring) on rank 0 of 40, "
                        "waiting for 60.0 s:"), t
    assert "rank 1 finished allreduce #41 58.0 s ago and has not entered #42" in t, t
    assert "rank 2 did not answer within 1.5 s: stopped, or its host is gone" in t, t
    assert "rank 3 failed: its process exited" in t, t
    assert "rank 4 called broadcast #42" in t and "the ranks' calls differ" in t, t
    assert "rank 5 gave no record: this rank closed the communicator" in t, t
    assert "rank 6 answered with a malformed flight record" in t, t
    assert "rank 7 completed allreduce #42" in t, t
    assert "rank 8's allreduce #41 failed (PeerLostError)" in t, t
    assert "rank 9 has made no collective call" in t, t
    assert "ranks 10-39 are in allreduce #42 too" in t, t
    assert rep.suspects == [1, 2, 3, 4, 5, 6, 8, 9], rep.suspects
    many = {r: {"kind": "silent", "waited": 1.5} for r in range(1, 30)}
    lines = hang_report(0, 30, mine, many).lines
    assert len(lines) == 9 and lines[-1] == "... and 21 more like that: ranks 9-29", lines


def _dump_of(rank, calls, stuck, when):
    """A dump file's record of one rank of a 4-rank communicator that made ``calls`` calls, the
    last one still running if ``stuck`` (built from a real native ring)."""
    from hetccl._native.flight import Flight
    from hetccl.flight import record
    f = Flight()
    for i in range(calls):
        f.note("allreduce", 4096, 10, 0)
        s = f.begin("allreduce", "ring")
        if not (stuck and i == calls - 1):
            f.finished(s)
    c = {"key": "k" * 32, "id": "w", "job": "job1", "rank": rank, "size": 4, "host": "h", "seq": f.seq,
         "capacity": f.capacity, "parent_ranks": None, "entries": record.entries(f)}
    return {"format": "hetccl-flight", "version": 1, "host": "h", "pid": 100 + rank, "time": when,
            "reason": "signal", "communicators": [c]}


def test_doctor_reads_full_rings_side_by_side(tmp_path, capsys):
    from hetccl.flight.doctor import main
    now = time.time()
    for rank, calls, stuck in ((0, 300, True), (1, 299, False), (2, 300, True)):   # no file of rank 3
        (tmp_path / f"r{rank}.json").write_text(json.dumps(_dump_of(rank, calls, stuck, now - rank * 0.1)))
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 files" in out and "records of ranks 0-2; none from ranks 3" in out, out
    assert "0     h pid 100                   300     allreduce #300 (4.0 KiB, 1024 x float32, SUM, ring) running" in out, out
    assert "#300  allreduce RUNNING" in out and "#293" in out and "#292" not in out, out
    assert "stuck: allreduce #300; suspects: ranks 1, 3" in out, out
    assert "rank 1 finished allreduce #299" in out and "has not entered #300" in out, out
    assert "rank 3 gave no record: no dump file for this rank" in out and "ranks 0, 2 are in allreduce #300\n" in out, out
    assert main([]) == 2


def test_the_watchdog_setting():
    from hetccl import config
    from hetccl.errors import InvalidUsage
    old = os.environ.get("HETCCL_WATCHDOG_S")
    try:
        os.environ.pop("HETCCL_WATCHDOG_S", None)
        assert config.watchdog() == 300.0
        os.environ["HETCCL_WATCHDOG_S"] = "0"
        assert config.watchdog() == 0.0
        for bad in ("-1", "soon"):
            os.environ["HETCCL_WATCHDOG_S"] = bad
            with pytest.raises(InvalidUsage, match="HETCCL_WATCHDOG_S"):
                config.watchdog()
    finally:
        if old is None:
            os.environ.pop("HETCCL_WATCHDOG_S", None)
        else:
            os.environ["HETCCL_WATCHDOG_S"] = old


# ------------------------------------------------------------------------------------------------
# a rank that never calls, a stopped rank: the watchdog's log and the timeout's message
# ------------------------------------------------------------------------------------------------
def _stalls(rank, size):
    import logging

    import hetccl
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())
    logging.getLogger("hetccl").addHandler(Keep())
    comm = hetccl.init(timeout=5)
    x = np.ones(2, np.float32)
    for _ in range(4):                                     # #1-#4; the latency path from #2
        comm.allreduce(x)
    out = {"warm": float(x[0])}
    if rank == 1:                                          # never calls #5 in time
        time.sleep(9)
    elif rank == 2:                                        # stopped; rank 0 lets it go on later
        os.kill(os.getpid(), signal.SIGSTOP)
    t = time.monotonic()
    try:
        comm.allreduce(x)
        out["error"] = None
    except hetccl.HetcclError as e:
        out["error"], out["message"] = type(e).__name__, str(e)
        out["report"] = getattr(e, "flight_report", None) is not None
    out["took"] = time.monotonic() - t
    if rank == 0:
        os.kill(comm._cards[2]["pid"], signal.SIGCONT)
    out["record"] = comm.flight_record(2)
    out["log"] = seen
    comm.abort()
    return out


def test_a_rank_that_never_calls_and_a_stopped_one_are_named():
    res = run_ranks(_stalls, 3, timeout=90, env={"HETCCL_WATCHDOG_S": "1"})
    r0 = res[0]
    assert r0["warm"] == 81.0
    assert r0["error"] == "HetcclTimeout" and r0["report"], r0
    msg = r0["message"]
    assert "timed out after 5 s" in msg and "hang report: allreduce #5" in msg, msg
    assert "rank 1 finished allreduce #4" in msg and "has not entered #5" in msg, msg
    assert "rank 2 did not answer within" in msg and "stopped, or its host is gone" in msg, msg
    assert r0["took"] < 5 + 1.5 + 5, r0["took"]            # the report is gathered within its bound
    wd = [m for m in r0["log"] if "HETCCL_WATCHDOG_S=1" in m]
    assert len(wd) == 1, r0["log"]                         # once per stuck call
    assert "rank 1 finished allreduce #4" in wd[0] and "rank 2 did not answer" in wd[0], wd
    last = r0["record"][-1]
    assert (last["seq"], last["state"], last["error"], last["bytes"]) == (5, "failed", "HetcclTimeout", 8), last


# ------------------------------------------------------------------------------------------------
# SIGUSR1 dumps from live processes; hetccl doctor --flight reads them back
# ------------------------------------------------------------------------------------------------
_DUMPED_JOB = r"""
import os, signal, sys, time
import numpy as np
import hetccl
from hetccl._native.flight import dump_signal_installed
from hetccl.flight import exchange
where = os.environ["HETCCL_FLIGHT_DIR"]
comm = hetccl.init(timeout=60)
x = np.ones(2, np.float32)
for _ in range(3):
    comm.allreduce(x)
comm.barrier()                                          # 4
if comm.rank == 1:                                      # once rank 0 is inside #5: ready, and wait
    plane, deadline = comm._ft.plane, time.monotonic() + 30
    while True:
        with plane.lock:
            q = exchange.start(plane, comm._ft, 1, 2.0)
        exchange.wait(plane, q)
        e = (q.answers[0].get("entries") or [{}])[-1]
        if e.get("seq") == 5 and e.get("state") == "running":
            break
        assert time.monotonic() < deadline, q.answers
        time.sleep(0.05)
    print("ready", flush=True)
    while len([f for f in os.listdir(where) if f.endswith(".json")]) < comm.size if os.path.isdir(where) else True:
        assert time.monotonic() < deadline, "no dumps"
        time.sleep(0.05)
comm.allreduce(x)                                       # 5: unharmed by the signal
print("result", float(x[0]), dump_signal_installed(signal.SIGUSR1), flush=True)
comm.close()
"""


def _dumped_job(tmp_path):
    """Run the job above under ``hetccl run``; SIGUSR1 to the launcher once rank 1 is ready.
    Returns the launcher's stdout."""
    import select
    script = tmp_path / "job.py"
    script.write_text(_DUMPED_JOB)
    where = tmp_path / "dumps"
    p = start_command([sys.executable, "-m", "hetccl", "run", "-n", "2", "--", sys.executable, str(script)],
                      env={"HETCCL_FLIGHT_DIR": str(where)})
    try:
        seen, deadline = "", time.monotonic() + 60
        while "ready" not in seen:
            left = deadline - time.monotonic()
            assert left > 0 and p.poll() is None, (seen, p.poll())
            if select.select([p.stdout], [], [], left)[0]:
                seen += p.stdout.readline()
        os.kill(p.pid, signal.SIGUSR1)                  # the launcher passes it on to every rank
        out, err = p.communicate(timeout=60)
    finally:
        stop_command(p)
    assert p.returncode == 0, seen + out + err
    return seen + out, where


def _own_handler(rank, size):
    import hetccl
    from hetccl._native.flight import dump_signal_installed
    got = []
    signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
    comm = hetccl.init(timeout=30)
    comm.barrier()
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.2)
    ours = dump_signal_installed(signal.SIGUSR1)
    comm.close()
    return {"got": len(got), "ours": ours}


def test_sigusr1_dumps_live_processes_and_doctor_names_the_laggard(tmp_path):
    out, tmp_path = _dumped_job(tmp_path)
    assert out.count("result 16.0 True") == 2, out
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 2, files
    recs = [json.loads(f.read_text()) for f in files]
    assert {r["communicators"][0]["rank"] for r in recs} == {0, 1}
    assert all(r["format"] == "hetccl-flight" and r["reason"] == "signal" for r in recs)
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in files)
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    p = run_command([sys.executable, "-m", "hetccl", "doctor", "--flight", str(tmp_path)], timeout=60)
    out = p.stdout
    assert p.returncode == 0, p.stdout + p.stderr
    assert "garbage.json: not a hetccl flight record" in out and "other.json: not a hetccl" in out, out
    assert "2 ranks; records of ranks 0-1" in out, out
    assert "stuck: allreduce #5; suspects: rank 1" in out, out
    assert "rank 1 finished barrier #4" in out and "has not entered #5" in out, out
    assert "allreduce RUNNING" in out, out                 # rank 0 was inside #5 at its dump
    rank0 = next(f for f in files if json.loads(f.read_text())["communicators"][0]["rank"] == 0)
    p = run_command([sys.executable, "-m", "hetccl", "doctor", "--flight", str(rank0)], timeout=60)
    assert p.returncode == 0 and "records of ranks 0; none from ranks 1" in p.stdout, p.stdout
    assert "rank 1 gave no record: no dump file for this rank" in p.stdout, p.stdout
    p = run_command([sys.executable, "-m", "hetccl", "doctor", "--flight", str(tmp_path / "nothing")],
                    timeout=60)
    assert p.returncode == 1, p.stdout


def test_a_programs_own_sigusr1_handler_is_left_alone():
    res = run_ranks(_own_handler, 1, timeout=60)
    assert res[0] == {"got": 1, "ours": False}, res


# ------------------------------------------------------------------------------------------------
# garbage flight requests over the control plane
# ------------------------------------------------------------------------------------------------
def _garbage_requests(rank, size):
    import logging
    import socket

    import hetccl
    from hetccl.bootstrap.auth import client_handshake
    from hetccl.flight.exchange import check_entries
    from hetccl.recovery.plane import _MAGIC, _PREAMBLE, fingerprint
    from hetccl.recovery.wire import Reader, frame
    logging.getLogger("hetccl").setLevel(logging.ERROR)        # the refusals log warnings
    comm = hetccl.init(timeout=30)
    x = np.ones(2, np.float32)
    comm.allreduce(x)
    comm.barrier()
    out = {}
    if rank == 1:
        card, key = comm._cards[0], comm._ft.key
        s = socket.create_connection((card["ctl_addr"], card["ctl_port"]))
        s.sendall(_PREAMBLE.pack(_MAGIC, fingerprint(comm._info.secret)))
        client_handshake(s, comm._info.secret, 0, 0, b"hetccl-control", 5)
        s.sendall(frame({"t": "hi", "id": "f" * 32}))        # a process of the job, not a member
        ok = {"t": "flt?", "c": key, "q": 7, "r": 0, "n": 4}
        garbage = [{"t": "flt?"}, dict(ok, q="7"), dict(ok, q=-1), dict(ok, q=1 << 60), dict(ok, n=0),
                   dict(ok, n=10 ** 9), dict(ok, n=None), dict(ok, c=12345), dict(ok, c="k" * 100),
                   dict(ok, r=-3), dict(ok, r=1), dict(ok, c="no-such-key"), dict(ok, q=True)]
        for g in garbage:
            s.sendall(frame(g))
        s.sendall(frame({"t": "flt", "c": key, "q": 12345, "r": 0, "entries": "x"}))   # nobody asked
        s.sendall(frame({"t": "flt!", "q": None}))
        s.sendall(frame(ok))
        s.settimeout(10)
        reader, got = Reader(), []
        while len(got) < len(garbage) + 1:
            data = s.recv(65536)
            assert data, got
            got += [m for m in reader.feed(data) if m["t"] != "ping"]
        s.close()
        out["refusals"] = [m.get("why") for m in got[:-1] if m["t"] == "flt!"]
        out["types"] = [m["t"] for m in got]
        out["record"] = check_entries(got[-1]["entries"])
    comm.barrier()
    comm.allreduce(x)                                       # the plane and the links are fine
    out["x"], out["failed"] = float(x[0]), comm.failed_ranks()
    comm.close()
    return out


def test_garbage_flight_requests_get_a_clean_refusal():
    res = run_ranks(_garbage_requests, 2, timeout=60)
    assert all(r["x"] == 4.0 and r["failed"] == [] for r in res), res
    r1 = res[1]
    assert r1["types"] == ["flt!"] * 13 + ["flt"], r1["types"]
    why = r1["refusals"]
    assert sum("malformed flight request" in w for w in why) == 11, why
    assert "this process is rank 0 of the communicator, not 1" in why, why
    assert "no such communicator in this process" in why, why
    rec = r1["record"]
    assert [e["seq"] for e in rec][:2] == [1, 2] and rec[0]["coll"] == "allreduce", rec    # #3: its barrier


# ------------------------------------------------------------------------------------------------
# the latency path records
# ------------------------------------------------------------------------------------------------
def _latency_path(rank, size):
    import hetccl
    comm = hetccl.init(timeout=60)
    x = np.ones(2, np.float32)
    comm.allreduce(x)                                       # teaches the latency path
    routes = []
    comm._run = lambda *a, **k: routes.append(a[0])         # the Python route would show here
    before = comm._flight.seq
    for _ in range(1000):
        comm.allreduce(x)
    recs = comm.flight_record()
    del comm._run
    w = [comm.allreduce(np.ones(3, np.float64), async_op=True) for _ in range(3)]
    for work in w:
        work.wait()
    tail = comm.flight_record(3)
    comm.close()
    return {"routes": routes, "added": comm._flight.seq - before, "recs": recs, "tail": tail,
            "algo": comm.last_algorithm}


def test_the_latency_path_records_every_call():
    res = run_ranks(_latency_path, 2, timeout=60)
    for r in res:
        assert r["routes"] == [], r["routes"]
        assert r["added"] == 1003
        recs = r["recs"]
        assert len(recs) == 256 and [e["seq"] for e in recs] == list(range(746, 1002))
        assert all(e["state"] == "done" and e["coll"] == "allreduce" and e["bytes"] == 8 and e["count"] == 2
                   and e["dtype"] == "float32" and e["op"] == "SUM" and e["algo"] == r["algo"]
                   and e["error"] == "" for e in recs), recs[-1]
        assert [(e["seq"], e["state"], e["bytes"], e["dtype"]) for e in r["tail"]] == \
            [(s, "done", 24, "float64") for s in (1002, 1003, 1004)], r["tail"]
