"""The control plane of a process: what failure notices, revocations and agreements travel over.

Why a plane of its own: the data links belong to a communicator and close when it aborts; the store
lives in one rank (rank 0 of the root communicator) and dies with it. Recovery must outlive both
and must not hang on any single rank, so every process runs one control plane:

* one TCP listener (its port goes on the rank card of every communicator the process joins) and
  one connection per peer process, shared by all of the process's communicators (messages carry a
  communicator key), authenticated with the job secret (bootstrap/auth.py's handshake, after an
  8-byte preamble naming which secret: torch groups without HETCCL_SECRET each have their own);
* one daemon thread that reads and writes every connection (non-blocking), answers pings, feeds
  messages to each communicator's Membership (membership.py) and runs its timers. Incoming
  handshakes run on the listener's HandshakeGate (bootstrap/guard.py: bounded, deadlines, a thread
  of its own), outgoing ones on a short-lived thread per peer, never on this one, so a slow or
  hostile client delays nothing;
* liveness: TCP keepalive and TCP_USER_TIMEOUT from HETCCL_PEER_TIMEOUT on every connection (a
  process that dies closes its connection at once; a host that vanishes or a link that goes down is
  dropped by the kernel within HETCCL_PEER_TIMEOUT), and, while a rank waits on another in an
  agreement or a shrink, pings every HETCCL_PEER_TIMEOUT/5 and silence for HETCCL_PEER_TIMEOUT
  makes the silent rank failed (membership.py fences it). There is no heartbeat otherwise: a
  stalled process on a live host keeps its connections, and a stall outside recovery surfaces at
  the operation's deadline (HETCCL_TIMEOUT), as it should.

The lower process token of a pair accepts, the higher connects, so each pair has one connection. A
connection that closes or breaks, or carries a malformed message, means its process failed, in
every communicator that has it as a member. Messages for a communicator this process has not
registered yet are kept (bounded) until it does; for one it closed, agreement messages are answered
from the decisions it keeps ("gone" otherwise).
"""
from __future__ import annotations

import collections
import hashlib
import logging
import os
import secrets
import selectors
import socket
import struct
import threading
import time
import weakref

from .. import config
from ..bootstrap.auth import client_handshake, hmac_key, mac, server_handshake_steps
from ..bootstrap.guard import HandshakeGate, Recv
from ..errors import CommAborted, HetcclTimeout
from ..transports.netif import keepalive, listen_address
from . import membership as mb
from .wire import ProtocolError, Reader, frame

log = logging.getLogger("hetccl.recovery")

_PREAMBLE = struct.Struct(">4s8s")
_MAGIC = b"HCT1"
_CID = b"hetccl-control"
MAX_EARLY = 256              # messages kept per communicator key not registered yet
MAX_GONE = 128               # closed communicators whose decisions are kept
_HELLO_MAX = 256

# Services that ride on the plane's connections and thread, registered by the layers above at their
# import (hetccl/flight/: flight-record requests and the watchdog), so the plane names none of them.
_SERVICES = []               # (message types, receive(plane, peer, msg), tick(plane, now))


def serve(types, receive, tick) -> None:
    """Let a service answer the messages of ``types`` (``receive(plane, peer, msg)``: diagnostics
    only, a bad message must be refused, never fatal) and run ``tick(plane, now)`` at every tick of
    the plane's thread, under its lock. Once per service (idempotent), before any plane exists."""
    entry = (frozenset(types), receive, tick)
    if entry not in _SERVICES:
        _SERVICES.append(entry)


def fingerprint(secret) -> bytes:
    """8 bytes that name a job secret without revealing it (which secret a connection uses)."""
    return mac(hmac_key(secret), b"hetccl-control-id")[:8]


def communicator_key(job_id: str, comm_id: str, cards) -> str:
    """A key every member computes alike, unique to this communicator instance (its members'
    processes and listening ports differ from any earlier one's)."""
    h = hashlib.sha256(f"{job_id}|{comm_id}".encode())
    for c in cards:
        h.update(f"|{c.get('ctl_id')}:{c.get('pid')}:{c.get('port')}".encode())
    return h.hexdigest()[:32]


