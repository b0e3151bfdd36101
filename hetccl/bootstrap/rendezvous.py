"""Get every rank of a job connected to one store, whatever launched the job.

Why: the store is the only thing that has to be found without help; everything else (data links,
topology, communicator ids) is exchanged through it. ``connect_store`` picks the first workable way:

1. one rank: an in-process store on 127.0.0.1 (no configuration needed);
2. torchrun with its agent store on MASTER_PORT (the default): rank 0 serves our store on a free
   port and publishes ``host:port`` (and a fresh secret if HETCCL_SECRET is unset) through torch's
   TCPStore — so that secret is only as private as torch's own, unauthenticated store;
3. a known address (HETCCL_STORE, or MASTER_ADDR/MASTER_PORT): rank 0 binds it, everyone connects;
4. no address under mpirun (Open MPI or MPICH) with mpi4py: rank 0 serves on a free port and
   broadcasts ``host:port`` plus a fresh random secret (unless HETCCL_SECRET is set) with an MPI
   byte broadcast (nothing is pickled). This initialises MPI through mpi4py;
5. otherwise: InvalidUsage telling the user what to set.

The job id (names shared-memory segments) comes from the launcher, or rank 0 makes 8 hex digits;
rank 0 always publishes it under the store key "job_id".

Secure by default: every way above ends with a job secret (the user's HETCCL_SECRET or
HETCCL_SECRET_FILE, ``hetccl run``'s, or one rank 0 draws and sends through MPI or torch's store),
except a known address without a configured secret. Under mpirun that address still gets its secret
through MPI when mpi4py is there. A job confined to loopback (store on a loopback address, every rank
on this host) gets one through a key file only this user can read: rank 0 writes a fresh secret to
``$XDG_RUNTIME_DIR`` (else /tmp/hetccl-<uid>, mode 0700) before it binds the store, the others read
it once connected. Any other job without a secret is refused before anything listens, with an error
naming the fixes, unless the user opted out with HETCCL_INSECURE=1 (a WARNING on every rank).
"""
from __future__ import annotations

import functools
import ipaddress
import logging
import os
import re
import secrets as _secrets
import socket
import stat
from typing import NamedTuple

from ..errors import HetcclError, HetcclTimeout, InvalidUsage, PeerLostError
from .env import LaunchInfo, parse_host_port, parse_secret, read_secret_file
from .store import StoreClient, StoreServer

log = logging.getLogger("hetccl.bootstrap")

__all__ = ["StoreConnection", "connect_store", "primary_address"]

CAUSE_WAIT = 2.0   # s a rank that lost a peer while joining waits for that peer's posted reason
_calls = 0  # connect_store calls in this process: keys exchanged via a foreign store stay distinct


