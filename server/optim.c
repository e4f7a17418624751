/* Sparse-row optimizers (ALGORITHMS.md §0-3). Layout and invariants of a row
 * are in optim.h; this note covers how the arithmetic is arranged.
 *
 * Rounding. Every update is computed in double. Each state field is rounded
 * to float32 the moment it is computed, and whatever comes later in the same
 * update reads the rounded value: FTRL and group lasso compute w from the
 * stored z and n, AdaGrad its step from the stored acc. So w is exactly the
 * closed form of what is stored, which a reload or a hyper-parameter change
 * can recompute. It is also what the independent implementation behind
 * tests/vectors/optim does: fed the vectors' decimal gradients as doubles,
 * this convention reproduces all 160 expected values bit for bit, while
 * taking w (or the AdaGrad step) from the unrounded doubles misses 22 of
 * them by an ulp or so.
 * Algebraically equal rearrangements in double (1/alpha taken once per call,
 * say) move results by a few double ulps, which the float32 rounding hides
 * except in about one case in 2^28.
 *
 * Zeros. store() rounds to float32 and adds +0.0f, which turns -0.0 into
 * +0.0 under round-to-nearest; every write to a row goes through it (§0:
 * zeros are stored as +0.0). This relies on the compiler keeping x + 0.0f,
 * which it must unless -ffast-math or -fno-signed-zeros is given.
 *
 * All or nothing. A push is checked for NaN and Inf before the first write,
 * so a rejected push leaves the row bit-identical. Group lasso needs every
 * element's a_i before it can set any w, so it writes z and n in a first
 * pass, after that check, and w in a second.
 *
 * Cost. The FTRL step costs three square roots per element (sqrt(n) and
 * sqrt(n + g^2) for sigma, sqrt of the stored n for a_i) and two divisions.
 * They share the divider unit and set the speed; everything else per call is
 * a few flops of hyper-parameter setup. Measured on the development VM (one
 * core of a Xeon, gcc 12 -O2, thread CPU time, dim 16, 4096 rows in cache):
 * FTRL 5.5M rows/s, group lasso 1.9M (Newton averages six passes over the
 * row on random data), AdaGrad 9.5M, row-wise 15M; ps_optim_init_weights
 * 2.1M rows/s. FTRL now runs four elements at a time with AVX2 where the
 * CPU has it and two with SSE2 elsewhere (below), and
 * ps_optim_init_weights draws its candidates in blocks (15M dim-16 rows/s
 * with AVX-512 on the Zen 4 VM of 2026-12-06, where one at a time was 2.1M). */

#include <assert.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define FTRL_AVX2 1 /* compiled with target("avx2"), taken when the CPU has it */
#define FTRL_AVX512 1 /* likewise with target("avx512f") */
#endif

#include "error.h"
#include "keys.h"
#include "optim.h"

#define GOLDEN_GAMMA UINT64_C(0x9e3779b97f4a7c15) /* splitmix64's increment */

/* Newton on phi(r) = 1 (§3): stop once phi - 1 is this small, or after this
 * many steps. The reference needed at most 12 on its test cases. */
#define GL_PHI_TOL 1e-15
#define GL_MAX_ITER 100

static inline float store(double x) { return (float)x + 0.0f; }

/* grad_clip = 0 turns clipping off; an infinite bound does the same without
 * a branch per element. */
static inline double clip_bound(const ps_optim_params *p) {
    return p->grad_clip > 0 ? p->grad_clip : INFINITY;
}

static inline double clip(float g, double c) {
    double x = g;
    return x < -c ? -c : x > c ? c : x;
}

static inline double sign(double x) { return (x > 0) - (x < 0); }

/* ---- FTRL-Proximal (§1), shared with group lasso (§3) --------------------- */

/* Per-call constants. a_i = (beta + sqrt(n_i))/alpha + lambda2 is computed as
 * (base + sqrt(n_i)) * inv_alpha with base = beta + alpha*lambda2, trading a
 * division per element for one per call. */
typedef ps_ftrl_consts ftrl_k;

static inline ftrl_k ftrl_consts(const ps_optim_params *p) {
    return (ftrl_k){
        .alpha = p->alpha,
        .inv_alpha = 1.0 / p->alpha,
        .base = p->beta + p->alpha * p->lambda2,
        .l1 = p->lambda1,
        .clip = clip_bound(p),
    };
}

static inline double ftrl_a(const ftrl_k *k, float n) { return (k->base + sqrt((double)n)) * k->inv_alpha; }

/* Advance one element's z and n by gradient g; w is the weight being served,
 * i.e. the one stored before this push. */
static inline void ftrl_accumulate(const ftrl_k *k, double g, float w, float *z, float *n) {
    double n0 = *n;
    double g2 = g * g;
    double n1 = n0 + g2;
    /* (sqrt(n1) - sqrt(n0))/alpha without the cancellation; the g == 0 test
     * avoids 0/0 at n = 0. */
    double sigma = g == 0 ? 0.0 : g2 / (k->alpha * (sqrt(n1) + sqrt(n0)));
    *z = store((double)*z + g - sigma * (double)w);
    *n = store(n1);
}

/* |z| - lambda1 clamped at 0: the magnitude of the soft-thresholded z.
 *
 * a_i = 0 happens only with beta = lambda2 = 0 and a stored n of 0, which a
 * gradient whose square underflows float32 can leave next to a nonzero z.
 * The minimiser is then unbounded; such an element is held at w_i = 0 (its
 * s_i counts as 0) instead of dividing by zero. */
