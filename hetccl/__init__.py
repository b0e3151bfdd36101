"""hetccl: collective communication for heterogeneous clusters.

    import hetccl, numpy as np
    comm = hetccl.init()                      # rank/size from hetccl run, torchrun, mpirun or Slurm
    x = np.full(1024, comm.rank, np.float32)
    comm.allreduce(x, hetccl.SUM)             # in place; out= for out-of-place
    everyone = comm.allgather(x)

``import hetccl`` loads only the errors and reduce ops; the communicator (numpy, the compiled core,
topology, transports) loads on first use of ``hetccl.init`` or ``hetccl.Communicator``. Why: the
package is imported by programs that may never communicate (torch's backend entry point, tools
reading the version), and the core costs about 0.1-0.2 s to import.
"""
from .errors import (AuthenticationError, CommAborted, CommRevoked, HetcclError, HetcclTimeout,
                     InvalidUsage, PeerLostError, PeerProtocolError, TransportError)
from .ops import AVG, BAND, BOR, BXOR, MAX, MIN, PROD, SUM, ReduceOp
from .version import __version__

__all__ = ["init", "Communicator", "ReduceOp", "SUM", "PROD", "MIN", "MAX", "AVG", "BAND", "BOR",
           "BXOR", "HetcclError", "InvalidUsage", "TransportError", "PeerLostError", "HetcclTimeout",
           "AuthenticationError", "CommAborted", "CommRevoked", "PeerProtocolError", "__version__"]

_FROM_COMM = ("init", "Communicator")


def __getattr__(name: str):
    if name not in _FROM_COMM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from . import comm
    except ImportError as e:   # an unbuilt source checkout gets told how to build it
        from ._checkout import explain
        better = explain(e, __path__[0])
        if better is e:
            raise
        raise better from e
    for attr in _FROM_COMM:
        globals()[attr] = getattr(comm, attr)
    return globals()[name]


def __dir__():
    return sorted(set(globals()) | set(_FROM_COMM))
