"""The ``hetccl`` command: run (local launcher), bench (nccl-tests style), doctor (what works here),
topo (this host as the topology layer sees it, or a described cluster), tune (measure and write the
tuning file), simulate (what the runtime would run on a described cluster)."""
import sys

USAGE = """usage: hetccl <command> [args]

commands:
  run -n N [--] cmd ...   launch N local ranks of cmd (sets rank/size/store/secret for hetccl.init());
                          --keep-going: a rank that dies stops no one (docs/launching.md)
  bench [options]         nccl-tests style tables of any collective; --algos all compares every
                          algorithm with the tuner's choice (run it under `hetccl run`)
  doctor                  what hetccl finds on this machine: native core, transports, interfaces,
                          vendor libraries (NCCL family, HCCL, MPI) and the islands they would form
  doctor --flight FILE|DIR
                          dumped flight records (SIGUSR1 writes them): the ranks' last collectives
                          side by side, and which rank a hang waits for
  topo [--dump FILE] [--measure] [--json] [--synth SPEC -o FILE]
                          the topology hetccl sees: hosts, NUMA, PCI switches, accelerators, NICs,
                          coherent links, transport per pair; --dump writes the HETCCL_TOPO_FILE
                          format; --measure times the links (under `hetccl run -n N`); --synth
                          writes the file of a described cluster (hosts, vendors, rails, tiers)
  secret                  print a fresh job secret (64 hex digits) for HETCCL_SECRET_FILE:
                          `(umask 077; hetccl secret > ~/.hetccl-secret)`
  tune [-n N] [--budget 60s] [-o FILE] [--cache-only | --show | --clear]
                          measure the links and algorithms of a job (under any launcher) and write
                          the tuning file (HETCCL_TUNING_FILE) jobs and simulate read
  simulate --topo FILE [-c allreduce] [--sizes 1K..4G] [--what-if ...] [--plot PNG] [--json FILE]
                          every algorithm's predicted time on a cluster, the runtime's choice and why

  `hetccl <command> --help` shows each command's options and examples.
"""


def doctor_main(argv) -> int:
    if argv and argv[0] == "--flight":
        from .flight.doctor import main
        return main(argv[1:])
    import os
    import platform

    from .version import __version__
    from .topology.host import host_id
    from .transports import rows
    from .transports.netif import choose_address, interfaces
    print(f"hetccl {__version__} on Python {platform.python_version()} ({platform.machine()})")
    try:
        from ._native import engine, kernels  # noqa: F401
        print("native core: ok")
    except ImportError as e:
        print(f"native core: MISSING ({e}); reinstall with `pip install .`")
        return 1
    print(f"host id: {host_id()}")
    try:
        from .topology.cards import card_entry, model_of
        card = {"rank": 0, "host": host_id(), "ifname": choose_address()[0], "topo": card_entry("w", 0)}
        print(f"topology: {model_of([card]).summary()}")
    except Exception as e:                 # doctor reports, it does not fail on a topology problem
        print(f"topology: unavailable ({e})")
    print(f"cpus available: {len(os.sched_getaffinity(0))}")
    print("transports (preference: " + " > ".join(t.name for t in rows()) + "; HETCCL_TRANSPORTS="
          f"{os.environ.get('HETCCL_TRANSPORTS', '')!r}):")
    for t in rows()[1:]:
        print(f"  {t.name:<5} {'available' if t.available() else 'unavailable'}")
    _doctor_transports()
    print("interfaces (IPv4): " + ", ".join(f"{n}={a}" for n, a in interfaces()))
    n, a = choose_address()
    print(f"tcp listens on: {n} ({a}) without a job; in a job, the address on the route to the "
          f"store  [HETCCL_SOCKET_IFNAME={os.environ.get('HETCCL_SOCKET_IFNAME', '')}]")
    for mod in ("mpi4py", "torch", "ml_dtypes"):
        try:
            m = __import__(mod)
            print(f"{mod}: {getattr(m, '__version__', 'present')}")
        except ImportError:
            print(f"{mod}: not installed")
    _doctor_bridges()
    return 0


