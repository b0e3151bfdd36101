"""torch: survivors of a killed rank get a new process group (``hetccl.torch.shrink_group``) and DDP
training goes on, with every survivor's parameters identical; the victim is rank 0 (which served
torch's store and hetccl's) or another rank."""
from __future__ import annotations

import os
import signal
import sys
from datetime import timedelta

import pytest

from tests.launcher import free_port, run_ranks

torch = pytest.importorskip("torch")


def _ddp(rank, size, port, victim, steps):
    import atexit

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import hetccl
    import hetccl.torch

    atexit.register(lambda: (sys.stdout.flush(), os._exit(0)))     # skip torch's slow teardown
    torch.set_num_threads(1)
    dist.init_process_group("hetccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=size, timeout=timedelta(seconds=60))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    pg = dist.group.WORLD
    model = DDP(net, process_group=pg)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    losses, failures, step = [], [], 0
    g = torch.Generator().manual_seed(1234)
    batches = [(torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)) for _ in range(steps)]
    while step < steps:
        x, y = batches[step]
        me = pg.rank()
        xs, ys = x[me::pg.size()], y[me::pg.size()]                 # this rank's share of the batch
        if rank == victim and step == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(xs), ys)
        try:
            loss.backward()
        except (hetccl.HetcclError, RuntimeError) as e:     # DDP wraps it in a RuntimeError
            failures.append(str(e))
            pg = hetccl.torch.shrink_group(pg)
            model = DDP(net, process_group=pg)
            continue                                                # redo this step
        opt.step()
        losses.append(float(loss))
        step += 1
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    return {"params": flat.tolist(), "failures": failures, "size": pg.size(),
            "rank_in_group": dist.get_rank(pg), "losses": losses}


@pytest.mark.parametrize("victim", [0])          # rank 0 served torch's store and hetccl's
def test_ddp_survives_a_killed_rank(victim):
    res = run_ranks(_ddp, 4, free_port(), victim, 8, timeout=150, victims=[victim],
                    env={"HETCCL_PEER_TIMEOUT": "5"})
    live = [r for r in range(4) if r != victim]
    first = res[live[0]]
    for i, r in enumerate(live):
        out = res[r]
        assert out["size"] == 3 and out["rank_in_group"] == i, out
        assert out["failures"] and all(any(n in f for n in ("PeerLostError", "CommAborted", "CommRevoked"))
                                       for f in out["failures"]), out
        assert out["params"] == first["params"], f"rank {r}'s parameters differ from rank {live[0]}'s"
        assert len(out["losses"]) == 8
