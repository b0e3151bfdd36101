/* Reduction, conversion and copy kernels behind hetccl/_native/kernels.pyx.
 *
 * Every kernel exists twice: a baseline build (plain x86-64 = SSE2, or whatever the target is) and,
 * on x86-64, a copy compiled with __attribute__((target("avx2,f16c"))). hk_init() checks the CPU
 * once and picks one table, so a single binary runs on any x86-64 and uses AVX2/F16C where present.
 * (Explicit target + __builtin_cpu_supports rather than target_clones: no ifunc needed, so it also
 * builds against musl and with compilers without ifunc support.)
 *
 * -DHK_PORTABLE forces the plain-C path (what non-x86 targets get), for testing it on x86.
 *
 * Semantics (checked bit for bit against numpy / ml_dtypes by tests/test_reduce.py):
 *  - integers wrap (two's complement); SUM/PROD run on the unsigned type of the same width.
 *  - float MIN/MAX are numpy's np.minimum/np.maximum: a NaN operand wins (the first one if both
 *    are NaN), and for equal operands (-0.0 vs +0.0) the second operand is returned.
 *  - float SUM/PROD: IEEE, plus x86's NaN rule made explicit (a NaN first operand's payload wins),
 *    so even NaN bits match numpy on x86 whatever operand order the compiler picks.
 *  - float16/bfloat16/fp8 SUM/PROD widen to float32, combine, and round back to nearest-even
 *    exactly like numpy / ml_dtypes astype() (NaN/Inf/overflow/subnormals included); fp8 through
 *    256x256 tables built from that definition at init. MIN/MAX on them compare sign-magnitude
 *    keys and never convert (same bits as the reference).
 *  - divide (AVG): floats divide in float (narrow ones via float32, rounded back); integers
 *    truncate like C; n <= 1 and bool are no-ops.
 *  - streaming: each 256-byte block of results is computed into a local buffer (registers or
 *    store-forwarded L1) and written with non-temporal stores (64-byte aligned part of dst;
 *    head/tail use plain stores). The caller fences (hk_fence) before publishing.
 */
#ifndef HETCCL_KERNELS_H
#define HETCCL_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(HK_PORTABLE)
#define HK_X86 1
#include <immintrin.h>
#else
#define HK_X86 0
#endif

#if defined(__clang__)
#define HK_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define HK_IVDEP _Pragma("GCC ivdep")
#else
#define HK_IVDEP
#endif

#if defined(__GNUC__) || defined(__clang__)
#define HK_INLINE static inline __attribute__((always_inline))
#define HK_UNUSED __attribute__((unused))
#else
#define HK_INLINE static inline
#define HK_UNUSED
#endif

#define HK_AVX2 __attribute__((target("avx2,f16c")))

typedef void (*hk_reduce_fn)(void* dst, const void* a, const void* b, size_t count, int streaming);
typedef void (*hk_dual_fn)(void* d, void* e, const void* a, const void* b, size_t count,
                           int streaming);
typedef void (*hk_cmp_fn)(void* dst, const void* a, const void* b, size_t count);
typedef void (*hk_stream_fn)(void* dst, const void* src, size_t nbytes);
typedef void (*hk_stream2_fn)(void* dst, void* dst2, const void* src, size_t nbytes);

enum { HK_NDT = 15, HK_NOP = 8 };
enum { HK_INT8, HK_UINT8, HK_INT16, HK_UINT16, HK_INT32, HK_UINT32, HK_INT64, HK_UINT64,
       HK_FLOAT16, HK_BFLOAT16, HK_FLOAT32, HK_FLOAT64, HK_FP8_E4M3, HK_FP8_E5M2, HK_BOOL };
enum { HK_SUM, HK_PROD, HK_MIN, HK_MAX, HK_AVG, HK_BAND, HK_BOR, HK_BXOR };

#define HK_STREAM_MIN 4096     /* below this, streaming requests use ordinary stores */
/* HK_PAGED, a flag beside streaming (1) for the dual kernel: its inputs sit on 4 KiB pages, so
 * while streaming it touches them HK_PF_AHEAD bytes ahead, one line per 4 KiB of progress. Shared
 * memory (memfd, /dev/shm: the symmetric schedules' buffers) is on 4 KiB pages wherever the host
 * leaves shmem huge pages off, and the hardware prefetchers stop at each 4 KiB page: every new
 * page of an input starts with a page walk and a cold stream. A software prefetch walks the page
 * early (it never faults) and restarts the stream before the loads reach it. Measured on the
 * 2-vCPU VM, one dual-write of 32 MiB per buffer, two processes at once (CPU time, median of 150
 * interleaved rounds): on memfd pages 6.9-7.0 ms without, 6.5-6.7 ms at 8-16 KiB ahead; on
 * transparent huge pages 6.2-6.3 ms without, 6.3-6.4 with (hence a flag, not always on).
 * Prefetching the streamed outputs' pages did not help. */
#define HK_PAGED 2
#define HK_PF_AHEAD 16384
#define HK_PF_EVERY (4096 / HK_BLK)

/* ------------------------------------------------------------------------------------------------
 * Scalar conversions (inlined into both the baseline and the AVX2 loops; written branch-free so the
 * loops vectorise).
 * ---------------------------------------------------------------------------------------------- */
typedef union { uint32_t u; float f; } hk_f32;

HK_INLINE float hk_bits_f(uint32_t u) { hk_f32 x; x.u = u; return x.f; }
HK_INLINE uint32_t hk_f_bits(float f) { hk_f32 x; x.f = f; return x.u; }

/* Branch-free select on 32-bit patterns: all arms are computed, then masked (keeps gcc from
 * turning the arms into branches, which would stop vectorisation of loops with float arms). */
HK_INLINE uint32_t hk_sel(int c, uint32_t a, uint32_t b) {
    uint32_t m = 0u - (uint32_t)(c != 0);
    return (a & m) | (b & ~m);
}

/* float16 -> float32 (exact; NaN payloads kept, signalling NaNs stay signalling, like numpy). */
HK_INLINE float hk_h2f(uint32_t h) {
    uint32_t sign = (h & 0x8000u) << 16;
    uint32_t mag = h & 0x7fffu;
    uint32_t normal = (mag << 13) + ((127u - 15u) << 23);
    uint32_t special = (mag << 13) | 0x7f800000u;                      /* Inf / NaN */
    uint32_t sub = hk_f_bits((float)(int32_t)mag * 5.9604644775390625e-08f);  /* mag * 2^-24 */
    uint32_t r = hk_sel(mag >= 0x7c00u, special, hk_sel(mag < 0x0400u, sub, normal));
    return hk_bits_f(r | sign);
}

/* float32 -> float16, round to nearest even; NaN -> 0x7c00 | payload>>13 (never 0), like numpy. */
HK_INLINE uint16_t hk_f2h(float f) {
    uint32_t u = hk_f_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    uint32_t pay = (a & 0x007fffffu) >> 13;
    uint32_t nan = 0x7c00u | pay | (uint32_t)(pay == 0u);
    /* subnormal / zero results (|f| < 2^-14): the FPU rounds at the right place after adding 0.5 */
    uint32_t sub = hk_f_bits(hk_bits_f(a & 0x3fffffffu) + 0.5f) - 0x3f000000u;
    uint32_t normal = (a - ((127u - 15u) << 23) + 0xfffu + ((a >> 13) & 1u)) >> 13;
    uint32_t r = hk_sel(a > 0x7f800000u, nan,
                 hk_sel(a >= 0x47800000u, 0x7c00u,                     /* >= 65536: Inf */
                 hk_sel(a < 0x38800000u, sub, normal)));
    return (uint16_t)(r | sign);
}

