"""Choose the transport for every pair of ranks.

Each transport scores a pair (0 = cannot connect it); the highest score wins. The scores encode the
link-class order self > c2c (40: same host, single copy) > shm (30: same host, staged) > rdma (20)
> tcp (10: anything reachable); see SCORES. ``HETCCL_TRANSPORTS``
restricts the candidates: ``tcp`` or ``shm,tcp`` (a list: only these), ``^shm`` (all but these).
Every rank computes the same matrix from the same gathered rank cards, so no agreement step is needed:
what a rank can use is on its card (``transports``: its filter and the transports available to it,
topology/cards.py), a pair is chosen only among transports both ends have, and scores read both
cards, never the local process. A HETCCL_TRANSPORTS that differs between ranks is an error naming
them (every rank raises the same one).

The topology model (topology/model.py) caps each pair: a transport may not be of a faster link class
than the model gives the pair (self > c2c > shm > rdma > tcp). So ranks that a topology file puts on
different hosts use tcp even when they share a machine, while shared memory still needs a real shared
host (its score is 0 otherwise).
"""
from ..errors import InvalidUsage

# the score each transport gives a pair it can link (0 where it cannot); 'self' is the diagonal
SCORES = {"c2c": 40, "shm": 30, "rdma": 20, "tcp": 10}


def parse_filter(spec: str | None, known: list[str]) -> list[str]:
    """The transports allowed by a HETCCL_TRANSPORTS value, in preference order."""
    if not spec:
        return list(known)
    spec = spec.strip()
    exclude = spec.startswith("^")
    names = [n.strip() for n in spec.lstrip("^").split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidUsage(f"HETCCL_TRANSPORTS names unknown transport(s) {', '.join(unknown)}; "
                           f"known: {', '.join(known)} (use e.g. 'tcp', 'shm,tcp' or '^shm')")
    if exclude:
        return [n for n in known if n not in names]
    return names


CLASS_RANK = {"self": 0, "c2c": 1, "shm": 2, "rdma": 3, "tcp": 4}


def check_same_filter(cards) -> None:
    """Every card that says which HETCCL_TRANSPORTS it runs with must say the same (the choice of a
    pair would otherwise differ between its two ends); the error names the ranks that differ."""
    seen = {}                              # allowed set -> (the filters that gave it, ranks)
    for k, c in enumerate(cards):
        t = c.get("transports")
        if t is not None:
            filters, ranks = seen.setdefault(tuple(t.get("allowed", ())), (set(), []))
            filters.add(t.get("filter", ""))
            ranks.append(c.get("rank", k))
    if len(seen) > 1:
        parts = "; ".join(f"rank(s) {', '.join(map(str, r))}: {' or '.join(map(repr, sorted(f)))}"
                          for f, r in seen.values())
        raise InvalidUsage(f"HETCCL_TRANSPORTS differs between ranks ({parts}); set the same value "
                           f"(or the same init(transports=...)) on every rank")


def available_on(card, transports) -> set[str]:
    """The transports a rank can use, from its card; a card without the ``transports`` field (a
    local preview such as `hetccl doctor`'s) stands for this process."""
    t = card.get("transports")
    if t is not None:
        return set(t.get("available", {}))
    return {x.name for x in transports if x.available()}


def transport_matrix(cards, transports, spec: str | None, model=None) -> list[list[str]]:
    """matrix[i][j] = name of the transport linking ranks i and j ('self' on the diagonal)."""
    allowed = parse_filter(spec, [t.name for t in transports])
    check_same_filter(cards)
    usable = [t for t in transports if t.name in allowed]
    have = [available_on(c, usable) for c in cards]
    n = len(cards)
    m = [["self"] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            best, best_score = None, 0
            cap = CLASS_RANK.get(model.pair_class(i, j), 0) if model is not None else 0
            for t in usable:
                if t.name not in have[i] or t.name not in have[j]:
                    continue                       # one end cannot use it
                if CLASS_RANK.get(t.name, 0) < cap:
                    continue                       # faster than the model allows this pair
                s = t.score(cards[i], cards[j])
                if s > best_score:
                    best, best_score = t, s
            if best is None:
                missing = [f"rank {k} has no {t.name}" for t in usable for k in (i, j) if t.name not in have[k]]
                raise InvalidUsage(f"no allowed transport can link rank {i} ({cards[i]['host']}) and "
                                   f"rank {j} ({cards[j]['host']}); HETCCL_TRANSPORTS={spec!r} allows "
                                   f"{', '.join(allowed) or 'nothing'}"
                                   + (f" ({'; '.join(missing)})" if missing else "")
                                   + " — allow 'tcp' to link any pair")
            m[i][j] = m[j][i] = best.name
    return m


def format_matrix(matrix) -> str:
    """The transport matrix as a small table, for comm.describe() and `hetccl doctor`."""
    n = len(matrix)
    w = max(4, max(len(x) for row in matrix for x in row))
    head = "rank " + " ".join(f"{j:>{w}}" for j in range(n))
    rows = [f"{i:>4} " + " ".join(f"{matrix[i][j]:>{w}}" for j in range(n)) for i in range(n)]
    return "\n".join([head] + rows)


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
