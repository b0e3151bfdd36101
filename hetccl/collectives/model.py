"""Alpha-beta-gamma cost model parameters per link class.

alpha: seconds per message (latency, including the engine's per-step overhead), beta: seconds per
byte moved over the link, gamma: seconds per byte reduced. The defaults below were measured on a
2-vCPU VM (bench/RESULTS.md); a later issue replaces them with a per-host probe and a tuning file.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class LinkCost:
    alpha: float
    beta: float
    gamma: float


DEFAULTS = {
    "self": LinkCost(0.2e-6, 1 / 10e9, 1 / 8e9),
    "shm": LinkCost(0.6e-6, 1 / 5e9, 1 / 8e9),
    "tcp": LinkCost(20e-6, 1 / 2.5e9, 1 / 8e9),
}


# More ranks than cores on a host: every hop waits for the peer to be scheduled (sched_yield hand-
# over), measured ~5 us per step for 4 ranks on 2 cores against ~0.6 us with a core each.
OVERSUBSCRIBED_ALPHA = 5e-6


def group_cost(link_classes, oversubscribed=False) -> LinkCost:
    """The cost of a flat algorithm over these links: it runs at the pace of the slowest one."""
    costs = [DEFAULTS.get(c, DEFAULTS["tcp"]) for c in link_classes] or [DEFAULTS["self"]]
    alpha = max(c.alpha for c in costs)
    if oversubscribed:
        alpha = max(alpha, OVERSUBSCRIBED_ALPHA)
    return LinkCost(alpha, max(c.beta for c in costs), max(c.gamma for c in costs))
