"""``rdma``: RDMA-class links over UCX's UCP API (tagged messages, registered memory, put/get).

Each pair exchanges UCP worker addresses over its authenticated TCP socket (transports/mesh.py), so a
peer that cannot prove the job secret never learns where to connect. That socket then stays open as
the liveness channel: every wait polls it beside the worker's event fd, so a dead peer fails requests
at once even on UCX transports that only notice through keepalive.

Which wires UCX uses is UCX's choice (``UCX_TLS`` and friends are honoured): on InfiniBand/RoCE hosts
a system UCX (``HETCCL_UCX_LIB``) carries verbs (rc, ud, dc); the PyPI libucx-cu12 wheel has no verbs
and runs over UCX's own tcp, sysv/posix shared memory and cma. The code path is the same.

Endpoints of one process share one worker (``shared_worker()``): a UCP worker costs tens of
milliseconds to create (it opens UCX's listening sockets and interfaces), while a connection must be
cheap. Tag matching is per worker, so every connection gets a 32-bit id on each side, exchanged with
the worker address; UCX tags are ``id << 32 | user tag`` (user tags 0 .. 2**32-1), and a closed
connection's unreceived messages are dropped from the worker (ucx.Endpoint.close).

One-sided note: where the wires have no hardware RMA (tcp, and shared memory for some sizes), UCX
emulates put/get with active messages, which the *target* worker must progress: a put completes once
the peer is inside any wait (or ``progress()``) on its endpoint. With verbs it is truly one-sided.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import struct
import threading
import time

from ..errors import InvalidUsage, TransportError
from .base import LinkContext, Transport
from .endpoint import Endpoint, Region, RemoteRegion

log = logging.getLogger("hetccl.transport")

_ADDR = struct.Struct("<4sII")   # magic, connection id (0: none), address length; then the address
_MAGIC = b"UCX2"
MAX_ADDRESS = 1 << 16            # worker addresses are a few hundred bytes; refuse anything absurd
_REGION = struct.Struct("<QQI")  # address, nbytes, rkey length; then the packed rkey
MAX_TAG = (1 << 32) - 1


def ucx():
    """The binding module, or None when UCX cannot be loaded (reason: ucx.load_error())."""
    from .._native import ucx as mod
    return mod if mod.load() else None


def _recv_exact(sock, n, deadline, peer):
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TransportError(f"rank {peer} did not send its UCX worker address in time")
        sock.settimeout(left)
        part = sock.recv(n - len(buf))
        if not part:
            raise TransportError(f"rank {peer} closed the connection while exchanging UCX addresses")
        buf += part
    return bytes(buf)


def exchange_address(sock, mine: bytes, peer: int, timeout: float, conn_id: int = 0) -> tuple[bytes, int]:
    """Send our worker address and connection id, and receive the peer's, over the pair's
    authenticated socket; returns (peer's address, peer's connection id)."""
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    sock.sendall(_ADDR.pack(_MAGIC, conn_id, len(mine)) + mine)
    magic, their_id, n = _ADDR.unpack(_recv_exact(sock, _ADDR.size, deadline, peer))
    if magic != _MAGIC or n > MAX_ADDRESS or (their_id == 0) != (conn_id == 0):
        raise TransportError(f"rank {peer} sent a malformed UCX address (is it running the same hetccl?)")
    return _recv_exact(sock, n, deadline, peer), their_id


_shared = None
_shared_lock = threading.Lock()
_conn_ids = itertools.count(1)      # never reused in a process: a late message cannot match a newer connection


def shared_worker():
    """The process's worker for Endpoints (thread-safe mode; created on first use, kept until exit,
    like the UCP context itself)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            mod = ucx()
            _shared = mod.Worker(mod.context(), True)
        return _shared


def settle(seconds: float = 0.1) -> None:
    """Drive the shared worker for a moment: UCX tears a force-closed connection down (closes its
    socket) on a later progress of the worker, so resource counts settle only after this."""
    if _shared is None:
        return
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _shared.progress():
            time.sleep(0.002)


def _next_conn_id() -> int:
    with _shared_lock:
        cid = next(_conn_ids)
    if cid > MAX_TAG:
        raise TransportError("this process opened 2**32 rdma endpoints; connection ids are exhausted")
    return cid


