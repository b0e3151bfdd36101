"""Run a test function as N ranks in N processes: the harness of every multi-rank test.

    from tests.launcher import run_ranks

    def _allreduce_case(rank, size, n):       # module level: the children import it by name
        comm = hetccl.init()
        ...
        return result                          # anything picklable

    def test_allreduce():
        results = run_ranks(_allreduce_case, 4, 1000, timeout=30)   # list, rank-ordered

Why it looks like this:

* ``spawn`` start method: ranks must not inherit the parent's threads, sockets or half-initialised
  native state the way ``fork`` would make them.
* One shared deadline for the whole group, and stragglers are killed (SIGTERM, then SIGKILL, to
  the rank's whole process group): a hung collective fails the test instead of hanging the suite.
* Each rank returns its result or its formatted traceback through a pipe (the child pickles; only
  this trusted harness unpickles), and a failure shows every failing rank's traceback labelled
  with its rank.
* The environment (HETCCL_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE/STORE/SECRET/JOB_ID,
  OPENBLAS_NUM_THREADS=1, OMP_NUM_THREADS=1, ``env`` overrides, HETCCL_TRANSPORTS) is set in the
  child *before* the test module is imported there — numpy reads OPENBLAS_NUM_THREADS at import.
* Fault injection: ``victims=`` names ranks the test kills on purpose; their deaths are not
  failures and do not cut the others' time short, so the survivors can recover and report.
* Afterwards no child process is left and /dev/shm/hetccl-<job_id>-* is removed; after a fully
  successful run, leftover segments are reported as a failure (segments must be unlinked as soon
  as every rank has mapped them).

* Which hetccl: the checkout's when PYTHONPATH names it or no built hetccl is installed, else the
  installed package (hetccl/_checkout.py): ``IMPORT_ROOT`` stands for the checkout on sys.path and
  PYTHONPATH (the children inherit both) and is the working directory of commands by default.

This module imports only the standard library and hetccl's errors and ops (``use`` pins the chosen
hetccl): the children import it before their env is set.
"""
from __future__ import annotations

import glob
import importlib.util
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import pickle
import secrets
import signal
import socket
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Mapping, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


