"""Orders and shapes drawn from the topology model: the ring order that keeps neighbours on the
fastest links, the coordinates of the hierarchy levels (host, island, index), and how many streams
of a flat schedule share a host's network link.

Every rank computes them from the same model (topology/model.py), so they agree without an
exchange. The transport per pair is transports/matrix.py's.
"""


def ring_order(topo) -> list[int]:
    """Ranks in an order whose ring keeps neighbours on the fastest links: grouped by host (hosts
    in order of their first rank), inside a host by island, then by rank. The ring then crosses the
    network once per host, the fewest a ring through every host can."""
    order = []
    for h in topo.hosts():
        ranks = topo.ranks_on(h)
        for isl in topo.islands(h):
            order += [r for r in ranks if topo.island_of(r) == isl]
    return order


def _host_index(topo):
    """Every rank's host as a small integer (numpy), so the loads below count 100,000 ranks fast."""
    import numpy as np
    ids = {h: k for k, h in enumerate(topo.hosts())}
    return np.fromiter((ids[r.host] for r in topo.ranks), dtype=np.int64, count=len(topo.ranks))


def ring_uplink_load(topo, order) -> int:
    """How many ring edges leave the busiest host: a ring in ``order`` runs every edge at once, so a
    host's network link is shared by that many streams (1 for a topology-ordered ring)."""
    import numpy as np
    if len(order) < 2:
        return 0
    h = _host_index(topo)[np.asarray(order, dtype=np.int64)]
    nxt = np.roll(h, -1)
    out = h[h != nxt]
    return int(np.bincount(out).max()) if out.size else 0


def rd_step_loads(topo) -> list[int]:
    """For recursive doubling in rank order, per step (distance 1, 2, 4, ...): the most ranks of
    one host that exchange with another host in that step (0: the step stays inside hosts)."""
    import numpy as np
    p = len(topo.ranks)
    h = _host_index(topo)
    r = np.arange(p, dtype=np.int64)
    loads, d = [], 1
    while d < p:
        q = r ^ d
        ok = q < p
        cross = np.zeros(p, dtype=bool)
        cross[ok] = h[ok] != h[q[ok]]
        loads.append(int(np.bincount(h[cross]).max()) if cross.any() else 0)
        d <<= 1
    return loads


def rd_uplink_load(topo) -> int:
    """The same for recursive doubling in rank order: the most ranks of one host that exchange with
    another host in the same step."""
    return max(rd_step_loads(topo), default=0)


def hierarchy(topo):
    """Coordinates (host, island, index in island) of every rank, or None when the shape is not
    regular (hosts with different rank counts, or islands of different sizes: then only a flat or
    2-level form applies). Islands are dropped (one island per host) unless every host has the same
    number of equal islands."""
    hosts = topo.hosts()
    per_host = [topo.ranks_on(h) for h in hosts]
    if len({len(x) for x in per_host}) != 1:
        return None
    coords = [None] * len(topo.ranks)
    shapes = set()
    for h, ranks in enumerate(per_host):
        isl = topo.islands(hosts[h])
        groups = [[r for r in ranks if topo.island_of(r) == i] for i in isl]
        shapes.add(tuple(len(g) for g in groups))
    three = len(shapes) == 1 and len(next(iter(shapes))) > 1 and len(set(next(iter(shapes)))) == 1
    for h, ranks in enumerate(per_host):
        if three:
            isl = topo.islands(hosts[h])
            for i, name in enumerate(isl):
                for j, r in enumerate(r for r in ranks if topo.island_of(r) == name):
                    coords[r] = (h, i, j)
        else:
            for j, r in enumerate(ranks):
                coords[r] = (h, 0, j)
    return coords
