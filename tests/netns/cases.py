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
