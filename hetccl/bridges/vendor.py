"""A native collective library described as data: its files, symbol prefix, call family, device
runtime and exact dtype/op tables (the rows are in nccl.py, hccl.py, cncl.py and bkcl.py; rows.py
lists them all).

Why data, not a class per vendor: NCCL, RCCL, MCCL, ECCL, ... differ only in file names, symbol
prefixes, which dtypes/ops they implement and which runtime owns their streams, and HCCL, CNCL
and BKCL only in a few call shapes (the binding's "family"); one binding (_native/ccl_api.pyx)
and one NativeBridge (native.py) run them all from these rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .. import dtypes as _dt
from ..ops import ReduceOp

RUNTIME_ROLES_CUDA = {   # cudart-style runtimes: name = prefix + suffix
    "get_device_count": "GetDeviceCount", "set_device": "SetDevice", "stream_create": "StreamCreate",
    "stream_synchronize": "StreamSynchronize", "stream_query": "StreamQuery",
    "stream_destroy": "StreamDestroy", "memcpy": "Memcpy", "get_error_string": "GetErrorString",
    "malloc": "Malloc", "free": "Free", "host_alloc": "HostAlloc", "free_host": "FreeHost",
}
RUNTIME_ROLES_ACL = {    # Ascend ACL (acl.h / acl_rt.h): aclInit, aclrt*, aclGetRecentErrMsg
    "init": "Init", "get_device_count": "rtGetDeviceCount", "set_device": "rtSetDevice",
    "stream_create": "rtCreateStream", "stream_synchronize": "rtSynchronizeStream",
    "stream_query": "rtStreamQuery", "stream_destroy": "rtDestroyStream", "memcpy": "rtMemcpy",
    "get_error_string": "GetRecentErrMsg",
    "malloc": "rtMalloc", "free": "rtFree", "host_alloc": "rtMallocHost", "free_host": "rtFreeHost",
}


@dataclass(frozen=True)
class Runtime:
    """A device runtime: where to find it and how its symbols are spelled (see DeviceRuntime in
    _native/ccl_api.pyx for what ``kinds``, ``malloc_args`` and ``host_alloc_args`` mean)."""
    names: tuple            # sonames tried in order ("libcudart.so.12", ...)
    prefix: str             # "cuda", "hip", "musa", "mc", "tops", "cnrt", "xpu_", "acl"
    style: str = "cuda"     # "cuda" (cudart-shaped calls) or "acl"
    not_ready: int = 600    # the stream query's "not finished" code (cudaErrorNotReady, hipErrorNotReady)
    wheel_dirs: tuple = ()  # site-packages sub-directories of a pip wheel that ships it
    roles: dict = field(default_factory=dict)   # role -> suffix overriding the style's (None: absent)
    kinds: tuple = (0, 1, 2, 3)  # memcpy codes of host->host, host->device, device->host, device->device
    malloc_args: int = 0    # 3: the allocator takes a memory kind (0 = default); 0: the style's
    host_alloc_args: int = 0    # 2: the pinned allocator takes no flags; 0: the style's
    errors: dict = field(default_factory=dict)  # code -> text when no error-string call is exported
    search_dirs: tuple = ()     # install directories of the runtime (after the vendor's own)

    def symbols(self) -> dict:
        roles = dict(RUNTIME_ROLES_CUDA if self.style == "cuda" else RUNTIME_ROLES_ACL)
        roles.update(self.roles)
        return {role: self.prefix + suffix for role, suffix in roles.items() if suffix is not None}

    def options(self) -> dict:
        """The keyword arguments of DeviceRuntime that this row sets."""
        return dict(kinds=self.kinds, malloc_args=self.malloc_args, host_alloc_args=self.host_alloc_args,
                    errors=self.errors)


@dataclass(frozen=True)
class Vendor:
    """One native collective library, as data (see nccl.py, hccl.py, cncl.py, bkcl.py)."""
    kind: str               # bridge kind: "nccl", "rccl", "mccl", "hccl", "cncl", "bkcl", ...
    family: str             # "nccl", "hccl", "cncl" or "bkcl": which call shapes the binding uses
    names: tuple            # sonames tried in order
    prefix: str             # symbol prefix ("nccl", "mccl", "Hccl")
    roles: dict             # role -> symbol suffix (prefix + suffix = symbol)
    required: tuple         # roles that must resolve
    runtime: Runtime
    tables: Callable        # version code -> (reduce map, byte dtype): see nccl.py / hccl.py
    memory: str             # memory type of its buffers ("cuda", "rocm", "musa", "npu", ...)
    device_word: str        # "CUDA", "ROCm", "MUSA", "Ascend NPU": in "no <word> device" messages
    dlpack_devices: tuple   # DLPack device types its buffers may have; () = any non-CPU
    search_dirs: tuple = ()     # install directories searched after the wheel and the loader path
    wheel_dirs: tuple = ()      # site-packages sub-directories of a pip wheel that ships it
    wheel: str = ""             # the pip distribution that ships it ("nvidia-nccl-cu12")
    loader_search: bool = True  # also LD_LIBRARY_PATH and ldconfig (False when the soname is shared
                                # by several vendors, e.g. libmccl.so: only its install dirs count)
    source: str = ""            # where the names/prefix/enums were checked
    uid_bytes: int = 0          # size of the join id; 0: the family's published size
    unconfirmed: str = ""       # what of the ABI no public source confirms: such a row is reported
                                # found-but-not-usable with this reason, and never run on a real
                                # library (a caller who knows the values passes a corrected row)

    def symbols(self) -> dict:
        return {role: self.prefix + suffix for role, suffix in self.roles.items()}

    def load(self, path: str):
        """The binding of this row's library at ``path`` (CclLibrary, dlopen'ed RTLD_LOCAL)."""
        from .._native.ccl_api import CclLibrary
        return CclLibrary(path, self.family, self.symbols(), self.required, self.uid_bytes)


def bool_reductions(collectives, byte_type: int, min_op: int, max_op: int) -> dict:
    """bool (0/1 bytes) as the library's 8-bit type: MIN = all = BAND, MAX = any = BOR, exactly."""
    return {(coll, _dt.BOOL, op): (byte_type, lop) for coll in collectives
            for op, lop in ((ReduceOp.MIN, min_op), (ReduceOp.BAND, min_op),
                            (ReduceOp.MAX, max_op), (ReduceOp.BOR, max_op))}


def version_string(code: int) -> str:
    """NCCL's version code as text: 2.8.4 -> 2804 (old scheme), 2.27.3 -> 22703."""
    if code < 0:
        return ""
    if code < 10000:
        return f"{code // 1000}.{code % 1000 // 100}.{code % 100}"
    return f"{code // 10000}.{code % 10000 // 100}.{code % 100}"
