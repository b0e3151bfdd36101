"""The alpha-beta-gamma cost model: what one message, one byte moved and one byte reduced cost.

alpha: seconds per message (latency of one algorithm step, including the engine's per-step
overhead), beta: seconds per byte moved over a link, gamma: extra seconds per byte when a received
byte is reduced into the output instead of copied. Algorithms price themselves with these
(``cost(nbytes, p, LinkCost)`` in the registry); the tuner picks the cheapest.

Where the numbers come from (``CostModel.origin``):

- ``measured``: the quick probe (:mod:`.probe`) ran on this communicator at creation, because this
  host had no cached entry for its shape;
- ``cached``: an earlier probe on this host, same link classes, same number of local ranks, same
  hetccl build (``~/.cache/hetccl/cost-model.json``, see :mod:`.probe`);
- ``tuning file``: the entry of the tuning file (``HETCCL_TUNING_FILE``, hetccl/collectives/tuning_file.py)
  for this communicator's link classes and ranks, written by ``hetccl tune``, with the measured
  best algorithm per size when the placement matches too (``CostModel.best``);
- ``inherited``: a shrunk communicator's (``comm.shrink()``) parent's, measured or cached with the
  same links and as many ranks on the busiest CPU (:func:`.probe.inheritable`), when this host has
  no cached entry for the survivors' shape: probing again would hold the survivors up;
- ``default``: nothing could be measured (a single rank has no link to time), so the values each
  transport declares (``Transport.cost``, hetccl/transports) are used. They are only this
  fallback; they were measured once on a 2-vCPU VM.
"""
import dataclasses
import math
import os
from dataclasses import dataclass, field

from .. import transports


STREAM_MIN = 16 << 20      # the engine's nt_threshold (Engine.nt_threshold), when no engine is at hand
FIFO_BYTES = 4 << 20       # one direction's shm FIFO (transports/shm.fifo_bytes, up to 4 local ranks)


# A call's working set per rank, in units of its size n (the tuner's convention): its input, its
# output and the FIFO slots its bytes pass through (3 n); a rooted or one-way call reads or writes
# one buffer and the FIFO (2 n). Up to IN_CACHE x LinkCost.cache_bytes of working set the in-cache
# beta and gamma hold, from OUT_OF_CACHE x cache_bytes on the out-of-cache ones, log-linear
# between. Fitted to the 2-vCPU VM (2 MiB private cache): the 2-rank ring allreduce costs its
# in-cache 121-126 ps per byte up to 256 KiB, 137 at 512 KiB and its out-of-cache 157-170 from
# 1 MiB; the 4-rank binomial reduce its in-cache 0.23 ns per byte up to 512 KiB, 0.31 at 2 MiB
# (bench/results/crossover-2026-12-06.txt, validate-sim-2026-12-06-q.json).
WORKING_SET = 3
ONE_BUFFER_WORKING_SET = 2
ONE_BUFFER = frozenset({"reduce", "broadcast", "gather", "scatter"})
IN_CACHE = 0.5
OUT_OF_CACHE = 2.0

# The sizes of the probe's two binomial broadcasts that measure beta_free (in cache) and
# beta_free_out, and of its two chain broadcasts that measure beta_chain and beta_chain_out
# (probe.PROBE_BYTES, probe.BCAST_BIG); LinkCost.free_out_of_cache runs between them.
FREE_SIZES = (256 << 10, 8 << 20)

# The measured parameters of a LinkCost, as the probe cache, the tuning file and the simulator's
# records store them (the other fields are facts about the engine, re-read wherever a model is used).
PARAMS = ("alpha", "beta", "gamma", "beta_out", "gamma_out", "cache_bytes", "beta_free", "beta_free_out",
          "beta_x", "beta_x_out", "beta_chain", "beta_chain_out")


