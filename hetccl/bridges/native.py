"""The Bridge that drives a native communicator of any vendor row (vendor.py): the NCCL family,
HCCL, CNCL and BKCL share it, through the one Cython binding (_native/ccl_api.pyx).

The dtype/op tables are per vendor *and* version (ncclAvg and ncclBfloat16 from NCCL 2.10, fp8
from 2.24), and anything a table lacks is reported by ``supports()`` so the caller runs hetccl's
own algorithm instead: a bridge never approximates.

Staging (``device_buffer`` / ``copy_in`` / ``copy_out``, what collectives/islands.Staging needs to
hand host arrays to a device bridge, and ``host_buffer`` for the host side of a device buffer that
crosses islands): buffers come from a per-bridge pool of power-of-two size classes, allocated with
the runtime's own allocator the first time a class is needed, handed back with ``release_buffer``
and reused, and freed on close/abort. A steady stream of calls of one shape allocates nothing.

Data movement without reduction (allgather, broadcast, send/recv) is done as bytes (the vendor's
8-bit type, count x itemsize), so every hetccl dtype moves, including int16 and bool, which NCCL
has no enum for.
"""
from __future__ import annotations

import ctypes
import logging
import os

from .. import config
from .. import dtypes as _dt
from .._native.ccl_api import (NCCL_IN_PROGRESS, WAIT_ASYNC, WAIT_CALL, WAIT_OK, WAIT_TIMEOUT, WAITER_ERRORS,
                               StreamWaiter)
from ..errors import HetcclTimeout, InvalidUsage
from ..ops import ReduceOp
from .base import Bridge, BridgeError, BridgeUnavailable
from .device_buffers import (DEVICE_TO_DEVICE, DEVICE_TO_HOST, DL_EXT_DEV, HOST_TO_DEVICE, DeviceBuffer,
                      as_device_buffer)
from .loader import device_status, load_library, load_runtime, unconfirmed_reason
from .vendor import Vendor, version_string

log = logging.getLogger("hetccl.bridges")

REDUCING = ("allreduce", "reduce_scatter", "reduce")
MIN_CLASS = 4096             # smallest staging allocation (bytes): tiny calls share one class
NONBLOCKING_SINCE = 21400    # NCCL 2.14: ncclCommInitRankConfig with ncclConfig_t.blocking
SHRINK_SINCE = 22700         # NCCL 2.27: ncclCommShrink
NCCL_SHRINK_ABORT = 1        # nccl.h: end the parent's operations in flight, then shrink
NONBLOCKING_ROLES = ("comm_init_config", "comm_get_async_error", "comm_abort")


def size_class(nbytes: int) -> int:
    """The pool's allocation size for a request: the next power of two, at least MIN_CLASS."""
    return max(MIN_CLASS, 1 << max(0, int(nbytes) - 1).bit_length())
MOVING = ("allgather", "broadcast", "send", "recv")


