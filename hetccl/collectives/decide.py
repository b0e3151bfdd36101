"""The one decision per call: which algorithm (and which island form) a group runs for a call shape.

Three pricers take part, each optional but the first: the flat tuner (tuner.py: engine algorithms
on one cost model), the topology planner (hierarchical.TopologyPricer: the same algorithms re-priced
for shared network links, plus the composed hierarchical and topology-ring forms) and the island
pricer (islands.IslandPricer: vendor islands joined by hetccl). The communicator calls ``decide``
on every call that misses its caches, and the simulator (hetccl/simulate/) calls it on pricers built
from a topology file: one function, so a simulation shows what the runtime would run.
"""
from .hierarchical import flat_fallback
from .algorithm import ALGO_ISLANDS


def decide(tuner, plan, islands, collective, nbytes, algorithm=None, code=None, op=None):
    """(Algorithm, island form or None) for one call; ``algorithm`` is a per-call algorithm=."""
    a = tuner.select(collective, nbytes, algorithm)
    form = None
    if plan is not None or islands is not None:
        # whether the choice was forced only matters to the planners (a flat communicator's
        # tuner calls must cost the same with and without algorithm=)
        # (a tuning file's measured best counts as forced: it was timed on this group)
        measured = getattr(tuner, "measured", None)
        forced = (algorithm or collective in getattr(tuner, "forced", ())
                  or (measured is not None and measured(collective, nbytes) is not None))
        if plan is not None and a.code != ALGO_ISLANDS:
            a = plan.choose(collective, nbytes, a, forced)    # topology-aware: may compose (code < 0)
        if islands is not None:          # vendor islands: may delegate or compose (ALGO_ISLANDS)
            a, form = islands.choose(collective, nbytes, a, forced, code, op)
    if a.code < 0 and islands is None and (plan is None or a.code == ALGO_ISLANDS):
        a = flat_fallback(tuner, collective, nbytes)         # composed where it cannot help
    return a, form


def explain(tuner, plan, islands, collective, nbytes) -> str:
    """The cost tables behind ``decide`` for one call shape: the flat tuner's, then the planner's
    and the islands' when the group has them (comm.explain() adds the symmetric-memory routes)."""
    text = tuner.explain(collective, int(nbytes))
    if plan is not None:
        text += "\n" + plan.explain(collective, int(nbytes))
    if islands is not None:
        text += "\n" + islands.explain(collective, int(nbytes))
    return text
