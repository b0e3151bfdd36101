"""hetccl's ``torch.backends`` entry point, outside the hetccl package (pyproject.toml).

torch imports every entry point's module at the end of ``import torch``, in every program on that
Python, and turns any exception into ``RuntimeError: Failed to load the backend extension``: an
entry point inside the package (``hetccl.torch:_autoload``) would import ``hetccl`` first, so a
hetccl that cannot import at all (a checkout with a broken or missing file, an editable install
whose checkout lacks a module) would stop ``import torch`` itself. This module imports only the
standard library; ``autoload`` imports ``hetccl.torch`` (whose own import registers the backend
and never raises, hetccl/torch/autoload.py) and, when that import fails, warns once naming the
problem and the fix, and registers ``"hetccl"`` with a creator that raises it, so torch imports as
usual and ``init_process_group("hetccl")`` says what is wrong. A checkout that is gone entirely
takes this module with it under an editable install: torch's own error then names
TORCH_DEVICE_BACKEND_AUTOLOAD=0, and ``pip uninstall hetccl`` (or reinstalling) is the fix.
"""
from __future__ import annotations

import logging
import warnings

NAME = "hetccl"
FIX = ("reinstall hetccl (`pip install -e .` in its checkout, or `pip install hetccl`), or `pip "
       "uninstall hetccl`; set TORCH_DEVICE_BACKEND_AUTOLOAD=0 to skip torch's backend entry points")


def autoload() -> None:
    """Register the hetccl backend with torch (through hetccl.torch); never raises."""
    try:
        from hetccl.torch import _autoload
    except Exception as e:                       # noqa: BLE001 - import torch must not fail
        _unimportable(e)
        return
    _autoload()


def _unimportable(err: BaseException) -> None:
    where = _origin()
    problem = f"hetccl cannot be imported{where} ({type(err).__name__}: {err})"
    try:
        warnings.warn(f"hetccl: {problem}. torch works as usual, but init_process_group('hetccl') "
                      f"will fail until this is fixed: {FIX}", RuntimeWarning, stacklevel=3)
    except Exception:                            # -W error: a warning would raise
        logging.getLogger("hetccl.torch").warning("hetccl: %s; %s", problem, FIX)
    try:
        import torch.distributed as dist
        if dist.is_available() and NAME.upper() not in dist.Backend._plugins:
            def create(*args, **kwargs):
                raise ImportError(f"the torch backend 'hetccl' is unusable: {problem}. Fix: {FIX}")
            dist.Backend.register_backend(NAME, create, extended_api=True, devices=["cpu"])
    except Exception:                            # noqa: BLE001 - the warning said it already
        pass


def _origin() -> str:
    """' from PATH': where Python finds the hetccl package, if anywhere."""
    try:
        import importlib.util
        spec = importlib.util.find_spec(NAME)
    except Exception:                            # noqa: BLE001
        return ""
    locations = list(getattr(spec, "submodule_search_locations", None) or []) if spec else []
    return f" from {locations[0]}" if locations else ""
