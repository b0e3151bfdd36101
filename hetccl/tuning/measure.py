"""One rank of ``hetccl tune``: re-measure the cost model, time every algorithm over a size sweep
within a time budget, and (rank 0) write the tuning file and print the before/after table.

Runs under any launcher (``hetccl run``, mpirun, torchrun, srun): it is an ordinary hetccl job.
Timing is the benchmark runner's (hetccl/benchmark/runner.py: calibrated iterations, median over
repetitions of the max over ranks, the algorithms of a size interleaved), so a tuning file's
numbers and ``hetccl bench --algos all``'s are the same kind of number.
"""
from __future__ import annotations

import math
import sys
import time

from ..benchmark import format as fmt
from ..benchmark.cli import HetcclAdapter
from ..benchmark.runner import run_sweep
from ..collectives import tuning_file

DEFAULT_COLLECTIVES = ("allreduce", "allgather", "reduce_scatter", "broadcast")
DEFAULT_SIZES = "8,1K,16K,64K,256K,1M,4M,16M,64M"
REPS = 3


class TuneAdapter(HetcclAdapter):
    """The benchmark adapter, whose algorithm list includes the composed forms the communicator's
    planners can run here (hierarchical, topo_ring, islands), priced as decide() prices them."""

    def _table(self, collective, nbytes):
        rows = super()._table(collective, nbytes)
        plan = self.comm.context.plan
        isl = self.comm.context.islands
        if plan is None and isl is None:
            return rows
        from .. import dtypes
        from ..collectives import registry
        from ..collectives.islands import ALGO_ISLANDS
        from ..ops import ReduceOp
        out = []
        for name, cost in rows:
            a = next((x for x in registry.for_collective(collective) if x.name == name), None)
            if cost is None and a is not None and a.code < 0:
                t = None
                if a.code == ALGO_ISLANDS and isl is not None:
                    forms = isl.forms(collective, int(nbytes), dtypes.FLOAT32, ReduceOp.SUM)
                    t = min(forms.values()) if forms else None
                elif a.code != ALGO_ISLANDS and plan is not None:
                    t = plan.price(a, int(nbytes))
                cost = t if t is not None and math.isfinite(t) else None
            out.append((name, cost))
        return out


class Progress:
    """A one-line progress bar on stderr (rank 0): done/total cells, what runs, seconds of budget."""

    def __init__(self, total, budget, enabled):
        self.total, self.budget, self.enabled = max(1, total), budget, enabled
        self.done, self.t0 = 0, time.monotonic()

    def show(self, what):
        if not self.enabled:
            return
        frac = min(1.0, self.done / self.total)
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        spent = time.monotonic() - self.t0
        sys.stderr.write(f"\r[{bar}] {frac:4.0%} {what:<28} {spent:5.1f}/{self.budget:g} s")
        sys.stderr.flush()

    def end(self):
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _model_choice(comm, model, collective, nbytes):
    """(name, predicted seconds) the runtime's planners choose from the fresh cost model alone
    (no measured table): the "before" of the before/after table."""
    from ..collectives.decide import decide
    from ..collectives.cost_model import CostModel
    from ..collectives.tuner import Tuner
    plain = Tuner(comm.size, CostModel(model.cost, model.origin, model.detail, model.link_classes), "")
    ctx = comm.context
    a, form = decide(plain, ctx.plan, ctx.islands, collective, nbytes)
    if ctx.plan is not None and hasattr(ctx.plan, "price"):
        t = ctx.plan.price(a, nbytes)
    else:
        t = dict((x.name, c) for x, c in plain.table(collective, nbytes)).get(a.name)
    return a.name, t


