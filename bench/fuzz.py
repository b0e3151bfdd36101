"""Fuzz every parser that reads bytes from someone else: the store protocol, the handshakes, the
collective header, point-to-point framing, the topology file and the cost-model cache file.

    python bench/fuzz.py --inputs 1000000            # the benchmark run (split over the targets)
    python bench/fuzz.py --seconds 45                # a time-boxed run (CI: tests/test_endurance.py)
    python bench/fuzz.py --targets p2p --inputs 5000 # one target

Engine: atheris (coverage-guided libFuzzer for Python; hetccl's Python modules are instrumented),
or, where atheris is not installed, a plain random mutator over the same harnesses
(``--engine random``). Every harness takes raw bytes and decodes them *structure-aware*: a first
byte picks random bytes or a well-formed message with fields drawn from the rest (MACs computed with
the harness's key where the target authenticates), so inputs get past the first check.

For every input the outcome must be success or a clean error (the exceptions the target documents);
anything else counts as a crash (first tracebacks printed). Each target runs in a process of its
own under an address-space limit (RLIMIT_AS 4 GiB, libFuzzer's -rss_limit_mb=2048) so that an
unbounded allocation fails loudly; an input running longer than 10 s is a hang. Prints a table:
target, inputs, crashes, hangs, peak RSS, inputs/s; exits 1 on any crash or hang.
"""
from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import os
import random
import resource
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

HANG_S = 10
AS_LIMIT = 4 << 30
MAX_LEN = 2048          # bytes per input


# ------------------------------------------------------------------------------------------------
# Decoding bytes into structure
# ------------------------------------------------------------------------------------------------
class Draw:
    """Reads choices from the fuzzer's bytes; past the end every draw is zero (so every input is
    valid for every decoder)."""

    def __init__(self, data: bytes):
        self.d, self.i = data, 0

    def byte(self) -> int:
        if self.i >= len(self.d):
            return 0
        self.i += 1
        return self.d[self.i - 1]

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(bytes(self.byte() for _ in range(nbytes)), "little")

    def below(self, n: int) -> int:
        return self.byte() % n

    def choice(self, seq):
        return seq[self.below(len(seq))]

    def bytes(self, maxn: int) -> bytes:
        n = self.below(maxn + 1)
        out = self.d[self.i:self.i + n]
        self.i += len(out)
        return out

    def rest(self) -> bytes:
        out = self.d[self.i:]
        self.i = len(self.d)
        return out

    def json(self, depth: int = 0):
        kind = self.below(8 if depth < 3 else 5)
        if kind == 0:
            return None
        if kind == 1:
            return bool(self.byte() & 1)
        if kind == 2:
            v = self.uint(2) - 16
            return v if self.byte() & 3 else 10 ** (v % 400)
        if kind == 3:
            return struct.unpack("<d", bytes(self.byte() for _ in range(8)))[0]
        if kind == 4:
            return self.choice(["host", "numa", "tcp", "shm", "n0", "net", "a", "",
                                "hetccl-topology"]) if self.byte() & 1 else \
                self.bytes(8).decode("utf-8", "replace")
        if kind in (5, 6):
            return [self.json(depth + 1) for _ in range(self.below(4))]
        return {self.json_key(): self.json(depth + 1) for _ in range(self.below(4))}

    def json_key(self) -> str:
        return self.choice(["rank", "host", "id", "kind", "a", "b", "class", "bandwidth",
                            "latency", "burst", "peak", "numa", "bridge", "attrs", "format",
                            "version", "ranks", "nodes", "links", "x"])


def _feed(steps, data: bytes):
    """Drive handshake steps with ``data`` as everything the peer says; ends at its end (EOF)."""
    at, value = 0, None
    while True:
        try:
            step = steps.send(value)
        except StopIteration as done:
            return done.value
        if hasattr(step, "n"):
            if at + step.n > len(data):
                return None                      # the peer hung up: a clean end
            value, at = data[at:at + step.n], at + step.n
        else:
            value = None


def _encode(frames):
    from hetccl.bootstrap.guard import encode
    return encode(frames)


