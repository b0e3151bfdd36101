"""torch.distributed backend ``"hetccl"``: switch a script from gloo by changing the backend name.

    import torch.distributed as dist
    dist.init_process_group("hetccl")        # instead of "gloo"; CPU tensors

Importing this package registers the backend (the ``torch.backends`` entry point imports it when
torch is imported, so the import is optional once hetccl is installed) and lets ``env://`` take
rank and size from ``mpirun``/``hetccl run``/``srun`` (see launch.py). The group, its Work and
futures: process_group.py, work.py; torch's store as hetccl's: store.py.
"""


def _autoload() -> None:
    """The ``torch.backends`` entry point, run at the end of ``import torch``.

    Defined before any import, and torch is imported right below it, before the submodules:
    ``import hetccl.torch`` ahead of torch makes torch's autoload look this function up on the
    half-imported package and run it while none of the submodules is half-imported."""
    from .backend import register
    from .launch import patch_env_rendezvous

    register()
    patch_env_rendezvous()


import torch  # noqa: E402,F401  (see _autoload)

from .backend import connect, create_process_group, register  # noqa: E402
from .process_group import BACKEND_NAME, ProcessGroupHetccl  # noqa: E402
from .work import HetcclWork  # noqa: E402

__all__ = ["register", "connect", "create_process_group", "ProcessGroupHetccl", "HetcclWork",
           "BACKEND_NAME"]

_autoload()
