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


def placement_lines(results, min_bytes=64 << 10) -> list[str]:
    """Where each library's buffers lay, from the rows' ``placement`` (runner.gather_placement):
    per rank count and library, how often each (send, receive) address modulo 64 occurred over
    every rank, size >= *min_bytes* and round, the distinct offsets modulo 4096, and how many of
    the buffers of 4 MiB and more were wholly backed by huge pages. Rows without a placement (older
    JSON) are skipped."""
    seen = collections.defaultdict(lambda: [collections.Counter(), set(), 0, 0, set()])
    for (lib, n, _rnd), rows in results.items():
        for r in rows:
            if r["size"] < min_bytes or not r.get("placement"):
                continue
            s = seen[(n, lib)]
            s[4].add(r.get("allocation"))
            for p in r["placement"]:
                s[0][(p["send"] % 64, p["recv"] % 64)] += 1
                s[1].update((p["send"] % 4096, p["recv"] % 4096))
                for key, nbytes in zip(("send", "recv"), r.get("buffer_bytes") or (0, 0)):
                    if nbytes >= 4 << 20:
                        s[3] += 1
                        s[2] += p[f"{key}_huge"] >= nbytes - (4 << 10)
    lines = []
    for (n, lib), (mod64, mod4k, whole, big, how) in sorted(seen.items()):
        pairs = ", ".join(f"{a}/{b} x{c}" for (a, b), c in mod64.most_common())
        lines.append(f"{n} ranks, {LABEL.get(lib, lib)} ({'/'.join(sorted(map(str, how)))}): "
                     f"send/recv address mod 64 {pairs}; mod 4096 {sorted(mod4k)}; buffers >= 4 MiB "
                     f"wholly on huge pages: {whole}/{big}")
    return lines