# ------------------------------------------------------------------------------------------------
# Targets: each is a class whose instance is called with one input's bytes; it raises only on a
# real defect (the clean errors of the target are caught inside)
# ------------------------------------------------------------------------------------------------
class StoreTarget:
    """The store server's request handling after authentication (MAC'd by the harness, or raw, or
    replayed), and its pre-authentication hello, fed byte by byte."""

    ops = [b"SET", b"GET", b"MGET", b"WAIT", b"WAITGE", b"ADD", b"DEL", b"CHECK", b"ABORT",
           b"BYE", b"NOPE", b""]

    def __init__(self):
        from hetccl.bootstrap import store as S

        self.S = S
        srv = S.StoreServer("127.0.0.1", 0, b"k" * 32)
        srv.close()                              # its threads stop; the handlers stay callable
        srv._send = lambda conn, frames: None
        self.srv = srv
        self.n = 0
        self._session()

    def _session(self):
        class Sock:
            def close(self):
                pass

        self.conn = self.S._Conn(Sock(), "fuzz")
        self.sess = self.S._Session(b"s" * 32, "0", "fuzz")
        self.srv._sessions = {self.conn: self.sess}
        self.srv._waiting.clear()
        self.srv._deadlines.clear()
        self.srv._data.clear()
        self.srv._abort = None

    def __call__(self, data: bytes):
        from hetccl.bootstrap.auth import NONCE_BYTES, mac
        from hetccl.bootstrap.guard import FramingError
        from hetccl.errors import AuthenticationError

        S, srv, d = self.S, self.srv, Draw(data)
        self.n += 1
        if self.n % 200 == 0:
            self._session()
        mode = d.below(4)
        if mode == 0:                            # a stranger's hello: raw bytes
            try:
                _feed(srv._hello_steps("fuzz"), d.rest())
            except (FramingError, AuthenticationError):
                pass
            return
        if mode == 1:                            # a well-framed hello with fields drawn
            nonce, rank = d.bytes(40), d.bytes(20)
            tag = mac(srv._secret_key, S._L_HELLO, nonce, rank) if d.byte() & 1 else d.bytes(40)
            frames = [d.choice([S._HELLO, S._REQ, b""]), nonce, rank, tag][:1 + d.below(4)] \
                if d.byte() & 1 else [S._HELLO, nonce, rank, tag]
            try:
                _feed(srv._hello_steps("fuzz"), _encode(frames) + d.rest())
            except (FramingError, AuthenticationError):
                pass
            return
        for _ in range(1 + d.below(6)):
            if self.conn not in srv._sessions:   # BYE or garbage dropped it: a new client
                self._session()
            how = d.below(6)
            op = d.choice(self.ops)
            args = []
            for _ in range(d.below(5)):
                kind = d.below(4)
                if kind == 0:
                    args.append(d.bytes(24))
                elif kind == 1:
                    args.append(d.choice([b"k", b"n", b"\xff\xfe"]))
                elif kind == 2:
                    args.append(struct.pack(">Q", d.below(50)))
                else:
                    args.append(struct.pack(">q", d.uint(8) - (1 << 63)))
            ctr = self.sess.last_ctr + (0 if how == 5 else 1)
            body = [struct.pack(">Q", ctr) if how != 4 else d.bytes(9), op, *args]
            tag = mac(self.sess.key, b"C", *body) if how < 4 or how == 5 else b"\0" * 32
            frames = [S._REQ, *body, tag]
            if how == 3:
                frames = frames[:d.below(len(frames)) + 1]
            srv._handle(self.conn, frames)
            srv._abort = None
        srv._expire()


class FramingTarget:
    """The capped framing reader (store requests and replies) over a real socket, the bytes
    arriving in pieces of drawn sizes."""

    def __init__(self):
        from hetccl.bootstrap.guard import FramingError, MessageReader
        self.MessageReader, self.FramingError = MessageReader, FramingError

    def __call__(self, data: bytes):
        from hetccl.errors import PeerLostError

        d = Draw(data)
        cuts = [1 + d.below(64) for _ in range(d.below(8))]
        if d.byte() & 1:
            payload = d.rest()
        else:
            payload = b"".join(_encode([d.bytes(40) for _ in range(1 + d.below(5))])
                               for _ in range(d.below(4))) + d.rest()
        a, b = socket.socketpair()
        with a, b:
            b.setblocking(False)
            r = self.MessageReader(16, 4096)
            at = 0
            try:
                for cut in cuts + [len(payload)]:
                    piece = payload[at:at + cut]
                    at += len(piece)
                    if piece:
                        a.sendall(piece)
                    for msg in r.read(b):
                        if not (1 <= len(msg) <= 16 and sum(map(len, msg)) <= 4096):
                            raise AssertionError(f"a message past the caps came through: {msg!r}")
                a.close()
                r.read(b)
            except (self.FramingError, PeerLostError):
                pass


