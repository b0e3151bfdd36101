"""``hetccl simulate``: what the runtime would run on a described cluster, and how long it takes.

Every algorithm that applies (flat, hierarchical, topology ring, islands) is priced per size by
the runtime's own planners, the runtime's choice is marked and explained (comm.explain()'s
reasons), and ``--what-if`` sets two clusters or two settings side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

EXAMPLES = """examples (from nothing to a plot of a 16,384-rank mixed-vendor allreduce, three commands):
  hetccl topo --synth ranks=16384,accel=8,vendors=nvidia:60+hygon:25+ascend:15,nics=8,nic_gbps=400,oversub=3 -o cluster.json
  hetccl simulate --topo cluster.json --collective allreduce --sizes 1K..4G --plot allreduce.png
  hetccl simulate --topo cluster.json --collective allreduce --sizes 1K..4G --what-if oversub=1 --plot whatif.png

more:
  hetccl simulate --topo cluster.json --sizes 1M,1G --explain 1G      # the full cost tables at 1 GiB
  hetccl simulate --topo cluster.json --what-if nics=4 --json -         # 4 rails instead of 8, as JSON
  hetccl simulate --topo cluster.json --what-if other.json              # two clusters side by side
  hetccl simulate --topo mine.json --cost-model hetccl-tuning.json      # prices measured by `hetccl tune`

