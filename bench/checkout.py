"""Which hetccl the benchmark scripts import: the installed package, or this checkout on purpose.

Run from the repository root, Python would import the source tree's ``hetccl/`` ahead of an
installed hetccl (and fail if it is not built in place). Importing this module applies the rule of
hetccl/_checkout.py to this process and, through PYTHONPATH, to the processes it starts: the
checkout when PYTHONPATH names it or no built hetccl is installed, else the installed package.
``IMPORT_ROOT`` stands for the checkout on sys.path (``tests``, ``bench`` stay importable) and is
the working directory for children started with ``python -c``/``-m``. hetccl/_checkout.py is
loaded by its path, so nothing of hetccl is imported before the choice.
"""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def _load_checkout():
    spec = importlib.util.spec_from_file_location(
        "_hetccl_checkout", os.path.join(REPO, "hetccl", "_checkout.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


IMPORT_ROOT = _load_checkout().use(REPO)
