"""``ProcessGroupHetccl``: torch.distributed's collectives over one hetccl Communicator.

Each method checks its arguments and stages its tensors in the calling thread (so usage errors are
raised there, with their hetccl type), then runs the hetccl call:

* inline, when the call is blocking and nothing is pending (the latency path: no thread hand-off);
* otherwise on the group's collective lane, in issue order (``async_op=True``, DDP's gradient
  buckets), which completes the returned Work and its future;
* sends always inline (hetccl's sends never wait for the receiver), receives on a lane of their
  own per (source, tag), so ``batch_isend_irecv`` in any order cannot deadlock, a pending receive
  never holds up collectives or receives from other sources or tags, and receives of the same
  (source, tag) match messages in order.

The method names are the ones torch 2.13 reaches: the C++ trampoline (DDP, functional collectives)
and the Python ``dist.*`` functions. Every public method is wrapped in ``torch.compiler.disable``
so Dynamo never traces into it when compiled code calls back into the group.
"""
from __future__ import annotations

from datetime import timedelta
from functools import partial

import torch
import torch.distributed as dist
from torch._C import _distributed_c10d as _c10d

from ..errors import InvalidUsage
from ..ops import ReduceOp
from ..p2p import ANY_SOURCE
from . import convert
from .name import BACKEND_NAME
from .convert import Staged, concat, split_into
from .work import HetcclWork, Lane


def _one(tensors, what: str) -> torch.Tensor:
    if len(tensors) != 1:
        raise InvalidUsage(f"{what}: the hetccl backend takes exactly one tensor per call "
                           f"(got {len(tensors)}); issue one call per tensor")
    return tensors[0]


def _same_dtype(tensors, dtype, what: str) -> None:
    for x in tensors:
        if x.dtype != dtype:
            raise InvalidUsage(f"{what}: every tensor must be {dtype}, got {x.dtype}")


