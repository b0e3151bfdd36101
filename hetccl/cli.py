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
    print("transports (preference: self > c2c > shm > rdma > tcp; HETCCL_TRANSPORTS="
          f"{os.environ.get('HETCCL_TRANSPORTS', '')!r}):")
    for t in ALL:
        print(f"  {t.name:<5} {'available' if t.available() else 'unavailable'}")
    _doctor_c2c_and_matrix()
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


def _doctor_c2c_and_matrix() -> None:
    """c2c's mode here (and why), and the transport matrix local ranks would get."""
    import os

    from .errors import HetcclError
    from .topology.host import host_id
    from .topology.select import format_matrix, parse_filter, transport_matrix
    from .transports import ALL
    from .transports.c2c import C2CTransport, local_mode
    mode = None
    if C2CTransport.available():
        try:
            mode, why = local_mode()
        except HetcclError as e:
            mode, why = "error", str(e)
        print(f"c2c mode: {mode} ({why})")
    n = int(os.environ.get("HETCCL_LOCAL_SIZE", "2") or 2)
    spec = os.environ.get("HETCCL_TRANSPORTS")
    try:
        allowed = parse_filter(spec, [t.name for t in ALL])
        cards = [{"rank": r, "host": host_id(), "c2c_mode": "c2c" in allowed and mode} for r in range(n)]
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
