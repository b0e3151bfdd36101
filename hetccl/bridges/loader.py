"""Finding, loading and probing a vendor's library and device runtime (one dlopen handle per file).

Where files are looked for, first found wins: pip wheels in every site-packages directory
(nvidia/nccl/lib, nvidia/cuda_runtime/lib), LD_LIBRARY_PATH, the dynamic loader's cache
(``ldconfig -p``), then the vendor's install directories. No environment variable of hetccl's own.

``probe`` / ``find_vendor`` answer "is this library usable here, and why not" for one vendor row
(``hetccl doctor``, automatic island choice); they live here, not in libraries.py, so the vendor
modules (nccl.py, hccl.py, ...) can offer ``find()`` without importing the table of all vendors.
"""
from __future__ import annotations

import glob
import os
import site
import sys

from .._native.ccl_api import DeviceRuntime
from .base import BridgeUnavailable, Library
from .vendor import Runtime, Vendor, version_string

# ------------------------------------------------------------------------------------------------
# Finding files
# ------------------------------------------------------------------------------------------------
def site_dirs() -> list[str]:
    """Every site-packages directory of this interpreter (venv, user, system)."""
    out = []
    for d in list(getattr(site, "getsitepackages", lambda: [])()) + [site.getusersitepackages()] + sys.path:
        if d and os.path.isdir(d) and d not in out and d.rstrip("/").endswith("-packages"):
            out.append(d)
    return out


def _ld_library_path() -> list[str]:
    return [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]


_LDCONFIG: dict[str, str] | None = None


def ldconfig_cache() -> dict[str, str]:
    """soname -> path from the dynamic loader's cache (``ldconfig -p``), read once."""
    global _LDCONFIG
    if _LDCONFIG is None:
        import subprocess
        _LDCONFIG = {}
        for exe in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
            try:
                out = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            for line in out.splitlines():
                if "=>" in line:
                    name = line.strip().split(" ", 1)[0]
                    _LDCONFIG.setdefault(name, line.rsplit("=>", 1)[1].strip())
            break
    return _LDCONFIG


def candidates(names, wheel_dirs=(), search_dirs=(), loader=True) -> list[tuple[str, str]]:
    """(path, where) for every existing file named ``names`` in: pip wheels, LD_LIBRARY_PATH, the
    ldconfig cache, then the vendor's install directories. First = the one that would be loaded."""
    seen, out = set(), []

    def add(path, where):
        real = os.path.realpath(path)
        if os.path.isfile(path) and real not in seen:
            seen.add(real)
            out.append((path, where))

    for name in names:
        if os.path.isabs(name):              # a vendor given by file (custom(), tests)
            add(name, "given")
    for sp in site_dirs():
        for wd in wheel_dirs:
            for name in names:
                for p in sorted(glob.glob(os.path.join(sp, wd, name))):
                    add(p, "wheel")
    if loader:
        for d in _ld_library_path():
            for name in names:
                add(os.path.join(d, name), "LD_LIBRARY_PATH")
        cache = ldconfig_cache()
        for name in names:
            if name in cache:
                add(cache[name], "ldconfig")
    for d in search_dirs:
        for name in names:
            for p in sorted(glob.glob(os.path.join(d, name))):
                add(p, d)
    return out


# ------------------------------------------------------------------------------------------------
# Loading (one handle per file and process)
# ------------------------------------------------------------------------------------------------
_LOADED: dict = {}


def load_library(vendor: Vendor, path: str | None = None):
    """The CclLibrary for ``vendor`` (first candidate, or ``path``); BridgeUnavailable if none."""
    paths = [path] if path else [p for p, _ in candidates(vendor.names, vendor.wheel_dirs, vendor.search_dirs,
                                                          vendor.loader_search)]
    if not paths:
        hint = f"`pip install {vendor.wheel}` or " if vendor.wheel else ""
        raise BridgeUnavailable(f"{vendor.kind}: none of {', '.join(vendor.names)} was found (looked in pip "
                                f"wheels, LD_LIBRARY_PATH, the ldconfig cache and {', '.join(vendor.search_dirs) or 'nowhere else'}); "
                                f"{hint}install it and put its directory on LD_LIBRARY_PATH")
    return _first_loadable(paths, ("ccl", vendor.kind), vendor.load, f"{vendor.kind}: found but cannot load")


