"""``hetccl bench``: nccl-tests-style sweeps of hetccl's collectives, and the shared sweep options.

Run under the launcher, one process per rank::

    hetccl run -n 2 -- hetccl bench -c allreduce,allgather -b 8 -e 256M -f 2 --json out.json
    hetccl run -n 2 -- python -m hetccl.benchmark.cli -c allreduce -b 8 -e 64M
    hetccl run -n 4 -- hetccl bench -c broadcast,reduce_scatter,alltoall,reduce,gather,scatter
    hetccl run -n 4 -- hetccl bench -c allgather --algo ring          # force one algorithm
    hetccl run -n 4 -- hetccl bench --algos all -c allreduce,allgather --json algos-n4.json
    mpirun -np 2 python -m hetccl bench --compare mpi,gloo --sizes 8,64K,1M,16M --plot peers.png
    hetccl run -n 2 -- hetccl bench --compare gloo --rounds 3          # gloo only (no mpirun)

``--compare mpi,gloo`` runs Open MPI (mpi4py) and torch's gloo in the same job and the same
rounds as hetccl and prints bench/run_all.py's comparison table (:mod:`.peer_compare`);
``--algos all`` times every algorithm of each collective (forced) and the tuner's choice in one
interleaved sweep and prints, per collective, whether the tuner is within 15% of the fastest
(:mod:`.compare`); ``bench/crossover.py`` plots the JSON.

The peer benchmarks (``bench/peers/mpi_bench.py``, ``bench/peers/gloo_bench.py``) use
:func:`add_sweep_arguments` and :func:`run_from_args` with their own adapters, so every library
gets the same options, the same method (:func:`hetccl.benchmark.runner.run_sweep`) and the same
output.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys

from . import compare
from . import format as fmt
from .runner import (ALLOCATIONS, DEFAULT_ALLOCATION, Adapter, cpu_binding, resolve_dtype,
                     result_document, run_sweep, write_json)

DEFAULT_COLLECTIVES = "allreduce,allgather"



def _tuner_of(comm):
    """The hetccl communicator's tuner (None for another library's communicator)."""
    ctx = getattr(comm, "context", None)
    return getattr(ctx, "tuner", None)

def add_sweep_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The sweep options shared by ``hetccl bench`` and the peer benchmarks."""
    p.add_argument("-c", "--collectives", default=DEFAULT_COLLECTIVES,
                   help=f"comma-separated: {', '.join(fmt.COLLECTIVES)} (default %(default)s)")
    p.add_argument("-b", "--minbytes", default="8", help="smallest size (default %(default)s)")
    p.add_argument("-e", "--maxbytes", default="256M", help="largest size (default %(default)s)")
    p.add_argument("-f", "--stepfactor", type=int, default=2,
                   help="multiply the size by this each step, e.g. 2 or 4 (default %(default)s)")
    p.add_argument("--sizes", default=None,
                   help="explicit comma-separated sizes instead of -b/-e/-f, e.g. 8,64K,1M,64M")
    p.add_argument("--reps", type=int, default=5,
                   help="timed repetitions per size; the median is reported (default %(default)s)")
    p.add_argument("--min-time", type=float, default=0.03,
                   help="seconds one repetition should last; sets the calls per repetition "
                        "(default %(default)s)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed calls before calibrating (default 5, or 2 above 16 MiB)")
    p.add_argument("--dtype", default="float32", help="element type (default %(default)s)")
    p.add_argument("--op", default="sum", help="reduction op: sum prod min max avg (default %(default)s)")
    p.add_argument("--no-interleave", action="store_true",
                   help="run all repetitions of a size back to back instead of interleaving the "
                        "repetitions of neighbouring sizes")
    p.add_argument("--group-bytes", default="512M",
                   help="buffer memory per rank for one group of interleaved sizes (default %(default)s)")
    p.add_argument("--alloc", choices=ALLOCATIONS, default=DEFAULT_ALLOCATION,
                   help="how the send and receive buffers are allocated, the same in every library: "
                        "'mapped' (default): each its own anonymous mapping, page-aligned, 2 MiB-"
                        "aligned from 4 MiB, numpy's huge-page advice; 'numpy': np.empty, placed "
                        "wherever glibc puts it in this process (hetccl/memory/mapped.py says why)")
    p.add_argument("--no-check", action="store_true", help="skip the correctness check (#wrong N/A)")
    p.add_argument("--json", metavar="FILE", default=None, help="write rows as JSON (rank 0)")
    return p


