# cython: language_level=3
"""Symmetric allocations and the collectives that run on them with plain loads and stores.

A symmetric allocation is one shared segment per local rank, the same size everywhere, that every
rank of the communicator maps (hetccl/memory/symmetric.py creates them collectively). Once a
collective's buffers live in such segments, a rank can read its peers' inputs and write their
outputs directly: no FIFO staging (two copies) and no cross-memory-attach system call (which pins
pages and ran at 0.3-0.4x a streaming memcpy on the VM this was built on).

* allreduce ("dual-write"): rank r owns block r; for each cache-sized chunk it reduces the chunk
  from every rank's input *in rank order* and stores the result into every rank's output
  (streaming stores for large calls). Every byte is read once and written once per rank: the
  memory-traffic minimum. Out of place, the last combine writes straight into the outputs, two at
  a time (fused_rows: one combine, two streaming stores); in place (or AVG) an L1-sized tile is
  reduced into scratch first and stored to every output (ordinary stores where the output is the
  input just loaded: a DDP bucket), which is safe because block r of any buffer is touched only by
  rank r, which reads a tile everywhere before it writes it anywhere.
* allgather: rank r stores its block into block r of every rank's output (only outputs need be
  symmetric). broadcast: every rank loads the root's buffer. reduce_scatter: rank r reduces block r
  of every rank's input into its output (only inputs need be symmetric). alltoall: rank r loads
  block r of every rank's input into its output.

Registered regions: ``comm.register`` may move a plain buffer's pages into a memfd of its own
(hetccl/memory/registration.py); the region then joins this heap under an id never reused (per
owner rank), and its buffers publish (REG, id, offset) descriptors plus the memfd's descriptor
number in the control slot. A peer maps the owner's memfd (/proc/<pid>/fd/<n>, the ptrace check
cross-memory attach needs too; the memfd's name must carry the id) on first use and keeps the
mapping in a bounded cache; regions the owner dropped are announced in its slot (drop_ring) and
unmapped at the peer's next symmetric call, and every cached mapping goes with the heap.

Each call: publish (allocation, offset) descriptors of this rank's buffers and the call header in
the c2c control slots, sync (single_copy.pxd: epochs with release/acquire atomics, spin-then-futex),
check the headers, translate every peer's descriptor into this process's mapping of that peer's
segment, move the bytes, fence, sync again. Two syncs per call, no Python per chunk, no GIL.

Tolerant calls (``tolerant=True``: automatic registration, where each rank decides alone whether
its buffer is shared): a buffer in no allocation or region publishes descriptor 0 instead of
raising. After the first sync every rank sees every rank's descriptors, so all reach the same
verdict: all shared, the call runs; else every rank syncs once more (its control slot may then be
reused) and the entry returns False, and the caller runs the call on the plain-buffer path. The
shared case costs nothing extra: the agreement rides in the first sync every call has anyway.
"""
from cpython.buffer cimport PyBuffer_Release, PyBUF_WRITABLE
from libc.stdint cimport uint64_t, uint32_t, uint8_t, uintptr_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.errno cimport errno
from libc.string cimport memset, strcmp
from libc.stdio cimport snprintf
from posix.fcntl cimport open as c_open, O_RDWR, O_CLOEXEC
from posix.unistd cimport close as c_close, readlink
from posix.stat cimport struct_stat, fstat
from posix.mman cimport (mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_PRIVATE, MAP_FIXED,
                         MAP_FAILED, MAP_ANONYMOUS)

from hetccl._native.atomics cimport hc_now, hc_load32_sc, hc_store32_sc
from hetccl._native.c2c cimport C2C_OFF, C2C_DROP_RING, C2CSlot
from hetccl._native.blocks cimport even_blocks
from hetccl._native.codes cimport *
from hetccl._native.engine cimport Engine
from hetccl._native.failure cimport interrupted
from hetccl._native.life cimport hc_life_inuse
from hetccl._native.link cimport E_MISMATCH, E_CANCELLED
from hetccl._native.pinning cimport (get_buffer, check_overlap, pin_allgather, pin_allreduce,
                                     pin_rooted, release_pair)
from hetccl._native.single_copy cimport sync, enter_as
from hetccl._native.wire cimport PHASE_SYMMETRIC
from hetccl._native.kernels cimport (reduce_fn, dual_fn, get_reduce, get_reduce_dual, copy_bytes,
                                    copy_bytes_dual, HK_PAGED,
                                    divide_by, store_fence)

import os as _os

from hetccl.errors import InvalidUsage

cdef extern from "<sys/mman.h>":
    int MAP_POPULATE
    int MAP_NORESERVE

cdef enum:
    E_SYMMETRIC = -20            # a peer's descriptor names no live allocation of this rank's heap
    E_REG_OPEN = -21             # (err_kind) a peer's registered region: its memfd cannot be opened/mapped
    E_REG_NAME = -22             # ... its descriptor names no region of that peer (stale or garbage)
    E_REG_SIZE = -23             # ... the buffer does not fit inside the region
    OFF_BITS = 40                # descriptor = (allocation id + 1) << 40 | byte offset
    CHUNK = 256 << 10            # reduction unit: operand + result stay in a 1 MiB L2
    # The unit of an allreduce that cannot combine straight into its outputs (in place, or AVG):
    # reduce a tile of every input into an L1 scratch, then store it to every output. In place
    # (a DDP bucket), each output is an input just loaded, so the stores hit cache. Measured on
    # the 2-vCPU VM, 2 ranks, in-place AVG of 64 MiB float32, CPU time per call: 12.8 ms with
    # 256 KiB units and streaming stores, 7.6-7.8 ms with 4-8 KiB tiles and ordinary stores
    # (16 KiB 8.1, 32 KiB 9.5: the tile and both operands must stay in the 48 KiB L1).
    TILE = 8 << 10
    MAX_RANKS = 1024
    REG_IDS = (1 << 23) - 1      # registered region ids 1..REG_IDS, never reused (then: not shared)
    PEER_CACHE = 32              # peers' registered regions kept mapped here (least recently used goes)
    FALLBACK = 1                 # a tolerant call found some rank's buffer not shared: none ran it

