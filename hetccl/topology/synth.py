"""Describe a cluster in one line and get its topology file: ``hetccl topo --synth SPEC -o FILE``.

Why: the questions worth asking before a cluster is booked (which algorithm runs, how long a 1 GiB
allreduce takes, what the spine's oversubscription or a third vendor costs) need a topology of a
cluster that does not exist yet. The file written here is the ordinary topology file
(topology/topofile.py, version 2), so ``hetccl simulate`` and ``HETCCL_TOPO_FILE`` read it like a
hand-written or dumped one; the spec it was made from is kept in it (``"synth"``) so a what-if can
remake it with one setting changed.

SPEC is ``key=value`` pairs separated by commas (or a JSON file of the same keys)::

    hosts=2048,accel=8,vendors=nvidia:60+hygon:25+ascend:15,nics=8,nic_gbps=400,tiers=2,oversub=3

- ``hosts`` (or ``ranks``: hosts = ranks / accel), ``accel``: accelerators (= ranks) per host;
- ``vendors``: vendor:percent of hosts, ``+``-separated, in host order (cpu = no accelerator);
- ``island``: accelerators per coherent island (default: the vendor's, see VENDORS), ``island_gbps``:
  its bandwidth per direction in GB/s (default: the vendor's link class);
- ``pcie``: gen4 | gen5 | gen6 (x16) between accelerators, NICs and host memory;
- ``nics``: NICs per host (= rails), ``nic_gbps``: Gbit/s each, ``rdma``: 1 (RoCE/IB) or 0 (TCP),
  ``net_us``: one network hop's latency in microseconds;
- ``tiers``: 2 (leaf-spine) or 3 (leaf-spine-core), ``oversub``: leaf uplink oversubscription,
  ``leaf_hosts``: hosts per leaf, ``rail_optimized``: 1 (NIC k of a leaf group on rail leaf k) or 0,
  ``pod_leaves``, ``pod_oversub`` (3 tiers);
- ``bridges``: vendor:library overrides, ``+``-separated (``nvidia:none`` keeps NVIDIA ranks on
  hetccl's transports); default: the vendor's library (bridges/libraries.py).
"""
from __future__ import annotations

import json
import math
import os

from ..errors import InvalidUsage
from .topofile import FORMAT, VERSION

# vendor -> (coherent link class, accelerators per island, GB/s per direction of the island link).
# Nominal figures of current parts, for planning only: NVLink 4 (H100, 18 links x 25 GB/s),
# Hygon DCU HSL, AMD xGMI (MI300X, 7 x 64 GB/s), Ascend 910B HCCS (7 x 28 GB/s), MetaX MetaXLink,
# Moore Threads MTLink, Iluvatar IX-link.
VENDORS = {
    "nvidia": ("nvlink", 8, 450.0),
    "hygon": ("hsl", 8, 100.0),
    "amd": ("xgmi", 8, 448.0),
    "ascend": ("hccs", 8, 196.0),
    "metax": ("metaxlink", 8, 64.0),
    "mthreads": ("mtlink", 8, 120.0),
    "iluvatar": ("ixlink", 8, 64.0),
    "cambricon": ("mlulink", 8, 100.0),
    "kunlunxin": ("xpulink", 8, 100.0),
    "cpu": (None, 1, 0.0),
}
PCIE = {"gen3": (8, 16), "gen4": (16, 16), "gen5": (32, 16), "gen6": (64, 16)}   # GT/s, lanes
DEFAULTS = {"hosts": 2, "accel": 8, "vendors": "nvidia:100", "pcie": "gen5", "nics": 8, "nic_gbps": 400,
            "rdma": 1, "net_us": 3.0, "tiers": 2, "oversub": 1.0, "leaf_hosts": 32, "rail_optimized": 1,
            "pod_leaves": 16, "pod_oversub": 1.0, "bridges": "", "island": 0, "island_gbps": 0.0}
INTS = ("hosts", "ranks", "accel", "nics", "rdma", "tiers", "leaf_hosts", "rail_optimized", "pod_leaves", "island")
FLOATS = ("nic_gbps", "net_us", "oversub", "pod_oversub", "island_gbps")
EXAMPLE = "hosts=2048,accel=8,vendors=nvidia:60+hygon:25+ascend:15,nics=8,nic_gbps=400,tiers=2,oversub=3"