class StoreConnection(NamedTuple):
    """What ``connect_store`` returns; unpacks as (client, server, job_id, info)."""

    client: StoreClient
    server: StoreServer | None        # only on the rank that serves the store (rank 0)
    job_id: str                       # agreed by every rank
    info: LaunchInfo                  # with the store address, secret and job id actually used

    def abort(self, error: BaseException, grace: float = 30.0) -> BaseException:
        """This rank failed while joining: post why, so every other rank raises now rather than
        at its timeout; rank 0 then serves up to ``grace`` s more, until every rank has been
        told. Call close() afterwards. No grace after a timeout (the missing ranks had their
        chance; the ranks already waiting are told at once) or Ctrl-C (the user wants out).

        Returns the error this rank should raise: ``error``, or the first failure's when ``error``
        only says that a peer closed its connection (PeerLostError) and that peer posts why within
        ``CAUSE_WAIT`` s: it closes its links before it posts, so its reason is usually on the way
        (a full /dev/shm on its side then reads as that on every rank, not as a lost peer)."""
        if isinstance(error, PeerLostError) and self.client.abort_reason is None:
            try:
                self.client.get(f"{self.job_id}/never-set/start-abort", timeout=min(CAUSE_WAIT, grace))
            except HetcclError as e:
                if self.client.abort_reason is not None:
                    error = e
        cls = "InvalidUsage" if isinstance(error, InvalidUsage) else type(error).__name__
        if self.client.abort_reason is None:
            self.client.abort(cls, f"rank {self.info.rank} failed: {error}")
        if self.server is not None and not isinstance(error, (HetcclTimeout, KeyboardInterrupt)):
            others = [r for r in range(self.info.size) if r != self.info.rank]
            if not self.server.wait_told(others, grace):
                log.info("closing the store before every rank learned that the job stopped")
        return error

    def close(self, timeout: float = 10.0) -> None:
        """Close the client; on rank 0 then wait up to ``timeout`` s until every other rank has
        closed its client or exited before the server stops (so no rank loses the answer to its
        last request)."""
        self.client.close()
        if self.server is not None:
            self.server.close(wait_for_clients=timeout)


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def primary_address() -> str:
    """This host's address on its default route (no packet is sent), else its hostname's."""
    for target in ("10.255.255.255", "192.0.2.1"):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((target, 1))
                ip = s.getsockname()[0]
            if not ipaddress.ip_address(ip).is_loopback:
                return ip
        except OSError:
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _bind_host(host: str, single_host: bool) -> str:
    """Where rank 0 binds to serve ``host``: that address if it is one of ours, else a wildcard.

    A name that resolves to loopback here (e.g. Debian's 127.0.1.1 for the hostname) is bound as
    is only if all ranks are on this host; other hosts reach us through another address."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        log.warning("cannot resolve store host %r on rank 0; serving on all interfaces", host)
        return "0.0.0.0"
    # IPv4 first: clients given a name may resolve it to IPv4 only
    infos.sort(key=lambda i: i[0] != socket.AF_INET)
    v6 = False
    for fam, _, _, _, sa in infos:
        ip = sa[0]
        v6 |= fam == socket.AF_INET6
        try:
            with socket.socket(fam, socket.SOCK_STREAM) as s:
                s.bind((ip, 0))
        except OSError:
            continue  # not an address of this host
        if ipaddress.ip_address(ip.split("%")[0]).is_loopback and not single_host:
            break
        return ip
    return "::" if v6 and all(f == socket.AF_INET6 for f, *_ in infos) else "0.0.0.0"


def _payload(addr: str, secret_hex: str, job_id: str) -> bytes:
    return f"{addr}\n{secret_hex}\n{job_id}".encode()


def _unpayload(data: bytes, info: LaunchInfo, source: str):
    text = data.decode("utf-8", "replace")
    if text.startswith("ERR\n"):
        raise InvalidUsage(f"rank 0 could not start the hetccl store: {text[4:]}")
    addr, secret_hex, job_id = (text.split("\n") + ["", ""])[:3]
    host, port = parse_host_port(addr, f"the store address from {source}")
    secret = info.secret if info.secret is not None else parse_secret(secret_hex)
    return (host, port), secret, (info.job_id or job_id)


def _serve_on_free_port(info: LaunchInfo, publish_host: str | None):
    """Rank 0: a server on a free port. Returns (server, payload to publish, secret, job_id)."""
    single = info.local_size >= info.size
    host = publish_host or ("127.0.0.1" if single else primary_address())
    secret = info.secret if info.secret is not None else _secrets.token_bytes(32)
    job_id = info.job_id or _secrets.token_hex(4)
    bind = "127.0.0.1" if (single and host == "127.0.0.1") else ("::" if ":" in host else "0.0.0.0")
    server = StoreServer(bind, 0, secret)
    shared = "" if info.secret is not None else secret.hex()
    return server, _payload(_fmt(host, server.port), shared, job_id), secret, job_id


def _loopback_only(info: LaunchInfo, host: str) -> bool:
    """True when the whole job stays on this host's loopback: the store is on a loopback address,
    every rank is local, and HETCCL_SOCKET_IFNAME does not send the listeners elsewhere."""
    if info.local_size < info.size:
        return False
    ifname = os.environ.get("HETCCL_SOCKET_IFNAME", "")
    if ifname and not ifname.lstrip("=").startswith("lo"):
        return False
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(sa[0].split("%")[0]).is_loopback
                               for *_, sa in infos)


def require_secret(info: LaunchInfo, host: str) -> None:
    """Refuse a job without a secret unless HETCCL_INSECURE=1 (then warn). ``host`` is the
    store's host. Called before anything binds or connects."""
    if info.secret is not None:
        return
    if info.insecure:
        log.warning("rank %d: HETCCL_INSECURE=1 and no job secret: the store at %s and every data "
                    "link are NOT authenticated; anyone who can reach these ports can join or "
                    "inject data", info.rank, host)
        return
    raise InvalidUsage(
        f"rank {info.rank}: refusing to start an unauthenticated job: the store at {host} is not "
        f"confined to loopback and no job secret is set (launcher: {info.launcher}). Fix: put a "
        f"secret in a file only you can read and point every rank at it "
        f"(`(umask 077; hetccl secret > ~/.hetccl-secret)` then HETCCL_SECRET_FILE=~/.hetccl-secret), "
        f"or set the same HETCCL_SECRET on every rank, or launch with `hetccl run`. To run "
        f"unauthenticated anyway, set HETCCL_INSECURE=1")


