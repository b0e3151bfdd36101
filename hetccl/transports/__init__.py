"""Transports: one class per link class, each able to score and set up a link between two ranks.

Link classes, fastest first: self · c2c · shm · rdma · tcp. The foundation ships ``shm`` (PCIe-class
staged copies through shared-memory FIFOs) and ``tcp``; ``rdma`` (UCX) is available when UCX loads.
The per-pair choice is topology/select.py.
"""
from .base import Transport
from .rdma import RdmaTransport
from .shm import ShmTransport
from .tcp import TcpTransport

ALL = [ShmTransport(), RdmaTransport(), TcpTransport()]


def by_name(name: str) -> Transport:
    for t in ALL:
        if t.name == name:
            return t
    raise KeyError(name)
