"""Collectives composed across islands: each island runs its step natively (its bridge: MPI, NCCL,
...), hetccl's own transports join the islands.

Why: a vendor library is fastest inside its island and cannot reach another vendor's. The forms
here keep every byte inside an island on the island's library and send across islands only what
must cross:

* allreduce, ``rails`` form (every island the same size s): (i) island-native reduce_scatter, (ii)
  allreduce of each shard across islands among the ranks of equal island rank (one "rail" per
  island rank, all rails at once, over hetccl's transports), (iii) island-native allgather. A count
  not divisible by s sends its last ``count % s`` elements the ``leaders`` way.
* allreduce, ``leaders`` form (any island sizes): island-native reduce to the island's leader,
  allreduce among the leaders, island-native broadcast from the leader. Leaders are chosen by NIC
  distance (bridges/formation.py).
* allgather: island-native allgather (island order), allgatherv of the islands' blocks among the
  leaders, island-native broadcast of the whole, then blocks mapped back to rank order.
* broadcast: inside the root's island, among the leaders, inside every other island.

A communicator that is one island delegates the whole collective to its bridge.

Ops: every ReduceOp. AVG runs as SUM at every level and divides once, at the end, by the size of
the whole communicator (integers: truncating, as hetccl's own AVG); no level divides. A step the
island's bridge does not run exactly (its ``supports`` says no: e.g. MPI on bfloat16, or AVG)
runs on hetccl's own algorithms over a sub-communicator of that island, so every dtype works.

Memory: a bridge whose ``memory`` is not host memory gets its buffers staged (``Staging``): copied
into a buffer of its memory type before its step and back after; host bridges (MPI) use the
caller's buffers directly.

Pricing: at creation every bridged island times its native collectives at ``PROBE_SIZES`` (8 B, 64
and 256 KiB, 1, 4 and 16 MiB; a device bridge up to 1 MiB, its last slope extended beyond: its bytes
stay in device memory, out of reach of the CPUs' caches), each size as a loop of calls pays it: one
untimed call first, so the buffers are where a loop at that size keeps them, then ``loop_calls``
calls timed together; per repetition the slowest island rank, the median of ``REPS``. A call is
priced piecewise linearly through the measured sizes (``bridge_time``). Why this many sizes and
why warm: in the validation runs of 2026-12-07 a probe that timed one call per size, right after
the previous collective's 16 MiB call had evicted the buffers, priced Open MPI's 256 KiB-4 MiB
reduce_scatter and allgather 1.2-2.8x what a loop of them costs, and lines from 8 B to 1 MiB and
from 1 to 16 MiB missed that its time per byte rises past 256 KiB and again past 4 MiB (the
composed allreduce came out 25-109% too slow at 64 KiB-4 MiB; bench/bridge_probe_ab.py).
The figures are cached per island for the job.
Every rank gathers every island's figures and which (collective, dtype, op) each bridge supports,
so every rank prices alike; hetccl's own steps are priced by the communicator's measured model
(collectives/cost_model.py); on an oversubscribed machine the islands' steps add up instead of
overlapping, each priced as its own ranks running alone (LinkCost.crowded); a step on a sub-communicator
pays a flat call's latency path, the composed call its own path once and, oversubscribed, the
hand-overs between its steps (ROUTE_CALL, ROUTER_CALL, HANDOVER; HANDOVER_PASS: the bytes a step
fetches again that a step looped alone finds in its CPU's cache); a flat call pays the router's
path too where the communicator's latency path may not take its shape (``flat_call``,
FLAT_ROUTER_CALL: some dtype or op composes at that size). The lowest predicted time among the
flat algorithms and the composed form wins; ``algorithm="islands"`` forces the composed form,
``comm.explain()`` prints the table.
"""
from __future__ import annotations

import logging
import math
import time
import zlib

import numpy as np

from .. import dtypes
from ..bridges import formation
from ..bridges.base import COLLECTIVES, HOST, BridgeError, BridgeUnavailable
from ..errors import HetcclError
from ..ops import ReduceOp
from ..topology.cards import oversubscription
from ..units import size_label
from . import registry, schedules
from .scratch import scratch
from .staged import DevicePath
from .subcomms import SubComms
from .algorithm import ALGO_ISLANDS
from .cost_model import call_cost
from .hierarchical import flat_fallback

log = logging.getLogger("hetccl")

