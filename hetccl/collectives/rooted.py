"""gather and scatter (and their v forms): linear, the root talks to every rank in turn.

``n`` is the bytes of the root's whole buffer.
"""
from .algorithm import ALGO_LINEAR, Algorithm


def linear(n, p, c):
    return (p - 1) * (c.alpha + n / p * c.beta) if p > 1 else 0.0


ALGORITHMS = [
    Algorithm("linear", "gather", ALGO_LINEAR, linear),
    Algorithm("linear", "scatter", ALGO_LINEAR, linear),
]

ALIASES = {}