static inline double shrunk(float z, double a, double l1) {
    double s = fabs((double)z) - l1;
    return s > 0 && a > 0 ? s : 0.0;
}

#if defined(__SSE2__)
/* Two elements at a time with packed double square roots and divisions,
 * which round exactly like the scalar ones: the same operations in the same
 * order, branches replaced by masks, so the results are bit-identical to the
 * scalar loop below (test_optim compares the two paths bit for bit). This
 * step was 37% of a shard's time under the push benchmark (perf, in
 * bench/README.md); SSE2 is in every x86-64, so no dispatch is needed. */
static uint32_t ftrl_apply_sse2(const ftrl_k *k, uint32_t dim, float *restrict w, float *restrict z,
                                float *restrict n, const float *restrict grad) {
    const __m128d alpha = _mm_set1_pd(k->alpha), inv_alpha = _mm_set1_pd(k->inv_alpha);
    const __m128d base = _mm_set1_pd(k->base), l1 = _mm_set1_pd(k->l1);
    const __m128d hi = _mm_set1_pd(k->clip), lo = _mm_set1_pd(-k->clip);
    const __m128d zero = _mm_setzero_pd(), sign = _mm_set1_pd(-0.0);
    const __m128 fzero = _mm_setzero_ps();
    uint32_t i = 0;
    for (; i + 2 <= dim; i += 2) {
#define LOAD2(p) _mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(p))))
#define STORE2(p, v) _mm_storel_epi64((__m128i *)(p), _mm_castps_si128(_mm_add_ps(v, fzero)))
        __m128d g = _mm_min_pd(_mm_max_pd(LOAD2(grad + i), lo), hi);
        __m128d w0 = LOAD2(w + i), z0 = LOAD2(z + i), n0 = LOAD2(n + i);
        __m128d g2 = _mm_mul_pd(g, g);
        __m128d n1 = _mm_add_pd(n0, g2);
        __m128d sigma = _mm_div_pd(g2, _mm_mul_pd(alpha, _mm_add_pd(_mm_sqrt_pd(n1), _mm_sqrt_pd(n0))));
        sigma = _mm_andnot_pd(_mm_cmpeq_pd(g, zero), sigma); /* g == 0: no 0/0 */
        __m128 zf = _mm_cvtpd_ps(_mm_sub_pd(_mm_add_pd(z0, g), _mm_mul_pd(sigma, w0)));
        __m128 nf = _mm_cvtpd_ps(n1);
        zf = _mm_add_ps(zf, fzero);
        nf = _mm_add_ps(nf, fzero);
        __m128d zd = _mm_cvtps_pd(zf), nd = _mm_cvtps_pd(nf);
        __m128d a = _mm_mul_pd(_mm_add_pd(base, _mm_sqrt_pd(nd)), inv_alpha);
        __m128d absz = _mm_andnot_pd(sign, zd);
        __m128d l1s = _mm_or_pd(_mm_and_pd(zd, sign), l1); /* copysign(l1, z) */
        __m128d wv = _mm_div_pd(_mm_sub_pd(l1s, zd), a);   /* -(z - copysign(l1, z)) / a */
        __m128d keep = _mm_and_pd(_mm_cmpgt_pd(absz, l1), _mm_cmpgt_pd(a, zero));
        wv = _mm_and_pd(keep, wv); /* |z| <= lambda1 (or a = 0): exactly +0.0 */
        STORE2(w + i, _mm_cvtpd_ps(wv));
        STORE2(z + i, zf);
        STORE2(n + i, nf);
#undef LOAD2
#undef STORE2
    }
    return i;
}
#endif

#if defined(FTRL_AVX2)
/* The SSE2 step above, four elements at a time: the same operations in the
 * same order on 256-bit vectors, so again bit-identical to the scalar loop.
 * It must never become a fused multiply-add, which rounds once where the
 * scalar code rounds twice: the target is "avx2" alone, without "fma", so
 * the compiler has no FMA instruction to contract a*b + c into (the
 * disassembly has no vfmadd). Not in the x86-64 baseline, hence the
 * run-time choice in ftrl_apply(). */
