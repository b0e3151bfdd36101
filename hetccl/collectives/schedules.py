"""The flat native schedules: one entry per collective, keyed by algorithm code.

Each entry takes the engine, the call's buffers and arguments, the algorithm code and the timeout,
and runs the native schedule of that code: the same signatures as the native core's single dispatch
(docs/design.md, "Native core"), which this module stands for until that dispatch is built in
_native/. The router (comm.py) and composed schedules call these, never Engine.* or
_native/collectives.* directly.
"""
from .._native import collectives as _coll
from .algorithm import ALGO_BRUCK, ALGO_RD, ALGO_RING

_ENGINE_ALLREDUCE = (ALGO_RING, ALGO_RD)       # the Engine's own; the others are in collectives.pyx


def allreduce(engine, send, recv, dtype, op, algo, timeout):
    if algo in _ENGINE_ALLREDUCE:
        return engine.allreduce(send, recv, dtype, op, algo, timeout)
    return _coll.allreduce(engine, send, recv, dtype, op, algo, timeout)


def allgather(engine, send, recv, dtype, algo, timeout):
    if algo == ALGO_BRUCK:
        return _coll.allgather(engine, send, recv, dtype, algo, timeout)
    return engine.allgather(send, recv, dtype, algo, timeout)


def allgatherv(engine, send, recv, counts, dtype, algo, timeout):
    return _coll.allgatherv(engine, send, recv, counts, dtype, timeout)


def reduce_scatter(engine, send, recv, counts, dtype, op, algo, timeout):
    return _coll.reduce_scatter(engine, send, recv, counts, dtype, op, algo, timeout)


def broadcast(engine, buf, root, dtype, algo, timeout):
    return _coll.broadcast(engine, buf, root, dtype, algo, timeout)


def reduce(engine, send, recv, root, dtype, op, algo, timeout):
    return _coll.reduce(engine, send, recv, root, dtype, op, algo, timeout)


def gather(engine, send, recv, counts, root, dtype, algo, timeout):
    return _coll.gather(engine, send, recv, counts, root, dtype, timeout)


def scatter(engine, send, recv, counts, root, dtype, algo, timeout):
    return _coll.scatter(engine, send, recv, counts, root, dtype, timeout)


def alltoall(engine, send, recv, scounts, rcounts, dtype, algo, timeout):
    return _coll.alltoall(engine, send, recv, scounts, rcounts, dtype, algo, timeout)


def barrier(engine, algo, timeout):
    return _coll.barrier(engine, timeout)
