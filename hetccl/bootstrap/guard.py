"""Bounded work before authentication: capped framing, a handshake gate, deadlines on sockets.

Why: every hetccl port (the store, the data listeners while a communicator is set up, the
point-to-point listener) can be reached by anything on the network until the peer has proven the job
secret. Until then a connection may cost us only a few hundred bytes, one of few slots and a few
seconds, and it must never hold up a thread that data waits on. Every listener uses these pieces
for that, and new listeners (a control plane, say) should too:

* **Steps.** A handshake is written once, as a generator that yields ``Recv(n)`` (give me exactly n
  bytes) and ``Send(data)`` and returns its result (e.g. the proven peer rank). ``run_blocking``
  drives one on a blocking socket under one deadline (the connecting side); ``HandshakeGate``
  drives many at once, non-blocking, on a thread of its own (the accepting side).
* **HandshakeGate(listener, handshake, on_ready, max_pending=, timeout=)** accepts, runs
  ``handshake()`` for every connection with a deadline of ``timeout`` seconds each, and passes each
  authenticated socket with the handshake's result to ``on_ready`` (called on the gate's thread:
  keep it short, e.g. put it in a queue). At most ``max_pending`` connections are unauthenticated
  at a time; past that the oldest is dropped: a real rank completes in milliseconds, so it gets
  through even while something else keeps opening idle connections.
* **Framed messages.** ``encode(frames)`` writes u32 frame count | u32 length of each frame |
  frames. ``message_steps`` (for handshakes) and ``MessageReader`` (non-blocking, for authenticated
  streams) check the count against ``max_frames`` and the total against ``max_bytes`` as soon as
  they have read the counts, before they allocate or copy anything.
* ``send_all`` / ``wait_readable``: poll(2) with a deadline (no select(): it fails past fd 1024).
"""
from __future__ import annotations

import collections
import errno
import logging
import os
import select
import selectors
import socket
import struct
import threading
import time
from typing import Callable, Generator

from ..errors import AuthenticationError, HetcclTimeout, PeerLostError

log = logging.getLogger("hetccl.transport")

__all__ = ["Recv", "Send", "FramingError", "run_blocking", "HandshakeGate", "encode",
           "message_steps", "MessageReader", "send_all", "wait_readable", "peer_name",
           "MAX_PENDING", "HANDSHAKE_TIMEOUT"]

MAX_PENDING = 64          # unauthenticated connections held at once per listener
HANDSHAKE_TIMEOUT = 10.0  # seconds an unauthenticated connection may take to prove itself
_U32 = struct.Struct(">I")


class FramingError(AuthenticationError):
    """A peer sent a frame header outside the caps (or garbage): the connection is dropped."""


class Recv:
    """Handshake step: the next ``n`` bytes from the peer (sent back into the generator)."""
    __slots__ = ("n",)

    def __init__(self, n: int):
        self.n = n


class Send:
    """Handshake step: send ``data`` to the peer."""
    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


Steps = Generator[object, object, object]


def peer_name(sock: socket.socket) -> str:
    try:
        addr = sock.getpeername()
    except OSError:
        return "<unknown peer>"
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr) or "<local socket>"


# ------------------------------------------------------------------------------------------------
# Blocking helpers with a deadline (poll, never select)
# ------------------------------------------------------------------------------------------------
def _poll(sock: socket.socket, events: int, deadline: float) -> bool:
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    p = select.poll()
    p.register(sock, events)
    return bool(p.poll(max(1, int(left * 1000) + 1)))


def wait_readable(sock: socket.socket, deadline: float) -> bool:
    """True once ``sock`` has bytes (or EOF) to read; False when ``deadline`` passes first."""
    return _poll(sock, select.POLLIN, deadline)


def send_all(sock: socket.socket, data, deadline: float, what: str = "sending") -> None:
    """Send every byte of ``data`` on a (blocking or not) socket before ``deadline``:
    HetcclTimeout if the peer does not take them in time, PeerLostError if the connection fails."""
    view = memoryview(data).cast("B")
    while view:
        try:
            n = sock.send(view, socket.MSG_DONTWAIT | getattr(socket, "MSG_NOSIGNAL", 0))
        except (BlockingIOError, InterruptedError):
            if not _poll(sock, select.POLLOUT, deadline):
                raise HetcclTimeout(f"{peer_name(sock)} did not take our data in time "
                                    f"({what}); is the peer stuck?") from None
            continue
        except OSError as e:
            raise PeerLostError(f"connection to {peer_name(sock)} failed while {what} ({e}); "
                                f"the peer may have died") from e
        view = view[n:]


