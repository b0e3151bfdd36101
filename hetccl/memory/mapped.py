"""Buffers in an anonymous mapping of their own, laid out as numpy would lay out a large array.

Why here: the benchmarks give every library's ranks the same memory (hetccl/benchmark/runner.py,
"buffer memory"), and the single-copy probe must time its paths on buffers laid out the same way
(a 1 MiB input 16 bytes past a page, partly on 4 KiB pages, changed its verdicts); both take them
from this one function, below the layers that use it.
"""
import mmap

import numpy as np

HUGE_PAGE = 2 << 20
NUMPY_HUGE_FROM = 4 << 20     # numpy advises huge pages for arrays of at least this many bytes


def _numpy_advises_huge_pages() -> bool:
    try:
        from numpy._core.multiarray import _get_madvise_hugepage
    except ImportError:                          # numpy 1.x
        try:
            from numpy.core.multiarray import _get_madvise_hugepage
        except ImportError:
            return False
    return bool(_get_madvise_hugepage())


def mapped_empty(count: int, dtype) -> np.ndarray:
    """An uninitialised numpy array of *count* elements in an anonymous mapping of its own.

    It starts on a page boundary, on a 2 MiB boundary when it is at least 4 MiB, and gets
    ``MADV_HUGEPAGE`` exactly when np.empty would (numpy's own rule), so that every process of
    every library holds its buffers at the same offsets on pages faulted in the same way. It is a
    plain array (its base is the mapping): every library takes it as it takes np.empty's."""
    dt = np.dtype(dtype)
    nbytes = max(1, int(count) * dt.itemsize)
    align = HUGE_PAGE if nbytes >= NUMPY_HUGE_FROM else mmap.PAGESIZE
    m = mmap.mmap(-1, nbytes + align - mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = np.frombuffer(m, dtype=np.uint8)
    off = -raw.ctypes.data % align
    if nbytes >= NUMPY_HUGE_FROM and _numpy_advises_huge_pages() and hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE, off, nbytes - nbytes % mmap.PAGESIZE)
    return raw[off:off + int(count) * dt.itemsize].view(dt)
