"""Point-to-point messages: send/recv/isend/irecv with tags, matched per (source, tag) in order.

Why a channel of its own: collectives own the engine's links and must find exactly the bytes of the
next collective there. Point-to-point traffic instead goes over a second authenticated TCP
connection per pair, opened on first use, whose receiving side is drained continuously by a thread
into per-(source, tag) queues. Sends therefore never wait for the matching receive (two ranks that
both send first do not deadlock, as torch's batch_isend_irecv requires), and receives may take tags
in any order. The cost is one copy on the receiving side.

Frame: magic u32 | tag i64 | nbytes u64 | payload. Nothing is unpickled.
"""
import collections
import logging
import select
import socket
import struct
import threading
import time

from .bootstrap.auth import client_handshake, server_handshake
from .errors import AuthenticationError, CommAborted, HetcclTimeout, InvalidUsage, PeerLostError

log = logging.getLogger("hetccl.p2p")

_FRAME = struct.Struct("<IqQ")
_MAGIC = 0x50325048           # "HP2P"
ANY_SOURCE = -1


def _recv_exact(sock, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return buf


class P2PChannel:
    """The point-to-point side of one communicator (see the module docstring)."""

    def __init__(self, rank, size, secret, comm_id: str, timeout):
        self.rank, self.size, self.secret, self.timeout = rank, size, secret, timeout
        self.comm_id = (comm_id + "/p2p").encode()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("0.0.0.0", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.peers = {}                # rank -> (host, port), filled from the rank cards
        self.out = {}                  # rank -> connected socket we send on
        self.out_lock = threading.Lock()
        self.queues = collections.defaultdict(collections.deque)   # (src, tag) -> deque of bytearray
        self.cv = threading.Condition()
        self.lost = set()
        self.closed = False
        self.failure = None            # set by interrupt(): what -> the exception every call raises
        self._wake_r, self._wake_w = socket.socketpair()   # close() ends the thread's select at once
        self.thread = threading.Thread(target=self._serve, name="hetccl-p2p", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------------- receiving side (thread)

    def _serve(self):
        conns = {}                     # socket -> peer rank
        while not self.closed:
            try:
                ready, _, _ = select.select([self.listener, self._wake_r, *conns], [], [], 0.2)
            except (OSError, ValueError):
                break
            for s in ready:
                if s is self._wake_r:
                    continue
                if s is self.listener:
                    try:
                        c, _ = self.listener.accept()
                        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        peer = server_handshake(c, self.secret, self.rank, self.comm_id, 10.0)
                        c.settimeout(None)
                        conns[c] = peer
                    except (AuthenticationError, OSError, HetcclTimeout) as e:
                        log.warning("p2p: refused a connection: %s", e)
                    continue
                peer = conns[s]
                hdr = _recv_exact(s, _FRAME.size)
                if hdr is None:
                    del conns[s]
                    s.close()
                    with self.cv:
                        self.lost.add(peer)
                        self.cv.notify_all()
                    continue
                magic, tag, n = _FRAME.unpack(hdr)
                payload = _recv_exact(s, n) if magic == _MAGIC else None
                if payload is None:
                    log.warning("p2p: dropping the connection from rank %d (bad frame)", peer)
                    del conns[s]
                    s.close()
                    continue
                with self.cv:
                    self.queues[(peer, tag)].append(payload)
                    self.cv.notify_all()
        for s in conns:
            s.close()

    # ---------------------------------------------------------------- API

    def _conn(self, dst):
        with self.out_lock:
            s = self.out.get(dst)
            if s is None and self.closed:
                raise CommAborted("send: this communicator is closed")
            if s is None:
                host, port = self.peers[dst]
                s = socket.create_connection((host, port), timeout=self.timeout)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                client_handshake(s, self.secret, self.rank, dst, self.comm_id, self.timeout)
                s.settimeout(self.timeout)
                self.out[dst] = s
            return s

    def send(self, mv: memoryview, dst: int, tag: int):
        if not 0 <= dst < self.size or dst == self.rank:
            raise InvalidUsage(f"send destination {dst} is not another rank (0..{self.size - 1})")
        if self.failure is not None:
            raise self.failure("send")
        s = self._conn(dst)
        try:
            with self.out_lock:
                s.sendall(_FRAME.pack(_MAGIC, tag, mv.nbytes))
                s.sendall(mv)
        except OSError as e:
            if self.failure is not None:
                raise self.failure("send") from None
            raise PeerLostError(f"rank {dst} is gone: sending to it failed ({e})") from None

    def recv(self, mv: memoryview, src: int, tag: int, timeout: float) -> int:
        """Copy the oldest message from (src, tag) into mv; returns the source rank."""
        if src != ANY_SOURCE and (not 0 <= src < self.size or src == self.rank):
            raise InvalidUsage(f"receive source {src} is not another rank (0..{self.size - 1})")
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                if self.failure is not None:
                    raise self.failure("recv")
                keys = [(src, tag)] if src != ANY_SOURCE else [k for k in self.queues if k[1] == tag]
                for key in keys:
                    q = self.queues.get(key)
                    if q:
                        payload = q.popleft()
                        if len(payload) != mv.nbytes:
                            raise InvalidUsage(f"rank {key[0]} sent {len(payload)} bytes with tag {tag}, "
                                               f"but the receive buffer has {mv.nbytes}; sizes must match")
                        mv[:] = payload
                        return key[0]
                if src in self.lost:
                    raise PeerLostError(f"rank {src} closed its connection before sending tag {tag}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HetcclTimeout(f"recv from rank {src} (tag {tag}) timed out after {timeout:g} s")
                self.cv.wait(min(left, 0.5))

    def interrupt(self, failure):
        """Make every waiting and later send/recv raise failure(what) (the communicator was
        aborted, closed or revoked); waiting receives wake at once. Any thread."""
        with self.cv:
            if self.failure is None:
                self.failure = failure
            self.cv.notify_all()

    def close(self):
        self.closed = True
        out, self.out = self.out, {}          # not under out_lock: a blocked send may hold it
        for s in out.values():
            try:
                s.shutdown(socket.SHUT_RDWR)  # also ends a send blocked in another thread
            except OSError:
                pass
            s.close()
        with self.cv:
            self.cv.notify_all()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self.thread is not threading.current_thread():
            self.thread.join(2.0)
        if not self.thread.is_alive():       # else it may still select on them: leave them to GC
            self.listener.close()
            self._wake_r.close()
            self._wake_w.close()
