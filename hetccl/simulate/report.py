"""How a simulation is shown: a table, a what-if side by side, a plot (matplotlib, Agg)."""
from __future__ import annotations

from ..benchmark import format as fmt
from .sweep import algorithms_of


def _us(t):
    return "-" if t is None else fmt.format_time(t * 1e6)


def header(doc, label="") -> list[str]:
    lines = [f"# hetccl simulate{label}: {doc['collective']} on {doc['ranks']} ranks",
             f"# topology: {doc['topology']}"]
    if doc.get("network"):
        lines.append(f"# network: {doc['network']}")
    if doc.get("islands"):
        lines.append(f"# islands: {doc['islands']}")
    lines.append(f"# cost model: {doc['cost_model']}")
    if doc.get("buffers"):
        lines.append(f"# buffers: {doc['buffers']}")
    return lines


def table(doc) -> str:
    lines = header(doc)
    lines.append(f"{'size':>10}  {'choice (runtime)':<22} {'time(us)':>11} {'busbw(GB/s)':>11}  why")
    for r in doc["sizes"]:
        lines.append(f"{fmt.format_size(r['size']):>10}  {r['choice']:<22} {_us(r['time_s']):>11} "
                     f"{r['busbw']:>11.3f}  {r['why']}")
    names = algorithms_of(doc)
    if names:
        w = max(10, *(len(n) + 1 for n in names))
        lines.append("")
        lines.append("# every algorithm that applies, predicted time (us); * = the runtime's choice")
        lines.append(f"{'size':>10}  " + " ".join(f"{n:>{w}}" for n in names))
        for r in doc["sizes"]:
            cells = []
            for n in names:
                t = r["algorithms"].get(n)
                cells.append(f"{(_us(t) + ('*' if n == r['choice'] else ' ')):>{w}}" if t is not None else f"{'n/a ':>{w}}")
            lines.append(f"{fmt.format_size(r['size']):>10}  " + " ".join(cells))
    return "\n".join(lines)


def side_by_side(a, b, label_a, label_b) -> str:
    lines = [f"# what-if: A = {label_a}", f"#          B = {label_b}"]
    for tag, d in (("A", a), ("B", b)):
        lines += [f"# {tag}: " + x[2:] for x in header(d)[1:]]
    lines.append(f"{'size':>10}  {'A choice':<20} {'A time(us)':>11}  {'B choice':<20} {'B time(us)':>11}  {'B/A':>6}")
    for ra, rb in zip(a["sizes"], b["sizes"]):
        ratio = rb["time_s"] / ra["time_s"] if ra["time_s"] and rb["time_s"] else float("nan")
        lines.append(f"{fmt.format_size(ra['size']):>10}  {ra['choice']:<20} {_us(ra['time_s']):>11}  "
                     f"{rb['choice']:<20} {_us(rb['time_s']):>11}  {ratio:6.2f}")
    return "\n".join(lines)


def plot(doc, path, other=None, label_other=None) -> None:
    """Time and bus bandwidth against size, one line per algorithm, the runtime's choice marked
    (and, for a what-if, B's choice dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = [r["size"] for r in doc["sizes"]]
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(13, 5))
    for name in algorithms_of(doc):
        xs = [r["size"] for r in doc["sizes"] if name in r["algorithms"]]
        ts = [r["algorithms"][name] * 1e6 for r in doc["sizes"] if name in r["algorithms"]]
        bw = [n / (t / 1e6) / 1e9 * _factor(doc) for n, t in zip(xs, ts)]
        ax_t.plot(xs, ts, lw=1.2, label=name)
        ax_b.plot(xs, bw, lw=1.2, label=name)
    ct = [r["time_s"] * 1e6 for r in doc["sizes"]]
    cb = [r["busbw"] for r in doc["sizes"]]
    ax_t.plot(sizes, ct, "o", mfc="none", mec="black", ms=9, label="runtime's choice")
    ax_b.plot(sizes, cb, "o", mfc="none", mec="black", ms=9, label="runtime's choice")
    last = None
    for r in doc["sizes"]:                   # name the choice where it changes
        if r["choice"] != last:
            ax_t.annotate(r["choice"], (r["size"], r["time_s"] * 1e6), fontsize=7, rotation=30,
                          xytext=(3, 8), textcoords="offset points")
            last = r["choice"]
    if other is not None:
        ax_t.plot([r["size"] for r in other["sizes"]], [r["time_s"] * 1e6 for r in other["sizes"]], "k--",
                  lw=1.5, label=f"choice, {label_other}")
        ax_b.plot([r["size"] for r in other["sizes"]], [r["busbw"] for r in other["sizes"]], "k--",
                  lw=1.5, label=f"choice, {label_other}")
    for ax in (ax_t, ax_b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("size (bytes)")
        ax.grid(True, which="both", alpha=0.3)
    ax_t.set_yscale("log")
    ax_t.set_ylabel("predicted time (us)")
    ax_b.set_ylabel("bus bandwidth (GB/s)")
    ax_b.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"hetccl simulate: {doc['collective']}, {doc['ranks']} ranks\n{doc['topology']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _factor(doc):
    return fmt.busbw_factor(doc["collective"], doc["ranks"]) if doc["ranks"] > 1 else 1.0
