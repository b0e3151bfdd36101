"""Topology: discovery on fake sysfs trees, the model, the topology file, ring orders and hierarchy
levels, transport choice from the model, the tuner's topology-aware choice, and the composed
algorithms on simulated clusters (a topology file putting the ranks of this box on several hosts).

Real multi-host runs (network namespaces, hostnames differing per namespace) are in tests/netns/.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hetccl.errors import InvalidUsage
from hetccl.topology import discover, orders, topofile
from hetccl.transports import matrix
from hetccl.topology.model import from_cards, pcie_bandwidth
from hetccl.topology.vendors import VENDORS, accelerator_vendor
from tests.launcher import IMPORT_ROOT, run_ranks


# ------------------------------------------------------------------ vendors

def test_vendor_table_has_every_listed_vendor_once_with_a_source():
    want = {0x10de: "nvidia", 0x1002: "amd", 0x19e5: "ascend", 0x1d94: "hygon", 0x1ed5: "mthreads",
            0xcabc: "cambricon", 0x1e3e: "iluvatar", 0x9999: "metax", 0x1d22: "kunlunxin", 0x1e36: "enflame"}
    assert {k: v.name for k, v in VENDORS.items()} == want
    assert all(v.source for v in VENDORS.values())
    assert not any("issue" in v.source for v in VENDORS.values())        # every id checked somewhere


def test_every_accelerator_vendor_has_a_bridge_kind_with_a_row():
    from hetccl.bridges import libraries, rows
    for v in VENDORS.values():
        kind, _ = libraries.ACCELERATOR_LIBRARY[v.name]
        assert kind in rows.BY_KIND, v.name


def test_accelerator_needs_a_compute_class_unless_the_vendor_makes_only_accelerators():
    assert accelerator_vendor(0x10de, 0x030200).name == "nvidia"      # 3D controller
    assert accelerator_vendor(0x10de, 0x040300) is None               # NVIDIA HD audio function
    assert accelerator_vendor(0x19e5, 0x020000) is None               # a Huawei NIC
    assert accelerator_vendor(0x19e5, 0x120000).name == "ascend"      # processing accelerator
    assert accelerator_vendor(0xcabc, 0x000000).name == "cambricon"
    assert accelerator_vendor(0x8086, 0x030000) is None
    assert accelerator_vendor(0x1d22, 0x0b4000, 0x3684).name == "kunlunxin"   # by device id
    assert accelerator_vendor(0x1d22, 0x010800, 0x1380) is None               # Baidu's storage device
    assert accelerator_vendor(0x1e36, 0x000000).name == "enflame"


# every vendor's device as discovery sees it: (vendor id, class, device id) -> the name it reports
VENDOR_DEVICES = [(0x10de, 0x030200, 0x2330, "nvidia"), (0x1002, 0x038000, 0x74a1, "amd"),
                  (0x19e5, 0x120000, 0xd802, "ascend"), (0x1d94, 0x038000, 0x6210, "hygon"),
                  (0x1ed5, 0x030000, 0x0121, "mthreads"), (0xcabc, 0x120000, 0x0370, "cambricon"),
                  (0x1e3e, 0x030200, 0x0001, "iluvatar"), (0x9999, 0x038000, 0x4001, "metax"),
                  (0x1d22, 0x0b4000, 0x3684, "kunlunxin"), (0x1e36, 0x120000, 0x0021, "enflame")]


@pytest.mark.parametrize("vendor,cls,device,name", VENDOR_DEVICES, ids=[d[3] for d in VENDOR_DEVICES])
def test_discovery_finds_every_vendors_accelerator_in_a_fake_sysfs(tmp_path, vendor, cls, device, name):
    root = str(tmp_path)
    _w(os.path.join(root, "sys/devices/system/node/node0/cpulist"), "0-1")
    sw = "0000:00:01.0"
    _pci(root, [sw], 0x8086, 0x060400, speed=16.0, width=16)
    for i in range(2):
        dev = _pci(root, [sw, f"0000:0{i + 1}:00.0"], vendor, cls, speed=16.0, width=16)
        _w(os.path.join(dev, "device"), f"0x{device:04x}")
    _pci(root, ["0000:00:1f.3"], vendor, 0x040300) if name in ("nvidia", "amd", "ascend", "hygon") else None
    hw = discover.discover_host(root)
    accels = hw["accelerators"]
    assert [a["accel"] for a in accels] == [name, name]
    assert [a["bdf"] for a in accels] == ["0000:01:00.0", "0000:02:00.0"]
    assert all(a["parent"] == sw and a["device"] == f"{device:04x}" for a in accels)
    from hetccl.bridges import libraries
    (isl,) = [i for i in libraries.host_islands([], accels, "hetccl") if i["members"] != "CPU ranks"]
    assert isl["members"] == f"2 {name} device(s)"
    assert f"no {libraries.ACCELERATOR_LIBRARY[name][0]} library found" in isl["note"]


# ------------------------------------------------------------------ discovery on a fake sysfs

def _w(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")


def _pci(root, chain, vendor, cls, numa=0, speed=None, width=None, extra=None):
    """A PCI function at the end of ``chain`` (root port first) with its /sys/bus/pci link."""
    dev = os.path.join(root, "sys/devices/pci0000:00", *chain)
    _w(os.path.join(dev, "vendor"), f"0x{vendor:04x}")
    _w(os.path.join(dev, "device"), "0x1234")
    _w(os.path.join(dev, "class"), f"0x{cls:06x}")
    _w(os.path.join(dev, "numa_node"), str(numa))
    if speed:
        _w(os.path.join(dev, "current_link_speed"), f"{speed} GT/s PCIe")
        _w(os.path.join(dev, "current_link_width"), str(width))
    for rel, text in (extra or {}).items():
        _w(os.path.join(dev, rel), text)
    bus = os.path.join(root, "sys/bus/pci/devices")
    os.makedirs(bus, exist_ok=True)
    link = os.path.join(bus, chain[-1])
    if not os.path.lexists(link):
        os.symlink(dev, link)
    return dev


@pytest.fixture
def fake_sysfs(tmp_path):
    root = str(tmp_path)
    for n, cpus in ((0, "0-3"), (1, "4-7")):
        _w(os.path.join(root, f"sys/devices/system/node/node{n}/cpulist"), cpus)
    sw = "0000:00:01.0"
    _pci(root, [sw], 0x8086, 0x060400, numa=0, speed=16.0, width=16)
    _pci(root, [sw, "0000:01:00.0"], 0x10de, 0x030200, numa=0, speed=16.0, width=16)
    _pci(root, [sw, "0000:02:00.0"], 0x10de, 0x030200, numa=0, speed=16.0, width=16)
    _pci(root, ["0000:80:00.0"], 0x1002, 0x038000, numa=1, extra={"xgmi_hive_info/xgmi_hive_id": "77"})
    _pci(root, ["0000:81:00.0"], 0x1002, 0x038000, numa=1, extra={"xgmi_hive_info/xgmi_hive_id": "77"})
    nic = _pci(root, [sw, "0000:03:00.0"], 0x15b3, 0x020700, numa=0, speed=16.0, width=16)
    _pci(root, ["0000:00:1f.3"], 0x8086, 0x040300)                      # audio: not listed
    net = os.path.join(root, "sys/class/net/ib0")
    os.makedirs(net)
    os.symlink(nic, os.path.join(net, "device"))
    _w(os.path.join(net, "speed"), "-1")
    _w(os.path.join(net, "type"), "32")
    _w(os.path.join(net, "operstate"), "up")
    ibd = os.path.join(root, "sys/class/infiniband/mlx5_0")
    os.makedirs(os.path.join(ibd, "ports/1"))
    os.symlink(nic, os.path.join(ibd, "device"))
    _w(os.path.join(ibd, "ports/1/rate"), "200 Gb/sec (4X HDR)")
    lo = os.path.join(root, "sys/class/net/lo")
    _w(os.path.join(lo, "type"), "772")
    return root


def test_discovery_reads_numa_pci_tree_nics_accelerators_and_coherent_links(fake_sysfs):
    hw = discover.discover_host(fake_sysfs)
    assert [n["id"] for n in hw["numa"]] == [0, 1]
    kinds = {p["bdf"]: p["kind"] for p in hw["pci"]}
    assert kinds == {"0000:00:01.0": "bridge", "0000:01:00.0": "accelerator", "0000:02:00.0": "accelerator",
                     "0000:80:00.0": "accelerator", "0000:81:00.0": "accelerator", "0000:03:00.0": "nic"}
    gpu = next(p for p in hw["pci"] if p["bdf"] == "0000:01:00.0")
    assert gpu["parent"] == "0000:00:01.0" and gpu["link_gts"] == 16.0 and gpu["link_width"] == 16
    assert [a["accel"] for a in hw["accelerators"]] == ["nvidia", "nvidia", "amd", "amd"]
    (ib,) = hw["nics"]
    assert ib["name"] == "ib0" and ib["rdma"] == "mlx5_0" and ib["speed_mbps"] == 200_000
    assert ib["pci"] == "0000:03:00.0" and ib["numa"] == 0
    assert {"a": 2, "b": 3, "kind": "xgmi"} in hw["coherent"]


def test_discovery_of_a_missing_or_broken_tree_is_empty_not_an_error(tmp_path):
    hw = discover.discover_host(str(tmp_path / "nothing"))
    assert hw == {"numa": [], "pci": [], "nics": [], "accelerators": [], "coherent": []}
    _w(str(tmp_path / "sys/bus/pci/devices/0000:00:00.0/vendor"), "garbage")
    assert discover.pci_tree(str(tmp_path)) == []


TC_JSON = json.dumps([
    {"kind": "tbf", "handle": "817e:", "dev": "eth0", "root": True, "options": {"rate": 125000000, "burst": 131000}},
    {"kind": "tbf", "handle": "1:", "dev": "eth1", "root": True, "options": {"rate": 250000000, "burst": "64000b/1"}},
    {"kind": "tbf", "handle": "2:", "dev": "eth2", "parent": "1:1", "options": {"rate": 1, "burst": 1}},   # not root
    {"kind": "fq_codel", "handle": "0:", "dev": "eth3", "root": True, "options": {}},
    {"kind": "tbf", "dev": "eth4", "root": True, "options": {"rate": 0, "burst": 9}},                     # no rate
    "garbage"])


def test_token_bucket_shapers_are_read_from_tc_json():
    assert discover.parse_tc_qdiscs(TC_JSON) == {"eth0": {"kind": "tbf", "rate": 125000000, "burst": 131000},
                                                 "eth1": {"kind": "tbf", "rate": 250000000, "burst": 64000}}
    assert discover.parse_tc_qdiscs("not json") == {} and discover.parse_tc_qdiscs("") == {}
    assert discover.parse_tc_qdiscs('{"kind": "tbf"}') == {}


def test_a_shaped_nic_links_at_the_shaper_rate_with_its_burst_at_the_line_rate():
    nic = {"name": "eth0", "speed_mbps": 10000, "shaper": {"kind": "tbf", "rate": 125e6, "burst": 131000}}
    topo = from_cards([_card(0, "a", {"nics": [nic]}), _card(1, "b", {"nics": [dict(nic, shaper=None)]})])
    up = topo.uplink("a")
    assert (up.bandwidth, up.burst, up.peak) == (125e6, 131000, 10000 * 125_000)
    plain = topo.uplink("b")
    assert (plain.bandwidth, plain.burst, plain.peak) == (10000 * 125_000, None, None)
    slow = from_cards([_card(0, "a", {"nics": [dict(nic, speed_mbps=100)]})]).uplink("a")
    assert (slow.bandwidth, slow.burst) == (100 * 125_000, None)      # a shaper above the line rate shapes nothing


def test_nvidia_topo_matrix_parsing():
    text = ("\tGPU0\tGPU1\tGPU2\tCPU Affinity\n"
            "GPU0\t X \tNV4\tSYS\t0-7\n"
            "GPU1\tNV4\t X \tNV2\t0-7\n"
            "GPU2\tSYS\tNV2\t X \t8-15\n")
    assert discover.parse_nvidia_topo(text) == [{"a": 0, "b": 1, "kind": "nvlink", "lanes": 4},
                                                {"a": 1, "b": 2, "kind": "nvlink", "lanes": 2}]


def test_device_per_rank_from_HETCCL_DEVICE_or_the_local_rank(fake_sysfs, monkeypatch):
    accels = discover.discover_host(fake_sysfs)["accelerators"]
    monkeypatch.delenv("HETCCL_DEVICE", raising=False)
    assert discover.rank_device(accels, 5) == 1
    assert discover.rank_device([], 5) is None
    monkeypatch.setenv("HETCCL_DEVICE", "0000:80:00.0")
    assert discover.rank_device(accels, 0) == 2
    monkeypatch.setenv("HETCCL_DEVICE", "3")
    assert discover.rank_device(accels, 0) == 3
    place = discover.rank_place(discover.discover_host(fake_sysfs), 0)
    assert place["device"] == 3 and place["numa"] == 1          # the device's NUMA node


def test_cpulists_round_trip():
    assert discover.parse_cpulist("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    assert discover.format_cpulist([11, 0, 1, 2, 3, 8, 10]) == "0-3,8,10-11"
    assert discover.parse_cpulist("x,1") == [1]


def test_discovery_of_this_machine_is_fast_and_json():
    import time
    t = time.perf_counter()
    d = discover.discover_host("/")
    # generous: discovery runs at every init and reads only sysfs/procfs (a few ms); 5 s catches a
    # scan that blocks on something (a device, a network tool), not a slow moment of a loaded VM
    assert time.perf_counter() - t < 5.0
    json.dumps(d)


# ------------------------------------------------------------------ the model

def _card(rank, host, hw=None, place=None, ifname="eth0"):
    return {"rank": rank, "host": host, "ifname": ifname,
            "topo": {"host": host, "place": place or {"numa": 0, "device": None}, "hw": hw or {}, "file": None}}


def test_model_from_cards_builds_the_graph_and_classes(fake_sysfs):
    hw = discover.discover_host(fake_sysfs)
    cards = [_card(0, "a", hw, {"numa": 0, "device": 0}, "ib0"), _card(1, "a", hw, {"numa": 1, "device": 2}, "ib0"),
             _card(2, "b", hw, {"numa": 0, "device": 0}, "ib0")]
    topo = from_cards(cards)
    assert topo.hosts() == ["a", "b"]
    kinds = sorted(n.kind for n in topo.nodes.values() if n.host == "a")
    assert kinds.count("device") == 4 and kinds.count("switch") == 1 and kinds.count("nic") == 1
    assert any(ln.cls == "pcie" and ln.bandwidth == pytest.approx(pcie_bandwidth(16.0, 16)) for ln in topo.links)
    assert topo.pair_class(0, 1) == "shm"           # different islands (numa / xgmi hive)
    assert topo.pair_class(0, 2) == "rdma"          # both on an InfiniBand NIC
    assert topo.uplink("a").bandwidth == 200_000 * 125_000
    assert topo.islands("a") == ["", "c2c0"]        # rank 1's AMD device is in an xGMI hive


def test_islands_come_from_coherent_groups_then_numa():
    hw = {"accelerators": [{"bdf": "x"}, {"bdf": "y"}, {"bdf": "z"}, {"bdf": "w"}],
          "coherent": [{"a": 0, "b": 1, "kind": "nvlink"}, {"a": 2, "b": 3, "kind": "nvlink"}]}
    topo = from_cards([_card(r, "h", hw, {"numa": 0, "device": r}) for r in range(4)])
    assert [topo.island_of(r) for r in range(4)] == ["c2c0", "c2c0", "c2c1", "c2c1"]
    assert topo.pair_class(0, 1) == "c2c" and topo.pair_class(1, 2) == "shm"
    topo = from_cards([_card(r, "h", {}, {"numa": r // 2, "device": None}) for r in range(4)])
    assert [topo.island_of(r) for r in range(4)] == ["numa0", "numa0", "numa1", "numa1"]
    assert topo.pair_class(0, 3) == "c2c"           # CPU ranks: one coherent host memory
    topo = from_cards([_card(r, "h", {}, {"numa": 0, "device": None}) for r in range(2)])
    assert topo.islands("h") == [""]


# ------------------------------------------------------------------ the topology file

def _file_topo(hosts, per_host, round_robin=False, islands=1, bw=1.25e8):
    p = hosts * per_host
    ranks = []
    for r in range(p):
        h = r % hosts if round_robin else r // per_host
        local = r // hosts if round_robin else r % per_host
        ranks.append({"rank": r, "host": f"h{h}", "island": f"i{local * islands // per_host}" if islands > 1 else None})
    links = [{"a": f"host:h{h}", "b": "net", "class": "tcp", "bandwidth": bw} for h in range(hosts)]
    return {"format": "hetccl-topology", "version": 1, "ranks": ranks, "links": links}


def test_file_round_trip_keeps_everything(fake_sysfs, tmp_path):
    hw = discover.discover_host(fake_sysfs)
    topo = from_cards([_card(0, "a", hw), _card(1, "b", hw)])
    path = str(tmp_path / "t.json")
    topofile.dump(topo, path)
    back = topofile.load(path)
    assert topofile.to_dict(back) == topofile.to_dict(topo)
    assert json.load(open(path))["version"] == topofile.VERSION


def test_file_round_trip_keeps_a_token_bucket():
    spec = _file_topo(2, 2)
    spec["links"][0].update(burst=131000, peak=1.25e9)
    back = topofile.from_dict(topofile.to_dict(topofile.from_dict(spec)))
    up = next(ln for ln in back.links if ln.a == "host:h0")
    assert (up.burst, up.peak) == (131000, 1.25e9)
    assert next(ln for ln in back.links if ln.a == "host:h1").burst is None


@pytest.mark.parametrize("bad, message", [
    ({"format": "x"}, "'format' must be"),
    ({"format": "hetccl-topology", "version": 9, "ranks": [{"rank": 0, "host": "a"}]}, "version 9"),
    ({"format": "hetccl-topology", "version": 1, "ranks": []}, "non-empty"),
    ({"format": "hetccl-topology", "version": 1, "ranks": [{"rank": 1, "host": "a"}]}, "numbered 0..0"),
    ({"format": "hetccl-topology", "version": 1, "ranks": [{"rank": 0, "host": "a"}],
      "links": [{"a": "x", "b": "y", "class": "warp"}]}, "'class' among"),
    ({"format": "hetccl-topology", "version": 1, "ranks": [{"rank": 0, "host": "a"}],
      "links": [{"a": "x", "b": "y", "class": "tcp", "bandwidth": -1}]}, "positive"),
    ({"format": "hetccl-topology", "version": 2, "ranks": [{"rank": 0, "host": "a"}],
      "links": [{"a": "x", "b": "y", "class": "tcp", "burst": 131000}]}, "go together"),
    ({"format": "hetccl-topology", "version": 2, "ranks": [{"rank": 0, "host": "a"}],
      "links": [{"a": "x", "b": "y", "class": "tcp", "burst": 0, "peak": 1e9}]}, "positive"),
])
def test_bad_files_say_what_to_fix(bad, message):
    with pytest.raises(InvalidUsage, match=message):
        topofile.from_dict(bad, "f.json")


def test_unreadable_file_says_how_to_make_one(tmp_path):
    with pytest.raises(InvalidUsage, match="hetccl topo --dump"):
        topofile.load(str(tmp_path / "missing.json"))


# ------------------------------------------------------------------ orders and levels

def test_ring_order_groups_hosts_and_crosses_each_host_once():
    topo = topofile.from_dict(_file_topo(2, 2, round_robin=True))
    assert orders.ring_order(topo) == [0, 2, 1, 3]
    assert orders.ring_uplink_load(topo, [0, 1, 2, 3]) == 2     # every hop crosses: 2 streams per host
    assert orders.ring_uplink_load(topo, orders.ring_order(topo)) == 1
    block = topofile.from_dict(_file_topo(2, 2))
    assert orders.ring_order(block) == [0, 1, 2, 3] and orders.ring_uplink_load(block, [0, 1, 2, 3]) == 1
    assert orders.rd_uplink_load(topo) == 2 and orders.rd_uplink_load(block) == 2


def test_hierarchy_coordinates_two_and_three_levels():
    topo = topofile.from_dict(_file_topo(2, 2, round_robin=True))
    assert orders.hierarchy(topo) == [(0, 0, 0), (1, 0, 0), (0, 0, 1), (1, 0, 1)]
    three = topofile.from_dict(_file_topo(2, 4, islands=2))
    assert orders.hierarchy(three) == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1),
                                       (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
    uneven = topofile.from_dict({"format": "hetccl-topology", "version": 1,
                                 "ranks": [{"rank": 0, "host": "a"}, {"rank": 1, "host": "a"}, {"rank": 2, "host": "b"}]})
    assert orders.hierarchy(uneven) is None


class _T:
    def __init__(self, name, score):
        self.name, self._s = name, score
        self.link_class, self.same_host = name, name == "shm"

    def available(self):
        return True

    def score(self, a, b):
        return self._s if (self.name != "shm" or a["host"] == b["host"]) else 0


def test_transport_matrix_is_capped_by_the_model():
    cards = [{"rank": r, "host": "box"} for r in range(4)]
    topo = topofile.from_dict(_file_topo(2, 2))                 # the file splits one box in 2 hosts
    m = matrix.transport_matrix(cards, [_T("shm", 30), _T("tcp", 10)], None, topo)
    assert m[0] == ["self", "shm", "tcp", "tcp"] and m[2][3] == "shm"
    real = [{"rank": r, "host": f"m{r}"} for r in range(2)]     # the file cannot create shared memory
    one = topofile.from_dict({"format": "hetccl-topology", "version": 1,
                              "ranks": [{"rank": 0, "host": "a"}, {"rank": 1, "host": "a"}]})
    assert matrix.transport_matrix(real, [_T("shm", 30), _T("tcp", 10)], None, one)[0][1] == "tcp"


# ------------------------------------------------------------------ pricing

class _FakeComm:
    """What a Planner reads of its communicator's Context (hetccl/context.py)."""
    rank = 0
    tuner = None


