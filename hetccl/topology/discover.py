"""Discover what this rank runs on: host identity, NUMA, PCI tree, NICs, accelerators, coherent links.

Runs at every init, so it reads a few hundred small sysfs files at most and runs no external tool
unless a device that needs one was found (``nvidia-smi topo -m`` for NVLink, 3 s limit; ``tc -j qdisc
show`` for the NICs' egress shapers, 1 s limit, when there are NICs and ``tc`` is installed). It never
fails the job: anything unreadable is logged at debug level and left out. The result is a plain
JSON-able dict (it travels in the rank card, and `hetccl topo --dump` writes it).

``root`` lets tests point discovery at a fake sysfs tree.
"""
import functools
import json
import logging
import os
import re
import shutil
import subprocess

from .host import host_id
from .vendors import accelerator_vendor

log = logging.getLogger("hetccl.topology")

PCI_BRIDGE_CLASS = 0x0604
NET_CLASS = 0x02           # base class of network controllers (Ethernet 0x0200, InfiniBand 0x0207)


def _read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        log.debug("topology: cannot read %s: %s", path, e)
        return default


def _int(text, base=10, default=None):
    try:
        return int(text, base)
    except (TypeError, ValueError):
        return default


def parse_cpulist(text) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (sysfs cpulist format)."""
    cpus = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if _int(lo) is None or (hi and _int(hi) is None):
            continue
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def format_cpulist(cpus) -> str:
    """The inverse of parse_cpulist (compact ranges)."""
    cpus, out, i = sorted(set(cpus)), [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


def _listdir(path, what) -> list[str]:
    """Sorted entries of a sysfs directory; [] (logged at debug level) if it cannot be read."""
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        log.debug("topology: no %s information (%s)", what, e)
        return []


def _link_gts(text):
    """'16.0 GT/s PCIe' -> 16.0 (GT/s per lane), None if unknown."""
    m = re.match(r"\s*([0-9.]+)\s*GT/s", text or "")
    return float(m.group(1)) if m else None


def numa_nodes(root="/") -> list[dict]:
    base = os.path.join(root, "sys/devices/system/node")
    names = sorted((n for n in _listdir(base, "NUMA") if re.fullmatch(r"node\d+", n)), key=lambda n: int(n[4:]))
    return [{"id": int(n[4:]), "cpus": _read(os.path.join(base, n, "cpulist"), "")} for n in names]


_BDF = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")


def _bdfs_in(path) -> list[str]:
    """PCI addresses along a resolved sysfs path, root complex first."""
    return [p for p in os.path.realpath(path).split(os.sep) if _BDF.fullmatch(p)]


def _pci_of(device_link):
    """The PCI function behind a class device's 'device' link (virtio and the like sit below it)."""
    if not os.path.exists(device_link):
        return None
    found = _bdfs_in(device_link)
    return found[-1] if found else None


def pci_tree(root="/") -> list[dict]:
    """Bridges, accelerators and network controllers of /sys/bus/pci, each with its parent bridge
    (the upstream function in the sysfs path), NUMA node and PCIe link speed/width."""
    base = os.path.join(root, "sys/bus/pci/devices")
    out = []
    for bdf in _listdir(base, "PCI"):
        d = os.path.join(base, bdf)
        cls = _int(_read(os.path.join(d, "class")), 16)
        vendor = _int(_read(os.path.join(d, "vendor")), 16)
        if cls is None or vendor is None:
            continue
        acc = accelerator_vendor(vendor, cls, _int(_read(os.path.join(d, "device")), 16))
        kind = ("bridge" if cls >> 8 == PCI_BRIDGE_CLASS else "accelerator" if acc
                else "nic" if cls >> 16 == NET_CLASS else None)
        if kind is None:
            continue
        parents = _bdfs_in(d)[:-1]
        numa = _int(_read(os.path.join(d, "numa_node")))
        entry = {"bdf": bdf, "kind": kind, "vendor": f"{vendor:04x}",
                 "device": (_read(os.path.join(d, "device"), "") or "").replace("0x", ""),
                 "class": f"{cls:06x}", "parent": parents[-1] if parents else None,
                 "numa": numa if numa is not None and numa >= 0 else None,
                 "link_gts": _link_gts(_read(os.path.join(d, "current_link_speed"))),
                 "link_width": _int(_read(os.path.join(d, "current_link_width")))}
        if acc:
            entry["accel"] = acc.name
            hive = _read(os.path.join(d, "xgmi_hive_info", "xgmi_hive_id")) if acc.name == "amd" else None
            if hive:
                entry["xgmi_hive"] = hive
        out.append(entry)
    return out


