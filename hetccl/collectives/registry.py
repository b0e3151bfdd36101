"""Every algorithm hetccl knows, by collective, with its cost formula.

An algorithm runs on the Cython engine (``code`` selects the schedule there); ``cost`` predicts its
time from the alpha-beta-gamma model so the tuner can pick the cheapest per call.
"""
import math
from dataclasses import dataclass
from typing import Callable

# codes shared with _native/codes.pxd (enum Algo)
ALGO_RING, ALGO_RD, ALGO_BINOMIAL, ALGO_CHAIN, ALGO_SCATTER_ALLGATHER, ALGO_PAIRWISE, ALGO_LINEAR = range(7)
SLICE = 1 << 20     # pipelining unit of chains and rings (engine: a quarter of a 4 MiB FIFO)


@dataclass(frozen=True)
class Algorithm:
    name: str
    collective: str
    code: int
    cost: Callable          # (nbytes, p, LinkCost) -> seconds
    supports: Callable = lambda nbytes, p: True


def _log2(p):
    return math.ceil(math.log2(p)) if p > 1 else 0


def _ring_allreduce(n, p, c):
    if p == 1:
        return 0.0
    return 2 * (p - 1) * c.alpha + 2 * (p - 1) / p * n * c.beta + (p - 1) / p * n * c.gamma


def _rd_allreduce(n, p, c):
    if p == 1:
        return 0.0
    pof2 = 1 << (p.bit_length() - 1)
    fold = 0 if pof2 == p else 2 * (c.alpha + n * c.beta)
    return _log2(pof2) * (c.alpha + n * (c.beta + c.gamma)) + fold


def _ring_allgather(n, p, c):      # n: bytes of the whole output (as nccl-tests count it)
    return (p - 1) * c.alpha + (p - 1) / p * n * c.beta if p > 1 else 0.0


def _rd_allgather(n, p, c):
    # each step stages through the FIFO twice and is not pipelined, unlike the fused ring: 1.5x beta
    # (measured at 4 ranks: ring 1.2x faster at 8 MiB, 1.6x at 64 MiB, even at 128 KiB)
    return _log2(p) * c.alpha + 1.5 * (p - 1) / p * n * c.beta if p > 1 else 0.0


def _binomial_bcast(n, p, c):
    return _log2(p) * (c.alpha + n * c.beta)


def _chain_bcast(n, p, c):
    if p == 1:
        return 0.0
    sl = min(n, SLICE) or 1
    return (p - 1) * c.alpha + n * c.beta + (p - 2) * (c.alpha + sl * c.beta)


def _scatter_allgather_bcast(n, p, c):
    if p == 1:
        return 0.0
    return (_log2(p) + p - 1) * c.alpha + 2 * (p - 1) / p * n * c.beta


def _binomial_reduce(n, p, c):
    return _log2(p) * (c.alpha + n * (c.beta + c.gamma))


def _ring_reduce_scatter(n, p, c):    # n: bytes of the whole input
    return (p - 1) * c.alpha + (p - 1) / p * n * (c.beta + c.gamma) if p > 1 else 0.0


def _pairwise_alltoall(n, p, c):      # n: bytes each rank sends in all
    return (p - 1) * (c.alpha + n / p * c.beta) if p > 1 else 0.0


def _linear_rooted(n, p, c):          # n: bytes of the root's whole buffer
    return (p - 1) * (c.alpha + n / p * c.beta) if p > 1 else 0.0


def _dissemination(n, p, c):
    return _log2(p) * c.alpha


ALGORITHMS = [
    Algorithm("ring", "allreduce", ALGO_RING, _ring_allreduce),
    Algorithm("recursive_doubling", "allreduce", ALGO_RD, _rd_allreduce),
    Algorithm("ring", "allgather", ALGO_RING, _ring_allgather),
    Algorithm("recursive_doubling", "allgather", ALGO_RD, _rd_allgather,
              supports=lambda n, p: p & (p - 1) == 0),
    Algorithm("binomial", "broadcast", ALGO_BINOMIAL, _binomial_bcast),
    Algorithm("chain", "broadcast", ALGO_CHAIN, _chain_bcast),
    Algorithm("scatter_allgather", "broadcast", ALGO_SCATTER_ALLGATHER, _scatter_allgather_bcast),
    Algorithm("binomial", "reduce", ALGO_BINOMIAL, _binomial_reduce),
    Algorithm("ring", "reduce_scatter", ALGO_RING, _ring_reduce_scatter),
    Algorithm("pairwise", "alltoall", ALGO_PAIRWISE, _pairwise_alltoall),
    Algorithm("linear", "gather", ALGO_LINEAR, _linear_rooted),
    Algorithm("linear", "scatter", ALGO_LINEAR, _linear_rooted),
    Algorithm("dissemination", "barrier", ALGO_LINEAR, _dissemination),
    Algorithm("ring", "allgatherv", ALGO_RING, _ring_allgather),
]

ALIASES = {"rd": "recursive_doubling"}


def for_collective(collective: str) -> list[Algorithm]:
    return [a for a in ALGORITHMS if a.collective == collective]
