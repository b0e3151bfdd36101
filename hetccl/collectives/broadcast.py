"""broadcast: binomial tree (latency), pipelined chain and scatter + allgather (van de Geijn,
bandwidth). ``n`` is the bytes of the buffer."""
from .algorithm import (ALGO_BINOMIAL, ALGO_CHAIN, ALGO_SCATTER_ALLGATHER, RELAY, Algorithm, log2_ceil,
                        one_way)


def binomial(n, p, c):
    """ceil(log2 p) levels, each a one-way transfer of the whole buffer received in full before it
    is sent on (store and forward)."""
    return log2_ceil(p) * (c.alpha + n * one_way(c))


def chain(n, p, c):
    """root -> root+1 -> ...: each relay forwards what has arrived (engine chunks, FIFO to FIFO), so
    the pace is one relay's per byte (RELAY over FIFOs; a full-duplex wire relays at wire speed),
    after p-1 hops of latency. The fill (one chunk per hop) is cache-resident and not priced:
    measured, the chain's time per byte is the same from 32 KiB to 512 KiB at 4 ranks."""
    if p == 1:
        return 0.0
    per_byte = one_way(c) if p == 2 else (RELAY * c.beta if c.fifo else c.beta)
    return (p - 1) * c.alpha + n * per_byte


def scatter_allgather(n, p, c):
    """van de Geijn: a binomial scatter (the root sends (p-1)/p n one way, in log2 p levels), then a
    ring allgather of the blocks ((p-1)/p n crossing, p-1 steps)."""
    if p == 1:
        return 0.0
    f = (p - 1) / p
    return (log2_ceil(p) + p - 1) * c.alpha + f * n * (one_way(c) + c.beta)


ALGORITHMS = [
    Algorithm("binomial", "broadcast", ALGO_BINOMIAL, binomial),
    Algorithm("chain", "broadcast", ALGO_CHAIN, chain),
    Algorithm("scatter_allgather", "broadcast", ALGO_SCATTER_ALLGATHER, scatter_allgather),
]

ALIASES = {"van_de_geijn": "scatter_allgather", "pipeline": "chain"}
