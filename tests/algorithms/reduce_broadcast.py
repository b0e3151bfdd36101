"""``reduce_broadcast``: a test allreduce, declared outside hetccl to show (and keep honest) what
adding an algorithm costs.

This module (its schedule and cost) plus one line in tests/algorithms/registry.py is all it takes:
the tuner then prices it beside the built-in allreduce algorithms (``comm.explain``), ``algorithm=``
and HETCCL_ALGO can force it, and the communicator's one router runs it through ``Algorithm.run``
with the call's Context. Its schedule is written in Python over two native schedules (the single
dispatch keyed by algorithm code, hetccl/collectives/schedules.py): a binomial reduce to rank 0,
then a binomial broadcast of the result. An algorithm with a native schedule of its own is the same
row with the schedule's code instead of ``run``.
"""
from hetccl.collectives import broadcast, rooted, schedules
from hetccl.collectives.algorithm import ALGO_BINOMIAL, PYTHON_SCHEDULE, Algorithm

ROOT = 0


def schedule(ctx, call):
    """Reduce every rank's ``call.send`` into ``call.recv`` on rank 0, then broadcast it to all."""
    recv = call.recv if ctx.rank == ROOT else None
    send = call.send
    if ctx.rank == ROOT and call.recv is call.send:          # in place: reduce out of a copy
        send = send.copy() if hasattr(send, "copy") else bytearray(memoryview(send).tobytes())
    schedules.reduce(ctx.engine, send, recv, ROOT, call.dtype, call.op, ALGO_BINOMIAL, call.timeout)
    schedules.broadcast(ctx.engine, call.recv, ROOT, call.dtype, ALGO_BINOMIAL, call.timeout)


def cost(n, p, c):
    """The two trees one after the other: what each costs alone (rooted.py, broadcast.py)."""
    return rooted.binomial(n, p, c) + broadcast.binomial(n, p, c)


ALGORITHM = Algorithm("reduce_broadcast", "allreduce", PYTHON_SCHEDULE, cost, run=schedule)