NAME = "islands"
COMPOSED_COLLECTIVES = ("allreduce", "allgather", "broadcast")
BRIDGE_CALL = 2e-6         # Python cost of one bridge step (dispatch, buffer spec)
# The public call's own path around a composed call, CPU seconds per rank (a sub-communicator's
# step pays its latency path on top: cost_model.call_cost). A composed allreduce of a shape seen
# before runs its cached route (comm._island_allreduce, island_route.py): 1.16 us per call per rank
# timed alone (bench/islands_route_ab.py --route-cpu, bench/results/islands-route-ab-2026-12-07i.txt).
# Other composed calls go through the router (parser, decision, the plan's dispatch): 54.7 us more
# CPU per call than the plan called directly, summed over 4 ranks, at 64 KiB (same file).
ROUTE_CALL = 1.2e-6
ROUTER_CALL = 14e-6
# A flat call the latency path does not take (IslandPricer.flat_call) runs the router's parser,
# decision and dispatch of the flat schedule: 18-21 us more per call than the latency path on 4
# ranks sharing 2 CPUs (the flat ring at 1-64 KiB on the islands job against the plain 4-rank job,
# validation run of 2026-12-07 08:39), CPU seconds per rank.
FLAT_ROUTER_CALL = 10e-6
# Oversubscribed: what one hand-over between two steps of a composed call costs beyond the steps
# (every form has two: island step, the step across islands, island step). The ranks reach the
# next step's communicator at different times, and on crowded CPUs the first ones yield to their
# partners rather than find them running: the three phases of the 64 KiB rails form called one
# after the other took 7.3 and 12.0 us more than each phase looped alone (bench/islands_phases.py
# ``seq`` - ``rs`` - ``rail`` - ``ag``, bench/results/islands-phases-2026-12-07h/i.txt); the lesser
# is priced, plus what grows with the bytes (HANDOVER_PASS).
HANDOVER = 3.6e-6
HANDOVERS = 2
# ... and, per hand-over, the next step fetching the call's bytes again: a step looped alone finds
# its buffers in its CPU's private cache, up to a rank's share of it (two ranks on a 1 MiB L2: 512
# KiB), where the composed call's other steps have evicted them; beyond that share the looped step
# fetches them from further out too, and the hand-over adds nothing. Priced at HANDOVER_PASS x the
# call's beta per byte up to that share. Measured (bench/islands_phases.py, the composed call less
# its three phases looped alone, four quiet runs of 2026-12-07): 8-92 us at 64 KiB, 64-182 at 256
# KiB, 62-306 at 1 MiB. Re-predicting the islands records of that day's validation runs (g-m), 0.8
# the best of 0.3-1.2: the composed form at 256 KiB-1 MiB went from -58..-19% to -14..+20% in the
# four runs whose probe read 2.7-3.9 GB/s, and from -6..+54% to +45..+179% in the two that read
# 1.7-1.9 GB/s (a price per byte carries the probe's error; bench/results/isl-handover-sweep-2026-12-08.txt).
HANDOVER_PASS = 0.8
HANDOVER_CACHE = 1 << 20    # a CPU's private cache when the machine does not report it
_private_cache = None
PROBE_SIZES = (8, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20)  # bytes a bridge is timed at (bridge_time)
DEVICE_SIZES = 4            # a device bridge is timed up to 1 MiB (module docstring)
PRICE_FIELDS = len(PROBE_SIZES)  # per collective: seconds at each probe size
REPS = 5
SMALL_CALLS = 20            # calls per repetition at the small size (one call is below timer noise)
LOOP_BYTES = 4 << 20        # bytes moved per timed repetition at the larger sizes (loop_calls)
_OPS = list(ReduceOp)
_NFLAGS = len(COLLECTIVES) * len(dtypes.NAMES) * len(_OPS)
_measured = {}             # (kind, key, ranks) -> seconds at PROBE_SIZES x COLLECTIVES, for this job