HK_INLINE float hk_b2f(uint32_t h) { return hk_bits_f(h << 16); }

/* float32 -> bfloat16, round to nearest even; NaN -> sign | 0x7fc0 (ml_dtypes). */
HK_INLINE uint16_t hk_f2b(float f) {
    uint32_t u = hk_f_bits(f);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = ((u >> 16) & 0x8000u) | 0x7fc0u;
    return (uint16_t)hk_sel((u & 0x7fffffffu) > 0x7f800000u, nan, r);
}

/* float8_e4m3fn -> float32 (bias 7, no Inf, NaN = S.1111.111 -> sign | 0x7fc00000, as ml_dtypes). */
HK_INLINE float hk_e4m3_2f(uint32_t x) {
    uint32_t sign = (x & 0x80u) << 24;
    uint32_t mag = x & 0x7fu;
    uint32_t normal = (mag << 20) + ((127u - 7u) << 23);
    uint32_t sub = hk_f_bits((float)(int32_t)mag * 0.001953125f);      /* mag * 2^-9 */
    uint32_t r = hk_sel(mag == 0x7fu, 0x7fc00000u, hk_sel(mag < 0x08u, sub, normal));
    return hk_bits_f(r | sign);
}

/* float8_e5m2 -> float32: the top byte of a float16 (NaN payloads differ from ml_dtypes' canonical
 * NaN, which is invisible: every NaN rounds back to sign | 0x7e). */
HK_INLINE float hk_e5m2_2f(uint32_t x) { return hk_h2f(x << 8); }

/* float32 -> float8_e4m3fn: RNE; |x| > 464 (and Inf/NaN) -> NaN with the sign kept (ml_dtypes). */
HK_INLINE uint8_t hk_f2e4m3(float f) {
    uint32_t u = hk_f_bits(f);
    uint32_t sign = (u >> 24) & 0x80u;
    uint32_t a = u & 0x7fffffffu;
    /* |f| < 2^-6: subnormal step 2^-9 = ulp of 2^14 */
    uint32_t sub = hk_f_bits(hk_bits_f(a & 0x3fffffffu) + 16384.0f) - 0x46800000u;
    uint32_t normal = (a - ((127u - 7u) << 23) + 0x7ffffu + ((a >> 20) & 1u)) >> 20;
    uint32_t r = hk_sel(a > 0x43e80000u, 0x7fu, hk_sel(a < 0x3c800000u, sub, normal));
    return (uint8_t)(r | sign);
}

/* float32 -> float8_e5m2 (bias 15, IEEE-like): RNE; >= 61440 -> Inf; NaN -> sign | 0x7e. */
HK_INLINE uint8_t hk_f2e5m2(float f) {
    uint32_t u = hk_f_bits(f);
    uint32_t sign = (u >> 24) & 0x80u;
    uint32_t a = u & 0x7fffffffu;
    /* |f| < 2^-14: subnormal step 2^-16 = ulp of 2^7 */
    uint32_t sub = hk_f_bits(hk_bits_f(a & 0x3fffffffu) + 128.0f) - 0x43000000u;
    uint32_t normal = (a - ((127u - 15u) << 23) + 0xfffffu + ((a >> 21) & 1u)) >> 21;
    uint32_t r = hk_sel(a > 0x7f800000u, 0x7eu,
                 hk_sel(a >= 0x47700000u, 0x7cu, hk_sel(a < 0x38800000u, sub, normal)));
    return (uint8_t)(r | sign);
}

/* Sign-magnitude ordering keys: key(-0) == key(+0), monotonic in the value (NaN handled apart).
 * They fit the element width, so the comparisons vectorise at full width. */
HK_INLINE int16_t hk_key16(uint16_t h) {
    int16_t m = (int16_t)(h & 0x7fffu);
    return (h & 0x8000u) ? (int16_t)-m : m;
}
HK_INLINE int8_t hk_key8(uint8_t h) {
    int8_t m = (int8_t)(h & 0x7fu);
    return (h & 0x80u) ? (int8_t)-m : m;
}

/* float SUM/PROD with x86's NaN rule made explicit: a NaN first operand wins (quietened: x + x),
 * else a NaN second operand does (the hardware does that whatever the order). The compiler may
 * swap the operands of a commutative op, and numpy returns the first operand's NaN.
 * Branch-free: both results are computed and selected on the bits, or gcc would turn the
 * possibly-trapping float arms into branches and not vectorise. */
typedef union { uint64_t u; double f; } hk_f64u;
HK_INLINE float hk_fadd(float x, float y) {
    hk_f32 t, q; t.f = x + y; q.f = x + x;
    return hk_bits_f(hk_sel(x != x, q.u, t.u));
}
HK_INLINE float hk_fmul(float x, float y) {
    hk_f32 t, q; t.f = x * y; q.f = x + x;
    return hk_bits_f(hk_sel(x != x, q.u, t.u));
}
HK_INLINE double hk_dsel(uint64_t m, double a, double b) {
    hk_f64u ua, ub; ua.f = a; ub.f = b;
    ua.u = (ua.u & m) | (ub.u & ~m);
    return ua.f;
}
#define HK_DNANMASK(x) ((x) != (x) ? ~(uint64_t)0 : (uint64_t)0)
HK_INLINE double hk_dadd(double x, double y) { return hk_dsel(HK_DNANMASK(x), x + x, x + y); }
HK_INLINE double hk_dmul(double x, double y) { return hk_dsel(HK_DNANMASK(x), x + x, x * y); }

/* float MIN/MAX with numpy's rule: a NaN first operand wins, then a NaN second one; ties
 * (-0.0 vs +0.0) give the second operand. */
#define HK_FMIN(x, y) (((x) < (y) || (x) != (x)) ? (x) : (y))
#define HK_FMAX(x, y) (((x) > (y) || (x) != (x)) ? (x) : (y))

/* ------------------------------------------------------------------------------------------------
 * Kernel generator.
 *
 * A kernel is an always-inline "body" computing d[i] = f(a[i], b[i]) for i < n (d may equal a or
 * b: element i is read before it is written, hence ivdep rather than restrict). HK_GEN instantiates
 * it, per instruction set V (base = plain x86-64 / any target; avx2 = AVX2+F16C):
 *   NAME_cmp_V(d, a, b, n)      ordinary stores
 *   NAME_nt_V(d, a, b, nblk)    nblk blocks of HK_BLK bytes, dst 64-byte aligned: each block is
 *                               computed into a local buffer (registers / store-forwarded L1) and
 *                               written with non-temporal stores
 *   NAME_V(d, a, b, n, stream)  the reduce_fn: plain, or head + non-temporal blocks + tail
 * ---------------------------------------------------------------------------------------------- */
#define HK_BLK 256

#define HK_BODY(NAME, T, EXPR)                                                                    \
    HK_INLINE void NAME##_body(T* d, const T* a, const T* b, size_t n) {                          \
        HK_IVDEP for (size_t i = 0; i < n; i++) { T x = a[i], y = b[i]; d[i] = (T)(EXPR); }       \
    }

#if HK_X86
#define HK_NT_STORE_BASE(d, t)                                                                    \
    for (size_t k_ = 0; k_ < HK_BLK; k_ += 16)                                                    \
        _mm_stream_si128((__m128i*)((char*)(d) + k_), _mm_load_si128((const __m128i*)((const char*)(t) + k_)))
#define HK_NT_STORE_AVX2(d, t)                                                                    \
    for (size_t k_ = 0; k_ < HK_BLK; k_ += 32)                                                    \
        _mm256_stream_si256((__m256i*)((char*)(d) + k_),                                          \
                            _mm256_load_si256((const __m256i*)((const char*)(t) + k_)))
#else
#define HK_NT_STORE_BASE(d, t) memcpy((d), (t), HK_BLK)
#endif

