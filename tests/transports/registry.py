"""Endpoint factories of every transport the conformance suite runs, keyed by name.

Adding a transport is one line in FACTORIES: a factory with ``unavailable()`` (None, or why it cannot
run here: the test is then skipped with that reason), ``start(rank, port)`` (rank 0 listens on port,
rank 1 will connect to it), ``open()`` (a new connected Endpoint; both ranks call it together) and
``stop()``. Factories run inside the spawned ranks, so they must be importable and cheap to build.
"""
import os

from hetccl.transports.endpoints import Listener, connect


class PairFactory:
    """Endpoints of one of hetccl's own transports, connected through transports/endpoints.py."""

    def __init__(self, transport, env=None, needs=None):
        self.transport, self.env, self.needs = transport, dict(env or {}), needs
        self.listener = None
        self.rank = self.port = None
        self.opened = 0

    def unavailable(self):
        from hetccl.transports import by_name
        if not by_name(self.transport).available():
            return f"transport {self.transport} is not available on this machine"
        return self.needs() if self.needs else None

    def start(self, rank, port):
        os.environ.update(self.env)
        self.rank, self.port = rank, port
        if rank == 0:
            self.listener = Listener(_secret(), 0, job_id=os.environ.get("HETCCL_JOB_ID", "ep"), port=port)

    def open(self, timeout=30.0):
        self.opened += 1
        if self.rank == 0:
            return self.listener.accept(self.transport, timeout)
        return _retry_connect(self.transport, self.port, timeout, self.opened)

    def stop(self):
        if self.listener is not None:
            self.listener.close()
            self.listener = None


def _secret():
    s = os.environ.get("HETCCL_SECRET")
    return s.encode() if s else None


def _retry_connect(transport, port, timeout, attempt):
    import time
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect(transport, ("127.0.0.1", port), _secret(), 1, 0,
                           job_id=os.environ.get("HETCCL_JOB_ID", "ep"), timeout=timeout, attempt=attempt)
        except ConnectionRefusedError:         # rank 0 is not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _cma_needed():
    from hetccl.transports.c2c import local_mode
    mode, why = local_mode()
    return None if mode == "cma" else f"cross-memory attach is not permitted here: {why}"


FACTORIES = {
    "shm": PairFactory("shm"),
    "tcp": PairFactory("tcp"),
    "c2c": PairFactory("c2c", {"HETCCL_C2C_MODE": "cma"}, needs=_cma_needed),
    "c2c-window": PairFactory("c2c", {"HETCCL_C2C_MODE": "window"}),
}
