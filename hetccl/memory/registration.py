"""Registered buffers: ``comm.register(buf)`` / ``comm.deregister(handle)`` (or ``with comm.register(buf):``).

Why, and what it buys here. NCCL registers user buffers so that peers can map them once instead of
staging every call through its own buffers. On one host hetccl reads a peer's plain buffer with
cross-memory attach (``process_vm_readv``), which needs no mapping at all: the address and extent
travel in the control slot of the call's entry sync, which every single-copy call needs anyway (it is
also how a mismatched call is caught), so there is no per-call exchange for registration to remove,
and no shared mapping of the user's pages exists to be cached (Linux cannot map another process's
anonymous pages; ``comm.alloc`` is the way to get memory peers map). Plain buffers therefore take the
single-copy schedules *without* registration, from the sizes the probe measured them faster.

What registration does buy is the first touch. This VM backs memory lazily (1-3 s per GiB on first
write), and a fresh output (``np.empty``, the allocating forms) pays that inside the first collective
that writes it, on the critical path of every rank waiting for it. ``register`` populates the
buffer's pages writable once (``madvise(MADV_POPULATE_WRITE)``, which keeps the contents), so the
first call runs at the speed of every later one; ``bench/registration.py`` measures it.

The cache and its invalidation rule. Registrations are kept in a table keyed by (address, size):
registering the same buffer again returns the same live handle (it counts references; each
``deregister`` drops one). An entry holds a *weak* reference to the object that owns the memory
(the base of a numpy view chain); when that object dies the entry is dropped by the weakref's
callback, before the allocator can hand the address out again, so a buffer freed and reallocated at
the same address never finds a stale entry. An owner that takes no weak references (bytearray,
array.array) is held by a memoryview instead: it cannot be freed or resized until it is deregistered.
"""
import ctypes
import ctypes.util
import os
import weakref

import numpy as np

from ..errors import InvalidUsage

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MADV_POPULATE_WRITE = 23            # Linux >= 5.14: fault pages in writable, contents unchanged

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def _address(buf) -> tuple[int, int, object]:
    """(address, nbytes, owning object) of a C-contiguous buffer."""
    if isinstance(buf, np.ndarray):
        if not buf.flags.c_contiguous:
            raise InvalidUsage("register needs a C-contiguous buffer; pass np.ascontiguousarray(buf)")
        owner = buf
        while isinstance(owner, np.ndarray) and owner.base is not None:
            owner = owner.base
        return buf.__array_interface__["data"][0], buf.nbytes, owner
    try:
        view = memoryview(buf)
    except TypeError:
        raise InvalidUsage(f"{type(buf).__name__} is not a buffer; register a numpy array or "
                           f"another buffer-protocol object") from None
    if not view.c_contiguous:
        raise InvalidUsage("register needs a C-contiguous buffer")
    arr = np.frombuffer(view, np.uint8) if view.nbytes else np.empty(0, np.uint8)
    return (arr.__array_interface__["data"][0] if view.nbytes else 0), view.nbytes, buf


def populate(address: int, nbytes: int) -> bool:
    """Fault in the pages of [address, address+nbytes) writable, keeping their contents; False if
    the kernel cannot (older than 5.14, or not a private/anonymous mapping: nothing is lost)."""
    if nbytes <= 0:
        return True
    lo = address - address % PAGE
    hi = -(-(address + nbytes) // PAGE) * PAGE
    return _libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MADV_POPULATE_WRITE) == 0


class Registration:
    """A registered buffer (returned by ``comm.register``). ``address``/``nbytes`` say which memory;
    ``populated``: its pages were faulted in at registration. A context manager: leaving the
    ``with`` block deregisters it."""

    __slots__ = ("address", "nbytes", "populated", "_registry", "_key", "_owner", "_pin", "_refs",
                 "__weakref__")

    def __init__(self, registry, key, owner_ref, pin, populated):
        self.address, self.nbytes = key
        self.populated = populated
        self._registry, self._key = registry, key
        self._owner, self._pin, self._refs = owner_ref, pin, 1

    @property
    def live(self) -> bool:
        """Registered, and its memory's owner alive."""
        return self._refs > 0 and (self._pin is not None or self._owner() is not None)

    def deregister(self):
        self._registry.deregister(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._refs > 0:
            self.deregister()

    def __repr__(self):
        state = "live" if self.live else "released"
        return f"<hetccl Registration {self.nbytes} bytes at {self.address:#x}, {state}>"


class Registry:
    """One communicator's registrations (the cache of the module docstring)."""

    def __init__(self):
        self._by_key = {}

    def __len__(self):
        return len(self._by_key)

    def register(self, buf) -> Registration:
        address, nbytes, owner = _address(buf)
        key = (address, nbytes)
        reg = self._by_key.get(key)
        if reg is not None and reg.live:
            reg._refs += 1
            return reg
        try:
            owner_ref = weakref.ref(owner, lambda r, key=key: self._owner_died(key, r))
            pin = None
        except TypeError:                      # no weak references: hold the memory instead
            owner_ref, pin = None, memoryview(buf)
        reg = Registration(self, key, owner_ref, pin, populate(address, nbytes))
        self._by_key[key] = reg
        return reg

    def lookup(self, buf) -> Registration | None:
        """The live registration of exactly this buffer's memory (address and size), or None."""
        try:
            address, nbytes, _ = _address(buf)
        except InvalidUsage:
            return None
        reg = self._by_key.get((address, nbytes))
        return reg if reg is not None and reg.live else None

    def deregister(self, reg: Registration):
        if not isinstance(reg, Registration) or reg._registry is not self:
            raise InvalidUsage("deregister takes a handle returned by this communicator's register()")
        if reg._refs <= 0:
            raise InvalidUsage("this registration was already deregistered")
        reg._refs -= 1
        if reg._refs == 0:
            reg._pin = None
            self._drop(reg._key, reg)

    def _drop(self, key, reg):
        if self._by_key.get(key) is reg:
            del self._by_key[key]

    def _owner_died(self, key, ref):
        """The weakref callback: the entry whose owner this was goes (and its handle with it)."""
        cur = self._by_key.get(key)
        if cur is not None and cur._owner is ref:
            cur._refs = 0
            del self._by_key[key]

    def clear(self):
        for reg in list(self._by_key.values()):
            reg._refs, reg._pin = 0, None
        self._by_key.clear()
