# cython: language_level=3
"""Driving streams: progress, waiting, and noticing dead peers.

A schedule step is one send stream and one receive stream (either may be absent), progressed
together by run_step until both are done. Each progress call is one call into the link's kind table
(link.pxd: LinkKind.send / .recv), which moves what can move now. When nothing moved, the step
waits (idle): spin (pause) for spin_s, then sched_yield for yield_s (so oversubscribed ranks hand
their core to the peer they wait for), then sleep until a peer wakes it, it dies, the engine is
interrupted or 100 ms pass (block); oversubscribed, a step moving handover_bytes or more sleeps at
once while other jobs load the host (handover). Deadlines are checked throughout; Ctrl-C is honoured while asleep; every 50 ms of waiting,
reap looks at every link the step involves for a dead peer. A latency-path call comes in holding
the GIL (gil.pxd): the wait lets it go after Engine.hold_s, and always before sleeping.
"""
from libc.stdint cimport uint64_t, uint32_t

from hetccl._native.atomics cimport hc_now, hc_relax, hc_load32_sc
from hetccl._native.codes cimport dtype_size
from hetccl._native.engine cimport Engine
from hetccl._native.failure cimport interrupted, note_peer, note_mismatch, check_signals
from hetccl._native.fifo cimport SLEEP_POLL, SLEEP_FUTEX
from hetccl._native.gil cimport let_go
from hetccl._native.kernels cimport get_reduce, store_fence
from hetccl._native.life cimport hc_life_sleep_many, hc_life_waitv_ok
from hetccl._native.link cimport *
from hetccl._native.posix_wait cimport pollfd, poll, POLLIN, POLLHUP, POLLERR, POLLNVAL, POLLRDHUP, sched_yield
from hetccl._native.wire cimport put_header

cdef extern from "<stdlib.h>" nogil:
    int getloadavg(double* loadavg, int nelem)
cdef extern from "<unistd.h>" nogil:
    long sysconf(int name)
    int _SC_NPROCESSORS_ONLN

cdef struct Idle:
    double since              # when the current idle period began (0: not idle)
    int iters
    double reaped             # idle time at the last look for dead peers
    double awake              # spin and yield this long before sleeping (idle's policy)
    Stream* all[2]            # every stream of the step (waiting or not)


cdef void open_stream(Engine e, Stream* s, int peer, Seg* segs, int nseg, int coll, int dtype, int op,
                      int phase, uint64_t count, size_t esize, bint is_send) noexcept nogil:
    """A stream of segs to (is_send) or from peer, headed by the call's wire header."""
    cdef int i
    s.link = &e.links[peer]
    s.segs = segs
    s.nseg = nseg
    s.cur = 0
    s.off = 0
    s.pos = 0
    s.total = 0
    for i in range(nseg):
        s.total += segs[i].len
    s.chunk = e.chunk
    s.hdr_done = 0
    s.pad = <int>((-(<long>(s.total))) & (<long>s.link.kind.align - 1))
    s.pad_done = 0
    s.fn = get_reduce(dtype, op) if dtype >= 0 else NULL
    s.fn2 = NULL
    s.dtype = dtype
    s.esize = esize
    s.streaming = False
    s.done = False
    s.waiting = False
    s.fwd = NULL
    s.pair = False
    s.dep = NULL
    s.limit = <size_t>-1
    s.swap = peer < e.rank
    s.line = False
    if is_send:
        put_header(s.hdr, coll, dtype, op, phase, e.seq, count, e.rank)
    else:
        put_header(s.want, coll, dtype, op, phase, e.seq, count, peer)


cdef inline int failed(Engine e, Stream* s, long rc) noexcept nogil:
    """A stream's progress failed: remember with which peer (and, on a mismatch, both headers)."""
    if rc == E_MISMATCH:
        note_mismatch(&e.fail, s.link.peer, s.hdr, s.want)
    else:
        note_peer(&e.fail, s.link.peer)
    return <int>rc


