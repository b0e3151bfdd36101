"""The quick probe: measure alpha, beta and gamma on a new communicator, cached per host.

Why measure: every algorithm choice follows from what one message, one byte moved and one byte
reduced cost, and those depend on the machine (cores, caches, where the host placed the vCPUs, how
many ranks share them), not on constants. The probe runs inside communicator creation the first
time a host sees a communicator *shape*, takes a few hundred milliseconds (on one host its two
rings alone take LOOP_REPS loops of RING_LOOP_S each, ~0.2 s, and the ring between the caches
MID_REPS more, ~0.06 s; ~1 s over loopback TCP, which also
times exchange rounds in such loops), and is cached, so every
later communicator costs one small file read on rank 0 and one 152-byte broadcast.

What it times (all ranks at once; per quantity the median of ``REPS`` interleaved repetitions
of ~``REP_S`` each, a repetition's time being the slowest rank's: the statistic the benchmarks
report, hetccl.benchmark.runner's median over repetitions of the slowest rank, because a loop
of calls pays the typical call, not the luckiest one; on one host each ring's repetitions run
by themselves, APART, ``LOOP_REPS`` loops of calls back to back lasting ``RING_LOOP_S`` each, as
jobs run them):

- alpha = dissemination barrier / ceil(log2 p): one header-only message per round, so alpha is a
  step's latency including the engine's per-step overhead (not the Python call around it, which
  every algorithm of a call pays alike). Over a network link a barrier's repetition lasts
  ``NETWORK_BARRIER_REP_S``, a loop of calls as a job runs them: a repetition of REP_S held a
  single barrier there, right after the synchronising one, whose ranks had gone to sleep waiting
  on their sockets (4 netns hosts x 2 ranks on 2 cores: 838 us, where the job's recursive
  doubling paid ~95 us per round and its ring ~30 us per step; in one loaded job 6.6 ms per
  barrier in repetitions of 0.5 ms and 0.2 ms in loops of 30 ms);
- beta: the value at which the ring allreduce's own formula (allreduce.ring, with the gamma of the
  same working set) gives the time of a ring allreduce of ``PROBE_BYTES`` (in cache), and
  beta_out the same of ``PROBE_BIG`` (out of cache): the bytes crossing links, as the formulas
  count them. On one host the rings write a separate output, as the calls priced by their
  working set do, and over FIFOs a repetition holds at least ``MIN_CALLS`` of them (measure), the
  in-cache ones after an untimed call (warm_first). The allreduce rather than an allgather: it is the call that matters most, and its
  ring runs the FIFO relays the other formulas are counted against (over loopback TCP a ring
  allgather's rate priced the allreduce ~2x too fast). When the ring in rank
  order crosses a network link, the slowest host link carried k of its streams at once (k = 2 for
  2 ranks per host placed round-robin, 1 for block placement): beta is divided by k, so the cache
  holds the link's own cost whatever the placement of the job that measured it (the
  topology-aware pricing shares the link again per algorithm). Over a network link beta is the
  slope between the two rings, the link's sustained rate (a token bucket's burst, which a
  short transfer rides through at line rate, cancels out). A wire whose ends share one host
  (loopback TCP: every rank of the communicator on one host) is no such link: its bytes are two
  kernel copies on the ranks' own CPUs, in cache or out of it like a FIFO's, so it is fitted as
  the FIFOs are (beta from the small ring, beta_out from the big one), with two differences.
  Its big rings move ``LOOPBACK_HOST_BYTES`` / ranks on the host, beyond the cache the host's
  ranks share (a rank's private cache is no knee for socket copies: probe_sizes,
  loopback_cache_bytes). And it times Rabenseifner's allreduce at both sizes too, whose pairwise
  exchange rounds (recursive halving and doubling) are what the runtime runs there at most sizes
  from 4 ranks on: beta_x and beta_x_out, by which the exchange formulas price their rounds
  (algorithm.exchange), the ring keeping its own beta;
- gamma = (reduce kernel - copy kernel) / bytes, every rank at once, on ``KERNEL_BYTES`` (in
  cache) and ``KERNEL_BIG`` (gamma_out): the extra cost of reducing a received byte into the
  output instead of copying it (the engine reduces straight out of the transport, so that
  difference is what a reduction adds to a step);
- beta_free, beta_free_out (only with more ranks on the host than CPUs): the values at which the
  binomial broadcast's formula (broadcast.binomial, each level priced on its working ranks,
  cost_model.LinkCost.crowded) gives the time of a binomial broadcast of ``PROBE_BYTES`` and of
  ``BCAST_BIG``: what a byte costs while the ranks at work have a CPU each, which the ring, with
  every rank at work, cannot show (solve_free); and beta_chain, beta_chain_out: the seconds per
  byte of the pipelined chain broadcast of the same two sizes, timed beside them, whose ranks do
  unequal work on the shared CPUs (broadcast.chain; solve_chain);
- cache_bytes: the cut by which a call's working set is priced in cache or out of it
  (cost_model.LinkCost.at), between the two sysfs gives: the private level and a shared level
  over the CPUs sharing it (``cache_per_cpu``: the larger). When the shared one is at least 16x
  the private one, one-host FIFOs also time a ring between them (``mid_ring_bytes``, by itself
  in ``MID_REPS`` loops), and the cut is where the model prices that ring as timed (fit_cut):
  whether the ranks' calls keep their in-cache rate in the shared level depends on how many take
  turns on a CPU, which sysfs cannot say. The out-of-cache ring's working set lies beyond
  that cut (``beyond_cache_bytes``: 16 MiB at 2 ranks on a host with 16 MiB of L3 per CPU), and
  with k ranks per CPU it shrinks with them (at least ``PROBE_BIG`` / k): fewer bytes per
  core, and a probe that stays short at 8 ranks on 2 cores.

The same ranks run the probe as the job, so more ranks than cores shows up in every parameter
(the oversubscribed hand-over in alpha) without a special case, under its own cache key; the
broadcasts add what a step costs when only some of those ranks work.

A busy machine makes a slow probe, and the cache would keep that moment: so rank 0 also measures
how much of the host's CPU time other processes took during the probe (/proc/stat minus the ranks'
own CPU time). Above ``NOISY`` (25%) the entry is marked noisy and the next communicators of that
shape probe again (up to ``MAX_PROBES`` in all), keeping per parameter the lowest value seen.

Agreement (ranks that priced algorithms differently would pick different ones and mismatch): rank 0
alone reads the cache and decides; it broadcasts whether it hit, when and how long the entry was
measured, and the parameters (cost_model.PARAMS); on a miss every rank runs the probe (timings are
maxima over ranks) and rank 0 broadcasts what it derived. Every rank ends with rank 0's numbers, bit for bit.

The cache: ``$XDG_CACHE_HOME/hetccl/cost-model.json`` (default ``~/.cache/hetccl/cost-model.json``),
one entry per host id, link classes, ranks of the communicator on this host, CPUs this process may
use, and hetccl version + native build. A missing, unreadable or corrupt file, or an entry of
another build, is a miss. Entries of other builds stay (two checkouts or builds used by turns,
each with its own entries, must not make each other probe again at every start), and only the
``MAX_ENTRIES`` most recently measured are kept; a cache that cannot be written is logged and
skipped.
``hetccl tune --clear`` deletes the file, ``hetccl tune`` re-measures (hetccl/tuning/cache_cli.py). Only a
single rank, which has no link to time, uses the defaults.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from datetime import datetime, timezone

import numpy as np

from .. import dtypes, transports
from ..ops import ReduceOp
from ..version import build_id
from . import schedules, tuning_file
from .cost_model import (CACHED, INHERITED, MEASURED, OUT_OF_CACHE, PARAMS, TUNED, WORKING_SET,
                         CostModel, LinkCost, all_fifo)
from .registry import ALGO_BINOMIAL, ALGO_CHAIN, ALGO_DISSEMINATION, ALGO_RABENSEIFNER, ALGO_RD, ALGO_RING

log = logging.getLogger("hetccl.tuning")

FORMAT = 15                # of the cache file (3: in-cache and out-of-cache parameters; 4: loopback
                           # wires fitted in and out of cache; 5: the median repetition, not the fastest;
                           # 6: a loopback wire's rings timed in sustained loops, LOOPBACK_REP_S;
                           # 7: beta_free, from binomial broadcasts on more ranks than CPUs;
                           # 8: a loopback wire's exchange rounds timed too (beta_x), its big rings
                           # beyond the host's cache (LOOPBACK_HOST_BYTES), a network barrier in loops;
                           # 9: one-host rings out of place, FIFO rings and broadcasts MIN_CALLS per repetition;
                           # 10: the FIFOs' in-cache ring and broadcast warmed before each repetition, warm_first;
                           # 11: buffers written, not the zero page (_written_zeros); over crowded FIFOs
                           # the in-cache ring in the cache per CPU, in_cache_ring_bytes;
                           # 12: chain broadcasts beside the binomial ones on crowded CPUs, beta_chain;
                           # 13: on one host the in-cache ring timed by itself, APART;
                           # 14: on one host both rings in loops of RING_LOOP_S, each by itself, and
                           # the cache cut the cache per CPU, shared level included: cache_per_cpu;
                           # 15: the cut measured between the private and the shared level, fit_cut)
PROBE_BYTES = 256 << 10    # the ring allreduce that prices beta in cache
PROBE_BIG = 4 << 20        # ... and out of cache (beta_out)
PROBE_BIG_WIRE = 1 << 20   # over a wire the second ring of the slope (both outlast a tbf bucket;
                           # a 4 MiB ring would take ~50 ms per call at 1 Gbit/s)
LOOPBACK_HOST_BYTES = 32 << 20   # over a loopback wire the big rings move this / local ranks each
                           # (see probe_sizes: beyond the cache the host's ranks share)
KERNEL_BYTES = 64 << 10    # the copy and reduce that price gamma in cache (3 arrays: 192 KiB)
KERNEL_BIG = 1 << 20       # ... and out of cache (gamma_out; 3 arrays: 3 MiB)
BCAST_BIG = 8 << 20        # the binomial broadcast that prices beta_free_out (more ranks than CPUs):
                           # far out of the private caches, as the calls it prices are (a 2 MiB one
                           # priced 4-rank broadcasts of 32-128 MiB 1.3x too fast, crossover-2026-12-07f)
REPS = 9                   # repetitions of every quantity (interleaved)
REP_S = 0.5e-3             # one repetition of one quantity lasts about this long
RING_LOOP_S = 20e-3        # ... but a ring of ranks on one host this long, calls back to back (see measure)
LOOP_REPS = 5              # ... in this many repetitions (the median of them)
MID_REPS = 3               # ... and the ring between the caches (mid_ring_bytes) in this many
LOOPBACK_REP_S = RING_LOOP_S   # (a loopback wire's rings: the same loops)
BIG_RING_MAX = 32 << 20    # the out-of-cache ring of a FIFO probe at most (probe_sizes)
SHARED_CACHE_MAX = 128 << 20   # a shared cache reported larger is no one cache the ranks' CPUs sit on
                           # (cache_per_cpu)
NETWORK_BARRIER_REP_S = 20e-3   # ... and the barrier over a network link this long (see negotiate)
CALIBRATE_S = 1e-3         # a calibration batch lasts at least this long
MIN_CALLS = 4              # calls per repetition at least, of a FIFO ring or broadcast (see measure)
# On one host the in-cache ring's repetitions run by themselves, before the other quantities',
# whose repetitions interleave: after a repetition of another quantity (the kernels, the
# broadcasts, the barrier; warm call or not) that ring read 1.07-1.44x a job's loop of the same
# call, and 0.83-1.08x timed by itself in the same repetitions (4 and 8 ranks over tcp, shm and
# c2c, one job each, rounds interleaved: bench/probe_groups_ab.py "whole" and "only",
# bench/results/probe-groups-ab-2026-12-07j.txt). It prices the loops of small and middle-sized
# calls, which ran 1.15-1.45x faster than predicted at 64 KiB-1 MiB from 4 ranks on in every
# recorded validation run (8 ranks over FIFOs at 64 KiB: +43 to +49%, 2026-12-07g-j).
# The out-of-cache ring runs by itself too, after it, in loops of RING_LOOP_S: interleaved with
# the kernels and broadcasts in repetitions of REP_S, the 2-rank c2c probe's 4 MiB ring read 1009
# us per call where the job's loop of the same call took 468 (AMD EPYC host, 1 MiB L2, 32 MiB
# shared L3: bench/results/validate-sim-2026-12-07k.json), and 1.5-2x apart between the c2c and
# the shm probes of that run, minutes apart, over the same ring path.
APART = ("allreduce_s", "allreduce_mid_s", "allreduce_big_s")
MAX_ITERS = 100_000
NOISY = 0.25               # other processes' share of the CPUs above which a probe is re-done
MAX_PROBES = 3             # probes of one shape at most, while they keep being noisy
MAX_ENTRIES = 64           # the cache keeps the most recently measured shapes
_FILE = "cost-model.json"


# ------------------------------------------------------------------ the cache file


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hetccl")


def cache_path() -> str:
    return os.path.join(cache_dir(), _FILE)


def usable_cpus() -> int:
    """The CPUs the job's ranks were given here (topology/cards.affinity: as launched, before
    ``init`` bound a crowded rank to one of them)."""
    from ..topology.cards import affinity
    return len(affinity())


def shape(host: str, link_classes, local_size: int, cpus: int | None = None,
          version: str | None = None) -> dict:
    """What a measurement is valid for: the fields of a cache key."""
    return {"host": host, "links": "+".join(sorted(link_classes)), "local": int(local_size),
            "cpus": usable_cpus() if cpus is None else int(cpus),
            "version": build_id() if version is None else version}


def cache_key(s: dict) -> str:
    return f"{s['host']}|{s['links']}|local={s['local']}|cpus={s['cpus']}|{s['version']}"


def _valid(entry) -> bool:
    """A cache entry the model can use: alpha, beta, gamma positive finite numbers (the in- and
    out-of-cache fields, when present, finite and not negative)."""
    return isinstance(entry, dict) and LinkCost.valid_params(entry)


def read_entries(path: str | None = None, quiet: bool = False) -> dict:
    """{key: entry} of the cache file; empty if it is missing, unreadable, corrupt or of another
    format (never raises: a bad cache only costs a probe, with one warning: the lookup's, the
    store after the probe rewriting the file *quiet*)."""
    path = path or cache_path()
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as e:
        (log.debug if quiet else log.warning)("ignoring the cost-model cache %s (%s); it will be rewritten",
                                             path, e)
        return {}
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("entries"), dict):
        (log.debug if quiet else log.warning)("ignoring the cost-model cache %s (not format %d); the probe "
                                             "measures again and rewrites it", path, FORMAT)
        return {}
    return {k: v for k, v in doc["entries"].items() if _valid(v)}


def lookup(s: dict, path: str | None = None) -> dict | None:
    entry = read_entries(path).get(cache_key(s))
    return entry if entry is not None and entry.get("version") == s["version"] else None


@contextlib.contextmanager
def _locked(path):
    """Serialise read-modify-write of the cache between processes (several jobs may start at once)."""
    import fcntl
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write(path, entries):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"format": FORMAT, "entries": entries}, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def store(s: dict, entry: dict, path: str | None = None) -> bool:
    """Add one entry, keeping the others (other builds' too: the key names the build, and lookup
    trusts an entry only for its own build) up to MAX_ENTRIES; False if the cache is unwritable."""
    path = path or cache_path()
    try:
        with _locked(path):
            entries = read_entries(path, quiet=True)
            entries[cache_key(s)] = dict(entry, **s)
            if len(entries) > MAX_ENTRIES:      # rebuilds, made-up HETCCL_HOST_IDs: the oldest go
                newest = sorted(entries, key=lambda k: float(entries[k].get("measured_at") or 0))
                entries = {k: entries[k] for k in newest[-MAX_ENTRIES:]}
            _write(path, entries)
        return True
    except Exception as e:                      # noqa: BLE001 - never fail the communicator
        log.warning("could not write the cost-model cache %s (%s): the probe will run again next "
                    "time; set XDG_CACHE_HOME to a writable directory", path, e)
        return False


def clear(path: str | None = None, host: str | None = None, local: int | None = None,
          links: str | None = None) -> int:
    """Remove cached entries (all of them, and the file, when no filter is given); returns how many."""
    path = path or cache_path()
    if host is None and local is None and links is None:
        n = len(read_entries(path, quiet=True))
        for p in (path, path + ".lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        return n
    with _locked(path):
        entries = read_entries(path, quiet=True)
        keep = {k: v for k, v in entries.items()
                if not ((host is None or v.get("host") == host)
                        and (local is None or v.get("local") == local)
                        and (links is None or v.get("links") == links))}
        if len(keep) != len(entries):
            _write(path, keep)
        return len(entries) - len(keep)


# ------------------------------------------------------------------ timing


def _max_over_ranks(engine, values: np.ndarray, timeout: float) -> np.ndarray:
    schedules.allreduce(engine, values, values, dtypes.FLOAT64, int(ReduceOp.MAX), ALGO_RD, timeout)
    return values


def _batch(fn, iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return time.perf_counter() - t0


def _calls_per_rep(engine, fn, timeout: float, rep_s: float = REP_S) -> int:
    """Calls of fn lasting about rep_s on the slowest rank (the same count on every rank)."""
    fn()
    fn()
    k = 1
    while True:
        schedules.barrier(engine, ALGO_DISSEMINATION, timeout)
        t = float(_max_over_ranks(engine, np.array([_batch(fn, k)]), timeout)[0])
        if t >= CALIBRATE_S or k >= MAX_ITERS:
            return max(1, min(MAX_ITERS, int(rep_s / (t / k))))
        k = min(MAX_ITERS, max(2 * k, int(k * 1.5 * CALIBRATE_S / t) if t > 0 else 10 * k))


def time_per_call(engine, fns: dict, timeout: float, reps: int = REPS, rep_s: dict | None = None,
                  min_calls: dict | None = None, warm: frozenset = frozenset()) -> dict:
    """{name: seconds per call} of each fn (a collective every rank calls alike, or a local kernel
    all ranks run at once): the median over repetitions of the slowest rank's time. A repetition
    of fn lasts about ``rep_s[name]`` (default REP_S), calls back to back, and holds at least
    ``min_calls[name]`` calls (default 1). Repetitions
    interleave the fns, so all see the same machine. The median, not the minimum: a job's loop of
    calls pays the typical call, and the benchmarks that judge the model (benchmark/runner.py,
    bench/validate_sim.py) report the median repetition. The fastest repetition is the one in
    which no rank waited for a CPU or a wake-up, which a sustained loop rarely has: in the
    2-rank loopback TCP job of 2026-12-07 one of five repetitions ran at the minimum-based
    probe's rate and four at 0.6x of it. The median still drops a minority of repetitions in
    which another process took a core; a probe most of whose repetitions were busy is marked
    noisy and repeated (NOISY). The fns named in *warm* make one untimed call before each
    repetition's barrier (see warm_first)."""
    rep_s, min_calls = rep_s or {}, min_calls or {}
    iters = {name: max(min_calls.get(name, 1), _calls_per_rep(engine, fn, timeout, rep_s.get(name, REP_S)))
             for name, fn in fns.items()}
    times = np.empty((reps, len(fns)))
    for i in range(reps):
        for j, (name, fn) in enumerate(fns.items()):
            if name in warm:
                fn()
            schedules.barrier(engine, ALGO_DISSEMINATION, timeout)
            times[i, j] = _batch(fn, iters[name]) / iters[name]
    slowest = _max_over_ranks(engine, times.reshape(-1), timeout).reshape(reps, len(fns))
    best = np.median(slowest, axis=0)
    return {name: float(best[j]) for j, name in enumerate(fns)}