def loop_calls(nbytes) -> int:
    """Calls the probe times together at one size: SMALL_CALLS at the smallest, else enough to
    move LOOP_BYTES (at least one)."""
    return SMALL_CALLS if nbytes <= PROBE_SIZES[0] else max(1, LOOP_BYTES // nbytes)


def price_points(times, sizes=PROBE_SIZES) -> tuple:
    """((bytes, seconds), ...) of one collective's measured times at ``sizes``: what bridge_time
    interpolates, as the tuning file and the simulator's records keep it."""
    return tuple((int(n), float(t)) for n, t in zip(sizes, times))


def legacy_points(alpha, beta, beta_out=None) -> tuple:
    """The points of a price kept as [alpha, beta(, beta_out)] (records and tuning files before the
    probe timed 4 MiB): the same line, alpha plus beta to 1 MiB and beta_out beyond."""
    knee, far = 1 << 20, 16 << 20
    beta_out = beta if beta_out is None else beta_out
    return ((0, alpha), (knee, alpha + beta * knee), (far, alpha + beta * knee + beta_out * (far - knee)))


def bridge_time(points, nbytes) -> float:
    """Seconds of one bridge call on nbytes from its measured points ((bytes, seconds), sizes
    ascending): linear between the two around nbytes, the first one's time below it, the last
    stretch's slope (never falling) beyond the largest."""
    n0, t0 = points[0]
    if nbytes <= n0 or len(points) < 2:
        return t0
    for (na, ta), (nb, tb) in zip(points, points[1:]):
        if nbytes <= nb:
            return ta + (tb - ta) * (nbytes - na) / (nb - na)
    return tb + max(0.0, (tb - ta) / (nb - na)) * (nbytes - nb)


def private_cache() -> float:
    """Bytes of the cache one CPU has to itself (probe.private_cache_bytes, sysfs: the machine the
    runtime or the simulator runs on; HANDOVER_CACHE if it reports none), read once."""
    global _private_cache
    if _private_cache is None:
        from .probe import private_cache_bytes
        _private_cache = float(private_cache_bytes() or HANDOVER_CACHE)
    return _private_cache


def _unpriced(nbytes, p, c):
    """Registry entry: the flat tuner cannot price a composed form (it needs the islands)."""
    return math.inf


def register():
    for coll in COMPOSED_COLLECTIVES:
        registry.register(registry.Algorithm(NAME, coll, ALGO_ISLANDS, _unpriced))


register()


def _flag(ci, dt, op):
    return (ci * len(dtypes.NAMES) + dt) * len(_OPS) + int(op)


_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _raw(a):
    """The array a bridge gets: bool, bfloat16 and float8 (which DLPack cannot describe) as unsigned
    integers of their width; the bridge is told the real dtype by its code."""
    return a.view(_UINT[a.itemsize]) if a.dtype.kind in "bV" else a


def _raw_pair(src, dst):
    r = _raw(src)
    return r, (r if dst is src else _raw(dst))


def _flat(buf, code):
    if isinstance(buf, np.ndarray):
        return buf.reshape(-1)
    return np.frombuffer(memoryview(buf).cast("B"), dtype=dtypes.numpy_dtype(code))


class Staging:
    """How an island step reaches its bridge's memory: host bridges use the caller's arrays;
    others get a staging buffer of their memory type (``bridge.device_buffer(nbytes)``), filled by
    ``bridge.copy_in(dev, host)`` and read back by ``bridge.copy_out(host, dev)``. Those three
    methods are what a device bridge adds to the Bridge contract (bridges/base.py)."""

    def __init__(self, bridge):
        self.bridge = bridge
        self.host = bridge.memory == HOST
        self._bufs = {}
        if not self.host:
            for m in ("device_buffer", "copy_in", "copy_out"):
                if not callable(getattr(bridge, m, None)):
                    raise BridgeError(f"the {bridge.kind} bridge works on {bridge.memory} memory but has no "
                                      f"{m}(): it cannot take host buffers across islands")

    def _dev(self, name, nbytes):
        """The staging buffer ``name`` (kept across calls: one allocation per shape, not per call);
        a larger call hands the old one back to the bridge's pool (``release_buffer``)."""
        d = self._bufs.get(name)
        if d is None or d[1] < nbytes:
            if d is not None and callable(getattr(self.bridge, "release_buffer", None)):
                self.bridge.release_buffer(d[0])
            buf = self.bridge.device_buffer(nbytes)
            d = (buf, max(nbytes, getattr(buf, "nbytes", nbytes)))
            self._bufs[name] = d
        return d[0]

    def dev(self, name, nbytes):
        """A device staging buffer of at least ``nbytes`` (collectives/staged.py uses it too)."""
        return self._dev(name, nbytes)

    def release(self):
        """Hand every staging buffer back (the bridge frees them when it closes)."""
        rel = getattr(self.bridge, "release_buffer", None)
        for buf, _ in self._bufs.values():
            if callable(rel):
                rel(buf)
        self._bufs.clear()

    def run(self, step, send, recv, *args):
        """bridge.step(send, recv, *args) on host arrays send/recv (recv may be send, or None)."""
        if self.host:
            return step(send, recv, *args)
        ds = self._dev("send", send.nbytes)
        self.bridge.copy_in(ds, send)
        dr = ds if recv is send or recv is None else self._dev("recv", recv.nbytes)
        step(ds, None if recv is None else dr, *args)
        if recv is not None:
            self.bridge.copy_out(recv, dr)


class IslandPricer:
    """Prices and choices of the island forms for a group described by its islands, each bridged
    island's measured seconds at PROBE_SIZES per collective (``prices``, in COLLECTIVES order) and which
    (collective, dtype, op) its bridge runs (``flags``), the group's flat tuner and its topology
    planner (hierarchical.TopologyPricer, or None): no communicator needed. The communicator's
    IslandPlan (below) is one; the simulator (hetccl/simulate/) builds one from a topology file,
    so the same code decides at run time and in a simulation."""

    def __init__(self, islands, prices, flags, device, oversubscribed, tuner, topo_plan=None):
        self.islands = islands
        self.p = sum(len(i.ranks) for i in islands)
        self.whole = len(islands) == 1
        self.equal = len({len(i.ranks) for i in islands}) == 1
        self.prices, self.flags, self.device = prices, flags, device
        self._over = oversubscribed
        self.tuner, self.topo_plan = tuner, topo_plan
        self._cache = {}
        self._base = False          # routes_flat is asking: choose without the flat call's route

    # ------------------------------------------------------------------ pricing

    def _native(self, i, coll, code, op) -> bool:
        """Whether island i's bridge runs this step itself (False: hetccl's algorithms do)."""
        if not self.islands[i].bridged:
            return False
        if coll in ("allgather", "broadcast"):
            code, op = dtypes.UINT8, ReduceOp.SUM        # moved as bytes
        elif op == ReduceOp.AVG:
            op = ReduceOp.SUM                            # AVG runs as SUM, divided once at the end
        return bool(self.flags[i][_flag(COLLECTIVES.index(coll), code, op)])

    def _hetccl(self, coll, nbytes, p, busy=None) -> float:
        """Seconds of hetccl's cheapest algorithm for ``coll`` among p ranks while ``busy`` ranks of
        the communicator work (default p: the others wait). An island's own step is priced so:
        on an oversubscribed machine the islands' steps are summed (_steps), so each must be its
        time with the CPUs to its own ranks, which a model fitted while every rank worked
        overstates (LinkCost.crowded; in the validation run of 2026-12-07 the hetccl island's
        2-rank steps at 4 ranks on 2 cores were priced as if all four ranks moved bytes).
        The step is a call of a flat sub-communicator, which a repeated call shape sends down its
        latency path: its Python costs what a flat call's does (cost_model.call_cost), not the
        router's 10 us (hierarchical.SUB_CALL) this once paid; the phases of the composed 64 KiB
        allreduce measured 6.2, 9.7 and 6.5 us against 16.4, 16.4 and 15.9 priced with it
        (bench/results/islands-phases-2026-12-07i.txt: rs@hetccl, rail, ag@hetccl)."""
        if p < 2:
            return 0.0
        c = self.tuner.cost.at(nbytes, coll).crowded(p if busy is None else busy, self.p)
        costs = [a.cost(nbytes, p, c) for a in registry.for_collective(coll) if a.code >= 0 and a.supports(nbytes, p)]
        return min(costs) + call_cost(coll, p) if costs else math.inf

    def _call(self, collective, nbytes) -> float:
        """Seconds of the public call's own path around one composed call of ``collective`` on
        nbytes (the cached route for an allreduce, else the router: ROUTE_CALL, ROUTER_CALL), CPU
        per rank: on an oversubscribed machine the ranks sharing a CPU pay theirs in turn
        (LinkCost.share), and the hand-overs between the form's steps add (``_handovers``)."""
        own = ROUTE_CALL if collective == "allreduce" else ROUTER_CALL
        if not self._over:
            return own
        return own * max(1.0, float(self.tuner.cost.share)) + self._handovers(collective, nbytes)

    def _handovers(self, collective, nbytes) -> float:
        """Oversubscribed: seconds the hand-overs between a composed call's steps cost beyond the
        steps, HANDOVERS x (HANDOVER + HANDOVER_PASS x the call's beta x its bytes up to a rank's
        share of the CPU's private cache): the next step fetches again what the looped step would
        find in that cache (HANDOVER_PASS)."""
        c = self.tuner.cost.at(nbytes, collective)
        refetched = min(float(nbytes), private_cache() / max(1.0, float(c.share)))
        return HANDOVERS * (HANDOVER + HANDOVER_PASS * refetched * c.beta)

    def flat_call(self, collective, nbytes, algorithm=None) -> float:
        """Seconds the public call's own path adds to a flat algorithm's call of this shape, CPU
        per rank (the ranks sharing a CPU pay theirs in turn): none where every such call runs one
        flat native schedule (``routes_flat``: the communicator's latency path takes it, comm.py
        ``_learn``), else the router's (FLAT_ROUTER_CALL) at every call. Why: where some dtype or op
        composes at this size (a step the bridge does not run itself, e.g. MPI on float16, prices
        the composed form differently), a float32 call priced with the flat ring alone read 37%
        too fast at 64 KiB (4 ranks on 2 CPUs, the validation run of 2026-12-07 19:45: the flat
        ring took 109 us there against 44 us in the plain 4-rank job; priced so, -19%)."""
        if self.routes_flat(collective, nbytes, algorithm):
            return 0.0
        return FLAT_ROUTER_CALL * (max(1.0, float(self.tuner.cost.share)) if self._over else 1.0)

    def _leaders_busy(self) -> int:
        """Ranks that keep a CPU while the leaders run their step across islands: the leaders,
        and the other ranks of bridged islands, which wait inside their library's next step (the
        island broadcast): the MPI bridge's waits test, then yield for YIELD_FOR plus the bytes'
        time before they sleep (bridges/mpi.py), longer than any step here, and a device
        library's stream wait spins; hetccl's own waits sleep after ``yield_s`` (0.5 ms). Priced
        as idle, the waiting MPI rank left the leaders' step of a 16-64 MiB composed allreduce at
        4 ranks on 2 CPUs 31-33% too fast (validation run of 2026-12-07 11:27)."""
        return len(self.islands) + sum(len(i.ranks) - 1 for i in self.islands if i.bridged)

    def _step(self, i, coll, nbytes, code, op) -> float:
        """Predicted seconds of island i's step."""
        s = len(self.islands[i].ranks)
        if s < 2:
            return 0.0
        if self._native(i, coll, code, op):
            return self._bridge_time(i, coll, nbytes) + BRIDGE_CALL
        return self._hetccl(coll, nbytes, s)

    def _price_note(self, i) -> str:
        """How island i's bridge is priced, for explain()."""
        pts = price_points(self.prices[i][:PRICE_FIELDS])
        return "allreduce " + ", ".join(f"{size_label(n)} {t * 1e6:.1f} us" for n, t in pts) + " (measured)"

    def _bridge_time(self, i, coll, nbytes) -> float:
        """Seconds of island i's bridge running ``coll`` on nbytes, from its measured prices."""
        ci = COLLECTIVES.index(coll)
        return bridge_time(price_points(self.prices[i][PRICE_FIELDS * ci:PRICE_FIELDS * (ci + 1)]), nbytes)

    def _steps(self, coll, nbytes, code, op, per_rank=False):
        """The islands run their steps at once: the slowest sets the pace, unless the machine is
        oversubscribed (more ranks than CPUs), where they take turns on the same cores.
        ``per_rank``: nbytes is per rank (island i's step moves nbytes x its size). Every rank
        prices every island alike (never from its own island), so every rank chooses alike."""
        steps = [self._step(i, coll, nbytes * (len(isl.ranks) if per_rank else 1), code, op)
                 for i, isl in enumerate(self.islands)]
        return sum(steps) if self._over else max(steps)

    def forms(self, collective, nbytes, code, op) -> dict:
        """{form name: predicted seconds} of the composed forms that apply to this call: their
        steps plus the public call's own path (``_call``)."""
        nI = len(self.islands)
        if self.whole:
            if collective == "allreduce" and not self._native(0, "allreduce", code, op):
                return {}                   # one island that cannot run it: the flat algorithms do
            return {"bridge": self._step(0, collective, nbytes, code, op)}
        lead = self._leaders_busy()
        if collective == "allreduce":
            out = {"leaders": self._steps("reduce", nbytes, code, op) + self._hetccl("allreduce", nbytes, nI, lead)
                   + self._steps("broadcast", nbytes, code, op)}
            s = len(self.islands[0].ranks)
            if self.equal and s > 1:
                out["rails"] = (self._steps("reduce_scatter", nbytes, code, op)
                                + self._hetccl("allreduce", nbytes / s, nI, busy=self.p)   # every rail at once
                                + self._steps("allgather", nbytes, code, op))
        elif collective == "allgather":
            out = {"leaders": self._steps("allgather", nbytes / self.p, code, op, per_rank=True)
                   + self._hetccl("allgather", nbytes, nI, lead) + self._steps("broadcast", nbytes, code, op)
                   + nbytes / 5e9}
        elif collective == "broadcast":
            out = {"leaders": 2 * self._steps("broadcast", nbytes, code, op)
                   + self._hetccl("broadcast", nbytes, nI, lead)}
        else:
            return {}
        call = self._call(collective, nbytes)
        return {form: t + call for form, t in out.items()}

    def _flat_cost(self, a, nbytes):
        if a.code >= 0:
            return a.cost(nbytes, self.p, self.tuner.cost.at(nbytes, a.collective))
        plan = self.topo_plan
        t = plan.composed_cost(a.collective, a.code, nbytes) if plan is not None else None
        return math.inf if t is None else t

    def choose(self, collective, nbytes, flat, forced, code, op):
        """(algorithm, form) for one call: the flat choice, or the composed form when it is cheaper
        or forced (form None: run ``flat``). Cached per call shape, whether forced included: a
        forced ``algorithm="ring"`` must not reuse what the unforced call of that shape chose."""
        base = self._base
        key = (collective, nbytes, code, op, flat.code, bool(forced), base)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if collective not in COMPOSED_COLLECTIVES or (forced and flat.code != ALGO_ISLANDS):
            hit = (flat, None)
        else:
            forms = self.forms(collective, nbytes, code, op)
            if not forms:                            # nothing to compose: the cheapest flat algorithm
                hit = (flat_fallback(self.tuner, collective, nbytes) if flat.code < 0 else flat, None)
            else:
                name = min(forms, key=forms.get)
                # a device island always composes: its ranks may hold device buffers, which only
                # the composed form reaches (every rank decides alike, whatever its buffers)
                # the flat call's price includes its route (flat_call): not while routes_flat
                # itself asks how each dtype and op would run without it (``base``)
                route = 0.0 if base or flat.code < 0 else self.flat_call(collective, nbytes)
                if (flat.code == ALGO_ISLANDS or self.device
                        or forms[name] < self._flat_cost(flat, nbytes) + route):
                    hit = (next(a for a in registry.for_collective(collective) if a.code == ALGO_ISLANDS), name)
                else:
                    hit = (flat, None)
        self._cache[key] = hit
        return hit

    def routes_flat(self, collective, nbytes, algorithm=None) -> bool:
        """Whether every call of ``collective`` on nbytes under ``algorithm=`` runs the same flat
        native schedule, whatever its dtype and op: then the communicator's latency path may take
        such calls (comm.py ``_learn``), which it must not where this pricer may compose or
        delegate. Why: the router's Python between two native waits cost 18-21 us per call on 4
        ranks sharing 2 CPUs (the validation run of 2026-12-07 08:39: the same flat ring at 1-64
        KiB on the islands job against the plain 4-rank job, whose calls take the latency path).
        The choice depends on the dtype and op only through which island steps a bridge runs
        (``_native``), so one (dtype, op) per distinct set of those answers is priced; answers are
        kept per call shape (a call the latency path refuses, e.g. a bitwise op, asks each time).
        Each is the choice without the router's price on the flat call (``flat_call``, which asks
        this): where some dtype or op composes, pricing the router only makes the flat algorithms
        dearer, so that answer stands."""
        from .decide import decide
        if self.whole or self.device:
            return False                            # delegated whole, or always composed
        if collective not in COMPOSED_COLLECTIVES:
            return True                             # never composed (choose)
        memo = self.__dict__.setdefault("_routes_flat", {})
        key = (collective, nbytes, algorithm)
        hit = memo.get(key)
        if hit is None:
            if len(memo) >= 4096:
                memo.clear()
            code, hit = None, True
            self._base = True              # each dtype and op's choice without the router's price (choose)
            try:
                for dt, op in self._kinds(collective):
                    a, form = decide(self.tuner, self.topo_plan, self, collective, nbytes, algorithm, dt, op)
                    if form is not None or a.code < 0 or (code is not None and a.code != code):
                        hit = False
                        break
                    code = a.code
            finally:
                self._base = False
            memo[key] = hit
        return hit

    def _kinds(self, collective) -> list:
        """One (dtype, op) per distinct answer of ``_native`` over the island steps (routes_flat)."""
        kinds = self.__dict__.setdefault("_step_kinds", {})
        out = kinds.get(collective)
        if out is None:
            steps = ("allreduce", "reduce_scatter", "allgather", "broadcast", "reduce")
            seen, out = set(), []
            for dt in range(len(dtypes.NAMES)):
                for op in (_OPS if collective == "allreduce" else _OPS[:1]):
                    sig = tuple(self._native(i, c, dt, op) for i in range(len(self.islands)) for c in steps)
                    if sig not in seen:
                        seen.add(sig)
                        out.append((dt, op))
            kinds[collective] = out
        return out

    def explain(self, collective, nbytes, code=dtypes.FLOAT32, op=ReduceOp.SUM) -> str:
        flat = self.tuner.select(collective, nbytes)
        choice, form = self.choose(collective, nbytes, flat, False, code, op)
        lines = [f"islands ({formation.describe(self.islands)}); {dtypes.NAMES[code]} {op.name}:"]
        for i, isl in enumerate(self.islands):
            if isl.bridged:
                lines.append(f"  island {i} {isl.kind}: {self._price_note(i)}")
        for a in registry.for_collective(collective):
            if a.code >= 0 and a.supports(nbytes, self.p):
                t = self._flat_cost(a, nbytes) * 1e6
                lines.append(f"  {'->' if choice is a else '  '} {a.name:<20} {t:12.2f} us")
        for name, t in sorted(self.forms(collective, nbytes, code, op).items()):
            mark = "->" if form == name else "  "
            lines.append(f"  {mark} {NAME + ':' + name:<20} {t * 1e6:12.2f} us")
        return "\n".join(lines)



def supported_flags(bridge) -> np.ndarray:
    """The ``flags`` row of one bridge: which (collective, dtype, op) it runs itself."""
    flags = np.zeros(_NFLAGS, bool)
    for ci, coll in enumerate(COLLECTIVES):
        for dt in range(len(dtypes.NAMES)):
            for op in _OPS:
                flags[_flag(ci, dt, op)] = bridge.supports(coll, dt, op)
    return flags


class IslandPlan(IslandPricer):
    """The islands of one communicator, this rank's bridge, prices (IslandPricer) and composed runs."""

    def __init__(self, ctx, islands, cards, parent=None):
        self.ctx = ctx
        self.islands = islands
        self.p = ctx.size
        self.mine = next(i for i, isl in enumerate(islands) if ctx.rank in isl.ranks)
        self.island = islands[self.mine]
        self.index = self.island.ranks.index(ctx.rank)
        self.whole = len(islands) == 1
        self.equal = len({len(i.ranks) for i in islands}) == 1
        self.order = [r for isl in islands for r in isl.ranks]     # island-major rank order
        self._over = oversubscription(cards) > 1   # from the cards: every rank prices alike
        self.bridge = self.staging = None
        self._local = self._leaders = self._rail = None
        self._subs = SubComms(ctx)   # owns them: an abort reaches even one still being made
        self.device = False
        self._staged = None        # collectives/staged.DevicePath, made on the first device buffer
        self._cache = {}
        self._base = False
        self._direct = {}
        self._scratch = {}
        self.tuner = ctx.tuner
        self._open(cards, parent)
        try:
            self._gather_prices()
        except BaseException:
            self.abort()
            raise

    # ------------------------------------------------------------------ creation (collective)

    def _open(self, cards, parent=None):
        """Open this rank's bridge (or shrink the one of ``parent``: _shrunk); every rank learns
        whether every island opened (else all raise)."""
        c = self.ctx
        err = b""
        if self.island.bridged:
            tag = zlib.crc32(f"{c.job_id}/{c.comm_id}".encode()) & 0x7fff
            where = formation.IslandContext(self.island, self.index, cards, c.store,
                                            f"{c.comm_id}/bridge{self.mine}", tag, c.timeout)
            try:
                self.bridge = self._shrunk(parent) or formation.open_bridge(where)
                self.staging = Staging(self.bridge)
            except Exception as e:                 # noqa: BLE001 - reported to every rank below
                err = f"{type(e).__name__}: {e}".encode()
                if self.bridge is not None:
                    self.bridge.abort()
                    self.bridge = None
        if err:
            c.store.set(f"{c.comm_id}/bridge_error/{c.rank}", err, timeout=c.timeout)
        ok = c.comm.allgather(np.array([0 if err else 1], np.int8), algorithm="ring")
        bad = [r for r in range(self.p) if not ok[r]]
        if bad:
            why = bytes(c.store.get(f"{c.comm_id}/bridge_error/{bad[0]}", timeout=c.timeout)).decode()
            self.abort()
            raise BridgeUnavailable(f"the {self.islands[self._island_of(bad[0])].kind} bridge of rank "
                                    f"{bad[0]} could not open its island: {why}")

    def _shrunk(self, parent):
        """After ``comm.shrink()`` (``parent`` = (old communicator, survivors' old ranks)): the old
        island's bridge shrunk by its own library (``Bridge.shrink``, e.g. ncclCommShrink), when
        this island is exactly the old one's survivors and every rank of it can. The island's
        ranks agree on that through the store, so all shrink or all open anew (the caller). The
        old bridge is aborted either way once it was taken."""
        if parent is None:
            return None
        old, survivors = parent
        c, plan = self.ctx, old.islands
        live = set(survivors)
        ok = (plan is not None and plan.bridge is not None and plan.bridge.can_shrink
              and plan.island.kind == self.island.kind
              and [r for r in plan.island.ranks if r in live] == [survivors[r] for r in self.island.ranks])
        key = f"{c.comm_id}/bridge{self.mine}/shrink"
        c.store.set(f"{key}/{self.index}", b"1" if ok else b"0", timeout=c.timeout)
        votes = c.store.multi_get([f"{key}/{i}" for i in range(len(self.island.ranks))],
                                  timeout=c.timeout)
        if not all(bytes(v) == b"1" for v in votes):
            return None
        old, plan.bridge = plan.bridge, None
        try:
            return old.shrink([i for i, r in enumerate(plan.island.ranks) if r not in live])
        finally:
            old.abort()

    def _island_of(self, rank):
        return next(i for i, isl in enumerate(self.islands) if rank in isl.ranks)

    def _probe(self):
        """Seconds at PROBE_SIZES per collective of COLLECTIVES for this island's bridge (slowest
        island rank per repetition, the median repetition; see the module docstring)."""
        key = (self.island.kind, self.island.key, self.island.ranks, self.bridge.size)
        hit = _measured.get(key)
        if hit is not None:
            return hit
        b, f32, s = self.bridge, dtypes.FLOAT32, self.bridge.size
        times = np.full((REPS, len(COLLECTIVES), len(PROBE_SIZES)), np.inf)
        st = self.staging
        # out of cache is a host-memory matter (the CPUs' caches): a device bridge's bytes stay in
        # device memory, and its 1 MiB slope prices it beyond (nor does every device library or
        # test double take 16 MiB in one call)
        sizes = PROBE_SIZES if st.host else PROBE_SIZES[:DEVICE_SIZES]
        bufs = {n: (np.ones(max(s, n // 4), np.float32), np.empty(max(s, n // 4), np.float32)) for n in sizes}
        sync = np.zeros(1, np.float32)
        if not st.host:                          # a device bridge is timed on its own memory
            bufs = {n: (self._on_device(st, f"probe_s{n}", a), self._on_device(st, f"probe_r{n}", r))
                    for n, (a, r) in bufs.items()}
            sync = self._on_device(st, "probe_sync", sync)

        def one(coll, send, recv, count):
            if coll == "allreduce":
                b.allreduce(send, recv, count, f32, ReduceOp.SUM)
            elif coll == "reduce_scatter":
                b.reduce_scatter(send, recv, count // s, f32, ReduceOp.SUM)
            elif coll == "allgather":
                b.allgather(send, recv, count // s, f32)
            elif coll == "broadcast":
                b.broadcast(recv, count, f32, 0)
            else:
                b.reduce(send, recv, count, f32, ReduceOp.SUM, 0)
        for rep in range(REPS):                  # interleaved: a noisy moment spoils one rep of each
            for ci, coll in enumerate(COLLECTIVES):
                if not b.supports(coll, f32, ReduceOp.SUM):
                    continue
                for si, n in enumerate(sizes):
                    send, recv = bufs[n]
                    size = send.count if not st.host else send.size
                    count = size - size % s
                    k = loop_calls(n)
                    if n < PROBE_SIZES[-1]:      # where a loop at this size keeps its buffers (the
                        one(coll, send, recv, count)   # largest is out of cache either way)
                    b.allreduce(sync, sync, 1, f32, ReduceOp.SUM)
                    t0 = time.perf_counter()
                    for _ in range(k):
                        one(coll, send, recv, count)
                    times[rep, ci, si] = (time.perf_counter() - t0) / k
        times[np.isinf(times)] = 0.0
        # float32: every bridge reduces it with MAX (HCCL has no float64); ample for timings
        b32 = times.astype(np.float32).reshape(-1)
        w32 = np.empty_like(b32)
        st.run(b.allreduce, b32, w32, b32.size, dtypes.FLOAT32, ReduceOp.MAX)
        worst = np.median(w32.reshape(times.shape).astype(np.float64), axis=0)   # a loop pays the typical call
        if not st.host:
            st.release()                         # back to the bridge's pool for the real calls
        out = []
        for ci in range(len(COLLECTIVES)):
            t = [float(x) for x in worst[ci][:len(sizes)]]
            if len(sizes) < len(PROBE_SIZES):    # a device bridge: its last slope carries on
                pts = price_points(t, sizes)
                t += [bridge_time(pts, n) for n in PROBE_SIZES[len(sizes):]]
            out += t
        _measured[key] = out
        return out

    @staticmethod
    def _on_device(st, name, a):
        """A float32 view of a staging buffer holding a copy of host array ``a`` (for _probe)."""
        d = st.dev(name, a.nbytes)
        st.bridge.copy_in(d, a)
        return d.__class__(d.ptr, a.nbytes, dtypes.FLOAT32, d.device_type, d.device_id, owner=d)

    def _gather_prices(self):
        n = PRICE_FIELDS * len(COLLECTIVES)
        row = np.zeros(n + _NFLAGS + 1, np.float64)
        if self.bridge is not None:
            row[-1] = self.bridge.memory != HOST     # a device island: see choose()
            row[:n] = self._probe()
            row[n:-1] = supported_flags(self.bridge)
        rows = self.ctx.comm.allgather(row, algorithm="ring").reshape(self.p, -1)
        self.prices = [rows[isl.ranks[0]][:n] for isl in self.islands]
        self.flags = [rows[isl.ranks[0]][n:-1] > 0 for isl in self.islands]
        self.device = any(rows[isl.ranks[0]][-1] > 0 for isl in self.islands)

    @property
    def topo_plan(self):
        """The communicator's topology planner (prices the hierarchical forms the flat choice may be)."""
        return self.ctx.plan

    def routes_flat(self, collective, nbytes, algorithm=None) -> bool:
        return not self._subs.building and super().routes_flat(collective, nbytes, algorithm)

    def choose(self, collective, nbytes, flat, forced, code, op):
        if self._subs.building:
            return (flat if flat.code >= 0 else flat_fallback(self.tuner, collective, nbytes)), None
        return super().choose(collective, nbytes, flat, forced, code, op)

    # ------------------------------------------------------------------ sub-communicators

    def _split(self, color, key):
        return self._subs.make(color, key, bridges=formation.NONE)   # on hetccl's own transports

    def subs(self):
        """(island comm, leaders comm, rail comm) over hetccl's transports, made on first use, in this
        order, on every rank (None where trivial)."""
        if self._local is None:
            s = len(self.island.ranks)
            self._local = self._split(self.mine if s > 1 else None, self.index) or False   # collective: all call
            lead = self.ctx.rank == self.island.leader
            self._leaders = self._split(0 if lead else None, self.mine) or False
            self._rail = (self._split(self.index, self.mine) or False) if self.equal and s > 1 else False
        return self._local or None, self._leaders or None, self._rail or None

    def close(self, timeout=30.0):
        self._subs.close(timeout)
        self._local = self._leaders = self._rail = None
        if self._staged is not None:
            self._staged.release()
        if self.staging is not None:
            self.staging.release()
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None

    def abort(self, keep=False):
        """Tear down at once. ``keep``: a bridge that can shrink (``Bridge.can_shrink``) is kept
        for a ``comm.shrink()`` to make the survivors' island from (``release`` aborts it)."""
        self._subs.abort()
        if self.bridge is not None and not (keep and self.bridge.can_shrink):
            self.bridge.abort()
            self.bridge = None

    def release(self):
        """Abort a bridge ``abort(keep=True)`` kept (the communicator is closed)."""
        if self.bridge is not None:
            self.bridge.abort()
            self.bridge = None

    def interrupt(self, reason):
        """Fail the island sub-communicators' running and later calls (Communicator._interrupt),
        and end a wait inside the vendor bridge where it can (``Bridge.interrupt``: the MPI
        bridge's calls on a dead peer's island would otherwise wait out their deadline)."""
        self._subs.interrupt(reason)
        bridge = self.bridge
        if bridge is not None:
            try:
                bridge.interrupt()
            except Exception as e:                  # noqa: BLE001 - the interrupt must go on
                log.warning("islands: interrupting the %s bridge: %s", self.island.kind, e)

    # ------------------------------------------------------------------ island steps

    def _buf(self, name, n, dtype):
        """A scratch array reused across calls (collectives/scratch.py)."""
        return scratch(self._scratch, name, n, dtype)

    def _leader_index(self, i=None):
        isl = self.islands[self.mine if i is None else i]
        return isl.ranks.index(isl.leader)

    def _reduce_scatter(self, src, shard, code, op, t):
        if self._native(self.mine, "reduce_scatter", code, op):
            self.staging.run(self.bridge.reduce_scatter, *_raw_pair(src, shard), shard.size, code, op)
        else:
            self.subs()[0].reduce_scatter(src, shard, op, timeout=t)

    def _allgather(self, shard, out, t):
        if len(self.island.ranks) < 2:
            out[...] = shard
        elif self._native(self.mine, "allgather", 0, 0):
            self.staging.run(self.bridge.allgather, shard.view(np.uint8), out.view(np.uint8), shard.nbytes,
                             dtypes.UINT8)
        else:
            self.subs()[0].allgather(shard, out=out, timeout=t)

    def _reduce(self, src, dst, code, op, root, t):
        if self._native(self.mine, "reduce", code, op):
            self.staging.run(self.bridge.reduce, *_raw_pair(src, dst), src.size, code, op, root)
        else:
            self.subs()[0].reduce(src, root=root, op=op, out=dst, timeout=t)

    def _broadcast(self, buf, root, t):
        if len(self.island.ranks) < 2:
            return
        if self._native(self.mine, "broadcast", 0, 0):
            raw = buf.view(np.uint8)
            self.staging.run(lambda b, _r, n, d, root: self.bridge.broadcast(b, n, d, root), raw, raw,
                             raw.size, dtypes.UINT8, root)
        else:
            self.subs()[0].broadcast(buf, root=root, timeout=t)

    def direct_allreduce(self, nbytes, code, op, algorithm):
        """The whole-island hot path: f(send, recv) when this call is delegated to the bridge
        whole (cached per call shape; None otherwise: AVG, staging, or the tuner prefers hetccl)."""
        key = (nbytes, code, op, algorithm)
        f = self._direct.get(key)
        if f is None and key not in self._direct:
            a = self.ctx.decide("allreduce", nbytes, algorithm, code, op)[0].code
            native = self.whole and self.staging is not None and self.staging.host
            ok = (a == ALGO_ISLANDS and native and op != ReduceOp.AVG and self._native(0, "allreduce", code, op)
                  and callable(getattr(self.bridge, "allreduce_fn", None)))
            f = self._direct[key] = self.bridge.allreduce_fn(code, op) if ok else None
        return f

    # ------------------------------------------------------------------ composed runs

    def _failed(self, e):
        """A native library's error: abort the communicator (its peers raise too, instead of waiting
        for a step this rank will not run), as a BridgeError naming the library. The error is
        posted as the communicator's first failure, unless it only follows one (a peer known to
        have failed, an interrupt): the peers then report that one, not this rank's abort."""
        err = e
        if not isinstance(e, HetcclError):
            err = BridgeError(f"the {self.island.kind} bridge failed: {type(e).__name__}: {e}")
            err.__cause__ = e
        self.ctx.own_failure(err)
        return err

    def staged(self):
        """The device-buffer runs of this plan (collectives/staged.py)."""
        if self._staged is None:
            self._staged = DevicePath(self)
        return self._staged

    def allreduce(self, buf, out, code, op, timeout, algo, form=None):
        try:
            self._allreduce(buf, out, code, op, timeout, form)
        except Exception as e:               # noqa: BLE001 - re-raised as a hetccl error
            raise self._failed(e) from None

    def allgather(self, buf, out, code, algo, timeout, form=None):
        try:
            self._allgather_all(buf, out, code, timeout)
        except Exception as e:               # noqa: BLE001
            raise self._failed(e) from None

    def broadcast(self, buf, root, code, algo, timeout, form=None):
        try:
            self._broadcast_all(buf, root, code, timeout)
        except Exception as e:               # noqa: BLE001
            raise self._failed(e) from None

    def _allreduce(self, buf, out, code, op, timeout, form):
        src = _flat(buf, code)
        dst = src if out is buf else _flat(out, code)      # one object: MPI's in-place form
        sop = ReduceOp.SUM if op == ReduceOp.AVG else op
        if src.size == 0:
            return
        if self.whole:                 # choose() sends only what the bridge runs here
            self.staging.run(self.bridge.allreduce, *_raw_pair(src, dst), src.size, code, sop)
        elif form == "rails":
            self._rails(src, dst, code, sop, timeout)
        else:
            self._leaders_allreduce(src, dst, code, sop, timeout)
        if op == ReduceOp.AVG:
            schedules.kernels.divide_array(dst, code, self.p)

    def _rails(self, src, dst, code, op, t):
        s = len(self.island.ranks)
        main = src.size - src.size % s
        if main:
            shard = self._buf("shard", main // s, src.dtype)
            self._reduce_scatter(src[:main], shard, code, op, t)
            self.subs()[2].allreduce(shard, op, timeout=t)
            self._allgather(shard, dst[:main], t)
        if main < src.size:
            tail = dst[main:]
            self._leaders_allreduce(tail if src is dst else src[main:], tail, code, op, t)

    def _leaders_allreduce(self, src, dst, code, op, t):
        local, leaders, _ = self.subs()
        root = self._leader_index()
        if len(self.island.ranks) > 1:
            self._reduce(src, dst, code, op, root, t)
        elif src is not dst:
            dst[...] = src
        if leaders is not None:
            leaders.allreduce(dst, op, timeout=t)
        self._broadcast(dst, root, t)

    def _allgather_all(self, buf, out, code, timeout):
        src, dst = _flat(buf, code), _flat(out, code)
        blk = dst.size // self.p
        if dst.size == 0:
            return
        if src is dst or np.shares_memory(src, dst):
            src = dst[self.ctx.rank * blk:(self.ctx.rank + 1) * blk].copy()
        if self.whole:
            self._allgather(src, dst, timeout)
            return
        s = len(self.island.ranks)
        every = self._buf("ag_all", dst.size, dst.dtype)          # island-major order
        first = sum(len(isl.ranks) for isl in self.islands[:self.mine]) * blk
        mine = every[first:first + s * blk]
        self._allgather(src, mine, timeout)
        _, leaders, _ = self.subs()
        if leaders is not None:
            leaders.allgatherv(mine.copy(), [len(isl.ranks) * blk for isl in self.islands], out=every,
                               timeout=timeout)
        self._broadcast(every, self._leader_index(), timeout)
        dst.reshape(self.p, blk)[self.order] = every.reshape(self.p, blk)

    def _broadcast_all(self, buf, root, code, timeout):
        arr = _flat(buf, code)
        if arr.size == 0:
            return
        ri = self._island_of(root)
        if self.whole:
            self._broadcast(arr, self.island.ranks.index(root), timeout)
            return
        if ri == self.mine:
            self._broadcast(arr, self.island.ranks.index(root), timeout)
        _, leaders, _ = self.subs()
        if leaders is not None:
            leaders.broadcast(arr, root=ri, timeout=timeout)
        if ri != self.mine:
            self._broadcast(arr, self._leader_index(), timeout)


def plan_for(ctx, cards, parent=None):
    """The island plan of a communicator (collective: opens the bridges and measures them), or None
    when no rank of it has a bridge. ``parent``: (old communicator, survivors) after a shrink."""
    from ..topology.cards import model_of
    if not formation.may_bridge(cards):
        return None
    islands = formation.form(cards, model_of(cards))
    if islands is None:
        return None
    try:
        return IslandPlan(ctx, islands, cards, parent)
    except HetcclError:
        raise
    except Exception as e:                  # noqa: BLE001 - a native library's own exception type
        raise BridgeError(f"forming the islands failed: {type(e).__name__}: {e}") from e


__all__ = ["ALGO_ISLANDS", "IslandPlan", "Staging", "plan_for"]
