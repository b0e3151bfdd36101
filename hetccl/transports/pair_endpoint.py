"""The Endpoint of one pair over the engine's link code, and how to connect a pair of Endpoints.

transports/endpoint.py says what an Endpoint is; this module is the one implementation that every
transport whose links are engine links (shared-memory FIFOs, a socket) shares: PairEndpoint over a
PairLink (_native/pair.pyx: the engine's link code for one pair). A transport with an Endpoint of
its own (rdma: transports/rdma.py's RdmaEndpoint) says so in ``Transport.endpoint``.

A pair is connected like the communicator's mesh does it: one authenticated TCP connection
(bootstrap/auth.py: a wrong or missing job secret is refused), then ``Transport.endpoint``: by
default the transport's own set-up (``prepare``/``attach``/``finish``, unchanged) into a PairLink.
``Listener.accept()`` on one side and ``connect()`` on the other; ``EndpointFactory`` wraps both
for the conformance suite and bench/transports.py.

Wire format on the link, per message: a 40-byte frame ``magic u32 | kind u32 | tag i64 | nbytes u64
| aux u64 | number u64`` then the payload. Kinds: DATA (eager payload follows), RNDV (c2c cma: no
payload; aux is the sender's buffer address, which the receiver reads with one cross-memory copy),
ACK (c2c: operation `number` is finished on the peer), PUT/GET/GETREPLY (c2c window mode: one-sided
access emulated by the target's progress, as UCX does without hardware RMA; tag = region id,
aux = offset).

Matching (MPI semantics): messages arrive in the order sent; a receive takes the oldest message with
its tag, waiting for it if needed; a message that arrives before its receive is posted is kept
(unexpected queue). A receive whose buffer size differs from the message fails with InvalidUsage.
"""
from __future__ import annotations

import collections
import os
import socket
import struct
import time
from typing import Optional

from .. import config
from ..bootstrap.auth import client_handshake, server_handshake
from ..errors import AuthenticationError, HetcclTimeout, InvalidUsage, PeerLostError, TransportError
from ..topology.host import host_id
from .. import transports as _table
from .base import LinkContext, exchange_cards
from .endpoint import Endpoint, RemoteRegion, Region, Request

_FRAME = struct.Struct("<IIqQQQ")
_MAGIC = 0x45504843             # "CHPE"
DATA, RNDV, ACK, PUT, GET, GETREPLY = range(6)
RNDV_MIN = 64 << 10             # c2c cma: messages from this size go single-copy
_NOBUF = bytearray(0)


def _view(buf, writable):
    mv = memoryview(buf)
    if writable and mv.readonly:
        raise InvalidUsage("the receive buffer is read-only; pass a writable buffer")
    if not mv.c_contiguous:
        raise InvalidUsage("the buffer is not C-contiguous; pass numpy.ascontiguousarray(x)")
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


class PairRequest(Request):
    """An operation on a PairEndpoint; ``wait`` drives the endpoint with the spin-then-block policy."""
    __slots__ = ("ep", "done", "error", "nbytes", "view", "pos", "kind", "tag", "frame", "aux", "on_done")

    def __init__(self, ep, view, kind, tag, nbytes, aux=0):
        self.ep, self.view, self.kind, self.tag, self.nbytes, self.aux = ep, view, kind, tag, nbytes, aux
        self.done, self.error, self.pos, self.frame, self.on_done = False, None, 0, None, None

    def _finish(self, error=None):
        if not self.done:
            self.done, self.error = True, error
            if self.on_done is not None:
                self.on_done(self)

    def test(self) -> bool:
        if not self.done:
            self.ep.progress()
        return self.done

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = time.monotonic() + config.timeout(timeout if timeout is not None else self.ep.timeout)
        ep = self.ep
        while True:
            if not self.done:
                ep.progress()
            if self.done:
                if self.error is not None:
                    raise self.error
                return self.nbytes
            left = deadline - time.monotonic()
            if left <= 0:
                raise HetcclTimeout(f"{ep.transport} {self._what()} with rank {ep.peer} did not complete "
                                    f"within the deadline; is the peer posting the matching operation?")
            try:
                ep.link.wait(True, bool(ep.sends), min(left, 1.0))
            except PeerLostError as e:
                ep._lost(e)

    def _what(self):
        return {DATA: "send", RNDV: "send", PUT: "put", GET: "get"}.get(self.kind, "receive") + \
            f" of {self.nbytes} bytes (tag {self.tag})"


