"""Train through failures: DDP on the hetccl backend, where the survivors of a killed rank shrink the
process group and go on from the last completed step, instead of restarting the job.

    hetccl run -n 4 --keep-going -- python examples/elastic_ddp.py --kill 2@6
    hetccl run -n 4 --keep-going -- python examples/elastic_ddp.py --kill 0@6      # rank 0 too
    mpirun -np 4 --oversubscribe --with-ft ulfm python examples/elastic_ddp.py --kill 1@6

``--kill R@S`` makes launch rank R kill itself with SIGKILL in the middle of step S's backward
(while DDP's gradient allreduces are in flight); repeat it for more failures. Killing a rank from
the outside (``kill -9 PID``; every rank prints its pid) works the same. The launcher must let the
survivors run on: ``hetccl run --keep-going``, ``mpirun --with-ft ulfm``, ``srun --no-kill``
(docs/launching.md; torchrun's agent stops every worker of a node when one fails).

How a step stays whole (at most the step in flight is lost per failure):

* **The commit point.** Everything in a step that communicates (DDP's gradient allreduce in
  ``backward()``, the loss allreduce) comes before ``opt.step()``, which is local. A failure
  therefore always leaves this rank's parameters and optimizer state as they were after the last
  step it completed: there is nothing to undo (``--snapshot`` keeps an explicit copy anyway and
  restores it, for steps whose optimizer communicates after changing the state).
* **Recovery.** ``hetccl.torch.shrink_group`` gives the survivors a new group (ranks 0..k-1 in
  their old order). A collective can complete on some ranks and fail on others, so a survivor may
  be one step ahead: the survivors gather their step counts, and the most advanced one broadcasts
  its parameters and optimizer state. Nobody redoes a step that any survivor completed; the step
  in flight is redone. The steps lost per failure (printed) are the steps a survivor had started
  but did not keep: 1 (the step in flight), or 0 for a survivor that was behind.
* **Data sharding follows the group.** Step s trains on a fixed global batch (rows of a seeded
  permutation of the data set, the same on every rank). Rank r of a group of k takes rows r::k,
  so after a shrink the survivors split the same global batch: no sample is dropped or seen
  twice. Each rank's loss is scaled by k/B (B: the global batch), so DDP's average over k ranks is
  the gradient of the global batch's mean loss whatever k is: the run follows the same
  trajectory as one process without failures (``--reference`` checks it).

At the end every survivor prints a hash of its parameters, and group rank 0 gathers them all and
prints whether they are identical.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import time
from datetime import timedelta

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import hetccl
import hetccl.torch

FAILURE_NAMES = ("PeerLostError", "CommAborted", "CommRevoked", "HetcclTimeout")


def is_failure(e: BaseException) -> bool:
    """A lost or revoked peer: hetccl's errors, or DDP's RuntimeError wrapping one."""
    if isinstance(e, hetccl.HetcclError):
        return True
    return isinstance(e, RuntimeError) and any(n in str(e) for n in FAILURE_NAMES)


def describe(e: BaseException) -> str:
    """The first line of a failure, from hetccl's error on (DDP prefixes its own words)."""
    text = f"{type(e).__name__}: {e}".splitlines()[0]
    starts = [text.find(n) for n in FAILURE_NAMES if n in text]
    return text[min(starts):] if starts else text


def make_model(inputs: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, 1))


class Data:
    """A fixed regression data set (a random teacher network's outputs plus noise); step s's
    global batch is a deterministic function of s, the same on every rank."""

    def __init__(self, seed: int, samples: int, inputs: int, batch: int):
        g = torch.Generator().manual_seed(seed + 1)
        self.x = torch.randn(samples, inputs, generator=g)
        teacher = make_model(inputs, 8)
        with torch.no_grad():
            for p in teacher.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            self.y = teacher(self.x) + 0.01 * torch.randn(samples, 1, generator=g)
        self.seed, self.batch = seed, batch
        self.per_epoch = max(1, samples // batch)

    def global_batch(self, step: int):
        epoch, i = divmod(step, self.per_epoch)
        perm = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed + 100 + epoch))
        rows = perm[i * self.batch:(i + 1) * self.batch]
        return self.x[rows], self.y[rows]

    def shard(self, step: int, rank: int, size: int):
        """Rank ``rank`` of ``size``'s share of step ``step``'s global batch: rows rank::size."""
        x, y = self.global_batch(step)
        return x[rank::size], y[rank::size]


def make_optimizer(net: nn.Module, lr: float, momentum: float) -> torch.optim.SGD:
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    for p in net.parameters():        # the momentum exists from the start, so every rank's state
        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)   # has the same shape (zeros = none)
    return opt


