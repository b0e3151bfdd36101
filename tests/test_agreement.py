"""The agreement protocol (hetccl/recovery/agreement.py, membership.py) on a simulated network.

The simulation runs the real Membership and Agreement objects, one per rank, and plays the control
plane: FIFO channels per pair with a random delay of 1..DELAY steps, a crashed rank's channels
ending with the connection's close (after what it had sent, or, for a vanished host, instead of
it), stalled ranks that do not read until they wake up (and then read everything sent to them in
order before acting), and silence detection: a rank that waits on a stalled rank for SILENCE steps
suspects it (SILENCE > 3 * DELAY: the timing assumption of the module docstring). Every message
goes through JSON, as on the wire.

Checked after each run: uniform agreement (every rank that decided, including ranks that crashed or
were excluded later, decided the same value), validity (flag = AND of the votes of the ranks not in
``failed``, every one of which voted; ``failed`` holds only ranks that crashed, stalled or were
reported), and termination (every rank alive, not excluded and called in has decided).
"""
from __future__ import annotations

import json
import random
import zlib

import pytest

from hetccl.recovery import agreement as ag
from hetccl.recovery.membership import DECIDED, EXCLUDED, Membership, _checked
from hetccl.recovery.wire import ProtocolError, Reader, frame

DELAY = 3
SILENCE = 12
EOF = {"t": "__eof__"}