def _doctor_bridges() -> None:
    """Every vendor library found (kind, version, path, memory, usable or why not), and the
    islands this host's devices and CPU ranks would form."""
    from .bootstrap.env import detect
    from .bridges.libraries import find_all, format_report, host_islands
    from .errors import HetcclError
    from .topology.discover import discover_host
    try:
        accels = discover_host()["accelerators"]
    except (OSError, HetcclError) as e:
        accels = []
        print(f"accelerators: unavailable ({e})")
    try:
        launcher = detect().launcher
    except HetcclError:
        launcher = "none"
    libs = find_all()
    for line in format_report(libs, host_islands(libs, accels, launcher)):
        print(line)


def _doctor_transports() -> None:
    """What each transport says about this host (c2c's mode, UCX's wires), and the transport
    matrix local ranks would get."""
    import os

    from .errors import HetcclError
    from .topology.host import host_id
    from .transports import ALL
    from .transports.matrix import format_matrix, parse_filter, transport_matrix
    spec = os.environ.get("HETCCL_TRANSPORTS")
    try:
        allowed = set(parse_filter(spec, [t.name for t in ALL]))
    except HetcclError:
        allowed = set()
    fields = {}
    for t in ALL:
        lines, preview = t.doctor()
        for line in lines:
            print(line)
        if t.name in allowed:
            fields.update(preview)
    n = int(os.environ.get("HETCCL_LOCAL_SIZE", "2") or 2)
    try:
        parse_filter(spec, [t.name for t in ALL])
        cards = [{"rank": r, "host": host_id(), **fields} for r in range(n)]
        print(f"transport per pair for {n} ranks on this host (`hetccl run -n N -- hetccl doctor` "
              f"prints a running job's):")
        print("  " + format_matrix(transport_matrix(cards, ALL, spec)).replace("\n", "\n  "))
    except HetcclError as e:
        print(f"transport matrix: {e}")
    if os.environ.get("HETCCL_SIZE") and os.environ.get("HETCCL_STORE"):
        from . import comm as _comm
        c = _comm.init()
        try:
            if c.rank == 0:
                print("this job:\n" + c.describe())
        finally:
            c.close()


def topo_main(argv) -> int:
    from .topology.topofile import dump, to_dict
    import argparse
    import json
    ap = argparse.ArgumentParser(prog="hetccl topo", description="the topology hetccl sees")
    ap.add_argument("--dump", metavar="FILE", help="write the model as a topology file (HETCCL_TOPO_FILE format)")
    ap.add_argument("--measure", action="store_true", help="measure link bandwidths and latencies "
                    "(needs ranks on the links: run under `hetccl run -n N` or another launcher)")
    ap.add_argument("--json", action="store_true", help="print the model as JSON")
    ap.add_argument("--synth", metavar="SPEC", help="write the topology file of a described cluster instead "
                    "(with -o FILE): key=value,... e.g. " + _synth_example() + "; keys: see below")
    ap.add_argument("-o", "--output", metavar="FILE", help="where --synth writes (default cluster.json)")
    ap.epilog = _synth_help()
    ap.formatter_class = argparse.RawDescriptionHelpFormatter
    args = ap.parse_args(argv)
    from .errors import InvalidUsage
    if args.synth:
        return _synth_main(args.synth, args.output or "cluster.json")
    try:
        topo, comm = _topology(args.measure)
    except InvalidUsage as e:
        print(f"hetccl topo: {e}", file=sys.stderr)
        return 2
    if comm is None or comm.rank == 0:
        if args.json:
            print(json.dumps(to_dict(topo), indent=1))
        else:
            print(format_topology(topo, comm))
        if args.dump:
            dump(topo, args.dump)
            print(f"wrote {args.dump}")
    if comm is not None:
        comm.close()
    return 0


def _synth_example():
    from .topology.synth import EXAMPLE
    return EXAMPLE


