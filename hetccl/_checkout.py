"""Is a hetccl tree built, and which hetccl do the repository's own scripts and tests import?

Why: the package sits at the repository root (``hetccl/`` next to ``setup.py``), so a Python
started in a checkout (the current directory goes first on ``sys.path`` with ``-c``, ``-m`` and
the REPL) or with the checkout on PYTHONPATH imports the source tree ahead of an installed hetccl.
A source tree whose compiled core (one extension per ``_native/*.pyx``) is not built in place
cannot run. This module names that problem and its fix (``unbuilt_message``) for hetccl's import
errors and the torch entry point, and lets ``bench/`` and ``tests/`` pick their hetccl on purpose
(``use``):

* the checkout, when PYTHONPATH names it (the developer's explicit choice), or when no other
  built hetccl is installed;
* otherwise the installed package, with the checkout's other top-level folders (``tests``,
  ``bench``, ``examples``) still importable through a view of the checkout without ``hetccl/``.

Standard library only and no package-relative import: the scripts load this file by its path
before deciding which hetccl to import.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys

PACKAGE = "hetccl"


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a or ".", b)
    except OSError:
        return False


def missing_extensions(package_dir: str) -> list[str]:
    """Modules of the compiled core (``_native/<name>.pyx``) with no extension this interpreter
    can load next to them (``<name>`` + one of ``EXTENSION_SUFFIXES``)."""
    native = os.path.join(package_dir, "_native")
    try:
        files = set(os.listdir(native))
    except OSError:
        return ["_native"]
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    return sorted(f[:-4] for f in files if f.endswith(".pyx")
                  and not any(f[:-4] + s in files for s in suffixes))


def installed_package(checkout: str) -> str | None:
    """The built hetccl package Python would import with ``checkout`` (and the current directory
    when that is the checkout) off ``sys.path``; None if there is none."""
    path = [p for p in sys.path if not _same(p, checkout)]
    for finder in sys.meta_path:
        try:
            if finder is importlib.machinery.PathFinder:
                spec = finder.find_spec(PACKAGE, path)
            elif hasattr(finder, "find_spec"):
                spec = finder.find_spec(PACKAGE, None)
            else:
                continue
        except Exception:  # a third-party finder failing is not ours to report
            continue
        locations = list(getattr(spec, "submodule_search_locations", None) or [])
        if locations:
            found = locations[0]
            if _same(os.path.dirname(found), checkout) or missing_extensions(found):
                return None
            return found
    return None


def unbuilt_message(package_dir: str) -> str | None:
    """None when the hetccl at ``package_dir`` has its compiled core; else what is wrong and how
    to fix it."""
    missing = missing_extensions(package_dir)
    if not missing:
        return None
    root = os.path.dirname(os.path.abspath(package_dir))
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    text = (f"the hetccl imported from {package_dir} has no compiled core for this Python "
            f"(missing extension modules: {shown}). ")
    if os.path.isfile(os.path.join(root, "setup.py")):
        other = installed_package(root)
        text += (f"It is a source checkout that is not built in place; build it with "
                 f"`python setup.py build_ext --inplace` in {root}")
        if other:
            text += (f", or run from outside the checkout (and keep it off PYTHONPATH) to use the "
                     f"installed hetccl at {other}")
        return text
    return text + "Reinstall hetccl (pip install --force-reinstall hetccl, or `pip install .` " \
                  "from a checkout)"


def explain(error: ImportError, package_dir: str) -> ImportError:
    """``error`` with the fix added when it comes from an unbuilt core (else ``error`` itself)."""
    message = unbuilt_message(package_dir)
    if message is None:
        return error
    return ImportError(f"{error}: {message}", name=error.name, path=error.path)


def view_without_package(checkout: str) -> str:
    """A directory of symlinks to every top-level entry of ``checkout`` except ``hetccl/``: on
    sys.path it makes ``tests``/``bench`` importable, and as the working directory it keeps
    relative paths working, without shadowing the installed hetccl. Made once per checkout."""
    import hashlib
    import tempfile

    checkout = os.path.realpath(checkout)
    tag = hashlib.sha256(checkout.encode()).hexdigest()[:12]
    view = os.path.join(tempfile.gettempdir(), f"hetccl-checkout-view-{os.getuid()}-{tag}")
    os.makedirs(view, exist_ok=True)
    for name in os.listdir(checkout):
        link = os.path.join(view, name)
        if name != PACKAGE and not os.path.lexists(link):
            try:
                os.symlink(os.path.join(checkout, name), link)
            except FileExistsError:  # another process made it first
                pass
    return view


def choose(checkout: str) -> str | None:
    """None when the checkout's own hetccl is to be imported, else the installed package's dir."""
    checkout = os.path.realpath(checkout)
    explicit = any(_same(p, checkout)
                   for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)
    if explicit:
        return None
    return installed_package(checkout)


def use(checkout: str) -> str:
    """Make this process, and the Python processes it starts, import the hetccl ``choose`` picks.

    Returns the directory that now stands for the checkout on ``sys.path`` and PYTHONPATH: the
    checkout itself, or its view without ``hetccl/``. Child processes started with ``-c``/``-m``
    put their working directory first on sys.path, so start them in the returned directory."""
    checkout = os.path.realpath(checkout)
    root = checkout if choose(checkout) is None else view_without_package(checkout)
    sys.path[:] = [root] + [p for p in sys.path if not (_same(p, checkout) or _same(p, root))]
    env = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
           if p and not (_same(p, checkout) or _same(p, root))]
    os.environ["PYTHONPATH"] = os.pathsep.join([root] + env)
    mod = sys.modules.get(PACKAGE)
    if mod is not None and root != checkout and any(
            _same(os.path.dirname(p), checkout) for p in getattr(mod, "__path__", [])):
        raise RuntimeError(f"{PACKAGE} was imported from the checkout {checkout} before "
                           f"choosing the installed one; call use() before importing it")
    # Imported now (it is cheap: errors and ops), its submodules then come from its own directory
    # whatever later changes sys.path (pytest puts the checkout back first to import test modules).
    importlib.import_module(PACKAGE)
    return root