@dataclass(frozen=True)
class LinkCost:
    """alpha, beta, gamma (see the module docstring), plus two facts about how the engine moves
    bytes that the formulas need: whether the links are shared-memory FIFOs (a byte costs a copy
    pass per side, and ring relays fuse FIFO to FIFO) or a wire, from how many bytes the ring and
    chain schedules write their output with streaming stores (the engine's nt_threshold), and how
    many bytes one FIFO holds (an exchange step larger than that cannot be written ahead).

    In cache and out of it: with ``cache_bytes`` > 0, ``beta`` and ``gamma`` are what a byte costs
    while a call's working set stays in the cache a rank has to itself, ``beta_out`` and
    ``gamma_out`` what it costs once the working set is well beyond it (both measured by the
    probe). ``at(n)`` gives the parameters for a call of n bytes; the formulas only ever read
    ``beta`` and ``gamma`` of what ``at`` returned. ``cache_bytes`` = 0: one beta and gamma at
    every size (the built-in defaults, models written before the distinction).

    Crowded cores: ``beta`` is what a byte costs while *every* rank moves bytes, as in the probe's
    ring; with more ranks than CPUs on the host (``share`` ranks per CPU, > 1) those ranks take
    turns on the CPUs. A step in which only some ranks work (a binomial tree's levels, the ranks
    left after a fold) has the CPUs to fewer of them and pays less per byte: ``beta_free`` (and
    ``beta_free_out`` out of cache) is what a byte costs when the working ranks have a CPU each,
    also measured by the probe. ``crowded(busy, p)`` gives the parameters of a step in which busy
    of the p ranks work. ``beta_free`` = 0 or ``share`` <= 1: every step pays ``beta``.

    Exchange steps over a loopback wire: ``beta_x`` and ``beta_x_out`` (0: as ``beta``) are what
    a byte of a pairwise exchange step costs (recursive halving and doubling: Rabenseifner,
    recursive doubling), in cache and out of it, where the probe timed those rounds apart from
    the ring (probe.fit): over loopback TCP with more ranks than cores they paid up to 1.6x the
    ring's rate per byte (algorithm.exchange).

    The pipelined chain on crowded cores: ``beta_chain`` and ``beta_chain_out`` (0: priced from
    beta, algorithm.RELAY) are the seconds per byte of the chain broadcast itself, in cache and
    far out of it, measured by the probe beside the binomial broadcasts of beta_free (only with
    more ranks than CPUs).
    Its ranks do unequal work (the root and the last rank one pass per byte, the relays 1.5) and
    take turns on the CPUs, so its pace is neither a relay's nor the ring's: on 4 ranks sharing
    2 CPUs it paid 0.52-0.65 of the ring's beta from 2 MiB to 128 MiB, where RELAY x beta priced
    0.75 and chose the binomial tree, 1.2-1.4x slower (broadcast.chain)."""
    alpha: float
    beta: float
    gamma: float
    fifo: bool = True
    stream_min: float = STREAM_MIN
    fifo_bytes: float = FIFO_BYTES
    beta_out: float = 0.0
    gamma_out: float = 0.0
    cache_bytes: float = 0.0
    beta_free: float = 0.0
    beta_free_out: float = 0.0
    beta_x: float = 0.0
    beta_x_out: float = 0.0
    beta_chain: float = 0.0
    beta_chain_out: float = 0.0
    share: float = 1.0             # ranks per CPU on the host while every rank works (a fact, not stored)

    def out_of_cache(self, nbytes, collective: str | None = None) -> float:
        """0 (in cache) .. 1 (out of cache): where a call of nbytes lies (WORKING_SET, IN_CACHE,
        OUT_OF_CACHE)."""
        if self.cache_bytes <= 0 or nbytes <= 0:
            return 0.0
        k = ONE_BUFFER_WORKING_SET if collective in ONE_BUFFER else WORKING_SET
        ws = k * nbytes * self.ranks_per_cache() / (IN_CACHE * self.cache_bytes)
        return 0.0 if ws <= 1 else min(1.0, math.log2(ws) / math.log2(OUT_OF_CACHE / IN_CACHE))

    def ranks_per_cache(self) -> float:
        """How many ranks' working sets one cache holds at once: ``share`` (the ranks that take
        turns on a CPU share its cache; a context switch does not flush it, so each keeps its
        buffers there only while all of theirs fit). Measured on the 2-vCPU VM (2 MiB private
        cache), 8 ranks on 2 CPUs: Rabenseifner's exchanges at 16-64 KiB (4 ranks x 192 KiB per
        CPU) ran at 0.39-0.46 ns per byte, the ring at 256 KiB (4 x 768 KiB) at the 0.69-0.73 of
        1-64 MiB; over loopback TCP the ring paid 2.1-2.2 ns per byte at 256 KiB and 2.5-3.2 at
        1 MiB, against 3.5-3.7 from 4 MiB (bench/results/validate-sim-2026-12-07g/h.json), where a
        rank's own working set put the knee at 1-4 MiB."""
        return max(1.0, float(self.share))

    def free_out_of_cache(self, nbytes) -> float:
        """0 .. 1: where a call of nbytes lies between the two binomial broadcasts that measured
        beta_free (FREE_SIZES), log-linear in its size. Not the working-set knee of beta: a level
        whose ranks have a CPU each keeps most of its in-cache advantage well past the private
        cache, while the message fits the FIFO the sender writes ahead into (measured on 4 ranks
        on 2 cores, bench/results/crossover-2026-12-07g: binomial reduce 0.18 ns per byte at 512
        KiB, 0.27 at 2 MiB, 0.33 at 8 MiB, against 0.41 priced from 2 MiB on by the knee)."""
        if (self.beta_free <= 0 and self.beta_chain <= 0) or nbytes <= FREE_SIZES[0]:
            return 0.0
        return min(1.0, math.log2(nbytes / FREE_SIZES[0]) / math.log2(FREE_SIZES[1] / FREE_SIZES[0]))

    def at(self, nbytes, collective: str | None = None) -> "LinkCost":
        """The parameters a call of nbytes (of this collective) pays: beta and gamma between their
        in-cache and out-of-cache values by its working set (itself when the model makes no
        distinction)."""
        f = self.out_of_cache(nbytes, collective)
        if f <= 0 and self.free_out_of_cache(nbytes) <= 0:
            return self
        beta = self.beta + f * ((self.beta_out or self.beta) - self.beta)
        gamma = self.gamma + f * ((self.gamma_out or self.gamma) - self.gamma)
        g = self.free_out_of_cache(nbytes)
        free = self.beta_free + g * ((self.beta_free_out or self.beta_free) - self.beta_free)
        beta_x = self.beta_x + f * ((self.beta_x_out or self.beta_x) - self.beta_x) if self.beta_x > 0 else 0.0
        chain = self.beta_chain + g * ((self.beta_chain_out or self.beta_chain) - self.beta_chain)
        return dataclasses.replace(self, beta=beta, gamma=gamma, beta_free=free, beta_x=beta_x, beta_chain=chain)

    def crowd(self, busy, p) -> float:
        """0 .. 1: how crowded the CPUs are in a step in which *busy* of the *p* ranks work,
        between a CPU per working rank (0: ``beta_free``) and every rank working (1: ``beta``),
        linear in the working ranks per CPU (``busy / p * share``, at least 1)."""
        if self.share <= 1 or self.beta_free <= 0 or busy >= p:
            return 1.0
        load = max(1.0, busy / p * self.share)
        return (load - 1.0) / (self.share - 1.0)

    def crowded(self, busy, p) -> "LinkCost":
        """The parameters of a step in which *busy* of the *p* ranks work (itself when the model
        makes no distinction, or all work): beta between ``beta_free`` and ``beta`` by ``crowd``."""
        w = self.crowd(busy, p)
        if w >= 1.0:
            return self
        return dataclasses.replace(self, beta=self.beta_free + w * (self.beta - self.beta_free))

    def params(self) -> dict:
        """The measured parameters (PARAMS), for a cache entry, a tuning file or a record."""
        return {k: float(getattr(self, k)) for k in PARAMS}

    @staticmethod
    def valid_params(d) -> bool:
        """alpha, beta, gamma positive finite numbers; the cache fields, when present, finite
        numbers not below zero."""
        def number(k, need):
            v = d.get(k) if need or k in d else 0.0
            return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and (v > 0 if need else v >= 0))
        try:
            return all(number(k, True) for k in PARAMS[:3]) and all(number(k, False) for k in PARAMS[3:])
        except (TypeError, AttributeError):
            return False

    def describe_params(self) -> str:
        """alpha, beta and gamma, in cache and out of it when the model distinguishes them."""
        text = f"alpha={self.alpha * 1e6:.3g} us, beta={_gbs(self.beta)}, gamma={_gbs(self.gamma)}"
        if self.cache_bytes > 0:
            text += (f" in cache (working set <= {self.cache_bytes / 2**20:.3g} MiB), "
                     f"beta={_gbs(self.beta_out or self.beta)}, gamma={_gbs(self.gamma_out or self.gamma)} out of it")
        if self.beta_free > 0 and self.share > 1:
            text += (f"; {self.share:.3g} ranks per CPU: beta={_gbs(self.beta_free)} in cache, "
                     f"{_gbs(self.beta_free_out or self.beta_free)} out of it while the working ranks have a CPU each")
        if self.beta_chain > 0 and self.share > 1:
            text += (f"; chain broadcast {_gbs(self.beta_chain)} in cache, "
                     f"{_gbs(self.beta_chain_out or self.beta_chain)} out of it")
        if self.beta_x > 0:
            text += f"; exchange steps beta={_gbs(self.beta_x)}" + (
                f", {_gbs(self.beta_x_out)} out of cache" if self.cache_bytes > 0 and self.beta_x_out > 0 else "")
        return text

    @classmethod
    def from_params(cls, d, **engine) -> "LinkCost":
        """A LinkCost of stored parameters (missing cache fields: no in/out distinction; missing
        beta_free: no crowding distinction) plus the engine facts given (fifo, stream_min,
        fifo_bytes, share)."""
        return cls(**{k: float(d.get(k, 0.0)) for k in PARAMS}, **engine)


