"""Authentication with the job secret: MAC helpers for the store and the handshake for data links.

Why: the store port and every data connection are open TCP ports. Anything that can reach them
(another user's job, a port scanner, a rank of a *previous* job on the same port) must not be able to
inject keys or bytes into a collective. Every rank knows the job secret (``HETCCL_SECRET``, or one
that the launcher generated); a peer proves it knows the secret with HMAC-SHA256 over fresh random
nonces, so recorded traffic cannot be replayed.

When no secret is configured the all-zero key is used: the code path is the same (so it is always
tested), but the job is unauthenticated, which is logged once at INFO.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket
import struct
import time

from ..errors import AuthenticationError
from .guard import Recv, Send, peer_name, run_blocking

log = logging.getLogger("hetccl.bootstrap")
tlog = logging.getLogger("hetccl.transport")

NONCE_BYTES = 32
MAC_BYTES = 32
ZERO_KEY = bytes(32)
MAX_COMM_ID = 256  # guard: a peer can't make us allocate more than this for a comm id

_warned_unauthenticated = False


def hmac_key(secret: bytes | None) -> bytes:
    """The HMAC key for ``secret``; the all-zero key (logged once at INFO) when there is none."""
    global _warned_unauthenticated
    if secret:
        return bytes(secret)
    if not _warned_unauthenticated:
        _warned_unauthenticated = True
        log.info("no job secret (HETCCL_SECRET) is set: the store and data connections are not "
                 "authenticated; launch with `hetccl run` or set HETCCL_SECRET on every rank")
    return ZERO_KEY


def mac(key: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 over ``parts``, each length-prefixed so frame boundaries are authenticated too."""
    h = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        h.update(struct.pack(">Q", len(p)))
        h.update(p)
    return h.digest()


def derive_key(secret_key: bytes, label: bytes, *parts: bytes) -> bytes:
    """A per-connection key from the secret and both sides' nonces (the nonces make it fresh)."""
    return mac(secret_key, label, *parts)


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


# ------------------------------------------------------------------------------------------------
# Data-link handshake (the lead's transports call these on a connected, blocking TCP socket)
#
#   client -> server  HELLO:  b"HLK1" | client_rank u32 | expected_server_rank u32 |
#                             comm_id_len u16 | comm_id | nonce_c[32]
#   server -> client  CHAL:   b"HLK1" | server_rank u32 | nonce_s[32] | mac_s[32]
#   client -> server  PROOF:  mac_c[32]
#   server -> client  VERDICT: b"\x01" accepted | b"\x00" refused
#
#   mac_s = HMAC(secret, "hetccl-link", "S", comm_id, nonce_c, nonce_s, client_rank, server_rank)
#   mac_c = the same with "C": the direction label stops one side's proof being reflected back.
# ------------------------------------------------------------------------------------------------
_LINK_MAGIC = b"HLK1"
_LINK_LABEL = b"hetccl-link"
_HELLO_FIXED = struct.Struct(">4sIIH")
_CHAL = struct.Struct(">4sI32s32s")


def client_handshake_steps(secret: bytes | None, my_rank: int, peer_rank: int, comm_id: bytes,
                           peer: str = "the peer"):
    """The connecting side of the link handshake as steps (guard.py); returns None when both
    sides proved the job secret, raises AuthenticationError otherwise."""
    comm_id = bytes(comm_id)
    if len(comm_id) > MAX_COMM_ID:
        raise ValueError(f"comm_id is {len(comm_id)} bytes; at most {MAX_COMM_ID} are allowed")
    key = hmac_key(secret)
    nonce_c = new_nonce()
    yield Send(_HELLO_FIXED.pack(_LINK_MAGIC, my_rank, peer_rank, len(comm_id)) + comm_id + nonce_c)
    magic, server_rank, nonce_s, mac_s = _CHAL.unpack((yield Recv(_CHAL.size)))
    if magic != _LINK_MAGIC:
        raise AuthenticationError(f"refused connection to {peer}: it does not speak the hetccl "
                                  f"link protocol")
    if server_rank != peer_rank:
        raise AuthenticationError(f"refused connection to {peer}: it is rank {server_rank}, but "
                                  f"we expected rank {peer_rank}")
    want = _link_mac(key, b"S", comm_id, nonce_c, nonce_s, my_rank, server_rank)
    if not hmac.compare_digest(want, mac_s):
        raise AuthenticationError(f"refused connection to {peer}: bad authentication; is "
                                  f"HETCCL_SECRET the same on every rank?")
    yield Send(_link_mac(key, b"C", comm_id, nonce_c, nonce_s, my_rank, server_rank))
    if (yield Recv(1)) != b"\x01":
        raise AuthenticationError(
            f"rank {peer_rank} at {peer} refused our link authentication: is HETCCL_SECRET the "
            f"same on every rank, and do both ranks use the same communicator?")


