"""reduce: binomial tree (latency), reduce_scatter + gather (Rabenseifner's reduce, bandwidth).

``n`` is the bytes of the buffer.
"""
from .algorithm import ALGO_BINOMIAL, ALGO_RS_GATHER, Algorithm, log2_ceil
from .reduce_scatter import recursive_halving


def binomial(n, p, c):
    return log2_ceil(p) * (c.alpha + n * (c.beta + c.gamma))


def reduce_scatter_gather(n, p, c):
    """Recursive-halving reduce_scatter, then a binomial gather of the (p-1)/p n reduced bytes."""
    if p == 1:
        return 0.0
    return recursive_halving(n, p, c) + log2_ceil(p) * c.alpha + (p - 1) / p * n * c.beta


ALGORITHMS = [
    Algorithm("binomial", "reduce", ALGO_BINOMIAL, binomial),
    Algorithm("reduce_scatter_gather", "reduce", ALGO_RS_GATHER, reduce_scatter_gather),
]

ALIASES = {"rs_gather": "reduce_scatter_gather"}
