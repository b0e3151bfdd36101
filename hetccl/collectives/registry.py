"""Every algorithm hetccl knows, by collective, with its cost formula.

An algorithm runs on the Cython engine (``code`` selects the schedule there); ``cost`` predicts its
time from the alpha-beta-gamma model so the tuner can pick the cheapest per call.
"""
import math
from dataclasses import dataclass
from typing import Callable

ALGO_RING, ALGO_RD = 0, 1


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
    return _log2(p) * c.alpha + (p - 1) / p * n * c.beta if p > 1 else 0.0


ALGORITHMS = [
    Algorithm("ring", "allreduce", ALGO_RING, _ring_allreduce),
    Algorithm("recursive_doubling", "allreduce", ALGO_RD, _rd_allreduce),
    Algorithm("ring", "allgather", ALGO_RING, _ring_allgather),
    Algorithm("recursive_doubling", "allgather", ALGO_RD, _rd_allgather,
              supports=lambda n, p: p & (p - 1) == 0),
]

ALIASES = {"rd": "recursive_doubling"}


def for_collective(collective: str) -> list[Algorithm]:
    return [a for a in ALGORITHMS if a.collective == collective]