def add_algorithm_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--algo`` / ``--algos`` (libraries whose adapter can force an algorithm per call)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--algo", default=None, metavar="NAME",
                   help="force this algorithm for the whole sweep (per call, algorithm=NAME), e.g. "
                        "ring; or per collective: 'allreduce:ring;allgather:recursive_doubling'. "
                        "Collectives without that algorithm are skipped")
    g.add_argument("--algos", default=None, metavar="all|LIST",
                   help="run every size once per algorithm, forced, plus once with the tuner's "
                        "choice (auto), interleaved so all see the same machine; prints a table per "
                        "collective with auto's choice and a within15%% check. 'all' = every "
                        "algorithm the collective supports at this world size; or a comma-separated "
                        "list (may include auto)")
    p.add_argument("--tolerance", type=float, default=1.15,
                   help="with --algos: auto passes at a size when its time <= this x the fastest "
                        "forced algorithm's (default %(default)s)")
    return p


def parse_algo_spec(text):
    """``"ring"`` → {None: "ring"}; ``"allreduce:ring;allgather:rd"`` → {collective: name}."""
    text = (text or "").strip()
    if not text:
        return {}
    if ":" not in text:
        return {None: text}
    spec = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        coll, sep, name = part.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--algo entry {part!r} is not 'collective:algorithm'")
        spec[fmt.canonical(coll)] = name.strip()
    return spec


def variants_from_args(adapter, args, collective, sizes):
    """The variant labels one collective's sweep runs with (None: a plain sweep)."""
    algo = getattr(args, "algo", None)
    algos = getattr(args, "algos", None)
    canon = getattr(adapter, "canonical_algorithm", None) or (lambda name: name)
    if algo:
        spec = parse_algo_spec(algo)
        name = spec.get(collective, spec.get(None))
        return None if name is None else [canon(name)]
    if algos:
        if algos.strip().lower() == "all":
            algorithms = getattr(adapter, "algorithms", None)
            return [*(algorithms(collective, sizes) if algorithms else []), "auto"]
        return list(dict.fromkeys(canon(a.strip()) for a in algos.split(",") if a.strip()))
    return None


def sizes_from_args(args) -> list[int]:
    if args.sizes:
        return fmt.parse_sizes(args.sizes)
    return fmt.size_sweep(args.minbytes, args.maxbytes, args.stepfactor)


def collectives_from_args(args) -> list[str]:
    return [fmt.canonical(c) for c in args.collectives.split(",") if c.strip()]


