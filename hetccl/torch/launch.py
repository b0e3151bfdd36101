"""Let torch's ``env://`` rendezvous run a hetccl group under ``mpirun``, ``hetccl run`` and ``srun``.

Why: ``init_process_group`` defaults to ``env://``, which reads RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT, and only torchrun sets all four. For ``init_process_group`` with the hetccl backend
(``"hetccl"``, or ``"cpu:hetccl,..."``), ``env://`` without RANK/WORLD_SIZE instead takes rank and
size from the launcher the way ``hetccl.init()`` does (HETCCL_*, Open MPI, MPICH, Slurm variables),
and the address of torch's TCPStore from, in order:

1. MASTER_ADDR and MASTER_PORT (``mpirun -x MASTER_ADDR=... -x MASTER_PORT=...``);
2. HETCCL_STORE (``hetccl run`` reserves that port for the job's store; a script that also calls
   ``hetccl.init()`` must then set MASTER_ADDR/MASTER_PORT to a different port);
3. under mpirun with mpi4py: rank 0 picks a free port on its host and broadcasts ``host:port``
   with one MPI byte broadcast (this initialises MPI through mpi4py).

Nothing changes when RANK and WORLD_SIZE are set (torchrun) or passed to init_process_group, and
nothing at all for any other backend: every other call goes to torch's own handler unchanged, so a
gloo or nccl program behaves exactly as without hetccl installed. The backend is read from the
``init_process_group`` call being served (its frame; the rendezvous API does not pass it). The
patched handler is torch's private ``_rendezvous_handlers["env"]``; if a torch version lacks it,
nothing is patched and env:// behaves as torch's own. This module imports only the standard
library and hetccl.errors until a hetccl group uses it (the torch entry point installs the handler).
"""
from __future__ import annotations

import importlib
import os
import sys
from urllib.parse import parse_qs, urlparse

from ..errors import InvalidUsage

_LAUNCHERS = ("hetccl", "openmpi", "mpich", "slurm")


def _url(host: str, port: int, rank: int, size: int) -> str:
    h = f"[{host}]" if ":" in host else host
    return f"tcp://{h}:{port}?rank={rank}&world_size={size}"


def _address_via_mpi(info) -> tuple[str, int]:
    from ..bootstrap.rendezvous import primary_address
    from ..bootstrap.store import free_port
    try:
        from mpi4py import MPI
    except ImportError:
        raise InvalidUsage("init_process_group under mpirun: set MASTER_ADDR and MASTER_PORT "
                           "(mpirun -x MASTER_ADDR=<rank 0 host> -x MASTER_PORT=<free port>), or "
                           "install mpi4py so rank 0 can broadcast a port") from None
    comm = MPI.COMM_WORLD
    buf = bytearray(256)
    if comm.Get_rank() == 0:
        host = "127.0.0.1" if info.local_size >= info.size else primary_address()
        data = f"{host}\n{free_port('127.0.0.1' if host == '127.0.0.1' else '')}".encode()
        buf[:len(data)] = data
    comm.Bcast([buf, MPI.BYTE], root=0)
    host, _, port = bytes(buf).rstrip(b"\0").decode().partition("\n")
    return host, int(port)


def launcher_url(url: str):
    """A ``tcp://`` URL standing in for ``env://`` when only a non-torch launcher set the
    environment; None when torch's own handler applies."""
    query = parse_qs(urlparse(url).query)
    has_rank = "rank" in query or os.environ.get("RANK")
    has_size = "world_size" in query or os.environ.get("WORLD_SIZE")
    if has_rank and has_size:
        return None
    from ..bootstrap.env import detect
    info = detect()
    if info.launcher not in _LAUNCHERS:
        return None
    rank = int(query["rank"][0]) if "rank" in query else info.rank
    size = int(query["world_size"][0]) if "world_size" in query else info.size
    if info.store_addr is not None:
        host, port = info.store_addr
    elif info.launcher in ("openmpi", "mpich"):
        host, port = _address_via_mpi(info)
    else:
        raise InvalidUsage(f"init_process_group under {info.launcher}: set MASTER_ADDR and "
                           f"MASTER_PORT (rank 0's host and a free port) on every rank")
    return _url(host, port, rank, size)


def _names_hetccl(backend) -> bool:
    """Whether a backend string (``"hetccl"``, ``"cpu:hetccl,cuda:nccl"``) selects hetccl."""
    if not isinstance(backend, str):
        return False
    return any(part.rpartition(":")[2].strip().lower() == "hetccl" for part in backend.split(","))


def initialising_hetccl() -> bool:
    """Whether the caller runs inside torch's ``init_process_group`` for a hetccl backend."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "init_process_group" and \
                frame.f_globals.get("__name__") == "torch.distributed.distributed_c10d":
            return _names_hetccl(frame.f_locals.get("backend"))
        frame = frame.f_back
    return False


def patch_env_rendezvous() -> None:
    """Install the launcher-aware ``env://`` handler for hetccl groups (idempotent)."""
    rdzv = importlib.import_module("torch.distributed.rendezvous")   # the module, not dist.rendezvous
    handlers = getattr(rdzv, "_rendezvous_handlers", None)
    if not isinstance(handlers, dict) or "env" not in handlers or "tcp" not in handlers:
        return
    original = handlers["env"]
    if getattr(original, "_hetccl", False):
        return

    def env_handler(url, *args, **kwargs):
        if not initialising_hetccl():
            return original(url, *args, **kwargs)
        fixed = launcher_url(url)
        if fixed is None:
            return original(url, *args, **kwargs)
        return handlers["tcp"](fixed, *args, **kwargs)

    env_handler._hetccl = True
    env_handler.__doc__ = original.__doc__
    handlers["env"] = env_handler
