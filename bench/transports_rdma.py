"""Point-to-point bandwidth and latency over ``rdma`` (hetccl's UCX endpoint) beside ``ucx_perftest``.

    python bench/transports_rdma.py --sizes 8,4K,64K,1M,4M --repeat 5
    python bench/transports_rdma.py --sizes 1M,4M --repeat 7 --iters 30

Two processes on this host. hetccl's side is OSU-style: osu_bw (a window of ``--window`` isends,
the receiver posts as many irecvs, both wait for the whole window with ``Endpoint.waitall`` -- one
nogil loop driving UCX, no Python per message -- then a 1-byte ack; MB/s = bytes / time) and
osu_latency (ping-pong, half the round trip). ucx_perftest (shipped in the libucx-cu12 wheel, or on
PATH) runs tag_bw (with -O window) and tag_lat on loopback, with endpoint error handling (-e) so
that UCX picks the same transports for both: peer-failure handling, which hetccl always asks for,
excludes UCX's sysv/posix shared memory and cma here, leaving tcp (UCX_PROTO_INFO=y shows it).

ucx_perftest runs twice: with the UCX settings hetccl's context applies (``hetccl._native.ucx.TUNED``,
e.g. UCX_TCP_TX_SEG_SIZE=64K; the "matched" column, the like-for-like comparison of how each drives
UCX, and the headline), and with UCX's defaults (for reference: that column also measures the
settings, not only the driving). Target (issue 4): rdma >= 0.9x ucx_perftest bandwidth at 4 MiB,
judged against the matched column.

One unit: MB/s = 10^6 bytes per second everywhere. ucx_perftest prints MiB/s (2^20 bytes, labelled
"MB/s"); its figures are converted. The UCX transport each side ran is recorded: every process runs
with UCX_PROTO_INFO=y, and the transports/devices of the protocols it selected ("tcp/lo", ...) are
printed beside the table.

The runs are interleaved: every repetition runs hetccl, perftest with hetccl's settings and perftest
with UCX's defaults over all sizes in turn, and medians over ``--repeat`` are printed, so machine
load affects all columns alike; only figures from one run compare.
"""
import argparse
import multiprocessing as mp
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkout import IMPORT_ROOT  # noqa: E402,F401  (which hetccl: the installed one, or this checkout; bench/checkout.py)


def parse_size(text):
    m = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (use e.g. 8, 64K, 4M)")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


