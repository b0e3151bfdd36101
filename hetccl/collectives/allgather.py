"""allgather (and allgatherv): ring (bandwidth), recursive doubling (powers of two), Bruck (any N).

``n`` is the bytes of the whole output, as nccl-tests count it.
"""
from .algorithm import (ALGO_BRUCK, ALGO_RD, ALGO_RING, RING_PAIR, Algorithm, exchange, is_pof2,
                        log2_ceil, pair_exchange)


def ring(n, p, c):
    """p-1 steps, (p-1)/p n bytes crossing each rank's links: what the probe's beta is measured on
    (at 2 ranks, from one whole slice to stream_min, RING_PAIR per byte)."""
    if p == 2 and c.fifo and n / 2 >= c.fifo_bytes / 4 and n < c.stream_min:
        return c.alpha + n / 2 * RING_PAIR * c.beta
    return (p - 1) * c.alpha + (p - 1) / p * n * c.beta if p > 1 else 0.0


def _log_steps(n, p, c):
    """log2 p exchanges moving the ring's (p-1)/p n bytes in fewer steps; each step lands in memory
    (see EXCHANGE: from stream_min on, or when its last step of n/2 outgrows a FIFO; at 2 ranks
    the single exchange is pair_exchange)."""
    if p == 1:
        return 0.0
    per_byte = pair_exchange(n, c) if p == 2 else exchange(n, n / 2, c)
    return log2_ceil(p) * c.alpha + (p - 1) / p * n * per_byte


def recursive_doubling(n, p, c):
    """Powers of two: the blocks gathered so far swapped with the partner at distance 2^k."""
    return _log_steps(n, p, c)


def bruck(n, p, c):
    """ceil(log2 p) exchanges like recursive doubling, for any p (the last step of a non-power of
    two sends only p - 2^k blocks), each a message of up to two segments per side; the blocks stay
    in rotated positions, so no local rotation copies."""
    return _log_steps(n, p, c)


ALGORITHMS = [
    Algorithm("ring", "allgather", ALGO_RING, ring),
    Algorithm("recursive_doubling", "allgather", ALGO_RD, recursive_doubling,
              supports=lambda n, p: is_pof2(p), distances=True),
    Algorithm("bruck", "allgather", ALGO_BRUCK, bruck, distances=True),
    Algorithm("ring", "allgatherv", ALGO_RING, ring),
]

ALIASES = {"rd": "recursive_doubling"}
