"""Shrink across vendor islands: a rank of an NCCL-API island dies; the survivors' communicator
forms its islands again, and the island's native communicator is made by the library's own
shrink (ncclCommShrink, through the binding in _native/ccl_api.pyx) instead of a new rendezvous.

The library is the ABI double of tests/fakeccl (host memory; it has CommShrink and reports NCCL
2.27.3), so the binding and the island hand-over run for real; NVIDIA's libnccl is not exercised
here (no GPU). The double's collectives wait on a process-shared barrier without a deadline, so
the victim dies between calls, not inside an island's collective.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess

import numpy as np
import pytest

from tests.fakeccl import HERE as FAKE_SRC
from tests.launcher import run_ranks


def _build(outdir):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler for the NCCL ABI double")
    for src, so in (("fakeccl.c", "libfakeccl.so"), ("fakert.c", "libfakert.so")):
        subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-pthread", "-o",
                        os.path.join(outdir, so), os.path.join(FAKE_SRC, src), "-lm"], check=True)
    return outdir


def _island(rank, size, victim, shrinkable):
    import hetccl
    from hetccl.bridges import formation
    if not shrinkable:
        os.environ["FAKECCL_VERSION"] = "22603"      # before NCCL 2.27: no CommShrink by rule
    formation.register("fakeccl", "tests.test_islands:_open_fake")
    comm = hetccl.init(timeout=60, bridges={0: "fakeccl", 1: "fakeccl", 2: "fakeccl"})
    x = np.ones(1000, np.float32)
    comm.allreduce(x, algorithm="islands")
    assert (x == size).all()
    comm.barrier()
    if rank == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        comm.barrier(timeout=20)                         # hetccl's links: no island call
    except hetccl.HetcclError:
        pass
    new = comm.shrink(timeout=60)
    bridge = new._islands.bridge if new._islands is not None else None
    y = np.full(1000, new.rank + 1.0, np.float32)
    new.allreduce(y, algorithm="islands")
    out = {"islands": [(i.kind, i.ranks) for i in new._islands.islands],
           "shrunk_from": getattr(bridge, "shrunk_from", None), "y": float(y[0]),
           "bridge_size": bridge.size if bridge is not None else None}
    comm.close(timeout=5)
    new.close()
    return out


@pytest.mark.parametrize("shrinkable", [True, False], ids=["CommShrink", "created-anew"])
def test_island_survivors_keep_their_native_communicator(tmp_path, shrinkable):
    d = _build(str(tmp_path))
    res = run_ranks(_island, 4, 1, shrinkable, timeout=150, victims=[1],
                    # the island's probe times a host-memory bridge at 16 MiB (islands.PROBE_SIZES)
                    env={"FAKECCL_DIR": d, "FAKECCL_WAIT": "20", "FAKECCL_SLOT_BYTES": str(16 << 20)})
    for r in (0, 2, 3):
        out = res[r]
        assert out["islands"] == [("fakeccl", (0, 1)), ("hetccl", (2,))], out
        assert out["y"] == 6.0, out
    for r in (0, 2):                                     # the island's survivors, island ranks 0, 2
        assert res[r]["bridge_size"] == 2
        assert res[r]["shrunk_from"] == ([1] if shrinkable else None), res[r]