class _Incoming:
    """A message being (or already) received without a posted receive: kept until one is."""
    __slots__ = ("tag", "data", "done", "claimed", "kind", "aux")

    def __init__(self, tag, n, kind, aux):
        self.tag, self.data, self.done, self.claimed = tag, bytearray(n), False, None
        self.kind, self.aux = kind, aux


class PairEndpoint(Endpoint):
    """Two-sided messages over a PairLink (shm FIFOs or a TCP socket); see the module docstring."""

    def __init__(self, transport, peer, link, sock, timeout=None, peer_pid=0, mode=None):
        self.transport, self.peer, self.link, self.sock = transport, peer, link, sock
        self.timeout = config.timeout(timeout)
        self.peer_pid, self.mode = peer_pid, mode
        self.one_sided = transport == "c2c"
        self.sends = collections.deque()          # in posting order; the head is on the wire
        self.posted = collections.defaultdict(collections.deque)      # tag -> receives
        self.unexpected = collections.defaultdict(collections.deque)  # tag -> _Incoming
        self.awaiting = {}                         # RNDV sends / window puts, gets awaiting the peer, by number
        self.number = 0                            # number field of the frame being received
        self.rndv_seq = 0
        self.hdr = bytearray(_FRAME.size)
        self.hdr_got = 0
        self.cur = None                            # (target view, request or _Incoming, nbytes)
        self.cur_pos = 0
        self.closed = False
        self.error = None
        self.regions = {}                          # window mode: region id -> (view, Region)

    # ---- posting

    def isend(self, buf, tag: int = 0) -> Request:
        view = _view(buf, False)
        self._check()
        n = view.nbytes
        if self.mode == "cma" and n >= RNDV_MIN:
            from .._native.pair import buffer_address
            self.rndv_seq += 1
            addr, _ = buffer_address(view)
            req = PairRequest(self, view, RNDV, tag, n, self.rndv_seq)
            req.frame = _FRAME.pack(_MAGIC, RNDV, tag, n, addr, self.rndv_seq)
            self.awaiting[self.rndv_seq] = req
        else:
            req = PairRequest(self, view, DATA, tag, n)
            req.frame = _FRAME.pack(_MAGIC, DATA, tag, n, 0, 0)
        self.sends.append(req)
        self.progress()
        return req

    def irecv(self, buf, tag: int = 0) -> Request:
        view = _view(buf, True)
        self._check()
        req = PairRequest(self, view, -1, tag, view.nbytes)
        q = self.unexpected.get(tag)
        inc = next((m for m in q if m.claimed is None), None) if q else None
        if inc is not None:
            inc.claimed = req
            if inc.done:
                try:
                    self._deliver(inc)
                except PeerLostError as e:
                    self._lost(e)
        else:
            self.posted[tag].append(req)
        self.progress()
        return req

    def _control(self, kind, tag, n, aux, number, payload=None):
        """Queue a protocol frame (and payload); it completes once written."""
        req = PairRequest(self, payload if payload is not None else memoryview(_NOBUF), kind, tag,
                          n if payload is not None else 0)
        req.frame = _FRAME.pack(_MAGIC, kind, tag, n, aux, number)
        self.sends.append(req)
        return req

    # ---- progress

    def progress(self) -> None:
        if self.closed:
            return
        try:
            self._progress_sends()
            while self._progress_recv():
                pass
        except PeerLostError as e:
            self._lost(e)

    def _progress_sends(self):
        link = self.link
        while self.sends:
            req = self.sends[0]
            fr = req.frame
            if req.pos < len(fr):
                req.pos += link.write(fr, req.pos, len(fr) - req.pos)
                if req.pos < len(fr):
                    return
            if req.kind in (DATA, PUT, GETREPLY):
                done = req.pos - len(fr)
                if done < req.nbytes:
                    req.pos += link.write(req.view, done, req.nbytes - done)
                    if req.pos - len(fr) < req.nbytes:
                        return
            self.sends.popleft()
            if req.kind != RNDV:                  # RNDV completes on the peer's ACK
                req._finish()

    def _progress_recv(self) -> bool:
        """Move arrived bytes; True if a whole message finished (look for the next one)."""
        link = self.link
        if self.cur is None:
            if self.hdr_got < _FRAME.size:
                self.hdr_got += link.read(self.hdr, self.hdr_got, _FRAME.size - self.hdr_got)
                if self.hdr_got < _FRAME.size:
                    return False
            magic, kind, tag, n, aux, number = _FRAME.unpack(self.hdr)
            if magic != _MAGIC or kind > GETREPLY:
                raise PeerLostError(f"garbage on the {self.transport} link from rank {self.peer}: "
                                    f"not an endpoint frame")
            if kind in (RNDV, ACK, GET):          # frames without payload
                self.hdr_got = 0
                if kind == RNDV:
                    self._rndv_arrived(tag, n, aux, number)
                elif kind == ACK:
                    req = self.awaiting.pop(number, None)
                    if req is not None:
                        req._finish()
                else:
                    view = self.regions.get(tag)
                    ok = view is not None and aux + n <= view.nbytes
                    self._control(GETREPLY, 0, n, 0, number, view[aux:aux + n] if ok else bytearray(n))
                    self._progress_sends()
                return True
            self.number = number
            self._begin_incoming(kind, tag, n, aux)
        view, owner, n = self.cur
        if self.cur_pos < n:
            self.cur_pos += link.read(view, self.cur_pos, n - self.cur_pos)
            if self.cur_pos < n:
                return False
        self.cur, self.cur_pos, self.hdr_got = None, 0, 0
        self._complete_incoming(owner)
        return True

    def _begin_incoming(self, kind, tag, n, aux):
        if kind == DATA:
            q = self.posted.get(tag)
            if q:
                req = q.popleft()
                if req.nbytes != n:
                    req._finish(InvalidUsage(f"rank {self.peer} sent {n} bytes with tag {tag} but the "
                                             f"receive buffer has {req.nbytes}; sizes must match"))
                    self.cur = (None, None, n)     # discard the payload
                    return
                self.cur = (req.view, req, n)
                return
        if kind == PUT:
            view = self.regions.get(tag)
            number = self.number
            ok = view is not None and aux + n <= view.nbytes   # a closed region: drop the bytes

            def applied():
                self._control(ACK, 0, 0, 0, number)
                self._progress_sends()
            self.cur = (view[aux:aux + n] if ok else None, applied, n)
            return
        if kind == GETREPLY:
            req = self.awaiting.pop(self.number, None)
            self.cur = (req.view[:n], req, n) if req is not None else (None, None, n)
            return
        inc = _Incoming(tag, n, kind, aux)
        self.unexpected[tag].append(inc)
        self.cur = (inc.data, inc, n)

    def _complete_incoming(self, owner):
        if owner is None:
            return
        if isinstance(owner, _Incoming):
            owner.done = True
            if owner.claimed is not None:
                self._deliver(owner)
        elif callable(owner):
            owner()
        else:
            owner._finish()

    def _deliver(self, inc):
        """Hand a kept message to the receive that claimed it."""
        req = inc.claimed
        self.unexpected[inc.tag].remove(inc)
        if inc.kind == RNDV:
            self._rndv_read(req, inc.aux[0], inc.aux[1], len(inc.data))
            return
        if req.nbytes != len(inc.data):
            req._finish(InvalidUsage(f"rank {self.peer} sent {len(inc.data)} bytes with tag {inc.tag} but "
                                     f"the receive buffer has {req.nbytes}; sizes must match"))
            return
        req.view[:] = inc.data
        req._finish()

    # ---- c2c single-copy messages

    def _rndv_arrived(self, tag, n, addr, number):
        q = self.posted.get(tag)
        if q:
            self._rndv_read(q.popleft(), addr, number, n)
            return
        inc = _Incoming(tag, 0, RNDV, (addr, number))
        inc.data = _Len(n)                         # the bytes stay in the sender until claimed
        inc.done = True
        self.unexpected[tag].append(inc)

    def _rndv_read(self, req, addr, number, n):
        """One cross-memory copy from the sender's buffer, then tell it the buffer is free."""
        if req.nbytes != n:
            req._finish(InvalidUsage(f"rank {self.peer} sent {n} bytes but the receive buffer has "
                                     f"{req.nbytes}; sizes must match"))
        else:
            try:
                self.link.cma_read(self.peer_pid, req.view, 0, addr, n)
            except PeerLostError as e:
                req._finish(PeerLostError(f"rank {self.peer} died before its single-copy send of {n} "
                                          f"bytes (tag {req.tag}) was read: {e}"))
                raise
            req._finish()
        self._control(ACK, 0, 0, 0, number)
        self._progress_sends()

    # ---- one-sided (c2c)

    def register(self, buf) -> Region:
        if self.transport != "c2c":
            return super().register(buf)
        view = _view(buf, True)
        return C2CRegion(self, view)

    def remote_region(self, blob: bytes) -> RemoteRegion:
        if self.transport != "c2c":
            return super().remote_region(blob)
        return C2CRemoteRegion(blob)

    def put(self, local, remote: RemoteRegion, offset: int, nbytes: int) -> Request:
        return self._rma(local, remote, offset, nbytes, True)

    def get(self, local, remote: RemoteRegion, offset: int, nbytes: int) -> Request:
        return self._rma(local, remote, offset, nbytes, False)

    def _rma(self, local, remote, offset, nbytes, write):
        if self.transport != "c2c":
            raise NotImplementedError(f"{self.transport} is not a one-sided transport")
        self._check()
        view = _view(local, not write)
        if nbytes < 0 or offset < 0 or offset + nbytes > remote.nbytes or nbytes > view.nbytes:
            raise InvalidUsage(f"{'put' if write else 'get'} of {nbytes} bytes at offset {offset} does not "
                               f"fit the remote region ({remote.nbytes} bytes) and the local buffer "
                               f"({view.nbytes} bytes)")
        if self.mode == "cma":
            req = PairRequest(self, view, PUT if write else GET, 0, nbytes)
            try:
                if write:
                    self.link.cma_write(self.peer_pid, view, 0, remote.addr + offset, nbytes)
                else:
                    self.link.cma_read(self.peer_pid, view, 0, remote.addr + offset, nbytes)
            except PeerLostError as e:
                self._lost(e)
                raise
            req._finish()
            return req
        # window mode: the target's progress applies the access and acknowledges it (active messages)
        self.rndv_seq += 1
        req = PairRequest(self, view, PUT if write else GET, remote.rid, nbytes)
        self.awaiting[self.rndv_seq] = req
        self._control(PUT if write else GET, remote.rid, nbytes, offset, self.rndv_seq,
                      view[:nbytes] if write else None)
        self.progress()
        return req

    # ---- failure and shutdown

    def _check(self):
        if self.error is not None:
            raise self.error
        if self.closed:
            raise InvalidUsage("the endpoint is closed")

    def _lost(self, e):
        if self.error is None:
            self.error = PeerLostError(f"rank {self.peer} closed its {self.transport} link mid-transfer "
                                       f"or died ({e})")
        pending = list(self.sends) + list(self.awaiting.values()) + \
            [r for q in self.posted.values() for r in q] + \
            [m.claimed for q in self.unexpected.values() for m in q if m.claimed is not None]
        if self.cur is not None and isinstance(self.cur[1], PairRequest):
            pending.append(self.cur[1])
        for r in pending:
            r._finish(self.error)
        self.sends.clear()
        self.awaiting.clear()
        self.posted.clear()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.link.close()
        try:
            self.sock.close()
        except OSError:
            pass
        self._lost(PeerLostError("closed locally"))