def state_vector(net: nn.Module, opt) -> torch.Tensor:
    """Parameters and momentum, flat (a copy): what a step changes."""
    params = list(net.parameters())
    return torch.cat([p.detach().reshape(-1) for p in params]
                     + [opt.state[p]["momentum_buffer"].reshape(-1) for p in params])


def load_state_vector(net: nn.Module, opt, vec: torch.Tensor) -> None:
    params = list(net.parameters())
    targets = [p.data for p in params] + [opt.state[p]["momentum_buffer"] for p in params]
    offset = 0
    with torch.no_grad():
        for t in targets:
            t.copy_(vec[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def params_hash(net: nn.Module) -> str:
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:16]


def release(pg) -> None:
    """Close a revoked group without waiting for the dead. The default group is shut down
    directly: destroy_process_group(WORLD) would deregister every group, the new ones too."""
    if pg is dist.group.WORLD:
        pg.shutdown()
    else:
        dist.destroy_process_group(pg)


class Trainer:
    def __init__(self, args):
        self.args = args
        self.launch_rank = dist.get_rank()
        self.pg = dist.group.WORLD
        self.members = list(range(dist.get_world_size()))   # launch rank of each group rank
        torch.manual_seed(args.seed)                         # the same initial weights everywhere
        self.net = make_model(args.inputs, args.hidden)
        self.opt = make_optimizer(self.net, args.lr, args.momentum)
        self.data = Data(args.seed, args.samples, args.inputs, args.batch)
        self.kills = {step for rank, step in args.kill if rank == self.launch_rank}
        self.step = 0                  # steps completed (committed) by this rank
        self.snapshot = None           # --snapshot: the state after the last completed step
        self.recoveries = 0
        self.model = self.wrap()

    def wrap(self) -> DDP:
        # small buckets: a step's gradients go out in several allreduces, so a kill lands mid-flight
        return DDP(self.net, process_group=self.pg, bucket_cap_mb=0.004)

    def say(self, text: str, everyone: bool = False) -> None:
        if everyone or self.pg.rank() == 0:
            print(text, flush=True)

    # ------------------------------------------------------------------ one step
    def train_step(self) -> float:
        k, r = self.pg.size(), self.pg.rank()
        x, y = self.data.shard(self.step, r, k)
        if self.args.snapshot:
            self.snapshot = state_vector(self.net, self.opt)
        self.opt.zero_grad(set_to_none=True)
        out = self.model(x)
        err = ((out - y) ** 2).sum()
        loss = err * (k / self.args.batch)              # DDP averages over k: the global mean
        if self.step in self.kills:
            self.net[0].weight.register_hook(self.die)   # the last gradient of the backward pass
        loss.backward()                                  # DDP's allreduces: a failure raises here
        total = err.detach().reshape(1).clone()
        dist.all_reduce(total, group=self.pg)            # the global batch's loss
        self.opt.step()                                  # local: the commit point
        self.step += 1
        return float(total) / self.args.batch

    def die(self, grad):
        print(f"launch rank {self.launch_rank}: killing myself (SIGKILL) in step {self.step}'s "
              f"backward", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    # ------------------------------------------------------------------ after a failure
    def recover(self, error: BaseException, in_flight: bool) -> None:
        """Shrink onto the survivors, take the most advanced survivor's state, rewrap DDP. Again
        if another rank fails meanwhile (shrink itself survives deaths while it runs)."""
        t0 = time.monotonic()
        started = self.step + (1 if in_flight else 0)    # steps this rank began
        if self.snapshot is not None and in_flight:      # undo whatever the step changed
            load_state_vector(self.net, self.opt, self.snapshot)
        self.say(f"launch rank {self.launch_rank}: step {self.step} failed: {describe(error)}",
                 everyone=True)
        before = self.members
        while True:
            old, old_members = self.pg, self.members
            self.model = None                            # the old DDP reducer hooks go with it
            self.pg = hetccl.torch.shrink_group(old)
            self.members = [old_members[i] for i in self.pg.communicator.parent_ranks]
            release(old)
            shrunk = time.monotonic() - t0
            try:
                resume, lost = self.resync(started)
                self.model = self.wrap()
                break
            except Exception as e:                       # noqa: BLE001 - another failure: again
                if not is_failure(e):
                    raise
                self.say(f"launch rank {self.launch_rank}: another failure while recovering "
                         f"({type(e).__name__}); shrinking again", everyone=True)
        self.recoveries += 1
        gone = sorted(set(before) - set(self.members))
        self.say(f"recovery {self.recoveries}: lost launch ranks {gone}; {self.pg.size()} ranks "
                 f"left {self.members}; shrink {shrunk:.2f} s, recovery {time.monotonic() - t0:.2f} s;"
                 f" resumed at step {resume}; steps lost {lost}")

    def resync(self, started: int) -> tuple[int, int]:
        """The most advanced survivor's state to all; returns (step resumed at, the most steps a
        survivor lost)."""
        k = self.pg.size()
        mine = torch.tensor([self.step, started], dtype=torch.int64)
        everyone = [torch.zeros(2, dtype=torch.int64) for _ in range(k)]
        dist.all_gather(everyone, mine, group=self.pg)
        steps = [int(t[0]) for t in everyone]
        resume = max(steps)
        vec = state_vector(self.net, self.opt)
        dist.broadcast(vec, group_src=steps.index(resume), group=self.pg)
        load_state_vector(self.net, self.opt, vec)       # only once the whole state arrived
        self.step = resume
        return resume, max(int(t[1]) - resume for t in everyone)

    # ------------------------------------------------------------------ the run
    def run(self) -> None:
        while self.step < self.args.steps:
            step = self.step
            try:
                loss = self.train_step()
            except Exception as e:                       # noqa: BLE001 - failures only, below
                if not is_failure(e):
                    raise
                self.recover(e, in_flight=True)
                continue
            self.say(f"step {step:3d} loss {loss:.6f} ranks {self.pg.size()}")
        while True:                                      # the check is collective: it can fail too
            try:
                self.check()
                return
            except Exception as e:                       # noqa: BLE001
                if not is_failure(e):
                    raise
                self.recover(e, in_flight=False)

    def check(self) -> None:
        """Every survivor prints its parameters' hash; group rank 0 compares all of them."""
        flat = torch.cat([p.detach().reshape(-1) for p in self.net.parameters()])
        everyone = [torch.empty_like(flat) for _ in range(self.pg.size())]
        dist.all_gather(everyone, flat, group=self.pg)
        same = all(torch.equal(t, everyone[0]) for t in everyone)
        self.say(f"launch rank {self.launch_rank} (group rank {self.pg.rank()} of "
                 f"{self.pg.size()}): final params sha256 {params_hash(self.net)}", everyone=True)
        self.say(f"final: {self.pg.size()} ranks {self.members}, {self.step} steps, "
                 f"{self.recoveries} recoveries; parameters identical on every survivor: "
                 f"{'yes' if same else 'NO'}")
        if self.args.reference and self.pg.rank() == 0:
            ref = reference_run(self.args)
            diff = (flat - ref).abs().max().item()
            self.say(f"reference (one process, no failure): max |difference| {diff:.3g}")


def reference_run(args) -> torch.Tensor:
    """The same steps in one process without failures: the parameters the job should end with."""
    torch.manual_seed(args.seed)
    net = make_model(args.inputs, args.hidden)
    opt = make_optimizer(net, args.lr, args.momentum)
    data = Data(args.seed, args.samples, args.inputs, args.batch)
    for step in range(args.steps):
        x, y = data.global_batch(step)
        opt.zero_grad(set_to_none=True)
        (((net(x) - y) ** 2).sum() / args.batch).backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def kill_spec(text: str) -> tuple[int, int]:
    rank, sep, step = text.partition("@")
    if not sep or not rank.isdigit() or not step.isdigit():
        raise argparse.ArgumentTypeError(f"--kill {text!r}: expected RANK@STEP, e.g. 2@6")
    return int(rank), int(step)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=96, help="the global batch (rows per step)")
    ap.add_argument("--samples", type=int, default=96,
                    help="rows in the data set (default: one global batch, so the loss falls at "
                         "every step; more makes minibatches)")
    ap.add_argument("--inputs", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kill", type=kill_spec, action="append", default=[], metavar="RANK@STEP",
                    help="launch rank RANK kills itself (SIGKILL) during step STEP's backward")
    ap.add_argument("--snapshot", action="store_true",
                    help="copy the state before every step and restore it after a failure")
    ap.add_argument("--reference", action="store_true",
                    help="compare the final parameters with one process's run without failures")
    ap.add_argument("--timeout", type=float, default=300, help="seconds a collective may take")
    args = ap.parse_args()

    torch.set_num_threads(1)
    dist.init_process_group("hetccl", timeout=timedelta(seconds=args.timeout))
    print(f"launch rank {dist.get_rank()} of {dist.get_world_size()}: pid {os.getpid()}", flush=True)
    Trainer(args).run()
    sys.stdout.flush()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
