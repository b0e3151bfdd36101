"""Find every vendor collective library on this machine, and the islands this host would form.

Why: a job with chips of several vendors needs to know, before any communicator exists, which
native library each group of ranks can use and why another cannot (not installed, no device,
too old). ``find_all()`` answers with one ``Library`` per file found (usable or not, with the
reason); ``hetccl doctor`` prints it, and ``host_islands()`` maps this host's accelerators (by PCI
vendor, topology/vendors.py) and its CPU ranks to the island kind they would join.

Where libraries are looked for (no environment variable of hetccl's own): pip wheels in every
site-packages (nvidia/nccl/lib, nvidia/cuda_runtime/lib), LD_LIBRARY_PATH, the dynamic loader's
cache (``ldconfig -p``), then each vendor's install directories (/usr/local/cuda, /opt/rocm,
/usr/local/musa, /opt/maca, /usr/local/corex, /usr/local/Ascend). MPI is found by the MPI
bridge's own ``hetccl.bridges.mpi.find()`` when that module is present.
"""
from __future__ import annotations

import importlib
import glob
import os

from .base import HOST, Library
from .loader import candidates, device_status, load_runtime
from .vendor import Vendor, version_string

# accelerator vendor (topology/vendors.py name) -> bridge kind of its collective library, or None
# with the reason no bridge exists
ACCELERATOR_LIBRARY = {
    "nvidia": ("nccl", ""),
    "amd": ("rccl", ""),
    "hygon": ("rccl", ""),      # Hygon DCUs run ROCm's stack (DTK); RCCL assumed, unconfirmed
    "ascend": ("hccl", ""),
    "mthreads": ("mccl", ""),
    "metax": ("mccl_metax", ""),
    "iluvatar": ("ixccl", ""),
    "cambricon": (None, "CNCL is not NCCL-compatible: no bridge, hetccl's own transports are used"),
    "kunlunxin": (None, "BKCL/XCCL is not NCCL-compatible: no bridge, hetccl's own transports are used"),
}


def vendors() -> tuple[Vendor, ...]:
    from . import hccl, nccl
    return nccl.FAMILY + (hccl.HCCL,)


def cann_version(lib_path: str) -> str:
    """The CANN toolkit version next to an HCCL library (HCCL itself has no version call)."""
    d = os.path.dirname(os.path.realpath(lib_path))
    for up in (d, os.path.dirname(d), os.path.dirname(os.path.dirname(d))):
        for name in ("ascend_toolkit_install.info", "version.info", "version.cfg"):
            for f in [os.path.join(up, name)] + sorted(glob.glob(os.path.join(up, "*", name))):
                try:
                    with open(f) as fh:
                        for line in fh:
                            k, _, v = line.partition("=")
                            if k.strip().lower() in ("version", "package_version") and v.strip():
                                return v.strip().strip('"')
                except OSError:
                    continue
    return ""


def probe(vendor: Vendor, path: str, where: str = "") -> Library:
    """Load ``path`` as ``vendor``'s library and say whether a bridge could run on it here."""
    from .._native.ccl_api import CclLibrary
    extra = {"where": where, "prefix": vendor.prefix, "family": vendor.family}
    try:
        lib = CclLibrary(path, vendor.family, vendor.symbols(), vendor.required)
    except OSError as e:
        return Library(vendor.kind, path, "", vendor.memory, False, f"cannot load: {e}", extra)
    version = version_string(lib.version()) if vendor.family == "nccl" else cann_version(path)
    try:
        rt = load_runtime(vendor.runtime, search_dirs=vendor.search_dirs)
    except Exception as e:               # BridgeUnavailable: runtime missing or unloadable
        return Library(vendor.kind, path, version, vendor.memory, False, str(e), extra)
    extra["runtime"] = rt.path
    n, why = device_status(vendor, rt)
    extra["devices"] = n
    return Library(vendor.kind, path, version, vendor.memory, not why, why, extra)


def find_vendor(vendor: Vendor) -> list[Library]:
    return [probe(vendor, p, where) for p, where in
            candidates(vendor.names, vendor.wheel_dirs, vendor.search_dirs, vendor.loader_search)]


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
    """Every vendor library found (NCCL family, HCCL, MPI), usable or not."""
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


def format_report(libraries: list[Library], islands: list[dict]) -> list[str]:
    """The lines `hetccl doctor` prints for vendor libraries and islands."""
    lines = ["vendor libraries (kind, version, memory, usable, path):"]
    if not libraries:
        lines.append("  none found (pip install nvidia-nccl-cu12 for NCCL; see the README's bridges section)")
    for lib in libraries:
        state = "usable" if lib.usable else f"not usable: {lib.reason}"
        lines.append(f"  {lib.kind:<10} {lib.version or '?':<10} {lib.memory:<6} {state}")
        lines.append(f"  {'':<10} {lib.path}" + (f"  [{lib.extra['where']}]" if lib.extra.get("where") else ""))
    lines.append("islands this host would form:")
    for isl in islands:
        lib = isl["library"]
        what = f"{isl['kind']} ({lib.version or '?'}, {lib.path})" if lib else isl["kind"]
        lines.append(f"  {isl['members']}: {what}" + (f" - {isl['note']}" if isl["note"] else ""))
    return lines
