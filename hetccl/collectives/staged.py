"""Collectives across islands on *device* buffers (DLPack / ``__cuda_array_interface__``).

Why a second path next to collectives/islands.py: there the caller's buffers are host arrays and a
device island copies them into staging buffers for its native step. A caller on a GPU (NPU, ...)
rank hands over device memory instead, and copying all of it to the host and back would put the
whole collective through PCIe twice. Here the island-native steps (reduce_scatter, reduce,
allgather, broadcast) run on the caller's device memory, and only what crosses islands (a shard, a
leader's result, the islands' blocks) is staged through host memory, pinned when the runtime
offers it (the PCIe-class path of issue 7).

Agreement: every step here is the device twin of one in IslandPlan (same form, same native calls
with the same byte counts, same sub-communicator collectives in the same order), so ranks with
device buffers and ranks with host buffers (another island, or the same island) run one
collective together. Where the twin would need a step the bridge does not run exactly (an op or
dtype outside its table, AVG), the device buffer is copied to the host and the host path runs,
which stages its island steps as usual: slower, never different.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes
from ..bridges.base import HOST
from ..bridges.device_buffers import DEVICE_NAMES, DL_CPU, DeviceBuffer, as_device_buffer
from ..errors import InvalidUsage
from ..ops import ReduceOp, as_op
from .algorithm import ALGO_ISLANDS

_HOST_TYPES = (np.ndarray, bytes, bytearray, memoryview)


def is_device(buf) -> bool:
    """Whether ``buf`` is device memory (a DeviceBuffer, a ``__cuda_array_interface__`` object or
    a DLPack producer on a non-CPU device). Host buffers (numpy, buffer protocol) are not, even
    though numpy exports DLPack: they keep hetccl's host path. Only called when the buffer is not
    a plain ndarray, so the host hot path pays one type test."""
    if isinstance(buf, _HOST_TYPES):
        return False
    if isinstance(buf, DeviceBuffer):
        return buf.device_type != DL_CPU
    if hasattr(buf, "__cuda_array_interface__"):
        return True
    dev = getattr(buf, "__dlpack_device__", None)
    if dev is None or not hasattr(buf, "__dlpack__"):
        return False
    try:
        return int(dev()[0]) != DL_CPU
    except Exception:                        # noqa: BLE001 - not a usable DLPack producer
        return False


def _path(ctx, dbuf):
    """The communicator's DevicePath for ``dbuf``, or InvalidUsage saying why it has none."""
    plan = ctx.islands
    bridge = plan.bridge if plan is not None else None
    where = DEVICE_NAMES.get(dbuf.device_type, f"device type {dbuf.device_type}").upper()
    if bridge is None or bridge.memory == HOST or not callable(getattr(bridge, "copy_in", None)):
        kind = plan.island.kind if plan is not None else "hetccl"
        if plan is not None and plan.device:
            others = "; ".join(f"{i.kind} ranks {list(i.ranks)}" for i in plan.islands if i.bridged and
                               i is not plan.island)
            raise InvalidUsage(
                f"device buffer on rank {ctx.rank}, whose island is {kind!r} (host memory): {dbuf!r}. "
                f"Only the ranks of a device island ({others}) take device buffers; pass a numpy "
                f"array on this rank")
        raise InvalidUsage(
            f"device buffer on a communicator without a {where} island: {dbuf!r} was passed on rank "
            f"{ctx.rank}, whose island is {kind!r} (host memory). hetccl's own transports move host "
            f"memory only: pass a numpy array on this rank, or put the rank on a bridge for its "
            f"device (hetccl.init(bridges='nccl' / 'rccl' / 'hccl' ...); `hetccl doctor` lists the "
            f"libraries found)")
    accepts = getattr(bridge, "accepts", None)
    if accepts is not None and not accepts(dbuf):
        raise InvalidUsage(f"{dbuf!r} is not in the memory of this rank's {bridge.kind} island "
                           f"({bridge.memory}); pass a buffer on that device, or a numpy array")
    return plan.staged()


