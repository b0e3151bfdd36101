"""Registered buffers: ``comm.register(buf)`` / ``comm.deregister(handle)`` (or ``with comm.register(buf):``).

Why. NCCL registers user buffers so that peers can reach them once instead of staging every call
through its own buffers. Linux cannot map another process's private pages, but a process can move
its *own* pages into shared memory at the same address (memory/remap.py): on a communicator whose
every pair is c2c in cma mode (one host, ptrace permitted), ``register`` does that when the buffer's
owner holds its pages alone (remap.py's safety rule: a numpy array of 32 MiB or more in a glibc
mmapped chunk, an anonymous ``mmap``), and the buffer then takes the load/store single-copy schedules of
``comm.alloc`` memory (memory/symmetric.py: the allreduce's dual-write and the rest), peers mapping
its memfd. ``handle.shared`` says whether it happened; the copy it costs is paid once, here.

Otherwise (a heap array, another allocator's memory, a file mapping, any other communicator)
registration buys the first touch: this VM backs memory lazily (1-3 s per GiB on first write), and
a fresh output pays that inside the first collective that writes it. ``register`` then populates the
buffer's pages writable once (``madvise(MADV_POPULATE_WRITE)``, which keeps the contents); calls take
the plain-buffer paths (cross-memory attach where the probe measured it faster, else the FIFOs).

The cache and its invalidation rule. Registrations are kept in a table keyed by (address, size):
registering the same buffer again returns the same live handle (it counts references; each
``deregister`` drops one). An entry holds a *weak* reference to the object that owns the memory
(the base of a numpy view chain); when that object dies the entry is dropped by the weakref's
callback, before the allocator can hand the address out again, so a buffer freed and reallocated at
the same address never finds a stale entry. The same rule ends a shared region: when the last
registration of it goes (deregistered, owner dead, communicator closed) its memfd is closed and the
region's id (never reused) is announced to the peers, which unmap their copies at their next call;
the pages themselves stay where they are, shared-backed, until their owner frees them. An owner
that takes no weak references (bytearray, array.array) is held by a memoryview instead: it cannot
be freed or resized until it is deregistered (and is never shared).

Automatic registration (``Registry.auto``, called by a collective's symmetric-capable route for
every buffer it needs shared, from ``AUTO_MIN`` bytes). A plain buffer is registered the *second*
time the same memory (address and size) is passed while the *same* owner object is alive: the
first sighting only records a weak reference to the owner (dropped when it dies), so a buffer
allocated anew for every call, even at a recycled address (``x.copy()`` each call), never pays the
copy. Measured (2 ranks, 64 MiB float32, 2-vCPU VM): the remap copy costs 30-40 ms, the
symmetric allreduce saves ~6 ms per call against the FIFO ring, so a buffer seen once is not worth
it and a buffer seen twice is likely to be seen again. The auto entries are ordinary registrations
(the same invalidation rule: the owner's death drops them); their total size is capped (``auto_cap``,
a quarter of physical memory): registering one more past the cap first drops the least recently
used auto entries (their regions are freed at the peers; the pages stay shared-backed in this
process until their owner frees them). A buffer dropped by the cap is not registered automatically
again while its owner lives, so a working set larger than the cap costs no copy per call.
"""
import collections
import ctypes
import ctypes.util
import mmap
import os
import weakref

import logging

import numpy as np

from ..errors import InvalidUsage
from . import remap

log = logging.getLogger("hetccl")

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MADV_POPULATE_WRITE = 23            # Linux >= 5.14: fault pages in writable, contents unchanged

