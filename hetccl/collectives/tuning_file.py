"""The tuning file (``HETCCL_TUNING_FILE``): what ``hetccl tune`` measured, read by the communicator
and by ``hetccl simulate``.

Why a file and not only the per-host cache (collectives/probe.py): the cache holds a quick probe's
alpha, beta and gamma, taken whenever a communicator of a new shape appears, on whatever the
machine was doing then. A tuning file is a deliberate measurement: the cost model and every
algorithm timed over a size sweep, in a quiet window, on the job's own ranks and placement, kept
where the user says, shipped with the job, and read by the simulator so that a prediction starts
from the same numbers the runtime uses.

Format (version 3)::

    {"format": "hetccl-tuning", "version": 3, "hetccl": "0.1.0", "build": "0.1.0+ab12..",
     "host": "<host id of rank 0>", "measured_at": "2026-12-03 10:00 UTC", "budget_s": 60,
     "entries": [
       {"links": "c2c", "ranks": 4, "local": 4, "placement": "self,c2c,c2c,c2c", "complete": true,
        "cost": {"alpha": 6e-07, "beta": 1.4e-10, "gamma": 1e-11, "beta_out": 2.1e-10,
                 "gamma_out": 6e-11, "cache_bytes": 2097152},
        "bridges": {"mpi": {"allreduce": [[8, 4e-06], [1048576, 0.0002], [4194304, 0.0009], ...], ...}},
        "collectives": {"allreduce": {"sizes": [65536, ...], "best": ["ring", ...],
                                       "model": ["ring", ...], "times_us": {"ring": [..], ..}}}}]}

An entry is used by a communicator with the same link classes (``links``, "+"-joined, without
self), number of ranks and ranks on rank 0's host; its ``collectives`` table (the measured best
algorithm per size) only when the placement also matches (rank 0's link class to every rank).

``cost`` holds the cost model's parameters (cost_model.PARAMS: in cache and out of it); a file of
an older hetccl with alpha, beta and gamma only is read as one beta and gamma at every size.
``bridges`` (when the job had islands): per bridge kind and collective, the measured [bytes,
seconds] points collectives/islands.py bridge_time interpolates. Versions 1 and 2 held [alpha,
beta(, beta_out)] from one call per size, taken with the buffers out of cache: such a file is stale
and ignored with one warning (the communicator probes instead; ``hetccl tune`` writes a new one).
An entry whose ``bridges`` are not [bytes, seconds] pairs of finite non-negative numbers, sizes
ascending, is left out, with the same one warning.

A file that cannot be read or parsed, of another format or version, made by another hetccl
version or on another host, is ignored with one warning per process (``log.warning``), never an
error: a stale tuning file must not stop a job.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from datetime import datetime, timezone

from ..version import __version__, build_id
from .cost_model import LinkCost

log = logging.getLogger("hetccl.tuning")

FORMAT = "hetccl-tuning"
VERSION = 3               # 3: bridge prices as measured [bytes, seconds] points, timed as loops
ENV = "HETCCL_TUNING_FILE"
# the collectives a tuning file may hold measured choices for, in a fixed order (the communicator
# broadcasts them as numbers: see encode_best)
COLLECTIVES = ("allreduce", "allgather", "reduce_scatter", "broadcast", "reduce", "alltoall")
MAX_SIZES = 40            # measured sizes per collective carried to every rank

_warned = set()


def _warn_once(path, why):
    if path not in _warned:
        _warned.add(path)
        log.warning("ignoring the tuning file %s (%s); the cost model is measured or taken from the "
                    "cache instead. Re-run `hetccl tune` to rewrite it, or unset %s", path, why, ENV)


def links_key(link_classes) -> str:
    return "+".join(sorted(set(link_classes) - {"self"}))


def new_document(host: str, budget_s: float | None) -> dict:
    return {"format": FORMAT, "version": VERSION, "hetccl": __version__, "build": build_id(), "host": host,
            "measured_at": datetime.fromtimestamp(time.time(), timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "budget_s": budget_s, "entries": []}


def write(path: str, doc: dict) -> None:
    """Write atomically (a job starting meanwhile reads the old file or the new one, never half)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def merge(doc: dict, entry: dict) -> dict:
    """doc with ``entry`` replacing any entry of the same links, ranks and local ranks."""
    key = (entry["links"], entry["ranks"], entry["local"])
    doc["entries"] = [e for e in doc.get("entries", []) if (e.get("links"), e.get("ranks"), e.get("local")) != key]
    doc["entries"].append(entry)
    return doc


