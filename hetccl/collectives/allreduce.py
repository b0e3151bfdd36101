"""allreduce: ring (bandwidth), recursive doubling and Rabenseifner (latency), double binary tree.

``n`` is the bytes of the buffer. Non-powers of two fold their extra ranks in and out (two more
messages of the whole buffer) for recursive doubling and Rabenseifner.
"""
from .algorithm import (ALGO_DBTREE, ALGO_RABENSEIFNER, ALGO_RD, ALGO_RING, Algorithm, log2_ceil,
                        pof2_below)


def _fold(n, p, c):
    return 0.0 if pof2_below(p) == p else 2 * (c.alpha + n * c.beta) + n * c.gamma


def ring(n, p, c):
    if p == 1:
        return 0.0
    return 2 * (p - 1) * c.alpha + 2 * (p - 1) / p * n * c.beta + (p - 1) / p * n * c.gamma


def recursive_doubling(n, p, c):
    if p == 1:
        return 0.0
    pof2 = pof2_below(p)
    fold = 0 if pof2 == p else 2 * (c.alpha + n * c.beta)
    return log2_ceil(pof2) * (c.alpha + n * (c.beta + c.gamma)) + fold


def rabenseifner(n, p, c):
    """Reduce-scatter by halving, allgather by doubling: 2 log2 p messages, 2 (q-1)/q n bytes
    (q the power of two that remains), every step a separate unpipelined exchange."""
    if p == 1:
        return 0.0
    q = pof2_below(p)
    f = (q - 1) / q
    return 2 * log2_ceil(q) * c.alpha + 2 * f * n * c.beta + f * n * c.gamma + _fold(n, p, c)


def _tree_slice(n, p):
    """The double tree's pipelining unit (trees.pyx tree_slice)."""
    top = (1 << 20) if p <= 4 else (256 << 10)
    return max(64 << 10, min(top, n // 16))


def double_binary_tree(n, p, c):
    """Two trees of depth ~log2 p, each reducing half up and broadcasting it down, pipelined in
    slices: fill and drain cost the depth in slices, and every rank sends and receives each byte
    about twice (once up, once down), one message per slice and tree."""
    if p == 1:
        return 0.0
    depth = log2_ceil(p)
    sl = min(_tree_slice(n, p), n / 2) if n else 0
    slices = max(1, -(-n // 2 // max(sl, 1)))
    return (2 * depth * (c.alpha + sl * c.beta) + 2 * slices * 2 * c.alpha
            + 2 * n * c.beta + n * c.gamma)


ALGORITHMS = [
    Algorithm("ring", "allreduce", ALGO_RING, ring),
    Algorithm("recursive_doubling", "allreduce", ALGO_RD, recursive_doubling),
    Algorithm("rabenseifner", "allreduce", ALGO_RABENSEIFNER, rabenseifner),
    Algorithm("double_binary_tree", "allreduce", ALGO_DBTREE, double_binary_tree),
]

ALIASES = {"rd": "recursive_doubling", "dbtree": "double_binary_tree", "tree": "double_binary_tree"}