__attribute__((target("avx2"))) static uint32_t
ftrl_apply_avx2(const ftrl_k *k, uint32_t dim, float *restrict w, float *restrict z, float *restrict n,
                const float *restrict grad) {
    const __m256d alpha = _mm256_set1_pd(k->alpha), inv_alpha = _mm256_set1_pd(k->inv_alpha);
    const __m256d base = _mm256_set1_pd(k->base), l1 = _mm256_set1_pd(k->l1);
    const __m256d hi = _mm256_set1_pd(k->clip), lo = _mm256_set1_pd(-k->clip);
    const __m256d zero = _mm256_setzero_pd(), sign = _mm256_set1_pd(-0.0);
    const __m128 fzero = _mm_setzero_ps();
    uint32_t i = 0;
    for (; i + 4 <= dim; i += 4) {
#define LOAD4(p) _mm256_cvtps_pd(_mm_loadu_ps(p))
        __m256d g = _mm256_min_pd(_mm256_max_pd(LOAD4(grad + i), lo), hi);
        __m256d w0 = LOAD4(w + i), z0 = LOAD4(z + i), n0 = LOAD4(n + i);
        __m256d g2 = _mm256_mul_pd(g, g);
        __m256d n1 = _mm256_add_pd(n0, g2);
        __m256d sigma =
            _mm256_div_pd(g2, _mm256_mul_pd(alpha, _mm256_add_pd(_mm256_sqrt_pd(n1), _mm256_sqrt_pd(n0))));
        sigma = _mm256_andnot_pd(_mm256_cmp_pd(g, zero, _CMP_EQ_OQ), sigma); /* g == 0: no 0/0 */
        __m128 zf = _mm256_cvtpd_ps(_mm256_sub_pd(_mm256_add_pd(z0, g), _mm256_mul_pd(sigma, w0)));
        __m128 nf = _mm256_cvtpd_ps(n1);
        zf = _mm_add_ps(zf, fzero);
        nf = _mm_add_ps(nf, fzero);
        __m256d zd = _mm256_cvtps_pd(zf), nd = _mm256_cvtps_pd(nf);
        __m256d a = _mm256_mul_pd(_mm256_add_pd(base, _mm256_sqrt_pd(nd)), inv_alpha);
        __m256d absz = _mm256_andnot_pd(sign, zd);
        __m256d l1s = _mm256_or_pd(_mm256_and_pd(zd, sign), l1); /* copysign(l1, z) */
        __m256d wv = _mm256_div_pd(_mm256_sub_pd(l1s, zd), a);   /* -(z - copysign(l1, z)) / a */
        __m256d keep = _mm256_and_pd(_mm256_cmp_pd(absz, l1, _CMP_GT_OS), _mm256_cmp_pd(a, zero, _CMP_GT_OS));
        wv = _mm256_and_pd(keep, wv); /* |z| <= lambda1 (or a = 0): exactly +0.0 */
        _mm_storeu_ps(w + i, _mm_add_ps(_mm256_cvtpd_ps(wv), fzero));
        _mm_storeu_ps(z + i, zf);
        _mm_storeu_ps(n + i, nf);
#undef LOAD4
    }
    return i;
}
#endif

#if defined(FTRL_AVX512)
/* The AVX2 step, eight elements at a time: the same operations in the same
 * order, so again bit-identical to the scalar loop (test_optim.c holds all
 * four kernels to the scalar bits). AVX-512 has fused multiply-adds, which
 * would round once where the scalar code rounds twice: the core library is
 * built with -ffp-contract=off, so the compiler never contracts a*b + c
 * into one, and the intrinsics below ask for none. The masks of AVX-512
 * compares take the place of AVX2's and/andnot of all-ones lanes; the
 * and/or of sign bits go through the integer view (AVX512F has no
 * floating-point and/or, AVX512DQ has). Measured on AMD Zen (bench/README.md
 * "The memory tier's own work per row"): a pushed dim-16 row in cache
 * took 50.5 ns with the AVX2 kernel, 39.5 ns with this one. */
__attribute__((target("avx512f"))) static uint32_t
ftrl_apply_avx512(const ftrl_k *k, uint32_t dim, float *restrict w, float *restrict z,
                  float *restrict n, const float *restrict grad) {
    const __m512d alpha = _mm512_set1_pd(k->alpha), inv_alpha = _mm512_set1_pd(k->inv_alpha);
    const __m512d base = _mm512_set1_pd(k->base), l1 = _mm512_set1_pd(k->l1);
    const __m512d hi = _mm512_set1_pd(k->clip), lo = _mm512_set1_pd(-k->clip);
    const __m512d zero = _mm512_setzero_pd();
    const __m512i sign = _mm512_set1_epi64((long long)0x8000000000000000ULL);
    const __m256 fzero = _mm256_setzero_ps();
    uint32_t i = 0;
    for (; i + 8 <= dim; i += 8) {
#define LOAD8(p) _mm512_cvtps_pd(_mm256_loadu_ps(p))
        __m512d g = _mm512_min_pd(_mm512_max_pd(LOAD8(grad + i), lo), hi);
        __m512d w0 = LOAD8(w + i), z0 = LOAD8(z + i), n0 = LOAD8(n + i);
        __m512d g2 = _mm512_mul_pd(g, g);
        __m512d n1 = _mm512_add_pd(n0, g2);
        __m512d sigma =
            _mm512_div_pd(g2, _mm512_mul_pd(alpha, _mm512_add_pd(_mm512_sqrt_pd(n1), _mm512_sqrt_pd(n0))));
        sigma = _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(g, zero, _CMP_NEQ_UQ), sigma); /* g == 0: no 0/0 */
        __m256 zf = _mm512_cvtpd_ps(_mm512_sub_pd(_mm512_add_pd(z0, g), _mm512_mul_pd(sigma, w0)));
        __m256 nf = _mm512_cvtpd_ps(n1);
        zf = _mm256_add_ps(zf, fzero);
        nf = _mm256_add_ps(nf, fzero);
        __m512d zd = _mm512_cvtps_pd(zf), nd = _mm512_cvtps_pd(nf);
        __m512d a = _mm512_mul_pd(_mm512_add_pd(base, _mm512_sqrt_pd(nd)), inv_alpha);
        __m512i zbits = _mm512_castpd_si512(zd);
        __m512d absz = _mm512_castsi512_pd(_mm512_andnot_si512(sign, zbits));
        __m512d l1s = _mm512_castsi512_pd(
            _mm512_or_si512(_mm512_and_si512(zbits, sign), _mm512_castpd_si512(l1))); /* copysign(l1, z) */
        __m512d wv = _mm512_div_pd(_mm512_sub_pd(l1s, zd), a); /* -(z - copysign(l1, z)) / a */
        __mmask8 keep = _mm512_cmp_pd_mask(absz, l1, _CMP_GT_OS) & _mm512_cmp_pd_mask(a, zero, _CMP_GT_OS);
        wv = _mm512_maskz_mov_pd(keep, wv); /* |z| <= lambda1 (or a = 0): exactly +0.0 */
        _mm256_storeu_ps(w + i, _mm256_add_ps(_mm512_cvtpd_ps(wv), fzero));
        _mm256_storeu_ps(z + i, zf);
        _mm256_storeu_ps(n + i, nf);
#undef LOAD8
    }
    return i;
}
#endif