def _private_dir() -> str:
    """A directory only this user can enter: $XDG_RUNTIME_DIR, else /tmp/hetccl-<uid> (0700)."""
    uid = os.getuid()
    for path in (os.environ.get("XDG_RUNTIME_DIR", ""), f"/tmp/hetccl-{uid}"):
        if not path:
            continue
        if path.startswith("/tmp/hetccl-"):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
            except OSError:
                continue
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077:
            return path
    raise InvalidUsage("no private directory for the job's key file ($XDG_RUNTIME_DIR, or "
                       f"/tmp/hetccl-{uid} owned by you with mode 0700); set HETCCL_SECRET_FILE "
                       f"or HETCCL_SECRET on every rank instead")


def key_file(addr: tuple[str, int]) -> str:
    """Where rank 0 of a loopback job leaves the secret for the others (one per store address)."""
    host = re.sub(r"[^A-Za-z0-9_.]", "_", addr[0])
    return os.path.join(_private_dir(), f"hetccl-store-{host}-{addr[1]}.key")


def _write_key_file(path: str) -> bytes:
    secret = _secrets.token_bytes(32)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, secret.hex().encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return secret


def _read_key_file(path: str, rank: int) -> bytes:
    try:
        return read_secret_file(path)
    except InvalidUsage as e:
        raise InvalidUsage(f"rank {rank}: cannot read the job's key file that rank 0 writes on "
                           f"this host ({e}). Do all ranks run as the same user? Otherwise set "
                           f"HETCCL_SECRET_FILE or HETCCL_SECRET on every rank") from None


