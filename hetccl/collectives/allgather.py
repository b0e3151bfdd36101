"""allgather (and allgatherv): ring (bandwidth), recursive doubling (powers of two), Bruck (any N).

``n`` is the bytes of the whole output, as nccl-tests count it.
"""
from .algorithm import ALGO_BRUCK, ALGO_RD, ALGO_RING, Algorithm, is_pof2, log2_ceil


def ring(n, p, c):
    return (p - 1) * c.alpha + (p - 1) / p * n * c.beta if p > 1 else 0.0


def recursive_doubling(n, p, c):
    # each step stages through the FIFO twice and is not pipelined, unlike the fused ring: 1.5x beta
    # (measured at 4 ranks: ring 1.2x faster at 8 MiB, 1.6x at 64 MiB, even at 128 KiB)
    return log2_ceil(p) * c.alpha + 1.5 * (p - 1) / p * n * c.beta if p > 1 else 0.0


def bruck(n, p, c):
    """ceil(log2 p) exchanges like recursive doubling, unpipelined too, for any p; the last step
    of a non-power of two is partial (sends p - 2^k blocks)."""
    return log2_ceil(p) * c.alpha + 1.5 * (p - 1) / p * n * c.beta if p > 1 else 0.0


ALGORITHMS = [
    Algorithm("ring", "allgather", ALGO_RING, ring),
    Algorithm("recursive_doubling", "allgather", ALGO_RD, recursive_doubling,
              supports=lambda n, p: is_pof2(p)),
    Algorithm("bruck", "allgather", ALGO_BRUCK, bruck),
    Algorithm("ring", "allgatherv", ALGO_RING, ring),
]

ALIASES = {"rd": "recursive_doubling"}
