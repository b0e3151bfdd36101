"""Uniform agreement among the live ranks of a communicator: ``comm.agree(flag)`` and the decision
on the failed set that ``comm.shrink()`` builds from.

This module is the protocol alone (no sockets, no threads, no clocks): ``Agreement`` takes messages
and suspicions and calls ``send``; membership.py runs it on the control plane, and
tests/test_agreement.py runs it on a simulated network that crashes ranks at every step.

What it guarantees, for one agreement instance of an n-rank communicator:

* Uniform agreement: every rank that decides (returns) decides the same value, even one that
  crashes right after. The value is ``{"flag": bool, "failed": [ranks], "x": extra}``.
* Validity: ``failed`` holds only ranks some rank suspected; ``flag`` is the AND of the votes of
  every rank not in ``failed`` (each of which voted); ``x`` is the extra of the rank that
  proposed the value (shrink: the address of the new store it serves).
* Termination: while ranks keep failing, the coordinating rank included, every live rank whose
  application called in decides, once suspicions stop growing.

Model. Ranks fail by crashing. Channels between live processes are reliable and FIFO (a TCP
connection of the control plane). A rank is *suspected* when its process's control connection
closes or errors (it crashed, or the kernel's keepalive gave up on its host), when another rank
reports it failed, or when it stays silent for HETCCL_PEER_TIMEOUT while this rank waits on it.
Suspicion is permanent and is made true by *fencing*: whoever suspects a rank tells it so (a FENCE
notice on the same FIFO channel, sent before anything else that depends on the suspicion) and
ignores it from then on; a rank that reads a FENCE leaves the communicator (its calls raise). The
timing assumption is the pseudo-synchronous one ULFM's agreement also makes: a live, running
process answers well within HETCCL_PEER_TIMEOUT, so a rank silent that long has stopped, and what
was sent to it before is read before it acts again. A network partition breaks the assumption:
each side then sees the other fail and may go on alone (hetccl cannot tell a partition from deaths).

Algorithm: Paxos with a rotating coordinator (Lamport's ballots; the coordinator rotation of
Chandra and Toueg), where a quorum is *every rank not suspected* instead of a majority (so any
number of ranks may fail), which the fencing failure detector makes safe. Epoch e = round * n +
coordinator: unique and totally ordered. The coordinator is the lowest rank not suspected.

  collect  The coordinator sends PREPARE(e) to every rank it does not suspect. A rank that has not
           promised a higher epoch promises e and answers PROMISE(e, vote, suspects, accepted):
           its vote (None until its application calls in; it sends the PROMISE again then), the
           ranks it suspects, and the (epoch, value) it last accepted, if any.
  propose  Once every unsuspected rank promised (and voted, unless a promise carries an accepted
           value): the value is the accepted value of the highest epoch among the promises, else
           a fresh one: AND of the votes, failed = the coordinator's suspects, which by then
           include every suspect named in a promise (the coordinator adopts and fences them).
  accept   ACCEPT(e, value) to every unsuspected rank; a rank that has not promised a higher epoch
           accepts (records (e, value)) and answers ACCEPTED(e).
  decide   Once every unsuspected rank accepted: DECIDE(value) to them; a rank decides on DECIDE.

A rank that calls in, or that suspects the coordinator it waits on, sends its PROMISE (vote
included) to the coordinator it promised and to the lowest rank it does not suspect; a rank that has
decided answers PREPARE, ACCEPT and PROMISE with DECIDE (it keeps the decision after returning, and
so does a closed communicator's entry in the control plane), so a late caller, or one whose
coordinator died right after deciding, learns the decision; so does a nudge that came before the
decision, and every rank when a decided rank becomes the lowest unsuspected one. A lower epoch gets NACK, and its coordinator starts a higher round. A rank suspected during a
phase is dropped from what the phase waits for. Suspecting the coordinator makes the next lowest
rank coordinator: it starts a new epoch once its own application has called in.

Why every decision is the same. Let v be decided first, in epoch b by coordinator c: every rank
that c did not suspect accepted (b, v). Claim: any value proposed in an epoch e > b is v.
Induction over e. The coordinator z of e collected promises from every rank it does not suspect,
z itself included. (1) If c did not suspect z when it decided, z accepted (b, v) before promising e
(a promise of e > b would have made it refuse b's ACCEPT); so z's promise carries an accepted epoch
>= b, every accepted value of an epoch in [b, e) is v (induction), and the highest one wins: z
proposes v. (2) If c suspected z, it fenced z before it sent any ACCEPT of b. To propose, z needs a promise from
every rank it does not suspect, and c does not answer a rank it fenced, so z must have come to
suspect c: through c's connection closing, which z reads only after everything c sent before (the
FENCE included), or through c's silence or another rank's report, which the timing assumption
places after the FENCE reached z (it was sent before b's round trips). Either way z read the FENCE
and left before it could propose. Every decided value was proposed, so each is v.

Termination. Suspicions only grow and a crashed rank is eventually suspected, so eventually the
lowest unsuspected rank is live and stays coordinator; it picks a round above every one it has
seen (NACKs tell it), every live rank promises that epoch, and votes arrive as the applications call
in. A live rank whose application never calls in holds the instance until the callers' deadlines:
they raise HetcclTimeout and leave (membership.py), which the others see as failures.
"""
from __future__ import annotations

