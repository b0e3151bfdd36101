"""Unauthenticated traffic against a running job: how much memory and time does it cost the ranks?

    python bench/hostile.py --ranks 4                 # the benchmark (bench/RESULTS.md)

Starts N ranks under ``hetccl run``; each rank loops small allreduces (1024 float32) and a
point-to-point ring round (4 KiB, every fourth from ANY_SOURCE), timing every call, while a thread
samples its resident memory every 50 ms. This process is the attacker, on loopback, without the
secret. Phases (``--phase`` seconds each):

1. baseline: nothing;
2. gib-store: 1 GiB to the store port, once as a framed hello that claims 1 GiB frames and once as
   a raw stream of zeros;
3. gib-p2p: 1 GiB of zeros to every rank's point-to-point port (concurrently);
4. idle: 1,000 idle connections to the store port and 1,000 to every rank's point-to-point port,
   held open; meanwhile every rank makes a new communicator (``comm.dup()``: a store round and a
   data listener with its handshake gate under fire), timed;
5. after: the connections closed again.

Prints per rank and phase: RSS above the baseline median (max), the slowest call, calls made;
bytes each target took before it hung up; how many connections were refused or dropped.
Targets (issue): no rank's RSS up by > 16 MiB, no call delayed by > 100 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.sysconf("SC_PAGE_SIZE")
GiB = 1 << 30


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


# ------------------------------------------------------------------------------------------------
# The ranks
# ------------------------------------------------------------------------------------------------
def worker(d: str) -> int:
    import hetccl
    from hetccl.p2p import ANY_SOURCE

    comm = hetccl.init(timeout=120)
    rank, size = comm.rank, comm.size
    host, port = os.environ["HETCCL_STORE"].rsplit(":", 1)
    with open(os.path.join(d, f"rank{rank}.json.tmp"), "w") as f:
        json.dump({"rank": rank, "store": [host, int(port)], "p2p": comm._p2p.port,
                   "pid": os.getpid()}, f)
    os.replace(os.path.join(d, f"rank{rank}.json.tmp"), os.path.join(d, f"rank{rank}.json"))
    rss, calls, dups = [], [], []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            rss.append((time.time(), _rss()))
            time.sleep(0.05)
    threading.Thread(target=sample, daemon=True).start()
    x = np.ones(1024, np.float32)
    msg, got = np.full(1024, rank, np.float32), np.empty(1024, np.float32)
    i = 0
    dup_done = False
    while True:
        flag = np.array([os.path.exists(os.path.join(d, "stop"))], np.int32)
        comm.allreduce(flag)                     # every rank stops at the same call
        if flag[0]:
            break
        if not dup_done and os.path.exists(os.path.join(d, "dup")):
            t = time.time()
            comm.dup().close()
            dups.append((t, time.time() - t))
            dup_done = True
        t = time.time()
        comm.allreduce(x)
        t1 = time.time()
        comm.send(msg, (rank + 1) % size, tag=1)
        src = (rank - 1) % size
        comm.recv(got, src if i % 4 else ANY_SOURCE, tag=1)
        t2 = time.time()
        if got[0] != src or x[0] != size:
            print(f"rank {rank}: WRONG result at call {i}", flush=True)
        x[:] = 1
        calls.append((t, t1 - t, t2 - t1))
        i += 1
        time.sleep(0.005)
    stop.set()
    with open(os.path.join(d, f"result{rank}.json"), "w") as f:
        json.dump({"rss": rss, "calls": calls, "dups": dups}, f)
    comm.close()
    return 0


# ------------------------------------------------------------------------------------------------
# The attacker
# ------------------------------------------------------------------------------------------------
def _blast(addr, head: bytes, total: int) -> int:
    """Send head then zeros up to ``total`` bytes; returns how many the target took."""
    sent = 0
    chunk = bytes(1 << 20)
    try:
        with socket.create_connection(addr, timeout=10) as s:
            s.sendall(head)
            sent = len(head)
            while sent < total:
                s.sendall(chunk)
                sent += len(chunk)
    except OSError:
        pass
    return sent


def _parallel(fn, args_list):
    out = [None] * len(args_list)

    def run(i, a):
        out[i] = fn(*a)
    ts = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(args_list)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def attack(ranks: int, phase: float) -> int:
    d = tempfile.mkdtemp(prefix="hetccl-hostile-")
    cmd = [sys.executable, "-m", "hetccl", "run", "-n", str(ranks), "--", sys.executable,
           os.path.abspath(__file__), "--worker", d]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    job = subprocess.Popen(cmd, env=env, cwd=ROOT)
    deadline = time.time() + 120
    while len([n for n in os.listdir(d) if n.startswith("rank") and n.endswith(".json")]) < ranks:
        if time.time() > deadline or job.poll() is not None:
            print("the ranks did not start", file=sys.stderr)
            job.kill()
            return 1
        time.sleep(0.1)
    info = [json.load(open(os.path.join(d, f"rank{r}.json"))) for r in range(ranks)]
    store = tuple(info[0]["store"])
    p2p = [("127.0.0.1" if info[r]["store"][0].startswith("127.") else info[r]["store"][0],
            info[r]["p2p"]) for r in range(ranks)]
    marks = {}
    notes = []
    marks["baseline"] = time.time()
    time.sleep(phase)

    marks["gib-store"] = time.time()
    took = _blast(store, struct.pack(">IIIII", 4, GiB, GiB, GiB, GiB), GiB)
    took_raw = _blast(store, b"", GiB)
    notes.append(f"store port: took {took} B of a framed 1 GiB hello, {took_raw} B of 1 GiB raw")
    time.sleep(max(0.0, phase - (time.time() - marks["gib-store"])))

    marks["gib-p2p"] = time.time()
    took = _parallel(_blast, [(a, b"", GiB) for a in p2p])
    notes.append(f"p2p ports: took {took} B of 1 GiB each")
    time.sleep(max(0.0, phase - (time.time() - marks["gib-p2p"])))

    marks["idle"] = time.time()
    held = []
    for addr in [store] + p2p:
        for _ in range(1000):
            try:
                held.append(socket.create_connection(addr, timeout=5))
            except OSError as e:
                notes.append(f"connect to {addr} failed after {len(held)}: {e}")
                break
    opened = time.time() - marks["idle"]
    open(os.path.join(d, "dup"), "w").close()
    time.sleep(phase)
    closed_by_them = 0
    for s in held:
        s.setblocking(False)
        try:
            if s.recv(1) == b"":
                closed_by_them += 1
        except BlockingIOError:
            pass
        except OSError:
            closed_by_them += 1
    notes.append(f"idle: opened {len(held)} connections in {opened:.1f} s; {closed_by_them} were "
                 f"closed by the ranks (past the 64-slot cap or the 10 s deadline)")
    marks["after"] = time.time()
    for s in held:
        s.close()
    time.sleep(phase)
    open(os.path.join(d, "stop"), "w").close()
    rc = job.wait(120)
    end = time.time()
    results = [json.load(open(os.path.join(d, f"result{r}.json"))) for r in range(ranks)]
    names = list(marks)
    bounds = [(n, marks[n], marks[names[i + 1]] if i + 1 < len(names) else end)
              for i, n in enumerate(names)]
    print(f"{ranks} ranks, phases of {phase:g} s; uptime: {os.popen('uptime').read().strip()}")
    for note in notes:
        print(note)
    print(f"{'rank':>4} {'phase':>10} {'calls':>6} {'rss+ max MiB':>12} {'allreduce max ms':>16} "
          f"{'p2p max ms':>10} {'p2p p99 ms':>10}")
    worst_rss = worst_ms = 0.0
    base_ms = 0.0
    for r, res in enumerate(results):
        rss = np.array(res["rss"])
        base = np.median(rss[(rss[:, 0] >= marks["baseline"]) & (rss[:, 0] < marks["gib-store"]), 1])
        # the new communicator's own memory (its shared-memory FIFOs are mapped pre-faulted) is
        # not the attack's: leave the dup's window out of the RSS figures
        keep = np.ones(len(rss), bool)
        for t, secs in res["dups"]:
            keep &= ~((rss[:, 0] >= t) & (rss[:, 0] <= t + secs + 0.2))
        for n, a, b in bounds:
            sel = rss[(rss[:, 0] >= a) & (rss[:, 0] < b) & keep, 1]
            c = np.array([x for x in res["calls"] if a <= x[0] < b]) if res["calls"] else np.zeros((0, 3))
            up = (sel.max() - base) / 2**20 if len(sel) else float("nan")
            ar = c[:, 1].max() * 1e3 if len(c) else float("nan")
            pp = c[:, 2].max() * 1e3 if len(c) else float("nan")
            p99 = np.percentile(c[:, 2], 99) * 1e3 if len(c) else float("nan")
            print(f"{r:>4} {n:>10} {len(c):>6} {up:>12.2f} {ar:>16.1f} {pp:>10.1f} {p99:>10.1f}")
            if n == "baseline":
                base_ms = max(base_ms, ar, pp)
            else:
                worst_rss, worst_ms = max(worst_rss, up), max(worst_ms, ar, pp)
        for t, secs in res["dups"]:
            print(f"     rank {r}: comm.dup() under 1,000 idle connections per port took {secs * 1e3:.0f} ms")
    print(f"RESULT worst_rss_increase_mib={worst_rss:.2f} slowest_call_under_attack_ms={worst_ms:.1f} "
          f"slowest_call_baseline_ms={base_ms:.1f} exit={rc}")
    return rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--phase", type=float, default=8.0, help="seconds per phase")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    return attack(args.ranks, args.phase)


if __name__ == "__main__":
    sys.exit(main())