def _planner(spec, over=False):
    from hetccl.collectives.hierarchical import Planner
    return Planner(_FakeComm(), topofile.from_dict(spec), over)


def _flat(name, coll="allreduce"):
    from hetccl.collectives import registry
    return next(a for a in registry.for_collective(coll) if a.name == name)


def test_tuner_picks_hierarchical_for_large_allreduce_on_round_robin_hosts():
    pl = _planner(_file_topo(2, 2, round_robin=True))
    big = 16 << 20
    assert pl.choose("allreduce", big, _flat("ring"), False).name == "hierarchical"
    ring = pl._flat_cost(_flat("ring"), big)
    hier = pl.composed_cost("allreduce", -1, big)
    assert ring / hier > 2.5                          # flat ring: 2 streams per host link, 1.5 n each
    assert hier == pytest.approx(big / 1.25e8, rel=0.1)   # ~ the time for n bytes to cross once
    assert pl.choose("allreduce", big, _flat("ring"), True).name == "ring"      # forced stays
    assert pl.choose("allgather", big, _flat("ring", "allgather"), False).name in ("hierarchical", "topo_ring")


def test_block_placement_and_small_messages():
    pl = _planner(_file_topo(2, 2))
    assert pl.composed_cost("allreduce", -2, 1 << 20) is None       # rank order is already the ring order
    assert pl.choose("allreduce", 16 << 20, _flat("ring"), False).name == "hierarchical"
    assert pl._flat_cost(_flat("ring"), 16 << 20) / pl.composed_cost("allreduce", -1, 16 << 20) > 1.3


