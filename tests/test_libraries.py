"""Vendor library discovery (hetccl/bridges/libraries.py) and what `hetccl doctor` prints of it."""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import types

import pytest

from hetccl.bridges import libraries, loader, nccl, vendor
from hetccl.bridges.base import HOST, Library
from tests import fakeccl
from tests.launcher import IMPORT_ROOT


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    return fakeccl.build_or_skip(tmp_path_factory)


def _nccl_wheel():
    try:
        return importlib.metadata.version("nvidia-nccl-cu12").split(".post")[0]
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("nvidia-nccl-cu12 is not installed (pip install -e '.[bridges]')")


def test_nccl_from_the_wheel_is_found_with_its_version():
    version = _nccl_wheel()
    found = libraries.find_vendor(nccl.NCCL)
    assert found, "the nvidia-nccl-cu12 wheel's libnccl.so.2 was not found"
    first = found[0]
    assert first.kind == "nccl" and first.memory == "cuda" and first.version == version
    assert first.path.endswith(os.path.join("nvidia", "nccl", "lib", "libnccl.so.2"))
    assert first.extra["where"] == "wheel" and first.extra["prefix"] == "nccl"
    assert first.extra["runtime"].endswith("libcudart.so.12")
    if not first.usable:                               # no GPU here: says why, in the runtime's words
        assert first.reason.startswith("no CUDA device: cudaGetDeviceCount returned")


def test_candidates_order_and_sources(tmp_path, monkeypatch, libs):
    d1, d2 = tmp_path / "ld", tmp_path / "vendor"
    d1.mkdir()
    d2.mkdir()
    shutil.copy(libs["fakeccl"], d1 / "libzzccl.so.1")
    shutil.copy(libs["fakeccl"], d2 / "libzzccl.so.1")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/nonexistent:{d1}")
    got = loader.candidates(("libzzccl.so.1",), search_dirs=(str(d2),))
    assert got == [(str(d1 / "libzzccl.so.1"), "LD_LIBRARY_PATH"), (str(d2 / "libzzccl.so.1"), str(d2))]
    assert loader.candidates(("libzzccl.so.1",), search_dirs=(str(d2),), loader=False) == \
        [(str(d2 / "libzzccl.so.1"), str(d2))]
    os.symlink(d2 / "libzzccl.so.1", d2 / "libzzccl.so")          # one file under two names: listed once
    assert len(loader.candidates(("libzzccl.so.1", "libzzccl.so"), search_dirs=(str(d2),), loader=False)) == 1


def test_probe_usable_and_not(libs, monkeypatch, tmp_path):
    v = fakeccl.nccl_vendor(libs)
    lib = libraries.probe(v, libs["fakeccl"], "given")
    assert (lib.kind, lib.version, lib.usable, lib.reason, lib.extra["devices"]) == ("fakeccl", "2.27.3", True, "", 1)
    monkeypatch.setenv("FAKERT_DEVICES", "0")
    lib = libraries.probe(v, libs["fakeccl"])
    assert not lib.usable and lib.reason.startswith("no CUDA device: fakertGetDeviceCount returned 100")
    junk = tmp_path / "libjunk.so"
    junk.write_text("not an ELF file")
    lib = libraries.probe(v, str(junk))
    assert not lib.usable and lib.reason.startswith("cannot load:")
    v2 = nccl.custom("fakeccl", libs["fakeccl"], "fakeccl", vendor.Runtime(("/nonexistent/librt.so",), "fakert"))
    lib = libraries.probe(v2, libs["fakeccl"])
    assert not lib.usable and "none of /nonexistent/librt.so was found" in lib.reason and lib.version == "2.27.3"
    h = libraries.probe(fakeccl.hccl_vendor(libs), libs["fakehccl"])
    assert h.usable is False and "no Ascend NPU device" in h.reason


def test_cann_version_file(tmp_path):
    lib = tmp_path / "x86_64-linux" / "lib64"
    lib.mkdir(parents=True)
    (lib / "libhccl.so").write_bytes(b"")
    (tmp_path / "x86_64-linux" / "ascend_toolkit_install.info").write_text("package_name=Ascend-cann-toolkit\nversion=8.0.RC2\n")
    assert libraries.cann_version(str(lib / "libhccl.so")) == "8.0.RC2"
    assert libraries.cann_version("/nonexistent/lib/libhccl.so") == ""


