"""broadcast: binomial tree (latency), pipelined chain and scatter + allgather (van de Geijn,
bandwidth). ``n`` is the bytes of the buffer."""
from .algorithm import (ALGO_BINOMIAL, ALGO_CHAIN, ALGO_SCATTER_ALLGATHER, RELAY, Algorithm, one_way,
                        tree_levels)


def binomial(n, p, c):
    """ceil(log2 p) levels, each a one-way transfer of the whole buffer received in full before it
    is sent on (store and forward); a level's bytes cost what its working ranks pay (tree_levels:
    on 3 ranks sharing 2 CPUs no level has more than two at work, while a chain keeps all three)."""
    return tree_levels(n, p, c, one_way)


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
    """van de Geijn: a binomial scatter (the root sends (p-1)/p n one way, in log2 p levels, each
    level's subtree priced on its working ranks), then a ring allgather of the blocks ((p-1)/p n
    crossing, p-1 steps, every rank at work)."""
    if p == 1:
        return 0.0
    return tree_levels(n, p, c, one_way, share=True) + (p - 1) * c.alpha + (p - 1) / p * n * c.beta


ALGORITHMS = [
    Algorithm("binomial", "broadcast", ALGO_BINOMIAL, binomial),
    Algorithm("chain", "broadcast", ALGO_CHAIN, chain),
    Algorithm("scatter_allgather", "broadcast", ALGO_SCATTER_ALLGATHER, scatter_allgather),
]

ALIASES = {"van_de_geijn": "scatter_allgather", "pipeline": "chain"}
