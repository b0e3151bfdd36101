"""One rank of the GPU check (bench/gpu_check.sh): a mixed communicator, checked and timed.

    python -m hetccl run -n G+2 -- python bench/gpu_check.py --gpus G [--fake] [--out FILE]

Ranks 0..G-1 form an NCCL island, each on its own GPU (CUDA tensors from torch); ranks G and G+1
form a CPU island on hetccl's own transports (numpy arrays). Every rank checks allreduce (SUM),
allgather and broadcast of float32 against numpy, then the GPU ranks time the same calls on the
same tensors three ways: hetccl's mixed communicator, hetccl on the GPU ranks alone (a split: one
NCCL island), and torch.distributed's NCCL backend on those ranks. Rank 0 writes one table.

``--fake`` (what runs on a machine without a GPU): the NCCL island is the NCCL-API test double
(tests/fakeccl, host memory, $FAKECCL_DIR), the GPU ranks' "tensors" are numpy arrays, and the
peer is torch's gloo backend: every step above runs except CUDA, the real NCCL and torch's NCCL.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from checkout import IMPORT_ROOT  # noqa: E402,F401  (which hetccl: the installed one, or this checkout; bench/checkout.py)

import hetccl  # noqa: E402
from hetccl.bridges import formation  # noqa: E402

SIZES = (1 << 10, 1 << 20, 1 << 24)          # float32 elements: 4 KiB, 4 MiB, 64 MiB
FAKE_SIZES = (1 << 10, 1 << 14)              # the double holds 1 MiB per rank and call
ITERS = {1 << 10: 50, 1 << 20: 20, 1 << 24: 5}


def open_fake(ctx):
    """The NCCL-API double as the GPU island's library (--fake), host memory."""
    from hetccl.bridges import nccl
    from hetccl.bridges.base import HOST
    from hetccl.bridges.vendor import Runtime
    d = os.environ["FAKECCL_DIR"]
    # a host-memory island's bridge is priced at 16 MiB too (collectives/islands.py PROBE_SIZES):
    # the double's per-rank slot must hold it (read when its communicator opens)
    os.environ.setdefault("FAKECCL_SLOT_BYTES", str(16 << 20))
    v = nccl.custom("fakeccl", os.path.join(d, "libfakeccl.so"), "fakeccl",
                    Runtime((os.path.join(d, "libfakert.so"),), "fakert"), memory=HOST, dlpack_devices=(1,))
    return nccl.NcclBridge(ctx.store, ctx.key_prefix, ctx.index, len(ctx.island.ranks), vendor=v, timeout=ctx.timeout)


class Buffers:
    """float32 buffers on the rank's device (torch CUDA) or host (numpy), and their host copies."""

    def __init__(self, gpu: bool, fake: bool, device: int):
        self.cuda = gpu and not fake
        if self.cuda:
            import torch
            self.torch = torch
            torch.cuda.set_device(device)

    def make(self, host: np.ndarray):
        return self.torch.from_numpy(host).cuda() if self.cuda else host.copy()

    def empty(self, n: int):
        return self.torch.empty(n, dtype=self.torch.float32, device="cuda") if self.cuda else np.empty(n, np.float32)

    def host(self, buf) -> np.ndarray:
        return buf.cpu().numpy() if self.cuda else np.asarray(buf)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()


def data(rank: int, n: int) -> np.ndarray:
    return ((np.arange(n) + 3 * rank) % 17).astype(np.float32)


def check(comm, bufs: Buffers, n: int) -> list[str]:
    """allreduce / allgather / broadcast of n float32 against numpy; the list of failures."""
    wrong, size = [], comm.size
    x = bufs.make(data(comm.rank, n))
    comm.allreduce(x, hetccl.SUM)
    want = sum(data(r, n) for r in range(size))
    if not np.array_equal(bufs.host(x), want):
        wrong.append(f"allreduce n={n}")
    out = bufs.empty(n * size)
    comm.allgather(bufs.make(data(comm.rank, n)), out=out)
    if not np.array_equal(bufs.host(out), np.concatenate([data(r, n) for r in range(size)])):
        wrong.append(f"allgather n={n}")
    b = bufs.make(data(comm.rank, n))
    comm.broadcast(b, root=size - 1)                 # the root is a CPU-island rank
    if not np.array_equal(bufs.host(b), data(size - 1, n)):
        wrong.append(f"broadcast n={n}")
    return wrong