class _ProbedComm(_FakeComm):
    """A communicator whose probe measured the quiet 2x2 netns setup (tbf 1 Gbit/s, 4 ranks on 2
    cores): alpha 34 us, 0.129 GB/s per host link (bench/results/netns-choice-2026-12-01b.txt)."""
    def __init__(self):
        from types import SimpleNamespace
        from hetccl.collectives.cost_model import CostModel, LinkCost
        model = CostModel(LinkCost(34.3e-6, 1 / 0.129e9, 1 / 53.4e9, fifo=False), "measured", "", ("c2c", "tcp"))
        self.tuner = SimpleNamespace(model=model, select=lambda coll, nbytes: _flat("ring", coll))


def _shaped_planner(round_robin, burst):
    from hetccl.collectives.hierarchical import Planner
    spec = _file_topo(2, 2, round_robin=round_robin)
    spec["version"] = 2
    for ln in spec["links"]:
        ln.update({"burst": 131000, "peak": 1.25e9} if burst else {})
    topo = topofile.from_dict(spec)
    topo.source = "discovered"                 # as found by discovery: the probe's beta is the rate
    return Planner(_ProbedComm(), topo, 2.0)


@pytest.mark.parametrize("round_robin", [True, False])
def test_a_token_bucket_lends_a_call_in_a_loop_no_more_than_its_link_refills(round_robin):
    # A loop of calls (what a benchmark and a training step run) moves W bytes per call through a
    # host link that refills at its rate: a call there costs at least W/rate, whatever the bucket.
    # Measured in that loop (bench/results/validate-sim-2026-12-07-b.json, 2x2 round-robin):
    # recursive doubling 271 us at 16 KiB and 1110 us at 64 KiB, hierarchical 142 and 543 us; the
    # bucket full at every call had priced recursive doubling 3-6x too fast and chosen it.
    pl, plain = _shaped_planner(round_robin, True), _shaped_planner(round_robin, False)
    rd = _flat("recursive_doubling")
    for n in (1 << 10, 4 << 10, 8 << 10):
        assert pl.choose("allreduce", n, _flat("ring"), False).name == "recursive_doubling", n
    for n in (32 << 10, 128 << 10, 512 << 10, 16 << 20, 64 << 20):
        assert pl.choose("allreduce", n, _flat("ring"), False).name == "hierarchical", n
    # a call whose bytes its own latency outlasts rides the bucket at the line rate ...
    assert pl._flat_cost(rd, 1 << 10) == pytest.approx(pl._flat_over(rd, 1 << 10, pl.net_peak))
    for n in (16 << 10, 64 << 10, 16 << 20):
        wire = (plain._flat_cost(rd, n) - pl._flat_over(rd, n, pl.net_peak)) / (pl.net.beta - pl.net_peak.beta)
        # ... one that does not pays its bytes at the sustained rate (no less), never more than
        # without a bucket; a big one saves at most the burst
        assert pl._flat_cost(rd, n) >= wire * pl.net.beta * (1 - 1e-9)
        assert plain._flat_cost(rd, n) - 131000 * (pl.net.beta - pl.net_peak.beta) * (1 + 1e-6) \
            <= pl._flat_cost(rd, n) <= plain._flat_cost(rd, n)
    for n in (16 << 10, 64 << 10):
        wire = (plain._flat_cost(rd, n) - pl._flat_over(rd, n, pl.net_peak)) / (pl.net.beta - pl.net_peak.beta)
        assert pl._flat_cost(rd, n) == pytest.approx(wire * pl.net.beta)
    assert pl.composed_cost("allreduce", -1, 16 << 20) == pytest.approx(
        plain.composed_cost("allreduce", -1, 16 << 20), rel=0.01)
    assert "token bucket 131 kB at 1.25 GB/s" in pl.explain("allreduce", 32 << 10)


