"""One rank of an MPI-bridge failure test, run under mpirun by tests/test_bridges_mpi.py.

``python tests/mpi_bridge_worker.py CASE TIMEOUT``: every rank makes an MPIBridge over
COMM_WORLD with ``timeout=TIMEOUT``, checks one allreduce, then:

* ``stall``: rank 1 sleeps 2 x TIMEOUT before its next allreduce; rank 0's must end with
  HetcclTimeout after about TIMEOUT, and every later call on the aborted bridge is refused;
  rank 1's, once it wakes, times out too (its peer aborted); both then exit without hanging.
* ``abort``: rank 1 never calls again; rank 0's allreduce (timeout 60 s) is ended by abort()
  from another thread after 1 s.
* ``dead``: rank 1 exits abnormally; rank 0's allreduce must not wait out its timeout (the MPI
  job ends it, or, with ULFM, it raises).

Each rank prints ``RESULT rank=R case=C outcome=... took=S`` (outcome: the exception's class).
"""
import os
import sys
import threading
import time

import numpy as np

from hetccl import dtypes
from hetccl.bridges.mpi import MPIBridge
from hetccl.ops import ReduceOp


def outcome(fn):
    t0 = time.monotonic()
    try:
        fn()
        name = "ok"
    except Exception as e:                   # noqa: BLE001 - the class is the result
        name = type(e).__name__
        print(f"rank {os.environ.get('OMPI_COMM_WORLD_RANK')}: {name}: {e}", file=sys.stderr, flush=True)
    return name, time.monotonic() - t0


def main(case, timeout):
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    b = MPIBridge(list(range(size)), 7, timeout=timeout)
    x = np.full(4, rank + 1, np.float32)
    b.allreduce(x, x, 4, dtypes.FLOAT32, ReduceOp.SUM)
    assert x[0] == size * (size + 1) / 2, x
    res, took, later = "none", 0.0, "none"
    if case == "stall":
        if rank == 1:
            time.sleep(2 * timeout)
        res, took = outcome(lambda: b.allreduce(x, x, 4, dtypes.FLOAT32, ReduceOp.SUM))
        later, _ = outcome(lambda: b.allgather(x, np.zeros(4 * size, np.float32), 4, dtypes.FLOAT32))
    elif case == "abort":
        if rank == 0:
            threading.Timer(1.0, b.abort).start()
            res, took = outcome(lambda: b.allreduce(x, x, 4, dtypes.FLOAT32, ReduceOp.SUM))
            later, _ = outcome(lambda: b.broadcast(x, 4, dtypes.FLOAT32, 0))
    elif case == "dead":
        if rank == 1:
            os._exit(3)
        time.sleep(0.2)
        res, took = outcome(lambda: b.allreduce(x, x, 4, dtypes.FLOAT32, ReduceOp.SUM))
    print(f"RESULT rank={rank} case={case} outcome={res} took={took:.2f} later={later}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
