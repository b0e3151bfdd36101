"""``hetccl run``: start N ranks of a command on this host, like a small local ``mpirun``.

Why our own: it needs nothing installed beyond hetccl, and it gives every job what hetccl wants —
a fresh secret (so the store and links are authenticated), a job id, a free store port — and the
behaviour users expect from a launcher: output prefixed by rank, the first failure stops the whole
job with that rank's status, Ctrl-C stops everything, and nothing is left behind (processes or
shared-memory segments of crashed ranks).

    hetccl run -n N [--keep-going] [--timeout SECONDS] [--] command [args...]

Each rank gets HETCCL_RANK, HETCCL_SIZE, HETCCL_LOCAL_RANK, HETCCL_LOCAL_SIZE, HETCCL_STORE
(127.0.0.1:<free port>), HETCCL_SECRET (64 hex digits), HETCCL_JOB_ID (8 hex digits), and, unless
already set, OPENBLAS_NUM_THREADS=1, OMP_NUM_THREADS=1 (numpy would otherwise start a BLAS thread
per core in every rank) and PYTHONUNBUFFERED=1 (so output is not lost when a rank is killed).
A command ``python``/``python3`` (or a bare ``script.py``) runs under this launcher's interpreter.
Ranks run in their own process groups with stdin from /dev/null. SIGUSR1 to the launcher is passed
on to every rank (hetccl dumps its flight records on it: docs/reliability.md, "Hung ranks").

Exit status: 0 if every rank exits 0; else the first failing rank's status (128+N if killed by
signal N); 130/143 when the launcher gets SIGINT/SIGTERM; 124 on --timeout; 2 on bad usage;
127 if the command cannot be started.

``--keep-going`` is for programs that recover from the loss of ranks (``comm.shrink()``,
``hetccl.torch.shrink_group``): a rank that ends, however it ends, stops no one; the launcher waits
for every rank. Why a flag of the launch rather than a declaration by the program: the launcher
must decide the moment a rank dies, before any survivor could say anything, and the flag changes
what the exit status means, so the one who reads the status (a person, a job script) is the one
who chooses it; ``mpirun --with-ft ulfm`` and ``srun --no-kill`` are launch options too. Ranks
killed by a signal (SIGKILL, the OOM killer, a crash's SIGSEGV or SIGABRT) are the failures the
job survives; a rank that exits with a non-zero status reported an error. So the status is 0 if
at least one rank exited 0 and every rank that was not killed by a signal exited 0; else the
first such non-zero status, or 128+N of the first rank killed when no rank exited 0. The last
line names the ranks lost (docs/launching.md gives its exact form):

    hetccl run: finished: 3 of 4 ranks exited 0; lost 1: rank 2 (SIGKILL)
"""
from __future__ import annotations

import glob
import os
import secrets
import signal
import subprocess
import sys
import threading
import time

from .store import free_port

USAGE = """\
usage: hetccl run -n N [--keep-going] [--timeout SECONDS] [--] command [args...]

Start N ranks of `command` on this host with hetccl's environment set
(HETCCL_RANK, HETCCL_SIZE, HETCCL_STORE, HETCCL_SECRET, ...).

options:
  -n, --np N           number of ranks (>= 1)
  --keep-going         a rank that dies or fails stops no one: for programs that
                       go on without lost ranks (comm.shrink, shrink_group); the
                       status is 0 if every rank not killed by a signal exited 0,
                       and the last line names the ranks lost
  --timeout SECONDS    stop all ranks after SECONDS and exit with status 124
  -h, --help           show this help

example: hetccl run -n 4 python train.py --epochs 3
"""

KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL


class _UsageError(Exception):
    pass


def _parse(argv: list[str]):
    """(nranks, timeout, keep_going, cmd), or None for --help; _UsageError otherwise."""
    n, timeout, keep_going, i = None, None, False, 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if a in ("-h", "--help"):
            return None
        if a in ("-n", "-np", "--np", "--nproc"):
            if i + 1 >= len(argv):
                raise _UsageError(f"{a} needs a number of ranks")
            n, i = argv[i + 1], i + 2
        elif a.startswith("-n") and a[2:].isdigit():
            n, i = a[2:], i + 1
        elif a.startswith("--np=") or a.startswith("--nproc="):
            n, i = a.split("=", 1)[1], i + 1
        elif a == "--timeout":
            if i + 1 >= len(argv):
                raise _UsageError("--timeout needs a number of seconds")
            timeout, i = argv[i + 1], i + 2
        elif a.startswith("--timeout="):
            timeout, i = a.split("=", 1)[1], i + 1
        elif a == "--keep-going":
            keep_going, i = True, i + 1
        elif a.startswith("-"):
            raise _UsageError(f"unknown option {a!r} (put the command after `--` if it is "
                              f"the command's option)")
        else:
            break
    cmd = argv[i:]
    if n is None:
        raise _UsageError("missing -n N (the number of ranks)")
    try:
        nranks = int(n)
    except ValueError:
        nranks = 0
    if nranks < 1:
        raise _UsageError(f"-n {n}: the number of ranks must be an integer >= 1")
    if timeout is not None:
        try:
            timeout = float(timeout)
        except ValueError:
            timeout = -1.0
        if not timeout > 0:
            raise _UsageError("--timeout needs a positive number of seconds")
    if not cmd:
        raise _UsageError("missing the command to run")
    return nranks, timeout, keep_going, cmd