class _Len:
    """Length placeholder of a kept RNDV message (its bytes stay in the sender until read)."""
    __slots__ = ("n",)

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


_REGION = struct.Struct("<IQQQ")        # magic, pid, address / region id, nbytes


class C2CRegion(Region):
    """Local memory peers may put/get: cma mode by address; window mode by id, served by progress."""

    def __init__(self, ep, view):
        from .._native.pair import buffer_address
        self.ep, self.view = ep, view
        self.addr, self.nbytes = buffer_address(view, True)
        self.rid = len(ep.regions) + 1
        while self.rid in ep.regions:
            self.rid += 1
        ep.regions[self.rid] = view

    def pack(self) -> bytes:
        return _REGION.pack(_MAGIC, os.getpid(), self.addr if self.ep.mode == "cma" else self.rid, self.nbytes)

    def close(self) -> None:
        self.ep.regions.pop(self.rid, None)


class C2CRemoteRegion(RemoteRegion):
    def __init__(self, blob: bytes):
        try:
            magic, self.pid, where, self.nbytes = _REGION.unpack(blob)
        except struct.error:
            magic = None
        if magic != _MAGIC:
            raise InvalidUsage("not a packed c2c region (pass the bytes of Region.pack() from the peer)")
        self.addr = self.rid = where


