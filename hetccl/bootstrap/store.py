"""The job's key-value store: how ranks find each other before any data link exists.

Rank 0 serves it from a daemon thread (``StoreServer``); every rank, rank 0 included, talks to it
through a ``StoreClient``. Keys are str (UTF-8 on the wire), values raw bytes: nothing received is
ever unpickled.

Why one TCP connection per client and a server of our own: a blocking ``get`` must not busy-poll
the server. The server parks the request as a *waiter* and answers when the key appears (or the
waiter's deadline passes), so answers may come out of order. And the port is open to anything on
the network: a peer that has not proven the job secret must cost almost nothing. Connections are
authenticated by a ``guard.HandshakeGate`` thread (at most ``guard.MAX_PENDING`` at a time, each
with a deadline, the hello capped at 4 frames and 256 bytes before anything is allocated); only then
does the serving thread read from them, with per-message caps (MAX_FRAMES, MAX_MESSAGE) checked
before the payload is read. Clients retry connecting until their timeout, so they may start before
rank 0 binds. A client whose connection drops gets PeerLostError (rank 0 is gone).

Wire protocol: each message is a list of raw-byte frames, framed by guard.encode.

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

import collections
import heapq
import hmac
import itertools
import logging
import os
import selectors
import socket
import struct
import threading
import time
from typing import Iterable, Sequence

from ..errors import (AuthenticationError, CommAborted, HetcclTimeout, InvalidUsage, PeerLostError,
                      TransportError)
from .auth import NONCE_BYTES, derive_key, hmac_key, mac, new_nonce
from .guard import (FramingError, HandshakeGate, MessageReader, Send, encode, message_steps,
                    run_blocking, send_all, wait_readable)

log = logging.getLogger("hetccl.bootstrap")

__all__ = ["StoreServer", "StoreClient", "free_port"]

MAX_MESSAGE = 256 << 20        # bytes in one authenticated message (all frames)
MAX_FRAMES = 1 << 16           # frames in one authenticated message (an MGET of 65k keys)
_HELLO_FRAMES, _HELLO_BYTES = 4, 256   # the only message a stranger may send
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_HELLO, _DENY, _REQ, _REP = b"HI1", b"NO1", b"RQ1", b"RP1"
_L_HELLO, _L_WELCOME, _L_SESSION = b"hetccl-store-hello", b"hetccl-store-welcome", b"hetccl-store-session"
OK, TIMEOUT, ERR, ABORT = b"OK", b"TIMEOUT", b"ERR", b"ABORT"
_AUTH_HINT = "bad authentication; is HETCCL_SECRET the same on every rank?"


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


class _Conn:
    """One authenticated client connection on the serving thread (its identity in waiters)."""
    __slots__ = ("sock", "peer", "reader", "out", "__weakref__")

    def __init__(self, sock: socket.socket, peer: str):
        self.sock, self.peer = sock, peer
        self.reader = MessageReader(MAX_FRAMES, MAX_MESSAGE)
        self.out = bytearray()


class StoreServer:
    """Serves the store on ``bind_host:port`` from a daemon thread (port 0 = any free port).

    ``.address`` is (host, port) to connect to; for a wildcard bind ("0.0.0.0", "::", "*") the
    host given is 127.0.0.1 and the caller publishes its reachable address itself.
    """

    def __init__(self, bind_host: str = "127.0.0.1", port: int = 0, secret: bytes | None = None,
                 key_file: str | None = None):
        self._secret_key = hmac_key(secret)
        self._key_file = key_file    # where the secret was left for the other ranks: removed at close
        host = "0.0.0.0" if bind_host in ("", "*") else bind_host
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(fam, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6 and host == "::":
                self._listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self._listener.bind((host, port))
            self._listener.listen(512)
        except OSError as e:
            self._listener.close()
            raise InvalidUsage(
                f"cannot serve the hetccl store on {bind_host}:{port}: {e.strerror}. Choose a "
                f"free port on rank 0's host (HETCCL_STORE=host:port or MASTER_PORT), or check "
                f"that {bind_host!r} is an address of rank 0's host") from None
        self._port = self._listener.getsockname()[1]
        self._host = "127.0.0.1" if host == "0.0.0.0" else ("::1" if host == "::" else host)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)

        self._data: dict[str, bytes] = {}
        self._sessions: dict[_Conn, _Session] = {}
        self._waiting: dict[str, list[_Waiter]] = {}
        self._deadlines: list[tuple[float, int, _Waiter]] = []
        self._seq = itertools.count()
        self._warned: set[tuple[str, str]] = set()
        self._closed = False
        self._abort: bytes | None = None    # the first ABORT's reason ("<error class>|<message>")
        self._told: set[str] = set()        # ranks that got the abort (or said goodbye since)
        self._told_cv = threading.Condition()
        self._arrived: collections.deque = collections.deque()  # (sock, session) from the gate
        self._idle = threading.Event()  # set while no authenticated client is connected
        self._idle.set()
        self.messages_received = 0  # diagnostics (tests check that a blocking get doesn't poll)
        self._thread = threading.Thread(target=self._serve, name=f"hetccl-store:{self._port}",
                                        daemon=True)
        self._thread.start()
        self._gate = HandshakeGate(self._listener, self._hello_steps, self._arrive,
                                   name=f"hetccl-store-gate:{self._port}",
                                   what="store connection", logger=log)
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

    @property
    def gate(self) -> HandshakeGate:
        """The handshake gate (its counters say how many strangers were refused or dropped)."""
        return self._gate

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
                     len(self._sessions))
        self._gate.close()
        self._closed = True
        self._wake()
        self._thread.join(timeout=10)
        self._listener.close()
        if self._key_file:
            try:
                os.unlink(self._key_file)
            except OSError:
                pass
        os.close(self._wake_w)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # -- the gate's side: strangers prove the secret before the serving thread sees them --------
    def _hello_steps(self, peer: str):
        frames = yield from message_steps(_HELLO_FRAMES, _HELLO_BYTES)
        if len(frames) != 4 or frames[0] != _HELLO or len(frames[1]) != NONCE_BYTES \
                or len(frames[2]) > 16:
            raise FramingError("not a hetccl store hello")
        _, nonce_c, rank, tag = frames
        if not hmac.compare_digest(mac(self._secret_key, _L_HELLO, nonce_c, rank), tag):
            yield Send(encode([_DENY]))
            raise AuthenticationError(_AUTH_HINT)
        nonce_s = new_nonce()
        key = derive_key(self._secret_key, _L_SESSION, nonce_c, nonce_s)
        # Busy from now on: the client may ask wait_idle's question before _arrive runs.
        self._idle.clear()
        welcomed = False
        try:
            yield Send(encode([_HELLO, nonce_s, mac(self._secret_key, _L_WELCOME, nonce_c,
                                                    nonce_s)]))
            welcomed = True
        finally:
            if not welcomed and not self._sessions and not self._arrived:
                self._idle.set()     # the welcome never went out (the gate dropped it)
        return _Session(key, rank.decode("ascii", "replace"), peer)

    def _arrive(self, sock: socket.socket, sess: _Session) -> None:
        self._arrived.append((sock, sess))
        self._wake()

    # -- the serving thread --------------------------------------------------------------------
    def _serve(self) -> None:
        try:
            while not self._closed:
                timeout = None
                if self._deadlines:
                    timeout = max(0.0, self._deadlines[0][0] - time.monotonic() + 0.001)
                for key, mask in self._sel.select(timeout):
                    conn = key.data
                    if conn is None:
                        try:
                            os.read(self._wake_r, 4096)
                        except OSError:
                            pass
                        continue
                    if mask & selectors.EVENT_WRITE:
                        self._flush(conn)
                    if mask & selectors.EVENT_READ and conn in self._sessions:
                        self._receive(conn)
                while self._arrived:
                    sock, sess = self._arrived.popleft()
                    sock.setblocking(False)
                    conn = _Conn(sock, sess.peer)
                    self._sessions[conn] = sess
                    self._sel.register(sock, selectors.EVENT_READ, conn)
                self._expire()
        except Exception:
            log.exception("store server thread failed; ranks will time out waiting for it")
        finally:
            for conn in list(self._sessions):
                self._drop(conn)
            while self._arrived:
                self._arrived.popleft()[0].close()
            self._sel.close()
            os.close(self._wake_r)

    def _receive(self, conn: _Conn) -> None:
        try:
            messages = conn.reader.read(conn.sock)
        except FramingError as e:
            self._refuse(conn.peer, f"bad framing ({e})")
            return self._drop(conn)
        except PeerLostError:
            return self._drop(conn)
        for frames in messages:
            self.messages_received += 1
            try:
                self._handle(conn, frames)
            except Exception:  # never let one message kill the store
                log.exception("store: error while handling a message (ignored)")
            if conn not in self._sessions:
                return

    def _send(self, conn: _Conn, frames) -> None:
        if conn not in self._sessions:
            return
        conn.out += encode(frames)
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            while conn.out:
                n = conn.sock.send(conn.out)
                del conn.out[:n]
        except (BlockingIOError, InterruptedError):
            self._sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
            return
        except OSError:
            return self._drop(conn)
        self._sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def _drop(self, conn: _Conn) -> None:
        """The client is gone (goodbye, EOF, error or garbage): forget it and its waiters."""
        sess = self._sessions.pop(conn, None)
        self._drop_waiters(conn)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        if sess is not None and self._abort is not None:
            self._tell(sess.rank)
        if not self._sessions and not self._arrived:
            self._idle.set()

    def _refuse(self, peer: str, why: str = _AUTH_HINT) -> None:
        if (peer, why) not in self._warned and len(self._warned) < 1000:  # once per peer
            self._warned.add((peer, why))
            log.warning("refused store message from %s: %s", peer, why)

    def _handle(self, conn: _Conn, frames: list[bytes]) -> None:
        sess = self._sessions[conn]
        if frames[0] != _REQ or len(frames) < 4:
            self._refuse(f"{conn.peer} (rank {sess.rank})")
            return self._drop(conn)
        body, tag = frames[1:-1], frames[-1]
        if not hmac.compare_digest(mac(sess.key, b"C", *body), tag):
            return self._refuse(f"{conn.peer} (rank {sess.rank})")
        ctr = _U64.unpack(body[0])[0] if len(body[0]) == 8 else 0
        if ctr <= sess.last_ctr:
            return self._refuse(f"{conn.peer} (rank {sess.rank})", "replayed message (old counter)")
        sess.last_ctr = ctr
        self._request(conn, sess, ctr, body[1], body[2:])

    def _reply(self, ident: _Conn, req_ctr: int, status: bytes, payload: Sequence[bytes] = ()):
        sess = self._sessions.get(ident)
        if sess is None:
            return
        sess.sctr += 1
        body = [_U64.pack(sess.sctr), _U64.pack(req_ctr), status, *payload]
        self._send(ident, [_REP, *body, mac(sess.key, b"S", *body)])

    def _request(self, ident: _Conn, sess: _Session, ctr: int, op: bytes, args: list[bytes]):
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
                self._drop(ident)
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

    def _drop_waiters(self, ident: _Conn) -> None:
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
    ``secret`` may be a callable: it is called once the connection is up (rendezvous.py reads
    rank 0's key file then). ``cancel``: a threading.Event (with a ``reason``) that, once set
    from any thread, makes the pending and later requests raise CommAborted within 0.2 s (a
    shrink's set-up gives up on it when a survivor dies).
    """

    GRACE = 2.0  # how much longer than the server-side deadline we wait before blaming the server

    def __init__(self, addr: tuple[str, int], secret: bytes | None, rank: int,
                 timeout: float = 300.0, cancel=None):
        self._addr = (str(addr[0]), int(addr[1]))
        self._secret = secret   # bytes, None, or a callable that gives it once we are connected
        self.rank = int(rank)
        self.timeout = float(timeout)
        self._lock = threading.RLock()
        self._ctr = 0
        self._last_sctr = 0
        self._closed = False
        self._cancel = cancel
        self.abort_reason: bytes | None = None   # the job's start was aborted: the first reason
        self._pending: collections.deque = collections.deque()
        self._reader = MessageReader(MAX_FRAMES, MAX_MESSAGE)
        deadline = time.monotonic() + self.timeout
        self._sock = self._connect(deadline)
        try:
            if callable(self._secret):
                self._secret = self._secret()
            self._key = hmac_key(self._secret)
            self._session = self._handshake(deadline)
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise

    @property
    def address(self) -> tuple[str, int]:
        return self._addr

    @property
    def secret(self) -> bytes | None:
        """The job secret this client authenticated with."""
        return self._secret

    @property
    def local_address(self) -> str:
        """This host's address on the route to the store: where this rank's own listeners bind
        unless HETCCL_SOCKET_IFNAME says otherwise (the store's route reaches the other ranks)."""
        return self._local

    def _where(self) -> str:
        return f"the hetccl store at {self._addr[0]}:{self._addr[1]}"

    def _unreachable(self, why: str) -> HetcclTimeout:
        return HetcclTimeout(
            f"rank {self.rank} could not reach {self._where()} within {self.timeout:g}s ({why}). "
            f"Rank 0 serves it: check that rank 0 started, that this address is reachable from "
            f"this host, and that HETCCL_STORE (or MASTER_ADDR/MASTER_PORT) is the same on every "
            f"rank")

    def _connect(self, deadline: float) -> socket.socket:
        """Connect, retrying while rank 0 has not bound the port yet."""
        pause = 0.02
        while True:
            self._check_cancelled()
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._unreachable("connection refused or unreachable")
            try:
                sock = socket.create_connection(self._addr, timeout=min(left, 1.0 if self._cancel else 5.0))
            except OSError as e:
                if time.monotonic() + pause >= deadline:
                    raise self._unreachable(str(e)) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._local = sock.getsockname()[0]
            return sock

    def _handshake(self, deadline: float) -> bytes:
        nonce_c = new_nonce()
        rank = str(self.rank).encode()
        steps = message_steps(3, 256)
        try:
            send_all(self._sock, encode([_HELLO, nonce_c, rank, mac(self._key, _L_HELLO, nonce_c,
                                                                    rank)]), deadline)
            msg = run_blocking(steps, self._sock, deadline, "store's welcome")
        except HetcclTimeout:
            raise self._unreachable("no answer to our hello") from None
        except FramingError:
            msg = []
        if msg and msg[0] == _DENY:
            raise AuthenticationError(f"{self._where()} refused rank {self.rank}: {_AUTH_HINT}")
        if len(msg) == 3 and msg[0] == _HELLO and len(msg[1]) == NONCE_BYTES:
            nonce_s = msg[1]
            if hmac.compare_digest(mac(self._key, _L_WELCOME, nonce_c, nonce_s), msg[2]):
                return derive_key(self._key, _L_SESSION, nonce_c, nonce_s)
        raise AuthenticationError(
            f"{self._where()} did not prove it knows the job secret ({_AUTH_HINT}); or "
            f"something else is listening on that port")

    def clone(self) -> "StoreClient":
        """A new, independent connection (for a thread that blocks on the store)."""
        return StoreClient(self._addr, self._secret, self.rank, self.timeout, self._cancel)

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
        self._send([_REQ, *body, mac(self._session, b"C", *body)])
        if limit is None:
            limit = (wait + self.GRACE) if wait is not None else self.timeout
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HetcclTimeout(
                    f"{self._where()} did not answer rank {self.rank} within {limit:g}s. "
                    f"Rank 0 serves the store: has it exited or crashed?")
            self._check_cancelled()
            msg = self._next_message(min(deadline, time.monotonic() + 0.2) if self._cancel else deadline)
            if msg is None:
                continue
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
                self.abort_reason = payload[0] if payload else b""
                raise _aborted(self.rank, self.abort_reason)
            return status, payload

    def _send(self, frames) -> None:
        try:
            send_all(self._sock, encode(frames), time.monotonic() + self.timeout, "sending to the store")
        except PeerLostError as e:
            raise self._lost(e) from None

    def _next_message(self, deadline: float) -> list[bytes] | None:
        """The next reply (None if none arrived before ``deadline``)."""
        if self._pending:
            return self._pending.popleft()
        if not wait_readable(self._sock, deadline):
            return None
        try:
            self._pending.extend(self._reader.read(self._sock))
        except FramingError as e:
            raise AuthenticationError(f"malformed reply from {self._where()} ({e})") from None
        except PeerLostError as e:
            raise self._lost(e) from None
        return self._pending.popleft() if self._pending else None

    def _lost(self, e: Exception) -> PeerLostError:
        return PeerLostError(f"rank {self.rank} lost its connection to {self._where()} ({e}); "
                             f"rank 0 serves the store: has it exited or crashed?")

    def _t(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else float(timeout)

    def _check_cancelled(self):
        c = self._cancel
        if c is not None and c.is_set():
            raise CommAborted(getattr(c, "reason", None) or "the store request was cancelled")

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
                self._sock.send(encode([_REQ, *body, mac(self._session, b"C", *body)]),
                                socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except OSError:
                pass
            self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _aborted(rank: int, reason: bytes) -> Exception:
    """The error a rank raises when the job's start was aborted: the failed rank's own error class
    for usage errors and for a transport that cannot start (a full /dev/shm: every rank then
    reports the same mistake, and its fix), CommAborted otherwise."""
    cls_name, _, msg = reason.decode("utf-8", "replace").partition("|")
    cls = {"InvalidUsage": InvalidUsage, "TransportError": TransportError}.get(cls_name, CommAborted)
    return cls(f"rank {rank}: the job stopped while starting because {msg or 'another rank failed'}"
               + ("" if cls is not CommAborted else f" ({cls_name})"))


def _who_sets(*keys: str) -> str:
    """A guess at who should have set ``keys``: the trailing /<rank> of a key, by convention."""
    ranks = sorted({int(k.rsplit("/", 1)[1]) for k in keys
                    if "/" in k and k.rsplit("/", 1)[1].isdigit()})
    if ranks:
        return (f"rank(s) {ranks} may be missing, stuck in earlier work, or dead "
                f"(check their output)")
    return ("the rank that sets it may be missing, stuck or dead; check that every rank runs the "
            "same program and reached the same step")


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``, for a launcher to hand to rank 0's store.

    Racy by nature (free now, bound later by another process), so it is drawn at random from
    *below* the kernel's ephemeral range: every outgoing connection on the host takes its local
    port from that range, and on a busy host one of them can take a port that bind(0) just
    returned before rank 0 binds it ("Address already in use"). Falls back to bind(0)."""
    import random
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    lo, _ = _ephemeral_range()
    first = 10000 if lo > 12000 else 1024
    for _ in range(64):
        port = random.randrange(first, lo) if lo > first + 1000 else 0
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]

