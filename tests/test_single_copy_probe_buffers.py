"""The single-copy probe times every collective on buffers laid out as the benchmark's
(collectives/single_copy_probe.py _path_fns, _laid_out: each its own mapping, page-aligned,
2 MiB-aligned from 4 MiB), so a verdict does not depend on where glibc put its arrays."""
from types import SimpleNamespace

import numpy as np
import pytest


@pytest.mark.parametrize("coll", ["broadcast", "allgather", "alltoall"])
@pytest.mark.parametrize("nbytes", [32 << 10, 8 << 20])
def test_probe_buffers_laid_out_as_the_benchmarks(coll, nbytes):
    from hetccl.collectives import single_copy_probe as p
    seen = []

    class Hot:                  # records the buffers each path's call passes
        def learn(self, *a):
            pass

        def broadcast(self, buf, root, key):
            seen.append((key, [buf]))

        def allgather(self, src, out, key):
            seen.append((key, [src, out]))

        def alltoall(self, src, out, key):
            seen.append((key, [src, out]))

    engine = SimpleNamespace(size=2)
    tuner = SimpleNamespace(select=lambda c, nb: SimpleNamespace(code=1, name="ring"))
    fns = p._path_fns(Hot(), engine, tuner, coll, nbytes)
    assert set(fns) == {"fifo", "single"}                      # 2 ranks: no other order timed
    for name in ("fifo", "single"):
        fns[name]()
    assert [k for k, _ in seen] == ["fifo", "single"]
    assert all(a is b for a, b in zip(seen[0][1], seen[1][1]))   # both paths, the same buffers
    for _, bufs in seen:
        for b in bufs:
            assert b.dtype == np.float32 and (b == 1).all()
            align = 2 << 20 if b.nbytes >= 4 << 20 else 4096
            assert b.ctypes.data % align == 0, (coll, nbytes, b.nbytes, b.ctypes.data % align)


def test_probe_collectives_of_one_size_share_buffers():
    """measure allocates each size's buffers once for the three collectives (every fresh mapping
    is first-touched): broadcast's buffer is alltoall's input and allgather's output, and no
    call's input is its own output."""
    from hetccl.collectives import single_copy_probe as p
    seen = {}

    class Hot:
        def learn(self, *a):
            pass

        def broadcast(self, buf, root, key):
            seen["broadcast"] = (buf,)

        def allgather(self, src, out, key):
            seen["allgather"] = (src, out)

        def alltoall(self, src, out, key):
            seen["alltoall"] = (src, out)

    engine = SimpleNamespace(size=4)
    tuner = SimpleNamespace(select=lambda c, nb: SimpleNamespace(code=1, name="ring"))
    pool = {}
    for coll in ("broadcast", "allgather", "alltoall"):
        p._path_fns(Hot(), engine, tuner, coll, 64 << 10, pool)["single"]()
    assert seen["broadcast"][0] is seen["alltoall"][0] is seen["allgather"][1]
    assert seen["alltoall"][1] is not seen["alltoall"][0] and seen["allgather"][0] is not seen["allgather"][1]
    assert len(pool) == 3
