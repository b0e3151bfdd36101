"""Sizes, counts, bandwidths and the result table, following nccl-tests (github.com/NVIDIA/nccl-tests).

The ``size`` a sweep steps through is the nccl-tests size: ``max(send bytes, receive bytes)`` *of one
rank* (``TimeTest`` prints ``max(args->sendBytes, args->expectedBytes)``). The ``count`` column is the
count passed to the collective call (nccl-tests' ``paramcount``). Per collective, from the
``*GetCollByteCount`` / ``*GetBw`` functions of nccl-tests, with ``c = size / itemsize`` and ``n``
ranks:

=============== ================ ================ ================ ======================== ===========
collective      send elements    recv elements    count column     algbw (bytes per second)  busbw factor
=============== ================ ================ ================ ======================== ===========
allreduce       c                c                c                c·itemsize / t            2(n-1)/n
allgather       c/n              (c/n)·n          c/n (per rank)   (c/n)·n·itemsize / t      (n-1)/n
reduce_scatter  (c/n)·n          c/n              c/n (per rank)   (c/n)·n·itemsize / t      (n-1)/n
alltoall        (c/n)·n          (c/n)·n          c/n (per peer)   (c/n)·n·itemsize / t      (n-1)/n
broadcast       c                c                c                c·itemsize / t            1
reduce          c                c                c                c·itemsize / t            1
gather          c/n              (c/n)·n          c/n (per rank)   (c/n)·n·itemsize / t      (n-1)/n
scatter         (c/n)·n          c/n              c/n (per rank)   (c/n)·n·itemsize / t      (n-1)/n
=============== ================ ================ ================ ======================== ===========

gather and scatter are nccl-tests' ``gather_perf`` / ``scatter_perf`` (src/gather.cu, src/scatter.cu):
every rank holds the full-size buffer on both sides (only the root's is used), and the busbw factor
is (n-1)/n, the share of the root's data that crosses a link.

So for **allgather the size is the total output bytes** (every rank's contribution together), and
``count`` is what one rank contributes; likewise reduce_scatter's size is its total *input*. In
every case algbw = size / time, and busbw = algbw · factor. Bandwidths are GB/s with
1 GB = 1e9 bytes, and times are microseconds, as in nccl-tests.

Two deliberate differences from nccl-tests: (1) the per-rank count is ``c // n`` without the extra
rounding down to 16-byte multiples that recent nccl-tests versions apply, so an 8 B allgather on two
float32 ranks is one element per rank rather than an empty row; (2) a size whose per-rank count is
zero is skipped instead of printed as a zero-byte row. We print one result per size (out-of-place,
or in-place for libraries whose API is in-place), not nccl-tests' out-of-place and in-place pair.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

COLLECTIVES = ("allreduce", "allgather", "reduce_scatter", "alltoall", "broadcast", "reduce", "gather",
               "scatter")

#: collectives with a root (rank 0 in every sweep)
ROOTED = frozenset({"broadcast", "reduce", "gather", "scatter"})

_ALIASES = {
    "all_reduce": "allreduce", "ar": "allreduce",
    "all_gather": "allgather", "ag": "allgather", "all_gather_into_tensor": "allgather",
    "reducescatter": "reduce_scatter", "rs": "reduce_scatter", "reduce_scatter_block": "reduce_scatter",
    "reduce_scatter_tensor": "reduce_scatter",
    "all_to_all": "alltoall", "a2a": "alltoall", "all_to_all_single": "alltoall",
    "bcast": "broadcast",
}

#: collectives that take a reduction op (the redop column shows "none" for the others)
REDUCING = frozenset({"allreduce", "reduce_scatter", "reduce"})

#: nccl-tests' names for the type column
_TYPE_NAMES = {"float32": "float", "float16": "half", "float64": "double", "bfloat16": "bfloat16",
               "int8": "int8", "uint8": "uint8", "int32": "int32", "uint32": "uint32",
               "int64": "int64", "uint64": "uint64"}


def canonical(collective: str) -> str:
    """The canonical collective name (``all_reduce`` → ``allreduce``); ValueError if unknown."""
    c = collective.strip().lower().replace("-", "_")
    c = _ALIASES.get(c, c)
    if c not in COLLECTIVES:
        raise ValueError(f"unknown collective {collective!r}; use one of {', '.join(COLLECTIVES)}")
    return c


def busbw_factor(collective: str, nranks: int) -> float:
    """nccl-tests' bus-bandwidth factor: busbw = algbw * factor."""
    c = canonical(collective)
    n = int(nranks)
    if n < 1:
        raise ValueError("nranks must be >= 1")
    if c == "allreduce":
        return 2.0 * (n - 1) / n
    if c in ("allgather", "reduce_scatter", "alltoall", "gather", "scatter"):
        return (n - 1) / n
    return 1.0  # broadcast, reduce


@dataclass(frozen=True)
class Layout:
    """What one rank sends and receives for one row of a sweep (counts in elements)."""
    collective: str
    nranks: int
    itemsize: int
    count: int          # the count column (nccl-tests paramcount)
    send_count: int     # elements in this rank's input buffer
    recv_count: int     # elements in this rank's output buffer

    @property
    def size(self) -> int:
        """The size column in bytes: max(send bytes, recv bytes) of one rank."""
        return max(self.send_count, self.recv_count) * self.itemsize

    @property
    def empty(self) -> bool:
        return self.count == 0