def test_three_level_is_priced_and_one_rank_per_host_is_not_composed():
    pl = _planner(_file_topo(2, 4, islands=2))
    assert pl._dims() == (2, 2, 2)
    assert pl.composed_cost("allreduce", -1, 1 << 20) is not None
    from hetccl.collectives.hierarchical import planner_for
    cards = [{"rank": r, "host": f"h{r}", "topo": {"host": f"h{r}", "place": {}, "hw": {}}} for r in range(3)]
    assert planner_for(None, cards) is None


# ------------------------------------------------------------------ composed algorithms, simulated hosts

def _composed_case(rank, size, ring_sizes):
    import hetccl
    from hetccl.ops import ReduceOp
    comm = hetccl.init()
    seen = set()
    for algo in ("hierarchical", "topo_ring", None):
        for n in ring_sizes:
            for dt in ("float32", "int32", "float64", "uint8"):
                base = (np.arange(n) % 7).astype(dt)
                x = base + rank
                out = np.empty_like(x)
                comm.allreduce(x, ReduceOp.SUM, out=out, algorithm=algo)
                seen.add(comm.last_algorithm)
                want = (base.astype(np.int64) * size + sum(range(size))).astype(dt)
                assert np.array_equal(out, want), (algo, n, dt, "sum")
                y = (base.astype(np.int64) + 3 * rank).astype(dt)
                comm.allreduce(y, ReduceOp.MAX, algorithm=algo)
                assert np.array_equal(y, (base.astype(np.int64) + 3 * (size - 1)).astype(dt)), (algo, n, dt)
            z = np.full(n, 2 * rank + 1, np.int64) * (-1) ** rank
            comm.allreduce(z, ReduceOp.AVG, algorithm=algo)
            exact = int(sum((2 * r + 1) * (-1) ** r for r in range(size)) / size)
            assert (z == exact).all(), (algo, n, "int avg", z[:3], exact)
            w = comm.allreduce(np.full(n, rank, np.float32), algorithm=algo, async_op=True).wait()
            assert (w == sum(range(size))).all()
            ba = bytearray(np.full(n, rank + 1, np.int32).tobytes())
            comm.allreduce(ba, algorithm=algo)
            assert (np.frombuffer(ba, np.int32) == sum(range(1, size + 1))).all()
            g = comm.allgather(np.arange(n, dtype=np.int32) + 100 * rank, algorithm=algo)
            assert np.array_equal(g.reshape(size, n), np.arange(n) + 100 * np.arange(size)[:, None]), (algo, n)
            inplace = np.zeros(size * n, np.float32)
            inplace[rank * n:(rank + 1) * n] = rank
            comm.allgather(inplace, out=inplace, algorithm=algo)
            assert np.array_equal(inplace.reshape(size, n), np.repeat(np.arange(size), n).reshape(size, n).astype(np.float32))
            for root in range(size):
                b = np.full(n, rank, np.float64)
                comm.broadcast(b, root=root, algorithm=algo if algo != "topo_ring" else None)
                assert (b == root).all(), (algo, root)
    transports = [comm.transport(p) for p in range(size)]
    plan = comm._plan is not None
    comm.close()
    return sorted(x for x in seen if x), transports, plan


