# cython: language_level=3
"""Single-copy allreduce and allgather for communicators whose every pair is linked by ``c2c``.

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

Synchronisation is a per-rank epoch counter in each pair's control slot (release/acquire atomics);
a waiter spins, yields, then sleeps on a shared futex, which the poster wakes only when the waiter
said it sleeps. While a rank waits it looks at *every* peer, not only the one it waits for
(``check_peers``): a peer's socket hanging up raises ``PeerLostError``, bytes in a FIFO from a peer
that has not reached the sync, or (entry sync) a peer there with another call header, raise
``InvalidUsage``. With 3+ ranks the odd one out is often not the peer being waited for, and it may
never post its epoch at all (it is in a FIFO collective), so waiting on it alone ends at the timeout.
"""
from cpython.buffer cimport PyBuffer_Release
from libc.stdint cimport uint64_t, uint32_t, uint8_t, int32_t, uintptr_t
from libc.string cimport memcpy, memcmp, memset

from hetccl._native.waiting cimport pollfd, poll, POLLIN, POLLOUT, POLLHUP, POLLERR, POLLNVAL, POLLRDHUP, sched_yield
from hetccl._native.atomics cimport hc_now, hc_relax, hc_load_acq, hc_load32_sc, hc_store32_sc
from hetccl._native.buffers cimport get_buffer, check_overlap, pin_allgather, release_allgather
from hetccl._native.c2c cimport (C2CPeer, C2CSlot, C2C_OFF, C2C_CMA, C2C_WINDOW, hc_add32,
                                 hc_futex_wake, hc_cma)
from hetccl._native.codes cimport *
from hetccl._native.engine cimport Engine, even_blocks, slice_len
from hetccl._native.link cimport Link, E_TIMEOUT, E_PEER_LOST, E_MISMATCH, E_INTERRUPTED, E_CANCELLED
from hetccl._native.life cimport hc_life_intr, hc_life_sleep
from hetccl._native.reduce cimport reduce_fn, get_reduce, copy_bytes, divide_by, store_fence

import os as _os

from hetccl.errors import InvalidUsage

cdef enum:
    MAGIC = 0x314C4348          # the engine's stream header magic ("HCL1"): one error format
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

cdef void fill_header(uint8_t* h, int coll, int dtype, int op, int phase, uint32_t seq,
                      uint64_t count, int rank) noexcept nogil:
    memset(h, 0, HDR_BYTES)
    (<uint32_t*>h)[0] = MAGIC
    h[4] = <uint8_t>coll
    h[5] = <uint8_t>dtype
    h[6] = <uint8_t>op
    h[7] = <uint8_t>phase       # marks the single-copy schedule (PHASE_*) in mismatch messages
    (<uint32_t*>(h + 8))[0] = seq
    (<uint64_t*>(h + 16))[0] = count
    (<uint32_t*>(h + 24))[0] = <uint32_t>rank


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
    if hc_load_acq(&L.rx_ctl.head) == L.rx_tail:
        return 0
    memset(e.err_got, 0, HDR_BYTES)
    k = L.rx_tail & L.mask
    if hc_load_acq(&L.rx_ctl.head) - L.rx_tail >= HDR_BYTES and L.cap - k >= HDR_BYTES:
        memcpy(e.err_got, L.rx_data + k, HDR_BYTES)
    memcpy(e.err_want, e.c2c[p].mine.hdr, HDR_BYTES)
    return 1


cdef inline bint arrived(Engine e, int p, uint32_t want) noexcept nogil:
    """Peer p has posted epoch want (acquire: everything it stored before, its header included, is
    visible here)."""
    return <int32_t>(hc_load32_sc(&e.c2c[p].theirs.epoch) - want) >= 0


cdef int header_mismatch(Engine e, int p) noexcept nogil:
    """E_MISMATCH, with both headers for the error message, if peer p published another call."""
    if memcmp(e.c2c[p].theirs.hdr, e.c2c[p].mine.hdr, HDR_CHECKED) == 0:
        return 0
    e.err_peer = p
    memcpy(e.err_got, e.c2c[p].theirs.hdr, HDR_BYTES)
    memcpy(e.err_want, e.c2c[p].mine.hdr, HDR_BYTES)
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
            e.err_peer = q
            return E_MISMATCH
    for q in range(e.size):
        if q != e.rank and (entry or not arrived(e, q, want)) and peer_gone(e, q) < 0:
            e.err_peer = q
            return E_PEER_LOST
    return 0


