"""Shared by the peer benchmarks: load hetccl's benchmark package without importing hetccl.

The peers must measure Open MPI and gloo, not hetccl's import side effects, and must keep working
while hetccl itself is broken or unbuilt. So ``hetccl/benchmark/`` is loaded from this source tree
as a standalone package named ``hetccl_benchmark`` (it imports nothing else from hetccl); if the
tree is not there (bench/ copied elsewhere), the installed ``hetccl.benchmark`` is used.
"""
import importlib
import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_PKG_DIR = os.path.join(REPO, "hetccl", "benchmark")
_NAME = "hetccl_benchmark"


def limit_threads() -> None:
    """One BLAS/OpenMP thread per rank (numpy would start one per core in every process)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def load_benchmark():
    """(format, runner, cli) modules of hetccl's benchmark package."""
    if _NAME not in sys.modules and os.path.isfile(os.path.join(_PKG_DIR, "runner.py")):
        spec = importlib.util.spec_from_file_location(
            _NAME, os.path.join(_PKG_DIR, "__init__.py"), submodule_search_locations=[_PKG_DIR])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = mod
        spec.loader.exec_module(mod)
    if _NAME in sys.modules:
        base = _NAME
    else:
        base = "hetccl.benchmark"
    return tuple(importlib.import_module(f"{base}.{m}") for m in ("format", "runner", "cli"))


def load_peers():
    """The peer adapters (hetccl/benchmark/peers.py: MpiAdapter, GlooAdapter)."""
    load_benchmark()
    import importlib
    return importlib.import_module(f"{_NAME if _NAME in sys.modules else 'hetccl.benchmark'}.peers")


def load_table():
    """The peer comparison table (hetccl/benchmark/table.py)."""
    load_benchmark()
    import importlib
    return importlib.import_module(f"{_NAME if _NAME in sys.modules else 'hetccl.benchmark'}.table")
