"""Point-to-point and single-copy benchmarks of hetccl's transports, with physical limits measured
in the same run.

    python bench/transports.py                      # everything below, default sizes
    python bench/transports.py --quick              # smoke run (seconds)
    python bench/transports.py --only p2p --transports c2c,shm --sizes 4K,1M,4M
    python bench/transports.py --only allreduce-bound   # ~1 min: 64 MiB allreduce vs its bound

Sections (each prints a markdown table):

* ``p2p`` — OSU-style, per transport, over its Endpoint (transports/endpoint.py): ``osu_bw``
  (rank 0 keeps a window of WINDOW sends outstanding, rank 1 a window of receives; one ack per
  window; MB/s = bytes / time) and ``osu_latency`` (ping-pong, half the round trip, us).
* ``limits`` — memcpy bandwidth (glibc, and with streaming stores: the copy kernel hetccl uses) and
  raw TCP loopback bandwidth between two processes (blocking sendall/recv_into of 4 MiB).
* ``collectives`` — 2 ranks, one host: allreduce and allgather busbw at each size over ``c2c`` with
  buffers from ``comm.alloc`` (the single-copy load/store schedules, ``last_algorithm ==
  "symmetric"``), over ``c2c`` with plain numpy buffers (cross-memory-attach single copy,
  ``HETCCL_C2C_DIRECT=on``), and over ``shm`` with plain numpy buffers (the staged FIFO ring), in the
  same processes, the order rotated round by round, beside the streaming memcpy bandwidth measured
  between the rounds. Targets: allreduce c2c/shm >= 1.3x at 64 MiB, allgather >= 1.5x. A second
  table sets the allgather beside its memory-traffic bound, measured in the same rounds at the sizes
  written with streaming stores (>= 16 MiB)
  (``traffic_bound``): one load and two streaming stores per byte (the single copy) against two
  loads and two stores (the staged ring with a free FIFO pass). The bound runs the schedules' own
  copy kernel, so it bounds the schedule, not the kernel (``BOUND_CAVEAT``).
* ``allreduce-bound`` (not in the default set) — the 2-rank allreduce of ``--ar-size`` bytes
  (64 MiB) on plain numpy buffers through the public ``comm.allreduce`` (out of place and in
  place), against its memory-traffic bound in the same rounds: the least loads and stores a
  2-rank allreduce on private buffers needs, run by both ranks at once with hetccl's own kernels,
  and beside it the shared-memory minimum (``allreduce_bound_rows`` has the accounting); the
  ring's two phases as public calls and its kernels run without a peer show where a gap lies.
  The same buffers after ``comm.register`` (pages moved into shared memory) run the symmetric
  dual-write: rows "registered", set against the shared-memory minimum, and the time of one
  ``register``; the row "dual-write, shared pages" runs the minimum's kernel on memfd pages, the
  pages registered buffers get, for what the page size costs the kernel alone. The rows "plain
  numpy buffers, automatic registration" are what a user who never calls ``register`` gets: other
  plain buffers, registered automatically on their second call (steady state after the warm-up;
  the summary gives the first two calls' times); every other public row runs with automatic
  registration off (``comm._auto_register``), so "allreduce" stays the FIFO path.

Adding a transport (helper "rdma"): give ``p2p_rows`` an EndpointFactory (hetccl.transports.
endpoints) under a new name in ``FACTORIES``, and put a reference line beside it through
``REFERENCES`` (a callable returning rows, e.g. one running ``ucx_perftest``).
"""
import argparse
import multiprocessing as mp
import os
import secrets
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkout import IMPORT_ROOT  # noqa: E402,F401  (which hetccl: the installed one, or this checkout; bench/checkout.py)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from hetccl.collectives.cost_model import STREAM_MIN  # noqa: E402
from hetccl.transports.pair_endpoint import factories  # noqa: E402

FACTORIES = factories()
REFERENCES = {}          # name -> callable(sizes, quick) -> list of row dicts (e.g. ucx_perftest)
WINDOW = 64


def parse_size(s):
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def fmt_size(n):
    for unit, k in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << k and n % (1 << k) == 0:
            return f"{n >> k}{unit}"
    return f"{n}B"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- running a pair of processes

