"""The topology model: a graph of hosts, NUMA nodes, PCI switches, devices and NICs, and where each
rank sits in it.

Links carry a class (``c2c``, ``pcie``, ``shm``, ``rdma``, ``tcp``), a bandwidth (bytes/s, None when
unknown) and a latency (s, None when unknown). Every rank builds the same model from the same
gathered rank cards (or the same topology file), so decisions drawn from it (transport per pair,
ring order, hierarchy levels) agree everywhere without another exchange.

Node ids: ``host:H``, ``numa:H/N``, ``pci:H/BDF`` (bridges = PCI switches), ``dev:H/BDF``,
``nic:H/NAME`` and ``net`` (the network all NICs reach).
"""
from dataclasses import dataclass, field

LINK_CLASSES = ("self", "c2c", "pcie", "shm", "rdma", "tcp")      # fastest first
NODE_KINDS = ("host", "numa", "switch", "device", "nic", "network")
RANK_CLASSES = ("self", "c2c", "shm", "rdma", "tcp")                # what a pair of ranks can use


@dataclass
class Node:
    id: str
    kind: str
    host: str | None = None
    attrs: dict = field(default_factory=dict)


@dataclass
class Link:
    a: str
    b: str
    cls: str
    bandwidth: float | None = None     # bytes per second (sustained)
    latency: float | None = None       # seconds
    measured: bool = False
    burst: float | None = None         # bytes a token bucket lets through at ``peak`` before ``bandwidth`` holds
    peak: float | None = None          # bytes per second of those burst bytes (the line rate under the shaper)


@dataclass
class RankPlace:
    rank: int
    host: str
    numa: int | None = None
    device: int | None = None
    island: str | None = None          # ranks of one host in different islands talk across a slower link
    nic: str | None = None
    bridge: str | None = None          # native library to run this rank's island with ("mpi", "nccl", ...)


def pcie_bandwidth(gts, width):
    """Usable bytes/s of a PCIe link: GT/s x lanes x line-code efficiency (8b/10b below 8 GT/s)."""
    if not gts or not width:
        return None
    eff = 0.8 if gts < 8 else 128 / 130
    return gts * 1e9 * width * eff / 8


