"""One timing method for every library: :func:`run_sweep` drives a collective through an adapter.

The adapter
-----------
An adapter wraps one library's communicator. It is duck-typed; :class:`Adapter` documents the
interface and provides the optional parts. Required:

``rank``, ``size``, ``name``
    this process's rank, the number of ranks, and the library's display name.
``alloc(collective, nbytes, dtype) -> buffers``
    buffers for one row of the sweep, *nbytes* being the nccl-tests size
    (:func:`~.format.layout` gives the counts). Use :meth:`NumpyBuffers.create` unless the library
    needs its own memory; it fills inputs so the expected result is known and touches every page.
    :meth:`Adapter.alloc` passes it the allocator named by ``allocation`` (``--alloc``; default
    :func:`mapped_empty`), so every library's buffers lie alike (see "buffer memory" below).
``run(collective, buffers, op)``
    one call of the collective, blocking until this rank's part is complete.
``sync()``
    a barrier.
``max_over_ranks(x: float) -> float``
    the maximum of *x* over all ranks, computed by the library itself; only called outside timed
    regions.
``check(collective, buffers, op) -> int``
    the number of wrong elements on this rank. :class:`Adapter` implements it as: refill the
    inputs, one :meth:`run`, compare (so in-place libraries are checked on fresh inputs too).

Optional: ``bind(collective, buffers, op) -> callable`` returns a zero-argument function doing one
call (e.g. a ``functools.partial`` of the library function) so that the timed loop does not pay
for the adapter's dispatch on the collective name; ``sum_over_ranks(x)`` (the ``#wrong`` column is
the sum over ranks like nccl-tests when present, else the max); ``supports(collective, dtype, op)
-> bool | str`` (False or a reason string skips the collective); ``extras(collective, buffers, op)
-> dict`` called after the timed repetitions, whose entries become extra columns (e.g. ``algo``);
``extra_columns`` (names of those columns, so the header can show them before the first row).

Variants (``run_sweep(..., variants=[...])``, e.g. one per algorithm of the library): ``bind``,
``run``, ``check`` and ``extras`` then also receive ``variant=<label>``, and the optional
``supports_variant(collective, nbytes, variant) -> bool | str`` leaves out what cannot run.

The method
----------
Identical for every library. Per size: allocate and fill buffers (first touch happens here);
``warmup`` calls; calibrate: time 1, then more calls (barrier; t0; k calls; t1, max over ranks)
until one batch lasts >= min_time/4, so rank 0 can pick ``iters`` such that one repetition lasts
about ``min_time``, agreed on through ``max_over_ranks`` so every rank runs the same count; then
``reps`` repetitions of (barrier; t0; ``iters`` calls; t1) with the Python garbage collector off.
A repetition's time per call is the maximum over ranks of (t1 - t0) / iters; the row reports the
median over repetitions. By default the repetitions of neighbouring sizes are interleaved (rep 1
of every size in a group, then rep 2, ...; groups bounded by ``group_bytes`` of buffers per rank)
so that each size's median spans several seconds of the run rather than one short window: the
speed of the hosts we run on changes every few seconds. With variants (several algorithms of one
library), each timed block is preceded by one untimed call of the same variant and followed by a
barrier, and the order of the variants changes from one repetition to the next (rotated, and
reversed every other time): see _variant_order. Correctness is checked after the timing
(:meth:`Adapter.check`); nothing outside the (t0, t1) windows is timed.
"""
from __future__ import annotations

import gc
import json
import math
import mmap
import os
import platform
import socket
import statistics
import sys
import time
from datetime import datetime, timezone

import numpy as np

from . import format as fmt

try:
    from ..memory.mapped import mapped_empty
except ImportError:     # the peers' processes load this package alone, without hetccl (bench/peers/_common.py)
    import importlib.util as _importlib_util
    _spec = _importlib_util.spec_from_file_location(
        "_hetccl_memory_mapped", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                              "memory", "mapped.py"))
    _mapped = _importlib_util.module_from_spec(_spec)
    _spec.loader.exec_module(_mapped)
    mapped_empty = _mapped.mapped_empty

# ------------------------------------------------------------------ dtypes and ops

_OP_NAMES = ("sum", "prod", "min", "max", "avg", "band", "bor", "bxor")


