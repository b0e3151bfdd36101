"""Torch tensors as the numpy views hetccl moves, and torch reduce ops as hetccl ops.

Why views: a CPU tensor and the numpy array returned by ``Tensor.numpy()`` share memory, so the
Cython engine reduces straight into the tensor's storage (no copy). dtypes numpy lacks (bfloat16,
float8) are reinterpreted through an integer view of the same width and relabelled with the
ml_dtypes type hetccl understands. A non-contiguous tensor cannot be viewed flat, so it is staged:
copied into a contiguous temporary before the call and copied back after it (outputs only).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.distributed as dist

from .. import dtypes
from ..errors import InvalidUsage
from ..ops import ReduceOp

# torch dtypes numpy cannot hold, viewed as same-width integers and relabelled with ml_dtypes'
# type (imported by dtypes.numpy_dtype on the first such tensor)
_RELABEL = {
    torch.bfloat16: (torch.int16, dtypes.BFLOAT16),
    torch.float8_e4m3fn: (torch.uint8, dtypes.FP8_E4M3),
    torch.float8_e5m2: (torch.uint8, dtypes.FP8_E5M2),
}
# dtypes hetccl reduces (numpy-native ones map through Tensor.numpy())
REDUCIBLE = frozenset({torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8,
                       torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16,
                       torch.uint32, torch.uint64, torch.bool, torch.float8_e4m3fn,
                       torch.float8_e5m2})

_RED = dist.ReduceOp.RedOpType
_OPS = {_RED.SUM: ReduceOp.SUM, _RED.PRODUCT: ReduceOp.PROD, _RED.MIN: ReduceOp.MIN,
        _RED.MAX: ReduceOp.MAX, _RED.AVG: ReduceOp.AVG, _RED.BAND: ReduceOp.BAND,
        _RED.BOR: ReduceOp.BOR, _RED.BXOR: ReduceOp.BXOR}


def reduce_op(op, dtype: torch.dtype) -> ReduceOp:
    """The hetccl op for a torch ``ReduceOp`` (or ``RedOpType``) on ``dtype``.

    Checked here, in the calling thread, so a bad pair raises InvalidUsage at the call even with
    ``async_op=True``. As in gloo and NCCL, SUM/PRODUCT of bool tensors mean any/all (BOR/BAND);
    complex tensors are reduced as (re, im) pairs, so only SUM and AVG are defined for them."""
    kind = getattr(op, "op", op)
    try:
        hop = _OPS[kind]
    except (KeyError, TypeError):
        if kind == _RED.PREMUL_SUM:
            raise InvalidUsage("ReduceOp.PREMUL_SUM is not supported by the hetccl backend; "
                               "multiply the tensor by the factor first, then all_reduce with "
                               "ReduceOp.SUM") from None
        raise InvalidUsage(f"reduce op {op!r} is not supported by the hetccl backend; use SUM, "
                           f"PRODUCT, MIN, MAX, AVG, BAND, BOR or BXOR") from None
    if dtype == torch.bool:
        hop = {ReduceOp.SUM: ReduceOp.BOR, ReduceOp.PROD: ReduceOp.BAND}.get(hop, hop)
    if dtype.is_complex:
        if hop not in (ReduceOp.SUM, ReduceOp.AVG):
            raise InvalidUsage(f"{hop.name} on complex tensors is not defined; the hetccl backend "
                               f"reduces complex tensors with SUM or AVG only")
        return hop
    dtypes.check_op(_code(dtype), hop)
    return hop


@functools.lru_cache(maxsize=None)
def _code(dtype: torch.dtype) -> int:
    return dtypes.from_numpy(array(torch.empty(1, dtype=dtype), reducing=True).dtype)


def array(t: torch.Tensor, *, reducing: bool) -> np.ndarray:
    """A flat numpy view sharing ``t``'s (contiguous) storage.

    ``reducing``: the values will be combined arithmetically, so the dtype must be one hetccl
    reduces; otherwise (data movement) any dtype is moved as its raw bytes."""
    flat = t.detach().reshape(-1)
    dt = t.dtype
    if dt in _RELABEL:
        as_int, code = _RELABEL[dt]
        return flat.view(as_int).numpy().view(dtypes.numpy_dtype(code))
    if dt in REDUCIBLE:
        return flat.numpy()
    if reducing:
        if dt.is_complex:
            return flat.view(torch.view_as_real(flat).dtype).numpy()   # (re, im) pairs
        raise InvalidUsage(f"the hetccl backend cannot reduce {dt}; supported dtypes: "
                           f"{', '.join(sorted(str(d).removeprefix('torch.') for d in REDUCIBLE))}")
    return flat.view(torch.uint8).numpy()


@functools.lru_cache(maxsize=None)
def _units(dtype: torch.dtype, reducing: bool) -> int:
    return array(torch.empty(1, dtype=dtype), reducing=reducing).size


def units(t: torch.Tensor, reducing: bool) -> int:
    """hetccl elements per element of ``t`` in ``array(t)``: 1, or its bytes / (re, im) pair."""
    return _units(t.dtype, reducing)


class Staged:
    """A tensor made contiguous for one call: ``.array`` is what hetccl reads/writes, and
    ``finish()`` copies the result back when the tensor had to be staged (outputs only)."""

    __slots__ = ("tensor", "work", "array")

    def __init__(self, t: torch.Tensor, *, reducing: bool = False):
        if t.device.type != "cpu":
            raise InvalidUsage(f"the hetccl backend works on CPU tensors; got a tensor on "
                               f"{t.device}; move it with .cpu() or use a backend for that device")
        self.tensor = t
        self.work = t if t.is_contiguous() else t.contiguous()
        self.array = array(self.work, reducing=reducing)

    def finish(self) -> None:
        if self.work is not self.tensor:
            self.tensor.copy_(self.work)


def split_into(flat: torch.Tensor, outs) -> None:
    """Copy consecutive blocks of ``flat`` into the tensors of ``outs`` (their own shapes)."""
    off = 0
    for o in outs:
        n = o.numel()
        o.copy_(flat[off:off + n].view(o.shape))
        off += n


def concat(tensors) -> torch.Tensor:
    """All tensors of a list, flattened and concatenated (the send side of a list collective)."""
    if len(tensors) == 1:
        return tensors[0].detach().reshape(-1)
    return torch.cat([x.detach().reshape(-1) for x in tensors])
