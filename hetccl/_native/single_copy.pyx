# cython: language_level=3
"""Single-copy allreduce, allgather and alltoall for communicators whose every pair is linked by ``c2c``.

Instead of staging through the shm FIFOs (sender copies in, receiver copies out: two copies), each
rank works on its peers' memory directly:

* **cma mode** — every rank publishes the addresses of its input and output buffers in its control
  slot; peers then read and write those buffers with ``process_vm_readv/writev`` (one kernel copy
  between the two processes). Allreduce: rank r owns block r; for each cache-sized chunk it reads the
  peers' chunks of block r into a cache-resident scratch, reduces them *in rank order* (so every rank
  ends with bit-identical results), then writes the result chunk into its own output (streaming
  stores for large outputs) and straight into every peer's output. Each byte of the result is
  computed once and moved once: the "dual-write" scheme at the memory-traffic minimum. Allgather:
  each rank reads every peer's block straight into its output.
* **window mode** (CMA not permitted) — each pair direction has a pre-faulted shared window. Allreduce
  rounds: copy my inputs for block p into window(r->p); sync; reduce block r loading peers' windows
  directly, writing the result into my output and into the result half of every window(r->p); sync;
  copy the other blocks' results out of the windows. Allgather rounds: copy my block into the
  windows; sync; copy the peers' blocks out; sync.
* **alltoall** (cma mode) — each rank publishes its buffers' addresses and reads block ``rank`` of
  every peer's input straight into its output (one kernel copy each) as soon as that peer has
  published its own (read_peers: no all-rank entry sync), copies its own block the first time no
  peer is ready (else between the post and the wait of its last sync), then syncs. The FIFO
  pairwise exchange copies every byte twice and needs both ends of a pair on a CPU at once; this
  does neither, so it wins for large blocks and with more ranks than cores. The cma allgather
  enters the same way.
* **allgather by recursive doubling** (cma mode, a power-of-two number of ranks, 4 or more) —
  Open MPI's order below 32 ranks over the same reads: log2(N) steps, step k reading the 2^k
  blocks the partner rank ^ 2^k holds in one read (read_doubling). Fewer, larger reads and one
  reader per buffer per step; it waits for one partner per step where the arrival-order read
  waits for nobody in particular, so it wins for large outputs and loses for small ones. Which
  sizes take it is the probe's verdict (collectives/single_copy_probe.py), set per communicator
  in ``Engine.ag_doubling`` (doubling_bucket).
* **allgather by writing ("push")** (cma mode, 3+ ranks) — the arrival order with writes: each
  rank writes its input into block ``rank`` of every peer's output (read_peers, push). Where the
  probe measured it faster than the reads (``Engine.ag_push``): every reader of one input pinned
  the same pages, a writer pins one block of one peer's output.
* **broadcast** (cma mode) — every non-root reads the head of the root's buffer straight into its
  own while the root writes the tail (1/N, root_share) into every non-root's.

Broadcast, allgather and alltoall on plain buffers run here from the sizes the communicator-creation
probe measured them faster than the FIFOs (collectives/single_copy_probe.py). A read the kernel
refuses (EPERM/EACCES) is reported in the call's last sync; every rank then returns False together
and the router re-runs the call on the FIFOs (``finish_refusable``).

Synchronisation is a per-rank epoch counter in each pair's control slot (release/acquire atomics);
a waiter spins, yields, then sleeps on a shared futex, which the poster wakes only when the waiter
said it sleeps. While a rank waits it looks at *every* peer, not only the one it waits for
(``check_peers``): a peer's socket hanging up raises ``PeerLostError``, bytes in a FIFO from a peer
that has not reached the sync, or (entry sync) a peer there with another call header, raise
``InvalidUsage``. With 3+ ranks the odd one out is often not the peer being waited for, and it may
never post its epoch at all (it is in a FIFO collective), so waiting on it alone ends at the timeout.
"""
from libc.stdint cimport uint64_t, uint32_t, uint8_t, int32_t, uintptr_t
from libc.string cimport memcpy, memcmp, memset

from hetccl._native.atomics cimport hc_now, hc_relax, hc_load_acq, hc_load32_sc, hc_store32_sc
from hetccl._native.blocks cimport even_blocks, slice_len
from hetccl._native.c2c cimport (C2CPeer, C2CSlot, C2C_OFF, C2C_CMA, C2C_WINDOW, hc_add32,
                                 hc_futex_wake, hc_cma)
from hetccl._native.codes cimport *
from hetccl._native.engine cimport Engine
from hetccl._native.failure cimport interrupted, check_signals
from hetccl._native.kernels cimport reduce_fn, get_reduce, copy_bytes, divide_by, store_fence
from hetccl._native.life cimport hc_life_sleep
from hetccl._native.link cimport (Link, E_TIMEOUT, E_PEER_LOST, E_MISMATCH, E_INTERRUPTED, E_CANCELLED,
                                  E_BAD_ADDRESS)
from hetccl._native.pinning cimport (Pins, check_alltoall, pin_allgather, pin_allreduce, pin_rooted,
                                     release_pair)
from cpython.buffer cimport PyBuffer_Release
from hetccl._native.posix_wait cimport pollfd, poll, POLLHUP, POLLERR, POLLNVAL, POLLRDHUP, sched_yield
from hetccl._native.wire cimport HDR_BYTES, HDR_CHECKED, PHASE_DIRECT, put_header

from libc.errno cimport EPERM, EACCES, EFAULT

import os as _os

from hetccl.errors import InvalidUsage

cdef enum:
    CHUNK = 2 << 20

cdef uint64_t _probe_word = 0x4843434C43324332     # read by peers to test cross-memory attach


# ------------------------------------------------------------------ set-up helpers (Python)

def probe_address():
    """(pid, address, value) of a word peers read to test cross-memory attach into this process."""
    return _os.getpid(), <uintptr_t>&_probe_word, _probe_word


def cma_probe(int pid, uint64_t addr, uint64_t expect):
    """0 if process_vm_readv of 8 bytes at addr in pid returns expect, else the errno (or -1 for a
    wrong value)."""
    cdef uint64_t got = 0
    cdef long rc
    with nogil:
        rc = hc_cma(pid, &got, addr, 8, 0)
    if rc < 0:
        return <int>-rc
    return 0 if got == expect else -1


# ------------------------------------------------------------------ synchronisation (nogil)

cdef int peer_gone(Engine e, int p) noexcept nogil:
    """E_PEER_LOST if the pair's socket says the peer hung up (its doorbell bytes are left alone)."""
    cdef pollfd f
    cdef Link* L = &e.links[p]
    if L.closed:
        return E_PEER_LOST
    f.fd = L.fd
    f.events = POLLRDHUP
    f.revents = 0
    if poll(&f, 1, 0) > 0 and (f.revents & (POLLHUP | POLLERR | POLLNVAL | POLLRDHUP)):
        L.closed = 1
        return E_PEER_LOST
    return 0


