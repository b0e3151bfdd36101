"""Find every vendor collective library on this machine, and the islands this host would form.

Why: a job with chips of several vendors needs to know, before any communicator exists, which
native library each group of ranks can use and why another cannot (not installed, no device,
too old). ``find_all()`` answers with one ``Library`` per file found (usable or not, with the
reason); ``hetccl doctor`` prints it, and ``host_islands()`` maps this host's accelerators (by PCI
vendor, topology/vendors.py) and its CPU ranks to the island kind they would join.

Where libraries are looked for (no environment variable of hetccl's own): pip wheels in every
site-packages (nvidia/nccl/lib, nvidia/cuda_runtime/lib), LD_LIBRARY_PATH, the dynamic loader's
cache (``ldconfig -p``), then each vendor's install directories (/usr/local/cuda, /opt/rocm,
/opt/dtk, /usr/local/musa, /opt/maca, /usr/local/corex, /opt/tops, /usr/local/Ascend,
/usr/local/neuware, /usr/local/xccl and /usr/local/xpu). MPI is found by the MPI bridge's own
``hetccl.bridges.mpi.find()`` when that module is present.

``kinds_report`` answers FlagCX's list (the libraries a heterogeneous peer supports) kind by
kind: each has a hetccl kind and is found or not, or has no public API to bind to.
"""
from __future__ import annotations

import importlib

from .base import HOST, Library
from .loader import cann_version, find_vendor, probe  # noqa: F401  (the finders, re-exported)
from .vendor import Vendor

# accelerator vendor (topology/vendors.py name) -> bridge kind of its collective library, or None
# with the reason no bridge exists
ACCELERATOR_LIBRARY = {
    "nvidia": ("nccl", ""),
    "amd": ("rccl", ""),
    # Hygon DCUs run DTK, ROCm's stack under /opt/dtk: RCCL as /opt/dtk/rccl/lib/librccl.so and
    # HIP as libamdhip64.so / libgalaxyhip.so (nccl.py's rccl row looks there); FlagCX's DUCCL is
    # the same nccl.h API
    "hygon": ("rccl", ""),
    "ascend": ("hccl", ""),
    "mthreads": ("mccl", ""),
    "metax": ("mccl_metax", ""),
    "iluvatar": ("ixccl", ""),
    "cambricon": ("cncl", ""),
    "kunlunxin": ("bkcl", ""),
    "enflame": ("eccl", ""),
}

# FlagCX's list of native libraries -> hetccl's kind, or None with why it has none
FLAGCX_KINDS = {
    "NCCL": ("nccl", ""), "IXCCL": ("ixccl", ""), "CNCL": ("cncl", ""), "MCCL": ("mccl_metax", ""),
    "XCCL": ("bkcl", ""), "DUCCL": ("rccl", ""), "HCCL": ("hccl", ""), "MUSACCL": ("mccl", ""),
    "RCCL": ("rccl", ""), "ECCL": ("eccl", ""),
    "TCCL": (None, "Tsingmicro's tccl.h is not public (FlagCX builds against the vendor SDK)"),
    "PCCL": (None, "no public header for PCCL was found"),
}


def vendors() -> tuple[Vendor, ...]:
    from . import rows
    return rows.ROWS


def find_mpi() -> list[Library]:
    """MPI libraries through the MPI bridge's finder; [] when that bridge is not installed."""
    try:
        # through sys.modules (not the package attribute): a stripped install without the MPI
        # bridge, or a test's stand-in, is honoured
        found = importlib.import_module(__package__ + ".mpi").find()
    except ImportError:
        return []
    except Exception as e:               # the finder itself failed: report it, do not hide it
        return [Library("mpi", "", "", HOST, False, f"hetccl.bridges.mpi.find() failed: {e}")]
    if found is None:
        return []
    return list(found) if isinstance(found, (list, tuple)) else [found]