#define HK_GEN_V(NAME, T, BODY, V, ATTR, NTSTORE)                                                 \
    static ATTR void NAME##_cmp_##V(void* d, const void* a, const void* b, size_t n) {            \
        BODY((T*)d, (const T*)a, (const T*)b, n);                                                 \
    }                                                                                             \
    static ATTR void NAME##_nt_##V(void* d_, const void* a_, const void* b_, size_t nblk) {       \
        char* d = (char*)d_; const char* a = (const char*)a_; const char* b = (const char*)b_;    \
        for (size_t k = 0; k < nblk; k++, d += HK_BLK, a += HK_BLK, b += HK_BLK) {                \
            T t[HK_BLK / sizeof(T)] __attribute__((aligned(64)));                                 \
            BODY(t, (const T*)a, (const T*)b, HK_BLK / sizeof(T));                                \
            NTSTORE(d, t);                                                                        \
        }                                                                                         \
    }                                                                                             \
    static void NAME##_##V(void* d, const void* a, const void* b, size_t n, int s) {              \
        hk_drive((char*)d, (const char*)a, (const char*)b, n, s, sizeof(T), NAME##_cmp_##V,       \
                 NAME##_nt_##V);                                                                  \
    }                                                                                             \
    static ATTR void NAME##_nt2_##V(void* d_, void* e_, const void* a_, const void* b_,           \
                                    size_t nblk, int paged) {                                     \
        char* d = (char*)d_; char* e = (char*)e_;                                                 \
        const char* a = (const char*)a_; const char* b = (const char*)b_;                         \
        for (size_t k = 0; k < nblk; k++, d += HK_BLK, e += HK_BLK, a += HK_BLK, b += HK_BLK) {   \
            T t[HK_BLK / sizeof(T)] __attribute__((aligned(64)));                                 \
            if (paged && k % HK_PF_EVERY == 0) {    /* the inputs' pages ahead: HK_PAGED */       \
                __builtin_prefetch(a + HK_PF_AHEAD, 0, 3);                                        \
                __builtin_prefetch(b + HK_PF_AHEAD, 0, 3);                                        \
            }                                                                                     \
            BODY(t, (const T*)a, (const T*)b, HK_BLK / sizeof(T));                                \
            NTSTORE(d, t);                                                                        \
            NTSTORE(e, t);                                                                        \
        }                                                                                         \
    }                                                                                             \
    static void NAME##_dual_##V(void* d, void* e, const void* a, const void* b, size_t n, int s) {\
        hk_drive2((char*)d, (char*)e, (const char*)a, (const char*)b, n, s, sizeof(T),           \
                  NAME##_##V, NAME##_nt2_##V);                                                    \
    }                                                                                             \
    static ATTR void NAME##_fb_##V(void* d_, void* e_, const void* a_, const void* b_,            \
                                   size_t nblk, int nt) {                                         \
        char* d = (char*)d_; char* e = (char*)e_;                                                 \
        const char* a = (const char*)a_; const char* b = (const char*)b_;                         \
        for (size_t k = 0; k < nblk; k++, d += HK_BLK, e += HK_BLK, a += HK_BLK, b += HK_BLK) {   \
            T t[HK_BLK / sizeof(T)] __attribute__((aligned(64)));                                 \
            BODY(t, (const T*)a, (const T*)b, HK_BLK / sizeof(T));                                \
            memcpy(d, t, HK_BLK);                                                                 \
            if (nt) { NTSTORE(e, t); } else { memcpy(e, t, HK_BLK); }                             \
        }                                                                                         \
    }                                                                                             \
    static void NAME##_fwd_##V(void* d, void* e, const void* a, const void* b, size_t n, int s) { \
        hk_drive_fwd((char*)d, (char*)e, (const char*)a, (const char*)b, n, s, sizeof(T),         \
                     NAME##_cmp_##V, NAME##_fb_##V);                                              \
    }

#if HK_X86
#define HK_GEN2(NAME, T, BODY_BASE, BODY_AVX2)                                                    \
    HK_GEN_V(NAME, T, BODY_BASE, base, HK_UNUSED, HK_NT_STORE_BASE)                               \
    HK_GEN_V(NAME, T, BODY_AVX2, avx2, HK_AVX2, HK_NT_STORE_AVX2)
#else
#define HK_GEN2(NAME, T, BODY_BASE, BODY_AVX2)                                                    \
    HK_GEN_V(NAME, T, BODY_BASE, base, HK_UNUSED, HK_NT_STORE_BASE)
#endif
#define HK_GEN(NAME, T) HK_GEN2(NAME, T, NAME##_body, NAME##_body)
#define HK_KERNEL(NAME, T, EXPR) HK_BODY(NAME, T, EXPR) HK_GEN(NAME, T)

typedef void (*hk_nt_fn)(void* dst, const void* a, const void* b, size_t nblk);
typedef void (*hk_nt2_fn)(void* d, void* e, const void* a, const void* b, size_t nblk, int paged);

/* plain, or: ordinary stores up to a 64-byte boundary of dst, non-temporal whole blocks, tail */
HK_INLINE void hk_drive(char* dst, const char* a, const char* b, size_t n, int streaming,
                        size_t es, hk_cmp_fn cmp, hk_nt_fn nt) {
    uintptr_t mis = (uintptr_t)dst & 63u;
    if (!streaming || n * es < HK_STREAM_MIN || mis % es) {
        cmp(dst, a, b, n);
        return;
    }
    if (mis) {
        size_t h = (64u - mis) / es;
        cmp(dst, a, b, h);
        dst += h * es; a += h * es; b += h * es; n -= h;
    }
    size_t nblk = n * es / HK_BLK;
    nt(dst, a, b, nblk);
    size_t done = nblk * HK_BLK;
    if (n * es > done) cmp(dst + done, a + done, b + done, n - done / es);
}

/* Dual destination, d = e = a OP b, for outputs that both get the same result (the symmetric
 * allreduce writes its block into two ranks' outputs): computed once per 256-byte block and
 * streamed to both. d and e must not alias a or b. Falls back to two single-destination calls
 * when not streaming or when d and e are not equally aligned. streaming may carry HK_PAGED. */
HK_INLINE void hk_drive2(char* d, char* e, const char* a, const char* b, size_t n, int streaming,
                         size_t es, hk_reduce_fn one, hk_nt2_fn nt2) {
    int paged = streaming & HK_PAGED;
    streaming &= 1;
    uintptr_t mis = (uintptr_t)d & 63u;
    if (!streaming || n * es < HK_STREAM_MIN || mis % es || mis != ((uintptr_t)e & 63u)) {
        one(d, a, b, n, streaming);
        one(e, a, b, n, streaming);
        return;
    }
    if (mis) {
        size_t h = (64u - mis) / es;
        one(d, a, b, h, 0);
        one(e, a, b, h, 0);
        d += h * es; e += h * es; a += h * es; b += h * es; n -= h;
    }
    size_t nblk = n * es / HK_BLK, done = nblk * HK_BLK;
    nt2(d, e, a, b, nblk, paged);
    if (n * es > done) {
        one(d + done, a + done, b + done, n - done / es, 0);
        one(e + done, a + done, b + done, n - done / es, 0);
    }
}

/* Forward, d = e = a OP b in one pass for a ring's fused relay step: d (the next rank's FIFO, read
 * by the peer soon) always gets ordinary stores, so it stays in cache; e (the user's output) gets
 * non-temporal stores when streaming (else ordinary ones: an in-place output was just loaded, and
 * streaming onto lines in cache costs more than it saves). Computed once per 256-byte block into
 * a local buffer and stored to both. d must alias nothing; e may be a or b (in place): each block
 * is read before it is written. */
