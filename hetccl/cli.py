"""The ``hetccl`` command: run (local launcher), bench (nccl-tests style), doctor (what works here),
topo (this host as the topology layer sees it)."""
import sys

USAGE = """usage: hetccl <command> [args]

commands:
  run -n N [--] cmd ...   launch N local ranks of cmd (sets rank/size/store/secret for hetccl.init())
  bench [options]         nccl-tests style tables of any collective; --algos all compares every
                          algorithm with the tuner's choice (run it under `hetccl run`)
  doctor                  what hetccl finds on this machine: native core, transports, interfaces
  topo                    this host's identity and the address hetccl would listen on
"""


def doctor_main(argv) -> int:
    import os
    import platform

    from . import __version__
    from .topology.host import host_id
    from .transports import ALL
    from .transports.netif import choose_address, interfaces
    print(f"hetccl {__version__} on Python {platform.python_version()} ({platform.machine()})")
    try:
        from ._native import engine, reduce  # noqa: F401
        print("native core: ok")
    except ImportError as e:
        print(f"native core: MISSING ({e}); reinstall with `pip install .`")
        return 1
    print(f"host id: {host_id()}")
    print(f"cpus available: {len(os.sched_getaffinity(0))}")
    print("transports:")
    for t in ALL:
        print(f"  {t.name:<5} {'available' if t.available() else 'unavailable'}")
    from .transports.rdma import describe as ucx_describe
    for line in ucx_describe():
        print(line)
    print("interfaces (IPv4): " + ", ".join(f"{n}={a}" for n, a in interfaces()))
    n, a = choose_address()
    print(f"tcp listens on: {n} ({a})  [HETCCL_SOCKET_IFNAME={os.environ.get('HETCCL_SOCKET_IFNAME', '')}]")
    for mod in ("mpi4py", "torch", "ml_dtypes", "zmq"):
        try:
            m = __import__(mod)
            print(f"{mod}: {getattr(m, '__version__', 'present')}")
        except ImportError:
            print(f"{mod}: not installed")
    return 0


def topo_main(argv) -> int:
    from .topology.host import host_id
    from .transports.netif import choose_address
    n, a = choose_address()
    print(f"host: {host_id()}\nlisten: {n} {a}")
    return 0


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
    print(f"hetccl: unknown command {cmd!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