cdef inline void note_waiting(Engine e, Stream* snd, Stream* rcv) noexcept nogil:
    """A step ended waiting (time-out, lost peer): name the peer it waited for."""
    if rcv != NULL and not rcv.done:
        note_peer(&e.fail, rcv.link.peer)
    elif snd != NULL:
        note_peer(&e.fail, snd.link.peer)


cdef int run_step(Engine e, Stream* snd, Stream* rcv, bint trailing, double deadline) noexcept nogil:
    """Progress a send and a receive stream together until both are done.

    Ordering between them is carried by the streams themselves: send segments may depend on
    receive segments (snd.dep), receive segments may forward into the send stream (rcv.fwd), and
    either may carry a byte limit. trailing (both streams present): an exchange that overwrites
    what it sends, so the receive never gets ahead of the send."""
    cdef Idle st
    cdef long a, b
    cdef int rc
    cdef Stream* pair[2]
    st.since = 0
    st.iters = 0
    st.reaped = 0
    st.all[0] = snd
    st.all[1] = rcv
    while True:
        if interrupted(&e.fail):
            return E_CANCELLED
        a = 0
        b = 0
        if snd != NULL and not snd.done:
            a = snd.link.kind.send(snd)
            if a < 0:
                return failed(e, snd, a)
        if rcv != NULL and not rcv.done:
            if trailing:
                rcv.limit = snd.pos if not snd.done else <size_t>-1
            b = rcv.link.kind.recv(rcv)
            if b < 0:
                return failed(e, rcv, b)
        if (snd == NULL or snd.done) and (rcv == NULL or rcv.done):
            break
        if a or b:
            st.since = 0
            st.iters = 0
            st.reaped = 0
            continue
        pair[0] = snd if (snd != NULL and snd.waiting) else NULL
        pair[1] = rcv if (rcv != NULL and rcv.waiting) else NULL
        rc = idle(e, pair, 2, &st, deadline)
        if rc < 0:
            if rc == E_PEER_LOST or rc == E_TIMEOUT:
                note_waiting(e, snd, rcv)
            return rc
    return 0


cdef bint can_fuse(Engine e, int to, int frm) noexcept nogil:
    """Both neighbours are FIFOs: a relay can forward FIFO to FIFO."""
    return to >= 0 and frm >= 0 and e.links[to].kind.fuses and e.links[frm].kind.fuses


cdef size_t slice_bytes(Engine e, int prev, int nxt, size_t es) noexcept nogil:
    """Pipelining unit of a ring or chain: a quarter of the smaller FIFO (4 MiB between links
    without a bound, sockets)."""
    cdef size_t s = 4 << 20
    if e.links[prev].window and e.links[prev].window // 4 < s:
        s = e.links[prev].window // 4
    if e.links[nxt].window and e.links[nxt].window // 4 < s:
        s = e.links[nxt].window // 4
    return s - s % es if s >= es else es


cdef int xfer(Engine e, int to, Seg* ssegs, int ns, int frm, Seg* rsegs, int nr, int coll, int dtype,
              int op, int phase, uint64_t count, bint fused, double deadline) noexcept nogil:
    """Send ssegs to `to` while receiving rsegs from `frm` (a peer < 0: that side is absent).

    A send segment with dep >= 0 carries what receive segment `dep` brought (a relay); with
    fused, that happens FIFO to FIFO (receive, reduce, forward in one pass), otherwise the send
    waits until the receive has landed in memory (the caller gives both the same buffer).
    Callers set buf/loc/len/divide/dep/copy of every segment; fwd is set here."""
    cdef Stream snd, rcv
    cdef size_t es = dtype_size(dtype)
    cdef int i
    for i in range(nr):
        rsegs[i].fwd = False
    for i in range(ns):
        ssegs[i].fwd = fused and ssegs[i].dep >= 0
        if ssegs[i].fwd:
            rsegs[ssegs[i].dep].fwd = True
    if to >= 0:
        open_stream(e, &snd, to, ssegs, ns, coll, dtype, op, phase, count, es, True)
    if frm >= 0:
        open_stream(e, &rcv, frm, rsegs, nr, coll, dtype, op, phase, count, es, False)
        rcv.streaming = e.stream_out
        if to >= 0:
            snd.dep = &rcv
            if fused:
                rcv.fwd = &snd
    if to >= 0:
        snd.streaming = e.stream_out
    i = run_step(e, &snd if to >= 0 else NULL, &rcv if frm >= 0 else NULL, False, deadline)
    if e.stream_out:
        store_fence()
    return i


