"""Point-to-point messages: send/recv with tags, matched per (source, tag) in order.

Why a channel of its own: collectives own the engine's links and must find exactly the bytes of the
next collective there. Point-to-point traffic instead goes over a second authenticated TCP
connection per pair, opened by the sender on first use. Sends therefore never wait for the matching
receive (two ranks that both send first do not deadlock, as torch's batch_isend_irecv requires),
and receives may take tags in any order. The cost is one copy on the receiving side.

How it fails loudly, never silently:

* Handshakes run on a ``guard.HandshakeGate`` thread (at most 64 strangers at a time, 10 s each),
  never on the receive thread, so a silent or hostile connection cannot delay a receive.
* The receive thread multiplexes every authenticated connection with epoll (no fd limit) and
  non-blocking reads. A message's claimed size is never allocated up front: bytes are kept as they
  arrive, and a message whose receive is already posted with another size is discarded unread
  while that receive raises.
* Any error on a connection (EOF, reset, a bad frame), in either direction, marks that rank lost:
  every receive waiting on it, and every ``ANY_SOURCE`` receive that has nothing else to take,
  raises PeerLostError; so does every later one. Sends have a deadline (the communicator's
  timeout).

Frame: magic u32 | tag i64 | nbytes u64 | payload. Nothing is unpickled.
"""
import collections
import itertools
import logging
import os
import selectors
import socket
import struct
import threading
import time

from . import config
from .bootstrap.auth import client_handshake, server_handshake_steps
from .bootstrap.guard import HandshakeGate, send_all
from .errors import CommAborted, HetcclTimeout, InvalidUsage, PeerLostError
from .transports.netif import keepalive

log = logging.getLogger("hetccl.p2p")

_FRAME = struct.Struct("<IqQ")
_MAGIC = 0x50325048           # "HP2P"
ANY_SOURCE = -1
_READ_BUDGET = 4 << 20        # bytes per connection per wake-up (fairness between peers)
_CHUNK = 1 << 20


class _Msg:
    """A message being received or waiting to be taken (its bytes in the chunks they came in)."""
    __slots__ = ("src", "tag", "n", "chunks", "got", "done", "discard", "seq")

    def __init__(self, src, tag, n, seq):
        self.src, self.tag, self.n, self.seq = src, tag, n, seq
        self.chunks, self.got, self.done, self.discard = [], 0, n == 0, None


class _Wait:
    """A receive that is waiting (so a header of the wrong size can be refused before reading)."""
    __slots__ = ("src", "tag", "nbytes")

    def __init__(self, src, tag, nbytes):
        self.src, self.tag, self.nbytes = src, tag, nbytes


class _Inbound:
    """One authenticated connection from ``peer``, read by the receive thread."""
    __slots__ = ("sock", "peer", "hdr", "hgot", "msg")

    def __init__(self, sock, peer):
        self.sock, self.peer = sock, peer
        self.hdr, self.hgot, self.msg = bytearray(_FRAME.size), 0, None


