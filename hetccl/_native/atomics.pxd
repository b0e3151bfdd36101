# Atomics, CPU relax and a monotonic clock for the nogil core. Cython has no atomics of its own, so
# these are thin static-inline C helpers (GCC/Clang builtins, portable to aarch64).
from libc.stdint cimport uint64_t, uint32_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <time.h>
    #include <sched.h>
    static inline uint64_t hc_load_acq(const volatile uint64_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline uint64_t hc_load_sc(const volatile uint64_t* p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static inline void hc_store_rel(volatile uint64_t* p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline void hc_store_sc(volatile uint64_t* p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
    static inline uint32_t hc_load32_sc(const volatile uint32_t* p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static inline uint32_t hc_load32_rlx(const volatile uint32_t* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void hc_store32_sc(volatile uint32_t* p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
    static inline uint32_t hc_xchg32(volatile uint32_t* p, uint32_t v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
    static inline void hc_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
    static inline void hc_relax(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }
    static inline double hc_now(void) {
        struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    }
    """
    uint64_t hc_load_acq(const uint64_t* p) nogil
    uint64_t hc_load_sc(const uint64_t* p) nogil
    void hc_store_rel(uint64_t* p, uint64_t v) nogil
    void hc_store_sc(uint64_t* p, uint64_t v) nogil
    uint32_t hc_load32_sc(const uint32_t* p) nogil
    uint32_t hc_load32_rlx(const uint32_t* p) nogil
    void hc_store32_sc(uint32_t* p, uint32_t v) nogil
    uint32_t hc_xchg32(uint32_t* p, uint32_t v) nogil
    void hc_fence() nogil
    void hc_relax() nogil
    double hc_now() nogil
