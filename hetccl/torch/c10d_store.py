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

from datetime import timedelta

import torch.distributed as dist

from ..errors import HetcclTimeout


def _td(seconds: float) -> timedelta:
    return timedelta(seconds=max(0.001, float(seconds)))


class C10dStore:
    """The subset of ``hetccl.bootstrap.StoreClient`` a Communicator uses, on a c10d Store."""

    def __init__(self, store: dist.Store, timeout: float):
        self._store = store
        self.timeout = float(timeout)

    def _t(self, timeout):
        return self.timeout if timeout is None else float(timeout)

    def _wait(self, keys, timeout) -> None:
        t = self._t(timeout)
        try:
            self._store.wait(list(keys), _td(t))
        except (dist.DistStoreError, RuntimeError) as e:
            if "timeout" in str(e).lower() or isinstance(e, dist.DistStoreError):
                raise HetcclTimeout(f"torch store keys {list(keys)} were not set within {t:g} s: "
                                    f"another rank of the group is missing, stuck or dead ({e})"
                                    ) from None
            raise

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
