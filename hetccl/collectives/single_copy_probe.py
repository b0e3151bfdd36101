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
the two paths' blocks alternate, ``REPS`` times per size. Per size and path the median block is
kept, and single copy wins only by ``MARGIN`` both in that median and in the median of the
paired repetitions' ratios: a near tie stays with the FIFO, so a size does not flip between two
measurements of the same host.

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
REPS = 5                    # timed repetitions per (size, path), the paths alternating
BLOCK_BYTES = 8 << 20       # a timed block is BLOCK_BYTES of calls (CALLS_MIN..CALLS_MAX calls)
CALLS_MIN, CALLS_MAX = 8, 64
LARGE_CALLS, LARGE_REPS = 2, 3   # above BLOCK_BYTES: a call is tens of ms at 8 ranks, a steady
# state of its own (every rank is descheduled and resumed inside one call); the probe stays ~1 s
METHOD = 4                  # how verdicts are measured; a cache entry of another method is measured again
_FILE = "single-copy.json"
BUSY = 0.5                  # others' load average per usable CPU above which it is re-done
MAX_PROBES = 3              # measurements of one shape at most, while they keep being busy
_NEVER = -1.0
_OP_MAX = int(ReduceOp.MAX)
_F32 = np.dtype(np.float32)


MARGIN = 0.9                # single copy must take at most this share of the FIFO's time to win