def test_composed_algorithms_on_a_simulated_round_robin_cluster(tmp_path):
    path = str(tmp_path / "rr.json")
    json.dump(_file_topo(2, 2, round_robin=True), open(path, "w"))
    res = run_ranks(_composed_case, 4, [0, 1, 5, 1001, 70_000], timeout=240, env={"HETCCL_TOPO_FILE": path})
    seen, transports, plan = res[0]
    assert plan and "hierarchical" in seen and "topo_ring" in seen
    assert transports == ["self", "tcp", "c2c", "tcp"]         # shared memory only inside a host


def test_three_level_hierarchy_on_a_simulated_cluster(tmp_path):
    path = str(tmp_path / "three.json")
    json.dump(_file_topo(2, 4, islands=2), open(path, "w"))
    res = run_ranks(_composed_case, 8, [3, 4099], timeout=300, env={"HETCCL_TOPO_FILE": path})
    assert "hierarchical" in res[0][0]


def _pipelined_case(rank, size):
    import hetccl
    comm = hetccl.init()
    for n in (1 << 20, 600_001):                    # >= PIPELINE_MIN bytes: segments overlap levels
        x = (np.arange(n) % 13).astype(np.float32) * (rank + 1)
        out = np.empty_like(x)
        comm.allreduce(x, out=out, algorithm="hierarchical")
        assert np.array_equal(out, (np.arange(n) % 13).astype(np.float32) * sum(range(1, size + 1))), n
        y = np.arange(n, dtype=np.int32) * (rank + 1)
        comm.allreduce(y, hetccl.MAX, algorithm="hierarchical")        # in place
        assert np.array_equal(y, np.arange(n, dtype=np.int32) * size), n
        w = comm.allreduce(np.full(n, rank, np.float64), algorithm="hierarchical", async_op=True)
        assert (w.wait() == sum(range(size))).all()
    comm.close()
    return True


