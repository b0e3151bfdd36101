"""``tcp``: the pair's authenticated socket itself carries the data, non-blocking, driven by the engine.

Works between any two ranks, across hosts included. Receives land directly in the user's buffer
(copies) or in a 1 MiB staging buffer that is reduced into the user's buffer (reductions).
"""
import socket

from .base import DefaultCost, LinkContext, Transport

SOCKET_BUFFER = 4 << 20


class TcpTransport(Transport):
    name = "tcp"
    preference = 10                 # anything reachable: the last resort
    link_class = "tcp"
    wire = True
    # fallback only (collectives/cost_model.py): measured once on a 2-vCPU VM over loopback
    cost = DefaultCost(20e-6, 1 / 2.5e9, 1 / 8e9)
    link_kind = "tcp"

    def attach(self, ctx: LinkContext, peer: int, sock, low: bool) -> None:
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:
                pass
        sock.setblocking(False)
        self.hand_over(ctx.engine, peer, sock.fileno())