cdef int run_pairs(Engine e, Stream* snd, Stream* rcv, int n, double deadline) noexcept nogil:
    """Progress n (send, receive) stream pairs at once, slot i being snd[i] and rcv[i] (a slot whose
    two streams are both done is empty), until a busy slot has both done: returns its index, or
    < 0 on error. The window of the pairwise alltoall (linear.pyx): whatever peer is ready moves,
    where run_step waits for one. Waiting arms every waiting stream of the window (at most
    MAX_WAIT, so a sleeper is woken by any of them), and the look for dead peers every 50 ms of
    waiting goes round the busy slots."""
    cdef Idle st
    cdef Stream* ss[MAX_WAIT]
    cdef long a
    cdef int i, rc, turn = 0, w
    cdef bint moved
    st.since = 0
    st.iters = 0
    st.reaped = 0
    while True:
        if interrupted(&e.fail):
            return E_CANCELLED
        moved = False
        for i in range(n):
            if snd[i].done and rcv[i].done:
                continue
            if not snd[i].done:
                a = snd[i].link.kind.send(&snd[i])
                if a < 0:
                    return failed(e, &snd[i], a)
                moved = moved or a != 0
            if not rcv[i].done:
                a = rcv[i].link.kind.recv(&rcv[i])
                if a < 0:
                    return failed(e, &rcv[i], a)
                moved = moved or a != 0
            if snd[i].done and rcv[i].done:
                if e.stream_out:
                    store_fence()
                return i
        if moved:
            st.since = 0
            st.iters = 0
            st.reaped = 0
            continue
        w = -1
        for i in range(n):
            ss[2 * i] = &snd[i] if (not snd[i].done and snd[i].waiting) else NULL
            ss[2 * i + 1] = &rcv[i] if (not rcv[i].done and rcv[i].waiting) else NULL
            if not (snd[i].done and rcv[i].done) and (w < 0 or (i - turn) % n == 0):
                w = i                         # the slot the look for dead peers takes this time
        turn += 1
        st.all[0] = &snd[w]
        st.all[1] = &rcv[w]
        rc = idle(e, ss, 2 * n, &st, deadline)
        if rc < 0:
            if rc == E_PEER_LOST or rc == E_TIMEOUT:
                note_waiting(e, &snd[w], &rcv[w])
            return rc


# ------------------------------------------------------------------ waiting

cdef double _load = 0.0            # the host's 1-minute load average, read at most every LOAD_EVERY s
cdef double _load_at = -1.0
cdef double _load_floor = -1.0     # < 0: handover while the load is >= the ranks + the CPUs; else this
cdef long _cpus = 0
cdef double LOAD_EVERY = 0.5


def _set_handover_load(double floor=-1.0):
    """Tests and bench/oversubscribed.py: hand over while the load average is >= floor (0: always;
    < 0, the default: while it is >= the communicator's ranks + the host's CPUs)."""
    global _load_floor
    _load_floor = floor


def _handover_now(int size):
    """Whether a step of a ``size``-rank engine that moves handover_bytes would sleep at once now."""
    return host_loaded(size, hc_now())


cdef bint host_loaded(int size, double now) noexcept nogil:
    """Whether other jobs load this host: its 1-minute load average is at least the communicator's
    ranks (all of them runnable while they yield) plus the CPUs, i.e. about one other runnable
    task per CPU besides ours (_load_floor instead when set). Read from /proc/loadavg at most
    every LOAD_EVERY seconds (a few microseconds), only by steps large enough to hand over."""
    global _load, _load_at, _cpus
    cdef double l = 0.0
    if _load_floor == 0:
        return True
    if now - _load_at > LOAD_EVERY or _load_at < 0:
        _load_at = now
        if getloadavg(&l, 1) == 1:
            _load = l
        if _cpus <= 0:
            _cpus = sysconf(_SC_NPROCESSORS_ONLN)
    return _load >= (_load_floor if _load_floor > 0 else <double>(size + (_cpus if _cpus > 0 else 1)))

