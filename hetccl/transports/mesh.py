"""Connect every pair of ranks of a communicator and hand each pair to its transport.

1. Every rank listens on one TCP port and publishes a *rank card* (host id, pid, address, port)
   through the Store as JSON (nothing is unpickled).
2. Each rank connects to every lower rank and accepts every higher one; both ends prove the job
   secret (bootstrap/auth.py). Connections from anything else are refused, logged and ignored.
3. Each allowed transport settles what its scores need (``Transport.resolve``: whether ranks that
   deferred rdma have it, asked only where ranks sit on two hosts; ``Transport.agree``: c2c's mode per host),
   then transports/matrix.py picks a transport per pair from the cards and the topology model built
   from them (each card carries the rank's discovered or file-given place, topology/cards.py); set-up
   then runs in three phases
   (prepare on low ranks, attach on both, finish on low ranks) so no pair can wait on another.
The pair's socket stays open for the communicator's lifetime: it is the data path for ``tcp`` and the
doorbell and liveness channel for ``shm``.
"""
import json
import logging
import os
import queue
import socket
import time

from .. import config
from .. import transports as _transports
from ..bootstrap.auth import client_handshake, server_handshake_steps
from ..bootstrap.guard import HandshakeGate
from ..errors import CommAborted, HetcclTimeout
from ..topology.cards import card_entry, model_of
from ..topology.host import host_id
from .base import LinkContext
from .matrix import offered_here, parse_filter, transport_matrix, transports_entry
from .netif import keepalive, listen_address

log = logging.getLogger("hetccl.transport")


def _listener(store):
    ifname, addr = listen_address(getattr(store, "local_address", None))
    bind = addr
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((bind, 0))
    s.listen(128)
    return s, ifname, addr


def _tune(sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    keepalive(sock, config.peer_timeout())     # a vanished host is noticed, not waited for


def _check(cancel):
    if cancel is not None and cancel.is_set():
        raise CommAborted(getattr(cancel, "reason", "the set-up was cancelled"))


def _connect(card, same_host, deadline, cancel=None):
    addr = "127.0.0.1" if same_host and card["bind_any"] else card["addr"]
    last = None
    while time.monotonic() < deadline:
        _check(cancel)
        try:
            left = max(0.1, deadline - time.monotonic())
            s = socket.create_connection((addr, card["port"]), timeout=min(left, 2.0) if cancel else left)
            _tune(s)
            return s
        except OSError as e:          # the peer may not be listening yet
            last = e
            time.sleep(0.05)
    raise HetcclTimeout(f"cannot connect to rank {card['rank']} at {addr}:{card['port']}: {last}; "
                        f"check firewalls, or pick another interface with HETCCL_SOCKET_IFNAME")


def connect_mesh(engine, store, rank, size, secret, job_id, comm_id, timeout, transports_spec=None,
                 extra=None, group=None, cancel=None):
    """Connect all pairs; returns (cards, transport matrix, {peer: socket}).

    extra: more fields for this rank's card. group: for sub-communicators, the parent ranks of the
    members (card keys then use group ranks under the new comm_id). cancel: an Event (with a
    ``reason``) that makes the waits for peers give up with CommAborted once set (a shrink whose
    survivor died meanwhile); the store's own waits are cancelled through the store client."""
    deadline = time.monotonic() + timeout
    listener, ifname, addr = _listener(store)
    socks = {}
    cid = comm_id.encode()
    arrived = queue.Queue()     # (socket, proven rank) from the gate: handshakes run off this thread
    gate = HandshakeGate(listener, lambda who: server_handshake_steps(secret, rank, cid, who),
                         lambda s, peer: arrived.put((s, peer)), name="hetccl-mesh-gate",
                         logger=log)
    try:
        allowed = parse_filter(transports_spec, [t.name for t in _transports.ALL])
        mine = offered_here(_transports.ALL, allowed)
        fields = {}
        for t in mine:
            fields.update(t.card_fields())
        card = {"rank": rank, "host": host_id(), "pid": os.getpid(), "ifname": ifname, "addr": addr,
                "port": listener.getsockname()[1], "bind_any": False,
                "topo": card_entry(comm_id, rank, size),
                "transports": transports_entry(_transports.ALL, transports_spec),
                **fields, **(extra or {})}
        store.set(f"{comm_id}/card/{rank}", json.dumps(card).encode())
        raw = store.multi_get([f"{comm_id}/card/{r}" for r in range(size)], timeout=timeout)
        cards = [json.loads(bytes(b)) for b in raw]
        for peer in range(rank):
            s = _connect(cards[peer], cards[peer]["host"] == card["host"], deadline, cancel)
            socks[peer] = s
            client_handshake(s, secret, rank, peer, cid, max(0.1, deadline - time.monotonic()))
        while len(socks) < size - 1:
            _check(cancel)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(rank + 1, size)) - set(socks))
                raise HetcclTimeout(f"rank {rank} waited {timeout:g} s for ranks {missing} to connect; "
                                    f"are they running, and can they reach {addr}?")
            try:
                s, peer = arrived.get(timeout=min(remaining, 0.2 if cancel is not None else 1.0))
            except queue.Empty:
                continue
            _tune(s)
            if peer <= rank or peer >= size or peer in socks:
                log.warning("rank %d: ignoring a duplicate or unexpected connection from rank %d", rank, peer)
                s.close()
                continue
            socks[peer] = s
        for t in _transports.ALL:    # what deferred cards left open (rdma: UCX, only across hosts)
            if t.name in allowed:
                t.resolve(store, comm_id, rank, cards, max(1.0, deadline - time.monotonic()))
        for t in mine:     # e.g. every rank's verdict on cross-memory attach decides each host's c2c mode
            t.agree(store, comm_id, rank, cards, max(1.0, deadline - time.monotonic()))
        matrix = transport_matrix(cards, _transports.ALL, transports_spec, model_of(cards))
        local_size = sum(c["host"] == card["host"] for c in cards)
        ctx = LinkContext(engine, rank, job_id, comm_id, local_size, max(1.0, deadline - time.monotonic()),
                          cards)
        tr = {p: _transports.by_name(matrix[rank][p]) for p in socks}
        try:
            for p in sorted(socks):
                if p > rank:
                    tr[p].prepare(ctx, p, socks[p])
            for p in sorted(socks):
                tr[p].attach(ctx, p, socks[p], p > rank)
            for p in sorted(socks):
                if p > rank:
                    tr[p].finish(ctx, p, socks[p])
        except BaseException:
            for t in set(tr.values()):
                t.abandon(comm_id)
            raise
        return cards, matrix, socks
    except BaseException:
        for s in socks.values():
            s.close()
        raise
    finally:
        gate.close()
        listener.close()
        while not arrived.empty():
            arrived.get()[0].close()
