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
broadcast and its allgather lost to the FIFO ring everywhere). Timing: every rank runs the same
calls; one repetition is ``CALLS`` calls then a barrier (a broadcast root returns before the others
have read, so a lone call would time the root's side only), the time is rank 0's, and per (size,
path) the minimum over ``REPS`` interleaved repetitions is kept (a repetition in which another
process took the core says nothing about the paths).

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
from . import probe as _probe
from . import schedules
from .registry import ALGO_BINOMIAL, ALGO_DISSEMINATION

log = logging.getLogger("hetccl.tuning")

COLLECTIVES = ("broadcast", "allgather", "alltoall")
SIZES = (8 << 10, 32 << 10, 128 << 10, 512 << 10, 2 << 20)   # bytes the tuner prices (allgather: the output)
REPS = 3
CALLS = 8                   # calls per repetition: back to back, as a loop of calls runs them (a FIFO
                            # broadcast root runs ahead of its peers; a barrier per call would hide it)
# A single-copy call goes through comm.py's parser and router; a small FIFO call of a learnt shape
# takes the latency path and skips both. The probe times the schedules alone, so the single-copy
# side is charged what the parser's path costs over the latency path: 3.7-4.5 us per call at
# 2 ranks (bench/results/call_forms-2026-12-07.txt, the allocating forms before the latency path
# took them). Without it the probe sent 2-rank calls of 32-128 KiB to single copy at 2.5x the FIFO's
# time through the public API (bench/RESULTS.md, the peers' run of 2026-12-07).
ROUTE_S = 4e-6
_FILE = "single-copy.json"
BUSY = 0.5                  # others' load average per usable CPU above which it is re-done
MAX_PROBES = 3              # measurements of one shape at most, while they keep being busy
_NEVER = -1.0


MARGIN = 0.9                # single copy must take at most this share of the FIFO's time to win


def verdicts(rows) -> tuple:
    """((size, single copy was faster), ...) ascending. rows: [(size, fifo_s, single_s)]. Faster
    means by ``MARGIN``: a near tie stays with the FIFO, whose cost does not depend on every rank
    being on a CPU at both syncs (a noisy host turns single-copy ties into losses, rarely the
    other way)."""
    return tuple((size, single_s < MARGIN * fifo_s) for size, fifo_s, single_s in sorted(rows))


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


def _path_fns(engine, tuner, coll, nbytes, timeout):
    """(fifo, single) callables for one collective of nbytes (as the tuner prices it) over
    buffers allocated and touched here. The FIFO side runs the algorithm the tuner picks."""
    n = engine.size
    f32 = dtypes.FLOAT32
    code = tuner.select(coll, nbytes).code
    sc = schedules.single_copy
    if coll == "broadcast":
        buf = np.ones(max(1, nbytes // 4), np.float32)
        return (lambda: schedules.broadcast(engine, buf, 0, f32, code, timeout),
                lambda: sc.broadcast(engine, buf, 0, f32, timeout))
    if coll == "allgather":
        blk = max(1, nbytes // 4 // n)
        src, out = np.ones(blk, np.float32), np.ones(blk * n, np.float32)
        return (lambda: schedules.allgather(engine, src, out, f32, code, timeout),
                lambda: sc.allgather(engine, src, out, f32, timeout))
    blk = max(1, nbytes // 4 // n)
    src, out = np.ones(blk * n, np.float32), np.ones(blk * n, np.float32)
    return (lambda: schedules.alltoall(engine, src, out, None, None, f32, code, timeout),
            lambda: sc.alltoall(engine, src, out, f32, timeout))


def measure(engine, tuner, timeout, sizes=SIZES, reps=REPS, collectives=COLLECTIVES) -> dict:
    """{collective: [(size, fifo_s, single_s)]}: rank 0's seconds per call (collective: every
    rank calls it alike), the single-copy side with ROUTE_S added. A refused single-copy call
    (cma_refused) ends it early with {}."""
    out = {}
    for coll in collectives:
        rows = []
        for nb in sizes:
            fns = _path_fns(engine, tuner, coll, nb, timeout)
            for fn in fns:                              # first touch and warm-up, both paths
                if fn() is False:
                    return {}
            best = [float("inf"), float("inf")]
            for _ in range(reps):
                for j, fn in enumerate(fns):
                    schedules.barrier(engine, ALGO_DISSEMINATION, timeout)
                    t0 = time.perf_counter()
                    for _ in range(CALLS):
                        if fn() is False:
                            return {}
                    schedules.barrier(engine, ALGO_DISSEMINATION, timeout)
                    best[j] = min(best[j], (time.perf_counter() - t0) / CALLS)
            rows.append((nb, best[0], best[1] + ROUTE_S))
        out[coll] = rows
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
    if not isinstance(entry, dict) or entry.get("sizes") != list(SIZES):
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
        entry = {"sizes": list(SIZES), "wins": {c: [w for _, w in v] for c, v in found.items()},
                 "measured_at": time.time(),
                 "rows_us": {c: [[s, f * 1e6, t * 1e6] for s, f, t in r] for c, r in rows.items()},
                 "load_per_cpu": _load_per_cpu(own), "probes": int(prev.get("probes", 0)) + 1}
        if prev.get("sizes") == list(SIZES) and isinstance(prev.get("load_per_cpu"), (int, float)) \
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
