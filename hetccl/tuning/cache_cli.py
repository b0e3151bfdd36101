"""``hetccl tune``: show, clear or re-measure the per-host cost-model cache (collectives/probe.py).

    hetccl tune                 re-measure this host with 2 ranks (or -n N,M: those rank counts)
    hetccl tune -n 2,4 --transports tcp
    hetccl tune --show          the cache file and its entries
    hetccl tune --clear         delete the cache file (every communicator probes again once)

Re-measuring removes this host's entries for those rank counts, then starts ``hetccl run -n N`` of
this module's ``--child`` mode, whose ``hetccl.init()`` runs the probe (or, if another job wrote
the entry meanwhile, probes again) and writes the new entry; rank 0 prints the model and where
each collective's choice changes. Run it
when the machine is quiet: the probe measures the moment it runs (a busy machine gives a slow
alpha, which the cache would keep). A full tuning file (every algorithm timed) is a later issue.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

SIZES = [8 << (2 * i) for i in range(13)] + [256 << 20]     # 8 B .. 256 MiB, x4


def _parser():
    p = argparse.ArgumentParser(prog="hetccl tune", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--show", action="store_true", help="print the cache file and its entries")
    g.add_argument("--clear", action="store_true", help="delete the cache file")
    p.add_argument("-n", "--nranks", default=None,
                   help="comma-separated local rank counts to re-measure (default 2)")
    p.add_argument("--transports", default=None,
                   help="as HETCCL_TRANSPORTS for the measuring ranks, e.g. tcp (default: all)")
    p.add_argument("--timeout", type=float, default=120, help="seconds per rank count")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p


def _show(probe) -> int:
    from ..collectives.cost_model import LinkCost
    path = probe.cache_path()
    entries = probe.read_entries(path)
    print(f"cost-model cache: {path} ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'}; "
          f"this build is {probe.build_id()})")
    for key in sorted(entries):
        e = entries[key]
        raw = e.get("raw") or {}
        share = max(1.0, float(e.get("local") or 1) / max(1.0, float(e.get("cpus") or 1)))
        print(f"  {e.get('links')} local={e.get('local')} cpus={e.get('cpus')} host={e.get('host')} "
              f"version={e.get('version')}\n"
              f"    {LinkCost.from_params(e, share=share).describe_params()}; probe {e.get('probe_s', 0) * 1e3:.0f} ms, "
              f"load {e.get('loadavg')}; raw (us) " +
              ", ".join(f"{k[:-3]}={v:.3g}" for k, v in raw.items() if k.endswith("_us")))
    return 0


def _child() -> int:
    import hetccl
    from ..version import __version__
    from ..benchmark.format import format_size
    from ..collectives import probe
    from ..collectives.cost_model import MEASURED
    from ..collectives.tuner import Tuner
    comm = hetccl.init()
    try:
        t = comm.context.tuner
        if t.model.origin != MEASURED:     # another job wrote the entry since we dropped it
            t = Tuner(comm.size, probe.remeasure(comm))
        if comm.rank == 0:
            print(f"hetccl {__version__}, {comm.size} ranks: {t.model.describe()}")
            for coll in ("allreduce", "allgather", "reduce_scatter", "broadcast", "reduce", "alltoall"):
                steps = t.choices(coll, SIZES)
                if steps:
                    print(f"  {coll:<15} " + "; ".join(f"{name} from {format_size(n)}" for n, name in steps))
    finally:
        comm.close()
    return 0


def tune_main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from ..collectives import probe, single_copy_probe
    from ..topology.host import host_id
    if args.child:
        return _child()
    if args.show:
        return _show(probe)
    if args.clear:
        n = probe.clear()
        print(f"removed {probe.cache_path()} ({n} entr{'y' if n == 1 else 'ies'})")
        single_copy_probe.clear()
        return 0
    counts = [int(x) for x in (args.nranks or "2").split(",") if x.strip()]
    if any(n < 2 for n in counts):
        print("hetccl tune: -n needs rank counts >= 2 (a single rank has nothing to measure)",
              file=sys.stderr)
        return 2
    env = dict(os.environ)
    if args.transports:
        env["HETCCL_TRANSPORTS"] = args.transports
    rc = 0
    for n in counts:
        removed = probe.clear(host=host_id(), local=n)
        single_copy_probe.clear(host=host_id(), local=n)
        print(f"# re-measuring {n} ranks on this host (dropped {removed} cached entr"
              f"{'y' if removed == 1 else 'ies'})", flush=True)
        cmd = [sys.executable, "-m", "hetccl", "run", "-n", str(n), "--timeout", str(args.timeout),
               "--", sys.executable, "-m", "hetccl.tuning.cache_cli", "--child"]
        rc = subprocess.call(cmd, env=env) or rc
    print(f"cache: {probe.cache_path()}")
    return rc


if __name__ == "__main__":
    sys.exit(tune_main())
