"""The peer comparison table: hetccl against Open MPI and gloo, median over rounds.

Shared by ``bench/run_all.py`` (one job per library and round) and ``hetccl bench --compare``
(every library in the same job and the same rounds, hetccl/benchmark/peer_compare.py): the same
aggregation (the median over rounds of each round's median) and the same markdown layout.
"""
import collections
import statistics

from . import format as fmt

LIBS = ("hetccl", "ompi", "gloo")
LABEL = {"hetccl": "hetccl", "ompi": "Open MPI", "gloo": "gloo"}
PEERS = ("ompi", "gloo")


def aggregate(results):
    """{(lib, n, coll, size): row with median time over rounds} from per-round JSON rows."""
    groups = collections.defaultdict(list)
    for (lib, n, _rnd), rows in results.items():
        for r in rows:
            groups[(lib, n, r["collective"], r["size"])].append(r)
    out = {}
    for key, rows in groups.items():
        lib, n, coll, size = key
        t = statistics.median(r["time_us"] for r in rows)
        algbw, busbw = fmt.bandwidths(coll, size, t * 1e-6, n)
        wrongs = [r.get("wrong") for r in rows if r.get("wrong") is not None]
        algos = collections.Counter(r.get("algo") for r in rows if r.get("algo"))
        out[key] = {"time_us": t, "algbw": algbw, "busbw": busbw, "rounds": len(rows),
                    "best_time_us": min(r["time_us"] for r in rows),
                    "wrong": max(wrongs) if wrongs else None, "count": rows[0]["count"],
                    "algo": algos.most_common(1)[0][0] if algos else None,
                    "round_times_us": [r["time_us"] for r in rows]}
    return out


def _cell_time(row):
    return "–" if row is None else fmt.format_time(row["time_us"])


def _cell_bw(row):
    return "–" if row is None else f"{row['busbw']:.2f}"


def sizes_measured(agg, n, coll, sizes) -> list[int]:
    """The sizes any library has a row for at (n, coll): the requested sizes as the layout rounded
    them (e.g. 65532 for 64K of alltoall on 3 ranks), without those too small to split."""
    got = sorted({k[3] for k in agg if k[1] == n and k[2] == coll})
    return got or list(sizes)


def comparison_table(agg, n, coll, sizes, libs) -> list[str]:
    head = ["size"]
    for lib in libs:
        head += [f"{LABEL[lib]} time (us)", f"{LABEL[lib]} busbw (GB/s)"]
        if lib == "hetccl":
            head.append("algo")
    ratios = "hetccl" in libs and any(p in libs for p in PEERS)
    if ratios:
        head += ["hetccl / best peer", "same, best rounds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size in sizes_measured(agg, n, coll, sizes):
        cells = [fmt.format_size(size)]
        for lib in libs:
            row = agg.get((lib, n, coll, size))
            wrong = "" if row is None or not row["wrong"] else f" ({row['wrong']} wrong!)"
            cells += [_cell_time(row) + wrong, _cell_bw(row)]
            if lib == "hetccl":
                cells.append((row or {}).get("algo") or "–")
        h = agg.get(("hetccl", n, coll, size))
        peers = [agg.get((p, n, coll, size)) for p in libs if p in PEERS]
        peers = [p for p in peers if p is not None]
        if ratios and h is not None and peers:
            best = min(p["time_us"] for p in peers)
            best_min = min(p["best_time_us"] for p in peers)
            cells += [f"{best / h['time_us']:.2f}x", f"{best_min / h['best_time_us']:.2f}x"]
        elif ratios:
            cells += ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
