"""What each rank of a fault-injection trial runs; tests/faults/harness.py drives it and judges.

``trial(rank, size, spec)`` serves every scenario that injects a fault into running collectives
(kill, stall, abort, close, second, link, island): it joins, checks one call, then calls the
scenario's collective in a loop, every result checked, while the victim's injector thread fires
at ``spec["delay"]`` s. Each rank reports when and how its loop ended, then the survivors shrink
(again, if a rank dies during or right after a shrink) and check one call on the new communicator.
``shm_full(rank, size, spec)`` serves the two /dev/shm scenarios (the harness runs them in a private
tmpfs). Results are JSON (the netns and mpirun runners carry them as text); times are
``time.time()`` (every rank is on this machine), fault moments go to files in ``spec["stamps"]``.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np

LOOP_S = 30.0          # a survivor whose loop has not raised by then reports no error
OP_TIMEOUT = 30.0      # each call's deadline (a death noticed only there is "slow")
STALL_TIMEOUT = 3.0    # each call's deadline in the stall scenario: survivors raise within it + 2 s
SHRINK_TIMEOUT = 40.0
KILLED = ("kill", "second", "island", "link")    # the victim's process ends
RESOURCES = ("fds", "threads", "maps", "segments", "children")   # resources(), in order
MPI_BRIDGES = {0: "mpi", 1: "mpi"}               # island scenario: MPI island of ranks 0, 1
SECOND_AT = ("agree", "build", "confirm")        # where in its shrink the second victim dies


# ------------------------------------------------------------------------------------------------
# shared helpers
# ------------------------------------------------------------------------------------------------
def stamp(spec, name, t=None):
    """Record a moment (a fault, a SIGCONT) where the harness reads it, atomically."""
    path = os.path.join(spec["stamps"], name)
    with open(path + ".tmp", "w") as f:
        f.write(repr(time.time() if t is None else t))
    os.replace(path + ".tmp", path)


def resources(job=None):
    """(open fds, threads, hetccl shared-memory mappings, /dev/shm segments of this rank, child
    processes) of this process: what a leak would grow."""
    from hetccl.memory.reap import owner_pid
    pid = os.getpid()
    with open("/proc/self/maps") as f:
        maps = sum("/hetccl-" in line or "hetccl-sym" in line for line in f)
    job = job or os.environ.get("HETCCL_JOB_ID", "?")
    segs = sum(owner_pid(n) == pid or n.startswith(f"hetccl-{job}-") for n in os.listdir("/dev/shm"))
    kids = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    kids += int(f.read().rsplit(")", 1)[1].split()[1]) == pid
            except (OSError, IndexError, ValueError):
                pass
    return [len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task")), maps, segs, kids]


def control_links_up(comm, limit=30.0):
    """Wait until this process's control connections to ``comm``'s other ranks are up (or known
    dead). init() returns before they are: a thread per peer makes them (recovery/plane.py), and
    they are kept for the process's life. Counted resources must not be sampled before: under load
    a connection made late showed up as a "leaked" socket of whatever ran in between."""
    h, end = comm._ft, time.monotonic() + limit
    plane = h.plane
    while time.monotonic() < end:
        with plane.lock:
            peers = [plane._peers.get((t, h.fp)) for r, t in enumerate(h.tokens) if r != h.rank]
            if all(p is not None and p.state in ("up", "dead") for p in peers):
                return
        time.sleep(0.02)
    raise TimeoutError(f"control connections not up after {limit:g} s")


def settled(before, limit=5.0):
    """resources() once none exceeds ``before`` (threads end asynchronously), or as at ``limit``."""
    end = time.monotonic() + limit
    while True:
        now = resources()
        if all(a <= b for a, b in zip(now, before)) or time.monotonic() > end:
            return now
        time.sleep(0.05)


def _error(e):
    return {"exc": type(e).__name__, "msg": str(e)[:600], "at": time.time(),
            "peer": getattr(e, "peer", None)}


class Calls:
    """The scenario's collective on ``comm`` with checked results: ``run()`` is True when the
    result is right. Every rank r contributes r + 1 (exact in float32)."""

    def __init__(self, comm, spec, timeout):
        self.c, self.t = comm, timeout
        self.op, n, p, r = spec["op"], spec["count"], comm.size, comm.rank
        self.pending = spec["kind"] == "close"          # several non-blocking calls in flight
        self.algo = "islands" if spec["path"] == "mpi" else None
        if spec["path"] == "symmetric" and self.op in ("allreduce", "allgather"):
            self.x = comm.alloc(n)
            self.y = comm.alloc(n * p if self.op == "allgather" else n)
        else:
            self.x = np.empty(n, np.float32)
            self.y = np.empty(n * p if self.op in ("allgather", "alltoall") else n, np.float32)
        if self.pending:
            self.more = [np.empty(n, np.float32) for _ in range(2)]
        self.n, self.p, self.r = n, p, r

    def run(self):
        c, n, p, r = self.c, self.n, self.p, self.r
        if self.pending:
            bufs = [self.x] + self.more
            for b in bufs:
                b[:] = r + 1
            works = [c.allreduce(b, timeout=self.t, async_op=True) for b in bufs]
            for w in works:
                w.wait()
            return all((b == p * (p + 1) / 2).all() for b in bufs)
        x, y = self.x, self.y
        if self.op == "allreduce":
            x[:] = r + 1
            c.allreduce(x, out=y if c.is_symmetric(x) else None, timeout=self.t, algorithm=self.algo)
            return bool(((y if c.is_symmetric(x) else x) == p * (p + 1) / 2).all())
        if self.op == "allgather":
            x[:] = r + 1
            c.allgather(x, out=y, timeout=self.t, algorithm=self.algo)
            return bool((y.reshape(p, n) == np.arange(1, p + 1, dtype=np.float32)[:, None]).all())
        if self.op == "broadcast":
            x[:] = r + 1
            c.broadcast(x, root=p - 1, timeout=self.t, algorithm=self.algo)
            return bool((x == p).all())
        if self.op == "alltoall":                           # block q of rank r: 1000 r + q
            src = np.repeat(np.arange(p, dtype=np.float32) + 1000 * r, n // p)
            c.alltoall(src, out=y[:src.size], timeout=self.t)
            return bool((y[:src.size] == np.repeat(np.arange(p, dtype=np.float32) * 1000 + r, n // p)).all())
        raise ValueError(self.op)


# ------------------------------------------------------------------------------------------------
# faults into running collectives
# ------------------------------------------------------------------------------------------------
def _inject(comm, spec):
    """The victim's injector thread: at the chosen moment, record it, then do the fault."""
    time.sleep(spec["delay"])
    kind = spec["kind"]
    stamp(spec, "fault")
    if kind in KILLED:
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "stall":
        os.kill(os.getpid(), signal.SIGSTOP)            # until a survivor sends SIGCONT
    elif kind == "abort":
        comm.abort()
    elif kind == "close":
        comm.close(timeout=0.5)                          # with its non-blocking calls pending