def _secret_via_mpi(info: LaunchInfo) -> bytes | None:
    """Under mpirun with a known store address: rank 0 draws the secret and broadcasts it."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != info.size or comm.Get_rank() != info.rank:
        return None
    buf = bytearray(_secrets.token_bytes(32) if info.rank == 0 else 32)
    comm.Bcast([buf, MPI.BYTE], root=0)
    return bytes(buf)


def _warn_torch_store(info: LaunchInfo, host: str) -> None:
    if info.rank == 0 and info.secret is None and not _loopback_only(info, host):
        log.warning(
            "no job secret set: rank 0 sends a fresh one to the other ranks through torchrun's "
            "TCPStore at %s, which is not authenticated: anyone who can reach that port while the "
            "job starts can read it and then join the job. Set HETCCL_SECRET_FILE (a file only you "
            "can read, e.g. `(umask 077; hetccl secret > ~/.hetccl-secret)`) on every rank to keep "
            "it off the network", _fmt(*info.store_addr))


def _via_mpi(info: LaunchInfo):
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != info.size or comm.Get_rank() != info.rank:
        raise InvalidUsage(
            f"MPI says rank {comm.Get_rank()} of {comm.Get_size()}, the launcher environment says "
            f"rank {info.rank} of {info.size}; set HETCCL_STORE=host:port (or MASTER_ADDR and "
            f"MASTER_PORT) so hetccl does not need MPI to find its store")
    buf = bytearray(1024)
    server = None
    if info.rank == 0:
        try:
            server, data, _, _ = _serve_on_free_port(info, None)
        except Exception as e:  # the others must not hang in the broadcast
            data = f"ERR\n{e}".encode()
        buf[:len(data)] = data[:1024]
    comm.Bcast([buf, MPI.BYTE], root=0)
    data = bytes(buf).rstrip(b"\0")
    addr, secret, job_id = _unpayload(data, info, "MPI")
    return addr, secret, job_id, server


def _via_torch_store(info: LaunchInfo, timeout: float, call: int):
    from datetime import timedelta

    from torch.distributed import TCPStore

    host, port = info.store_addr
    tstore = TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout))
    key = f"hetccl/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{call}/store"
    server = None
    if info.rank == 0:
        try:
            server, data, _, _ = _serve_on_free_port(
                info, host if info.local_size < info.size else "127.0.0.1")
        except Exception as e:
            tstore.set(key, f"ERR\n{e}".encode())
            raise
        tstore.set(key, data)
    else:
        data = bytes(tstore.get(key))
    addr, secret, job_id = _unpayload(data, info, "torchrun's store")
    return addr, secret, job_id, server


def connect_store(info: LaunchInfo, timeout: float = 300.0) -> StoreConnection:
    """Connect this rank to the job's store (rank 0 also starts it); see the module docstring.

    Every rank must call this (it is collective). ``timeout`` bounds how long ranks wait for each
    other here and is the default timeout of the returned client.
    """
    global _calls
    _calls += 1
    if _calls == 1:
        from ..memory.reap import reap_dead
        reap_dead()             # segments of ranks killed in an earlier job on this host
    server: StoreServer | None = None
    secret, job_id = info.secret, info.job_id
    keyfile = None
    try:
        if info.size == 1:
            secret = secret if secret is not None else _secrets.token_bytes(32)
            server = StoreServer("127.0.0.1", 0, secret)
            addr = server.address
            job_id = job_id or _secrets.token_hex(4)
        elif info.store_is_torch and info.store_addr is not None:
            _warn_torch_store(info, info.store_addr[0])
            addr, secret, job_id, server = _via_torch_store(info, timeout, _calls)
        elif info.store_addr is not None:
            addr = info.store_addr
            if secret is None and info.launcher in ("openmpi", "mpich"):
                secret = _secret_via_mpi(info)
            if secret is None and _loopback_only(info, addr[0]):
                keyfile = key_file(addr)
                if info.rank == 0:
                    secret = _write_key_file(keyfile)
                else:
                    secret = functools.partial(_read_key_file, keyfile, info.rank)
            else:
                require_secret(info.replace(secret=secret), addr[0])
            if info.rank == 0:
                server = StoreServer(_bind_host(addr[0], info.local_size >= info.size), addr[1],
                                     secret, keyfile)
        elif info.launcher in ("openmpi", "mpich") and (got := _via_mpi(info)) is not None:
            addr, secret, job_id, server = got
        else:
            raise InvalidUsage(
                f"rank {info.rank} of {info.size} (launcher: {info.launcher}) does not know where "
                f"the hetccl store is. Set MASTER_ADDR and MASTER_PORT (rank 0's host and a free "
                f"port), or HETCCL_STORE=host:port, on every rank; or launch with "
                f"`hetccl run -n N ...`; or under mpirun install mpi4py")
        client = StoreClient(addr, secret, info.rank, timeout)
        secret = client.secret
    except BaseException:
        if server is not None:
            server.close()
        raise
    try:
        if info.rank == 0:
            job_id = job_id or _secrets.token_hex(4)
            client.set("job_id", job_id.encode())
        elif not job_id:
            job_id = client.get("job_id", timeout).decode("ascii", "replace")
    except BaseException:
        client.close()
        if server is not None:
            server.close()
        raise
    log.debug("rank %d connected to the store at %s (job %s)", info.rank, _fmt(*addr), job_id)
    final = info.replace(store_addr=tuple(addr), secret=secret, job_id=job_id)
    return StoreConnection(client, server, job_id, final)
