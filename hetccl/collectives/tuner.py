"""Pick the algorithm for each call: the lowest predicted cost wins, unless the user forces one.

Forcing: ``HETCCL_ALGO="allreduce:ring;allgather:recursive_doubling"`` for the whole job, or
``algorithm=`` on a call. The decision per (collective, size) is cached, so choosing costs one dict
lookup on the hot path. ``explain()`` prints the cost table behind a choice; ``HETCCL_DEBUG=tuning``
logs it the first time each size is seen.
"""
import logging
import os

from ..errors import InvalidUsage
from . import registry
from .model import group_cost

log = logging.getLogger("hetccl.tuning")


def parse_forced(spec: str | None) -> dict[str, str]:
    forced = {}
    for part in (spec or "").split(";"):
        if not part.strip():
            continue
        coll, sep, name = part.partition(":")
        coll, name = coll.strip(), registry.ALIASES.get(name.strip(), name.strip())
        if not sep or not registry.for_collective(coll):
            raise InvalidUsage(f"HETCCL_ALGO entry {part!r} is not 'collective:algorithm' "
                               f"(e.g. 'allreduce:ring;allgather:recursive_doubling')")
        if name not in [a.name for a in registry.for_collective(coll)]:
            raise InvalidUsage(f"HETCCL_ALGO: {coll} has no algorithm {name!r}; choose from "
                               f"{', '.join(a.name for a in registry.for_collective(coll))}")
        forced[coll] = name
    return forced


class Tuner:
    def __init__(self, size: int, link_classes, forced_spec: str | None = None, oversubscribed=False):
        self.size = size
        self.cost = group_cost(link_classes, oversubscribed)
        self.forced = parse_forced(forced_spec if forced_spec is not None else os.environ.get("HETCCL_ALGO"))
        self._cache = {}
        self._debug = "tuning" in os.environ.get("HETCCL_DEBUG", "").lower()

    def table(self, collective: str, nbytes: int):
        """[(algorithm, predicted seconds or None if unsupported)] for this call shape."""
        p = self.size
        return [(a, a.cost(nbytes, p, self.cost) if a.supports(nbytes, p) else None)
                for a in registry.for_collective(collective)]

    def select(self, collective: str, nbytes: int, algorithm: str | None = None) -> registry.Algorithm:
        key = (collective, nbytes, algorithm)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        name = registry.ALIASES.get(algorithm, algorithm) if algorithm else self.forced.get(collective)
        rows = self.table(collective, nbytes)
        if name:
            for a, c in rows:
                if a.name == name:
                    if c is None:
                        raise InvalidUsage(f"{collective} algorithm {name!r} does not support {self.size} "
                                           f"ranks; choose from {', '.join(x.name for x, y in rows if y is not None)}")
                    choice = a
                    break
            else:
                raise InvalidUsage(f"{collective} has no algorithm {name!r}; choose from "
                                   f"{', '.join(a.name for a, _ in rows)}")
        else:
            choice = min((r for r in rows if r[1] is not None), key=lambda r: r[1])[0]
        self._cache[key] = choice
        if self._debug and algorithm is None:
            log.info("%s", self.explain(collective, nbytes))
        return choice

    def explain(self, collective: str, nbytes: int) -> str:
        rows = self.table(collective, nbytes)
        choice = self.select(collective, nbytes) if nbytes >= 0 else None
        forced = self.forced.get(collective)
        lines = [f"{collective} of {nbytes} bytes on {self.size} ranks "
                 f"(alpha={self.cost.alpha * 1e6:.2f} us, beta={1 / self.cost.beta / 1e9:.2f} GB/s, "
                 f"gamma={1 / self.cost.gamma / 1e9:.2f} GB/s):"]
        for a, c in rows:
            mark = "->" if a is choice else "  "
            lines.append(f"  {mark} {a.name:<20} " + (f"{c * 1e6:12.2f} us" if c is not None else "   unsupported"))
        if forced:
            lines.append(f"  (forced by HETCCL_ALGO: {forced})")
        return "\n".join(lines)