class HandshakeTarget:
    """Both sides of the data-link handshake against a peer that says anything: random bytes, or
    a genuine transcript with one byte changed."""

    def __init__(self):
        from hetccl.bootstrap import auth
        self.auth = auth
        self.secret = b"h" * 32
        self.cid = b"comm"

    def __call__(self, data: bytes):
        from hetccl.errors import AuthenticationError

        auth, d = self.auth, Draw(data)
        side = "server" if d.byte() & 1 else "client"
        if d.byte() & 1:
            said = d.rest()
        else:
            at, xor = d.uint(2) % 200, d.byte()
            if side == "server":                 # what a real client sends
                said = (auth._HELLO_FIXED.pack(auth._LINK_MAGIC, 1, 0, len(self.cid)) + self.cid
                        + b"c" * 32 + b"p" * 32)
            else:                                # what a real server sends
                said = auth._CHAL.pack(auth._LINK_MAGIC, 0, b"s" * 32, b"m" * 32) + b"\x01"
            if at < len(said):
                said = said[:at] + bytes([said[at] ^ xor]) + said[at + 1:]
            said += d.rest()
        try:
            if side == "server":
                _feed(auth.server_handshake_steps(self.secret, 0, self.cid, "fuzz"), said)
            else:
                _feed(auth.client_handshake_steps(self.secret, 1, 0, self.cid, "fuzz"), said)
        except AuthenticationError:
            pass


class HeaderTarget:
    """The engine's collective header check: the peer of a TCP link sends any 32-byte header (a
    valid one with one field changed, or random bytes) and any payload, then EOF; the allreduce
    must succeed or raise a clean error, never crash or hang."""

    fields = ("magic", "coll", "dtype", "op", "phase", "seq", "count", "rank", "none")
    fmt = {"magic": "<I", "coll": "<B", "dtype": "<B", "op": "<B", "phase": "<B", "seq": "<I",
           "count": "<Q", "rank": "<I"}

    def __init__(self):
        from hetccl._native import dispatch, engine, failure
        self.engine, self.dispatch, self.failure = engine, dispatch, failure

    def _header(self, field, v, count, seq):
        vals = {"magic": 0x314C4348, "coll": 1, "dtype": 10, "op": 0, "phase": 0, "seq": seq,
                "count": count, "rank": 1}
        if field in vals:
            vals[field] = v % (1 << (8 * struct.calcsize(self.fmt[field])))
        return struct.pack("<IBBBBIIQI4x", vals["magic"], vals["coll"], vals["dtype"], vals["op"],
                           vals["phase"], vals["seq"], 0, vals["count"], vals["rank"])

    def __call__(self, data: bytes):
        import numpy as np
        from hetccl.errors import HetcclError

        d = Draw(data)
        count = 1 + d.below(8)
        eng = self.engine.Engine(0, 2)
        a, b = socket.socketpair()
        try:
            eng.attach(1, "tcp", a.fileno())
            if d.byte() & 1:
                hdr = d.bytes(40)
            else:
                hdr = self._header(d.choice(self.fields), d.uint(8), count, eng.sequence + 1)
            if len(hdr) == 32:
                self.failure.describe_header(hdr)
            b.sendall(hdr + d.rest()[:256])
            b.shutdown(socket.SHUT_WR)            # then EOF: the engine must not wait forever
            x = np.ones(count, np.float32)
            try:
                self.dispatch.allreduce(eng, x, x, 10, 0, 1, 2.0)
            except HetcclError:
                pass
        finally:
            eng.close()
            a.close()
            b.close()