cdef extern from *:
    # a registered region's descriptor: REG_FLAG | id << OFF_BITS | byte offset
    const uint64_t REG_FLAG "((uint64_t)1 << 63)"

cdef struct RegMine:              # a registered region of mine: peers map fd
    uint32_t id
    int fd
    char* base
    size_t mapped

cdef struct RegPeer:              # a peer's registered region, mapped here
    int q                         # its owner (-1: unused entry)
    uint32_t id
    char* base
    size_t mapped
    uint64_t stamp                # the call that used it last (LRU; never evicted by its own call)

cdef enum AllocState:
    A_EMPTY = 0                  # slot unused (or its Buffer died after a free)
    A_LIVE = 1
    A_FREED = 2                  # freed: my range still reserved (anonymous memory) until its Buffer dies
    A_STALE = 3                  # its Buffer died while a schedule ran: mapped until none does (sweep)

cdef struct SymAlloc:
    char** base                  # [size] where rank q's segment is mapped in this process
    size_t nbytes                # usable bytes (the same on every rank)
    size_t mapped                # bytes of every mapping (whole pages, >= 1 page)
    int state


cdef size_t unit_bytes(str name, size_t n) except 0:
    """A schedule's unit of work as set from Python: whole cache lines, at least a page."""
    if n < 4096 or n % 64:
        raise InvalidUsage(f"{name}={n}: use a multiple of 64 of at least 4096")
    return n