cdef int wait_epoch(Engine e, int p, uint32_t want, bint entry, double* last,
                    double deadline) noexcept nogil:
    """Spin, then yield, then futex-sleep until peer p's epoch reaches want; once sleeping, look at
    every peer (check_peers, at most every 50 ms) between sleeps of at most 100 ms. An interrupt of
    the engine ends the wait at once (the sleep includes its word, life.pxd)."""
    cdef C2CSlot* t = e.c2c[p].theirs
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
            if hc_life_intr(&e.life):
                return E_CANCELLED
            if now > deadline:
                e.err_peer = p
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
                    rc = hc_life_sleep(&e.life, &t.epoch, v, ms)
                hc_add32(&t.waiters, -1)
                if hc_life_intr(&e.life):
                    return E_CANCELLED
                if rc != 0 and hc_now() - now >= ms * 1e-3 * 0.9:
                    if e.check_signals() != 0:        # a quiet 100 ms: honour Ctrl-C
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
    cdef int p, rc
    cdef uint32_t ep
    cdef double last = 0
    e.c2c_epoch += 1
    ep = e.c2c_epoch
    for p in range(e.size):
        if p != e.rank:
            hc_store32_sc(&e.c2c[p].mine.epoch, ep)
    for p in range(e.size):
        if p != e.rank and hc_load32_sc(&e.c2c[p].mine.waiters):
            hc_futex_wake(&e.c2c[p].mine.epoch)
    for p in range(e.size):
        if p != e.rank:
            rc = wait_epoch(e, p, ep, entry, &last, deadline)
            if rc < 0:
                return rc
    return 0


cdef int sync(Engine e, double deadline) noexcept nogil:
    """A sync inside or at the end of a call (no header checks: peers may be in the next call)."""
    return sync_as(e, False, deadline)


cdef int enter_as(Engine e, int coll, int dtype, int op, int phase, uint64_t count, uint64_t sdesc,
                  uint64_t rdesc, double deadline) noexcept nogil:
    """Publish the call and two buffer descriptors (cma: addresses; symmetric.pyx: allocation and
    offset) in every control slot, sync, and check every peer called the same (phase included).
    While the sync waits, peers that already arrived are checked at once (check_peers), so a
    mismatch shows at any world size, not only when every peer has arrived."""
    cdef int p, rc
    cdef C2CSlot* m
    for p in range(e.size):
        if p == e.rank:
            continue
        m = e.c2c[p].mine
        fill_header(m.hdr, coll, dtype, op, phase, e.seq, count, e.rank)
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
    rc = hc_cma(e.c2c[p].pid, local, raddr, n, write)
    if rc < 0:
        e.err_peer = p
        return E_PEER_LOST           # ESRCH (gone) or EFAULT (it unmapped the buffer: it aborted)
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
            x = e.c2c[q].win_rx + woff
        else:
            rc = cma(e, q, A if q == 0 else B, e.c2c[q].theirs.sbuf + boff + o, n, 0)
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
        if hc_life_intr(&e.life):
            return E_CANCELLED
        n = blen[r] - o if blen[r] - o < C else C
        rc = reduce_chunk(e, fn, dtype, op, sbuf, boff[r], o, n, A, B, False, 0)
        if rc < 0:
            return rc
        copy_bytes(rbuf + boff[r] + o, A, n, st)
        for p in range(1, N):                 # start with the next rank: spread the writers
            p = (r + p) % N
            rc = cma(e, p, A, e.c2c[p].theirs.rbuf + boff[r] + o, n, 1)
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
    half = e.c2c[(r + 1) % N].win // 2
    half -= half % es
    rc = enter(e, COLL_ALLREDUCE, dtype, op, count, sbuf, rbuf, dl)
    if rc < 0:
        return rc
    even_blocks(count, N, es, boff, blen)
    o = 0
    while True:                               # rounds of `half` bytes of every block (>= 1 round)
        for p in range(N):
            if p != r:
                copy_bytes(e.c2c[p].win_tx, sbuf + boff[p] + o, slice_len(blen[p], o, half), 0)
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
                    copy_bytes(e.c2c[p].win_tx + half + s, A, k, 0)
            s += k
        rc = sync(e, dl)
        if rc < 0:
            return rc
        for p in range(N):
            if p != r:
                copy_bytes(rbuf + boff[p] + o, e.c2c[p].win_rx + half, slice_len(blen[p], o, half), st)
        o += half
        if o >= blen[0]:
            break
    if st:
        store_fence()
    return 0


