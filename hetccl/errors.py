"""The hetccl error hierarchy.

Every error says what went wrong *and* what the user should do about it. Catch ``HetcclError`` to
handle any failure of the library.
"""


class HetcclError(RuntimeError):
    """Base class of every error raised by hetccl."""


class InvalidUsage(HetcclError, ValueError):
    """The caller passed something hetccl cannot use (bad buffer, dtype/op pair, mismatched call)."""


class TransportError(HetcclError):
    """A transport failed to set up or to move data (socket error, shared memory unavailable)."""


class PeerLostError(TransportError):
    """A peer rank died or closed its connection; the communicator is unusable afterwards.

    ``peer`` is the lost rank when it is known (else None)."""

    peer = None


class PeerProtocolError(HetcclError):
    """A live peer published something no correct rank can (a buffer address that is not mapped in
    its process, read by a single-copy collective): a bug or memory corruption on that rank, not
    its death. The communicator is unusable afterwards; ``peer`` is the rank (None if unknown).
    Unlike PeerLostError, shrinking the peer away is not the remedy: find why it published that."""

    peer = None


class HetcclTimeout(HetcclError, TimeoutError):
    """A wait passed its deadline (``timeout=`` or ``HETCCL_TIMEOUT``)."""


class AuthenticationError(TransportError):
    """A peer or store connection did not prove knowledge of the job secret."""


class CommAborted(HetcclError):
    """The communicator was aborted (by ``abort()``, ``close()`` or after an earlier error) and
    cannot be used: its running and later operations raise this."""


class CommRevoked(CommAborted):
    """The communicator was revoked (its ranks gave up on it after a failure): its pending and later
    operations raise this. A subclass of CommAborted, so code that handles an abort handles it too."""