typedef void (*hk_fb_fn)(void* d, void* e, const void* a, const void* b, size_t nblk, int nt);
HK_INLINE void hk_drive_fwd(char* d, char* e, const char* a, const char* b, size_t n, int streaming,
                            size_t es, hk_cmp_fn cmp, hk_fb_fn fb) {
    uintptr_t mis = (uintptr_t)e & 63u;
    int nt = streaming && n * es >= HK_STREAM_MIN && mis % es == 0;
    if (nt && mis) {                       /* ordinary stores up to e's first 64-byte boundary */
        size_t h = (64u - mis) / es;
        cmp(d, a, b, h);
        memcpy(e, d, h * es);
        d += h * es; e += h * es; a += h * es; b += h * es; n -= h;
    }
    size_t nblk = n * es / HK_BLK, done = nblk * HK_BLK;
    fb(d, e, a, b, nblk, nt);
    if (n * es > done) {
        cmp(d + done, a + done, b + done, n - done / es);
        memcpy(e + done, d + done, n * es - done);
    }
}

/* ---- integers: SUM/PROD on the unsigned type (wraps; same bits for signed), MIN/MAX per
 * signedness, bitwise ops per width. W = unsigned type of the multiply (no int-promotion UB). */
#define HK_INT_FAMILY(P, U, W)                                                                    \
    HK_KERNEL(P##_sum, U, x + y)                                                                  \
    HK_KERNEL(P##_prod, U, (W)x * (W)y)                                                           \
    HK_KERNEL(P##_band, U, x & y)                                                                 \
    HK_KERNEL(P##_bor, U, x | y)                                                                  \
    HK_KERNEL(P##_bxor, U, x ^ y)
#define HK_MINMAX(P, T)                                                                           \
    HK_KERNEL(P##_min, T, x < y ? x : y)                                                          \
    HK_KERNEL(P##_max, T, x > y ? x : y)

HK_INT_FAMILY(hk_u8, uint8_t, uint32_t)
HK_INT_FAMILY(hk_u16, uint16_t, uint32_t)
HK_INT_FAMILY(hk_u32, uint32_t, uint32_t)
HK_INT_FAMILY(hk_u64, uint64_t, uint64_t)
HK_MINMAX(hk_i8, int8_t)
HK_MINMAX(hk_u8, uint8_t)
HK_MINMAX(hk_i16, int16_t)
HK_MINMAX(hk_u16, uint16_t)
HK_MINMAX(hk_i32, int32_t)
HK_MINMAX(hk_u32, uint32_t)
HK_MINMAX(hk_i64, int64_t)
HK_MINMAX(hk_u64, uint64_t)

/* ---- float32 / float64 */
#define HK_FLOAT_FAMILY(P, T, ADD, MUL)                                                           \
    HK_KERNEL(P##_sum, T, ADD(x, y))                                                              \
    HK_KERNEL(P##_prod, T, MUL(x, y))                                                             \
    HK_KERNEL(P##_min, T, HK_FMIN(x, y))                                                          \
    HK_KERNEL(P##_max, T, HK_FMAX(x, y))

HK_FLOAT_FAMILY(hk_f32, float, hk_fadd, hk_fmul)
HK_FLOAT_FAMILY(hk_f64, double, hk_dadd, hk_dmul)

/* ---- narrow floats, MIN/MAX: ordering keys, no conversion. A NaN result is what the
 * widen/round-back reference gives: float16 and e4m3fn keep the bits, bfloat16 and e5m2
 * canonicalise (sign kept). */
#define HK_NMIN(x, y, NANP, CANON, KEY)                                                           \
    (NANP(x) ? CANON(x) : (NANP(y) ? CANON(y) : (KEY(x) < KEY(y) ? (x) : (y))))
#define HK_NMAX(x, y, NANP, CANON, KEY)                                                           \
    (NANP(x) ? CANON(x) : (NANP(y) ? CANON(y) : (KEY(x) > KEY(y) ? (x) : (y))))
#define HK_F16_NAN(v) (((v) & 0x7fffu) > 0x7c00u)
#define HK_BF16_NAN(v) (((v) & 0x7fffu) > 0x7f80u)
#define HK_E4M3_NAN(v) (((v) & 0x7fu) == 0x7fu)
#define HK_E5M2_NAN(v) (((v) & 0x7fu) > 0x7cu)
#define HK_KEEP(v) (v)
#define HK_BF16_CANON(v) (((v) & 0x8000u) | 0x7fc0u)
#define HK_E5M2_CANON(v) (((v) & 0x80u) | 0x7eu)
HK_KERNEL(hk_f16_min, uint16_t, HK_NMIN(x, y, HK_F16_NAN, HK_KEEP, hk_key16))
HK_KERNEL(hk_f16_max, uint16_t, HK_NMAX(x, y, HK_F16_NAN, HK_KEEP, hk_key16))
HK_KERNEL(hk_bf16_min, uint16_t, HK_NMIN(x, y, HK_BF16_NAN, HK_BF16_CANON, hk_key16))
HK_KERNEL(hk_bf16_max, uint16_t, HK_NMAX(x, y, HK_BF16_NAN, HK_BF16_CANON, hk_key16))
HK_KERNEL(hk_e4m3_min, uint8_t, HK_NMIN(x, y, HK_E4M3_NAN, HK_KEEP, hk_key8))
HK_KERNEL(hk_e4m3_max, uint8_t, HK_NMAX(x, y, HK_E4M3_NAN, HK_KEEP, hk_key8))
HK_KERNEL(hk_e5m2_min, uint8_t, HK_NMIN(x, y, HK_E5M2_NAN, HK_E5M2_CANON, hk_key8))
HK_KERNEL(hk_e5m2_max, uint8_t, HK_NMAX(x, y, HK_E5M2_NAN, HK_E5M2_CANON, hk_key8))

/* ---- float16 / bfloat16 SUM/PROD: widen, combine in float32, round back. Portable bodies from
 * the scalar conversions (auto-vectorised); AVX2 bodies with intrinsics below. */
HK_BODY(hk_f16_sum_sw, uint16_t, hk_f2h(hk_fadd(hk_h2f(x), hk_h2f(y))))
HK_BODY(hk_f16_prod_sw, uint16_t, hk_f2h(hk_fmul(hk_h2f(x), hk_h2f(y))))
HK_BODY(hk_bf16_sum_sw, uint16_t, hk_f2b(hk_fadd(hk_b2f(x), hk_b2f(y))))
HK_BODY(hk_bf16_prod_sw, uint16_t, hk_f2b(hk_fmul(hk_b2f(x), hk_b2f(y))))

#if HK_X86
/* NaN-first rule on 8 float32 lanes: x NaN -> x + x (quietened x), else x OP y */
#define HK_V8_ARITH(VOP, x, y)                                                                    \
    _mm256_blendv_ps(VOP(x, y), _mm256_add_ps(x, x), _mm256_cmp_ps(x, x, _CMP_UNORD_Q))

/* float16 with F16C (rounds to nearest even like the software path; their NaNs agree too, since
 * arithmetic NaNs are quiet) */
#define HK_F16C_BODY(NAME, VOP, SFN)                                                              \
    HK_INLINE HK_AVX2 void NAME##_f16c(uint16_t* d, const uint16_t* a, const uint16_t* b,         \
                                       size_t n) {                                                \
        size_t i = 0, nv = n & ~(size_t)15;                                                       \
        for (; i < nv; i += 16) {                                                                 \
            __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(a + i)));                \
            __m256 x1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(a + i + 8)));            \
            __m256 y0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(b + i)));                \
            __m256 y1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(b + i + 8)));            \
            __m128i r0 = _mm256_cvtps_ph(HK_V8_ARITH(VOP, x0, y0),                                \
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);          \
            __m128i r1 = _mm256_cvtps_ph(HK_V8_ARITH(VOP, x1, y1),                                \
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);          \
            _mm_storeu_si128((__m128i*)(d + i), r0);                                              \
            _mm_storeu_si128((__m128i*)(d + i + 8), r1);                                          \
        }                                                                                         \
        for (; i < n; i++) d[i] = hk_f2h(SFN(hk_h2f(a[i]), hk_h2f(b[i])));                        \
    }
HK_F16C_BODY(hk_f16_sum, _mm256_add_ps, hk_fadd)
HK_F16C_BODY(hk_f16_prod, _mm256_mul_ps, hk_fmul)

/* bfloat16: widening is "put the 16 bits on top" (unpack with zero), and the in-lane unpack
 * order is undone by the in-lane pack. Rounding: (u + 0x7fff + lsb) >> 16; NaN -> sign|0x7fc0,
 * where the sign is x's when x is NaN (the NaN-first rule; the payload does not matter). */
HK_INLINE HK_AVX2 __m256i hk_v8_f2b(__m256 r) {
    __m256i u = _mm256_castps_si256(r);
    __m256i hi = _mm256_srli_epi32(u, 16);
    __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
    __m256i rnd = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
    __m256i nan = _mm256_or_si256(_mm256_and_si256(hi, _mm256_set1_epi32(0x8000)),
                                  _mm256_set1_epi32(0x7fc0));
    return _mm256_blendv_epi8(rnd, nan, _mm256_castps_si256(_mm256_cmp_ps(r, r, _CMP_UNORD_Q)));
}
#define HK_BF16_V8(VOP, x, y)                                                                     \
    _mm256_blendv_ps(VOP(x, y), x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q))
#define HK_BF16_BODY(NAME, VOP, SFN)                                                              \
    HK_INLINE HK_AVX2 void NAME##_v(uint16_t* d, const uint16_t* a, const uint16_t* b,            \
                                    size_t n) {                                                   \
        size_t i = 0, nv = n & ~(size_t)15;                                                       \
        const __m256i z = _mm256_setzero_si256();                                                 \
        for (; i < nv; i += 16) {                                                                 \
            __m256i va = _mm256_loadu_si256((const __m256i*)(a + i));                             \
            __m256i vb = _mm256_loadu_si256((const __m256i*)(b + i));                             \
            __m256 xl = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, va));                        \
            __m256 xh = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, va));                        \
            __m256 yl = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, vb));                        \
            __m256 yh = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, vb));                        \
            __m256i rl = hk_v8_f2b(HK_BF16_V8(VOP, xl, yl));                                      \
            __m256i rh = hk_v8_f2b(HK_BF16_V8(VOP, xh, yh));                                      \
            _mm256_storeu_si256((__m256i*)(d + i), _mm256_packus_epi32(rl, rh));                  \
        }                                                                                         \
        for (; i < n; i++) d[i] = hk_f2b(SFN(hk_b2f(a[i]), hk_b2f(b[i])));                        \
    }