def _valid_entry(e) -> bool:
    try:
        c = e["cost"]
        return (isinstance(e["links"], str) and int(e["ranks"]) > 0 and int(e["local"]) > 0
                and isinstance(c, dict) and LinkCost.valid_params(c) and _valid_bridges(e.get("bridges")))
    except (KeyError, TypeError, ValueError):
        return False


def _valid_bridges(b) -> bool:
    """None, or {kind: {collective: [[bytes, seconds], ...]}}: finite numbers >= 0, sizes ascending."""
    if b is None:
        return True

    def number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0

    def points(p):
        return (isinstance(p, list) and len(p) > 0
                and all(isinstance(q, list) and len(q) == 2 and all(number(x) for x in q) for q in p)
                and all(a[0] < b_[0] for a, b_ in zip(p, p[1:])))
    return isinstance(b, dict) and all(
        isinstance(colls, dict) and all(points(p) for p in colls.values()) for colls in b.values())


def read(path: str | None = None, host: str | None = None, strict_version: bool = True) -> dict | None:
    """The document at ``path`` (default: $HETCCL_TUNING_FILE), or None when unset, missing, corrupt
    or stale (one warning: see the module docstring). ``host``: the host it must have been measured
    on (None: any, as the simulator reads files of other machines)."""
    path = path or os.environ.get(ENV)
    if not path:
        return None
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        _warn_once(path, "no such file")
        return None
    except (OSError, ValueError) as e:
        _warn_once(path, f"unreadable: {e}")
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        _warn_once(path, f"not a {FORMAT} file")
        return None
    if doc.get("version") != VERSION:
        _warn_once(path, f"version {doc.get('version')!r}; this hetccl reads version {VERSION}")
        return None
    if strict_version and doc.get("hetccl") != __version__:
        _warn_once(path, f"written by hetccl {doc.get('hetccl')}, this is {__version__}")
        return None
    if host is not None and doc.get("host") != host:
        _warn_once(path, f"measured on host {doc.get('host')!r}, this is {host!r}")
        return None
    entries = doc.get("entries")
    if not isinstance(entries, list):
        _warn_once(path, "no 'entries' list")
        return None
    doc["entries"] = [e for e in entries if _valid_entry(e)]
    if len(doc["entries"]) != len(entries):
        _warn_once(path, f"{len(entries) - len(doc['entries'])} malformed entr(y/ies) left out")
    doc["_path"] = path
    return doc


def find(doc: dict | None, links: str, ranks: int | None = None, local: int | None = None) -> dict | None:
    """The entry for a group of these link classes (and ranks, local ranks when given)."""
    if not doc:
        return None
    for e in doc.get("entries", []):
        if e["links"] == links and (ranks is None or int(e["ranks"]) == ranks) and (
                local is None or int(e["local"]) == local):
            return e
    return None


def best_table(entry: dict | None, placement: str | None = None) -> tuple:
    """((collective, nbytes, algorithm), ...) measured best, when the placement matches (or is not
    asked for)."""
    if not entry or (placement is not None and entry.get("placement") != placement):
        return ()
    out = []
    for coll in COLLECTIVES:
        t = (entry.get("collectives") or {}).get(coll) or {}
        for n, name in list(zip(t.get("sizes", []), t.get("best", [])))[:MAX_SIZES]:
            if isinstance(name, str) and name:
                out.append((coll, int(n), name))
    return tuple(out)


def encode_best(table: tuple) -> "np.ndarray":
    """The measured-best table as float64 (collective index, log2 size, algorithm index) triples,
    padded to a fixed length, so rank 0 can broadcast it with the cost model."""
    import numpy as np
    from . import registry
    arr = np.full(3 * len(COLLECTIVES) * MAX_SIZES, -1.0)
    k = 0
    for coll, n, name in table:
        names = [a.name for a in registry.for_collective(coll)]
        if name in names and n > 0 and k < len(arr):
            arr[k:k + 3] = (COLLECTIVES.index(coll), math.log2(n), names.index(name))
            k += 3
    return arr


def decode_best(arr) -> tuple:
    from . import registry
    out = []
    for k in range(0, len(arr), 3):
        ci, lg, ai = arr[k:k + 3]
        if ci < 0:
            break
        coll = COLLECTIVES[int(ci)]
        out.append((coll, int(round(2 ** lg)), registry.for_collective(coll)[int(ai)].name))
    return tuple(out)
