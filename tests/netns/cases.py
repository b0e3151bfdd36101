"""Rank functions of the netns tests (run by rank_main inside the namespaces)."""
import numpy as np


def discovery_case(rank, size):
    import hetccl
    comm = hetccl.init(timeout=60)
    topo = comm._plan.topo if comm._plan is not None else None
    out = {"hosts": len({c["host"] for c in comm._cards}),
           "model_hosts": len(topo.hosts()) if topo else 1,
           "source": topo.source if topo else "",
           "transports": [comm.transport(p) for p in range(size)],
           "local_size": comm.local_size,
           "card_host": comm._cards[rank]["topo"]["host"],
           "ring": comm._plan.order if comm._plan is not None else None,
           "uplinks": [(u.bandwidth, u.burst, u.peak) for u in map(topo.uplink, topo.hosts())] if topo else [],
           "priced_burst": comm._plan.burst if comm._plan is not None else None}
    comm.close()
    return out


def collectives_case(rank, size, sizes):
    """Every composed and flat algorithm across the namespaces, checked against numpy."""
    import hetccl
    comm = hetccl.init(timeout=120)
    chosen = {}
    for n in sizes:
        for algo in ("hierarchical", "topo_ring", "ring", None):
            x = (np.arange(n) % 11).astype(np.float32) + rank
            comm.allreduce(x, algorithm=algo)
            want = (np.arange(n) % 11).astype(np.float32) * size + sum(range(size))
            assert np.array_equal(x, want), (algo, n, "allreduce")
            if algo is None:
                chosen[f"allreduce/{n}"] = comm.last_algorithm
            g = comm.allgather(np.full(n, rank, np.int32), algorithm=algo)
            assert np.array_equal(g.reshape(size, n), np.repeat(np.arange(size), n).reshape(size, n)), (algo, n)
            if algo is None:
                chosen[f"allgather/{n}"] = comm.last_algorithm
            b = np.full(n, rank, np.int64)
            comm.broadcast(b, root=size - 1, algorithm="hierarchical" if algo == "hierarchical" else None)
            assert (b == size - 1).all(), (algo, n, "broadcast")
    comm.close()
    return chosen


def link_down_case(rank, size, marker, placement):
    """Allreduce in a loop until the harness takes host 1's link down (it waits for ``marker``);
    every rank reports when and how it noticed. Host 0's ranks then shrink and check an allreduce
    on the survivors; host 1's ranks, cut off, stop there (they cannot tell a dead peer from a
    partition: see docs/reliability.md)."""
    import time

    import hetccl
    comm = hetccl.init(timeout=120)
    x = np.ones(1 << 20, np.float32)
    comm.allreduce(x)
    if rank == 0:
        with open(marker, "w") as f:
            f.write("running")
    exc, t_exc = None, None
    end = time.time() + 60
    while time.time() < end:
        try:
            comm.allreduce(x, timeout=90)
        except hetccl.HetcclError as e:
            exc, t_exc = f"{type(e).__name__}: {e}", time.time()
            break
    out = {"exc": exc, "at": t_exc, "host": comm._cards[rank]["host"], "failed": comm.failed_ranks()}
    if placement[rank] == 0:
        new = comm.shrink(timeout=60)
        y = np.full(100, new.rank + 1.0, np.float32)
        new.allreduce(y)
        out.update(shrunk=new.size, parent_ranks=new.parent_ranks, y=float(y[0]),
                   shrunk_at=time.time(), failed=comm.failed_ranks())
        new.close()
    comm.close(timeout=5)
    return out
