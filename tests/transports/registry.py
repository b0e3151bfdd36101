"""Endpoint factories of every transport the conformance suite runs, keyed by name.

Every row of the transport table is here (hetccl.transports: each transport's ``endpoints()`` names
its modes: shm, tcp, c2c, c2c-window, rdma), plus the test transports of this folder, one line each
in ``TEST_TRANSPORTS`` (loop.py: a transport declared outside hetccl). A factory's ``unavailable()``
is None or why it cannot run here (the tests then skip with that reason); ``start(rank, port)``
(which puts a test transport in the table of the rank's process); ``open()``; ``stop()``
(hetccl.transports.pair_endpoint.EndpointFactory). Factories run inside the spawned ranks, so they
must be importable and cheap to build.

A test transport joins the table only in the processes that use it (``install()`` in a rank, or a
factory's ``start``), never in pytest's own process, whose other tests see hetccl's table as it ships.
"""
from hetccl.transports import register
from hetccl.transports.pair_endpoint import EndpointFactory, factories, factories_of  # noqa: F401
from tests.transports.loop import LoopTransport

TEST_TRANSPORTS = [
    LoopTransport(),
]


def install():
    """Put the test transports in this process's transport table (every rank of a job that may use
    one calls it before hetccl.init: ranks must have the same table)."""
    for t in TEST_TRANSPORTS:
        register(t)


FACTORIES = {**factories(), **factories_of(TEST_TRANSPORTS)}