/* The widest FTRL kernel ftrl_apply() may take; see optim.h. Written only by
 * tests, before any update runs. */
static ps_optim_simd simd_max = PS_OPTIM_SIMD_AVX512;

ps_optim_simd ps_optim_simd_limit(ps_optim_simd max) {
    ps_optim_simd old = simd_max;
    simd_max = max;
    return old;
}

/* The widest kernel to take: simd_max, and what the CPU runs.
 * __builtin_cpu_supports() tests a flag libgcc set from CPUID at startup. */
static ps_optim_simd ftrl_simd(void) {
#if defined(FTRL_AVX512)
    if (simd_max >= PS_OPTIM_SIMD_AVX512 && __builtin_cpu_supports("avx512f"))
        return PS_OPTIM_SIMD_AVX512;
#endif
#if defined(FTRL_AVX2)
    if (simd_max >= PS_OPTIM_SIMD_AVX2 && __builtin_cpu_supports("avx2"))
        return PS_OPTIM_SIMD_AVX2;
#endif
    return simd_max >= PS_OPTIM_SIMD_SSE2 ? PS_OPTIM_SIMD_SSE2 : PS_OPTIM_SIMD_SCALAR;
}

/* Each kernel leaves the rest of the row to the next narrower one (dim 15:
 * eight, four, two, then one element). */
static inline void ftrl_apply_k(const ftrl_k *kp, ps_optim_simd simd, uint32_t dim,
                                float *restrict w, float *restrict z, float *restrict n,
                                const float *restrict grad) {
    const ftrl_k k = *kp;
    uint32_t i = 0;
#if defined(FTRL_AVX512)
    if (simd >= PS_OPTIM_SIMD_AVX512)
        i = ftrl_apply_avx512(&k, dim, w, z, n, grad);
#endif
#if defined(FTRL_AVX2)
    if (simd >= PS_OPTIM_SIMD_AVX2 && i < dim)
        i += ftrl_apply_avx2(&k, dim - i, w + i, z + i, n + i, grad + i);
#endif
#if defined(__SSE2__)
    if (simd >= PS_OPTIM_SIMD_SSE2 && i < dim)
        i += ftrl_apply_sse2(&k, dim - i, w + i, z + i, n + i, grad + i);
#endif
    for (; i < dim; i++) {
        ftrl_accumulate(&k, clip(grad[i], k.clip), w[i], &z[i], &n[i]);
        double zi = z[i];
        /* `<=`: a tie gives an exact zero (§1). */
        if (fabs(zi) <= k.l1) {
            w[i] = 0.0f;
            continue;
        }
        double a = ftrl_a(&k, n[i]);
        w[i] = a > 0 ? store(-(zi - copysign(k.l1, zi)) / a) : 0.0f;
    }
}

static void ftrl_apply(const ps_optim_params *p, uint32_t dim, float *restrict w, float *restrict z,
                       float *restrict n, const float *restrict grad) {
    ftrl_k k = ftrl_consts(p);
    ftrl_apply_k(&k, ftrl_simd(), dim, w, z, n, grad);
}

/* ---- FTRL with group lasso (§3) ------------------------------------------ */

/* The root r = ||w|| of phi(r) = sum_i s_i^2/(a_i r + lg)^2 = 1, for S > lg > 0
 * and a_i > 0 wherever s_i != 0. phi is convex and decreasing and r0 lies
 * left of the root, so the Newton iterates rise monotonically; the loop
 * stops when phi is within GL_PHI_TOL of 1, when r stops rising (rounding
 * noise near the root), or after GL_MAX_ITER steps. With all active a_i
 * equal, r0 = (S - lg)/a is the root itself: phi(r0) = 1 up to rounding, so
 * the loop stops after one pass (or one step of rounding size), and w is the
 * closed form -(1 - lg/S)*s/a to within double rounding. That is why there
 * is no separate equal-a_i path. */
static double gl_radius(uint32_t dim, const float *z, const double *a, double l1, double lg, double S,
                        double amax) {
    double r = (S - lg) / amax;
    for (int it = 0; it < GL_MAX_ITER; it++) {
        double phi = 0, dsum = 0;
        for (uint32_t i = 0; i < dim; i++) {
            double s = shrunk(z[i], a[i], l1);
            double t = 1.0 / (a[i] * r + lg);
            double u = s * s * t * t;
            phi += u;
            dsum += a[i] * u * t;
        }
        if (phi - 1 <= GL_PHI_TOL)
            break;
        double next = r + (phi - 1) / (2 * dsum);
        if (!(next > r))
            break;
        r = next;
    }
    return r;
}

/* Not inlined so that the 32 KiB buffer is never part of the FTRL and
 * AdaGrad stack frames. */
