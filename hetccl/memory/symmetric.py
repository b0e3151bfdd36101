"""Symmetric allocations: ``comm.alloc(shape, dtype)`` / ``comm.free(arr)``.

Why: on one host the fastest collective is a single copy with plain loads and stores into the
peers' buffers, but a process can only load from memory it has mapped. NCCL (``ncclMemAlloc`` +
window registration) and torch (``symm_mem.empty`` + ``rendezvous``) solve this the same way: the
user allocates communication buffers from a collective allocator whose memory every local rank
maps. Here each rank creates one /dev/shm segment of the agreed size, every rank maps every rank's
segment, and the names are unlinked as soon as all ranks have mapped them (nothing is left behind
if a process then dies). The array returned is this rank's segment.

When the buffers of a collective are symmetric allocations on a communicator whose every pair is
``c2c``, the Communicator runs the schedules of ``_native/symmetric_heap.pyx`` (the transport-level fast
path ``last_algorithm == "symmetric"``, priced in ``comm.explain``); other calls take the ordinary
algorithms. On other communicators (one rank, several hosts) ``alloc`` returns private memory with
the same API, so code need not care.

Allocation is collective (every rank, same order, same shape and dtype); ``free`` is local: it
releases this rank's mappings, and the memory goes once every rank freed it (or closed).
"""
import itertools
import math
import os
import weakref

import numpy as np

from .._native.symmetric_heap import Heap
from ..errors import InvalidUsage
from .remap import ALWAYS_MMAPPED as AUTO_MIN
from .space import SHM_DIR, shm_space_error

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
PREFIX = "hetccl-sym-"
_serial = itertools.count()          # names unique in this process: hetccl-sym-<pid>-<serial>

# Smallest call (bytes, the tuner's convention: the output for allgather) that takes the symmetric
# schedules by default. Below it the FIFO schedules win: a symmetric call costs two all-rank syncs
# (two flag hops, or two futex wake-ups when ranks sleep), while a small FIFO message rides in its
# header's cache lines in one hop. Measured on the loaded 2-vCPU VM, 2 ranks, allreduce: 8 B 178 vs
# 103 us, 4 KiB 166 vs 95 us, 64 KiB 201 vs 244 us, 1 MiB 551 vs 1193 us (symmetric vs
# recursive doubling). algorithm="symmetric" runs them at any size.
MIN_BYTES = 32 << 10

# Which buffers must be symmetric for each collective's fast path (the rest may be any memory):
# allreduce reads peers' inputs and writes their outputs; allgather writes their outputs;
# broadcast, reduce_scatter and alltoall read their inputs.
NEEDS = {"allreduce": (0, 1), "allgather": (1,), "broadcast": (0,), "reduce_scatter": (0,),
         "alltoall": (0,)}


def _segment_path(pid: int, serial: int) -> str:
    return os.path.join(SHM_DIR, f"{PREFIX}{pid}-{serial}")


def _shape(shape) -> tuple:
    try:
        shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise InvalidUsage(f"alloc shape {shape!r}: pass an int or a tuple of ints") from None
    if any(s < 0 for s in shape):
        raise InvalidUsage(f"alloc shape {shape} has a negative dimension")
    return shape


# An allreduce on symmetric buffers in place (some rank's output is its input) cannot combine
# straight into the outputs (it would overwrite an input another rank still reads): it sums L1 tiles
# of every rank's input, then stores each tile to every output (symmetric_heap.pyx TILE). Measured
# at 0.9-1.05x the fused out-of-place combine's CPU time at 16-64 MiB on 2 ranks; priced at the
# top of that range.
IN_PLACE = 1.05


def cost(collective: str, nbytes: int, p: int, c, in_place: bool = False) -> float:
    """Predicted seconds of a symmetric call (alpha-beta-gamma, ``c`` the tuner's LinkCost, priced
    at this size: LinkCost.at): two syncs, and the bytes a ring would move but copied once instead
    of staged twice (half the FIFO's beta). ``nbytes`` is the collective's tuner convention (the
    output for allgather). ``in_place``: an allreduce some rank runs in place (IN_PLACE)."""
    c = c.at(nbytes, collective)
    f = (p - 1) / p
    one_copy = c.beta / 2
    t = 2 * c.alpha
    if collective == "allreduce":
        return t + (IN_PLACE if in_place else 1.0) * (2 * f * nbytes * one_copy + f * nbytes * c.gamma)
    if collective == "reduce_scatter":
        return t + f * nbytes * one_copy + f * nbytes * c.gamma
    if collective in ("allgather", "alltoall"):
        return t + f * nbytes * one_copy
    return t + nbytes * one_copy                      # broadcast: every rank loads the root's bytes