HK_BF16_BODY(hk_bf16_sum, _mm256_add_ps, hk_fadd)
HK_BF16_BODY(hk_bf16_prod, _mm256_mul_ps, hk_fmul)

HK_GEN2(hk_f16_sum, uint16_t, hk_f16_sum_sw_body, hk_f16_sum_f16c)
HK_GEN2(hk_f16_prod, uint16_t, hk_f16_prod_sw_body, hk_f16_prod_f16c)
HK_GEN2(hk_bf16_sum, uint16_t, hk_bf16_sum_sw_body, hk_bf16_sum_v)
HK_GEN2(hk_bf16_prod, uint16_t, hk_bf16_prod_sw_body, hk_bf16_prod_v)
#else
HK_GEN2(hk_f16_sum, uint16_t, hk_f16_sum_sw_body, hk_f16_sum_sw_body)
HK_GEN2(hk_f16_prod, uint16_t, hk_f16_prod_sw_body, hk_f16_prod_sw_body)
HK_GEN2(hk_bf16_sum, uint16_t, hk_bf16_sum_sw_body, hk_bf16_sum_sw_body)
HK_GEN2(hk_bf16_prod, uint16_t, hk_bf16_prod_sw_body, hk_bf16_prod_sw_body)
#endif

/* ---- fp8 SUM/PROD: 256x256 result tables (64 KiB each), filled by hk_init() from the
 * arithmetic definition below; a table lookup is several times faster than the vectorised
 * widen/combine/round sequence. */
HK_BODY(hk_e4m3_sum_ar, uint8_t, hk_f2e4m3(hk_fadd(hk_e4m3_2f(x), hk_e4m3_2f(y))))
HK_BODY(hk_e4m3_prod_ar, uint8_t, hk_f2e4m3(hk_fmul(hk_e4m3_2f(x), hk_e4m3_2f(y))))
HK_BODY(hk_e5m2_sum_ar, uint8_t, hk_f2e5m2(hk_fadd(hk_e5m2_2f(x), hk_e5m2_2f(y))))
HK_BODY(hk_e5m2_prod_ar, uint8_t, hk_f2e5m2(hk_fmul(hk_e5m2_2f(x), hk_e5m2_2f(y))))
static uint8_t hk_fp8_tab[4][65536];   /* e4m3 sum, e4m3 prod, e5m2 sum, e5m2 prod: [x << 8 | y] */
#define HK_FP8_LUT_BODY(NAME, K)                                                                  \
    HK_INLINE void NAME##_body(uint8_t* d, const uint8_t* a, const uint8_t* b, size_t n) {        \
        const uint8_t* t = hk_fp8_tab[K];                                                         \
        for (size_t i = 0; i < n; i++) d[i] = t[((unsigned)a[i] << 8) | b[i]];                    \
    }
HK_FP8_LUT_BODY(hk_e4m3_sum, 0)
HK_FP8_LUT_BODY(hk_e4m3_prod, 1)
HK_FP8_LUT_BODY(hk_e5m2_sum, 2)
HK_FP8_LUT_BODY(hk_e5m2_prod, 3)
/* Table lookups are compute-bound (~2 G elements/s) and byte stores into a block defeat store
 * forwarding, so these ignore `streaming` (measured: non-temporal blocks were ~1.5x slower). */
#define HK_GEN_PLAIN_V(NAME, T, V)                                                                \
    static void NAME##_##V(void* d, const void* a, const void* b, size_t n, int s) {              \
        (void)s; NAME##_body((T*)d, (const T*)a, (const T*)b, n);                                 \
    }                                                                                             \
    static void NAME##_dual_##V(void* d, void* e, const void* a, const void* b, size_t n, int s) {\
        (void)s; NAME##_body((T*)d, (const T*)a, (const T*)b, n);                                 \
        NAME##_body((T*)e, (const T*)a, (const T*)b, n);                                          \
    }                                                                                             \
    static void NAME##_fwd_##V(void* d, void* e, const void* a, const void* b, size_t n, int s) { \
        (void)s; NAME##_body((T*)d, (const T*)a, (const T*)b, n);                                 \
        memcpy(e, d, n * sizeof(T));                                                              \
    }
#if HK_X86
#define HK_GEN_PLAIN(NAME, T) HK_GEN_PLAIN_V(NAME, T, base) HK_GEN_PLAIN_V(NAME, T, avx2)
#else
#define HK_GEN_PLAIN(NAME, T) HK_GEN_PLAIN_V(NAME, T, base)
#endif
HK_GEN_PLAIN(hk_e4m3_sum, uint8_t)
HK_GEN_PLAIN(hk_e4m3_prod, uint8_t)
HK_GEN_PLAIN(hk_e5m2_sum, uint8_t)
HK_GEN_PLAIN(hk_e5m2_prod, uint8_t)