cdef int fifo_intrudes(Engine e, int p) noexcept nogil:
    """The peer wrote into our FIFO while we wait for its sync: it is in another collective (the
    caller makes sure it had not passed the sync when it wrote, see check_peers)."""
    cdef Link* L = &e.links[p]
    cdef size_t k
    if hc_load_acq(&L.fifo.rx_ctl.head) == L.fifo.rx_tail:
        return 0
    memset(e.fail.got, 0, HDR_BYTES)
    k = L.fifo.rx_tail & L.fifo.mask
    if hc_load_acq(&L.fifo.rx_ctl.head) - L.fifo.rx_tail >= HDR_BYTES and L.fifo.cap - k >= HDR_BYTES:
        memcpy(e.fail.got, L.fifo.rx_data + k, HDR_BYTES)
    memcpy(e.fail.want, e.links[p].c2c.mine.hdr, HDR_BYTES)
    return 1


cdef inline bint arrived(Engine e, int p, uint32_t want) noexcept nogil:
    """Peer p has posted epoch want (acquire: everything it stored before, its header included, is
    visible here)."""
    return <int32_t>(hc_load32_sc(&e.links[p].c2c.theirs.epoch) - want) >= 0


cdef int header_mismatch(Engine e, int p) noexcept nogil:
    """E_MISMATCH, with both headers for the error message, if peer p published another call."""
    if memcmp(e.links[p].c2c.theirs.hdr, e.links[p].c2c.mine.hdr, HDR_CHECKED) == 0:
        return 0
    e.fail.peer = p
    memcpy(e.fail.got, e.links[p].c2c.theirs.hdr, HDR_BYTES)
    memcpy(e.fail.want, e.links[p].c2c.mine.hdr, HDR_BYTES)
    return E_MISMATCH


cdef int check_peers(Engine e, uint32_t want, bint entry, double now, double* last) noexcept nogil:
    """While waiting for sync `want`: is the call doomed because of *any* peer? At most every
    50 ms per sync (*last: when it last looked), since it costs a poll per peer.

    Why each test cannot fire for a correct program:

    * a peer that has not posted `want` is still before this sync of this call, in which no
      single-copy schedule writes a FIFO: bytes from it mean it is in a FIFO collective. The epoch
      is loaded again *after* the FIFO head (acquire), so bytes it wrote after passing the sync
      (possible in a call's last sync: it may have gone on to the next call) are never taken for
      an intrusion;
    * in the entry sync (enter_as), a peer that has posted `want` published its header before (the
      epoch store releases it) and cannot rewrite it: its next call needs this call's last sync,
      which needs an epoch we have not posted. So its header is complete and stable, and one that
      differs (another collective, count, dtype, op, root, schedule, or a later sequence number:
      it made calls we did not) is a mismatch now, not only once the last peer arrives. The header
      of a peer that has not arrived may be its previous call's or half written, so it is not
      read; nothing is lost, since a peer posts its epoch right after writing its header;
    * a closed socket of a peer that has not posted `want` means it will never post it; in the
      entry sync an arrived peer cannot leave either (it waits for the same peers), so its closed
      socket means it died or aborted (typically: it saw the mismatch first). In a later sync an
      arrived peer may have finished and left, so it is not looked at there.

    Mismatches are looked for first: a peer that saw one aborts, and its name for the error is
    better than "lost"."""
    cdef int q
    if now - last[0] < 0.05:
        return 0
    last[0] = now
    for q in range(e.size):
        if q == e.rank:
            continue
        if arrived(e, q, want):
            if entry and header_mismatch(e, q) < 0:
                return E_MISMATCH
        elif fifo_intrudes(e, q) and not arrived(e, q, want):
            e.fail.peer = q
            return E_MISMATCH
    for q in range(e.size):
        if q != e.rank and (entry or not arrived(e, q, want)) and peer_gone(e, q) < 0:
            e.fail.peer = q
            return E_PEER_LOST
    return 0


cdef int wait_epoch(Engine e, int p, uint32_t want, bint entry, double* last,
                    double deadline) noexcept nogil:
    """Spin, then yield, then futex-sleep until peer p's epoch reaches want; once sleeping, look at
    every peer (check_peers, at most every 50 ms) between sleeps of at most 100 ms. An interrupt of
    the engine ends the wait at once (the sleep includes its word, life.pxd)."""
    cdef C2CSlot* t = e.links[p].c2c.theirs
    cdef uint32_t v
    cdef double start = 0, now, waited
    cdef int iters = 0, ms, rc
    while True:
        v = hc_load32_sc(&t.epoch)
        if <int32_t>(v - want) >= 0:
            return 0
        iters += 1
        if start == 0 or (iters & 63) == 0:
            now = hc_now()
            if start == 0:
                start = now
            if interrupted(&e.fail):
                return E_CANCELLED
            if now > deadline:
                e.fail.peer = p
                return E_TIMEOUT
            waited = now - start
            if waited > e.spin_s + e.yield_s:
                rc = check_peers(e, want, entry, now, last)
                if rc < 0:
                    return rc
                ms = <int>((deadline - now) * 1000.0) + 1
                if ms > 100:
                    ms = 100
                hc_add32(&t.waiters, 1)
                v = hc_load32_sc(&t.epoch)
                rc = 0
                if <int32_t>(v - want) < 0:
                    rc = hc_life_sleep(&e.fail.life, &t.epoch, v, ms)
                hc_add32(&t.waiters, -1)
                if interrupted(&e.fail):
                    return E_CANCELLED
                if rc != 0 and hc_now() - now >= ms * 1e-3 * 0.9:
                    if check_signals(&e.fail) != 0:        # a quiet 100 ms: honour Ctrl-C
                        return E_INTERRUPTED
                continue
            if waited > e.spin_s:
                sched_yield()
                continue
        if e.spin_s > 0:
            hc_relax()
        else:
            sched_yield()


cdef int sync_as(Engine e, bint entry, double deadline) noexcept nogil:
    """Every c2c peer has passed as many syncs as we have (all its earlier stores are visible).
    entry: this is a call's first sync, after enter_as published the headers (see check_peers)."""
    return wait_all(e, post(e), entry, deadline)


cdef int wait_all(Engine e, uint32_t ep, bint entry, double deadline) noexcept nogil:
    """The waiting half of sync_as: every c2c peer has posted epoch ep. Split from the post so
    that work that needs no peer (the own block, finish_refusable) runs between the two."""
    cdef int p, rc
    cdef double last = 0
    for p in range(e.size):
        if p != e.rank:
            rc = wait_epoch(e, p, ep, entry, &last, deadline)
            if rc < 0:
                return rc
    return 0


