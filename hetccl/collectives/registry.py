"""Every algorithm hetccl knows, by collective: the family modules' entries, aggregated.

Each family module (allreduce.py, allgather.py, ...) declares its ``ALGORITHMS`` (name, native
schedule code, cost formula, supports) and ``ALIASES`` (other names accepted by ``algorithm=`` and
HETCCL_ALGO); the tuner asks this module only.
"""
from . import allgather, allreduce, alltoall, barrier, broadcast, reduce_scatter, rooted
from .algorithm import *  # noqa: F401,F403 - Algorithm and the ALGO_* codes, re-exported
from .algorithm import Algorithm

_FAMILIES = (allreduce, allgather, reduce_scatter, broadcast, rooted, alltoall, barrier)

ALGORITHMS: list[Algorithm] = [a for f in _FAMILIES for a in f.ALGORITHMS]

# one flat table (the tuner resolves a name before it knows the collective): an alias may only
# mean one algorithm name across families
ALIASES: dict[str, str] = {}
for _f in _FAMILIES:
    for _alias, _name in _f.ALIASES.items():
        if ALIASES.setdefault(_alias, _name) != _name:
            raise RuntimeError(f"alias {_alias!r} means both {ALIASES[_alias]!r} and {_name!r}")

_BY_COLLECTIVE: dict[str, list[Algorithm]] = {}
for _a in ALGORITHMS:
    _BY_COLLECTIVE.setdefault(_a.collective, []).append(_a)


def for_collective(collective: str) -> list[Algorithm]:
    return list(_BY_COLLECTIVE.get(collective, ()))


def register(algorithm: Algorithm) -> None:
    """Add an algorithm declared outside the family modules (the composed, topology-aware ones in
    hierarchical.py, which import this module and so cannot be one of its families)."""
    if any(a.name == algorithm.name and a.collective == algorithm.collective for a in ALGORITHMS):
        return
    ALGORITHMS.append(algorithm)
    _BY_COLLECTIVE.setdefault(algorithm.collective, []).append(algorithm)