def resolve_dtype(dtype) -> np.dtype:
    """numpy dtype from a name or dtype; bfloat16 and float8 through ml_dtypes."""
    if isinstance(dtype, np.dtype):
        return dtype
    name = str(getattr(dtype, "name", dtype)).lower()
    name = {"float": "float32", "half": "float16", "double": "float64", "bf16": "bfloat16",
            "fp16": "float16", "fp32": "float32", "fp64": "float64"}.get(name, name)
    if name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        import ml_dtypes
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def op_name(op) -> str:
    """'sum', 'max', ... from a name, an enum member or anything with a ``name``."""
    name = (getattr(op, "name", None) or str(op)).lower()
    if name not in _OP_NAMES:
        raise ValueError(f"unknown reduction op {op!r}; use one of {', '.join(_OP_NAMES)}")
    return name


def _eps(dt: np.dtype) -> float:
    try:
        return float(np.finfo(dt).eps)
    except ValueError:  # ml_dtypes types have their own finfo
        import ml_dtypes
        return float(ml_dtypes.finfo(dt).eps)


def _is_float(dt: np.dtype) -> bool:
    return dt.kind == "f" or dt.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")


# ------------------------------------------------------------------ input patterns
# Reducing collectives: rank r, element k holds 1 + (r + k) % 3 (small integers: sums, products
# of a few ranks, min and max are exact even in float16/bfloat16). Data-movement collectives:
# 1 + (31 r + k) % 251, so a block from the wrong rank or at the wrong offset is detected.
_RED_PERIOD = 3
_MOV_PERIOD = 251
_CHUNK = 1 << 20


def _reduction_base(op: str, nranks: int, dt: np.dtype) -> np.ndarray:
    """Expected reduced values for k = 0 .. period-1 (float64 or int64, cast by the caller)."""
    k = np.arange(_RED_PERIOD)
    vals = [1 + (r + k) % _RED_PERIOD for r in range(nranks)]
    fl = _is_float(dt)
    acc = np.array(vals[0], dtype=np.float64 if fl else np.int64)
    for v in vals[1:]:
        if op in ("sum", "avg"):
            acc = acc + v
        elif op == "prod":
            acc = acc * v
        elif op == "min":
            acc = np.minimum(acc, v)
        elif op == "max":
            acc = np.maximum(acc, v)
        elif op == "band":
            acc = acc & v
        elif op == "bor":
            acc = acc | v
        elif op == "bxor":
            acc = acc ^ v
    if op == "avg":
        acc = acc / nranks if fl else acc // nranks
    return acc


def _input_base(collective: str, rank: int) -> np.ndarray:
    if collective in fmt.REDUCING:
        return 1 + (rank + np.arange(_RED_PERIOD)) % _RED_PERIOD
    return 1 + (31 * rank + np.arange(_MOV_PERIOD)) % _MOV_PERIOD