__attribute__((noinline)) static void gl_apply(const ps_optim_params *p, uint32_t dim, float *restrict w,
                                               float *restrict z, float *restrict n,
                                               const float *restrict grad) {
    double a[PS_OPTIM_DIM_MAX];
    ftrl_k k = ftrl_consts(p);
    double lg = p->lambda21 * sqrt((double)dim);

    /* Pass 1: z, n, a_i, S and the largest active a_i. A row that ends at
     * zero keeps its z and n (§3), so they are always written. */
    double s2sum = 0, amax = 0;
    for (uint32_t i = 0; i < dim; i++) {
        ftrl_accumulate(&k, clip(grad[i], k.clip), w[i], &z[i], &n[i]);
        a[i] = ftrl_a(&k, n[i]);
        double s = shrunk(z[i], a[i], k.l1);
        if (s > 0) {
            s2sum += s * s;
            amax = a[i] > amax ? a[i] : amax;
        }
    }

    /* Pass 2: w. */
    double S = sqrt(s2sum);
    if (S <= lg) {
        for (uint32_t i = 0; i < dim; i++)
            w[i] = 0.0f;
        return;
    }
    if (lg == 0) {
        /* The row problem separates into plain FTRL. Written as FTRL's
         * formula so that lambda21 = 0 matches FTRL bit for bit rather than
         * through an r/(a_i r) that rounds. */
        for (uint32_t i = 0; i < dim; i++) {
            double s = shrunk(z[i], a[i], k.l1);
            w[i] = s > 0 ? store(-copysign(s, z[i]) / a[i]) : 0.0f;
        }
        return;
    }
    double r = gl_radius(dim, z, a, k.l1, lg, S, amax);
    for (uint32_t i = 0; i < dim; i++)
        w[i] = store(-copysign(shrunk(z[i], a[i], k.l1), z[i]) * r / (a[i] * r + lg));
}

/* ---- AdaGrad (§2) --------------------------------------------------------- */

static void adagrad_apply(const ps_optim_params *p, uint32_t dim, float *restrict w, float *restrict acc,
                          const float *restrict grad) {
    double c = clip_bound(p);
    double lr = p->lr, eps = p->eps, amax = p->accum_max;
    if (p->rowwise) {
        double sum = 0;
        for (uint32_t i = 0; i < dim; i++) {
            double g = clip(grad[i], c);
            sum += g * g;
        }
        acc[0] = store(fmin((double)acc[0] + sum / dim, amax));
        double den = sqrt((double)acc[0]) + eps;
        if (!(den > 0)) /* as below, for the row */
            return;
        double step = lr / den;
        for (uint32_t i = 0; i < dim; i++)
            w[i] = store((double)w[i] - step * clip(grad[i], c));
        return;
    }
    for (uint32_t i = 0; i < dim; i++) {
        double g = clip(grad[i], c);
        acc[i] = store(fmin((double)acc[i] + g * g, amax));
        /* den = 0 needs eps = 0 and a stored acc of 0: no gradient yet
         * (initial_accumulator_value = 0), or only ones whose squares
         * underflow float32. Treat them as zero instead of dividing 0 or a
         * tiny g by 0. */
        double den = sqrt((double)acc[i]) + eps;
        if (den > 0)
            w[i] = store((double)w[i] - lr * g / den);
    }
}

/* ---- public --------------------------------------------------------------- */

/* N(0, 1) draws by Kinderman and Monahan's ratio of uniforms: (u, v)
 * uniform on (0, 1] x [-sqrt(2/e), sqrt(2/e)], accepted when
 * x = v/u satisfies x^2 <= -4 ln u, which leaves x exactly standard normal.
 * Chosen over Box-Muller for reproducibility: the value is one division of
 * two exactly represented uniforms, so only correctly rounded IEEE
 * operations touch it, and libm's log (whose last bit differs between libm
 * versions and between glibc's FMA and non-FMA builds) only decides
 * acceptance, where a last-bit difference matters only for a draw within
 * about 1e-16 of the boundary. The two squeezes, from ln u <= u - 1 and
 * ln u >= 1 - 1/u, settle three candidates in four without calling log.
 * About 1.37 candidates are drawn per value.
 *
 * Candidate j of a stream whose state is s takes its uniforms from
 * mix64(s + (2j+1)*gamma) and mix64(s + (2j+2)*gamma), so the candidates
 * do not depend on each other or on which were accepted. They are made
 * NORMAL_BLOCK at a time with the same operations in the same order as one
 * at a time, then kept in order while the row has room: the same values,
 * without a hard-to-predict branch per test. Drawn one at a time, with the
 * accept and reject tests as branches, the mispredictions cost more than
 * the arithmetic: a row of 16 took 480 ns one candidate at a time, 325 ns
 * in generic blocks, 65 ns in AVX-512 blocks (below), on the Zen 4 VM of
 * bench/README.md "Row creation: the init rule in vector registers". A
 * block past the row's last value is wasted work, NORMAL_BLOCK - 1
 * candidates at most. */
#define NORMAL_BLOCK 8

enum { CAND_REJECT = 0, CAND_ACCEPT = 1, CAND_LOG = 2 }; /* the log test decides */

typedef struct normal_block {
    double x[NORMAL_BLOCK], u[NORMAL_BLOCK], x2q[NORMAL_BLOCK];
    int verdict[NORMAL_BLOCK];
} normal_block;

/* The candidates' verdicts that the squeezes left to the log test,
 * settled. The undecided ones, about one in four, are gathered first so
 * that picking them out is not a branch per candidate. */