def _pair_child(rank, fn, args, env, q):
    try:
        os.environ.update(env)
        q.put((rank, "ok", fn(rank, *args)))
    except BaseException as e:  # noqa: BLE001 - reported by the parent
        import traceback
        q.put((rank, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def run_pair(fn, *args, env=None, timeout=300):
    """fn(rank, *args) in two spawned processes (same job secret and id); rank-ordered results."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    env = {"HETCCL_SECRET": secrets.token_hex(16), "HETCCL_JOB_ID": "b" + secrets.token_hex(4),
           **(env or {})}
    ps = [ctx.Process(target=_pair_child, args=(r, fn, args, env, q), daemon=True) for r in (0, 1)]
    for p in ps:
        p.start()
    out = {}
    try:
        deadline = time.monotonic() + timeout
        while len(out) < 2:
            rank, state, val = q.get(timeout=max(1.0, deadline - time.monotonic()))
            if state != "ok":
                raise RuntimeError(f"rank {rank} failed: {val}")
            out[rank] = val
    finally:
        for p in ps:
            p.join(5)
            if p.is_alive():
                p.kill()
    return [out[0], out[1]]


# ---------------------------------------------------------------- p2p: osu_bw / osu_latency

def _p2p_rank(rank, name, port, sizes, quick):
    f = FACTORIES[name]
    f.start(rank, port)
    ep = f.open(timeout=60)
    res = {}
    ack = np.zeros(1, np.uint8)
    try:
        for n in sizes:
            bufs = [np.ones(n, np.uint8) for _ in range(WINDOW if n <= (1 << 20) else 8)]
            w = len(bufs)
            iters = max(2, min(200, int((64 << 20) / max(1, n * w)))) // (4 if quick else 1) or 1
            times = []
            for it in range(iters + 1):                 # osu_bw: iteration 0 is the warm-up
                t = time.perf_counter()
                if rank == 0:
                    reqs = [ep.isend(b, tag=1) for b in bufs]
                    for r in reqs:
                        r.wait(60)
                    ep.irecv(ack, tag=2).wait(60)
                else:
                    reqs = [ep.irecv(b, tag=1) for b in bufs]
                    for r in reqs:
                        r.wait(60)
                    ep.isend(ack, tag=2).wait(60)
                if it:
                    times.append(time.perf_counter() - t)
            bw = n * w / statistics.median(times) / 1e6
            lat_iters = max(10, min(1000, int((16 << 20) / max(1, n)))) // (4 if quick else 1)
            b = bufs[0]
            t = None
            for it in range(lat_iters + 5):              # osu_latency: 5 warm-up round trips
                if it == 5:
                    t = time.perf_counter()
                if rank == 0:
                    ep.isend(b, tag=3).wait(60)
                    ep.irecv(b, tag=3).wait(60)
                else:
                    ep.irecv(b, tag=3).wait(60)
                    ep.isend(b, tag=3).wait(60)
            lat = (time.perf_counter() - t) / lat_iters / 2 * 1e6
            res[n] = (bw, lat)
    finally:
        ep.close()
        f.stop()
    return res


def p2p_rows(name, factory, sizes, quick=False):
    """OSU bw/latency rows of one transport (a hook: any EndpointFactory under FACTORIES[name])."""
    FACTORIES[name] = factory
    why = factory.unavailable()
    if why:
        return [{"transport": name, "size": "-", "note": f"skipped: {why}"}]
    res = run_pair(_p2p_rank, name, _free_port(), sizes, quick, env=factory.env)[0]
    return [{"transport": name, "size": fmt_size(n), "osu_bw MB/s": f"{bw:.0f}", "osu_latency us": f"{lat:.2f}"}
            for n, (bw, lat) in res.items()]


# ---------------------------------------------------------------- physical limits

def memcpy_gbs(nbytes=64 << 20, reps=7, streaming=True):
    """Copy bandwidth (bytes copied per second) of pre-faulted buffers, best of reps."""
    from hetccl._native.kernels import copy_array
    src = np.ones(nbytes, np.uint8)
    dst = np.ones(nbytes, np.uint8)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        if streaming:
            copy_array(dst, src, True)
        else:
            np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def _tcp_rank(rank, port, total):
    chunk = 4 << 20
    buf = bytearray(chunk)
    if rank == 0:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", port))
        ls.listen(1)
        s, _ = ls.accept()
        view = memoryview(buf)
        got = 0
        t = time.perf_counter()
        while got < total:
            k = s.recv_into(view)
            if not k:
                break
            got += k
        el = time.perf_counter() - t
        s.sendall(b"x")
        s.close()
        ls.close()
        return got / el / 1e9
    for _ in range(100):
        try:
            s = socket.create_connection(("127.0.0.1", port))
            break
        except ConnectionRefusedError:
            time.sleep(0.02)
    for _ in range(total // chunk):
        s.sendall(buf)
    s.recv(1)
    s.close()
    return None


def limit_rows(quick=False):
    total = (256 if quick else 2048) << 20
    tcp = run_pair(_tcp_rank, _free_port(), total)[0]
    return [{"limit": "memcpy (glibc), 64 MiB", "GB/s": f"{memcpy_gbs(streaming=False):.2f}"},
            {"limit": "memcpy with streaming stores, 64 MiB", "GB/s": f"{memcpy_gbs():.2f}"},
            {"limit": f"raw TCP loopback, {fmt_size(total)} in 4 MiB sends", "GB/s": f"{tcp:.2f}"}]


# ---------------------------------------------------------------- collectives: c2c vs shm

PATHS = ("c2c", "cma", "shm")    # symmetric buffers on c2c; plain buffers on c2c (CMA); shm FIFO ring


def _coll_rank(rank, port, sizes, rounds, reps):
    os.environ.update({"HETCCL_RANK": str(rank), "HETCCL_SIZE": "2", "HETCCL_LOCAL_RANK": str(rank),
                       "HETCCL_LOCAL_SIZE": "2", "HETCCL_STORE": f"127.0.0.1:{port}"})
    import hetccl
    os.environ["HETCCL_C2C_DIRECT"] = "on"       # plain buffers on c2c: the CMA single-copy schedules
    c2c = hetccl.init(transports="c2c,tcp")
    ctx = c2c.context
    shm = ctx.connect(ctx.info, ctx.store, None, ctx.job_id, "w.shm", 120.0, "shm,tcp", parent=c2c)
    assert c2c.transport(1 - rank) == "c2c" and shm.transport(1 - rank) == "shm"
    res = {}
    for n in sizes:
        bufs = {}
        for name, comm, alloc in (("c2c", c2c, c2c.alloc), ("cma", c2c, None), ("shm", shm, None)):
            new = alloc or (lambda k, dt: np.empty(k, dt))
            x, o, g = new(n // 4, np.float32), new(n // 4, np.float32), new(n // 4, np.float32)
            x[:] = 1
            # symmetric forced: below its 32 KiB default threshold the column still shows the schedule
            bufs[name] = (comm, x, o, g, x[: n // 8], "symmetric" if alloc else None)
        for name, (c, x, o, g, part, algo) in bufs.items():    # warm up (and pre-fault) every path
            c.allreduce(x, out=o, algorithm=algo)
            assert (c.last_algorithm == "symmetric") == (name == "c2c"), (name, c.last_algorithm)
            c.allgather(part, out=g, algorithm=algo)
        for rnd in range(rounds):
            for name in PATHS[rnd % 3:] + PATHS[:rnd % 3]:   # rotate the order round by round
                c, x, o, g, part, algo = bufs[name]
                for coll in ("allreduce", "allgather"):
                    ts = []
                    for _ in range(reps):
                        c.barrier()
                        t = time.perf_counter()
                        if coll == "allreduce":
                            c.allreduce(x, out=o, algorithm=algo)
                        else:
                            c.allgather(part, out=g, algorithm=algo)
                        ts.append(time.perf_counter() - t)
                    t = max(c.allgather(np.array([statistics.median(ts)])))   # the slowest rank
                    res.setdefault((n, coll, name), []).append(t)
            res.setdefault((n, "memcpy", "nt"), []).append(memcpy_gbs(n, 3))
            if n >= STREAM_MIN:                           # the memory-bound regime: both stream
                for pattern, t in traffic_bound(c2c, n // 2, reps).items():
                    res.setdefault((n, "bound", pattern), []).append(t)
        for c, x, o, g, part, _ in bufs.values():
            if c.is_symmetric(x):
                for a in (x, o, g):
                    c.free(a)
        del bufs, x, o, g, part
    shm.close()
    c2c.close()
    return res


BOUND_CAVEAT = ("The bound runs hetccl's own copy kernel (copy_array with streaming stores, the "
                "one the schedules use) without the schedule: it shows what the schedule costs on "
                "top of its kernel, not that no faster kernel exists. A faster kernel would raise "
                "the bound and the schedule alike.")


def traffic_bound(comm, nb, reps):
    """The memory traffic of each 2-rank out-of-place allgather schedule, without the schedule:
    both ranks at once (a barrier, then the kernels alone on private buffers), seconds per call,
    slowest rank, median over reps.

    * ``one load``: my block of ``nb`` bytes loaded once and streamed into two outputs
      (``copy_bytes_dual``): what the symmetric schedule moves through memory (nb read, 2 nb
      written per rank).
    * ``two loads``: the same block copied twice, once per output: what the staged ring moves
      through memory when its FIFO pass (copy into the FIFO, the peer's copy out of it) stays in
      the shared cache and costs nothing (2 nb read, 2 nb written per rank).

    Their ratio is the most a single-copy schedule can gain over the staged one in the
    memory-bound regime of this host with this kernel, measured in the same run. Limitation
    (BOUND_CAVEAT): the kernel is the schedules' own, so the bound cannot show a better kernel."""
    from hetccl._native.kernels import copy_array
    src, a, b = (np.ones(nb, np.uint8) for _ in range(3))
    out = {}
    for pattern in ("one load", "two loads"):
        ts = []
        for _ in range(reps):
            comm.barrier()
            t = time.perf_counter()
            if pattern == "one load":
                copy_array(a, src, True, also=b)
            else:
                copy_array(a, src, True)
                copy_array(b, src, True)
            ts.append(time.perf_counter() - t)
        out[pattern] = max(comm.allgather(np.array([statistics.median(ts)])))
    return out


def bound_rows(res, sizes):
    """Allgather against its memory-traffic bound (traffic_bound), busbw GB/s, at the sizes whose
    outputs both schedules write with streaming stores (>= STREAM_MIN): below it the outputs stay
    in cache and the bound means nothing."""
    rows = []
    for n in (n for n in sizes if n >= STREAM_MIN):
        bw = {k: n * 0.5 / statistics.median(res[(n, "allgather", k)]) / 1e9 for k in ("c2c", "shm")}
        bound = {k: n * 0.5 / statistics.median(res[(n, "bound", k)]) / 1e9 for k in ("one load", "two loads")}
        rows.append({"size": fmt_size(n),
                     "one load, two stores (bound) GB/s": f"{bound['one load']:.2f}",
                     "c2c symmetric GB/s": f"{bw['c2c']:.2f}",
                     "c2c / its bound": f"{bw['c2c'] / bound['one load']:.2f}",
                     "two loads, two stores (bound) GB/s": f"{bound['two loads']:.2f}",
                     "shm GB/s": f"{bw['shm']:.2f}",
                     "shm / its bound": f"{bw['shm'] / bound['two loads']:.2f}",
                     "bound ratio": f"{bound['one load'] / bound['two loads']:.2f}x",
                     "c2c / shm": f"{bw['c2c'] / bw['shm']:.2f}x"})
    return rows


def collective_rows(sizes, quick=False, rounds=27):
    """busbw (nccl-tests factors: allreduce 2(n-1)/n = 1, allgather (n-1)/n = 1/2 at 2 ranks);
    medians over rounds of the per-round medians; memcpy NT is the median of one measurement per
    round, taken between the rounds. Many short rounds: the host moves the two vCPUs between near
    and far placements for seconds at a time, and the staged path's cache-to-cache copies suffer
    far more from a far placement than the single copy does, so the ratio of a few rounds depends
    on which placements they happened to see."""
    rounds, reps = (3, 3) if quick else (rounds, 7)
    res = run_pair(_coll_rank, _free_port(), sizes, rounds, reps, timeout=900)[0]
    return _ratio_rows(res, sizes), bound_rows(res, sizes)


def _ratio_rows(res, sizes):
    rows = []
    for n in sizes:
        limit = statistics.median(res[(n, "memcpy", "nt")])
        for coll, factor, target in (("allreduce", 1.0, 1.3), ("allgather", 0.5, 1.5)):
            bw = {k: n * factor / statistics.median(res[(n, coll, k)]) / 1e9 for k in PATHS}
            rows.append({"collective": coll, "size": fmt_size(n),
                         "c2c symmetric busbw GB/s": f"{bw['c2c']:.2f}",
                         "c2c cma (plain) GB/s": f"{bw['cma']:.2f}",
                         "shm busbw GB/s": f"{bw['shm']:.2f}", "c2c / shm": f"{bw['c2c'] / bw['shm']:.2f}x",
                         "target": f">= {target}x" if n == 64 << 20 else "",
                         "memcpy NT GB/s": f"{limit:.2f}",
                         "c2c / memcpy": f"{bw['c2c'] / limit:.2f}", "shm / memcpy": f"{bw['shm'] / limit:.2f}"})
    return rows


# ---------------------------------------------------------------- allreduce vs its memory-traffic bound

PUBLIC = ("allreduce", "allreduce in place", "reduce_scatter", "allgather",
          "allreduce, 1 MiB FIFOs", "allreduce in place, 1 MiB FIFOs",
          "allreduce, 256K slices", "allreduce in place, 256K slices",
          "allreduce, registered", "allreduce in place, registered", "allreduce, comm.alloc",
          "allreduce, plain numpy buffers, automatic registration",
          "allreduce in place, plain numpy buffers, automatic registration")
# plain numpy buffers of their own, registered automatically by the calls (memory/registration.py):
# pattern -> (input, output) of bufs
AUTO = {"allreduce, plain numpy buffers, automatic registration": ("xu", "ou"),
        "allreduce in place, plain numpy buffers, automatic registration": ("xiu", "xiu")}
# the same plain numpy buffers after comm.register (memory/registration.py): shared where the
# safety rule lets their pages move into shared memory (then the symmetric dual-write runs)
REGISTERED = {"allreduce, registered": "allreduce", "allreduce in place, registered": "allreduce in place"}
ALT_SLICE = 256 << 10    # the what-if slices on the default FIFOs (ring.ring_variant's slice_cap)
ALT_FIFO = 1 << 20       # the what-if communicator's FIFOs: 256 KiB ring slices (three fit in L2)
# name -> (slice: None = the ring's own; the fused step: "two" passes (reduce into the FIFO, copy
# out), "one" pass of the dual kernel (both streamed), or "fwd" (the forward kernel, as the ring
# runs it: ordinary stores into the FIFO, the output streamed, or not in place), or "pair" (the
# forward kernel, and each slice's copy out of the FIFO in one pass with the next slice's copy
# into one: the 2-rank ring as it runs now); in place)
RING_ALONE = {
    "ring alone": (None, "two", False),
    "ring alone, 256K slices": (256 << 10, "two", False),
    "one-pass ring": (None, "one", False),
    "one-pass ring, 256K slices": (256 << 10, "one", False),
    "forward-kernel ring": (None, "fwd", False),
    "forward-kernel ring, 256K slices": (256 << 10, "fwd", False),
    "ring alone in place": (None, "two", True),
    "ring alone in place, 256K slices": (256 << 10, "two", True),
    "one-pass ring in place": (None, "one", True),
    "one-pass ring in place, 256K slices": (256 << 10, "one", True),
    "forward-kernel ring in place": (None, "fwd", True),
    "forward-kernel ring in place, 256K slices": (256 << 10, "fwd", True),
    "paired ring": (None, "pair", False),
    "paired ring, 256K slices": (256 << 10, "pair", False),
    "paired ring in place": (None, "pair", True),
    "paired ring in place, 256K slices": (256 << 10, "pair", True),
}
DUAL_WRITE = ("dual-write", "dual-write, plain stores", "dual-write in place",
              "dual-write in place, plain stores", "dual-write, shared pages")
AR_PATTERNS = PUBLIC + tuple(RING_ALONE) + DUAL_WRITE + ("memcpy", "memcpy, plain stores")
BOUND_CHUNK = 256 << 10          # the plain-store dual-write's unit: reduced into L2, copied from there


def _aligned(nbytes, dtype=np.uint8):
    """A pre-faulted array of nbytes starting on a 64-byte line: the kernels' streaming path then
    has no unaligned head (which would fall back to ordinary stores, and, for the in-place
    dual-write, to two passes over aliased buffers). Written, not np.zeros: a large np.zeros is
    calloc'd pages that read as the kernel's one shared zero page until written, so a buffer only
    ever read would be loaded from L1 (zeros: no float denormals, which would slow the adds)."""
    raw = np.empty(nbytes + 64, np.uint8)
    raw.fill(0)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + nbytes].view(dtype)


def _shared_pages(nbytes):
    """A pre-faulted array of nbytes on a memfd mapping of its own, the pages ``comm.register``
    moves a large buffer into (memory/remap.py): shmem pages, 4 KiB unless the host enables shmem
    huge pages (/sys/kernel/mm/transparent_hugepage/shmem_enabled), where private buffers may get
    transparent huge pages. Private to this process: only the page size differs from _aligned."""
    import mmap
    fd = os.memfd_create("hetccl-bench-pages", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, nbytes)
        m = mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)
    a = np.frombuffer(m, np.uint8)     # keeps the mapping alive
    a.fill(0)
    return a


def shmem_huge_pages():
    """The host's shmem huge-page setting (the bracketed word), or "unknown"."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            return next((w[1:-1] for w in f.read().split() if w.startswith("[")), "unknown")
    except OSError:
        return "unknown"


def allreduce_traffic(comm, bufs, pattern):
    """One call of *pattern* on this rank (the accounting: allreduce_bound_rows). bufs:
    _ar_buffers; the public calls go through ``comm``, the others touch private buffers only."""
    from hetccl._native.codes import DT_FLOAT32 as F32, OP_SUM as SUM
    from hetccl._native.kernels import copy_array, reduce_arrays
    b = bufs
    if pattern == "allreduce":
        comm.allreduce(b["x"], out=b["o"])
    elif pattern == "allreduce in place":
        comm.allreduce(b["xi"])
    elif pattern == "allreduce, registered":
        comm.allreduce(b["xr"], out=b["or"])
    elif pattern == "allreduce in place, registered":
        comm.allreduce(b["xir"])
    elif pattern == "allreduce, comm.alloc":      # the same schedule on /dev/shm segments
        comm.allreduce(b["xa"], out=b["oa"])
    elif pattern in AUTO:
        comm._auto_register = True
        try:
            comm.allreduce(b[AUTO[pattern][0]], out=b[AUTO[pattern][1]])
        finally:
            comm._auto_register = False
    elif pattern == "allreduce, 1 MiB FIFOs":
        b["alt"].allreduce(b["x"], out=b["o"])
    elif pattern == "allreduce in place, 1 MiB FIFOs":
        b["alt"].allreduce(b["xi"])
    elif pattern.endswith(", 256K slices") and pattern.startswith("allreduce"):
        from hetccl._native.ring import ring_variant
        ring_variant(slice_cap=ALT_SLICE)
        try:
            if "in place" in pattern:
                comm.allreduce(b["xi"])
            else:
                comm.allreduce(b["x"], out=b["o"])
        finally:
            ring_variant()
    elif pattern == "reduce_scatter":
        comm.reduce_scatter(b["x"], out=b["half"])
    elif pattern == "allgather":
        comm.allgather(b["half"], out=b["o"])
    elif pattern in RING_ALONE:
        _ring_alone(b, *RING_ALONE[pattern])
    elif pattern == "dual-write":        # my half of both inputs, loaded once, into both outputs
        reduce_arrays(b["d"], b["a"], b["b"], F32, SUM, True, also=b["e"])
    elif pattern == "dual-write, shared pages":   # the same on memfd pages (registered buffers')
        reduce_arrays(b["ds"], b["as"], b["bs"], F32, SUM, True, also=b["es"])
    elif pattern == "dual-write in place":   # the same, written over the inputs it read
        reduce_arrays(b["a"], b["a"], b["b"], F32, SUM, True, also=b["b"])
    elif pattern.startswith("dual-write") and pattern.endswith("plain stores"):
        # one pass with ordinary stores: hetccl has no one-pass dual kernel without streaming
        # (hk_drive2 falls back to two passes), so reduce a chunk into one output (it stays in
        # L2) and copy it into the other: the same loads and stores beyond L2
        d, e = (b["a"], b["b"]) if "in place" in pattern else (b["d"], b["e"])
        a, c = b["a"], b["b"]
        for s in range(0, len(a), BOUND_CHUNK):
            reduce_arrays(d[s:s + BOUND_CHUNK], a[s:s + BOUND_CHUNK], c[s:s + BOUND_CHUNK], F32, SUM)
            copy_array(e[s:s + BOUND_CHUNK], d[s:s + BOUND_CHUNK])
    elif pattern == "memcpy":            # the dual-write's traffic through the copy kernel
        copy_array(b["mdst"], b["msrc"], True)
    elif pattern == "memcpy, plain stores":
        copy_array(b["mdst"], b["msrc"])
    else:
        raise ValueError(pattern)


def _ring_alone(b, slice_bytes, step, in_place):
    """The 2-rank FIFO ring allreduce's kernels on this rank, slice by slice, without the peer: the
    FIFOs are private slice-size buffers, so the FIFO pass costs nothing and only the loads and
    stores remain. As the ring runs (ring.pyx; link_shm.pxd shm_forward), per slice: my block's
    slice copied into the FIFO; the peer's slice (f3, standing still) reduced with my other block
    into the next FIFO, then copied to the output (streaming); the finished slice copied out of the
    FIFO into the output (streaming). ``slice_bytes``: None = the ring's own (a quarter of the
    FIFO); ``step``: the fused step in "two" passes (reduce into the FIFO, copy to the output,
    streaming), as "one" pass of the dual kernel (the sum streamed into the next FIFO and the
    output at once), or as the ring runs it now, "fwd": one pass of the forward kernel (ordinary
    stores into the FIFO; the output streamed, or in place, where the pass has just loaded its
    lines, ordinary); ``in_place``: the output is the input."""
    from hetccl._native.codes import DT_FLOAT32 as F32, OP_SUM as SUM
    from hetccl._native.kernels import copy_array, reduce_arrays
    sl = slice_bytes or b["slice"]
    x, f1, f2, f3 = b["x8"], b["f1"], b["f2"], b["f3"]
    o = x if in_place else b["o8"]
    h = len(x) // 2
    st = not (step in ("fwd", "pair") and in_place)   # the fused step's output stores: streaming?
    if step == "pair":
        _paired_ring_alone(x, o, f1, f2, f3, h, sl, st)
        return
    for s in range(0, h, sl):
        k = min(sl, h - s)
        copy_array(f1[:k], x[s:s + k])                                    # send my block
        if step == "two":
            reduce_arrays(f2[:k], x[h + s:h + s + k], f3[:k], F32, SUM)  # fused: into the next FIFO
            copy_array(o[h + s:h + s + k], f2[:k], True)                  # ... copied to the output
        else:
            reduce_arrays(f2[:k], x[h + s:h + s + k], f3[:k], F32, SUM, st, also=o[h + s:h + s + k],
                          forward=step == "fwd")
        copy_array(o[s:s + k], f3[:k], True)                              # allgather step: FIFO out


def _paired_ring_alone(x, o, f1, f2, f3, h, sl, st):
    """_ring_alone's "pair" step, the ring as it runs at 2 ranks (link_shm.pxd: shm_pair): the
    first slice of my block copied into the FIFO; then per slice the forward kernel, and the
    finished slice copied out of the FIFO in one pass with the next slice's copy into it (the last
    slice's copy-out alone). The same loads and stores as the other variants."""
    from hetccl._native.codes import DT_FLOAT32 as F32, OP_SUM as SUM
    from hetccl._native.kernels import copy_array, copy_pair, reduce_arrays
    copy_array(f1[:min(sl, h)], x[:min(sl, h)])
    for s in range(0, h, sl):
        k = min(sl, h - s)
        reduce_arrays(f2[:k], x[h + s:h + s + k], f3[:k], F32, SUM, st, also=o[h + s:h + s + k],
                      forward=True)
        k2 = min(sl, h - s - k)                   # the next slice, paired with this one's copy-out
        if k2 == k:
            copy_pair(f1[:k], x[s + k:s + 2 * k], o[s:s + k], f3[:k], True)
        else:
            copy_array(o[s:s + k], f3[:k], True)
            if k2:
                copy_array(f1[:k2], x[s + k:s + k + k2])


