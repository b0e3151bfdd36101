"""Endpoint factories of every transport the conformance suite runs, keyed by name.

Every transport is here: shm, tcp, c2c, c2c-window and rdma (hetccl.transports.endpoints.factories).
Adding one is one line there: ``"name": EndpointFactory("transport", env, needs=...)`` (see
hetccl.transports.endpoints.EndpointFactory: ``unavailable()`` None or why it cannot run here, the
tests then skip with that reason; ``start(rank, port)``; ``open()``; ``stop()``). Factories run inside
the spawned ranks, so they must be importable and cheap to build.
"""
from hetccl.transports.endpoints import EndpointFactory, factories  # noqa: F401

FACTORIES = factories()
