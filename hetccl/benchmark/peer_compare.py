"""``hetccl bench --compare mpi,gloo``: hetccl and its peers in the same job, the same rounds.

Why in one job: the machines we measure on change speed every few seconds, so two libraries
measured minutes apart are not comparable. Here every rank holds a hetccl communicator, an MPI
communicator (mpi4py's COMM_WORLD: launch with mpirun) and a gloo process group (torch.distributed,
rendezvous through hetccl: rank 0 picks a port, every rank learns it by a hetccl broadcast). Each
round runs every library once over the whole sweep, the order of the libraries rotating from round
to round; each library's cell is the median over rounds of that round's median (the runner's
method), in the layout of ``bench/run_all.py`` (hetccl/benchmark/table.py).

A peer that cannot run here (MPI without mpirun, torch missing) is left out with the reason said.
"""
from __future__ import annotations

import socket

from . import format as fmt
from .runner import run_sweep
from .table import LABEL, aggregate, comparison_table

NAMES = {"mpi": "ompi", "ompi": "ompi", "openmpi": "ompi", "gloo": "gloo"}


def _mpi_adapter(comm):
    """The MPI peer over the same ranks, or (None, why)."""
    import os
    if not any(v in os.environ for v in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")):
        return None, "not started by mpirun (launch with `mpirun -np N python -m hetccl bench --compare mpi,gloo`)"
    try:
        from .peers import MpiAdapter
        a = MpiAdapter()
    except Exception as e:              # noqa: BLE001 - reported, the others still run
        return None, f"mpi4py: {e}"
    if a.size != comm.size or a.rank != comm.rank:
        return None, f"MPI world ({a.size} ranks, rank {a.rank}) is not hetccl's ({comm.size}, rank {comm.rank})"
    return a, None


def _gloo_adapter(comm):
    """The gloo peer, its rendezvous through hetccl (rank 0's address and a free port)."""
    import os

    import numpy as np
    try:
        import torch  # noqa: F401
    except ImportError:
        return None, "torch is not installed (pip install torch)"
    port = np.zeros(1, np.int64)
    if comm.rank == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            port[0] = s.getsockname()[1]
    comm.broadcast(port, root=0)
    card = comm.context.cards[0]
    same = all(c["host"] == card["host"] for c in comm.context.cards)
    os.environ.update(MASTER_ADDR="127.0.0.1" if same else card.get("addr", "127.0.0.1"),
                      MASTER_PORT=str(int(port[0])), RANK=str(comm.rank), WORLD_SIZE=str(comm.size))
    try:
        from .peers import GlooAdapter
        return GlooAdapter(), None
    except Exception as e:              # noqa: BLE001
        return None, f"gloo: {e}"


def run_compare(hetccl_adapter, peers, args, collectives, sizes, say) -> int:
    comm = hetccl_adapter.comm
    say = say if comm.rank == 0 else (lambda s: None)
    adapters = {"hetccl": hetccl_adapter}
    for p in peers:
        key = NAMES.get(p.strip().lower())
        if key is None:
            say(f"# --compare: unknown peer {p!r}; use mpi and/or gloo")
            return 2
        a, why = (_mpi_adapter if key == "ompi" else _gloo_adapter)(comm)
        if a is None:
            say(f"# {LABEL[key]}: left out: {why}")
        else:
            adapters[key] = a
    libs = list(adapters)
    for a in adapters.values():        # every library's buffers allocated the same way (--alloc)
        a.allocation = getattr(args, "alloc", None) or a.allocation
    results = {}
    rounds = max(1, args.rounds)
    for rnd in range(rounds):
        order = libs[rnd % len(libs):] + libs[:rnd % len(libs)]
        say(f"# round {rnd + 1}/{rounds}: {', '.join(LABEL[x] for x in order)}")
        for lib in order:
            rows = []
            for coll in collectives:
                rows += run_sweep(adapters[lib], coll, sizes, dtype=args.dtype, op=args.op, reps=args.reps,
                                  min_time=args.min_time, warmup=args.warmup, check=not args.no_check,
                                  out=lambda s: None, print_header=False,
                                  group_bytes=fmt.parse_size(args.group_bytes))
            results[(lib, comm.size, rnd)] = rows
    agg = aggregate(results)
    if comm.rank == 0:                  # every rank holds the same rows (times are max over ranks)
        for coll in collectives:
            say(f"\n### {coll}, {comm.size} ranks (median over {rounds} round(s) of each round's median)\n")
            for line in comparison_table(agg, comm.size, coll, sizes, libs):
                say(line)
        if args.plot:
            plot(agg, comm.size, collectives, sizes, libs, args.plot)
            say(f"\nwrote {args.plot}")
        if args.json:
            import json
            with open(args.json, "w") as f:
                json.dump({"libraries": libs, "rounds": rounds, "sizes": sizes,
                           "cells": [dict(zip(("library", "nranks", "collective", "size"), k), **v)
                                     for k, v in agg.items()]}, f, indent=1)
    for lib, a in adapters.items():
        if lib != "hetccl" and hasattr(a, "close"):
            a.close()
    bad = any(v.get("wrong") for v in agg.values())
    return 1 if bad else 0


def plot(agg, n, collectives, sizes, libs, path) -> None:
    """Bus bandwidth and time against size, one line per library, one column per collective."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(collectives), figsize=(6 * len(collectives), 8), squeeze=False)
    for j, coll in enumerate(collectives):
        for lib in libs:
            pts = sorted((k[3], v) for k, v in agg.items() if k[0] == lib and k[2] == coll and k[1] == n)
            if not pts:
                continue
            xs = [s for s, _ in pts]
            axes[0][j].plot(xs, [v["busbw"] for _, v in pts], marker="o", ms=3, label=LABEL[lib])
            axes[1][j].plot(xs, [v["time_us"] for _, v in pts], marker="o", ms=3, label=LABEL[lib])
        axes[0][j].set_title(f"{coll}, {n} ranks")
        axes[0][j].set_ylabel("bus bandwidth (GB/s)")
        axes[1][j].set_ylabel("time (us)")
        axes[1][j].set_yscale("log")
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("size (bytes)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
