"""The native core as the Python layers above the transports call it: the one adapter.

* **The flat schedules**: one entry per collective, keyed by algorithm code. Each takes the engine,
  the call's buffers and arguments, the algorithm code and the timeout: the signatures of the
  native core's single dispatch (docs/design.md, "Native core", ``hetccl._native.dispatch``), which
  this module stands for while the native schedules are spread over ``Engine`` methods and
  ``_native/collectives.pyx``.
* **The latency path** (``Hot``), **the routes by memory** (``single_copy``: ring schedules and
  alltoall over c2c peers' memory; ``symmetric``: schedules on ``comm.alloc`` allocations) and
  **the reduction kernels** (``kernels``).

The router (comm.py), the probe, the islands and composed schedules call these, never ``Engine.*``
or a module of ``_native`` directly: when the native core's dispatch lands, this module is what
changes (and the transports' ``Transport.hand_over``), nothing above it.
"""
from types import SimpleNamespace

from .._native import alltoall_cma as _a2a_cma
from .._native import collectives as _coll
from .._native import direct as _direct
from .._native import reduce as kernels          # noqa: F401 - the native core's _native.kernels
from .._native import symmetric as _symm
from .algorithm import ALGO_BRUCK, ALGO_RD, ALGO_RING

Hot = _coll.Hot               # the latency path (the native core's _native.latency.Hot)
_LATENCY_PATH = frozenset({"allreduce", "allgather", "reduce_scatter", "broadcast", "alltoall"})


def latency_path_takes(coll, algo) -> bool:
    """Whether ``Hot`` runs later calls of ``coll`` with algorithm code ``algo`` (it runs allgather
    through the Engine's own schedules, which have no Bruck)."""
    return coll in _LATENCY_PATH and (algo != ALGO_BRUCK or coll != "allgather")


# single copy over c2c peers' memory, when every pair is c2c (the native core's _native.single_copy)
single_copy = SimpleNamespace(allreduce=_direct.allreduce, allgather=_direct.allgather,
                              alltoall=_a2a_cma.alltoall, alltoall_min_bytes=_a2a_cma.min_bytes)

# schedules on symmetric allocations, (engine, heap, ...) (the native core's _native.symmetric_heap)
symmetric = SimpleNamespace(allreduce=_symm.allreduce, allgather=_symm.allgather,
                            reduce_scatter=_symm.reduce_scatter, broadcast=_symm.broadcast,
                            alltoall=_symm.alltoall)

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
