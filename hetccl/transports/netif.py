"""Which local address a rank listens on for TCP.

Like NCCL and Gloo: ``HETCCL_SOCKET_IFNAME`` picks interfaces by name (``eth0``, a prefix such as
``ib``, ``=eth0`` for an exact name, ``^docker,lo`` to exclude). Without it, a rank's listeners bind
the address on its route to the job's store (``listen_address``): the others reach the store that
way, and a job whose store is on loopback never listens beyond loopback. Listeners never bind every
address. ``choose_address`` (the first interface that is up and not loopback, docker, or another
virtual bridge, falling back to loopback) is the last resort when that route is unknown.
"""
import fcntl
import os
import socket
import struct

from ..errors import InvalidUsage

_VIRTUAL_PREFIXES = ("lo", "docker", "virbr", "veth", "br-", "cni", "flannel", "vmnet", "vboxnet",
                     "tun", "tap", "kube", "cali", "weave")
_SIOCGIFADDR = 0x8915


def ipv4_of(ifname: str) -> str | None:
    """The IPv4 address of an interface, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", ifname[:15].encode()))
        except OSError:
            return None
    return socket.inet_ntoa(res[20:24])


def interfaces() -> list[tuple[str, str]]:
    """(name, IPv4 address) of every interface with an IPv4 address, in kernel order."""
    out = []
    for _, name in socket.if_nameindex():
        addr = ipv4_of(name)
        if addr:
            out.append((name, addr))
    return out


def _match(name: str, spec: str) -> bool:
    exact = spec.startswith("=")
    pats = [p for p in spec.lstrip("^=").split(",") if p]
    hit = any(name == p if exact else name.startswith(p) for p in pats)
    return not hit if spec.startswith("^") else hit


def choose_address(spec: str | None = None) -> tuple[str, str]:
    """(interface, address) to listen on; spec defaults to HETCCL_SOCKET_IFNAME."""
    spec = spec if spec is not None else os.environ.get("HETCCL_SOCKET_IFNAME")
    ifs = interfaces()
    if spec:
        chosen = [(n, a) for n, a in ifs if _match(n, spec)]
        if not chosen:
            raise InvalidUsage(f"HETCCL_SOCKET_IFNAME={spec!r} matches no interface with an IPv4 "
                               f"address; available: {', '.join(n for n, _ in ifs) or 'none'}")
        return chosen[0]
    for n, a in ifs:
        if not n.startswith(_VIRTUAL_PREFIXES):
            return n, a
    return "lo", "127.0.0.1"


def listen_address(route: str | None = None, spec: str | None = None) -> tuple[str, str]:
    """(interface, address) that this rank's listeners bind: HETCCL_SOCKET_IFNAME's choice if set,
    else ``route`` (this host's address towards the store, StoreClient.local_address), else
    choose_address()."""
    spec = spec if spec is not None else os.environ.get("HETCCL_SOCKET_IFNAME")
    if spec or not route or ":" in route:          # IPv6 routes: the listeners are IPv4
        return choose_address(spec)
    for name, addr in interfaces():
        if addr == route:
            return name, addr
    return ("lo" if route.startswith("127.") else "?"), route


def keepalive(sock: socket.socket, seconds: float, user_timeout: bool = False) -> None:
    """Let the kernel declare the peer of ``sock`` gone after about ``seconds`` of silence (a
    vanished host, a downed link), long before any operation deadline: TCP keepalive probes from
    seconds/2 of idleness. ``user_timeout`` also bounds unacknowledged data (TCP_USER_TIMEOUT),
    which keepalive alone does not: a peer that stops acknowledging what was sent is dropped then.
    Only for sockets whose reader never stops reading (the control plane): on a data link the
    kernel enforces it on zero-window probes too, so a receiver that is merely stalled (SIGSTOP)
    with a full window would be dropped (measured on Linux 6.18), and a stall must surface at the
    operation's timeout instead. Best effort: options the platform lacks are skipped."""
    t = max(2, int(seconds))
    idle = max(1, t // 2)
    count = max(1, min(3, t - idle))
    opts = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", max(1, (t - idle) // count)),
                        ("TCP_KEEPCNT", count)) + ((("TCP_USER_TIMEOUT", t * 1000),) if user_timeout else ()):
        if hasattr(socket, name):
            opts.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, opt, value in opts:
        try:
            sock.setsockopt(level, opt, value)
        except OSError:
            pass
