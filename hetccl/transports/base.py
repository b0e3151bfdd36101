"""The transport interface, and how a transport declares itself.

A transport is one class in one module. Its class attributes are the transport's row of the table
(``hetccl.transports``) that every other layer reads instead of naming transports:

==============  ==========================================================================
``name``        what HETCCL_TRANSPORTS, ``comm.transport(peer)``, the transport matrix and the
                cost-model cache call it
``preference``  the score it gives a pair it can link; the highest score of a pair wins (the
                order is self > c2c > shm > rdma > tcp)
``link_class``  the topology link class it carries (topology/model.py RANK_CLASSES): a pair whose
                model class is slower never gets it (a topology file that puts two ranks on two
                hosts keeps them off shared memory)
``same_host``   it links ranks of one host only
``wire``        its bytes cross a network (a socket, a NIC); otherwise they are copied through
                shared memory by the CPU (FIFOs: a byte costs a copy pass per side)
``one_sided``   its Endpoint offers register/put/get
``cost``        default (alpha s, beta s/B, gamma s/B) for the cost model when nothing was measured
                (collectives/cost_model.py); None: priced like the costliest declared transport
``link_kind``   the native engine link kind its links are (``Engine.link_kind``)
==============  ==========================================================================

Behaviour is in the methods. A transport turns the authenticated TCP connection that
transports/mesh.py makes for every pair into a data link of the Cython engine. Set-up runs in three
phases over all pairs so that no pair waits on another (the low rank of a pair prepares, the high
rank attaches, the low finishes): shared memory needs exactly this (create, map, unlink); TCP needs
only ``attach``. The same set-up makes one pair's point-to-point Endpoint (transports/endpoint.py,
transports/pair_endpoint.py), and ``endpoints`` names the Endpoint modes the conformance suite
(tests/transports/) and bench/transports.py run.

``score(a, b)`` rates a pair from the two rank cards (host id, pid, addresses): 0 means the
transport cannot link them; otherwise ``preference`` (or less, for a pair it serves only when
forced).
"""
import json
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from ..errors import PeerLostError, TransportError



class DefaultCost(NamedTuple):
    """A transport's fallback alpha-beta-gamma (collectives/cost_model.py LinkCost)."""
    alpha: float            # seconds per message
    beta: float             # seconds per byte moved
    gamma: float            # extra seconds per byte reduced


@dataclass
class LinkContext:
    """What a transport needs to know while setting up links of one communicator."""
    engine: object           # hetccl._native.engine.Engine (or an endpoint's stand-in)
    rank: int
    job_id: str
    comm_id: str
    local_size: int           # ranks on this host (FIFO sizing)
    timeout: float
    cards: list = field(default_factory=list)   # every rank's card (c2c reads the peer's pid and mode)