def run_from_args(adapter, args, describe: str | None = None, argv=None, out=None, **meta) -> int:
    """Sweep every requested collective with *adapter*; print on rank 0; write JSON if asked.

    *meta* goes into the JSON document. Returns a process exit code: 0, or 1 if any element was
    wrong.
    """
    sizes = sizes_from_args(args)
    dtype = resolve_dtype(args.dtype)
    if hasattr(adapter, "alloc") and getattr(args, "alloc", None):
        adapter.allocation = args.alloc
    say = out or functools.partial(print, flush=True)
    tolerance = getattr(args, "tolerance", compare.TOLERANCE)
    all_rows, summaries = [], []
    skip_note = getattr(adapter, "variant_note", None)
    for i, coll in enumerate(collectives_from_args(args)):
        if adapter.rank == 0 and i:
            say("")
        variants = variants_from_args(adapter, args, coll, sizes)
        if variants == ["auto"]:   # --algos all on a library that cannot force algorithms
            variants = None
        if adapter.rank == 0 and variants and skip_note:
            note = skip_note(coll, variants)
            if note:
                say(note)
        rows = run_sweep(adapter, coll, sizes, dtype=dtype, op=args.op, reps=args.reps,
                         min_time=args.min_time, warmup=args.warmup,
                         check=not args.no_check, out=out,
                         interleave=not args.no_interleave,
                         group_bytes=fmt.parse_size(args.group_bytes), variants=variants)
        all_rows += rows
        if variants and "auto" in variants and len(variants) > 1 and rows:
            summary = compare.summarize(rows, tolerance)
            summaries += summary
            if adapter.rank == 0:
                say("")
                for line in compare.format_summary(summary, compare.algorithms_of(rows, coll), coll,
                                                   adapter.size, tolerance, adapter.name):
                    say(line)
    if adapter.rank == 0 and summaries and len({e["collective"] for e in summaries}) > 1:
        say("")
        say(f"# {adapter.name} {adapter.size} ranks, auto vs the fastest forced algorithm:")
        for coll in dict.fromkeys(e["collective"] for e in summaries):
            say(compare.verdict([e for e in summaries if e["collective"] == coll], coll,
                                adapter.size, tolerance))
    binding = cpu_binding(adapter) if args.json else None     # collective: every rank takes part
    if adapter.rank == 0 and args.json:
        meta = dict(meta, binding=binding)
        if summaries:
            meta = dict(meta, algos_summary=summaries, tolerance=tolerance)
        doc = result_document(adapter, all_rows, argv=argv, describe=describe,
                              options={"sizes": sizes, "dtype": dtype.name, "op": args.op,
                                       "reps": args.reps, "min_time": args.min_time,
                                       "interleave": not args.no_interleave,
                                       "alloc": getattr(adapter, "allocation", None),
                                       "algo": getattr(args, "algo", None),
                                       "algos": getattr(args, "algos", None)},
                              **meta)
        write_json(args.json, doc)
    bad = any(r.get("wrong") for r in all_rows)
    return 1 if bad else 0


# ------------------------------------------------------------------ hetccl adapter


