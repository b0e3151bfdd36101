"""Measure link bandwidths and latencies instead of trusting nominal speeds (`hetccl topo --measure`).

Per host, one pair of its ranks times the shared-memory path; per other host, one rank of it and
one of the first host time the network path. Each pair runs on a 2-rank sub-communicator (split is
collective, so every rank takes part in every split, in the same order), timing a broadcast of
``nbytes`` (one transfer over the link) and of 8 bytes (latency); the median of ``reps`` runs wins.
The results replace the model's links of those classes, marked ``measured``.
"""
import statistics
import time

import numpy as np

from .model import Link, Node, override


def _pairs(topo):
    """[(rank a, rank b, what)] in a fixed order: (host, 'shm') inside hosts, (host, 'net') across."""
    hosts = topo.hosts()
    out = []
    for h in hosts:
        rs = topo.ranks_on(h)
        if len(rs) > 1:
            out.append((rs[0], rs[1], (h, "shm")))
    for h in hosts[1:]:
        out.append((topo.ranks_on(hosts[0])[0], topo.ranks_on(h)[0], (h, "net")))
    if len(hosts) > 1:
        out.append((topo.ranks_on(hosts[1])[0], topo.ranks_on(hosts[0])[0], (hosts[0], "net")))
    return out


def _time_pair(sub, nbytes, reps):
    big, small = np.ones(nbytes, np.uint8), np.ones(8, np.uint8)
    sub.broadcast(big, root=0)                     # warm up: connect, fault the pages in
    bw, lat = [], []
    for _ in range(reps):
        sub.barrier()
        t = time.perf_counter()
        sub.broadcast(big, root=0)
        sub.barrier()
        bw.append(time.perf_counter() - t)
    for _ in range(reps * 10):
        sub.barrier()
        t = time.perf_counter()
        sub.broadcast(small, root=0)
        sub.barrier()
        lat.append(time.perf_counter() - t)
    one_barrier = min(lat) / 2                      # a barrier's round trip hides in both timings
    t_big = max(1e-9, statistics.median(bw) - one_barrier)
    return nbytes / t_big, max(1e-7, statistics.median(lat) / 2)


def measure(comm, topo, nbytes=16 << 20, reps=3):
    """Measure on ``comm`` (all its ranks call this); returns the topology with measured links."""
    results = np.zeros((len(_pairs(topo)), 2))
    for k, (a, b, _) in enumerate(_pairs(topo)):
        mine = comm.rank in (a, b)
        sub = comm.split(0 if mine else None, key=0 if comm.rank == a else 1)
        if sub is not None:
            results[k] = _time_pair(sub, nbytes, reps)
            sub.close()
        row = results[k].copy()
        comm.broadcast(row, root=a)
        results[k] = row
    links = list(topo.links)
    nodes = dict(topo.nodes)
    for (a, b, (host, what)), (bw, lat) in zip(_pairs(topo), results):
        if what == "shm":
            override(links, Link(f"host:{host}", f"host:{host}", "shm", float(bw), float(lat), True))
            continue
        rank = topo.ranks_on(host)[0]
        nic = topo.ranks[rank].nic or "net0"
        nid = f"nic:{host}/{nic}"
        if nid not in nodes:
            nodes[nid] = Node(nid, "nic", host)
        old = topo.uplink(host)
        if old is not None and old.a != nid and old.b != nid:
            links.remove(old)
        cls = topo.pair_class(a, b)
        keep = old if old is not None and old.burst is not None else None      # the shaper's bucket stays
        override(links, Link(nid, "net", cls, float(bw), float(lat), True,
                             keep.burst if keep else None, keep.peak if keep else None))
    from .model import Topology
    return Topology(nodes.values(), links, topo.ranks, source=topo.source + ", measured")