# ------------------------------------------------------------------------------------------------
# The bridge
# ------------------------------------------------------------------------------------------------
class NativeBridge(Bridge):
    """An island's communicator on a native library (NCCL family, HCCL, CNCL, BKCL).

    Created collectively by the island's ``size`` ranks. ``store`` is hetccl's Store (``set``,
    ``multi_get``); ``key`` a prefix unique to this island and communicator. Before anything that
    could block, every rank publishes whether it can run (library, runtime, device) and all read
    everyone's answer: a rank without a device makes *every* rank raise BridgeUnavailable naming
    it, instead of leaving the others blocked in CommInitRank. Then rank 0 makes the unique id
    (NCCL) or root info (HCCL), every rank reads it from the store and joins.

    ``device`` defaults to HETCCL_LOCAL_RANK (else the island rank) modulo the devices seen.
    ``timeout`` (default: the communicator's, ``hetccl.config.timeout()``: HETCCL_TIMEOUT, else
    600 s) bounds each store exchange, the join, and every wait for a stream; a timeout or an
    asynchronous error aborts the communicator, which cannot be used afterwards.

    The join has a deadline ``timeout`` in every family. An NCCL-family library that exports
    CommInitRankConfig, CommGetAsyncError and CommAbort and reports version 2.14 or later (NCCL,
    RCCL, and any clone by the same rule) joins with ``blocking = 0`` and is polled; past
    ``timeout`` it is aborted. Every other join (older NCCL, clones without those symbols,
    HCCL's HcclCommInitRootInfo, CNCL's cnclInitComms, BKCL's bkcl_init_rank) is a blocking call
    that runs in a helper thread the caller polls; past ``timeout`` the caller stops waiting and
    the helper, still inside the library, destroys the communicator should the join ever
    complete (those libraries have no way to cancel a join). Either way every rank raises
    HetcclTimeout naming the island ranks that never started joining (they died or hung after
    the agreement) or, when all did, the library's own wire-up. A non-blocking communicator stays
    non-blocking: its calls may return ncclInProgress, which the waits handle.

    A row whose ABI no public source confirms (``Vendor.unconfirmed``, e.g. the stock BKCL row)
    never runs: every island rank raises BridgeUnavailable saying what is missing.
    """

    def __init__(self, vendor: Vendor, store, key: str, rank: int, size: int, *, device=None,
                 timeout: float | None = None, library_path=None, runtime_path=None):
        super().__init__(rank, size)
        self.vendor, self.kind, self.memory = vendor, vendor.kind, vendor.memory
        self._comm = self._stream = 0
        self._closed = True
        self._waiter = None
        self._pool = {}          # size class -> free DeviceBuffers of that class
        self._owned = {}         # ptr -> (size class, pinned host?) of every live allocation
        self._host_pool = {}     # size class -> free pinned host numpy arrays (uint8)
        self.timeout = config.timeout(timeout)
        self.nonblocking = False
        self._queued = 0         # a call's "accepted, still in progress" code (ncclInProgress when non-blocking)
        p = vendor.prefix
        why, lib, rt, dev = "", None, None, 0
        try:
            if vendor.unconfirmed:
                raise BridgeUnavailable(f"{vendor.kind}: {unconfirmed_reason(vendor)}")
            lib = load_library(vendor, library_path)
            rt = load_runtime(vendor.runtime, runtime_path, vendor.search_dirs)
            n, why = device_status(vendor, rt)
            if not why:
                dev = int(device if device is not None else os.environ.get("HETCCL_LOCAL_RANK", rank)) % n
        except BridgeUnavailable as e:
            why = str(e)
        t = self.timeout
        store.set(f"{key}/can/{rank}", b"ok" if not why else why.encode(), timeout=t)
        answers = store.multi_get([f"{key}/can/{r}" for r in range(size)], timeout=t)
        bad = [(r, bytes(a).decode(errors="replace")) for r, a in enumerate(answers) if bytes(a) != b"ok"]
        if bad:
            raise BridgeUnavailable(f"{vendor.kind} island of {size} ranks cannot form: "
                                    + "; ".join(f"island rank {r}: {w}" for r, w in bad))
        self.lib, self.runtime, self.device = lib, rt, dev
        # DLPack device types accepted: the vendor's, or any but CPU (1) when it has no DLPack code
        self._devices = frozenset(vendor.dlpack_devices) or frozenset(range(2, 64))
        self._staging_device = vendor.dlpack_devices[0] if vendor.dlpack_devices else DL_EXT_DEV
        self._pinned = rt.has_pinned
        self.version = lib.version()
        self._reduce_map, self._byte_dtype = vendor.tables(self.version)
        rsym = vendor.runtime.symbols()
        self._check(rt.set_device(dev), f"{rsym['set_device']}({dev})", runtime=True)
        rc, self._stream = rt.stream_create()
        self._check(rc, rsym["stream_create"], runtime=True)
        try:
            uid = self._exchange_id(store, f"{key}/uid", f"{p}{vendor.roles['get_unique_id']}")
            comm = self._join(store, key, uid)
        except BaseException:
            rt.stream_destroy(self._stream)
            self._stream = 0
            raise
        self._comm, self._closed = comm, False
        # a runtime without a stream query is waited for by this bridge's own waiter thread (started
        # at the first wait, on this device; replaced when a wait outlives its deadline)
        self._waiter = None if rt.has_query else StreamWaiter(rt, dev)
        log.debug("%s bridge up: island rank %d/%d on device %d (%s %s, %s join)", vendor.kind, rank,
                  size, dev, lib.path, version_string(self.version),
                  "non-blocking" if self.nonblocking else "blocking")

    def _can_join_nonblocking(self) -> bool:
        """NCCL's own rule: CommInitRankConfig with ``blocking`` exists from 2.14 on (the symbol
        alone is not enough: a clone could export it with another struct)."""
        return (self.vendor.family == "nccl" and self.version >= NONBLOCKING_SINCE
                and all(self.lib.has(r) for r in NONBLOCKING_ROLES))

    def _join(self, store, key: str, uid: bytes) -> int:
        """Join within ``self.timeout``: non-blocking and polled where the library can, else the
        blocking call in a helper thread (ccl_api.comm_init_deadline); abort on failure.

        Each rank first marks in the store that it reached its join, so that a rank which times
        out can say which peers never did."""
        store.set(f"{key}/joining/{self.rank}", b"1", timeout=self.timeout)
        self.nonblocking_join = self._can_join_nonblocking()
        if self.nonblocking_join:
            call = f"{self.vendor.prefix}{self.vendor.roles.get('comm_init_config', 'CommInitRankConfig')}"
            code, detail, comm = self.lib.comm_init_nonblocking(self.size, uid, self.rank, self.timeout)
            if code == WAIT_OK:
                self.nonblocking, self._queued = True, NCCL_IN_PROGRESS
                return comm
        else:
            call = f"{self.vendor.prefix}{self.vendor.roles['comm_init']}"
            code, detail, comm = self.lib.comm_init_deadline(self.size, uid, self.rank, self.device,
                                                              self.timeout, self.runtime)
            if code == WAIT_OK:
                return comm
        text = ""
        if code != WAIT_TIMEOUT:
            text = self.lib.error_string(detail)
            last = self.lib.last_error(comm)
            if last and last not in text:
                text = f"{text}; {last}"
        if comm:
            self.lib.comm_abort(comm)         # errors ignored: aborting is already the error path
        if code == WAIT_TIMEOUT:
            gone = (f"The {self.kind} communicator was aborted." if self.nonblocking_join else
                    f"{self.kind} cannot cancel a join: it was left to a helper thread, which frees the "
                    f"communicator if the join ever completes.")
            raise HetcclTimeout(f"{self.kind}: {call} (island rank {self.rank} of {self.size}) did not "
                                f"finish within {self.timeout:g} s; {self._missing_joiners(store, key)} "
                                f"{gone} A slow but healthy start needs a larger timeout= / HETCCL_TIMEOUT.")
        what = "failed with error" if code == WAIT_CALL else "failed asynchronously with error"
        raise BridgeError(f"{self.kind}: {call} {what} {detail}: {text} ({self.lib.path})")

    def _missing_joiners(self, store, key: str) -> str:
        """The island ranks that never reached their join, as a sentence for the timeout error."""
        check = getattr(store, "check", None)
        if check is None:
            return ("some island rank did not join: check that every island rank is alive and "
                    "reached the bridge's creation.")
        try:
            missing = [r for r in range(self.size) if not check([f"{key}/joining/{r}"])]
        except Exception as e:                     # noqa: BLE001 - the store itself may be gone
            return f"the store could not say which island ranks joined ({type(e).__name__}: {e})."
        if missing:
            return (f"island rank(s) {missing} never started joining: check that they are alive "
                    f"(they may have died or hung after agreeing to form the island).")
        env = self.vendor.prefix.upper()         # NCCL_* for NCCL, RCCL and Iluvatar; MCCL_* for MCCL
        return (f"every island rank started joining, so {self.kind}'s own wire-up did not finish: "
                f"check the network between the island's hosts ({env}_DEBUG=INFO shows where it "
                f"stops; {env}_SOCKET_IFNAME picks its interface).")

    def _exchange_id(self, store, key: str, call: str) -> bytes:
        """Rank 0's unique id (root info) for every rank. The value is tagged b"U" + id, or b"E" +
        rank 0's error, so a failure on rank 0 fails every rank at once instead of after a timeout."""
        if self.rank == 0:
            rc, uid = self.lib.unique_id()
            if rc:
                try:
                    self._raise(rc, call)
                except BridgeError as e:
                    store.set(key, b"E" + str(e).encode(), timeout=self.timeout)
                    raise
            store.set(key, b"U" + uid, timeout=self.timeout)
            return uid
        got = bytes(store.get(key, timeout=self.timeout))
        if got[:1] != b"U":
            raise BridgeError(f"{self.kind}: island rank 0 could not create the communicator's id: "
                              f"{got[1:].decode(errors='replace')}")
        return got[1:]

    # ---- errors ------------------------------------------------------------------------------
    def _check(self, rc: int, call: str, runtime: bool = False) -> None:
        if rc:
            self._raise(rc, call, runtime)

    def _raise(self, rc: int, call: str, runtime: bool = False):
        if runtime:
            text, src = self.runtime.error_string(rc), self.runtime.path
        else:
            text, src = self.lib.error_string(rc), self.lib.path
            last = self.lib.last_error(self._comm)
            if last and last not in text:
                text = f"{text}; {last}"
        raise BridgeError(f"{self.kind}: {call} failed with error {rc}: {text} ({src})")

    def _wait(self, call: str) -> None:
        code, detail = self.runtime.wait_stream(self._stream, self.lib, self._comm, self.timeout,
                                                self.nonblocking, self._waiter)
        if code == WAIT_OK:
            return
        self.abort()
        if code == WAIT_TIMEOUT:
            raise HetcclTimeout(f"{self.kind}: {call} did not finish within {self.timeout:g} s (a peer "
                                f"may have died); the {self.kind} communicator was aborted")
        if code == WAIT_ASYNC:
            raise BridgeError(f"{self.kind}: {call} failed asynchronously with error {detail}: "
                              f"{self.lib.error_string(detail)}; the communicator was aborted")
        if detail in WAITER_ERRORS:
            raise BridgeError(f"{self.kind}: waiting for {call} failed: {WAITER_ERRORS[detail]}")
        raise BridgeError(f"{self.kind}: waiting for {call} failed: {self.runtime.error_string(detail)} "
                          f"(error {detail} from {self.runtime.path})")

    # ---- buffers -----------------------------------------------------------------------------
    def _ptr(self, buf, nbytes: int, writable: bool) -> int:
        if type(buf) is not DeviceBuffer:
            buf = as_device_buffer(buf, writable=writable)
        if buf.nbytes < nbytes or (writable and buf.readonly) or buf.device_type not in self._devices \
                or buf.stream is not None:
            self._check_buffer(buf, nbytes, writable)
        return buf.ptr

    def _check_buffer(self, buf: DeviceBuffer, nbytes: int, writable: bool) -> None:
        """The slow path of _ptr: say what is wrong, or synchronise the producer's stream."""
        if buf.nbytes < nbytes:
            raise InvalidUsage(f"{buf!r} has {buf.nbytes} bytes; the call needs {nbytes}")
        if writable and buf.readonly:
            raise InvalidUsage(f"{buf!r} is read-only and the call writes into it")
        if buf.device_type not in self._devices:
            raise InvalidUsage(f"{self.kind} bridge needs {self.memory} memory, got a buffer on {buf.device}")
        if buf.stream is not None:           # __cuda_array_interface__ v3: the producer's work first
            self._check(self.runtime.synchronize(buf.stream), "synchronising the producer's stream", True)
            buf.stream = None

    # ---- staging (collectives/islands.Staging and collectives/staged.py) -----------------------
    def device_buffer(self, nbytes: int) -> DeviceBuffer:
        """A staging buffer of at least ``nbytes`` bytes in this bridge's memory, from the pool
        (its ``nbytes`` is the whole size class). Give it back with ``release_buffer``; the
        bridge frees every one it made when it closes."""
        self._live()
        cls = size_class(nbytes)
        free = self._pool.get(cls)
        if free:
            return free.pop()
        if not self.runtime.has_allocator:
            raise BridgeError(f"{self.kind}: the runtime {self.runtime.path} has no device allocator "
                              f"({self.vendor.runtime.prefix}Malloc/Free), so host buffers cannot be "
                              f"staged; pass device buffers to this island")
        rc, ptr = self.runtime.malloc(cls)
        self._check(rc, f"{self.vendor.runtime.symbols()['malloc']}({cls})", runtime=True)
        self._owned[ptr] = (cls, False)
        return DeviceBuffer(ptr, cls, _dt.UINT8, self._staging_device, self.device)

    def release_buffer(self, buf) -> None:
        """Return a buffer of ``device_buffer`` (or ``host_buffer``) to the pool for reuse."""
        if isinstance(buf, DeviceBuffer):
            entry = self._owned.get(buf.ptr)
            if entry is not None and not self._closed:
                self._pool.setdefault(entry[0], []).append(buf)
        else:
            ptr = buf.ctypes.data
            entry = self._owned.get(ptr)
            if entry is not None and not self._closed:
                self._host_pool.setdefault(entry[0], []).append(buf)

    def host_buffer(self, nbytes: int):
        """A host uint8 array of at least ``nbytes`` for the cross-island leg of a device buffer:
        pinned (page-locked, the runtime's HostAlloc) when the runtime has it, so the device
        copies run at full PCIe speed; a plain numpy array otherwise. Pooled like device_buffer."""
        import numpy as np
        cls = size_class(nbytes)
        free = self._host_pool.get(cls)
        if free:
            return free.pop()
        if self._pinned:
            rc, ptr = self.runtime.host_alloc(cls)
            if rc == 0:
                self._owned[ptr] = (cls, True)
                return np.ctypeslib.as_array((ctypes.c_uint8 * cls).from_address(ptr))
            log.info("%s: pinned host allocation of %d bytes failed (%s); staging through pageable memory",
                     self.kind, cls, self.runtime.error_string(rc))
            self._pinned = False
        return np.empty(cls, np.uint8)

    def copy_in(self, dev, host) -> None:
        """dev[:host.nbytes] = host (a C-contiguous numpy array): host -> device, blocking."""
        self._copy(self._ptr(dev, host.nbytes, True), host.ctypes.data, host.nbytes, HOST_TO_DEVICE)

    def copy_out(self, host, dev) -> None:
        """host[...] = dev[:host.nbytes]: device -> host, blocking."""
        if not host.flags.writeable:
            raise InvalidUsage("the host array to copy a device buffer into is read-only")
        self._copy(host.ctypes.data, self._ptr(dev, host.nbytes, False), host.nbytes, DEVICE_TO_HOST)

    def copy_device(self, dst, src, nbytes: int) -> None:
        """dst[:nbytes] = src[:nbytes], both in this bridge's memory."""
        self._copy(self._ptr(dst, nbytes, True), self._ptr(src, nbytes, False), nbytes, DEVICE_TO_DEVICE)

    def _copy(self, dst: int, src: int, nbytes: int, kind: int) -> None:
        if nbytes:
            self._check(self.runtime.memcpy(dst, src, nbytes, kind),
                        f"{self.vendor.runtime.symbols()['memcpy']}({nbytes} bytes, kind {kind})", runtime=True)

    def _free_all(self) -> None:
        """Free every staging allocation (close/abort); errors are logged, not raised: the
        communicator is going away and the runtime frees a process's memory at exit anyway."""
        owned, self._owned, self._pool, self._host_pool = self._owned, {}, {}, {}
        for ptr, (_cls, pinned) in owned.items():
            rc = self.runtime.free_host(ptr) if pinned else self.runtime.free(ptr)
            if rc:
                log.warning("%s: freeing a staging buffer failed: %s", self.kind, self.runtime.error_string(rc))

    def accepts(self, buf: DeviceBuffer) -> bool:
        """Whether ``buf`` is in memory this bridge's library reads (its DLPack device types)."""
        return buf.device_type in self._devices

    def live_allocations(self) -> int:
        """How many staging allocations this bridge holds (the pool's size; 0 after close)."""
        return len(self._owned)

    def _live(self):
        if self._closed:
            raise InvalidUsage(f"the {self.kind} bridge was closed or aborted; create a new one")

    # ---- Bridge API --------------------------------------------------------------------------
    def supports(self, collective: str, dtype: int, op: ReduceOp | None = None) -> bool:
        if collective in MOVING:
            return True
        if collective in REDUCING:
            return (collective, dtype, op) in self._reduce_map
        return False

    def _reduction(self, collective, dtype, op):
        try:
            return self._reduce_map[(collective, dtype, op)]
        except KeyError:
            raise InvalidUsage(f"{self.kind} {version_string(self.version)} has no exact {collective} of "
                               f"{_dt.NAMES[dtype]} with {ReduceOp(op).name}; ask supports() first and "
                               f"use hetccl's own algorithm for it") from None

    def allreduce(self, send, recv, count: int, dtype: int, op: ReduceOp) -> None:
        self._live()
        ldt, lop = self._reduction("allreduce", dtype, op)
        nb = count * _dt.ITEMSIZE[dtype]
        rc = self.lib.allreduce(self._ptr(send, nb, False), self._ptr(recv, nb, True), count, ldt, lop,
                                self._comm, self._stream)
        if rc and rc != self._queued:
            self._raise(rc, self.vendor.prefix + self.vendor.roles["allreduce"])
        self._wait("allreduce")

    def reduce_scatter(self, send, recv, count: int, dtype: int, op: ReduceOp) -> None:
        self._live()
        ldt, lop = self._reduction("reduce_scatter", dtype, op)
        nb = count * _dt.ITEMSIZE[dtype]
        rc = self.lib.reduce_scatter(self._ptr(send, nb * self.size, False), self._ptr(recv, nb, True),
                                     count, ldt, lop, self._comm, self._stream)
        if rc and rc != self._queued:
            self._raise(rc, self.vendor.prefix + self.vendor.roles["reduce_scatter"])
        self._wait("reduce_scatter")

    def reduce(self, send, recv, count: int, dtype: int, op: ReduceOp, root: int) -> None:
        self._live()
        if not self.lib.has("reduce"):
            return super().reduce(send, recv, count, dtype, op, root)
        ldt, lop = self._reduction("reduce", dtype, op)
        nb = count * _dt.ITEMSIZE[dtype]
        rptr = self._ptr(recv, nb, True) if (self.rank == root or recv is not None) else 0
        rc = self.lib.reduce(self._ptr(send, nb, False), rptr, count, ldt, lop, root, self._comm, self._stream)
        if rc and rc != self._queued:
            self._raise(rc, self.vendor.prefix + self.vendor.roles["reduce"])
        self._wait("reduce")

    def allgather(self, send, recv, count: int, dtype: int) -> None:
        self._live()
        nb = count * _dt.ITEMSIZE[dtype]
        rc = self.lib.allgather(self._ptr(send, nb, False), self._ptr(recv, nb * self.size, True), nb,
                                self._byte_dtype, self._comm, self._stream)
        if rc and rc != self._queued:
            self._raise(rc, self.vendor.prefix + self.vendor.roles["allgather"])
        self._wait("allgather")

    def broadcast(self, buf, count: int, dtype: int, root: int) -> None:
        self._live()
        nb = count * _dt.ITEMSIZE[dtype]
        rc = self.lib.broadcast(self._ptr(buf, nb, self.rank != root), nb, self._byte_dtype, root,
                                self._comm, self._stream)
        if rc and rc != self._queued:
            self._raise(rc, self.vendor.prefix + self.vendor.roles["broadcast"])
        self._wait("broadcast")

    def sendrecv(self, sends=(), recvs=()) -> None:
        """Point-to-point in one group call: ``sends``/``recvs`` are (buf, count, dtype, peer).

        Grouped so that a rank may send to and receive from the same peer without deadlock
        (NCCL's rule for concurrent send/recv)."""
        self._live()
        if not (self.lib.has("send") and self.lib.has("recv")):
            raise InvalidUsage(f"{self.kind} at {self.lib.path} has no send/recv")
        p = self.vendor.prefix
        self._check(self.lib.group_start(), f"{p}GroupStart")
        rc, call, queued = 0, "", self._queued
        for buf, count, dtype, peer in sends:
            nb = count * _dt.ITEMSIZE[dtype]
            rc = self.lib.send(self._ptr(buf, nb, False), nb, self._byte_dtype, peer, self._comm, self._stream)
            if rc and rc != queued:
                call = f"{p}Send(peer {peer})"
                break
            rc = 0
        for buf, count, dtype, peer in (recvs if not rc else ()):
            nb = count * _dt.ITEMSIZE[dtype]
            rc = self.lib.recv(self._ptr(buf, nb, True), nb, self._byte_dtype, peer, self._comm, self._stream)
            if rc and rc != queued:
                call = f"{p}Recv(peer {peer})"
                break
            rc = 0
        end = self.lib.group_end()
        if rc:
            self._raise(rc, call)
        if end and end != queued:
            self._raise(end, f"{p}GroupEnd")
        self._wait("send/recv")

    def async_error(self) -> int:
        """The communicator's asynchronous error code (0 = none; a non-blocking communicator's
        "still working", ncclInProgress, is not an error either)."""
        if self._closed:
            return 0
        e = self.lib.async_error(self._comm)
        return 0 if e == self._queued else e

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        rc = self.lib.comm_destroy(self._comm)
        self.runtime.stream_destroy(self._stream)
        self._comm = self._stream = 0
        self._close_waiter()
        self._free_all()
        if rc and rc != self._queued:
            raise BridgeError(f"{self.kind}: destroying the communicator failed: {self.lib.error_string(rc)}")

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.lib.comm_abort(self._comm)      # errors ignored: aborting is already the error path
        self.runtime.stream_destroy(self._stream)
        self._comm = self._stream = 0
        self._close_waiter()
        self._free_all()

    def _close_waiter(self) -> None:
        """Retire the waiter thread; one still inside the runtime's sync is left to return on its
        own (nothing here waits for it, so close and abort never hang on a stuck device)."""
        if self._waiter is not None:
            self._waiter.close()

    @property
    def can_shrink(self) -> bool:
        """ncclCommShrink (NCCL >= 2.27, by NCCL's own version rule: a clone exporting the name
        with another signature is not trusted)."""
        return (not self._closed and self.vendor.family == "nccl" and self.version >= SHRINK_SINCE
                and self.lib.has("comm_shrink"))

    def shrink(self, exclude):
        """The island without ``exclude``, by ncclCommShrink with NCCL_SHRINK_ABORT (the parent's
        calls in flight, which a dead peer left hanging, are ended first); the child inherits the
        parent's config (a non-blocking parent's child is polled to completion, bounded by
        ``timeout``), device and library, with a stream of its own."""
        if not self.can_shrink:
            return None
        exclude = sorted(int(r) for r in exclude)
        code, detail, comm = self.lib.comm_shrink(self._comm, exclude, NCCL_SHRINK_ABORT, self.timeout)
        if code != WAIT_OK:
            why = self.lib.error_string(detail) if detail else "timed out"
            if comm:
                self.lib.comm_abort(comm)
            raise BridgeError(f"{self.kind}: {self.vendor.prefix}CommShrink without island ranks "
                              f"{exclude} failed: {why}")
        child = object.__new__(type(self))
        child.__dict__.update(self.__dict__)           # library, runtime, device, tables, config
        Bridge.__init__(child, self.rank - sum(r < self.rank for r in exclude), self.size - len(exclude))
        child._pool, child._owned, child._host_pool = {}, {}, {}
        child._waiter = None if self._waiter is None else StreamWaiter(self.runtime, self.device)
        rc, child._stream = self.runtime.stream_create()
        if rc:
            self.lib.comm_abort(comm)
            self._raise(rc, self.vendor.runtime.symbols()["stream_create"], runtime=True)
        child._comm, child._closed = comm, False
        child.shrunk_from = exclude
        return child

    def describe(self) -> str:
        v = version_string(self.version)
        return (f"{self.kind}{' ' + v if v else ''} bridge ({self.lib.path}), island rank "
                f"{self.rank}/{self.size}, device {self.device}, memory {self.memory}")

    def __del__(self):
        if not getattr(self, "_closed", True):
            try:
                self.abort()
            except Exception:
                pass