cdef uint32_t post(Engine e) noexcept nogil:
    """Post my next epoch to every peer (release: everything stored before it, a published header
    included, is visible to a peer that sees it) and wake the peers asleep on it."""
    cdef int p
    e.c2c_epoch += 1
    for p in range(e.size):
        if p != e.rank:
            hc_store32_sc(&e.links[p].c2c.mine.epoch, e.c2c_epoch)
    for p in range(e.size):
        if p != e.rank and hc_load32_sc(&e.links[p].c2c.mine.waiters):
            hc_futex_wake(&e.links[p].c2c.mine.epoch)
    return e.c2c_epoch


cdef int sync(Engine e, double deadline) noexcept nogil:
    """A sync inside or at the end of a call (no header checks: peers may be in the next call)."""
    return sync_as(e, False, deadline)


cdef int enter_as(Engine e, int coll, int dtype, int op, int phase, uint64_t count, uint64_t sdesc,
                  uint64_t rdesc, double deadline) noexcept nogil:
    """Publish the call and two buffer descriptors (cma: addresses; symmetric_heap.pyx: allocation and
    offset) in every control slot, sync, and check every peer called the same (phase included).
    While the sync waits, peers that already arrived are checked at once (check_peers), so a
    mismatch shows at any world size, not only when every peer has arrived."""
    cdef int p, rc
    cdef C2CSlot* m
    for p in range(e.size):
        if p == e.rank:
            continue
        m = e.links[p].c2c.mine
        put_header(m.hdr, coll, dtype, op, phase, e.seq, count, e.rank)
        m.sbuf = sdesc
        m.rbuf = rdesc
    rc = sync_as(e, True, deadline)
    if rc < 0:
        return rc
    for p in range(e.size):
        if p != e.rank:
            rc = header_mismatch(e, p)
            if rc < 0:
                return rc
    return 0


cdef inline int enter(Engine e, int coll, int dtype, int op, uint64_t count, char* sbuf, char* rbuf,
                      double deadline) noexcept nogil:
    """enter_as for the cma/window schedules: the descriptors are the buffers' own addresses."""
    return enter_as(e, coll, dtype, op, PHASE_DIRECT, count, <uintptr_t>sbuf, <uintptr_t>rbuf, deadline)


cdef inline int cma(Engine e, int p, void* local, uint64_t raddr, size_t n, int write) noexcept nogil:
    cdef long rc
    if n == 0:
        return 0
    rc = hc_cma(e.links[p].c2c.pid, local, raddr, n, write)
    if rc < 0:
        return cma_failed(e, p, rc)
    return 0


cdef enum:
    BAD_ADDRESS_GRACE_MS = 50   # how long a peer whose buffer faulted has to hang up (it aborted)


cdef int cma_failed(Engine e, int p, long rc) noexcept nogil:
    """The error of a failed copy from/to peer p (rc: -errno, never a refusal). ESRCH: the peer is
    gone (E_PEER_LOST). EFAULT: the address it published is not mapped in its process, either
    because it aborted and freed the buffer (then its socket hangs up: E_PEER_LOST) or because it
    published garbage (still connected after BAD_ADDRESS_GRACE_MS: E_BAD_ADDRESS, a bug or memory
    corruption on that rank, which the user must hear about as such, not as a death)."""
    cdef pollfd f
    cdef Link* L = &e.links[p]
    e.fail.peer = p
    if rc != -EFAULT or L.closed:
        return E_PEER_LOST
    f.fd = L.fd
    f.events = POLLRDHUP
    f.revents = 0
    if poll(&f, 1, BAD_ADDRESS_GRACE_MS) > 0:       # hung up (or the socket failed): lost
        return E_PEER_LOST
    return E_BAD_ADDRESS


cdef enum:
    CMA_REFUSED = 1     # a read was refused (EPERM/EACCES); every rank re-runs the call on the FIFOs

cdef int _inject_errno = 0      # tests: the next _inject_left reads fail with this errno
cdef int _inject_left = 0


def _inject_cma_failure(int err, int count=1):
    """Make this process's next ``count`` single-copy reads (broadcast, allgather, alltoall) fail
    with ``err``, as process_vm_readv does when ptrace permission is withdrawn (EPERM) or the peer
    is gone (ESRCH). For the failure tests only."""
    global _inject_errno, _inject_left
    _inject_errno, _inject_left = err, count


cdef int _inject_bad_left = 0   # tests: the next plain single-copy calls publish an unmapped address


def _inject_bad_address(int count=1):
    """Make this process's next ``count`` plain-buffer single-copy calls publish a buffer address
    that is not mapped (peers reading it get EFAULT, as from a peer that published garbage or
    unmapped its buffer mid-call). For the failure tests only."""
    global _inject_bad_left
    _inject_bad_left = count


cdef inline uint64_t published(const char* buf) noexcept nogil:
    """The address of buf as peers will read it (the failure tests may make it garbage)."""
    global _inject_bad_left
    if _inject_bad_left > 0:
        _inject_bad_left -= 1
        return 4096                   # the first pages are never mapped (vm.mmap_min_addr)
    return <uintptr_t>buf


cdef inline int cma_read(Engine e, int p, void* local, uint64_t raddr, size_t n,
                         bint* refused) noexcept nogil:
    """Read n bytes at raddr of peer p (cma_xfer)."""
    return cma_xfer(e, p, local, raddr, n, 0, refused)


cdef int cma_xfer(Engine e, int p, void* local, uint64_t raddr, size_t n, int write,
                  bint* refused) noexcept nogil:
    """Read n bytes at raddr of peer p into local (write: write local there). A refusal (EPERM,
    EACCES: the kernel's ptrace check said no, e.g. ptrace_scope raised or the peer made itself
    non-dumpable after set-up) sets *refused and returns CMA_REFUSED: the caller stops and reports
    it in its last sync (finish_refusable), so that every rank falls back together. Any other
    error: the peer is gone or published a bad address (cma_failed)."""
    global _inject_left
    cdef long rc
    if n == 0:
        return 0
    if _inject_left > 0:
        _inject_left -= 1
        rc = -_inject_errno
    else:
        rc = hc_cma(e.links[p].c2c.pid, local, raddr, n, write)
    if rc == -EPERM or rc == -EACCES:
        refused[0] = True
        return CMA_REFUSED
    if rc < 0:
        return cma_failed(e, p, rc)
    return 0


cdef bint _arrival_order = True   # bench/single_copy_ab.py --schedule-ab: the A/B of read_peers
cdef bint _root_writes = True      # ... and of root_share