def _resolve(cmd: list[str]) -> list[str]:
    """``python ...`` runs under our interpreter, where hetccl is importable."""
    if cmd[0] in ("python", "python3"):
        return [sys.executable, *cmd[1:]]
    if cmd[0].endswith(".py") and not os.access(cmd[0], os.X_OK):
        return [sys.executable, *cmd]
    return list(cmd)




def cleanup_shm(job_id: str, pids=()) -> list[str]:
    """Remove the shared-memory segments that crashed ranks of this job left behind: those named
    for the job (/dev/shm/hetccl-<job_id>-*) and those owned by one of ``pids`` (the ranks we
    started, all exited now; memory/reap.py)."""
    from ..memory.reap import reap_pids

    removed = reap_pids(pids)
    if not job_id or "/" in job_id:
        return removed
    for path in glob.glob(f"/dev/shm/hetccl-{glob.escape(job_id)}-*"):
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return removed


class _Output:
    """Copies a child's pipe to our stream line by line, with a ``[rank]: `` prefix."""

    def __init__(self, stream):
        self.stream = stream
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            buf = getattr(self.stream, "buffer", None)
            try:
                if buf is not None:
                    buf.write(data)
                    buf.flush()
                else:
                    self.stream.write(data.decode("utf-8", "replace"))
                    self.stream.flush()
            except (OSError, ValueError):
                pass  # our own stdout went away (closed pipe): keep draining the child


def _pump(pipe, out: _Output, prefix: bytes) -> None:
    try:
        for line in iter(pipe.readline, b""):
            if not line.endswith(b"\n"):
                line += b"\n"
            out.write(prefix + line)
    except (OSError, ValueError):
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            if p.poll() is None:
                p.send_signal(sig)
        except ProcessLookupError:
            pass


def _status(rc: int) -> int:
    return rc if rc >= 0 else 128 - rc


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _ended(rc: int) -> str:
    """How a rank ended, for the launcher's messages."""
    if rc < 0:
        return f"was killed by {_signame(-rc)}"
    return f"exited with status {rc}"