AUTO_MIN = remap.ALWAYS_MMAPPED    # smallest buffer automatic registration considers
AUTO_SEEN = 256                    # first sightings remembered at most (then forgotten all at once)
_PHYS = os.sysconf("SC_PHYS_PAGES") * PAGE if hasattr(os, "sysconf") else 1 << 34

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def _address(buf) -> tuple[int, int, object]:
    """(address, nbytes, owning object) of a C-contiguous buffer."""
    if isinstance(buf, np.ndarray):
        if not buf.flags.c_contiguous:
            raise InvalidUsage("register needs a C-contiguous buffer; pass np.ascontiguousarray(buf)")
        owner = buf
        while (isinstance(owner, np.ndarray) and owner.base is not None) or isinstance(owner, memoryview):
            owner = owner.base if isinstance(owner, np.ndarray) else owner.obj   # np.frombuffer: a memoryview
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
    ``populated``: its pages were faulted in at registration; ``shared``: its pages were moved into
    shared memory the peers map (calls on it take the symmetric schedules). A context manager:
    leaving the ``with`` block deregisters it."""

    __slots__ = ("address", "nbytes", "populated", "_registry", "_key", "_owner", "_pin", "_refs",
                 "_region", "_auto", "__weakref__")

    def __init__(self, registry, key, owner_ref, pin, populated, region=None):
        self.address, self.nbytes = key
        self.populated = populated
        self._registry, self._key = registry, key
        self._owner, self._pin, self._refs = owner_ref, pin, 1
        self._region = region                  # lo of the shared region (Registry._regions), or None
        self._auto = False                     # one of its references is the automatic cache's

    @property
    def shared(self) -> bool:
        """Its pages are shared with the peers (live registration of a shared region)."""
        return self._region is not None and self.live

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
        state = ("live, shared" if self.shared else "live") if self.live else "released"
        return f"<hetccl Registration {self.nbytes} bytes at {self.address:#x}, {state}>"


class Registry:
    """One communicator's registrations (the cache of the module docstring). ``heap``: a callable
    returning the symmetric heap that publishes shared regions, or None where the communicator
    cannot share (not every pair c2c in cma mode)."""

    def __init__(self, heap=lambda: None):
        self._by_key = {}
        self._heap = heap
        self._regions = {}                     # lo -> [remap.SharedPages, registrations on it, heap]
        self._seen = {}                        # (address, nbytes) -> weakref of the owner: sighted once
                                               # (or dropped by the cap: EVICTED, (weakref,))
        self._lru = collections.OrderedDict()  # key -> Registration held by the automatic cache
        self.auto_bytes = 0                    # their total size
        self.auto_cap = _PHYS // 4

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
        region = self._share(owner, address, nbytes) if pin is None else None
        reg = Registration(self, key, owner_ref, pin, region is not None or populate(address, nbytes),
                           region)
        self._by_key[key] = reg
        return reg

    def _share(self, owner, address, nbytes):
        """Publish the pages ``owner`` holds alone as a shared region of this communicator (moving
        them into shared memory unless another registration already did); its lo, or None where
        the safety rule or the communicator says no."""
        heap = self._heap()
        if heap is None or nbytes == 0:
            return None
        span = remap.owned_range(owner)
        if span is None or not (span[0] <= address and address + nbytes <= span[1]):
            return None
        lo = span[0]
        region = self._regions.get(lo)
        if region is not None and region[0].hi == span[1]:
            region[1] += 1
            return lo
        try:
            pages = remap.acquire(*span)
        except (OSError, ValueError) as e:
            log.info("register: the buffer's pages stay private (%s)", e)
            return None
        if pages is None:
            return None
        try:
            heap.add_region(pages.id, os.dup(pages.fd), lo, pages.hi - lo)
        except BaseException:
            remap.release(pages)
            raise
        self._regions[lo] = [pages, 1, heap]
        return lo

    def _unshare(self, reg):
        lo, reg._region = reg._region, None
        region = self._regions.get(lo) if lo is not None else None
        if region is None:
            return
        region[1] -= 1
        if region[1] == 0:
            del self._regions[lo]
            region[2].drop_region(region[0].id)   # the heap it was published in (even once closed)
            remap.release(region[0])

    def lookup(self, buf) -> Registration | None:
        """The live registration of exactly this buffer's memory (address and size), or None."""
        try:
            address, nbytes, _ = _address(buf)
        except InvalidUsage:
            return None
        reg = self._by_key.get((address, nbytes))
        return reg if reg is not None and reg.live else None

    def auto(self, bufs) -> bool:
        """Automatic registration of the buffers a collective needs shared (module docstring):
        True if all their memory is shared now (registered by hand or automatically); each buffer
        not shared yet has its sighting recorded, or is registered on its second. A buffer passed
        twice in one call (in place) is one sighting."""
        done = set()
        shared = True
        for buf in bufs:
            if type(buf) is np.ndarray:
                if buf.nbytes < AUTO_MIN or not buf.flags.c_contiguous:
                    shared = False
                    continue
            elif not isinstance(buf, mmap.mmap) or len(buf) < AUTO_MIN:
                shared = False
                continue
            address, nbytes, owner = _address(buf)
            if (address, nbytes) not in done:
                done.add((address, nbytes))
                shared = self._auto_one(buf, (address, nbytes), owner) and shared
        return shared

    def _auto_one(self, buf, key, owner) -> bool:
        nbytes = key[1]
        reg = self._by_key.get(key)
        if reg is not None and reg.live:
            if reg._auto:
                self._lru.move_to_end(key)
            return reg.shared
        seen = self._seen.get(key)
        if type(seen) is tuple:                # dropped by the cap, owner alive: stays plain
            if seen[0]() is owner:
                return False
            seen = None
        if seen is None or seen() is not owner:
            if not (isinstance(owner, mmap.mmap) or (
                    isinstance(owner, np.ndarray) and owner.base is None and owner.flags.owndata
                    and owner.nbytes >= AUTO_MIN)):
                return False                   # never shareable (remap's rule): not worth a record
            if len(self._seen) >= AUTO_SEEN:
                self._seen.clear()
            try:
                self._seen[key] = weakref.ref(owner, lambda r, key=key: self._forget_seen(key, r))
            except TypeError:
                pass
            return False
        del self._seen[key]
        if nbytes > self.auto_cap:
            return False
        while self._lru and self.auto_bytes + nbytes > self.auto_cap:
            self._unauto(self._lru.popitem(last=False)[1])
        reg = self.register(buf)
        if not reg.shared:                     # the safety rule said no: stays a private registration
            return False                       # (pre-faulted; dropped with its owner)
        reg._auto = True
        self._lru[key] = reg
        self.auto_bytes += nbytes
        return True

    def _forget_seen(self, key, ref):
        seen = self._seen.get(key)
        if seen is ref or (type(seen) is tuple and seen[0] is ref):
            del self._seen[key]

    def _unauto(self, reg):
        """The cap drops reg (already out of _lru): the automatic cache's reference goes, and its
        owner's memory is not registered automatically again."""
        if reg._auto:
            reg._auto = False
            self.auto_bytes -= reg.nbytes
            owner = reg._owner() if reg._owner is not None else None
            if owner is not None and len(self._seen) < AUTO_SEEN:
                key = reg._key
                self._seen[key] = (weakref.ref(owner, lambda r, key=key: self._forget_seen(key, r)),)
            if reg._refs > 0:
                self.deregister(reg)

    def deregister(self, reg: Registration):
        if not isinstance(reg, Registration) or reg._registry is not self:
            raise InvalidUsage("deregister takes a handle returned by this communicator's register()")
        if reg._refs <= 0:
            raise InvalidUsage("this registration was already deregistered")
        reg._refs -= 1
        if reg._refs == 0:
            reg._pin = None
            self._drop(reg._key, reg)
            self._unshare(reg)
            self._unlist(reg)

    def _drop(self, key, reg):
        if self._by_key.get(key) is reg:
            del self._by_key[key]

    def _owner_died(self, key, ref):
        """The weakref callback: the entry whose owner this was goes (and its handle with it)."""
        cur = self._by_key.get(key)
        if cur is not None and cur._owner is ref:
            cur._refs = 0
            del self._by_key[key]
            self._unshare(cur)
            self._unlist(cur)

    def _unlist(self, reg):
        """reg ended (refs 0): out of the automatic cache too."""
        if reg._auto:
            reg._auto = False
            self.auto_bytes -= reg.nbytes
            if self._lru.get(reg._key) is reg:
                del self._lru[reg._key]

    def clear(self):
        for reg in list(self._by_key.values()):
            reg._refs, reg._pin = 0, None
            self._unshare(reg)
            self._unlist(reg)
        self._by_key.clear()
        self._seen.clear()

    @property
    def sharing(self) -> bool:
        """Some registered region is shared now."""
        return bool(self._regions)
