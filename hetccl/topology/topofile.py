"""The topology file: a versioned JSON form of the model that `hetccl topo --dump FILE` writes and
``HETCCL_TOPO_FILE`` loads.

A loaded file replaces discovery for every rank: it may describe a cluster unlike the machine the
job runs on (4 hosts x 2 ranks on one box, say). That is how users correct a wrong detection and
how tests simulate clusters. Ranks a file puts on different hosts use the network transports even
if they share a machine; ranks it puts on one host use shared memory only if they really share one.

Format (version 2; version 1 files, which have no ``bridge``, are still read)::

    {"format": "hetccl-topology", "version": 2,
     "ranks": [{"rank": 0, "host": "a", "numa": 0, "device": null, "island": null, "nic": "eth0",
                "bridge": null}, ...],
     "nodes": [{"id": "host:a", "kind": "host", "host": "a", "attrs": {}}, ...],
     "links": [{"a": "nic:a/eth0", "b": "net", "class": "tcp", "bandwidth": 1.25e8,
                "latency": 5e-05, "measured": true}, ...]}

Only ``ranks`` is required (one entry per rank of the world, ``rank`` 0..N-1, ``host`` any name).
``island`` splits a host into islands (a 3-level hierarchy); ``bandwidth`` is bytes/s and
``latency`` seconds (null = take the cost model's default for the link class); a link under a
token-bucket shaper (tc tbf, found by discovery) also has ``burst`` (bytes) and ``peak`` (bytes/s):
the first ``burst`` bytes of a collective cross it at ``peak``, the rest at ``bandwidth`` (both
optional, together or not at all). ``bridge`` (version 2,
optional) names the native library that runs this rank's island ("mpi", "nccl", "rccl", "hccl",
"mccl", ...; "none" = hetccl's own transports; null = automatic, from the rank's device vendor):
ranks with the same bridge form one island (bridges/formation.py). Node kinds: host,
numa, switch, device, nic, network; link classes: c2c, pcie, shm, rdma, tcp.
"""
import json
import math

from ..errors import InvalidUsage
from .model import LINK_CLASSES, NODE_KINDS, Link, Node, RankPlace, Topology

FORMAT = "hetccl-topology"
VERSION = 2
READS = (1, 2)          # versions this hetccl reads


def to_dict(topo: Topology) -> dict:
    return {"format": FORMAT, "version": VERSION,
            "ranks": [{"rank": r.rank, "host": r.host, "numa": r.numa, "device": r.device,
                       "island": r.island, "nic": r.nic, "bridge": r.bridge} for r in topo.ranks],
            "nodes": [{"id": n.id, "kind": n.kind, "host": n.host, "attrs": n.attrs} for n in topo.nodes.values()],
            "links": [_link_dict(ln) for ln in topo.links]}


def _link_dict(ln: Link) -> dict:
    d = {"a": ln.a, "b": ln.b, "class": ln.cls, "bandwidth": ln.bandwidth, "latency": ln.latency,
         "measured": ln.measured}
    if ln.burst is not None:                 # a token-bucket link: optional keys, readers of 2 skip them
        d.update(burst=ln.burst, peak=ln.peak)
    return d


def _bad(where, what):
    raise InvalidUsage(f"topology file {where}: {what} (see `hetccl topo --dump FILE` for a valid example)")


