"""Pick the algorithm for each call: the lowest predicted cost wins, unless the user forces one.

Prices come from the communicator's :class:`~.model.CostModel` (measured by :mod:`.probe` when the
communicator was created, or read from the per-host cache; identical on every rank), put into each
algorithm's ``cost`` formula (:mod:`.registry`).

Forcing: ``HETCCL_ALGO="allreduce:ring;allgather:recursive_doubling"`` for the whole job, or
``algorithm=`` on a call (which wins). Measured: a tuning file (``HETCCL_TUNING_FILE``) whose entry
matches the communicator carries the best algorithm measured at each size of a sweep
(``CostModel.best``); a call within that sweep's range takes the one measured at the nearest size
(in log2), unforced calls outside it are priced. The decision per (collective, size) is cached, so choosing
costs one dict lookup on the hot path. ``explain()`` prints the cost table behind a choice and
where the model's numbers came from; ``HETCCL_DEBUG=tuning`` logs the model at creation and the
table the first time each size is seen.
"""
import logging
import math
import os

from ..errors import InvalidUsage
from . import registry
from .cost_model import CostModel, call_cost
from .single_copy_probe import takes as _single_copy_takes

log = logging.getLogger("hetccl.tuning")

EXAMPLE = "e.g. 'allreduce:ring;allgather:recursive_doubling'"


def _collectives():
    return sorted({a.collective for a in registry.ALGORITHMS})


def _names(collective):
    return [a.name for a in registry.for_collective(collective)]


def parse_forced(spec: str | None, source: str = "HETCCL_ALGO") -> dict[str, str]:
    """``"allreduce:ring; allgather:rd"`` → {"allreduce": "ring", "allgather": "recursive_doubling"};
    InvalidUsage naming the bad entry and the valid choices otherwise."""
    forced = {}
    for part in (spec or "").split(";"):
        if not part.strip():
            continue
        coll, sep, name = (x.strip() for x in part.partition(":"))
        if not sep or not coll or not name:
            raise InvalidUsage(f"{source} entry {part.strip()!r} is not 'collective:algorithm' ({EXAMPLE})")
        if not registry.for_collective(coll):
            raise InvalidUsage(f"{source} entry {part.strip()!r} is not 'collective:algorithm': "
                               f"unknown collective {coll!r}; known: {', '.join(_collectives())}")
        name = registry.ALIASES.get(name, name)
        if name not in _names(coll):
            raise InvalidUsage(f"{source}: {coll} has no algorithm {name!r}; choose from "
                               f"{', '.join(_names(coll))}")
        if forced.get(coll, name) != name:
            raise InvalidUsage(f"{source} forces {coll} twice ({forced[coll]} and {name}); keep one")
        forced[coll] = name
    return forced


MAX_CACHED = 512    # call shapes whose choice is remembered (then forgotten at once, and re-learnt)