def prices(collective: str, nbytes: int, tuner) -> dict:
    """{entry: predicted seconds} of a call of this shape by each path, on ``tuner``'s cost model
    and number of ranks: ``symmetric`` (for allreduce ``symmetric in place`` and ``symmetric out
    of place``), and ``fifo``, the cheapest of the tuner's algorithms on the engine's links."""
    p = tuner.size
    fifo = min(x for _, x in tuner.table(collective, nbytes) if x is not None)
    call = tuner.call_cost(collective)
    if collective == "allreduce":
        out = {"symmetric in place": cost(collective, nbytes, p, tuner.cost, True) + call,
               "symmetric out of place": cost(collective, nbytes, p, tuner.cost) + call}
    else:
        out = {"symmetric": cost(collective, nbytes, p, tuner.cost) + call}
    out["fifo"] = fifo
    return out


def priced_faster(entries: dict) -> bool:
    """Whether the symmetric path of ``prices``' entries is priced below its FIFO path. An
    allreduce is priced in place, the slower form, because one rank in place makes every rank run
    it (the fused combine needs every output apart from every input), and no rank knows the
    others' buffers when it decides."""
    return max(t for k, t in entries.items() if k != "fifo") < entries["fifo"]


def auto_routes(collective: str, nbytes: int, tuner, shared: bool, islands=None, faster=None) -> bool:
    """The gate of automatic registration (memory/registration.py ``Registry.auto``), the one
    function the Communicator (``_auto_takes``) and the simulator (simulate/group.py) ask: whether
    an unforced call of this shape goes through automatic registration, i.e. runs the symmetric
    schedules once its plain buffers are reused. It does when the collective has a symmetric
    schedule, its sized buffer (the tuner's convention) is at least AUTO_MIN bytes, every pair of
    the communicator is c2c (``shared``) and it has no islands, HETCCL_ALGO forces nothing for the
    collective, and the symmetric path is priced faster than the FIFO path (``faster(collective,
    nbytes)``: the communicator's cached answer; default: ``priced_faster`` on ``tuner``). It
    depends on the shape and the communicator only, so every rank decides alike."""
    if not (shared and collective in NEEDS and nbytes >= AUTO_MIN and islands is None
            and collective not in tuner.forced):
        return False
    return faster(collective, nbytes) if faster is not None else priced_faster(prices(collective, nbytes, tuner))


def explain(collective: str, nbytes: int, shared: bool, entries=None) -> str:
    """The symmetric paths' lines of ``comm.explain()`` (and of ``hetccl simulate --explain``):
    ``entries``, ``prices`` of this shape (needed when ``shared``)."""
    if collective not in NEEDS:
        return f"symmetric buffers: {collective} has no symmetric schedule (ordinary algorithms)"
    if not shared:
        return "symmetric buffers: not available (needs every pair of the communicator on c2c)"
    entries = dict(entries)
    faster = priced_faster(entries)
    fifo = entries.pop("fifo")
    need = {"allreduce": "input and output", "allgather": "output"}.get(collective, "input")
    taken = ("taken" if nbytes >= MIN_BYTES and faster else
             f"not taken below {MIN_BYTES} bytes unless forced" if nbytes < MIN_BYTES else
             "not taken: the FIFO path is priced faster, unless forced")
    lines = [f"when its {need} {'are' if ' and ' in need else 'is'} from comm.alloc or shared by "
             f"comm.register, by hand or automatically from {AUTO_MIN >> 20} MiB (single copy, loads "
             f"and stores into the peers' mappings; {taken}):"]
    mark = "=>" if taken == "taken" else "  "
    for name, t in entries.items():
        lines.append(f"  {mark} {name:<24} {t * 1e6:12.2f} us")
    lines.append(f"  {'  ' if mark == '=>' else '=>'} {'fifo (the choice above)':<24} {fifo * 1e6:12.2f} us")
    return "\n".join(lines)