cdef class Heap:
    """The symmetric allocations of one communicator as the nogil schedules see them: per
    allocation id (the same on every rank: allocations are collective and numbered in order), where
    each rank's segment is mapped here."""
    cdef SymAlloc* allocs
    cdef int n
    cdef readonly int rank
    cdef readonly int size
    cdef readonly int live            # allocations not yet freed
    cdef int err_peer
    cdef uint64_t err_desc
    cdef size_t chunk                 # bytes per reduction / copy unit (CHUNK; a knob for benchmarks)
    cdef size_t tile                  # the same for allreduces reduced through scratch (TILE; a knob)
    cdef Engine engine                # whose schedules read the mappings (None: no guard needed)
    cdef RegMine* regs                # my registered regions (registered buffers shared with peers)
    cdef int nregs
    cdef RegPeer cache[PEER_CACHE]
    cdef uint32_t* seen               # [size] drops of each peer's already applied to the cache
    cdef uint64_t calls               # symmetric calls begun (the cache's clock)
    cdef int err_kind                 # what resolve() found wrong (E_REG_*), for the message
    cdef bint tolerant                # the call running is tolerant (module docstring)

    def __cinit__(self, int rank, int size):
        cdef int i
        if not 0 < size <= MAX_RANKS or not 0 <= rank < size:
            raise InvalidUsage(f"symmetric memory supports 1..{MAX_RANKS} ranks (got rank {rank} of {size})")
        self.rank, self.size = rank, size
        self.chunk = CHUNK
        self.tile = TILE
        self.allocs = NULL
        self.n = 0
        self.regs = NULL
        self.nregs = 0
        self.seen = <uint32_t*>calloc(size, sizeof(uint32_t))
        if self.seen == NULL:
            raise MemoryError()
        for i in range(PEER_CACHE):
            self.cache[i].q = -1

    def attach(self, Engine e):
        """The engine whose schedules use these mappings: a mapping is unmapped only while none of
        them runs (life.pxd), else later (sweep)."""
        self.engine = e

    def __dealloc__(self):
        cdef int i, q                 # schedules hold the heap: none runs now
        for i in range(self.n):
            for q in range(self.size):
                if self.allocs[i].base[q] != NULL:
                    munmap(self.allocs[i].base[q], self.allocs[i].mapped)
            free(self.allocs[i].base)
        free(self.allocs)
        for i in range(PEER_CACHE):
            self.evict(i)
        for i in range(self.nregs):
            c_close(self.regs[i].fd)
        free(self.regs)
        free(self.seen)

    @property
    def chunk_bytes(self):
        """Bytes per reduction / copy unit of the schedules (a multiple of 64, >= 4 KiB)."""
        return self.chunk

    @chunk_bytes.setter
    def chunk_bytes(self, size_t n):
        self.chunk = unit_bytes("chunk_bytes", n)

    @property
    def tile_bytes(self):
        """Bytes per tile of an allreduce reduced through scratch (in place or AVG): a multiple of
        64, >= 4 KiB."""
        return self.tile

    @tile_bytes.setter
    def tile_bytes(self, size_t n):
        self.tile = unit_bytes("tile_bytes", n)

    @property
    def count(self):
        """Allocation slots ever made (live, freed or forgotten): 0 means no buffer can be symmetric."""
        return self.n

    def reserve(self):
        """Append an empty slot and return its id. Every rank reserves one per collective
        allocation, even one that then fails, so ids stay the same on every rank."""
        cdef int i = self.n
        cdef SymAlloc* grown = <SymAlloc*>realloc(self.allocs, (i + 1) * sizeof(SymAlloc))
        if grown == NULL:
            raise MemoryError()
        self.allocs = grown
        memset(&self.allocs[i], 0, sizeof(SymAlloc))
        self.allocs[i].base = <char**>calloc(self.size, sizeof(char*))
        if self.allocs[i].base == NULL:
            raise MemoryError()
        self.n = i + 1
        return i

    def map_into(self, int i, list fds, size_t nbytes, size_t mapped):
        """Map every rank's segment into reserved slot i (fds[q]: an open descriptor of rank q's
        segment, sized to `mapped` bytes) and return the Buffer of mine. On error nothing stays
        mapped and the slot stays empty."""
        cdef int q
        cdef void* p
        cdef char** base = self.allocs[i].base
        if self.allocs[i].state != A_EMPTY or len(fds) != self.size:
            raise InvalidUsage("internal: symmetric slot reused or wrong rank count")
        try:
            for q in range(self.size):
                # the owner backed the pages (posix_fallocate); populate the page tables now so
                # the collectives never take a page fault
                p = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fds[q], 0)
                if p == MAP_FAILED:
                    raise OSError(errno, f"cannot map rank {q}'s symmetric segment ({mapped} bytes): "
                                         f"{_os.strerror(errno)}")
                base[q] = <char*>p
        except BaseException:
            for q in range(self.size):
                if base[q] != NULL:
                    munmap(base[q], mapped)
                    base[q] = NULL
            raise
        self.allocs[i].nbytes = nbytes
        self.allocs[i].mapped = mapped
        self.allocs[i].state = A_LIVE
        self.live += 1
        return Buffer(self, i)

    def free(self, int i):
        """Release allocation i here: swap every mapping of it (mine and my views of the peers')
        for private anonymous memory at the same addresses, so the shared pages go (once every
        rank freed them) while arrays still pointing there stay harmless and are recognised as
        freed. The address ranges themselves are released when the arrays die (forget)."""
        cdef SymAlloc* a
        cdef int q
        if not 0 <= i < self.n or self.allocs[i].state != A_LIVE:
            raise InvalidUsage("this buffer was already freed (comm.free or comm.close)")
        a = &self.allocs[i]
        for q in range(self.size):
            if a.base[q] != NULL:
                if mmap(a.base[q], a.mapped, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED:
                    if q != self.rank:            # cannot happen in practice; never leave it shared
                        munmap(a.base[q], a.mapped)
                        a.base[q] = NULL
        a.state = A_FREED
        self.live -= 1
        self.sweep()

    cdef void forget(self, int i) noexcept:
        """The Buffer of allocation i died: nothing of mine points into its ranges any more, but a
        running schedule may still load from my mappings of the peers' segments (a peer named
        this allocation): then they stay until the next sweep finds no schedule running."""
        cdef SymAlloc* a = &self.allocs[i]
        if a.state == A_LIVE:
            self.live -= 1
        hc_store32_sc(<uint32_t*>&a.state, A_STALE)    # resolve() no longer hands it out ...
        self.sweep()

    cdef void sweep(self) noexcept:
        """Unmap every stale allocation, unless a schedule is inside the engine (... then they wait:
        the store above and the engine's entry count order themselves, see life.pxd)."""
        cdef int i, q
        cdef SymAlloc* a
        if self.engine is not None and hc_life_inuse(&self.engine.fail.life):
            return
        for i in range(self.n):
            a = &self.allocs[i]
            if a.state != A_STALE:
                continue
            for q in range(self.size):
                if a.base[q] != NULL:
                    munmap(a.base[q], a.mapped)
                    a.base[q] = NULL
            a.state = A_EMPTY

    # ------------------------------------------------------------------ registered regions

    def add_region(self, uint32_t id, int fd, uintptr_t base, size_t mapped):
        """Publish [base, base+mapped), whose pages are the memfd fd's (named after `id`; this
        heap now owns fd), as registered region `id` (unique in this process, never reused):
        calls on buffers inside it take the symmetric schedules, and peers map fd."""
        cdef RegMine* grown
        cdef int i
        if id == 0 or id > REG_IDS:
            raise InvalidUsage(f"internal: registered region id {id} out of range")
        for i in range(self.nregs):
            if self.regs[i].id == id:
                raise InvalidUsage(f"internal: registered region id {id} published twice")
        grown = <RegMine*>realloc(self.regs, (self.nregs + 1) * sizeof(RegMine))
        if grown == NULL:
            raise MemoryError()
        self.regs = grown
        self.regs[self.nregs].id = id
        self.regs[self.nregs].fd = fd
        self.regs[self.nregs].base = <char*>base
        self.regs[self.nregs].mapped = mapped
        self.nregs += 1

    def drop_region(self, uint32_t id):
        """Stop sharing region `id`: close its memfd (the pages stay this process's, mapped where
        they are, until their owner unmaps them) and announce the drop in every peer's control slot,
        so each unmaps its copy at its next symmetric call. Calls on it take the plain path again."""
        cdef int i, j, q
        cdef C2CSlot* mine
        cdef uint32_t k
        for i in range(self.nregs):
            if self.regs[i].id == id:
                c_close(self.regs[i].fd)
                for j in range(i, self.nregs - 1):
                    self.regs[j] = self.regs[j + 1]
                self.nregs -= 1
                break
        else:
            return False
        if self.engine is not None and self.engine.links != NULL:
            for q in range(self.size):
                if q == self.rank or self.engine.links[q].c2c.mode == C2C_OFF:
                    continue
                mine = self.engine.links[q].c2c.mine
                k = mine.dropped
                mine.drop_ring[k % C2C_DROP_RING] = id
                hc_store32_sc(&mine.dropped, k + 1)
        return True

    @property
    def regions(self):
        """My registered regions: [(id, address, mapped bytes)]."""
        return [(self.regs[i].id, <uintptr_t>self.regs[i].base, self.regs[i].mapped) for i in range(self.nregs)]

    @property
    def peer_mappings(self):
        """Peers' registered regions mapped here: [(rank, id, mapped bytes)]."""
        return [(self.cache[i].q, self.cache[i].id, self.cache[i].mapped) for i in range(PEER_CACHE)
                if self.cache[i].q >= 0]

    def release_peer_mappings(self):
        """Unmap every peer region mapped here (the communicator closed: no schedule runs)."""
        cdef int i
        for i in range(PEER_CACHE):
            self.evict(i)

    cdef void evict(self, int i) noexcept nogil:
        if self.cache[i].q >= 0:
            munmap(self.cache[i].base, self.cache[i].mapped)
            self.cache[i].q = -1

    cdef int my_fd(self, uint64_t d) noexcept nogil:
        """The memfd behind my registered descriptor d (-1 if d is no registered region's)."""
        cdef int i
        cdef uint32_t id
        if not d & REG_FLAG:
            return -1
        id = <uint32_t>((d & ~REG_FLAG) >> OFF_BITS)
        for i in range(self.nregs):
            if self.regs[i].id == id:
                return self.regs[i].fd
        return -1

    cdef void apply_drops(self, int q, C2CSlot* t) noexcept nogil:
        """Unmap my copies of the regions peer q dropped since the last look (all of q's when
        more were dropped than its ring holds). Called after an entry sync: no schedule of mine
        holds a peer mapping then."""
        cdef uint32_t now = hc_load32_sc(&t.dropped), k
        cdef int i
        if now == self.seen[q]:
            return
        if now - self.seen[q] > C2C_DROP_RING:
            for i in range(PEER_CACHE):
                if self.cache[i].q == q:
                    self.evict(i)
        else:
            k = self.seen[q]
            while k != now:
                for i in range(PEER_CACHE):
                    if self.cache[i].q == q and self.cache[i].id == t.drop_ring[k % C2C_DROP_RING]:
                        self.evict(i)
                k += 1
        self.seen[q] = now

    cdef int map_peer(self, int q, int pid, int fd, uint32_t id, size_t need) noexcept nogil:
        """Map peer q's registered region `id` (its memfd, descriptor fd in process pid) into a
        cache entry and return its index, or a negative E_REG_* (nothing mapped)."""
        cdef char path[64]
        cdef char want[96]
        cdef char got[96]
        cdef long k
        cdef int f, i, victim = -1
        cdef struct_stat st
        cdef void* p
        if fd < 0 or pid <= 0:
            return E_REG_NAME
        snprintf(path, sizeof(path), "/proc/%d/fd/%d", pid, fd)
        snprintf(want, sizeof(want), "/memfd:hetccl-reg-%u (deleted)", id)
        k = readlink(path, got, sizeof(got) - 1)
        if k < 0:
            return E_REG_OPEN
        got[k] = 0
        if strcmp(got, want) != 0:
            return E_REG_NAME
        f = c_open(path, O_RDWR | O_CLOEXEC)
        if f < 0:
            return E_REG_OPEN
        if fstat(f, &st) != 0 or <size_t>st.st_size < need or st.st_size == 0:
            c_close(f)
            return E_REG_SIZE
        p = mmap(NULL, <size_t>st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, f, 0)
        c_close(f)
        if p == MAP_FAILED:
            return E_REG_OPEN
        for i in range(PEER_CACHE):       # a free entry, else the least recently used one
            if self.cache[i].q < 0:
                victim = i
                break
            if self.cache[i].stamp != self.calls and (victim < 0 or self.cache[i].stamp < self.cache[victim].stamp):
                victim = i
        if victim < 0:                    # cannot happen: a call names at most two regions per peer
            munmap(p, <size_t>st.st_size)
            return E_REG_OPEN
        self.evict(victim)
        self.cache[victim].q = q
        self.cache[victim].id = id
        self.cache[victim].base = <char*>p
        self.cache[victim].mapped = <size_t>st.st_size
        return victim

    cdef int resolve_region(self, int q, uint64_t d, size_t n, int pid, int fd, char** out) noexcept nogil:
        cdef uint32_t id = <uint32_t>((d & ~REG_FLAG) >> OFF_BITS)
        cdef uint64_t off = d & ((<uint64_t>1 << OFF_BITS) - 1)
        cdef int i, hit = -1
        for i in range(PEER_CACHE):
            if self.cache[i].q == q and self.cache[i].id == id:
                hit = i
                break
        if hit < 0:
            if id == 0 or id > REG_IDS:
                hit = E_REG_NAME
            else:
                hit = self.map_peer(q, pid, fd, id, 0)
        if hit >= 0 and (off > self.cache[hit].mapped or n > self.cache[hit].mapped - off):
            hit = E_REG_SIZE
        if hit < 0:
            self.err_peer = q
            self.err_desc = d
            self.err_kind = hit
            return E_SYMMETRIC
        self.cache[hit].stamp = self.calls
        out[0] = self.cache[hit].base + off
        return 0

    cdef int find(self, const char* p, size_t n, uint64_t* desc) noexcept nogil:
        """1 (desc set) if [p, p+n) lies in one of my live allocations or registered regions, -1 if
        in a freed allocation, else 0."""
        cdef int i
        cdef const char* b
        for i in range(self.nregs):
            b = self.regs[i].base
            if b <= p and p + n <= b + self.regs[i].mapped:
                desc[0] = REG_FLAG | (<uint64_t>self.regs[i].id << OFF_BITS) | <uint64_t>(p - b)
                return 1
        for i in range(self.n):
            if self.allocs[i].state == A_EMPTY or self.allocs[i].state == A_STALE:
                continue
            b = self.allocs[i].base[self.rank]
            if b <= p and p + n <= b + self.allocs[i].nbytes:
                if self.allocs[i].state == A_FREED:
                    return -1
                desc[0] = ((<uint64_t>i + 1) << OFF_BITS) | <uint64_t>(p - b)
                return 1
        return 0

    cdef int resolve(self, int q, uint64_t d, size_t n, char** out) noexcept nogil:
        """Where rank q's buffer (descriptor d, n bytes) is mapped here; E_SYMMETRIC if nowhere."""
        cdef uint64_t i = (d >> OFF_BITS) - 1, off = d & ((<uint64_t>1 << OFF_BITS) - 1)
        self.err_kind = 0
        if d == 0 or i >= <uint64_t>self.n or hc_load32_sc(<uint32_t*>&self.allocs[i].state) != A_LIVE or \
                off > self.allocs[i].nbytes or n > self.allocs[i].nbytes - off:
            self.err_peer = q
            self.err_desc = d
            return E_SYMMETRIC
        out[0] = self.allocs[i].base[q] + off
        return 0

    def index_of(self, obj):
        """(allocation id, state, byte offset) of the allocation holding obj's memory, or None."""
        cdef Py_buffer v
        cdef int i
        cdef const char* b
        get_buffer(obj, &v, False)
        try:
            for i in range(self.n):
                b = self.allocs[i].base[self.rank]
                if (self.allocs[i].state == A_LIVE or self.allocs[i].state == A_FREED) and b <= <char*>v.buf and \
                        <char*>v.buf + v.len <= b + self.allocs[i].nbytes:
                    return i, ("live" if self.allocs[i].state == A_LIVE else "freed"), <char*>v.buf - b
            return None
        finally:
            PyBuffer_Release(&v)

    def kind(self, obj):
        """True if obj lies in a live symmetric allocation, False if in none; InvalidUsage if it
        lies in a freed one (its memory is no longer shared)."""
        cdef Py_buffer v
        cdef uint64_t d
        cdef int k
        try:
            get_buffer(obj, &v, False)
        except InvalidUsage:
            return False                  # not a contiguous buffer: the ordinary path reports it
        k = self.find(<char*>v.buf, <size_t>v.len, &d)
        PyBuffer_Release(&v)
        if k < 0:
            raise InvalidUsage("this buffer belongs to a symmetric allocation that was freed "
                               "(comm.free or comm.close); allocate a new one with comm.alloc")
        return k == 1

    cdef describe_error(self, str what):
        cdef uint64_t d = self.err_desc
        cdef long i = <long>(d >> OFF_BITS) - 1
        cdef uint64_t off = d & ((<uint64_t>1 << OFF_BITS) - 1)
        if d & REG_FLAG:
            why = {E_REG_OPEN: "its memory could not be opened or mapped here",
                   E_REG_NAME: "no such region (a stale or garbage id)",
                   E_REG_SIZE: "the buffer does not lie inside the region"}.get(self.err_kind, "unknown")
            return InvalidUsage(
                f"{what}: rank {self.err_peer} passed registered buffer #{(d & ~REG_FLAG) >> OFF_BITS} "
                f"(offset {off}): {why}; every rank must pass buffers it registered (comm.register) "
                f"and still holds to the same call")
        return InvalidUsage(
            f"{what}: rank {self.err_peer} passed symmetric allocation #{i} (offset {off}), which rank "
            f"{self.rank} does not hold live (freed here, never allocated, or too small); every rank "
            f"must pass its own live comm.alloc buffers to the same call")


cdef class Buffer:
    """This rank's segment of one allocation, exported to numpy through the buffer protocol. It
    lives as long as any array on it; when it dies its address range is released."""
    cdef Heap heap
    cdef int index
    cdef int owner                    # whose segment this exposes (my rank, or a peer's: PeerBuffer)
    cdef object keep                  # a PeerBuffer keeps my Buffer, hence every mapping, alive
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]
    cdef object __weakref__

    def __cinit__(self, Heap heap, int index, int owner=-1, keep=None):
        self.heap = heap
        self.index = index
        self.owner = heap.rank if owner < 0 else owner
        self.keep = keep

    def peer(self, int q):
        """A Buffer over rank q's segment of this allocation, as mapped here (load/store into it)."""
        if not 0 <= q < self.heap.size:
            raise InvalidUsage(f"peer {q} is not a rank of this communicator (0..{self.heap.size - 1})")
        if self.heap.allocs[self.index].state != A_LIVE:
            raise InvalidUsage("this symmetric allocation was freed (comm.free or comm.close)")
        return Buffer(self.heap, self.index, q, self)

    def __getbuffer__(self, Py_buffer* view, int flags):
        cdef SymAlloc* a = &self.heap.allocs[self.index]
        self.shape[0] = <Py_ssize_t>a.nbytes
        self.strides[0] = 1
        view.buf = a.base[self.owner]
        view.obj = self
        view.len = <Py_ssize_t>a.nbytes
        view.readonly = 0
        view.itemsize = 1
        view.format = "B"
        view.ndim = 1
        view.shape = self.shape
        view.strides = self.strides
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __dealloc__(self):
        if self.heap is not None and self.keep is None:
            self.heap.forget(self.index)