cdef bint _spin_plain = False      # ... and of the plain calls' wait (run_plain)
cdef bint _own_late = True         # ... and of when read_peers copies the rank's own block
cdef bint _own_in_finish = True    # ... and of whether a block left after the reads is copied
                                   # between the last sync's post and its wait (finish_refusable)
cdef unsigned long _own_after_post = 0   # own blocks copied that way (the tests' evidence)
cdef bint _star = True             # ... and of the broadcast's syncs (broadcast_star)


def _own_copies_after_post():
    """How many own blocks this process copied between its last sync's post and its wait
    (finish_own_refusable): the tests check that the path they aim at ran."""
    return _own_after_post


def _set_schedule(bint root_writes=True, bint arrival_order=True, bint spin=False, bint own_late=True,
                  bint own_in_finish=True, bint star=True):
    """The broadcast root writes its share (root_share) / allgather and alltoall read each peer
    as it arrives (read_peers) / the plain calls' syncs yield from the first poll (run_plain) /
    an own block still to copy after the reads is copied after the last sync's post
    (finish_refusable) / the broadcast's syncs are the root's with each peer (broadcast_star);
    the opposite: the schedules before (the peers read everything / every rank waits for all at
    the entry / they spin first / it is copied before the post / two all-rank syncs). For the
    benchmark's same-process A/B only."""
    global _root_writes, _arrival_order, _spin_plain, _own_late, _own_in_finish, _star
    _root_writes, _arrival_order, _spin_plain, _own_late = root_writes, arrival_order, spin, own_late
    _own_in_finish, _star = own_in_finish, star


cdef inline void own_block(char* dst, const char* src, size_t n, bint st) noexcept nogil:
    """Copy this rank's own block of an allgather or alltoall output (none when it is in place)."""
    if dst != src:
        copy_bytes(dst, src, n, st)
        if st:
            store_fence()


cdef uint32_t publish_plain(Engine e, int coll, int dtype, uint64_t count, const char* sbuf,
                            char* rbuf) noexcept nogil:
    """Publish an allgather's or alltoall's call header and buffer addresses in every control slot
    and post my entry epoch (returned): peers may read my input from then on."""
    cdef int p
    cdef uint64_t a
    for p in range(e.size):
        if p != e.rank:
            put_header(e.links[p].c2c.mine.hdr, coll, dtype, 0, PHASE_DIRECT, e.seq, count, e.rank)
            a = published(sbuf)
            e.links[p].c2c.mine.sbuf = a
            e.links[p].c2c.mine.rbuf = a if a != <uintptr_t>sbuf else <uintptr_t>rbuf   # (push: garbage too)
    return post(e)


cdef int step_read(Engine e, int p, uint32_t want, char* local, bint output, size_t off, size_t n,
                   bint* refused, double* last, double dl) noexcept nogil:
    """One step of a stepped read order: wait until peer p has posted epoch want, check its call
    header, then read n bytes at off of its input (output: of its output) into local, unless a
    read was refused already (the steps go on without reads: every rank posts the same epochs)."""
    cdef int rc = wait_epoch(e, p, want, True, last, dl)
    if rc < 0:
        return rc
    rc = header_mismatch(e, p)
    if rc < 0:
        return rc
    if interrupted(&e.fail):
        return E_CANCELLED
    if refused[0]:
        return 0
    return cma_read(e, p, local, (e.links[p].c2c.theirs.rbuf if output else e.links[p].c2c.theirs.sbuf)
                    + off, n, refused)


cdef int read_doubling(Engine e, int dtype, uint64_t count, char* sbuf, char* rbuf, size_t nb,
                       bint st, bint* refused, double dl) noexcept nogil:
    """Allgather on a power-of-two number of ranks by recursive doubling over CMA (Open MPI's
    choice below 32 ranks): step k reads, from partner rank ^ 2^k, the 2^k blocks its group holds
    (step 0: its input; later: its output, filled by its earlier steps), in one read. log2(N) reads
    of growing size instead of N-1, and each buffer has one reader per step. Every rank posts an
    epoch after each step but the last, so a partner waits for epoch entry+k: done with step k-1.
    Every peer has entered once the last step is done (the partners' epochs vouch for theirs), so
    all headers are checked then; a refused read skips the later reads, not the posts."""
    cdef int N = e.size, r = e.rank, p, rc, k = 0
    cdef size_t dist = 1, base
    cdef double last = 0
    cdef uint32_t ep = publish_plain(e, COLL_ALLGATHER, dtype, count, sbuf, rbuf)
    own_block(rbuf + nb * r, sbuf, nb, st)
    while dist < <size_t>N:
        p = r ^ <int>dist
        base = <size_t>p & ~(dist - 1)
        rc = step_read(e, p, ep + <uint32_t>k, rbuf + nb * base, k > 0, 0 if k == 0 else nb * base,
                       nb * dist, refused, &last, dl)
        if rc < 0:
            return rc
        dist *= 2
        k += 1
        if dist < <size_t>N:
            post(e)
    for p in range(N):
        if p != r:
            rc = header_mismatch(e, p)
            if rc < 0:
                return rc
    return 0