def device_call(ctx, coll, buf, out=None, *, op=ReduceOp.SUM, root=0, timeout=None, algorithm=None,
                async_op=False):
    """comm.allreduce / allgather / broadcast on device buffers (comm.py routes them here).

    The algorithm is chosen exactly as for host buffers (same sizes, dtype, op), so every rank of
    the communicator agrees whatever memory its own buffers are in; a communicator with a device
    island composes across islands (collectives/islands.IslandPlan.choose). Should the choice be
    a flat algorithm (forced with ``algorithm=``, or one island that cannot run the op), the
    buffer goes through a host copy and that algorithm."""
    dbuf = as_device_buffer(buf, writable=coll == "broadcast")
    path = _path(ctx, dbuf)
    code = dbuf.dtype
    if coll == "allgather":
        if out is None:
            raise InvalidUsage("allgather of a device buffer needs out= (a device buffer of size x "
                               "len(buf) elements): hetccl cannot allocate the caller's device memory")
        dout = dbuf if out is buf else as_device_buffer(out, writable=True)
        if dout.count % ctx.size or (out is not buf and dout.count != ctx.size * dbuf.count):
            raise InvalidUsage(f"allgather output {dout!r} must hold {ctx.size} x {dbuf.count} elements")
    elif coll == "allreduce":
        if type(op) is not ReduceOp:
            op = as_op(op)
        dtypes.check_op(code, op)
        dout = dbuf if out is None or out is buf else as_device_buffer(out, writable=True)
        if dout.count != dbuf.count:
            raise InvalidUsage(f"allreduce output {dout!r} must hold {dbuf.count} elements like the input")
    else:
        dout = dbuf
    if dout.dtype != code:
        raise InvalidUsage(f"{coll} output is {dtypes.NAMES[dout.dtype]} but the input is "
                           f"{dtypes.NAMES[code]}; pass an output of the input's dtype")
    result = buf if out is None or coll == "broadcast" else out
    t = ctx.t(timeout)
    nbytes = dout.nbytes if coll == "allgather" else dbuf.nbytes
    a, form = ctx.decide(coll, nbytes, algorithm, code, op if coll == "allreduce" else None)
    ctx.comm.last_algorithm = a.name
    ctx.flight.note(coll, nbytes, code, op if coll == "allreduce" else -1,
                    int(root) if coll == "broadcast" else -1)
    if a.code == ALGO_ISLANDS:
        if coll == "allreduce":
            args = (dbuf, dout, code, op, t, form)
        elif coll == "allgather":
            args = (dbuf, dout, code, t)
        else:
            args = (dbuf, int(root), code, t)
        return ctx.run(coll, getattr(path, coll), args, result, async_op)
    # a flat algorithm: through host copies, synchronously (the host call queues behind pending work)
    h = path._to_host("flat_in", dbuf, code).copy()
    if coll == "allreduce":
        ctx.comm.allreduce(h, op, timeout=timeout, algorithm=algorithm)
    elif coll == "allgather":
        ho = h if out is buf else np.empty(dout.count, dtypes.numpy_dtype(code))
        ctx.comm.allgather(h, ho, timeout=timeout, algorithm=algorithm)      # same object: in place
        h = ho
    else:
        ctx.comm.broadcast(h, root, timeout=timeout, algorithm=algorithm)
    path.bridge.copy_in(dout, h)
    return ctx.done(coll, result) if async_op else result


