"""What ``import torch`` runs once hetccl is installed: register the backend name, nothing more.

torch calls every ``torch.backends`` entry point at the end of ``import torch``, in every program
on that Python whether it uses hetccl or not, and turns any exception into ``RuntimeError: Failed
to load the backend extension``. So ``autoload``:

* registers ``"hetccl"`` with a creator that imports the backend (process_group.py, the
  communicator and its compiled core) when torch first creates a hetccl group;
* installs the ``env://`` launcher support (launch.py), which does nothing unless the group being
  initialised uses the hetccl backend;
* checks, without loading it, that hetccl's compiled core is there, because a source checkout
  shadowing the install or a broken build would otherwise only surface at the first
  ``init_process_group("hetccl")``;
* never raises: a failure is one warning naming the cause and the fix, and torch imports as usual.

Nothing here imports more than the standard library before torch.distributed, which ``import
torch`` has already loaded by the time entry points run.
"""
from __future__ import annotations

import logging
import os
import warnings

from .name import BACKEND_NAME

_OPT_OUT = ("set TORCH_DEVICE_BACKEND_AUTOLOAD=0 to skip torch's backend entry points, or "
            "pip uninstall hetccl")


def _create(dist_opts, backend_opts=None):
    """The creator torch calls for each hetccl group (extended API): the backend loads here."""
    try:
        from .backend import create_process_group
    except ImportError as e:
        from .._checkout import explain
        better = explain(e, _package_dir())
        if better is e:
            raise
        raise better from e
    return create_process_group(dist_opts, backend_opts)


def _package_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def register() -> None:
    """Make ``"hetccl"`` a torch.distributed backend for CPU tensors (idempotent)."""
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed support; install a torch "
                           "build with distributed support (the pip wheels have it)")
    if BACKEND_NAME.upper() in dist.Backend._plugins:
        return
    dist.Backend.register_backend(BACKEND_NAME, _create, extended_api=True, devices=["cpu"])


def _warn(message: str) -> None:
    """One warning, even where warnings are turned into errors (``-W error``): raising here
    would fail ``import torch``."""
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    except Exception:
        logging.getLogger("hetccl.torch").warning(message)


_started = False


def autoload() -> None:
    """What the ``torch.backends`` entry point (``hetccl_torch_entry:autoload``, which imports
    hetccl.torch; ``hetccl.torch:_autoload`` in installs made before it) runs, also run by ``import
    hetccl.torch``. Never raises; runs once per process (the second call, torch's autoload nested
    in the first when hetccl.torch is imported ahead of torch, has nothing left to do)."""
    global _started
    if _started:
        return
    _started = True
    try:
        from .._checkout import unbuilt_message
        from .launch import patch_env_rendezvous

        register()
        patch_env_rendezvous()
        problem = unbuilt_message(_package_dir())
    except Exception as e:
        _warn(f"hetccl: the torch backend 'hetccl' was not registered ({type(e).__name__}: {e}). "
              f"torch works without it; to fix, reinstall hetccl with its torch extra "
              f"(pip install 'hetccl[torch]'), or {_OPT_OUT}")
        return
    if problem:
        _warn(f"hetccl: {problem}. torch works as usual, but init_process_group('hetccl') will "
              f"fail until this is fixed (or {_OPT_OUT})")