cdef int read_peers(Engine e, int coll, int dtype, uint64_t count, char* sbuf, char* rbuf, size_t nb,
                    size_t roff, const char* own, bint st, bint* refused, bint* own_left,
                    double dl, bint push=False) noexcept nogil:
    """The entry and the reads of allgather (roff 0) and alltoall (roff nb x rank): publish the
    call and my input's address, post my epoch, then read nb bytes at roff of each peer's input
    into block p of rbuf as soon as that peer has posted its own (its header and address are
    published then: checked, then read), the ones that arrived first first, and wait only when
    none of the rest has. The all-rank entry sync waited for the last peer before the first
    read; with more ranks than cores that peer is often off the CPU, and the reads of the ones
    that are on it now fill that wait (Open MPI's pairwise rendezvous has no all-rank step
    either). Peers in the order rank+1, rank+2, ... among those ready. A refused read stops the
    reads (*refused; the caller's last sync tells everyone).
    My own block (nb bytes at own, into block rank of rbuf) is copied after the post, the first
    time no peer is ready: copied before it, it delayed my arrival, and every peer waiting to read
    me, by a memcpy of the block. If every peer was ready every time, *own_left stays set and the
    caller copies it in the last sync, after its post (finish_refusable): copied before that
    post, it held back every peer waiting in that sync for my reads, which were done.
    push (allgather): write instead of read, in the same order: my input (nb bytes at sbuf) into
    block rank of peer p's output. Each peer's output then has one writer per block and my
    input stays in my own cache, where with reads every peer pinned the same pages of it
    (single_copy_probe ORDERS "push"; at an alltoall's 1 MiB blocks writing measured the same
    as reading, 8 ranks on 2 cores, so it keeps the reads)."""
    cdef int N = e.size, r = e.rank, i, p, rc, left = N - 1, moved
    cdef uint32_t ep
    cdef double last = 0
    cdef uint8_t done[1024]
    cdef bint ordered = N > 1024 or not _arrival_order
    own_left[0] = _own_late
    if not own_left[0]:
        own_block(rbuf + nb * r, own, nb, st)
    ep = publish_plain(e, coll, dtype, count, sbuf, rbuf)
    if not ordered:
        memset(done, 0, N)
    while left > 0:
        moved = 0
        for i in range(1, N):
            p = (r + i) % N
            if ordered:
                if i != N - left:
                    continue
                rc = wait_epoch(e, p, ep, True, &last, dl)
                if rc < 0:
                    return rc
            elif done[p] or not arrived(e, p, ep):
                continue
            else:
                done[p] = 1
            rc = header_mismatch(e, p)
            if rc < 0:
                return rc
            if interrupted(&e.fail):
                return E_CANCELLED
            left -= 1
            moved = 1
            if push:
                rc = cma_xfer(e, p, sbuf, e.links[p].c2c.theirs.rbuf + nb * r, nb, 1, refused)
            else:
                rc = cma_read(e, p, rbuf + nb * p, e.links[p].c2c.theirs.sbuf + roff, nb, refused)
            if rc < 0:
                return rc
            if refused[0]:
                return 0
        if not moved and own_left[0]:
            own_block(rbuf + nb * r, own, nb, st)
            own_left[0] = False
            continue
        if not moved and not ordered:
            for i in range(1, N):             # none ready: wait for the next one in order
                p = (r + i) % N
                if not done[p]:
                    rc = wait_epoch(e, p, ep, True, &last, dl)
                    if rc < 0:
                        return rc
                    break
    if own_left[0] and not _own_in_finish:
        own_block(rbuf + nb * r, own, nb, st)
        own_left[0] = False
    return 0


cdef void mark_refused(Engine e, uint32_t ep) noexcept nogil:
    """Say in every slot that a cross-memory copy of this rank's was refused before its post of
    epoch ep (a peer that sees ep posted sees the mark: the post releases it)."""
    cdef int p
    for p in range(e.size):
        if p != e.rank:
            e.links[p].c2c.mine.refused = ep


cdef int finish_refusable(Engine e, bint refused, double dl) noexcept nogil:
    """finish_own_refusable with no block of my own left to copy."""
    return finish_own_refusable(e, refused, NULL, NULL, 0, False, dl)


cdef int finish_own_refusable(Engine e, bint refused, char* dst, const char* src, size_t n, bint st,
                              double dl) noexcept nogil:
    """The last sync of a call whose reads may have been refused: a rank that was refused marks
    the sync's epoch in its slots before posting it, so after the sync every rank has seen every
    mark (release/acquire) and all return CMA_REFUSED together, or all 0. The n bytes at src
    (dst NULL: none) are copied to dst between the post and the wait: no peer needs them, so
    they overlap the wait for the slowest peer instead of delaying everyone's release (Open MPI
    copies its own alltoall block after its exchange has completed, outside any handshake).
    Not when refused: the call is re-run on the FIFOs."""
    global _own_after_post
    cdef int p, rc
    cdef uint32_t ep = e.c2c_epoch + 1
    if refused:
        mark_refused(e, ep)
    ep = post(e)
    if dst != NULL and not refused:
        own_block(dst, src, n, st)
        _own_after_post += 1
    rc = wait_all(e, ep, False, dl)
    if rc < 0:
        return rc
    if refused:
        return CMA_REFUSED
    for p in range(e.size):
        if p != e.rank and e.links[p].c2c.theirs.refused == ep:
            return CMA_REFUSED
    return 0


# ------------------------------------------------------------------ allreduce

cdef inline size_t chunk_bytes(Engine e, size_t es) noexcept nogil:
    """The unit of a reduction: two of them (peer operand, partial result) stay cache resident.
    Measured at 2 ranks, 64 MiB: 64 KiB 2.4, 256 KiB 3.0, 1-4 MiB 3.6-5.6 GB/s (noisy host); each
    CMA call pins its pages, so small units pay the per-call cost."""
    return CHUNK - CHUNK % es


cdef int reduce_chunk(Engine e, reduce_fn fn, int dtype, int op, char* sbuf, size_t boff, size_t o,
                      size_t n, char* A, char* B, bint window, size_t woff) noexcept nogil:
    """A = x_0 OP x_1 OP ... OP x_{N-1} for bytes [o, o+n) of block boff (rank order). Operands
    come from my input (q == rank), a CMA read of q's input, or q's window at woff."""
    cdef int N = e.size, r = e.rank, q, rc
    cdef size_t cnt = n // dtype_size(dtype)
    cdef const char* acc
    cdef const char* x
    for q in range(N):
        if q == r:
            x = sbuf + boff + o
        elif window:
            x = e.links[q].c2c.win_rx + woff
        else:
            rc = cma(e, q, A if q == 0 else B, e.links[q].c2c.theirs.sbuf + boff + o, n, 0)
            if rc < 0:
                return rc
            x = A if q == 0 else B
        if q == 0:
            acc = x
        else:
            fn(A, acc, x, cnt, 0)
            acc = A
    if op == OP_AVG:
        divide_by(A, cnt, dtype, N)
    return 0


cdef int allreduce_cma(Engine e, char* sbuf, char* rbuf, size_t count, int dtype, int op,
                       double dl) noexcept nogil:
    cdef int N = e.size, r = e.rank, p, rc
    cdef size_t es = dtype_size(dtype), C = chunk_bytes(e, es), o, n
    cdef size_t boff[1024]
    cdef size_t blen[1024]
    cdef char* A = e.scratch(2 * C)
    cdef char* B = A + C
    cdef reduce_fn fn = get_reduce(dtype, op)
    cdef bint st = count * es >= e.nt_threshold
    rc = enter(e, COLL_ALLREDUCE, dtype, op, count, sbuf, rbuf, dl)
    if rc < 0:
        return rc
    even_blocks(count, N, es, boff, blen)
    o = 0
    while o < blen[r]:
        if interrupted(&e.fail):
            return E_CANCELLED
        n = blen[r] - o if blen[r] - o < C else C
        rc = reduce_chunk(e, fn, dtype, op, sbuf, boff[r], o, n, A, B, False, 0)
        if rc < 0:
            return rc
        copy_bytes(rbuf + boff[r] + o, A, n, st)
        for p in range(1, N):                 # start with the next rank: spread the writers
            p = (r + p) % N
            rc = cma(e, p, A, e.links[p].c2c.theirs.rbuf + boff[r] + o, n, 1)
            if rc < 0:
                return rc
        o += n
    if st:
        store_fence()
    return sync(e, dl)                        # nobody reads or writes my buffers after this


