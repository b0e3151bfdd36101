"""The cost model of a simulated group: a tuning file's measured entry, or the runtime's defaults.

A communicator gets its CostModel from the probe (or the cache, or the tuning file) at creation;
a simulation has no ranks to probe, so it takes, in this order:

1. the tuning file given (``--cost-model FILE``, else ``HETCCL_TUNING_FILE``): the entry for the
   group's link classes and number of ranks, else the entry for its link classes, else, with
   ``--cost-model`` (the user asked for that file), the entry with the most link classes in
   common; its measured best algorithm per size comes along when its ranks and placement match
   the simulated group, as a communicator takes it;
2. the built-in defaults for the group's link classes (the transports' declared costs, hetccl/transports), as a
   communicator that cannot measure uses them.

Either way the FIFO size and streaming-store threshold the formulas need are the engine's (the
shm transport's FIFO for the ranks per host, the engine's nt_threshold), and the ranks per CPU
are the group's load, as at run time.
"""
from __future__ import annotations

import os

from ..collectives.cost_model import TUNED, CostModel, LinkCost, all_fifo
from ..collectives import tuning_file
from .group import link_classes

STREAM_MIN = 16 << 20          # the engine's nt_threshold (engine.pyx), the same at run time


def _fifo(local: int) -> float:
    from ..transports.shm import fifo_bytes
    return float(fifo_bytes(local))


def placement(topo) -> str:
    """Rank 0's link class to every rank, as probe.placement records a running job's."""
    return ",".join(topo.pair_class(0, q) for q in range(len(topo.ranks)))


def model_for(topo, load: float = 0.0, path: str | None = None, transports: str | None = None):
    """(CostModel, note, bridge prices) for the group of this topology (see the module docstring);
    bridge prices: {bridge kind: {collective: (alpha, beta)}} the tuning file measured, or {}."""
    classes = link_classes(topo, transports)
    key = tuning_file.links_key(classes)
    p = len(topo.ranks)
    local = len(topo.ranks_on(topo.ranks[0].host))
    given = path or os.environ.get(tuning_file.ENV)
    doc = tuning_file.read(given, host=None, strict_version=False) if given else None
    entry = tuning_file.find(doc, key, p, local) or tuning_file.find(doc, key, p) or tuning_file.find(doc, key)
    if entry is None and doc and path:
        entry = max(doc["entries"], key=lambda e: len(set(e["links"].split("+")) & set(key.split("+"))),
                    default=None)
    if entry is None:
        why = (f"built-in defaults: {given} has no entry for {key or 'self'}" if doc else
               "built-in defaults (no tuning file: `hetccl tune` writes one, --cost-model reads it)")
        return CostModel.default(classes, load > 1, why), why, bridge_prices(doc)
    c = entry["cost"]
    fifo = all_fifo(classes)
    cost = LinkCost.from_params(c, fifo=fifo, stream_min=STREAM_MIN, fifo_bytes=_fifo(local), share=max(1.0, load))
    best = ()
    if int(entry["ranks"]) == p and entry.get("placement") and len(entry["placement"].split(",")) == p:
        best = tuning_file.best_table(entry, placement(topo))
    note = (f"{doc['_path']} entry {entry['links']} x{entry['ranks']} (measured {doc.get('measured_at', '?')})"
            + (f"; its measured choices apply ({len(best)} sizes)" if best else ""))
    if entry["links"] != key:
        note += f"; the group's links are {key}: the entry is the nearest"
    return CostModel(cost, TUNED, note, tuple(sorted(classes - {"self"})), best=best), note, bridge_prices(doc)


def bridge_prices(doc) -> dict:
    """{bridge kind: {collective: ((bytes, seconds), ...)}}: what the islands' bridges measured when
    the job that wrote the file had islands (collectives/islands.py IslandPlan._probe), merged over
    entries (tuning_file.read has left out entries whose prices are malformed)."""
    out = {}
    for e in (doc or {}).get("entries", []):
        for kind, colls in (e.get("bridges") or {}).items():
            for coll, price in colls.items():
                out.setdefault(kind, {})[coll] = tuple((int(n), float(t)) for n, t in price)
    return out