sizes: A..B doubles from A to B (A..B:4 multiplies by 4), or a comma list (64K,1M,1G).
--what-if: another topology file, or key=value changes: any `hetccl topo --synth` key (the file must
have been made by --synth), load=RANKS_PER_CPU, cost-model=FILE, algo=COLLECTIVE:ALGORITHM."""


def parse_sizes(text) -> list[int]:
    from ..benchmark import format as fmt
    text = text.strip()
    if ".." in text:
        rng, _, factor = text.partition(":")
        a, _, b = rng.partition("..")
        return fmt.size_sweep(a, b, int(factor or 2))
    return fmt.parse_sizes(text)


def _parser():
    p = argparse.ArgumentParser(prog="hetccl simulate", description=__doc__.split("\n\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--topo", metavar="FILE", default=None,
                   help="topology file (`hetccl topo --synth` or `--dump` writes one; default $HETCCL_TOPO_FILE)")
    p.add_argument("-c", "--collective", default="allreduce",
                   help="allreduce, allgather, reduce_scatter, broadcast, reduce, alltoall (default %(default)s)")
    p.add_argument("--sizes", default="1K..4G", help="sizes in bytes (default %(default)s)")
    p.add_argument("--ranks", type=int, default=None, help="simulate the file's first N ranks only")
    p.add_argument("--cost-model", metavar="FILE", default=None,
                   help="a tuning file (`hetccl tune`); default $HETCCL_TUNING_FILE, else built-in defaults")
    p.add_argument("--load", type=float, default=0.0,
                   help="ranks per CPU core on the most crowded machine (>1: oversubscribed; default 0)")
    p.add_argument("--algo", default="", help="force algorithms like HETCCL_ALGO, e.g. allreduce:ring")
    p.add_argument("--transports", default=None,
                   help="as HETCCL_TRANSPORTS for the simulated job, e.g. tcp or ^c2c (default: all)")
    p.add_argument("--fresh-buffers", action="store_true",
                   help="every call passes new arrays (default: a loop reusing its buffers, which the runtime "
                        "registers automatically on one all-c2c host from 32 MiB)")
    p.add_argument("--what-if", metavar="FILE|K=V,...", default=None, help="a second cluster or setting, side by side")
    p.add_argument("--json", metavar="FILE", default=None, help="write the results as JSON ('-' for stdout)")
    p.add_argument("--plot", metavar="PNG", default=None, help="time and bus bandwidth against size")
    p.add_argument("--explain", metavar="SIZE", action="append", default=[],
                   help="print the runtime's cost tables (as comm.explain()) at this size; repeatable")
    return p


def load_topology(path, ranks=None):
    """(Topology, the raw document's synth settings or None)."""
    from ..errors import InvalidUsage
    from ..topology import topofile
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError as e:
        raise InvalidUsage(f"--topo {path}: {e.strerror}; write one with `hetccl topo --synth SPEC -o {path}`") from None
    except json.JSONDecodeError as e:
        raise InvalidUsage(f"--topo {path}: not JSON ({e})") from None
    topo = topofile.from_dict(d, path)
    if ranks is not None:
        if not 1 <= ranks <= len(topo.ranks):
            raise InvalidUsage(f"--ranks {ranks}: the file describes {len(topo.ranks)} ranks")
        from .group import sub_topology
        topo = sub_topology(topo, range(ranks))
    return topo, d.get("synth")


def run_one(topo, collective, sizes, cost_model, load, algo, transports=None, reused=True):
    from .costs import model_for
    from .group import Group
    from .sweep import simulate
    model, _, bridges = model_for(topo, load, cost_model, transports)
    group = Group(topo, model, load=load, forced_spec=algo, bridge_prices=bridges, transports=transports,
                  reused=reused)
    return simulate(group, collective, sizes), group


def _what_if(args, synth_settings):
    """(topology, cost model, load, algo, label) of the B side."""
    from ..errors import InvalidUsage
    from ..topology import synth, topofile
    spec = args.what_if
    if os.path.isfile(spec):
        topo, _ = load_topology(spec, args.ranks)
        return topo, args.cost_model, args.load, args.algo, spec
    changes = synth.parse_changes(spec)
    cost_model = changes.pop("cost-model", args.cost_model)
    load = float(changes.pop("load", args.load))
    algo = changes.pop("algo", args.algo)
    if changes:
        if not synth_settings:
            raise InvalidUsage(f"--what-if {spec}: {args.topo} was not made by `hetccl topo --synth`, so its "
                               f"{', '.join(changes)} cannot be changed; give a second topology file instead")
        d = synth.generate(synth.with_changes(synth_settings, ",".join(f"{k}={v}" for k, v in changes.items())))
        topo = topofile.from_dict(d, f"{args.topo} with {spec}")
        if args.ranks:
            from .group import sub_topology
            topo = sub_topology(topo, range(args.ranks))
    else:
        topo, _ = load_topology(args.topo, args.ranks)
    return topo, cost_model, load, algo, spec


def simulate_main(argv=None) -> int:
    from ..benchmark import format as fmt
    from ..errors import InvalidUsage
    from . import report
    args = _parser().parse_args(argv)
    try:
        path = args.topo or os.environ.get("HETCCL_TOPO_FILE")
        if not path:
            raise InvalidUsage("give --topo FILE (write one with `hetccl topo --synth SPEC -o FILE`)")
        args.topo = path
        sizes = parse_sizes(args.sizes)
        from ..collectives.tuner import parse_forced
        parse_forced(args.algo, "--algo")
        from ..collectives import registry
        if not registry.for_collective(args.collective):
            raise InvalidUsage(f"unknown collective {args.collective!r}")
        topo, synth_settings = load_topology(path, args.ranks)
        doc, group = run_one(topo, args.collective, sizes, args.cost_model, args.load, args.algo, args.transports,
                             not args.fresh_buffers)
        other = None
        if args.what_if:
            btopo, bcost, bload, balgo, label = _what_if(args, synth_settings)
            other, _ = run_one(btopo, args.collective, sizes, bcost, bload, balgo, args.transports,
                               not args.fresh_buffers)
            other["label"] = label
    except InvalidUsage as e:
        print(f"hetccl simulate: {e}", file=sys.stderr)
        return 2
    to_stdout_json = args.json == "-"
    if not to_stdout_json:
        print(report.table(doc))
        if other is not None:
            print()
            print(report.side_by_side(doc, other, path, other["label"]))
        for s in args.explain:
            n = fmt.parse_size(s)
            print(f"\n# explain {args.collective} {fmt.format_size(n)} (the runtime's cost tables):")
            print(group.explain(args.collective, n))
    if args.json:
        out = dict(doc, what_if=other) if other is not None else doc
        text = json.dumps(out, indent=1)
        if to_stdout_json:
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
            print(f"wrote {args.json}")
    if args.plot:
        try:
            report.plot(doc, args.plot, other, other["label"] if other else None)
        except ImportError:
            print("hetccl simulate: --plot needs matplotlib: pip install 'hetccl[simulate]'", file=sys.stderr)
            return 2
        if not to_stdout_json:
            print(f"wrote {args.plot}")
    return 0