class Sim:
    def __init__(self, n, seed=0, offer=False):
        self.n = n
        self.rng = random.Random(seed)
        self.now = 0
        self.seq = 0
        self.queue = []                      # [deliver_at, seq, src, dst, msg]
        self.last = {}                       # (src, dst) -> deliver_at of the channel's last message
        self.dead, self.frozen, self.excluded, self.stalled = set(), {}, set(), set()
        self.decided = {}                    # rank -> value (at the moment it decided)
        self.votes = {}
        self.triggers = {}                   # (rank, type) -> [count, then-what]
        self.sent = {}
        self.offer = offer
        self.m = [Membership("key", r, n, self._sender(r), self._notifier(r)) for r in range(n)]

    # ---------------------------------------------------------------- the network
    def _sender(self, src):
        def send(dst, msg):
            if src in self.dead:
                return
            self._queue(src, dst, json.loads(json.dumps(msg)))
            t = msg["t"]
            self.sent[(src, t)] = self.sent.get((src, t), 0) + 1
            trig = self.triggers.get((src, t))
            if trig is not None and self.sent[(src, t)] == trig[0]:
                del self.triggers[(src, t)]
                self.crash(src, trig[1])
        return send

    def _queue(self, src, dst, msg):
        at = max(self.last.get((src, dst), 0), self.now + self.rng.randint(1, DELAY))
        self.last[(src, dst)] = at
        self.seq += 1
        self.queue.append([at, self.seq, src, dst, msg])

    def _notifier(self, r):
        def notify(event, who, why):
            if event == DECIDED and r not in self.decided and self.m[r].entered > who:
                self.decided[r] = self.m[r].instances[who].decided
            elif event == EXCLUDED:
                self.excluded.add(r)
        return notify

    def crash(self, r, how="kill"):
        """kill: what r sent still arrives, then the close; vanish: nothing more arrives."""
        if r in self.dead:
            return
        self.dead.add(r)
        self.frozen.pop(r, None)
        self.queue = [q for q in self.queue if q[3] != r and (how == "kill" or q[2] != r)]
        if how != "kill":
            self.last = {k: v for k, v in self.last.items() if k[0] != r}
        for d in range(self.n):
            if d != r:
                self._queue(r, d, dict(EOF))

    def freeze(self, r):
        if r not in self.dead:
            self.frozen[r] = self.now
            self.stalled.add(r)

    def thaw(self, r):
        if self.frozen.pop(r, None) is None:
            return
        for q in sorted((q for q in self.queue if q[3] == r), key=lambda q: q[1]):
            if q in self.queue:              # (a trigger may have crashed r meanwhile)
                self.queue.remove(q)
                self._deliver(q)             # everything sent before, read before acting

    def _deliver(self, q):
        _, _, src, dst, msg = q
        if dst in self.dead:
            return
        if msg["t"] == EOF["t"]:
            self.m[dst].lost(src, "closed")
        else:
            self.m[dst].receive(src, _reparse(msg))

    def enter(self, r, flag):
        if r in self.dead or r in self.frozen:
            return False
        self.votes[r] = flag
        offer = (lambda r=r: ["10.0.0.%d" % r, 1000 + r]) if self.offer else None
        self.m[r].enter(flag, offer)
        k = self.m[r].entered - 1
        if self.m[r].instances[k].decided is not None and r not in self.decided:
            self.decided[r] = self.m[r].instances[k].decided
        return True

    def step(self):
        self.now += 1
        due = [q for q in self.queue if q[0] <= self.now and q[3] not in self.frozen]
        self.rng.shuffle(due)
        due.sort(key=lambda q: (q[2], q[3], q[1]))          # FIFO per channel
        chans = {}
        for q in due:
            chans.setdefault((q[2], q[3]), []).append(q)
        order = list(chans.values())
        self.rng.shuffle(order)
        for chan in order:
            for q in chan:
                if q in self.queue:
                    self.queue.remove(q)
                    self._deliver(q)
        for r in range(self.n):                              # silence of stalled ranks
            if r in self.dead or r in self.frozen:
                continue
            for w in self.m[r].watched():
                since = self.frozen.get(w)
                if since is not None and self.now - since >= SILENCE:
                    self.m[r].silent(w, SILENCE)

    def run(self, limit=2000):
        for _ in range(limit):
            if not self.queue and not self.frozen:
                return
            self.step()
        raise AssertionError(f"no quiescence after {limit} steps: {self.queue[:5]}")

    # ---------------------------------------------------------------- the checks
    def check(self):
        values = list(self.decided.values())
        assert values, "nobody decided"
        v = values[0]
        for r, w in self.decided.items():
            assert w == v, f"rank {r} decided {w}, another {v}"
        failed = set(v["failed"])
        assert failed <= set(self.dead) | self.excluded | self.stalled, (failed, self.dead)
        live = [r for r in range(self.n) if r not in failed]
        assert all(r in self.votes for r in live), (live, self.votes)
        assert v["flag"] == all(self.votes[r] for r in live), (v, self.votes)
        for r in range(self.n):
            if r not in self.dead and r not in self.excluded and r in self.votes:
                assert r in self.decided, f"rank {r} is alive, called in and did not decide"
        if self.offer:
            assert v["x"] == ["10.0.0.%d" % min(live), 1000 + min(live)], v   # its proposer's
        return v


def _reparse(msg):
    """Through the wire format (what the plane hands to Membership.receive)."""
    return Reader().feed(frame(msg))[0]


