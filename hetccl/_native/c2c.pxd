# The c2c (coherent chip-to-chip) link state of one pair, as the nogil core sees it, plus the two OS
# primitives it rests on: cross-memory attach (process_vm_readv/writev: one kernel copy straight
# between two processes' buffers) and shared futexes (the "block" half of spin-then-block on a flag
# in shared memory).
#
# Every c2c pair also owns an ordinary shm FIFO pair (fifo.pxd) for the collectives and messages that
# have no single-copy schedule; the C2CPeer below (a field of its Link, set up by link_c2c.pxd) adds
# the control slots and, in window mode, the pre-faulted windows. Each side owns one C2CSlot in the pair segment: it alone writes `epoch` and
# the published call description; the other side only increments `waiters` before it futex-waits.
from libc.stdint cimport uint64_t, uint32_t, uint8_t, int32_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <errno.h>
    #include <limits.h>
    #include <time.h>
    #include <unistd.h>
    #include <sys/syscall.h>
    #include <sys/uio.h>
    #include <linux/futex.h>
    #define HC_C2C_MAGIC 0x4332434843324332ULL   /* "2C2CHC2C": a slot's owner attached */
    static inline uint32_t hc_add32(volatile uint32_t* p, int32_t v) {
        return __atomic_add_fetch(p, (uint32_t)v, __ATOMIC_SEQ_CST);
    }
    /* Sleep while *addr == val, at most ms milliseconds (the futex is shared: no FUTEX_PRIVATE). */
    static inline int hc_futex_wait(volatile uint32_t* addr, uint32_t val, int ms) {
        struct timespec ts; ts.tv_sec = ms / 1000; ts.tv_nsec = (long)(ms % 1000) * 1000000L;
        return (int)syscall(SYS_futex, (uint32_t*)addr, FUTEX_WAIT, val, &ts, NULL, 0);
    }
    static inline int hc_futex_wake(volatile uint32_t* addr) {
        return (int)syscall(SYS_futex, (uint32_t*)addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    }
    /* Copy n bytes at raddr in process pid to ldst (read) or from lsrc to raddr (write); loops over
       partial transfers. Returns 0, or -errno. */
    static inline long hc_cma(int pid, void* local, uint64_t raddr, size_t n, int write) {
        while (n > 0) {
            struct iovec l, r;
            ssize_t k;
            l.iov_base = local; l.iov_len = n;
            r.iov_base = (void*)(uintptr_t)raddr; r.iov_len = n;
            k = write ? process_vm_writev(pid, &l, 1, &r, 1, 0) : process_vm_readv(pid, &l, 1, &r, 1, 0);
            if (k < 0) { if (errno == EINTR) continue; return -errno; }
            if (k == 0) return -EFAULT;
            local = (char*)local + k; raddr += (uint64_t)k; n -= (size_t)k;
        }
        return 0;
    }
    """
    uint32_t hc_add32(uint32_t* p, int32_t v) nogil
    int hc_futex_wait(uint32_t* addr, uint32_t val, int ms) nogil
    int hc_futex_wake(uint32_t* addr) nogil
    long hc_cma(int pid, void* local, uint64_t raddr, size_t n, int write) nogil
    const uint64_t C2C_MAGIC "HC_C2C_MAGIC"

cdef enum C2CMode:
    C2C_OFF = 0
    C2C_CMA = 1         # peers read/write each other's user buffers through process_vm_readv/writev
    C2C_WINDOW = 2      # peers load/store each other's pre-faulted shared windows

cdef enum:
    C2C_DROP_RING = 16       # drop_ring's length
    C2C_SLOT_BYTES = 2048
    C2C_CTL_BYTES = 4096

cdef struct C2CSlot:
    uint32_t epoch           # syncs this side has passed (written by the owner only)
    char _p0[60]
    uint32_t waiters         # > 0: the other side may be asleep on `epoch` (futex)
    char _p1[60]
    uint8_t hdr[32]          # the call this side is in (collective, dtype, op, seq, count)
    uint64_t sbuf            # CMA: the owner's input / output addresses in its own address space
    uint64_t rbuf
    uint64_t magic           # C2C_MAGIC once the owner attached (sanity check of the mapping)
    uint32_t refused         # the sync (epoch) before which a CMA read of this side's was refused
                             # (EPERM/EACCES): every rank then re-runs the call on the FIFOs
    # Registered buffers shared by the owner (symmetric_heap.pyx, registered regions): the owner's
    # memfd descriptors behind a registered sbuf / rbuf of the published call, and the ids of the
    # regions it dropped (`dropped` counts them, release; drop_ring[k % C2C_DROP_RING] is the k-th)
    int32_t sfd
    int32_t rfd
    uint32_t dropped
    uint32_t drop_ring[16]

cdef struct C2CPeer:
    int mode                 # C2CMode
    int pid
    C2CSlot* mine
    C2CSlot* theirs
    char* win_tx             # window mode: my window toward this peer (I store, it loads)
    char* win_rx             # its window toward me
    size_t win               # bytes of each window
