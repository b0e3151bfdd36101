"""Byte counts in messages: one spelling for the runtime's explanations and errors.

(The benchmark package has its own ``format_size``/``parse_size``: it is also loaded without the
rest of hetccl, by the peers' benchmark scripts, so it cannot import from here.)
"""


def size_label(n: int) -> str:
    """``512 B``, ``64 KiB``, ``16 MiB``: whole units, rounded down."""
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} B"
