"""broadcast: binomial tree (latency), pipelined chain and scatter + allgather (van de Geijn,
bandwidth). ``n`` is the bytes of the buffer."""
from .algorithm import (ALGO_BINOMIAL, ALGO_CHAIN, ALGO_SCATTER_ALLGATHER, RELAY, Algorithm, binomial_levels,
                        one_way, tree_levels)


def binomial(n, p, c):
    """ceil(log2 p) levels, each a one-way transfer of the whole buffer received in full before it
    is sent on (store and forward); a level's bytes cost what its working ranks pay (tree_levels:
    on 3 ranks sharing 2 CPUs no level has more than two at work, while a chain keeps all three)."""
    return tree_levels(n, p, c, one_way)


def chain(n, p, c):
    """root -> root+1 -> ...: each relay forwards what has arrived (engine chunks, FIFO to FIFO), so
    the pace is one relay's per byte (RELAY over FIFOs; a full-duplex wire relays at wire speed),
    after p-1 hops of latency. The fill (one chunk per hop) is cache-resident and not priced:
    measured, the chain's time per byte is the same from 32 KiB to 512 KiB at 4 ranks.

    With more ranks than CPUs the probe times the chain itself (LinkCost.beta_chain, in cache
    and far out of it, beside the binomial broadcasts of beta_free): its ranks work unequally
    and take turns on the CPUs, which neither a relay's pace nor the ring's beta describes (4
    ranks on 2 CPUs: 0.52-0.65 beta per byte from 2 MiB on, against RELAY's 0.75). Where no level
    of the binomial tree has more ranks at work than there are CPUs (3 ranks on 2), the chain is
    priced no cheaper per byte than its busiest CPU's passes at that tree's rate (chain_floor)."""
    if p == 1:
        return 0.0
    if p == 2:
        per_byte = one_way(c)
    elif not c.fifo:
        per_byte = c.beta
    elif c.beta_chain > 0 and c.share > 1:
        per_byte = max(c.beta_chain, chain_floor(p, c))
    else:
        per_byte = RELAY * c.beta
    return (p - 1) * c.alpha + n * per_byte


def busiest_cpu(p, cpus) -> float:
    """Passes per byte of the chain's busiest CPU: the root and the last rank make one pass per
    byte, each relay 2 x RELAY (its fused forward and the copy to its output); a rank runs on one
    CPU at a time, so the ranks go whole onto the CPUs, the heaviest first onto the least loaded."""
    load = [0.0] * max(1, cpus)
    for w in sorted([1.0, 1.0] + [2 * RELAY] * (p - 2), reverse=True):
        load[load.index(min(load))] += w
    return max(load)


def chain_floor(p, c) -> float:
    """The least a chain's byte costs on crowded CPUs where the binomial tree never crowds them
    (every level's working ranks at most the CPUs, p / share; else 0: the measured beta_chain
    stands): its busiest CPU's passes (busiest_cpu), each at best at the rate of a rank with a
    CPU to itself, beta_free / 2 per pass (beta_free counts a byte's two passes, one per side).
    On 3 ranks sharing 2 CPUs that is 2 passes, the tree's own two levels of one pass per side:
    the chain keeps all three ranks at work on the 2 CPUs, the tree never more than two, so it is
    priced no cheaper (measured, the tree was as fast from 2 KiB to 8 MiB and 1.10-1.28x faster
    at 8 B-512 B and 32 MiB in the runs since 2026-12-06, bench/results/crossover-*)."""
    cpus = max(1, round(p / c.share))
    if c.beta_free <= 0 or max(busy for busy, _ in binomial_levels(p)) > cpus:
        return 0.0
    return busiest_cpu(p, cpus) * c.beta_free / 2


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