def _number(v) -> bool:
    """A positive, finite JSON number (not a bool)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v)) and v > 0
    except OverflowError:
        return False


def _opt(v, *types) -> bool:
    return v is None or (isinstance(v, types) and not isinstance(v, bool))


def from_dict(d: dict, where="") -> Topology:
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        _bad(where, f"'format' must be {FORMAT!r}")
    if isinstance(d.get("version"), bool) or d.get("version") not in READS:
        _bad(where, f"version {d.get('version')!r} is not supported; this hetccl reads versions "
                    f"{', '.join(map(str, READS))}")
    ranks = d.get("ranks")
    if not isinstance(ranks, list) or not ranks:
        _bad(where, "'ranks' must be a non-empty list of {\"rank\": r, \"host\": name}")
    places = []
    def order(r):
        rank = r.get("rank") if isinstance(r, dict) else None
        return rank if isinstance(rank, int) and not isinstance(rank, bool) else -1
    for i, r in enumerate(sorted(ranks, key=order)):
        if not isinstance(r, dict) or r.get("rank") != i or isinstance(r.get("rank"), bool) \
                or not isinstance(r.get("host"), str) or not r["host"]:
            _bad(where, f"ranks must be numbered 0..{len(ranks) - 1} once each, each with a 'host' name "
                        f"(entry {i}: {r!r:.200})")
        bridge = r.get("bridge")
        if bridge is not None and (d["version"] < 2 or not isinstance(bridge, str) or not bridge):
            _bad(where, f"rank {i}: 'bridge' must be a library name such as \"mpi\" or \"none\" (or null), "
                        f"in a version 2 file; got {bridge!r:.80} in version {d['version']}")
        for key, types in (("numa", (int,)), ("device", (int,)), ("island", (str, int)),
                           ("nic", (str,))):
            if not _opt(r.get(key), *types):
                _bad(where, f"rank {i}: {key!r} must be {' or '.join(t.__name__ for t in types)} "
                            f"or null, not {r.get(key)!r:.80}")
        places.append(RankPlace(i, r["host"], r.get("numa"), r.get("device"), r.get("island"), r.get("nic"),
                                bridge))
    nodes = []
    if not isinstance(d.get("nodes", []), list) or not isinstance(d.get("links", []), list):
        _bad(where, "'nodes' and 'links' must be lists")
    kinds = frozenset(NODE_KINDS)
    for n in d.get("nodes", []):
        if not isinstance(n, dict):
            _bad(where, f"node {n!r:.200}: needs an 'id' and a 'kind' among {', '.join(NODE_KINDS)}")
        get = n.get
        nid, kind, host, attrs = get("id"), get("kind"), get("host"), get("attrs")
        if not isinstance(kind, str) or kind not in kinds or not nid or not isinstance(nid, str):
            _bad(where, f"node {n!r:.200}: needs an 'id' and a 'kind' among {', '.join(NODE_KINDS)}")
        if not (host is None or isinstance(host, str)) or not (attrs is None or isinstance(attrs, dict)):
            _bad(where, f"node {nid!r}: 'host' must be a name and 'attrs' an object (or null)")
        nodes.append(Node(nid, kind, host, dict(attrs or ())))
    if not any(n.kind == "network" for n in nodes):
        nodes.append(Node("net", "network"))
    for h in {p.host for p in places} - {n.host for n in nodes if n.kind == "host"}:
        nodes.append(Node(f"host:{h}", "host", h))
    links = []
    classes = frozenset(LINK_CLASSES)
    for ln in d.get("links", []):
        if not isinstance(ln, dict):
            _bad(where, f"link {ln!r:.200}: needs 'a', 'b' and a 'class' among {', '.join(LINK_CLASSES)}")
        get = ln.get
        a, b, cls = get("a"), get("b"), get("class")
        if not isinstance(cls, str) or cls not in classes or not a or not b or not isinstance(a, str) or not isinstance(b, str):
            _bad(where, f"link {ln!r:.200}: needs 'a', 'b' and a 'class' among {', '.join(LINK_CLASSES)}")
        bw, lat, burst, peak = get("bandwidth"), get("latency"), get("burst"), get("peak")
        for k, v in (("bandwidth", bw), ("latency", lat), ("burst", burst), ("peak", peak)):
            if v is not None and not _number(v):
                _bad(where, f"link {a}-{b}: {k} must be a positive number or null")
        if (burst is None) != (peak is None):
            _bad(where, f"link {a}-{b}: 'burst' and 'peak' go together (a token bucket: "
                        f"burst bytes at peak bytes/s, then bandwidth); give both or neither")
        links.append(Link(a, b, cls, bw, lat, bool(get("measured")), burst, peak))
    return Topology(nodes, links, places, source=f"file {where}" if where else "file")


def dump(topo: Topology, path: str) -> None:
    with open(path, "w") as f:
        json.dump(to_dict(topo), f, indent=1)
        f.write("\n")


def load(path: str) -> Topology:
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError as e:
        raise InvalidUsage(f"HETCCL_TOPO_FILE={path!r} cannot be read ({e.strerror}); give a file "
                           f"written by `hetccl topo --dump FILE`, or unset it to detect the topology") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidUsage(f"topology file {path}: not JSON ({e})") from None
    return from_dict(d, path)
