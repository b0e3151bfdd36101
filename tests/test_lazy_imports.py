"""``import hetccl`` stays cheap, heavy modules load on first use, and an unbuilt source tree says
how to fix itself (hetccl/__init__.py, hetccl/dtypes.py, hetccl/_checkout.py).

Each check runs in a fresh interpreter (``sys.modules`` of this one is long polluted). The times
are in bench/import_time.py, not here.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shutil
import sys

from tests.launcher import REPO_ROOT, run_command

# the file itself, as bench/ and tests/launcher.py load it: it must not need the hetccl package
_spec = importlib.util.spec_from_file_location("_checkout_under_test",
                                               os.path.join(REPO_ROOT, "hetccl", "_checkout.py"))
_checkout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_checkout)

NEVER_AT_IMPORT = ("torch", "numpy", "ml_dtypes", "zmq", "mpi4py", "hetccl.comm", "hetccl._native",
                   "hetccl.topology", "hetccl.bridges", "hetccl.benchmark", "hetccl.transports")
# loaded when first used, not with the communicator's code
NOT_WITH_THE_CORE = ("torch", "ml_dtypes", "mpi4py", "matplotlib", "hetccl.benchmark",
                     "hetccl.topology.discover", "hetccl.bridges.mpi", "hetccl._native.ucx",
                     "hetccl.torch")
# shared libraries of vendors, MPI and UCX: opened when a bridge or transport needs them
LIBRARIES = ("nccl", "rccl", "hccl", "cncl", "bkcl", "libmpi", "libucp", "libucs", "libcuda")


def _modules_after(code: str) -> list[str]:
    """The modules loaded by ``code``; every other line it prints must say ``[]``."""
    p = run_command([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                    timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    *said, modules = p.stdout.strip().splitlines()
    assert all(line.endswith("[]") for line in said), said
    return json.loads(modules)


def _loaded(modules, names):
    return [m for m in modules if any(m == n or m.startswith(n + ".") for n in names)]


def test_import_hetccl_loads_only_errors_and_ops():
    mods = _modules_after("import hetccl; hetccl.SUM, hetccl.HetcclError, hetccl.__version__")
    assert not _loaded(mods, NEVER_AT_IMPORT), _loaded(mods, NEVER_AT_IMPORT)


def test_the_core_loads_on_first_use_without_optional_dependencies():
    code = ("import hetccl\nassert callable(hetccl.init) and hetccl.Communicator\n"
            "maps = open('/proc/self/maps').read()\n"
            f"print('libraries:', [x for x in {LIBRARIES!r} if x in maps])")
    mods = _modules_after(code)
    assert "hetccl.comm" in mods and "hetccl._native.engine" in mods
    assert not _loaded(mods, NOT_WITH_THE_CORE), _loaded(mods, NOT_WITH_THE_CORE)


def test_bfloat16_and_float8_load_ml_dtypes_on_first_use():
    code = """
import sys
import numpy as np
import hetccl
from hetccl import dtypes
comm = hetccl.init()                                  # one rank: no launcher variables
assert "ml_dtypes" not in sys.modules
assert dtypes.numpy_dtype(dtypes.FP8_E5M2).name == "float8_e5m2" and "ml_dtypes" in sys.modules
import ml_dtypes
x = np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16)
assert dtypes.from_numpy(x.dtype) == dtypes.BFLOAT16
comm.allreduce(x, hetccl.SUM)                         # the latency path's dtype table learnt it
assert comm.allgather(x).dtype == x.dtype
comm.close()
print("ok")
"""
    env = {k: None for k in os.environ if k.startswith(("HETCCL_", "OMPI_", "PMI_", "SLURM_"))}
    p = run_command([sys.executable, "-c", code], timeout=120, env=env)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]


def test_from_numpy_without_ml_dtypes_imported_still_rejects_clearly():
    code = ("import numpy as np, sys\nfrom hetccl import dtypes, InvalidUsage\n"
            "try:\n    dtypes.from_numpy(np.dtype('complex64'))\nexcept InvalidUsage as e:\n"
            "    print('InvalidUsage', 'ml_dtypes' in sys.modules)")
    p = run_command([sys.executable, "-c", code], timeout=60)
    assert p.stdout.strip() == "InvalidUsage False", p.stderr[-3000:]


# ------------------------------------------------------------------ unbuilt trees (_checkout.py)
def unbuilt_copy(dest) -> str:
    """A copy of this checkout's Python and Cython sources, as a fresh clone has them: no compiled
    extension. Returns the copy's root (with setup.py, like a checkout)."""
    shutil.copytree(os.path.join(REPO_ROOT, "hetccl"), os.path.join(dest, "hetccl"),
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    shutil.copy(os.path.join(REPO_ROOT, "setup.py"), dest)
    return str(dest)


def test_missing_extensions_lists_each_pyx_without_its_module(tmp_path):
    native = tmp_path / "pkg" / "_native"
    native.mkdir(parents=True)
    for name in ("engine.pyx", "kernels.pyx", "codes.pxd"):
        (native / name).write_text("")
    assert _checkout.missing_extensions(str(tmp_path / "pkg")) == ["engine", "kernels"]
    (native / "engine.cpython-299-wrong.so").write_text("")            # another Python's build
    assert _checkout.missing_extensions(str(tmp_path / "pkg")) == ["engine", "kernels"]
    (native / ("engine" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_text("")
    assert _checkout.missing_extensions(str(tmp_path / "pkg")) == ["kernels"]
    under_test = os.path.dirname(importlib.util.find_spec("hetccl").origin)
    assert _checkout.unbuilt_message(under_test) is None


def test_unbuilt_checkout_says_how_to_build_it(tmp_path):
    root = unbuilt_copy(tmp_path)
    code = "import hetccl\ntry:\n    hetccl.init\nexcept ImportError as e:\n    print(e)"
    p = run_command([sys.executable, "-c", code], timeout=60, env={"PYTHONPATH": root}, cwd=root)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "not built in place" in p.stdout and "build_ext --inplace" in p.stdout, p.stdout
    assert "missing extension modules: binomial" in p.stdout, p.stdout


def test_view_without_package_keeps_everything_but_hetccl(tmp_path, monkeypatch):
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    view = _checkout.view_without_package(REPO_ROOT)
    assert os.path.dirname(view) == str(tmp_path)
    assert not os.path.exists(os.path.join(view, "hetccl"))
    for name in ("tests", "bench", "setup.py"):
        assert os.path.samefile(os.path.join(view, name), os.path.join(REPO_ROOT, name))
    assert _checkout.view_without_package(REPO_ROOT) == view                # made once


def test_choice_follows_pythonpath_then_the_installed_package(tmp_path, monkeypatch):
    root = unbuilt_copy(tmp_path)
    monkeypatch.setenv("PYTHONPATH", root)
    assert _checkout.choose(root) is None                  # named on PYTHONPATH: the checkout
    monkeypatch.setenv("PYTHONPATH", "")
    installed = _checkout.installed_package(root)          # whatever this interpreter imports
    assert _checkout.choose(root) == installed
    if installed is not None:
        assert not _checkout.missing_extensions(installed)
        assert "installed hetccl at" in _checkout.unbuilt_message(os.path.join(root, "hetccl"))
