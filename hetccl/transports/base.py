"""The transport interface.

A transport turns an authenticated TCP connection between two ranks (made by transports/mesh.py for
every pair) into a data link of the Cython engine. Set-up runs in three phases over all pairs so that
no pair waits on another (the low rank of a pair prepares, the high rank attaches, the low finishes):
shared memory needs exactly this (create, map, unlink); TCP needs only ``attach``.

``score(a, b)`` rates a pair from the two rank cards (host id, pid, addresses): 0 means the transport
cannot link them; higher is faster. Scores follow the link-class order self > c2c > shm > rdma > tcp.
"""
from dataclasses import dataclass, field


@dataclass
class LinkContext:
    """What a transport needs to know while setting up links of one communicator."""
    engine: object           # hetccl._native.engine.Engine
    rank: int
    job_id: str
    comm_id: str
    local_size: int           # ranks on this host (FIFO sizing)
    timeout: float
    cards: list = field(default_factory=list)   # every rank's card (c2c reads the peer's pid and mode)


class Transport:
    name = "?"

    @classmethod
    def available(cls) -> bool:
        return True

    def score(self, a: dict, b: dict) -> int:
        raise NotImplementedError

    def card_info(self) -> dict:
        """What this rank tells its peers about the transport (on its card, under ``transports``)
        beyond being able to use it: whatever ``score`` must know about both ends."""
        return {}

    def prepare(self, ctx: LinkContext, peer: int, sock) -> None:
        """Phase 1, on the lower rank of the pair."""

    def attach(self, ctx: LinkContext, peer: int, sock, low: bool) -> None:
        """Phase 2, on both ranks: hand the link to the engine."""
        raise NotImplementedError

    def finish(self, ctx: LinkContext, peer: int, sock) -> None:
        """Phase 3, on the lower rank of the pair."""