cdef inline size_t step_bytes(Idle* st) noexcept nogil:
    cdef size_t b = 0
    if st.all[0] != NULL:
        b += st.all[0].total
    if st.all[1] != NULL:
        b += st.all[1].total
    return b


cdef int idle(Engine e, Stream** ss, int n, Idle* st, double deadline) noexcept nogil:
    """Nothing moved: spin, then yield, then block. Returns <0 on timeout/peer loss.

    Oversubscribed (comm.py sets spin_s = 0 and handover_bytes): a step that moves at least
    handover_bytes sleeps at once while other jobs load the host (host_loaded), giving the core to
    the ranks that have bytes to copy instead of to the other jobs; a smaller one, or any on a
    host running only this job, yields first, since its peer is usually a few microseconds away
    and waking a sleeper on an idle vCPU costs tens (docs/transports.md, "More ranks than
    cores")."""
    cdef double now, waited
    cdef int i
    st.iters += 1
    if st.since == 0 or (st.iters & 15) == 0:
        now = hc_now()
        if st.since == 0:
            st.since = now
            st.awake = e.spin_s + e.yield_s
            if e.handover_bytes and step_bytes(st) >= e.handover_bytes and host_loaded(e.size, now):
                st.awake = 0
        if interrupted(&e.fail):
            return E_CANCELLED
        if now > deadline:
            return E_TIMEOUT
        if e.held and now >= e.hold_end:      # a latency-path call waited hold_s: free the GIL
            let_go(e)
        waited = now - st.since
        if waited >= st.awake:
            if waited - st.reaped > 0.05:
                st.reaped = waited
                if reap(e, st.all, 2) < 0:  # every 50 ms: is any peer of this step gone?
                    return E_PEER_LOST
            for i in range(n):        # a closed link that cannot move is a lost peer
                if ss[i] != NULL and not ss[i].done and ss[i].link.closed:
                    note_peer(&e.fail, ss[i].link.peer)
                    return E_PEER_LOST
            let_go(e)                         # never sleep holding the GIL
            return block(e, ss, n, deadline)
        if waited > e.spin_s:
            sched_yield()
            return 0
    if e.spin_s > 0:
        hc_relax()
    else:
        sched_yield()
    return 0


cdef inline void polled(Link* L, short revents) noexcept nogil:
    """L's socket (or event fd) was polled with these revents: a hang-up is a closed link, the
    rest is the kind's (doorbells)."""
    if revents & (POLLHUP | POLLERR | POLLNVAL | POLLRDHUP):
        L.closed = 1
    if L.kind.woken != NULL:
        L.kind.woken(L, revents)


