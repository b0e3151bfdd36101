"""The rooted collectives: reduce, gather and scatter (and the v forms).

reduce: binomial tree (latency), reduce_scatter + gather (Rabenseifner's reduce, bandwidth); ``n`` is
the bytes of the buffer. gather and scatter: linear, the root talks to every rank in turn; ``n`` is
the bytes of the root's whole buffer.
"""
from .algorithm import ALGO_BINOMIAL, ALGO_LINEAR, ALGO_RS_GATHER, Algorithm, one_way, tree_levels
from .reduce_scatter import recursive_halving


def binomial(n, p, c):
    """log2 p one-way steps of the whole buffer: the child's copy into the FIFO and the parent's
    reduction out of it run at once in two processes, so a step costs the parent's pass plus the
    reduction (measured at 2 ranks, 128 MiB: 0.74 beta per byte). Each level's bytes cost what its
    working ranks pay (tree_levels: on 4 ranks sharing 2 CPUs the last level has two at work)."""
    return tree_levels(n, p, c, lambda s: one_way(s) + s.gamma)


def reduce_scatter_gather(n, p, c):
    """Recursive-halving reduce_scatter, then a binomial gather of the (p-1)/p n reduced bytes to
    the root (one way, each level's subtree priced on its working ranks): wins at many ranks,
    where binomial moves n log2 p."""
    if p == 1:
        return 0.0
    return recursive_halving(n, p, c) + tree_levels(n, p, c, one_way, share=True)


def linear(n, p, c):
    return (p - 1) * (c.alpha + n / p * c.beta) if p > 1 else 0.0


ALGORITHMS = [
    Algorithm("binomial", "reduce", ALGO_BINOMIAL, binomial),
    Algorithm("reduce_scatter_gather", "reduce", ALGO_RS_GATHER, reduce_scatter_gather),
    Algorithm("linear", "gather", ALGO_LINEAR, linear),
    Algorithm("linear", "scatter", ALGO_LINEAR, linear),
]

ALIASES = {"rs_gather": "reduce_scatter_gather"}
