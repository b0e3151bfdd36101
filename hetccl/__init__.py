"""hetccl: collective communication for heterogeneous clusters.

    import hetccl, numpy as np
    comm = hetccl.init()                      # rank/size from hetccl run, torchrun, mpirun or Slurm
    x = np.full(1024, comm.rank, np.float32)
    comm.allreduce(x, hetccl.SUM)             # in place; out= for out-of-place
    everyone = comm.allgather(x)
"""
from .comm import Communicator, init
from .errors import (AuthenticationError, CommAborted, CommRevoked, HetcclError, HetcclTimeout,
                     InvalidUsage, PeerLostError, TransportError)
from .ops import AVG, BAND, BOR, BXOR, MAX, MIN, PROD, SUM, ReduceOp

__version__ = "0.1.0"

__all__ = ["init", "Communicator", "ReduceOp", "SUM", "PROD", "MIN", "MAX", "AVG", "BAND", "BOR",
           "BXOR", "HetcclError", "InvalidUsage", "TransportError", "PeerLostError", "HetcclTimeout",
           "AuthenticationError", "CommAborted", "CommRevoked", "__version__"]