# ------------------------------------------------------------------ schedules (nogil)

cdef int begin(Engine e, Heap h, int coll, int dtype, int op, uint64_t count, uint64_t sd,
               uint64_t rd, size_t slen, size_t rlen, char** S, char** R, double dl) noexcept nogil:
    """Publish my descriptors, sync, check headers, and resolve every rank's input (S, if sd) and
    output (R, if rd) into this process's mappings (slen/rlen bytes each). A tolerant call
    (h.tolerant) whose needed descriptor (S: inputs, R: outputs) is 0 on any rank syncs again and
    returns FALLBACK on every rank."""
    cdef int q, rc, sfd = h.my_fd(sd), rfd = h.my_fd(rd)
    cdef C2CSlot* t
    cdef bint tolerant = h.tolerant
    for q in range(e.size):               # the memfds behind registered buffers (before the epoch)
        if q != e.rank:
            e.links[q].c2c.mine.sfd = sfd
            e.links[q].c2c.mine.rfd = rfd
    rc = enter_as(e, coll, dtype, op, PHASE_SYMMETRIC, count, sd, rd, dl)
    if rc < 0:
        return rc
    if tolerant and not all_shared(e, S != NULL, R != NULL, sd, rd):
        rc = sync(e, dl)                  # every rank has read every slot: they may be reused
        return rc if rc < 0 else FALLBACK
    h.calls += 1
    for q in range(e.size):
        if q == e.rank:
            continue
        t = e.links[q].c2c.theirs
        h.apply_drops(q, t)
        if sd != 0:
            rc = resolve_any(e, h, q, t.sbuf, slen, t.sfd, &S[q])
            if rc < 0:
                return rc
        if rd != 0:
            rc = resolve_any(e, h, q, t.rbuf, rlen, t.rfd, &R[q])
            if rc < 0:
                return rc
    return 0


