"""The point-to-point contract every transport offers: Endpoints, Requests and (one-sided) Regions.

The collective engine drives links in Cython (``_native/engine.pyx``, ``_native/progress.pyx``); this is the Python-visible
interface the same links present one pair at a time, so that every transport can be exercised by the
one conformance suite (``tests/transports/``) and used directly by code that wants plain tagged
messages or one-sided access (the torch backend's send/recv, bridges, tools).

Rules every implementation keeps:

* ``isend``/``irecv``/``put``/``get`` never block: they start the operation and return a Request.
* ``Request.wait(timeout)`` raises ``HetcclTimeout`` when the deadline passes and ``PeerLostError``
  when the peer closes or dies mid-transfer; it never hangs past its deadline.
* Messages between one pair with the same tag complete in the order they were posted (MPI's
  non-overtaking rule). A receive buffer must be exactly the size of the matching send.
* Waiting spins briefly, then blocks (futex / eventfd / poll): ranks outnumbering cores must not
  livelock.
"""
from __future__ import annotations

import time
from typing import Optional


class Request:
    """One outstanding operation."""

    def test(self) -> bool:
        """Advance the transport once; True once the operation has completed (or failed)."""
        raise NotImplementedError

    def wait(self, timeout: Optional[float] = None) -> int:
        """Block until done; returns the bytes moved. Raises HetcclTimeout / PeerLostError."""
        raise NotImplementedError


class Region:
    """Local memory registered for one-sided access by peers."""

    def pack(self) -> bytes:
        """An opaque description a peer passes to ``Endpoint.remote_region``."""
        raise NotImplementedError

    def close(self) -> None:
        """Deregister; peers' later accesses fail."""


class RemoteRegion:
    """A peer's registered memory as seen from here (from ``Region.pack`` bytes)."""
    nbytes: int


class Endpoint:
    """This rank's end of a link to one peer."""
    transport: str = "?"
    peer: int = -1
    one_sided: bool = False

    def isend(self, buf, tag: int = 0) -> Request:
        raise NotImplementedError

    def irecv(self, buf, tag: int = 0) -> Request:
        raise NotImplementedError

    def progress(self) -> None:
        """Advance every outstanding operation of this endpoint without blocking."""

    def waitall(self, requests, timeout: Optional[float] = None) -> int:
        """Wait for every request of this endpoint under one deadline; returns the bytes moved in
        total. A transport may drive them all in one native loop (rdma does)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        total = 0
        for r in requests:
            total += r.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return total

    def close(self) -> None:
        """Release the link (idempotent). Outstanding requests fail with PeerLostError on the peer."""

    # one-sided transports (c2c, rdma) only
    def register(self, buf) -> Region:
        raise NotImplementedError(f"{self.transport} is not a one-sided transport")

    def remote_region(self, blob: bytes) -> RemoteRegion:
        raise NotImplementedError(f"{self.transport} is not a one-sided transport")

    def put(self, local, remote: RemoteRegion, offset: int, nbytes: int) -> Request:
        """Write ``nbytes`` of ``local`` to ``remote`` at ``offset``; complete = visible to the peer."""
        raise NotImplementedError(f"{self.transport} is not a one-sided transport")

    def get(self, local, remote: RemoteRegion, offset: int, nbytes: int) -> Request:
        """Read ``nbytes`` at ``offset`` of ``remote`` into ``local``."""
        raise NotImplementedError(f"{self.transport} is not a one-sided transport")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
