"""The test algorithms, one line each in ``TEST_ALGORITHMS`` (reduce_broadcast.py: an algorithm
declared outside hetccl, with its schedule).

A test algorithm joins hetccl's algorithm registry only in the processes that use it: every rank of
a job calls ``install()`` before hetccl.init (ranks must price the same algorithms, or they would
choose differently), never pytest's own process, whose other tests see the registry as it ships.
"""
from hetccl.collectives import registry
from tests.algorithms import reduce_broadcast

TEST_ALGORITHMS = [
    reduce_broadcast.ALGORITHM,
]


def install():
    for a in TEST_ALGORITHMS:
        registry.register(a)