def _bad(what):
    raise InvalidUsage(f"--synth: {what} (e.g. {EXAMPLE!r}; `hetccl topo --help` lists every key)")


def parse(spec) -> dict:
    """SPEC (a string, a JSON file name, or a dict) -> the full settings, defaults filled in."""
    if isinstance(spec, dict):
        given = dict(spec)
    elif isinstance(spec, str) and os.path.isfile(spec):
        try:
            with open(spec) as f:
                given = json.load(f)
        except (OSError, ValueError) as e:
            _bad(f"cannot read {spec} as JSON ({e})")
        if not isinstance(given, dict):
            _bad(f"{spec} must hold a JSON object of settings")
    else:
        given = {}
        for part in str(spec).split(","):
            if not part.strip():
                continue
            key, sep, value = (x.strip() for x in part.partition("="))
            if not sep:
                _bad(f"{part.strip()!r} is not key=value")
            given[key] = value
    unknown = set(given) - set(DEFAULTS) - {"ranks"}
    if unknown:
        _bad(f"unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(set(DEFAULTS) | {'ranks'}))}")
    s = dict(DEFAULTS)
    for k, v in given.items():
        try:
            s[k] = int(v) if k in INTS else float(v) if k in FLOATS else str(v)
        except (TypeError, ValueError):
            _bad(f"{k}={v!r} is not a {'whole number' if k in INTS else 'number'}")
    if "ranks" in given:
        if s["ranks"] % s["accel"]:
            _bad(f"ranks={s['ranks']} is not a multiple of accel={s['accel']}")
        s["hosts"] = s.pop("ranks") // s["accel"]
    s.pop("ranks", None)
    if s["hosts"] < 1 or s["accel"] < 1 or s["nics"] < 1:
        _bad("hosts, accel and nics must be at least 1")
    if s["tiers"] not in (2, 3):
        _bad(f"tiers={s['tiers']}: 2 (leaf-spine) or 3 (leaf-spine-core)")
    if s["oversub"] < 1 or s["pod_oversub"] < 1:
        _bad("oversub and pod_oversub are ratios >= 1 (1 = non-blocking)")
    if s["pcie"] not in PCIE:
        _bad(f"pcie={s['pcie']!r}: one of {', '.join(PCIE)}")
    s["vendor_hosts"] = _vendor_hosts(s["vendors"], s["hosts"])
    s["bridge_of"] = _bridges(s["bridges"])
    return s


def _vendor_hosts(text, hosts) -> list[tuple[str, int]]:
    """'nvidia:60+hygon:25+ascend:15' -> [(vendor, hosts)], largest remainders so they add up."""
    shares = []
    for part in str(text).split("+"):
        name, _, pct = part.strip().partition(":")
        if name not in VENDORS:
            _bad(f"vendor {name!r} unknown; known: {', '.join(VENDORS)}")
        try:
            shares.append((name, float(pct.rstrip("%") or 100)))
        except ValueError:
            _bad(f"vendor share {part!r} is not vendor:percent")
    total = sum(p for _, p in shares)
    if total <= 0:
        _bad("vendor shares must add up to more than 0")
    exact = [hosts * p / total for _, p in shares]
    counts = [math.floor(x) for x in exact]
    for k in sorted(range(len(shares)), key=lambda k: counts[k] - exact[k])[:hosts - sum(counts)]:
        counts[k] += 1
    return [(name, n) for (name, _), n in zip(shares, counts) if n > 0]


def _bridges(text) -> dict:
    out = {}
    for part in str(text or "").split("+"):
        if part.strip():
            vendor, sep, kind = (x.strip() for x in part.partition(":"))
            if not sep or vendor not in VENDORS:
                _bad(f"bridges entry {part!r} is not vendor:library")
            out[vendor] = kind
    return out


def bridge_for(vendor, overrides) -> str:
    """The bridge of a vendor group: an override, else the vendor's library, else none."""
    if vendor in overrides:
        return overrides[vendor]
    from ..bridges.formation import vendor_library
    return vendor_library(vendor) or "none"


