"""Transports: the table of every link class, one row per transport, each declared in its module.

A transport's module states its name, preference, link class, whether it is a wire or shared
memory, whether it is one-sided, its default cost, its native link kind and its Endpoint factories
(transports/base.py says what each means). Every other layer asks this table: the transport per
pair (transports/matrix.py), the mesh (transports/mesh.py), the cost model and the probe
(collectives/), the topology planner and the simulator. Nothing else names a transport.

Adding a transport is its module plus one line in ``ALL`` below (or one ``register()`` call, as
tests/transports/loop.py does for a transport that lives outside the package).
"""
from .base import Transport
from .c2c import C2CTransport
from .rdma import RdmaTransport
from .self_link import SelfLink
from .shm import ShmTransport
from .tcp import TcpTransport

# the registry: every transport that can link two ranks (a transport's own preference orders them)
ALL: list[Transport] = [
    C2CTransport(),
    ShmTransport(),
    RdmaTransport(),
    TcpTransport(),
]

SELF = SelfLink()           # the diagonal: a row of the table, never a candidate for a pair


def register(transport: Transport) -> Transport:
    """Add a transport declared outside this package (same name again: replaced). Every rank of a
    job must register the same transports before it creates a communicator."""
    ALL[:] = [t for t in ALL if t.name != transport.name] + [transport]
    return transport


def by_name(name: str) -> Transport:
    """The transport (or the self link) called ``name``."""
    for t in ALL:
        if t.name == name:
            return t
    if name == SELF.name:
        return SELF
    raise KeyError(name)


def names() -> list[str]:
    """The names HETCCL_TRANSPORTS may use, most preferred first."""
    return [t.name for t in sorted(ALL, key=lambda t: -t.preference)]


def rows() -> list[Transport]:
    """Every row of the table: the self link, then the transports, most preferred first."""
    return [SELF] + sorted(ALL, key=lambda t: -t.preference)


def is_wire(name: str) -> bool:
    """Whether the link class ``name`` moves bytes over a network (unknown names: a wire)."""
    try:
        return by_name(name).wire
    except KeyError:
        return True


def wire_kinds() -> frozenset:
    """The engine link kinds (Engine.link_kind) whose bytes cross a network."""
    return frozenset(t.link_kind for t in ALL if t.wire)


def default_cost(name: str):
    """The declared fallback (alpha, beta, gamma) of link class ``name``; a transport that declares
    none, or an unknown name, is priced like the costliest declared one."""
    try:
        own = by_name(name).cost
    except KeyError:
        own = None
    if own is not None:
        return own
    declared = [t.cost for t in rows() if t.cost is not None]
    return type(declared[0])(*(max(c[k] for c in declared) for k in range(3)))
