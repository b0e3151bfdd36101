"""The native core as the Python layers above the transports call it: the one adapter.

* **The flat schedules**: one entry per collective, keyed by algorithm code: the native core's
  single dispatch (``hetccl._native.dispatch``; docs/design.md, "Native core"). Each takes the
  engine, the call's buffers and arguments, the algorithm code and the timeout.
* **The latency path** (``Hot``, ``_native.latency``), **the routes by memory** (``single_copy``:
  ring schedules and alltoall over c2c peers' memory; ``symmetric``: schedules on ``comm.alloc``
  allocations) and **the reduction kernels** (``kernels``).

The router (comm.py), the probe, the islands and composed schedules call these, never ``Engine.*``
or a module of ``_native`` directly: a change of the native core's modules changes this module (and
the transports' ``Transport.hand_over``), nothing above it.
"""
from types import SimpleNamespace

from .._native import dispatch as _dispatch
from .._native import kernels                    # noqa: F401 - the reduction and copy kernels
from .._native import single_copy as _single
from .._native import symmetric_heap as _symm
from .._native.latency import Hot, SINGLE_COPY as HOT_SINGLE_COPY, methods   # noqa: F401 - the latency path, its public entries

_LATENCY_PATH = frozenset({"allreduce", "allgather", "reduce_scatter", "broadcast", "alltoall", "reduce",
                           "gather", "scatter"})


def latency_path_takes(coll, algo) -> bool:
    """Whether ``Hot`` runs later calls of ``coll`` with algorithm code ``algo`` (it goes through
    the same dispatch, so every native schedule of those collectives)."""
    return coll in _LATENCY_PATH


# single copy over c2c peers' memory, when every pair is c2c (_native/single_copy.pyx); a namespace
# of its own, so a test can spy on a route without touching the native module
single_copy = SimpleNamespace(allreduce=_single.allreduce, allgather=_single.allgather,
                              alltoall=_single.alltoall, broadcast=_single.broadcast,
                              usable=_single.cma_usable)

# schedules on symmetric allocations, (engine, heap, ...) (_native/symmetric_heap.pyx)
symmetric = SimpleNamespace(allreduce=_symm.allreduce, allgather=_symm.allgather,
                            reduce_scatter=_symm.reduce_scatter, broadcast=_symm.broadcast,
                            alltoall=_symm.alltoall)

allreduce = _dispatch.allreduce
allgather = _dispatch.allgather
allgatherv = _dispatch.allgatherv
reduce_scatter = _dispatch.reduce_scatter
broadcast = _dispatch.broadcast
reduce = _dispatch.reduce
gather = _dispatch.gather
scatter = _dispatch.scatter
alltoall = _dispatch.alltoall
barrier = _dispatch.barrier