class P2PTarget:
    """The point-to-point receive thread's framing: an authenticated peer sends any frames (bad
    magic, huge sizes, cut short) or raw bytes, then EOF; receives get the bytes sent or
    PeerLostError / InvalidUsage, and the receive thread never fails."""

    magics = (0x50325048, 0x50325048, 0x50325048, 0, 0xFFFFFFFF)

    def __init__(self):
        from hetccl import p2p
        self.p2p = p2p
        self.ch = p2p.P2PChannel(0, 2, b"p" * 32, "fuzz", 1.0, host="127.0.0.1")

    def __call__(self, data: bytes):
        from hetccl.errors import HetcclTimeout, InvalidUsage, PeerLostError

        p2p, ch, d = self.p2p, self.ch, Draw(data)
        if d.byte() & 1:
            sent = d.rest()
        else:
            sent = b""
            for _ in range(d.below(5)):
                n = d.below(65) if d.byte() & 1 else d.uint(8)
                sent += p2p._FRAME.pack(d.choice(self.magics), d.below(7) - 3, n) + d.bytes(64)
            sent += d.rest()
        a, b = socket.socketpair()
        b.setblocking(False)
        conn = p2p._Inbound(b, 1)
        with a:
            a.sendall(sent)
        for _ in range(10000):
            ch._read(conn)
            if 1 in ch.lost:
                break
        if 1 not in ch.lost:
            raise AssertionError("EOF did not mark the peer lost")
        if ch.failed is not None:
            raise AssertionError(ch.failed)
        for tag in range(-3, 4):
            while True:
                m = ch._take(1, tag)
                if m is None:
                    break
                try:
                    ch.recv(memoryview(bytearray(m.n if m.n < 1 << 16 else 1)), 1, tag, 0.0)
                except (PeerLostError, InvalidUsage, HetcclTimeout):
                    q = ch.queues[(1, tag)]
                    if q and q[0] is m:
                        q.popleft()
        ch.lost.clear()
        ch.queues.clear()


class TopologyTarget:
    """The topology file (HETCCL_TOPO_FILE): raw bytes through load(), any JSON document, or a
    valid document with up to three fields replaced, through from_dict(); a Topology or
    InvalidUsage."""

    base = {"format": "hetccl-topology", "version": 2,
            "ranks": [{"rank": 0, "host": "a", "numa": 0}, {"rank": 1, "host": "b"}],
            "nodes": [{"id": "n0", "kind": "numa", "host": "a"}],
            "links": [{"a": "n0", "b": "net", "class": "tcp", "bandwidth": 1e9, "latency": 1e-5}]}
    paths = [("format",), ("version",), ("ranks",), ("ranks", 0), ("ranks", 0, "rank"),
             ("ranks", 1, "host"), ("ranks", 0, "bridge"), ("ranks", 0, "numa"), ("nodes",),
             ("nodes", 0), ("nodes", 0, "kind"), ("nodes", 0, "id"), ("nodes", 0, "attrs"),
             ("links",), ("links", 0), ("links", 0, "class"), ("links", 0, "bandwidth"),
             ("links", 0, "burst"), ("links", 0, "peak"), ("links", 0, "a"), ("links", 0, "measured")]

    def __init__(self):
        from hetccl.topology import topofile
        self.topofile = topofile
        self.path = os.path.join(tempfile.mkdtemp(prefix="hetccl-fuzz-"), "topo.json")

    def __call__(self, data: bytes):
        from hetccl.errors import InvalidUsage

        d = Draw(data)
        mode = d.below(4)
        try:
            if mode == 0:
                with open(self.path, "wb") as f:
                    f.write(d.rest())
                self.topofile.load(self.path)
                return
            if mode == 1:
                doc = d.json()
            else:
                doc = copy.deepcopy(self.base)
                for _ in range(1 + d.below(3)):
                    _put(doc, d.choice(self.paths), d.json())
            self.topofile.from_dict(doc, "fuzz")
        except InvalidUsage:
            pass


def _put(doc, path, v):
    cur = doc
    for k in path[:-1]:
        try:
            cur = cur[k]
        except (KeyError, IndexError, TypeError):
            return
    try:
        cur[path[-1]] = v
    except (IndexError, TypeError):
        pass