class _Job:
    def __init__(self, nranks: int, cmd: list[str], timeout: float | None, keep_going: bool = False):
        self.nranks, self.cmd, self.timeout, self.keep_going = nranks, cmd, timeout, keep_going
        self.job_id = secrets.token_hex(4)
        self.procs: list[subprocess.Popen] = []
        self.pumps: list[list[threading.Thread]] = []
        self.signal: int | None = None
        self.ended: dict[int, int] = {}          # rank -> return code, in the order ranks ended
        self.stopped: list[int] = []             # ranks the launcher itself stopped
        self.out, self.err = _Output(sys.stdout), _Output(sys.stderr)

    def say(self, msg: str) -> None:
        self.err.write(f"hetccl run: {msg}\n".encode())

    def env(self, rank: int, store: str, secret: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(HETCCL_RANK=str(rank), HETCCL_SIZE=str(self.nranks),
                   HETCCL_LOCAL_RANK=str(rank), HETCCL_LOCAL_SIZE=str(self.nranks),
                   HETCCL_STORE=store, HETCCL_SECRET=secret, HETCCL_JOB_ID=self.job_id)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "PYTHONUNBUFFERED"):
            env.setdefault(var, "1")
        return env

    def start(self) -> None:
        store, secret = f"127.0.0.1:{free_port()}", secrets.token_hex(32)
        for rank in range(self.nranks):
            p = subprocess.Popen(self.cmd, env=self.env(rank, store, secret),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, process_group=0)
            self.procs.append(p)
            prefix = f"[{rank}]: ".encode()
            threads = [threading.Thread(target=_pump, args=(p.stdout, self.out, prefix),
                                        daemon=True),
                       threading.Thread(target=_pump, args=(p.stderr, self.err, prefix),
                                        daemon=True)]
            for t in threads:
                t.start()
            self.pumps.append(threads)

    def stop(self, first_signal: int = signal.SIGTERM) -> None:
        """Signal every live rank's group, SIGKILL whatever is left after KILL_GRACE seconds."""
        live = [p for p in self.procs if p.poll() is None]
        self.stopped = [r for r, p in enumerate(self.procs) if p in live and r not in self.ended]
        for p in live:
            _signal_group(p, first_signal)
        deadline = time.monotonic() + KILL_GRACE
        for p in live:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self.reap()

    def reap(self) -> None:
        """SIGKILL each rank's process group (takes stray grandchildren too) and wait."""
        for p in self.procs:
            _signal_group(p, signal.SIGKILL)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def supervise(self) -> int:
        deadline = time.monotonic() + self.timeout if self.timeout else None
        while True:
            if self.signal is not None:
                sig = self.signal
                self.say(f"got {signal.Signals(sig).name}; stopping all ranks")
                self.stop(sig)
                return 128 + sig
            running = False
            for rank, p in enumerate(self.procs):
                rc = p.poll()
                if rc is None:
                    running = True
                    continue
                if rank in self.ended:
                    continue
                self.ended[rank] = rc
                if rc == 0:
                    continue
                for t in self.pumps[rank]:  # let its last words out first
                    t.join(1.0)
                if not self.keep_going:
                    how = f" (killed by {_signame(-rc)})" if rc < 0 else ""
                    self.say(f"rank {rank} exited with status {_status(rc)}{how}; stopping the "
                             f"others")
                    self.stop()
                    return _status(rc)
                self.say(f"rank {rank} {_ended(rc)}; the others keep running (--keep-going)")
                cleanup_shm("", [p.pid])  # its segments now, not at the end: /dev/shm is memory
            if not running:
                return self.keep_going_status() if self.keep_going else 0
            if deadline is not None and time.monotonic() >= deadline:
                self.say(f"timeout: ranks still running after {self.timeout:g}s; stopping all "
                         f"ranks")
                self.stop()
                return 124
            time.sleep(0.02)

    # ------------------------------------------------------------------ --keep-going
    def keep_going_status(self) -> int:
        """Every rank ended on its own: 0 if some rank exited 0 and every rank not killed by a
        signal exited 0; else the first non-zero exit status; else (all were killed) 128+N of
        the first rank killed."""
        codes = list(self.ended.values())
        errors = [rc for rc in codes if rc > 0]
        if errors:
            return errors[0]
        if 0 in codes:
            return 0
        return _status(codes[0])

    def summary(self, status: int) -> str:
        """The last line of a --keep-going job (docs/launching.md): who exited 0, who was lost
        (killed by a signal), who failed (non-zero status) and who the launcher stopped."""
        by_rank = sorted(self.ended.items())
        ok = sum(1 for _, rc in by_rank if rc == 0)
        lost = [f"rank {r} ({_signame(-rc)})" for r, rc in by_rank
                if rc < 0 and r not in self.stopped]
        errors = [f"rank {r} (status {rc})" for r, rc in by_rank if rc > 0 and r not in self.stopped]
        verdict = "finished" if status == 0 else f"failed (status {status})"
        parts = [f"{verdict}: {ok} of {self.nranks} ranks exited 0",
                 f"lost {len(lost)}" + (": " + ", ".join(lost) if lost else "")]
        if errors:
            parts.append(f"errors {len(errors)}: " + ", ".join(errors))
        if self.stopped:
            parts.append(f"stopped {len(self.stopped)}: "
                         + ", ".join(f"rank {r}" for r in self.stopped))
        return "; ".join(parts)


def run_main(argv: list[str]) -> int:
    """``hetccl run`` entry point: returns the process exit status (see the module docstring)."""
    try:
        parsed = _parse(list(argv))
    except _UsageError as e:
        sys.stderr.write(f"hetccl run: {e}\n\n{USAGE}")
        return 2
    if parsed is None:
        sys.stdout.write(USAGE)
        return 0
    nranks, timeout, keep_going, cmd = parsed
    job = _Job(nranks, _resolve(cmd), timeout, keep_going)

    def on_signal(signum, frame):
        if job.signal is None:
            job.signal = signum

    def forward(signum, frame):
        for p in job.procs:
            if p.poll() is None:
                _signal_group(p, signum)

    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, on_signal)
        old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, forward)
    status = None
    try:
        try:
            job.start()
        except OSError as e:
            job.say(f"cannot start {cmd[0]!r}: {e.strerror or e}")
            job.stop()
            return 127
        status = job.supervise()
        return status
    finally:
        job.reap()
        for threads in job.pumps:
            for t in threads:
                t.join(2.0)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        removed = cleanup_shm(job.job_id, [p.pid for p in job.procs])
        if removed:
            job.say(f"removed {len(removed)} shared-memory segment(s) left behind by job "
                    f"{job.job_id}")
        if keep_going and status is not None:
            job.say(job.summary(status))             # the last line: who was lost


if __name__ == "__main__":
    sys.exit(run_main(sys.argv[1:]))
