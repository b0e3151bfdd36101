"""One communicator's view of its members' health at one rank: who failed, whether the communicator
is revoked, whether this rank was excluded, and its agreement instances.

Like agreement.py this is logic without I/O: the control plane (plane.py) feeds it messages and
connection losses and gives it ``send``; it reports what happened through ``notify(event, rank,
why)`` (events FAILED, REVOKED, EXCLUDED, DECIDED), which the plane turns into interrupts of the
communicator's operations and wake-ups of waiting callers. Every method runs under the plane's lock.

Failure knowledge, and how it spreads:
* a member's process is lost (its control connection closed or the kernel gave up on it): every
  rank sees that by itself, so it is not repeated to the others;
* a member stays silent for HETCCL_PEER_TIMEOUT while this rank waits on it in an agreement, or
  gives up on the communicator itself (``leave``): only one rank knows, so it tells every member;
* a member is named failed in a promise (the coordinator adopts it) or in a decision.
Whatever the way, the failed rank is *fenced*: told so with a FENCE notice (if it is alive and
merely stalled, it reads the notice when it wakes up and leaves instead of rejoining) and not
listened to any more. Failures are permanent.

Revocation is flooded: the first time a rank hears of it (or revokes), it forwards the notice to
every live member before anything else, so it reaches everyone even if the revoker dies at once.
"""
from __future__ import annotations

from . import agreement as ag
from .wire import ProtocolError, check_int, check_ranks, check_value

FAILED, REVOKED, EXCLUDED, DECIDED = "failed", "revoked", "excluded", "decided"
WINDOW = 64          # instances accepted ahead of the application (a fast coordinator's messages)


