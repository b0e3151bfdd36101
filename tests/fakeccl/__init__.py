"""Build and describe the ABI test doubles (fakeccl.c, fakehccl.c, fakecncl.c, fakebkcl.c,
fakert.c) for the bridge tests.

These are *not* vendor libraries: they implement the NCCL / HCCL / CNCL / BKCL and cudart / ACL /
CNRT / XPU-runtime call ABI (as the public headers and callers cited in hetccl/bridges/*.py spell
it) over host memory, so that hetccl's run-time binding (hetccl/_native/ccl_api.pyx) and bridges
can be driven through every call, dtype, op and error path on a machine without a device. They are
loaded through exactly the same code as the real libraries, by file name and symbol prefix.

``build`` also makes two libmccl.so (fakeccl.c with the prefix "mccl", versions 2.11.4 and
2.16.5) in two directories, standing for Moore Threads' and MetaX's libraries of the same name.
"""
from __future__ import annotations

import os
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
# name -> (source, extra compiler flags, file name relative to the output directory)
SOURCES = {
    "fakeccl": ("fakeccl.c", (), "libfakeccl.so"),
    "fakehccl": ("fakehccl.c", (), "libfakehccl.so"),
    "fakecncl": ("fakecncl.c", (), "libfakecncl.so"),
    "fakebkcl": ("fakebkcl.c", (), "libfakebkcl.so"),
    "fakert": ("fakert.c", (), "libfakert.so"),
    "mccl_musa": ("fakeccl.c", ("-DPFX=mccl", "-DFAKE_VERSION=21104"), "musa/libmccl.so"),
    "mccl_maca": ("fakeccl.c", ("-DPFX=mccl", "-DFAKE_VERSION=21605"), "maca/libmccl.so"),
}
MCCL_VERSIONS = {"mccl_musa": 21104, "mccl_maca": 21605}

# fakebkcl.c's own BKCLDataType / BKCLOp values (bkcl.h's are not public)
FAKE_BKCL_ENUMS = {"BKCL_UINT8": 3, "BKCL_INT32": 5, "BKCL_INT64": 6, "BKCL_FLOAT16": 7, "BKCL_BFLOAT16": 8,
                   "BKCL_FLOAT": 9, "BKCL_FLOAT64": 10, "BKCL_ADD": 0, "BKCL_PRODUCT": 1, "BKCL_MAX": 2,
                   "BKCL_MIN": 3}


def build(outdir: str) -> dict[str, str]:
    """Compile the doubles into ``outdir`` (gcc); name -> path of the .so."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc/cc) to build the bridge test doubles")
    out = {}
    for name, (src, flags, rel) in SOURCES.items():
        so = os.path.join(outdir, rel)
        os.makedirs(os.path.dirname(so), exist_ok=True)
        subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-pthread", *flags, "-o", so,
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


def eccl_vendor(libs: dict, memory_dl=(1,)):
    """The fake NCCL-API library as the ECCL row: an id of unpublished size (LARGE_UID_BYTES,
    passed by value in a 4120-byte buffer) and no config call, so it joins in the helper thread."""
    import dataclasses

    from hetccl.bridges import nccl
    v = nccl_vendor(libs, memory_dl)
    return dataclasses.replace(v, kind="fakeeccl", uid_bytes=nccl.ECCL.uid_bytes, roles=nccl.ECCL.roles,
                               tables=nccl.ECCL.tables)


def cncl_vendor(libs: dict, memory_dl=(1,)):
    """The fake CNCL library (prefix fakecncl) on the fake CNRT (queues, prefix fakecnrt)."""
    import dataclasses

    from hetccl.bridges import cncl
    rt = dataclasses.replace(cncl.CNRT, names=(libs["fakert"],), prefix="fakecnrt", search_dirs=())
    return cncl.vendor(prefix="fakecncl", library=libs["fakecncl"], runtime=rt, kind="fakecncl",
                       search_dirs=(), dlpack_devices=memory_dl)


def bkcl_vendor(libs: dict, memory_dl=(1,), enums=FAKE_BKCL_ENUMS):
    """The fake BKCL library (prefix fakebkcl_) with the double's enum values, on the fake XPU
    runtime (prefix fakexpu_: no stream query, so the bridge waits in a helper thread)."""
    import dataclasses

    from hetccl.bridges import bkcl
    rt = dataclasses.replace(bkcl.XPURT, names=(libs["fakert"],), prefix="fakexpu_", search_dirs=())
    return bkcl.vendor(enums, prefix="fakebkcl_", library=libs["fakebkcl"], runtime=rt, kind="fakebkcl",
                       search_dirs=(), dlpack_devices=memory_dl)


def bkcl_cudart_vendor(libs: dict, memory_dl=(1,)):
    """The fake BKCL on a cudart-style runtime with a stream query (as bkcl.XPU_CUDART)."""
    import dataclasses
    from hetccl.bridges.vendor import Runtime
    return dataclasses.replace(bkcl_vendor(libs, memory_dl), kind="fakebkcl-cudart",
                               runtime=Runtime((libs["fakert"],), "fakert"))


def mccl_vendor(libs: dict, which: str):
    """One of the two fake libmccl.so as an NCCL-family row (prefix mccl, the fake cudart)."""
    from hetccl.bridges import nccl
    from hetccl.bridges.vendor import Runtime
    return nccl.custom(which, libs[which], "mccl", Runtime((libs["fakert"],), "fakert"), dlpack_devices=(1,),
                       tables=nccl.base_tables)


# every family's double, for the tests that run the same checks on each
VENDORS = {"nccl": nccl_vendor, "hccl": hccl_vendor, "cncl": cncl_vendor, "bkcl": bkcl_vendor,
           "eccl": eccl_vendor}


def vendor_of(family: str, libs: dict, memory_dl=(1,)):
    return (VENDORS.get(family) or {"bkcl-cudart": bkcl_cudart_vendor}[family])(libs, memory_dl)


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