def _ar_buffers(nbytes, slice_bytes):
    """Every buffer of allreduce_traffic, pre-faulted and 64-byte aligned (plain numpy arrays all
    the same, so the one-pass forward's two outputs align alike): the public calls' float32
    arrays, the dual-write's four half-size buffers (and four more on shared pages), memcpy's pair, the ring's three FIFO slices.
    The in-place patterns write over x, a and b; zeros and ones keep every sum finite."""
    h = nbytes // 2
    b = {"x": _aligned(nbytes, np.float32), "o": _aligned(nbytes, np.float32),
         "xi": _aligned(nbytes, np.float32), "half": _aligned(h, np.float32),
         "xr": _aligned(nbytes, np.float32), "or": _aligned(nbytes, np.float32),
         "xir": _aligned(nbytes, np.float32), "xu": _aligned(nbytes, np.float32),
         "ou": _aligned(nbytes, np.float32), "xiu": _aligned(nbytes, np.float32)}
    b["x"][:] = 1       # in place starts from zeros: repeated sums stay finite
    b["xr"][:] = 1
    b["xu"][:] = 1
    b.update({k: _aligned(h) for k in ("a", "b", "d", "e")})
    b.update({k: _shared_pages(h) for k in ("as", "bs", "ds", "es")})
    b.update(msrc=_aligned(nbytes), mdst=_aligned(nbytes), x8=b["x"].view(np.uint8),
             o8=b["o"].view(np.uint8), slice=slice_bytes,
             **{k: _aligned(max(slice_bytes, BOUND_CHUNK)) for k in ("f1", "f2", "f3")})
    return b