cdef bint all_shared(Engine e, bint need_s, bint need_r, uint64_t sd, uint64_t rd) noexcept nogil:
    """Whether every rank published the descriptors this call needs (the same answer on every
    rank: each reads the same descriptors after the first sync)."""
    cdef int q
    cdef C2CSlot* t
    if (need_s and sd == 0) or (need_r and rd == 0):
        return False
    for q in range(e.size):
        if q != e.rank:
            t = e.links[q].c2c.theirs
            if (need_s and t.sbuf == 0) or (need_r and t.rbuf == 0):
                return False
    return True


cdef inline int resolve_any(Engine e, Heap h, int q, uint64_t d, size_t n, int fd, char** out) noexcept nogil:
    """Peer q's descriptor d: an allocation of the heap or a registered region of q's."""
    if d & REG_FLAG:
        return h.resolve_region(q, d, n, e.links[q].c2c.pid, fd, out)
    return h.resolve(q, d, n, out)


cdef int finish(Engine e, bint st, double dl) noexcept nogil:
    """Order my (streaming) stores, then wait until every rank is done with every buffer."""
    if st:
        store_fence()
    return sync(e, dl)


cdef void reduce_rows(reduce_fn fn, int dtype, int op, int N, char** S, size_t at, size_t n,
                      char* A) noexcept nogil:
    """A = S[0][at:at+n] OP S[1][...] OP ... (rank order; AVG divides at the end)."""
    cdef size_t cnt = n // dtype_size(dtype)
    cdef int q
    if N == 1:
        copy_bytes(A, S[0] + at, n, 0)
    else:
        fn(A, S[0] + at, S[1] + at, cnt, 0)
        for q in range(2, N):
            fn(A, A, S[q] + at, cnt, 0)
    if op == OP_AVG:
        divide_by(A, cnt, dtype, N)