from typing import Callable

# message types (the "t" field); membership.py adds the communicator key and the instance number
PREPARE, PROMISE, ACCEPT, ACCEPTED, DECIDE, NACK = "prep", "prom", "acc", "accd", "dec", "nack"
TYPES = (PREPARE, PROMISE, ACCEPT, ACCEPTED, DECIDE, NACK)


class Agreement:
    """One agreement instance at one rank. Not thread-safe: its owner serialises every call.

    send(rank, msg): hand a message to ``rank`` (reliable, FIFO per pair).
    adopt(rank): the owner must treat ``rank`` as failed (fence it, tell the others) and then call
      ``suspect(rank)``; called for suspects named in promises.
    offer(): the extra of a fresh value this rank proposes as coordinator (or None)."""

    def __init__(self, rank: int, size: int, suspects, send: Callable[[int, dict], None],
                 adopt: Callable[[int], None] = None, offer: Callable[[], object] = None):
        self.me, self.n = rank, size
        self.suspects = set(suspects)
        self._send, self._adopt, self._offer = send, adopt, offer
        self.vote = None            # this rank's flag, once its application called in
        self.promised = -1          # highest epoch promised
        self.accepted = None        # (epoch, value) last accepted
        self.decided = None         # the value, once decided
        self._round = 0             # highest round seen
        # coordinator state, for epoch self.epoch
        self.epoch = None
        self.phase = None           # PREPARE (collecting promises) or ACCEPT (collecting acceptances)
        self._votes = {}            # rank -> vote (None: promised, not yet voted)
        self._prior = {}            # rank -> accepted (epoch, value) carried by its promise
        self._acks = set()
        self._value = None
        self._asked = set()         # ranks whose nudge came before this rank decided

    # ------------------------------------------------------------------ queries

    def coordinator(self):
        """The lowest rank not suspected (None if every rank is)."""
        return next((r for r in range(self.n) if r not in self.suspects), None)

    def live(self):
        return [r for r in range(self.n) if r not in self.suspects]

    def waiting_on(self) -> set:
        """Ranks whose silence would hold this rank up now (the owner watches them)."""
        if self.decided is not None:
            return set()
        if self.epoch is not None:
            done = self._acks if self.phase == ACCEPT else {r for r, v in self._votes.items()
                                                             if v is not None}
            return {r for r in self.live() if r != self.me and r not in done}
        want = {self.coordinator()}
        if self.promised >= 0 and self.promised % self.n not in self.suspects:
            want.add(self.promised % self.n)
        return {r for r in want if r is not None and r != self.me}

    def missing(self) -> list:
        """For a timeout's message: the ranks that have not yet done their part, as seen here."""
        return sorted(self.waiting_on())

    # ------------------------------------------------------------------ events

    def propose(self, flag: bool) -> None:
        """This rank's application called in with ``flag``."""
        self.vote = bool(flag)
        if self.decided is not None:
            return
        if self.epoch is not None:
            if self.phase == PREPARE:
                self._votes[self.me] = self.vote
                self._check_promises()
            return
        self._nudge()
        self._lead()

    def suspect(self, rank: int) -> None:
        """``rank`` failed (the owner has fenced it). Permanent."""
        if rank in self.suspects or rank == self.me:
            return
        was = self.coordinator()
        self.suspects.add(rank)
        if self.decided is not None:
            if was != self.me and self.coordinator() == self.me:
                self._tell(self.live())             # the ranks that waited on `was` now wait on us
            return
        if self.epoch is not None:
            if self.phase == PREPARE:
                self._check_promises()
            else:
                self._check_acks()
        else:
            self._nudge()
            self._lead()

    def receive(self, src: int, m: dict) -> None:
        """A message from rank ``src`` (fields already type-checked by the owner)."""
        if src in self.suspects or src == self.me:
            return                                  # fenced ranks are not listened to
        t = m["t"]
        if t == DECIDE:
            return self._decide(m["val"])
        if self.decided is not None:
            if t in (PREPARE, ACCEPT, PROMISE):     # a late or new coordinator, or a nudge
                self._send(src, {"t": DECIDE, "val": self.decided})
            return
        if t in (PREPARE, ACCEPT):
            e = m["e"]
            self._round = max(self._round, e // self.n)
            if e < self.promised:
                return self._send(src, {"t": NACK, "e": e, "p": self.promised})
            if e > self.promised and self.epoch is not None and e != self.epoch:
                self.epoch = self.phase = None      # a higher coordinator: step down
            self.promised = e
            if t == PREPARE:
                return self._send(src, self._promise(e))
            self.accepted = (e, m["val"])
            return self._send(src, {"t": ACCEPTED, "e": e})
        if m.get("e") != self.epoch:                # about an epoch this rank does not lead
            if t == PROMISE:
                self._asked.add(src)                # a nudge: answer it once decided
            return
        if t == PROMISE and self.phase == PREPARE:
            self._votes[src] = m["v"]
            if m["a"] is not None:
                self._prior[src] = (m["a"][0], m["a"][1])
            for r in m["s"]:
                if r not in self.suspects and r != self.me and self._adopt is not None:
                    self._adopt(r)                  # fences r and calls back suspect(r)
            if self.epoch == m["e"] and self.phase == PREPARE:
                self._check_promises()
        elif t == ACCEPTED and self.phase == ACCEPT:
            self._acks.add(src)
            self._check_acks()
        elif t == NACK:
            self._round = max(self._round, m["p"] // self.n)
            self.epoch = self.phase = None
            self._lead()

    # ------------------------------------------------------------------ coordinator

    def _lead(self):
        """Start an epoch if this rank is coordinator, has voted and leads none yet."""
        if self.decided is not None or self.vote is None or self.epoch is not None \
                or self.coordinator() != self.me:
            return
        self._round = max(self._round, self.promised // self.n if self.promised >= 0 else 0) + 1
        self.epoch = e = self._round * self.n + self.me
        self.phase = PREPARE
        self.promised = e
        self._votes = {self.me: self.vote}
        self._prior = {self.me: self.accepted} if self.accepted is not None else {}
        self._acks = set()
        self._value = None
        for r in self.live():
            if r != self.me:
                self._send(r, {"t": PREPARE, "e": e})
        if self.epoch == e:
            self._check_promises()

    def _check_promises(self):
        live = self.live()
        if any(r not in self._votes for r in live):
            return
        prior = [a for a in self._prior.values() if a is not None]
        if prior:
            value = max(prior, key=lambda a: a[0])[1]
        elif any(self._votes[r] is None for r in live):
            return                                  # a fresh value needs every vote
        else:
            value = {"flag": all(self._votes[r] for r in live), "failed": sorted(self.suspects),
                     "x": self._offer() if self._offer is not None else None}
        self.phase, self._value = ACCEPT, value
        self.accepted = (self.epoch, value)
        self._acks = {self.me}
        e = self.epoch
        for r in live:
            if r != self.me:
                self._send(r, {"t": ACCEPT, "e": e, "val": value})
        if self.epoch == e:
            self._check_acks()

    def _check_acks(self):
        live = self.live()
        if all(r in self._acks for r in live):
            value = self._value
            for r in live:
                if r != self.me:
                    self._send(r, {"t": DECIDE, "val": value})
            self._decide(value)

    def _decide(self, value):
        if self.decided is None:
            self.decided = value
            self.epoch = self.phase = None
            self._tell(self._asked)

    def _tell(self, ranks):
        for r in ranks:
            if r != self.me and r not in self.suspects:
                self._send(r, {"t": DECIDE, "val": self.decided})

    def _nudge(self):
        """Send this rank's promise (vote included) to whoever it now waits on: the coordinator it
        promised, and the lowest unsuspected rank. A rank that has decided answers with DECIDE,
        which is how a rank that called in late, or whose coordinator died after deciding, learns
        the decision; a coordinator in the middle of an epoch counts it."""
        for c in {self.promised % self.n if self.promised >= 0 else None, self.coordinator()}:
            if c is not None and c != self.me and c not in self.suspects:
                self._send(c, self._promise(self.promised))

    def _promise(self, e):
        a = self.accepted
        return {"t": PROMISE, "e": e, "v": self.vote, "s": sorted(self.suspects),
                "a": None if a is None else [a[0], a[1]]}