def nics(root="/") -> list[dict]:
    """Network interfaces with a device behind them (physical or virtual, not loopback): speed
    (Mbit/s, None when the driver does not say), NUMA node, PCI function and RDMA capability."""
    base = os.path.join(root, "sys/class/net")
    ib = os.path.join(root, "sys/class/infiniband")
    rdma_by_pci = {}
    for dev in _listdir(ib, "InfiniBand"):
        pci = _pci_of(os.path.join(ib, dev, "device"))
        rate = _read(os.path.join(ib, dev, "ports", "1", "rate"))       # '100 Gb/sec (4X EDR)'
        gbps = _int((rate or "").split(" ")[0].split(".")[0])
        rdma_by_pci[pci] = (dev, gbps)
    out = []
    for name in _listdir(base, "network interface"):
        d = os.path.join(base, name)
        if name == "lo" or _read(os.path.join(d, "type")) == "772":      # ARPHRD_LOOPBACK
            continue
        speed = _int(_read(os.path.join(d, "speed")))
        pci = _pci_of(os.path.join(d, "device"))
        rdma = rdma_by_pci.get(pci) if pci else None
        if rdma and rdma[1] and not (speed and speed > 0):
            speed = rdma[1] * 1000
        numa = _int(_read(os.path.join(d, "device", "numa_node"))) if pci else None
        out.append({"name": name, "speed_mbps": speed if speed and speed > 0 else None,
                    "numa": numa if numa is not None and numa >= 0 else None, "pci": pci,
                    "rdma": rdma[0] if rdma else None,
                    "operstate": _read(os.path.join(d, "operstate"), "unknown")})
    shapers = egress_shapers() if out and root == "/" else {}
    for nic in out:
        if nic["name"] in shapers:
            nic["shaper"] = shapers[nic["name"]]
    return out


def egress_shapers() -> dict:
    """{interface: {"kind": "tbf", "rate": bytes/s, "burst": bytes}} for the interfaces whose root
    qdisc is a token bucket (``tc ... tbf``), from ``tc -j qdisc show``.

    Why: a token bucket lets ``burst`` bytes through at the line rate and only then holds the link to
    ``rate``. A collective whose bytes per link fit the burst crosses it several times faster than
    the sustained rate the probe measures with 1 MiB, so the cost model has to know the bucket
    (hierarchical.Planner prices the first ``burst`` bytes of a call at the line rate)."""
    exe = shutil.which("tc")
    if not exe:
        return {}
    try:
        text = subprocess.run([exe, "-j", "qdisc", "show"], capture_output=True, text=True, timeout=1).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("topology: tc -j qdisc show failed: %s", e)
        return {}
    return parse_tc_qdiscs(text)


def parse_tc_qdiscs(text) -> dict:
    """The root tbf qdiscs of ``tc -j qdisc show`` output (see egress_shapers); {} if unparsable."""
    try:
        rows = json.loads(text or "[]")
    except ValueError as e:
        log.debug("topology: cannot parse tc output: %s", e)
        return {}
    out = {}
    for q in rows if isinstance(rows, list) else []:
        if not isinstance(q, dict) or q.get("kind") != "tbf" or not q.get("root") or not q.get("dev"):
            continue
        opts = q.get("options") or {}
        rate, burst = _bytes(opts.get("rate")), _bytes(opts.get("burst"))
        if rate and burst:
            out[q["dev"]] = {"kind": "tbf", "rate": rate, "burst": burst}
    return out


def _bytes(v):
    """A tc JSON number (or '131000b/1' as -d prints it) as a positive int, else None."""
    if isinstance(v, str):
        v = _int(re.match(r"\d*", v).group())
    return v if isinstance(v, int) and v > 0 else None


