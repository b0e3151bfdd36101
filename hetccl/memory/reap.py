"""Remove shared-memory segments that dead processes left in /dev/shm.

Why: a segment is unlinked as soon as every peer has mapped it, but a rank killed in between (during
communicator set-up or ``comm.alloc``) leaves it behind, whatever launched the job, and /dev/shm is
memory. Every named segment hetccl creates starts with ``hetccl-<kind>-<owner pid>-``
(``hetccl-pair-`` for the per-pair FIFOs, ``hetccl-sym-`` for symmetric memory), so anyone on the
host can tell whether its owner still runs:

* ``reap_dead()`` runs at every start (the rendezvous calls it on each rank): it removes this user's
  segments whose owner is gone: no such pid, or a pid that a newer process took over (the process
  started after the segment was last modified). Segments younger than ``min_age`` seconds are left
  alone, because a process of another pid namespace that shares /dev/shm (a container started with
  ``--ipc=host``) looks dead from here while it sets up.
* ``reap_pids(pids)`` is for a launcher that saw its children exit: every segment they owned goes,
  at once.
"""
from __future__ import annotations

import logging
import os
import re
import time

log = logging.getLogger("hetccl.memory")

SHM_DIR = "/dev/shm"
PAIR_PREFIX = "hetccl-pair-"
SYM_PREFIX = "hetccl-sym-"
_OWNED = re.compile(r"^hetccl-(?:pair|sym)-(\d+)-")

__all__ = ["PAIR_PREFIX", "SYM_PREFIX", "owner_pid", "reap_dead", "reap_pids"]


def owner_pid(name: str) -> int | None:
    """The pid that created segment ``name`` (a file name in /dev/shm), None if not ours."""
    m = _OWNED.match(name)
    return int(m.group(1)) if m else None


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def _started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _owner_gone(pid: int, modified: float) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:       # alive, another user's: not a pid that could be ours again
        return False
    started = _started(pid)
    return started is not None and started > modified + 1.0


def _remove(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


def reap_dead(min_age: float = 60.0, shm_dir: str = SHM_DIR) -> list[str]:
    """Remove this user's hetccl segments whose owner process is gone; returns their paths."""
    removed = []
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return removed
    uid, now = os.getuid(), time.time()
    for name in names:
        pid = owner_pid(name)
        if pid is None:
            continue
        path = os.path.join(shm_dir, name)
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            continue
        modified = st.st_mtime
        if st.st_uid != uid or now - modified < min_age or not _owner_gone(pid, modified):
            continue
        if _remove(path):
            removed.append(path)
    if removed:
        log.info("removed %d shared-memory segment(s) left by dead processes: %s", len(removed),
                 ", ".join(os.path.basename(p) for p in removed))
    return removed


def reap_pids(pids, shm_dir: str = SHM_DIR) -> list[str]:
    """Remove every hetccl segment owned by one of ``pids`` (processes known to have exited)."""
    pids = {int(p) for p in pids}
    removed = []
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return removed
    for name in names:
        if owner_pid(name) in pids and _remove(os.path.join(shm_dir, name)):
            removed.append(os.path.join(shm_dir, name))
    return removed