def test_pipelined_hierarchical_allreduce_on_a_simulated_cluster(tmp_path):
    path = str(tmp_path / "rr.json")
    json.dump(_file_topo(2, 2, round_robin=True), open(path, "w"))
    assert run_ranks(_pipelined_case, 4, timeout=180, env={"HETCCL_TOPO_FILE": path}) == [True] * 4


def _forced_case(rank, size):
    import hetccl
    comm = hetccl.init()
    x = np.ones(10, np.float32)
    comm.allreduce(x)
    name = comm.last_algorithm
    comm.close()
    return name, float(x[0])


def test_forcing_hierarchical_on_one_host_falls_back_to_a_flat_algorithm():
    res = run_ranks(_forced_case, 2, timeout=120, env={"HETCCL_ALGO": "allreduce:hierarchical",
                                                        "HETCCL_TOPO_FILE": None})
    assert res[0][1] == 2.0 and res[0][0] in ("ring", "recursive_doubling")


def _env_forced_case(rank, size):
    import hetccl
    comm = hetccl.init()
    names = []
    for n in (10, 100_000):
        x = np.ones(n, np.float32)
        comm.allreduce(x)
        names.append(comm.last_algorithm)
        assert (x == size).all()
        g = comm.allgather(np.full(n, rank, np.int32))
        names.append(comm.last_algorithm)
        assert (g.reshape(size, n) == np.arange(size)[:, None]).all()
    comm.close()
    return names