class _Peer:
    __slots__ = ("token", "fp", "addr", "sock", "state", "out", "reader", "heard", "pinged", "why")

    def __init__(self, token, fp, addr):
        self.token, self.fp, self.addr = token, fp, addr
        self.sock = None
        self.state = "idle"          # idle -> connecting -> up -> dead
        self.out = bytearray()
        self.reader = Reader()
        self.heard = time.monotonic()
        self.pinged = 0.0
        self.why = ""


class ControlPlane:
    def __init__(self, route=None):
        self.token = secrets.token_hex(16)
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.cv = threading.Condition(self.lock)
        self.peer_timeout = config.peer_timeout()
        _, self.addr = listen_address(route)         # where the data links listen too
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.addr, 0))
        ls.listen(256)
        self._listener = ls
        self.port = ls.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._peers = {}                 # (token, fp) -> _Peer
        self._handles = {}               # communicator key -> ControlHandle
        self._secrets = {}               # fp -> secret
        self._early = collections.OrderedDict()   # key -> [(token, fp, msg)]
        self._gone = collections.OrderedDict()    # key -> {instance: decided value}
        self._after = []                 # callbacks to run without the lock
        self.flight_queries = {}         # flight-record requests awaiting answers (flight/exchange.py)
        self._thread = threading.Thread(target=self._loop, name="hetccl-control", daemon=True)
        self._thread.start()
        self._gate = HandshakeGate(ls, self._handshake, self._accepted, name="hetccl-control-gate",
                                   what="control connection", logger=log)

    # ------------------------------------------------------------------ registration

    def card_fields(self, secret) -> dict:
        """The card's fields for this plane; from now on connections proving ``secret`` are taken
        (before the card is published: a peer that reads it may connect at once)."""
        with self.lock:
            self._secrets[fingerprint(secret)] = secret
        return {"ctl_addr": self.addr, "ctl_port": self.port, "ctl_id": self.token}

    def attach(self, ctx, key, rank, size, cards, secret) -> "ControlHandle":
        """Register a communicator by its Context (this rank ``rank`` of ``size``; every member's
        card); the handle holds it weakly and reports events to ``ctx.control_event``."""
        fp = fingerprint(secret)
        with self.lock:
            self._secrets[fp] = secret
            h = ControlHandle(self, ctx, key, rank, size, fp, [c["ctl_id"] for c in cards])
            self._handles[key] = h
            for r, c in enumerate(cards):
                if r == rank:
                    continue
                p = self._peer(c["ctl_id"], fp, (c["ctl_addr"], c["ctl_port"]))
                if p.state == "dead":
                    self._after.append(lambda h=h, r=r, why=p.why: h.lost(r, why))
            for token, pfp, msg in self._early.pop(key, ()):
                self._dispatch_comm(h, token, msg)
        self._run_after()
        return h

    def _detach(self, h):
        with self.lock:
            if self._handles.get(h.key) is h:
                del self._handles[h.key]
                self._gone[h.key] = h.m.decisions()
                while len(self._gone) > MAX_GONE:
                    self._gone.popitem(last=False)

    def _peer(self, token, fp, addr) -> _Peer:
        p = self._peers.get((token, fp))
        if p is None:
            p = self._peers[(token, fp)] = _Peer(token, fp, addr)
        if p.state == "idle" and self.token > token:      # the higher token connects
            p.state = "connecting"
            threading.Thread(target=self._connect, args=(p, self._secrets[fp]), daemon=True,
                             name="hetccl-control-connect").start()
        return p

    # ------------------------------------------------------------------ connections

    def _connect(self, p, secret):
        t = min(10.0, self.peer_timeout)
        try:
            s = socket.create_connection(p.addr, timeout=t)
            try:
                self._tune(s)
                s.sendall(_PREAMBLE.pack(_MAGIC, p.fp))
                client_handshake(s, secret, 0, 0, _CID, t)
                s.sendall(frame({"t": "hi", "id": self.token}))
            except BaseException:
                s.close()
                raise
        except Exception as e:                      # noqa: BLE001 - refused, unreachable, refused auth
            with self.lock:
                self._lost(p, f"its control plane at {p.addr[0]}:{p.addr[1]} cannot be reached ({e})")
            self._run_after()
            return
        with self.lock:
            self._adopt(p, s)

    def _handshake(self, who):
        """Steps of an incoming connection (run by the gate): the preamble naming the secret, the
        link handshake with it, then the peer's hello (its process token); returns (token, fp)."""
        magic, fp = _PREAMBLE.unpack((yield Recv(_PREAMBLE.size)))
        with self.lock:
            secret = self._secrets.get(fp, False)
        if magic != _MAGIC or secret is False:
            raise ProtocolError("not a hetccl control connection of this job")
        yield from server_handshake_steps(secret, 0, _CID, who)
        (n,) = struct.unpack(">I", (yield Recv(4)))
        if n > _HELLO_MAX:
            raise ProtocolError("oversized hello")
        hello = Reader().feed(struct.pack(">I", n) + (yield Recv(n)))
        token = hello[0].get("id") if hello and hello[0].get("t") == "hi" else None
        if not isinstance(token, str) or len(token) != 32:
            raise ProtocolError("bad hello")
        return token, fp

    def _accepted(self, s, proven):
        """An authenticated incoming connection (on the gate's thread)."""
        token, fp = proven
        self._tune(s)
        with self.lock:
            p = self._peers.get((token, fp))
            if p is None:
                p = self._peers[(token, fp)] = _Peer(token, fp, None)
            if p.state in ("up", "dead"):
                log.warning("control plane: a second connection from process %s (closed)", token[:8])
                s.close()
                return
            self._adopt(p, s)

    def on_readable(self, fd, fn):
        """Call ``fn()`` on this plane's thread (under its lock) whenever ``fd`` is readable (the
        flight record's dump signal: flight/dump.py)."""
        with self.lock:
            self._sel.register(fd, selectors.EVENT_READ, ("fd", fn))
        self._wake()

    def _tune(self, s):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        keepalive(s, self.peer_timeout, user_timeout=True)

    def _adopt(self, p, s):
        s.setblocking(False)
        p.sock, p.state, p.heard = s, "up", time.monotonic()
        self._sel.register(s, selectors.EVENT_READ, p)
        self._flush(p)
        self._wake()

    def _lost(self, p, why):
        if p.state == "dead":
            return
        p.state, p.why, p.out = "dead", why, bytearray()
        if p.sock is not None:
            try:
                self._sel.unregister(p.sock)
            except (KeyError, ValueError):
                pass
            p.sock.close()
            p.sock = None
        for h in list(self._handles.values()):
            if h.fp == p.fp:
                for r in h.ranks_of(p.token):
                    h.lost(r, why)

    # ------------------------------------------------------------------ sending

    def send(self, fp, token, msg):
        p = self._peers.get((token, fp))
        if p is None or p.state == "dead":
            return
        p.out += frame(msg)
        if p.state == "up":
            self._flush(p)
            if p.out:
                self._wake()

    def _flush(self, p):
        while p.out and p.sock is not None:
            try:
                n = p.sock.send(p.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._lost(p, f"its control connection broke ({e})")
                return
            del p.out[:n]
        self._interest(p)

    def _interest(self, p):
        if p.sock is not None:
            ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if p.out else 0)
            try:
                if self._sel.get_key(p.sock).events != ev:
                    self._sel.modify(p.sock, ev, p)
            except (KeyError, ValueError):
                pass

    def _wake(self):
        try:
            self._wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass

    # ------------------------------------------------------------------ the thread

    def _loop(self):
        while True:
            with self.lock:
                busy = bool(self.flight_queries) or any(h.watched() for h in self._handles.values())
            try:
                events = self._sel.select(0.1 if busy else 1.0)
            except OSError:
                events = []
            with self.lock:
                for key, mask in events:
                    try:
                        self._event(key, mask)
                    except Exception:           # noqa: BLE001 - never let one event kill the plane
                        log.exception("control plane: error handling an event (ignored)")
                self._tick()
            self._run_after()

    def _event(self, key, mask):
        what = key.data
        if what == "wake":
            try:
                while self._wake_r.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        elif isinstance(what, tuple):
            what[1]()
        else:
            p = what
            if mask & selectors.EVENT_READ:
                self._read(p)
            if p.state == "up" and mask & selectors.EVENT_WRITE:
                self._flush(p)

    def _read(self, p):
        while p.state == "up":
            try:
                data = p.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                return self._lost(p, f"its control connection broke ({e}): its host is down or "
                                     f"unreachable")
            if not data:
                return self._lost(p, "its process exited or was killed (its control connection closed)")
            p.heard = time.monotonic()
            try:
                for msg in p.reader.feed(data):
                    self._dispatch(p, msg)
            except ProtocolError as e:
                log.warning("control plane: process %s sent a malformed message (%s); dropping it",
                            p.token[:8], e)
                return self._lost(p, f"it sent a malformed control message ({e})")

    def _dispatch(self, p, msg):
        t = msg["t"]
        if t == "ping":
            return self.send(p.fp, p.token, {"t": "pong"})
        if t in ("pong", "hi"):
            return
        for types, receive, _ in _SERVICES:            # diagnostics: refused, never fatal
            if t in types:
                return receive(self, p, msg)
        key = msg.get("c")
        if not isinstance(key, str) or len(key) > 64:
            raise ProtocolError("a message without a communicator key")
        h = self._handles.get(key)
        if h is not None and h.fp == p.fp:
            return self._dispatch_comm(h, p.token, msg)
        gone = self._gone.get(key)
        if gone is not None:
            k = msg.get("k")
            if t in ("prep", "acc", "prom") and type(k) is int and k in gone:
                return self.send(p.fp, p.token, {"t": "dec", "c": key, "k": k, "val": gone[k]})
            if t in ("prep", "acc", "prom"):
                return self.send(p.fp, p.token, {"t": "gone", "c": key})
            return
        early = self._early.setdefault(key, [])
        if len(early) < MAX_EARLY:
            early.append((p.token, p.fp, msg))
        while len(self._early) > MAX_EARLY:
            self._early.popitem(last=False)

    def _dispatch_comm(self, h, token, msg):
        for r in h.ranks_of(token):
            h.m.receive(r, msg)
            self.cv.notify_all()

    def _tick(self):
        now = time.monotonic()
        for _, _, tick in _SERVICES:
            tick(self, now)
        every = max(0.05, self.peer_timeout / 5)
        for h in list(self._handles.values()):
            watched = h.watched()
            for r in list(h.since):
                if r not in watched:
                    del h.since[r]
            for r in watched:
                since = h.since.setdefault(r, now)
                p = self._peers.get((h.tokens[r], h.fp))
                if p is None:
                    continue
                if p.state == "up" and now - p.pinged >= every:
                    p.pinged = now
                    self.send(p.fp, p.token, {"t": "ping"})
                quiet = now - max(p.heard, since)
                if quiet >= self.peer_timeout:
                    h.m.silent(r, round(quiet, 1))
                    self.cv.notify_all()

    def _run_after(self):
        with self.lock:
            todo, self._after = self._after, []
        for fn in todo:
            try:
                fn()
            except Exception:                   # noqa: BLE001
                log.exception("control plane: a communicator's failure handler raised (ignored)")