class P2PChannel:
    """The point-to-point side of one communicator (see the module docstring).

    ``host`` is the address the listener binds (the communicator's chosen interface)."""

    def __init__(self, rank, size, secret, comm_id: str, timeout, host: str = "0.0.0.0"):
        self.rank, self.size, self.secret, self.timeout = rank, size, secret, timeout
        self.comm_id = (comm_id + "/p2p").encode()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.peers = {}                # rank -> (host, port), filled from the rank cards
        self.out = {}                  # rank -> connected socket we send on
        self._out_locks = collections.defaultdict(threading.Lock)
        self._connect_lock = threading.Lock()
        self.queues = collections.defaultdict(collections.deque)   # (src, tag) -> deque of _Msg
        self._waits: list[_Wait] = []
        self._seq = itertools.count()
        self.cv = threading.Condition()
        self.lost = {}                 # rank -> why
        self.failed = None             # the receive thread's own failure, if any
        self.failure = None            # set by interrupt(): what -> the exception every call raises
        self.closed = False
        self._incoming = collections.deque()   # (sock, peer, inbound?) handed to the thread
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.thread = threading.Thread(target=self._serve, name="hetccl-p2p", daemon=True)
        self.thread.start()
        self.gate = HandshakeGate(
            self.listener, lambda who: server_handshake_steps(secret, rank, self.comm_id, who),
            self._arrive, name="hetccl-p2p-gate", what="p2p connection", logger=log)

    # ---------------------------------------------------------------- the gate hands us peers

    def _arrive(self, sock, peer):
        if not 0 <= peer < self.size or peer == self.rank:
            log.warning("p2p: closing an authenticated connection that claims rank %d", peer)
            sock.close()
            return
        self._handover(sock, peer, True)

    def _handover(self, sock, peer, inbound):
        self._incoming.append((sock, peer, inbound))
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # ---------------------------------------------------------------- receiving side (thread)

    def _serve(self):
        try:
            while not self.closed:
                for key, _ in self._sel.select(1.0):
                    if key.data is None:
                        try:
                            os.read(self._wake_r, 4096)
                        except OSError:
                            pass
                    elif isinstance(key.data, _Inbound):
                        self._read(key.data)
                    else:                      # our own sending socket: readable = EOF or error
                        self._lose(key.data, key.fileobj, "it closed the connection we send on")
                while self._incoming:
                    sock, peer, inbound = self._incoming.popleft()
                    sock.setblocking(False)
                    keepalive(sock, config.peer_timeout())     # a vanished host is noticed
                    self._sel.register(sock, selectors.EVENT_READ,
                                       _Inbound(sock, peer) if inbound else peer)
        except Exception as e:  # noqa: BLE001 - turned into an error for every receive
            log.exception("p2p: the receive thread failed")
            with self.cv:
                self.failed = f"the point-to-point receive thread failed ({e!r})"
                self.cv.notify_all()
        finally:
            for key in list(self._sel.get_map().values()):
                if key.data is not None:
                    key.fileobj.close()
            self._sel.close()

    def _lose(self, peer, sock, why):
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()
        with self.cv:
            if peer not in self.lost and not self.closed:
                log.info("p2p: rank %d is lost: %s", peer, why)
            self.lost.setdefault(peer, why)
            for q in self.queues.values():      # a half-received message will never complete
                for m in q:
                    if m.src == peer and not m.done:
                        m.discard = PeerLostError(f"rank {peer} was lost while it sent tag "
                                                  f"{m.tag}: {why}")
                        m.done = True
            self.cv.notify_all()
        out = self.out.pop(peer, None)
        if out is not None and out is not sock:
            out.close()

    def _read(self, c: _Inbound):
        budget = _READ_BUDGET
        try:
            while budget > 0:
                if c.msg is None:
                    k = c.sock.recv_into(memoryview(c.hdr)[c.hgot:])
                    if k == 0:
                        return self._lose(c.peer, c.sock, "it closed the connection")
                    c.hgot += k
                    if c.hgot < _FRAME.size:
                        continue
                    c.hgot = 0
                    magic, tag, n = _FRAME.unpack(c.hdr)
                    if magic != _MAGIC:
                        return self._lose(c.peer, c.sock, "it sent a malformed frame")
                    c.msg = self._begin(c.peer, tag, n)
                    if c.msg.done:
                        c.msg = None
                    continue
                m = c.msg
                want = min(m.n - m.got, _CHUNK, budget)
                data = c.sock.recv(want)
                if not data:
                    return self._lose(c.peer, c.sock, "it closed the connection mid-message")
                m.got += len(data)
                budget -= len(data)
                if m.discard is None:
                    m.chunks.append(data)
                if m.got == m.n:
                    c.msg = None
                    with self.cv:
                        m.done = True
                        self.cv.notify_all()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._lose(c.peer, c.sock, f"reading from it failed ({e})")

    def _begin(self, src, tag, n) -> _Msg:
        """A header arrived: queue the message (in order), refusing a size that a waiting receive
        cannot take before a byte of it is read."""
        with self.cv:
            m = _Msg(src, tag, n, next(self._seq))
            q = self.queues[(src, tag)]
            if not q:
                for w in self._waits:
                    if w.tag == tag and w.src == src:
                        if w.nbytes != n:
                            m.discard = InvalidUsage(
                                f"rank {src} sent {n} bytes with tag {tag}, but the receive "
                                f"buffer has {w.nbytes}; sizes must match")
                        break
            q.append(m)
            self.cv.notify_all()
            return m

    # ---------------------------------------------------------------- API

    def _conn(self, dst, deadline):
        s = self.out.get(dst)
        if s is not None:
            return s
        with self._connect_lock:
            s = self.out.get(dst)
            if s is None:
                if self.closed:
                    raise CommAborted("send: this communicator is closed")
                if dst in self.lost:
                    raise PeerLostError(f"rank {dst} is lost: {self.lost[dst]}")
                host, port = self.peers[dst]
                try:
                    s = socket.create_connection((host, port),
                                                 timeout=max(0.1, deadline - time.monotonic()))
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    client_handshake(s, self.secret, self.rank, dst, self.comm_id,
                                     max(0.1, deadline - time.monotonic()))
                except OSError as e:
                    raise PeerLostError(f"cannot connect to rank {dst} at {host}:{port} for "
                                        f"point-to-point traffic ({e}); has it exited?") from None
                s.setblocking(False)
                self.out[dst] = s
                self._handover(s, dst, False)  # the receive thread watches it for EOF
            return s

    def send(self, mv: memoryview, dst: int, tag: int):
        if not 0 <= dst < self.size or dst == self.rank:
            raise InvalidUsage(f"send destination {dst} is not another rank (0..{self.size - 1})")
        if self.failure is not None:
            raise self.failure("send")
        if self.closed:
            raise CommAborted("send: this communicator is closed")
        deadline = time.monotonic() + self.timeout
        with self._out_locks[dst]:
            s = self._conn(dst, deadline)
            try:
                send_all(s, _FRAME.pack(_MAGIC, tag, mv.nbytes), deadline, f"sending to rank {dst}")
                send_all(s, mv, deadline, f"sending to rank {dst}")
            except (PeerLostError, HetcclTimeout) as e:
                if self.failure is not None:
                    raise self.failure("send") from None
                # a frame cut short leaves the stream unusable: close it, the peer sees EOF
                if self.out.pop(dst, None) is s:
                    s.close()
                if isinstance(e, HetcclTimeout):
                    raise HetcclTimeout(f"send to rank {dst} (tag {tag}) timed out after "
                                        f"{self.timeout:g} s: rank {dst} does not receive") from None
                with self.cv:
                    self.lost.setdefault(dst, f"sending to it failed ({e})")
                    self.cv.notify_all()
                raise PeerLostError(f"rank {dst} is gone: sending to it failed ({e})") from None

    def _take(self, src, tag):
        """The oldest queued message for (src, tag) (earliest arrival for ANY_SOURCE), or None."""
        if src != ANY_SOURCE:
            q = self.queues.get((src, tag))
            return q[0] if q else None
        heads = [q[0] for (_, t), q in self.queues.items() if t == tag and q]
        return min(heads, key=lambda m: m.seq) if heads else None

    def _pop(self, m):
        """Take ``m`` off its queue; an empty queue goes too (tags must not accumulate)."""
        q = self.queues[(m.src, m.tag)]
        q.popleft()
        if not q:
            del self.queues[(m.src, m.tag)]

    def _error(self, src, tag):
        if self.failed:
            return PeerLostError(self.failed)
        if self.closed:
            return CommAborted("this communicator was closed while a receive waited")
        if src == ANY_SOURCE:
            if self.lost:
                lost = ", ".join(f"rank {r} ({why})" for r, why in sorted(self.lost.items()))
                return PeerLostError(f"recv from ANY_SOURCE (tag {tag}): {lost} is lost, so the "
                                     f"message might never come")
            return None
        if src in self.lost:
            return PeerLostError(f"rank {src} is lost before it sent tag {tag}: {self.lost[src]}")
        return None

    def recv(self, mv: memoryview, src: int, tag: int, timeout: float) -> int:
        """Copy the oldest message from (src, tag) into mv; returns the source rank."""
        if src != ANY_SOURCE and (not 0 <= src < self.size or src == self.rank):
            raise InvalidUsage(f"receive source {src} is not another rank (0..{self.size - 1})")
        deadline = time.monotonic() + timeout
        w = _Wait(src, tag, mv.nbytes)
        with self.cv:
            self._waits.append(w)
            try:
                while True:
                    if self.failure is not None:
                        raise self.failure("recv")
                    m = self._take(src, tag)
                    if m is not None and m.done:
                        self._pop(m)
                        if m.discard is not None:
                            raise m.discard
                        if m.n != mv.nbytes:
                            raise InvalidUsage(f"rank {m.src} sent {m.n} bytes with tag {tag}, "
                                               f"but the receive buffer has {mv.nbytes}; sizes "
                                               f"must match")
                        at = 0
                        for chunk in m.chunks:
                            mv[at:at + len(chunk)] = chunk
                            at += len(chunk)
                        return m.src
                    if m is None:
                        err = self._error(src, tag)
                        if err is not None:
                            raise err
                    elif self.failed or self.closed:
                        raise self._error(src, tag)
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise HetcclTimeout(f"recv from rank {src} (tag {tag}) timed out after "
                                            f"{timeout:g} s")
                    self.cv.wait(min(left, 1.0))
            finally:
                self._waits.remove(w)

    def interrupt(self, failure):
        """Make every waiting and later send/recv raise failure(what) (the communicator was
        aborted, closed or revoked); waiting receives wake at once. Any thread."""
        with self.cv:
            if self.failure is None:
                self.failure = failure
            self.cv.notify_all()

    def close(self):
        """Stop the channel; safe from any thread (the receive thread included) and twice."""
        if self.closed:
            return
        self.gate.close()
        with self.cv:
            self.closed = True
            self.cv.notify_all()
        out, self.out = self.out, {}          # not under the send locks: a blocked send may hold one
        for s in out.values():
            try:
                s.shutdown(socket.SHUT_RDWR)  # also ends a send blocked in another thread
            except OSError:
                pass
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self.thread is not threading.current_thread():
            self.thread.join(5.0)
        for s in out.values():
            s.close()
        while self._incoming:
            self._incoming.popleft()[0].close()
        self.listener.close()
        if not self.thread.is_alive():        # else it may still select on the pipe: leave it to GC
            os.close(self._wake_r)
            os.close(self._wake_w)