# ---------------------------------------------------------------- connecting a pair

class _Builder:
    """Stands in for the engine during a transport's set-up: collects the link for one pair."""
    c2c_windows = False          # endpoints move messages through the FIFOs or by cma, never windows

    def __init__(self):
        from .._native.pair import PairLink
        self.link = PairLink()
        self.mode = None

    def attach(self, peer, kind, fd, *args):
        self.link.attach(kind, fd, *args)
        if kind == "c2c":
            self.mode = {1: "cma", 2: "window"}[args[3]]


def _set_up(transport: str, sock, rank: int, peer: int, low: bool, job_id: str, comm_id: str,
            timeout: float) -> Endpoint:
    t = _table.by_name(transport)
    if t.endpoint is None:
        return pair_endpoint(t, sock, rank, peer, low, job_id, comm_id, timeout)
    return t.endpoint(sock, rank, peer, low, job_id, comm_id, timeout)


def pair_endpoint(t, sock, rank: int, peer: int, low: bool, job_id: str, comm_id: str,
                  timeout: float) -> "PairEndpoint":
    """``Transport.endpoint`` of the transports whose links are engine links: exchange cards over
    the pair's socket, let the transport settle what the pair must agree on, then run its own
    set-up into one PairLink."""
    card = {"rank": rank, "host": host_id(), "pid": os.getpid(), **t.card_fields()}
    other = exchange_cards(sock, card, timeout)
    if t.same_host and other.get("host") != card["host"]:
        raise TransportError(f"{t.name} needs both ranks on one host; rank {peer} is on {other.get('host')}")
    cards = {rank: card, peer: other}
    t.agree_pair(sock, cards, rank, peer, timeout)
    b = _Builder()
    # local_size 8: 1 MiB FIFOs (pre-faulted per connection; plenty to pipeline one pair's messages)
    ctx = LinkContext(b, rank, job_id, comm_id, 8, timeout, cards)
    sock.setblocking(True)
    try:
        if low:
            t.prepare(ctx, peer, sock)
        t.attach(ctx, peer, sock, low)
        if low:
            t.finish(ctx, peer, sock)
    except BaseException:
        t.abandon(comm_id)
        raise
    sock.setblocking(False)
    return PairEndpoint(t.name, peer, b.link, sock, timeout, int(other["pid"]), b.mode)


