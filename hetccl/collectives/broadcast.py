"""broadcast: binomial tree (latency), pipelined chain and scatter + allgather (van de Geijn,
bandwidth). ``n`` is the bytes of the buffer."""
from .algorithm import ALGO_BINOMIAL, ALGO_CHAIN, ALGO_SCATTER_ALLGATHER, SLICE, Algorithm, log2_ceil


def binomial(n, p, c):
    return log2_ceil(p) * (c.alpha + n * c.beta)


def chain(n, p, c):
    if p == 1:
        return 0.0
    sl = min(n, SLICE) or 1
    return (p - 1) * c.alpha + n * c.beta + (p - 2) * (c.alpha + sl * c.beta)


def scatter_allgather(n, p, c):
    if p == 1:
        return 0.0
    return (log2_ceil(p) + p - 1) * c.alpha + 2 * (p - 1) / p * n * c.beta


ALGORITHMS = [
    Algorithm("binomial", "broadcast", ALGO_BINOMIAL, binomial),
    Algorithm("chain", "broadcast", ALGO_CHAIN, chain),
    Algorithm("scatter_allgather", "broadcast", ALGO_SCATTER_ALLGATHER, scatter_allgather),
]

ALIASES = {"van_de_geijn": "scatter_allgather", "pipeline": "chain"}