class Topology:
    def __init__(self, nodes=(), links=(), ranks=(), source="discovered"):
        self.nodes = {n.id: n for n in nodes}
        self.links = list(links)
        self.ranks = list(ranks)
        self.source = source
        self._by_host = None           # (key, {host: [ranks]}): see _ranks_by_host
        self._hosts = None             # (key, hosts()): the same, with the hosts that have no rank
        self._islands_memo = None      # (the _by_host it was made from, {host: islands})

    # ------------------------------------------------------------------ structure

    def _ranks_by_host(self) -> dict:
        """{host: [rank, ...]} in order of first rank, built once (a 100,000-rank model asks it per
        host); rebuilt if the rank list was replaced or grew."""
        key = (id(self.ranks), len(self.ranks))
        if self._by_host is None or self._by_host[0] != key:
            by = {}
            for r in self.ranks:
                by.setdefault(r.host, []).append(r.rank)
            self._by_host = (key, by)
        return self._by_host[1]

    def hosts(self) -> list[str]:
        """Host names in order of their first rank (then hosts without ranks)."""
        by = self._ranks_by_host()
        key = (self._by_host[0], len(self.nodes))
        if self._hosts is None or self._hosts[0] != key:
            extra = {}
            for n in self.nodes.values():
                if n.kind == "host" and n.host not in by:
                    extra.setdefault(n.host, None)
            self._hosts = (key, list(by) + list(extra))
        return list(self._hosts[1])

    def ranks_on(self, host) -> list[int]:
        return list(self._ranks_by_host().get(host, ()))

    def island_of(self, rank) -> str:
        p = self.ranks[rank]
        return p.island if p.island is not None else ""

    def islands(self, host) -> list[str]:
        """The islands of a host's ranks, in order of their first rank (computed once per host)."""
        by = self._ranks_by_host()
        memo = self._islands_memo
        if memo is None or memo[0] is not self._by_host:
            memo = self._islands_memo = (self._by_host, {})
        got = memo[1].get(host)
        if got is None:
            out = {}
            for r in by.get(host, ()):
                out.setdefault(self.island_of(r), None)
            got = memo[1][host] = list(out)
        return list(got)

    def pair_class(self, i, j) -> str:
        """The fastest link class that can join ranks i and j in this model."""
        if i == j:
            return "self"
        a, b = self.ranks[i], self.ranks[j]
        if a.host == b.host:
            if a.device is None and b.device is None:
                return "c2c"                   # CPU ranks: host memory is one coherent domain (CMA/window)
            if a.island is not None and a.island == b.island and a.island.startswith("c2c"):
                return "c2c"
            return "shm"                       # devices across PCIe: staged through host memory
        return "rdma" if self._rdma(a) and self._rdma(b) else "tcp"

    def _rdma(self, place) -> bool:
        nic = self.nodes.get(f"nic:{place.host}/{place.nic}") if place.nic else None
        return bool(nic and nic.attrs.get("rdma"))

    def uplink(self, host) -> Link | None:
        """The fastest link from this host's NICs to the network (None if the model has none)."""
        best = None
        for ln in self.links:
            ends = {ln.a, ln.b}
            if "net" in ends:
                other = (ends - {"net"}).pop()
                node = self.nodes.get(other)
                if node is not None and node.host == host and (best is None or (ln.bandwidth or 0) > (best.bandwidth or 0)):
                    best = ln
        return best

    def uplinks(self) -> dict:
        """{host: uplink(host)} for every host with a network link, in one pass over the links."""
        best = {}
        for ln in self.links:
            if ln.a == "net" or ln.b == "net":
                node = self.nodes.get(ln.b if ln.a == "net" else ln.a)
                if node is None or node.host is None:
                    continue
                old = best.get(node.host)
                if old is None or (ln.bandwidth or 0) > (old.bandwidth or 0):
                    best[node.host] = ln
        return best

    def nic_uplink_bandwidth(self) -> dict:
        """{NIC node id: the fastest bandwidth of its links to the network} (0.0 when unknown)."""
        out = {}
        for ln in self.links:
            if (ln.a == "net") != (ln.b == "net"):
                nic = ln.b if ln.a == "net" else ln.a
                out[nic] = max(out.get(nic, 0.0), ln.bandwidth or 0.0)
        return out

    def intra_links(self) -> dict:
        """{host: intra_link(host)} in one pass over the links."""
        out = {}
        for ln in self.links:
            node = self.nodes.get(ln.a)
            if ln.cls == "shm" and node is not None and node.host not in out:
                out[node.host] = ln
        return out

    def intra_link(self, host) -> Link | None:
        """The shared-memory link of a host (its NUMA/host memory path), if the model has one."""
        for ln in self.links:
            if ln.cls == "shm" and self.nodes.get(ln.a) is not None and self.nodes[ln.a].host == host:
                return ln
        return None

    def uniform(self) -> bool:
        """Every host has the same number of ranks (hierarchical algorithms need equal rails)."""
        counts = {len(self.ranks_on(h)) for h in self.hosts()}
        return len(counts) == 1

    def summary(self) -> str:
        hs = self.hosts()
        per = [len(self.ranks_on(h)) for h in hs]
        if len(set(per)) == 1 and len(per) > 8:          # a large regular cluster: say it short
            per = [f"{per[0]} each"]
        isl = max((len(self.islands(h)) for h in hs), default=0)
        text = f"{len(self.ranks)} rank(s) on {len(hs)} host(s) ({'x'.join(map(str, per)) or '0'})"
        if isl > 1:
            text += f", up to {isl} islands per host"
        devs = sum(1 for n in self.nodes.values() if n.kind == "device")
        nics = sum(1 for n in self.nodes.values() if n.kind == "nic")
        return text + f", {devs} accelerator(s), {nics} NIC(s) [{self.source}]"


def _host_graph(host, hw, nodes, links):
    """Nodes and links of one host from its discovered hardware description."""
    hid = f"host:{host}"
    nodes.append(Node(hid, "host", host))
    for n in hw.get("numa", []):
        nodes.append(Node(f"numa:{host}/{n['id']}", "numa", host, {"cpus": n.get("cpus", "")}))
        links.append(Link(hid, f"numa:{host}/{n['id']}", "shm"))
    numa_ids = [n["id"] for n in hw.get("numa", [])]
    for p in hw.get("pci", []):
        kind = {"bridge": "switch", "accelerator": "device", "nic": None}.get(p["kind"])
        if kind is None:
            continue
        nid = f"{'pci' if kind == 'switch' else 'dev'}:{host}/{p['bdf']}"
        attrs = {k: p[k] for k in ("vendor", "device", "class", "accel", "link_gts", "link_width") if p.get(k) is not None}
        nodes.append(Node(nid, kind, host, attrs))
    bdf_node = {n.id.split("/", 1)[1]: n.id for n in nodes if n.host == host and n.kind in ("switch", "device")}
    for nic in hw.get("nics", []):
        nid = f"nic:{host}/{nic['name']}"
        nodes.append(Node(nid, "nic", host, {k: nic[k] for k in ("speed_mbps", "rdma", "pci") if nic.get(k) is not None}))
        if nic.get("pci"):
            bdf_node[nic["pci"]] = nid
        links.append(_uplink(nid, nic))
    for p in hw.get("pci", []):
        child = bdf_node.get(p["bdf"])
        if child is None:
            continue
        parent = bdf_node.get(p.get("parent")) if p.get("parent") else None
        if parent is None:
            numa = p.get("numa")
            parent = f"numa:{host}/{numa}" if numa in numa_ids else hid
        links.append(Link(parent, child, "pcie", pcie_bandwidth(p.get("link_gts"), p.get("link_width"))))
    accels = hw.get("accelerators", [])
    for c in hw.get("coherent", []):
        if c.get("a") is not None and c.get("b") is not None and max(c["a"], c["b"]) < len(accels):
            links.append(Link(f"dev:{host}/{accels[c['a']]['bdf']}", f"dev:{host}/{accels[c['b']]['bdf']}", "c2c",
                              attrs_bw(c)))