def _use_chosen_hetccl() -> str:
    """hetccl/_checkout.py's ``use``, loaded by path (nothing of hetccl is imported before)."""
    spec = importlib.util.spec_from_file_location(
        "_hetccl_checkout", os.path.join(REPO_ROOT, "hetccl", "_checkout.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.use(REPO_ROOT)


IMPORT_ROOT = _use_chosen_hetccl()   # first on sys.path: spawned children copy it from here

__all__ = ["run_ranks", "run_ranks_expect_failure", "run_ranks_faulty", "run_command", "start_command",
           "stop_command", "free_port", "shm_segments", "REPO_ROOT", "IMPORT_ROOT"]

EXIT_GRACE = 10.0     # how long a rank that returned may take to exit
FAILURE_GRACE = 10.0  # run_ranks: how long the others get after one rank failed


def free_port(host: str = "127.0.0.1") -> int:
    """hetccl's launcher port picker (below the ephemeral range, see bootstrap/store.py)."""
    from hetccl.bootstrap.store import free_port as pick
    return pick(host)


def shm_segments(job_id: str | None = None) -> list[str]:
    """Paths of /dev/shm/hetccl-* (of one job if ``job_id`` is given)."""
    if not job_id:
        return sorted(glob.glob("/dev/shm/hetccl-*"))
    job = glob.escape(job_id)   # pair segments lead with their owner's pid (memory/reap.py)
    return sorted(glob.glob(f"/dev/shm/hetccl-{job}-*") + glob.glob(f"/dev/shm/hetccl-pair-*-{job}-*"))


def _remove(paths: Sequence[str]) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except OSError:
            pass


# ------------------------------------------------------------------------------------------------
# The child side
# ------------------------------------------------------------------------------------------------
def _child_main(rank: int, size: int, env: dict, payload: bytes, conn) -> None:
    try:
        os.setpgid(0, 0)  # our own group: the parent can kill us with anything we started
    except OSError:
        pass
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        fn, args = pickle.loads(payload)  # imports the test module, now that env is set
        result = fn(rank, size, *args)
        try:
            data = pickle.dumps(("ok", result))
        except Exception:
            data = pickle.dumps(("err", f"rank {rank} returned a result that cannot be pickled:\n"
                                        + traceback.format_exc()))
    except BaseException:
        data = pickle.dumps(("err", traceback.format_exc()))
    try:
        conn.send_bytes(data)
        conn.close()
    except OSError:
        pass
    sys.stdout.flush()
    sys.stderr.flush()


# ------------------------------------------------------------------------------------------------
# The parent side
# ------------------------------------------------------------------------------------------------
def _signal_rank(p: mp.Process, sig: int) -> None:
    try:
        if os.getpgid(p.pid) == p.pid:
            os.killpg(p.pid, sig)
            return
    except (ProcessLookupError, PermissionError, TypeError):
        pass
    try:
        os.kill(p.pid, sig)
    except (ProcessLookupError, TypeError):
        pass


def _kill_all(procs: Sequence[mp.Process]) -> None:
    live = [p for p in procs if p.is_alive()]
    for p in live:
        _signal_rank(p, signal.SIGTERM)
    deadline = time.monotonic() + 2.0
    for p in live:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.pid is not None:
            _signal_rank(p, signal.SIGKILL)  # also any grandchildren left in its group
    for p in procs:
        p.join(5.0)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _child_env(rank: int, size: int, port: int, secret: str, job_id: str,
               env: Mapping[str, str | None] | None, transports) -> dict:
    e: dict[str, str | None] = {
        "HETCCL_RANK": str(rank), "HETCCL_SIZE": str(size),
        "HETCCL_LOCAL_RANK": str(rank), "HETCCL_LOCAL_SIZE": str(size),
        "HETCCL_STORE": f"127.0.0.1:{port}", "HETCCL_SECRET": secret, "HETCCL_JOB_ID": job_id,
        "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
    }
    if env:
        e.update(env)
    if transports is not None:
        e["HETCCL_TRANSPORTS"] = (transports if isinstance(transports, str)
                                  else ",".join(transports))
    return e


def _run(fn: Callable, nranks: int, args: tuple, timeout: float, env, transports,
         failure_grace: float | None, victims=()):
    """Run the group; returns (outcomes, job_id, timed_out_ranks).

    outcomes[r] = ("ok", result) | ("err", text) | ("died", text) (a rank of ``victims`` that
    exited without a result: killed on purpose; its death does not start the failure grace);
    timed_out_ranks lists ranks killed at the deadline (their outcome is ("err", ...) too)."""
    if nranks < 1:
        raise ValueError("nranks must be >= 1")
    try:
        payload = pickle.dumps((fn, tuple(args)))
    except Exception as e:
        raise TypeError(f"run_ranks: {fn!r} and its arguments must be picklable (define the "
                        f"function at module level): {e}") from e
    ctx = mp.get_context("spawn")
    job_id = "t" + secrets.token_hex(4)
    port, secret = free_port(), secrets.token_hex(32)
    procs: list[mp.Process] = []
    conns = []
    msgs: dict[int, tuple[str, Any]] = {}
    exited: set[int] = set()
    timed_out: list[int] = []
    deadline = time.monotonic() + timeout
    stop_reason = None
    try:
        for r in range(nranks):
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_child_main, name=f"hetccl-rank{r}", daemon=True,
                            args=(r, nranks, _child_env(r, nranks, port, secret, job_id, env,
                                                        transports), payload, send))
            p.start()
            send.close()
            procs.append(p)
            conns.append(recv)

        open_conns = {id(c): r for r, c in enumerate(conns)}
        first_failure: float | None = None
        all_msgs_at: float | None = None
        while len(exited) < nranks:
            now = time.monotonic()
            limit, reason = deadline, "deadline"
            if failure_grace is not None and first_failure is not None \
                    and first_failure + failure_grace < limit:
                limit, reason = first_failure + failure_grace, "failure"
            if all_msgs_at is not None and all_msgs_at + EXIT_GRACE < limit:
                limit, reason = all_msgs_at + EXIT_GRACE, "exit"
            if now >= limit:
                stop_reason = reason
                break
            waitables = [conns[r] for r in open_conns.values()]
            waitables += [procs[r].sentinel for r in range(nranks) if r not in exited]
            for obj in mpc.wait(waitables, timeout=limit - now):
                if isinstance(obj, int):
                    r = next(i for i, p in enumerate(procs) if p.sentinel == obj)
                    procs[r].join(1.0)
                    exited.add(r)
                    conn = conns[r]
                    if id(conn) in open_conns and r not in msgs:
                        try:
                            if conn.poll(0):
                                msgs[r] = pickle.loads(conn.recv_bytes())
                        except (EOFError, OSError):
                            pass
                        open_conns.pop(id(conn), None)
                    if (r not in msgs or procs[r].exitcode != 0) and \
                            not (r in victims and r not in msgs):
                        first_failure = first_failure or time.monotonic()
                else:
                    r = open_conns.pop(id(obj), None)
                    if r is None:
                        continue
                    try:
                        msgs[r] = pickle.loads(obj.recv_bytes())
                    except (EOFError, OSError):
                        continue  # closed without a message: the sentinel will tell why
                    if msgs[r][0] != "ok":
                        first_failure = first_failure or time.monotonic()
            if len(msgs) == nranks and all_msgs_at is None:
                all_msgs_at = time.monotonic()
    finally:
        stragglers = [r for r in range(nranks) if r < len(procs) and procs[r].is_alive()]
        _kill_all(procs)
        for c in conns:
            c.close()
        removed = shm_segments(job_id)
        _remove(removed)

    outcomes: list[tuple[str, Any]] = []
    for r, p in enumerate(procs):
        msg = msgs.get(r)
        if r in stragglers:
            if msg is not None and msg[0] == "ok":
                outcomes.append(("err", f"rank {r} returned but its process did not exit within "
                                        f"{EXIT_GRACE:g}s (a non-daemon thread or an atexit "
                                        f"handler hangs?); killed"))
            elif msg is not None:
                outcomes.append(msg)
            else:
                if stop_reason == "failure":
                    why = (f"was still running {failure_grace:g}s after another rank failed; "
                           f"killed")
                else:
                    why = f"did not finish within {timeout:g}s; killed"
                    timed_out.append(r)
                outcomes.append(("err", f"rank {r} {why}"))
        elif msg is None:
            outcomes.append(("died" if r in victims else "err",
                             f"rank {r} {_describe_exit(p.exitcode)} before returning a "
                             f"result (os._exit, a crash, or a signal)"))
        elif msg[0] == "ok" and p.exitcode not in (0, None):
            outcomes.append(("err", f"rank {r} returned but then {_describe_exit(p.exitcode)} "
                                    f"(at interpreter exit)"))
        else:
            outcomes.append(msg)
    return outcomes, job_id, timed_out, removed, [p.exitcode for p in procs]


def run_ranks(fn: Callable, nranks: int, *args, timeout: float = 60.0,
              env: Mapping[str, str | None] | None = None, transports=None,
              failure_grace: float = FAILURE_GRACE, check_shm: bool = True,
              victims: Sequence[int] = ()) -> list:
    """Run ``fn(rank, nranks, *args)`` in ``nranks`` spawned processes; rank-ordered results.

    ``fn`` must be importable (module level) and its result picklable. ``env`` entries are set in
    each child (None unsets); ``transports`` (str or list) becomes HETCCL_TRANSPORTS. Raises
    AssertionError with every failing rank's traceback if any rank fails, and
    "ranks [..] did not finish within Ns" for ranks killed at the shared deadline. Once a rank has
    failed, the others get ``failure_grace`` seconds before they are killed.
    ``victims``: ranks the test kills on purpose (fault injection): one that dies without a result
    is not a failure (its result is None) and the others go on; one that raises still fails the run.
    """
    victims = frozenset(victims)
    outcomes, job_id, timed_out, leftovers, _ = _run(fn, nranks, args, timeout, env, transports,
                                                     failure_grace, victims)
    failed = [(r, text) for r, (state, text) in enumerate(outcomes)
              if state != "ok" and not (state == "died" and r in victims)]
    if failed:
        parts = []
        if timed_out:
            parts.append(f"ranks {timed_out} did not finish within {timeout:g}s")
        for r, text in failed:
            if r in timed_out:
                continue
            parts.append(f"---- rank {r} of {nranks} ----\n{str(text).rstrip()}")
        raise AssertionError(f"{getattr(fn, '__qualname__', fn)} failed on ranks "
                             f"{[r for r, _ in failed]} (job {job_id}):\n" + "\n".join(parts))
    if check_shm and leftovers:
        raise AssertionError(f"every rank succeeded but shared-memory segments were left behind "
                             f"(removed now): {leftovers}; segments must be unlinked once mapped")
    return [value if state == "ok" else None for state, value in outcomes]


def run_ranks_expect_failure(fn: Callable, nranks: int, *args, timeout: float = 60.0,
                             env: Mapping[str, str | None] | None = None,
                             transports=None) -> list[tuple[bool, Any]]:
    """Like run_ranks but never raises for rank failures: per rank (ok, result_or_error_text).

    No early stop: every rank runs until it finishes or the shared deadline passes (a rank killed
    at the deadline gets (False, "rank r did not finish within Ns; killed")).
    """
    outcomes, _, _, _, _ = _run(fn, nranks, args, timeout, env, transports, None)
    return [(state == "ok", value) for state, value in outcomes]


def run_ranks_faulty(fn: Callable, nranks: int, *args, timeout: float = 60.0,
                     env: Mapping[str, str | None] | None = None, transports=None,
                     victims: Sequence[int] = ()) -> list[dict]:
    """For fault injection (tests/faults): run like run_ranks_expect_failure (no early stop),
    ``victims`` as in run_ranks, and report each rank as it ended, never raising for a rank:
    ``{"state", "value", "exitcode"}``, state one of "ok" (value: the result), "err" (value: the
    traceback or why), "died" (a victim that exited without a result), "hang" (killed at the
    deadline); ``exitcode`` is negative for a signal death. Leftover segments of the job are
    removed and listed in every rank's ``"leftovers"``."""
    outcomes, _, timed_out, leftovers, codes = _run(fn, nranks, args, timeout, env, transports, None,
                                                    frozenset(victims))
    return [{"state": "hang" if r in timed_out else state, "value": value, "exitcode": codes[r],
             "leftovers": leftovers} for r, (state, value) in enumerate(outcomes)]


# ------------------------------------------------------------------------------------------------
# Subprocesses (hetccl run, mpirun, torchrun ...)
# ------------------------------------------------------------------------------------------------
def _command_env(env: Mapping[str, str | None] | None) -> dict:
    full = dict(os.environ)
    path = full.get("PYTHONPATH", "")
    if IMPORT_ROOT not in path.split(os.pathsep):
        full["PYTHONPATH"] = IMPORT_ROOT + (os.pathsep + path if path else "")
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    return full


def _ompi_job():
    """bench/ompi_job.py (job_files, end_job), loaded by path like hetccl/_checkout.py: the bench
    runners that start mpirun use the same module."""
    spec = importlib.util.spec_from_file_location("_hetccl_ompi_job", os.path.join(REPO_ROOT, "bench", "ompi_job.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ompi_job = _ompi_job()
job_files, end_job = ompi_job.job_files, ompi_job.end_job


def start_command(cmd: Sequence[str], env: Mapping[str, str | None] | None = None,
                  cwd: str | None = None, output: str | None = None) -> subprocess.Popen:
    """Start ``cmd`` in a new session (its own process group), text pipes for stdout/stderr, or
    both into the file ``output`` (for a command left running unread: a full pipe would stop it).

    ``IMPORT_ROOT`` is put on PYTHONPATH and is the working directory unless ``cwd`` is given (so
    ``python -c``/``-m`` import the chosen hetccl); ``env`` entries override (None unsets)."""
    if output is None:
        out, err = subprocess.PIPE, subprocess.PIPE
    else:
        out, err = open(output, "w"), subprocess.STDOUT
    full = _command_env(env)
    files = job_files(cmd, full)
    try:
        p = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True,
                             env=full, cwd=IMPORT_ROOT if cwd is None else cwd, start_new_session=True)
    except BaseException:
        end_job(None, files)
        raise
    finally:
        if output is not None:
            out.close()                                # the child holds its own copy
    p.job_files = files
    return p


def stop_command(p: subprocess.Popen) -> None:
    """SIGKILL the command's whole session (whatever is left of it: an mpirun's ranks too), reap
    it, and remove the Open MPI job's own files (``job_files``)."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    end_job(p.pid)               # before the reap: an unreaped leader keeps its session id reserved
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        pass
    end_job(None, getattr(p, "job_files", None))


def run_command(cmd: Sequence[str], timeout: float, env: Mapping[str, str | None] | None = None,
                cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` to completion in its own process group; kill the whole group afterwards.

    On timeout the group is killed and AssertionError is raised with the output so far."""
    p = start_command(cmd, env, cwd)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_command(p)
        try:
            out, err = p.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            out, err = "", ""
        raise AssertionError(f"{' '.join(cmd)} did not finish within {timeout:g}s (killed its "
                             f"process group)\n--- stdout ---\n{out}\n--- stderr ---\n{err}")
    finally:
        stop_command(p)
    return subprocess.CompletedProcess(list(cmd), p.returncode, out, err)