static void normal_settle(normal_block *b) {
    int todo[NORMAL_BLOCK], ntodo = 0;
    for (int j = 0; j < NORMAL_BLOCK; j++) {
        todo[ntodo] = j;
        ntodo += b->verdict[j] == CAND_LOG;
    }
    for (int k = 0; k < ntodo; k++) {
        int j = todo[k];
        b->verdict[j] = b->x2q[j] <= -log(b->u[j]);
    }
}

/* The candidates of the stream at state s into b, each accepted or
 * rejected as the scalar tests would. */
static void normal_candidates_generic(uint64_t s, normal_block *b) {
    const double vmax = 0.8577638849607068; /* sqrt(2/e) */
    for (int j = 0; j < NORMAL_BLOCK; j++) {
        uint64_t x1 = ps_mix64(s + (uint64_t)(2 * j + 1) * GOLDEN_GAMMA);
        uint64_t x2 = ps_mix64(s + (uint64_t)(2 * j + 2) * GOLDEN_GAMMA);
        /* 53-bit uniforms, exact in double: u in (0, 1], 2*U - 1 in [-1, 1). */
        double u = (double)((x1 >> 11) + 1) * 0x1p-53;
        double v = vmax * ((double)(x2 >> 11) * 0x1p-52 - 1.0);
        double x = v / u;
        double x2q = x * x / 4;
        /* Accepted by the first squeeze; else rejected by the second; else
         * the log test decides. */
        int accept = x2q <= 1 - u, reject = x2q > 1 / u - 1;
        b->x[j] = x;
        b->u[j] = u;
        b->x2q[j] = x2q;
        b->verdict[j] = accept | (!accept & !reject) << 1;
    }
    normal_settle(b);
}