cdef int allreduce_window(Engine e, char* sbuf, char* rbuf, size_t count, int dtype, int op,
                          double dl) noexcept nogil:
    cdef int N = e.size, r = e.rank, p, rc
    cdef size_t es = dtype_size(dtype), C = chunk_bytes(e, es), half, o, s, n, k
    cdef size_t boff[1024]
    cdef size_t blen[1024]
    cdef char* A = e.scratch(2 * C)
    cdef char* B = A + C
    cdef reduce_fn fn = get_reduce(dtype, op)
    cdef bint st = count * es >= e.nt_threshold
    half = e.links[(r + 1) % N].c2c.win // 2
    half -= half % es
    rc = enter(e, COLL_ALLREDUCE, dtype, op, count, sbuf, rbuf, dl)
    if rc < 0:
        return rc
    even_blocks(count, N, es, boff, blen)
    o = 0
    while True:                               # rounds of `half` bytes of every block (>= 1 round)
        for p in range(N):
            if p != r:
                copy_bytes(e.links[p].c2c.win_tx, sbuf + boff[p] + o, slice_len(blen[p], o, half), 0)
        rc = sync(e, dl)
        if rc < 0:
            return rc
        n = slice_len(blen[r], o, half)
        s = 0
        while s < n:
            k = n - s if n - s < C else C
            reduce_chunk(e, fn, dtype, op, sbuf, boff[r], o + s, k, A, B, True, s)
            copy_bytes(rbuf + boff[r] + o + s, A, k, st)
            for p in range(N):
                if p != r:
                    copy_bytes(e.links[p].c2c.win_tx + half + s, A, k, 0)
            s += k
        rc = sync(e, dl)
        if rc < 0:
            return rc
        for p in range(N):
            if p != r:
                copy_bytes(rbuf + boff[p] + o, e.links[p].c2c.win_rx + half, slice_len(blen[p], o, half), st)
        o += half
        if o >= blen[0]:
            break
    if st:
        store_fence()
    return 0


# ------------------------------------------------------------------ allgather

cdef inline int doubling_bucket(size_t out_bytes) noexcept nogil:
    """The bit of Engine.ag_doubling that decides an allgather of out_bytes: k for outputs in
    (2^(k-1), 2^k], so that with sizes measured at powers of two, the nearest one in log2 (ties to
    the smaller, single_copy_probe.takes) is the same across a bucket."""
    cdef int k = 0
    while k < 63 and (<size_t>1 << k) < out_bytes:
        k += 1
    return k


def _doubling_bucket(size_t out_bytes):
    """doubling_bucket, for the probe's mask and its test."""
    return doubling_bucket(out_bytes)


cdef unsigned long long _doubling_calls = 0     # allgathers read by recursive doubling (tests)


def doubling_calls():
    """How many allgathers this process read by recursive doubling (the tests' view of the route)."""
    return _doubling_calls


cdef unsigned long long _push_calls = 0         # allgathers that wrote their block (push, tests)


def push_calls():
    """How many allgathers this process wrote into its peers' outputs (push: the tests' view)."""
    return _push_calls