class CostCacheTarget:
    """The cost-model cache (~/.cache/hetccl/cost-model.json): any bytes or JSON; reading and
    looking up must never raise (a bad cache only costs a probe)."""

    def __init__(self):
        from hetccl.collectives import probe
        self.probe = probe
        self.path = os.path.join(tempfile.mkdtemp(prefix="hetccl-fuzz-"), "cost-model.json")
        self.shape = probe.shape("h", ["shm"], 2, 2, "v")
        self.key = probe.cache_key(self.shape)

    def __call__(self, data: bytes):
        d = Draw(data)
        if d.byte() & 1:
            raw = d.rest()
        else:
            entries = {}
            for _ in range(d.below(3)):
                e = {k: d.json(2) for k in ("alpha", "beta", "gamma", "version")
                     if d.byte() & 3}
                entries[self.key if d.byte() & 1 else d.bytes(8).decode("utf-8", "replace")] = \
                    e if d.byte() & 7 else d.json()
            doc = {"format": d.choice([2, 2, 1, "2", None]),
                   "entries": entries if d.byte() & 7 else d.json()}
            raw = json.dumps(doc, allow_nan=True).encode()
        with open(self.path, "wb") as f:
            f.write(raw)
        self.probe.read_entries(self.path)
        self.probe.lookup(self.shape, self.path)


TARGETS = {"store": StoreTarget, "framing": FramingTarget, "handshake": HandshakeTarget,
           "header": HeaderTarget, "p2p": P2PTarget, "topology": TopologyTarget,
           "costcache": CostCacheTarget}
# share of a budget per target (the engine target is the slowest per input)
WEIGHTS = {"store": 2, "framing": 1.5, "handshake": 1.5, "header": 1, "p2p": 1.5, "topology": 1.5,
           "costcache": 1}