def recv_exact(sock: socket.socket, n: int, deadline: float, what: str) -> bytes:
    """Exactly ``n`` bytes before ``deadline`` (n is the caller's, never the peer's, number)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            if not wait_readable(sock, deadline):
                raise HetcclTimeout(f"{peer_name(sock)} sent nothing in time while we waited for "
                                    f"the {what}; is the peer a hetccl rank of this job?") from None
            continue
        except OSError as e:
            raise PeerLostError(f"connection to {peer_name(sock)} failed while we waited for the "
                                f"{what} ({e}); the peer may have died") from e
        if k == 0:
            raise PeerLostError(f"{peer_name(sock)} closed the connection while we waited for the "
                                f"{what}; the peer may have died or refused our credentials "
                                f"(is HETCCL_SECRET the same on every rank?)")
        got += k
    return bytes(buf)


def run_blocking(steps: Steps, sock: socket.socket, deadline: float, what: str = "handshake"):
    """Drive a handshake generator on ``sock`` until it returns (its result) or ``deadline``."""
    value = None
    while True:
        try:
            step = steps.send(value)
        except StopIteration as done:
            return done.value
        if isinstance(step, Recv):
            value = recv_exact(sock, step.n, deadline, what) if step.n else b""
        else:
            send_all(sock, step.data, deadline, what)
            value = None


# ------------------------------------------------------------------------------------------------
# Framed messages
# ------------------------------------------------------------------------------------------------
def encode(frames) -> bytes:
    """One message: u32 count | u32 length per frame | the frames."""
    frames = [bytes(f) for f in frames]
    return b"".join([_U32.pack(len(frames)), *(_U32.pack(len(f)) for f in frames), *frames])


def _check_counts(n: int, max_frames: int) -> None:
    if not 1 <= n <= max_frames:
        raise FramingError(f"message of {n} frames (at most {max_frames} are allowed here)")


def _split(lengths: list[int], payload) -> list[bytes]:
    out, at = [], 0
    view = memoryview(payload)
    for n in lengths:
        out.append(bytes(view[at:at + n]))
        at += n
    return out


def message_steps(max_frames: int, max_bytes: int) -> Steps:
    """Handshake steps reading one framed message within the caps; returns its frames."""
    n = _U32.unpack((yield Recv(4)))[0]
    _check_counts(n, max_frames)
    lengths = list(struct.unpack(f">{n}I", (yield Recv(4 * n))))
    total = sum(lengths)
    if total > max_bytes:
        raise FramingError(f"message of {total} bytes (at most {max_bytes} are allowed here)")
    return _split(lengths, (yield Recv(total)))


class MessageReader:
    """Reads framed messages from a non-blocking socket as bytes arrive (one per connection).

    ``read(sock)`` takes what the socket has now and returns the messages it completed (lists of
    frames). Caps are checked when the counts arrive, before the payload is allocated. Raises
    FramingError for a header outside the caps and PeerLostError at EOF or a socket error."""

    CHUNK = 1 << 20   # fairness: at most this many bytes per read() call and connection

    def __init__(self, max_frames: int, max_bytes: int):
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self._reset()

    def _reset(self):
        self._phase, self._lengths = 0, None
        self._buf = bytearray(4)
        self._got = 0

    def _advance(self) -> list[bytes] | None:
        if self._phase == 0:
            n = _U32.unpack(self._buf)[0]
            _check_counts(n, self.max_frames)
            self._phase, self._buf, self._got = 1, bytearray(4 * n), 0
            return None
        if self._phase == 1:
            self._lengths = list(struct.unpack(f">{len(self._buf) // 4}I", self._buf))
            total = sum(self._lengths)
            if total > self.max_bytes:
                raise FramingError(f"message of {total} bytes (at most {self.max_bytes} are "
                                   f"allowed here)")
            self._phase, self._buf, self._got = 2, bytearray(total), 0
            if total:
                return None
        frames = _split(self._lengths, self._buf)
        self._reset()
        return frames

    def read(self, sock: socket.socket) -> list[list[bytes]]:
        out, budget = [], self.CHUNK
        while budget > 0:
            want = len(self._buf) - self._got
            if want == 0:
                msg = self._advance()
                if msg is not None:
                    out.append(msg)
                continue
            try:
                k = sock.recv_into(memoryview(self._buf)[self._got:], min(want, budget))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                raise PeerLostError(f"connection from {peer_name(sock)} failed ({e})") from e
            if k == 0:
                raise PeerLostError(f"{peer_name(sock)} closed the connection")
            self._got += k
            budget -= k
        if self._got == len(self._buf) and self._phase == 2:  # a message completed on the last read
            msg = self._advance()
            if msg is not None:
                out.append(msg)
        return out


# ------------------------------------------------------------------------------------------------
# The gate: many handshakes at once, off the data path
# ------------------------------------------------------------------------------------------------
class _Pending:
    __slots__ = ("sock", "peer", "steps", "step", "buf", "out", "deadline")

    def __init__(self, sock, peer, steps, deadline):
        self.sock, self.peer, self.steps, self.deadline = sock, peer, steps, deadline
        self.step, self.buf, self.out = None, bytearray(), b""


class HandshakeGate:
    """Accepts on ``listener`` and authenticates every connection off the caller's threads (see the
    module docstring). ``handshake(peer)`` returns a fresh step generator for a connection from
    ``peer`` ("host:port"); ``on_ready(sock, result)`` receives each authenticated (blocking)
    socket. Counters: ``accepted``, ``refused`` (failed or garbled handshakes), ``dropped`` (past
    the cap), ``expired`` (past the deadline)."""

    def __init__(self, listener: socket.socket, handshake: Callable[[str], Steps],
                 on_ready: Callable[[socket.socket, object], None], *,
                 max_pending: int = MAX_PENDING, timeout: float = HANDSHAKE_TIMEOUT,
                 name: str = "hetccl-gate", what: str = "connection",
                 logger: logging.Logger | None = None):
        self._what, self._log = what, logger or log
        self._listener, self._handshake, self._on_ready = listener, handshake, on_ready
        self.max_pending, self.timeout = max_pending, timeout
        self.accepted = self.refused = self.dropped = self.expired = 0
        self._pending: collections.OrderedDict[socket.socket, _Pending] = collections.OrderedDict()
        self._warned: set[str] = set()
        self._closed = False
        listener.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(listener, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        """Stop accepting and drop the connections still unauthenticated (the listener stays
        open: its owner closes it)."""
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._thread.join(5.0)
        for p in list(self._pending.values()):
            p.sock.close()
        self._pending.clear()
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- the gate's thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._closed:
                timeout = None
                if self._pending:
                    first = next(iter(self._pending.values()))  # oldest = earliest deadline
                    timeout = max(0.0, first.deadline - time.monotonic())
                for key, mask in self._sel.select(timeout):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.data is not None:
                        self._io(key.data, mask)
                self._expire()
        except Exception:
            if not self._closed:
                log.exception("handshake gate failed; no further connections are accepted here")

    def _accept(self) -> None:
        for _ in range(self.max_pending):
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:   # EMFILE and friends: free a slot, try again on the next event
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM) \
                        and self._pending:
                    self._drop(next(iter(self._pending.values())))
                    self.dropped += 1
                else:
                    time.sleep(0.01)
                return
            sock.setblocking(False)
            if len(self._pending) >= self.max_pending:
                self._drop(next(iter(self._pending.values())))
                self.dropped += 1
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
            p = _Pending(sock, peer, self._handshake(peer), time.monotonic() + self.timeout)
            self._pending[sock] = p
            self._sel.register(sock, selectors.EVENT_READ, p)
            self._resume(p, None)

    def _drop(self, p: _Pending) -> None:
        self._pending.pop(p.sock, None)
        try:
            self._sel.unregister(p.sock)
        except (KeyError, ValueError):
            pass
        p.sock.close()

    def _refuse(self, p: _Pending, why) -> None:
        self.refused += 1
        why = str(why)
        for said in (f"refused connection from {p.peer}: ", f"refused connection from {p.peer}"):
            if why.startswith(said):       # the handshake's own message names the peer already
                why = why[len(said):] or "refused"
        host = p.peer.rsplit(":", 1)[0]
        if host not in self._warned and len(self._warned) < 100:
            self._warned.add(host)
            self._log.warning("refused %s from %s: %s", self._what, p.peer, why)
        else:
            self._log.debug("refused %s from %s: %s", self._what, p.peer, why)
        self._drop(p)

    def _resume(self, p: _Pending, value) -> None:
        """Feed ``value`` to the handshake and run it up to its next I/O step."""
        while True:
            try:
                step = p.steps.send(value)
            except StopIteration as done:
                self._pending.pop(p.sock, None)
                self._sel.unregister(p.sock)
                p.sock.setblocking(True)
                self.accepted += 1
                try:
                    self._on_ready(p.sock, done.value)
                except Exception:
                    log.exception("handshake gate: the new connection's owner failed")
                    p.sock.close()
                return
            except Exception as e:  # noqa: BLE001 - any failure of a stranger only drops it
                return self._refuse(p, e)
            if isinstance(step, Recv) and step.n == 0:
                value = b""
                continue
            p.step, p.buf = step, bytearray()
            if isinstance(step, Send):
                p.out = memoryview(step.data)
                self._sel.modify(p.sock, selectors.EVENT_WRITE, p)
            else:
                self._sel.modify(p.sock, selectors.EVENT_READ, p)
            return

    def _io(self, p: _Pending, mask: int) -> None:
        try:
            if isinstance(p.step, Send):
                n = p.sock.send(p.out)
                p.out = p.out[n:]
                if not p.out:
                    self._resume(p, None)
                return
            data = p.sock.recv(p.step.n - len(p.buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            return self._refuse(p, f"connection failed during the handshake ({e})")
        if not data:
            self.refused += 1
            log.debug("connection from %s closed during the handshake", p.peer)
            return self._drop(p)
        p.buf += data
        if len(p.buf) == p.step.n:
            self._resume(p, bytes(p.buf))

    def _expire(self) -> None:
        now = time.monotonic()
        while self._pending:
            p = next(iter(self._pending.values()))
            if p.deadline > now:
                return
            self.expired += 1
            log.debug("dropped connection from %s: no handshake within %gs", p.peer, self.timeout)
            self._drop(p)
