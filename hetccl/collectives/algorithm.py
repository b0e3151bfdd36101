"""What an algorithm is to the tuner: a name, the native schedule that runs it, and its cost.

``cost(n, p, c)`` predicts the seconds of one call from the alpha-beta-gamma model (``c`` a
``model.LinkCost``: alpha per message, beta per byte moved, gamma per byte reduced) for ``n`` bytes
on ``p`` ranks; what ``n`` counts is the collective's own convention (see each family module).
``supports(n, p)`` rules out shapes an algorithm cannot run.
"""
import math
from dataclasses import dataclass
from typing import Callable

# codes shared with _native/codes.pxd (enum Algo)
(ALGO_RING, ALGO_RD, ALGO_BINOMIAL, ALGO_CHAIN, ALGO_SCATTER_ALLGATHER, ALGO_PAIRWISE, ALGO_LINEAR,
 ALGO_RS_GATHER, ALGO_RABENSEIFNER, ALGO_DBTREE, ALGO_BRUCK, ALGO_RECURSIVE_HALVING) = range(12)

SLICE = 1 << 20     # pipelining unit of chains and rings (engine: a quarter of a 4 MiB FIFO)

# An exchange step (send a piece while receiving another, each landing in memory) is not pipelined
# and stages through the FIFO twice, unlike a fused ring relay (one pass receive-reduce-forward):
# its bytes cost 1.5x beta (measured at 4 ranks: ring allgather 1.2x faster than recursive doubling
# at 8 MiB, 1.6x at 64 MiB; ring allreduce 1.3x faster than Rabenseifner at 16 MiB).
EXCHANGE = 1.5


def _always(n, p):
    return True


@dataclass(frozen=True)
class Algorithm:
    name: str
    collective: str
    code: int
    cost: Callable          # (nbytes, p, LinkCost) -> seconds
    supports: Callable = _always


def log2_ceil(p: int) -> int:
    """Steps of a log-step algorithm on p ranks."""
    return math.ceil(math.log2(p)) if p > 1 else 0


def pof2_below(p: int) -> int:
    """The largest power of two <= p (the ranks that remain after folding the rest in)."""
    return 1 << (p.bit_length() - 1) if p > 0 else 0


def is_pof2(p: int) -> bool:
    return p > 0 and p & (p - 1) == 0
