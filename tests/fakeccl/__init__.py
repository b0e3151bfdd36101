"""Build and describe the ABI test doubles (fakeccl.c, fakehccl.c, fakert.c) for the bridge tests.

These are *not* vendor libraries: they implement the NCCL / HCCL / cudart / ACL call ABI over host
memory so that hetccl's run-time binding (hetccl/_native/ccl_api.pyx) and bridges can be driven
through every call, dtype, op and error path on a machine without a GPU. They are loaded through
exactly the same code as libnccl / libhccl, by file name and symbol prefix.
"""
from __future__ import annotations

import os
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = {"fakeccl": "fakeccl.c", "fakehccl": "fakehccl.c", "fakert": "fakert.c"}


def build(outdir: str) -> dict[str, str]:
    """Compile the three doubles into ``outdir`` (gcc); name -> path of the .so."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc/cc) to build the bridge test doubles")
    out = {}
    for name, src in SOURCES.items():
        so = os.path.join(outdir, f"lib{name}.so")
        subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-pthread", "-o", so,
                        os.path.join(HERE, src), "-lm"], check=True, capture_output=True, text=True)
        out[name] = so
    return out


def env(libs: dict) -> dict[str, str]:
    """Child environment for multi-rank runs: the doubles' shared files go next to the .so files
    (a pytest tmp dir), so a crashed run cannot leave one in /tmp."""
    return {"FAKECCL_DIR": os.path.dirname(libs["fakeccl"])}


def nccl_vendor(libs: dict, memory_dl=(1,)):
    """The fake NCCL-API library as an NCCL-family vendor (prefix fakeccl, runtime prefix fakert)."""
    from hetccl.bridges import nccl
    from hetccl.bridges.vendor import Runtime
    return nccl.custom("fakeccl", libs["fakeccl"], "fakeccl", Runtime((libs["fakert"],), "fakert"),
                       dlpack_devices=memory_dl)


def hccl_vendor(libs: dict, memory_dl=(1,)):
    """The fake HCCL library (prefix FakeHccl, ACL-style runtime prefix fakeacl)."""
    import dataclasses

    from hetccl.bridges import hccl
    from hetccl.bridges.vendor import Runtime
    v = hccl.vendor(prefix="FakeHccl", library=libs["fakehccl"],
                    runtime=Runtime((libs["fakert"],), "fakeacl", style="acl"), kind="fakehccl",
                    search_dirs=())
    return dataclasses.replace(v, dlpack_devices=memory_dl)


def build_or_skip(tmp_path_factory) -> dict[str, str]:
    """For a module-scoped pytest fixture: the built doubles, or skip without a C compiler."""
    import pytest
    try:
        return build(str(tmp_path_factory.mktemp("fakeccl")))
    except RuntimeError as e:
        pytest.skip(str(e))


class MemStore:
    """The Store calls a bridge makes (set / get / multi_get), within one process."""

    def __init__(self):
        self.d = {}

    def set(self, key, value, timeout=None):
        self.d[key] = bytes(value)

    def get(self, key, timeout=None):
        return self.d[key]

    def multi_get(self, keys, timeout=None):
        return [self.d[k] for k in keys]

    def check(self, keys):
        """Whether every key is set (StoreClient.check): how a timed-out join names the absent."""
        return all(k in self.d for k in keys)
