"""The islands job that bench/islands_phases.py and bench/islands_route_ab.py measure (as
bench/validate_sim.py's islands case runs it): under ``mpirun -np 4``, ranks 0,1 an MPI island and
2,3 on hetccl's own transports."""
from __future__ import annotations

import contextlib

BRIDGES = {0: "mpi", 1: "mpi"}


@contextlib.contextmanager
def islands_job(timeout=600):
    """(mpi4py's COMM_WORLD, the communicator, its IslandPlan) of the job; the communicator is
    closed on the way out."""
    import hetccl
    from mpi4py import MPI
    comm = hetccl.init(timeout=timeout, bridges=BRIDGES)
    try:
        plan = comm.context.islands
        assert plan is not None and len(plan.islands) == 2, "expected two islands (mpirun -np 4)"
        yield MPI.COMM_WORLD, comm, plan
    finally:
        comm.close()