class RdmaRegion(Region):
    """Local memory mapped with ucp_mem_map; ``pack()`` = address, length and the packed rkey."""

    def __init__(self, mem):
        self._mem = mem
        self.nbytes = mem.nbytes

    def pack(self) -> bytes:
        rkey = self._mem.rkey
        return _REGION.pack(self._mem.address, self._mem.nbytes, len(rkey)) + rkey

    def close(self) -> None:
        self._mem.close()


class RdmaRemoteRegion(RemoteRegion):
    def __init__(self, key):
        self.key = key
        self.nbytes = key.nbytes

    def close(self) -> None:
        self.key.close()


class RdmaEndpoint(Endpoint):
    """This rank's UCP endpoint to one peer: a UCP endpoint with peer-failure handling on the
    process's shared worker (tags carry the connection's id, so they match per pair), and the
    pair's authenticated socket as liveness channel (owned: closed on close)."""
    transport = "rdma"
    one_sided = True

    def __init__(self, sock, peer: int, timeout: float = 600.0):
        mod = ucx()
        if mod is None:
            from .._native import ucx as raw
            raise TransportError(raw.load_error())
        self.peer = peer
        self._sock = sock
        self._ep = None
        self._worker = shared_worker()
        my_id = _next_conn_id()
        addr, their_id = exchange_address(sock, self._worker.address, peer, timeout, my_id)
        sock.setblocking(False)
        self._ep = mod.Endpoint(self._worker, addr, peer, sock.fileno(), timeout, my_id, their_id)
        self._mod = mod
        self._regions = []

    @staticmethod
    def _tag(tag: int) -> int:
        if not 0 <= tag <= MAX_TAG:
            raise InvalidUsage(f"rdma tags must be integers in [0, 2**32); got {tag}")
        return tag

    def _open(self):
        if self._ep is None:
            raise InvalidUsage("this rdma endpoint is closed")
        return self._ep

    def isend(self, buf, tag: int = 0):
        return self._open().tag_send(buf, self._tag(tag))

    def irecv(self, buf, tag: int = 0):
        return self._open().tag_recv(buf, self._tag(tag))

    def progress(self) -> None:
        if self._ep is not None:
            self._ep.progress()

    def waitall(self, requests, timeout=None) -> int:
        """All of ``requests`` in one nogil loop (ucx.Endpoint.wait_all): no Python per message."""
        return self._open().wait_all(requests, timeout)

    def register(self, buf) -> RdmaRegion:
        self._open()
        region = RdmaRegion(self._mod.MemRegion(self._mod.context(), buf))
        self._regions.append(region)
        return region

    def remote_region(self, blob: bytes) -> RdmaRemoteRegion:
        blob = bytes(blob)
        if len(blob) < _REGION.size:
            raise InvalidUsage("not an rdma region description (too short)")
        addr, nbytes, klen = _REGION.unpack_from(blob)
        if len(blob) != _REGION.size + klen:
            raise InvalidUsage("not an rdma region description (length mismatch)")
        return RdmaRemoteRegion(self._mod.RemoteKey(self._open(), blob[_REGION.size:], addr, nbytes))

    def put(self, local, remote: RdmaRemoteRegion, offset: int, nbytes: int):
        return self._open().put(local, remote.key, offset, nbytes)

    def get(self, local, remote: RdmaRemoteRegion, offset: int, nbytes: int):
        return self._open().get(local, remote.key, offset, nbytes)

    def close(self) -> None:
        ep, self._ep = getattr(self, "_ep", None), None
        if ep is None:
            return
        try:
            ep.close()
        finally:
            for r in self._regions:
                r.close()
            self._regions = []
            try:
                self._sock.close()
            except OSError:
                pass


RDMA_WIRES = ("rc", "ud", "dc", "srd", "gga")     # UCX transport names of RDMA hardware (verbs, EFA)


def rdma_wires(resources) -> list[str]:
    """The RDMA-hardware entries among UCX resources such as 'rc_mlx5/mlx5_0:1' or 'tcp/eth0'."""
    return [r for r in resources if r.split("/")[0].split("_")[0] in RDMA_WIRES]


_wires = None


def local_rdma_wires() -> list[str]:
    """RDMA-hardware transports of the UCX loaded here (cached; [] when UCX does not load)."""
    global _wires
    if _wires is None:
        from .._native import ucx as raw
        d = raw.describe()
        _wires = rdma_wires(d["resources"]) if d["ok"] and not d["error"] else []
    return _wires