# Fallback only: more ranks than cores on a host make every hop wait for the peer to be scheduled
# (sched_yield hand-over), ~5 us per step for 4 ranks on 2 cores against ~0.6 us with a core each.
# A measured model has this in its alpha already (the probe runs with the job's own ranks).
OVERSUBSCRIBED_ALPHA = 5e-6

# The Python path of one collective call before and after the engine runs (comm.py: describe the
# buffer, the tuner's cached lookup, pin and release): every algorithm pays it alike, so it never
# changes a choice, but predictions of small calls are wrong by ~5x without it. Measured on the
# 2-vCPU VM with this comm.py: 8 B allreduce at 2 ranks 2.0 us against the probe's alpha 0.34 us;
# 2-rank broadcast of 8 B (one message) 1.8 us.
CALL_S = 1.5e-6

# The same for a call the latency path runs (schedules.latency_path_takes: a repeated call shape,
# bench/crossover.py's way of calling):
# 2 ranks, 8 B, measured 0.85 us for a one-step recursive-doubling allreduce and 0.55 us for a
# one-level binomial broadcast, against alphas of 0.35-0.47 us (bench/results/crossover-2026-12-06.txt).
CALL_LATENCY_S = 0.3e-6


def call_cost(collective: str, p: int) -> float:
    """Seconds of the per-call path around the engine for one call of this collective."""
    if p < 2:
        return 0.0
    from . import schedules               # the native adapter: imported when a price is first asked
    return CALL_LATENCY_S if schedules.latency_path_takes(collective, None) else CALL_S


