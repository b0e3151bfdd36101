"""DDP communication hooks on hetccl: gradient buckets in symmetric memory, and bf16/fp16
gradient compression reduced on hetccl's kernels.

    from hetccl.torch import hooks
    ddp = DistributedDataParallel(model, process_group=pg)          # pg: a hetccl group
    ddp.register_comm_hook(hooks.BucketState(pg), hooks.symmetric_hook)
    # or: hooks.bf16_hook, hooks.fp16_hook (same state type)

Why a hook: DDP allocates its gradient buckets itself (``at::empty`` on the CPU allocator, which
torch does not let Python replace), so by default a bucket is ordinary memory and its allreduce
takes hetccl's two-copy FIFO schedules. The symmetric hook moves each bucket, once, into a
``comm.alloc`` allocation: it copies the bucket's bytes there and swaps the data pointers of the
two storages (``UntypedStorage._swap_data_ptr_``), so the bucket tensor, every view DDP keeps of
it and, with ``gradient_as_bucket_view=True``, the parameters' ``.grad`` now live in symmetric
memory. From then on each step's allreduce runs the single-copy symmetric schedule in place, with
no copy at all, and averages (ReduceOp.AVG) in the same pass instead of DDP's separate division.
When DDP rebuilds its buckets (after the first iteration) the hook sees a new storage and moves it
again, freeing the old allocation.

``bf16_hook`` and ``fp16_hook`` do what torch's ``bf16_compress_hook`` / ``fp16_compress_hook`` do (cast the
bucket down, allreduce, cast back into the bucket), but the low-precision copy is a persistent
symmetric buffer per bucket and the reduction is hetccl's: each pairwise sum is formed in float32
and rounded back (rank order; at 2 ranks that is the only rounding besides the cast), and AVG then
divides the sum, instead of torch's divide-in-low-precision-then-sum.

Every hook runs on the process group's collective lane (process_group.py), so its work is ordered
with the group's other calls and the backward pass goes on computing while buckets are reduced;
the returned future completes from that lane. A failure (a peer dying mid-step: PeerLostError)
completes the future with the error, which DDP's backward raises on the surviving ranks.

``BucketState(pg, timeline=True)`` records, per bucket, when it was handed over, when its
allreduce started and when it ended (``time.perf_counter``), and the CPU time it took on the lane
thread: bench/ddp_bench.py derives the share of communication that overlapped the backward pass,
and the communication's CPU time per step, from it. Under ``torch.profiler`` each bucket's
reduction is also a named range on the lane's thread (``PROFILE_PREFIX``), so a trace shows it
against the backward pass's autograd functions (``bench/ddp_bench.py --profile DIR``).

The hooks carry real (not string) annotations: DDP's register_comm_hook checks that the return
annotation is ``torch.futures.Future[torch.Tensor]``. The compression hooks are not named like
torch's: DDP refuses any hook called ``bf16_compress_hook`` unless CUDA and NCCL are present.
"""
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..errors import InvalidUsage
from ..ops import ReduceOp
from . import convert

__all__ = ["BucketState", "BucketTiming", "symmetric_hook", "bf16_hook",
           "fp16_hook", "PROFILE_PREFIX"]

PROFILE_PREFIX = "hetccl: "     # names the hooks' bucket reductions in a torch.profiler trace


@dataclass
class BucketTiming:
    """One bucket of one step (perf_counter seconds): handed to the hook, reduction started on
    the lane, reduction (and decompression) done; ``cpu``: the lane thread's CPU time spent on
    it (``time.thread_time`` seconds: on a host whose cores the backward pass already fills, the
    share of the step that communication costs whatever the overlap); ``nbytes``: the bucket's."""
    index: int
    ready: float
    start: float
    end: float
    cpu: float = 0.0
    nbytes: int = 0