cdef int allgather_cma(Engine e, char* sbuf, char* rbuf, size_t nb, int dtype, double dl) noexcept nogil:
    cdef int N = e.size, r = e.rank, rc
    cdef bint st = nb * N >= e.nt_threshold, refused = False, own_left = False
    cdef int k = doubling_bucket(nb * <size_t>N)
    global _doubling_calls, _push_calls
    if N > 2 and N & (N - 1) == 0 and e.ag_doubling >> k & 1:
        _doubling_calls += 1             # its partners read my output's own block: copied first
        rc = read_doubling(e, dtype, nb // dtype_size(dtype), sbuf, rbuf, nb, st, &refused, dl)
    else:
        if e.ag_push >> k & 1:
            _push_calls += 1
        rc = read_peers(e, COLL_ALLGATHER, dtype, nb // dtype_size(dtype), sbuf, rbuf, nb, 0, sbuf, st,
                        &refused, &own_left, dl, e.ag_push >> k & 1)
    if rc < 0:
        return rc
    # my input may be reused once everyone has read it
    return finish_own_refusable(e, refused, rbuf + nb * r if own_left else NULL, sbuf, nb, st, dl)


cdef int allgather_window(Engine e, char* sbuf, char* rbuf, size_t nb, int dtype, double dl) noexcept nogil:
    cdef int N = e.size, r = e.rank, p, rc
    cdef size_t half = e.links[(r + 1) % N].c2c.win // 2, o = 0, n
    cdef bint st = nb * N >= e.nt_threshold
    rc = enter(e, COLL_ALLGATHER, dtype, 0, nb // dtype_size(dtype), sbuf, rbuf, dl)
    if rc < 0:
        return rc
    if sbuf != rbuf + nb * r:
        copy_bytes(rbuf + nb * r, sbuf, nb, st)
    while True:
        n = slice_len(nb, o, half)
        for p in range(N):
            if p != r:
                copy_bytes(e.links[p].c2c.win_tx, sbuf + o, n, 0)
        rc = sync(e, dl)
        if rc < 0:
            return rc
        for p in range(N):
            if p != r:
                copy_bytes(rbuf + nb * p + o, e.links[p].c2c.win_rx, n, st)
        rc = sync(e, dl)
        if rc < 0:
            return rc
        o += half
        if o >= nb:
            break
    if st:
        store_fence()
    return 0


# ------------------------------------------------------------------ Python entry points

cdef int _mode(Engine e) except -1:
    e.check_usable()
    if not e.c2c_everywhere():
        raise InvalidUsage("the single-copy schedules need every pair of this communicator linked by "
                           "c2c (one host, HETCCL_TRANSPORTS allowing c2c)")
    return e.links[(e.rank + 1) % e.size].c2c.mode


def allreduce(Engine e, sendobj, recvobj, int dtype, int op, double timeout):
    """Single-copy allreduce (recv = reduction over ranks of send; send may be recv: in place)."""
    cdef Py_buffer sv, rv
    cdef bint inplace = sendobj is recvobj
    cdef int rc, mode = _mode(e)
    cdef double dl
    if e.size > 1024:
        raise InvalidUsage("the single-copy schedules support up to 1024 ranks")
    pin_allreduce(sendobj, recvobj, dtype, op, &sv, &rv)
    try:
        dl = hc_now() + timeout
        e.begin("allreduce", 0)
        with nogil:
            if mode == C2C_CMA:
                rc = allreduce_cma(e, <char*>sv.buf, <char*>rv.buf, <size_t>rv.len // dtype_size(dtype),
                                   dtype, op, dl)
            else:
                rc = allreduce_window(e, <char*>sv.buf, <char*>rv.buf,
                                      <size_t>rv.len // dtype_size(dtype), dtype, op, dl)
        e.end(rc, "allreduce", timeout)
    finally:
        release_pair(inplace, &sv, &rv)


def allgather(Engine e, sendobj, recvobj, int dtype, double timeout):
    """Single-copy allgather (recv = concatenation over ranks of send; send may be recv: in place).
    True when done; False when a cross-memory read was refused on some rank (every rank returns
    False together; the caller re-runs the call on the FIFO schedules)."""
    cdef Py_buffer sv, rv
    cdef bint same = sendobj is recvobj
    _mode(e)
    pin_allgather(sendobj, recvobj, e.size, e.rank, dtype_size(dtype), &sv, &rv)
    try:
        return run_plain(e, COLL_ALLGATHER, &sv, &rv, 0, dtype, timeout) == 1
    finally:
        release_pair(same, &sv, &rv)


cdef int run_plain(Engine e, int coll, Py_buffer* a, Py_buffer* b, int root, int dtype,
                   double timeout) except -1:
    """A plain-buffer single-copy call on buffers pinned already: 1 when done, 0 when a read was
    refused on some rank (every rank returns 0 together; the caller re-runs the call on the FIFOs).
    broadcast: a the buffer (root checked here); allgather: a this rank's block, b the output
    (checked by pin_allgather / check_allgather); alltoall: a the input, b the output (checked
    here). The latency path (latency.pyx) calls it straight for the shapes the router sent here
    once, so a loop of single-copy calls costs what a loop of small FIFO calls costs above the
    schedule: no parser, no tuner, no Python entry."""
    cdef int rc, mode
    cdef double dl, spin = e.spin_s
    if not _spin_plain:
        e.spin_s = 0
    try:
        rc = plain_call(e, coll, a, b, root, dtype, timeout)
    finally:
        e.spin_s = spin
    return rc


cdef int plain_call(Engine e, int coll, Py_buffer* a, Py_buffer* b, int root, int dtype,
                    double timeout) except -1:
    """run_plain's call, its waits yielding from the first poll: each sync of a single-copy call
    is a round trip that needs every peer on a CPU, and spinning for a peer that is not (another
    process has its core, or it shares ours) only delays it. At 2 ranks on a loaded 2-vCPU host,
    spinning 20 us first made an 8 KiB single-copy alltoall 125 us per call against 9.8 us
    yielding at once (same processes, interleaved); on an idle core a yield returns at once, so
    a quiet host loses at most a system call per poll."""
    cdef int rc, mode
    cdef double dl
    if coll == COLL_BROADCAST:
        if not 0 <= root < e.size:
            raise InvalidUsage(f"broadcast root {root} is not a rank of this communicator (0..{e.size - 1})")
        dl = hc_now() + timeout
        e.begin("broadcast", 0)
        with nogil:
            rc = broadcast_cma(e, <char*>a.buf, <size_t>a.len, root, dtype, dl)
        e.end(rc, "broadcast", timeout)
    elif coll == COLL_ALLGATHER:
        mode = e.links[(e.rank + 1) % e.size].c2c.mode
        dl = hc_now() + timeout
        e.begin("allgather", 0)
        with nogil:
            if mode == C2C_CMA:
                rc = allgather_cma(e, <char*>a.buf, <char*>b.buf, <size_t>a.len, dtype, dl)
            else:
                rc = allgather_window(e, <char*>a.buf, <char*>b.buf, <size_t>a.len, dtype, dl)
        e.end(rc, "allgather", timeout)
    else:
        check_alltoall(a, b, dtype, e.size)
        dl = hc_now() + timeout
        e.begin("alltoall", 0)
        with nogil:
            rc = alltoall_cma(e, <char*>a.buf, <char*>b.buf, <size_t>a.len // e.size, dtype, dl)
        e.end(rc, "alltoall", timeout)
    return 0 if rc == CMA_REFUSED else 1


# ------------------------------------------------------------------ broadcast (cma mode)



cdef inline size_t root_share(size_t nb, int N) noexcept nogil:
    """Bytes at the end of a broadcast buffer that the root writes into each peer itself: 1/N of
    it (cache-line aligned), so the root copies (N-1)/N and every non-root the other (N-1)/N
    instead of the root idling while the peers copy everything (at 2 ranks: each copies half, at
    once). Below 16 KiB, none: a second system call costs more than it saves."""
    if nb < (16 << 10) or not _root_writes:
        return 0
    return (nb // <size_t>N) & ~(<size_t>63)


cdef int read_head(Engine e, int root, char* buf, size_t head, bint* refused) noexcept nogil:
    """A non-root's part of a broadcast: the first head bytes of the root's buffer into buf, in
    CHUNK pieces (an interrupt is seen between them); stops at a refused read (*refused)."""
    cdef size_t o = 0, n
    cdef uint64_t src = e.links[root].c2c.theirs.sbuf
    cdef int rc
    while o < head:
        if interrupted(&e.fail):
            return E_CANCELLED
        n = head - o if head - o < CHUNK else CHUNK
        rc = cma_read(e, root, buf + o, src + o, n, refused)
        if rc < 0:
            return rc
        if refused[0]:
            return 0
        o += n
    return 0


cdef int broadcast_cma(Engine e, char* buf, size_t nb, int root, int dtype, double dl) noexcept nogil:
    """Every non-root reads the head of the root's buffer straight into its own, in CHUNK pieces
    (an interrupt is seen between them), while the root writes the tail (root_share) into every
    non-root's buffer, whose address rides in the entry sync; the last sync keeps the root's buffer
    unchanged until all have read, and every non-root's call open until the root has written.
    The root rides in the header's op byte: ranks naming different roots mismatch at the entry.
    With 3+ ranks (up to 1024) the syncs are the root's alone (broadcast_star)."""
    cdef int rc, i, p, N = e.size
    cdef size_t tail = root_share(nb, e.size), head = nb - tail
    cdef bint refused = False
    if _star and 2 < N <= 1024:
        return broadcast_star(e, buf, nb, root, dtype, dl)
    rc = enter_as(e, COLL_BROADCAST, dtype, root & 0xFF, PHASE_DIRECT, nb // dtype_size(dtype),
                  published(buf), 0, dl)
    if rc < 0:
        return rc
    if e.rank != root:
        rc = read_head(e, root, buf, head, &refused)
        if rc < 0:
            return rc
    elif tail:
        for i in range(1, N):
            if interrupted(&e.fail):
                return E_CANCELLED
            p = (root + i) % N
            rc = cma_xfer(e, p, buf + head, e.links[p].c2c.theirs.sbuf + head, tail, 1, &refused)
            if rc < 0:
                return rc
            if refused:
                break
    return finish_refusable(e, refused, dl)


cdef int next_arrived(Engine e, uint32_t want, uint8_t* done, double* last, double dl) noexcept nogil:
    """A peer not yet done that has posted epoch want, the first in the order rank+1, rank+2, ...
    among those that have, waiting for the first not done when none has (check_peers looks at
    every peer meanwhile: in the calls that use it no peer can leave before we post again, so
    every arrived peer's header is complete and stable); marks it done. A code < 0 on failure."""
    cdef int N = e.size, i, p, rc
    for i in range(1, N):
        p = (e.rank + i) % N
        if not done[p] and arrived(e, p, want):
            done[p] = 1
            return p
    for i in range(1, N):
        p = (e.rank + i) % N
        if not done[p]:
            rc = wait_epoch(e, p, want, True, last, dl)
            if rc < 0:
                return rc
            done[p] = 1
            return p
    return E_MISMATCH                         # not reached: the caller asks at most N-1 times


cdef int broadcast_star(Engine e, char* buf, size_t nb, int root, int dtype, double dl) noexcept nogil:
    """broadcast_cma's copies with the root's syncs only, as a star: every rank publishes the call
    and its buffer's address and posts; a non-root waits for the *root's* post alone, reads the
    head of the root's buffer, posts again ("read", with its refusal mark) and waits for the
    root's second post; the root writes its share (root_share) into each peer as that peer
    arrives, then waits until every peer has read and posts the second time (its mark: some
    rank was refused, so all fall back together). The all-rank syncs of broadcast_cma made every
    non-root wait for every other one twice per call, which with more ranks than CPUs means for
    ranks that are off the CPU; Open MPI's broadcast (ob1 rendezvous, one cross-memory read of
    the whole buffer from the root per non-root, the root waiting for each one's completion)
    has only the root's pairwise waits too. Every rank still posts twice per call, so the
    epochs stay the same on every rank between calls; no peer passes the second post before the
    root does, and the root not before every peer's second post, so the headers the waits
    check (check_peers) are stable."""
    cdef int rc, i, p, N = e.size, r = e.rank
    cdef size_t tail = root_share(nb, N), head = nb - tail
    cdef bint refused = False
    cdef uint64_t me = published(buf)
    cdef uint32_t ep
    cdef double last = 0
    cdef uint8_t done[1024]
    for p in range(N):
        if p != r:
            put_header(e.links[p].c2c.mine.hdr, COLL_BROADCAST, dtype, root & 0xFF, PHASE_DIRECT, e.seq,
                       nb // dtype_size(dtype), r)
            e.links[p].c2c.mine.sbuf = me
            e.links[p].c2c.mine.rbuf = 0
    ep = post(e)
    if r != root:
        rc = wait_epoch(e, root, ep, True, &last, dl)
        if rc < 0:
            return rc
        rc = header_mismatch(e, root)
        if rc < 0:
            return rc
        rc = read_head(e, root, buf, head, &refused)
        if rc < 0:
            return rc
        if refused:
            mark_refused(e, ep + 1)
        post(e)
        rc = wait_epoch(e, root, ep + 1, False, &last, dl)
        if rc < 0:
            return rc
        return CMA_REFUSED if refused or e.links[root].c2c.theirs.refused == ep + 1 else 0
    memset(done, 0, N)
    for i in range(1, N):                     # arrivals: their headers, and the root's share
        p = next_arrived(e, ep, done, &last, dl)
        if p < 0:
            return p
        rc = header_mismatch(e, p)
        if rc < 0:
            return rc
        if tail and not refused:
            if interrupted(&e.fail):
                return E_CANCELLED
            rc = cma_xfer(e, p, buf + head, e.links[p].c2c.theirs.sbuf + head, tail, 1, &refused)
            if rc < 0:
                return rc
    for i in range(1, N):                     # every peer has read my buffer
        p = (r + i) % N
        rc = wait_epoch(e, p, ep + 1, True, &last, dl)
        if rc < 0:
            return rc
        refused = refused or e.links[p].c2c.theirs.refused == ep + 1
    if refused:
        mark_refused(e, ep + 1)
    post(e)
    return CMA_REFUSED if refused else 0


def broadcast(Engine e, obj, int root, int dtype, double timeout):
    """Copy root's buffer into every rank's by single-copy CMA reads (every pair c2c in cma mode).
    True when done; False when a read was refused somewhere (all ranks alike: re-run on the FIFOs)."""
    cdef Py_buffer v
    e.check_usable()
    if not cma_usable(e):
        raise InvalidUsage("the single-copy broadcast needs every pair of this communicator linked "
                           "by c2c in cma mode (one host, process_vm_readv permitted)")
    pin_rooted(obj, root, e.size, dtype_size(dtype), &v)
    try:
        return run_plain(e, COLL_BROADCAST, &v, NULL, root, dtype, timeout) == 1
    finally:
        PyBuffer_Release(&v)


# ------------------------------------------------------------------ alltoall (cma mode)

cdef int alltoall_cma(Engine e, char* sbuf, char* rbuf, size_t blk, int dtype, double dl) noexcept nogil:
    """The schedule of the module docstring on pinned buffers of N blocks of blk bytes."""
    cdef int N = e.size, r = e.rank, rc
    cdef bint st = blk * N >= e.nt_threshold, refused = False, own_left
    rc = read_peers(e, COLL_ALLTOALL, dtype, blk * N // dtype_size(dtype), sbuf, rbuf, blk, blk * r,
                    sbuf + blk * r, st, &refused, &own_left, dl)
    if rc < 0:
        return rc
    # every peer has read my input: the caller may reuse it
    return finish_own_refusable(e, refused, rbuf + blk * r if own_left else NULL, sbuf + blk * r, blk,
                                st, dl)


def cma_usable(Engine e):
    """True when every pair of the communicator is c2c in cma mode (this schedule can run)."""
    cdef int p
    if e.size < 2 or not e.c2c_everywhere():
        return False
    for p in range(e.size):
        if p != e.rank and e.links[p].c2c.mode != C2C_CMA:
            return False
    return True


def alltoall(Engine e, sendobj, recvobj, int dtype, double timeout):
    """recvobj block p = block rank of rank p's sendobj (equal blocks), by single-copy CMA reads.
    True when done; False when a read was refused somewhere (all ranks alike: re-run on the FIFOs)."""
    cdef Pins p = Pins()
    e.check_usable()
    if not cma_usable(e):
        raise InvalidUsage("the single-copy alltoall needs every pair of this communicator linked by "
                           "c2c in cma mode (one host, process_vm_readv permitted)")
    p.pin(sendobj, recvobj, True)
    return run_plain(e, COLL_ALLTOALL, &p.a, &p.b, 0, dtype, timeout) == 1
