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
- ``default``: nothing could be measured (a single rank has no link to time), so the values each
  transport declares (``Transport.cost``, hetccl/transports) are used. They are only this
  fallback; they were measured once on a 2-vCPU VM.
"""
from dataclasses import dataclass, field

from .. import transports


STREAM_MIN = 16 << 20      # the engine's nt_threshold (Engine.nt_threshold), when no engine is at hand
FIFO_BYTES = 4 << 20       # one direction's shm FIFO (transports/shm.fifo_bytes, up to 4 local ranks)


@dataclass(frozen=True)
class LinkCost:
    """alpha, beta, gamma (see the module docstring), plus two facts about how the engine moves
    bytes that the formulas need: whether the links are shared-memory FIFOs (a byte costs a copy
    pass per side, and ring relays fuse FIFO to FIFO) or a wire, from how many bytes the ring and
    chain schedules write their output with streaming stores (the engine's nt_threshold), and how
    many bytes one FIFO holds (an exchange step larger than that cannot be written ahead)."""
    alpha: float
    beta: float
    gamma: float
    fifo: bool = True
    stream_min: float = STREAM_MIN
    fifo_bytes: float = FIFO_BYTES


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

MEASURED, CACHED, DEFAULT, TUNED = "measured", "cached", "default", "tuning file"


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
    origin: str                      # MEASURED, CACHED or DEFAULT
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
        c = self.cost
        links = "+".join(self.link_classes) or "self"
        text = (f"alpha={c.alpha * 1e6:.3g} us, beta={1 / c.beta / 1e9:.3g} GB/s, "
                f"gamma={1 / c.gamma / 1e9:.3g} GB/s over {links}; {self.origin}")
        return f"{text} ({self.detail})" if self.detail else text