/* Generic: one block of candidates, the values kept appended to w[got..room). */
static uint32_t normal_block_generic(uint64_t s, double std, float *w, uint32_t room) {
    normal_block b;
    normal_candidates_generic(s, &b);
    uint32_t got = 0;
    /* A rejected candidate's value is written and then overwritten by the
     * next one kept. */
    for (int j = 0; j < NORMAL_BLOCK && got < room; j++) {
        w[got] = store(std * b.x[j]);
        got += (uint32_t)b.verdict[j];
    }
    return got;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_NORMALS_AVX512 1
/* The same block with AVX-512, a register per quantity: the same integer
 * operations and the same correctly rounded double operations in the same
 * order, hence the same bits (test_optim compares both paths with the
 * scalar recipe). The x / 4 of the scalar code is the exactly equal
 * x * 0.25 (gcc emits that for the scalar code too); the compiler may fuse
 * u53 * 2^-52 - 1 into an FMA, which changes nothing since the product is
 * exact.
 *
 * The log test without libm's log: ln u = e ln 2 + 2 atanh(t), t =
 * (m - 1)/(m + 1) for u = m 2^e, m in [0.75, 1.5], |t| <= 1/5, with the
 * atanh series to t^13. The rest of the series is below 4.6e-12, and
 * |ln u| >= 0.28 where e != 0, so our ln u is within 1.6e-11 of ln u
 * relative (rounding adds ~1e-15; measured against glibc over 2e8 draws:
 * at most 1.57e-11), and glibc's log is within 1 ulp of it. So a candidate
 * whose x^2/4 is more than 1e-9 (relative) away from our -ln u gets the
 * verdict the scalar test gives with libm's log, and only one inside that
 * band (about one in 10^9) asks libm. (Widening the band to 10% only
 * slowed it down: test_optim still passed.) The kept values are packed
 * with a compress: 65 ns a row of 16 against 325 for the generic blocks. */
__attribute__((target("avx512f,avx512dq,avx512vl"))) static uint32_t
normal_block_avx512(uint64_t s, double std, float *w, uint32_t room) {
    const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i gamma = _mm512_set1_epi64((long long)GOLDEN_GAMMA);
    const __m512i m1 = _mm512_set1_epi64((long long)UINT64_C(0xbf58476d1ce4e5b9));
    const __m512i m2 = _mm512_set1_epi64((long long)UINT64_C(0x94d049bb133111eb));
    /* s + (2j+1)*gamma and s + (2j+2)*gamma, modulo 2^64. */
    __m512i odd = _mm512_add_epi64(_mm512_add_epi64(lane, lane), _mm512_set1_epi64(1));
    __m512i s1 = _mm512_add_epi64(_mm512_set1_epi64((long long)s), _mm512_mullo_epi64(odd, gamma));
    __m512i h[2] = {s1, _mm512_add_epi64(s1, gamma)};
    for (int k = 0; k < 2; k++) { /* ps_mix64 */
        __m512i x = h[k];
        x = _mm512_xor_si512(x, _mm512_srli_epi64(x, 30));
        x = _mm512_mullo_epi64(x, m1);
        x = _mm512_xor_si512(x, _mm512_srli_epi64(x, 27));
        x = _mm512_mullo_epi64(x, m2);
        h[k] = _mm512_xor_si512(x, _mm512_srli_epi64(x, 31));
    }
    const __m512d one = _mm512_set1_pd(1.0);
    __m512d u = _mm512_mul_pd(
        _mm512_cvtepu64_pd(_mm512_add_epi64(_mm512_srli_epi64(h[0], 11), _mm512_set1_epi64(1))),
        _mm512_set1_pd(0x1p-53));
    __m512d v = _mm512_mul_pd(
        _mm512_set1_pd(0.8577638849607068),
        _mm512_sub_pd(_mm512_mul_pd(_mm512_cvtepu64_pd(_mm512_srli_epi64(h[1], 11)), _mm512_set1_pd(0x1p-52)),
                      one));
    __m512d x = _mm512_div_pd(v, u);
    __m512d x2q = _mm512_mul_pd(_mm512_mul_pd(x, x), _mm512_set1_pd(0.25));
    __mmask8 accept = _mm512_cmp_pd_mask(x2q, _mm512_sub_pd(one, u), _CMP_LE_OQ);
    __mmask8 reject = _mm512_cmp_pd_mask(x2q, _mm512_sub_pd(_mm512_div_pd(one, u), one), _CMP_GT_OQ);

    /* -ln u, to ~1e-11 relative (above). */
    __m512d m = _mm512_getmant_pd(u, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
    __m512d e = _mm512_getexp_pd(u);
    __mmask8 high = _mm512_cmp_pd_mask(m, _mm512_set1_pd(1.5), _CMP_GT_OQ);
    m = _mm512_mask_mul_pd(m, high, m, _mm512_set1_pd(0.5));
    e = _mm512_mask_add_pd(e, high, e, one);
    __m512d t = _mm512_div_pd(_mm512_sub_pd(m, one), _mm512_add_pd(m, one));
    __m512d t2 = _mm512_mul_pd(t, t);
    __m512d p = _mm512_set1_pd(1.0 / 13);
    static const double coef[] = {1.0 / 11, 1.0 / 9, 1.0 / 7, 1.0 / 5, 1.0 / 3, 1.0};
    for (size_t k = 0; k < sizeof(coef) / sizeof(coef[0]); k++)
        p = _mm512_add_pd(_mm512_mul_pd(p, t2), _mm512_set1_pd(coef[k]));
    __m512d ln_u = _mm512_add_pd(_mm512_mul_pd(e, _mm512_set1_pd(0x1.62e42fefa39efp-1)),
                                 _mm512_mul_pd(_mm512_add_pd(t, t), p));
    __m512d neg_ln = _mm512_sub_pd(_mm512_setzero_pd(), ln_u);
    __m512d margin = _mm512_add_pd(_mm512_mul_pd(neg_ln, _mm512_set1_pd(1e-9)), _mm512_set1_pd(0x1p-1000));
    __mmask8 below = _mm512_cmp_pd_mask(x2q, _mm512_sub_pd(neg_ln, margin), _CMP_LE_OQ);
    __mmask8 above = _mm512_cmp_pd_mask(x2q, _mm512_add_pd(neg_ln, margin), _CMP_GT_OQ);
    __mmask8 keep = accept | (__mmask8)(~reject & below);
    unsigned ask = (unsigned)(__mmask8)(~accept & ~reject & ~below & ~above);
    if (ask) {
        double xs[NORMAL_BLOCK], us[NORMAL_BLOCK];
        _mm512_storeu_pd(xs, x2q);
        _mm512_storeu_pd(us, u);
        for (int j = 0; j < NORMAL_BLOCK; j++)
            if (((ask >> j) & 1) && xs[j] <= -log(us[j]))
                keep |= (__mmask8)(1u << j);
    }

    /* store(std * x) of the kept ones, in order: float32 rounding as the
     * scalar cast, + 0.0f turning -0.0 into +0.0. */
    __m256 f = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_set1_pd(std), x));
    f = _mm256_add_ps(f, _mm256_setzero_ps());
    f = _mm256_maskz_compress_ps(keep, f);
    uint32_t n = (uint32_t)__builtin_popcount(keep);
    if (n > room)
        n = room;
    _mm256_mask_storeu_ps(w, (__mmask8)((1u << n) - 1), f);
    return n;
}

static bool have_avx512(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl");
}
#endif

static void init_weights(const ps_table_config *t, uint64_t key, float *ret_w, bool vector) {
    uint32_t dim = t->dim;
    assert(dim >= 1 && dim <= PS_OPTIM_DIM_MAX);
    if (t->init == PS_INIT_ZERO) {
        for (uint32_t i = 0; i < dim; i++)
            ret_w[i] = 0.0f;
        return;
    }
    /* A splitmix64 stream per (seed, key): the state starts at a mix of both
     * and each draw adds the golden gamma and mixes. Elements are drawn in
     * order, so element i depends on (seed, key, i) alone and a wider row
     * extends a narrower one. */
    uint64_t s = ps_mix64(key ^ ps_mix64(t->seed + GOLDEN_GAMMA));
    for (uint32_t got = 0; got < dim; s += 2 * NORMAL_BLOCK * GOLDEN_GAMMA) {
#ifdef HAVE_NORMALS_AVX512
        if (vector) {
            got += normal_block_avx512(s, t->init_std, ret_w + got, dim - got);
            continue;
        }
#endif
        got += normal_block_generic(s, t->init_std, ret_w + got, dim - got);
    }
    (void)vector;
}

void ps_optim_init_weights(const ps_table_config *t, uint64_t key, float *ret_w) {
#ifdef HAVE_NORMALS_AVX512
    init_weights(t, key, ret_w, have_avx512());
#else
    init_weights(t, key, ret_w, false);
#endif
}

void ps_optim_init_weights_portable(const ps_table_config *t, uint64_t key, float *ret_w) {
    init_weights(t, key, ret_w, false);
}

