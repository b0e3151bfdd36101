"""A group of ranks described by a topology file, priced and decided by the runtime's own code.

What a communicator builds at creation from its gathered rank cards and measurements, this module
builds from a topology file and a cost model, with the same classes:

- the flat tuner (collectives/tuner.py) on a CostModel (a tuning file's measured one, or the
  built-in defaults for the group's link classes, as a communicator with no measurement has);
- the topology planner (collectives/hierarchical.TopologyPricer) on the file's topology, with the
  load (ranks per CPU) given, as ``hierarchical.planner_for`` makes it when the group spans hosts;
- the island pricer (collectives/islands.IslandPricer) on the islands ``bridges/formation.form``
  forms from the file's bridges, as ``islands.plan_for`` does.

``decide`` is collectives/decide.py's, the one the communicator calls. The only input a
simulation must supply differently is what a communicator measures on hardware at creation: a
bridge's time for its island's collectives. ``SimulatedIslands`` prices those with a
TopologyPricer over the island's own ranks and links (the vendor library moving bytes over the
same NICs and coherent links hetccl would), unless the tuning file has them measured.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

from ..bridges import formation
from ..collectives import registry
from ..collectives.decide import decide, explain
from ..collectives.hierarchical import TopologyPricer
from ..collectives.islands import COLLECTIVES, IslandPricer, bridge_time, supported_flags
from ..collectives.cost_model import CostModel
from ..collectives.tuner import Tuner
from ..memory import symmetric
from .. import transports
from ..topology.model import RANK_CLASSES, Topology
from ..transports.matrix import class_rank, parse_filter
from .. import dtypes
from ..ops import ReduceOp


def with_transports(cls: str, spec: str | None) -> str:
    """The transport a pair of model class ``cls`` gets under a HETCCL_TRANSPORTS filter: the most
    preferred allowed transport of a class no faster than the model allows (one that links only
    ranks of one host only inside a host), as transports/matrix.py chooses at run time."""
    if not spec or cls == "self":
        return cls
    allowed = set(parse_filter(spec, transports.names()))
    inside = transports.by_name(cls).same_host if cls in transports.names() else False
    fits = [t for t in transports.rows()[1:] if t.name in allowed and (inside or not t.same_host)
            and class_rank(t.link_class) >= class_rank(cls)]
    return min(fits, key=lambda t: class_rank(t.link_class)).name if fits else RANK_CLASSES[-1]


def link_classes(topo: Topology, transports: str | None = None) -> set:
    """The link classes joining ranks of the group (what a communicator's transport matrix holds):
    one pair per kind is enough, so this looks at each host's first ranks and one cross-host pair.
    ``transports``: a HETCCL_TRANSPORTS filter the simulated job runs with."""
    classes = set()
    hosts = topo.hosts()
    for h in hosts:
        rs = topo.ranks_on(h)
        if len(rs) > 1:
            classes.add(topo.pair_class(rs[0], rs[1]))
            isl = topo.islands(h)
            if len(isl) > 1:
                other = next(r for r in rs if topo.island_of(r) != topo.island_of(rs[0]))
                classes.add(topo.pair_class(rs[0], other))
    if len(hosts) > 1:
        classes.add(topo.pair_class(topo.ranks_on(hosts[0])[0], topo.ranks_on(hosts[1])[0]))
    return {with_transports(c, transports) for c in classes}


def _cards(topo: Topology) -> list[dict]:
    """Rank cards as bridges/formation.form reads them: the file's bridge per rank, or, where it
    names none, the device vendor's library, taken as usable (a simulation assumes the libraries
    of the cluster it describes are installed)."""
    accels, libs = {}, {}
    for n in topo.nodes.values():
        if n.kind == "device":
            accels.setdefault(n.host, []).append({"accel": n.attrs.get("accel") or n.attrs.get("vendor")})
    cards, shared = [], {}
    for r in topo.ranks:
        hw = accels.get(r.host, [])
        vendor = hw[r.device]["accel"] if r.device is not None and 0 <= r.device < len(hw) else None
        lib = libs.get(vendor, 0)
        if lib == 0:
            lib = libs[vendor] = formation.vendor_library(vendor)
        # one bridge field per (library, MPI or not): only an MPI island reads the rank in it
        bridge = ({"request": None, "have": [lib] if lib else [], "error": None,
                   "mpi": {"job": "simulated", "rank": r.rank}} if r.bridge == "mpi" else
                  shared.setdefault(lib, {"request": None, "have": [lib] if lib else [], "error": None, "mpi": None}))
        cards.append({"rank": r.rank, "host": r.host, "bridge": bridge,
                      "topo": {"hw": {"accelerators": hw}, "place": {"device": r.device, "bridge": r.bridge}}})
    return cards


def host_parts(topo: Topology) -> dict:
    """{host: (its nodes, the links whose first end is one of them)}, "" for the hostless nodes (the
    network): built in one pass, so carving several islands out of a large model is cheap."""
    parts = {}
    for n in topo.nodes.values():
        parts.setdefault(n.host or "", ([], []))[0].append(n)
    for ln in topo.links:
        node = topo.nodes.get(ln.a)
        parts.setdefault((node.host if node is not None else None) or "", ([], []))[1].append(ln)
    return parts


def sub_topology(topo: Topology, ranks, parts: dict | None = None) -> Topology:
    """The ranks given (renumbered 0..k-1 in that order) on the nodes and links of their hosts.
    ``parts``: host_parts(topo), when the caller carves several."""
    from ..topology.model import RankPlace
    places = [RankPlace(k, p.host, p.numa, p.device, p.island, p.nic, p.bridge)
              for k, p in enumerate(topo.ranks[r] for r in ranks)]
    parts = parts if parts is not None else host_parts(topo)
    nodes, links = list(parts.get("", ([], []))[0]), []
    for h in dict.fromkeys(p.host for p in places):
        hn, hl = parts.get(h, ([], []))
        nodes += hn
        links += hl
    return Topology(nodes, links, places, source=topo.source)


class SimulatedIslands(IslandPricer):
    """IslandPricer whose bridged islands' times come from a model of the island, not a probe:
    a TopologyPricer over the island's ranks (the cheapest algorithm it knows for the step), or
    the measured points (collectives/islands.py bridge_time) of that bridge kind when the tuning
    file has them."""

    def __init__(self, islands, tuner, topo_plan, topo, load, measured=None):
        flags = [bridge_flags(isl.kind) if isl.bridged else None for isl in islands]
        super().__init__(islands, [None] * len(islands), flags, _device(islands), load > 1, tuner, topo_plan)
        self._topo, self._load = topo, load
        self._measured = measured or {}
        self._sub = {}
        self._parts = None

    def _group(self, i):
        g = self._sub.get(i)
        if g is None:
            isl = self.islands[i]
            if self._parts is None:
                self._parts = host_parts(self._topo)
            # the vendor library's step: its own algorithms, never hetccl's symmetric schedules
            g = self._sub[i] = Group(sub_topology(self._topo, isl.ranks, self._parts), load=self._load, islands=False,
                                     reused=False)
        return g

    def _bridge_time(self, i, coll, nbytes) -> float:
        m = self._measured.get(self.islands[i].kind)
        if m is not None and coll in m:
            return bridge_time(m[coll], nbytes)
        g = self._group(i)
        return g.time(coll, nbytes)

    def _price_note(self, i) -> str:
        isl = self.islands[i]
        if isl.kind in self._measured:
            return "measured (tuning file)"
        t8, t1m = (self._bridge_time(i, "allreduce", n) for n in (8, 1 << 20))
        return (f"modelled on the island's links ({len(isl.ranks)} ranks): allreduce 8 B {t8 * 1e6:.1f} us, "
                f"1 MiB {t1m * 1e6:.1f} us")

    def island_detail(self):
        """Lines for the report: each island, its bridge and where its prices come from."""
        out = []
        for i, isl in enumerate(self.islands):
            src = ("measured (tuning file)" if isl.kind in self._measured else
                   "modelled on the island's links" if isl.bridged else "hetccl's own algorithms")
            out.append(f"island {i}: {isl.kind}, {len(isl.ranks)} rank(s), leader {isl.leader}; {src}")
        return out


_FLAGS = {}


def bridge_flags(kind):
    """The ``flags`` row (collectives/islands.py supported_flags) of a bridge of this kind: which
    (collective, dtype, op) it runs itself. MPI's is the MPI bridge's own table (bridges/mpi.py: no
    float16, bfloat16 or float8 reductions), read without loading MPI; another vendor library is
    taken to run every reduction hetccl asks of it (AVG is composed as SUM). Where the bridge runs
    a step itself for some dtypes and op but not others, the composed form's price, and so whether
    the communicator's latency path takes a flat call (IslandPricer.routes_flat, flat_call),
    depends on them, as at run time."""
    row = _FLAGS.get(kind)
    if row is None:
        if kind == "mpi":
            from ..bridges import mpi

            class _Names:                       # MPI's datatypes and ops by name: only the keys are read
                def __getattr__(self, name):
                    return name
            owner = SimpleNamespace(_ops=mpi._tables(_Names())[1])
            bridge = SimpleNamespace(supports=lambda coll, dt, op=None: mpi.MPIBridge.supports(owner, coll, dt, op))
        else:
            bridge = _EveryStep()
        row = _FLAGS[kind] = supported_flags(bridge)
    return row


class _EveryStep:
    """A bridge that runs every (collective, dtype, op)."""

    @staticmethod
    def supports(collective, dtype, op=None) -> bool:
        return collective in COLLECTIVES


def _device(islands) -> bool:
    """Whether some island's bridge works on device memory (every bridge but MPI's does): then the
    runtime always composes (collectives/islands.py choose)."""
    return any(isl.bridged and isl.kind != "mpi" for isl in islands)


class Group:
    """One simulated group: topology + cost model -> tuner, planner, island pricer, and decisions."""

    def __init__(self, topo: Topology, model: CostModel | None = None, load: float = 0.0, islands=True,
                 bridge_prices=None, forced_spec: str = "", transports: str | None = None,
                 reused: bool = True):
        self.topo = topo
        self.p = len(topo.ranks)
        classes = link_classes(topo, transports)
        # automatic registration: a reused plain buffer on a group whose every pair is c2c (one
        # host; cross-memory attach assumed permitted, as the runtime's default cma mode needs)
        self.reused = reused
        hosts = topo.hosts()
        self.shared = self.p > 1 and len(hosts) == 1 and classes == {"c2c"}
        self.model = model or CostModel.default(classes, load > 1, "built-in defaults: no tuning file")
        self.tuner = Tuner(self.p, self.model, forced_spec)
        multi = 1 < len(hosts) < self.p
        self.plan = TopologyPricer(topo, load, self.tuner) if multi else None
        self.islands = None
        if islands and self.p > 1:
            cards = _cards(topo)
            if formation.may_bridge(cards):
                isl = formation.form(cards, topo)
                if isl is not None:
                    self.islands = SimulatedIslands(isl, self.tuner, self.plan, topo, load, bridge_prices)

    def auto_registered(self, collective, nbytes) -> bool:
        """Whether the runtime registers this call's plain buffers automatically and runs the
        symmetric schedules (memory/symmetric.py ``auto_routes``, the Communicator's gate), the
        buffers being reused (``reused``: a loop passing the same arrays every call)."""
        return self.reused and symmetric.auto_routes(collective, nbytes, self.tuner, self.shared, self.islands)

    def decide(self, collective, nbytes):
        """(algorithm name, form or None): what the runtime runs (automatic registration's gate,
        then collectives/decide.py, as Communicator._route)."""
        if self.auto_registered(collective, nbytes):
            return "symmetric", None
        a, form = decide(self.tuner, self.plan, self.islands, collective, nbytes, None,
                         dtypes.FLOAT32, ReduceOp.SUM)
        return a.name, form

    def rows(self, collective, nbytes) -> dict:
        """{entry: predicted seconds} of every algorithm that applies to this group at this size:
        the flat ones (re-priced for the topology when the group spans hosts), the composed ones
        and the island forms ("islands:leaders", ...)."""
        out = {}
        # a flat call on a group with islands: the public call's path where the latency path does
        # not take the shape (IslandPricer.flat_call)
        call = self.islands.flat_call(collective, nbytes) if self.islands is not None else 0.0
        for a in registry.for_collective(collective):
            if a.code >= 0:
                if not a.supports(nbytes, self.p):
                    continue
                t = (self.plan.price(a, nbytes) if self.plan is not None else self.tuner.price(a, nbytes)) + call
            elif self.plan is not None:
                t = self.plan.price(a, nbytes)
            else:
                t = None
            if t is not None and not math.isinf(t):
                out[a.name] = t
        if self.islands is not None:
            for form, t in self.islands.forms(collective, nbytes, dtypes.FLOAT32, ReduceOp.SUM).items():
                out[f"islands:{form}"] = t
        if self.reused and symmetric.auto_routes(collective, nbytes, self.tuner, self.shared, self.islands,
                                                 faster=lambda c, n: True):
            # wherever the gate's shape rules let the path in (chosen or not), priced as the gate
            # prices it: an allreduce in place (the slower form, 5%)
            out["symmetric"] = max(t for k, t in symmetric.prices(collective, nbytes, self.tuner).items()
                                   if k != "fifo")
        return out

    def choice_key(self, collective, nbytes) -> str:
        name, form = self.decide(collective, nbytes)
        return f"islands:{form}" if form else name

    def time(self, collective, nbytes) -> float:
        """Predicted seconds of what the runtime would run."""
        rows = self.rows(collective, nbytes)
        key = self.choice_key(collective, nbytes)
        if key in rows:
            return rows[key]
        return min(rows.values()) if rows else 0.0

    def explain(self, collective, nbytes) -> str:
        """comm.explain()'s text: the planners' tables, then the symmetric paths."""
        text = explain(self.tuner, self.plan, self.islands, collective, nbytes)
        text += "\n" + symmetric.explain(collective, nbytes, self.shared, symmetric.prices(
            collective, nbytes, self.tuner) if self.shared and collective in symmetric.NEEDS else None)
        if self.auto_registered(collective, nbytes):
            text += "\n  -> symmetric: plain buffers reused, registered automatically"
        elif self.shared and not self.reused and collective in symmetric.NEEDS and nbytes >= symmetric.AUTO_MIN:
            text += "\n  (plain buffers assumed fresh at every call: never registered automatically)"
        return text
