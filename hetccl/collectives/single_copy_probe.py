"""Where single copy beats the FIFOs: measured per collective on a new communicator, cached per host.

Between ranks of one host, a plain (numpy) buffer can move two ways: through the shm FIFOs (the
sender copies into the FIFO, the receiver copies out: two copies, pipelined in FIFO slots with a
handshake per slot) or by cross-memory attach (``process_vm_readv``: the kernel copies straight from
the peer's buffer into ours, one copy, no handshake but an entry and an exit sync). On the 2-vCPU VM
this was built on a CMA copy runs at only 0.3-0.4x a streaming memcpy, yet one CMA copy beats two
FIFO copies from ~100 KiB up; below that the FIFO wins (its small messages ride in the header's
cache lines, while a single-copy call pays two all-rank syncs and a system call per peer). Where
the crossover lies depends on the host (vCPU placement, kernel, page size), so it is measured, not
assumed: this module times each collective both ways at ``SIZES`` and stores, per collective and
size, which path won (``verdicts``). The router (comm.py) sends an unforced call to the
single-copy schedule (``_native/single_copy.pyx``) when the measured size nearest to it (log2) went
to single copy (``takes``; never below the smallest size measured). It is not a single crossover:
with more ranks than cores, a broadcast in which every non-root reads the root at once wins at
128-512 KiB and loses at 2 MiB to the FIFO tree. ``CostModel.single_copy`` carries the verdicts,
``comm.explain()`` prints them.

Measured: broadcast, allgather, alltoall (cma mode only: the window mode has no plain-buffer
broadcast and its allgather lost to the FIFO ring everywhere). Timing: what a user's loop of
public calls costs, so the verdict is the benchmark's. Both paths run through a latency path
(``Hot``) of the probe's own, the native entries ``comm.broadcast(x)`` takes once its shape has been
routed (the single-copy entry included, so there is no parser cost to charge either side); a
timed block is a barrier then ``calls_per_block`` calls back to back, each rank timing its own
block (a broadcast root returns before the others have read, so the slowest rank's time counts);
the paths' blocks alternate, ``REPS`` times per size, in an order rotated each repetition.

Verdicts (``decide``, ``choose``): each repetition pairs the paths' blocks back to back, so a
slow moment of a shared host weighs on both; a path is judged on the paired ratios of its blocks'
times over the other's. It wins by ``MARGIN`` only when the median ratio is below the margin and
the ratios' distribution-free confidence interval for the median lies below 1; it loses when that
interval lies above the margin (or the median at or above 1). Where the ratios spread too wide
for either (a loaded host), each path's median and mean block decide when they agree
(``decide``); in between the size is undecided
and measured again, up to ``MAX_REPS`` and ``EXTEND_S`` (every rank sees the same slowest-rank
times, so all extend alike). Still undecided, it keeps the verdict the previous measurement of
this host gave (rank 0's cache: a host re-measured because it was busy does not flip on a near
tie; and a re-measurement busier than the one cached routes by the cached verdicts, ``store``),
and without one it goes to the path less exposed to descheduled peers: the FIFO against single
copy (a single-copy call needs every rank on a CPU at both syncs), the arrival-order read against
the other orders.

Read orders (``ORDERS``): besides its arrival-order read, the single copy has other orders a
collective may take at some rank counts (allgather by recursive doubling at power-of-two counts
of 4 or more; allgather by writing each block into every peer's output, "push", from 3 ranks).
Each is timed as one more path; its rows (``"allgather:doubling"``, ``"allgather:push"``) say at
which sizes it replaces the arrival order, and ``apply_orders`` sets them on the engine.

Agreement: rank 0 alone reads the cache and decides; it broadcasts one small vector, so every rank
routes every call alike (ranks that disagreed would run different schedules and mismatch). The
cache: ``single-copy.json`` next to the cost-model cache, keyed like it (host, link classes, local
ranks, CPUs, hetccl build: :func:`.probe.shape`); ``hetccl tune`` drops and re-measures its entries with the
cost model's, ``hetccl tune --clear`` deletes them too.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

import numpy as np

from .. import dtypes
from .._native.flight import Flight
from ..memory.mapped import mapped_empty
from ..ops import ReduceOp
from . import probe as _probe
from . import schedules
from .registry import ALGO_BINOMIAL, ALGO_DISSEMINATION, ALGO_RING

log = logging.getLogger("hetccl.tuning")

COLLECTIVES = ("broadcast", "allgather", "alltoall")
SIZES = (8 << 10, 32 << 10, 128 << 10, 512 << 10, 2 << 20, 8 << 20, 32 << 20)   # bytes the tuner prices
# (allgather: the output). 8 MiB: calls above 2 MiB took the 2 MiB verdict, a near tie there, while
# past the private caches single copy ran 1.4-2x the FIFO (2-rank allgather, 4-rank broadcast at
# 8 MiB). 32 MiB: calls above 8 MiB took the 8 MiB verdict, while with 8 ranks on 2 cores the FIFO
# ring allgather and chain broadcast, whose slices stay in the private caches, ran 1.2-1.6x faster
# than single copy at 32 and 128 MiB (every rank reading whole 4-16 MiB blocks of its peers)
REPS = 7                    # timed repetitions per (size, path), the paths alternating ...
MAX_REPS = 15               # ... extended by EXTRA_REPS while a verdict is undecided, up to this
EXTRA_REPS = 4
EXTEND_S = 0.3              # ... while the size's blocks so far took less than this (s, slowest
# ranks): 8 ranks on 2 cores under a load of 10 spent ~0.2 s per 8 MiB block of calls
TAIL = 0.1                  # each tail of the median's confidence interval (order statistics)
BLOCK_BYTES = 8 << 20       # a timed block is BLOCK_BYTES of calls (CALLS_MIN..CALLS_MAX calls)
CALLS_MIN, CALLS_MAX = 8, 64
LARGE_CALLS, LARGE_REPS, LARGE_MAX_REPS = 2, 3, 5   # above BLOCK_BYTES: a call is tens of ms at 8 ranks, a steady
# state of its own (every rank is descheduled and resumed inside one call); the probe stays ~1 s
METHOD = 7                  # how verdicts are measured; a cache entry of another method is measured again
_FILE = "single-copy.json"
BUSY = 0.5                  # others' load average per usable CPU above which it is re-done
MAX_PROBES = 3              # measurements of one shape at most, while they keep being busy
_NEVER = -1.0
_OP_MAX = int(ReduceOp.MAX)
_F32 = np.dtype(np.float32)


MARGIN = 0.9                # single copy must take at most this share of the FIFO's time to win
ORDER_MARGIN = 0.95         # another read order, of the arrival order's: the same syncs and reads,
# a smaller margin (at 4 ranks, 8 MiB, doubling ran 0.88-0.94x the arrival order on a loaded host,
# 0.81-0.87x on a quiet one; with MARGIN it flipped between runs a second apart)


def _doubling_runs(n: int) -> bool:
    return n > 2 and n & (n - 1) == 0


def _push_runs(n: int) -> bool:
    return n > 2


# (collective, order): the rank counts at which the single copy's alternative order runs
# (_native/single_copy.pyx); the probe times it as a path of its own and routes it by its rows.
# "push": each rank writes its block into every peer's output (one writer per block, the source in
# the writer's cache) instead of every peer reading it: at 8 ranks on 2 cores, 8 MiB, it took 0.45x
# the CPU time of the arrival-order read, whose seven readers of one input pinned the same pages;
# at 1 MiB it lost (1.4x). At 2 ranks both move the one block the same way, so it is not timed.
ORDERS = {("allgather", "doubling"): _doubling_runs, ("allgather", "push"): _push_runs}
_ORDER_MASKS = {"doubling": "ag_doubling", "push": "ag_push"}   # the engine's bits of each order
ORDER_KEYS = tuple(f"{c}:{o}" for c, o in ORDERS)


def calls_per_block(nbytes: int) -> int:
    """Calls in one timed block: enough that the block runs the steady state a loop of calls
    runs (the first calls after the barrier find every rank in lock step; with more ranks than
    cores, eight calls were twice as slow per call as the benchmark's loop), few enough that the
    probe stays in the tenths of a second. The same on every rank (a function of the size)."""
    if nbytes > BLOCK_BYTES:
        return LARGE_CALLS
    return max(CALLS_MIN, min(CALLS_MAX, BLOCK_BYTES // max(1, nbytes)))


def reps_for(nbytes: int, reps: int = REPS) -> int:
    """Timed repetitions per path at nbytes to begin with: fewer above BLOCK_BYTES, where one
    repetition is already tens of milliseconds per rank count of 8 on 2 cores (the same on every
    rank)."""
    return min(reps, LARGE_REPS) if nbytes > BLOCK_BYTES else reps


def max_reps(nbytes: int) -> int:
    """The most repetitions an undecided size is extended to."""
    return LARGE_MAX_REPS if nbytes > BLOCK_BYTES else MAX_REPS


def median_interval(values) -> tuple:
    """(low, median, high): the median of values and a distribution-free confidence interval for
    it from order statistics (each tail at most ``TAIL`` by the binomial distribution; the extreme
    values when there are too few for that)."""
    v = sorted(values)
    n = len(v)
    j, tail = 0, 0.0
    while j < n // 2:
        tail += math.comb(n, j) / 2 ** n
        if tail > TAIL:
            break
        j += 1
    j = max(j, 1)
    return v[j - 1], float(np.median(v)), v[n - j]


WIN, LOSE, UNDECIDED = 1, -1, 0


def decide(challenger, incumbent, margin: float = MARGIN) -> int:
    """WIN, LOSE or UNDECIDED for the challenger path against the incumbent, from their per
    repetition times (paired: repetition i of each ran back to back).

    First the paired ratios challenger/incumbent: WIN when their median is below margin and its
    confidence interval below 1; LOSE when the interval lies above margin, or the median is at
    or above 1. When neither (the ratios spread wide: on a loaded host a block either catches a
    descheduled rank and runs up to 10x slower or does not, independently in the two paths of a
    pair), each path on its own: WIN when the challenger's median block is below margin times the
    incumbent's and its mean below the incumbent's (its slow blocks do not outweigh the typical
    gain), LOSE when both are at or above the incumbent's. Otherwise undecided."""
    ratios = [a / b for a, b in zip(challenger, incumbent) if b > 0]
    if not ratios or len(challenger) != len(incumbent):
        return UNDECIDED
    lo, med, hi = median_interval(ratios)
    if med < margin and hi < 1.0:
        return WIN
    if lo > margin or med >= 1.0:
        return LOSE
    typical = float(np.median(challenger) / np.median(incumbent))
    mean = float(np.mean(challenger) / np.mean(incumbent))
    if typical < margin and mean < 1.0:
        return WIN
    if typical >= 1.0 and mean >= 1.0:
        return LOSE
    return UNDECIDED


def choose(times: dict, prev_single=None, prev_order=None) -> tuple:
    """(single copy wins, read order or None: the arrival order) at one size. times: {path:
    [seconds per call, per repetition]} with paths "fifo", "single" (the arrival-order read) and
    the orders measured at this size. An undecided comparison keeps prev_single / prev_order (the
    previous measurement's verdict), or without one goes to the FIFO / the arrival order."""
    order, best = None, None
    for o in sorted(k for k in times if k not in ("fifo", "single")):
        d = decide(times[o], times["single"], ORDER_MARGIN)
        won = d == WIN or (d == UNDECIDED and prev_order == o)
        ratio = float(np.median([a / b for a, b in zip(times[o], times["single"])]))
        if won and (best is None or ratio < best):
            order, best = o, ratio
    d = decide(times[order or "single"], times["fifo"])
    single = d == WIN or (d == UNDECIDED and bool(prev_single))
    return single, order


def undecided(times: dict) -> bool:
    """Whether some comparison choose makes at this size is undecided (measure more)."""
    orders = [o for o in times if o not in ("fifo", "single")]
    return (any(decide(times[o], times["single"], ORDER_MARGIN) == UNDECIDED for o in orders)
            or any(decide(times[k], times["fifo"]) == UNDECIDED for k in ["single"] + orders))


def verdicts(rows, prev: dict | None = None, collective: str = "") -> dict:
    """{collective: ((size, single copy faster), ...), and per order measured, "collective:order":
    ((size, that order replaces the arrival order), ...)}, ascending. rows: [(size, {path:
    [seconds per repetition]})] of one collective (measure's); prev: the previous measurement's
    verdicts of this host (lookup's), consulted where this one is undecided."""
    prev = prev or {}
    before = dict(prev.get(collective, ()))
    orders = sorted({o for _, t in rows for o in t if o not in ("fifo", "single")})
    old = {o: dict(prev.get(f"{collective}:{o}", ())) for o in orders}
    won, took = [], {o: [] for o in orders}
    for size, times in sorted(rows, key=lambda r: r[0]):
        prev_order = next((o for o in orders if old[o].get(size)), None)
        single, order = choose(times, before.get(size), prev_order)
        won.append((size, single))
        for o in orders:
            took[o].append((size, single and order == o))
    out = {collective: tuple(won)}
    out.update({f"{collective}:{o}": tuple(v) for o, v in took.items()})
    return out


def takes(verdict_rows, nbytes: int) -> bool:
    """Whether a call of nbytes goes single copy: the verdict of the measured size nearest in log2
    (the largest one's above it); below the smallest measured size, never (small calls are the
    FIFO's: one header hop against two all-rank syncs)."""
    if not verdict_rows or nbytes < verdict_rows[0][0]:
        return False
    lg = math.log2(nbytes)
    return min(verdict_rows, key=lambda r: abs(math.log2(r[0]) - lg))[1]


def _mask(v) -> float:
    return float(sum(1 << i for i, (_, won) in enumerate(v) if won))


def _unmask(m: float) -> tuple:
    return tuple((size, bool(int(m) >> i & 1)) for i, size in enumerate(SIZES))


def _latency_path(engine, timeout, refused):
    """A latency path (``Hot``, _native/latency.pyx) of its own, the one a communicator's public
    calls take once the router has seen their shape: the probe times exactly the native entries a
    user's loop of ``comm.broadcast(x)`` runs, the FIFO side under the forced key "fifo", the
    single-copy side under "single". ``refused`` collects a refused cross-memory read."""
    hot = schedules.Hot(engine, timeout, {_F32: dtypes.FLOAT32}, Flight())
    hot.on_refused = refused.append
    return hot


def _path_fns(hot, engine, tuner, coll, nbytes, pool=None) -> dict:
    """{path: callable} for one collective of nbytes (as the tuner prices it) over buffers
    allocated and touched here (or taken from ``pool``, {(count, i): array}, which the
    collectives of one size share: each fresh mapping is first-touched, ~0.4 s per GiB here),
    all through the latency path: "fifo" runs the algorithm the tuner picks, "single" the
    single copy's arrival-order read, and each of ORDERS that runs at this rank count the
    single copy in that order (set on the engine around its call)."""
    pool = {} if pool is None else pool

    def take(count, i=0):
        if (count, i) not in pool:
            pool[count, i] = _laid_out(count)
        return pool[count, i]
    n = engine.size
    algo = tuner.select(coll, nbytes)
    count = max(1, nbytes // 4) if coll == "broadcast" else max(1, nbytes // 4 // n) * n
    key = 4 * count                                     # the bytes the latency path keys the call on
    hot.learn(coll, key, algo.code, algo.name, "fifo")
    hot.learn(coll, key, schedules.HOT_SINGLE_COPY, "single_copy", "single", (algo.code, algo.name))
    if coll == "broadcast":
        buf = take(count)
        fns = {k: (lambda k=k: hot.broadcast(buf, 0, k)) for k in ("fifo", "single")}
    elif coll == "allgather":
        src, out = take(count // n, 1), take(count)
        fns = {k: (lambda k=k: hot.allgather(src, out, k)) for k in ("fifo", "single")}
    else:
        src, out = take(count), take(count, 1)
        fns = {k: (lambda k=k: hot.alltoall(src, out, k)) for k in ("fifo", "single")}
    for (c, o), runs in ORDERS.items():
        if c == coll and runs(n):
            fns[o] = _in_order(engine, o, fns["single"])
    return fns


def _laid_out(count: int) -> np.ndarray:
    """float32 ones in a mapping of their own, page-aligned and from 4 MiB 2 MiB-aligned with
    numpy's huge-page advice (the benchmark's "mapped" buffers, every library's in bench/run_all.py):
    a verdict must not depend on where glibc put the probe's arrays. A single-copy call pins the
    pages of the peer buffers it reads or writes, so its time depends on how many of them are huge
    pages; a FIFO call pins none. An 8 MiB numpy array starts 16 bytes past a page, a quarter of
    it on 4 KiB pages: as an allgather output it made the push order 0.66-0.93x the reads' time
    where a 2 MiB-aligned one made it 0.46-0.5x (8 ranks on 2 cores, the same processes); the
    broadcast's and alltoall's reads pin the root's and the peers' inputs alike."""
    a = mapped_empty(count, np.float32)
    a.fill(1)
    return a


def _in_order(engine, order, single):
    """The single-copy call in read order ``order`` (every size), the engine's verdicts restored."""
    def call():
        saved = _set_order(engine, order, ALL_SIZES)
        try:
            return single()
        finally:
            _set_order(engine, order, saved)
    return call


ALL_SIZES = (1 << 64) - 1


def _set_order(engine, order, mask: int) -> int:
    """Set which allgather sizes (bits of doubling_bucket) take ``order``; the previous mask."""
    attr = _ORDER_MASKS[order]
    old = getattr(engine, attr)
    setattr(engine, attr, mask)
    return old


def order_mask(rows) -> int:
    """The engine's bits for an order's verdict rows: bit k (allgather outputs in (2^(k-1), 2^k]
    bytes, single_copy.doubling_bucket) set when ``takes`` says yes there: exact from the smallest
    measured size up (takes is constant across a bucket there: SIZES are powers of two and it
    breaks ties toward the smaller); below it no call goes single copy at all."""
    from .._native.single_copy import _doubling_bucket
    mask = 0
    for k in range(64):
        if takes(rows, 1 << k):
            assert _doubling_bucket(1 << k) == k
            mask |= 1 << k
    return mask


def apply_orders(engine, verdict_items) -> None:
    """Set the read orders of verdicts ((key, rows), ...) on the engine (absent: arrival order):
    every rank alike, from the verdicts rank 0 sent."""
    found = dict(verdict_items)
    for c, o in ORDERS:
        _set_order(engine, o, order_mask(found.get(f"{c}:{o}", ())))


def measure(engine, tuner, timeout, sizes=SIZES, reps=REPS, collectives=COLLECTIVES) -> dict:
    """{collective: [(size, {path: (seconds per call, per repetition)})]}: as a loop of public
    calls takes them (the benchmark's method: barrier, then a block of calls_per_block calls
    back to back, each rank timing its own block; a block's time is the slowest rank's), the
    paths' blocks back to back in an order rotated each repetition. A size whose verdict is
    undecided (``undecided``) is measured EXTRA_REPS more times, up to max_reps and while its
    blocks so far took less than EXTEND_S; the slowest
    ranks' times are agreed after each batch, so every rank extends alike. Collective: every rank
    calls it alike. A refused single-copy call ends it early with {}."""
    refused = []
    hot = _latency_path(engine, timeout, refused)
    out = {}
    for nb in sizes:
        pool = {}                                       # the buffers of this size
        for coll in collectives:
            fns = _path_fns(hot, engine, tuner, coll, nb, pool)
            names = list(fns)
            k = calls_per_block(nb)
            for name in names:                          # first touch and warm-up, every path
                for _ in range(2):
                    if fns[name]() is False:
                        raise RuntimeError(f"the probe's latency path did not take its {coll}")
            times = {name: [] for name in names}
            batch, done = reps_for(nb, reps), 0
            while batch:
                local = np.zeros((len(names), batch), np.float64)
                for r in range(batch):
                    turn = (done + r) % len(names)
                    for i in range(len(names)):   # every order of the paths in turn
                        j = (turn + i) % len(names) if (done + r) % 2 == 0 else (turn - i) % len(names)
                        fns[names[j]]()                 # untimed: the call after a switch of path
                        schedules.barrier(engine, ALGO_DISSEMINATION, timeout)
                        t0 = time.perf_counter()
                        for _ in range(k):
                            fns[names[j]]()
                        local[j, r] = (time.perf_counter() - t0) / k
                    if refused:
                        return {}
                worst = local.reshape(-1).copy()        # the slowest rank's time of every block
                schedules.allreduce(engine, worst, worst, dtypes.FLOAT64, _OP_MAX, ALGO_RING, timeout)
                for j, name in enumerate(names):
                    times[name] += [float(t) for t in worst.reshape(local.shape)[j]]
                done += batch
                spent = k * sum(sum(v) for v in times.values())      # the same on every rank
                batch = min(EXTRA_REPS, max_reps(nb) - done) if spent < EXTEND_S and undecided(times) else 0
            out.setdefault(coll, []).append((nb, {name: tuple(v) for name, v in times.items()}))
    return out


# ------------------------------------------------------------------ cache

def cache_path() -> str:
    return os.path.join(_probe.cache_dir(), _FILE)


def _read(path) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


KEYS = COLLECTIVES + ORDER_KEYS


def lookup(key: str, path: str | None = None) -> dict | None:
    """The cached verdicts {collective or "collective:order": ((size, won), ...)} for this shape,
    or None (a miss, an entry measured at other sizes or another way, or one measured on a busy
    host that is due to be measured again)."""
    entry = _read(path or cache_path()).get(key)
    if not isinstance(entry, dict) or (_busy(entry) and int(entry.get("probes", 1)) < MAX_PROBES):
        return None                             # busy: measure again
    return _verdicts_of(entry)


def previous(key: str, path: str | None = None) -> dict | None:
    """The verdicts of this shape's last measurement, busy or not (None: none of this method):
    what an undecided size keeps when the shape is measured again."""
    entry = _read(path or cache_path()).get(key)
    return _verdicts_of(entry) if isinstance(entry, dict) else None


def _verdicts_of(entry: dict) -> dict | None:
    if entry.get("sizes") != list(SIZES) or entry.get("method") != METHOD:
        return None
    wins = entry.get("wins")
    if not isinstance(wins, dict) or set(wins) != set(KEYS) or not all(
            isinstance(w, list) and len(w) == len(SIZES) and all(isinstance(b, bool) for b in w)
            for w in wins.values()):
        return None
    return {c: tuple(zip(SIZES, wins[c])) for c in KEYS}


def _busy(entry) -> bool:
    load = entry.get("load_per_cpu")
    return isinstance(load, (int, float)) and load > BUSY


def _load_per_cpu(own: int):
    """The 1-minute load average less this job's own ranks on this host, per usable CPU."""
    if not hasattr(os, "getloadavg"):
        return None
    return max(0.0, os.getloadavg()[0] - own) / _probe.usable_cpus()


def store(key: str, found: dict, rows: dict, path: str | None = None, own: int = 0) -> dict:
    """Record a measurement (found: verdicts of every KEYS; rows: measure's, kept per repetition
    in ``rows_us``) and return the verdicts to route by: the kept measurement's (best effort: a
    cache that cannot be written is logged and skipped, and found is returned).
    One taken while the host was busy (other processes' load average above ``BUSY`` per CPU: on a
    shared machine the syncs of a single-copy call wait for descheduled peers, the FIFO root does
    not) is re-done by the next ``MAX_PROBES - 1`` communicators of the shape; the least loaded
    measurement is kept, and its verdicts are the ones returned: a busier re-measurement does not
    flip the routes of the job that took it (measured a minute apart, 4-rank broadcast at 2 MiB
    went single copy, FIFO, single copy)."""
    path = path or cache_path()
    kept = found
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = _read(path)
        prev = data.get(key) if isinstance(data.get(key), dict) else {}
        entry = {"sizes": list(SIZES), "method": METHOD,
                 "wins": {c: [w for _, w in v] for c, v in found.items()}, "measured_at": time.time(),
                 "rows_us": {c: [[nb, {k: [round(t * 1e6, 2) for t in ts] for k, ts in times.items()}]
                                 for nb, times in v] for c, v in rows.items()},
                 "load_per_cpu": _load_per_cpu(own), "probes": int(prev.get("probes", 0)) + 1}
        if prev.get("sizes") == list(SIZES) and prev.get("method") == METHOD and isinstance(prev.get("load_per_cpu"), (int, float)) \
                and isinstance(entry["load_per_cpu"], (int, float)) and prev["load_per_cpu"] < entry["load_per_cpu"]:
            entry = dict(prev, probes=entry["probes"])     # the quieter measurement stays
            kept = _verdicts_of(entry) or found
        data[key] = entry
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot write the single-copy cache %s (%s); the next job measures again", path, e)
    return kept


def clear(host: str | None = None, local: int | None = None, path: str | None = None) -> int:
    """Drop the entries of this host and number of local ranks (None: all); how many went.
    ``hetccl tune`` calls it with the cost-model cache's, so both are measured again together."""
    path = path or cache_path()
    data = _read(path)
    keep = {k: v for k, v in data.items()
            if not ((host is None or k.startswith(f"{host}|"))
                    and (local is None or f"|local={local}|" in k))}
    if len(keep) != len(data):
        try:
            if keep:
                with open(path, "w") as f:
                    json.dump(keep, f, indent=1)
            else:
                os.remove(path)
        except OSError as e:
            log.warning("cannot update the single-copy cache %s (%s)", path, e)
    return len(data) - len(keep)


# ------------------------------------------------------------------ agreement

def negotiate(engine, tuner, rank, link_classes, local_size, host, timeout) -> dict:
    """{collective or "collective:order": ((size, single copy / that order faster), ...)} for
    every KEYS, identical on every rank (collective: every rank of a communicator whose pairs are
    all c2c in cma mode calls it). The caller sets the orders on the engine (apply_orders)."""
    msg = np.zeros(1 + len(KEYS), np.float64)
    key = prev = None
    if rank == 0:               # nothing may raise here: the others already wait in the broadcast
        try:
            key = _probe.cache_key(_probe.shape(host, tuple(sorted(set(link_classes) - {"self"})),
                                                local_size))
            hit = lookup(key)
            prev = previous(key) if hit is None else None
        except Exception as e:                  # noqa: BLE001 - a broken cache costs a probe
            log.warning("single-copy cache lookup failed (%s); measuring instead", e)
            hit = None
        if hit is not None:
            msg[0] = 1.0
            msg[1:] = [_mask(hit[c]) for c in KEYS]
    schedules.broadcast(engine, msg, 0, dtypes.FLOAT64, ALGO_BINOMIAL, timeout)
    if msg[0] == 0.0:
        t0 = time.perf_counter()
        rows = measure(engine, tuner, timeout)
        if rows:
            found = {}
            for c in COLLECTIVES:
                found.update(verdicts(rows[c], prev, c))
            found = {c: found.get(c, tuple((s, False) for s in SIZES)) for c in KEYS}
            if rank == 0 and key is not None:   # the verdicts of the measurement the cache keeps
                try:
                    found = store(key, found, rows, own=local_size)
                except Exception as e:          # noqa: BLE001 - the others wait in the broadcast
                    log.warning("single-copy cache store failed (%s)", e)
            msg[1:] = [_mask(found[c]) for c in KEYS]
        schedules.broadcast(engine, msg, 0, dtypes.FLOAT64, ALGO_BINOMIAL, timeout)   # rank 0's
        found = {c: _unmask(msg[1 + i]) for i, c in enumerate(KEYS)}
        log.info("single-copy verdicts measured in %.0f ms: %s", (time.perf_counter() - t0) * 1e3, found)
    return {c: _unmask(msg[1 + i]) for i, c in enumerate(KEYS)}
