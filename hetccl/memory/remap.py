"""Moving a registered buffer's pages into shared memory, at the same address.

Linux cannot map another process's private anonymous pages, but a process can replace its *own*
pages with a shared mapping: create a memfd, copy the pages' contents into it, and map it over the
same address range (``MAP_SHARED``, moved into place with ``mremap``, which replaces the old pages
in one step). The array keeps its address, dtype and contents; peers can then map the memfd
(``/proc/<pid>/fd/<n>``: the ptrace check cross-memory attach needs too) and load and store into it.
No name exists anywhere (no /dev/shm file): when the last process holding it exits, it is gone.

The safety rule: only pages that the buffer's owner holds alone are remapped, since everything
else in those pages would become shared too and some allocators rely on private semantics
(glibc's heap trimming and ``calloc`` assume ``MADV_DONTNEED`` zeroes freed pages, which a shared
mapping breaks). Two kinds of owners qualify:

* a numpy array of at least 32 MiB that owns its data through numpy's default allocator, when that
  data is a glibc *mmapped chunk* (the ``IS_MMAPPED`` bit of the chunk header; glibc serves every
  request from 32 MiB on this way, ALWAYS_MMAPPED), and only where the process's malloc is
  glibc's (an LD_PRELOADed allocator has no such headers). The chunk is one mapping of its own;
  glibc's ``free`` unmaps it whole, which unmaps the shared mapping;
* an ``mmap.mmap`` object over anonymous memory (its whole mapping), at any size.

Both depend only on the buffer's kind and size, so ranks running the same code decide alike.

Everything else (heap chunks, file mappings, memory of other allocators, views whose base is some
other object) keeps private pages: registration then only pre-faults them, and calls take the
plain-buffer paths. The cost is one copy of the buffer at registration (and the pages' backing
moves from anonymous memory, which may use transparent huge pages, to shmem, which here uses 4 KiB
pages unless the host enables shmem huge pages).

Fork. A shared mapping is inherited as shared by a child of ``fork``, which would make parent and
child see each other's writes to the buffer. For forks made from Python (``os.fork``,
multiprocessing's fork start method: anything that runs ``os.register_at_fork`` handlers), the
child copies every region this process moved (still mapped where it was moved, whether registered
now or not) into fresh private anonymous memory at the same address before it goes on
(``_privatize``): fork semantics are those of the plain buffer. A fork from C that runs no Python
handlers keeps the regions shared with the parent.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import mmap
import os
from dataclasses import dataclass

import numpy as np

PAGE = mmap.PAGESIZE
NAME = "hetccl-reg-{}"                # a registered region's memfd; peers check the id in its name
IS_MMAPPED = 0x2                      # glibc chunk header: the chunk is a mapping of its own
# glibc's largest dynamic mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX). Smaller requests are
# mmapped or not depending on what the process freed before (the threshold rises to the size of
# each mmapped chunk freed), so two ranks running the same code could disagree; from this size on
# every glibc allocation is its own mapping (unless M_MMAP_THRESHOLD was raised by hand: then none
# is, on every rank alike). Ranks must agree: a call runs the symmetric schedules only if every
# rank's buffers are shared.
ALWAYS_MMAPPED = 32 << 20
SIZE_BITS = 0x7                       # glibc chunk header: flag bits of the size field
F_ADD_SEALS, F_SEAL_SHRINK = 1033, 0x2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long)
_libc.mremap.restype = ctypes.c_void_p
_libc.mremap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
MAP_FAILED = ctypes.c_void_p(-1).value
MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2
MAP_POPULATE = 0x8000


def _default_allocator(arr: np.ndarray) -> bool:
    try:
        from numpy._core.multiarray import get_handler_name      # numpy >= 2
    except ImportError:
        try:
            from numpy.core.multiarray import get_handler_name
        except ImportError:                               # numpy < 1.22: always malloc
            return True
    return get_handler_name(arr) == "default_allocator"


def _glibc_malloc() -> bool:
    """Whether the process's malloc is glibc's (an LD_PRELOADed jemalloc or tcmalloc has no glibc
    chunk headers: reading one would be reading its neighbours' bytes)."""
    try:
        mine = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
        glibc = ctypes.cast(ctypes.CDLL("libc.so.6").malloc, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return False
    return mine == glibc


_GLIBC = None


def owned_range(owner) -> tuple[int, int] | None:
    """[lo, hi) of the pages ``owner`` (the object holding a buffer's memory) holds alone, or None
    when it holds none alone (the safety rule of the module docstring)."""
    if isinstance(owner, np.ndarray):
        global _GLIBC
        if _GLIBC is None:
            _GLIBC = _glibc_malloc()
        if owner.base is not None or not owner.flags.owndata or owner.nbytes < ALWAYS_MMAPPED \
                or not _GLIBC or not _default_allocator(owner):
            return None
        data = owner.ctypes.data
        prev, size = (ctypes.c_size_t * 2).from_address(data - 16)   # malloc chunk header
        if not size & IS_MMAPPED:
            return None
        chunk = data - 16
        lo, hi = chunk - prev, chunk + (size & ~SIZE_BITS)
        if lo % PAGE or hi % PAGE or data + owner.nbytes > hi or hi - lo > 1 << 40:
            return None
        return (lo, hi) if _anonymous(lo, hi) else None
    if isinstance(owner, mmap.mmap):
        try:
            c = ctypes.c_char.from_buffer(owner)
        except (TypeError, ValueError, BufferError):
            return None                                   # read-only or closed
        lo = ctypes.addressof(c)
        del c
        hi = lo + -(-len(owner) // PAGE) * PAGE
        return (lo, hi) if lo % PAGE == 0 and _anonymous(lo, hi) else None
    return None


def _anonymous(lo: int, hi: int) -> bool:
    """Whether [lo, hi) is covered by writable anonymous mappings (or an earlier remap's memfd)."""
    at = lo
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(None, 5)
            a, b = (int(x, 16) for x in fields[0].split("-"))
            if b <= at:
                continue
            if a > at:
                return False
            path = fields[5].strip() if len(fields) > 5 else ""
            if not fields[1].startswith("rw") or not (
                    path in ("", "/dev/zero (deleted)") or path.startswith("/memfd:hetccl-reg-")):
                return False
            at = b
            if at >= hi:
                return True
    return False


MAX_ID = (1 << 23) - 1                # ids fit the descriptor (symmetric_heap.pyx REG_IDS)
_ids = itertools.count(1)             # region ids of this process: never reused
_live = {}                            # lo -> SharedPages: one memfd per page range, whatever the communicators
_moved = {}                           # lo -> (hi, id) of every range share() moved (until a fork or a prune)
MOVED_PRUNE = 1024                    # _moved entries past which the unmapped ones are forgotten


@dataclass(eq=False)
class SharedPages:
    """Pages moved into a memfd (``fd``, named after ``id``) at [lo, hi); ``users``: registrations
    on them, over every communicator of the process (each publishes a dup of fd)."""
    id: int
    fd: int
    lo: int
    hi: int
    users: int = 1


def acquire(lo: int, hi: int) -> SharedPages | None:
    """The shared pages of [lo, hi): the live ones if another registration moved them already
    (moving them twice would leave the first memfd's peers on stale pages), else moved now (one
    copy). None when every region id was used (the pages then stay private)."""
    pages = _live.get(lo)
    if pages is not None and pages.hi == hi:
        pages.users += 1
        return pages
    rid = next(_ids)
    if rid > MAX_ID:
        return None
    pages = _live[lo] = SharedPages(rid, share(lo, hi, rid), lo, hi)
    return pages


def _our_mappings():
    """(lo, hi, id) of every mapping of this process that is a range share() moved and is still
    mapped where it was moved (peers' regions mapped here have ids of their own processes, at
    other addresses)."""
    prefix = "/memfd:" + NAME.format("")
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(None, 5)
            path = fields[5].strip() if len(fields) > 5 else ""
            if not path.startswith(prefix):
                continue
            a, b = (int(x, 16) for x in fields[0].split("-"))
            try:
                rid = int(path[len(prefix):].split()[0])
            except ValueError:
                continue
            if _moved.get(a) == (b, rid):
                out.append((a, b, rid))
    return out


def _privatize():
    """In a forked child: every moved range still mapped goes back to private anonymous memory at
    the same address, contents kept (one copy each), so parent and child no longer share it; the
    parent's memfds and registrations are not the child's."""
    if not _moved:
        return
    for lo, hi, _ in _our_mappings():
        n = hi - lo
        tmp = _libc.mmap(None, n, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                         -1, 0)
        if tmp in (None, MAP_FAILED):
            continue                                      # out of memory: stays shared
        ctypes.memmove(tmp, lo, n)
        if _libc.mremap(tmp, n, n, MREMAP_MAYMOVE | MREMAP_FIXED, lo) != lo:
            _libc.munmap(tmp, n)
    _moved.clear()
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_privatize)


def release(pages: SharedPages):
    """One registration of ``pages`` ended; the last closes the memfd (its pages stay mapped where
    they are, shared-backed, until their owner unmaps them)."""
    pages.users -= 1
    if pages.users == 0:
        if _live.get(pages.lo) is pages:
            del _live[pages.lo]
        os.close(pages.fd)


def share(lo: int, hi: int, rid: int) -> int:
    """Replace the pages of [lo, hi) with a memfd named after region id ``rid``, contents kept, and
    return its descriptor (OSError if anything fails; the pages are then unchanged)."""
    n = hi - lo
    fd = os.memfd_create(NAME.format(rid), os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 2))
    tmp = None
    try:
        os.ftruncate(fd, n)
        src = memoryview((ctypes.c_char * n).from_address(lo)).cast("B")
        done = 0
        while done < n:                                   # the one copy registration costs
            done += os.pwrite(fd, src[done:], done)
        import fcntl
        fcntl.fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK)       # a truncation would SIGBUS the peers
        tmp = _libc.mmap(None, n, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | MAP_POPULATE, fd, 0)
        if tmp in (None, MAP_FAILED):
            tmp = None
            raise OSError(ctypes.get_errno(), "mmap of the registered region's memfd failed")
        # replaces the old pages in one step: on failure they stay as they were
        if _libc.mremap(tmp, n, n, MREMAP_MAYMOVE | MREMAP_FIXED, lo) != lo:
            raise OSError(ctypes.get_errno(), "mremap of the registered region failed")
        tmp = None
        if len(_moved) >= MOVED_PRUNE:
            mapped = set(_our_mappings())
            for k in [k for k in _moved if (k, *_moved[k]) not in mapped]:
                del _moved[k]
        _moved[lo] = (hi, rid)
        return fd
    except BaseException:
        if tmp is not None:
            _libc.munmap(tmp, n)
        os.close(fd)
        raise
