"""Transports: one class per link class, each able to score and set up a link between two ranks.

Link classes, fastest first: self · c2c · shm · rdma · tcp. ``c2c`` (single-copy load/store into a peer's
memory: cma or shared windows), ``shm`` (PCIe-class staged copies through shared-memory FIFOs),
``rdma`` (UCX, available when UCX loads) and ``tcp``; the per-pair choice is topology/select.py.
"""
from .base import Transport
from .c2c import C2CTransport
from .rdma import RdmaTransport
from .shm import ShmTransport
from .tcp import TcpTransport

ALL = [C2CTransport(), ShmTransport(), RdmaTransport(), TcpTransport()]


def by_name(name: str) -> Transport:
    for t in ALL:
        if t.name == name:
            return t
    raise KeyError(name)