cdef int block(Engine e, Stream** ss, int n, double deadline) noexcept nogil:
    """Sleep until a peer wakes us, dies, the engine is interrupted, or 100 ms (futex: 50 ms)
    pass (then look at signals).

    ss holds [send stream, receive stream] pairs (at most MAX_WAIT streams), either NULL when it
    does not wait on its link. Each
    waiting link's kind arms it (link.pxd: LinkKind.arm). When every link waited on is of a futex
    kind (shm, c2c), sleep in a futex wait on their words (a futex wake leaves us on our own CPU,
    see fifo.pxd; reap() notices a dead peer within 50 ms); several links need futex_waitv (else
    poll). Otherwise sleep in poll() on what the kinds armed, which a doorbell byte, a UCX event or
    a peer's death (EOF) wakes. Either way an interrupt wakes it (life.pxd: the futex wait includes
    the interrupt word, the poll set the engine's eventfd)."""
    cdef pollfd fds[MAX_WAIT + 1]
    cdef Link* armed[MAX_WAIT]
    cdef bint armed_rx[MAX_WAIT]
    cdef uint32_t* words[MAX_WAIT]
    cdef int nf = 0, i, rc, ms
    cdef bint ready = False, rx, woken
    cdef size_t need
    cdef Link* L
    cdef Link* only = NULL
    cdef Stream* s
    cdef uint32_t how = SLEEP_FUTEX
    for i in range(n):                   # links of futex kinds only: futex; anything else: poll
        s = ss[i]
        if s == NULL or s.done:
            continue
        if not s.link.kind.futex or ((i & 1) and s.fwd != NULL and not s.fwd.link.kind.futex):
            how = SLEEP_POLL
            break
        if (only != NULL and only != s.link) or ((i & 1) and s.fwd != NULL and s.fwd.link != s.link):
            if not hc_life_waitv_ok():
                how = SLEEP_POLL
                break
        only = s.link
    for i in range(n):
        s = ss[i]
        if s == NULL or s.done:
            continue
        L = s.link
        rx = (i & 1) != 0
        need = 1
        if rx and s.fwd != NULL and s.cur < s.nseg and s.segs[s.cur].fwd and L.kind.ready(L, True, False):
            L = s.fwd.link               # data is here; forwarding waits for room downstream
            rx = False
            need = s.esize
        ready = L.kind.arm(L, rx, need, how, &fds[nf], &words[nf]) or ready
        fds[nf].revents = 0
        armed[nf] = L
        armed_rx[nf] = rx
        nf += 1
    if not ready and nf > 0 and how == SLEEP_FUTEX:
        ms = <int>((deadline - hc_now()) * 1000.0) + 1
        if ms > 50:
            ms = 50
        if ms > 0:
            e.futex_sleeps += 1
            hc_life_sleep_many(&e.fail.life, words, nf, SLEEP_FUTEX, ms)
        woken = False                    # a peer's wake clears the word it set (fifo_wake_peer)
        for i in range(nf):
            woken = woken or hc_load32_sc(words[i]) != SLEEP_FUTEX
        if not woken and not interrupted(&e.fail) and check_signals(&e.fail) != 0:
            rc = E_INTERRUPTED           # not woken (timed out or a signal): honour Ctrl-C
            for i in range(nf):
                armed[i].kind.disarm(armed[i], armed_rx[i])
            return rc
    elif not ready and nf > 0:
        fds[nf].fd = e.fail.life.efd     # readable for good once interrupted
        fds[nf].events = POLLIN
        fds[nf].revents = 0
        ms = <int>((deadline - hc_now()) * 1000.0) + 1
        if ms > 100:
            ms = 100
        if ms < 0:
            ms = 0
        e.poll_sleeps += 1
        rc = poll(fds, nf + 1, ms)
        if rc > 0:
            for i in range(nf):
                if fds[i].revents:
                    polled(armed[i], fds[i].revents)
        elif rc == 0:
            if check_signals(&e.fail) != 0:
                for i in range(nf):
                    armed[i].kind.disarm(armed[i], armed_rx[i])
                return E_INTERRUPTED
    for i in range(nf):
        armed[i].kind.disarm(armed[i], armed_rx[i])
    return E_CANCELLED if interrupted(&e.fail) else 0


cdef int reap(Engine e, Stream** all, int n) noexcept nogil:
    """Look (without waiting) for closed sockets of every link a stalled step involves, the
    ones it is not sleeping on included; a dead peer there means the step can never finish."""
    cdef pollfd fds[6]
    cdef Link* ls[6]
    cdef int nf = 0, i
    for i in range(n):
        if all[i] == NULL or all[i].done:
            continue
        ls[nf] = all[i].link
        nf += 1
        if all[i].fwd != NULL:
            ls[nf] = all[i].fwd.link
            nf += 1
    for i in range(nf):
        fds[i].fd = ls[i].fd
        fds[i].events = POLLIN | POLLRDHUP
        fds[i].revents = 0
    if nf == 0 or poll(fds, nf, 0) <= 0:
        return 0
    for i in range(nf):
        if fds[i].revents:
            polled(ls[i], fds[i].revents)
        if ls[i].closed:
            note_peer(&e.fail, ls[i].peer)
    for i in range(nf):
        if ls[i].closed:
            return E_PEER_LOST
    return 0