def run(collectives, sizes, budget, out_path, quiet=False) -> int:
    import hetccl
    from ..collectives import probe
    comm = hetccl.init()
    try:
        model = probe.remeasure(comm)                   # the link classes this job sees, re-measured
        adapter = TuneAdapter(comm)
        cells = [(c, n) for c in collectives for n in sizes]
        per_cell = budget / max(1, len(cells))
        min_time = max(0.002, min(0.03, per_cell / (REPS + 4) / 4))
        bar = Progress(len(cells), budget, comm.rank == 0 and not quiet)
        t0 = time.monotonic()
        table = {}
        stopped = False
        for coll, n in cells:
            # every rank stops at the same cell: the elapsed time is agreed on (max over ranks)
            spent = adapter.max_over_ranks(time.monotonic() - t0)
            if spent > budget:
                stopped = True
                break
            bar.show(f"{coll} {fmt.format_size(n)}")
            algos = adapter.algorithms(coll, [n])
            rows = run_sweep(adapter, coll, [n], reps=REPS, min_time=min_time, check=False,
                             out=lambda s: None, print_header=False, variants=algos + ["auto"])
            table.setdefault(coll, []).extend(rows)
            bar.done += 1
        bar.show("done" if not stopped else "budget spent")
        bar.end()
        if comm.rank == 0:
            entry = _entry(comm, model, table, complete=not stopped)
            _report(comm, model, entry, out_path, stopped, len(cells) - bar.done)
            import os
            doc = None
            if os.path.exists(out_path):     # keep the other entries of this host's file
                doc = tuning_file.read(out_path, host=comm.context.cards[0]["host"])
            doc = doc or tuning_file.new_document(comm.context.cards[0]["host"], budget)
            doc.pop("_path", None)
            doc.update({k: v for k, v in tuning_file.new_document(comm.context.cards[0]["host"], budget).items()
                        if k != "entries"})
            tuning_file.write(out_path, tuning_file.merge(doc, entry))
            print(f"wrote {out_path} (set HETCCL_TUNING_FILE={out_path} for jobs and `hetccl simulate --cost-model`)")
    finally:
        comm.close()
    return 0


def _entry(comm, model, table, complete) -> dict:
    from ..collectives import probe
    c = model.cost
    entry = {"links": tuning_file.links_key(model.link_classes), "ranks": comm.size, "local": comm.local_size,
             "hosts": len({x["host"] for x in comm.context.cards}), "placement": probe.placement(comm.context.engine, comm.size),
             "complete": complete, "cost": c.params(),
             "collectives": {}}
    bridges = bridge_prices_of(comm)
    if bridges:
        entry["bridges"] = bridges
    for coll, rows in table.items():
        sizes = sorted({r["size"] for r in rows})
        times, best, auto, modelled = {}, [], [], []
        for n in sizes:
            here = {r["variant"]: r["time_us"] for r in rows if r["size"] == n and r.get("time_us") is not None}
            forced = {k: v for k, v in here.items() if k != "auto"}
            for k, v in forced.items():
                times.setdefault(k, [None] * len(sizes))[sizes.index(n)] = v
            best.append(min(forced, key=forced.get) if forced else None)
            auto.append(here.get("auto"))
            modelled.append(_model_choice(comm, model, coll, n))
        entry["collectives"][coll] = {"sizes": sizes, "best": best, "times_us": times, "auto_us": auto,
                                      "model": [m[0] for m in modelled],
                                      "model_us": [None if m[1] is None else m[1] * 1e6 for m in modelled]}
    return entry


def bridge_prices_of(comm) -> dict:
    """{bridge kind: {collective: [[bytes, seconds], ...]}} the communicator's islands measured at
    creation (collectives/islands.py bridge_time)."""
    isl = comm.context.islands
    if isl is None:
        return {}
    from ..collectives.islands import COLLECTIVES, PRICE_FIELDS, price_points
    out = {}
    for i, island in enumerate(isl.islands):
        if island.bridged and isl.prices[i] is not None:
            pr = [float(x) for x in isl.prices[i]]
            out[island.kind] = {c: [list(q) for q in price_points(pr[PRICE_FIELDS * k:PRICE_FIELDS * (k + 1)])]
                                for k, c in enumerate(COLLECTIVES)}
    return out


def _report(comm, model, entry, out_path, stopped, left):
    print(f"hetccl tune: {comm.size} ranks ({entry['links']}, {entry['hosts']} host(s)); {model.describe()}")
    if stopped:
        print(f"# the budget ran out: {left} (collective, size) cell(s) not measured; the file says complete=false")
    for coll, t in entry["collectives"].items():
        print(f"\n# {coll}: before = the cost model's choice, after = the measured best (what jobs now run)")
        print(f"{'size':>10}  {'model choice':<20} {'predicted':>10} {'measured':>10}   "
              f"{'measured best':<20} {'time':>10}  {'gain':>6}")
        for k, n in enumerate(t["sizes"]):
            m, b = t["model"][k], t["best"][k]
            pred = t["model_us"][k]
            mt = t["times_us"].get(m, [None] * len(t["sizes"]))[k]
            bt = t["times_us"].get(b, [None] * len(t["sizes"]))[k] if b else None
            gain = f"{(mt / bt - 1) * 100:5.0f}%" if mt and bt else "    -"
            print(f"{fmt.format_size(n):>10}  {m:<20} {_us(pred):>10} {_us(mt):>10}   {b or '-':<20} {_us(bt):>10}  {gain:>6}")


def _us(v):
    return "-" if v is None else fmt.format_time(v)