def _enter_all(sim, flags):
    for r, f in enumerate(flags):
        sim.enter(r, f)


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_no_failure(n):
    sim = Sim(n, seed=n)
    flags = [True] * n
    if n > 2:
        flags[n // 2] = False
    _enter_all(sim, flags)
    sim.run()
    v = sim.check()
    assert v == {"flag": all(flags), "failed": [], "x": None}
    assert len(sim.decided) == n


def test_late_callers_are_waited_for():
    sim = Sim(4, seed=1)
    sim.enter(3, True)
    sim.enter(1, True)
    for _ in range(30):
        sim.step()
    assert not sim.decided                         # rank 0 (coordinator) and 2 have not called
    sim.enter(0, True)
    for _ in range(30):
        sim.step()
    assert not sim.decided
    sim.enter(2, False)
    sim.run()
    assert sim.check() == {"flag": False, "failed": [], "x": None}


PHASES = [(ag.PREPARE, 1), (ag.PREPARE, "all"), (ag.ACCEPT, 1), (ag.ACCEPT, "all"), (ag.DECIDE, 1),
          (ag.DECIDE, "all")]


@pytest.mark.parametrize("n", [3, 4, 8])
@pytest.mark.parametrize("phase,count", PHASES, ids=[f"{t}-{c}" for t, c in PHASES])
@pytest.mark.parametrize("how", ["kill", "vanish"])
def test_coordinator_dies_at_each_phase(n, phase, count, how):
    sim = Sim(n, seed=zlib.crc32(f"{n}{phase}{count}{how}".encode()), offer=True)
    sim.triggers[(0, phase)] = [n - 1 if count == "all" else count, how]
    _enter_all(sim, [True] * n)
    sim.run()
    v = sim.check()
    assert 0 in sim.dead
    if phase == ag.PREPARE:
        assert v["failed"] == [0], v               # nobody accepted rank 0's value: a fresh one
    elif phase == ag.DECIDE and (count == "all" or how == "kill"):
        assert v["failed"] == [], v                # decided before it died: the others learn it
    # otherwise either: rank 0's value, which some rank accepted (a successor must adopt it), or a
    # fresh one without rank 0 if its ACCEPTs vanished with it


@pytest.mark.parametrize("n", [3, 4, 8])
def test_two_coordinators_die_in_turn(n):
    sim = Sim(n, seed=n, offer=True)
    sim.triggers[(0, ag.ACCEPT)] = [1, "vanish"]          # rank 0 reaches one rank, then vanishes
    sim.triggers[(1, ag.ACCEPT)] = [1, "kill"]            # its successor too
    _enter_all(sim, [True] * n)
    sim.run()
    sim.check()
    assert all(r in sim.decided for r in range(2, n))


def test_a_participant_dies_while_its_vote_is_awaited():
    sim = Sim(4, seed=3)
    for r in (0, 1, 3):
        sim.enter(r, True)
    for _ in range(10):
        sim.step()
    sim.crash(2)                                           # never called in
    sim.run()
    assert sim.check() == {"flag": True, "failed": [2], "x": None}


def test_a_stalled_rank_is_fenced_and_leaves_when_it_wakes():
    sim = Sim(3, seed=5)
    sim.enter(2, True)
    sim.freeze(2)
    sim.enter(0, True)
    sim.enter(1, False)
    for _ in range(SILENCE + 4 * DELAY):
        sim.step()
    assert sim.decided.get(0) == {"flag": False, "failed": [2], "x": None}
    sim.thaw(2)
    sim.run()
    assert 2 in sim.excluded and 2 not in sim.decided
    assert "did not answer" in sim.m[2].excluded
    sim.check()


def test_a_stalled_coordinator_is_replaced_and_leaves():
    sim = Sim(4, seed=9)
    sim.enter(0, True)
    sim.step()                                             # rank 0 sent its PREPAREs
    sim.freeze(0)
    for r in (1, 2, 3):
        sim.enter(r, True)
    for _ in range(SILENCE + 6 * DELAY):
        sim.step()
    sim.thaw(0)
    sim.run()
    v = sim.check()
    assert v["failed"] == [0] and 0 in sim.excluded and 0 not in sim.decided


def test_successive_instances_with_deaths_between():
    sim = Sim(5, seed=11)
    _enter_all(sim, [True] * 5)
    sim.run()
    first = sim.check()
    sim.decided.clear()
    sim.crash(0)
    sim.crash(3, "vanish")
    for r in (1, 2, 4):
        sim.enter(r, r != 4)
    sim.run()
    assert first == {"flag": True, "failed": [], "x": None}
    assert sim.decided[1] == {"flag": False, "failed": [0, 3], "x": None}


@pytest.mark.parametrize("seed", range(400))
def test_random_schedules(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 8)
    sim = Sim(n, seed=seed, offer=rng.random() < 0.5)
    stall = rng.random() < 0.3
    pending = list(range(n))
    rng.shuffle(pending)
    crashes = rng.randint(0, n - 1)
    for r in range(n):                                     # deaths at random moments and sends
        if crashes and rng.random() < 0.5:
            crashes -= 1
            sim.triggers[(r, rng.choice(ag.TYPES))] = [rng.randint(1, n), rng.choice(["kill", "vanish"])]
    for _ in range(400):
        if pending and rng.random() < 0.3:
            r = pending.pop()
            if not sim.enter(r, rng.random() < 0.8) and r not in sim.dead:
                pending.insert(0, r)                        # stalled: it calls in later
        if crashes and rng.random() < 0.02:
            crashes -= 1
            sim.crash(rng.randrange(n), rng.choice(["kill", "vanish"]))
        if stall and not sim.frozen and rng.random() < 0.02:
            r = rng.randrange(n)
            if r not in sim.dead:
                sim.freeze(r)
        for r, since in list(sim.frozen.items()):
            if sim.now - since > SILENCE + rng.randint(0, 20):
                sim.thaw(r)
        sim.step()
    for r in list(sim.frozen):
        sim.thaw(r)
    for r in pending:
        sim.enter(r, True)
    sim.run()
    if len(sim.dead | sim.excluded) < n and sim.decided:
        sim.check()
    else:                                               # everybody gone: nothing to check
        assert not any(r not in sim.dead and r not in sim.excluded for r in range(n))


# ------------------------------------------------------------------------------------------------
def test_revoke_reaches_everyone_when_the_revoker_dies_after_one_message():
    sim = Sim(6, seed=2)
    sim.triggers[(3, "revoke")] = [1, "kill"]
    sim.m[3].revoke()
    sim.run()
    assert all(sim.m[r].revoked for r in range(6) if r != 3)


def test_failure_reports_fence_the_reported_rank():
    sim = Sim(3, seed=4)
    sim.m[0].silent(2, 5.0)
    sim.run()
    assert 2 in sim.m[1].failed and 2 in sim.excluded
    assert "did not answer" in sim.m[2].excluded


@pytest.mark.parametrize("msg", [
    {"t": "prep"}, {"t": "prep", "e": -1}, {"t": "prep", "e": "1"}, {"t": "acc", "e": 3, "val": 1},
    {"t": "acc", "e": 3, "val": {"flag": 1, "failed": []}},
    {"t": "dec", "val": {"flag": True, "failed": [9]}},
    {"t": "dec", "val": {"flag": True, "failed": [], "x": ["h" * 300, 1]}},
    {"t": "prom", "e": 1, "v": 2, "s": [], "a": None}, {"t": "prom", "e": 1, "v": None, "s": [0], "a": [1]},
    {"t": "nack", "e": 1}])
def test_malformed_agreement_messages_are_refused(msg):
    with pytest.raises(ProtocolError):
        _checked(msg["t"], msg, 4)


def test_malformed_frames_are_refused():
    with pytest.raises(ProtocolError):
        Reader().feed(b"\xff\xff\xff\xff")
    with pytest.raises(ProtocolError):
        Reader().feed(b"\x00\x00\x00\x03abc")
    with pytest.raises(ProtocolError):
        Reader().feed(b"\x00\x00\x00\x02[]")
    r = Reader()
    data = frame({"t": "ping"}) + frame({"t": "pong", "x": 1})
    assert r.feed(data[:5]) == [] and r.feed(data[5:]) == [{"t": "ping"}, {"t": "pong", "x": 1}]
    m = Membership("key", 0, 3, lambda *a: None, lambda *a: None)
    with pytest.raises(ProtocolError):
        m.receive(1, {"t": "what"})
    with pytest.raises(ProtocolError):
        m.receive(1, {"t": "failed", "r": 7})