class DevicePath:
    """The device-buffer runs of one IslandPlan (this rank's bridge holds device memory)."""

    def __init__(self, plan):
        self.plan = plan
        self.bridge = plan.bridge
        self._host = {}          # name -> pooled host array (bridge.host_buffer), kept across calls

    # ------------------------------------------------------------------ host staging

    def _host_arr(self, name, nbytes, code):
        a = self._host.get(name)
        if a is None or a.nbytes < nbytes:
            if a is not None:
                self.bridge.release_buffer(a)
            a = self._host[name] = self.bridge.host_buffer(nbytes)
        return a[:nbytes].view(dtypes.numpy_dtype(code))

    def _to_host(self, name, dev, code):
        h = self._host_arr(name, dev.nbytes, code)
        self.bridge.copy_out(h, dev)
        return h

    def release(self):
        for a in self._host.values():
            self.bridge.release_buffer(a)
        self._host.clear()

    def _dev(self, name, nbytes):
        return self.plan.staging.dev(name, nbytes)

    # ------------------------------------------------------------------ island steps on device memory

    def _island_allgather(self, src, dst, nbytes):
        if len(self.plan.island.ranks) < 2:
            self.bridge.copy_device(dst, src, nbytes)
        else:
            self.bridge.allgather(src, dst, nbytes, dtypes.UINT8)

    def _island_broadcast(self, buf, root):
        if len(self.plan.island.ranks) >= 2:
            self.bridge.broadcast(buf, buf.nbytes, dtypes.UINT8, root)

    def _native(self, coll, code, op):
        return self.plan._native(self.plan.mine, coll, code, op)

    def _runs_natively(self, form, code, op) -> bool:
        """Whether every island step of this allreduce runs on the bridge (else: via the host)."""
        if op == ReduceOp.AVG:
            return False
        if self.plan.whole:
            return self._native("allreduce", code, op)
        if len(self.plan.island.ranks) < 2:
            return True
        steps = ("reduce_scatter", "allgather", "reduce") if form == "rails" else ("reduce",)
        return all(self._native(c, code, op) for c in steps)

    # ------------------------------------------------------------------ collectives

    def allreduce(self, src: DeviceBuffer, dst: DeviceBuffer, code, op, t, form):
        p = self.plan
        try:
            if src.nbytes == 0:
                return
            if not self._runs_natively(form, code, op):
                return self._via_host(src, dst, code, op, t, form)
            if p.whole:
                self.bridge.allreduce(src, dst, src.count, code, op)
            elif form == "rails":
                self._rails(src, dst, src is dst, code, op, t)
            else:
                self._leaders(src, dst, src is dst, code, op, t)
        except Exception as e:               # noqa: BLE001 - re-raised as a hetccl error
            raise p._failed(e) from None

    def _via_host(self, src, dst, code, op, t, form):
        h = self._to_host("fallback", src, code)
        self.plan._allreduce(h, h, code, op, t, form)
        self.bridge.copy_in(dst, h)

    def _rails(self, src, dst, inplace, code, op, t):
        s, count, isz = len(self.plan.island.ranks), src.count, dtypes.ITEMSIZE[code]
        main = count - count % s
        if main:
            n = main // s
            shard = self._dev("d_shard", n * isz)
            self.bridge.reduce_scatter(src.view(0, main), shard, n, code, op)
            hs = self._host_arr("h_shard", n * isz, code)
            self.bridge.copy_out(hs, shard)
            self.plan.subs()[2].allreduce(hs, op, timeout=t)
            self.bridge.copy_in(shard, hs)
            self.bridge.allgather(shard, dst.view(0, main), n * isz, dtypes.UINT8)
        if main < count:
            tail = dst.view(main, count - main)
            self._leaders(tail if inplace else src.view(main, count - main), tail, inplace, code, op, t)

    def _leaders(self, src, dst, inplace, code, op, t):
        p = self.plan
        _, leaders, _ = p.subs()
        root = p._leader_index()
        if len(p.island.ranks) > 1:
            self.bridge.reduce(src, dst, src.count, code, op, root)
        elif not inplace:
            self.bridge.copy_device(dst, src, src.nbytes)
        if leaders is not None:
            h = self._to_host("h_lead", dst, code)
            leaders.allreduce(h, op, timeout=t)
            self.bridge.copy_in(dst, h)
        self._island_broadcast(dst, root)

    def allgather(self, src: DeviceBuffer, dst: DeviceBuffer, code, t):
        p = self.plan
        try:
            if dst.nbytes == 0:
                return
            blk = dst.count // p.p
            nb = blk * dtypes.ITEMSIZE[code]
            if src is dst or (src.ptr < dst.ptr + dst.nbytes and dst.ptr < src.ptr + src.nbytes):
                tmp = self._dev("d_ag_src", nb)      # in place: this rank's block of dst is its input
                self.bridge.copy_device(tmp, dst.view(p.ctx.rank * blk, blk), nb)
                src = tmp
            if p.whole:
                self._island_allgather(src, dst, nb)
                return
            s = len(p.island.ranks)
            mine = self._dev("d_ag_mine", s * nb)
            self._island_allgather(src, mine, nb)
            _, leaders, _ = p.subs()
            if leaders is not None:
                hm = self._host_arr("h_ag_mine", s * nb, code)
                self.bridge.copy_out(hm, mine)
                every = self._host_arr("h_ag_every", dst.nbytes, code)
                leaders.allgatherv(hm, [len(isl.ranks) * blk for isl in p.islands], out=every, timeout=t)
                ordered = self._host_arr("h_ag_ordered", dst.nbytes, code)
                ordered.reshape(p.p, blk)[p.order] = every.reshape(p.p, blk)    # island-major -> rank order
                self.bridge.copy_in(dst, ordered)
            self._island_broadcast(dst, p._leader_index())
        except Exception as e:               # noqa: BLE001
            raise p._failed(e) from None

    def broadcast(self, buf: DeviceBuffer, root, code, t):
        p = self.plan
        try:
            if buf.nbytes == 0:
                return
            ri = p._island_of(root)
            if p.whole or ri == p.mine:
                self._island_broadcast(buf, p.island.ranks.index(root))
                if p.whole:
                    return
            _, leaders, _ = p.subs()
            if leaders is not None:
                h = self._host_arr("h_bcast", buf.nbytes, code)
                if ri == p.mine:
                    self.bridge.copy_out(h, buf)
                leaders.broadcast(h, root=ri, timeout=t)
                if ri != p.mine:
                    self.bridge.copy_in(buf, h)
            if ri != p.mine:
                self._island_broadcast(buf, p._leader_index())
        except Exception as e:               # noqa: BLE001
            raise p._failed(e) from None


__all__ = ["DevicePath"]