def layout(collective: str, nbytes: int, itemsize: int, nranks: int) -> Layout:
    """Counts for a requested nccl-tests size of *nbytes* (see the module docstring)."""
    col = canonical(collective)
    n = int(nranks)
    c = int(nbytes) // int(itemsize)
    if col in ("allreduce", "broadcast", "reduce"):
        return Layout(col, n, itemsize, c, c, c)
    per = c // n
    if col in ("allgather", "gather"):
        return Layout(col, n, itemsize, per, per, per * n)
    if col in ("reduce_scatter", "scatter"):
        return Layout(col, n, itemsize, per, per * n, per)
    return Layout(col, n, itemsize, per, per * n, per * n)  # alltoall


def bandwidths(collective: str, size: int, seconds: float, nranks: int) -> tuple[float, float]:
    """(algbw, busbw) in GB/s (1e9 B/s) for a row of *size* bytes that took *seconds* per call."""
    if seconds <= 0 or not math.isfinite(seconds):
        return 0.0, 0.0
    algbw = size / 1e9 / seconds
    return algbw, algbw * busbw_factor(collective, nranks)


# ---------------------------------------------------------------- sizes
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text) -> int:
    """``"8"``, ``"64K"``, ``"256M"``, ``"1G"``, ``"64KiB"``, ``"2MB"`` → bytes (binary units, as nccl-tests)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise ValueError(f"cannot parse size {text!r}; use e.g. 8, 64K, 256M, 1G")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    return int(value)


def format_size(nbytes: int) -> str:
    """Short binary form: 8 → ``8B``, 65536 → ``64K``, 67108864 → ``64M`` (exact multiples only)."""
    for unit, mult in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes >= mult and nbytes % mult == 0:
            return f"{nbytes // mult}{unit}"
    return f"{nbytes}B"


def size_sweep(begin, end, factor: int = 2) -> list[int]:
    """begin, begin·factor, … up to and including end (nccl-tests -b/-e/-f)."""
    b, e, f = parse_size(begin), parse_size(end), int(factor)
    if b <= 0 or e < b:
        raise ValueError(f"bad size range {begin}..{end}")
    if f < 2:
        raise ValueError("the step factor must be >= 2")
    out = []
    s = b
    while s <= e:
        out.append(s)
        s *= f
    return out


def parse_sizes(text: str) -> list[int]:
    """A comma-separated list of sizes (``"8,64K,1M,64M"``)."""
    return [parse_size(t) for t in str(text).split(",") if t.strip()]


# ---------------------------------------------------------------- the table
#: (column title, units line, width) of the fixed nccl-tests columns
COLUMNS = (("size", "(B)", 12), ("count", "(elements)", 12), ("type", "", 8), ("redop", "", 6),
           ("time(us)", "(us)", 10), ("algbw", "(GB/s)", 7), ("busbw", "(GB/s)", 7),
           ("#wrong", "", 7))


def type_name(dtype) -> str:
    """nccl-tests' name of a dtype (float32 → ``float``, float16 → ``half``)."""
    name = getattr(dtype, "name", None) or str(dtype)
    return _TYPE_NAMES.get(name, name)


def op_name(collective: str, op) -> str:
    """The redop column: the op name for reducing collectives, ``none`` otherwise."""
    if canonical(collective) not in REDUCING:
        return "none"
    return (getattr(op, "name", None) or str(op)).lower()


def format_time(us: float) -> str:
    """nccl-tests' time format: 2 decimals below 100 µs, 1 below 10 ms, none above."""
    if us is None or not math.isfinite(us):
        return "N/A"
    if us >= 10000.0:
        return f"{us:.0f}"
    if us >= 100.0:
        return f"{us:.1f}"
    return f"{us:.2f}"


def header(extra_columns=()) -> str:
    """Two header lines, '#'-prefixed: column titles, then units."""
    titles, units = [], []
    for i, (title, unit, width) in enumerate(COLUMNS):
        w = width - 2 if i == 0 else width  # room for the leading "# "
        titles.append(f"{title:>{w}}")
        units.append(f"{unit:>{w}}")
    for col in extra_columns:
        titles.append(f"  {col}")
        units.append(f"  {'':{len(col)}}")
    return "# " + " ".join(titles) + "\n# " + " ".join(units).rstrip()


def format_row(row: dict, extra_columns=()) -> str:
    """One table line from a result row (a dict as returned by runner.run_sweep)."""
    wrong = row.get("wrong")
    cells = [
        f"{row['size']:>12d}",
        f"{row['count']:>12d}",
        f"{row.get('type', ''):>8}",
        f"{row.get('redop', ''):>6}",
        f"{format_time(row.get('time_us')):>10}",
        f"{row.get('algbw', 0.0):>7.2f}",
        f"{row.get('busbw', 0.0):>7.2f}",
        f"{('N/A' if wrong is None else wrong):>7}",
    ]
    for col in extra_columns:
        val = row.get(col, "")
        cells.append(f"  {'' if val is None else val}")
    return " ".join(cells).rstrip()


def format_table(rows, extra_columns=None, title: str | None = None) -> str:
    """The whole table. Extra columns default to every non-standard string key found in the rows."""
    if extra_columns is None:
        extra_columns = extra_columns_of(rows)
    lines = []
    if title:
        lines.append(f"# {title}")
    lines.append(header(extra_columns))
    lines.extend(format_row(r, extra_columns) for r in rows)
    return "\n".join(lines)


STANDARD_KEYS = frozenset({"collective", "size", "count", "type", "redop", "time_us", "algbw",
                           "busbw", "wrong", "nranks", "library", "iters", "reps", "times_us",
                           "dtype", "op"})


def extra_columns_of(rows) -> list[str]:
    """Adapter-provided extras (e.g. ``algo``, ``transport``) in first-seen order."""
    seen = []
    for r in rows:
        for k, v in r.items():
            if k not in STANDARD_KEYS and k not in seen and isinstance(v, (str, int, float)):
                seen.append(k)
    return seen