def _ar_bound_rank(rank, port, nbytes, rounds, reps):
    os.environ.update({"HETCCL_RANK": str(rank), "HETCCL_SIZE": "2", "HETCCL_LOCAL_RANK": str(rank),
                       "HETCCL_LOCAL_SIZE": "2", "HETCCL_STORE": f"127.0.0.1:{port}"})
    import hetccl
    from hetccl.transports import shm
    comm = hetccl.init()                 # the public defaults: whatever a user gets
    comm._auto_register = False          # but the plain-buffer rows stay plain (AUTO turns it on)
    default_fifo, asked = shm.fifo_bytes, []
    shm.fifo_bytes = lambda local_size: asked.append(local_size) or ALT_FIFO   # what if: smaller FIFOs
    try:
        alt = comm.dup()                 # its own links, created with the smaller FIFOs
    finally:
        shm.fifo_bytes = default_fifo
    if not max(comm.allgather(np.array([len(asked)]))):    # the pair's creator sizes its FIFOs
        raise RuntimeError("the 1 MiB-FIFO communicator kept the default FIFOs: links no longer take "
                           "their size from hetccl.transports.shm.fifo_bytes; update this benchmark")
    bufs = _ar_buffers(nbytes, default_fifo(2) // 4)   # the ring's slice: a quarter of the FIFO
    bufs["alt"] = alt
    info = {"transport": comm.transport(1 - rank), "slice": bufs["slice"]}
    t = time.perf_counter()
    regs = [comm.register(bufs[k]) for k in ("xr", "or", "xir")]     # one copy each, timed
    info["register"] = (time.perf_counter() - t) / len(regs)
    info["shared"] = all(r.shared for r in regs)
    bufs["xa"], bufs["oa"] = (comm.alloc(nbytes // 4, np.float32) for _ in range(2))
    bufs["xa"][:] = 1
    for pattern in AUTO:                 # the first two calls: a first sighting, then registration
        for k in ("first", "second"):
            comm.barrier()
            t = time.perf_counter()
            allreduce_traffic(comm, bufs, pattern)
            t = time.perf_counter() - t
            info[f"{pattern} {k} algorithm"] = comm.last_algorithm
            info[f"{pattern} {k}"] = max(comm.allgather(np.array([t])))
    for pattern in AR_PATTERNS:                          # warm up (pre-fault every buffer)
        allreduce_traffic(comm, bufs, pattern)
        if pattern in PUBLIC:
            info[pattern] = (alt if "FIFOs" in pattern else comm).last_algorithm
    res = {}
    for rnd in range(rounds):
        k = rnd % len(AR_PATTERNS)
        for pattern in AR_PATTERNS[k:] + AR_PATTERNS[:k]:   # rotate the order round by round
            ts = []
            for _ in range(reps):
                comm.barrier()
                t = time.perf_counter()
                allreduce_traffic(comm, bufs, pattern)
                ts.append(time.perf_counter() - t)
            res.setdefault(pattern, []).append(max(comm.allgather(np.array([statistics.median(ts)]))))
    for r in regs:
        comm.deregister(r)
    comm.free(bufs.pop("xa"))
    comm.free(bufs.pop("oa"))
    alt.close()
    comm.close()
    return res, info


AR_BOUND_DOC = """\
Per rank, N = bytes of the allreduce; the busbw factor is 1 at 2 ranks, so every row is N / its
time (the phases too, so their times add up against the allreduce's). Plain-buffer bound: the
least a rank with private buffers must load and store (2N + 2N, half of it in cache-resident
shared slices), the fastest of the ring-alone rows (the ring's kernels on private FIFOs, the
FIFO pass free), out of place and in place separately. Shared-memory minimum: N + N, the
dual-write that only buffers the peer can read allow (comm.alloc, or plain buffers after
comm.register moved their pages into shared memory: the "registered" rows, the same numpy
buffers registered once before the rounds; their bound is this minimum, and the plain-buffer bound
beside it is what they beat by no longer being private; "allreduce, comm.alloc" runs the same
schedule on comm.alloc segments, for the cost of the pages being registered ones). memcpy: the dual-write's
traffic through the copy kernel. "dual-write, shared pages": the minimum's kernel on memfd pages
(4 KiB unless shmem huge pages are on), where private buffers may get transparent huge pages: what
the registered rows' page size costs the kernel alone (the bound stays the private one; the
schedule's kernel walks 4 KiB pages ahead, kernels.h HK_PAGED, this row's does not).
Accounting: transports.allreduce_bound_rows. The bounds run
hetccl's own kernels (reduce_arrays, copy_array) without the schedule: they show what the
schedule costs on top of its kernels, not that no faster kernel exists."""


def allreduce_bound_rows(nbytes, quick=False, rounds=15):
    """2-rank allreduce of ``nbytes`` per rank on plain numpy buffers (public ``comm.allreduce``,
    default transports, float32 SUM), against its memory-traffic bound measured in the same rounds
    (every pattern run by both ranks at once after a barrier; slowest rank; median of the
    per-round medians; the order rotated round by round).

    The accounting, per rank, N = nbytes:
    * Any allreduce loads every byte of my input and stores every byte of my output: N loads and
      N stores at least. Only a schedule that reads the peer's buffer reaches that (the symmetric
      dual-write on ``comm.alloc`` buffers, docs/symmetric-memory.md): each rank loads its half of
      both inputs and stores the sum into its half of both outputs, one pass of the dual reduce
      kernel. ``dual-write`` (streaming stores) and ``dual-write, plain stores`` run it on private
      buffers; the faster is the **shared-memory minimum**.
    * Plain numpy buffers are private to their process: the peer can neither load my input nor
      store into my output (CMA is a kernel copy, the same traffic at 0.3-0.4x memcpy here). What
      the peer needs of my input I must store into shared memory, and what I need of its input or
      of the result I must load from there. The least for a private-buffer 2-rank allreduce, per
      rank: my half for the peer copied into shared memory (N/2 loads, N/2 stores); my other half
      reduced with the peer's copy into my output and into shared memory for the peer (N loads, N
      stores); the peer's finished half copied from shared memory into my output (N/2, N/2):
      **2N loads and 2N stores**, of which N + N touch the user's buffers and N + N the shared
      slices, which stay in cache when the work goes slice by slice. That is the FIFO ring's
      schedule (ring.pyx, link_shm.pxd shm_forward). ``ring alone`` runs its kernels as it ran
      them before the one-pass relay step (the reduce into the FIFO, a copy out of it), on
      private slice-size FIFOs (the FIFO pass free); ``forward-kernel ring`` as it ran them before
      the paired copies (one pass of the forward kernel; in place, ordinary stores into its
      output); ``paired ring`` as it runs them now: the forward kernel, and each slice's copy out
      of the FIFO in one pass with the next slice's copy into it (link_shm.pxd: shm_pair); the
      variants change what the schedule could change: slices of 256 KiB (three slices inside L2)
      and the fused step as one pass of the dual kernel (``one-pass ring``, both outputs streamed). The
      fastest of them, out of place and in place separately, is the **plain-buffer bound**:
      the target's "its memory-traffic bound".
    * ``memcpy`` (N bytes) is the dual-write's traffic through the copy kernel: dual-write / memcpy
      below 1 means the reduce kernel, not memory, sets the bound (BOUND_CAVEAT).
    * Where the time goes: allreduce / ``ring alone`` is the FIFO pass (each slice handed from one
      core's cache to the other's, with its handshakes); ``ring alone`` / the plain-buffer bound
      the schedule's kernel and slice choices; the public ``reduce_scatter`` (N -> N/2) and
      ``allgather`` (N/2 -> N) are the ring's two phases as separate calls."""
    rounds, reps = (3, 3) if quick else (rounds, 5)
    res, info = run_pair(_ar_bound_rank, _free_port(), nbytes, rounds, reps, timeout=600)[0]
    bw = {p: nbytes / statistics.median(res[p]) / 1e9 for p in AR_PATTERNS}
    oop = [p for p, v in RING_ALONE.items() if not v[2]]
    inp = [p for p, v in RING_ALONE.items() if v[2]]
    plain = {"allreduce": max(oop, key=bw.get), "allreduce in place": max(inp, key=bw.get)}
    shared = max(("dual-write", "dual-write, plain stores"), key=bw.get)
    rows = [{"pattern": p, "algorithm": info.get(p, ""), "GB/s (N / time)": f"{bw[p]:.2f}",
             "best round GB/s": f"{nbytes / min(res[p]) / 1e9:.2f}",
             "/ plain-buffer bound": f"{bw[p] / bw[plain['allreduce']]:.2f}",
             "/ shared-memory minimum": f"{bw[p] / bw[shared]:.2f}"} for p in AR_PATTERNS]
    summary = [f"{p} / its memory-traffic bound (plain buffers: {b}): {bw[p] / bw[b]:.2f} ({bw[p]:.2f} "
               f"against {bw[b]:.2f} GB/s; target >= 0.9: {'PASS' if bw[p] >= 0.9 * bw[b] else 'FAIL'})"
               for p, b in plain.items()]
    summary.append(f"allreduce / the shared-memory minimum ({shared}): {bw['allreduce'] / bw[shared]:.2f}")
    for p, base in REGISTERED.items():
        b = plain[base]
        summary.append(
            f"{p} ({info.get(p)}; pages shared: {info.get('shared')}) / the shared-memory minimum "
            f"({shared}, its bound: registered buffers are shared): {bw[p] / bw[shared]:.2f} "
            f"({bw[p]:.2f} against {bw[shared]:.2f} GB/s; target >= 0.9: "
            f"{'PASS' if bw[p] >= 0.9 * bw[shared] else 'FAIL'}); / the plain-buffer bound ({b}): "
            f"{bw[p] / bw[b]:.2f} ({'PASS' if bw[p] >= 0.9 * bw[b] else 'FAIL'} at 0.9)")
    sp = bw["dual-write, shared pages"]
    summary.append(
        f"the page size (shmem huge pages: {shmem_huge_pages()}): dual-write, shared pages / the "
        f"shared-memory minimum: {sp / bw[shared]:.2f} ({sp:.2f} against {bw[shared]:.2f} GB/s); "
        + "; ".join(f"{p} / dual-write, shared pages (the same pages' kernel alone): {bw[p] / sp:.2f}"
                    for p in REGISTERED))
    for p, base in zip(AUTO, ("allreduce", "allreduce in place")):
        b = plain[base]
        t1, t2 = info.get(f"{p} first", 0), info.get(f"{p} second", 0)
        summary.append(
            f"{p} ({info.get(p)}): / the plain-buffer bound ({b}) {bw[p] / bw[b]:.2f} ({bw[p]:.2f} "
            f"against {bw[b]:.2f} GB/s; target >= 0.9: {'PASS' if bw[p] >= 0.9 * bw[b] else 'FAIL'}); "
            f"/ the shared-memory minimum {bw[p] / bw[shared]:.2f}; {bw[p] / bw[base]:.2f}x {base} "
            f"(automatic registration off); its first call {t1 * 1e3:.1f} ms "
            f"({info.get(f'{p} first algorithm')}, first sighting), second {t2 * 1e3:.1f} ms "
            f"({info.get(f'{p} second algorithm')}, the pages moved), steady "
            f"{statistics.median(res[p]) * 1e3:.1f} ms")
    summary.append(f"allreduce, registered / allreduce, comm.alloc (the same schedule on /dev/shm "
                   f"segments): {bw['allreduce, registered'] / bw['allreduce, comm.alloc']:.2f}")
    summary.append(f"comm.register of one {fmt_size(nbytes)} buffer (moving its pages into shared "
                   f"memory: one copy): {info.get('register', 0) * 1e3:.1f} ms")
    summary.append(f"what if the FIFOs were {fmt_size(ALT_FIFO)} (slices of {fmt_size(ALT_FIFO // 4)}; "
                   f"the same ring, a second communicator): allreduce "
                   f"{bw['allreduce, 1 MiB FIFOs'] / bw['allreduce']:.2f}x, in place "
                   f"{bw['allreduce in place, 1 MiB FIFOs'] / bw['allreduce in place']:.2f}x; against "
                   f"the plain-buffer bound {bw['allreduce, 1 MiB FIFOs'] / bw[plain['allreduce']]:.2f} "
                   f"and {bw['allreduce in place, 1 MiB FIFOs'] / bw[plain['allreduce in place']]:.2f}")
    summary.append(f"what if the slices were {fmt_size(ALT_SLICE)} on the default FIFOs (ring.ring_variant): "
                   f"allreduce {bw['allreduce, 256K slices'] / bw['allreduce']:.2f}x, in place "
                   f"{bw['allreduce in place, 256K slices'] / bw['allreduce in place']:.2f}x; against "
                   f"the plain-buffer bound {bw['allreduce, 256K slices'] / bw[plain['allreduce']]:.2f} "
                   f"and {bw['allreduce in place, 256K slices'] / bw[plain['allreduce in place']]:.2f}")
    t = {p: statistics.median(res[p]) * 1e3 for p in AR_PATTERNS}
    summary.append(f"where the time goes: reduce_scatter {t['reduce_scatter']:.2f} ms + allgather "
                   f"{t['allgather']:.2f} ms against allreduce {t['allreduce']:.2f} ms; allreduce / "
                   f"ring alone {bw['allreduce'] / bw['ring alone']:.2f} (the FIFO pass); ring alone / "
                   f"plain-buffer bound {bw['ring alone'] / bw[plain['allreduce']]:.2f} (slice and "
                   f"kernel choices); 256K slices {bw['ring alone, 256K slices'] / bw['ring alone']:.2f}x, "
                   f"one-pass forward {bw['one-pass ring'] / bw['ring alone']:.2f}x, the forward kernel "
                   f"{bw['forward-kernel ring'] / bw['ring alone']:.2f}x (in place "
                   f"{bw['forward-kernel ring in place'] / bw['ring alone in place']:.2f}x) the ring "
                   f"alone, the paired copies {bw['paired ring'] / bw['forward-kernel ring']:.2f}x "
                   f"(in place {bw['paired ring in place'] / bw['forward-kernel ring in place']:.2f}x)"
                   f" the forward kernel; "
                   f"dual-write / memcpy {bw['dual-write'] / bw['memcpy']:.2f} (the reduce kernel "
                   f"against a copy); streaming / plain stores: dual-write "
                   f"{bw['dual-write'] / bw['dual-write, plain stores']:.2f}, memcpy "
                   f"{bw['memcpy'] / bw['memcpy, plain stores']:.2f}")
    return rows, summary, info


# ---------------------------------------------------------------- output

def table(rows):
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="p2p,limits,collectives", help="sections to run (comma-separated)")
    p.add_argument("--transports", default=",".join(FACTORIES), help="p2p transports (default all)")
    p.add_argument("--sizes", default="8,4K,64K,1M,4M", help="p2p message sizes")
    p.add_argument("--coll-sizes", default="1M,8M,64M", help="collective sizes (bytes per rank's buffer)")
    p.add_argument("--coll-rounds", type=int, default=27, help="interleaved rounds of the collectives section")
    p.add_argument("--ar-size", default="64M", help="allreduce-bound: bytes per rank")
    p.add_argument("--ar-rounds", type=int, default=15, help="allreduce-bound: interleaved rounds")
    p.add_argument("--quick", action="store_true", help="smoke run: fewer iterations and sizes")
    a = p.parse_args(argv)
    only = set(a.only.split(","))
    sizes = [parse_size(s) for s in a.sizes.split(",")]
    if "limits" in only:
        print("## physical limits (this run)\n\n" + table(limit_rows(a.quick)) + "\n", flush=True)
    if "p2p" in only:
        rows = []
        for name in a.transports.split(","):
            rows += p2p_rows(name, FACTORIES[name], sizes, a.quick)
            if name in REFERENCES:
                rows += REFERENCES[name](sizes, a.quick)
        print("## point to point, 2 ranks (OSU osu_bw window %d, osu_latency)\n\n" % WINDOW + table(rows) + "\n",
              flush=True)
    if "collectives" in only:
        cs = [parse_size(s) for s in a.coll_sizes.split(",")]
        ratios, bounds = collective_rows(cs, a.quick, a.coll_rounds)
        print("## single copy (c2c, symmetric buffers) vs staged (shm), 2 ranks, float32 SUM, out of place, interleaved\n\n"
              + table(ratios) + "\n", flush=True)
        print("## allgather against its memory-traffic bound (both ranks at once, same rounds)\n\n"
              + table(bounds) + "\n\n" + BOUND_CAVEAT + "\n", flush=True)
    if "allreduce-bound" in only:
        n = parse_size(a.ar_size)
        rows, summary, info = allreduce_bound_rows(n, a.quick, a.ar_rounds)
        print(f"## allreduce against its memory-traffic bound, 2 ranks, {fmt_size(n)} per rank, plain "
              f"numpy buffers, float32 SUM ({info['transport']}, ring slice {fmt_size(info['slice'])}; "
              f"same rounds)\n\n" + table(rows) + "\n\n" + "\n".join(summary) + "\n\n"
              + AR_BOUND_DOC + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
