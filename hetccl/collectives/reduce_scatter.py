"""reduce_scatter (and reduce_scatterv): ring (bandwidth), recursive halving (latency, any N).

``n`` is the bytes of the whole input.
"""
from .algorithm import ALGO_RECURSIVE_HALVING, ALGO_RING, EXCHANGE, Algorithm, log2_ceil, pof2_below


def ring(n, p, c):
    return (p - 1) * c.alpha + (p - 1) / p * n * (c.beta + c.gamma) if p > 1 else 0.0


def recursive_halving(n, p, c):
    """log2 q exchanges of halving windows (q the power of two below p); a non-power of two first
    folds whole inputs in (n bytes moved and reduced) and sends the folded ranks their block."""
    if p == 1:
        return 0.0
    q = pof2_below(p)
    f = (q - 1) / q
    t = log2_ceil(q) * c.alpha + f * n * (EXCHANGE * c.beta + c.gamma)
    if q != p:
        t += 2 * c.alpha + n * (c.beta + c.gamma) + n / p * c.beta
    return t


ALGORITHMS = [
    Algorithm("ring", "reduce_scatter", ALGO_RING, ring),
    Algorithm("recursive_halving", "reduce_scatter", ALGO_RECURSIVE_HALVING, recursive_halving),
]

ALIASES = {"rh": "recursive_halving", "halving": "recursive_halving"}