static void hk_fill_fp8_tables(void) {
    uint8_t hi[256], lo[256];
    for (unsigned i = 0; i < 256; i++) lo[i] = (uint8_t)i;
    for (unsigned x = 0; x < 256; x++) {
        memset(hi, (int)x, sizeof hi);
        hk_e4m3_sum_ar_body(hk_fp8_tab[0] + (x << 8), hi, lo, 256);
        hk_e4m3_prod_ar_body(hk_fp8_tab[1] + (x << 8), hi, lo, 256);
        hk_e5m2_sum_ar_body(hk_fp8_tab[2] + (x << 8), hi, lo, 256);
        hk_e5m2_prod_ar_body(hk_fp8_tab[3] + (x << 8), hi, lo, 256);
    }
}

/* Kernel tables [dtype][op]; NULL = not implemented (AVG is resolved to SUM by the caller; the
 * float/bitwise and bool/arith exclusions are also enforced there). */
#define HK_ROW_INT(S, M, V) { S##_sum_##V, S##_prod_##V, M##_min_##V, M##_max_##V, 0,             \
                              S##_band_##V, S##_bor_##V, S##_bxor_##V }
#define HK_ROW_FLT(P, V)    { P##_sum_##V, P##_prod_##V, P##_min_##V, P##_max_##V, 0, 0, 0, 0 }
#define HK_ROW_BOOL(V)      { 0, 0, hk_u8_min_##V, hk_u8_max_##V, 0,                              \
                              hk_u8_band_##V, hk_u8_bor_##V, hk_u8_bxor_##V }
#define HK_TABLE(V)                                                                               \
    {   HK_ROW_INT(hk_u8, hk_i8, V), HK_ROW_INT(hk_u8, hk_u8, V),                                \
        HK_ROW_INT(hk_u16, hk_i16, V), HK_ROW_INT(hk_u16, hk_u16, V),                            \
        HK_ROW_INT(hk_u32, hk_i32, V), HK_ROW_INT(hk_u32, hk_u32, V),                            \
        HK_ROW_INT(hk_u64, hk_i64, V), HK_ROW_INT(hk_u64, hk_u64, V),                            \
        HK_ROW_FLT(hk_f16, V), HK_ROW_FLT(hk_bf16, V), HK_ROW_FLT(hk_f32, V),                    \
        HK_ROW_FLT(hk_f64, V), HK_ROW_FLT(hk_e4m3, V), HK_ROW_FLT(hk_e5m2, V), HK_ROW_BOOL(V) }

static const hk_reduce_fn hk_table_base[HK_NDT][HK_NOP] = HK_TABLE(base);
static const hk_dual_fn hk_dual_base[HK_NDT][HK_NOP] = HK_TABLE(dual_base);
static const hk_dual_fn hk_fwd_base[HK_NDT][HK_NOP] = HK_TABLE(fwd_base);
#if HK_X86
static const hk_reduce_fn hk_table_avx2[HK_NDT][HK_NOP] = HK_TABLE(avx2);
static const hk_dual_fn hk_dual_avx2[HK_NDT][HK_NOP] = HK_TABLE(dual_avx2);
static const hk_dual_fn hk_fwd_avx2[HK_NDT][HK_NOP] = HK_TABLE(fwd_avx2);
#endif

/* ------------------------------------------------------------------------------------------------
 * AVG finishing step: buf[i] /= n.
 * ---------------------------------------------------------------------------------------------- */
#define HK_UNARY_BODY(T, EXPR)                                                                    \
    T* p = (T*)p_;                                                                                \
    HK_IVDEP for (size_t i = 0; i < cnt; i++) { T x = p[i]; p[i] = (T)(EXPR); }
#if HK_X86
#define HK_UNARY(NAME, T, EXPR)                                                                   \
    static HK_UNUSED void NAME##_base(void* p_, size_t cnt, long n) { HK_UNARY_BODY(T, EXPR) }    \
    static HK_UNUSED HK_AVX2 void NAME##_avx2(void* p_, size_t cnt, long n) {                     \
        HK_UNARY_BODY(T, EXPR) }
#else
#define HK_UNARY(NAME, T, EXPR)                                                                   \
    static HK_UNUSED void NAME##_base(void* p_, size_t cnt, long n) { HK_UNARY_BODY(T, EXPR) }
#endif
#define HK_UNARY_BASE(NAME, T, EXPR)                                                              \
    static HK_UNUSED void NAME##_base(void* p_, size_t cnt, long n) { HK_UNARY_BODY(T, EXPR) }
/* Integers up to 32 bits: (double)x / n is correctly rounded and can never cross an integer
 * (|x| < 2^32, so the rounding error is below 1/n), so truncating it gives C's x / n exactly. */
HK_UNARY(hk_div_i8, int8_t, (int32_t)((double)x / (double)n))
HK_UNARY(hk_div_u8, uint8_t, (int32_t)((double)x / (double)n))
HK_UNARY(hk_div_i16, int16_t, (int32_t)((double)x / (double)n))
HK_UNARY(hk_div_u16, uint16_t, (int32_t)((double)x / (double)n))
HK_UNARY(hk_div_i32, int32_t, (int32_t)((double)x / (double)n))
HK_UNARY(hk_div_u32, uint32_t, (int32_t)((double)x / (double)n))    /* n >= 2: x/n < 2^31 */
HK_UNARY(hk_div_i64, int64_t, x / (int64_t)n)
HK_UNARY(hk_div_u64, uint64_t, x / (uint64_t)n)
HK_UNARY(hk_div_f32, float, x / (float)n)
HK_UNARY(hk_div_f64, double, x / (double)n)
/* n a power of two: 1/n is exact, so x * (1/n) is the same correctly rounded value as x / n, at a
 * fraction of a division's cost (measured: the division was ~1.2 of 7.6 ms of CPU time in a
 * 2-rank in-place AVG allreduce of 64 MiB float32, a DDP bucket) */
HK_UNARY(hk_scale_f32, float, x * (1.0f / (float)n))
HK_UNARY(hk_scale_f64, double, x * (1.0 / (double)n))
#if HK_X86
/* float16 / bfloat16 with the AVX2 conversions of the SUM/PROD kernels; software tails */
HK_UNARY_BASE(hk_div_f16, uint16_t, hk_f2h(hk_h2f(x) / (float)n))
HK_UNARY_BASE(hk_div_bf16, uint16_t, hk_f2b(hk_b2f(x) / (float)n))
static HK_AVX2 void hk_div_f16_avx2(void* p_, size_t cnt, long n) {
    uint16_t* p = (uint16_t*)p_;
    const __m256 vn = _mm256_set1_ps((float)n);
    size_t i = 0, nv = cnt & ~(size_t)7;
    for (; i < nv; i += 8) {
        __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + i)));
        _mm_storeu_si128((__m128i*)(p + i), _mm256_cvtps_ph(_mm256_div_ps(x, vn),
                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    for (; i < cnt; i++) p[i] = hk_f2h(hk_h2f(p[i]) / (float)n);
}
static HK_AVX2 void hk_div_bf16_avx2(void* p_, size_t cnt, long n) {
    uint16_t* p = (uint16_t*)p_;
    const __m256 vn = _mm256_set1_ps((float)n);
    const __m256i z = _mm256_setzero_si256();
    size_t i = 0, nv = cnt & ~(size_t)15;
    for (; i < nv; i += 16) {
        __m256i v = _mm256_loadu_si256((const __m256i*)(p + i));
        __m256i rl = hk_v8_f2b(_mm256_div_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(z, v)), vn));
        __m256i rh = hk_v8_f2b(_mm256_div_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(z, v)), vn));
        _mm256_storeu_si256((__m256i*)(p + i), _mm256_packus_epi32(rl, rh));
    }
    for (; i < cnt; i++) p[i] = hk_f2b(hk_b2f(p[i]) / (float)n);
}
#else
HK_UNARY(hk_div_f16, uint16_t, hk_f2h(hk_h2f(x) / (float)n))
HK_UNARY(hk_div_bf16, uint16_t, hk_f2b(hk_b2f(x) / (float)n))
#endif
HK_UNARY(hk_div_e4m3, uint8_t, hk_f2e4m3(hk_e4m3_2f(x) / (float)n))
HK_UNARY(hk_div_e5m2, uint8_t, hk_f2e5m2(hk_e5m2_2f(x) / (float)n))