# ------------------------------------------------------------------ allgather

cdef int allgather_cma(Engine e, char* sbuf, char* rbuf, size_t nb, int dtype, double dl) noexcept nogil:
    cdef int N = e.size, r = e.rank, p, i, rc
    cdef bint st = nb * N >= e.nt_threshold
    rc = enter(e, COLL_ALLGATHER, dtype, 0, nb // dtype_size(dtype), sbuf, rbuf, dl)
    if rc < 0:
        return rc
    for i in range(1, N):
        if hc_life_intr(&e.life):
            return E_CANCELLED
        p = (r + i) % N
        rc = cma(e, p, rbuf + nb * p, e.c2c[p].theirs.sbuf, nb, 0)
        if rc < 0:
            return rc
    if sbuf != rbuf + nb * r:
        copy_bytes(rbuf + nb * r, sbuf, nb, st)
        if st:
            store_fence()
    return sync(e, dl)                        # my input may be reused once everyone has read it


cdef int allgather_window(Engine e, char* sbuf, char* rbuf, size_t nb, int dtype, double dl) noexcept nogil:
    cdef int N = e.size, r = e.rank, p, rc
    cdef size_t half = e.c2c[(r + 1) % N].win // 2, o = 0, n
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
                copy_bytes(e.c2c[p].win_tx, sbuf + o, n, 0)
        rc = sync(e, dl)
        if rc < 0:
            return rc
        for p in range(N):
            if p != r:
                copy_bytes(rbuf + nb * p + o, e.c2c[p].win_rx, n, st)
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
    if not e.all_c2c():
        raise InvalidUsage("the single-copy schedules need every pair of this communicator linked by "
                           "c2c (one host, HETCCL_TRANSPORTS allowing c2c)")
    return e.c2c[(e.rank + 1) % e.size].mode


cdef int pin_allreduce(object sendobj, object recvobj, int dtype, int op, Py_buffer* sv,
                       Py_buffer* rv) except -1:
    """Pin and check a single-copy allreduce's buffers: same size, whole elements, op defined for
    the dtype; send may be recv (in place). Release with release_allreduce(sendobj is recvobj, ...)."""
    cdef bint inplace = sendobj is recvobj
    get_buffer(recvobj, rv, True)
    if inplace:
        sv[0] = rv[0]
    else:
        try:
            get_buffer(sendobj, sv, False)
        except BaseException:
            PyBuffer_Release(rv)
            raise
    try:
        if sv.len != rv.len:
            raise InvalidUsage(f"allreduce output has {rv.len} bytes but the input has {sv.len}; "
                               f"pass an output of the same size and dtype")
        check_overlap(sv, rv, inplace)
        if rv.len % dtype_size(dtype):
            raise InvalidUsage(f"buffer of {rv.len} bytes is not a whole number of elements")
        if get_reduce(dtype, op) == NULL:
            raise InvalidUsage(f"op {op} is not defined for dtype {dtype}")
    except BaseException:
        release_allreduce(inplace, sv, rv)
        raise
    return 0


cdef void release_allreduce(bint inplace, Py_buffer* sv, Py_buffer* rv) noexcept:
    if not inplace:
        PyBuffer_Release(sv)
    PyBuffer_Release(rv)


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
        release_allreduce(inplace, &sv, &rv)


def allgather(Engine e, sendobj, recvobj, int dtype, double timeout):
    """Single-copy allgather (recv = concatenation over ranks of send; send may be recv: in place)."""
    cdef Py_buffer sv, rv
    cdef int rc, mode = _mode(e)
    cdef double dl
    cdef bint same = sendobj is recvobj
    pin_allgather(sendobj, recvobj, e.size, e.rank, dtype_size(dtype), &sv, &rv)
    try:
        dl = hc_now() + timeout
        e.begin("allgather", 0)
        with nogil:
            if mode == C2C_CMA:
                rc = allgather_cma(e, <char*>sv.buf, <char*>rv.buf, <size_t>sv.len, dtype, dl)
            else:
                rc = allgather_window(e, <char*>sv.buf, <char*>rv.buf, <size_t>sv.len, dtype, dl)
        e.end(rc, "allgather", timeout)
    finally:
        release_allgather(same, &sv, &rv)
