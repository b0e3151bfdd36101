"""The cached composed route of a communicator with islands: one call shape's composed form, with
everything but the buffers resolved once.

Why: a composed allreduce on an island communicator went through the public call's whole Python
path on every call (parser, decision, adapters, the form's dispatch, each phase asking which
library runs it, scratch look-ups, staging), ~4.4 us of CPU per rank at 64 KiB. With 4 ranks on 2
CPUs the peers waiting in the composed call's steps pay that several times over (the composed
call cost 302 us of CPU summed over the ranks against 153 for the form called directly; bench
``islands_route_ab.py``). So the communicator (comm.py ``_island_route``) keeps, per call shape
(collective, dtype, bytes, op, in or out of place, ``algorithm=``, ``timeout=``), the function
``route`` returns here, and later calls of that shape run it straight away, as the latency path
does for flat calls.

What is resolved: the form (``rails`` or ``leaders``) and its element counts, each phase's step
(the bridge's own method bound to its count, dtype and op, ``Bridge.bind`` where the bridge has
it, or the island sub-communicator's collective), the sub-communicators, the scratch shard, and
AVG's final division. What is not: anything about the buffers beyond their dtype and size (the
caller's arrays differ per call). The communicator drops its routes on everything that changes a
route (comm.py ``_forget_routes``: abort, revoke, a lost peer, a symmetric allocation, a refused
cross-memory read, a new cost model).
"""
from __future__ import annotations

import numpy as np

from .. import dtypes
from ..ops import ReduceOp
from . import schedules

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _fixed(bridge, coll, count, code, op, root):
    """f(send, recv) of the bridge's ``coll`` on ``count`` elements, for bridges without ``bind``:
    their own method with its arguments fixed, the arrays passed as their raw unsigned integers
    where the dtype has no DLPack description (islands._raw)."""
    if coll == "reduce_scatter":
        return lambda s, r: bridge.reduce_scatter(s, r, count, code, op)
    if coll == "allgather":
        return lambda s, r: bridge.allgather(s, r, count, code)
    if coll == "reduce":
        return lambda s, r: bridge.reduce(s, r, count, code, op, root)
    if coll == "broadcast":
        return lambda s, r: bridge.broadcast(s, count, code, root)
    raise ValueError(coll)


def bridge_step(plan, coll, count, code, op=ReduceOp.SUM, root=0):
    """f(send, recv) of this rank's island step ``coll`` run by its bridge on ``count`` elements of
    ``code`` (allgather and broadcast: bytes, as the composed runs move them). Host-memory bridges
    only: a device island keeps the full path (``route``)."""
    bind = getattr(plan.bridge, "bind", None)
    if callable(bind):
        f = bind(coll, count, code, op, root)
        if f is not None:
            return f
    step = _fixed(plan.bridge, coll, count, code, op, root)
    if coll in ("allgather", "broadcast"):
        u = np.uint8                                     # moved as bytes (islands._allgather)
    elif dtypes.numpy_dtype(code).kind in "bV":
        u = _UINT[dtypes.ITEMSIZE[code]]
    else:
        return step

    def viewed(s, r):
        v = s.view(u)
        step(v, v if r is s else r.view(u))
    return viewed


def _reduce(plan, count, code, op, root, t):
    """f(src, dst): the island's reduce to its leader (``root``, island rank)."""
    if plan._native(plan.mine, "reduce", code, op):
        return bridge_step(plan, "reduce", count, code, op, root)
    sub = plan.subs()[0]
    return lambda s, d: sub.reduce(s, root=root, op=op, out=d, timeout=t)


def _broadcast(plan, nbytes, root, t):
    """f(buf): the island's broadcast from ``root`` (island rank); None on a one-rank island."""
    if len(plan.island.ranks) < 2:
        return None
    if plan._native(plan.mine, "broadcast", 0, 0):
        step = bridge_step(plan, "broadcast", nbytes, dtypes.UINT8, ReduceOp.SUM, root)
        return lambda b: step(b, b)
    sub = plan.subs()[0]
    return lambda b: sub.broadcast(b, root=root, timeout=t)