def generate(spec) -> dict:
    """The topology file (a dict, topofile format) of the cluster SPEC describes."""
    s = parse(spec)
    gts, lanes = PCIE[s["pcie"]]
    from .model import pcie_bandwidth
    pcie_bw = pcie_bandwidth(gts, lanes)
    nic_bw = s["nic_gbps"] * 1e9 / 8
    net_lat = s["net_us"] * 1e-6
    cls = "rdma" if s["rdma"] else "tcp"
    ranks, nodes, links = [], [{"id": "net", "kind": "network", "host": None, "attrs": {
        "tiers": s["tiers"], "oversubscription": s["oversub"], "leaf_hosts": s["leaf_hosts"],
        "rail_optimized": bool(s["rail_optimized"]), "pod_leaves": s["pod_leaves"],
        "pod_oversubscription": s["pod_oversub"]}}], []
    h = 0
    for vendor, count in s["vendor_hosts"]:
        link_cls, isl_size, isl_gbps = VENDORS[vendor]
        isl_size = s["island"] or isl_size
        isl_bw = (s["island_gbps"] or isl_gbps) * 1e9
        bridge = bridge_for(vendor, s["bridge_of"])
        accel = s["accel"]                     # ranks per host (cpu: CPU ranks, no device)
        for _ in range(count):
            name = f"{vendor}{h:05d}"
            nodes.append({"id": f"host:{name}", "kind": "host", "host": name, "attrs": {"vendor": vendor}})
            nodes.append({"id": f"numa:{name}/0", "kind": "numa", "host": name, "attrs": {}})
            # the host memory path: devices of different islands stage through it over PCIe
            links.append({"a": f"host:{name}", "b": f"numa:{name}/0", "class": "shm",
                          "bandwidth": pcie_bw, "latency": None})
            nics = [f"nic{k}" for k in range(s["nics"])]
            for k, nic in enumerate(nics):
                nodes.append({"id": f"nic:{name}/{nic}", "kind": "nic", "host": name,
                              "attrs": {"speed_mbps": int(s["nic_gbps"] * 1000), "rdma": bool(s["rdma"]), "rail": k}})
                links.append({"a": f"nic:{name}/{nic}", "b": "net", "class": cls, "bandwidth": nic_bw,
                              "latency": net_lat})
            for d in range(accel):
                isl = d // isl_size if link_cls else None
                if vendor != "cpu":
                    dev = f"dev:{name}/{d:02x}:00.0"
                    nodes.append({"id": dev, "kind": "device", "host": name, "attrs": {
                        "vendor": vendor, "accel": vendor, "link_gts": gts, "link_width": lanes}})
                    links.append({"a": f"numa:{name}/0", "b": dev, "class": "pcie", "bandwidth": pcie_bw,
                                  "latency": None})
                    if link_cls and isl_size > 1:
                        if d % isl_size == 0:
                            nodes.append({"id": f"pci:{name}/{link_cls}{isl}", "kind": "switch", "host": name,
                                          "attrs": {"coherent": link_cls}})
                        links.append({"a": dev, "b": f"pci:{name}/{link_cls}{isl}", "class": "c2c",
                                      "bandwidth": isl_bw, "latency": None})
                ranks.append({"rank": len(ranks), "host": name, "numa": 0,
                              "device": None if vendor == "cpu" else d,
                              "island": f"c2c{isl}" if link_cls and isl_size > 1 else None,
                              "nic": nics[d * len(nics) // accel], "bridge": bridge})
            h += 1
    settings = {k: v for k, v in s.items() if k not in ("vendor_hosts", "bridge_of")}
    return {"format": FORMAT, "version": VERSION, "synth": settings, "ranks": ranks, "nodes": nodes,
            "links": links}


def with_changes(settings: dict, changes: str) -> dict:
    """The settings of a synthesized file with ``key=value,...`` changed (a what-if)."""
    merged = dict(settings)
    merged.update(parse_changes(changes))
    return merged


def parse_changes(changes: str) -> dict:
    out = {}
    for part in changes.split(","):
        if part.strip():
            key, sep, value = (x.strip() for x in part.partition("="))
            if not sep:
                _bad(f"what-if {part.strip()!r} is not key=value")
            out[key] = value
    return out


def describe(settings: dict) -> str:
    """One line: 16384 ranks on 2048 hosts x 8 (nvidia 60%, ...), 8 x 400 Gbit/s NICs, 2 tiers 3:1."""
    hosts = sum(n for _, n in _vendor_hosts(settings["vendors"], settings["hosts"]))
    return (f"{hosts} hosts x {settings['accel']} ({settings['vendors'].replace('+', ', ')}), "
            f"{settings['nics']} x {settings['nic_gbps']:g} Gbit/s NICs, {settings['tiers']} tiers, "
            f"oversubscription {settings['oversub']:g}:1")
