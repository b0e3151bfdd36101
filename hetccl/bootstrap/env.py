"""Find out who we are: rank, world size and where the store is, from whatever launched us.

Why: users start jobs with ``hetccl run``, ``torchrun``, ``mpirun`` (Open MPI or MPICH/Hydra) or
``srun``; each announces ranks through its own environment variables. ``detect()`` reads them in a
fixed order (first match wins) so ``hetccl.init()`` needs no arguments under any of them:

1. explicit ``detect(rank=, size=)`` arguments,
2. ``hetccl run``: HETCCL_RANK, HETCCL_SIZE, HETCCL_LOCAL_RANK, HETCCL_LOCAL_SIZE,
3. torchrun / torch ``env://``: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
4. Open MPI: OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE,
5. MPICH / Hydra / Intel MPI: PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS,
6. Slurm ``srun``: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE
   (or SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE with SLURM_NODEID),
7. nothing: rank 0 of 1.

Independently of the launcher:

* store address: HETCCL_STORE="host:port" (``[v6addr]:port`` for IPv6), else MASTER_ADDR +
  MASTER_PORT, else None (the rendezvous then falls back to MPI, see rendezvous.py);
* secret: HETCCL_SECRET, else the contents of HETCCL_SECRET_FILE (a regular file of this user that
  no one else may read: mode 0600 or 0400; else InvalidUsage saying to chmod it). If it is at least
  32 hex digits of even length it is hex-decoded (that is what ``hetccl run`` generates: 64 hex
  digits = 32 random bytes); any other string is used as its UTF-8 bytes. Neither -> None: the
  rendezvous then gets one from the launcher, or refuses to start off loopback (rendezvous.py);
* insecure: HETCCL_INSECURE=1 is the explicit opt-out that lets a job without a secret run
  unauthenticated beyond loopback (logged as a WARNING on every rank);
* job id: HETCCL_JOB_ID, else torchrun's TORCHELASTIC_RUN_ID (+ restart count), else Slurm's
  SLURM_JOB_ID.SLURM_STEP_ID, else "" (rendezvous then lets rank 0 generate one). It names
  shared-memory segments (/dev/shm/hetccl-<job_id>-*), so it is reduced to [A-Za-z0-9_.-].

local_rank/local_size are the launcher's word; when the launcher does not say (explicit args,
torch ``env://`` without LOCAL_*), we assume a single host (local = global). Topology discovery
should confirm locality from host identities exchanged through the store.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, replace
from typing import Mapping

from ..errors import InvalidUsage

__all__ = ["LaunchInfo", "detect", "parse_host_port", "parse_secret", "job_secret",
           "read_secret_file", "insecure_opt_out"]


@dataclass(frozen=True)
class LaunchInfo:
    """Who this process is in the job, and how to reach the job's store."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    store_addr: tuple[str, int] | None
    secret: bytes | None
    job_id: str
    launcher: str  # "explicit", "hetccl", "torchrun", "env", "openmpi", "mpich", "slurm", "none"
    # True when store_addr is torchrun's own agent TCPStore (TORCHELASTIC_USE_AGENT_STORE=True):
    # the port is taken, so the rendezvous publishes our store's address through it instead.
    store_is_torch: bool = False
    insecure: bool = False            # HETCCL_INSECURE=1: run unauthenticated if no secret is had

    def replace(self, **changes) -> "LaunchInfo":
        return replace(self, **changes)


_SAFE_JOB_ID = re.compile(r"[^A-Za-z0-9_.-]")
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def parse_secret(text: str | None) -> bytes | None:
    """HETCCL_SECRET -> key bytes: hex-decoded if >= 32 hex digits of even length, else UTF-8."""
    if not text:
        return None
    if len(text) >= 32 and len(text) % 2 == 0 and _HEX.match(text):
        return bytes.fromhex(text)
    return text.encode("utf-8")