class Listener:
    """Accepts authenticated endpoint connections on a TCP port (listen side of a pair)."""

    def __init__(self, secret: bytes | None, rank: int, job_id: str = "ep", comm_id: str = "ep",
                 host: str = "127.0.0.1", port: int = 0):
        self.secret, self.rank, self.job_id, self.comm_id = secret, rank, job_id, comm_id
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.accepted = 0

    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def accept(self, transport: str, timeout: float = 30.0) -> PairEndpoint:
        """The next authenticated connection, set up for ``transport``; connections that fail
        authentication are closed and skipped (AuthenticationError only if none succeeds in time)."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HetcclTimeout(f"no authenticated endpoint connection within {timeout:g} s"
                                    + (f" (last refused: {last})" if last else ""))
            self.sock.settimeout(left)
            try:
                s, _ = self.sock.accept()
            except socket.timeout:
                continue
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                peer = server_handshake(s, self.secret, self.rank, self._cid(), min(left, 10.0))
            except (AuthenticationError, OSError, TransportError, HetcclTimeout) as e:
                last = e
                s.close()
                continue
            try:
                self.accepted += 1
                return _set_up(transport, s, self.rank, peer, True, self.job_id,
                               f"{self.comm_id}{self.accepted}", max(1.0, deadline - time.monotonic()))
            except BaseException:
                s.close()
                raise

    def _cid(self):
        return self.comm_id.encode()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(transport: str, address: tuple[str, int], secret: bytes | None, rank: int, peer: int,
            job_id: str = "ep", comm_id: str = "ep", timeout: float = 30.0, attempt: int = 1) -> PairEndpoint:
    """Connect to a Listener of rank ``peer`` and set the pair up for ``transport``.
    ``attempt`` must count this side's connections to that listener (it names the pair's segment)."""
    s = socket.create_connection(tuple(address), timeout=timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client_handshake(s, secret, rank, peer, comm_id.encode(), timeout)
        return _set_up(transport, s, rank, peer, False, job_id, f"{comm_id}{attempt}", timeout)
    except BaseException:
        s.close()
        raise


class EndpointFactory:
    """Makes connected Endpoints of one transport between rank 0 (listens) and rank 1 (connects):
    the conformance suite (tests/transports/registry.py) and bench/transports.py take these, so a
    new transport joins both with its ``endpoints()``. ``unavailable()`` is None or why it cannot
    run here; ``start(rank, port)`` once per process, ``open()`` on both ranks together for each
    endpoint. ``transport``: a row of the transport table (or its name); a row that is not in the
    table yet (a transport declared outside hetccl) joins it in the process that starts it."""

    def __init__(self, transport, env=None, needs=None):
        self.row = None if isinstance(transport, str) else transport
        self.transport = transport if self.row is None else self.row.name
        self.env, self.needs = dict(env or {}), needs
        self.listener = None
        self.rank = self.port = None
        self.opened = 0

    def _row(self):
        return self.row if self.row is not None else _table.by_name(self.transport)

    def unavailable(self):
        why = self.needs() if self.needs else None
        if why is None and not self._row().available():
            why = f"transport {self.transport} is not available on this machine"
        return why

    def start(self, rank, port):
        os.environ.update(self.env)
        if self.row is not None and self.row not in _table.ALL:
            _table.register(self.row)
        self.rank, self.port = rank, port
        if rank == 0:
            self.listener = Listener(_env_secret(), 0, job_id=os.environ.get("HETCCL_JOB_ID", "ep"), port=port)

    def open(self, timeout=30.0):
        self.opened += 1
        if self.rank == 0:
            return self.listener.accept(self.transport, timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return connect(self.transport, ("127.0.0.1", self.port), _env_secret(), 1, 0,
                               job_id=os.environ.get("HETCCL_JOB_ID", "ep"), timeout=timeout,
                               attempt=self.opened)
            except ConnectionRefusedError:         # rank 0 is not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def settle(self):
        """Let closed connections finish tearing down before resources are counted (rdma: UCX
        closes a closed connection's socket on a later progress of the shared worker)."""
        self._row().settle()

    def stop(self):
        if self.listener is not None:
            self.listener.close()
            self.listener = None


def _env_secret():
    s = os.environ.get("HETCCL_SECRET")
    return s.encode() if s else None


def factories() -> dict:
    """Every transport's Endpoint factories, by the names the conformance suite and
    bench/transports.py use: each row of the transport table names its modes (``endpoints()``)."""
    return factories_of(_table.ALL)


def factories_of(rows) -> dict:
    """The Endpoint factories of these rows of the transport table, by name."""
    return {name: EndpointFactory(t, env, needs=needs) for t in rows for name, (env, needs) in t.endpoints().items()}