class HetcclAdapter(Adapter):
    """hetccl's communicator behind the runner's adapter interface (numpy buffers, out-of-place).

    Calls, as a user writes them (root 0 where there is one): ``allreduce(send, op=, out=)``,
    ``allgather(send, out=)``, ``reduce_scatter(send, out=, op=)``, ``alltoall(send, out=)``,
    ``broadcast(buf, root=0)`` (in place), ``reduce(send, root=0, op=, out=)``,
    ``gather(send, root=0, out=)``, ``scatter(send, out, root=0)``; plus ``barrier()``,
    ``last_algorithm``, ``describe()``, ``explain()``, ``close()``. A collective the communicator
    lacks is skipped.

    Variants (``--algo``/``--algos``) are algorithm names passed as ``algorithm=`` on every call,
    or ``"auto"`` (no ``algorithm=``: the tuner decides, unless HETCCL_ALGO forces it). The list of
    algorithms and what the tuner predicts come from ``comm.context.tuner.table(collective, nbytes)``.
    A collective whose method takes no ``algorithm=`` (alltoall, gather, scatter have a single
    algorithm each) runs its one algorithm when forced to it.
    """
    name = "hetccl"
    extra_columns = ("algo",)
    in_place = frozenset({"broadcast"})
    _METHODS = {"allreduce": "allreduce", "allgather": "allgather",
                "reduce_scatter": "reduce_scatter", "alltoall": "alltoall",
                "broadcast": "broadcast", "reduce": "reduce", "gather": "gather",
                "scatter": "scatter"}

    def __init__(self, comm=None, module=None):
        """*comm* defaults to ``hetccl.init()``; *module* (where ReduceOp lives) to ``hetccl``."""
        import importlib

        import numpy as np
        self._np = np
        self._hetccl = module if module is not None else importlib.import_module("hetccl")
        self.comm = comm if comm is not None else self._hetccl.init()
        self.rank = self.comm.rank
        self.size = self.comm.size
        self._one = np.zeros(1, dtype=np.float64)
        self._one_out = np.zeros(1, dtype=np.float64)
        self._takes_algorithm = {}

    def _op(self, op):
        h = self._hetccl
        name = str(getattr(op, "name", op)).upper()
        enum = getattr(h, "ReduceOp", None)
        if enum is not None:
            try:
                return enum[name]
            except KeyError:
                pass
        return getattr(h, name)

    def supports(self, collective, dtype, op):
        method = self._METHODS[collective]
        if not hasattr(self.comm, method):
            return f"hetccl's communicator has no {method}() yet"
        return True

    # ---------------------------------------------------------------- algorithms
    def _table(self, collective, nbytes):
        """[(name, predicted seconds or None if it cannot run here)] from the tuner (empty without
        one). An infinite price counts as cannot run: composed (topology) algorithms are priced so
        on a communicator they cannot help, where forcing them falls back to a flat one."""
        tuner = _tuner_of(self.comm)
        if tuner is None:
            return []
        return [(a.name, c if c is None or math.isfinite(c) else None)
                for a, c in tuner.table(collective, int(nbytes))]

    def algorithms(self, collective, sizes=None) -> list[str]:
        """The algorithms of *collective* supported at this world size for at least one size."""
        sizes = list(sizes or [1 << 20])
        names = []
        for nbytes in sizes:
            for name, cost in self._table(collective, nbytes):
                if cost is not None and name not in names:
                    names.append(name)
        return names

    def canonical_algorithm(self, name: str) -> str:
        """The registry's name for an alias (``rd`` → ``recursive_doubling``)."""
        try:
            from hetccl.collectives.registry import ALIASES
        except ImportError:
            return name
        return ALIASES.get(name, name)

    def supports_variant(self, collective, nbytes, variant):
        if variant == "auto":
            return True
        table = self._table(collective, nbytes)
        if not table:
            return True           # no tuner to ask: let the call decide
        for name, cost in table:
            if name == variant:
                return True if cost is not None else f"{variant} does not run on these {self.size} ranks"
        return f"{collective} has no algorithm {variant!r} (choose from " \
               f"{', '.join(n for n, _ in table)})"

    def variant_note(self, collective, variants):
        """A line to print before a sweep with variants, or None."""
        tuner = _tuner_of(self.comm)
        forced = getattr(tuner, "forced", {}) or {}
        if "auto" in variants and collective in forced:
            return (f"# note: HETCCL_ALGO forces {collective}:{forced[collective]}, so 'auto' is "
                    f"that algorithm, not the tuner's choice")
        return None

    def _algorithm_kw(self, method_name, variant):
        if variant in (None, "auto"):
            return {}
        takes = self._takes_algorithm.get(method_name)
        if takes is None:
            import inspect
            try:
                params = inspect.signature(getattr(self.comm, method_name)).parameters
                takes = "algorithm" in params or any(
                    p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            except (TypeError, ValueError):
                takes = True
            self._takes_algorithm[method_name] = takes
        if takes:
            return {"algorithm": variant}
        return {}                 # a single-algorithm collective: supports_variant checked the name

    # ---------------------------------------------------------------- calls
    def bind(self, collective, bufs, op, variant=None):
        c = self.comm
        s, r = bufs.send, bufs.recv
        kw = self._algorithm_kw(self._METHODS[collective], variant)
        P = functools.partial
        if collective == "allreduce":
            return P(c.allreduce, s, op=self._op(op), out=r, **kw)
        if collective == "allgather":
            return P(c.allgather, s, out=r, **kw)
        if collective == "reduce_scatter":
            return P(c.reduce_scatter, s, op=self._op(op), out=r, **kw)
        if collective == "alltoall":
            return P(c.alltoall, s, out=r, **kw)
        if collective == "broadcast":
            return P(c.broadcast, s, root=0, **kw)
        if collective == "reduce":
            return P(c.reduce, s, op=self._op(op), out=r, root=0, **kw)
        if collective == "gather":
            return P(c.gather, s, root=0, out=r, **kw)
        if collective == "scatter":
            return P(c.scatter, s, r, root=0, **kw)
        raise ValueError(collective)

    def sync(self):
        self.comm.barrier()

    def _reduce_scalar(self, x, opname):
        self._one[0] = x
        self.comm.allreduce(self._one, op=self._op(opname), out=self._one_out)
        return float(self._one_out[0])

    def max_over_ranks(self, x):
        return self._reduce_scalar(x, "MAX")

    def sum_over_ranks(self, x):
        return self._reduce_scalar(x, "SUM")

    def extras(self, collective, bufs, op, variant=None):
        # last_algorithm belongs to the last call, and the runner's max_over_ranks came after the
        # timed ones: make one more call of this row (every rank does, so it stays collective)
        self.bind(collective, bufs, op, variant=variant)()
        extra = {"algo": getattr(self.comm, "last_algorithm", None) or "?"}
        if variant is not None:
            nbytes = bufs.layout.size
            table = dict(self._table(collective, nbytes))
            if variant == "auto":
                tuner = _tuner_of(self.comm)
                if tuner is not None:
                    extra["predicted_choice"] = tuner.select(collective, nbytes).name
                extra["predicted_us"] = {k: (None if v is None else v * 1e6) for k, v in table.items()}
            elif table.get(variant) is not None:
                extra["predicted_us"] = table[variant] * 1e6
        return extra

    def describe(self) -> str | None:
        d = getattr(self.comm, "describe", None)
        return d() if d else None

    def explain(self, collective, nbytes) -> str | None:
        e = getattr(self.comm, "explain", None)
        return e(collective, nbytes) if e else None

    def close(self):
        c = getattr(self.comm, "close", None)
        if c:
            c()


def build_parser(prog="hetccl bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="nccl-tests-style sweep of hetccl collectives. Run one process per rank, "
                    "e.g. `hetccl run -n 2 -- hetccl bench -c allreduce -b 8 -e 64M`.",
    )
    add_sweep_arguments(p)
    add_algorithm_arguments(p)
    p.add_argument("--explain", action="store_true",
                   help="print comm.explain(collective, size) for each collective and size (rank 0)")
    p.add_argument("--no-describe", action="store_true",
                   help="don't print the transport matrix (comm.describe()) before the tables")
    p.add_argument("--compare", metavar="PEERS", default=None,
                   help="also run these peers in the same job and rounds: mpi (needs mpirun), gloo "
                        "(needs torch); prints the table of bench/run_all.py")
    p.add_argument("--rounds", type=int, default=3, help="with --compare: rounds (default %(default)s)")
    p.add_argument("--plot", metavar="PNG", default=None, help="with --compare: draw the comparison")
    return p


def bench_main(argv=None) -> int:
    """Entry point of ``hetccl bench``; returns the exit code."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.compare and (args.algo or args.algos):
        print("hetccl bench: --compare runs each library's own choice; drop --algo/--algos", file=sys.stderr)
        return 2
    adapter = HetcclAdapter()
    if args.compare:
        from .peer_compare import run_compare
        try:
            return run_compare(adapter, args.compare.split(","), args, collectives_from_args(args),
                               sizes_from_args(args), functools.partial(print, flush=True))
        finally:
            adapter.close()
    try:
        describe = adapter.describe()
        if adapter.rank == 0:
            if describe and not args.no_describe:
                print(describe, flush=True)
                print(flush=True)
            if args.explain:
                for coll in collectives_from_args(args):
                    for nbytes in sizes_from_args(args):
                        text = adapter.explain(coll, nbytes)
                        if text:
                            print(f"# explain {coll} {fmt.format_size(nbytes)}:\n{text}", flush=True)
                print(flush=True)
        return run_from_args(adapter, args, describe=describe, argv=["hetccl", "bench", *argv])
    finally:
        adapter.close()


if __name__ == "__main__":
    sys.exit(bench_main(sys.argv[1:]))
