"""The contract between hetccl and a vendor's native collective library (a "bridge").

Why a bridge: each vendor's library (NCCL, RCCL, MCCL, HCCL, ... and MPI for host memory) is the
fastest way to run a collective *inside* an island of ranks that share it, and none of them can
talk to another vendor's island. A bridge runs whole collectives for one island on that library's
memory type; hetccl's own transports join the islands (collectives/islands.py composes them).

Nothing is chosen at compile time: a bridge's library is found and loaded at run time
(``dlopen`` or ``import``), so one install of hetccl serves every vendor. A bridge that cannot run
(library missing, no device) says why through ``BridgeUnavailable``; it never half-works.

Two objects per bridge kind:

* ``Library``: what was found on this machine (name, path, version, memory type), for
  ``hetccl doctor`` and for the rank card that tells peers which islands can form.
* ``Bridge``: an open native communicator over one island, created collectively by the island's
  ranks (unique ids travel through hetccl's Store), used like a tiny Communicator whose buffers
  live in ``memory``.

Buffers given to a Bridge's collectives are in the bridge's memory type: numpy arrays (or any
buffer protocol object) for ``host``; a ``DeviceBuffer`` (bridges/device_buffers.py, built from DLPack or
``__cuda_array_interface__``) for a device memory type. A non-host bridge also offers staging
(``device_buffer(nbytes)``, ``copy_in(dev, host)``, ``copy_out(host, dev)``, pooled per bridge:
bridges/native.py), which the cross-island composition (collectives/islands.py, staged.py) uses to
bring host buffers into the island and device results across islands through host memory. Counts are in elements of ``dtype``
(a hetccl dtype code, dtypes.py) and ops are ``ReduceOp`` values, as everywhere in hetccl.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

from ..errors import HetcclError
from ..ops import ReduceOp

HOST = "host"   # memory type of the MPI bridge and of hetccl's own transports

# the collectives a bridge can run whole, as the island step of a composed algorithm
COLLECTIVES = ("allreduce", "reduce_scatter", "allgather", "broadcast", "reduce")


class BridgeUnavailable(HetcclError):
    """The bridge's library cannot run here (not installed, no device, wrong version).

    The message says what was looked for and what to install or set."""


class BridgeError(HetcclError):
    """The native library reported an error during a call (carries its own error string)."""


@dataclass(frozen=True)
class Library:
    """A native collective library found on this machine (not yet initialised)."""
    kind: str                 # bridge kind: "mpi", "nccl", "rccl", "mccl", "hccl", ...
    path: str                 # file loaded (or module imported)
    version: str              # as the library reports it ("2.21.5"); "" when it cannot say
    memory: str               # memory type its collectives work on: "host", "cuda", "rocm", "npu", ...
    usable: bool = True       # False: found but cannot run here (see ``reason``)
    reason: str = ""          # why not usable ("no CUDA device"), shown by hetccl doctor
    extra: dict = field(default_factory=dict)


class Bridge(abc.ABC):
    """One island's native communicator. Created collectively by every rank of the island.

    Every method is blocking and collective over the island (same order on every island rank,
    like hetccl's own collectives); the native library's stream or request is completed before
    it returns. ``supports`` is asked before a bridge is used for a call; a call it does not
    support never reaches it (the caller runs hetccl's own algorithm instead).
    """

    kind: str = ""
    memory: str = HOST

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size   # rank and size inside the island

    @abc.abstractmethod
    def supports(self, collective: str, dtype: int, op: ReduceOp | None = None) -> bool:
        """Whether the native library runs this collective on this dtype (and op) exactly."""

    @abc.abstractmethod
    def allreduce(self, send, recv, count: int, dtype: int, op: ReduceOp) -> None:
        """recv[:count] = op over the island of send[:count] (send may be recv: in place)."""

    @abc.abstractmethod
    def reduce_scatter(self, send, recv, count: int, dtype: int, op: ReduceOp) -> None:
        """recv[:count] = op of every rank's send[rank*count:(rank+1)*count] (send has size*count)."""

    @abc.abstractmethod
    def allgather(self, send, recv, count: int, dtype: int) -> None:
        """recv[r*count:(r+1)*count] = rank r's send[:count], for every island rank r."""

    @abc.abstractmethod
    def broadcast(self, buf, count: int, dtype: int, root: int) -> None:
        """buf[:count] = the island root's buf[:count]."""

    def reduce(self, send, recv, count: int, dtype: int, op: ReduceOp, root: int) -> None:
        """recv[:count] on root = op over the island of send[:count]; default: allreduce."""
        self.allreduce(send, recv, count, dtype, op)

    @abc.abstractmethod
    def close(self) -> None:
        """Free the native communicator (collective, like its creation)."""

    def abort(self) -> None:
        """Tear down without waiting for peers (a peer died or a call timed out)."""
        self.close()

    def interrupt(self) -> None:
        """End a call waiting in this bridge now, from any thread, releasing nothing: hetccl's control
        plane learnt that a member failed, or the communicator was revoked. Later calls may be
        refused. Default: nothing (a library without such a call ends its wait at its deadline)."""

    # Recovery (optional): a library that can make a communicator of some of its ranks from an
    # existing one (NCCL >= 2.27: ncclCommShrink) lets a shrunk hetccl communicator keep its island
    # without a new rendezvous; otherwise the island's communicator is created anew.
    can_shrink = False

    def shrink(self, exclude: list[int]) -> "Bridge | None":
        """A bridge over this island without the island ranks ``exclude`` (ascending), made from
        this one by the library, collectively over the ranks kept; it is numbered in order and
        this bridge may only be aborted afterwards. Called after a failure (peers dead, calls in
        flight hanging), only when ``can_shrink``. None: the library cannot."""
        return None

    def describe(self) -> str:
        return f"{self.kind} bridge, island rank {self.rank}/{self.size}, memory {self.memory}"