# ------------------------------------------------------------------------------------------------
# Runner: one process per target
# ------------------------------------------------------------------------------------------------
def _child(name: str, engine: str, inputs: int, seconds: float, counts, errfile: str) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    log = os.open(errfile + ".log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)                          # libFuzzer's chatter: kept out of the table
    os.dup2(log, 2)
    import logging

    logging.disable(logging.CRITICAL)        # refused strangers log warnings by design
    if engine == "atheris":
        import atheris
        with atheris.instrument_imports(include=["hetccl"]):
            import hetccl.bootstrap.store  # noqa: F401
            import hetccl.bootstrap.guard  # noqa: F401
            import hetccl.bootstrap.auth  # noqa: F401
            import hetccl.p2p  # noqa: F401
            import hetccl.topology.topofile  # noqa: F401
            import hetccl.collectives.probe  # noqa: F401
    target = TARGETS[name]()
    crashes = []

    def one(data: bytes) -> None:
        counts[0] += 1
        try:
            target(data)
        except Exception as e:  # noqa: BLE001 - anything the harness did not expect is a defect
            counts[1] += 1
            if len(crashes) < 3:
                crashes.append(f"input {data[:200]!r}\n{''.join(traceback.format_exception(e))}")
                with open(errfile, "w") as f:
                    f.write("\n".join(crashes))

    if engine == "atheris":
        import atheris
        argv = [sys.argv[0], f"-timeout={HANG_S}", "-rss_limit_mb=2048", f"-max_len={MAX_LEN}",
                "-print_final_stats=0", "-close_fd_mask=3"]
        if inputs:
            argv.append(f"-runs={inputs}")
        if seconds:
            argv.append(f"-max_total_time={max(1, int(seconds))}")
        atheris.Setup(argv, one)
        atheris.Fuzz()                        # exits the process when done
        return
    rng = random.Random()
    corpus = [b""]
    deadline = time.monotonic() + seconds if seconds else None
    watchdog = {"t": time.monotonic()}

    def watch():
        while True:
            time.sleep(1)
            if time.monotonic() - watchdog["t"] > HANG_S:
                counts[2] += 1
                os._exit(3)
    threading.Thread(target=watch, daemon=True).start()
    while (not inputs or counts[0] < inputs) and (deadline is None or time.monotonic() < deadline):
        base = bytearray(rng.choice(corpus))
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(4)
            if op == 0 or not base:
                base[rng.randint(0, len(base)):rng.randint(0, len(base))] = \
                    rng.randbytes(rng.randint(1, 32))
            elif op == 1:
                base[rng.randrange(len(base))] = rng.randrange(256)
            elif op == 2:
                del base[rng.randrange(len(base)):rng.randrange(len(base) + 1)]
            else:
                base += rng.choice(corpus)
        data = bytes(base[:MAX_LEN])
        watchdog["t"] = time.monotonic()
        one(data)
        if len(corpus) < 512:
            corpus.append(data)
        else:
            corpus[rng.randrange(512)] = data


def run(targets, engine: str, inputs: int, seconds: float) -> list[dict]:
    ctx = mp.get_context("spawn")
    total_w = sum(WEIGHTS[t] for t in targets)
    results = []
    for name in targets:
        share_in = int(inputs * WEIGHTS[name] / total_w) if inputs else 0
        share_s = seconds * WEIGHTS[name] / total_w if seconds else 0.0
        counts = ctx.RawArray("q", 3)           # inputs, crashes, hangs: survive the child's exit
        errfile = tempfile.mktemp(prefix=f"hetccl-fuzz-{name}-")
        t0 = time.monotonic()
        p = ctx.Process(target=_child, args=(name, engine, share_in, share_s, counts, errfile))
        p.start()
        p.join((share_s + 300) if seconds else None)
        if p.is_alive():
            p.kill()
            p.join()
            counts[2] += 1
        secs = time.monotonic() - t0
        first = []
        if os.path.exists(errfile):
            with open(errfile) as f:
                first.append(f.read())
            os.unlink(errfile)
        if os.path.exists(errfile + ".log"):
            with open(errfile + ".log", errors="replace") as f:
                tail = f.read()[-3000:]
            os.unlink(errfile + ".log")
            if p.exitcode not in (0, None):
                first.append(f"the fuzzing process's last output:\n{tail}")
        hangs = counts[2]
        crashes = counts[1]
        if p.exitcode not in (0, None) and not hangs and not crashes:
            # libFuzzer: a timeout (exit 70 or 77) is a hang, anything else a crash of the process
            if p.exitcode in (70, 77, 3):
                hangs += 1
            else:
                crashes += 1
                first.append(f"the fuzzing process died (exit code {p.exitcode})")
        rss = _child_rss_mib()
        res = {"target": name, "inputs": counts[0], "crashes": crashes, "hangs": hangs,
               "rss_mib": rss, "seconds": secs, "first": first, "exitcode": p.exitcode}
        results.append(res)
        print(f"{name:>10} {res['inputs']:>9} {crashes:>7} {hangs:>5} {rss:>12.0f} "
              f"{res['inputs'] / max(secs, 1e-9):>9.0f}", flush=True)
        for f in first:
            print(f"    first failures:\n{f}", flush=True)
    return results


def _child_rss_mib() -> float:
    """Peak RSS of the largest child so far (getrusage of the children)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--inputs", type=int, default=0, help="inputs in all, split over the targets")
    ap.add_argument("--seconds", type=float, default=0, help="seconds in all, split likewise")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--engine", choices=["atheris", "random"], default=None,
                    help="default: atheris if installed, else random")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    if not args.inputs and not args.seconds:
        ap.error("give --inputs N and/or --seconds S")
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}; choose among {', '.join(TARGETS)}")
    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "random"
    t0 = time.time()
    print(f"engine: {engine}; {args.inputs or 'no'} input budget, {args.seconds or 'no'} s budget")
    print(f"{'target':>10} {'inputs':>9} {'crashes':>7} {'hangs':>5} {'peak RSS MiB':>12} "
          f"{'inputs/s':>9}", flush=True)
    results = run(targets, engine, args.inputs, args.seconds)
    total = sum(r["inputs"] for r in results)
    crashes = sum(r["crashes"] for r in results)
    hangs = sum(r["hangs"] for r in results)
    print(f"{'total':>10} {total:>9} {crashes:>7} {hangs:>5}   ({time.time() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"engine": engine, "results": results, "total": total, "crashes": crashes,
                       "hangs": hangs}, f, indent=1)
    return 1 if crashes or hangs else 0


if __name__ == "__main__":
    sys.exit(main())