def timed(fn, bufs: Buffers, iters: int) -> float:
    fn()
    bufs.sync()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        bufs.sync()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def hetccl_calls(comm, bufs, n):
    x, src = bufs.make(data(comm.rank, n)), bufs.make(data(comm.rank, n))
    out = bufs.empty(n * comm.size)
    return {"allreduce": lambda: comm.allreduce(x, hetccl.SUM),
            "allgather": lambda: comm.allgather(src, out=out),
            "broadcast": lambda: comm.broadcast(x, root=0)}


def torch_calls(dist, bufs, rank, size, n):
    t = bufs.torch if bufs.cuda else None
    if t is None:
        import torch as t
    mk = (lambda a: t.from_numpy(a).cuda()) if bufs.cuda else t.from_numpy
    x, src = mk(data(rank, n)), mk(data(rank, n))
    out = t.empty(n * size, dtype=t.float32, device="cuda" if bufs.cuda else "cpu")
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor   # torch >= 2.13 / older
    return {"allreduce": lambda: dist.all_reduce(x),
            "allgather": lambda: gather(out, src),
            "broadcast": lambda: dist.broadcast(x, src=0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, required=True)
    ap.add_argument("--fake", action="store_true")
    ap.add_argument("--out", default="")
    ap.add_argument("--port", type=int, default=29561, help="torch.distributed's TCP rendezvous port")
    args = ap.parse_args(argv)
    g = args.gpus
    kind = "fakeccl" if args.fake else "nccl"
    if args.fake:
        formation.register("fakeccl", "__main__:open_fake")
    comm = hetccl.init(timeout=120, bridges={r: kind for r in range(g)})
    gpu = comm.rank < g
    bufs = Buffers(gpu, args.fake, comm.rank)
    kinds = [(i.kind, list(i.ranks)) for i in comm.context.islands.islands] if comm.context.islands else []
    sizes = FAKE_SIZES if args.fake else SIZES
    wrong = [w for n in (1, 1001, sizes[1]) for w in check(comm, bufs, n)]
    sub = comm.split(0 if gpu else 1, bridges={r: kind for r in range(g)})    # the GPU ranks alone
    rows = []
    dist = None
    if gpu:
        import torch.distributed as dist
        backend = "gloo" if args.fake else "nccl"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{args.port}", rank=comm.rank, world_size=g)
    for n in sizes:
        it = 3 if args.fake else ITERS[n]
        mixed = hetccl_calls(comm, bufs, n)
        alone = hetccl_calls(sub, bufs, n) if gpu else {}
        peer = torch_calls(dist, bufs, comm.rank, g, n) if gpu else {}
        for op in ("allreduce", "allgather", "broadcast"):
            t_mixed = timed(mixed[op], bufs, it)
            if gpu:
                rows.append((op, n * 4, t_mixed, timed(alone[op], bufs, it), timed(peer[op], bufs, it)))
    if dist is not None:
        dist.destroy_process_group()
    sub.close()
    comm.close()
    if comm.rank == 0:
        peer = "torch gloo" if args.fake else "torch NCCL"
        lines = [f"# GPU check ({'DRY RUN: fake NCCL island in host memory, gloo as the peer' if args.fake else f'{g} GPU(s), real NCCL'}); "
                 f"islands {kinds}",
                 f"{'op':<10} {'bytes':>10} {'hetccl mixed us':>16} {'hetccl gpu-only us':>19} {peer + ' us':>15}"]
        for op, nb, a, b, c in rows:
            lines.append(f"{op:<10} {nb:>10} {a:>16.1f} {b:>19.1f} {c:>15.1f}")
        lines.append(f"# checks against numpy (allreduce/allgather/broadcast, n = 1, 1001, {sizes[1]}): "
                     f"{'all exact' if not wrong else 'WRONG: ' + ', '.join(wrong)} on rank 0 (any other "
                     f"rank with a wrong result exits non-zero)")
        text = "\n".join(lines)
        print(text, flush=True)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