def leaders(plan, count, itemsize, code, op, t):
    """f(src, dst): the ``leaders`` allreduce of ``count`` elements (IslandPlan._leaders_allreduce)."""
    _, lead, _ = plan.subs()
    root = plan._leader_index()
    many = len(plan.island.ranks) > 1
    red = _reduce(plan, count, code, op, root, t) if many else None
    bcast = _broadcast(plan, count * itemsize, root, t)
    lead_allreduce = lead.allreduce if lead is not None else None

    def run(src, dst):
        if red is not None:
            red(src, dst)
        elif src is not dst:
            dst[...] = src
        if lead_allreduce is not None:
            lead_allreduce(dst, op, timeout=t)
        if bcast is not None:
            bcast(dst)
    return run


def rails(plan, count, dtype, code, op, t):
    """f(src, dst): the ``rails`` allreduce of ``count`` elements (IslandPlan._rails)."""
    s = len(plan.island.ranks)
    main = count - count % s
    if not main:
        return leaders(plan, count, dtype.itemsize, code, op, t)
    shard = plan._buf("shard", main // s, dtype)
    if plan._native(plan.mine, "reduce_scatter", code, op):
        rs = bridge_step(plan, "reduce_scatter", main // s, code, op)
    else:
        sub = plan.subs()[0]
        rs = (lambda a, b: sub.reduce_scatter(a, b, op, timeout=t))
    rail = plan.subs()[2].allreduce
    if plan._native(plan.mine, "allgather", 0, 0):
        ag = bridge_step(plan, "allgather", shard.nbytes, dtypes.UINT8)
    else:
        sub = plan.subs()[0]
        ag = (lambda a, b: sub.allgather(a, out=b, timeout=t))
    if main == count:
        def run(src, dst):
            rs(src, shard)
            rail(shard, op, timeout=t)
            ag(shard, dst)
        return run
    tail = leaders(plan, count - main, dtype.itemsize, code, op, t)

    def run_tail(src, dst):
        rs(src[:main], shard)
        rail(shard, op, timeout=t)
        ag(shard, dst[:main])
        d = dst[main:]
        tail(d if src is dst else src[main:], d)
    return run_tail


def route(plan, collective, nbytes, dtype, code, op, form, timeout):
    """f(buf, out) for one allreduce shape the islands compose (``form``: what ``decide`` chose),
    or None (another collective; a whole island, whose allreduce has its own direct path; a
    device island, whose ranks may pass device buffers; nothing to move). ``dtype``: the numpy
    dtype of the call's arrays; ``out`` is ``buf`` in place. Runs under the caller's
    communicator (flight record, failures: comm.py); a library's error is re-raised as the plan's
    own calls re-raise it (IslandPlan._failed)."""
    if (collective != "allreduce" or form is None or plan.whole or plan.device or nbytes <= 0
            or plan.bridge is None and plan.island.bridged):
        return None
    count, t = nbytes // dtype.itemsize, timeout
    sop = ReduceOp.SUM if op == ReduceOp.AVG else op
    body = (rails(plan, count, dtype, code, sop, t) if form == "rails"
            else leaders(plan, count, dtype.itemsize, code, sop, t))
    divide, p, avg, failed = schedules.kernels.divide_array, plan.p, op == ReduceOp.AVG, plan._failed

    def run(buf, out):
        try:
            src = buf if buf.ndim == 1 else buf.reshape(-1)
            dst = src if out is buf else out if out.ndim == 1 else out.reshape(-1)
            body(src, dst)
            if avg:
                divide(dst, code, p)
        except Exception as e:               # noqa: BLE001 - re-raised as a hetccl error
            raise failed(e) from None
    return run


__all__ = ["bridge_step", "route"]
