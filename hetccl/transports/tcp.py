"""``tcp``: the pair's authenticated socket itself carries the data, non-blocking, driven by the engine.

Works between any two ranks, across hosts included. Receives land directly in the user's buffer
(copies) or in a 1 MiB staging buffer that is reduced into the user's buffer (reductions).
"""
import socket

from ..topology.select import SCORES
from .base import LinkContext, Transport

SOCKET_BUFFER = 4 << 20


class TcpTransport(Transport):
    name = "tcp"

    def score(self, a: dict, b: dict) -> int:
        return SCORES["tcp"]

    def attach(self, ctx: LinkContext, peer: int, sock, low: bool) -> None:
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:
                pass
        sock.setblocking(False)
        ctx.engine.add_tcp_link(peer, sock.fileno())