def load_runtime(rt: Runtime, path: str | None = None, search_dirs=()):
    """The DeviceRuntime of ``rt`` (first candidate that loads, or ``path``); looked for in the
    vendor's ``search_dirs`` and then the runtime's own."""
    dirs = tuple(search_dirs) + tuple(d for d in rt.search_dirs if d not in search_dirs)
    paths = [path] if path else [p for p, _ in candidates(rt.names, rt.wheel_dirs, dirs)]
    if not paths:
        raise BridgeUnavailable(f"device runtime {rt.prefix}: none of {', '.join(rt.names)} was found")
    return _first_loadable(paths, ("rt", rt.prefix),
                           lambda p: DeviceRuntime(p, rt.style, rt.symbols(), rt.not_ready, **rt.options()),
                           f"device runtime {rt.prefix}")


def _first_loadable(paths, key, make, what):
    """The first of ``paths`` that ``make`` loads (cached per process); else BridgeUnavailable."""
    errors = []
    for p in paths:
        k = key + (p,)
        if k not in _LOADED:
            try:
                _LOADED[k] = make(p)
            except OSError as e:
                errors.append(str(e))
                continue
        return _LOADED[k]
    raise BridgeUnavailable(f"{what}: {'; '.join(errors)}")


def device_status(vendor: Vendor, runtime) -> tuple[int, str]:
    """(devices, reason): how many devices the runtime sees, and why none when 0."""
    sym = vendor.runtime.symbols()
    rc = runtime.init()
    if rc not in (0, 100002):                  # ACL_ERROR_REPEAT_INITIALIZE is fine
        return 0, f"no {vendor.device_word} device: {sym['init']} returned {rc} ({runtime.error_string(rc)})"
    rc, n = runtime.device_count()
    if rc != 0:
        return 0, (f"no {vendor.device_word} device: {sym['get_device_count']} returned "
                   f"{rc} ({runtime.error_string(rc)})")
    if n <= 0:
        return 0, f"no {vendor.device_word} device: {sym['get_device_count']} found 0 devices"
    return n, ""


# ------------------------------------------------------------------------------------------------
# Probing: is a library usable here, and why not
# ------------------------------------------------------------------------------------------------
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


def library_version(vendor: Vendor, lib) -> str:
    """The version text of a loaded library: its own call where it has one, else CANN's file."""
    if vendor.family == "hccl":
        return cann_version(lib.path)
    return version_string(lib.version())


def probe(vendor: Vendor, path: str, where: str = "") -> Library:
    """Load ``path`` as ``vendor``'s library and say whether a bridge could run on it here."""
    extra = {"where": where, "prefix": vendor.prefix, "family": vendor.family}
    try:
        lib = vendor.load(path)
    except OSError as e:
        return Library(vendor.kind, path, "", vendor.memory, False, f"cannot load: {e}", extra)
    version = library_version(vendor, lib)
    if vendor.unconfirmed:
        return Library(vendor.kind, path, version, vendor.memory, False, unconfirmed_reason(vendor), extra)
    try:
        rt = load_runtime(vendor.runtime, search_dirs=vendor.search_dirs)
    except Exception as e:               # BridgeUnavailable: runtime missing or unloadable
        return Library(vendor.kind, path, version, vendor.memory, False, str(e), extra)
    extra["runtime"] = rt.path
    n, why = device_status(vendor, rt)
    extra["devices"] = n
    return Library(vendor.kind, path, version, vendor.memory, not why, why, extra)


def unconfirmed_reason(vendor: Vendor) -> str:
    return (f"its ABI is not confirmed by a public source ({vendor.unconfirmed}); hetccl does not "
            f"guess enum values: pass a row with the values from your SDK's header "
            f"(dataclasses.replace({vendor.kind} row, tables=..., unconfirmed=''), docs/bridges.md)")


def find_vendor(vendor: Vendor) -> list[Library]:
    """Every file of ``vendor`` on this machine, probed (usable or not, and why)."""
    return [probe(vendor, p, where) for p, where in
            candidates(vendor.names, vendor.wheel_dirs, vendor.search_dirs, vendor.loader_search)]
