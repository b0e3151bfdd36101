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
    """A peer rank died or closed its connection; the communicator is unusable afterwards."""


class HetcclTimeout(HetcclError, TimeoutError):
    """A wait passed its deadline (``timeout=`` or ``HETCCL_TIMEOUT``)."""


class AuthenticationError(TransportError):
    """A peer or store connection did not prove knowledge of the job secret."""


class CommAborted(HetcclError):
    """The communicator was aborted (by ``abort()`` or after an earlier error) and cannot be used."""
