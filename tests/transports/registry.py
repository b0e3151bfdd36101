"""Endpoint factories of every transport the conformance suite runs, keyed by name.

Adding a transport is one line: ``FACTORIES["rdma"] = EndpointFactory("rdma", needs=...)`` (see
hetccl.transports.endpoints.EndpointFactory: ``unavailable()`` None or why it cannot run here, the
tests then skip with that reason; ``start(rank, port)``; ``open()``; ``stop()``). Factories run inside
the spawned ranks, so they must be importable and cheap to build.
"""
from hetccl.transports.endpoints import EndpointFactory, factories  # noqa: F401

FACTORIES = factories()
