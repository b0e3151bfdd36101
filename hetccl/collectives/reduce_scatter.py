"""reduce_scatter (and reduce_scatterv): ring (bandwidth), recursive halving (latency, any N).

``n`` is the bytes of the whole input.
"""
from .algorithm import (ALGO_RECURSIVE_HALVING, ALGO_RING, Algorithm, exchange, folding, log2_ceil,
                        one_way, pof2_below, ring_rs_bytes)


def ring(n, p, c):
    """p-1 steps; over FIFOs the relays reduce straight into the next FIFO (ring_rs_bytes)."""
    return (p - 1) * c.alpha + ring_rs_bytes(n, p, c) + (p - 1) / p * n * c.gamma if p > 1 else 0.0


def recursive_halving(n, p, c):
    """log2 q exchanges of halving windows (q the power of two below p), each reduced into scratch;
    a non-power of two first folds whole inputs in (one-way, n bytes reduced) and sends the folded
    ranks their block at the end (one-way, n/p bytes), priced on the ranks it keeps at work
    (algorithm.folding)."""
    if p == 1:
        return 0.0
    q = pof2_below(p)
    f = (q - 1) / q
    t = log2_ceil(q) * c.alpha + f * n * (exchange(n, n / 2, c) + c.gamma)
    if q != p:
        fold = folding(c, p)
        t += 2 * c.alpha + n * (one_way(fold) + c.gamma) + n / p * one_way(fold)
    return t


ALGORITHMS = [
    Algorithm("ring", "reduce_scatter", ALGO_RING, ring),
    Algorithm("recursive_halving", "reduce_scatter", ALGO_RECURSIVE_HALVING, recursive_halving),
]

ALIASES = {"rh": "recursive_halving", "halving": "recursive_halving"}