class ControlHandle:
    """A communicator's entry in the control plane: its Membership plus the blocking calls."""

    def __init__(self, plane, ctx, key, rank, size, fp, tokens):
        self.plane, self.key, self.rank, self.size, self.fp = plane, key, rank, size, fp
        self.tokens = tokens
        self._by_token = collections.defaultdict(list)
        for r, t in enumerate(tokens):
            if r != rank:
                self._by_token[t].append(r)
        self._ctx = weakref.ref(ctx) if ctx is not None else (lambda: None)
        self.m = mb.Membership(key, rank, size, self._send, self._notify)
        self.since = {}                   # watched rank -> when watching began
        self.extra_watch = set()          # ranks a shrink's build waits on
        self.listeners = []               # callables(event, rank, why), run without the lock
        self.flight = None                # the communicator's flight record (hetccl/flight/)
        self.closed = False
        self.held = []                    # the communicator's events until it is built (ready())

    def ranks_of(self, token):
        return self._by_token.get(token, ())

    def _send(self, rank, msg):
        self.plane.send(self.fp, self.tokens[rank], msg)

    def _notify(self, event, rank, why):
        ctx = self._ctx()
        fns = list(self.listeners)
        if ctx is not None and self.held is not None:
            self.held.append((event, rank, why))
        elif ctx is not None:
            fns.append(ctx.control_event)
        for fn in fns:
            self.plane._after.append(lambda fn=fn: fn(event, rank, why))
        self.plane.cv.notify_all()

    def ready(self):
        """The communicator is built: pass it the events held since ``attach``. Its constructor
        runs collectives (the cost model, the islands); the ranks that finished theirs may already
        revoke it (a shrink at once), and an interrupt there would fail this rank's constructor
        with nothing to shrink: the constructor's own calls end on a peer's death anyway (its
        links close), so the communicator hears of failures and revocations once it exists."""
        ctx = self._ctx()
        with self.plane.lock:
            held, self.held = self.held, None
            for ev in held if ctx is not None else ():
                self.plane._after.append(lambda ev=ev: ctx.control_event(*ev))
        self.plane._run_after()

    def lost(self, rank, why):
        with self.plane.lock:
            self.m.lost(rank, f"rank {rank} failed: {why}")
            self.plane.cv.notify_all()

    def watched(self):
        if self.closed:
            return set()
        return (self.m.watched() | self.extra_watch) - set(self.m.failed)

    # ------------------------------------------------------------------ the communicator's calls

    def failed(self) -> dict:
        with self.plane.lock:
            return dict(self.m.failed)

    @property
    def revoked(self) -> bool:
        return self.m.revoked

    @property
    def excluded(self):
        return self.m.excluded

    def revoke(self):
        with self.plane.lock:
            self.m.revoke()
        self.plane._run_after()

    def agree(self, flag: bool, timeout: float, offer=None) -> dict:
        """Enter the next agreement instance with ``flag``; block until it decides. Returns the
        value ({"flag", "failed", "x"}). HetcclTimeout after ``timeout`` s (this rank then leaves
        the communicator: the others count it failed); CommAborted if this rank was excluded."""
        plane = self.plane
        deadline = time.monotonic() + timeout
        with plane.lock:
            if self.m.excluded is not None:
                raise CommAborted(self.m.excluded)
            _, a = self.m.enter(bool(flag), offer)
            plane._wake()
            error = None
            while a.decided is None and self.m.excluded is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    why = (f"rank {self.rank} gave up after {timeout:g} s waiting in an agreement for "
                           f"rank(s) {a.missing()} (alive, but they did not call agree/shrink)")
                    self.m.leave(why)
                    error = HetcclTimeout(why + "; every rank of the communicator must make the same "
                                                "agree/shrink calls in the same order")
                    break
                plane.cv.wait(min(left, 0.5))
            value = a.decided
            if error is None and value is None:
                error = CommAborted(self.m.excluded)
        plane._run_after()
        if error is not None:
            raise error
        return value

    def process_dead(self, token) -> bool:
        """Whether the process of control-plane id ``token`` is known to have failed (any
        communicator's member or not: e.g. the host of a store)."""
        p = self.plane._peers.get((token, self.fp))
        return p is not None and p.state == "dead"

    def watch(self, ranks):
        """Watch ``ranks`` for silence (pings) until ``unwatch``: a shrink's build waits on them."""
        with self.plane.lock:
            self.extra_watch = set(ranks) - {self.rank}
        self.plane._wake()

    def unwatch(self):
        with self.plane.lock:
            self.extra_watch = set()

    def detach(self):
        if not self.closed:
            self.closed = True
            self.plane._detach(self)


_plane = None
_plane_lock = threading.Lock()


def plane(route=None) -> ControlPlane:
    """This process's control plane (started on first use, listening where the data links do:
    HETCCL_SOCKET_IFNAME, else ``route``, this host's address towards the store; a forked child
    starts its own)."""
    global _plane
    with _plane_lock:
        if _plane is None or _plane.pid != os.getpid():
            _plane = ControlPlane(route)
        return _plane