def nvlink_pairs(accels) -> list[dict]:
    """NVLink between NVIDIA GPUs from ``nvidia-smi topo -m`` ('NV<n>' cells), if the tool exists."""
    exe = shutil.which("nvidia-smi")
    if not exe or not any(a.get("accel") == "nvidia" for a in accels):
        return []
    try:
        text = subprocess.run([exe, "topo", "-m"], capture_output=True, text=True, timeout=3).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("topology: nvidia-smi topo -m failed: %s", e)
        return []
    return parse_nvidia_topo(text)


def parse_nvidia_topo(text) -> list[dict]:
    """[{'a': 0, 'b': 1, 'kind': 'nvlink', 'lanes': 4}] from the matrix printed by nvidia-smi topo -m."""
    links = []
    for line in text.splitlines():
        m = re.match(r"\s*GPU(\d+)\s+(.*)", line)
        if not m:
            continue
        a = int(m.group(1))
        for b, cell in enumerate(m.group(2).split()):
            nv = re.fullmatch(r"NV(\d+)", cell)
            if nv and b > a:
                links.append({"a": a, "b": b, "kind": "nvlink", "lanes": int(nv.group(1))})
    return links


def coherent_links(accels, root="/") -> list[dict]:
    """Coherent device-device links the system exposes: NVLink (nvidia-smi), AMD xGMI hives (amdgpu
    sysfs xgmi_hive_info), and CXL memory devices (/sys/bus/cxl). Indices refer to ``accels``."""
    links = nvlink_pairs(accels)
    hives = {}
    for i, a in enumerate(accels):
        if a.get("xgmi_hive"):
            hives.setdefault(a["xgmi_hive"], []).append(i)
    for members in hives.values():
        links += [{"a": x, "b": y, "kind": "xgmi"} for k, x in enumerate(members) for y in members[k + 1:]]
    try:
        cxl = sorted(n for n in os.listdir(os.path.join(root, "sys/bus/cxl/devices")) if n.startswith("mem"))
    except OSError:
        cxl = []
    links += [{"a": None, "b": None, "kind": "cxl", "device": n} for n in cxl]
    return links


def discover_host(root="/") -> dict:
    """Everything about this host that every rank on it shares."""
    tree = pci_tree(root)
    accels = [p for p in tree if p["kind"] == "accelerator"]
    return {"numa": numa_nodes(root), "pci": tree, "nics": nics(root), "accelerators": accels,
            "coherent": coherent_links(accels, root)}


def rank_device(accels, local_rank: int):
    """Index (into the host's accelerators) of this rank's device: HETCCL_DEVICE (an index or a PCI
    address), else the local rank modulo the device count; None on a host without accelerators."""
    spec = os.environ.get("HETCCL_DEVICE", "").strip()
    if spec:
        for i, a in enumerate(accels):
            if a["bdf"] == spec or a["bdf"].endswith(spec):
                return i
        idx = _int(spec)
        if idx is not None:
            return idx
        log.warning("HETCCL_DEVICE=%r names no device of this host; known: %s", spec,
                    ", ".join(a["bdf"] for a in accels) or "none")
    return local_rank % len(accels) if accels else None


def rank_place(host: dict, local_rank: int) -> dict:
    """This process's NUMA node (the node holding most of its allowed CPUs), CPUs and device."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    best, best_n = None, 0
    for node in host["numa"]:
        n = len(set(parse_cpulist(node["cpus"])) & set(cpus))
        if n > best_n:
            best, best_n = node["id"], n
    dev = rank_device(host["accelerators"], local_rank)
    if dev is not None and dev < len(host["accelerators"]) and host["accelerators"][dev]["numa"] is not None:
        numa = host["accelerators"][dev]["numa"]     # a device rank lives next to its device
    else:
        numa = best
    return {"numa": numa, "cpus": format_cpulist(cpus), "device": dev}


@functools.lru_cache(maxsize=None)
def _cached_host(root):
    try:
        return discover_host(root)
    except Exception as e:           # never fail the job: an unexpected sysfs shape is not fatal
        log.debug("topology: discovery failed: %r", e)
        return {"numa": [], "pci": [], "nics": [], "accelerators": [], "coherent": []}


def discover(local_rank: int = 0, root="/") -> dict:
    """This rank's card entry: host identity, host description, and where the rank sits on it."""
    host = _cached_host(root)
    return {"host": host_id(), "place": rank_place(host, local_rank), "hw": host}