def rdma_devices(root: str = "/") -> list[str]:
    """RDMA devices the kernel has (/sys/class/infiniband: verbs HCAs, RoCE NICs, EFA)."""
    try:
        return sorted(os.listdir(os.path.join(root, "sys/class/infiniband")))
    except OSError:
        return []


def card_wires() -> list[str]:
    """The RDMA wires to publish on this rank's card. UCX is asked (which creates the UCP context)
    only on a host with RDMA devices; elsewhere it cannot have any, and a job that never uses rdma
    then never creates a UCP context."""
    return local_rdma_wires() if rdma_devices() else []


def _hw(card) -> bool:
    """Whether the rank of this card has RDMA hardware in its UCX (from its card's ``transports``
    entry; a card without one stands for this process)."""
    t = card.get("transports")
    if t is None:
        return bool(local_rdma_wires())
    return bool((t.get("available", {}).get("rdma") or {}).get("hw"))


class RdmaTransport(Transport):
    """With RDMA hardware in UCX (verbs rc/ud/dc, EFA srd) it scores 20: below shared memory (30),
    above hetccl's own tcp (10). A UCX without such hardware only has its own tcp and shared memory,
    which are slower than hetccl's (UCX's tcp protocols copy once more), so it scores 5: never the
    default, but usable when forced (HETCCL_TRANSPORTS=rdma). Within a host UCX would only use
    shared memory, so it scores 5 there without asking UCX: single-host jobs never create a UCP
    context (and UCX's memory hooks) unless rdma is forced. On a host without RDMA devices a rank
    does not even load UCX unless rdma is forced (``offered``); on a host with them it defers the
    question (``deferred``) until the cards show the ranks' hosts, and only ranks with RDMA
    devices that have a peer with devices on another host load UCX (``resolve``): a job on one
    host never does unless rdma is forced."""
    name = "rdma"
    preference = 20                 # across hosts, with RDMA hardware in UCX
    link_class = "rdma"
    wire = True
    one_sided = True
    cost = None                     # never measured alone: priced like the costliest declared link
    link_kind = "rdma"              # a UCP stream
    FORCED_ONLY = 5                 # UCX without RDMA hardware, or inside a host: only when forced

    @classmethod
    def available(cls) -> bool:
        """Whether UCX loads here (loads it: ~0.35 s of CPU; `hetccl doctor` and forced jobs ask)."""
        return ucx() is not None

    def offered(self, allowed: list[str]) -> bool:
        """Only with RDMA devices (/sys/class/infiniband) or when forced. Without devices UCX has no
        RDMA hardware here, so every pair of this rank scores FORCED_ONLY, below tcp, which links
        any pair and is available everywhere: where tcp is allowed rdma can win no pair, and the rank
        neither offers it nor loads UCX. Forced (a filter without tcp): offered, and UCX is loaded
        to say whether it is available."""
        return "tcp" not in allowed or bool(rdma_devices())

    def deferred(self, allowed: list[str]) -> bool:
        """Offered for its RDMA devices while tcp is allowed: rdma can only win a pair across
        hosts, which the cards tell (``resolve``), so UCX is not loaded before them."""
        return "tcp" in allowed

    def card_info(self, allowed: list[str] = ()) -> dict:
        """``{"hw": [RDMA wires of this rank's UCX]}``; ``{"hw": None}`` when deferred (``resolve``)."""
        return {"hw": None} if self.deferred(allowed) else {"hw": card_wires()}

    def resolve(self, store, comm_id: str, rank: int, cards: list, timeout: float) -> None:
        """Settle the cards that deferred rdma (``{"hw": None}``). Only a pair on two hosts can take
        it, so when those ranks all sit on one host nobody loads UCX: their rdma is left without
        hardware (it scores FORCED_ONLY, below tcp). Otherwise each of them loads UCX and publishes
        its RDMA wires, or that UCX does not load (its rdma is then struck from its card), and every
        rank reads all of them (the same cards everywhere, so the same transport matrix)."""
        pending = [c for c in cards if ((c.get("transports") or {}).get("available") or {}).get("rdma", {})
                   .get("hw", []) is None]
        if not pending:
            return
        if len({c["host"] for c in pending}) < 2:
            for c in pending:
                c["transports"]["available"]["rdma"]["hw"] = []
            return
        ranks = [c["rank"] for c in pending]
        if rank in ranks:
            mine = {"hw": local_rdma_wires()} if self.available() else {"missing": ucx_missing() or "?"}
            store.set(f"{comm_id}/rdma/{rank}", json.dumps(mine).encode())
        raw = store.multi_get([f"{comm_id}/rdma/{r}" for r in ranks], timeout=timeout)
        for c, b in zip(pending, raw):
            try:
                verdict = json.loads(bytes(b))
                hw = verdict.get("hw") if "missing" not in verdict else None
                if hw is not None and not (isinstance(hw, list) and all(isinstance(w, str) for w in hw)):
                    raise ValueError("hw is not a list of names")
                if hw is None and not isinstance(verdict.get("missing"), str):
                    raise ValueError("neither hw nor missing")
            except (ValueError, TypeError, AttributeError) as e:
                raise TransportError(f"rank {c['rank']} published a malformed rdma verdict ({e}); "
                                     f"is it running the same hetccl?") from None
            if hw is None:
                log.info("rank %d cannot use rdma: %s", c["rank"], verdict["missing"])
                del c["transports"]["available"]["rdma"]
            else:
                c["transports"]["available"]["rdma"]["hw"] = hw

    def score(self, a: dict, b: dict) -> int:
        """From both cards: the preference only if both ends' UCX has RDMA hardware (the same on
        every rank)."""
        return self.preference if a["host"] != b["host"] and _hw(a) and _hw(b) else self.FORCED_ONLY

    def endpoint(self, sock, rank: int, peer: int, low: bool, job_id: str, comm_id: str,  # noqa: D102
                 timeout: float):
        """A UCP endpoint: the pair's socket carries the worker addresses, then liveness."""
        return RdmaEndpoint(sock, peer, timeout)

    def endpoints(self) -> dict:
        return {"rdma": ({}, ucx_missing)}

    def settle(self) -> None:
        settle()

    def doctor(self) -> tuple[list, dict]:
        return describe(), {}

    @staticmethod
    def _worker(ctx: LinkContext):
        """One SERIALIZED worker per communicator (its engine runs on one thread at a time), kept on
        the set-up context while pairs attach and by the engine afterwards."""
        w = getattr(ctx, "_ucx_worker", None)
        if w is None:
            mod = ucx()
            w = ctx._ucx_worker = mod.Worker(mod.context(), False)
        return w

    def attach(self, ctx: LinkContext, peer: int, sock, low: bool) -> None:
        mod = ucx()
        worker = self._worker(ctx)
        addr, _ = exchange_address(sock, worker.address, peer, ctx.timeout)
        ep = mod.Endpoint(worker, addr, peer, sock.fileno(), ctx.timeout)
        sock.setblocking(False)
        self.hand_over(ctx.engine, peer, sock.fileno(), mod.LinkHandle(worker, ep))