void ps_optim_init_row(const ps_optim_params *p, uint32_t dim, const float *w_init, float *state) {
    assert(dim >= 1 && dim <= PS_OPTIM_DIM_MAX);
    float *w = state;
    switch (p->kind) {
    case PS_OPT_FTRL:
    case PS_OPT_FTRL_GROUP_LASSO: {
        float *z = state + dim, *n = state + 2 * dim;
        /* z = -shrink*w - lambda1*sign(w) makes the closed form at n = 0
         * return w. Group lasso adds lambda_g/||w|| to shrink (§3); for a
         * zero row z = 0 already is the exact start, and the division would
         * be 0/0. */
        double shrink = p->beta / p->alpha + p->lambda2;
        if (p->kind == PS_OPT_FTRL_GROUP_LASSO) {
            double lg = p->lambda21 * sqrt((double)dim);
            double norm2 = 0;
            for (uint32_t i = 0; i < dim; i++)
                norm2 += (double)w_init[i] * w_init[i];
            if (norm2 > 0)
                shrink += lg / sqrt(norm2);
        }
        for (uint32_t i = 0; i < dim; i++) {
            double x = w_init[i];
            w[i] = store(x);
            z[i] = store(-shrink * x - p->lambda1 * sign(x));
            n[i] = 0.0f;
        }
        return;
    }
    case PS_OPT_ADAGRAD: {
        float *acc = state + dim;
        float acc0 = store(fmin(p->initial_accumulator_value, p->accum_max));
        for (uint32_t i = 0; i < dim; i++)
            w[i] = store(w_init[i]);
        for (uint32_t i = 0, nacc = p->rowwise ? 1 : dim; i < nacc; i++)
            acc[i] = acc0;
        return;
    }
    }
    assert(!"unknown optimizer kind");
}

/* Below this magnitude no gradient can overflow a finite row: n and acc grow
 * by at most g^2 < 1e20 per push, which cannot carry a float32 past FLT_MAX
 * in any number of pushes a shard will see, and z moves by about |g|. */
#define GRAD_SAFE 1e10f

/* Whether every |g_i| < GRAD_SAFE, which also means finite: nearly every
 * gradient, so this is checked four at a time without a branch per
 * element, and only a gradient that fails it is looked at closely. */
static bool grad_small(const float *g, uint32_t dim) {
    uint32_t i = 0;
#if defined(__SSE2__)
    const __m128 magnitude = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff)), safe = _mm_set1_ps(GRAD_SAFE);
    __m128 small = _mm_castsi128_ps(_mm_set1_epi32(-1));
    for (; i + 4 <= dim; i += 4) /* NaN compares false: not small */
        small = _mm_and_ps(small, _mm_cmplt_ps(_mm_and_ps(_mm_loadu_ps(g + i), magnitude), safe));
    if (_mm_movemask_ps(small) != 0xf)
        return false;
#endif
    for (; i < dim; i++)
        if (!(fabsf(g[i]) < GRAD_SAFE))
            return false;
    return true;
}

int ps_optim_apply(const ps_optim_params *p, uint32_t dim, float *state, const float *grad) {
    assert(dim >= 1 && dim <= PS_OPTIM_DIM_MAX);
    /* Whole push or nothing (§0): check every element before the first write. */
    bool huge = !grad_small(grad, dim);
    for (uint32_t i = 0; huge && i < dim; i++)
        if (!isfinite(grad[i]))
            return PS_ENONFINITE;
    /* Finite but huge gradients can overflow float32 state (n or acc past
     * FLT_MAX, z too), and an infinite n turns w into Inf/Inf = NaN, which
     * every worker would then pull. For those only, keep a copy and refuse
     * an update that leaves anything non-finite, like a non-finite gradient.
     * Found by fuzzing (tests/fuzz). */
    uint32_t width = ps_optim_state_width(p, dim);
    float saved[PS_OPTIM_STATE_MAX];
    if (huge)
        memcpy(saved, state, width * sizeof(float));
    switch (p->kind) {
    case PS_OPT_FTRL:
        ftrl_apply(p, dim, state, state + dim, state + 2 * dim, grad);
        break;
    case PS_OPT_FTRL_GROUP_LASSO:
        gl_apply(p, dim, state, state + dim, state + 2 * dim, grad);
        break;
    case PS_OPT_ADAGRAD:
        adagrad_apply(p, dim, state, state + dim, grad);
        break;
    default:
        assert(!"unknown optimizer kind");
        return PS_ECONFIG;
    }
    for (uint32_t i = 0; huge && i < width; i++) {
        if (!isfinite(state[i])) {
            memcpy(state, saved, width * sizeof(float));
            return PS_ENONFINITE;
        }
    }
    return 0;
}

void ps_optim_step_init(ps_optim_step *s, const ps_optim_params *p, uint32_t dim) {
    *s = (ps_optim_step){.p = p, .dim = dim, .simd = ftrl_simd(), .k = ftrl_consts(p)};
}

/* FTRL with gradients below GRAD_SAFE, nearly every row, goes straight to
 * the kernel: the same steps as ps_optim_apply() takes for it. */
int ps_optim_step_apply(const ps_optim_step *s, float *state, const float *grad) {
    uint32_t dim = s->dim;
    if (s->p->kind != PS_OPT_FTRL || !grad_small(grad, dim))
        return ps_optim_apply(s->p, dim, state, grad);
    ftrl_apply_k(&s->k, s->simd, dim, state, state + dim, state + 2 * dim, grad);
    return 0;
}
