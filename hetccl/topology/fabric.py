"""The network between hosts, when a topology describes it: NICs (rails), leaf switches and, in a
three-tier network, pods, with an oversubscription factor at each tier above the leaves.

Why: how fast an algorithm's bytes cross the network depends on how many of its streams meet on
one link at once. A host with 8 NICs carries 8 rail streams side by side; a leaf switch whose
uplinks are oversubscribed 3:1 gives the streams that leave it a third of their NICs' speed when
every port sends at once. The planner (collectives/hierarchical.py) asks ``Fabric.share`` how
much a schedule's concurrent streams slow each other, and divides bandwidth by that.

Where it comes from: the ``net`` node's attrs in a topology file (``hetccl topo --synth`` writes
them; hand-written files may too)::

    {"id": "net", "kind": "network", "attrs": {"tiers": 2, "oversubscription": 3.0,
     "leaf_hosts": 32, "rail_optimized": true, "pod_leaves": 16, "pod_oversubscription": 1.0}}

- ``tiers`` 2 (leaf + spine) or 3 (leaf + spine + core, leaves grouped into pods);
- ``oversubscription``: a leaf's downlink capacity over its uplink capacity (1 = non-blocking);
- ``leaf_hosts``: hosts under one leaf (a host node's ``leaf`` attr overrides);
- ``rail_optimized``: NIC k of every host of a leaf group plugs into that group's rail-k leaf, so
  streams between NICs of the same index stay under one leaf, and cross-rail streams go up;
- ``pod_leaves``, ``pod_oversubscription`` (3 tiers): leaf groups per pod and the pod's uplink
  oversubscription.

A topology without ``tiers`` has no fabric (``of`` returns None) and is priced as before: one
network link per host, shared by the streams that leave the host.
"""
from __future__ import annotations

import numpy as np


class Fabric:
    """Per-rank indexes (host, NIC, leaf, pod) of a topology and the sharing of concurrent streams."""

    def __init__(self, topo, attrs):
        self.tiers = int(attrs.get("tiers", 2))
        self.over = max(1.0, float(attrs.get("oversubscription", 1.0) or 1.0))
        self.pod_over = max(1.0, float(attrs.get("pod_oversubscription", 1.0) or 1.0))
        leaf_hosts = max(1, int(attrs.get("leaf_hosts", 0) or 0) or len(topo.hosts()))
        pod_leaves = max(1, int(attrs.get("pod_leaves", 0) or 0) or 1 << 30)
        rail = bool(attrs.get("rail_optimized", False))
        hosts = topo.hosts()
        hidx = {h: k for k, h in enumerate(hosts)}
        nics = {}                               # host -> [nic names, in node order]
        for n in topo.nodes.values():
            if n.kind == "nic" and n.host is not None:
                nics.setdefault(n.host, []).append(n.id.split("/", 1)[1])
        group = np.empty(len(hosts), np.int64)  # the host's leaf group
        for h, k in hidx.items():
            node = topo.nodes.get(f"host:{h}")
            leaf = (node.attrs.get("leaf") if node is not None else None)
            group[k] = int(leaf) if leaf is not None else k // leaf_hosts
        p = len(topo.ranks)
        self.host = np.fromiter((hidx[r.host] for r in topo.ranks), np.int64, count=p)
        nic_of = np.empty(p, np.int64)
        self.nics_per_host = min((len(v) for v in nics.values()), default=1) or 1
        for r in topo.ranks:
            names = nics.get(r.host) or [None]
            nic_of[r.rank] = names.index(r.nic) if r.nic in names else r.rank % len(names)
        width = max((len(v) for v in nics.values()), default=1) or 1
        self.nic = self.host * width + nic_of                   # a global NIC id
        g = group[self.host]
        self.leaf = g * width + nic_of if rail else g           # the switch a rank's NIC plugs into
        self.pod = g // pod_leaves
        # ports per leaf and per pod, in NIC units (ranks sharing a NIC count once): the capacity
        # of their uplinks before oversubscription
        uniq = np.unique(self.nic)
        self._leaf_ports = np.bincount(_first_of(self.nic, self.leaf, uniq), minlength=self.leaf.max() + 1)
        self._pod_ports = np.bincount(_first_of(self.nic, self.pod, uniq), minlength=self.pod.max() + 1)

    def describe(self) -> str:
        text = (f"{self.tiers}-tier network, {self.nics_per_host} NIC(s) per host, "
                f"{len(self._leaf_ports)} leaf switch(es), oversubscription {self.over:g}:1")
        if self.tiers >= 3:
            text += f", {len(self._pod_ports)} pod(s) at {self.pod_over:g}:1"
        return text

    def share(self, src, dst) -> float:
        """How many times slower each of these concurrent streams (rank arrays src -> dst) runs than
        alone on its NIC: the most loaded NIC, leaf uplink or pod uplink sets it (>= 1; 0 when no
        stream leaves its host)."""
        src = np.asarray(src, np.int64)
        dst = np.asarray(dst, np.int64)
        out = self.host[src] != self.host[dst]
        if not out.any():
            return 0.0                          # nothing leaves a host: no network link is used
        s, d = src[out], dst[out]
        worst = max(np.bincount(self.nic[s]).max(), np.bincount(self.nic[d]).max())
        up = self.leaf[s] != self.leaf[d]
        if up.any():
            need = np.bincount(self.leaf[s][up], minlength=len(self._leaf_ports))
            cap = self._leaf_ports / self.over
            worst = max(worst, float((need / np.maximum(cap, 1e-9)).max()))
            if self.tiers >= 3:
                top = self.pod[s] != self.pod[d]
                if top.any():
                    need = np.bincount(self.pod[s][top], minlength=len(self._pod_ports))
                    cap = self._pod_ports / (self.over * self.pod_over)
                    worst = max(worst, float((need / np.maximum(cap, 1e-9)).max()))
        return max(1.0, float(worst))


def _first_of(keys, values, uniq):
    """values at the first position of each of uniq in keys."""
    order = np.argsort(keys, kind="stable")
    pos = np.searchsorted(keys[order], uniq)
    return values[order[pos]]


def of(topo) -> Fabric | None:
    """The fabric of a topology whose ``net`` node describes one, else None."""
    net = topo.nodes.get("net")
    attrs = net.attrs if net is not None else {}
    if not attrs or not attrs.get("tiers") or len(topo.hosts()) < 2:
        return None
    return Fabric(topo, attrs)
