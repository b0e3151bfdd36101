"""torch.distributed backend ``"hetccl"``: switch a script from gloo by changing the backend name.

    import torch.distributed as dist
    dist.init_process_group("hetccl")        # instead of "gloo"; CPU tensors

Importing this package registers the backend (autoload.py: the name, a creator that loads the
backend on first use, and the ``env://`` launcher support of launch.py). An installed hetccl does
that through the ``torch.backends`` entry point at ``import torch``, so the import is optional; it
is needed with TORCH_DEVICE_BACKEND_AUTOLOAD=0 or when hetccl is on PYTHONPATH but not installed.
Either way it never raises (a problem is one warning); ``register()`` raises instead. The group,
its Work and futures: process_group.py, work.py; torch's store as hetccl's: store.py; the
creator: backend.py; a new group of the survivors after a failure: recovery.py (``shrink_group``);
DDP communication hooks (buckets in symmetric memory, bf16/fp16 compression): hooks.py.
"""
# Only autoload.py (standard library) is imported here: torch's autoload imports this package to
# find ``_autoload``, and anything that could raise at import would fail ``import torch``.
from .autoload import register
from .name import BACKEND_NAME
from .autoload import autoload as _autoload

__all__ = ["register", "connect", "create_process_group", "ProcessGroupHetccl", "HetcclWork",
           "BACKEND_NAME", "shrink_group"]

_LAZY = {"connect": "backend", "create_process_group": "backend",
         "ProcessGroupHetccl": "process_group", "HetcclWork": "work", "shrink_group": "recovery"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


_autoload()