cdef int allreduce_sym(Engine e, Heap h, char* sbuf, uint64_t sd, char* rbuf, uint64_t rd,
                       size_t count, int dtype, int op, double dl) noexcept nogil:
    cdef int N = e.size, r = e.rank, i, p, rc
    cdef size_t es = dtype_size(dtype), C = h.chunk - h.chunk % es, o, n, at
    cdef size_t boff[MAX_RANKS]
    cdef size_t blen[MAX_RANKS]
    cdef char* S[MAX_RANKS]
    cdef char* R[MAX_RANKS]
    cdef char* A = e.scratch(C if C > h.tile else h.tile)
    cdef reduce_fn fn = get_reduce(dtype, op)
    cdef bint st = count * es >= e.nt_threshold
    S[r], R[r] = sbuf, rbuf
    rc = begin(e, h, COLL_ALLREDUCE, dtype, op, count, sd, rd, count * es, count * es, S, R, dl)
    if rc != 0:
        return rc
    even_blocks(count, N, es, boff, blen)
    cdef bint fused = N > 1 and op != OP_AVG and not aliased(N, S, R)
    cdef dual_fn fn2 = get_reduce_dual(dtype, op)
    if not fused:                             # in place or AVG: tiles that stay in L1
        C = h.tile - h.tile % es
    o = 0
    while o < blen[r]:
        if interrupted(&e.fail):
            return E_CANCELLED
        n = blen[r] - o if blen[r] - o < C else C
        at = boff[r] + o
        if fused:
            fused_rows(fn, fn2, es, N, r, S, R, at, n, A, st)
        else:
            reduce_rows(fn, dtype, op, N, S, at, n, A)
            for i in range(N):                # start with the next rank: spread the writers
                p = (r + 1 + i) % N
                # an output that is its rank's input was just loaded: its lines are in cache, and
                # ordinary stores there cost less than streaming them out (measured: see TILE)
                copy_bytes(R[p] + at, A, n, st and R[p] != S[p])
        o += n
    return finish(e, st, dl)


cdef bint aliased(int N, char** S, char** R) noexcept nogil:
    """Whether some rank runs in place (its output is its input)."""
    cdef int q
    for q in range(N):
        if S[q] == R[q]:
            return True
    return False


cdef void fused_rows(reduce_fn fn, dual_fn fn2, size_t es, int N, int r, char** S, char** R,
                     size_t at, size_t n, char* A, bint st) noexcept nogil:
    """Out of place: reduce all but the last input into the scratch A (rank order), then run the
    last combine straight into the outputs, two at a time (one combine, two streaming stores per
    256-byte block). Measured on this 2-vCPU VM, per 32 MiB block: 4.9 ms for one combine per
    output, 6.7 ms for reduce-into-scratch then copy to both outputs (the copy re-reads a result
    that had to be written to cache first). In place this would overwrite an input before its
    other outputs are computed, hence out of place only. Every input is shared memory, on 4 KiB
    pages unless the host enables shmem huge pages: the kernel walks them ahead (HK_PAGED)."""
    cdef size_t cnt = n // es
    cdef const char* acc = S[0] + at
    cdef const char* last = S[N - 1] + at
    cdef int i = 0, q
    if N > 2:
        fn(A, S[0] + at, S[1] + at, cnt, 0)
        for q in range(2, N - 1):
            fn(A, A, S[q] + at, cnt, 0)
        acc = A
    while i + 1 < N:                          # start with the next rank: spread the writers
        fn2(R[(r + 1 + i) % N] + at, R[(r + 2 + i) % N] + at, acc, last, cnt, HK_PAGED | 1 if st else 0)
        i += 2
    if i < N:
        fn(R[(r + 1 + i) % N] + at, acc, last, cnt, st)


