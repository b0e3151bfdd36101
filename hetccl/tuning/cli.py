"""``hetccl tune``: measure this job's links and algorithms and write the tuning file.

    hetccl tune                                  2 local ranks, 60 s, ./hetccl-tuning.json
    hetccl tune -n 4 --budget 30s -o tuning.json
    hetccl run -n 4 -- python -m hetccl tune     # under any launcher: the job's own ranks
    mpirun -np 8 python -m hetccl tune -o /shared/tuning.json
    hetccl tune --cache-only -n 2,4              # only re-measure the per-host cost-model cache
    hetccl tune --show | --clear                 # the per-host cache

Started without a launcher it launches ``hetccl run -n N`` of itself for each N of ``-n``. Each
job re-measures the cost model (alpha, beta, gamma of the link classes it sees), times every
algorithm of each collective at each size (interleaved, within ``--budget``), and rank 0 merges
one entry into the file (per link classes, ranks and ranks per host), prints the before/after
table (the cost model's choice against the measured best per size) and where the file is.
Jobs read the file through ``HETCCL_TUNING_FILE``, ``hetccl simulate`` through ``--cost-model``
(or the same variable). Run it when the machine is quiet: it measures the moment it runs.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from ..collectives import tuning_file


def parse_budget(text) -> float:
    """'60s', '2m', '90' -> seconds."""
    t = str(text).strip().lower()
    mult = 60.0 if t.endswith("m") else 1.0
    try:
        v = float(t.rstrip("sm")) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget {text!r}: a time such as 60s or 2m") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("--budget must be positive")
    return v


def _parser():
    p = argparse.ArgumentParser(prog="hetccl tune", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--show", action="store_true", help="print the per-host cost-model cache")
    g.add_argument("--clear", action="store_true", help="delete the per-host cost-model cache")
    g.add_argument("--cache-only", action="store_true",
                   help="only re-measure the cost-model cache (no algorithm sweep, no tuning file)")
    p.add_argument("-n", "--nranks", default=None, help="comma-separated local rank counts when started "
                   "without a launcher (default 2)")
    p.add_argument("-o", "--output", default=None,
                   help=f"the tuning file (default ${tuning_file.ENV}, else ./hetccl-tuning.json)")
    p.add_argument("--budget", type=parse_budget, default=60.0, help="time for the algorithm sweep of one "
                   "job, e.g. 60s or 2m (default 60s); what does not fit is left out, and said")
    p.add_argument("-c", "--collectives", default=",".join(_DEFAULT_COLLS()),
                   help="comma-separated collectives to time (default %(default)s)")
    p.add_argument("--sizes", default=None, help="comma-separated sizes (default 8,1K,16K,64K,256K,1M,4M,16M,64M)")
    p.add_argument("--transports", default=None, help="as HETCCL_TRANSPORTS for the measuring ranks")
    p.add_argument("--timeout", type=float, default=None, help="seconds per job (default budget x 3 + 120)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


def _DEFAULT_COLLS():
    from .measure import DEFAULT_COLLECTIVES
    return DEFAULT_COLLECTIVES


def tune_main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from . import cache_cli
    if args.show or args.clear:
        return cache_cli.tune_main(["--show"] if args.show else ["--clear"])
    if args.cache_only:
        return cache_cli.tune_main([*(["-n", args.nranks] if args.nranks else []),
                                    *(["--transports", args.transports] if args.transports else [])])
    out = os.path.abspath(args.output or os.environ.get(tuning_file.ENV) or "hetccl-tuning.json")
    from ..benchmark import format as fmt
    sizes = fmt.parse_sizes(args.sizes or "8,1K,16K,64K,256K,1M,4M,16M,64M")
    colls = [fmt.canonical(c) for c in args.collectives.split(",") if c.strip()]
    from ..bootstrap.env import detect
    if args.child or detect().size > 1:               # a rank of a job: measure
        from .measure import run
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        return run(colls, sizes, args.budget, out, quiet=args.quiet)
    counts = [int(x) for x in (args.nranks or "2").split(",") if x.strip()]
    if any(n < 2 for n in counts):
        print("hetccl tune: -n needs rank counts >= 2 (a single rank has nothing to measure)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if args.transports:
        env["HETCCL_TRANSPORTS"] = args.transports
    env.pop(tuning_file.ENV, None)          # measure the model itself, not what an old file says
    rc = 0
    timeout = args.timeout or args.budget * 3 + 120
    for n in counts:
        cmd = [sys.executable, "-m", "hetccl", "run", "-n", str(n), "--timeout", str(timeout), "--",
               sys.executable, "-m", "hetccl", "tune", "--child", "-o", out, "--budget", f"{args.budget}s",
               "-c", ",".join(colls), "--sizes", ",".join(map(str, sizes)), *(["--quiet"] if args.quiet else [])]
        rc = subprocess.call(cmd, env=env) or rc
    return rc
