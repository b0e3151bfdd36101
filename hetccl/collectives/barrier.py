"""barrier: dissemination, ceil(log2 N) rounds of empty messages."""
from .algorithm import ALGO_DISSEMINATION, Algorithm, log2_ceil


def dissemination(n, p, c):
    return log2_ceil(p) * c.alpha


ALGORITHMS = [Algorithm("dissemination", "barrier", ALGO_DISSEMINATION, dissemination)]

ALIASES = {}