def _tiled(base: np.ndarray, phase: int, dt: np.dtype) -> np.ndarray:
    period = len(base)
    rolled = np.roll(np.asarray(base), -(phase % period))
    reps = max(1, _CHUNK // period)
    return np.tile(rolled, reps).astype(dt)


def _fill_periodic(view: np.ndarray, base: np.ndarray, phase: int) -> None:
    if view.size == 0:
        return
    t = _tiled(base, phase, view.dtype)
    step = len(t)
    for a in range(0, view.size, step):
        seg = view[a:a + step]
        seg[...] = t[:seg.size]


def _wrong_periodic(view: np.ndarray, base: np.ndarray, phase: int, rtol: float) -> int:
    if view.size == 0:
        return 0
    t = _tiled(base, phase, view.dtype)
    step = len(t)
    bad = 0
    for a in range(0, view.size, step):
        seg = view[a:a + step]
        exp = t[:seg.size]
        if rtol:
            ok = np.isclose(seg.astype(np.float64), exp.astype(np.float64), rtol=rtol, atol=rtol)
            bad += int(seg.size - np.count_nonzero(ok))
        else:
            bad += int(np.count_nonzero(seg != exp))
    return bad


# ------------------------------------------------------------------ buffer memory
# Where a buffer lies changes what a cross-memory copy costs, by more than the libraries differ
# (process_vm_readv on this VM, CPU time of the reader, bench/cma_placement.py: source and
# destination at different offsets modulo 64 cost up to 20% more at 1-8 MiB than at equal offsets;
# buffers without huge pages 25-40% more than buffers on them). np.empty leaves both to glibc and
# to each process's history: the first large arrays are fresh mappings at 16 mod 4096 whose
# 2 MiB-aligned part gets huge pages (numpy asks for them from 4 MiB up); once one is freed,
# glibc's mmap threshold rises to its size (up to 32 MiB), so later ones come from the heap, at
# offsets modulo 64 that each library's own allocations decide, on pages faulted in small or huge
# by whatever lay there before. So "mapped", the default, gives every library's ranks the same
# memory: each buffer is its own fresh anonymous mapping, starting on a page (on a 2 MiB boundary
# from 4 MiB up), with numpy's own huge-page advice. "numpy" keeps np.empty, to see what a
# placement costs.

ALLOCATIONS = ("mapped", "numpy")
DEFAULT_ALLOCATION = "mapped"
def allocator(name: str):
    """The (count, dtype) -> array function of an allocation method (ALLOCATIONS)."""
    if name == "mapped":
        return mapped_empty
    if name == "numpy":
        return lambda n, dt: np.empty(n, dtype=dt)
    raise ValueError(f"unknown buffer allocation {name!r}; use one of {', '.join(ALLOCATIONS)}")


def describe_allocation(name: str) -> str:
    """One line for output headers: how the benchmark's buffers were allocated."""
    if name == "mapped":
        return ("buffers mapped: each its own anonymous mapping, page-aligned (2 MiB-aligned from "
                "4 MiB), numpy's huge-page advice from 4 MiB; the same in every library")
    return "buffers numpy: np.empty (offsets and huge pages as glibc and each process's history leave them)"


def huge_page_bytes(spans) -> list[int]:
    """Bytes of each (address, length) span that lie on transparent huge pages, page by page:
    /proc/self/pagemap gives each page's frame, /proc/kpageflags whether the frame is part of one
    (bit 22, THP). -1 where that cannot be read (frames are hidden from processes without
    CAP_SYS_ADMIN)."""
    try:
        pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
    except OSError:
        return [-1] * len(spans)
    try:
        flags = os.open("/proc/kpageflags", os.O_RDONLY)
    except OSError:
        os.close(pagemap)
        return [-1] * len(spans)
    page = mmap.PAGESIZE
    out = []
    try:
        for addr, n in spans:
            first, last = addr // page, (addr + max(n, 1) - 1) // page
            entries = np.frombuffer(os.pread(pagemap, 8 * (last - first + 1), 8 * first), dtype=np.uint64)
            frames = entries & np.uint64((1 << 55) - 1)
            present = (entries >> np.uint64(63)) & np.uint64(1)
            if present.any() and not frames[present.astype(bool)].any():
                return [-1] * len(spans)             # frames hidden: not allowed to see them
            huge = 0
            for k, (pfn, on) in enumerate(zip(frames.tolist(), present.tolist())):
                if on and pfn:
                    f = int.from_bytes(os.pread(flags, 8, 8 * pfn), "little")
                    if f >> 22 & 1:
                        lo = max(addr, (first + k) * page)
                        huge += min(addr + n, (first + k + 1) * page) - lo
            out.append(huge)
    except OSError:
        return [-1] * len(spans)
    finally:
        os.close(pagemap)
        os.close(flags)
    return out


def placement(bufs) -> dict:
    """Where this rank's buffers lie: their addresses and the bytes of each on huge pages."""
    spans = [(b.__array_interface__["data"][0], b.nbytes) for b in (bufs.send, bufs.recv)]
    huge = huge_page_bytes(spans)
    return {"send": spans[0][0], "recv": spans[1][0], "send_huge": huge[0], "recv_huge": huge[1]}


def per_rank(adapter, value: float) -> list[float]:
    """Every rank's *value* (exact up to 2**53), through the adapter's own max_over_ranks: rank r's
    turn sends its value, the others -1. Collective; outside timed regions only."""
    return [adapter.max_over_ranks(float(value) if adapter.rank == r else -1.0)
            for r in range(int(adapter.size))]


def gather_placement(adapter, bufs) -> list[dict]:
    """placement() of every rank (collective)."""
    mine = placement(bufs)
    cols = {k: per_rank(adapter, v) for k, v in mine.items()}
    return [{k: int(cols[k][r]) for k in mine} for r in range(int(adapter.size))]


def format_placement(ranks: list[dict]) -> str:
    """``send 16/16 recv 16/16 huge 6/8 MiB`` per rank (address mod 64 / mod 4096; huge-page MiB
    of the send buffer / its size), ranks separated by ``; ``."""
    def one(p):
        return (f"send {p['send'] % 64}/{p['send'] % 4096} recv {p['recv'] % 64}/{p['recv'] % 4096}"
                + (f" huge {p['send_huge'] / 2**20:g}+{p['recv_huge'] / 2**20:g}M"
                   if p["send_huge"] or p["recv_huge"] else ""))
    return "; ".join(one(p) for p in ranks)


class NumpyBuffers:
    """Send/receive numpy arrays for one row, filled with a known pattern.

    ``send`` and ``recv`` are the same array when *in_place* (allowed when both counts are equal,
    and always the case for broadcast, whose root sends from the buffer the others receive into).
    """

    def __init__(self, collective, lay: fmt.Layout, dtype, rank: int, in_place=False, root=0,
                 allocator=None):
        self.collective = fmt.canonical(collective)
        self.layout = lay
        self.dtype = resolve_dtype(dtype)
        self.rank = int(rank)
        self.nranks = lay.nranks
        self.root = int(root)
        if self.collective == "broadcast":
            in_place = True
        if in_place and lay.send_count != lay.recv_count:
            raise ValueError(f"{self.collective} cannot run in place: send and receive counts differ")
        self.in_place = bool(in_place)
        alloc = allocator or (lambda n, dt: np.empty(n, dtype=dt))
        self.send = alloc(lay.send_count, self.dtype)
        self.recv = self.send if self.in_place else alloc(lay.recv_count, self.dtype)
        self.fill()

    @classmethod
    def create(cls, collective, nbytes, dtype, rank, nranks, in_place=False, root=0, allocator=None):
        dt = resolve_dtype(dtype)
        lay = fmt.layout(collective, nbytes, dt.itemsize, nranks)
        return cls(collective, lay, dt, rank, in_place=in_place, root=root, allocator=allocator)

    @property
    def nbytes(self) -> int:
        return self.layout.size

    def fill(self) -> None:
        """(Re)write the inputs, and zero the output; touches every page of both."""
        c = self.collective
        if not self.in_place:
            self.recv.fill(0)
        if c == "broadcast" and self.rank != self.root:
            self.send.fill(0)
            return
        _fill_periodic(self.send, _input_base(c, self.rank), 0)

    def count_wrong(self, op="sum") -> int:
        """Elements of this rank's output that differ from the expected result."""
        c, n, lay, dt = self.collective, self.nranks, self.layout, self.dtype
        per = lay.count
        if c in fmt.REDUCING:
            name = op_name(op)
            base = _reduction_base(name, n, dt)
            rtol = 0.0
            if name == "avg":
                rtol = 4 * _eps(dt) if _is_float(dt) else 0.0
            if c == "allreduce":
                return _wrong_periodic(self.recv, base, 0, rtol)
            if c == "reduce":
                return _wrong_periodic(self.recv, base, 0, rtol) if self.rank == self.root else 0
            return _wrong_periodic(self.recv, base, self.rank * per, rtol)  # reduce_scatter
        if c == "broadcast":
            return _wrong_periodic(self.recv, _input_base(c, self.root), 0, 0.0)
        if c == "scatter":  # my block of the root's buffer
            return _wrong_periodic(self.recv, _input_base(c, self.root), self.rank * per, 0.0)
        if c == "gather" and self.rank != self.root:
            return 0
        bad = 0
        for s in range(n):
            block = self.recv[s * per:(s + 1) * per]
            phase = self.rank * per if c == "alltoall" else 0  # alltoall: peer s's block for me
            bad += _wrong_periodic(block, _input_base(c, s), phase, 0.0)
        return bad


# ------------------------------------------------------------------ adapter base


class Adapter:
    """Base class for adapters (optional: duck typing works too). See the module docstring."""
    name = "?"
    rank = 0
    size = 1
    extra_columns: tuple = ()
    #: collectives the library runs in place (one buffer), e.g. torch.distributed's all_reduce
    in_place: frozenset = frozenset({"broadcast"})

    #: how alloc() makes the benchmark's buffers (ALLOCATIONS; ``--alloc``): every library the same
    allocation = DEFAULT_ALLOCATION

    def alloc(self, collective, nbytes, dtype):
        c = fmt.canonical(collective)
        return NumpyBuffers.create(c, nbytes, dtype, self.rank, self.size,
                                   in_place=c in self.in_place, allocator=allocator(self.allocation))

    def run(self, collective, buffers, op, **variant):
        self.bind(collective, buffers, op, **variant)()

    def bind(self, collective, buffers, op, **variant):
        raise NotImplementedError

    def sync(self):
        raise NotImplementedError

    def max_over_ranks(self, x: float) -> float:
        raise NotImplementedError

    def check(self, collective, buffers, op, **variant) -> int:
        buffers.fill()
        self.sync()
        self.run(collective, buffers, op, **variant)
        self.sync()
        return buffers.count_wrong(op)

    def supports(self, collective, dtype, op):
        return True

    def extras(self, collective, buffers, op, **variant) -> dict:
        return {}


# ------------------------------------------------------------------ timing


def _timed(fn, iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return time.perf_counter() - t0


def _calibrate(adapter, fn, min_time: float, max_iters: int) -> int:
    n = 1
    while True:
        adapter.sync()
        t = adapter.max_over_ranks(_timed(fn, n))
        if t >= min_time / 4 or n >= max_iters:
            break
        if t <= 0:
            n = min(max_iters, n * 10)
        else:
            n = min(max_iters, max(2 * n, int(n * (min_time / 2) / t)))
    per_call = t / n
    mine = 0.0
    if adapter.rank == 0:
        mine = float(max(1, min(max_iters, round(min_time / per_call) if per_call > 0 else max_iters)))
    return max(1, int(adapter.max_over_ranks(mine)))


def _default_warmup(nbytes: int) -> int:
    return 5 if nbytes <= (16 << 20) else 2


def _emit(out, text):
    if out is None:
        print(text, flush=True)
    else:
        out(text)


def _footprint(lay: fmt.Layout, in_place: bool) -> int:
    per = lay.itemsize
    return per * (max(lay.send_count, lay.recv_count) if in_place else lay.send_count + lay.recv_count)


def _groups(layouts, budget, in_place):
    """Consecutive sizes whose buffers together stay within *budget* bytes (at least one each)."""
    groups, cur, used = [], [], 0
    for lay in layouts:
        need = _footprint(lay, in_place)
        if cur and used + need > budget:
            groups.append(cur)
            cur, used = [], 0
        cur.append(lay)
        used += need
    if cur:
        groups.append(cur)
    return groups


def _variant_order(states, variants, k):
    """Repetition k's order of the (size, variant) blocks of a group: the variants of each size
    back to back, rotated by k, and reversed on every other repetition.

    Why not a plain rotation: it keeps the cyclic order, so every variant always follows the same
    other one, and the first call after a switch of algorithm (other buffers, scratch and FIFO
    state in the caches) is slower. At large sizes a block is a single call, so that cost lands
    on every sample of the variant that follows a different algorithm, while the forced variant
    that follows "auto" (usually the very algorithm auto runs) finds everything warm: measured
    at 32 MiB on 3 ranks, auto/ring 1.06 by repetition against 1.005 with one untimed call
    before each block. The runner makes that call (run_sweep) and varies the predecessors.

    The successor matters too, so a timed block is followed by a barrier (run_sweep): a rank done
    with its part of a call goes on to the next block while the others still run this one, and a
    different algorithm's first steps there take the CPUs the call's last steps need when ranks
    share CPUs. Recorded (4 ranks on 2 CPUs, bench/results/crossover-2026-12-07*-raw, five runs of
    two passes): a binomial reduce of 32 MiB, whose last level keeps two ranks at work, took a
    median 19.6-22.4 ms per pass over the repetitions whose next block was reduce_scatter_gather
    of that size (ranks 1 and 3, done after the first level, start its exchanges; 24.7-35.4 ms
    before the 128 MiB one) and 13.8-18.6 ms over those followed by the same algorithm ("auto")
    or the next repetition; with 8 of 15 repetitions of the first kind its median lost to
    reduce_scatter_gather (16.5 ms), which a loop of the binomial reduce beats."""
    nvar = len(variants)
    back = k % 2 == 1

    def key(s):
        pos = (variants.index(s[1]) - k) % nvar
        return s[0].size, (nvar - 1 - pos) if back else pos
    return sorted(states, key=key)


def run_sweep(adapter, collective, sizes, dtype="float32", op="sum", reps=5, min_time=0.03,
              warmup=None, max_iters=1_000_000, check=True, out=None, print_header=True,
              extra_columns=None, interleave=True, group_bytes=512 << 20, variants=None):
    """Time *collective* at every size of *sizes* (nccl-tests sizes in bytes); return the rows.

    Rank 0 prints the nccl-tests table through *out* (a callable taking one string; default print).
    Every rank returns the same list of JSON-able dicts: collective, size, count, type, redop,
    nranks, library, time_us (median over reps of the max over ranks), algbw, busbw (GB/s), wrong,
    iters, reps, times_us (every repetition) and the adapter's extras.

    With *interleave* (the default) the repetitions of different sizes are interleaved: sizes are
    taken in groups whose buffers fit in *group_bytes* per rank; each size of a group is warmed up
    and calibrated, then repetition 1 of every size runs, then repetition 2, and so on. Each
    size's median then spans the whole group's duration instead of one short window, which matters
    on hosts whose speed changes every few seconds. Rows are printed when their group completes.

    *variants* (a list of labels, e.g. algorithm names) times several ways of running the same
    collective in one sweep: every size is run once per variant, on the same buffers, and the
    repetitions of all variants are interleaved too (repetition k runs every variant of every size
    of the group, the variants' order rotating with k and reversed on odd k, each block preceded
    by one untimed call of its variant: see _variant_order), so the variants of a size are
    measured under the same machine conditions, each in its steady state. The adapter then gets ``variant=`` in ``bind``, ``check``
    and ``extras``, and may define ``supports_variant(collective, nbytes, variant) -> bool | str``
    to leave out combinations it cannot run. Each row has a ``variant`` key (and column).
    """
    coll = fmt.canonical(collective)
    dt = resolve_dtype(dtype)
    opn = op_name(op) if coll in fmt.REDUCING else op_name(op or "sum")
    n = int(adapter.size)
    is_root = adapter.rank == 0
    extra_cols = list(extra_columns if extra_columns is not None
                      else getattr(adapter, "extra_columns", ()))
    if variants is not None:
        variants = list(variants)
        if not variants:
            return []
        if "variant" not in extra_cols:
            extra_cols.insert(0, "variant")
    say = (lambda s: _emit(out, s)) if is_root else (lambda s: None)

    supports = getattr(adapter, "supports", None)
    ok = supports(coll, dt, opn) if supports else True
    if ok is not True:
        reason = ok if isinstance(ok, str) else "not supported by this adapter"
        say(f"# {adapter.name}: {coll} {dt.name} {opn}: skipped ({reason})")
        return []

    bind = getattr(adapter, "bind", None)
    summed = getattr(adapter, "sum_over_ranks", None)
    supports_variant = getattr(adapter, "supports_variant", None)
    in_place = coll in getattr(adapter, "in_place", ())
    layouts, seen = [], set()
    for nbytes in sizes:
        lay = fmt.layout(coll, int(nbytes), dt.itemsize, n)
        if not lay.empty and lay.size not in seen:
            seen.add(lay.size)
            layouts.append(lay)
    layouts.sort(key=lambda lay: lay.size)
    groups = _groups(layouts, group_bytes, in_place) if interleave else [[x] for x in layouts]
    var_kw = (lambda v: {}) if variants is None else (lambda v: {"variant": v})

    def bound(bufs, v):
        fn = None
        if bind is not None:
            try:
                fn = bind(coll, bufs, opn, **var_kw(v))
            except NotImplementedError:
                fn = None
        if fn is None:
            fn = (lambda a=adapter, c=coll, b=bufs, o=opn, kw=var_kw(v): a.run(c, b, o, **kw))
        return fn

    allocation = getattr(adapter, "allocation", None)
    if print_header:
        shown = f"  variants {','.join(variants)}" if variants is not None else ""
        say(f"# {adapter.name} {coll}  nranks {n}  type {dt.name}  redop "
            f"{opn if coll in fmt.REDUCING else 'none'}  reps {reps}  min_time {min_time * 1e3:g} ms"
            f"{shown}")
        if allocation is not None:
            say(f"# {describe_allocation(allocation)}")
        say(fmt.header(extra_cols))
    rows, skipped = [], set()
    for group in groups:
        states = []   # (layout, variant, buffers, fn, iters, local times)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            for lay in group:
                bufs = adapter.alloc(coll, lay.size, dt)
                adapter.sync()
                for v in (variants if variants is not None else [None]):
                    if v is not None and supports_variant is not None:
                        why = supports_variant(coll, lay.size, v)
                        if why is not True:
                            why = why if isinstance(why, str) else "not supported"
                            if (v, why) not in skipped:
                                skipped.add((v, why))
                                say(f"# {coll} {v}: skipped ({why})")
                            continue
                    fn = bound(bufs, v)
                    for _ in range(_default_warmup(lay.size) if warmup is None else warmup):
                        fn()
                    iters = _calibrate(adapter, fn, min_time, max_iters)
                    states.append((lay, v, bufs, fn, iters, []))
            nvar = len(variants) if variants is not None else 1
            for k in range(reps):
                order = _variant_order(states, variants, k) if nvar > 1 else states
                for lay, v, bufs, fn, iters, local in order:
                    if nvar > 1:
                        fn()          # untimed: the call after a switch of algorithm (see _variant_order)
                    adapter.sync()
                    local.append(_timed(fn, iters) / iters)
                    if nvar > 1:
                        adapter.sync()   # no rank starts the next variant inside this one (_variant_order)
        finally:
            if gc_was_enabled:
                gc.enable()
        placed = {}           # id(buffers) -> every rank's placement (the variants share buffers)
        for lay, v, bufs, fn, iters, local in states:
            times = [adapter.max_over_ranks(t) for t in local]
            if allocation is not None and id(bufs) not in placed:
                placed[id(bufs)] = gather_placement(adapter, bufs)
            extra = {}
            if hasattr(adapter, "extras"):
                extra = dict(adapter.extras(coll, bufs, opn, **var_kw(v)) or {})
            wrong = None
            if check:
                w = float(adapter.check(coll, bufs, opn, **var_kw(v)))
                wrong = int(round(summed(w) if summed else adapter.max_over_ranks(w)))
            t = statistics.median(times)
            algbw, busbw = fmt.bandwidths(coll, lay.size, t, n)
            row = {"collective": coll, "size": lay.size, "count": lay.count,
                   "type": fmt.type_name(dt), "redop": opn if coll in fmt.REDUCING else "none",
                   "nranks": n, "library": adapter.name, "time_us": t * 1e6,
                   "algbw": algbw, "busbw": busbw, "wrong": wrong, "iters": iters,
                   "reps": len(times), "times_us": [x * 1e6 for x in times]}
            if id(bufs) in placed:
                row["allocation"] = allocation
                row["placement"] = placed[id(bufs)]
                row["buffer_bytes"] = [int(bufs.send.nbytes), int(bufs.recv.nbytes)]
            if v is not None:
                row["variant"] = v
            for k, val in extra.items():  # extras not named in extra_columns go to the JSON only
                row.setdefault(k, val)
            rows.append(row)
            say(fmt.format_row(row, extra_cols))
        del states
    return rows


# ------------------------------------------------------------------ reporting helpers


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict:
    """Where and when: hostname, nproc, CPU model, OS, Python and numpy versions, UTC date."""
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hostname": socket.gethostname(), "nproc": os.cpu_count(),
            "cpu_model": cpu_model(), "platform": platform.platform(),
            "python": sys.version.split()[0], "numpy": np.__version__}


def _cpu_list(cpus) -> str:
    """'0-3,6' from a set of CPU numbers."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def cpu_binding(adapter) -> list[str]:
    """Every rank's CPU affinity as the launcher left it (``sched_getaffinity``), e.g. ``["0",
    "1"]`` for ranks bound one per core, ``["0-1", "0-1"]`` unbound on 2 CPUs. Collective: each
    rank's mask travels through the adapter's own ``max_over_ranks`` (the others send 0), so it
    works for every library; CPUs past 52 do not fit a float exactly and read ``"?"``."""
    try:
        mine = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        mine = set()
    exact = bool(mine) and max(mine) < 52
    mask = float(sum(1 << c for c in mine)) if exact else -1.0
    out = []
    for r in range(int(adapter.size)):
        got = adapter.max_over_ranks(mask if adapter.rank == r else -2.0)
        m = int(got)
        out.append("?" if got < 0 else _cpu_list(c for c in range(52) if m >> c & 1))
    return out


def result_document(adapter, rows, argv=None, describe=None, **meta) -> dict:
    """The JSON document benchmarks write: library, nranks, host, command line, rows."""
    doc = {"library": adapter.name, "nranks": adapter.size, "host": host_info(),
           "argv": list(sys.argv if argv is None else argv), "rows": rows}
    if describe:
        doc["describe"] = describe
    doc.update(meta)
    return doc


def write_json(path, doc) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        v = float(o)
        return v if math.isfinite(v) else None
    return str(o)
