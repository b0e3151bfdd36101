"""``loop``: a test transport, declared outside hetccl to show (and keep honest) what adding one costs.

This module plus one line in tests/transports/registry.py (``TEST_TRANSPORTS``) is all it takes: the
transport table then offers it to the transport matrix (HETCCL_TRANSPORTS=loop), the mesh sets its
links up, the cost model prices it, the probe counts it as a wire, and the conformance suite runs its
Endpoints like every other transport's.

What it is: the pair's authenticated socket carrying the data, like ``tcp``, but with small kernel
socket buffers (``BUFFER`` bytes each way, a 64th of tcp's). Every message larger than that goes
out in many partial writes and arrives in many partial reads, as over a congested network, so the
engine's non-blocking progress and its readiness waits are exercised on every call. (Below about
20 KiB the engine's 3-rank ring allreduce of 4 MiB stops making progress: a limit of the engine's
socket link, not of this transport, which hands the engine the same link tcp does.) Its preference is below every shipped
transport's: it is never chosen unless forced.
"""
import socket

from hetccl.transports.base import LinkContext, Transport

BUFFER = 64 << 10       # tcp asks for 4 MiB (transports/tcp.py)


class LoopTransport(Transport):
    name = "loop"
    preference = 1                  # the last choice: only when HETCCL_TRANSPORTS forces it
    link_class = "tcp"              # any two ranks, across hosts included
    same_host = False
    wire = True
    one_sided = False
    cost = None                     # nothing measured: priced like the costliest declared link
    link_kind = "tcp"               # the engine's socket link

    def attach(self, ctx: LinkContext, peer: int, sock, low: bool) -> None:
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, BUFFER)
        sock.setblocking(False)
        self.hand_over(ctx.engine, peer, sock.fileno())