class SymmetricMemory:
    """The symmetric allocations of one communicator, and the routing of calls onto them."""

    def __init__(self, ctx, shared: bool):
        self._ctx = ctx
        self.shared = shared                          # every pair c2c: peers map each other's segments
        self.heap = Heap(ctx.rank, ctx.size) if shared else Heap(0, 1)
        if shared:
            self.heap.attach(ctx.engine)            # peers' mappings go only while no schedule runs
        self.active = False                           # any allocation made or region registered
        self.allocated = False                        # any comm.alloc made (then calls are checked)
        self._buffers = {}                            # allocation id -> weakref of this rank's Buffer
        self._faster = {}                             # (collective, nbytes) -> symmetric priced faster

    def sharing_heap(self):
        """The heap that publishes registered buffers' shared regions (memory/registration.py), or
        None where peers cannot map this process's memfds: not every pair c2c, or some pair not in
        cma mode (opening /proc/<pid>/fd/<n> needs the ptrace permission cma needs)."""
        e = self._ctx.engine
        if not self.shared or any(e.c2c_mode(q) != "cma" for q in range(self._ctx.size) if q != self._ctx.rank):
            return None
        return self.heap

    # ------------------------------------------------------------------ alloc / free

    def alloc(self, shape, dtype, timeout):
        dt = np.dtype(dtype)
        shape = _shape(shape)
        nbytes = math.prod(shape) * dt.itemsize
        mapped = max(PAGE, -(-nbytes // PAGE) * PAGE)
        comm = self._ctx.comm
        last = comm.last_algorithm                    # the agreement steps are not the user's calls
        serial = next(_serial)
        path = _segment_path(os.getpid(), serial)
        fd, err = self._create(path, mapped) if nbytes < 1 << 40 else (-1, 0)
        try:
            mine = np.array([nbytes, err, os.getpid(), serial, dt.itemsize], dtype=np.int64)
            table = comm.allgather(mine, timeout=timeout).reshape(comm.size, 5)
            sizes = [int(x) for x in table[:, 0]]
            if len(set(sizes)) != 1:
                raise InvalidUsage(
                    "comm.alloc is collective and needs the same size on every rank; bytes asked per "
                    f"rank: {dict(enumerate(sizes))} (pass the same shape and dtype everywhere)")
            if nbytes >= 1 << 40:                     # descriptors carry 40-bit offsets (every rank agrees)
                raise InvalidUsage(f"comm.alloc of {nbytes} bytes: symmetric allocations are limited to 1 TiB")
            errs = {r: int(e) for r, e in enumerate(table[:, 1]) if e}
            if errs:                                  # every rank raises the same error
                r = min(errs)
                raise shm_space_error(f"comm.alloc's segment on rank(s) {sorted(errs)}", mapped, errs[r],
                                      "allocate ordinary memory (numpy) instead of comm.alloc")
            index = self.heap.reserve()
            buf, status = self._map(index, table, fd, nbytes, mapped)
            fd = -1
            verdict = comm.allgather(np.array([status], dtype=np.int64), timeout=timeout)
            if verdict.any():
                if buf is not None:
                    self.heap.free(index)
                bad = {r: os.strerror(int(e)) for r, e in enumerate(verdict) if e}
                raise InvalidUsage(f"comm.alloc: mapping the peers' segments failed on ranks {bad}")
        finally:
            comm.last_algorithm = last
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(path)                       # everyone has mapped it (or given up)
            except FileNotFoundError:
                pass
        self.active = self.allocated = True
        self._buffers[index] = weakref.ref(buf, lambda _, i=index: self._buffers.pop(i, None))
        return np.frombuffer(buf, dtype=dt).reshape(shape)

    def _create(self, path, mapped):
        """(fd, 0) for a new segment of `mapped` backed bytes at path (owner-only), or (-1, errno)."""
        if not self.shared:                           # private memory: no name at all
            try:
                fd = os.memfd_create("hetccl-sym", os.MFD_CLOEXEC)
                os.ftruncate(fd, mapped)
                return fd, 0
            except OSError as e:
                return -1, e.errno or 12
        for attempt in (0, 1):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                break
            except FileExistsError:                   # left by a dead process that had our pid
                if attempt:
                    return -1, 17
                os.unlink(path)
            except OSError as e:
                return -1, e.errno or 5
        try:
            os.ftruncate(fd, mapped)
            os.posix_fallocate(fd, 0, mapped)         # back the pages now: ENOSPC here, not SIGBUS later
        except OSError as e:
            os.close(fd)
            return -1, e.errno or 28
        return fd, 0

    def _map(self, index, table, fd, nbytes, mapped):
        """Open every peer's segment and map all of them into slot index: (Buffer, 0) or (None, errno).
        Closes fd."""
        fds = {}
        try:
            if not self.shared:
                return self.heap.map_into(index, [fd], nbytes, mapped), 0
            me = self._ctx.rank
            for q in range(self._ctx.size):
                if q == me:
                    fds[q] = fd
                    continue
                fds[q] = os.open(_segment_path(int(table[q, 2]), int(table[q, 3])), os.O_RDWR | os.O_CLOEXEC)
                if os.fstat(fds[q]).st_size < mapped:
                    raise OSError(22, f"rank {q}'s segment is smaller than {mapped} bytes")
            return self.heap.map_into(index, [fds[q] for q in range(self._ctx.size)], nbytes, mapped), 0
        except OSError as e:
            return None, e.errno or 5
        finally:
            os.close(fd)
            for q, f in fds.items():
                if f != fd:
                    os.close(f)

    def _live(self, arr, what):
        """(allocation id, byte offset) of the live allocation holding arr; InvalidUsage otherwise."""
        where = self.heap.index_of(arr)
        if where is None:
            raise InvalidUsage(f"{what} takes an array returned by comm.alloc of this communicator "
                               f"(or a contiguous view of one)")
        index, state, offset = where
        if state != "live":
            raise InvalidUsage("this symmetric allocation was already freed (comm.free or comm.close)")
        return index, offset

    def free(self, arr):
        self.heap.free(self._live(arr, "comm.free")[0])

    def close(self):
        """Free every live allocation (the communicator is closing); arrays on them stay readable
        private memory, recognised as freed."""
        for i in range(self.heap.count):
            try:
                self.heap.free(i)
            except InvalidUsage:
                pass                                  # already freed or never mapped
        self.heap.release_peer_mappings()             # peers' registered buffers mapped here

    def peer_view(self, arr, peer):
        """A numpy array over rank `peer`'s copy of `arr` (same allocation, same offset, shape and
        dtype), mapped in this process: one-sided put = assign into it, get = read from it. Order
        against the peer with a collective (comm.barrier()) or a flag in symmetric memory."""
        index, offset = self._live(arr, "comm.peer_view")
        peer = int(peer)
        if not self.shared and peer != self._ctx.rank:
            raise InvalidUsage("peer_view of another rank needs a communicator whose every pair is c2c "
                               "(one host); this one's comm.alloc returns private memory")
        mine = self._buffers[index]()
        pb = mine.peer(peer if self.shared else 0)
        a = np.asarray(arr)
        return np.frombuffer(pb, dtype=a.dtype, count=a.size, offset=offset).reshape(a.shape)

    def is_symmetric(self, arr) -> bool:
        where = self.heap.index_of(arr) if self.active and self.shared else None
        return where is not None and where[1] == "live"

    # ------------------------------------------------------------------ routing

    def takes(self, collective, algorithm, *bufs) -> bool:
        """True: run this call on the symmetric schedules. The buffers NEEDS names must all be live
        symmetric allocations, the communicator all-c2c, and either algorithm="symmetric" or no
        forced algorithm, a call of at least MIN_BYTES, and the symmetric path priced faster than
        the FIFO path (``faster``). A freed buffer is an InvalidUsage
        whatever the algorithm."""
        heap = self.heap
        kinds = ([heap.kind(b) for b in bufs] if self.active or algorithm == "symmetric"
                 else [False] * len(bufs))           # (automatic registrations leave active off)
        if algorithm != "symmetric":
            if algorithm is not None or collective in self._ctx.tuner.forced:
                return False
            sized = bufs[1] if collective == "allgather" else bufs[0]
            nbytes = sized.nbytes if isinstance(sized, np.ndarray) else memoryview(sized).nbytes
            if nbytes < MIN_BYTES:
                return False
        ok = self.shared and all(kinds[i] for i in NEEDS[collective])
        if ok and algorithm != "symmetric" and not self.faster(collective, nbytes):
            return False
        if algorithm == "symmetric" and not ok:
            which = " and ".join(("input", "output")[i] if len(bufs) > 1 else "buffer" for i in NEEDS[collective])
            raise InvalidUsage(
                f"algorithm='symmetric' for {collective} needs its {which} allocated with comm.alloc (or "
                f"registered with comm.register where the handle says shared) on a communicator whose "
                f"every pair is c2c (one host)" +
                ("" if self.shared else "; this communicator is not: its alloc returns private memory"))
        return ok

    def prices(self, collective, nbytes) -> dict:
        """``prices`` of this call shape on the communicator's tuner."""
        return prices(collective, nbytes, self._ctx.tuner)

    def faster(self, collective, nbytes) -> bool:
        """Whether the symmetric path is priced below the FIFO path for this call shape
        (``priced_faster``, cached per shape). The same answer on every rank: it depends on the
        shape and the communicator's cost model only, never on this rank's buffers."""
        key = (collective, nbytes)
        hit = self._faster.get(key)
        if hit is None:
            hit = self._faster[key] = priced_faster(self.prices(collective, nbytes))
            if len(self._faster) > 512:
                self._faster.clear()
        return hit

    def explain(self, collective, nbytes) -> str:
        return explain(collective, nbytes, self.shared, self.prices(collective, nbytes) if self.shared
                       and collective in NEEDS else None)
