"""Topology-aware algorithms composed from sub-communicators: hierarchical allreduce, allgather and
broadcast, and rings in topology order.

Why: a flat ring in rank order runs at the pace of its slowest, most shared link. When launchers
place ranks round-robin (0, 2 on host A; 1, 3 on B) every hop of it crosses the network and each
host's network link carries several streams at once. The forms here send each byte across the
network as few times as possible and keep the rest on shared memory:

* ``hierarchical`` allreduce (2 levels): reduce-scatter inside each host, allreduce of each shard
  among the ranks with the same local rank (one "rail" per local rank, all rails at once), then
  allgather inside each host. With islands inside hosts (coherent device groups, NUMA nodes) a
  3rd level runs inside the islands first.
* ``hierarchical`` allgather: allgather along the rails, then inside each host (blocks then mapped
  back to rank order); broadcast: along the root's rail, then inside each host.
* ``topo_ring``: the engine's ring on a sub-communicator whose rank order is the topology ring
  order (topology/orders.py), crossing the network once per host.

Each sub-collective is one call into the engine (a handful of Python operations per collective, no
Python per chunk). Sub-communicators are created on first use, once, in a fixed order on every
rank (creating one is collective, and every rank makes the same choices from the same model).

Every form is priced by the alpha-beta-gamma model per link class (collectives/cost_model.py), with the
network link of a host shared by the streams that cross it at once, so the tuner picks one only
when it wins. A network link under a token-bucket shaper (tc tbf: discovered, or ``burst``/``peak``
in a topology file) passes the first ``burst`` bytes of a call at its line rate: a price counts
those bytes at ``peak`` and only the rest at the sustained rate, and never less than the call's
bytes at the sustained rate, which a loop of calls pays (Planner._through_bucket). Without
that, a flat exchange whose bytes fit the bucket is priced several times too dear against the
composed forms, whose extra phases cost fixed time whatever the bucket.
``algorithm="hierarchical"`` (or ``"topo_ring"``, or HETCCL_ALGO) forces one.
"""
import dataclasses
import math

import numpy as np

from .. import dtypes, transports
from ..ops import ReduceOp
from ..topology import fabric as _fabric
from ..topology import orders
from ..topology.cards import model_of, oversubscription
from ..topology.model import RANK_CLASSES
from . import registry
from .scratch import scratch
from .subcomms import SubComms
from .algorithm import ALGO_HIERARCHICAL, ALGO_TOPO_RING
from .cost_model import LinkCost, group_cost

COMPOSED = {ALGO_HIERARCHICAL: "hierarchical", ALGO_TOPO_RING: "topo_ring"}
SUB_CALL = 10e-6          # Python cost of one sub-collective (validation, tuner lookup, engine entry)
COPY_BETA = 1 / 5e9       # mapping allgather blocks back to rank order: one memory copy
PIPELINE_MIN = 2 << 20    # 2-level allreduce of at least this many bytes overlaps its levels ...
PIPELINE_SEGMENTS = 4     # ... in this many segments (a fixed few: no Python per chunk)


def _unpriced(nbytes, p, c):
    """Registry entries of composed algorithms: the flat tuner cannot price them (they need the
    topology), so they never win there; Planner prices them."""
    return math.inf


def register():
    """Add the composed algorithms to the registry, so HETCCL_ALGO and algorithm= accept them."""
    for coll, name, code in (("allreduce", "hierarchical", ALGO_HIERARCHICAL),
                             ("allgather", "hierarchical", ALGO_HIERARCHICAL),
                             ("broadcast", "hierarchical", ALGO_HIERARCHICAL),
                             ("allreduce", "topo_ring", ALGO_TOPO_RING),
                             ("allgather", "topo_ring", ALGO_TOPO_RING)):
        registry.register(registry.Algorithm(name, coll, code, _unpriced))


register()


def flat_fallback(tuner, collective, nbytes):
    """The cheapest engine algorithm, for a communicator where composing cannot help (one host, or
    a sub-communicator of one) but a composed algorithm was forced for the whole job."""
    rows = [(a, c) for a, c in tuner.table(collective, nbytes) if c is not None and a.code >= 0]
    return min(rows, key=lambda r: r[1])[0]