class Tuner:
    def __init__(self, size: int, model: CostModel, forced_spec: str | None = None):
        self.size = size
        self.model = model
        self.cost = model.cost
        self.forced = parse_forced(forced_spec if forced_spec is not None else os.environ.get("HETCCL_ALGO"))
        self._cache = {}
        self._best = {}
        for coll, n, name in getattr(model, "best", ()) or ():
            self._best.setdefault(coll, []).append((n, name))
        for rows in self._best.values():
            rows.sort()
        self._debug = "tuning" in os.environ.get("HETCCL_DEBUG", "").lower()
        if self._debug:
            log.info("cost model of %d ranks: %s", size, model.describe())

    @classmethod
    def with_defaults(cls, size, link_classes=("shm",), oversubscribed=False, forced_spec=None):
        """A tuner on the built-in fallback parameters (no communicator needed: tools, tests)."""
        return cls(size, CostModel.default(link_classes, oversubscribed, "built-in values"), forced_spec)

    def table(self, collective: str, nbytes: int):
        """[(algorithm, predicted seconds or None if unsupported)] for this call shape: the
        algorithm's formula on the parameters of a call of this size (in cache or not,
        LinkCost.at) plus the per-call path every algorithm pays (cost_model.call_cost)."""
        p = self.size
        call, c = call_cost(collective, p), self.cost.at(nbytes, collective)
        return [(a, a.cost(nbytes, p, c) + call if a.supports(nbytes, p) else None)
                for a in registry.for_collective(collective)]

    def single_copy(self, collective: str, nbytes: int) -> bool:
        """Whether an unforced call of this size runs single copy (CMA) rather than the FIFO
        algorithm: what CostModel.single_copy measured at the nearest size (single_copy_probe.takes)."""
        rows = dict(self.model.single_copy).get(collective)
        return rows is not None and _single_copy_takes(rows, nbytes)

    def price(self, algorithm, nbytes: int) -> float:
        """Predicted seconds of one flat algorithm for this call shape (a row of ``table``)."""
        return (algorithm.cost(nbytes, self.size, self.cost.at(nbytes, algorithm.collective))
                + self.call_cost(algorithm.collective))

    def call_cost(self, collective: str) -> float:
        """The Python path's seconds around one call of this collective (cost_model.call_cost); a
        method so that paths priced outside this package (memory/symmetric.py) add the same."""
        return call_cost(collective, self.size)

    def measured(self, collective: str, nbytes: int) -> str | None:
        """The algorithm the tuning file measured fastest at the size nearest nbytes (log2), when
        nbytes lies within its sweep (half the smallest to twice the largest size), else None."""
        rows = self._best.get(collective)
        if not rows or nbytes <= 0 or not rows[0][0] / 2 <= nbytes <= rows[-1][0] * 2:
            return None
        lg = math.log2(nbytes)
        return min(rows, key=lambda r: abs(math.log2(r[0]) - lg))[1]

    def select(self, collective: str, nbytes: int, algorithm: str | None = None) -> registry.Algorithm:
        key = (collective, nbytes, algorithm)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        name = registry.ALIASES.get(algorithm, algorithm) if algorithm else self.forced.get(collective)
        rows = self.table(collective, nbytes)
        if not name and self._best:
            best = self.measured(collective, nbytes)
            if best is not None and any(a.name == best and c is not None for a, c in rows):
                name, algorithm = best, best          # measured here: taken like a forced choice
        if name:
            how = "" if algorithm else " (forced by HETCCL_ALGO)"
            for a, c in rows:
                if a.name == name:
                    if c is None:
                        raise InvalidUsage(f"{collective} algorithm {name!r}{how} does not support "
                                           f"{self.size} ranks; choose from "
                                           f"{', '.join(x.name for x, y in rows if y is not None)}")
                    choice = a
                    break
            else:
                raise InvalidUsage(f"{collective} has no algorithm {name!r}; choose from "
                                   f"{', '.join(a.name for a, _ in rows)}")
        else:
            choice = min((r for r in rows if r[1] is not None), key=lambda r: r[1])[0]
        if len(self._cache) >= MAX_CACHED:       # bounded: a program of ever new sizes must not grow
            self._cache.clear()
        self._cache[key] = choice
        if self._debug and algorithm is None:
            log.info("%s", self.explain(collective, nbytes))
        return choice

    def explain(self, collective: str, nbytes: int) -> str:
        rows = self.table(collective, nbytes)
        choice = self.select(collective, nbytes) if nbytes >= 0 else None
        forced = self.forced.get(collective)
        lines = [f"{collective} of {nbytes} bytes on {self.size} ranks",
                 f"  cost model: {self.model.describe()}"]
        for a, c in rows:
            mark = "->" if a is choice else "  "
            if c is None:
                price = "   unsupported"
            elif math.isinf(c):
                price = "  not priced here"        # composed algorithms: the topology planner's
            else:
                price = f"{c * 1e6:12.2f} us"
            lines.append(f"  {mark} {a.name:<20} {price}")
        if forced:
            lines.append(f"  (forced by HETCCL_ALGO: {forced})")
        elif self.measured(collective, nbytes):
            lines.append(f"  (measured fastest at this size by the tuning file: {self.measured(collective, nbytes)})")
        return "\n".join(lines)

    def choices(self, collective: str, sizes) -> list[tuple[int, str]]:
        """[(first size, algorithm)] where the unforced choice changes over ascending *sizes*:
        the crossover points of the model."""
        out = []
        for n in sorted(sizes):
            rows = [r for r in self.table(collective, n) if r[1] is not None]
            if not rows:
                continue
            name = min(rows, key=lambda r: r[1])[0].name
            if not out or out[-1][1] != name:
                out.append((n, name))
        return out
