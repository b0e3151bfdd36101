"""``hetccl bench``: nccl-tests-style sweeps of hetccl's collectives, and the shared sweep options.

Run under the launcher, one process per rank::

    hetccl run -n 2 -- hetccl bench -c allreduce,allgather -b 8 -e 256M -f 2 --json out.json
    hetccl run -n 2 -- python -m hetccl.benchmark.cli -c allreduce -b 8 -e 64M

The peer benchmarks (``bench/peers/mpi_bench.py``, ``bench/peers/gloo_bench.py``) use
:func:`add_sweep_arguments` and :func:`run_from_args` with their own adapters, so every library
gets the same options, the same method (:func:`hetccl.benchmark.runner.run_sweep`) and the same
output.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

from . import format as fmt
from .runner import Adapter, resolve_dtype, result_document, run_sweep, write_json

DEFAULT_COLLECTIVES = "allreduce,allgather"


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
    p.add_argument("--no-check", action="store_true", help="skip the correctness check (#wrong N/A)")
    p.add_argument("--json", metavar="FILE", default=None, help="write rows as JSON (rank 0)")
    return p


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
    all_rows = []
    for i, coll in enumerate(collectives_from_args(args)):
        if adapter.rank == 0 and i:
            (out or functools.partial(print, flush=True))("")
        all_rows += run_sweep(adapter, coll, sizes, dtype=dtype, op=args.op, reps=args.reps,
                              min_time=args.min_time, warmup=args.warmup,
                              check=not args.no_check, out=out,
                              interleave=not args.no_interleave,
                              group_bytes=fmt.parse_size(args.group_bytes))
    if adapter.rank == 0 and args.json:
        doc = result_document(adapter, all_rows, argv=argv, describe=describe,
                              options={"sizes": sizes, "dtype": dtype.name, "op": args.op,
                                       "reps": args.reps, "min_time": args.min_time,
                                       "interleave": not args.no_interleave},
                              **meta)
        write_json(args.json, doc)
    bad = any(r.get("wrong") for r in all_rows)
    return 1 if bad else 0


# ------------------------------------------------------------------ hetccl adapter


class HetcclAdapter(Adapter):
    """hetccl's communicator behind the runner's adapter interface (numpy buffers, out-of-place).

    Uses: ``hetccl.init()``, ``comm.rank/size``, ``comm.allreduce(send, op=, out=)``,
    ``comm.allgather(send, out=)``, ``comm.barrier()``, ``comm.last_algorithm``,
    ``comm.describe()``, ``comm.explain(collective, nbytes)``, ``comm.close()``. reduce_scatter,
    broadcast, alltoall and reduce are used when the communicator has them, with the same
    ``(send, [op=], out=)`` / ``(buf, root=)`` conventions.
    """
    name = "hetccl"
    extra_columns = ("algo",)
    in_place = frozenset({"broadcast"})

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
        method = {"allreduce": "allreduce", "allgather": "allgather",
                  "reduce_scatter": "reduce_scatter", "alltoall": "alltoall",
                  "broadcast": "broadcast", "reduce": "reduce"}[collective]
        if not hasattr(self.comm, method):
            return f"hetccl's communicator has no {method}() yet"
        return True

    def bind(self, collective, bufs, op):
        c = self.comm
        s, r = bufs.send, bufs.recv
        if collective == "allreduce":
            return functools.partial(c.allreduce, s, op=self._op(op), out=r)
        if collective == "allgather":
            return functools.partial(c.allgather, s, out=r)
        if collective == "reduce_scatter":
            return functools.partial(c.reduce_scatter, s, op=self._op(op), out=r)
        if collective == "alltoall":
            return functools.partial(c.alltoall, s, out=r)
        if collective == "broadcast":
            return functools.partial(c.broadcast, s, root=0)
        if collective == "reduce":
            return functools.partial(c.reduce, s, op=self._op(op), out=r, root=0)
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

    def extras(self, collective, bufs, op):
        # last_algorithm belongs to the last call, and the runner's max_over_ranks came after the
        # timed ones: make one more call of this row (every rank does, so it stays collective)
        self.bind(collective, bufs, op)()
        return {"algo": getattr(self.comm, "last_algorithm", None) or "?"}

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
    p.add_argument("--explain", action="store_true",
                   help="print comm.explain(collective, size) for each collective and size (rank 0)")
    p.add_argument("--no-describe", action="store_true",
                   help="don't print the transport matrix (comm.describe()) before the tables")
    return p


def bench_main(argv=None) -> int:
    """Entry point of ``hetccl bench``; returns the exit code."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    adapter = HetcclAdapter()
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
