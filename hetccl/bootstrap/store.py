"""The job's key-value store: how ranks find each other before any data link exists.

Rank 0 serves it from a daemon thread (``StoreServer``); every rank, rank 0 included, talks to it
through a ``StoreClient``. Keys are str (UTF-8 on the wire), values raw bytes: nothing received is
ever unpickled.

Why ZeroMQ ROUTER/DEALER: a blocking ``get`` must not busy-poll the server. The server parks the
request as a *waiter* and answers when the key appears (or the waiter's deadline passes); ROUTER
lets it answer requests out of order, DEALER lets a client have a request outstanding without the
REQ/REP lock-step. ZeroMQ also reconnects by itself, so clients may start before rank 0 binds.

Wire protocol (every frame raw bytes):

    client -> server  HELLO   [b"HI1", nonce_c(32), rank(ascii), MAC(secret; hello, nonce_c, rank)]
    server -> client  WELCOME [b"HI1", nonce_s(32), MAC(secret; welcome, nonce_c, nonce_s)]
                      DENY    [b"NO1"]                 (bad hello MAC; the client fails fast)
    client -> server  REQUEST [b"RQ1", ctr(u64), op, args..., MAC(K; "C", ctr, op, args...)]
    server -> client  REPLY   [b"RP1", sctr(u64), req_ctr(u64), status, payload..., MAC(K; "S", ...)]

K = HMAC(secret; session, nonce_c, nonce_s) is fresh per connection; ``ctr``/``sctr`` must strictly
increase, so a recorded message cannot be replayed on this or any other connection. A message
with a bad MAC is dropped and logged (WARNING, ``hetccl.bootstrap``); a client that receives a bad
reply raises AuthenticationError.

Aborting the job's start (``StoreClient.abort``): a rank that fails while joining posts its reason
with an ABORT request. From then on the server answers every parked request, and every later
request of any rank, with status ABORT and that reason, so the other ranks raise at once instead
of waiting out their timeouts for a rank that will never arrive. Rank 0 keeps serving until every
rank has been told (``wait_told``) or a grace period passes: a rank that connects later still
learns why.
"""
from __future__ import annotations

import heapq
import hmac
import itertools
import logging
import os
import socket
import struct
import threading
import time
from typing import Iterable, Sequence

import zmq

from ..errors import AuthenticationError, CommAborted, HetcclTimeout, InvalidUsage
from .auth import NONCE_BYTES, derive_key, hmac_key, mac, new_nonce

log = logging.getLogger("hetccl.bootstrap")

__all__ = ["StoreServer", "StoreClient", "free_port"]

MAX_FRAME = 64 << 20           # zmq drops (and disconnects) anything larger: garbage can't eat memory
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_HELLO, _DENY, _REQ, _REP = b"HI1", b"NO1", b"RQ1", b"RP1"
_L_HELLO, _L_WELCOME, _L_SESSION = b"hetccl-store-hello", b"hetccl-store-welcome", b"hetccl-store-session"
OK, TIMEOUT, ERR, ABORT = b"OK", b"TIMEOUT", b"ERR", b"ABORT"
_AUTH_HINT = "bad authentication; is HETCCL_SECRET the same on every rank?"


def _endpoint(host: str, port: int | str) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def _ms(seconds: float) -> bytes:
    return _U64.pack(max(0, int(seconds * 1000)))


# ------------------------------------------------------------------------------------------------
# Server
# ------------------------------------------------------------------------------------------------
class _Session:
    __slots__ = ("key", "rank", "peer", "last_ctr", "sctr")

    def __init__(self, key: bytes, rank: str, peer: str):
        self.key, self.rank, self.peer = key, rank, peer
        self.last_ctr = 0
        self.sctr = 0


class _Waiter:
    """A parked blocking request: answered when ``ready()`` holds or at ``deadline``."""

    __slots__ = ("ident", "req_ctr", "kind", "keys", "threshold", "deadline", "done")

    def __init__(self, ident, req_ctr, kind, keys, threshold, deadline):
        self.ident, self.req_ctr, self.kind, self.keys = ident, req_ctr, kind, keys
        self.threshold, self.deadline, self.done = threshold, deadline, False