def test_HETCCL_ALGO_forces_composed_algorithms_and_their_subcommunicators_stay_flat(tmp_path):
    path = str(tmp_path / "rr.json")
    json.dump(_file_topo(2, 2, round_robin=True), open(path, "w"))
    res = run_ranks(_env_forced_case, 4, timeout=180, env={
        "HETCCL_TOPO_FILE": path, "HETCCL_ALGO": "allreduce:hierarchical;allgather:hierarchical"})
    assert res[0] == ["hierarchical"] * 4


def _file_mismatch_case(rank, size, path, bad_ranks):
    import time

    import hetccl
    if rank in bad_ranks:
        os.environ["HETCCL_TOPO_FILE"] = path
    t = time.monotonic()
    try:
        hetccl.init(timeout=120)          # generous: the refusal must come from the check, not the clock
    except InvalidUsage as e:
        return str(e), time.monotonic() - t
    return "no error", time.monotonic() - t


@pytest.mark.parametrize("bad_ranks", [(0, 1), (0,), (1,)], ids=["every rank", "rank 0", "rank 1"])
def test_a_file_with_too_few_ranks_is_refused_on_every_rank_at_once(tmp_path, bad_ranks):
    """Every rank that reads the file refuses it; the others learn it from the store's abort
    (bootstrap/store.py) at once instead of waiting out their timeout for a rank that left."""
    path = str(tmp_path / "one.json")
    json.dump(_file_topo(1, 1), open(path, "w"))
    res = run_ranks(_file_mismatch_case, 2, path, bad_ranks, timeout=200)
    for rank, (msg, took) in enumerate(res):
        assert "describes 1 rank(s) but the job has 2" in msg, (rank, msg)
        if rank not in bad_ranks:
            assert f"rank {bad_ranks[0]} failed" in msg and "stopped while starting" in msg, msg
        assert took < 60, f"rank {rank} took {took:.0f} s to fail: the abort did not reach it"