def _gbs(per_byte: float) -> str:
    return f"{1 / per_byte / 1e9:.3g} GB/s"


MEASURED, CACHED, DEFAULT, TUNED, INHERITED = "measured", "cached", "default", "tuning file", "inherited"


def group_cost(link_classes, oversubscribed=False) -> LinkCost:
    """The fallback cost of a flat algorithm over these links: the pace of the slowest one (each
    link class's declared default, hetccl/transports)."""
    costs = [transports.default_cost(c) for c in link_classes] or [transports.SELF.cost]
    alpha = max(c.alpha for c in costs)
    if oversubscribed:
        alpha = max(alpha, OVERSUBSCRIBED_ALPHA)
    return LinkCost(alpha, max(c.beta for c in costs), max(c.gamma for c in costs),
                    fifo=all_fifo(link_classes))


def all_fifo(link_classes) -> bool:
    """True when every link class is a shared-memory FIFO, no wire (the pace of a mixed group is
    its wire's)."""
    return not any(transports.is_wire(c) for c in link_classes)


@dataclass(frozen=True)
class CostModel:
    """The parameters one communicator's tuner prices algorithms with, and where they came from.

    Every rank of a communicator holds an identical CostModel (rank 0's, distributed at creation):
    ranks that priced algorithms differently would pick different ones and mismatch."""
    cost: LinkCost
    origin: str                      # MEASURED, CACHED, TUNED, INHERITED or DEFAULT
    detail: str = ""                 # how: probe duration, cache file and date, or why default
    link_classes: tuple = ()
    raw: dict = field(default_factory=dict, compare=False)   # the probe's timings (us), if any
    best: tuple = field(default=(), compare=False)   # ((collective, nbytes, algorithm), ...) measured
    # ((collective, ((size, single copy faster than the FIFOs), ...)), ...): measured by
    # single_copy_probe.py where every pair is c2c in cma mode; empty: no single-copy routes
    single_copy: tuple = field(default=(), compare=False)

    @classmethod
    def default(cls, link_classes, oversubscribed=False, why=""):
        return cls(group_cost(link_classes, oversubscribed), DEFAULT, why, tuple(sorted(link_classes)))

    def describe(self) -> str:
        links = "+".join(self.link_classes) or "self"
        return f"{self.cost.describe_params()} over {links}; {self.describe_origin()}"

    def describe_origin(self) -> str:
        """Where the numbers came from: the origin, and how (the detail)."""
        return f"{self.origin} ({self.detail})" if self.detail else self.origin
