"""What a rank publishes about its place (the ``topo`` entry of its rank card), and the model of a
communicator built from the gathered cards.

The place is resolved once per process, at the world communicator (comm id ``w``): from
``HETCCL_TOPO_FILE`` if set (entry ``world rank`` of the file), else by discovery. Sub-communicators
reuse it, so a split keeps every rank's host, island and device, and carry the world rank so the
file's entry can be found again.
"""
import os

from .model import RankPlace, Topology, from_cards
from .topofile import load

_mine = {}          # this process's card entry, set at the world communicator


def _local_rank() -> int:
    for var in ("HETCCL_LOCAL_RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"):
        v = os.environ.get(var)
        if v and v.isdigit():
            return int(v)
    return 0


def card_entry(comm_id: str, rank: int, size: int | None = None) -> dict:
    """The ``topo`` field of this rank's card. At the world communicator a topology file must
    describe exactly ``size`` ranks (every rank checks, so every rank raises the same error)."""
    if comm_id == "w" or not _mine:
        path = os.environ.get("HETCCL_TOPO_FILE")
        if path:
            topo = load(path)
            n = size if size is not None else rank + 1
            if len(topo.ranks) != n if size is not None else rank >= len(topo.ranks):
                from ..errors import InvalidUsage
                raise InvalidUsage(f"HETCCL_TOPO_FILE={path} describes {len(topo.ranks)} rank(s) but the job "
                                   f"has {n}; describe every rank of the job once (or unset it)")
            p = topo.ranks[rank]
            entry = {"file": os.path.abspath(path), "host": p.host,
                     "place": {"numa": p.numa, "device": p.device, "island": p.island, "nic": p.nic,
                               "bridge": p.bridge}}
        else:
            from .discover import discover   # probes /sys, /proc and vendor tools: on first use only
            d = discover(_local_rank())
            entry = {"file": None, "host": d["host"], "place": d["place"], "hw": d["hw"]}
        entry["world_rank"] = rank
        entry["kernel"] = _kernel_id()
        entry["ncpus"] = _ncpus()
        entry["cpus"] = _cpus()
        _mine.clear()
        _mine.update(entry)
    return dict(_mine)


def _kernel_id() -> str:
    """The running kernel's boot id: equal for every process sharing this machine's CPUs (containers
    and network namespaces included), whatever hostname or HETCCL_HOST_ID they have."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


_launch_cpus = None      # this process's affinity before init bound it to one CPU (block_cpu)


def affinity() -> set:
    """The CPUs this process may run on as its launcher left it: before ``init`` bound a crowded
    rank to one of them (bind_block), so later communicators, the probe's CPU count and its cache
    key see the machine the job was given, not the one CPU of the binding."""
    if _launch_cpus is not None:
        return set(_launch_cpus)
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def bind_block(cards, rank: int) -> None:
    """Bind this process's calling thread to block_cpu's CPU, if any (remembering the affinity
    it had for ``affinity``)."""
    global _launch_cpus
    cpu = block_cpu(cards, rank)
    if cpu is None:
        return
    before = affinity()
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        return
    _launch_cpus = before


def _ncpus() -> int:
    return len(affinity())


def _cpus() -> str:
    """The CPUs this process may run on (its affinity as launched), as a list of ranges: "0-3,8"."""
    from .discover import format_cpulist
    return format_cpulist(affinity())


def _machines(cards) -> dict:
    """machine (kernel) -> (ranks on it, CPUs its ranks may use). The CPUs are the union of the
    ranks' affinities (ranks bound one per core do not crowd each other); where a card lacks the
    list, the largest affinity of the machine's ranks."""
    from .discover import parse_cpulist
    ranks, sets, widest = {}, {}, {}
    for c in cards:
        t = c.get("topo") or {}
        k = t.get("kernel") or c["host"]
        ranks[k] = ranks.get(k, 0) + 1
        widest[k] = max(widest.get(k, 0), int(t.get("ncpus") or 1))
        if t.get("cpus") and sets.get(k, set()) is not None:
            sets.setdefault(k, set()).update(parse_cpulist(t["cpus"]))
        else:
            sets[k] = None
    return {k: (ranks[k], max(1, widest[k] if sets[k] is None else len(sets[k]))) for k in ranks}


def oversubscription(cards) -> float:
    """Ranks per CPU on the most crowded machine (kernel) of these cards; above 1 the machine is
    oversubscribed. Computed from the cards, so every rank reaches the same answer (choices drawn
    from it must agree)."""
    return max((n / cpus for n, cpus in _machines(cards).values()), default=0.0)


def busiest_cpu(cards) -> int:
    """Ranks on the busiest CPU of the most crowded machine of these cards, the ranks of a machine
    spread evenly over its CPUs (ceil(ranks / CPUs); 1 when every rank has a CPU): the turns the
    slowest rank waits for, which the probe's timings (the slowest rank's) carry. From the cards,
    so every rank reaches the same answer."""
    return max((-(-n // cpus) for n, cpus in _machines(cards).values()), default=1)


def crowded(cards, rank: int) -> bool:
    """More ranks than CPUs on `rank`'s machine: its waits should hand the core over at once."""
    t = cards[rank].get("topo") or {}
    n, cpus = _machines(cards)[t.get("kernel") or cards[rank]["host"]]
    return n > cpus


def block_cpu(cards, rank: int):
    """The one CPU ``rank`` binds itself to on a crowded machine whose ranks were all left on the
    same affinity of k >= 2 CPUs (the launcher bound none of them) and split evenly over them
    (n ranks, a multiple of k): consecutive ranks together, the machine's i-th rank on the
    (i*k//n)-th CPU, so a ring's neighbours share a CPU except at k boundaries. Left to the
    scheduler, a launch of 8 ranks on 2 CPUs kept whatever placement it started with, and with
    neighbours apart the ring allreduce ran 4-5x slower than with them together
    (bench/oversubscribed.py --ab, paths ^alt and ^block). None otherwise: bound by the launcher,
    affinities that differ, one CPU, not crowded, or an uneven split (3 ranks on 2 CPUs: the
    scheduler balances them better than a 2 + 1 binding). From the cards: every rank agrees."""
    from .discover import parse_cpulist
    t = cards[rank].get("topo") or {}
    me = t.get("kernel") or cards[rank]["host"]
    local = [r for r, c in enumerate(cards) if ((c.get("topo") or {}).get("kernel") or c["host"]) == me]
    sets = {(cards[r].get("topo") or {}).get("cpus") or "" for r in local}
    if len(sets) != 1 or "" in sets:
        return None
    cpus = sorted(parse_cpulist(sets.pop()))
    n, k = len(local), len(cpus)
    if k < 2 or n <= k or n % k:
        return None
    return cpus[local.index(rank) * k // n]


_file_cache = {}


def model_of(cards) -> Topology:
    """The topology of the ranks of these cards (card['topo'] from card_entry)."""
    first = (cards[0].get("topo") or {}) if cards else {}
    path = first.get("file")
    if not path:
        return from_cards(cards)
    if path not in _file_cache:
        _file_cache[path] = load(path)
    base = _file_cache[path]
    ranks = []
    for c in cards:
        w = (c.get("topo") or {}).get("world_rank", c["rank"])
        p = base.ranks[w] if w < len(base.ranks) else RankPlace(c["rank"], c["host"])
        ranks.append(RankPlace(c["rank"], p.host, p.numa, p.device, p.island, p.nic or c.get("ifname"), p.bridge))
    return Topology(base.nodes.values(), base.links, ranks, source=base.source)