def ucx_missing():
    """None if the rdma transport's UCX loads here, else why not (and how to get it)."""
    try:
        from .._native import ucx as raw
    except ImportError as e:
        return f"hetccl._native.ucx is not built ({e})"
    return None if raw.load() else f"UCX cannot be loaded: {raw.load_error()}"


def describe() -> list[str]:
    """Lines for `hetccl doctor`: which UCX was found and the transports/devices it offers."""
    from .._native import ucx as raw
    d = raw.describe()
    if not d["ok"]:
        return [f"ucx: not loaded: {d['error']}"]
    lines = [f"ucx: {d['version']} from {d['path']}"]
    if d["error"]:
        lines.append(f"  cannot create a UCP context: {d['error']}")
    else:
        lines.append("  transports/devices: " + (", ".join(d["resources"]) or "none"))
        tuned = raw.context().settings
        lines.append("  hetccl's UCX settings: " + (", ".join(f"UCX_{k}={v}" for k, v in tuned.items())
                                                    or "none (the environment sets them)"))
        if not rdma_wires(d["resources"]):
            lines.append("  no RDMA hardware (rc/ud/dc/srd): rdma is used only when forced "
                         "(HETCCL_TRANSPORTS=rdma); it runs over UCX's tcp and shared memory")
    return lines