def _loop(calls, until):
    """Call until an error (returned), or ``until``: (error or None, calls, wrong results)."""
    import hetccl
    n = wrong = 0
    while time.time() < until:
        began = time.time()
        try:
            if not calls.run():
                wrong += 1
            n += 1
        except hetccl.HetcclError as e:
            return dict(_error(e), began=began), n, wrong
    return None, n, wrong


def _survivors(spec, size):
    """World ranks expected to shrink together (the harness checks the same)."""
    kind, v = spec["kind"], spec["victim"]
    if kind == "abort":
        return list(range(size))                         # the aborting rank lives on
    gone = {v} | ({spec["second"]} if kind == "second" else set())
    if kind == "link":                                   # only the connected host's ranks
        return [r for r in range(size) if spec["placement"][r] == 0]
    return [r for r in range(size) if r not in gone]


def _recover(comm, spec, world, out):
    """Shrink onto the survivors and check a call there; shrink again if a rank dies during or
    right after (at most three times). Appends each shrink's (start, end, size) to out["shrinks"]."""
    import hetccl
    cur, ranks = comm, list(range(comm.size))            # cur's ranks as world ranks
    out["shrinks"] = []
    if spec["kind"] == "second" and world == spec["second"]:
        _die_in_shrink(comm, spec)
    for _ in range(3):
        t0 = time.time()
        try:
            new = cur.shrink(timeout=SHRINK_TIMEOUT)
        except hetccl.HetcclError as e:
            out["shrink_error"] = _error(e)
            break
        finally:
            if spec["kind"] == "stall" and world == min(_survivors(spec, comm.size)) and cur is comm:
                stamp(spec, "cont")                      # the stalled rank was fenced: wake it
                os.kill(comm._cards[spec["victim"]]["pid"], signal.SIGCONT)
        out["shrinks"].append([t0, time.time(), new.size])
        ranks = [ranks[r] for r in new.parent_ranks]
        out["ranks"] = ranks
        if new._islands is not None and new._islands.bridge is not None:     # how the island was made
            out["island"] = {"kind": new._islands.island.kind,
                             "shrunk_from": getattr(new._islands.bridge, "shrunk_from", None)}
        try:
            after = Calls(new, dict(spec, kind="after", op="allreduce", path=_after_path(spec)), OP_TIMEOUT)
            out["after_ok"] = after.run() and after.run()
            new.close(timeout=10)
            break
        except hetccl.HetcclError as e:                  # a death right after the shrink
            out["after_error"] = _error(e)
            if cur is not comm:
                cur.close(timeout=2)
            cur = new
    if cur is not comm:
        cur.close(timeout=2)


