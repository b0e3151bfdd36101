"""allreduce: ring (bandwidth), recursive doubling and Rabenseifner (latency), double binary tree.

``n`` is the bytes of the buffer. Non-powers of two fold their extra ranks in and out (two more
messages of the whole buffer) for recursive doubling and Rabenseifner.
"""
from .algorithm import (ALGO_DBTREE, ALGO_RABENSEIFNER, ALGO_RD, ALGO_RING, Algorithm, exchange,
                        exchange_rounds, folding, log2_ceil, one_way, overlaps, pof2_below,
                        ring_rs_bytes)


def _fold(n, p, c):
    """Non-powers of two: the extra ranks hand their whole buffer in (reduced on arrival) and get
    the result back: two one-way transfers of n bytes, priced on the ranks they keep at work
    (algorithm.folding)."""
    if pof2_below(p) == p:
        return 0.0
    return 2 * (c.alpha + n * one_way(folding(c, p))) + n * c.gamma


def ring(n, p, c):
    """A fused ring reduce-scatter (ring_rs_bytes) then a ring allgather ((p-1)/p n bytes crossing),
    2(p-1) steps; its receives stream their output from stream_min on (priced by the others).
    Where rounds overlap (a loopback wire on crowded CPUs, algorithm.overlaps), each step sends
    n/p to the next rank while the previous one's n/p arrives, an exchange round of its own."""
    if p == 1:
        return 0.0
    if overlaps(c):
        return exchange_rounds(c, [n / p] * (2 * (p - 1)), c.beta) + (p - 1) / p * n * c.gamma
    return (2 * (p - 1) * c.alpha + ring_rs_bytes(n, p, c) + (p - 1) / p * n * c.beta
            + (p - 1) / p * n * c.gamma)


def recursive_doubling(n, p, c):
    """log2 q exchanges of the whole buffer, each reduced on arrival (q the power of two below p)."""
    if p == 1:
        return 0.0
    k = log2_ceil(pof2_below(p))
    return exchange_rounds(c, [n] * k, exchange(n, n, c)) + k * n * c.gamma + _fold(n, p, c)


def rabenseifner(n, p, c):
    """Reduce-scatter by halving, allgather by doubling: 2 log2 q exchanges (q the power of two
    that remains after the fold) moving 2 (q-1)/q n bytes. With 2 ranks this is the ring's own
    schedule (two exchanges of n/2); from 3 ranks on, the ring's fused relays make it cheaper."""
    if p == 1:
        return 0.0
    q = pof2_below(p)
    f = (q - 1) / q
    halving = [n / 2 ** (k + 1) for k in range(log2_ceil(q))]       # the doubling mirrors them
    return exchange_rounds(c, halving * 2, exchange(n, n / 2, c)) + f * n * c.gamma + _fold(n, p, c)


def _tree_slice(n, p):
    """The double tree's pipelining unit (trees.pyx tree_slice: an eighth of a half)."""
    top = (1 << 20) if p <= 4 else (256 << 10)
    return max(64 << 10, min(top, n // 16))


def double_binary_tree(n, p, c):
    """Two trees of depth ~log2 p, each reducing half the data up and broadcasting it down in
    slices, one message per slice, tree and edge. The pipeline fills and drains over 2 x depth
    slices. An inner node (two children) receives and reduces both halves' worth (n bytes) on the
    way up and sends n on the way down, so a rank moves ~2n (n with 2 ranks: one child each)."""
    if p == 1:
        return 0.0
    depth = log2_ceil(p)
    sl = min(_tree_slice(n, p), n / 2)
    slices = max(1, -(-(n // 2) // max(int(sl), 1)))
    moved, reduced = (n, n / 2) if p == 2 else (2 * n, n)
    return (2 * depth * (c.alpha + sl * c.beta) + 2 * slices * c.alpha * min(p - 1, 3)
            + moved * c.beta + reduced * c.gamma)


ALGORITHMS = [
    Algorithm("ring", "allreduce", ALGO_RING, ring),
    Algorithm("recursive_doubling", "allreduce", ALGO_RD, recursive_doubling, distances=True),
    Algorithm("rabenseifner", "allreduce", ALGO_RABENSEIFNER, rabenseifner, distances=True),
    Algorithm("double_binary_tree", "allreduce", ALGO_DBTREE, double_binary_tree),
]

ALIASES = {"rd": "recursive_doubling", "dbtree": "double_binary_tree"}