def fmt_size(n):
    for unit, shift in (("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


# --------------------------------------------------------------------------------- hetccl side

def _pair(rank, port):
    if rank == 0:
        srv = socket.create_server(("127.0.0.1", port))
        s, _ = srv.accept()
        srv.close()
    else:
        deadline = time.monotonic() + 30
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


MIB = 1.048576          # ucx_perftest's "MB/s" is MiB/s: x this = 10^6 bytes/s


def proto_configs(text):
    """The transport/device column ("tcp/lo", "sysv/memory", ...) of UCX_PROTO_INFO tables."""
    found = re.findall(r"\|[^|\n]*\|[^|\n]*\|\s*([A-Za-z0-9_]+/[^|\s]+)\s*\|", text)
    return sorted(set(found))


def _rank(rank, port, sizes, iters, window, lat_iters, q, proto_file):
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    if proto_file:          # UCX prints its protocol choices to stdout: keep them in a file
        os.environ["UCX_PROTO_INFO"] = "y"
        f = open(proto_file, "w")
        os.dup2(f.fileno(), 1)
    import numpy as np
    from hetccl.transports.rdma import RdmaEndpoint
    ep = RdmaEndpoint(_pair(rank, port), 1 - rank, timeout=120)
    ack = np.zeros(1, np.uint8)
    out = {}
    try:
        for n in sizes:
            buf = np.ones(n, np.uint8)
            bufs = [np.empty(n, np.uint8) for _ in range(window)] if rank == 1 else None
            for phase in ("warm", "run"):
                k = max(2, iters // 10) if phase == "warm" else iters
                ep.isend(ack, 9).wait() if rank == 0 else ep.irecv(ack, 9).wait()   # start together
                t = time.perf_counter()
                for _ in range(k):
                    if rank == 0:
                        ep.waitall([ep.isend(buf, 1) for _ in range(window)])
                        ep.irecv(ack, 2).wait()
                    else:
                        ep.waitall([ep.irecv(bufs[w], 1) for w in range(window)])
                        ep.isend(ack, 2).wait()
                dt = time.perf_counter() - t
            bw = n * window * iters / dt / 1e6
            pong = np.empty(n, np.uint8)
            k = lat_iters if n <= (1 << 20) else max(10, lat_iters // 20)
            for phase in ("warm", "run"):
                m = max(2, k // 10) if phase == "warm" else k
                t = time.perf_counter()
                for _ in range(m):
                    if rank == 0:
                        ep.isend(buf, 3).wait()
                        ep.irecv(pong, 4).wait()
                    else:
                        ep.irecv(pong, 3).wait()
                        ep.isend(buf, 4).wait()
                dt = time.perf_counter() - t
            out[n] = (bw, dt / k / 2 * 1e6)
    finally:
        ep.close()
    if rank == 0:
        q.put(out)


def hetccl_run(sizes, iters, window, lat_iters, proto_dir=None):
    """{size: (MB/s, us)} of rank 0; with *proto_dir*, the UCX transports both ranks ran are
    returned under the key "transports"."""
    ctx = mp.get_context("spawn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = ctx.Queue()
    files = [os.path.join(proto_dir, f"rdma-rank{r}.txt") if proto_dir else None for r in (0, 1)]
    procs = [ctx.Process(target=_rank, args=(r, port, sizes, iters, window, lat_iters, q, files[r]))
             for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        res = q.get(timeout=600)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    if proto_dir:
        text = ""
        for f in files:
            with open(f, errors="replace") as fh:
                text += fh.read()
        res["transports"] = proto_configs(text)
    return res


# --------------------------------------------------------------------------------- ucx_perftest

def perftest_binary():
    try:
        import libucx
        d = os.path.dirname(libucx.__file__)
        exe = os.path.join(d, "bin", "ucx_perftest")
        if os.path.exists(exe):
            return exe, os.path.join(d, "lib")
    except ImportError:
        pass
    exe = shutil.which("ucx_perftest")
    return (exe, None) if exe else (None, None)


def perftest(test, n, iters, window, extra=("-e",), settings=None):
    """One ucx_perftest client/server pair on loopback; (MB/s in 10^6 bytes/s, usec, the UCX
    transports the client's protocols used) of its Final line.
    settings: UCX settings (names without the UCX_ prefix) for both processes."""
    exe, libdir = perftest_binary()
    env = dict(os.environ, UCX_PROTO_INFO="y")
    env.update({"UCX_" + k: v for k, v in (settings or {}).items()})
    if libdir:
        env["LD_LIBRARY_PATH"] = libdir + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    args = ["-t", test, "-s", str(n), "-n", str(iters), "-w", str(max(2, iters // 10)), "-f", *extra]
    if test.endswith("_bw"):
        args += ["-O", str(window)]
    srv = subprocess.Popen([exe, "-p", port, *args], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(100):
            time.sleep(0.05)
            cli = subprocess.run([exe, "127.0.0.1", "-p", port, *args], env=env, capture_output=True,
                                 text=True, timeout=300)
            if cli.returncode == 0:
                break
        else:
            raise RuntimeError(f"ucx_perftest failed: {cli.stderr[-500:]}")
    finally:
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
    # Final: iters  lat50  lat_avg  lat_overall  bw_avg  bw_overall  rate_avg  rate_overall
    # (bandwidth in MiB/s: converted to 10^6 bytes/s, the unit of the hetccl column)
    nums = re.compile(r"^\s*(Final:)?(\s+[-+0-9.eE]+){8}\s*$")      # not UCX_PROTO_INFO's lines
    line = [ln for ln in cli.stdout.splitlines() if nums.match(ln)][-1].replace("Final:", "").split()
    return float(line[5]) * MIB, float(line[2]), proto_configs(cli.stdout)


def _perftest_sizes(sizes, iters, window, lat_iters, settings):
    out, used = {}, set()
    for n in sizes:
        bw, _, t1 = perftest("tag_bw", n, iters * window, window, settings=settings)
        _, lat, t2 = perftest("tag_lat", n, lat_iters if n <= 1 << 20 else 100, 1, settings=settings)
        out[n] = (bw, lat)
        used.update(t1, t2)
    out["transports"] = sorted(used)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="8,4K,64K,1M,4M,16M")
    ap.add_argument("--iters", type=int, default=50, help="bandwidth iterations (x window messages)")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--lat-iters", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; medians are printed")
    a = ap.parse_args(argv)
    sizes = [parse_size(x) for x in a.sizes.split(",")]
    from hetccl._native import ucx
    if not ucx.load():
        print(f"rdma unavailable: {ucx.load_error()}")
        return 1
    exe, _ = perftest_binary()
    tuned = ucx.tuned_settings()
    print(f"# UCX {ucx.version()} from {ucx.library_path()}; ucx_perftest: {exe or 'not found'}")
    print(f"# 2 processes on one host, window {a.window}, medians of {a.repeat} interleaved runs; "
          f"UCX_TLS={os.environ.get('UCX_TLS', '(UCX default)')}; hetccl's UCX settings: "
          + (", ".join(f"UCX_{k}={v}" for k, v in tuned.items()) or "none (set in the environment)"))
    cols = {"rdma": [], "pt+": [], "pt": []}
    with tempfile.TemporaryDirectory(prefix="hetccl-rdma-") as proto_dir:
        for _ in range(a.repeat):
            cols["rdma"].append(hetccl_run(sizes, a.iters, a.window, a.lat_iters, proto_dir))
            if exe:
                cols["pt+"].append(_perftest_sizes(sizes, a.iters, a.window, a.lat_iters, tuned))
                cols["pt"].append(_perftest_sizes(sizes, a.iters, a.window, a.lat_iters, None))

    def med(col, n, k):
        runs = cols[col]
        return statistics.median(r[n][k] for r in runs) if runs else None

    def f(x, spec):
        return format(x, spec) if x is not None else "-"
    print(f"{'size':>6} {'rdma MB/s':>10} {'matched':>9} {'ratio':>6} {'defaults':>9} {'ratio':>6}"
          f" {'rdma us':>8} {'matched us':>11} {'defaults us':>12}")
    for n in sizes:
        bw, pm, pd = med("rdma", n, 0), med("pt+", n, 0), med("pt", n, 0)
        print(f"{fmt_size(n):>6} {bw:>10.1f} {f(pm, '9.1f')} {f(pm and bw / pm, '6.2f')} "
              f"{f(pd, '9.1f')} {f(pd and bw / pd, '6.2f')} {med('rdma', n, 1):>8.1f} "
              f"{f(med('pt+', n, 1), '11.1f')} {f(med('pt', n, 1), '12.1f')}")
    print("# MB/s = 10^6 bytes/s in every column (ucx_perftest's MiB/s converted); matched: ucx_perftest "
          "with hetccl's UCX settings (the like-for-like comparison, judged below); defaults: with UCX's "
          "defaults; ratio = rdma / that column")
    for col, what in (("rdma", "hetccl rdma"), ("pt+", "ucx_perftest, matched"), ("pt", "ucx_perftest, defaults")):
        used = sorted({t for r in cols[col] for t in r.get("transports", [])})
        print(f"# UCX transports used ({what}, from UCX_PROTO_INFO): {', '.join(used) or 'not reported'}")
    target = 4 << 20
    if target in sizes and cols["pt+"]:
        ratio = med("rdma", target, 0) / med("pt+", target, 0)
        print(f"# target: rdma >= 0.9x ucx_perftest (matched settings) at 4 MiB: "
              f"{'met' if ratio >= 0.9 else 'NOT met'} ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