def _die_in_shrink(comm, spec):
    """Make this rank die inside its shrink, at ``spec["at"]`` (SECOND_AT)."""
    from hetccl.recovery import shrink as sh

    def die(*_a, **_k):
        stamp(spec, "second")
        os.kill(os.getpid(), signal.SIGKILL)
    if spec["at"] == "build":
        sh._build = die
        return
    agree, calls = comm._ft.agree, []

    def agree_then_die(*a, **k):                         # 1st call: the failed set; 2nd: confirm
        calls.append(1)
        if len(calls) == (1 if spec["at"] == "agree" else 2):
            die()
        return agree(*a, **k)
    comm._ft.agree = agree_then_die


def _after_path(spec):
    return spec["path"] if spec["path"] in ("symmetric", "mpi") else "plain"


def trial(rank, size, spec):
    import hetccl
    if spec["path"] == "mpi":
        comm = hetccl.init(timeout=60, bridges=MPI_BRIDGES)
    else:
        comm = hetccl.init(timeout=60)
    kind = spec["kind"]
    timeout = STALL_TIMEOUT if kind == "stall" else OP_TIMEOUT
    out = {"rank": rank, "pid": os.getpid(), "host": comm._cards[rank]["host"]}
    calls = Calls(comm, spec, timeout)
    out["warm_ok"] = calls.run()
    comm.barrier(timeout=60)
    if rank == 0:
        stamp(spec, "loop")                              # the harness's own injectors wait for it
    victim = rank == spec["victim"]
    if victim:
        threading.Thread(target=_inject, args=(comm, spec), daemon=True, name="fault").start()
    out["loop_start"] = time.time()
    err, out["calls"], out["wrong"] = _loop(calls, time.time() + LOOP_S)
    out["raised"] = err
    if victim and kind == "stall":                       # woke up: it was fenced meanwhile
        try:
            comm.shrink(timeout=10)
            out["after_wake"] = None
        except hetccl.HetcclError as e:
            out["after_wake"] = _error(e)
    elif rank in _survivors(spec, size) or (kind == "second" and rank == spec["second"]):
        _recover(comm, spec, rank, out)
    out["failed"] = comm.failed_ranks()
    t = time.time()
    comm.close(timeout=5)
    out["close_s"] = time.time() - t
    return out


