# The lifecycle of an engine's native resources, shared by every module that runs schedules on them
# (the engine's progress and its schedules, single_copy, symmetric_heap): an interrupt word,
# an in-use counter, and the sleep primitive that an interrupt always wakes.
#
# Why: a communicator may be aborted or closed from any thread while another thread runs a schedule
# without the GIL on its FIFOs, windows, sockets and UCX endpoints. Unmapping or closing any of
# them under that schedule crashes the process (or, for a reused fd, writes into someone else's
# file). So:
#
# * interrupt (life_interrupt) stores a reason in one atomic word (`intr`) that every progress, idle
#   and wait loop reads, and wakes sleepers at once: a futex sleeper waits on its shared word *and*
#   on `intr` together (futex_waitv, Linux >= 5.16, which also lets one sleep wait on the words of
#   several links; older kernels sleep on one word in short slices instead), a poll() sleeper has
#   the engine's eventfd in its set, which an interrupt makes readable for good. The word is
#   sticky: once set, every later operation fails the same way.
# * every entry point that runs on the resources enters (life_enter: one atomic increment, then a
#   look at `intr`) and leaves (life_leave: one atomic decrement);
# * release (Engine.close) interrupts, marks the engine closing, waits until nobody is inside, and
#   only then unmaps and closes. Enter and close order themselves Dekker-style (each side stores
#   with seq_cst, then loads the other's word), so an entry either sees the interrupt and backs out
#   or is counted before close looks.
#
# The reason and the peer travel in the one word: reason in the low 8 bits, peer + 1 above them.
from libc.stdint cimport uint32_t, int32_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <errno.h>
    #include <limits.h>
    #include <time.h>
    #include <unistd.h>
    #include <sys/syscall.h>
    #include <sys/eventfd.h>
    #include <linux/futex.h>
    #ifndef __NR_futex_waitv
    #define __NR_futex_waitv 449
    #endif

    typedef struct {
        uint32_t intr;        /* 0, or reason | (peer + 1) << 8: sticky, a private futex word */
        uint32_t inuse;       /* entries inside (schedules, and interrupters touching efd) */
        uint32_t closing;     /* close() has begun: interrupters leave efd alone from now on */
        int efd;              /* eventfd in every poll() set of the engine; -1 once closed */
    } HcLife;

    struct hc_waitv { uint64_t val; uint64_t uaddr; uint32_t flags; uint32_t reserved; };
    static int hc_waitv_ok = 1;       /* cleared when the kernel has no futex_waitv */

    static inline int hc_life_init(HcLife* L) {
        L->intr = 0; L->inuse = 0; L->closing = 0;
        L->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        return L->efd;
    }
    static inline uint32_t hc_life_intr(HcLife* L) { return __atomic_load_n(&L->intr, __ATOMIC_RELAXED); }
    static inline uint32_t hc_life_inuse(HcLife* L) { return __atomic_load_n(&L->inuse, __ATOMIC_SEQ_CST); }

    /* Count an entry; 0, or the interrupt word (then nothing is counted). */
    static inline uint32_t hc_life_enter(HcLife* L) {
        uint32_t w;
        __atomic_add_fetch(&L->inuse, 1, __ATOMIC_SEQ_CST);
        w = __atomic_load_n(&L->intr, __ATOMIC_SEQ_CST);
        if (w) __atomic_sub_fetch(&L->inuse, 1, __ATOMIC_SEQ_CST);
        return w;
    }
    static inline void hc_life_leave(HcLife* L) { __atomic_sub_fetch(&L->inuse, 1, __ATOMIC_SEQ_CST); }

    /* Set the interrupt (the first reason wins) and wake every sleeper. Any thread, no GIL needed.
       Returns 1 if this call set it. */
    static inline int hc_life_interrupt(HcLife* L, int reason, int peer) {
        uint32_t want = (uint32_t)(reason & 0xFF) | ((uint32_t)(peer + 1) << 8), expect = 0;
        int first = __atomic_compare_exchange_n(&L->intr, &expect, want, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
        uint64_t one = 1;
        __atomic_add_fetch(&L->inuse, 1, __ATOMIC_SEQ_CST);
        if (!__atomic_load_n(&L->closing, __ATOMIC_SEQ_CST) && L->efd >= 0) {
            ssize_t k = write(L->efd, &one, sizeof one);
            (void)k;
        }
        syscall(SYS_futex, &L->intr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
        __atomic_sub_fetch(&L->inuse, 1, __ATOMIC_SEQ_CST);
        return first;
    }

    /* Sleep while *shared == val and no interrupt, at most ms: 0 if woken (or a value changed),
       -1 on time-out or a signal. Without futex_waitv an interrupt cannot wake the shared-word
       wait, so sleeps are cut into 5 ms slices. */
    static inline int hc_life_sleep(HcLife* L, volatile uint32_t* shared, uint32_t val, int ms) {
        struct timespec ts;
        if (ms <= 0) return -1;
        if (hc_waitv_ok) {
            struct hc_waitv w[2];
            long r;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += ms / 1000;
            ts.tv_nsec += (long)(ms % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) { ts.tv_sec += 1; ts.tv_nsec -= 1000000000L; }
            w[0].val = val; w[0].uaddr = (uint64_t)(uintptr_t)shared; w[0].flags = 2; w[0].reserved = 0;
            w[1].val = 0; w[1].uaddr = (uint64_t)(uintptr_t)&L->intr; w[1].flags = 2 | 128; w[1].reserved = 0;
            r = syscall(__NR_futex_waitv, w, 2, 0, &ts, CLOCK_MONOTONIC);
            if (r >= 0 || errno == EAGAIN) return 0;
            if (errno == ETIMEDOUT || errno == EINTR) return -1;
            hc_waitv_ok = 0;          /* ENOSYS (old kernel), EPERM (seccomp), EINVAL: fall back */
        }
        if (__atomic_load_n(&L->intr, __ATOMIC_SEQ_CST)) return 0;
        if (ms > 5) ms = 5;
        ts.tv_sec = 0; ts.tv_nsec = (long)ms * 1000000L;
        return syscall(SYS_futex, shared, FUTEX_WAIT, val, &ts, NULL, 0) == 0 ? 0 : -1;
    }

    /* hc_life_sleep on several shared words at once (1 <= n <= 8): woken when any of them
       changes from val. Without futex_waitv (hc_life_waitv_ok) it sleeps on the last word alone:
       callers pass several words then only if one wake reaches them all (the two flags of one
       FIFO pair, fifo_wake_peer). */
    static inline int hc_life_sleep_many(HcLife* L, uint32_t** shared, int n, uint32_t val, int ms) {
        struct hc_waitv w[9];
        struct timespec ts;
        long r;
        int i;
        if (n < 1 || n > 8 || ms <= 0) return -1;
        if (n == 1 || !hc_waitv_ok) return hc_life_sleep(L, shared[n - 1], val, ms);
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += ms / 1000;
        ts.tv_nsec += (long)(ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec += 1; ts.tv_nsec -= 1000000000L; }
        for (i = 0; i < n; i++) {
            w[i].val = val; w[i].uaddr = (uint64_t)(uintptr_t)shared[i]; w[i].flags = 2; w[i].reserved = 0;
        }
        w[n].val = 0; w[n].uaddr = (uint64_t)(uintptr_t)&L->intr; w[n].flags = 2 | 128; w[n].reserved = 0;
        r = syscall(__NR_futex_waitv, w, n + 1, 0, &ts, CLOCK_MONOTONIC);
        if (r >= 0 || errno == EAGAIN) return 0;
        if (errno == ETIMEDOUT || errno == EINTR) return -1;
        hc_waitv_ok = 0;              /* the caller goes round again, and then sleeps in poll() */
        return -1;
    }
    /* Whether a sleep may wait on several shared words (the kernel has futex_waitv, as far as
       known: cleared by the first call that finds it missing). */
    static inline int hc_life_waitv_ok(void) { return hc_waitv_ok; }

    /* Wait (sleeping 1 ms at a time) until nobody is inside, at most seconds (0: look once);
       1 if so. */
    static inline int hc_life_drain(HcLife* L, double seconds) {
        struct timespec ts;
        long slices = seconds > 0 ? (long)(seconds * 1000.0 + 0.999) : 0;
        ts.tv_sec = 0; ts.tv_nsec = 1000000L;
        while (__atomic_load_n(&L->inuse, __ATOMIC_SEQ_CST)) {
            if (slices-- <= 0) return 0;
            nanosleep(&ts, NULL);
        }
        return 1;
    }
    /* From now on interrupters leave efd alone (close() waits for those already at it). */
    static inline void hc_life_closing(HcLife* L) { __atomic_store_n(&L->closing, 1, __ATOMIC_SEQ_CST); }
    static inline void hc_life_close_efd(HcLife* L) {
        if (L->efd >= 0) { close(L->efd); L->efd = -1; }
    }
    """
    ctypedef struct HcLife:
        uint32_t intr
        uint32_t inuse
        uint32_t closing
        int efd
    int hc_life_init(HcLife* L) nogil
    uint32_t hc_life_intr(HcLife* L) nogil
    uint32_t hc_life_inuse(HcLife* L) nogil
    uint32_t hc_life_enter(HcLife* L) nogil
    void hc_life_leave(HcLife* L) nogil
    int hc_life_interrupt(HcLife* L, int reason, int peer) nogil
    int hc_life_sleep(HcLife* L, uint32_t* shared, uint32_t val, int ms) nogil
    int hc_life_sleep_many(HcLife* L, uint32_t** shared, int n, uint32_t val, int ms) nogil
    int hc_life_waitv_ok() nogil
    int hc_life_drain(HcLife* L, double seconds) nogil
    void hc_life_closing(HcLife* L) nogil
    void hc_life_close_efd(HcLife* L) nogil

# interrupt reasons (the low 8 bits of HcLife.intr); exported by engine.pyx as ABORTED etc.
# The word lives in the engine's Failure (failure.pxd), with the error state it leads to.
cdef enum:
    LIFE_ABORTED = 1          # abort() / close(): CommAborted
    LIFE_REVOKED = 2          # the communicator was revoked: CommRevoked
    LIFE_PEER_LOST = 3        # a peer was declared dead (e.g. by a heartbeat): PeerLostError

cdef inline int life_reason(uint32_t w) noexcept nogil:
    return <int>(w & 0xFF)

cdef inline int life_peer(uint32_t w) noexcept nogil:
    return <int>(w >> 8) - 1
