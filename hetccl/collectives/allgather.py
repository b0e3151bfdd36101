"""allgather (and allgatherv): ring (bandwidth), recursive doubling (powers of two), Bruck (any N).

``n`` is the bytes of the whole output, as nccl-tests count it.
"""
from .algorithm import ALGO_BRUCK, ALGO_RD, ALGO_RING, Algorithm, exchange, is_pof2, log2_ceil


def ring(n, p, c):
    """p-1 steps, (p-1)/p n bytes crossing each rank's links: what the probe's beta is measured on."""
    return (p - 1) * c.alpha + (p - 1) / p * n * c.beta if p > 1 else 0.0


def recursive_doubling(n, p, c):
    """log2 p exchanges moving the same (p-1)/p n bytes as the ring, in fewer steps; each step
    lands in memory (see EXCHANGE: from stream_min on, or when its last step of n/2 outgrows a FIFO)."""
    return log2_ceil(p) * c.alpha + (p - 1) / p * n * exchange(n, n / 2, c) if p > 1 else 0.0


def bruck(n, p, c):
    """ceil(log2 p) exchanges like recursive doubling, for any p (the last step of a non-power of
    two sends only p - 2^k blocks), each a message of up to two segments per side; the blocks stay
    in rotated positions, so no local rotation copies."""
    return log2_ceil(p) * c.alpha + (p - 1) / p * n * exchange(n, n / 2, c) if p > 1 else 0.0


ALGORITHMS = [
    Algorithm("ring", "allgather", ALGO_RING, ring),
    Algorithm("recursive_doubling", "allgather", ALGO_RD, recursive_doubling,
              supports=lambda n, p: is_pof2(p)),
    Algorithm("bruck", "allgather", ALGO_BRUCK, bruck),
    Algorithm("ring", "allgatherv", ALGO_RING, ring),
]

ALIASES = {"rd": "recursive_doubling"}
