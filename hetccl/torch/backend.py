"""The backend's creator: from torch's (store, rank, size, timeout) to a connected hetccl group.

torch reaches ``create_process_group`` through the creator registered by autoload.py, which
imports this module on the first hetccl group (so ``import torch`` never pays for it).

torch calls the creator once per group (``init_process_group``, every ``new_group``) with a store
already prefixed for that group. The creator must rendezvous itself (torch adds no barrier): here
the mesh set-up of ``hetccl.comm._connect`` is that rendezvous; it returns once every rank of the
group is connected, or raises HetcclTimeout naming the missing ranks after the group's timeout.

The job secret authenticating hetccl's data links is HETCCL_SECRET or HETCCL_SECRET_FILE's when
set (``hetccl run`` sets the former); otherwise group rank 0 draws 32 random bytes and publishes
them through torch's store, which is unauthenticated: anyone who can reach MASTER_PORT could read
them (a WARNING says so when MASTER_ADDR is not loopback). Set HETCCL_SECRET_FILE (or
HETCCL_SECRET, the same on every rank) to keep the secret out of the store.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import socket

from .. import config
from ..bootstrap.env import LaunchInfo, job_secret
from ..comm import _connect
from ..errors import InvalidUsage
from .process_group import ProcessGroupHetccl
from .c10d_store import C10dStore, served_here

log = logging.getLogger("hetccl.torch")

_SAFE = re.compile(r"[^A-Za-z0-9_.]")


def _loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(sa[0].split("%")[0]).is_loopback
                   for *_, sa in socket.getaddrinfo(host.strip("[]"), None))
    except (OSError, ValueError):
        return False


def _agree(store: C10dStore, rank: int, comm_id: str, timeout: float):
    """(secret, job_id) every rank of the group uses: from the environment, else from rank 0.
    Rank 0 also says whether its process serves torch's store (``store.served_by_rank0``)."""
    secret = job_secret()
    job_id = _SAFE.sub("_", os.environ.get("HETCCL_JOB_ID", ""))[:48]
    key = f"{comm_id}/hello"
    if rank == 0:
        if secret is None and not _loopback(os.environ.get("MASTER_ADDR", "127.0.0.1")):
            log.warning("no job secret set: rank 0 sends a fresh one to the other ranks through "
                        "torch's store, which is not authenticated (anyone who can reach "
                        "MASTER_PORT can read it). Set HETCCL_SECRET_FILE on every rank to keep "
                        "it off the network")
        shared = "" if secret is not None else (secret := secrets.token_bytes(32)).hex()
        job_id = job_id or secrets.token_hex(4)
        serves = served_here(store._store)
        store.set(key, f"{shared}\n{job_id}\n{int(serves)}".encode())
        return secret, job_id
    shared, job0, serves = (bytes(store.get(key, timeout)).decode("ascii", "replace") + "\n\n"
                            ).split("\n")[:3]
    store.served_by_rank0 = serves == "1"
    if secret is None:
        if not shared:
            raise InvalidUsage("rank 0 of this process group has HETCCL_SECRET set but this rank "
                               "does not; set the same HETCCL_SECRET on every rank")
        secret = bytes.fromhex(shared)
    return secret, job_id or job0


def connect(c10d_store, rank: int, size: int, timeout: float, group_id: str = "") -> ProcessGroupHetccl:
    """Connect this rank's hetccl communicator for one torch group and wrap it."""
    config.setup_logging(rank)
    store = C10dStore(c10d_store, timeout)
    comm_id = "torch." + (_SAFE.sub("_", group_id) or "world")
    secret, job_id = _agree(store, rank, comm_id, timeout)
    info = LaunchInfo(rank=rank, size=size, local_rank=rank, local_size=size, store_addr=None,
                      secret=secret, job_id=job_id, launcher="torch")
    comm = _connect(info, store, None, job_id, comm_id, timeout, os.environ.get("HETCCL_TRANSPORTS"))
    log.info("torch group %r: rank %d of %d up:\n%s", group_id, rank, size, comm.describe())
    return ProcessGroupHetccl(comm, rank, size, timeout, group_id)


def create_process_group(dist_opts, backend_opts=None) -> ProcessGroupHetccl:
    """The creator registered with ``extended_api=True``: torch passes DistributedBackendOptions."""
    return connect(dist_opts.store, dist_opts.group_rank, dist_opts.group_size,
                   dist_opts.timeout.total_seconds(), dist_opts.group_id or "")