def server_handshake_steps(secret: bytes | None, my_rank: int, comm_id: bytes,
                           peer: str = "the peer"):
    """The accepting side of the link handshake as steps (guard.py); returns the proven rank of
    the peer. Frames are fixed-size apart from the comm id, capped at MAX_COMM_ID bytes, so a
    stranger costs at most a few hundred bytes."""
    comm_id = bytes(comm_id)
    key = hmac_key(secret)

    def refuse(why: str):
        yield Send(b"\x00")
        raise AuthenticationError(f"refused connection from {peer}: {why}")

    magic, client_rank, wanted_rank, id_len = _HELLO_FIXED.unpack((yield Recv(_HELLO_FIXED.size)))
    if magic != _LINK_MAGIC:
        yield from refuse("bad authentication (not a hetccl link hello)")
    if id_len > MAX_COMM_ID:
        yield from refuse("bad authentication (oversized hello)")
    peer_comm_id = yield Recv(id_len)
    nonce_c = yield Recv(NONCE_BYTES)
    nonce_s = new_nonce()
    yield Send(_CHAL.pack(_LINK_MAGIC, my_rank, nonce_s,
                          _link_mac(key, b"S", peer_comm_id, nonce_c, nonce_s, client_rank,
                                    my_rank)))
    mac_c = yield Recv(MAC_BYTES)
    want = _link_mac(key, b"C", peer_comm_id, nonce_c, nonce_s, client_rank, my_rank)
    if not hmac.compare_digest(want, mac_c):
        yield from refuse("bad authentication")
    # Proven peer: only now are the claims in its hello worth reporting precisely.
    if peer_comm_id != comm_id:
        yield from refuse(f"rank {client_rank} belongs to another communicator "
                          f"({peer_comm_id.hex()[:16]}, ours is {comm_id.hex()[:16]})")
    if wanted_rank != my_rank:
        yield from refuse(f"rank {client_rank} wanted rank {wanted_rank}, but this is rank {my_rank}")
    yield Send(b"\x01")
    return client_rank


def _link_mac(key: bytes, direction: bytes, comm_id: bytes, nonce_c: bytes, nonce_s: bytes,
              client_rank: int, server_rank: int) -> bytes:
    return mac(key, _LINK_LABEL, direction, comm_id, nonce_c, nonce_s,
               struct.pack(">II", client_rank, server_rank))


def _restoring_timeout(sock: socket.socket, steps, timeout: float):
    old_timeout = sock.gettimeout()
    try:
        return run_blocking(steps, sock, time.monotonic() + timeout, "link authentication")
    finally:
        try:
            sock.settimeout(old_timeout)
        except OSError:
            pass


def client_handshake(sock: socket.socket, secret: bytes | None, my_rank: int, peer_rank: int,
                     comm_id: bytes, timeout: float) -> None:
    """Authenticate a freshly connected link to ``peer_rank`` (we connected, it accepted).

    Both sides prove knowledge of the job secret. Returns normally on success; raises
    AuthenticationError when the server's proof is wrong or it refuses ours, HetcclTimeout or
    PeerLostError when the peer does not answer. The socket's timeout is restored afterwards.
    """
    try:
        _restoring_timeout(sock, client_handshake_steps(secret, my_rank, peer_rank, comm_id,
                                                        peer_name(sock)), timeout)
    except AuthenticationError as e:
        tlog.warning("%s", e)
        try:  # the link is useless now; let the server see EOF at once instead of timing out
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise


def server_handshake(sock: socket.socket, secret: bytes | None, my_rank: int, comm_id: bytes,
                     timeout: float) -> int:
    """Authenticate a freshly accepted link on this thread; returns the proven rank of the peer.

    A failed proof logs a WARNING on ``hetccl.transport`` and raises AuthenticationError; the
    caller should close the socket and keep accepting. A listener that stays open while data
    flows must not call this on a data thread: it uses guard.HandshakeGate with
    ``server_handshake_steps`` instead.
    """
    try:
        return _restoring_timeout(sock, server_handshake_steps(secret, my_rank, comm_id,
                                                               peer_name(sock)), timeout)
    except AuthenticationError as e:
        tlog.warning("%s", e)
        raise


def authenticate_socket(sock: socket.socket, secret: bytes | None, my_rank: int, comm_id: bytes,
                        timeout: float, peer_rank: int | None = None) -> int:
    """One call for both ends: with ``peer_rank`` we connected (client side) to that rank,
    without it we accepted (server side). Returns the authenticated peer rank."""
    if peer_rank is None:
        return server_handshake(sock, secret, my_rank, comm_id, timeout)
    client_handshake(sock, secret, my_rank, peer_rank, comm_id, timeout)
    return peer_rank