class Membership:
    def __init__(self, key: str, rank: int, size: int, send, notify):
        self.key, self.rank, self.size = key, rank, size
        self._send, self._notify = send, notify
        self.failed = {}            # rank -> why (permanent)
        self.revoked = False
        self.excluded = None        # why this rank left the communicator (fenced or gave up)
        self.instances = {}         # k -> Agreement
        self.entered = 0            # instances the application has called (the next one is this)
        self._reported = set()      # decided instances whose outcome was applied and reported
        self.closed = False

    # ------------------------------------------------------------------ outgoing

    def send(self, rank: int, msg: dict) -> None:
        msg["c"] = self.key
        self._send(rank, msg)

    def _others(self):
        return [r for r in range(self.size) if r != self.rank and r not in self.failed]

    # ------------------------------------------------------------------ failures

    def mark_failed(self, rank: int, why: str, tell: bool = False) -> None:
        """``rank`` failed: fence it, tell every member if ``tell`` (this rank alone knows), drop it
        from every agreement, and report it."""
        if rank == self.rank or rank in self.failed or not 0 <= rank < self.size:
            return
        self.failed[rank] = why
        self.send(rank, {"t": "fence", "why": why})
        if tell:
            for r in self._others():
                self.send(r, {"t": "failed", "r": rank, "why": why})
        for a in self.instances.values():
            a.suspect(rank)
        self._notify(FAILED, rank, why)
        self._decided_any()

    def lost(self, rank: int, why: str) -> None:
        """The control connection to ``rank``'s process closed or broke."""
        self.mark_failed(rank, why)

    def silent(self, rank: int, seconds: float) -> None:
        """``rank`` did not answer for ``seconds`` while this rank waited on it."""
        self.mark_failed(rank, f"rank {rank} did not answer rank {self.rank} for {seconds:g} s "
                               f"(HETCCL_PEER_TIMEOUT): stalled, or its host is unreachable", tell=True)

    def leave(self, why: str) -> None:
        """This rank gives up on the communicator (a deadline passed): the others count it failed."""
        if self.excluded is None:
            self.excluded = why
            for r in self._others():
                self.send(r, {"t": "failed", "r": self.rank, "why": why})
            self._notify(EXCLUDED, self.rank, why)

    # ------------------------------------------------------------------ revoke

    def revoke(self, origin: int | None = None) -> None:
        if self.revoked:
            return
        self.revoked = True
        by = self.rank if origin is None else origin
        for r in self._others():                    # forward first: reliable even if we die now
            self.send(r, {"t": "revoke", "by": by})
        self._notify(REVOKED, by, f"rank {by} revoked the communicator")

    # ------------------------------------------------------------------ agreement

    def instance(self, k: int, offer=None) -> ag.Agreement:
        a = self.instances.get(k)
        if a is None:
            a = self.instances[k] = ag.Agreement(
                self.rank, self.size, self.failed, self.send_to(k),
                adopt=lambda r: self.mark_failed(r, f"rank {r} was reported failed during an agreement"),
                offer=offer)
        elif offer is not None:
            a._offer = offer
        return a

    def send_to(self, k):
        def send(rank, msg):
            msg["k"] = k
            self.send(rank, msg)
        return send

    def enter(self, flag: bool, offer=None) -> tuple[int, ag.Agreement]:
        """The application calls the next agreement with ``flag``; returns (instance, Agreement)."""
        k = self.entered
        self.entered += 1
        a = self.instance(k, offer)
        a.propose(flag)
        self._decided_any()
        return k, a

    def watched(self) -> set:
        """Ranks this rank waits on in an agreement its application is in (silence fences them)."""
        out = set()
        if self.excluded is not None:
            return out
        for k, a in self.instances.items():
            if k < self.entered and a.decided is None:
                out |= a.waiting_on()
        return out - set(self.failed)

    def _decided_any(self):
        for k, a in self.instances.items():
            if a.decided is not None and k not in self._reported:
                self._reported.add(k)
                for r in a.decided["failed"]:
                    if r != self.rank:
                        self.mark_failed(r, f"rank {r} was agreed failed")
                self._notify(DECIDED, k, "")

    # ------------------------------------------------------------------ incoming

    def receive(self, src: int, m: dict) -> None:
        """A message from rank ``src``; ProtocolError if it is malformed."""
        t = m.get("t")
        if self.excluded is not None or src in self.failed or src == self.rank:
            return
        if t == "failed":
            r = check_int(m, "r", 0, self.size - 1)
            why = str(m.get("why", ""))[:500]
            if r == self.rank:                          # told we failed: we were fenced
                return self._excluded(src, why)
            self.mark_failed(r, why)
        elif t == "fence":
            self._excluded(src, str(m.get("why", ""))[:500])
        elif t == "revoke":
            self.revoke(check_int(m, "by", 0, self.size - 1))
        elif t == "gone":
            self.mark_failed(src, f"rank {src} left the communicator (closed it)")
        elif t in ag.TYPES:
            k = check_int(m, "k", 0, self.entered + WINDOW)
            self.instance(k).receive(src, _checked(t, m, self.size))
            self._decided_any()
        else:
            raise ProtocolError(f"unknown message type {t!r}")

    def _excluded(self, by: int, why: str):
        if self.excluded is None:
            self.excluded = f"rank {by} excluded rank {self.rank} from the communicator: {why}"
            self._notify(EXCLUDED, by, self.excluded)

    def decisions(self) -> dict:
        """{instance: value} of the decided instances (kept after close to answer late coordinators)."""
        return {k: a.decided for k, a in self.instances.items() if a.decided is not None}


def _checked(t: str, m: dict, n: int) -> dict:
    """The agreement fields of message ``m``, type-checked (what Agreement.receive relies on)."""
    top = 1 << 62
    if t == ag.DECIDE:
        return {"t": t, "val": check_value(m.get("val"), n)}
    e = check_int(m, "e", -1 if t == ag.PROMISE else 0, top)     # a nudge may promise nothing yet
    if t == ag.PREPARE or t == ag.ACCEPTED:
        return {"t": t, "e": e}
    if t == ag.NACK:
        return {"t": t, "e": e, "p": check_int(m, "p", 0, top)}
    if t == ag.ACCEPT:
        return {"t": t, "e": e, "val": check_value(m.get("val"), n)}
    v = m.get("v")
    if v is not None and not isinstance(v, bool):
        raise ProtocolError("promise: bad vote")
    a = m.get("a")
    if a is not None:
        if not isinstance(a, list) or len(a) != 2:
            raise ProtocolError("promise: bad accepted value")
        a = [check_int({"e": a[0]}, "e", 0, top), check_value(a[1], n)]
    return {"t": t, "e": e, "v": v, "s": check_ranks(m.get("s"), n), "a": a}
