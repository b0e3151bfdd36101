"""``shm``: PCIe-class staged copies through POSIX shared-memory FIFOs between two ranks of one host.

Each pair shares one segment with two lock-free single-producer/single-consumer byte FIFOs (one per
direction; the protocol is in _native/link.pxd). The lower rank creates it (mode 0600, pre-faulted),
the higher maps it, and the lower unlinks it as soon as the higher has mapped it: nothing is left in
/dev/shm once the communicator is up, even if every rank is killed. The pair's TCP socket stays open
as the doorbell a sleeping receiver waits on and to report the peer's death at once.
"""
import os
import select
import socket
import struct

from ..errors import HetcclTimeout, PeerLostError, TransportError
from ..memory.reap import PAIR_PREFIX
from .base import DefaultCost, LinkContext, Transport

_READY, _MAPPED = b"C", b"M"


def fifo_bytes(local_size: int) -> int:
    """Per-direction FIFO size: 4 MiB (deep enough to pipeline 256 KiB chunks) for up to 4 local
    ranks, 1 MiB beyond (8 ranks already map 28 pairs; first touch of memory is slow here)."""
    return 4 << 20 if local_size <= 4 else 1 << 20


def segment_name(ctx: LinkContext, lo: int, hi: int) -> str:
    """The pair's segment, created by rank ``lo``: its pid leads the name, so a segment left by a
    killed rank is found and removed by the next start on this host (memory/reap.py)."""
    pid = os.getpid() if lo == ctx.rank else ctx.cards[lo]["pid"]
    return f"/{PAIR_PREFIX}{pid}-{ctx.job_id}-{ctx.comm_id}-{lo}-{hi}"


def _lost(peer: int, why: str) -> PeerLostError:
    e = PeerLostError(f"shared-memory set-up with rank {peer} failed: {why}")
    e.peer = peer
    return e


def _expect(sock, token: bytes, n: int, peer: int, timeout: float) -> bytes:
    sock.settimeout(timeout)
    got = b""
    while len(got) < n:
        try:
            part = sock.recv(n - len(got))
        except socket.timeout:
            raise HetcclTimeout(f"shared-memory set-up: rank {peer} did not answer within "
                                f"{timeout:g} s") from None
        except OSError as e:
            raise _lost(peer, f"connection broke ({e})") from None
        if not part:
            raise _lost(peer, "connection closed")
        got += part
    if got[:1] != token:
        raise TransportError(f"shared-memory set-up with rank {peer} failed: protocol error")
    return got[1:]


def _send(sock, data: bytes, peer: int) -> None:
    try:
        sock.sendall(data)
    except OSError as e:
        raise _lost(peer, f"connection broke ({e})") from None


def _closed(sock, wait: float) -> bool:
    """Whether the peer closes ``sock`` within ``wait`` s (nothing is read)."""
    try:
        ready, _, _ = select.select([sock], [], [], wait)
        return bool(ready) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class ShmTransport(Transport):
    name = "shm"
    preference = 30                 # same host, staged (two copies)
    link_class = "shm"
    same_host = True
    wire = False
    # fallback only (collectives/cost_model.py): measured once on a 2-vCPU VM
    cost = DefaultCost(0.6e-6, 1 / 5e9, 1 / 8e9)
    link_kind = "shm"

    def __init__(self):
        self._pending = {}

    @classmethod
    def available(cls) -> bool:
        return os.path.isdir("/dev/shm")

    # subclasses (c2c) extend the pair segment and hand the engine a richer link
    suffix = ""

    def segment_bytes(self, ctx: LinkContext, fb: int) -> int:
        from .._native.segment import segment_bytes
        return segment_bytes(fb)

    def add_link(self, ctx: LinkContext, peer: int, sock, seg, fb: int, low: bool) -> None:
        self.hand_over(ctx.engine, peer, sock.fileno(), seg, fb, low)

    def prepare(self, ctx: LinkContext, peer: int, sock) -> None:
        from .._native.segment import ShmSegment
        fb = fifo_bytes(ctx.local_size)
        seg = ShmSegment(segment_name(ctx, ctx.rank, peer) + self.suffix, self.segment_bytes(ctx, fb), True)
        self._pending[(ctx.comm_id, peer)] = (seg, fb)
        _send(sock, _READY + struct.pack("<Q", fb), peer)

    def attach(self, ctx: LinkContext, peer: int, sock, low: bool) -> None:
        from .._native.segment import ShmSegment
        if low:
            seg, fb = self._pending[(ctx.comm_id, peer)]
        else:
            fb, = struct.unpack("<Q", _expect(sock, _READY, 9, peer, ctx.timeout))
            try:
                seg = ShmSegment(segment_name(ctx, peer, ctx.rank) + self.suffix, self.segment_bytes(ctx, fb), False)
            except TransportError as e:
                if _closed(sock, 1.0):       # it failed meanwhile and removed its segments: not ours
                    raise _lost(peer, "it left, removing its segment") from e
                raise
            _send(sock, _MAPPED, peer)
        self.add_link(ctx, peer, sock, seg, fb, low)

    def finish(self, ctx: LinkContext, peer: int, sock) -> None:
        seg, _ = self._pending.pop((ctx.comm_id, peer))
        try:
            _expect(sock, _MAPPED, 1, peer, ctx.timeout)
        finally:
            seg.unlink()

    def abandon(self, comm_id: str) -> None:
        """Unlink segments still pending after a failed set-up."""
        for key in [k for k in self._pending if k[0] == comm_id]:
            self._pending.pop(key)[0].close()
