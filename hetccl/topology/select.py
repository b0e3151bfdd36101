"""Choose the transport for every pair of ranks.

Each transport scores a pair (0 = cannot connect it); the highest score wins. The scores encode the
link-class order self > c2c (40: same host, single copy) > shm (30: same host, staged) > rdma (20)
> tcp (10: anything reachable); see SCORES. ``HETCCL_TRANSPORTS``
restricts the candidates: ``tcp`` or ``shm,tcp`` (a list: only these), ``^shm`` (all but these).
Every rank computes the same matrix from the same gathered rank cards, so no agreement step is needed.
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


def transport_matrix(cards, transports, spec: str | None) -> list[list[str]]:
    """matrix[i][j] = name of the transport linking ranks i and j ('self' on the diagonal)."""
    allowed = parse_filter(spec, [t.name for t in transports])
    usable = [t for t in transports if t.name in allowed and t.available()]
    n = len(cards)
    m = [["self"] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            best, best_score = None, 0
            for t in usable:
                s = t.score(cards[i], cards[j])
                if s > best_score:
                    best, best_score = t, s
            if best is None:
                raise InvalidUsage(f"no allowed transport can link rank {i} ({cards[i]['host']}) and "
                                   f"rank {j} ({cards[j]['host']}); HETCCL_TRANSPORTS={spec!r} allows "
                                   f"{', '.join(allowed) or 'nothing'} — allow 'tcp' to link any pair")
            m[i][j] = m[j][i] = best.name
    return m


def format_matrix(matrix) -> str:
    """The transport matrix as a small table, for comm.describe() and `hetccl doctor`."""
    n = len(matrix)
    w = max(4, max(len(x) for row in matrix for x in row))
    head = "rank " + " ".join(f"{j:>{w}}" for j in range(n))
    rows = [f"{i:>4} " + " ".join(f"{matrix[i][j]:>{w}}" for j in range(n)) for i in range(n)]
    return "\n".join([head] + rows)
