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

from ..errors import AuthenticationError, HetcclTimeout, PeerLostError

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


def _peer_name(sock: socket.socket) -> str:
    try:
        addr = sock.getpeername()
    except OSError:
        return "<unknown peer>"
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    return str(addr) or "<local socket>"


def _recv_exact(sock: socket.socket, n: int, deadline: float, what: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise HetcclTimeout(f"link authentication with {_peer_name(sock)} timed out while "
                                f"waiting for the {what}; is the peer a hetccl rank of this job?")
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(buf))
        except socket.timeout:
            continue
        except OSError as e:
            raise PeerLostError(f"connection to {_peer_name(sock)} failed during authentication "
                                f"({e}); the peer rank may have died") from e
        if not chunk:
            raise PeerLostError(f"{_peer_name(sock)} closed the connection during authentication "
                                f"(while we waited for the {what}); the peer may have died or "
                                f"refused our credentials — is HETCCL_SECRET the same on every rank?")
        buf += chunk
    return bytes(buf)


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise HetcclTimeout(f"link authentication with {_peer_name(sock)} timed out")
    sock.settimeout(left)
    try:
        sock.sendall(data)
    except socket.timeout as e:
        raise HetcclTimeout(f"link authentication with {_peer_name(sock)} timed out "
                            f"while sending") from e
    except OSError as e:
        raise PeerLostError(f"connection to {_peer_name(sock)} failed during authentication "
                            f"({e}); the peer rank may have died") from e


def _link_mac(key: bytes, direction: bytes, comm_id: bytes, nonce_c: bytes, nonce_s: bytes,
              client_rank: int, server_rank: int) -> bytes:
    return mac(key, _LINK_LABEL, direction, comm_id, nonce_c, nonce_s,
               struct.pack(">II", client_rank, server_rank))


def client_handshake(sock: socket.socket, secret: bytes | None, my_rank: int, peer_rank: int,
                     comm_id: bytes, timeout: float) -> None:
    """Authenticate a freshly connected link to ``peer_rank`` (we connected, it accepted).

    Both sides prove knowledge of the job secret. Returns normally on success; raises
    AuthenticationError when the server's proof is wrong or it refuses ours, HetcclTimeout or
    PeerLostError when the peer does not answer. The socket's timeout is restored afterwards.
    """
    comm_id = bytes(comm_id)
    if len(comm_id) > MAX_COMM_ID:
        raise ValueError(f"comm_id is {len(comm_id)} bytes; at most {MAX_COMM_ID} are allowed")
    key = hmac_key(secret)
    deadline = time.monotonic() + timeout
    old_timeout = sock.gettimeout()
    try:
        nonce_c = new_nonce()
        _send_all(sock, _HELLO_FIXED.pack(_LINK_MAGIC, my_rank, peer_rank, len(comm_id))
                  + comm_id + nonce_c, deadline)
        magic, server_rank, nonce_s, mac_s = _CHAL.unpack(
            _recv_exact(sock, _CHAL.size, deadline, "authentication challenge"))
        if magic != _LINK_MAGIC:
            _refuse_client_side(sock, "it does not speak the hetccl link protocol")
        if server_rank != peer_rank:
            _refuse_client_side(sock, f"it is rank {server_rank}, but we expected rank {peer_rank}")
        want = _link_mac(key, b"S", comm_id, nonce_c, nonce_s, my_rank, server_rank)
        if not hmac.compare_digest(want, mac_s):
            _refuse_client_side(sock, "bad authentication; is HETCCL_SECRET the same on every rank?")
        _send_all(sock, _link_mac(key, b"C", comm_id, nonce_c, nonce_s, my_rank, server_rank),
                  deadline)
        verdict = _recv_exact(sock, 1, deadline, "authentication verdict")
        if verdict != b"\x01":
            raise AuthenticationError(
                f"rank {peer_rank} at {_peer_name(sock)} refused our link authentication: "
                f"is HETCCL_SECRET the same on every rank, and do both ranks use the same "
                f"communicator?")
    finally:
        try:
            sock.settimeout(old_timeout)
        except OSError:
            pass


def _refuse_client_side(sock: socket.socket, why: str):
    peer = _peer_name(sock)
    tlog.warning("refused connection to %s: %s", peer, why)
    try:  # the link is useless now; let the server see EOF at once instead of timing out
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    raise AuthenticationError(f"refused connection to {peer}: {why}")


def server_handshake(sock: socket.socket, secret: bytes | None, my_rank: int, comm_id: bytes,
                     timeout: float) -> int:
    """Authenticate a freshly accepted link; returns the (proven) rank of the connecting peer.

    A failed proof logs a WARNING on ``hetccl.transport`` and raises AuthenticationError; the
    caller should close the socket and keep accepting (garbage from a port scanner must not stop a
    job). Frames are fixed-size apart from the comm id, which is capped at MAX_COMM_ID bytes.
    """
    comm_id = bytes(comm_id)
    key = hmac_key(secret)
    deadline = time.monotonic() + timeout
    old_timeout = sock.gettimeout()
    peer = _peer_name(sock)

    def refuse(why: str):
        tlog.warning("refused connection from %s: %s", peer, why)
        try:
            _send_all(sock, b"\x00", min(deadline, time.monotonic() + 1.0))
        except Exception:
            pass
        raise AuthenticationError(f"refused connection from {peer}: {why}")

    try:
        magic, client_rank, wanted_rank, id_len = _HELLO_FIXED.unpack(
            _recv_exact(sock, _HELLO_FIXED.size, deadline, "link hello"))
        if magic != _LINK_MAGIC:
            refuse("bad authentication (not a hetccl link hello)")
        if id_len > MAX_COMM_ID:
            refuse("bad authentication (oversized hello)")
        peer_comm_id = _recv_exact(sock, id_len, deadline, "link hello")
        nonce_c = _recv_exact(sock, NONCE_BYTES, deadline, "link hello")
        nonce_s = new_nonce()
        _send_all(sock, _CHAL.pack(_LINK_MAGIC, my_rank, nonce_s,
                                   _link_mac(key, b"S", peer_comm_id, nonce_c, nonce_s,
                                             client_rank, my_rank)), deadline)
        mac_c = _recv_exact(sock, MAC_BYTES, deadline, "authentication proof")
        want = _link_mac(key, b"C", peer_comm_id, nonce_c, nonce_s, client_rank, my_rank)
        if not hmac.compare_digest(want, mac_c):
            refuse("bad authentication")
        # Proven peer: only now are the claims in its hello worth reporting precisely.
        if peer_comm_id != comm_id:
            refuse(f"rank {client_rank} belongs to another communicator "
                   f"({peer_comm_id.hex()[:16]}, ours is {comm_id.hex()[:16]})")
        if wanted_rank != my_rank:
            refuse(f"rank {client_rank} wanted rank {wanted_rank}, but this is rank {my_rank}")
        _send_all(sock, b"\x01", deadline)
        return client_rank
    finally:
        try:
            sock.settimeout(old_timeout)
        except OSError:
            pass


def authenticate_socket(sock: socket.socket, secret: bytes | None, my_rank: int, comm_id: bytes,
                        timeout: float, peer_rank: int | None = None) -> int:
    """One call for both ends: with ``peer_rank`` we connected (client side) to that rank,
    without it we accepted (server side). Returns the authenticated peer rank."""
    if peer_rank is None:
        return server_handshake(sock, secret, my_rank, comm_id, timeout)
    client_handshake(sock, secret, my_rank, peer_rank, comm_id, timeout)
    return peer_rank