def _synth_help():
    from .topology import synth
    doc = synth.__doc__
    return ("--synth SPEC" + doc[doc.index("SPEC is"):].replace("SPEC is", " is", 1) +
            "\nexample: hetccl topo --synth " + synth.EXAMPLE + " -o cluster.json")


def _synth_main(spec, out) -> int:
    import json
    from .errors import InvalidUsage
    from .topology import synth
    try:
        d = synth.generate(spec)
    except InvalidUsage as e:
        print(f"hetccl topo: {e}", file=sys.stderr)
        return 2
    with open(out, "w") as f:
        json.dump(d, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {out}: {len(d['ranks'])} ranks, {synth.describe(d['synth'])}")
    return 0


def _topology(measure):
    """(model, communicator or None): of the job when launched with ranks, else of this host (or
    of HETCCL_TOPO_FILE when set)."""
    import os
    from .bootstrap.env import detect
    from .errors import InvalidUsage
    from .topology.cards import card_entry, model_of
    from .topology.host import host_id
    from .transports.netif import choose_address
    info = detect()
    if info.size > 1:
        from . import init
        comm = init()
        topo = model_of(comm.context.cards)
        if measure:
            from .topology.link_timing import measure as run_measure
            topo = run_measure(comm, topo)
        return topo, comm
    if measure:
        raise InvalidUsage("--measure times links between ranks: run it as `hetccl run -n 2 -- hetccl topo "
                           "--measure` (or under mpirun/torchrun/srun across the hosts to measure)")
    if os.environ.get("HETCCL_TOPO_FILE"):        # show the whole file, not just rank 0 of it
        from .topology.topofile import load
        return load(os.environ["HETCCL_TOPO_FILE"]), None
    ifname, addr = choose_address()
    card = {"rank": 0, "host": host_id(), "ifname": ifname, "addr": addr, "topo": card_entry("w", 0)}
    return model_of([card]), None


def format_topology(topo, comm=None) -> str:
    """The model as text: a summary line, then per host its ranks, islands, devices and links."""
    lines = [f"topology: {topo.summary()}"]
    for h in topo.hosts():
        ranks = topo.ranks_on(h)
        isl = topo.islands(h)
        lines.append(f"host {h}: ranks {ranks}" + (f", islands {isl}" if len(isl) > 1 else ""))
        for n in topo.nodes.values():
            if n.host == h and n.kind in ("numa", "switch", "device", "nic"):
                attrs = ", ".join(f"{k}={v}" for k, v in n.attrs.items())
                short = n.id.split(":", 1)[1][len(h) + 1:]
                lines.append(f"  {n.kind:<7} {short:<14} {attrs}")
        for ln in topo.links:
            if topo.nodes.get(ln.a) is not None and topo.nodes[ln.a].host == h and (ln.bandwidth or ln.measured):
                bw = f"{ln.bandwidth / 1e9:.3g} GB/s" if ln.bandwidth else "?"
                lat = f", {ln.latency * 1e6:.1f} us" if ln.latency else ""
                lines.append(f"  link    {ln.a} - {ln.b} {ln.cls} {bw}{lat}{' (measured)' if ln.measured else ''}")
    if comm is not None:
        lines.append(comm.describe())
    else:
        from .transports.netif import choose_address
        n, a = choose_address()
        lines.append(f"listen: {n} {a}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        from .bootstrap.launcher import run_main
        return run_main(rest)
    if cmd == "bench":
        from .benchmark.cli import bench_main
        return bench_main(rest)
    if cmd == "doctor":
        return doctor_main(rest)
    if cmd == "topo":
        return topo_main(rest)
    if cmd == "secret":
        import secrets
        print(secrets.token_hex(32))
        return 0
    if cmd == "simulate":
        from .simulate.cli import simulate_main
        return simulate_main(rest)
    if cmd == "tune":
        from .tuning.cli import tune_main
        return tune_main(rest)
    print(f"hetccl: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