class BucketState:
    """The state of hetccl's DDP hooks: the process group and its symmetric buffers, one per
    bucket index (the bucket itself for ``symmetric_hook``, its low-precision copy for the
    compression hooks).

    One state per DDP model; every rank must register the same hook (the buffers are allocated
    collectively, in bucket order, on first use). ``close()`` frees the buffers (it is also done
    by destroying the group)."""

    def __init__(self, process_group=None, *, timeline: bool = False):
        from .process_group import ProcessGroupHetccl

        pg = process_group if process_group is not None else dist.group.WORLD
        if not isinstance(pg, ProcessGroupHetccl):
            raise InvalidUsage(f"hetccl's DDP hooks need a hetccl process group, got {pg!r}; pass "
                               f"the group DDP uses (process_group=...), or use torch's own hooks "
                               f"(torch.distributed.algorithms.ddp_comm_hooks) with other backends")
        self.group = pg
        self._slots: dict[tuple, tuple] = {}     # (kind, bucket index) -> (array, address, nbytes)
        self.timeline: "list[BucketTiming] | None" = [] if timeline else None

    # -- run on the group's lane (hetccl's Communicator is driven by one thread at a time) ------
    def _symmetric(self, key, nbytes: int, address: int | None = None):
        """The symmetric uint8 array of ``key``, (re)allocated when absent or of another size; with
        ``address``, also when it no longer backs that address (the bucket was rebuilt)."""
        slot = self._slots.get(key)
        if slot is not None and slot[2] == nbytes and (address is None or slot[1] == address):
            return slot[0], False
        comm = self.group.communicator
        if slot is not None:
            self._slots.pop(key)
            comm.free(slot[0])
        arr = comm.alloc(nbytes, np.uint8)              # collective: same bucket order everywhere
        self._slots[key] = (arr, arr.ctypes.data, nbytes)
        return arr, True

    def _adopt(self, index: int, bucket: torch.Tensor) -> None:
        """Move the bucket's storage into symmetric memory (once per bucket layout)."""
        storage = bucket.untyped_storage()
        nbytes = storage.nbytes()
        arr, new = self._symmetric(("bucket", index), nbytes, bucket.data_ptr())
        if new:
            mine = torch.from_numpy(arr)
            mine.copy_(bucket.detach().reshape(-1).view(torch.uint8))
            storage._swap_data_ptr_(mine.untyped_storage())   # `mine` now owns the old memory

    def _low(self, index: int, bucket: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The symmetric ``dtype`` copy of bucket ``index`` (allocated on first use)."""
        n = bucket.numel()
        arr, _ = self._symmetric(("low", index, dtype), n * 2)
        return torch.from_numpy(arr).view(dtype)

    def _record(self, index: int, ready: float, start: float, cpu0: float, nbytes: int) -> None:
        if self.timeline is not None:
            self.timeline.append(BucketTiming(index, ready, start, time.perf_counter(),
                                              time.thread_time() - cpu0, nbytes))

    def close(self) -> None:
        """Free the symmetric buffers now (issued on the group's lane, after pending work). Bucket
        memory reads zeros afterwards; use it only with a new state and hook. After the group was
        destroyed there is nothing left to free (closing the communicator freed them)."""
        if self.group._lane.stopped():
            self._slots.clear()
            return

        def run():
            comm = self.group.communicator
            for arr, _, _ in self._slots.values():
                comm.free(arr)
            self._slots.clear()
        self.group._issue("free DDP hook buffers", [], run, False).wait()


def _check_bucket(bucket) -> torch.Tensor:
    buf = bucket.buffer()
    if not buf.is_floating_point():
        raise InvalidUsage(f"hetccl's DDP hooks reduce floating-point gradients; this bucket is "
                           f"{buf.dtype}")
    return buf


def _first(fut):
    return fut.value()[0]


def _profiling() -> bool:
    """Whether a torch.profiler session is on in any thread. torch.autograd._profiler_enabled()
    is per thread (False on the lane while the main thread profiles); the profiler module's flag
    is process-wide. A record_function range costs ~16 us even with no profiler, so only then."""
    flag = getattr(torch.autograd.profiler, "_is_profiler_enabled", None)
    return bool(flag) if flag is not None else torch.autograd._profiler_enabled()


def _issue(state: BucketState, what: str, buf: torch.Tensor, index: int,
           reduce) -> torch.futures.Future[torch.Tensor]:
    """Run ``reduce()`` on the group's lane; the future's value is the bucket ``buf``. While
    torch's profiler records, the reduction is a ``record_function`` range named
    ``PROFILE_PREFIX + what + " #index"`` on the lane's thread (seen with
    ``_ExperimentalConfig(profile_all_threads=True)``: the lane predates the profiler session)."""
    ready = time.perf_counter()

    def run():
        start, cpu0 = time.perf_counter(), time.thread_time()
        if _profiling():
            with torch.profiler.record_function(f"{PROFILE_PREFIX}{what} #{index}"):
                reduce()
        else:
            reduce()
        state._record(index, ready, start, cpu0, buf.numel() * buf.element_size())
    work = state.group._issue(what, [buf], run, True)
    return work.get_future().then(_first)


def symmetric_hook(state: BucketState, bucket) -> torch.futures.Future[torch.Tensor]:
    """Average the bucket across ranks in place, with the bucket moved into symmetric memory.

    Equivalent to DDP's default allreduce (sum / world size). Buckets whose storage is not one
    plain contiguous tensor (not made by DDP) are reduced where they are."""
    buf = _check_bucket(bucket)
    pg, index = state.group, bucket.index()
    comm, timeout = pg.communicator, pg._timeout
    movable = (buf.is_contiguous() and buf.storage_offset() == 0
               and buf.numel() * buf.element_size() == buf.untyped_storage().nbytes())

    def reduce():
        if movable:
            state._adopt(index, buf)
        comm.allreduce(convert.array(buf, reducing=True), ReduceOp.AVG, timeout=timeout)
    return _issue(state, "all_reduce (DDP bucket, symmetric)", buf, index, reduce)


def _compress_hook(state: BucketState, bucket, dtype: torch.dtype) -> torch.futures.Future[torch.Tensor]:
    buf = _check_bucket(bucket)
    pg, index = state.group, bucket.index()
    comm, timeout = pg.communicator, pg._timeout
    if not buf.is_contiguous():
        raise InvalidUsage("hetccl's compression hooks need a contiguous bucket (DDP's are)")

    def reduce():
        low = state._low(index, buf, dtype)
        low.copy_(buf.view(-1))                        # compress (round to nearest even)
        comm.allreduce(convert.array(low, reducing=True), ReduceOp.AVG, timeout=timeout)
        buf.view(-1).copy_(low)                       # decompress into the bucket
    return _issue(state, f"all_reduce (DDP bucket, {dtype} compressed)", buf, index, reduce)


def bf16_hook(state: BucketState, bucket) -> torch.futures.Future[torch.Tensor]:
    """As torch's ``bf16_compress_hook``: the bucket is averaged in bfloat16 (8-bit mantissa, the
    float32 range), on a symmetric bfloat16 copy; sums formed in float32, rounded per combine."""
    return _compress_hook(state, bucket, torch.bfloat16)


def fp16_hook(state: BucketState, bucket) -> torch.futures.Future[torch.Tensor]:
    """As torch's ``fp16_compress_hook``: the bucket is averaged in float16 (11-bit mantissa,
    values beyond +-65504 overflow to inf), on a symmetric float16 copy; sums formed in float32,
    rounded per combine."""
    return _compress_hook(state, bucket, torch.float16)