class ProcessGroupHetccl(dist.ProcessGroup):
    """A torch process group whose collectives run on a hetccl Communicator (CPU tensors).

    Created by the backend's creator (``init_process_group("hetccl")``, ``new_group``); the
    group owns the communicator and closes it on ``destroy_process_group``."""

    def __init__(self, comm, rank: int, size: int, timeout: float, group_id: str = ""):
        super().__init__(rank, size)
        self._comm = comm
        self._timeout = float(timeout)
        self._group_name = group_id
        self._group_desc = ""
        self._lane = Lane("hetccl-torch-collectives")
        self._recv_lanes: dict[tuple[int, int], Lane] = {}   # (source, tag) -> receives

    # ------------------------------------------------------------------ identity (torch needs these)
    def getBackendName(self) -> str:
        return BACKEND_NAME

    def getGroupName(self) -> str:
        return self._group_name

    def setGroupName(self, name: str) -> None:
        self._group_name = name

    def getGroupDesc(self) -> str:
        return self._group_desc

    def setGroupDesc(self, desc: str) -> None:
        self._group_desc = desc

    @property
    def communicator(self):
        """The hetccl Communicator under this group (for ``describe()``, ``explain()``...)."""
        return self._comm

    def __repr__(self):
        return f"<ProcessGroupHetccl {self._group_name!r} rank {self.rank()} of {self.size()}>"

    # ------------------------------------------------------------------ running calls
    def _t(self, opts) -> float:
        t = getattr(opts, "timeout", None)
        if t is not None and t > timedelta(0):
            return t.total_seconds()
        return self._timeout

    def _issue(self, what: str, outputs: list, fn, async_op: bool) -> HetcclWork:
        work = HetcclWork(what, outputs)
        if not async_op and self._lane.idle():
            fn()                      # errors propagate here with their own type
            work._complete()
            return work
        return self._lane.submit(work, fn)

    def _in_place(self, what: str, tensors, opts, call, reducing: bool = False) -> HetcclWork:
        """One tensor that ``call(array, timeout)`` reduces or overwrites in place."""
        s = Staged(_one(tensors, what), reducing=reducing)
        timeout = self._t(opts)

        def run():
            call(s.array, timeout)
            s.finish()
        return self._issue(what, tensors, run, opts.asyncOp)

    # ------------------------------------------------------------------ reductions
    def allreduce(self, tensors, opts=None):
        opts = opts if opts is not None else _c10d.AllreduceOptions()
        op = convert.reduce_op(opts.reduceOp, _one(tensors, "all_reduce").dtype)
        comm = self._comm
        return self._in_place("all_reduce", tensors, opts,
                              lambda a, t: comm.allreduce(a, op, timeout=t), reducing=True)

    def allreduce_coalesced(self, tensors, opts=None):
        opts = opts if opts is not None else _c10d.AllreduceCoalescedOptions()
        if not tensors:
            return self._issue("all_reduce_coalesced", tensors, lambda: None, opts.asyncOp)
        _same_dtype(tensors, tensors[0].dtype, "all_reduce_coalesced")
        op = convert.reduce_op(opts.reduceOp, tensors[0].dtype)
        flat = concat(tensors)
        arr = convert.array(flat, reducing=True)
        comm, timeout = self._comm, self._t(opts)

        def run():
            comm.allreduce(arr, op, timeout=timeout)
            split_into(flat, tensors)
        return self._issue("all_reduce_coalesced", tensors, run, opts.asyncOp)

    def reduce(self, tensors, opts=None):
        opts = opts if opts is not None else _c10d.ReduceOptions()
        op = convert.reduce_op(opts.reduceOp, _one(tensors, "reduce").dtype)
        root = int(opts.rootRank)
        comm, is_root = self._comm, root == self.rank()
        # non-root ranks' tensors come back unchanged
        return self._in_place("reduce", tensors, opts, lambda a, t: comm.reduce(
            a, root, op, out=a if is_root else None, timeout=t), reducing=True)

    def reduce_scatter(self, output_tensors, input_tensors, opts=None):
        opts = opts if opts is not None else _c10d.ReduceScatterOptions()
        out = _one(output_tensors, "reduce_scatter")
        ins = _one(input_tensors, "reduce_scatter")
        self._check_blocks(ins, out, "reduce_scatter")
        op = convert.reduce_op(opts.reduceOp, out.dtype)
        numels = [x.numel() for x in ins]
        u = convert.units(out, True)
        counts = None if len(set(numels)) == 1 else [n * u for n in numels]
        flat = concat(ins)
        src = convert.array(flat, reducing=True)
        dst = Staged(out, reducing=True)
        comm, timeout = self._comm, self._t(opts)

        def run():
            comm.reduce_scatter(src, out=dst.array, op=op, counts=counts, timeout=timeout)
            dst.finish()
        return self._issue("reduce_scatter", output_tensors, run, opts.asyncOp)

    def reduce_scatter_single(self, output, input, opts=None):
        opts = opts if opts is not None else _c10d.ReduceScatterOptions()
        return self._singles("reduce_scatter_tensor", [output], [input], opts, opts.reduceOp)

    def reduce_scatter_single_coalesced(self, outputs, inputs, opts=None):
        opts = opts if opts is not None else _c10d.ReduceScatterOptions()
        return self._singles("reduce_scatter_tensor_coalesced", outputs, inputs, opts,
                             opts.reduceOp)

    def _singles(self, what, outputs, inputs, opts, reduce_op):
        """all_gather_into_tensor (``reduce_op`` None) or reduce_scatter_tensor, of one or more
        (output, input) pairs, run back to back as one operation."""
        comm, timeout, fns = self._comm, self._t(opts), []
        for out, inp in zip(outputs, inputs, strict=True):
            if reduce_op is None:
                self._check_sizes(inp, out, what)
                dst, src = Staged(out), Staged(inp)
                fns.append(partial(comm.allgather, src.array, out=dst.array, timeout=timeout))
            else:
                op = convert.reduce_op(reduce_op, out.dtype)
                self._check_sizes(out, inp, what)
                dst, src = Staged(out, reducing=True), Staged(inp, reducing=True)
                fns.append(partial(comm.reduce_scatter, src.array, out=dst.array, op=op,
                                   timeout=timeout))
            fns.append(dst.finish)
        return self._issue(what, list(outputs), _chain(fns), opts.asyncOp)

    # ------------------------------------------------------------------ data movement
    def broadcast(self, tensors, opts=None):
        opts = opts if opts is not None else _c10d.BroadcastOptions()
        root, comm = int(opts.rootRank), self._comm
        return self._in_place("broadcast", tensors, opts,
                              lambda a, t: comm.broadcast(a, root, timeout=t))

    def allgather(self, output_tensors, input_tensors, opts=None):
        opts = opts if opts is not None else _c10d.AllgatherOptions()
        outs = _one(output_tensors, "all_gather")
        x = _one(input_tensors, "all_gather")
        self._check_blocks(outs, x, "all_gather")
        run = self._gather_list_fn(outs, x, self._t(opts))
        return self._issue("all_gather", output_tensors, run, opts.asyncOp)

    def _gather_list_fn(self, outs, x, timeout):
        numels = [o.numel() for o in outs]
        u = convert.units(x, False)
        src = Staged(x)
        flat = torch.empty(sum(numels), dtype=x.dtype)
        dst = convert.array(flat, reducing=False)
        comm = self._comm
        counts = None if len(set(numels)) == 1 else [n * u for n in numels]

        def run():
            if counts is None:
                comm.allgather(src.array, out=dst, timeout=timeout)
            else:
                comm.allgatherv(src.array, counts, out=dst, timeout=timeout)
            split_into(flat, outs)
        return run

    def allgather_coalesced(self, output_lists, input_list, opts=None):
        opts = opts if opts is not None else _c10d.AllgatherOptions()
        t = self._t(opts)
        fns = []
        for outs, x in zip(output_lists, input_list, strict=True):
            self._check_blocks(outs, x, "all_gather_coalesced")
            fns.append(self._gather_list_fn(outs, x, t))
        return self._issue("all_gather_coalesced", output_lists, _chain(fns), opts.asyncOp)

    def all_gather_single(self, output, input, opts=None):
        opts = opts if opts is not None else _c10d.AllgatherOptions()
        return self._singles("all_gather_into_tensor", [output], [input], opts, None)

    def all_gather_single_coalesced(self, outputs, inputs, opts=None):
        opts = opts if opts is not None else _c10d.AllgatherOptions()
        return self._singles("all_gather_into_tensor_coalesced", outputs, inputs, opts, None)

    def gather(self, output_tensors, input_tensors, opts=None):
        opts = opts if opts is not None else _c10d.GatherOptions()
        x = _one(input_tensors, "gather")
        root = int(opts.rootRank)
        src = Staged(x)
        comm, timeout = self._comm, self._t(opts)
        if self.rank() != root:
            if output_tensors and any(output_tensors):
                raise InvalidUsage("gather: only the root rank passes a gather_list")
            return self._issue("gather", [], lambda: comm.gather(src.array, root, timeout=timeout),
                               opts.asyncOp)
        outs = _one(output_tensors, "gather")
        self._check_blocks(outs, x, "gather", every=True)
        flat = torch.empty(x.numel() * self.size(), dtype=x.dtype)
        dst = convert.array(flat, reducing=False)

        def run():
            comm.gather(src.array, root, out=dst, timeout=timeout)
            split_into(flat, outs)
        return self._issue("gather", output_tensors, run, opts.asyncOp)

    def scatter(self, output_tensors, input_tensors, opts=None):
        opts = opts if opts is not None else _c10d.ScatterOptions()
        out = _one(output_tensors, "scatter")
        root = int(opts.rootRank)
        dst = Staged(out)
        src = None
        if self.rank() == root:
            ins = _one(input_tensors, "scatter")
            self._check_blocks(ins, out, "scatter", every=True)
            src = convert.array(concat(ins), reducing=False)
        elif input_tensors and any(input_tensors):
            raise InvalidUsage("scatter: only the root rank passes a scatter_list")
        comm, timeout = self._comm, self._t(opts)

        def run():
            comm.scatter(src, dst.array, root, timeout=timeout)
            dst.finish()
        return self._issue("scatter", output_tensors, run, opts.asyncOp)

    def alltoall(self, output_tensors, input_tensors, opts=None):
        opts = opts if opts is not None else _c10d.AllToAllOptions()
        self._check_list(output_tensors, "all_to_all output list")
        self._check_list(input_tensors, "all_to_all input list")
        dtype = input_tensors[0].dtype
        _same_dtype(input_tensors, dtype, "all_to_all")
        _same_dtype(output_tensors, dtype, "all_to_all")
        u = convert.units(input_tensors[0], False)
        sc = [x.numel() * u for x in input_tensors]
        rc = [x.numel() * u for x in output_tensors]
        src = convert.array(concat(input_tensors), reducing=False)
        flat = torch.empty(sum(x.numel() for x in output_tensors), dtype=dtype)
        dst = convert.array(flat, reducing=False)
        even = len(set(sc)) == 1 and sc == rc
        comm, timeout = self._comm, self._t(opts)

        def run():
            if even:
                comm.alltoall(src, out=dst, timeout=timeout)
            else:
                comm.alltoall(src, out=dst, send_counts=sc, recv_counts=rc, timeout=timeout)
            split_into(flat, output_tensors)
        return self._issue("all_to_all", output_tensors, run, opts.asyncOp)

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts=None):
        opts = opts if opts is not None else _c10d.AllToAllOptions()
        if output.dtype != input.dtype:
            raise InvalidUsage(f"all_to_all_single: output is {output.dtype} but input is "
                               f"{input.dtype}")
        u = convert.units(input, False)
        sc = self._split_counts(input, input_split_sizes, "input")
        rc = self._split_counts(output, output_split_sizes, "output")
        src = Staged(input)
        dst = Staged(output)
        even = not input_split_sizes and not output_split_sizes
        sc = [c * u for c in sc]
        rc = [c * u for c in rc]
        comm, timeout = self._comm, self._t(opts)

        def run():
            if even:
                comm.alltoall(src.array, out=dst.array, timeout=timeout)
            else:
                comm.alltoall(src.array, out=dst.array, send_counts=sc, recv_counts=rc,
                              timeout=timeout)
            dst.finish()
        return self._issue("all_to_all_single", [output], run, opts.asyncOp)

    def barrier(self, opts=None):
        opts = opts if opts is not None else _c10d.BarrierOptions()
        comm, timeout = self._comm, self._t(opts)
        return self._issue("barrier", [], lambda: comm.barrier(timeout=timeout), opts.asyncOp)

    # ------------------------------------------------------------------ point to point
    def send(self, tensors, dstRank, tag=0):
        t = _one(tensors, "send")
        s = Staged(t)
        self._comm.send(s.array, int(dstRank), int(tag), timeout=self._timeout)
        work = HetcclWork("send", tensors)
        work._complete()
        return work

    def recv(self, tensors, srcRank, tag=0):
        return self._recv(tensors, int(srcRank), int(tag))

    def recv_anysource(self, tensors, tag=0):
        return self._recv(tensors, ANY_SOURCE, int(tag))

    def _recv(self, tensors, src, tag):
        t = _one(tensors, "recv")
        s = Staged(t)
        comm, timeout = self._comm, self._timeout
        work = HetcclWork("recv", tensors)

        def run():
            work.source_rank = comm.recv(s.array, src, tag, timeout=timeout)
            s.finish()
        lane = self._recv_lanes.get((src, tag))
        if lane is None:
            lane = self._recv_lanes.setdefault((src, tag), Lane(f"hetccl-torch-recv-{src}-{tag}",
                                                                linger=False))
        return lane.submit(work, run)

    # ------------------------------------------------------------------ life cycle
    def shutdown(self) -> None:
        """destroy_process_group(): finish queued work (bounded), then leave the communicator.
        Safe from any thread, also while a collective runs: what did not finish in time fails
        with CommAborted (Communicator.close)."""
        t = min(self._timeout, 30.0)
        self._lane.stop(t)
        for lane in list(self._recv_lanes.values()):
            lane.stop(1.0)
        self._comm.close(timeout=t)
        self._cancel("the process group was shut down")

    def abort(self) -> None:
        """Stop at once, from any thread (torch's watchdog): running and queued operations fail
        with CommAborted, every link is dropped, and peers blocked on this rank raise
        PeerLostError."""
        self._comm.abort()
        self._cancel("the process group was aborted")

    def _cancel(self, why: str) -> None:
        self._lane.cancel(why)
        for lane in list(self._recv_lanes.values()):
            lane.cancel(why)

    # ------------------------------------------------------------------ argument checks
    def _check_list(self, tensors, what: str) -> None:
        if len(tensors) != self.size():
            raise InvalidUsage(f"{what} has {len(tensors)} tensors; the group has {self.size()} "
                               f"ranks, so pass one tensor per rank")

    def _check_blocks(self, blocks, mine, what: str, every: bool = False) -> None:
        """One tensor per rank in ``blocks``, of ``mine``'s dtype; this rank's (``every``: each
        one) has as many elements as ``mine``."""
        self._check_list(blocks, f"{what} tensor list")
        _same_dtype(blocks, mine.dtype, what)
        for b in (blocks if every else [blocks[self.rank()]]):
            if b.numel() != mine.numel():
                raise InvalidUsage(f"{what}: a tensor of the list has {b.numel()} elements and "
                                   f"the single tensor {mine.numel()}; they must match")

    def _check_sizes(self, small, big, what: str) -> None:
        if big.numel() != small.numel() * self.size():
            raise InvalidUsage(f"{what}: the larger tensor must have group size ({self.size()}) x "
                               f"{small.numel()} elements, got {big.numel()}")
        if big.dtype != small.dtype:
            raise InvalidUsage(f"{what}: output and input dtypes differ ({big.dtype} vs "
                               f"{small.dtype})")

    def _split_counts(self, t, splits, what: str) -> list:
        """Elements per rank of an all_to_all_single buffer: dim-0 splits (equal if none)."""
        n = self.size()
        rows = t.shape[0] if t.dim() else 1
        row = t.numel() // rows if rows else 0
        if not splits:
            if rows % n:
                raise InvalidUsage(f"all_to_all_single: the {what} has {rows} rows, not divisible "
                                   f"by the group size {n}; pass {what}_split_sizes")
            return [rows // n * row] * n
        if len(splits) != n or sum(splits) != rows:
            raise InvalidUsage(f"all_to_all_single: {what}_split_sizes {list(splits)} must have "
                               f"{n} entries adding up to the {what}'s {rows} rows")
        return [int(s) * row for s in splits]

    # old names torch still falls back to
    _allgather_base = all_gather_single
    _reduce_scatter_base = reduce_scatter_single
    allgather_into_tensor_coalesced = all_gather_single_coalesced
    reduce_scatter_tensor_coalesced = reduce_scatter_single_coalesced
    alltoall_base = all_to_all_single


def _chain(fns):
    def run():
        for f in fns:
            f()
    return run


_COMPILED_OUT = ("allreduce", "allreduce_coalesced", "reduce", "reduce_scatter",
                 "reduce_scatter_single", "reduce_scatter_single_coalesced", "broadcast",
                 "allgather", "allgather_coalesced", "all_gather_single",
                 "all_gather_single_coalesced", "gather", "scatter", "alltoall",
                 "all_to_all_single", "barrier", "send", "recv", "recv_anysource",
                 "_allgather_base", "_reduce_scatter_base", "allgather_into_tensor_coalesced",
                 "reduce_scatter_tensor_coalesced", "alltoall_base")
for _name in _COMPILED_OUT:   # Dynamo must not trace these when compiled code calls back into us
    setattr(ProcessGroupHetccl, _name, torch.compiler.disable(getattr(ProcessGroupHetccl, _name)))
del _name