typedef void (*hk_div_fn)(void* buf, size_t count, long n);
#define HK_DIVS(V) { hk_div_i8_##V, hk_div_u8_##V, hk_div_i16_##V, hk_div_u16_##V, hk_div_i32_##V,    \
                     hk_div_u32_##V, hk_div_i64_##V, hk_div_u64_##V, hk_div_f16_##V,               \
                     hk_div_bf16_##V, hk_div_f32_##V, hk_div_f64_##V, hk_div_e4m3_##V,             \
                     hk_div_e5m2_##V, 0 }
static const hk_div_fn hk_divs_base[HK_NDT] = HK_DIVS(base);
#if HK_X86
static const hk_div_fn hk_divs_avx2[HK_NDT] = HK_DIVS(avx2);
#endif

/* ------------------------------------------------------------------------------------------------
 * Non-temporal copy: dst 64-byte aligned, n a multiple of 64; src any alignment.
 * ---------------------------------------------------------------------------------------------- */
#if HK_X86
static void hk_stream_sse2(void* dst, const void* src, size_t n) {
    char* d = (char*)dst; const char* s = (const char*)src;
    for (size_t i = 0; i < n; i += 64) {
        __m128i v0 = _mm_loadu_si128((const __m128i*)(s + i));
        __m128i v1 = _mm_loadu_si128((const __m128i*)(s + i + 16));
        __m128i v2 = _mm_loadu_si128((const __m128i*)(s + i + 32));
        __m128i v3 = _mm_loadu_si128((const __m128i*)(s + i + 48));
        _mm_stream_si128((__m128i*)(d + i), v0);
        _mm_stream_si128((__m128i*)(d + i + 16), v1);
        _mm_stream_si128((__m128i*)(d + i + 32), v2);
        _mm_stream_si128((__m128i*)(d + i + 48), v3);
    }
}
static HK_AVX2 void hk_stream_avx2(void* dst, const void* src, size_t n) {
    char* d = (char*)dst; const char* s = (const char*)src;
    for (size_t i = 0; i < n; i += 64) {
        __m256i v0 = _mm256_loadu_si256((const __m256i*)(s + i));
        __m256i v1 = _mm256_loadu_si256((const __m256i*)(s + i + 32));
        _mm256_stream_si256((__m256i*)(d + i), v0);
        _mm256_stream_si256((__m256i*)(d + i + 32), v1);
    }
}
/* the same into two destinations (equally aligned): src is loaded once */
static void hk_stream2_sse2(void* dst, void* dst2, const void* src, size_t n) {
    char* d = (char*)dst; char* e = (char*)dst2; const char* s = (const char*)src;
    for (size_t i = 0; i < n; i += 64) {
        __m128i v0 = _mm_loadu_si128((const __m128i*)(s + i));
        __m128i v1 = _mm_loadu_si128((const __m128i*)(s + i + 16));
        __m128i v2 = _mm_loadu_si128((const __m128i*)(s + i + 32));
        __m128i v3 = _mm_loadu_si128((const __m128i*)(s + i + 48));
        _mm_stream_si128((__m128i*)(d + i), v0);
        _mm_stream_si128((__m128i*)(d + i + 16), v1);
        _mm_stream_si128((__m128i*)(d + i + 32), v2);
        _mm_stream_si128((__m128i*)(d + i + 48), v3);
        _mm_stream_si128((__m128i*)(e + i), v0);
        _mm_stream_si128((__m128i*)(e + i + 16), v1);
        _mm_stream_si128((__m128i*)(e + i + 32), v2);
        _mm_stream_si128((__m128i*)(e + i + 48), v3);
    }
}
static HK_AVX2 void hk_stream2_avx2(void* dst, void* dst2, const void* src, size_t n) {
    char* d = (char*)dst; char* e = (char*)dst2; const char* s = (const char*)src;
    for (size_t i = 0; i < n; i += 64) {
        __m256i v0 = _mm256_loadu_si256((const __m256i*)(s + i));
        __m256i v1 = _mm256_loadu_si256((const __m256i*)(s + i + 32));
        _mm256_stream_si256((__m256i*)(d + i), v0);
        _mm256_stream_si256((__m256i*)(d + i + 32), v1);
        _mm256_stream_si256((__m256i*)(e + i), v0);
        _mm256_stream_si256((__m256i*)(e + i + 32), v1);
    }
}
/* two independent copies in one pass, d = s (ordinary stores) and e = t (non-temporal stores, e
 * 64-byte aligned): a ring step's send into a FIFO and its receive out of one, interleaved 64 bytes
 * at a time so the loads of both streams are in flight together */
static void hk_pair_sse2(void* d_, const void* s_, void* e_, const void* t_, size_t n) {
    char* d = (char*)d_; const char* s = (const char*)s_; char* e = (char*)e_; const char* t = (const char*)t_;
    for (size_t i = 0; i < n; i += 64) {
        __m128i a0 = _mm_loadu_si128((const __m128i*)(s + i)), a1 = _mm_loadu_si128((const __m128i*)(s + i + 16));
        __m128i a2 = _mm_loadu_si128((const __m128i*)(s + i + 32)), a3 = _mm_loadu_si128((const __m128i*)(s + i + 48));
        __m128i b0 = _mm_loadu_si128((const __m128i*)(t + i)), b1 = _mm_loadu_si128((const __m128i*)(t + i + 16));
        __m128i b2 = _mm_loadu_si128((const __m128i*)(t + i + 32)), b3 = _mm_loadu_si128((const __m128i*)(t + i + 48));
        _mm_storeu_si128((__m128i*)(d + i), a0); _mm_storeu_si128((__m128i*)(d + i + 16), a1);
        _mm_storeu_si128((__m128i*)(d + i + 32), a2); _mm_storeu_si128((__m128i*)(d + i + 48), a3);
        _mm_stream_si128((__m128i*)(e + i), b0); _mm_stream_si128((__m128i*)(e + i + 16), b1);
        _mm_stream_si128((__m128i*)(e + i + 32), b2); _mm_stream_si128((__m128i*)(e + i + 48), b3);
    }
}
static HK_AVX2 void hk_pair_avx2(void* d_, const void* s_, void* e_, const void* t_, size_t n) {
    char* d = (char*)d_; const char* s = (const char*)s_; char* e = (char*)e_; const char* t = (const char*)t_;
    for (size_t i = 0; i < n; i += 64) {
        __m256i a0 = _mm256_loadu_si256((const __m256i*)(s + i)), a1 = _mm256_loadu_si256((const __m256i*)(s + i + 32));
        __m256i b0 = _mm256_loadu_si256((const __m256i*)(t + i)), b1 = _mm256_loadu_si256((const __m256i*)(t + i + 32));
        _mm256_storeu_si256((__m256i*)(d + i), a0); _mm256_storeu_si256((__m256i*)(d + i + 32), a1);
        _mm256_stream_si256((__m256i*)(e + i), b0); _mm256_stream_si256((__m256i*)(e + i + 32), b1);
    }
}
#define HK_PAIR_BASE hk_pair_sse2
#define HK_PAIR_AVX2 hk_pair_avx2
#define HK_STREAM_BASE hk_stream_sse2
#define HK_STREAM_AVX2 hk_stream_avx2
#define HK_STREAM2_BASE hk_stream2_sse2
#define HK_STREAM2_AVX2 hk_stream2_avx2
#else
static void hk_stream_plain(void* dst, const void* src, size_t n) { memcpy(dst, src, n); }
static void hk_stream2_plain(void* dst, void* dst2, const void* src, size_t n) {
    memcpy(dst, src, n);
    memcpy(dst2, src, n);
}
static void hk_pair_plain(void* d, const void* s, void* e, const void* t, size_t n) {
    memcpy(d, s, n);
    memcpy(e, t, n);
}
#define HK_STREAM_BASE hk_stream_plain
#define HK_STREAM2_BASE hk_stream2_plain
#define HK_PAIR_BASE hk_pair_plain
#endif