def _uplink(nid, nic) -> Link:
    """A NIC's link to the network: its nominal speed, or, under a token-bucket shaper (discover.
    egress_shapers), the shaper's rate sustained and its burst at the nominal speed (the line rate)."""
    speed = nic.get("speed_mbps")
    line = speed * 125_000 if speed else None
    cls = "rdma" if nic.get("rdma") else "tcp"
    shaper = nic.get("shaper") or {}
    rate, burst = shaper.get("rate"), shaper.get("burst")
    if not (rate and burst):
        return Link(nid, "net", cls, line)
    sustained = min(rate, line) if line else rate
    peak = line if line and line > sustained else None
    return Link(nid, "net", cls, float(sustained), burst=float(burst) if peak else None, peak=peak)


def attrs_bw(c):
    """Nominal bandwidth of a coherent link: NVLink ~25 GB/s per lane and direction (NVLink 3/4)."""
    return c["lanes"] * 25e9 if c.get("kind") == "nvlink" and c.get("lanes") else None


def coherent_groups(hw) -> list[set]:
    """Accelerator indices joined by coherent links, as connected groups (islands)."""
    parent = {}

    def find(x):
        while parent.get(x, x) != x:
            x = parent[x]
        return x
    for c in hw.get("coherent", []):
        if c.get("a") is not None and c.get("b") is not None:
            parent[find(c["a"])] = find(c["b"])
    groups = {}
    for x in set(parent) | set(parent.values()):
        groups.setdefault(find(x), set()).add(x)
    return sorted(groups.values(), key=min)


def from_cards(cards) -> Topology:
    """The model of a communicator from its rank cards (card['topo'] as made by mesh.py)."""
    nodes, links, ranks, done = [], [], [], set()
    nodes.append(Node("net", "network"))
    for c in cards:
        topo = c.get("topo") or {}
        host = topo.get("host") or c["host"]
        hw = topo.get("hw") or {}
        if host not in done:
            done.add(host)
            _host_graph(host, hw, nodes, links)
        place = topo.get("place") or {}
        ranks.append(RankPlace(c["rank"], host, place.get("numa"), place.get("device"),
                               place.get("island"), place.get("nic") or c.get("ifname"), place.get("bridge")))
    by_host = {}
    for r in ranks:
        by_host.setdefault(r.host, []).append(r)
    for host, rs in by_host.items():
        hw = next(((c.get("topo") or {}).get("hw") or {} for c in cards
                   if ((c.get("topo") or {}).get("host") or c["host"]) == host), {})
        _assign_islands(rs, hw)
    for extra in (c.get("topo", {}).get("links") for c in cards[:1]):
        for ln in extra or []:
            override(links, ln)
    return Topology(nodes, links, ranks, source=(cards[0].get("topo") or {}).get("source", "discovered") if cards else "discovered")


def _assign_islands(rs, hw):
    """Islands inside a host: devices joined by coherent links (c2c<k>), else NUMA nodes when the
    host's ranks span more than one. Islands given explicitly (topology file) are kept."""
    if any(r.island is not None for r in rs):
        return
    groups = coherent_groups(hw)
    for r in rs:
        for k, g in enumerate(groups):
            if r.device in g:
                r.island = f"c2c{k}"
    if any(r.island is not None for r in rs):
        return
    if len({r.numa for r in rs}) > 1:
        for r in rs:
            r.island = f"numa{r.numa}"


def override(links, ln: Link):
    """Replace the link joining the same two nodes (a measured or user-given value wins)."""
    for i, old in enumerate(links):
        if {old.a, old.b} == {ln.a, ln.b}:
            links[i] = ln
            return
    links.append(ln)