def find_all() -> list[Library]:
    """Every vendor library found (NCCL family, HCCL, CNCL, BKCL, MPI), usable or not."""
    out = []
    for v in vendors():
        out.extend(find_vendor(v))
    out.extend(find_mpi())
    return out


def host_islands(libraries: list[Library], accelerators: list[dict], launcher: str) -> list[dict]:
    """The islands ranks on this host would form: one per accelerator vendor present, plus CPU.

    Each: {"members": "4 nvidia gpu", "kind": "nccl", "library": Library or None, "note": why}."""
    usable = {}
    for lib in libraries:
        if lib.usable:
            usable.setdefault(lib.kind, lib)
    found = {lib.kind: lib for lib in libraries}
    out, by_vendor = [], {}
    for a in accelerators:
        by_vendor.setdefault(a.get("accel") or a.get("vendor"), []).append(a)
    for name, devs in sorted(by_vendor.items()):
        kind, why = ACCELERATOR_LIBRARY.get(name, (None, "no collective library is known for this vendor"))
        if kind is None:
            out.append({"members": f"{len(devs)} {name} device(s)", "kind": "hetccl", "library": None, "note": why})
        elif kind in usable:
            out.append({"members": f"{len(devs)} {name} device(s)", "kind": kind, "library": usable[kind], "note": ""})
        else:
            lib = found.get(kind)
            note = (f"{kind} found but not usable: {lib.reason}" if lib else f"no {kind} library found") + \
                "; these ranks use hetccl's own transports with host staging"
            out.append({"members": f"{len(devs)} {name} device(s)", "kind": "hetccl", "library": None, "note": note})
    mpi = usable.get("mpi")
    if launcher in ("openmpi", "mpich") and mpi is not None:
        out.append({"members": "CPU ranks", "kind": "mpi", "library": mpi, "note": f"launched by {launcher}"})
    else:
        note = ("not launched under MPI" if launcher not in ("openmpi", "mpich")
                else "launched under MPI but no usable MPI library was found")
        out.append({"members": "CPU ranks", "kind": "hetccl", "library": None,
                    "note": f"{note}: hetccl's own shm/c2c/tcp/rdma"})
    return out


def kinds_report(libraries: list[Library]) -> list[str]:
    """One line per library of FlagCX's list: its hetccl kind and whether it was found here."""
    lines = ["native libraries of FlagCX's list (name: hetccl kind, found here?):"]
    for name, (kind, why) in FLAGCX_KINDS.items():
        if kind is None:
            lines.append(f"  {name:<8} -        no bridge: {why}")
            continue
        found = [lib for lib in libraries if lib.kind == kind]
        state = ("usable" if any(lib.usable for lib in found) else f"found, not usable: {found[0].reason}"
                 ) if found else "not found"
        lines.append(f"  {name:<8} {kind:<10} {state}")
    return lines


def format_report(libraries: list[Library], islands: list[dict]) -> list[str]:
    """The lines `hetccl doctor` prints for vendor libraries and islands."""
    lines = ["vendor libraries (kind, version, memory, usable, path):"]
    if not libraries:
        lines.append("  none found (pip install nvidia-nccl-cu12 for NCCL; see docs/bridges.md)")
    for lib in libraries:
        state = "usable" if lib.usable else f"not usable: {lib.reason}"
        lines.append(f"  {lib.kind:<10} {lib.version or '?':<10} {lib.memory:<6} {state}")
        lines.append(f"  {'':<10} {lib.path}" + (f"  [{lib.extra['where']}]" if lib.extra.get("where") else ""))
    lines.extend(kinds_report(libraries))
    lines.append("islands this host would form:")
    for isl in islands:
        lib = isl["library"]
        what = f"{isl['kind']} ({lib.version or '?'}, {lib.path})" if lib else isl["kind"]
        lines.append(f"  {isl['members']}: {what}" + (f" - {isl['note']}" if isl["note"] else ""))
    return lines
