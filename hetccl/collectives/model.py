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
- ``default``: nothing could be measured (a single rank has no link to time), so the hard-coded
  values below are used. They are only this fallback; they were measured once on a 2-vCPU VM.
"""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LinkCost:
    alpha: float
    beta: float
    gamma: float


# Fallback only (see the module docstring): a 2-vCPU VM, bench/RESULTS.md of the foundation issue.
DEFAULTS = {
    "self": LinkCost(0.2e-6, 1 / 10e9, 1 / 8e9),
    "shm": LinkCost(0.6e-6, 1 / 5e9, 1 / 8e9),
    "tcp": LinkCost(20e-6, 1 / 2.5e9, 1 / 8e9),
}

# Fallback only: more ranks than cores on a host make every hop wait for the peer to be scheduled
# (sched_yield hand-over), ~5 us per step for 4 ranks on 2 cores against ~0.6 us with a core each.
# A measured model has this in its alpha already (the probe runs with the job's own ranks).
OVERSUBSCRIBED_ALPHA = 5e-6

MEASURED, CACHED, DEFAULT = "measured", "cached", "default"


def group_cost(link_classes, oversubscribed=False) -> LinkCost:
    """The fallback cost of a flat algorithm over these links: the pace of the slowest one."""
    costs = [DEFAULTS.get(c, DEFAULTS["tcp"]) for c in link_classes] or [DEFAULTS["self"]]
    alpha = max(c.alpha for c in costs)
    if oversubscribed:
        alpha = max(alpha, OVERSUBSCRIBED_ALPHA)
    return LinkCost(alpha, max(c.beta for c in costs), max(c.gamma for c in costs))


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

    @classmethod
    def default(cls, link_classes, oversubscribed=False, why=""):
        return cls(group_cost(link_classes, oversubscribed), DEFAULT, why, tuple(sorted(link_classes)))

    def describe(self) -> str:
        c = self.cost
        links = "+".join(self.link_classes) or "self"
        text = (f"alpha={c.alpha * 1e6:.3g} us, beta={1 / c.beta / 1e9:.3g} GB/s, "
                f"gamma={1 / c.gamma / 1e9:.3g} GB/s over {links}; {self.origin}")
        return f"{text} ({self.detail})" if self.detail else text