# ------------------------------------------------------------------ CLI

def _cli(*args, env=None):
    e = dict(os.environ, PYTHONPATH=IMPORT_ROOT, **(env or {}))
    for k in ("HETCCL_RANK", "HETCCL_SIZE", "HETCCL_TOPO_FILE"):
        e.pop(k, None)
    return subprocess.run([sys.executable, "-m", "hetccl", *args], capture_output=True, text=True,
                          env=e, timeout=120)


def test_topo_dump_writes_a_loadable_file(tmp_path):
    path = str(tmp_path / "me.json")
    r = _cli("topo", "--dump", path)
    assert r.returncode == 0, r.stderr
    assert "topology: 1 rank(s) on 1 host(s)" in r.stdout
    assert topofile.load(path).ranks[0].rank == 0


def test_topo_measure_under_the_launcher(tmp_path):
    path = str(tmp_path / "m.json")
    r = _cli("run", "-n", "2", "--", sys.executable, "-m", "hetccl", "topo", "--measure", "--dump", path)
    assert r.returncode == 0, r.stderr + r.stdout
    links = [ln for ln in topofile.load(path).links if ln.measured]
    assert links and all(ln.cls == "shm" and ln.bandwidth > 1e6 and ln.latency > 0 for ln in links)


def test_topo_measure_alone_says_how_to_run_it():
    r = _cli("topo", "--measure")
    assert r.returncode != 0 and "hetccl run -n 2" in r.stderr