/* ------------------------------------------------------------------------------------------------
 * Run-time selection and public helpers.
 * ---------------------------------------------------------------------------------------------- */
static const hk_reduce_fn (*hk_table)[HK_NOP] = hk_table_base;
static const hk_dual_fn (*hk_dual)[HK_NOP] = hk_dual_base;
static const hk_dual_fn (*hk_fwd)[HK_NOP] = hk_fwd_base;
static const hk_div_fn* hk_divs = hk_divs_base;
static hk_stream_fn hk_stream = HK_STREAM_BASE;
static hk_stream2_fn hk_stream2 = HK_STREAM2_BASE;
typedef void (*hk_pair_fn)(void* d, const void* s, void* e, const void* t, size_t n);
static hk_pair_fn hk_pair = HK_PAIR_BASE;
static int hk_isa_avx2 = 0;

static int hk_cpu_has_avx2(void) {
#if HK_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

/* isa: 1 = AVX2+F16C kernels (ignored when the CPU lacks them), 0 = baseline. Returns what is in use. */
static int hk_select(int isa) {
#if HK_X86
    if (isa && hk_cpu_has_avx2()) {
        hk_table = hk_table_avx2; hk_dual = hk_dual_avx2; hk_divs = hk_divs_avx2; hk_stream = HK_STREAM_AVX2;
        hk_stream2 = HK_STREAM2_AVX2;
        hk_pair = HK_PAIR_AVX2;
        hk_fwd = hk_fwd_avx2;
        hk_isa_avx2 = 1;
        return 1;
    }
#endif
    (void)isa;
    hk_table = hk_table_base; hk_dual = hk_dual_base; hk_divs = hk_divs_base; hk_stream = HK_STREAM_BASE;
    hk_stream2 = HK_STREAM2_BASE;
    hk_pair = HK_PAIR_BASE;
    hk_fwd = hk_fwd_base;
    hk_isa_avx2 = 0;
    return 0;
}

/* once, before any kernel runs: fp8 tables, then the best kernel set for this CPU */
static int hk_init(void) {
    hk_fill_fp8_tables();
    return hk_select(1);
}

static hk_reduce_fn hk_lookup(int dtype, int op) {
    if (dtype < 0 || dtype >= HK_NDT || op < 0 || op >= HK_NOP) return 0;
    return hk_table[dtype][op];
}

static hk_dual_fn hk_lookup_dual(int dtype, int op) {
    if (dtype < 0 || dtype >= HK_NDT || op < 0 || op >= HK_NOP) return 0;
    return hk_dual[dtype][op];
}

static hk_dual_fn hk_lookup_forward(int dtype, int op) {
    if (dtype < 0 || dtype >= HK_NDT || op < 0 || op >= HK_NOP) return 0;
    return hk_fwd[dtype][op];
}

static void hk_divide(void* buf, size_t count, int dtype, long n) {
    if (n <= 1 || dtype < 0 || dtype >= HK_NDT || !hk_divs[dtype]) return;
    if ((dtype == HK_FP8_E4M3 || dtype == HK_FP8_E5M2) && count >= 1024) {
        uint8_t tab[256];                         /* x -> x / n for all 256 values, then map */
        uint8_t* p = (uint8_t*)buf;
        for (unsigned i = 0; i < 256; i++) tab[i] = (uint8_t)i;
        hk_divs[dtype](tab, 256, n);
        for (size_t i = 0; i < count; i++) p[i] = tab[p[i]];
        return;
    }
    if ((n & (n - 1)) == 0 && (dtype == HK_FLOAT32 || dtype == HK_FLOAT64)) {
#if HK_X86
        if (hk_isa_avx2) {
            (dtype == HK_FLOAT32 ? hk_scale_f32_avx2 : hk_scale_f64_avx2)(buf, count, n);
            return;
        }
#endif
        (dtype == HK_FLOAT32 ? hk_scale_f32_base : hk_scale_f64_base)(buf, count, n);
        return;
    }
    hk_divs[dtype](buf, count, n);
}

static void hk_copy(void* dst, const void* src, size_t n, int streaming) {
    if (!n) return;
    if (!streaming || n < HK_STREAM_MIN) { memcpy(dst, src, n); return; }
    char* d = (char*)dst; const char* s = (const char*)src;
    size_t head = (64u - ((uintptr_t)d & 63u)) & 63u;
    if (head) { memcpy(d, s, head); d += head; s += head; n -= head; }
    size_t body = n & ~(size_t)63;
    hk_stream(d, s, body);
    if (n - body) memcpy(d + body, s + body, n - body);
}

/* dst = dst2 = src: one load, two (streaming) stores; two plain copies when not streaming or
 * when the destinations are not equally aligned */
static void hk_copy2(void* dst, void* dst2, const void* src, size_t n, int streaming) {
    if (!n) return;
    char* d = (char*)dst; char* e = (char*)dst2; const char* s = (const char*)src;
    if (!streaming || n < HK_STREAM_MIN || (((uintptr_t)d ^ (uintptr_t)e) & 63u)) {
        hk_copy(d, s, n, streaming);
        hk_copy(e, s, n, streaming);
        return;
    }
    size_t head = (64u - ((uintptr_t)d & 63u)) & 63u;
    if (head) { memcpy(d, s, head); memcpy(e, s, head); d += head; e += head; s += head; n -= head; }
    size_t body = n & ~(size_t)63;
    hk_stream2(d, e, s, body);
    if (n - body) { memcpy(d + body, s + body, n - body); memcpy(e + body, s + body, n - body); }
}

/* d = s and e = t, n bytes each, in one pass (hk_pair_*): the ring's send into a FIFO (ordinary
 * stores: the peer reads it soon) and its receive out of one into the output (streaming when asked
 * and n >= HK_STREAM_MIN). The four ranges must not overlap. Ordinary stores up to e's first 64-byte
 * boundary and after its last one. */
static void hk_copy_pair(void* dst, const void* src, void* dst2, const void* src2, size_t n, int streaming) {
    if (!n) return;
    char* d = (char*)dst; const char* s = (const char*)src; char* e = (char*)dst2; const char* t = (const char*)src2;
    if (!streaming || n < HK_STREAM_MIN) { memcpy(d, s, n); memcpy(e, t, n); return; }
    size_t head = (64u - ((uintptr_t)e & 63u)) & 63u;
    if (head) { memcpy(d, s, head); memcpy(e, t, head); d += head; s += head; e += head; t += head; n -= head; }
    size_t body = n & ~(size_t)63;
    hk_pair(d, s, e, t, body);
    if (n - body) { memcpy(d + body, s + body, n - body); memcpy(e + body, t + body, n - body); }
}

static void hk_fence(void) {
#if HK_X86
    _mm_sfence();
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

#endif /* HETCCL_KERNELS_H */
