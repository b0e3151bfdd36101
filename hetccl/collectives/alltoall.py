"""alltoall: pairwise exchange (bandwidth, also alltoallv), Bruck (latency, equal blocks, any N).

``n`` is the bytes each rank sends in all.
"""
from .algorithm import ALGO_BRUCK, ALGO_PAIRWISE, Algorithm, exchange, log2_ceil


def pairwise(n, p, c):
    return (p - 1) * (c.alpha + n / p * c.beta) if p > 1 else 0.0


def bruck(n, p, c):
    """ceil(log2 p) exchanges of about half the blocks each (a block hops once per set bit of its
    distance, through scratch): k n / 2 bytes sent per rank, against (p-1)/p n for pairwise."""
    if p == 1:
        return 0.0
    k = log2_ceil(p)
    return k * c.alpha + k * n / 2 * exchange(n, n / 2, c)


ALGORITHMS = [
    Algorithm("pairwise", "alltoall", ALGO_PAIRWISE, pairwise),
    Algorithm("bruck", "alltoall", ALGO_BRUCK, bruck),
]

ALIASES = {}