def _flat_by_name(collective, name):
    return next(a for a in registry.for_collective(collective) if a.name == name)


def _scaled(c: LinkCost, k: float) -> LinkCost:
    """A link shared by k streams at once: each sees 1/k of its bandwidth."""
    return dataclasses.replace(c, beta=c.beta * max(1.0, k), beta_x=c.beta_x * max(1.0, k))


def _worst(*costs) -> LinkCost:
    """The pace of a flat algorithm over several links: the slowest of each; a wire among them
    sets how bytes are counted (LinkCost.fifo)."""
    return LinkCost(max(c.alpha for c in costs), max(c.beta for c in costs), max(c.gamma for c in costs),
                    fifo=all(c.fifo for c in costs), stream_min=min(c.stream_min for c in costs))


class TopologyPricer:
    """Topology-aware prices and choices for a group of ranks described by its topology model, the
    load of its machines and its flat tuner: no communicator needed. The communicator's Planner
    (below) is one; the simulator (hetccl/simulate/) builds one from a topology file, so the same
    code decides at run time and in a simulation."""

    def __init__(self, topo, load=0.0, tuner=None):
        """load: ranks per CPU on the most crowded machine (>1: oversubscribed); tuner: the group's
        flat tuner (its measured model prices the network when no link bandwidth is given)."""
        self.topo, self.tuner = topo, tuner
        self.p = len(topo.ranks)
        self.coords = orders.hierarchy(topo)
        self.order = orders.ring_order(topo)
        self.hosts = topo.hosts()
        self._load = load
        self._over = load > 1
        self._cache = {}
        self._loads = {}           # streams per host link of each flat schedule (size-independent)
        self.fabric = _fabric.of(topo)     # NICs, leaves, oversubscription (None: one link per host)
        self._costs()

    # ------------------------------------------------------------------ pricing

    def _class_cost(self, cls, bandwidth=None, latency=None) -> LinkCost:
        c = group_cost([cls], self._over)
        return dataclasses.replace(c, alpha=latency or c.alpha, beta=1 / bandwidth if bandwidth else c.beta)

    def _costs(self):
        topo = self.topo
        other = next((r.rank for r in topo.ranks if r.host != topo.ranks[0].host), None)
        net_cls = topo.pair_class(0, other) if other is not None else RANK_CLASSES[-1]
        uplinks = topo.uplinks()
        ups = [uplinks.get(h) for h in self.hosts]
        from_file = topo.source.startswith("file")
        given = any(u is not None and u.bandwidth and (u.measured or from_file) for u in ups)
        bws = [u.bandwidth for u in ups if u is not None and u.bandwidth]
        lats = [u.latency for u in ups if u is not None and u.latency]
        self.net = self._class_cost(net_cls, min(bws) if bws else None, max(lats) if lats else None)
        probed = getattr(self.tuner, "model", None)
        if (not given and probed is not None and getattr(probed, "origin", "default") != "default"
                and any(transports.is_wire(c) for c in getattr(probed, "link_classes", ()))):
            # measured over this communicator's slowest (network) link; the probe already divided
            # out how many of its ring's streams shared that link (probe.fit), so this is the
            # link's own cost, shared again per algorithm below (_scaled)
            self.net = dataclasses.replace(probed.cost, fifo=False)
        self.burst, self.net_peak = self._bucket(ups)
        intra_links = topo.intra_links()
        intra = [intra_links.get(h) for h in self.hosts]
        ibw = [ln.bandwidth for ln in intra if ln is not None and ln.bandwidth]
        self.shm = self._class_cost("shm", min(ibw) if ibw else None)
        c2c = [ln.bandwidth for ln in topo.links if ln.cls == "c2c" and ln.bandwidth]
        self.island = self._class_cost("shm", min(c2c)) if c2c else self.shm
        # A phase boundary is a wait for every peer of the next sub-collective. On an oversubscribed
        # machine that peer is often runnable but off-CPU: the wait is a measured hop (the network
        # alpha) times the run-queue length (ranks per CPU), not a shared-memory flag flip.
        self.phase = SUB_CALL + (self.net.alpha * self._load if self._over else self.shm.alpha)

    def _bucket(self, ups):
        """(burst bytes, the network cost at the line rate) when every host's network link is a
        token bucket (topology/model.py Link.burst, .peak), else (None, None). The smallest bucket
        and the slowest line rate set the pace of a transfer that crosses two host links. The
        sustained rate stays the measured one (self.net): over a wire the probe takes the slope
        between two allgathers, in which the bucket cancels out, so it measures the rate, and the
        bucket only lowers prices."""
        if len(self.hosts) < 2 or not ups or any(u is None or not u.burst or not u.peak for u in ups):
            return None, None
        peak = dataclasses.replace(self.net, beta=1 / min(u.peak for u in ups))
        if peak.beta >= self.net.beta:
            return None, None
        return min(u.burst for u in ups), peak

    def _through_bucket(self, price):
        """price(net) -> seconds of a call with network link cost ``net``, counting the first burst
        bytes through the busiest host link at the line rate and the rest at the sustained rate.

        The call's bytes through that link need no per-algorithm bookkeeping: every formula is
        linear in the network's beta, so the price difference between the sustained and the line
        rate, divided by the difference of their betas, is those bytes (streams sharing a link
        included: _scaled multiplies beta by them). The bucket lends a call at most ``burst``
        bytes, and in a loop of calls (a benchmark, a training step) it lends only what the link
        refills at its rate while the call runs: W bytes per call through a link sustaining rate r
        cannot take less than W / r, whatever the bucket (tokens in = tokens out). So a call is
        priced at the larger of that floor and the price with a full bucket. A call whose
        latencies outlast its bytes still rides the bucket at the line rate (1 KiB recursive
        doubling); one whose bytes do not fit pays the sustained rate: in the loops of
        bench/validate_sim.py on 2x2 netns hosts (tbf 1 Gbit/s, 128 kB), recursive doubling took
        271 us at 16 KiB and 1110 us at 64 KiB, 3-6x what a full bucket at every call priced.
        (A single call after a pause of burst/rate gets the full bucket, as bench/netns_bucket_ab.py
        times it: one call after a barrier.)"""
        t = price(self.net)
        if self.burst is None:
            return t
        saved = t - price(self.net_peak)
        if saved <= 0:
            return t
        wire = saved / (self.net.beta - self.net_peak.beta)
        return max(t - saved * min(1.0, self.burst / wire), wire * self.net.beta)

    def _flat_cost(self, algo, nbytes):
        """A flat engine algorithm over this communicator in rank order, network shared as it runs."""
        return self._through_bucket(lambda net: self._flat_over(algo, nbytes, net))

    def _flat_over(self, algo, nbytes, net):
        if self.p < 2:
            return 0.0
        if algo.name == "recursive_doubling" and algo.collective == "allreduce" and self.p & (self.p - 1) == 0:
            return self._rd_allreduce_steps(nbytes, net)
        # streams per host link: a ring's edges all run at once; the pairwise-exchange schedules
        # (recursive doubling/halving, Rabenseifner, Bruck) pair ranks at distances 2^k
        k = (self._uplink_load("ring") if algo.name == "ring"
             else self._uplink_load("rd") if algo.distances else 1)
        slow = net if len(self.hosts) > 1 else self.shm
        return algo.cost(nbytes, self.p, _worst(self.shm, _scaled(slow, k)))

    def _uplink_load(self, kind):
        """Streams per busiest host link of the schedules in rank order: "ring" (every edge at once),
        "rd" (the worst step of the pairwise exchanges), "rd_steps" (per step, 0 = the step stays
        inside hosts), and of the composed ones: "topo_ring" (the ring in topology order), "rails"
        (the hierarchical form's rails, all at once). With a described network (topology/fabric.py)
        these are how many times slower a stream runs than alone on its NIC, counting the NICs,
        leaf and pod uplinks it shares. Counted once per group: they do not depend on the size."""
        k = self._loads.get(kind)
        if k is None:
            k = self._fabric_load(kind) if self.fabric is not None else self._host_load(kind)
            self._loads[kind] = k
        return k

    def _host_load(self, kind):
        if kind == "ring":
            return orders.ring_uplink_load(self.topo, list(range(self.p)))
        if kind == "rd":
            return orders.rd_uplink_load(self.topo)
        if kind == "rd_steps":
            return orders.rd_step_loads(self.topo)
        if kind == "topo_ring":
            return orders.ring_uplink_load(self.topo, self.order)
        H, I, J = self._dims()
        return I * J                                   # "rails": every rank of a host at once

    def _fabric_load(self, kind):
        f, p = self.fabric, self.p
        r = np.arange(p, dtype=np.int64)
        if kind == "ring":
            return f.share(r, np.roll(r, -1))
        if kind == "topo_ring":
            order = np.asarray(self.order, np.int64)
            return f.share(order, np.roll(order, -1))
        if kind in ("rd", "rd_steps"):
            steps, d = [], 1
            while d < p:
                q = r ^ d
                ok = q < p
                steps.append(f.share(r[ok], q[ok]))
                d <<= 1
            return steps if kind == "rd_steps" else max(steps, default=0)
        H, I, J = self._dims()                         # "rails": (h, i, j) -> (h + 1, i, j), all at once
        at = np.empty((H, I, J), np.int64)
        for rank, (h, i, j) in enumerate(self.coords):
            at[h, i, j] = rank
        return f.share(at.reshape(-1), np.roll(at, -1, axis=0).reshape(-1))

    def _rd_allreduce_steps(self, nbytes, net):
        """Recursive doubling step by step: a step whose pairs all stay inside hosts runs on shared
        memory; one that crosses shares each host's network link among its crossing pairs."""
        t = 0.0
        for k in self._uplink_load("rd_steps"):
            c = _scaled(net, k) if k else self.shm
            t += c.alpha + nbytes * (c.beta + c.gamma)
        return t

    def _dims(self):
        """(H hosts, I islands per host, J ranks per island) of a regular hierarchy."""
        dims = self.__dict__.get("_dims_cached")
        if dims is None:
            H = len(self.hosts)
            I = 1 + max(c[1] for c in self.coords)
            dims = self.__dict__["_dims_cached"] = (H, I, self.p // (H * I))
        return dims

    def _best(self, collective, n, p, c, names):
        algos = [a for a in registry.for_collective(collective) if a.name in names and a.supports(n, p)]
        return min(a.cost(n, p, c) for a in algos) if algos else math.inf

    def composed_cost(self, collective, code, nbytes) -> float | None:
        """Predicted seconds of a composed algorithm, None if it does not apply here."""
        if code not in COMPOSED:               # another module's composed form (islands): not ours to price
            return None
        if len(self.hosts) < 2 or self.p < 3:
            return None
        if self._composed_over(collective, code, nbytes, self.net) is None:
            return None
        return self._through_bucket(lambda net: self._composed_over(collective, code, nbytes, net))

    def _composed_over(self, collective, code, nbytes, net):
        """composed_cost with network link cost ``net``."""
        if code == ALGO_TOPO_RING:
            if collective not in ("allreduce", "allgather") or self.order == list(range(self.p)):
                return None
            ring = _flat_by_name(collective, "ring")
            k = self._uplink_load("topo_ring")
            t = ring.cost(nbytes, self.p, _worst(self.shm, _scaled(net, k))) + self.phase
            return t + (nbytes * COPY_BETA if collective == "allgather" else 0.0)
        if self.coords is None:
            return None
        H, I, J = self._dims()
        L = I * J                                  # ranks per host = rails sharing its network link
        if L == 1:
            return None
        wire = _scaled(net, self._uplink_load("rails"))
        if collective == "allreduce":
            t, n = 0.0, nbytes
            for size, c in ((J, self.island), (I, self.shm)):
                if size > 1:
                    t += self._best("reduce_scatter", n, size, c, ("ring",))
                    t += self._best("allgather", n, size, c, ("ring", "recursive_doubling"))
                    t += 2 * self.phase
                    n /= size
            top = self._best("allreduce", n, H, wire, ("ring", "recursive_doubling")) + self.phase
            if I == 1 and nbytes >= PIPELINE_MIN:     # levels overlap: the slower one sets the pace
                S = PIPELINE_SEGMENTS
                return max(top, t) + t / S + (S - 1) * 3 * self.phase
            return t + top
        if collective == "allgather":
            t = self._best("allgather", nbytes / L, H, wire, ("ring", "recursive_doubling"))
            t += self._best("allgather", nbytes, L, _worst(self.shm, self.island), ("ring", "recursive_doubling"))
            return t + 2 * self.phase + nbytes * COPY_BETA
        if collective == "broadcast":
            names = ("binomial", "chain", "scatter_allgather")
            return (self._best("broadcast", nbytes, H, net, names)
                    + self._best("broadcast", nbytes, L, _worst(self.shm, self.island), names) + 2 * self.phase)
        return None

    def choose(self, collective, nbytes, flat, forced):
        """The algorithm for one call: the tuner's flat choice, or a composed one that beats it."""
        if forced:
            return flat
        key = (collective, nbytes)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        # every engine algorithm re-priced for this topology (the flat tuner's pick ignores how
        # its streams share the network links), then the composed ones
        best, best_t = flat, self._flat_cost(flat, nbytes) if flat.code >= 0 else math.inf
        for a in registry.for_collective(collective):
            if a.code >= 0 and a is not flat and a.supports(nbytes, self.p):
                t = self._flat_cost(a, nbytes)
                if t < best_t:
                    best, best_t = a, t
        for code in COMPOSED:
            t = self.composed_cost(collective, code, nbytes)
            if t is not None and t < best_t:
                best, best_t = _flat_by_name(collective, COMPOSED[code]), t
        self._cache[key] = best
        return best

    def price(self, algo, nbytes) -> float | None:
        """Predicted seconds of one algorithm here (a flat one re-priced for this topology, or a
        composed one), None where it does not apply: what choose() compares, for one entry."""
        if algo.code >= 0:
            return self._flat_cost(algo, nbytes) if algo.supports(nbytes, self.p) else None
        return self.composed_cost(algo.collective, algo.code, nbytes)

    def explain(self, collective, nbytes) -> str:
        """Lines for comm.explain(): flat algorithms re-priced for this topology, and composed ones."""
        flat = self.tuner.select(collective, nbytes)
        choice = self.choose(collective, nbytes, flat, False) if flat.code >= 0 else flat
        bucket = (f", token bucket {self.burst / 1e3:.0f} kB at {1 / self.net_peak.beta / 1e9:.3g} GB/s"
                  if self.burst else "")
        lines = [f"topology-aware pricing, the final choice ({self.topo.summary()}; network alpha="
                 f"{self.net.alpha * 1e6:.1f} us, {1 / self.net.beta / 1e9:.3g} GB/s per host link{bucket}):"]
        for a in registry.for_collective(collective):
            mark = "->" if a.name == choice.name else "  "
            if a.code >= 0 and a.supports(nbytes, self.p):
                t = self._flat_cost(a, nbytes) * 1e6
                lines.append(f"  {mark} {a.name:<20} {t:12.2f} us (rank order, shared network links)")
            elif a.code < 0:
                t = self.composed_cost(collective, a.code, nbytes)
                lines.append(f"  {mark} {a.name:<20} " + (f"{t * 1e6:12.2f} us" if t is not None else "   not applicable"))
        return "\n".join(lines)

class Planner(TopologyPricer):
    """Topology-aware choices (TopologyPricer) and composed runs for one communicator (see the
    module docstring)."""

    def __init__(self, ctx, topo, load=0.0):
        """load: ranks per CPU on the most crowded machine (>1: oversubscribed)."""
        self.ctx = ctx
        self._levels = None        # sub-communicators, innermost first (island, cross-island, rail)
        self._ring = None          # sub-communicator in ring order
        self._subs = SubComms(ctx)   # owns them: an abort reaches even one still being made
        self._scratch = {}
        super().__init__(topo, load, ctx.tuner)

    def choose(self, collective, nbytes, flat, forced):
        if self._subs.building:            # split's own allgather: never a composed algorithm
            return flat if flat.code >= 0 else flat_fallback(self.tuner, collective, nbytes)
        return super().choose(collective, nbytes, flat, forced)

    # ------------------------------------------------------------------ sub-communicators

    def _split(self, color, key):
        return self._subs.make(color, key)

    def levels(self):
        """[island comm, cross-island comm, rail comm] (the first two None when trivial); created on
        first use, in this order, on every rank."""
        if self._levels is None:
            if self.coords is None:
                from ..errors import InvalidUsage
                raise InvalidUsage("the hierarchical algorithms need the same number of ranks on every "
                                   "host; use algorithm='topo_ring' or 'ring'")
            H, I, J = self._dims()
            h, i, j = self.coords[self.ctx.rank]
            island = self._split(h * I + i, j) if J > 1 else None
            cross = self._split(h * J + j, i) if I > 1 else None
            rail = self._split(i * J + j, h)
            self._levels = [island, cross, rail]
        return self._levels

    def ring(self):
        if self._ring is None:
            self._ring = self._split(0, self.order.index(self.ctx.rank))
        return self._ring

    def close(self, timeout=30.0):
        self._subs.close(timeout)
        self._levels = self._ring = None

    def abort(self):
        self._subs.abort()

    def interrupt(self, reason):
        """Fail the sub-communicators' running and later calls (Communicator._interrupt)."""
        self._subs.interrupt(reason)

    # ------------------------------------------------------------------ runs

    def _buf(self, name, n, dtype):
        """A scratch array reused across calls (collectives/scratch.py)."""
        return scratch(self._scratch, name, n, dtype)

    @staticmethod
    def _flat(buf, code):
        if isinstance(buf, np.ndarray):
            return buf.reshape(-1)
        return np.frombuffer(memoryview(buf).cast("B"), dtype=dtypes.numpy_dtype(code))

    def allreduce(self, buf, out, code, op, timeout, algo):
        src, dst = self._flat(buf, code), self._flat(out, code)
        if algo == ALGO_TOPO_RING or (op == ReduceOp.AVG and code in dtypes.INTEGER):
            # integer AVG truncates once, on the whole sum: levels would truncate at every level
            self.ring().allreduce(src, op, out=dst, timeout=timeout, algorithm="ring")
            return
        island, cross, rail = self.levels()[:3]
        levels = [c for c in (island, cross) if c is not None]
        if len(levels) == 1 and src.nbytes >= PIPELINE_MIN and src.size >= PIPELINE_SEGMENTS * levels[0].size:
            self._pipelined(src, dst, levels[0], rail, op, timeout)
        else:
            self._down_up(src, dst, levels, rail, op, timeout)

    def _pipelined(self, src, dst, local, rail, op, timeout):
        """2-level allreduce in a few segments so the host and network levels overlap: the local
        communicator's progress thread reduce-scatters segment k+1 and allgathers segment k-1
        while this thread drives segment k's rail allreduce (separate engines, no GIL held)."""
        s, S = local.size, PIPELINE_SEGMENTS
        step = -(-src.size // (S * s)) * s            # segment length: a multiple of the host size
        bounds = [(a, min(a + step, src.size)) for a in range(0, src.size, step)]
        shards, pending = [], []
        try:
            for k, (a, b) in enumerate(bounds):
                n = b - a
                counts = None if n % s == 0 else [n // s + (1 if r < n % s else 0) for r in range(s)]
                mine = n // s if counts is None else counts[local.rank]
                shards.append((self._buf(f"pipe{k}", mine, src.dtype), counts))
                pending.append(local.reduce_scatter(src[a:b], shards[k][0], op, counts=counts, timeout=timeout,
                                                    async_op=True))
            gathers = []
            for k, (a, b) in enumerate(bounds):
                shard, counts = shards[k]
                pending[k].wait()
                rail.allreduce(shard, op, timeout=timeout)
                if counts is None:
                    gathers.append(local.allgather(shard, out=dst[a:b], timeout=timeout, async_op=True))
                else:
                    gathers.append(local.allgatherv(shard, counts, out=dst[a:b], timeout=timeout, async_op=True))
            for w in gathers:
                w.wait()
        except BaseException:
            local.abort()                  # queued segments must not run on: the peers raise too
            raise

    def _down_up(self, src, dst, levels, rail, op, timeout):
        """Reduce-scatter down the levels, allreduce on the rail, allgather back up."""
        if not levels:
            rail.allreduce(src, op, out=dst, timeout=timeout)
            return
        comm, rest = levels[0], levels[1:]
        n, s = src.size, comm.size
        even = n % s == 0                   # equal blocks take the engine's pipelined ring paths
        counts = [n // s + (1 if r < n % s else 0) for r in range(s)]
        shard = self._buf(f"shard{len(levels)}", counts[comm.rank], src.dtype)
        comm.reduce_scatter(src, shard, op, counts=None if even else counts, timeout=timeout)
        self._down_up(shard, shard, rest, rail, op, timeout)
        if even:
            comm.allgather(shard, out=dst, timeout=timeout)
        else:
            comm.allgatherv(shard, counts, out=dst, timeout=timeout)

    def allgather(self, buf, out, code, algo, timeout):
        src, dst = self._flat(buf, code), self._flat(out, code)
        blk = dst.size // self.p
        if src is dst or (src.size == dst.size and np.shares_memory(src, dst)):
            src = dst[self.ctx.rank * blk:(self.ctx.rank + 1) * blk].copy()
        if algo == ALGO_TOPO_RING:
            tmp = self._buf("ag", dst.size, dst.dtype)
            self.ring().allgather(src, out=tmp, timeout=timeout, algorithm="ring")
            dst.reshape(self.p, blk)[self.order] = tmp.reshape(self.p, blk)
            return
        rail = self.levels()[2]
        H, I, J = self._dims()
        mid = self._buf("ag_rail", H * blk, dst.dtype)
        rail.allgather(src, out=mid, timeout=timeout)               # [host] blocks of my (i, j)
        tmp = self._buf("ag", dst.size, dst.dtype)
        local = self._local_comm()
        local.allgather(mid, out=tmp, timeout=timeout)              # [local index][host] blocks
        L = I * J
        dst.reshape(self.p, blk)[self._host_major()] = tmp.reshape(L, H, blk).transpose(1, 0, 2).reshape(self.p, blk)

    def _local_comm(self):
        """All ranks of this host, ordered by local index i*J+j (for allgather and broadcast, which
        need no shards): the island or cross-island comm when it already spans the host, else a
        host comm made once."""
        island, cross, _ = self.levels()[:3]
        H, I, J = self._dims()
        if I == 1:
            return island
        if J == 1:
            return cross
        if len(self._levels) == 3:
            h, i, j = self.coords[self.ctx.rank]
            self._levels.append(self._split(h, i * J + j))
        return self._levels[3]

    def _host_major(self):
        """Global ranks ordered by (host, local index): row k of the gathered [host][local] blocks."""
        H, I, J = self._dims()
        order = [None] * self.p
        for r, (h, i, j) in enumerate(self.coords):
            order[h * I * J + i * J + j] = r
        return order

    def broadcast(self, buf, root, code, algo, timeout):
        arr = self._flat(buf, code)
        rail = self.levels()[2]
        J = self._dims()[2]
        rh, ri, rj = self.coords[root]
        h, i, j = self.coords[self.ctx.rank]
        if (i, j) == (ri, rj):
            rail.broadcast(arr, root=rh, timeout=timeout)
        self._local_comm().broadcast(arr, root=ri * J + rj, timeout=timeout)


def planner_for(ctx, cards, oversubscribed=False):
    """A Planner when composing can help this communicator (ranks on more than one host, and some
    host with more than one), else None (the flat tuner alone decides).

    ``oversubscribed`` (this rank's view) is not used for pricing: every rank must price alike, so
    the planner takes the load from the cards (ranks per machine against its CPUs, topology/cards.py)."""
    topo = model_of(cards)
    hosts = topo.hosts()
    if len(hosts) < 2 or len(hosts) == len(topo.ranks):
        return None
    return Planner(ctx, topo, oversubscription(cards))