def measure(engine, size: int, timeout: float, big_bytes: int = PROBE_BIG, ring_rep_s: float = REP_S,
            crowded: bool = False, exchange: bool = False, barrier_rep_s: float = REP_S,
            out_of_place: bool = False, min_calls: int = 1, warm: bool = False,
            small_bytes: int = PROBE_BYTES, ring_reps: int = REPS, mid_bytes: int = 0) -> dict:
    """Run the probe (collective over the engine's ranks); the raw timings in seconds and bytes:
    every quantity in cache (``PROBE_BYTES``, ``KERNEL_BYTES``) and out of it (``PROBE_BIG``,
    ``KERNEL_BIG``). ``ring_rep_s``: how long one repetition of each ring lasts (LOOPBACK_REP_S
    over a loopback wire: a ring allreduce over loopback TCP runs about half as fast in a loop of
    calls lasting tens of milliseconds as in the few calls a repetition of REP_S after a barrier
    holds: 2 ranks, 4 MiB, 1787 us per call in bench/validate_sim.py's 30 ms loops against 953 us
    in the probe of the same quiet hour; the FIFO rings show no such gap, 2-rank c2c and shm within
    8-23% of the same kind of probe). The kernels run on views of the allreduces' buffers (their contents do not
    matter), so the probe touches no more new memory than the big allreduce's (first touches
    are slow on a VM); the kernels write into them, the allreduces only ever sum zeros.

    *crowded* (more ranks on the host than CPUs): also a binomial broadcast from rank 0 of the
    small ring's buffer (``bcast_s``) and of ``BCAST_BIG`` bytes (``bcast_big_s``), whose levels
    keep only some ranks at work, so that fit() can price a byte moved while the working ranks
    have a CPU each (beta_free, beta_free_out); and the chain broadcast of the same two buffers
    (``chain_s``, ``chain_big_s``: beta_chain, beta_chain_out).

    *exchange* (a loopback wire): also Rabenseifner's allreduce at both sizes, in loops as long as
    the rings' (``exchange_s``, ``exchange_big_s``): its rounds of pairwise exchanges are what the
    runtime runs over such a wire at most sizes from 4 ranks on, and they cost more per byte than
    the ring's pipelined steps (bench/results/validate-sim-2026-12-07f.json: at 8 ranks on 2 cores
    4-64 MiB Rabenseifners ran at 1.6x the 2 MiB ring's time per byte). *barrier_rep_s*: the
    length of a repetition of the barrier (longer over a network link, see negotiate).

    *out_of_place* (ranks of one host): the rings (and exchanges) write a separate output, as the
    calls the model prices by their working set of input, output and FIFO (cost_model.WORKING_SET)
    do; in place the big loopback rings kept 32 MiB of the host at work, the size of the cache the
    host's ranks share, not beyond it (2 ranks over loopback TCP: Rabenseifner at 16 MiB 6.6 ms
    in place in the probe, 8.0 ms out of place in the job of the same window, 1.21x; 8 ranks, the
    ring at 4 MiB 10.9 ms against 14.7, bench/results/validate-sim-2026-12-07g.json).
    *small_bytes*: the ring in cache (PROBE_BYTES; less on crowded FIFOs, in_cache_ring_bytes).
    *ring_reps*: the repetitions of each ring timed by itself (APART, one host: LOOP_REPS of
    RING_LOOP_S each, see ring_rep_s).
    *mid_bytes* (> 0: one-host FIFOs whose CPUs have a shared cache level beside their private
    one, mid_ring_bytes): also a ring of that size between the two (``allreduce_mid_s``), timed
    by itself in MID_REPS loops, from which fit() takes the cache cut (fit_cut).
    *warm*: the in-cache ring and broadcast make an untimed call before each repetition (FIFOs,
    warm_first). *min_calls*: a repetition of a ring or broadcast holds at least this many calls (FIFOs:
    MIN_CALLS, see negotiate). One call right after the synchronising barrier, which a repetition
    of REP_S holds once a call lasts longer, is not what a loop of calls pays over FIFOs: the
    probe's 256 KiB ring ran 1.10-1.42x the jobs' loops of the same call at 2, 4 and 8 ranks in
    all six FIFO cases of that run, and its 8 MiB binomial broadcast at 4 ranks 2.5-3.1 ms against
    2.1 ms in the sweep's loops (bench/results/crossover-2026-12-07g-raw)."""
    def count(nbytes):                  # float32 elements of a ring's buffer (a multiple of size)
        return max(size, (nbytes // 4) // size * size)

    k, K = KERNEL_BYTES // 4, kernel_big_bytes(big_bytes) // 4
    # allocated (zeros: a sum in place stays finite however often it runs) and touched before
    # timing; the kernels' arrays are views of the same memory as the rings' buffers
    small = _written_zeros(max(count(PROBE_BYTES), 3 * k))
    pool = _written_zeros(max(count(big_bytes), 3 * K))
    ar, big = small[:count(min(small_bytes, PROBE_BYTES))], pool[:count(big_bytes)]
    tree_small = small[:count(PROBE_BYTES)]      # the broadcast of beta_free: FREE_SIZES[0] always
    ar_out, big_out = (_written_zeros(ar.size), _written_zeros(big.size)) if out_of_place else (ar, big)
    mid = pool[:min(count(mid_bytes), big.size)] if mid_bytes > 0 else None
    mid_out = big_out[:mid.size] if mid is not None else None
    a, b, d = small[:k], small[k:2 * k], small[2 * k:3 * k]
    A, B, D = pool[:K], pool[K:2 * K], pool[2 * K:3 * K]
    f32, add, kern = dtypes.FLOAT32, int(ReduceOp.SUM), schedules.kernels
    tree = {}
    if crowded:
        wide = _written_zeros(BCAST_BIG // 4)
        tree = {"bcast_s": lambda: schedules.broadcast(engine, tree_small, 0, f32, ALGO_BINOMIAL, timeout),
                "bcast_big_s": lambda: schedules.broadcast(engine, wide, 0, f32, ALGO_BINOMIAL, timeout),
                "chain_s": lambda: schedules.broadcast(engine, tree_small, 0, f32, ALGO_CHAIN, timeout),
                "chain_big_s": lambda: schedules.broadcast(engine, wide, 0, f32, ALGO_CHAIN, timeout)}
    fns = {
        "barrier_s": lambda: schedules.barrier(engine, ALGO_DISSEMINATION, timeout),
        "allreduce_s": lambda: schedules.allreduce(engine, ar, ar_out, f32, add, ALGO_RING, timeout),
        "allreduce_big_s": lambda: schedules.allreduce(engine, big, big_out, f32, add, ALGO_RING, timeout),
        "copy_s": lambda: kern.copy_array(d, a),
        "reduce_s": lambda: kern.reduce_arrays(d, a, b, f32, add),
        "copy_big_s": lambda: kern.copy_array(D, A),
        "reduce_big_s": lambda: kern.reduce_arrays(D, A, B, f32, add),
        **tree,
    }
    rep_s = {"barrier_s": barrier_rep_s, "allreduce_s": ring_rep_s, "allreduce_big_s": ring_rep_s}
    if mid is not None:
        fns["allreduce_mid_s"] = lambda: schedules.allreduce(engine, mid, mid_out, f32, add, ALGO_RING, timeout)
        rep_s["allreduce_mid_s"] = ring_rep_s
    if exchange:
        fns["exchange_s"] = lambda: schedules.allreduce(engine, ar, ar_out, f32, add, ALGO_RABENSEIFNER, timeout)
        fns["exchange_big_s"] = lambda: schedules.allreduce(engine, big, big_out, f32, add, ALGO_RABENSEIFNER,
                                                            timeout)
        rep_s.update(exchange_s=ring_rep_s, exchange_big_s=ring_rep_s)
    calls = {k: min_calls for k in ("allreduce_s", "allreduce_mid_s", "allreduce_big_s", "bcast_s", "bcast_big_s", "chain_s",
                                    "chain_big_s") if k in fns}
    # one host: each ring by itself (APART, the in-cache one first), then the others interleaved;
    # over a network link both rings make one slope (fit), so they keep seeing the same moments
    apart = [{k: fns[k]} for k in APART if k in fns] if out_of_place else []
    rest = {k: f for k, f in fns.items() if not any(k in g for g in apart)}
    raw = {}
    for group in apart:
        reps = min(ring_reps, MID_REPS) if "allreduce_mid_s" in group else ring_reps
        raw.update(time_per_call(engine, group, timeout, reps=reps, rep_s=rep_s, min_calls=calls,
                                 **warm_first(group, warm)))
    raw.update(time_per_call(engine, rest, timeout, rep_s=rep_s, min_calls=calls, **warm_first(rest, warm)))
    raw.update(allreduce_bytes=ar.nbytes, allreduce_big_bytes=big.nbytes, kernel_bytes=a.nbytes,
               kernel_big_bytes=A.nbytes, link_share=_ring_link_share(engine, size, timeout))
    if mid is not None:
        raw.update(allreduce_mid_bytes=mid.nbytes)
    if crowded:
        raw.update(bcast_bytes=tree_small.nbytes, bcast_big_bytes=wide.nbytes, chain_bytes=tree_small.nbytes,
                   chain_big_bytes=wide.nbytes)
    return raw


WARM = ("allreduce_s", "bcast_s", "chain_s")   # the in-cache collectives a warm call goes before (warm_first)


def warm_first(fns, warm: bool) -> dict:
    """time_per_call's *warm* for measure(): the in-cache ring and broadcast (WARM) make one
    untimed call before each repetition, as the benchmark runner does before each block
    (hetccl.benchmark.runner._variant_order). Why: their repetitions follow the big ring, the
    big broadcast and the kernels, which leave the caches and the FIFOs' lines to other buffers,
    and a repetition holds only MIN_CALLS calls of them, the first of which pays for that; the
    loops of calls the in-cache beta prices pay it once. Recorded on 4 ranks sharing 2 CPUs (cold,
    cache format 9): the probe's 256 KiB ring 140 us, the sweep's loops of the same window 112
    (its 128 KiB and 512 KiB rings, log-interpolated; 3 ranks 107 against 82), the ring's own
    bytes 0.54 ns each against the loops' 0.42-0.43 from 128 KiB to 2 MiB. That in-cache beta
    chose the ring at 32 KiB where Rabenseifner was 1.22x faster; re-decided with the loops'
    value it runs Rabenseifner and nothing else moves (bench/crossover_repredict.py
    --ring-from-sweep, bench/results/crossover-2026-12-07h-raw). Out of cache there is nothing
    to warm."""
    return {"warm": frozenset(k for k in WARM if k in fns)} if warm else {}


def _written_zeros(count: int) -> np.ndarray:
    """float32 zeros in memory of their own: written, not calloc'd. A fresh np.zeros maps the
    kernel's one shared zero page until something writes it, so a call that only reads it (an
    out-of-place ring's input, the root's side of a broadcast) reads one cached 4 KiB page instead
    of its buffer: measured at 8 ranks over loopback TCP, a 4 MiB ring ran 1.30x faster on such an
    input than on a written one (same processes, interleaved, 30 ms loops; 1.26x in the probe's
    short repetitions), as the probe's 4 MiB ring ran 1.34-1.35x faster than the jobs' loops,
    whose buffers hold data (bench/results/validate-sim-2026-12-07g/h.json); at 4 ranks, 8 MiB,
    1.04-1.11x."""
    out = np.empty(count, dtype=np.float32)
    out.fill(0.0)
    return out


def _ring_link_share(engine, size: int, timeout: float) -> float:
    """How many edges of the rank-order ring leave the busiest host over a network link (1 when
    none does): the streams that shared one link while the probe's ring ran. A rank's host is
    itself and the peers it reaches without a wire (engine.link_kind)."""
    wire = transports.wire_kinds()
    kinds = [engine.link_kind(q) for q in range(size)]
    crossing = np.zeros(size)
    crossing[engine.rank] = 1.0 if kinds[(engine.rank + 1) % size] in wire else 0.0
    schedules.allreduce(engine, crossing, crossing, dtypes.FLOAT64, int(ReduceOp.SUM), ALGO_RD, timeout)
    mine = np.array([sum(crossing[q] for q in range(size) if q == engine.rank or kinds[q] not in wire)])
    return max(1.0, float(_max_over_ranks(engine, mine, timeout)[0]))


def fit(raw: dict, size: int, engine_facts: LinkCost | None = None, cache_bytes: float = 0.0,
        network: bool | None = None, private_bytes: float = 0.0) -> LinkCost:
    """alpha, beta, gamma in cache and out of it from the probe's timings (see the module
    docstring). gamma is the kernels' difference; beta is the value at which the registry's own
    ring allreduce formula (allreduce.ring, on *engine_facts*: FIFO or wire, FIFO size, streaming
    threshold, and the gamma of the same working set) gives the time measured, so the probe and
    the formulas count bytes alike. The floors keep a noisy run from producing zero or negative
    costs: a step never costs less than 10% of the measured ring in bandwidth, a reduction never
    less than 5% of a copy.

    Over a network link (*network*; default: engine_facts.fifo False) beta is the slope between
    the two rings, the link's sustained rate: a token bucket's burst and the per-step latencies
    cancel out, and the link, not a cache, sets the pace (beta_out = beta). A wire inside one
    host (*network* False: loopback) is fitted as FIFOs are, each ring on its own. Timings of an
    older probe (a 1 MiB ring allgather, no out-of-cache quantities) give one beta and gamma at
    every size.

    The cache cut: *cache_bytes*, unless the probe also timed a ring between the caches
    (``allreduce_mid_s``, one-host FIFOs) and *private_bytes* (the private level, > 0) lies below
    it: then the cut between the two at which the model prices that ring as measured (fit_cut).
    Without *private_bytes* (a record re-fitted, hetccl.simulate.validate.refit) *cache_bytes* is
    taken as it is: the cut the probe derived."""
    from .allgather import ring as ring_allgather
    from .allreduce import rabenseifner, ring as ring_allreduce
    p = size
    facts = engine_facts or LinkCost(0.0, 0.0, 0.0)
    share = max(1.0, float(raw.get("link_share", 1.0)))
    alpha = raw["barrier_s"] / max(1, math.ceil(math.log2(p)))

    def kernel_gamma(reduce_s, copy_s, nbytes):
        return max(reduce_s - copy_s, 0.05 * copy_s) / nbytes

    def per_beta(formula, nbytes, gamma):
        """(seconds without beta, seconds per unit of beta) of the formula."""
        at = dataclasses.replace(facts, alpha=alpha, beta=0.0, gamma=gamma, cache_bytes=0.0, beta_x=0.0)
        t0 = formula(nbytes, p, at)
        return t0, formula(nbytes, p, dataclasses.replace(at, beta=1.0)) - t0

    def solve(formula, t, nbytes, gamma):
        t0, k = per_beta(formula, nbytes, gamma)
        return max(t - t0, 0.1 * t) / k / share

    def solve_loopback_ring(t, nbytes, gamma):
        """beta at which the ring's formula gives t over a loopback wire, whose steps hide their
        latency behind their bytes on crowded CPUs (algorithm.overlaps; beta_x > 0 marks the
        wire whose exchange rounds the probe timed): piecewise linear in beta, bisected."""
        at = dataclasses.replace(facts, alpha=alpha, gamma=gamma, cache_bytes=0.0)
        return bisect_beta(lambda b: ring_allreduce(nbytes, p, dataclasses.replace(at, beta=b, beta_x=b)), t)

    def solve_exchange(t, nbytes, beta, gamma):
        """beta_x at which Rabenseifner's formula gives t, its other bytes (a non-power of two's
        fold, one-way transfers) at the ring's beta. The formula is piecewise linear in beta_x
        (a round that hides its latency costs the larger of the two, algorithm.exchange_rounds):
        bisected; at least what 10% of t over its bytes gives."""
        at = dataclasses.replace(facts, alpha=alpha, beta=beta, gamma=gamma, cache_bytes=0.0)
        return bisect_beta(lambda x: rabenseifner(nbytes, p, dataclasses.replace(at, beta_x=x)), t)

    def bisect_beta(price, t):
        """The per-byte value at which the increasing, piecewise linear price gives t; at least
        what 10% of t over its bytes gives."""
        floor = 0.1 * t / (price(2.0) - price(1.0))
        lo, hi = floor, max(floor, 1e-9)
        if price(lo) >= t:
            return floor
        while price(hi) < t:
            lo, hi = hi, 2 * hi
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if price(mid) < t else (lo, mid)
        return hi

    gamma = kernel_gamma(raw["reduce_s"], raw["copy_s"], raw["kernel_bytes"])
    if "allreduce_s" not in raw:                 # an older probe's raw timings
        beta = solve(ring_allgather, raw["allgather_s"], raw["allgather_bytes"], 0.0)
        return dataclasses.replace(facts, alpha=alpha, beta=beta, gamma=gamma)
    gamma_out = kernel_gamma(raw["reduce_big_s"], raw["copy_big_s"], raw["kernel_big_bytes"])
    small, big = raw["allreduce_bytes"], raw["allreduce_big_bytes"]
    beta_x = beta_x_out = 0.0                   # exchange steps priced by beta (measured: loopback)
    if (not facts.fifo) if network is None else network:
        t0s, ks = per_beta(ring_allreduce, small, gamma)
        t0b, kb = per_beta(ring_allreduce, big, gamma_out)
        slope = ((raw["allreduce_big_s"] - t0b) - (raw["allreduce_s"] - t0s)) / (kb - ks) / share
        beta = beta_out = max(slope, 0.5 * solve(ring_allreduce, raw["allreduce_big_s"], big, gamma_out))
    else:
        if "exchange_s" in raw:                  # a loopback wire (measure): its rounds may overlap
            beta = solve_loopback_ring(raw["allreduce_s"], small, gamma)
            beta_out = solve_loopback_ring(raw["allreduce_big_s"], big, gamma_out)
        else:
            beta = solve(ring_allreduce, raw["allreduce_s"], small, gamma)
            beta_out = solve(ring_allreduce, raw["allreduce_big_s"], big, gamma_out)
        # a byte in cache never costs more than one out of it: a small ring that measured slower
        # lost its time to per-step scheduling (ranks sharing cores), which alpha prices
        beta, gamma = min(beta, beta_out), min(gamma, gamma_out)
        if "exchange_s" in raw:                  # a loopback wire's exchange rounds (measure)
            beta_x = solve_exchange(raw["exchange_s"], small, beta, gamma)
            beta_x_out = solve_exchange(raw["exchange_big_s"], big, beta_out, gamma_out)
            beta_x = min(beta_x, beta_x_out)
            cache_bytes = loopback_cache_bytes(big)
    free = free_out = 0.0
    if "bcast_s" in raw and facts.share > 1:
        free = solve_free(raw["bcast_s"], raw["bcast_bytes"], p, dataclasses.replace(facts, alpha=alpha, beta=beta))
        free_out = solve_free(raw["bcast_big_s"], raw["bcast_big_bytes"], p,
                              dataclasses.replace(facts, alpha=alpha, beta=beta_out))
        if free <= 0 or free_out <= 0:
            free = free_out = 0.0
    chain = chain_out = 0.0
    if "chain_s" in raw and facts.share > 1 and p > 2:
        chain = solve_chain(raw["chain_s"], raw["chain_bytes"], p, alpha)
        chain_out = solve_chain(raw["chain_big_s"], raw["chain_big_bytes"], p, alpha)
    cost = dataclasses.replace(facts, alpha=alpha, beta=beta, gamma=gamma, beta_out=beta_out,
                               gamma_out=gamma_out, cache_bytes=float(cache_bytes),
                               beta_free=free, beta_free_out=free_out, beta_x=beta_x, beta_x_out=beta_x_out,
                               beta_chain=chain, beta_chain_out=chain_out)
    if "allreduce_mid_s" in raw and 0 < private_bytes < cache_bytes:
        cut = fit_cut(cost, raw["allreduce_mid_s"], raw["allreduce_mid_bytes"], p, private_bytes)
        cost = dataclasses.replace(cost, cache_bytes=float(cut))
    return cost


def fit_cut(cost: LinkCost, t: float, nbytes: float, p: int, low: float) -> float:
    """The cache cut at which the model (*cost*: its in-cache and out-of-cache parameters fitted,
    its cache_bytes the largest cut the CPUs' caches allow, cache_per_cpu) prices the ring
    allreduce of *nbytes* at the *t* measured, between *low* (the private level) and that: the
    cut read where the ranks' calls leave their in-cache rate, rather than from sysfs.

    Why measure it: a shared level is a cache for a rank's calls only as far as the ranks that
    take turns on the CPUs and their peers leave it to them. On the 2-vCPU AMD EPYC host (1 MiB
    L2 per vCPU, one 32 MiB L3 for both) 2 ranks kept their in-cache rate up to 1 MiB (3 MiB of
    working set per CPU) and the 16 MiB cut predicted them, while at 4 and 8 ranks the ring ran
    at its out-of-cache rate from 256 KiB (1.5 MiB per CPU) and that cut priced 64 KiB-1 MiB
    29-40% too fast where the private one was within 20% (bench/results/validate-sim-2026-12-07m.json,
    re-predicted: bench/results/cut-repredict-*.txt).

    The price falls as the cut grows (LinkCost.at): at least *low*'s price, the private cut; at
    most the largest cut's, that cut; between them bisected in log2 of the cut."""
    from .allreduce import ring as ring_allreduce
    high = float(cost.cache_bytes)

    def price(cut):
        return ring_allreduce(nbytes, p, dataclasses.replace(cost, cache_bytes=cut).at(nbytes, "allreduce"))
    if t <= price(high):
        return high
    if t >= price(low):
        return float(low)
    lo, hi = math.log2(low), math.log2(high)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if price(2.0 ** mid) < t else (mid, hi)
    return float(2.0 ** (0.5 * (lo + hi)))


def solve_chain(t, nbytes, p, alpha) -> float:
    """The beta_chain at which the chain broadcast's formula (broadcast.chain: p - 1 hops of alpha
    plus a measured time per byte) gives the time t measured for nbytes: what is left of t after
    its hops, per byte, at least 10% of t per byte."""
    return max(t - (p - 1) * alpha, 0.1 * t) / nbytes


def solve_free(t, nbytes, p, c) -> float:
    """The beta_free at which the registry's binomial broadcast formula (broadcast.binomial, whose
    levels are priced on their working ranks, LinkCost.crowded) gives the time t measured for
    nbytes, on c's alpha and all-ranks beta: 0 when no level of the tree has fewer ranks per CPU
    than the probe's ring (nothing to tell apart). Never above beta (a byte costs no more with
    fewer ranks at work; a slower tree lost its time to something the formula does not price),
    nor below 10% of it."""
    from .broadcast import binomial
    lo, hi = (dataclasses.replace(c, beta_free=x * c.beta, cache_bytes=0.0) for x in (0.5, 1.0))
    t_lo, t_hi = binomial(nbytes, p, lo), binomial(nbytes, p, hi)
    k = (t_hi - t_lo) / (0.5 * c.beta) if c.beta > 0 else 0.0
    if k <= 1e-3 * nbytes:             # every level as crowded as the ring
        return 0.0
    free = 0.5 * c.beta + (t - t_lo) / k
    return min(c.beta, max(0.1 * c.beta, free))


def loopback_cache_bytes(big_bytes: float) -> float:
    """The cache_bytes of a loopback wire's model whose big rings moved *big_bytes*: the value at
    which the model's in-cache/out-of-cache interpolation (cost_model.LinkCost.at) ends exactly at
    the big rings' working set, so it runs between the probe's two measured sizes. A loopback
    wire's bytes are kernel copies through socket buffers that every rank of the host shares, so
    its knee is the host's cache, not a rank's private one: measured on the 2-vCPU VM (run of
    2026-12-07 05:44), 2 ranks paid 0.45 ns per byte up to 4 MiB and 0.56 from 16 MiB, 4 ranks
    0.71 up to 1 MiB, 0.95 at 4 MiB and 1.13-1.16 from 16 MiB, the private cache being 2 MiB."""
    return WORKING_SET * float(big_bytes) / OUT_OF_CACHE


_CPU_SYSFS = "/sys/devices/system/cpu"


def loaded_cut(cache: float, other: float | None) -> float:
    """The cache cut of a probe during which other processes took *other* of the host's CPUs
    (None: unknown): *cache* (cache_per_cpu) while they left the host quiet, at most the private
    cache once they took more than NOISY. A shared level is the ranks' only while nobody else
    fills it: on the 2-vCPU EPYC host under a load average of ~30 (other processes 80-88% of the
    CPUs) the jobs' 1-4 MiB rings paid their out-of-cache rate, and the 16 MiB cut priced them
    35-54% too fast at 2 and 4 ranks, where the private one was within 19% (shm; same jobs,
    bench/results/probe-loops-ab-2026-12-07m.txt); quiet, the same cut brought the 19:36 record's
    2-rank shm case from 4 to 6 of 6 points within 25% (probe-repredict-cut-2026-12-07m.txt). Such a
    probe is noisy and measured again by the next communicators of its shape (NOISY), whose cut
    replaces it."""
    if other is None or other <= NOISY:
        return cache
    private = private_cache_bytes()
    return min(cache, private) if private > 0 else cache


def _cpu_count(cpu_list: str) -> int:
    """CPUs in a sysfs CPU list ("0", "0-1", "0,2-3"; 0 if unreadable)."""
    n = 0
    try:
        for part in filter(None, cpu_list.strip().split(",")):
            lo, _, hi = part.partition("-")
            n += int(hi or lo) - int(lo) + 1
    except ValueError:
        return 0
    return n


def cache_levels(cpu: int = 0) -> list[tuple[int, int]]:
    """[(bytes, CPUs sharing it)] of the data and unified caches of *cpu* (sysfs; empty if
    unknown; a level whose files cannot be read or parsed is left out)."""
    out = []
    base = os.path.join(_CPU_SYSFS, f"cpu{cpu}", "cache")
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return out
    for idx in names:
        d = os.path.join(base, idx)
        try:
            with open(os.path.join(d, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(d, "shared_cpu_list")) as f:
                cpus = _cpu_count(f.read())
            with open(os.path.join(d, "size")) as f:
                text = f.read().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
        try:
            size = int(text.rstrip("KMGkmg")) * mult
        except ValueError:
            continue
        if cpus > 0 and size > 0:
            out.append((size, cpus))
    return out


def private_cache_bytes(cpu: int = 0) -> int:
    """Bytes of the largest cache one CPU has to itself (sysfs; 0 if unknown): the working set
    below which a rank's bytes stay in cache whatever its neighbours do."""
    return max((size for size, cpus in cache_levels(cpu) if cpus == 1), default=0)


def cache_per_cpu(cpu: int = 0) -> int:
    """The cache cut of a one-host probe (cost_model.LinkCost.cache_bytes): the cache per CPU,
    the larger of the private level (private_cache_bytes) and a shared level's size over the CPUs
    that share it (sysfs shared_cpu_list). A shared level reported larger than SHARED_CACHE_MAX
    counts for nothing: a virtual machine may report as its L3 the whole socket's, across dies
    (480 MiB on the 2-vCPU VM of the 2026-12-06 figures, whose calls ran out of cache from ~2 MiB
    of working set: its 2 MiB L2 was the knee). Measured on the 2-vCPU AMD EPYC host (1 MiB L2 per
    vCPU, one 32 MiB L3 for both: 16 MiB per CPU), the 2-rank ring allreduce kept its in-cache
    rate up to 1 MiB (3 MiB of working set, 12.9-13.4 GB/s), 9.6 GB/s at 4 MiB and 7.9-8.4 from
    16 MiB (bench/results/validate-sim-2026-12-07k.json): the cut at the L2 priced 1 MiB out of
    cache, 1.8-2.8x too slow."""
    levels = cache_levels(cpu)
    private = max((size for size, cpus in levels if cpus == 1), default=0)
    shared = max((size // cpus for size, cpus in levels if cpus > 1 and size <= SHARED_CACHE_MAX), default=0)
    return max(private, shared)


# ------------------------------------------------------------------ at communicator creation


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _host_busy_seconds() -> float | None:
    """CPU seconds every process of this host has used since boot (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        return (sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0)) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _probe(engine, rank: int, size: int, timeout: float, big_bytes: int = PROBE_BIG, ring_rep_s: float = REP_S,
           **how):
    """measure() plus the share of the host's CPUs that other processes used meanwhile (None if
    unknown): the host's CPU time (/proc/stat, on rank 0) minus what the ranks used (summed)."""
    busy0, own0, t0 = _host_busy_seconds(), time.process_time(), time.perf_counter()
    raw = measure(engine, size, timeout, big_bytes, ring_rep_s, **how)
    own = np.array([time.process_time() - own0])
    schedules.allreduce(engine, own, own, dtypes.FLOAT64, int(ReduceOp.SUM), ALGO_RD, timeout)
    wall, busy1 = time.perf_counter() - t0, _host_busy_seconds()
    other = None
    if rank == 0 and busy0 is not None and busy1 is not None and wall > 0:
        other = max(0.0, (busy1 - busy0 - float(own[0])) / (wall * (os.cpu_count() or 1)))
    return raw, wall, other


def _detail(when, secs, other) -> str:
    load = "" if other is None or other < 0 else f", other load {other:.0%}"
    return f"probe of {_iso(when)}, {secs * 1e3:.0f} ms{load}"


def _fifo_bytes(local_size: int) -> float:
    """Bytes of one direction's shared-memory FIFO on a host with local_size ranks (0: unknown)."""
    try:
        from ..transports.shm import fifo_bytes
        return float(fifo_bytes(int(local_size)))
    except Exception:                           # noqa: BLE001 - pricing falls back to the default
        return 0.0


def _link_cost(params, classes, engine, fifo_bytes=0.0, share=1.0) -> LinkCost:
    """The measured parameters (cost_model.PARAMS, in that order) plus what the formulas need to
    know of the engine: whether every link is a shared-memory FIFO, how big a FIFO is (rank 0's
    host, broadcast), from how many bytes the engine writes with streaming stores (read from
    it, so a rebuilt engine's threshold is priced as it is), and how many ranks share a CPU on
    rank 0's host (broadcast: the cache keys an entry by local ranks and CPUs, so it is the
    share its beta was measured at)."""
    extra = {"share": max(1.0, float(share))}
    stream_min = getattr(engine, "nt_threshold", None)
    if stream_min:
        extra["stream_min"] = float(stream_min)
    if fifo_bytes and fifo_bytes > 0:
        extra["fifo_bytes"] = float(fifo_bytes)
    return LinkCost.from_params(dict(zip(PARAMS, map(float, params))), fifo=all_fifo(classes), **extra)


def network_link(classes, local_size: int, size: int) -> bool:
    """Whether the probe's ring crosses a network link between hosts: a wire among the link
    classes and ranks on more than one host (rank 0's host holds fewer than all). A wire among
    ranks of one host (loopback TCP) moves its bytes by kernel copies on the ranks' CPUs, in cache
    or out of it as FIFOs do: measured on the 2-vCPU VM, 2-64 MiB allreduces over loopback TCP
    paid 1.2-1.5x per byte what 256 KiB-1 MiB ones did (2-8 ranks), and the 1 MiB ring of a
    network probe priced them 2.3-3.6x too fast (bench/results/validate-sim-2026-12-07-b.json)."""
    return not all_fifo(classes) and local_size < size


def ring_rep_s(classes, network: bool) -> float:
    """How long one repetition of the probe's rings lasts: RING_LOOP_S for ranks of one host (FIFOs
    and loopback wires: a loop of calls back to back, as jobs run them; see below), REP_S over a
    network link (the slope between two rings prices it, and both share their moments).

    Over loopback TCP a loop of calls pays about twice what the first calls after a barrier do
    (see measure). Over FIFOs the few calls of a repetition of REP_S read 1.1-2.2x a job's loop
    of the same call (the 2-rank c2c ring at 4 MiB 1009 us against 468, at 256 KiB 1.10-1.42x
    from 2 to 8 ranks, bench/results/validate-sim-2026-12-07k.json, crossover-2026-12-07g-raw)."""
    return REP_S if network else RING_LOOP_S


def probe_sizes(share: float, wire: bool, loopback_local: int = 0) -> tuple[int, float]:
    """(bytes of the out-of-cache ring, the cache a rank has: cache_per_cpu) for *share* ranks per
    CPU. Over FIFOs the ring's working set (cost_model.WORKING_SET, times the ranks sharing a CPU's
    cache, LinkCost.ranks_per_cache) lies OUT_OF_CACHE x the cut beyond it, where the model takes
    the out-of-cache beta whole (beyond_cache_bytes), and at least PROBE_BIG / share: 16 MiB at 2
    ranks, 8 at 4, 4 at 8 on the 2-vCPU EPYC host (16 MiB of shared L3 per CPU); on a host
    whose cut is a 2 MiB private cache, 4 MiB at 2 ranks and 2 at 8 (fewer bytes per core with
    ranks taking turns on a CPU, a probe that stays short at 8 ranks on 2 cores). Over a network
    link (*wire*: network_link) PROBE_BIG_WIRE.

    Over a loopback wire (*loopback_local*: the ranks on the host, > 0) the big rings move
    LOOPBACK_HOST_BYTES / loopback_local each (16 MiB at 2 ranks, 4 MiB at 8): out of place
    (measure) the host's ranks then work on 64 MiB of buffers, beyond the cache they share, where
    a loopback wire's bytes cost the most (loopback_cache_bytes); fit prices between the two sizes."""
    share = max(1.0, share)
    cache = cache_per_cpu()
    if loopback_local > 0 and not wire:
        return max(PROBE_BIG // 2, LOOPBACK_HOST_BYTES // int(loopback_local)), cache
    return (PROBE_BIG_WIRE if wire else beyond_cache_bytes(cache, share)), cache


def beyond_cache_bytes(cache: float, share: float) -> int:
    """The out-of-cache ring of a FIFO probe with the cut *cache* and *share* ranks per CPU: the
    smallest power of two whose working set (WORKING_SET x bytes x share) reaches OUT_OF_CACHE x
    the cut, at least PROBE_BIG / share and PROBE_BIG / 2, at most BIG_RING_MAX."""
    need = OUT_OF_CACHE * float(cache) / (WORKING_SET * share)
    pow2 = 1 << max(0, math.ceil(math.log2(need))) if need > 1 else 1
    return max(PROBE_BIG // 2, int(PROBE_BIG / share), min(BIG_RING_MAX, pow2))


def kernel_big_bytes(big_bytes: int) -> int:
    """Bytes of each of the three arrays of the out-of-cache kernels (gamma_out): half the big
    ring's (their working set 1.5x its input, as far out of cache as the ring), at least
    KERNEL_BIG."""
    return max(KERNEL_BIG, int(big_bytes) // 2)


def measure_options(classes, network: bool, share: float) -> dict:
    """How measure() times a communicator whose links are *classes* (*network*: network_link),
    with *share* ranks per CPU: the rings' repetition (ring_rep_s) and how many (LOOP_REPS on one
    host, each ring by itself: APART), the broadcasts that price
    beta_free on crowded CPUs, the exchange rounds over a loopback wire, the barrier's loops over
    a network link, rings out of place on one host, and over FIFOs MIN_CALLS per repetition and
    a warm call before each repetition of the in-cache ones (warm_first)."""
    loopback = not all_fifo(classes) and not network
    return {"ring_rep_s": ring_rep_s(classes, network), "ring_reps": REPS if network else LOOP_REPS,
            "crowded": float(share) > 1, "exchange": loopback,
            "barrier_rep_s": NETWORK_BARRIER_REP_S if network else REP_S, "out_of_place": not network,
            "min_calls": MIN_CALLS if all_fifo(classes) else 1, "warm": all_fifo(classes),
            "small_bytes": in_cache_ring_bytes(share) if all_fifo(classes) else PROBE_BYTES}


def plan(classes, local_size: int, size: int, share: float) -> tuple[bool, int, float, dict]:
    """How negotiate probes a communicator of *size* ranks, *local_size* of them on rank 0's host,
    linked by *classes*, with *share* ranks per CPU: (whether the ring crosses a network link,
    bytes of the out-of-cache ring, the cache a rank has, measure()'s options)."""
    network = network_link(classes, local_size, size)
    loopback = not all_fifo(classes) and not network
    big, cache = probe_sizes(share, network, local_size if loopback else 0)
    options = measure_options(classes, network, share)
    if all_fifo(classes):
        options["mid_bytes"] = min(big, mid_ring_bytes(share, private_cache_bytes(), cache))
    return network, big, cache, options


def mid_ring_bytes(share: float, private: float, shared: float) -> int:
    """Bytes of the ring between the caches (0: none) with *share* ranks per CPU, the private
    level *private* and the largest cut *shared* (cache_per_cpu): the power of two whose working
    set per CPU (WORKING_SET x bytes x share) lies at or just below the geometric mean of the two,
    in the shared cut's in-cache range and out of the private one's, where fit_cut reads which
    of them the calls follow (1 MiB at 2 ranks, 512 KiB at 4, 256 KiB at 8 on the EPYC host:
    3 MiB per CPU). None when the two lie within 16x of each other (no shared level, or one
    sysfs reports beyond SHARED_CACHE_MAX): the ring would sit in neither's range alone."""
    if private <= 0 or shared < 16 * private:
        return 0
    need = math.sqrt(float(private) * float(shared)) / (WORKING_SET * max(1.0, float(share)))
    return 1 << max(0, math.floor(math.log2(need)))


def plan_for(ctx) -> tuple[bool, int, float, dict]:
    """plan() of a communicator's Context (its links, ranks on this host and per CPU): how its
    probe runs, for scripts that time the probe's quantities in a job (bench/probe_*_ab.py)."""
    classes = tuple(sorted({k for row in ctx.matrix for k in row} - {"self"}))
    return plan(classes, ctx.local_size, ctx.size, max(1.0, ctx.local_size / usable_cpus()))


def in_cache_ring_bytes(share: float) -> int:
    """Bytes of the ring that prices beta in cache over FIFOs with *share* ranks per CPU:
    PROBE_BYTES halved per doubling of the ranks that take turns on a CPU, whose working sets
    share its cache (cost_model.LinkCost.ranks_per_cache), per whole doubling: 256 KiB up to 1.5
    ranks per CPU (3 ranks on 2 CPUs: 1.15 MiB per CPU, at the edge), 128 KiB at 2, 64 KiB at 4
    (4 x 192 KiB in a 2 MiB cache). At 8 ranks on 2 cores a
    256 KiB ring keeps 3 MiB per CPU at work and its beta is an out-of-cache one: Rabenseifner's
    exchanges at 16-64 KiB ran at 0.39-0.46 ns per byte there, against the 0.63 that ring priced
    them at (+35-43%, bench/results/validate-sim-2026-12-07h.json)."""
    return PROBE_BYTES >> max(0, math.floor(math.log2(max(1.0, float(share))) + 1e-9))


# the broadcast of negotiate: [hit (0: probe, 1: cache, 2: tuning file, 3: inherited), when measured, probe seconds, other load (-1: unknown), the
# FIFO bytes of rank 0's host, *PARAMS] (every rank must price with the same numbers)
_HIT, _WHEN, _SECS, _OTHER, _FIFO, _SHARE, _P0 = range(7)   # _SHARE: ranks per CPU (>= 1)


def negotiate(engine, rank: int, size: int, link_classes, local_size: int, host: str,
              timeout: float, oversubscribed: bool = False, force: bool = False,
              inherit: CostModel | None = None) -> CostModel:
    """The cost model of a new communicator, identical on every rank (collective: all call it).

    *link_classes*: every class linking two ranks of the communicator (the same set on all
    ranks); *local_size*, *host*: rank 0's, which key the cache.

    A probe during which other processes kept more than ``NOISY`` of the host's CPUs busy is
    cached as noisy: the next ``MAX_PROBES - 1`` communicators of that shape probe again and keep,
    per parameter, the lowest value seen (what the machine does when it is not disturbed); after
    that the entry is used as it is. *force* (``hetccl tune``; the same on every rank) probes
    whatever the cache holds and replaces its entry.

    More ranks on a host than CPUs (*oversubscribed*) needs no special case: the probe runs with
    the job's own ranks, so its alpha, beta and gamma are those of the crowded machine, and the
    cache keys them by the number of local ranks and usable CPUs (8 ranks on 2 cores is its own
    entry). Only a communicator that cannot measure falls back to cost_model.OVERSUBSCRIBED_ALPHA.

    *inherit* (a shrunk communicator: its parent's model, when ``inheritable``; the same on every
    rank): on a cache miss its parameters are used instead of probing, with this communicator's
    own facts (ranks per CPU, FIFO bytes); a cached entry of this shape still wins."""
    classes = tuple(sorted(set(link_classes) - {"self"}))
    if size == 1 or not classes:
        return CostModel.default(classes, oversubscribed, "a single rank: no link to measure")
    msg = np.zeros(_P0 + len(PARAMS), dtype=np.float64)
    s = prev = tuned = None
    if rank == 0:       # nothing may raise here: the other ranks already wait in the broadcast
        msg[_FIFO] = _fifo_bytes(local_size)
        msg[_SHARE] = max(1.0, local_size / usable_cpus())
        try:
            tuned = None if force else _tuning_entry(engine, classes, size, local_size, host)
        except Exception as e:                  # noqa: BLE001 - a tuning file never stops a job
            log.warning("reading the tuning file failed (%s); ignoring it", e)
            tuned = None
        try:
            s = shape(host, classes, local_size)
            entry = None if force or tuned is not None else lookup(s)
        except Exception as e:                  # noqa: BLE001 - a broken cache costs a probe
            log.warning("cost-model cache lookup failed (%s); measuring instead", e)
            entry = None
        if tuned is not None:
            entry = dict(tuned[0], measured_at=0.0, probe_s=0.0, other_load=None)
        if entry is not None and entry.get("noisy") and int(entry.get("probes", 1)) < MAX_PROBES:
            prev, entry = entry, None
        if entry is None and tuned is None and not force and inherit is not None:
            entry = dict(inherit.cost.params(), measured_at=0.0, probe_s=0.0, other_load=None)
            msg[_HIT] = 3.0
        if entry is not None:
            other = entry.get("other_load")
            msg[:_P0] = (msg[_HIT] or 1.0, float(entry.get("measured_at", 0.0)), float(entry.get("probe_s", 0.0)),
                         -1.0 if other is None else float(other), msg[_FIFO], msg[_SHARE])
            msg[_P0:] = [float(entry.get(k, 0.0)) for k in PARAMS]
        if tuned is not None:
            msg[_HIT] = 2.0
    schedules.broadcast(engine, msg, 0, dtypes.FLOAT64, ALGO_BINOMIAL, timeout)
    cost = _link_cost(msg[_P0:], classes, engine, msg[_FIFO], msg[_SHARE])
    if msg[_HIT] == 2.0:                        # the tuning file: its measured choices too
        best = tuning_file.encode_best(tuned[1]) if rank == 0 else tuning_file.encode_best(())
        schedules.broadcast(engine, best, 0, dtypes.FLOAT64, ALGO_BINOMIAL, timeout)
        return CostModel(cost, TUNED, tuned[2] if rank == 0 else
                         "HETCCL_TUNING_FILE", classes, best=tuning_file.decode_best(best))
    if msg[_HIT] == 1.0:
        return CostModel(cost, CACHED, _detail(msg[_WHEN], msg[_SECS], msg[_OTHER]), classes)
    if msg[_HIT] == 3.0:                        # a shrink's parent's parameters (inheritable)
        detail = "" if inherit is None else inherit.detail if inherit.origin == INHERITED else \
            f"of the parent communicator: {inherit.describe_origin()}"
        return CostModel(cost, INHERITED, detail, classes)
    network, big, cache, options = plan(classes, local_size, size, float(msg[_SHARE]))
    raw, secs, other = _probe(engine, rank, size, timeout, big, **options)
    cut = loaded_cut(cache, other)
    cost = fit(raw, size, _link_cost([0.0] * len(PARAMS), classes, engine, msg[_FIFO], msg[_SHARE]),
               cache_bytes=cut, network=network, private_bytes=private_cache_bytes() if cut == cache else 0.0)
    if prev is not None:                        # keep the quietest value of each parameter
        cost = dataclasses.replace(cost, **{k: min(getattr(cost, k), float(prev[k])) if prev.get(k) else
                                            getattr(cost, k) for k in PARAMS if k != "cache_bytes"})
    msg[:_P0] = (0.0, time.time(), secs, -1.0 if other is None else other, msg[_FIFO], msg[_SHARE])
    msg[_P0:] = [getattr(cost, k) for k in PARAMS]
    schedules.broadcast(engine, msg, 0, dtypes.FLOAT64, ALGO_BINOMIAL, timeout)   # rank 0's numbers
    raw_us = {(k[:-2] + "_us" if k.endswith("_s") else k): (v * 1e6 if k.endswith("_s") else v)
              for k, v in raw.items()}
    if rank == 0 and s is not None:
        noisy = other is not None and other > NOISY
        store(s, {**dict(zip(PARAMS, map(float, msg[_P0:]))), "measured_at": msg[_WHEN],
                  "probe_s": secs, "nranks": size, "raw": raw_us, "other_load": other,
                  "noisy": bool(noisy), "probes": 1 + (int(prev.get("probes", 1)) if prev else 0),
                  "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None})
    model = CostModel(_link_cost(msg[_P0:], classes, engine, msg[_FIFO], msg[_SHARE]), MEASURED,
                      _detail(msg[_WHEN], msg[_SECS], msg[_OTHER]), classes, raw_us)
    log.info("measured the cost model of %d ranks: %s", size, model.describe())
    return model


def inheritable(model, old_cards, old_matrix, cards, matrix) -> CostModel | None:
    """A shrunk communicator's cost model if its parent's (*model*, of the ranks of *old_cards*)
    holds for it (the ranks of *cards*), else None: the probe would measure the same things.
    Dropping ranks changes the parameters only through what the slowest rank waits for, as
    far as the probe can tell: the same links (every link class, and whether the ring crosses
    a network link) and the same ranks on the busiest CPU (cards.busiest_cpu) measure the same
    alpha, beta and gamma. Recorded on the 2-vCPU VM (quiet probes of this cache format and the
    previous ones, bench/results/crossover-2026-12-0*-raw), 7 against 8 ranks (4 on the busiest
    CPU either way) over c2c: alpha 4.5 against 4.3 us, beta 0.65 against 0.64 ns per byte, gamma
    0.023 against 0.019 ns per byte; 3 against 4 (2 per CPU): 1.5 against 1.6 us, 0.33 against
    0.32 ns; while 5 against 4 (3 and 2 per CPU) moved beta 30% and alpha 45%, and 2 against 3
    (1 and 2) 2.4x and 3.4x: those measure. Only a measured or cached model (or one inherited
    from one) is passed on: a tuning file's entry holds for its size, and the defaults are no
    measurement. Everything is read from the cards and the models, the same on every rank."""
    from ..topology.cards import busiest_cpu
    if model is None or model.origin not in (MEASURED, CACHED, INHERITED):
        return None
    classes = {k for row in matrix for k in row} - {"self"}
    if classes != {k for row in old_matrix for k in row} - {"self"} or not classes:
        return None
    if busiest_cpu(cards) != busiest_cpu(old_cards):
        return None
    if network_link(classes, _on_host(cards, 0), len(cards)) != network_link(classes, _on_host(old_cards, 0),
                                                                              len(old_cards)):
        return None
    return model


def _on_host(cards, rank) -> int:
    return sum(c["host"] == cards[rank]["host"] for c in cards)


def placement(engine, size: int) -> str:
    """Rank 0's link class to every rank ("self,c2c,tcp,tcp"): how a job's ranks sit, as a tuning
    file entry records it (its measured choices hold for that placement only)."""
    return ",".join(engine.link_kind(q) for q in range(size))


def _tuning_entry(engine, classes, size, local_size, host):
    """(cost dict, measured-best table, detail) of the tuning file's entry for this communicator,
    or None (no file, a stale or corrupt one: warned once, or no matching entry). Rank 0 only."""
    doc = tuning_file.read(host=host)
    entry = tuning_file.find(doc, tuning_file.links_key(classes), size, local_size)
    if entry is None:
        return None
    cost = {k: float(entry["cost"].get(k, 0.0)) for k in PARAMS}
    best = tuning_file.best_table(entry, placement(engine, size))
    detail = f"{doc['_path']}, measured {doc.get('measured_at', '?')}" + (
        f", measured choices at {len(best)} sizes" if best else "")
    return cost, best, detail


def remeasure(comm) -> CostModel:
    """Probe *comm* again whatever the cache holds, replace its entry, and return the new model
    (collective over comm; the tuner of comm keeps its model)."""
    ctx = comm.context
    return negotiate(ctx.engine, ctx.rank, ctx.size, {k for row in ctx.matrix for k in row},
                     ctx.local_size, ctx.cards[ctx.rank]["host"], ctx.timeout, force=True)
