"""Soak: mixed collectives with random sizes, dtypes and ops, every result checked, plus
point-to-point traffic; resident memory, open fds and /dev/shm segments sampled on every rank.

    python bench/soak.py --ranks 4 --minutes 30 --sample 60      # the benchmark run
    python bench/soak.py --ranks 4 --minutes 0.75 --sample 5 --warmup 15   # CI (tests/test_endurance.py)

The ranks run under ``hetccl run``. All ranks draw the same sequence of calls from one seed, and
each fills its input from (seed, call, rank) with small integers, so every rank computes every
expected result itself with numpy (exact for every dtype and op: no rounding). A call is one of
allreduce, allgather, reduce_scatter, broadcast, reduce, alltoall, barrier, or a point-to-point
round (each rank sends to the next, receives from the previous; every fourth round takes
ANY_SOURCE). Sizes are log-uniform from 0 to 256 Ki elements, dtypes int32, int64, float32,
float64, float16 and bfloat16 (ml_dtypes), ops SUM, PROD, MIN, MAX (+ BAND/BOR/BXOR on integers).

Every ``--sample`` seconds (agreed by an allreduce every 16 calls) each rank measures its RSS
(/proc/self/statm, after gc and malloc_trim; the ranks run with MALLOC_MMAP_THRESHOLD_=131072), fds (/proc/self/fd) and the hetccl segments in
/dev/shm that it owns (its pid in the name), and rank 0 prints one
line per sample with the max over ranks. At the end rank 0 prints the totals and the growth from
the first samples after warm-up (``--warmup`` seconds, default 10% of the run) to the last ones
(medians of three):
``wrong=0 rss_growth_pct=... fds_growth=... shm_growth=...``; the exit status is 1 if any result
was wrong or anything grew past the targets (RSS 2 %, fds 0, segments 0).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.sysconf("SC_PAGE_SIZE")

INT_OPS = ("SUM", "PROD", "MIN", "MAX", "BAND", "BOR", "BXOR")
FLOAT_OPS = ("SUM", "PROD", "MIN", "MAX")
COLLECTIVES = ("allreduce", "allreduce", "allgather", "reduce_scatter", "broadcast", "reduce",
               "alltoall", "barrier", "p2p", "p2p")


def _dtypes():
    import ml_dtypes
    return [np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.float32), np.dtype(np.float64),
            np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]


def _sample() -> tuple[int, int, int]:
    """(RSS bytes, open fds, this rank's hetccl segments in /dev/shm). Garbage is collected and the
    allocator's free memory handed back first (malloc_trim), so RSS is what is live, not the
    high-water mark of the last large call's temporaries."""
    from hetccl.memory.reap import owner_pid

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * PAGE
    fds = len(os.listdir("/proc/self/fd"))
    # this rank's own segments only: /dev/shm is shared with every other job on the host
    me, job = os.getpid(), os.environ.get("HETCCL_JOB_ID", "?")
    shm = sum(owner_pid(n) == me or n.startswith(f"hetccl-{job}-") for n in os.listdir("/dev/shm"))
    return rss, fds, shm


def _data(rng_seed: int, n: int, dt, op: str, size: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s input: small integers, so every reduction is exact in every dtype."""
    rng = np.random.default_rng([rng_seed, rank])
    if op == "PROD":          # products of size factors stay exact: +-1 and a few 2s
        v = rng.choice(np.array([1, -1, 1, 2], dtype=np.int64), n)
        if dt.kind == "u":
            v = np.abs(v)
    else:
        hi = 8 if dt.itemsize <= 2 else 1000
        v = rng.integers(0, hi, n)
    return v.astype(dt)


_UFUNCS = {"SUM": np.add, "PROD": np.multiply, "MIN": np.minimum, "MAX": np.maximum,
           "BAND": np.bitwise_and, "BOR": np.bitwise_or, "BXOR": np.bitwise_xor}


def _reduce(arrays, op: str):
    return _UFUNCS[op].reduce(np.stack(arrays), axis=0).astype(arrays[0].dtype)


def _same(got, want) -> bool:
    return got.shape == want.shape and bool(np.array_equal(got.astype(np.float64),
                                                           want.astype(np.float64)))


def worker(args) -> int:
    import hetccl
    from hetccl import ReduceOp
    from hetccl.p2p import ANY_SOURCE

    comm = hetccl.init(timeout=120)
    rank, size = comm.rank, comm.size
    dtypes = _dtypes()
    if args.trace:
        import tracemalloc
        tracemalloc.start(8)
    snapshot = None
    rng = np.random.default_rng(args.seed)
    wrong = calls = p2p = 0
    t0 = time.monotonic()
    end = t0 + args.minutes * 60
    warmup = args.warmup if args.warmup is not None else args.minutes * 6
    next_sample = t0 + min(args.sample, 5.0)   # a first sample early: the start-up figure
    samples = []
    kinds: dict[str, int] = {}
    while True:
        if calls % 16 == 0:                     # agree (MAX) whether to sample or stop now
            now = time.monotonic()
            due = np.array([now >= next_sample, now >= end], dtype=np.int32)
            comm.allreduce(due, op=ReduceOp.MAX)
            if due.any():
                mine = np.array(_sample(), dtype=np.int64)
                worst = comm.allgather(mine).reshape(size, 3).max(axis=0)
                samples.append((now - t0, *map(int, worst)))
                if rank == 0:
                    print(f"t={now - t0:7.1f}s calls={calls} p2p={p2p} wrong={wrong} "
                          f"rss_max_mib={worst[0] / 2**20:.1f} fds_max={worst[1]} "
                          f"shm={worst[2]}", flush=True)
                next_sample = now + args.sample
                if args.trace and snapshot is None and now - t0 >= warmup:
                    snapshot = tracemalloc.take_snapshot()
            if due[1]:
                break
        kind = COLLECTIVES[rng.integers(len(COLLECTIVES))]
        dt = dtypes[rng.integers(len(dtypes))]
        ops = INT_OPS if dt.kind in "iu" else FLOAT_OPS
        op = ops[rng.integers(len(ops))]
        n = int(2 ** rng.uniform(0, 18)) - 1
        seed = int(rng.integers(1 << 62))
        root = int(rng.integers(size))
        calls += 1
        kinds[kind] = kinds.get(kind, 0) + 1
        ins = [_data(seed, n if kind not in ("reduce_scatter", "alltoall") else n * size, dt, op,
                     size, r) for r in range(size)]
        x = ins[rank].copy()
        if kind == "allreduce":
            comm.allreduce(x, op=ReduceOp[op])
            ok = _same(x, _reduce(ins, op))
        elif kind == "allgather":
            ok = _same(comm.allgather(x), np.concatenate(ins))
        elif kind == "reduce_scatter":
            out = np.empty(n, dt)
            comm.reduce_scatter(x, out, op=ReduceOp[op])
            ok = _same(out, _reduce(ins, op)[rank * n:(rank + 1) * n])
        elif kind == "broadcast":
            comm.broadcast(x, root=root)
            ok = _same(x, ins[root])
        elif kind == "reduce":
            got = comm.reduce(x, root=root, op=ReduceOp[op])
            ok = got is None if rank != root else _same(got, _reduce(ins, op))
        elif kind == "alltoall":
            out = np.empty_like(x)
            comm.alltoall(x, out)
            ok = _same(out, np.concatenate([ins[r][rank * n:(rank + 1) * n] for r in range(size)]))
        elif kind == "barrier":
            comm.barrier()
            ok = True
        else:                                   # a point-to-point ring round
            p2p += 1
            dst, src = (rank + 1) % size, (rank - 1) % size
            tag = int(rng.integers(1000))
            comm.send(x, dst, tag=tag)
            got = np.empty_like(x)
            frm = comm.recv(got, src if p2p % 4 else ANY_SOURCE, tag=tag)
            ok = _same(got, ins[src]) and (frm is None or frm == src)
        if not ok:
            wrong += 1
            print(f"rank {rank}: WRONG {kind} n={n} {dt} {op} root={root}", flush=True)
        ins = x = out = got = None              # the next sample must not count this call's arrays
    if args.trace and rank == 0 and snapshot is not None:
        grown = tracemalloc.take_snapshot().compare_to(snapshot, "traceback")
        print("Python allocations grown since the warm-up (tracemalloc, rank 0):")
        for st in grown[:8]:
            print(f"  {st.size_diff / 1024:+.1f} KiB in {st.count_diff:+d} blocks")
            for line in st.traceback.format()[-6:]:
                print(f"      {line}")
    total_wrong = comm.allreduce(np.array([wrong], dtype=np.int64), op=ReduceOp.SUM)[0]
    if rank == 0:
        after = [s for s in samples if s[0] >= warmup] or samples[-1:]
        k = min(3, max(1, len(after) // 2))      # medians of 3 samples: one noisy sample is not a trend
        first = [float(np.median([s[i] for s in after[:k]])) for i in range(4)]
        last = [float(np.median([s[i] for s in after[-k:]])) for i in range(4)]
        rss_growth = 100.0 * (last[1] - first[1]) / first[1]
        fds_growth, shm_growth = int(last[2] - first[2]), int(last[3] - first[3])
        print(f"calls per kind: {dict(sorted(kinds.items()))}")
        print(f"RESULT ranks={size} seconds={samples[-1][0]:.0f} calls={calls} p2p_rounds={p2p} "
              f"wrong={total_wrong} rss_first_mib={first[1] / 2**20:.1f} "
              f"rss_last_mib={last[1] / 2**20:.1f} rss_growth_pct={rss_growth:.2f} "
              f"fds_growth={fds_growth} shm_growth={shm_growth} (from t={first[0]:.0f}s)",
              flush=True)
        bad = total_wrong or rss_growth > 2.0 or fds_growth > 0 or shm_growth > 0
    comm.close()
    return 1 if rank == 0 and bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds before the growth baseline (default: 10%% of the run)")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--trace", action="store_true",
                    help="rank 0 prints the Python allocations that grew after the warm-up")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    cmd = [sys.executable, "-m", "hetccl", "run", "-n", str(args.ranks), "--",
           sys.executable, os.path.abspath(__file__), "--worker", "--minutes", str(args.minutes),
           "--sample", str(args.sample), "--seed", str(args.seed)]
    if args.warmup is not None:
        cmd += ["--warmup", str(args.warmup)]
    if args.trace:
        cmd.append("--trace")
    # a fixed mmap threshold: large arrays are mapped and unmapped, not kept in a heap that only
    # grows (glibc raises the threshold as large blocks are freed), so RSS tracks live memory
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MALLOC_MMAP_THRESHOLD_="131072")
    return subprocess.call(cmd, env=env, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
