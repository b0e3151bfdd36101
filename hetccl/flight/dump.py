"""Flight records to files: on request (``write``) and on SIGUSR1 from a live process.

One file per process, JSON, holding every live communicator of the process:

    {"format": "hetccl-flight", "version": 1, "host": "node7", "pid": 4242, "time": 1767225600.5,
     "reason": "signal", "communicators": [
        {"key": "9f3a...", "id": "w", "job": "...", "rank": 5, "size": 8, "host": "node7/...",
         "seq": 1041, "capacity": 256, "parent_ranks": null, "entries": [...]}]}

``time`` is the wall clock of the dump; entries carry ages before it (record.py). ``key`` is the
same on every rank of a communicator (``hetccl doctor --flight`` groups by it). Files go to
HETCCL_FLIGHT_DIR, else ``<temp dir>/hetccl-flight-<uid>`` (mode 0700), named
``<job>-rank<R>-<pid>.json`` (R: the rank in the process's first communicator), written
atomically (a reader never sees half a file).

The signal: at the first communicator, if SIGUSR1 has its default disposition (the program, or
a library such as faulthandler, has not claimed it), a native handler is installed that writes one
byte to a pipe; the control plane's thread watches the pipe and starts a short-lived thread that
writes the file. Nothing runs inside the handler, and it works while the main thread is stuck in
a collective (the handler needs no GIL and no Python). A program that installs its own SIGUSR1
handler later simply replaces it.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time

from .._native.flight import install_dump_signal
from . import record

log = logging.getLogger("hetccl")

FORMAT = "hetccl-flight"
VERSION = 1
SIGNAL = signal.SIGUSR1
_installed = None            # (pid, read fd, write fd) once tried in this process
_lock = threading.Lock()


def directory() -> str:
    return os.environ.get("HETCCL_FLIGHT_DIR") or os.path.join(tempfile.gettempdir(),
                                                               f"hetccl-flight-{os.getuid()}")


def communicator_record(ctx, now: float) -> dict:
    """One communicator's part of a dump, from its Context (hetccl/context.py)."""
    f = ctx.flight
    return {"key": ctx.ft.key, "id": ctx.comm_id, "job": ctx.job_id, "rank": ctx.rank,
            "size": ctx.size, "host": ctx.cards[ctx.rank].get("host"), "seq": f.seq,
            "capacity": f.capacity, "parent_ranks": getattr(ctx.comm, "parent_ranks", None),
            "entries": record.entries(f, 0, now)}


def process_record(ctxs, reason: str) -> dict:
    now = time.monotonic()
    out = []
    for c in ctxs:
        try:
            out.append(communicator_record(c, now))
        except Exception as e:                 # noqa: BLE001 - one odd communicator must not stop a dump
            log.debug("flight dump: skipping a communicator (%s)", e)
    return {"format": FORMAT, "version": VERSION, "host": socket.gethostname(), "pid": os.getpid(),
            "time": time.time(), "reason": reason, "communicators": out}


def write(ctxs, path: str | None = None, reason: str = "request") -> str:
    """Write the record of the communicators of Contexts ``ctxs`` to ``path`` (a file, or a directory: the default name in it;
    default: ``directory()``); returns the file's path."""
    rec = process_record(ctxs, reason)
    if path is None or os.path.isdir(path):
        d = path or directory()
        os.makedirs(d, mode=0o700, exist_ok=True)
        first = rec["communicators"][0] if rec["communicators"] else None
        name = (f"{str(first['job'])[:16]}-rank{first['rank']}" if first else "none") + f"-{os.getpid()}.json"
        path = os.path.join(d, name)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(rec, fh, indent=1)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------ the signal

def install_signal(plane, ctxs) -> bool:
    """Install the SIGUSR1 dump (once per process; see the module docstring); True if this
    process's SIGUSR1 dumps ``ctxs()`` (a callable returning the live communicators' Contexts)."""
    global _installed
    with _lock:
        if _installed is not None and _installed[0] == os.getpid():
            return _installed[1] is not None
        _installed = (os.getpid(), None, None)
        try:
            if signal.getsignal(SIGNAL) not in (signal.SIG_DFL, None):
                return False                    # the program's own handler (or SIG_IGN)
        except ValueError:
            return False
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if not install_dump_signal(SIGNAL, w):
            os.close(r)
            os.close(w)
            log.debug("flight record: SIGUSR1 has a handler already; no dump on signal")
            return False
        _installed = (os.getpid(), r, w)
    plane.on_readable(r, lambda: _signalled(r, ctxs))
    return True


def _signalled(r, ctxs):
    """On the plane's thread: drain the pipe, dump on a thread of its own."""
    try:
        while os.read(r, 64):
            pass
    except (BlockingIOError, OSError):
        pass
    threading.Thread(target=_dump_now, args=(ctxs,), name="hetccl-flight-dump", daemon=True).start()


def _dump_now(ctxs):
    try:
        path = write(ctxs(), reason="signal")
        log.warning("flight record of process %d written to %s (SIGUSR1)", os.getpid(), path)
    except Exception as e:                     # noqa: BLE001 - a dump must never hurt the program
        log.warning("flight record: the dump on SIGUSR1 failed: %s", e)
