"""Does a communicator's first collective pay for the control plane's connections?

    python bench/init_plane.py                 # 8 ranks, 6 jobs alternating the two variants
    python bench/init_plane.py -n 4 --jobs 10

``init`` returns once the data links are up; the control plane (hetccl/recovery/plane.py) connects
its peer processes on background threads (the higher process token of a pair connects, the lower
accepts on its handshake gate), so those handshakes may still run while the first collectives do.
Each job (tests/launcher.py ranks; the probe is cached after the first job, or after three on a busy
host, whose probes are noisy and repeated: compare the jobs whose init is short) times, on every rank:

* ``init``: hetccl.init();
* ``plane``: from init's return until every peer's control connection is up (polled every 1 ms);
  in the ``wait`` variant before the first collective, in ``go`` after the first collectives;
* ``first``: the first barrier, ``second``: the next one, ``ar``: the first 1 MiB allreduce.
Reported: per variant the median over jobs of the slowest rank. If ``first`` in ``go`` exceeds
``first`` in ``wait`` by about what ``plane`` takes, the first collective pays for it.
"""
import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _plane_up(comm):
    ft = comm.context.ft
    plane = ft.plane
    with plane.lock:
        peers = [plane._peers.get((t, ft.fp)) for r, t in enumerate(ft.tokens) if r != comm.rank]
    return all(p is not None and p.state == "up" for p in peers)


def _wait_plane(comm):
    t = time.perf_counter()
    while not _plane_up(comm):
        time.sleep(0.001)
    return time.perf_counter() - t


def rank_main(rank, size, wait):
    import numpy as np

    import hetccl
    t = time.perf_counter()
    comm = hetccl.init(timeout=120)
    out = {"init": time.perf_counter() - t, "up_at_return": _plane_up(comm)}
    if wait:
        out["plane"] = _wait_plane(comm)
    t = time.perf_counter()
    comm.barrier()
    out["first"] = time.perf_counter() - t
    t = time.perf_counter()
    comm.barrier()
    out["second"] = time.perf_counter() - t
    x = np.ones(1 << 18, np.float32)
    t = time.perf_counter()
    comm.allreduce(x)
    out["ar"] = time.perf_counter() - t
    if not wait:
        out["plane"] = _wait_plane(comm)
    comm.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=6)
    a = ap.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from tests.launcher import run_ranks
    print(f"# {a.n} ranks, load {os.getloadavg()[0]:.1f} at the start; ms, slowest rank")
    rows = {"wait": [], "go": []}
    run_ranks(rank_main, a.n, False, timeout=300)              # the probe's cache entry
    for j in range(a.jobs):
        v = ("wait", "go")[j % 2]
        res = run_ranks(rank_main, a.n, v == "wait", timeout=300)
        r = {k: max(x[k] for x in res) for k in ("init", "plane", "first", "second", "ar")}
        r["up"] = sum(x["up_at_return"] for x in res)
        rows[v].append(r)
        print(f"{v:>4} job {j}: init {r['init'] * 1e3:7.1f}  plane {r['plane'] * 1e3:7.1f}  first "
              f"{r['first'] * 1e3:7.2f}  second {r['second'] * 1e3:7.2f}  ar {r['ar'] * 1e3:7.2f}  "
              f"ranks with the plane up at init's return {r['up']}/{a.n}", flush=True)
    for v, rs in rows.items():
        med = {k: statistics.median(r[k] for r in rs) * 1e3 for k in ("init", "plane", "first", "second", "ar")}
        print(f"# {v}: " + "  ".join(f"{k} {m:.2f}" for k, m in med.items()))
    print(f"# load {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
