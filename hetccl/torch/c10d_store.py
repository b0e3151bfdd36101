"""hetccl's store interface over the c10d ``Store`` torch hands to a backend.

Why: under torchrun (and every ``init_process_group``) torch already runs a TCPStore on
MASTER_PORT; a second server would need a second agreed port. The communicator's rendezvous
(transports/mesh.py) and failure reporting (comm.py) only need set/get/multi_get/add/barrier, which
map onto c10d calls. Keys live under the (prefixed, per-group) store torch gave the creator.

Security: torch's TCPStore is unauthenticated; whoever can reach it can read or write these keys.
hetccl's data links still authenticate with the job secret (set HETCCL_SECRET to keep that secret
out of the store).
"""
from __future__ import annotations

import os
import time
from datetime import timedelta

import torch.distributed as dist

from ..errors import HetcclTimeout


SHORT_WAIT = 1.0   # seconds: waits up to this long poll (C10dStore._poll)


def _td(seconds: float) -> timedelta:
    return timedelta(seconds=max(0.001, float(seconds)))


def served_here(store: dist.Store) -> bool:
    """Whether this process serves ``store``: a TCPStore (under any PrefixStores) whose port one of
    this process's sockets listens on. True on rank 0 after ``init_process_group`` with ``env://``
    or ``tcp://`` (torch starts the daemon there); False for torchrun's agent store, a FileStore,
    or a store another process serves. The group's communicator then knows that the store dies
    with rank 0 and stops asking it once the control plane reports that rank dead."""
    while hasattr(store, "underlying_store"):
        store = store.underlying_store
    if not isinstance(store, dist.TCPStore) or not getattr(store, "port", 0):
        return False
    inodes = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:         # sl local_address rem_address st ... inode (10th column)
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and cols[9] in inodes \
                    and int(cols[1].rsplit(":", 1)[1], 16) == store.port:
                return True
    return False


class C10dStore:
    """The subset of ``hetccl.bootstrap.StoreClient`` a Communicator uses, on a c10d Store.

    ``served_by_rank0``: rank 0's process serves the store (backend.py finds out through
    ``served_here``), so the store is gone once rank 0 is."""

    def __init__(self, store: dist.Store, timeout: float):
        self._store = store
        self.timeout = float(timeout)
        self.served_by_rank0 = False

    def _t(self, timeout):
        return self.timeout if timeout is None else float(timeout)

    def _wait(self, keys, timeout) -> None:
        t = self._t(timeout)
        if t <= SHORT_WAIT:
            return self._poll(keys, t)
        try:
            self._store.wait(list(keys), _td(t))
        except (dist.DistStoreError, RuntimeError) as e:
            if "timeout" in str(e).lower() or isinstance(e, dist.DistStoreError):
                raise self._timeout_error(keys, t, e) from None
            raise

    def _poll(self, keys, t) -> None:
        """A short bounded wait (the failure path's look-ups of a reason that may never be
        posted): ``check`` until the deadline, since torch logs a warning for every ``wait`` that
        times out."""
        deadline = time.monotonic() + t
        while not self._store.check(list(keys)):
            if time.monotonic() >= deadline:
                raise self._timeout_error(keys, t, "polled")
            time.sleep(0.005)

    @staticmethod
    def _timeout_error(keys, t, why) -> HetcclTimeout:
        return HetcclTimeout(f"torch store keys {list(keys)} were not set within {t:g} s: another "
                             f"rank of the group is missing, stuck or dead ({why})")

    def set(self, key: str, value: bytes, timeout: float | None = None) -> None:
        self._store.set(key, bytes(value))

    def get(self, key: str, timeout: float | None = None) -> bytes:
        self._wait([key], timeout)
        return bytes(self._store.get(key))

    def multi_get(self, keys, timeout: float | None = None) -> list[bytes]:
        keys = list(keys)
        self._wait(keys, timeout)
        return [bytes(v) for v in self._store.multi_get(keys)]

    def add(self, key: str, amount: int = 1, timeout: float | None = None) -> int:
        return int(self._store.add(key, int(amount)))

    def barrier(self, name: str, size: int, timeout: float | None = None) -> None:
        """Wait until ``size`` callers reached barrier ``name`` (reusable: one key per round)."""
        key = f"barrier/{name}"
        arrived = self.add(key, 1)
        rnd = (arrived - 1) // size
        done = f"{key}/{rnd}"
        if arrived == (rnd + 1) * size:
            self.set(done, b"1")
        self._wait([done], timeout)

    def close(self) -> None:
        """Nothing to release: the store belongs to torch."""
