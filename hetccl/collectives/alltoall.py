"""alltoall: pairwise exchange (bandwidth, also alltoallv), Bruck (latency, equal blocks, any N).

``n`` is the bytes each rank sends in all.
"""
from .algorithm import ALGO_BRUCK, ALGO_PAIRWISE, Algorithm, exchange, log2_ceil, pair_exchange


WINDOW = 4      # exchanges the pairwise schedule keeps under way at once (_native/linear.pyx WINDOW)


def pairwise(n, p, c):
    """p-1 exchanges of one block each way, after copying this rank's own block, up to WINDOW of
    them under way at once: their latencies overlap (one per WINDOW exchanges), their bytes do
    not (the copies share the rank's memory bandwidth). At 2 ranks that is recursive doubling's
    allgather schedule (copy one half, swap the other), priced alike (pair_exchange; measured at
    128 MiB: 28-37 ms against 31 ms for that allgather)."""
    if p == 2:
        return c.alpha + n / 2 * pair_exchange(n, c)
    if p < 2:
        return 0.0
    return -(-(p - 1) // WINDOW) * c.alpha + (p - 1) * n / p * c.beta


def bruck(n, p, c):
    """ceil(log2 p) exchanges of about half the blocks each (a block hops once per set bit of its
    distance, through scratch): k n / 2 bytes sent per rank, against (p-1)/p n for pairwise. At
    2 ranks the one block lands straight in the output: pairwise's schedule, priced alike (the tie
    goes to pairwise, listed first; measured within 3% of it at 512 KiB-128 MiB)."""
    if p == 1:
        return 0.0
    if p == 2:
        return pairwise(n, p, c)
    k = log2_ceil(p)
    return k * c.alpha + k * n / 2 * exchange(n, n / 2, c)


ALGORITHMS = [
    Algorithm("pairwise", "alltoall", ALGO_PAIRWISE, pairwise),
    Algorithm("bruck", "alltoall", ALGO_BRUCK, bruck, distances=True),
]

ALIASES = {}