class Transport:
    name = "?"
    preference = 0
    link_class = "tcp"
    same_host = False
    wire = True
    one_sided = False
    cost: DefaultCost | None = None
    link_kind = "none"

    @classmethod
    def available(cls) -> bool:
        return True

    def offered(self, allowed: list[str]) -> bool:
        """Whether this rank puts the transport on its card at all under the filter ``allowed``
        (names), decided without loading anything; ``available`` is asked only when it does. False
        where no pair of this rank could choose the transport, so that a library the job will never
        use is not loaded in every rank (rdma: UCX)."""
        return True

    def score(self, a: dict, b: dict) -> int:
        """The preference if this transport can link the ranks of cards ``a`` and ``b``, else 0."""
        if self.same_host and a["host"] != b["host"]:
            return 0
        return self.preference

    def deferred(self, allowed: list[str]) -> bool:
        """Whether this rank offers the transport before knowing if it can use it (``available``
        not asked, nothing loaded): its card says so (``card_info``) and ``resolve`` settles it
        once the cards show whether any pair could choose it (rdma: UCX, only across hosts)."""
        return False

    def card_info(self, allowed: list[str] = ()) -> dict:
        """What this rank tells its peers about the transport (on its card, under ``transports``)
        beyond being able to use it: whatever ``score`` must know about both ends."""
        return {}

    def resolve(self, store, comm_id: str, rank: int, cards: list, timeout: float) -> None:
        """After the cards are exchanged, on every rank whose filter allows the transport: settle
        what deferred cards left open (``deferred``), the same in every rank's copy of the cards."""

    def card_fields(self) -> dict:
        """Fields this transport adds to the top level of the rank card when it is allowed and
        available (c2c: the word its peers test-read by cross-memory attach)."""
        return {}

    def agree(self, store, comm_id: str, rank: int, cards: list, timeout: float) -> None:
        """After every pair is connected and before the transport matrix is chosen: settle, with
        the other ranks through the store, anything ``score`` must read from the cards (c2c: each
        host's mode). Every rank runs it when the transport is allowed and available here."""

    def agree_pair(self, sock, cards: dict, rank: int, peer: int, timeout: float) -> None:
        """``agree`` for a lone pair (an Endpoint's set-up): ``cards`` holds both ranks' cards by
        rank, and the pair's socket carries what the two must settle."""

    def prepare(self, ctx: LinkContext, peer: int, sock) -> None:
        """Phase 1, on the lower rank of the pair."""

    def attach(self, ctx: LinkContext, peer: int, sock, low: bool) -> None:
        """Phase 2, on both ranks: hand the link to the engine."""
        raise NotImplementedError

    def finish(self, ctx: LinkContext, peer: int, sock) -> None:
        """Phase 3, on the lower rank of the pair."""

    def hand_over(self, engine, peer: int, fd: int, *args) -> None:
        """Give ``engine`` this pair's link, of this transport's native ``link_kind``: the
        arguments after ``fd`` are the kind's (docs/design.md, "Native core": tcp none; shm
        segment, FIFO bytes, low; c2c those and mode, peer pid, window bytes; rdma the UCP
        handle)."""
        engine.attach(peer, self.link_kind, fd, *args)

    def abandon(self, comm_id: str) -> None:
        """Release what a failed set-up of ``comm_id`` left pending (shm: unlink its segments)."""

    # This rank's Endpoint to ``peer`` over the authenticated ``sock``. None: a PairEndpoint over
    # the transport's own engine link (prepare/attach/finish into one PairLink,
    # transports/pair_endpoint.py). A transport with an Endpoint of its own (rdma) sets a method
    # ``endpoint(sock, rank, peer, low, job_id, comm_id, timeout) -> Endpoint``.
    endpoint = None

    def endpoints(self) -> dict:
        """The Endpoint modes of this transport for the conformance suite and bench/transports.py:
        {factory name: (environment to set, None or a function saying why it cannot run here)};
        more than one when the transport runs in several modes (c2c: cma and window)."""
        return {self.name: ({}, None)}

    def describe_links(self, cards: list, facts: dict) -> list:
        """Lines ``comm.describe()`` adds when the communicator has links of this transport:
        ``cards`` are its ranks' cards, ``facts`` what it decided about routes over them
        (direct_min: ring single-copy thresholds; single_copy: {collective: plain-buffer crossover}; symmetric: comm.alloc is shared)."""
        return []

    def doctor(self) -> tuple[list, dict]:
        """(lines `hetccl doctor` prints about this transport here, fields a preview card of a rank
        of this host carries so the preview's scores see what a job's would)."""
        return [], {}

    def settle(self) -> None:
        """Let closed endpoints finish tearing down before resources are counted."""


def exchange_cards(sock, mine: dict, timeout: float) -> dict:
    """Send this end's card (JSON, length-prefixed) over a pair's socket and receive the peer's:
    how the two ends of a lone pair (an Endpoint's set-up) learn what a communicator's ranks learn
    from the store."""
    sock.settimeout(timeout)
    data = json.dumps(mine).encode()
    sock.sendall(struct.pack("<I", len(data)) + data)
    n, = struct.unpack("<I", _recv_exact(sock, 4))
    if n > 65536:
        raise TransportError("endpoint set-up: oversized card from the peer")
    return json.loads(_recv_exact(sock, n))


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise PeerLostError("the peer closed the connection during endpoint set-up")
        buf += part
    return buf
