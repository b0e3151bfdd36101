"""Train a small MLP on synthetic data with DistributedDataParallel over the "hetccl" backend.

The same script runs under every launcher; only the backend string differs from a gloo script:

    torchrun --nproc-per-node 2 examples/ddp_train.py
    mpirun -np 2 python examples/ddp_train.py
    hetccl run -n 2 python examples/ddp_train.py

Options: --backend gloo (to compare), --steps, --batch, --hidden, --seed, --save FILE (rank 0 writes
the final parameters with torch.save). Prints the loss of every step and the steps per second.
"""
import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP


def make_model(hidden: int, inputs: int = 64, classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="hetccl")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default="")
    args = ap.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group(args.backend)
    rank, size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)                      # the same initial weights on every rank
    model = DDP(make_model(args.hidden))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = torch.Generator().manual_seed(args.seed + 1 + rank)   # each rank its own shard
    x = torch.randn(args.batch, 64, generator=data)
    y = torch.randint(0, 10, (args.batch,), generator=data)

    start = time.perf_counter()
    for step in range(args.steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()                               # gradients are averaged over all ranks here
        opt.step()
        if rank == 0:
            print(f"step {step:3d}  loss {loss.item():.5f}", flush=True)
    elapsed = time.perf_counter() - start
    if rank == 0:
        print(f"{args.backend}: {size} ranks, {args.steps / elapsed:.1f} steps/s", flush=True)
        if args.save:
            torch.save({k: v.detach().clone() for k, v in model.module.state_dict().items()},
                       args.save)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