cdef int reduce_scatter_sym(Engine e, Heap h, char* sbuf, uint64_t sd, char* rbuf, size_t nb,
                            int dtype, int op, double dl) noexcept nogil:
    """Equal blocks of nb bytes: rank r reduces block r of every input into its output."""
    cdef int N = e.size, r = e.rank, rc
    cdef size_t es = dtype_size(dtype), C = h.chunk - h.chunk % es, o = 0, n
    cdef char* S[MAX_RANKS]
    cdef char* A = e.scratch(C)
    cdef reduce_fn fn = get_reduce(dtype, op)
    cdef bint st = nb >= e.nt_threshold
    S[r] = sbuf
    rc = begin(e, h, COLL_REDUCE_SCATTER, dtype, op, nb // es, sd, 0, nb * N, 0, S, NULL, dl)
    if rc != 0:
        return rc
    while o < nb:
        if interrupted(&e.fail):
            return E_CANCELLED
        n = nb - o if nb - o < C else C
        reduce_rows(fn, dtype, op, N, S, nb * r + o, n, A)
        copy_bytes(rbuf + o, A, n, st)
        o += n
    return finish(e, st, dl)


cdef int allgather_sym(Engine e, Heap h, char* sbuf, char* rbuf, uint64_t rd, size_t nb, int dtype,
                       double dl) noexcept nogil:
    """Push my block into every output, one cache-sized chunk at a time: the chunk is loaded from
    memory once and stored N times, two outputs per pass over it (streaming stores for large
    outputs)."""
    cdef int N = e.size, r = e.rank, i, p, rc, nd = 0
    cdef char* R[MAX_RANKS]
    cdef char* D[MAX_RANKS]                   # my block in every output but one already in place
    cdef size_t o = 0, n
    cdef bint st = nb * N >= e.nt_threshold
    R[r] = rbuf
    rc = begin(e, h, COLL_ALLGATHER, dtype, 0, nb // dtype_size(dtype), 0, rd, 0, nb * N, NULL, R, dl)
    if rc != 0:
        return rc
    for i in range(N):                        # start with the next rank: spread the writers
        p = (r + 1 + i) % N
        if R[p] + nb * r != sbuf:             # in place: my block of my output is already there
            D[nd] = R[p] + nb * r
            nd += 1
    while o < nb:
        if interrupted(&e.fail):
            return E_CANCELLED
        n = nb - o if nb - o < h.chunk else h.chunk
        i = 0
        while i + 1 < nd:                     # two outputs per load of the chunk
            copy_bytes_dual(D[i] + o, D[i + 1] + o, sbuf + o, n, st)
            i += 2
        if i < nd:
            copy_bytes(D[i] + o, sbuf + o, n, st)
        o += n
    return finish(e, st, dl)


cdef int broadcast_sym(Engine e, Heap h, char* buf, uint64_t d, size_t nb, int root, int dtype,
                       double dl) noexcept nogil:
    cdef char* S[MAX_RANKS]
    cdef int rc
    cdef bint st = nb >= e.nt_threshold
    S[e.rank] = buf
    # the root rides in the header's op byte: ranks naming different roots mismatch at the first sync
    rc = begin(e, h, COLL_BROADCAST, dtype, root & 0xFF, nb // dtype_size(dtype), d, 0, nb, 0, S,
               NULL, dl)
    if rc != 0:
        return rc
    if e.rank != root:
        copy_bytes(buf, S[root], nb, st)
    return finish(e, st, dl)


cdef int alltoall_sym(Engine e, Heap h, char* sbuf, uint64_t sd, char* rbuf, size_t nb, int dtype,
                      double dl) noexcept nogil:
    """Equal blocks of nb bytes: rank r loads block r of every rank's input into block q of its output."""
    cdef int N = e.size, r = e.rank, i, q, rc
    cdef char* S[MAX_RANKS]
    cdef bint st = nb * N >= e.nt_threshold
    S[r] = sbuf
    rc = begin(e, h, COLL_ALLTOALL, dtype, 0, nb // dtype_size(dtype), sd, 0, nb * N, 0, S, NULL, dl)
    if rc != 0:
        return rc
    for i in range(N):
        q = (r + 1 + i) % N
        copy_bytes(rbuf + nb * q, S[q] + nb * r, nb, st)
    return finish(e, st, dl)


# ------------------------------------------------------------------ Python entry points

cdef uint64_t descriptor(Heap h, Py_buffer* v, str role) except? 0:
    """The descriptor peers resolve this buffer by; 0 in a tolerant call if it is in no live
    allocation or region (InvalidUsage otherwise)."""
    cdef uint64_t d = 0
    cdef int k = h.find(<char*>v.buf, <size_t>v.len, &d)
    if k != 1 and h.tolerant:
        return 0
    if k != 1:
        raise InvalidUsage(f"the {role} buffer is {'a freed' if k < 0 else 'not a'} symmetric "
                           f"allocation; pass buffers from comm.alloc (or let hetccl choose the "
                           f"algorithm: ordinary buffers take the other schedules)")
    return d


cdef int ready(Engine e, Heap h) except -1:
    e.check_usable()
    if not e.c2c_everywhere():
        raise InvalidUsage("the symmetric schedules need every pair of this communicator linked by "
                           "c2c (one host, HETCCL_TRANSPORTS allowing c2c)")
    if h.size != e.size or h.rank != e.rank:
        raise InvalidUsage("this symmetric heap belongs to another communicator")
    return 0


cdef bint done(Engine e, Heap h, int rc, str what, double timeout) except -1:
    """After a schedule: True if it ran, False if a tolerant call fell back; raises its error."""
    h.tolerant = False
    if rc == FALLBACK:
        return False
    if rc < 0:
        fail(e, h, rc, what, timeout)
    return True


cdef fail(Engine e, Heap h, int rc, str what, double timeout):
    if rc == E_SYMMETRIC:
        e.fail.broken = True              # the peers are past the first sync: abort them too
        raise h.describe_error(what)
    try:
        e.raise_error(rc, what, timeout)
    except InvalidUsage as err:
        if rc != E_MISMATCH:
            raise
        raise InvalidUsage(f"{err} (step {PHASE_SYMMETRIC} is the single-copy schedule over symmetric "
                           f"buffers: every rank must pass comm.alloc buffers, or buffers registered "
                           f"with comm.register whose handle says shared, to this call, or none)") from None


cdef int check_op(int dtype, int op) except -1:
    if get_reduce(dtype, op) == NULL:
        raise InvalidUsage(f"op {op} is not defined for dtype {dtype}")
    return 0


def allreduce(Engine e, Heap h, sendobj, recvobj, int dtype, int op, double timeout, bint tolerant=False):
    """recv = reduction over ranks of send (both symmetric; send may be recv: in place). Every
    entry returns True; a tolerant one False where some rank's buffer was not shared (nothing ran:
    run the call on the plain path)."""
    cdef Py_buffer sv, rv
    cdef bint inplace = sendobj is recvobj
    cdef uint64_t sd, rd
    cdef size_t es = dtype_size(dtype)
    cdef int rc
    cdef double dl
    ready(e, h)
    pin_allreduce(sendobj, recvobj, dtype, op, &sv, &rv)
    try:
        h.tolerant = tolerant
        sd = descriptor(h, &sv, "input")
        rd = descriptor(h, &rv, "output")
        dl = hc_now() + timeout
        e.begin("allreduce", 0)
        with nogil:
            rc = allreduce_sym(e, h, <char*>sv.buf, sd, <char*>rv.buf, rd, <size_t>rv.len // es,
                               dtype, op, dl)
        e.leave()
        return done(e, h, rc, "allreduce", timeout)
    finally:
        h.tolerant = False
        release_pair(inplace, &sv, &rv)


def allgather(Engine e, Heap h, sendobj, recvobj, int dtype, double timeout, bint tolerant=False):
    """recv = concatenation over ranks of send (recv symmetric; send any buffer, or recv: in place)."""
    cdef Py_buffer sv, rv
    cdef bint same = sendobj is recvobj
    cdef uint64_t rd
    cdef int rc
    cdef double dl
    ready(e, h)
    pin_allgather(sendobj, recvobj, e.size, e.rank, dtype_size(dtype), &sv, &rv)
    try:
        h.tolerant = tolerant
        rd = descriptor(h, &rv, "output")
        dl = hc_now() + timeout
        e.begin("allgather", 0)
        with nogil:
            rc = allgather_sym(e, h, <char*>sv.buf, <char*>rv.buf, rd, <size_t>sv.len, dtype, dl)
        e.leave()
        return done(e, h, rc, "allgather", timeout)
    finally:
        h.tolerant = False
        release_pair(same, &sv, &rv)


def broadcast(Engine e, Heap h, obj, int root, int dtype, double timeout, bint tolerant=False):
    """Copy root's buffer into every rank's (all symmetric, same size)."""
    cdef Py_buffer v
    cdef uint64_t d
    cdef int rc
    cdef double dl
    ready(e, h)
    pin_rooted(obj, root, e.size, dtype_size(dtype), &v)
    try:
        h.tolerant = tolerant
        d = descriptor(h, &v, "broadcast")
        dl = hc_now() + timeout
        e.begin("broadcast", 0)
        with nogil:
            rc = broadcast_sym(e, h, <char*>v.buf, d, <size_t>v.len, root, dtype, dl)
        e.leave()
        return done(e, h, rc, "broadcast", timeout)
    finally:
        h.tolerant = False
        PyBuffer_Release(&v)


cdef int pin_blocks(Engine e, sendobj, recvobj, size_t es, str what, bint out_is_block,
                    Py_buffer* sv, Py_buffer* rv) except -1:
    """Pin send (symmetric, size blocks) and recv (one block for reduce_scatter, size blocks for
    alltoall), disjoint, whole elements."""
    get_buffer(sendobj, sv, False)
    try:
        get_buffer(recvobj, rv, True)
    except BaseException:
        PyBuffer_Release(sv)
        raise
    try:
        want = sv.len // e.size if out_is_block else sv.len
        if sv.len % (e.size * es) or rv.len != want:
            raise InvalidUsage(f"{what} needs an input of size x n elements and an output of "
                               f"{'n' if out_is_block else 'size x n'} elements (got {sv.len} and "
                               f"{rv.len} bytes on {e.size} ranks)")
        check_overlap(sv, rv, False)
        if sv.buf == rv.buf and sv.len:
            raise InvalidUsage(f"{what} over symmetric buffers needs distinct input and output")
    except BaseException:
        PyBuffer_Release(sv)
        PyBuffer_Release(rv)
        raise
    return 0


cdef blocks(Engine e, Heap h, sendobj, recvobj, int dtype, int op, double timeout, bint scatter,
            bint tolerant):
    """reduce_scatter (scatter: recv = block `rank` of the reduction of send) or alltoall (block q
    of recv = block `rank` of rank q's send); send symmetric, equal blocks."""
    cdef Py_buffer sv, rv
    cdef uint64_t sd
    cdef int rc
    cdef double dl
    what = "reduce_scatter" if scatter else "alltoall"
    ready(e, h)
    if scatter:
        check_op(dtype, op)
    pin_blocks(e, sendobj, recvobj, dtype_size(dtype), what, scatter, &sv, &rv)
    try:
        h.tolerant = tolerant
        sd = descriptor(h, &sv, "input")
        dl = hc_now() + timeout
        e.begin(what, 0)
        with nogil:
            if scatter:
                rc = reduce_scatter_sym(e, h, <char*>sv.buf, sd, <char*>rv.buf, <size_t>rv.len, dtype,
                                        op, dl)
            else:
                rc = alltoall_sym(e, h, <char*>sv.buf, sd, <char*>rv.buf, <size_t>sv.len // e.size,
                                  dtype, dl)
        e.leave()
        return done(e, h, rc, what, timeout)
    finally:
        h.tolerant = False
        PyBuffer_Release(&sv)
        PyBuffer_Release(&rv)


def reduce_scatter(Engine e, Heap h, sendobj, recvobj, int dtype, int op, double timeout,
                   bint tolerant=False):
    """recv = block `rank` of the reduction over ranks of send (send symmetric, equal blocks)."""
    return blocks(e, h, sendobj, recvobj, dtype, op, timeout, True, tolerant)


def alltoall(Engine e, Heap h, sendobj, recvobj, int dtype, double timeout, bint tolerant=False):
    """Block q of recv = block `rank` of rank q's send (send symmetric, equal blocks)."""
    return blocks(e, h, sendobj, recvobj, dtype, 0, timeout, False, tolerant)
