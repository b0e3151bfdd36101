"""Scratch arrays reused across calls by the composed algorithms (hierarchical.py, islands.py).

Why: first touch of memory is very slow on this kind of VM (page faults at 1-3 s per GiB), so a
temporary allocated per call costs more than the collective; each composed algorithm keeps one
array per purpose and grows it only when a larger call needs it.
"""
import numpy as np


def scratch(pool: dict, name: str, n: int, dtype) -> np.ndarray:
    """The first n elements of pool[name], reallocated (never shrunk) when too small or of another
    dtype."""
    a = pool.get(name)
    if a is None or a.size < n or a.dtype != dtype:
        a = np.empty(max(n, a.size if a is not None and a.dtype == dtype else 0), dtype)
        pool[name] = a
    return a[:n]