def calls_per_block(nbytes: int) -> int:
    """Calls in one timed block: enough that the block runs the steady state a loop of calls
    runs (the first calls after the barrier find every rank in lock step; with more ranks than
    cores, eight calls were twice as slow per call as the benchmark's loop), few enough that the
    probe stays in the tenths of a second. The same on every rank (a function of the size)."""
    if nbytes > BLOCK_BYTES:
        return LARGE_CALLS
    return max(CALLS_MIN, min(CALLS_MAX, BLOCK_BYTES // max(1, nbytes)))


def reps_for(nbytes: int, reps: int = REPS) -> int:
    """Timed repetitions per path at nbytes: fewer above BLOCK_BYTES, where one repetition is
    already tens of milliseconds per rank count of 8 on 2 cores (the same on every rank)."""
    return min(reps, LARGE_REPS) if nbytes > BLOCK_BYTES else reps


def verdicts(rows) -> tuple:
    """((size, single copy was faster), ...) ascending. rows: [(size, fifo_s, single_s)] or
    [(size, fifo_s, single_s, ratio)] with ratio the median of the single/FIFO time ratios of
    the paired (back-to-back) repetitions. Faster means by ``MARGIN``, in the median time *and*
    in the median paired ratio: a near tie or a split decision stays with the FIFO, whose cost
    does not depend on every rank being on a CPU at both syncs (a noisy host turns single-copy
    ties into losses, rarely the other way), so a size does not flip between two measurements of
    one host."""
    return tuple((r[0], r[2] < MARGIN * r[1] and (len(r) < 4 or r[3] < MARGIN)) for r in sorted(rows))


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


def _path_fns(hot, engine, tuner, coll, nbytes):
    """(fifo, single) callables for one collective of nbytes (as the tuner prices it) over
    buffers allocated and touched here, both through the latency path. The FIFO side runs the
    algorithm the tuner picks."""
    n = engine.size
    algo = tuner.select(coll, nbytes)
    count = max(1, nbytes // 4) if coll == "broadcast" else max(1, nbytes // 4 // n) * n
    key = 4 * count                                     # the bytes the latency path keys the call on
    hot.learn(coll, key, algo.code, algo.name, "fifo")
    hot.learn(coll, key, schedules.HOT_SINGLE_COPY, "single_copy", "single", (algo.code, algo.name))
    if coll == "broadcast":
        buf = np.ones(count, np.float32)
        return tuple((lambda k=k: hot.broadcast(buf, 0, k)) for k in ("fifo", "single"))
    if coll == "allgather":
        src, out = np.ones(count // n, np.float32), np.ones(count, np.float32)
        return tuple((lambda k=k: hot.allgather(src, out, k)) for k in ("fifo", "single"))
    src, out = np.ones(count, np.float32), np.ones(count, np.float32)
    return tuple((lambda k=k: hot.alltoall(src, out, k)) for k in ("fifo", "single"))


def measure(engine, tuner, timeout, sizes=SIZES, reps=REPS, collectives=COLLECTIVES) -> dict:
    """{collective: [(size, fifo_s, single_s, ratio)]}: seconds per call as a loop of public calls
    takes them (the benchmark's method: barrier, then a block of calls_per_block calls back to
    back, each rank timing its own block; a block's time is the slowest rank's, the median over
    ``reps`` repetitions is kept), and the median over repetitions of the paired single/FIFO
    ratio (the two paths' blocks run back to back, alternating which goes first, so a slow
    moment of a shared host weighs on both). Collective: every rank calls it alike. A refused
    single-copy call ends it early with {}."""
    refused = []
    hot = _latency_path(engine, timeout, refused)
    plan = [(coll, nb) for coll in collectives for nb in sizes]
    local = np.zeros((len(plan), 2, reps), np.float64)  # a size's last columns stay unused: reps_for
    for i, (coll, nb) in enumerate(plan):
        fns = _path_fns(hot, engine, tuner, coll, nb)
        k = calls_per_block(nb)
        for fn in fns:                                  # first touch and warm-up, both paths
            for _ in range(2):
                if fn() is False:
                    raise RuntimeError(f"the probe's latency path did not take its {coll}")
        for r in range(reps_for(nb, reps)):
            for j in ((0, 1) if r % 2 == 0 else (1, 0)):
                fns[j]()                                # untimed: the call after a switch of path
                schedules.barrier(engine, ALGO_DISSEMINATION, timeout)
                t0 = time.perf_counter()
                for _ in range(k):
                    fns[j]()
                local[i, j, r] = (time.perf_counter() - t0) / k
            if refused:
                return {}
    worst = local.reshape(-1).copy()                    # the slowest rank's time of every block
    schedules.allreduce(engine, worst, worst, dtypes.FLOAT64, _OP_MAX, ALGO_RING, timeout)
    worst = worst.reshape(local.shape)
    out = {}
    for i, (coll, nb) in enumerate(plan):
        f, s = worst[i]
        f, s = f[:reps_for(nb, reps)], s[:reps_for(nb, reps)]
        out.setdefault(coll, []).append((nb, float(np.median(f)), float(np.median(s)),
                                         float(np.median(s / f))))
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


def lookup(key: str, path: str | None = None) -> dict | None:
    """The cached verdicts {collective: ((size, won), ...)} for this shape, or None (a miss, or
    an entry measured at other sizes)."""
    entry = _read(path or cache_path()).get(key)
    if not isinstance(entry, dict) or entry.get("sizes") != list(SIZES) or entry.get("method") != METHOD:
        return None
    if _busy(entry) and int(entry.get("probes", 1)) < MAX_PROBES:
        return None                             # measured on a busy host: measure again
    wins = entry.get("wins")
    if not isinstance(wins, dict) or set(wins) != set(COLLECTIVES) or not all(
            isinstance(w, list) and len(w) == len(SIZES) and all(isinstance(b, bool) for b in w)
            for w in wins.values()):
        return None
    return {c: tuple(zip(SIZES, wins[c])) for c in COLLECTIVES}


def _busy(entry) -> bool:
    load = entry.get("load_per_cpu")
    return isinstance(load, (int, float)) and load > BUSY


def _load_per_cpu(own: int):
    """The 1-minute load average less this job's own ranks on this host, per usable CPU."""
    if not hasattr(os, "getloadavg"):
        return None
    return max(0.0, os.getloadavg()[0] - own) / _probe.usable_cpus()


def store(key: str, found: dict, rows: dict, path: str | None = None, own: int = 0) -> None:
    """Record a measurement (best effort: a cache that cannot be written is logged and skipped).
    One taken while the host was busy (other processes' load average above ``BUSY`` per CPU: on a shared machine the
    syncs of a single-copy call wait for descheduled peers, the FIFO root does not) is re-done by
    the next ``MAX_PROBES - 1`` communicators of the shape; the least loaded measurement is kept."""
    path = path or cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = _read(path)
        prev = data.get(key) if isinstance(data.get(key), dict) else {}
        entry = {"sizes": list(SIZES), "method": METHOD,
                 "wins": {c: [w for _, w in v] for c, v in found.items()}, "measured_at": time.time(),
                 "rows_us": {c: [[r[0], r[1] * 1e6, r[2] * 1e6, *r[3:]] for r in v] for c, v in rows.items()},
                 "load_per_cpu": _load_per_cpu(own), "probes": int(prev.get("probes", 0)) + 1}
        if prev.get("sizes") == list(SIZES) and prev.get("method") == METHOD and isinstance(prev.get("load_per_cpu"), (int, float)) \
                and isinstance(entry["load_per_cpu"], (int, float)) and prev["load_per_cpu"] < entry["load_per_cpu"]:
            entry = dict(prev, probes=entry["probes"])     # the quieter measurement stays
        data[key] = entry
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot write the single-copy cache %s (%s); the next job measures again", path, e)


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
    """{collective: ((size, single copy faster), ...)}, identical on every rank (collective: every
    rank of a communicator whose pairs are all c2c in cma mode calls it)."""
    msg = np.zeros(1 + len(COLLECTIVES), np.float64)
    key = None
    if rank == 0:               # nothing may raise here: the others already wait in the broadcast
        try:
            key = _probe.cache_key(_probe.shape(host, tuple(sorted(set(link_classes) - {"self"})),
                                                local_size))
            hit = lookup(key)
        except Exception as e:                  # noqa: BLE001 - a broken cache costs a probe
            log.warning("single-copy cache lookup failed (%s); measuring instead", e)
            hit = None
        if hit is not None:
            msg[0] = 1.0
            msg[1:] = [_mask(hit[c]) for c in COLLECTIVES]
    schedules.broadcast(engine, msg, 0, dtypes.FLOAT64, ALGO_BINOMIAL, timeout)
    if msg[0] == 0.0:
        t0 = time.perf_counter()
        rows = measure(engine, tuner, timeout)
        if rows:
            msg[1:] = [_mask(verdicts(rows[c])) for c in COLLECTIVES]
        schedules.broadcast(engine, msg, 0, dtypes.FLOAT64, ALGO_BINOMIAL, timeout)   # rank 0's
        found = {c: _unmask(msg[1 + i]) for i, c in enumerate(COLLECTIVES)}
        if rank == 0 and key is not None and rows:
            store(key, found, rows, own=local_size)
        log.info("single-copy verdicts measured in %.0f ms: %s", (time.perf_counter() - t0) * 1e3, found)
    return {c: _unmask(msg[1 + i]) for i, c in enumerate(COLLECTIVES)}