def read_secret_file(path: str) -> bytes:
    """The secret in ``path`` (HETCCL_SECRET_FILE): InvalidUsage unless it is a regular file of this
    user that no other user can read, and not empty. Whitespace around it is ignored."""
    where = f"HETCCL_SECRET_FILE={path!r}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        raise InvalidUsage(f"{where}: cannot open it ({e.strerror}); point it at a file only you "
                           f"can read, e.g. made with `umask 077; hetccl secret > FILE`") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidUsage(f"{where} is not a regular file")
        if st.st_uid != os.getuid():
            raise InvalidUsage(f"{where} belongs to uid {st.st_uid}, not to you (uid "
                               f"{os.getuid()}); use a secret file of your own")
        if st.st_mode & 0o077:
            raise InvalidUsage(f"{where} can be read by other users (mode "
                               f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`")
        text = os.read(fd, 4097)
    finally:
        os.close(fd)
    if len(text) > 4096:
        raise InvalidUsage(f"{where} is larger than 4 KiB; it should hold one secret")
    secret = parse_secret(text.decode("utf-8", "replace").strip())
    if not secret:
        raise InvalidUsage(f"{where} is empty; put a secret in it (e.g. `hetccl secret > FILE`)")
    return secret


def job_secret(env: Mapping[str, str] | None = None) -> bytes | None:
    """The job secret the user configured: HETCCL_SECRET, else HETCCL_SECRET_FILE's, else None."""
    env = os.environ if env is None else env
    secret = parse_secret(env.get("HETCCL_SECRET"))
    if secret is None and env.get("HETCCL_SECRET_FILE"):
        secret = read_secret_file(env["HETCCL_SECRET_FILE"])
    return secret


def insecure_opt_out(env: Mapping[str, str] | None = None) -> bool:
    """HETCCL_INSECURE=1 (or true/yes/on): the user accepts an unauthenticated job."""
    env = os.environ if env is None else env
    return env.get("HETCCL_INSECURE", "").strip().lower() in ("1", "true", "yes", "on")


def parse_host_port(text: str, var: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port); InvalidUsage naming ``var`` otherwise."""
    hint = (f"{var}={text!r} is not a valid host:port; set it like {var}=10.0.0.1:29500 "
            f"(IPv6: {var}=[fe80::1]:29500)")
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:  # bare IPv6 without brackets: ambiguous
            raise InvalidUsage(hint)
    if not sep or not host:
        raise InvalidUsage(hint)
    return host, _port(port, var, hint)


def _port(text: str, var: str, hint: str | None = None) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise InvalidUsage(hint or f"{var}={text!r} is not a TCP port; set it to a number in "
                                   f"1..65535 that is free on the host of rank 0")
    return port


def _int(env: Mapping[str, str], var: str, launcher_hint: str) -> int:
    text = env[var]
    try:
        return int(text.strip())
    except ValueError:
        raise InvalidUsage(f"{var}={text!r} is not an integer; {launcher_hint}") from None


def _read_group(env: Mapping[str, str], names: tuple[str, str, str, str], hint: str):
    """(rank, size, local_rank|None, local_size|None) from a launcher's four variables."""
    rank_v, size_v, lrank_v, lsize_v = names
    if size_v not in env:
        raise InvalidUsage(f"{rank_v} is set but {size_v} is not; {hint}")
    rank, size = _int(env, rank_v, hint), _int(env, size_v, hint)
    lrank = _int(env, lrank_v, hint) if env.get(lrank_v, "") != "" else None
    lsize = _int(env, lsize_v, hint) if lsize_v and env.get(lsize_v, "") != "" else None
    return rank, size, lrank, lsize


def _slurm_local_size(env: Mapping[str, str]) -> int | None:
    text = env.get("SLURM_NTASKS_PER_NODE", "")
    if text.strip().isdigit():
        return int(text)
    # "2(x3),1": tasks per node, run-length encoded, indexed by SLURM_NODEID.
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    node = env.get("SLURM_NODEID", "")
    if not spec or not node.isdigit():
        return None
    counts: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            return None
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    node_id = int(node)
    return counts[node_id] if node_id < len(counts) else None


def _job_id(env: Mapping[str, str], launcher: str) -> str:
    job = env.get("HETCCL_JOB_ID", "")
    if not job and launcher == "torchrun":
        run_id = env.get("TORCHELASTIC_RUN_ID", "")
        if run_id and run_id != "none":  # "none" is torchrun's default, shared by every job
            job = f"{run_id}.{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if not job and launcher == "slurm" and env.get("SLURM_JOB_ID"):
        job = env["SLURM_JOB_ID"]
        step = env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID")
        if step:
            job += f".{step}"
    return _SAFE_JOB_ID.sub("_", job)[:64]


def _store_addr(env: Mapping[str, str]) -> tuple[str, int] | None:
    if env.get("HETCCL_STORE"):
        return parse_host_port(env["HETCCL_STORE"], "HETCCL_STORE")
    addr, port = env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", "")
    if addr and port:
        return addr.strip().strip("[]"), _port(port, "MASTER_PORT")
    if addr or port:
        have, missing = ("MASTER_ADDR", "MASTER_PORT") if addr else ("MASTER_PORT", "MASTER_ADDR")
        raise InvalidUsage(f"{have} is set but {missing} is not; set both (the host of rank 0 "
                           f"and a free port on it), or set HETCCL_STORE=host:port instead")
    return None


def detect(rank: int | None = None, size: int | None = None,
           env: Mapping[str, str] | None = None) -> LaunchInfo:
    """Describe this process's place in the job; see the module docstring for the sources.

    ``env`` defaults to os.environ (tests pass a dict). Raises InvalidUsage naming the variable to
    fix when a launcher's variables are inconsistent (rank >= size, non-integers, bad host:port).
    """
    env = os.environ if env is None else env
    lrank = lsize = None
    if rank is not None or size is not None:
        if rank is None or size is None:
            raise InvalidUsage("pass both rank= and size= (or neither, to read them from the "
                               "launcher's environment)")
        launcher = "explicit"
        hint = "pass rank= and size= as integers"
        try:
            rank, size = int(rank), int(size)
        except (TypeError, ValueError):
            raise InvalidUsage(f"rank={rank!r} and size={size!r} must be integers") from None
        if env.get("HETCCL_LOCAL_RANK", "") != "" and env.get("HETCCL_SIZE") == str(size):
            lrank = _int(env, "HETCCL_LOCAL_RANK", "unset it or set an integer")
            if env.get("HETCCL_LOCAL_SIZE", "") != "":
                lsize = _int(env, "HETCCL_LOCAL_SIZE", "unset it or set an integer")
    elif "HETCCL_RANK" in env:
        launcher = "hetccl"
        hint = ("set HETCCL_RANK, HETCCL_SIZE (and optionally HETCCL_LOCAL_RANK, "
                "HETCCL_LOCAL_SIZE) to integers, or launch with `hetccl run -n N`")
        rank, size, lrank, lsize = _read_group(
            env, ("HETCCL_RANK", "HETCCL_SIZE", "HETCCL_LOCAL_RANK", "HETCCL_LOCAL_SIZE"), hint)
    elif "RANK" in env and "WORLD_SIZE" in env:
        launcher = "torchrun" if env.get("TORCHELASTIC_RUN_ID") else "env"
        hint = "torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE to integers"
        rank, size, lrank, lsize = _read_group(
            env, ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"), hint)
    elif "OMPI_COMM_WORLD_RANK" in env:
        launcher = "openmpi"
        hint = "these are set by Open MPI's mpirun; do not set them by hand"
        rank, size, lrank, lsize = _read_group(
            env, ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                  "OMPI_COMM_WORLD_LOCAL_SIZE"), hint)
    elif "PMI_RANK" in env:
        launcher = "mpich"
        hint = "these are set by MPICH's mpiexec (Hydra); do not set them by hand"
        rank, size, lrank, lsize = _read_group(
            env, ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"), hint)
    elif "SLURM_PROCID" in env and ("SLURM_NTASKS" in env or "SLURM_STEP_NUM_TASKS" in env):
        launcher = "slurm"
        hint = "these are set by Slurm's srun; do not set them by hand"
        size_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        rank, size, lrank, _ = _read_group(env, ("SLURM_PROCID", size_var, "SLURM_LOCALID", ""),
                                           hint)
        lsize = _slurm_local_size(env)
    else:
        launcher, hint = "none", ""
        rank, size = 0, 1

    if size < 1:
        raise InvalidUsage(f"world size is {size} (from the {launcher} launcher); it must be >= 1. "
                           f"{hint}")
    if not 0 <= rank < size:
        raise InvalidUsage(f"rank {rank} is not in 0..{size - 1} (from the {launcher} launcher); "
                           f"{hint}")
    if lrank is None or lsize is None:
        # The launcher did not say how ranks are spread over hosts: assume one host.
        if lrank is None:
            lrank = rank if lsize is None else rank % lsize
        if lsize is None:
            lsize = size
    if not (1 <= lsize <= size and 0 <= lrank < lsize):
        raise InvalidUsage(f"local rank {lrank} of local size {lsize} is inconsistent with rank "
                           f"{rank} of {size} (from the {launcher} launcher); {hint}")

    store_is_torch = (launcher == "torchrun" and not env.get("HETCCL_STORE")
                      and env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true")
    return LaunchInfo(rank=rank, size=size, local_rank=lrank, local_size=lsize,
                      store_addr=_store_addr(env), secret=job_secret(env),
                      job_id=_job_id(env, launcher), launcher=launcher,
                      store_is_torch=store_is_torch, insecure=insecure_opt_out(env))