class StoreServer:
    """Serves the store on ``tcp://bind_host:port`` from a daemon thread (port 0 = any free port).

    ``.address`` is (host, port) to connect to; for a wildcard bind ("0.0.0.0", "::", "*") the
    host given is 127.0.0.1 and the caller publishes its reachable address itself.
    """

    def __init__(self, bind_host: str = "127.0.0.1", port: int = 0, secret: bytes | None = None):
        self._secret_key = hmac_key(secret)
        self._ctx = zmq.Context(io_threads=1)
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
        self._sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting client keeps its session
        host = "*" if bind_host in ("", "*") else bind_host
        if ":" in host:
            self._sock.setsockopt(zmq.IPV6, 1)
        try:
            self._sock.bind(_endpoint(host, port if port else "*"))
        except zmq.ZMQError as e:
            self._sock.close()
            self._ctx.term()
            raise InvalidUsage(
                f"cannot serve the hetccl store on {bind_host}:{port}: {e.strerror}. Choose a "
                f"free port on rank 0's host (HETCCL_STORE=host:port or MASTER_PORT), or check "
                f"that {bind_host!r} is an address of rank 0's host") from None
        bound = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._port = int(bound.rsplit(":", 1)[1])
        self._host = "127.0.0.1" if host in ("*", "0.0.0.0") else ("::1" if host == "::" else host)
        wake = f"inproc://hetccl-store-wake-{id(self)}"
        self._wake_recv = self._ctx.socket(zmq.PAIR)
        self._wake_recv.bind(wake)
        self._wake_send = self._ctx.socket(zmq.PAIR)
        self._wake_send.connect(wake)

        self._data: dict[str, bytes] = {}
        self._sessions: dict[bytes, _Session] = {}
        self._waiting: dict[str, list[_Waiter]] = {}
        self._deadlines: list[tuple[float, int, _Waiter]] = []
        self._seq = itertools.count()
        self._warned: set[tuple[str, str]] = set()
        self._closed = False
        self._abort: bytes | None = None    # the first ABORT's reason ("<error class>|<message>")
        self._told: set[str] = set()        # ranks that got the abort (or said goodbye since)
        self._told_cv = threading.Condition()
        # Live TCP connections, from the socket monitor: a rank that exits (or dies) drops its
        # connection, so rank 0 can wait for the others before it stops serving.
        self._mon = self._sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._conns: set[int] = set()
        self._idle = threading.Event()  # set while no client is connected
        self._idle.set()
        self.messages_received = 0  # diagnostics (tests check that a blocking get doesn't poll)
        self._thread = threading.Thread(target=self._serve, name=f"hetccl-store:{self._port}",
                                        daemon=True)
        self._thread.start()
        log.debug("store serving on %s:%d", bind_host, self._port)

    @property
    def address(self) -> tuple[str, int]:
        return (self._host, self._port)

    @property
    def port(self) -> int:
        return self._port

    @property
    def sessions(self) -> int:
        """Number of connected clients that have not said goodbye."""
        return len(self._sessions)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no client is connected (all closed or exited); False on timeout.

        Why: rank 0 must not stop serving while another rank still waits for the answer to its
        last request (e.g. the final barrier), or that rank times out."""
        return self._idle.wait(timeout)

    def wait_told(self, ranks: Iterable[int], timeout: float) -> bool:
        """After an abort: wait until every rank in ``ranks`` was answered ABORT (or said goodbye);
        False on timeout. Why: rank 0 must not stop serving before a rank that is still starting
        has learned why the job stopped."""
        want = {str(r) for r in ranks}
        with self._told_cv:
            return self._told_cv.wait_for(lambda: want <= self._told, timeout)

    def _tell(self, rank: str) -> None:
        with self._told_cv:
            self._told.add(rank)
            self._told_cv.notify_all()

    def close(self, wait_for_clients: float = 0.0) -> None:
        """Stop serving, after waiting up to ``wait_for_clients`` seconds for every client to
        close. Clients still waiting afterwards get no answer (their own deadlines fire)."""
        if self._closed:
            return
        if wait_for_clients > 0 and not self.wait_idle(wait_for_clients):
            log.info("closing the store while %d client(s) are still connected",
                     len(self._conns))
        self._closed = True
        try:
            self._wake_send.send(b"stop")
        except zmq.ZMQError:
            pass
        self._thread.join(timeout=10)
        self._wake_send.close(linger=0)
        self._ctx.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the serving thread --------------------------------------------------------------------
    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_recv, zmq.POLLIN)
        poller.register(self._mon, zmq.POLLIN)
        try:
            while True:
                timeout_ms = None
                if self._deadlines:
                    timeout_ms = max(0, int((self._deadlines[0][0] - time.monotonic()) * 1000) + 1)
                events = dict(poller.poll(timeout_ms))
                if self._wake_recv in events:
                    break
                if self._mon in events:
                    self._monitor_events()
                if self._sock in events:
                    for _ in range(1000):  # drain, but let deadlines run now and then
                        try:
                            frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self.messages_received += 1
                        try:
                            self._handle(frames)
                        except Exception:  # never let one message kill the store
                            log.exception("store: error while handling a message (ignored)")
                self._expire()
        except Exception:
            log.exception("store server thread failed; ranks will time out waiting for it")
        finally:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._mon.close(linger=0)
            self._sock.close(linger=500)  # let the last replies out
            self._wake_recv.close(linger=0)

    def _monitor_events(self) -> None:
        while True:
            try:
                frames = self._mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 1 or len(frames[0]) < 6:
                continue
            event, fd = struct.unpack("=HI", frames[0][:6])
            if event == zmq.EVENT_ACCEPTED:
                self._conns.add(fd)
                self._idle.clear()
            elif event == zmq.EVENT_DISCONNECTED:
                self._conns.discard(fd)
                if not self._conns:
                    self._idle.set()

    def _refuse(self, peer: str, why: str = _AUTH_HINT) -> None:
        if (peer, why) not in self._warned and len(self._warned) < 1000:  # once per peer
            self._warned.add((peer, why))
            log.warning("refused store message from %s: %s", peer, why)

    def _handle(self, zframes) -> None:
        ident = zframes[0].bytes
        frames = [f.bytes for f in zframes[1:]]
        try:
            peer = zframes[1].get("Peer-Address") if len(zframes) > 1 else "<unknown peer>"
        except Exception:
            peer = "<unknown peer>"
        if not frames:
            return self._refuse(peer)
        kind = frames[0]
        if kind == _HELLO:
            return self._hello(ident, peer, frames)
        sess = self._sessions.get(ident)
        if kind != _REQ or sess is None or len(frames) < 4:
            return self._refuse(peer)
        body, tag = frames[1:-1], frames[-1]
        if not hmac.compare_digest(mac(sess.key, b"C", *body), tag):
            return self._refuse(f"{peer} (rank {sess.rank})")
        ctr = _U64.unpack(body[0])[0] if len(body[0]) == 8 else 0
        if ctr <= sess.last_ctr:
            return self._refuse(f"{peer} (rank {sess.rank})", "replayed message (old counter)")
        sess.last_ctr = ctr
        self._request(ident, sess, ctr, body[1], body[2:])

    def _hello(self, ident: bytes, peer: str, frames: list[bytes]) -> None:
        if len(frames) != 4 or len(frames[1]) != NONCE_BYTES or len(frames[2]) > 16:
            return self._refuse(peer)
        _, nonce_c, rank, tag = frames
        if not hmac.compare_digest(mac(self._secret_key, _L_HELLO, nonce_c, rank), tag):
            self._refuse(peer)
            self._sock.send_multipart([ident, _DENY])
            return
        nonce_s = new_nonce()
        key = derive_key(self._secret_key, _L_SESSION, nonce_c, nonce_s)
        old = self._sessions.pop(ident, None)
        if old is not None:
            self._drop_waiters(ident)
        self._sessions[ident] = _Session(key, rank.decode("ascii", "replace"), peer)
        self._sock.send_multipart(
            [ident, _HELLO, nonce_s, mac(self._secret_key, _L_WELCOME, nonce_c, nonce_s)])

    def _reply(self, ident: bytes, req_ctr: int, status: bytes, payload: Sequence[bytes] = ()):
        sess = self._sessions.get(ident)
        if sess is None:
            return
        sess.sctr += 1
        body = [_U64.pack(sess.sctr), _U64.pack(req_ctr), status, *payload]
        self._sock.send_multipart([ident, _REP, *body, mac(sess.key, b"S", *body)])

    def _request(self, ident: bytes, sess: _Session, ctr: int, op: bytes, args: list[bytes]):
        if self._abort is not None and op != b"BYE":
            self._reply(ident, ctr, ABORT, [self._abort])
            return self._tell(sess.rank)
        try:
            if op == b"ABORT" and len(args) == 1:
                self._start_abort(args[0] or b"CommAborted|(no reason given)")
                self._reply(ident, ctr, OK)
                self._tell(sess.rank)
            elif op == b"SET" and len(args) == 2:
                key = args[0].decode()
                self._data[key] = args[1]
                self._reply(ident, ctr, OK)
                self._changed(key)
            elif op == b"ADD" and len(args) == 2:
                key = args[0].decode()
                try:
                    value = int(self._data.get(key, b"0")) + _I64.unpack(args[1])[0]
                except ValueError:
                    return self._reply(ident, ctr, ERR, [
                        f"store key {key!r} does not hold an integer; add() needs a counter "
                        f"key that set() never wrote".encode()])
                self._data[key] = str(value).encode()
                self._reply(ident, ctr, OK, [self._data[key]])
                self._changed(key)
            elif op == b"DEL" and len(args) == 1:
                existed = self._data.pop(args[0].decode(), None) is not None
                self._reply(ident, ctr, OK, [b"1" if existed else b"0"])
            elif op == b"CHECK":
                self._reply(ident, ctr, OK, [b"1" if a.decode() in self._data else b"0"
                                             for a in args])
            elif op in (b"GET", b"MGET", b"WAIT") and len(args) >= 2:
                timeout = _U64.unpack(args[0])[0] / 1000.0
                keys = [a.decode() for a in args[1:]]
                self._park(ident, ctr, op, keys, 0, timeout)
            elif op == b"WAITGE" and len(args) == 3:
                timeout = _U64.unpack(args[0])[0] / 1000.0
                self._park(ident, ctr, op, [args[1].decode()], _I64.unpack(args[2])[0], timeout)
            elif op == b"BYE":
                self._drop_waiters(ident)
                self._sessions.pop(ident, None)
                if self._abort is not None:
                    self._tell(sess.rank)
            else:
                self._reply(ident, ctr, ERR, [f"unknown store request {op!r}".encode()])
        except (UnicodeDecodeError, struct.error) as e:
            self._reply(ident, ctr, ERR, [f"malformed store request: {e}".encode()])

    def _start_abort(self, reason: bytes) -> None:
        """Answer every parked request with the abort (their ranks are told now)."""
        self._abort = reason
        log.info("store: the job's start was aborted: %s", reason.decode("utf-8", "replace"))
        for lst in list(self._waiting.values()):
            for w in list(lst):
                if not w.done:
                    self._finish(w)
                    self._reply(w.ident, w.req_ctr, ABORT, [reason])
                    sess = self._sessions.get(w.ident)
                    if sess is not None:
                        self._tell(sess.rank)

    # -- waiters --------------------------------------------------------------------------------
    def _ready(self, w: _Waiter) -> list[bytes] | None:
        data = self._data
        if w.kind == b"WAITGE":
            v = data.get(w.keys[0])
            try:
                return [v] if v is not None and int(v) >= w.threshold else None
            except ValueError:
                return None
        if any(k not in data for k in w.keys):
            return None
        return [] if w.kind == b"WAIT" else [data[k] for k in w.keys]

    def _park(self, ident, ctr, kind, keys, threshold, timeout):
        w = _Waiter(ident, ctr, kind, keys, threshold, time.monotonic() + timeout)
        payload = self._ready(w)
        if payload is not None:
            return self._reply(ident, ctr, OK, payload)
        if timeout <= 0:
            return self._timeout(w)
        for k in set(keys):
            self._waiting.setdefault(k, []).append(w)
        heapq.heappush(self._deadlines, (w.deadline, next(self._seq), w))

    def _changed(self, key: str) -> None:
        waiters = self._waiting.get(key)
        if not waiters:
            return
        for w in list(waiters):
            if w.done:
                continue
            payload = self._ready(w)
            if payload is not None:
                self._finish(w)
                self._reply(w.ident, w.req_ctr, OK, payload)

    def _finish(self, w: _Waiter) -> None:
        w.done = True
        for k in set(w.keys):
            lst = self._waiting.get(k)
            if lst is not None:
                lst[:] = [x for x in lst if x is not w]
                if not lst:
                    del self._waiting[k]

    def _timeout(self, w: _Waiter) -> None:
        if w.kind == b"WAITGE":
            payload = [self._data.get(w.keys[0], b"0")]
        else:
            payload = [k.encode() for k in w.keys if k not in self._data]
        self._reply(w.ident, w.req_ctr, TIMEOUT, payload)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, w = heapq.heappop(self._deadlines)
            if not w.done:
                self._finish(w)
                self._timeout(w)

    def _drop_waiters(self, ident: bytes) -> None:
        for lst in list(self._waiting.values()):
            for w in list(lst):
                if w.ident == ident and not w.done:
                    self._finish(w)


# ------------------------------------------------------------------------------------------------
# Client
# ------------------------------------------------------------------------------------------------
class StoreClient:
    """One rank's authenticated connection to the store.

    Thread-safe, but requests are serialised: a thread parked in a long ``get`` holds the
    connection. A background thread that waits on the store should use its own ``clone()``.
    ``timeout`` is the default for every call (blocking calls take their own ``timeout=``).
    """

    GRACE = 2.0  # how much longer than the server-side deadline we wait before blaming the server

    def __init__(self, addr: tuple[str, int], secret: bytes | None, rank: int,
                 timeout: float = 300.0):
        self._addr = (str(addr[0]), int(addr[1]))
        self._secret = secret
        self._key = hmac_key(secret)
        self.rank = int(rank)
        self.timeout = float(timeout)
        self._lock = threading.RLock()
        self._ctr = 0
        self._last_sctr = 0
        self._closed = False
        ctx = zmq.Context.instance()
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        # A fixed identity lets the server recognise us (and keep our session) after a reconnect.
        self._sock.setsockopt(zmq.ROUTING_ID, b"\x01" + os.urandom(15))
        self._sock.setsockopt(zmq.IPV6, 1)  # dual stack: names may resolve to either family
        self._sock.connect(_endpoint(*self._addr))
        try:
            self._session = self._handshake(self.timeout)
        except BaseException:
            self._sock.close(linger=0)
            raise

    @property
    def address(self) -> tuple[str, int]:
        return self._addr

    def _where(self) -> str:
        return f"the hetccl store at {self._addr[0]}:{self._addr[1]}"

    def _handshake(self, timeout: float) -> bytes:
        nonce_c = new_nonce()
        rank = str(self.rank).encode()
        self._sock.send_multipart([_HELLO, nonce_c, rank, mac(self._key, _L_HELLO, nonce_c, rank)])
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000) + 1):
                if time.monotonic() < deadline:
                    continue
                raise HetcclTimeout(
                    f"rank {self.rank} could not reach {self._where()} within {timeout:g}s. Rank 0 "
                    f"serves it: check that rank 0 started, that this address is reachable from "
                    f"this host, and that HETCCL_STORE (or MASTER_ADDR/MASTER_PORT) is the same "
                    f"on every rank")
            msg = self._sock.recv_multipart()
            if msg and msg[0] == _DENY:
                raise AuthenticationError(
                    f"{self._where()} refused rank {self.rank}: {_AUTH_HINT}")
            if len(msg) == 3 and msg[0] == _HELLO and len(msg[1]) == NONCE_BYTES:
                nonce_s = msg[1]
                if hmac.compare_digest(mac(self._key, _L_WELCOME, nonce_c, nonce_s), msg[2]):
                    return derive_key(self._key, _L_SESSION, nonce_c, nonce_s)
            raise AuthenticationError(
                f"{self._where()} did not prove it knows the job secret ({_AUTH_HINT}); or "
                f"something else is listening on that port")

    def clone(self) -> "StoreClient":
        """A new, independent connection (for a thread that blocks on the store)."""
        return StoreClient(self._addr, self._secret, self.rank, self.timeout)

    def _request(self, op: bytes, args: Sequence[bytes], wait: float | None = None,
                 limit: float | None = None):
        """Send one request; returns (status, payload). ``wait`` = server-side deadline (s);
        ``limit`` = how long to wait for the answer (default: wait + grace, else the timeout); a
        given ``limit`` also bounds the wait for another thread's request to finish (the failure
        path must not sit behind a long barrier)."""
        start = time.monotonic()
        if not self._lock.acquire(timeout=-1 if limit is None else max(limit, 0.0)):
            raise HetcclTimeout(f"rank {self.rank}: the connection to {self._where()} stayed busy "
                                f"with another thread's request for {limit:g}s")
        try:
            if limit is not None:
                limit = max(0.1, limit - (time.monotonic() - start))
            return self._request_locked(op, args, wait, limit)
        finally:
            self._lock.release()

    def _request_locked(self, op: bytes, args: Sequence[bytes], wait: float | None, limit: float | None):
        """_request once the connection is ours."""
        if self._closed:
            raise InvalidUsage("this StoreClient is closed")
        self._ctr += 1
        ctr = self._ctr
        body = [_U64.pack(ctr), op, *args]
        self._sock.send_multipart([_REQ, *body, mac(self._session, b"C", *body)])
        if limit is None:
            limit = (wait + self.GRACE) if wait is not None else self.timeout
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HetcclTimeout(
                    f"{self._where()} did not answer rank {self.rank} within {limit:g}s. "
                    f"Rank 0 serves the store: has it exited or crashed?")
            if not self._sock.poll(int(left * 1000) + 1):
                continue
            msg = self._sock.recv_multipart()
            if len(msg) < 5 or msg[0] != _REP:
                raise AuthenticationError(f"malformed reply from {self._where()} ({_AUTH_HINT})")
            rbody, tag = msg[1:-1], msg[-1]
            if not hmac.compare_digest(mac(self._session, b"S", *rbody), tag):
                raise AuthenticationError(f"reply from {self._where()} failed authentication "
                                          f"({_AUTH_HINT})")
            sctr, req_ctr = _U64.unpack(rbody[0])[0], _U64.unpack(rbody[1])[0]
            if sctr <= self._last_sctr:
                raise AuthenticationError(f"replayed reply from {self._where()}")
            self._last_sctr = sctr
            if req_ctr != ctr:
                continue  # the late answer to an earlier request that we gave up on
            status, payload = rbody[2], rbody[3:]
            if status == ERR:
                raise InvalidUsage(payload[0].decode("utf-8", "replace") if payload
                                   else "the store refused the request")
            if status == ABORT:
                raise _aborted(self.rank, payload[0] if payload else b"")
            return status, payload

    def _t(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else float(timeout)

    # -- public API -----------------------------------------------------------------------------
    def set(self, key: str, value: bytes, timeout: float | None = None) -> None:
        """Store ``value`` under ``key`` (overwrites) and wake every rank waiting for it."""
        self._request(b"SET", [key.encode(), bytes(value)], limit=timeout)

    def get(self, key: str, timeout: float | None = None) -> bytes:
        """The value of ``key``, waiting until some rank sets it (the server answers then)."""
        t = self._t(timeout)
        status, payload = self._request(b"GET", [_ms(t), key.encode()], wait=t,
                                        limit=t + min(self.GRACE, 1.0) if timeout is not None else None)
        if status != OK:
            raise HetcclTimeout(f"rank {self.rank}: store key {key!r} was not set within {t:g}s; "
                                f"{_who_sets(key)}")
        return payload[0]

    def multi_get(self, keys: Sequence[str], timeout: float | None = None) -> list[bytes]:
        """Values of all ``keys`` (one round trip), waiting until every one exists."""
        t = self._t(timeout)
        status, payload = self._request(b"MGET", [_ms(t), *(k.encode() for k in keys)], wait=t)
        if status != OK:
            missing = [k.decode() for k in payload]
            raise HetcclTimeout(f"rank {self.rank}: store keys {missing} were not set within "
                                f"{t:g}s; {_who_sets(*missing)}")
        return list(payload)

    def check(self, keys: Iterable[str]) -> bool:
        """True if every key exists now (never waits)."""
        _, payload = self._request(b"CHECK", [k.encode() for k in keys])
        return all(p == b"1" for p in payload)

    def add(self, key: str, amount: int = 1, timeout: float | None = None) -> int:
        """Atomically add ``amount`` to the integer counter ``key`` (missing = 0); new value."""
        _, payload = self._request(b"ADD", [key.encode(), _I64.pack(int(amount))], limit=timeout)
        return int(payload[0])

    def wait(self, keys: Sequence[str] | str, timeout: float | None = None) -> None:
        """Return once every key in ``keys`` exists; HetcclTimeout naming the missing ones."""
        if isinstance(keys, str):
            keys = [keys]
        t = self._t(timeout)
        status, payload = self._request(b"WAIT", [_ms(t), *(k.encode() for k in keys)], wait=t)
        if status != OK:
            missing = [k.decode() for k in payload]
            raise HetcclTimeout(f"rank {self.rank}: store keys {missing} were not set within "
                                f"{t:g}s; {_who_sets(*missing)}")

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        _, payload = self._request(b"DEL", [key.encode()])
        return payload[0] == b"1"

    def allgather(self, prefix: str, value: bytes, size: int,
                  timeout: float | None = None) -> list[bytes]:
        """Every rank's ``value``, in rank order. Uses keys ``<prefix>/<rank>`` (left in place, so
        use a fresh prefix per call)."""
        self.set(f"{prefix}/{self.rank}", value)
        t = self._t(timeout)
        keys = [f"{prefix}/{r}" for r in range(size)]
        status, payload = self._request(b"MGET", [_ms(t), *(k.encode() for k in keys)], wait=t)
        if status != OK:
            missing = sorted(int(k.decode().rsplit("/", 1)[1]) for k in payload)
            raise HetcclTimeout(
                f"rank {self.rank}: allgather {prefix!r} timed out after {t:g}s: ranks {missing} "
                f"of {size} did not contribute (not started, stuck in earlier work, or dead)")
        return list(payload)

    def barrier(self, name: str, size: int, timeout: float | None = None) -> None:
        """Wait until ``size`` ranks called barrier(name); the same name may be reused."""
        key = f"barrier/{name}"
        arrived = self.add(key, 1)
        target = ((arrived - 1) // size + 1) * size
        t = self._t(timeout)
        status, payload = self._request(b"WAITGE", [_ms(t), key.encode(), _I64.pack(target)],
                                        wait=t)
        if status != OK:
            here = int(payload[0]) - (target - size)
            raise HetcclTimeout(
                f"rank {self.rank}: barrier {name!r} timed out after {t:g}s: {here} of {size} "
                f"ranks arrived; the others are stuck, dead or not started")

    def abort(self, error_class: str, message: str) -> bool:
        """Abort the job's start: every rank's pending and later store requests raise (see the
        module docstring). Best effort, never raises; False if the store did not take it (it was
        aborted already, or it is gone)."""
        reason = f"{error_class}|{message}".encode("utf-8", "replace")
        try:
            self._request(b"ABORT", [reason], limit=min(self.timeout, 5.0))
            return True
        except Exception:                   # noqa: BLE001 - aborted already, or no store to tell
            return False

    def close(self) -> None:
        """Say goodbye (frees the server's state for us) and close the connection."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._ctr += 1
                body = [_U64.pack(self._ctr), b"BYE"]
                self._sock.send_multipart([_REQ, *body, mac(self._session, b"C", *body)],
                                          zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._sock.close(linger=200)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _aborted(rank: int, reason: bytes) -> Exception:
    """The error a rank raises when the job's start was aborted: the failed rank's own error class
    for usage errors (every rank then reports the same mistake), CommAborted otherwise."""
    cls_name, _, msg = reason.decode("utf-8", "replace").partition("|")
    cls = InvalidUsage if cls_name == "InvalidUsage" else CommAborted
    return cls(f"rank {rank}: the job stopped while starting because {msg or 'another rank failed'}"
               + ("" if cls is InvalidUsage else f" ({cls_name})"))


def _who_sets(*keys: str) -> str:
    """A guess at who should have set ``keys``: the trailing /<rank> of a key, by convention."""
    ranks = sorted({int(k.rsplit("/", 1)[1]) for k in keys
                    if "/" in k and k.rsplit("/", 1)[1].isdigit()})
    if ranks:
        return (f"rank(s) {ranks} may be missing, stuck in earlier work, or dead "
                f"(check their output)")
    return ("the rank that sets it may be missing, stuck or dead; check that every rank runs the "
            "same program and reached the same step")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (racy by nature; fine for launchers)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]

