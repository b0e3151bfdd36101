"""What a cross-memory read costs by where its buffers lie: offsets modulo 64 and huge pages.

    python bench/cma_placement.py                       # both buffers on huge pages, then neither
    python bench/cma_placement.py --huge 1:0,0:1 --sizes 1M,8M

One process forks a child that holds the source; the parent reads it with ``process_vm_readv``
(what hetccl's and Open MPI's single-copy paths do: one iovec, the kernel copying page by page)
into its own destination. Both buffers are 2 MiB-aligned anonymous mappings, advised
``MADV_HUGEPAGE`` or ``MADV_NOHUGEPAGE`` (``--huge SRC:DST``, 1 = huge pages), touched before the
reads; each case reads at a source offset and a destination offset past that boundary. The cases
alternate repetition by repetition (the order drawn afresh each time). Printed per size and case:
the median CPU time of a read (``time.thread_time``: user + system of the reading thread, which a
loaded host moves far less than the wall time) and each repetition's CPU time over the (0, 0)
case's in the same repetition (median). This is why the benchmark runner gives every library's
buffers the same placement (hetccl/memory/mapped.py, ``mapped_empty``).
"""
import argparse
import ctypes
import mmap
import os
import random
import statistics
import time

import numpy as np

CASES = ((0, 0), (16, 16), (0, 16), (16, 0), (0, 32), (0, 48), (48, 0), (0, 8), (4096 + 16, 16))


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong,
                                   ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_ulong]
_libc.process_vm_readv.restype = ctypes.c_ssize_t


def _size(spec):
    spec = spec.strip().upper()
    return int(spec[:-1]) << {"K": 10, "M": 20}[spec[-1]] if spec[-1] in "KM" else int(spec)


def _region(nbytes, huge):
    """A touched, 2 MiB-aligned anonymous buffer of nbytes (+2 MiB of room for the offsets)."""
    m = mmap.mmap(-1, nbytes + (6 << 20), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = np.frombuffer(m, dtype=np.uint8)
    off = -raw.ctypes.data % (2 << 20)
    m.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE, 0, len(m))
    buf = raw[off:off + nbytes + (2 << 20)]
    buf[:] = 1
    return m, buf


def measure(pid, saddr, daddr, n, reps):
    """{case: [CPU seconds per read]} for reads of n bytes."""
    def read(so, do):
        local, remote = _IoVec(daddr + do, n), _IoVec(saddr + so, n)
        got = _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if got != n:
            raise OSError(ctypes.get_errno(), f"process_vm_readv returned {got}")
    calls = max(3, (32 << 20) // n)
    times = {c: [] for c in CASES}
    for k in range(reps):
        for c in random.Random(k).sample(CASES, len(CASES)):
            read(*c)
            t0 = time.thread_time()
            for _ in range(calls):
                read(*c)
            times[c].append((time.thread_time() - t0) / calls)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,2M,8M")
    ap.add_argument("--huge", default="1:1,0:0", help="SRC:DST huge-page advice per run (1 huge, 0 not)")
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    sizes = [_size(s) for s in a.sizes.split(",")]
    top = max(sizes)
    for spec in a.huge.split(","):
        src_huge, dst_huge = (int(v) for v in spec.split(":"))
        r, w = os.pipe()
        r2, w2 = os.pipe()
        pid = os.fork()
        if pid == 0:                           # the peer: holds the source until told to go
            _keep, src = _region(top, src_huge)
            os.write(w, src.ctypes.data.to_bytes(8, "little"))
            os.read(r2, 1)
            os._exit(0)
        try:
            saddr = int.from_bytes(os.read(r, 8), "little")
            _keep, dst = _region(top, dst_huge)
            print(f"source huge pages {'on' if src_huge else 'off'}, destination "
                  f"{'on' if dst_huge else 'off'}: CPU time per read (us, median), over (0, 0)'s")
            for n in sizes:
                t = measure(pid, saddr, dst.ctypes.data, n, a.reps)
                base = t[(0, 0)]
                for c in CASES:
                    ratio = statistics.median(x / b for x, b in zip(t[c], base))
                    print(f"  {n >> 10:>6} KiB  src+{c[0]:<5} dst+{c[1]:<3} "
                          f"{statistics.median(t[c]) * 1e6:9.1f} {ratio:7.3f}")
        finally:
            os.write(w2, b"x")
            os.waitpid(pid, 0)
            for fd in (r, w, r2, w2):
                os.close(fd)


if __name__ == "__main__":
    main()