def test_mpi_finder_is_optional(monkeypatch):
    mpi_lib = Library("mpi", "/usr/lib/libmpi.so.40", "5.0.5", HOST)
    monkeypatch.setitem(sys.modules, "hetccl.bridges.mpi", types.SimpleNamespace(find=lambda: mpi_lib))
    assert libraries.find_mpi() == [mpi_lib]
    monkeypatch.setitem(sys.modules, "hetccl.bridges.mpi", types.SimpleNamespace(find=lambda: [mpi_lib, mpi_lib]))
    assert len(libraries.find_mpi()) == 2

    def broken():
        raise RuntimeError("boom")
    monkeypatch.setitem(sys.modules, "hetccl.bridges.mpi", types.SimpleNamespace(find=broken))
    (lib,) = libraries.find_mpi()
    assert not lib.usable and "find() failed: boom" in lib.reason
    monkeypatch.setitem(sys.modules, "hetccl.bridges.mpi", None)      # the module is absent
    assert libraries.find_mpi() == []


def test_host_islands():
    gpus = [{"accel": "nvidia"}, {"accel": "nvidia"}]
    npu = [{"accel": "ascend"}]
    mlu = [{"accel": "cambricon"}]
    nccl_ok = Library("nccl", "/w/libnccl.so.2", "2.32.3", "cuda")
    nccl_bad = Library("nccl", "/w/libnccl.so.2", "2.32.3", "cuda", False, "no CUDA device: x")
    mpi = Library("mpi", "/o/libmpi.so", "5.0", HOST)
    isl = libraries.host_islands([nccl_ok, mpi], gpus + npu + mlu, "openmpi")
    assert [(i["members"], i["kind"]) for i in isl] == [
        ("1 ascend device(s)", "hetccl"), ("1 cambricon device(s)", "hetccl"),
        ("2 nvidia device(s)", "nccl"), ("CPU ranks", "mpi")]
    assert "no hccl library found" in isl[0]["note"] and "no cncl library found" in isl[1]["note"]
    isl = libraries.host_islands([nccl_bad, mpi], gpus, "hetccl")
    assert isl[0]["kind"] == "hetccl" and "nccl found but not usable: no CUDA device" in isl[0]["note"]
    assert isl[1] == {"members": "CPU ranks", "kind": "hetccl", "library": None,
                      "note": "not launched under MPI: hetccl's own shm/c2c/tcp/rdma"}
    lines = libraries.format_report([nccl_bad], isl)
    assert lines[1].split() == ["nccl", "2.32.3", "cuda", "not", "usable:", "no", "CUDA", "device:", "x"]
    assert lines[-2].startswith("  2 nvidia device(s): hetccl - nccl found but not usable")
    i = lines.index("native libraries of FlagCX's list (name: hetccl kind, found here?):")
    kinds = {ln.split()[0]: ln.split()[1:] for ln in lines[i + 1:i + 13]}
    assert set(kinds) == {"NCCL", "IXCCL", "CNCL", "MCCL", "XCCL", "DUCCL", "HCCL", "MUSACCL", "RCCL",
                          "TCCL", "ECCL", "PCCL"}
    assert kinds["NCCL"][:4] == ["nccl", "found,", "not", "usable:"] and kinds["CNCL"] == ["cncl", "not", "found"]
    assert kinds["XCCL"][0] == "bkcl" and kinds["DUCCL"][0] == "rccl" and kinds["TCCL"][:2] == ["-", "no"]


def test_doctor_lists_libnccl_with_its_version():
    version = _nccl_wheel()
    env = dict(os.environ, PYTHONPATH=IMPORT_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("HETCCL_SIZE", "HETCCL_STORE", "HETCCL_RANK"):
        env.pop(k, None)
    out = subprocess.run([sys.executable, "-m", "hetccl", "doctor"], capture_output=True, text=True,
                         timeout=180, env=env, cwd=IMPORT_ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    i = lines.index("vendor libraries (kind, version, memory, usable, path):")
    assert lines[i + 1].split()[:3] == ["nccl", version, "cuda"]
    assert lines[i + 2].strip().endswith("libnccl.so.2  [wheel]")
    assert "islands this host would form:" in lines
    assert any(line.startswith("  CPU ranks: ") for line in lines)
