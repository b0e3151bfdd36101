"""Choose the transport for every pair of ranks.

Each transport scores a pair (0 = cannot connect it); the highest score wins. The scores are the
transports' declared preferences (transports/base.py), which encode the order self > c2c (same host,
single copy) > shm (same host, staged) > rdma > tcp (anything reachable). ``HETCCL_TRANSPORTS``
restricts the candidates: ``tcp`` or ``shm,tcp`` (a list: only these), ``^shm`` (all but these).
Every rank computes the same matrix from the same gathered rank cards, so no agreement step is needed:
what a rank can use is on its card (``transports``: its filter and the transports available to it,
``transports_entry``), a pair is chosen only among transports both ends have, and scores read both
cards, never the local process. A HETCCL_TRANSPORTS that differs between ranks is an error naming
them (every rank raises the same one).

The topology model (topology/model.py) caps each pair: a transport may not be of a faster link class
than the model gives the pair (``Transport.link_class`` against ``RANK_CLASSES``). So ranks that a
topology file puts on different hosts use a wire even when they share a machine, while shared memory
still needs a real shared host (its score is 0 otherwise).
"""
from ..errors import InvalidUsage
from ..topology.model import RANK_CLASSES

_CLASS_RANK = {c: k for k, c in enumerate(RANK_CLASSES)}      # fastest first


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


def class_rank(link_class: str) -> int:
    """Position of a link class in the model's order, fastest first (0: self)."""
    return _CLASS_RANK.get(link_class, 0)


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


def transports_entry(transports, spec: str | None) -> dict:
    """The ``transports`` field of this rank's card: the HETCCL_TRANSPORTS filter it runs with, and
    every transport it may and can use, with what that transport's score needs to know about this
    end (``Transport.card_info``). Availability belongs to each process (a rank without UCX has no
    rdma), so each pair is chosen from both ends' entries and every rank reaches the same choice."""
    allowed = parse_filter(spec, [t.name for t in transports])
    return {"filter": (spec or "").strip(), "allowed": sorted(allowed),
            "available": {t.name: t.card_info(allowed) for t in offered_here(transports, allowed)}}


def offered_here(transports, allowed: list[str]) -> list:
    """The transports this process offers its peers: allowed, worth offering (``Transport.offered``:
    one no pair could choose is not even loaded) and available here, or to be settled once the
    cards are known (``Transport.deferred``: not loaded yet)."""
    return [t for t in transports if t.name in allowed and t.offered(allowed)
            and (t.deferred(allowed) or t.available())]


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
            cap = class_rank(model.pair_class(i, j)) if model is not None else 0
            for t in usable:
                if t.name not in have[i] or t.name not in have[j]:
                    continue                       # one end cannot use it
                if class_rank(t.link_class) < cap:
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
                                   + _any_pair_hint(transports))
            m[i][j] = m[j][i] = best.name
    return m


def _any_pair_hint(transports) -> str:
    """' — allow X to link any pair', X the most preferred transport of the slowest link class
    (the one every pair can use)."""
    last = [t for t in transports if t.link_class == RANK_CLASSES[-1] and not t.same_host]
    return f" — allow {max(last, key=lambda t: t.preference).name!r} to link any pair" if last else ""


def format_matrix(matrix) -> str:
    """The transport matrix as a small table, for comm.describe() and `hetccl doctor`."""
    n = len(matrix)
    w = max(4, max(len(x) for row in matrix for x in row))
    head = "rank " + " ".join(f"{j:>{w}}" for j in range(n))
    rows = [f"{i:>4} " + " ".join(f"{matrix[i][j]:>{w}}" for j in range(n)) for i in range(n)]
    return "\n".join([head] + rows)