# ------------------------------------------------------------------------------------------------
# /dev/shm full (run in a private tmpfs by the harness)
# ------------------------------------------------------------------------------------------------
FILLER = "/dev/shm/faults-filler"


def fill_shm():
    """Fill /dev/shm (the private tmpfs) until ENOSPC."""
    with open(FILLER, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass


def shm_full(rank, size, spec):
    import hetccl
    from hetccl.recovery.plane import plane
    out = {"rank": rank}
    plane()                     # the process's control plane (kept by design) before counting
    before = resources()
    t = time.time()
    if spec["kind"] == "shm_init":                       # the harness filled it before the start
        try:
            hetccl.init(timeout=60).close()
            out["raised"] = None
        except hetccl.HetcclError as e:
            out["raised"] = _error(e)
        out["took"] = time.time() - t
        out["before"], out["after"] = before, settled(before)
        return out
    comm = hetccl.init(timeout=60)
    if rank == 0:
        fill_shm()
    comm.barrier()
    control_links_up(comm)
    before = resources()
    t = time.time()
    try:
        comm.alloc(spec["count"])
        out["raised"] = None
    except hetccl.HetcclError as e:
        out["raised"] = _error(e)
    out["took"] = time.time() - t
    out["before"], out["after"] = before, settled(before)
    comm.barrier()
    if rank == 0:
        os.unlink(FILLER)
    comm.barrier()
    calls = Calls(comm, dict(spec, path="symmetric", op="allreduce"), OP_TIMEOUT)   # room again
    out["after_ok"] = calls.run() and comm.is_symmetric(calls.x)
    comm.close()
    return out


def main():
    """``python -m tests.faults.ranks SPEC``: one rank under mpirun (rank and size from hetccl's
    launcher detection); prints ``FAULT-RESULT <json>``."""
    import sys
    import traceback
    spec = json.loads(sys.argv[1])
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "0")))
    size = int(os.environ.get("OMPI_COMM_WORLD_SIZE", os.environ.get("PMI_SIZE", "1")))
    try:
        res = trial(rank, size, spec)
    except BaseException:                                # noqa: BLE001 - reported to the harness
        sys.stdout.write(f"FAULT-ERROR {rank} " + json.dumps(traceback.format_exc()) + "\n")
        sys.stdout.flush()
        os._exit(1)
    sys.stdout.write("FAULT-RESULT " + json.dumps(res) + "\n")
    sys.stdout.flush()
    os._exit(0)                 # MPI_Finalize may wait for the dead: leave once the result is out


if __name__ == "__main__":
    main()


# ------------------------------------------------------------------------------------------------
# soak: create, shrink and destroy, counting what a leak would grow
# ------------------------------------------------------------------------------------------------
def soak(rank, size, cycles, every):
    """``cycles`` times: dup the world (create), shrink the dup (a new root communicator, its
    store and links), check an allreduce on it, close both (destroy). Resources are counted after
    one warm-up cycle, every ``every`` cycles, and at the end once threads have ended."""
    import hetccl
    world = hetccl.init(timeout=60)
    control_links_up(world)                   # the dups and shrinks share the process's connections
    want = size * (size + 1) / 2

    def cycle():
        c = world.dup()
        s = c.shrink(timeout=60)
        x = np.full(1000, s.rank + 1.0, np.float32)
        s.allreduce(x)
        s.close()
        c.close()
        return bool((x == want).all())
    cycle()
    before = resources()
    samples, wrong, t = [], 0, time.time()
    for i in range(cycles):
        wrong += not cycle()
        if (i + 1) % every == 0:
            samples.append(resources())
    took = time.time() - t
    after = settled(before)
    world.close()
    return {"before": before, "after": after, "samples": samples, "wrong": wrong, "s": took}
