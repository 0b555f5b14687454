/* The fused CPU step of l_p mirror descent (MirrorDescent(fused=True) on CPU).
 *
 * Built at first use by attnopt/optim/_cpu.py with the system C compiler
 * (cc -O3 -march=native -fopenmp) and loaded with ctypes; no Python headers.
 *
 * One call updates a whole list of tensors.  The list is cut into chunks of CHUNK elements
 * that the OpenMP threads share statically (in a torch process the loader binds libgomp.so.1
 * to torch's own copy, so there is one OpenMP runtime).  The common case (float32 g, theta
 * and w; no scale, momentum or decay; an inverse map computable in float32) runs in vector
 * registers in one loop (step_f32_vec).  Otherwise a chunk is processed in blocks of BLK
 * elements that stay in L1: per block, the direction d (the gradient times its per-tensor
 * scale, through the momentum buffer when mu != 0), the dual update
 * theta <- decay*theta + alpha*d, then the inverse map w = sign(theta)|theta|^e clamped to
 * the weight dtype's largest value.
 * Each element of g and theta is read once and theta and w are written once; float32
 * weights are written with non-temporal stores where the CPU has them, so the write of w
 * does not first read w into the cache (16 bytes moved per element instead of 20).
 *
 * The power |theta|^e, by kind (decided in Python, see attnopt.optim._math.classify_exponent):
 * identity, square, sqrt, int n (binary powering), half-int n + 1/2 (powering times sqrt)
 * in float32 like the other paths; a general e as exp2(e*log2|theta|) with polynomials:
 * in float32 with an exact split of e*k for e <= 4 (p >= 1.25; a few ulp, see vpow_f32),
 * in float64 above (|error| < 1e-12 relative before the rounding to float32: within 1 ulp).
 * With AVX-512, a general e <= 4 with 3e an integer (e = n + f/3, f in {1, 2}: p = 1.75, 2.5,
 * 4, 1.3, ...) is computed instead as x^n * cbrt(x)^f without log or exp (vpow_third_avx512).
 *
 * Masked steps (masked = 1): w changes only where theta moved.  The round trip
 * w -> theta -> w is not exact (theta is built from w at the first step and after an edit), so
 * an entry whose theta did not change must keep its bits.  A vector whose lanes all moved is
 * stored as before; in the others the unmoved lanes get their old bits back (blended into the
 * vector, which is then stored as a whole) and are compared with the inverse of their theta,
 * and inexact[t] is raised where one differs.  A tensor none of
 * whose weights differs is exact: Python then steps it unmasked (rewriting an unmoved entry
 * writes its own bits), at the speed of the plain store.
 *
 * attnopt_count_nonfinite counts NaN/inf entries of a list of gradients (exact: exponent
 * bits), for the optimizer's non-finite check before any write.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#define CHUNK 16384
#define BLK 512 /* a multiple of 16 */
#define STREAM_MIN (1 << 18) /* smaller tensors are written through the cache: they are likely still there at the next forward pass */
/* Masked calls never stream: they read w back (keep_old) at the next step, and a streamed w
 * sits in DRAM by then.  Measured on 2 AMD EPYC cores, 1M float32 elements, one thread: a
 * masked step took 0.57 ns/element streamed against 0.28 cached (p = 1.1; p = 2 and 3, forced
 * masked: 0.37 vs 0.12); cached, it costs 1.15-1.4x an unmasked step (benchmarks/cpu_kernel_masked.py). */

enum { DT_F32 = 0, DT_BF16 = 1 };
enum { K_IDENTITY = 0, K_SQUARE = 1, K_SQRT = 2, K_INT = 3, K_HALFINT = 4, K_GENERAL = 5,
       K_THIRD = 8 /* internal, AVX-512 builds only: K_THIRD + 3e for a general e = n + f/3 <= 4 */ };
/* every K_THIRD + N (N = 3e = 3n + f), one specialised loop each */
#define THIRD_CASES(CASE) CASE(1) CASE(2) CASE(4) CASE(5) CASE(7) CASE(8) CASE(10) CASE(11)

typedef float v8f __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));
typedef int64_t v8l __attribute__((vector_size(64)));
typedef uint64_t v8u __attribute__((vector_size(64)));

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even; f is finite */
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* |x|^e for 8 non-negative finite doubles: exp2(e*log2 x) with x = 2^k*m, m in [sqrt(1/2), sqrt(2)). */
static inline v8d vpow_general(v8d a, double e) {
    const double SQRT2 = 1.4142135623730951, INV_LN2 = 1.4426950408889634, LN2 = 0.6931471805599453;
    const double MAGIC = 6755399441055744.0; /* 1.5 * 2^52: (y + MAGIC) - MAGIC rounds y to an integer */
    v8u bits = (v8u)a;
    v8l k = (v8l)((bits >> 52) & 0x7ff) - 1023;
    v8d x = (v8d)((bits & 0xfffffffffffffULL) | 0x3ff0000000000000ULL);
    v8l big = x > SQRT2; /* -1 where true */
    x = x * (1.0 + 0.5 * __builtin_convertvector(big, v8d));
    k = k - big;
    v8d s = (x - 1.0) / (x + 1.0), z = s * s;
    /* ln m = 2 atanh(s) = 2 s (1 + z/3 + z^2/5 + ...), |s| <= 0.1716 */
    v8d lm = 2.0 * s * (1.0 + z * (1.0 / 3 + z * (1.0 / 5 + z * (1.0 / 7 + z * (1.0 / 9 + z * (1.0 / 11 + z * (1.0 / 13)))))));
    v8d y = e * (__builtin_convertvector(k, v8d) + lm * INV_LN2);
    v8l lo = y < -1022.0, hi = y > 1000.0; /* the float32 result is 0 or overflows there */
    y = (v8d)(((v8l)y & ~(lo | hi)) | ((v8l)((v8d){0} - 1022.0) & lo) | ((v8l)((v8d){0} + 1000.0) & hi));
    v8d rn = (y + MAGIC) - MAGIC;
    v8d f = (y - rn) * LN2; /* |f| <= ln2/2 */
    v8d p = 1.0 + f * (1.0 + f * (1.0 / 2 + f * (1.0 / 6 + f * (1.0 / 24 + f * (1.0 / 120 + f * (1.0 / 720
            + f * (1.0 / 5040 + f * (1.0 / 40320 + f * (1.0 / 362880 + f * (1.0 / 3628800))))))))));
    v8d scale = (v8d)((__builtin_convertvector(rn, v8l) + 1023) << 52);
    v8l nonzero = a != 0.0;
    return (v8d)((v8l)(p * scale) & nonzero);
}

/* |x|^e for VF_LANES non-negative finite floats, all in float32, for e <= E_F32_MAX (p >= 1.25).
 * log2 x = k + l with x = 2^k * m, m in [sqrt(1/2), sqrt(2)), l = log2 m in [-1/2, 1/2];
 * y = e*k + e*l with e = e_hi + e_lo (e_hi has 12 significant bits, so e_hi*k is exact);
 * n = round(y); 2^(y-n) by a polynomial; 2^n as two normal factors (results down to the
 * subnormals round once).  Relative error about (e*|l|*2^-23 + 2^-23)*ln 2: measured at most
 * 1.8 ulp at e = 4/3 and 3.3 ulp at e = 10/3. */
#if defined(__AVX512F__)
#define VF_BYTES 64
#else
#define VF_BYTES 32 /* AVX2 and older: 8 lanes, so that no operation is split or scalarised */
#endif
#define VF_LANES (VF_BYTES / 4)
typedef float v16f __attribute__((vector_size(VF_BYTES)));
typedef int32_t v16i __attribute__((vector_size(VF_BYTES)));
typedef uint32_t v16u __attribute__((vector_size(VF_BYTES)));
#define E_F32_MAX 4.0

static inline v16f vpow_f32(v16f a, float e_hi, float e_lo, float e) {
    const float SQRT2 = 1.41421356f, INV_LN2 = 1.44269504f, LN2 = 0.693147181f;
    const float MAGIC = 12582912.0f; /* 1.5 * 2^23 */
    v16u bits = (v16u)a;
    v16i k = (v16i)((bits >> 23) & 0xffu) - 127;
    v16i sub = k == -127; /* a subnormal (or 0): scale by 2^24 first */
    v16f as = (v16f)((v16i)(a * 16777216.0f) & sub) + (v16f)((v16i)a & ~sub);
    bits = (v16u)as;
    k = (v16i)((bits >> 23) & 0xffu) - 127 + (sub & -24);
    v16f x = (v16f)((bits & 0x7fffffu) | 0x3f800000u);
    v16i big = x > SQRT2;
    x = x * (1.0f + 0.5f * __builtin_convertvector(big, v16f));
    k = k - big;
    v16f s = (x - 1.0f) / (x + 1.0f), z = s * s;
    v16f l = 2.0f * INV_LN2 * s * (1.0f + z * (1.0f / 3 + z * (1.0f / 5 + z * (1.0f / 7 + z * (1.0f / 9)))));
    v16f kf = __builtin_convertvector(k, v16f);
    v16f hi = kf * e_hi;            /* exact */
    v16f rest = kf * e_lo + e * l;  /* |rest| <= ~|k|*|e_lo| + e/2 */
    v16f y = hi + rest;
    v16i lo_m = y < -252.0f, hi_m = y > 254.0f; /* the result is 0 / overflows there */
    v16f n = (y + MAGIC) - MAGIC;
    v16f f = ((hi - n) + rest) * LN2; /* hi - n is exact */
    v16f p = 1.0f + f * (1.0f + f * (1.0f / 2 + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120
             + f * (1.0f / 720 + f * (1.0f / 5040)))))));
    v16i ni = __builtin_convertvector(n, v16i);
    ni = (ni & ~(lo_m | hi_m)) + (-252 & lo_m) + (254 & hi_m);
    v16i n1 = ni >> 1, n2 = ni - n1; /* both in [-126, 127]: normal powers of two */
    v16f s1 = (v16f)((n1 + 127) << 23), s2 = (v16f)((n2 + 127) << 23);
    v16i nonzero = a != 0.0f;
    return (v16f)((v16i)((p * s1) * s2) & nonzero);
}

/* e = e_hi + e_lo with e_hi holding 12 significant bits (so e_hi * k is exact for |k| < 2^11) */
static inline void split_exponent(double e, float *e_hi, float *e_lo) {
    float hi = (float)e;
    uint32_t u;
    memcpy(&u, &hi, 4);
    u &= 0xfffff000u;
    memcpy(&hi, &u, 4);
    *e_hi = hi;
    *e_lo = (float)(e - (double)hi);
}

#if defined(__AVX512F__)
/* The same computation with AVX-512's exponent/mantissa extraction (subnormals included),
 * a refined reciprocal instead of the division, and vscalefps for 2^n (which rounds once
 * into the subnormals and saturates to 0 / inf). */
static inline __m512 vpow_f32_avx512(__m512 a, float e_hi, float e_lo, float e) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 m = _mm512_getmant_ps(a, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
    __m512 kf = _mm512_getexp_ps(a);
    __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356f), _CMP_GT_OQ);
    m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
    kf = _mm512_mask_add_ps(kf, big, kf, one);
    __m512 num = _mm512_sub_ps(m, one), den = _mm512_add_ps(m, one);
    __m512 r = _mm512_rcp14_ps(den);
    r = _mm512_mul_ps(r, _mm512_fnmadd_ps(den, r, _mm512_set1_ps(2.0f))); /* one Newton step: ~28 bits */
    __m512 s = _mm512_mul_ps(num, r), z = _mm512_mul_ps(s, s);
    __m512 q = _mm512_fmadd_ps(z, _mm512_set1_ps(1.0f / 9), _mm512_set1_ps(1.0f / 7));
    q = _mm512_fmadd_ps(z, q, _mm512_set1_ps(1.0f / 5));
    q = _mm512_fmadd_ps(z, q, _mm512_set1_ps(1.0f / 3));
    q = _mm512_fmadd_ps(z, q, one);
    __m512 l = _mm512_mul_ps(_mm512_mul_ps(s, _mm512_set1_ps(2.0f * 1.44269504f)), q);
    __m512 hi = _mm512_mul_ps(kf, _mm512_set1_ps(e_hi)); /* exact */
    __m512 rest = _mm512_fmadd_ps(kf, _mm512_set1_ps(e_lo), _mm512_mul_ps(_mm512_set1_ps(e), l));
    __m512 y = _mm512_add_ps(hi, rest);
    __m512 n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_mul_ps(_mm512_add_ps(_mm512_sub_ps(hi, n), rest), _mm512_set1_ps(0.693147181f));
    __m512 p = _mm512_fmadd_ps(f, _mm512_set1_ps(1.0f / 5040), _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(f, p, one);
    p = _mm512_fmadd_ps(f, p, one);
    __mmask16 nonzero = _mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_NEQ_OQ);
    return _mm512_maskz_scalef_ps(nonzero, p, n);
}

/* Linear first guesses of x^(-1/3) for x in [1, 8), x = 2^j * (1 + (t + u)/8), t in 0..7, u in
 * [0, 1): r0 = slope[i] * x + icpt[i] with i = 8 * ((127 + j) & 3) + t, the low 5 bits of x's
 * bits >> 20 (exponent field low 2 bits, top 3 mantissa bits), so one vpermt2ps looks it up.
 * Each line is the chord of x^(-1/3) over its interval moved down by half the largest gap
 * (an absolute minimax line of a convex function): relative error below 1e-3. */
typedef struct { float slope[32], icpt[32]; } third_table;

static void make_third_table(third_table *T) {
    memset(T, 0, sizeof *T);
    for (int j = 0; j < 3; j++)
        for (int t = 0; t < 8; t++) {
            double x0 = ldexp(1.0 + t / 8.0, j), x1 = ldexp(1.0 + (t + 1) / 8.0, j);
            double f0 = pow(x0, -1.0 / 3), f1 = pow(x1, -1.0 / 3), s = (f1 - f0) / (x1 - x0);
            double xi = pow(-3.0 * s, -0.75); /* f'(xi) = s */
            int i = 8 * ((127 + j) & 3) + t;
            T->slope[i] = (float)s;
            T->icpt[i] = (float)((f0 - s * x0 + pow(xi, -1.0 / 3) - s * xi) / 2);
        }
}

/* |x|^e for 16 non-negative floats, e = n + f/3 (f in {1, 2}, n >= 0, n + f/3 <= 4), without
 * log/exp.  x = 2^k * m (m in [1, 2), subnormals normalised by getexp/getmant); k = 3q + j
 * (j in {0, 1, 2}); X = 2^j * m in [1, 8).  Then x^e = 2^(n*k + f*q) * m^n * cbrt(X)^f.
 * cbrt X: r0 ~ X^(-1/3) from the table (relative error d ~ 1e-3); u = X*r0^2 (= cbrt X * (1 + 2d));
 * h = 1 - u*r0 (= 1 - X*r0^3, exact product in the fma); since X*r0^3 = 1 - h,
 * cbrt(X)^f = u^f * (1 - h)^(-2f/3) = u^f * (1 + a1*h + a2*h^2 + a3*h^3 + O(h^4)), a1 = 2f/3,
 * a2 = a1*(a1 + 1)/2, a3 = a2*(a1 + 2)/3 (|h| < 3e-3: h^4 is far below an ulp); the rounding of u
 * enters damped by 1/3, and the last product of m^n * u^f is kept exact until the final sum.
 * 2^(n*k + f*q) by vscalefps: one rounding into the subnormals, 0 / inf beyond the range. */
static inline __m512 vpow_third_avx512(__m512 a, int n, int f, const __m512 *tab) {
    const __m512 one = _mm512_set1_ps(1.0f);
    a = _mm512_min_ps(_mm512_set1_ps(3.40282347e38f), a); /* inf -> the largest float (NaN stays) */
    __m512 m = _mm512_getmant_ps(a, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
    __m512 k = _mm512_getexp_ps(a);
    /* q = floor(k/3): (k + 1/2)/3 is at least 1/6 from an integer, so the rounding cannot cross one */
    __m512 q = _mm512_roundscale_ps(_mm512_fmadd_ps(k, _mm512_set1_ps(1.0f / 3), _mm512_set1_ps(1.0f / 6)),
                                    _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 j = _mm512_fnmadd_ps(q, _mm512_set1_ps(3.0f), k);
    __m512 X = _mm512_scalef_ps(m, j);
    __m512i idx = _mm512_srli_epi32(_mm512_castps_si512(X), 20);
    __m512 r = _mm512_fmadd_ps(_mm512_permutex2var_ps(tab[0], idx, tab[1]), X,
                               _mm512_permutex2var_ps(tab[2], idx, tab[3]));
    __m512 u = _mm512_mul_ps(X, _mm512_mul_ps(r, r));
    __m512 h = _mm512_fnmadd_ps(u, r, one);
    /* the product m^n * u^f, its last multiplication error-free (lo) so that it is rounded once, in the end */
    __m512 first = f == 2 ? u : one;
    for (int i = 0; i < n; i++) first = i == 0 && f == 1 ? m : _mm512_mul_ps(first, m);
    __m512 base = u, lo = _mm512_setzero_ps();
    if (f == 2 || n >= 1) {
        base = _mm512_mul_ps(first, u);
        lo = _mm512_fmsub_ps(first, u, base);
    }
    const float a1 = f == 2 ? 4.0f / 3 : 2.0f / 3, a2 = a1 * (a1 + 1) / 2, a3 = a2 * (a1 + 2) / 3;
    __m512 corr = _mm512_fmadd_ps(h, _mm512_set1_ps(a3), _mm512_set1_ps(a2));
    corr = _mm512_mul_ps(h, _mm512_fmadd_ps(h, corr, _mm512_set1_ps(a1)));
    __m512 mant = _mm512_add_ps(base, _mm512_fmadd_ps(base, corr, lo));
    __m512 ex = _mm512_fmadd_ps(k, _mm512_set1_ps((float)n), _mm512_mul_ps(q, _mm512_set1_ps((float)f)));
    __mmask16 nonzero = _mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_NEQ_OQ);
    return _mm512_maskz_scalef_ps(nonzero, mant, ex);
}
#endif

/* m[j] <- m[j]^e for a general e > E_F32_MAX, in float64 (L is a multiple of 8) */
static void pow_block_f64(float *restrict m, int L, double e) {
    for (int j = 0; j < L; j += 8) {
        v8f a;
        memcpy(&a, m + j, sizeof a);
        v8f r = __builtin_convertvector(vpow_general(__builtin_convertvector(a, v8d), e), v8f);
        memcpy(m + j, &r, sizeof r);
    }
}

static void store_w_f32(float *restrict w, const float *restrict v, int L, int stream) {
    int j = 0;
    (void)stream; /* no streaming store below AVX */
#if defined(__AVX512F__)
    if (stream) {
        for (; j < L && ((uintptr_t)(w + j) & 63); j++) w[j] = v[j];
        for (; j + 16 <= L; j += 16) _mm512_stream_ps(w + j, _mm512_loadu_ps(v + j));
    }
#elif defined(__AVX__)
    if (stream) {
        for (; j < L && ((uintptr_t)(w + j) & 31); j++) w[j] = v[j];
        for (; j + 8 <= L; j += 8) _mm256_stream_ps(w + j, _mm256_loadu_ps(v + j));
    }
#endif
    for (; j < L; j++) w[j] = v[j];
}

typedef struct {
    int ntensors;
    void **w;            /* weights (float32 or bfloat16); == theta for a tensor that is its own dual */
    float **theta;       /* dual variables, float32 */
    const void **g;      /* gradients (float32 or bfloat16) */
    float **buf;         /* momentum buffers (float32) or NULL entries */
    const int64_t *numel;
    const double *gscale; /* per-tensor factor on g (the normalised step's 1/(||g||_q+eps)), or NULL */
    int w_dtype, g_dtype;
    int own;              /* weights are their own dual (p = 2, float32): only theta is written */
    double alpha, decay, mu, e, omax;
    int kind, n;
    int stream;           /* non-temporal stores for float32 weights */
    int third;            /* K_THIRD + 3e where the power runs as x^n * cbrt(x)^f, else 0 */
    const void *table;    /* its table (a third_table), or NULL */
    int masked;           /* w is written only where theta moved (see vstore_except) */
    int *inexact;         /* masked: per tensor, set to 1 where an unmoved weight differs from the inverse of its theta */
} md_args;

/* m[j] <- sign(th[j]) * min(|th[j]|^e, omax) for the cheap kinds, in one pass (inlined per kind) */
/* The common case in registers: float32 g, theta and w, no scale/momentum/decay, and an
 * inverse map computed in float32 (every kind but a general e > E_F32_MAX).  One pass over
 * VF_LANES-wide vectors: load g and theta, store theta, compute w, stream it.  Written with
 * GCC/clang vector extensions; square root, non-temporal store and the general power use
 * the widest instructions the target has. */
typedef struct {
    int kind, n;
    float e_hi, e_lo, e;
#if defined(__AVX512F__)
    __m512 third[4]; /* K_THIRD's table: slopes (32 lanes in two registers), then intercepts */
#endif
} pow_params;

static inline v16f vsqrt(v16f a) {
#if defined(__AVX512F__)
    return (v16f)_mm512_sqrt_ps((__m512)a);
#elif defined(__AVX__)
    return (v16f)_mm256_sqrt_ps((__m256)a);
#else
    for (int i = 0; i < VF_LANES; i++) a[i] = sqrtf(a[i]);
    return a;
#endif
}

/* min(r, omax) lane by lane, NaN kept (x86's min returns its second operand when one is NaN) */
static inline v16f vmin_max(v16f r, float omax) {
#if defined(__AVX512F__)
    return (v16f)_mm512_min_ps(_mm512_set1_ps(omax), (__m512)r);
#elif defined(__AVX__)
    return (v16f)_mm256_min_ps(_mm256_set1_ps(omax), (__m256)r);
#else
    v16i over = r > omax;
    return (v16f)(((v16i)r & ~over) | ((v16i)((v16f){0} + omax) & over));
#endif
}

static inline void vstore(float *w, v16f r, int stream) {
#if defined(__AVX512F__)
    if (stream && !((uintptr_t)w & 63)) { _mm512_stream_ps(w, (__m512)r); return; }
#elif defined(__AVX__)
    if (stream && !((uintptr_t)w & 31)) { _mm256_stream_ps(w, (__m256)r); return; }
#endif
    (void)stream;
    memcpy(w, &r, sizeof r);
}

/* A masked store without a branch: the lanes of keep (where theta did not move: a frozen row,
 * a zero gradient, an update below half an ulp of theta) get their old bits back, blended into
 * r, and the vector is stored whole as the plain path stores it (streamed where it streams), so
 * an unmoved entry is rewritten with its own bits.  bad collects the kept lanes whose weight
 * differs from r, the inverse of its unmoved theta: such a tensor stays masked, since only where
 * every weight equals the inverse of its theta may it be written without a mask.  (Branch-free
 * because unmoved lanes are common with a small step: up to a quarter of the entries at
 * lr 1e-4 with p = 1.1, in a third of the vectors at p = 1.75 -- an unpredictable branch.) */
static inline v16f keep_old(v16f r, const float *w, v16i keep, v16i *bad) {
    v16f old;
    memcpy(&old, w, sizeof old);
    *bad |= keep & (r != old); /* != is true for a NaN */
    return (v16f)(((v16i)old & keep) | ((v16i)r & ~keep));
}

static inline void report_bad(v16i bad, int *inexact) {
    int any = 0;
    for (int k = 0; k < VF_LANES; k++) any |= bad[k];
    if (any) __atomic_store_n(inexact, 1, __ATOMIC_RELAXED);
}

/* w[j] <- v[j] where th[j] != t0[j] (the new and old theta), j < L */
static void store_w_f32_changed(float *restrict w, const float *restrict v, const float *restrict th,
                                const float *restrict t0, int L, int stream, int *inexact) {
    int j = 0;
    v16i bad = {0};
    for (; j + VF_LANES <= L; j += VF_LANES) {
        v16f r, a, b;
        memcpy(&r, v + j, sizeof r);
        memcpy(&a, th + j, sizeof a);
        memcpy(&b, t0 + j, sizeof b);
        vstore(w + j, keep_old(r, w + j, a == b, &bad), stream);
    }
    report_bad(bad, inexact);
    for (; j < L; j++) {
        if (th[j] != t0[j]) w[j] = v[j];
        else if (w[j] != v[j]) __atomic_store_n(inexact, 1, __ATOMIC_RELAXED);
    }
}

static inline __attribute__((always_inline)) v16f vinverse(v16f t, int kind, const pow_params *P, float omax) {
    const v16u SIGN = (v16u){0} + 0x80000000u;
    v16f a = (v16f)((v16u)t & ~SIGN), r;
    if (kind == K_SQUARE) {
        r = a * a;
    } else if (kind == K_SQRT) {
        r = vsqrt(a);
    } else if (kind == K_INT || kind == K_HALFINT) {
        v16f base = a;
        r = (v16f){0} + 1.0f;
        for (int left = P->n; left; left >>= 1) {
            if (left & 1) r = r * base;
            if (left >> 1) base = base * base;
        }
        if (kind == K_HALFINT) r = r * vsqrt(a);
    } else if (kind >= K_THIRD) {
#if defined(__AVX512F__)
        r = (v16f)vpow_third_avx512((__m512)a, (kind - K_THIRD) / 3, (kind - K_THIRD) % 3, P->third);
#else
        r = vpow_f32(a, P->e_hi, P->e_lo, P->e); /* not chosen without AVX-512 */
#endif
    } else if (kind == K_GENERAL) {
#if defined(__AVX512F__)
        r = (v16f)vpow_f32_avx512((__m512)a, P->e_hi, P->e_lo, P->e);
#else
        r = vpow_f32(a, P->e_hi, P->e_lo, P->e);
#endif
    } else {
        r = a;
    }
    r = vmin_max(r, omax); /* also +inf; NaN stays */
    v16i nan = t != t; /* a NaN theta (nonfinite="ignore") gives a NaN weight, whatever the power made of it */
    r = (v16f)(((v16i)r & ~nan) | ((v16i)t & nan));
    return (v16f)((v16u)r | ((v16u)t & SIGN));
}

static inline __attribute__((always_inline)) void step_f32_vec(float *restrict w, float *restrict theta,
                                                               const float *restrict g, int64_t n, float alpha,
                                                               int kind, const pow_params *P, float omax,
                                                               int stream, int masked, int *inexact) {
    const pow_params Q = *P; /* a local copy: no store through w or theta can change it */
    P = &Q;
    int64_t i = 0;
    v16i bad = {0};
    for (; i + VF_LANES <= n; i += VF_LANES) {
        v16f gv, t0, tv;
        memcpy(&gv, g + i, sizeof gv);
        memcpy(&t0, theta + i, sizeof t0);
        tv = t0 + alpha * gv;
        memcpy(theta + i, &tv, sizeof tv);
        if (masked) {
            v16i keep = tv == t0;
            vstore(w + i, keep_old(vinverse(tv, kind, P, omax), w + i, keep, &bad), stream);
        } else {
            vstore(w + i, vinverse(tv, kind, P, omax), stream);
        }
    }
    if (masked) report_bad(bad, inexact);
    if (i < n) { /* the ragged tail through a zero-padded vector */
        int rest = (int)(n - i);
        v16f gv = {0}, t0 = {0}, tv, r;
        memcpy(&gv, g + i, rest * sizeof(float));
        memcpy(&t0, theta + i, rest * sizeof(float));
        tv = t0 + alpha * gv;
        r = vinverse(tv, kind, P, omax);
        memcpy(theta + i, &tv, rest * sizeof(float));
        for (int k = 0; k < rest; k++) {
            if (!masked || tv[k] != t0[k]) w[i + k] = r[k];
            else if (w[i + k] != r[k]) __atomic_store_n(inexact, 1, __ATOMIC_RELAXED);
        }
    }
}

static inline __attribute__((always_inline)) void inverse_vectors_k(float *restrict m, const float *restrict th,
                                                                    int L, int kind, const pow_params *P,
                                                                    float omax) {
    for (int j = 0; j < L; j += VF_LANES) {
        v16f tv, r;
        memcpy(&tv, th + j, sizeof tv);
        r = vinverse(tv, kind, P, omax);
        memcpy(m + j, &r, sizeof r);
    }
}

/* m <- the inverse map of th, L a multiple of VF_LANES (constant kinds, as in process) */
static void inverse_vectors(float *restrict m, const float *restrict th, int L, int kind, const pow_params *P,
                            float omax) {
    switch (kind) {
    case K_IDENTITY: inverse_vectors_k(m, th, L, K_IDENTITY, P, omax); break;
    case K_SQUARE: inverse_vectors_k(m, th, L, K_SQUARE, P, omax); break;
    case K_SQRT: inverse_vectors_k(m, th, L, K_SQRT, P, omax); break;
    case K_INT: inverse_vectors_k(m, th, L, K_INT, P, omax); break;
    case K_HALFINT: inverse_vectors_k(m, th, L, K_HALFINT, P, omax); break;
#if defined(__AVX512F__)
#define INVERSE_THIRD(N) case K_THIRD + N: inverse_vectors_k(m, th, L, K_THIRD + N, P, omax); break;
    THIRD_CASES(INVERSE_THIRD)
#endif
    default: inverse_vectors_k(m, th, L, K_GENERAL, P, omax);
    }
}

static void process(const md_args *A, int t, int64_t s, int64_t end) {
    float d[BLK] __attribute__((aligned(64)));
    float th[BLK] __attribute__((aligned(64)));
    float t0[BLK] __attribute__((aligned(64))); /* theta before the update: w is written where it moved */
    float m[BLK] __attribute__((aligned(64)));
    float *theta = A->theta[t];
    float *buf = A->buf ? A->buf[t] : NULL;
    const float gs = A->gscale ? (float)A->gscale[t] : 1.0f;
    const float alpha = (float)A->alpha, decay = (float)A->decay, mu = (float)A->mu;
    const float omax = (float)A->omax;
    const int plain = A->g_dtype == DT_F32 && !A->gscale && !buf && A->decay == 1.0;
    const int f64_power = A->kind == K_GENERAL && A->e > E_F32_MAX;
    pow_params P = {.kind = A->kind, .n = A->n, .e = (float)A->e};
    split_exponent(A->e, &P.e_hi, &P.e_lo);
#if defined(__AVX512F__)
    if (A->third) {
        const third_table *T = (const third_table *)A->table;
        P.kind = A->third;
        P.third[0] = _mm512_loadu_ps(T->slope);
        P.third[1] = _mm512_loadu_ps(T->slope + 16);
        P.third[2] = _mm512_loadu_ps(T->icpt);
        P.third[3] = _mm512_loadu_ps(T->icpt + 16);
    }
#endif
    if (plain && !A->own && A->w_dtype == DT_F32 && !f64_power) {
        float *w = (float *)A->w[t] + s;
        const float *g = (const float *)A->g[t] + s;
        int stream = A->stream && !A->masked && A->numel[t] >= STREAM_MIN;
        int64_t len = end - s;
        int *flag = A->masked ? A->inexact + t : NULL;
        /* constant kinds and masking, so that each loop is specialised */
#define STEP(KIND)                                                                                   \
    (A->masked ? step_f32_vec(w, theta + s, g, len, alpha, KIND, &P, omax, stream, 1, flag)          \
               : step_f32_vec(w, theta + s, g, len, alpha, KIND, &P, omax, stream, 0, NULL))
        switch (P.kind) {
        case K_IDENTITY: STEP(K_IDENTITY); break;
        case K_SQUARE: STEP(K_SQUARE); break;
        case K_SQRT: STEP(K_SQRT); break;
        case K_INT: STEP(K_INT); break;
        case K_HALFINT: STEP(K_HALFINT); break;
#if defined(__AVX512F__)
#define STEP_THIRD(N) case K_THIRD + N: STEP(K_THIRD + N); break;
        THIRD_CASES(STEP_THIRD)
#endif
        default: STEP(K_GENERAL);
        }
#undef STEP
        return;
    }
    for (int64_t b = s; b < end; b += BLK) {
        int L = end - b < BLK ? (int)(end - b) : BLK, j;
        float *tt = theta + b;
        /* 1. the dual update: th = theta = decay*theta + alpha*d */
        if (plain) { /* the common case in one pass */
            const float *g = (const float *)A->g[t] + b;
            for (j = 0; j < L; j++) { float x = tt[j] + alpha * g[j]; t0[j] = tt[j]; tt[j] = x; th[j] = x; }
        } else {
            if (A->g_dtype == DT_F32) {
                const float *g = (const float *)A->g[t] + b;
                for (j = 0; j < L; j++) d[j] = g[j] * gs;
            } else {
                const uint16_t *g = (const uint16_t *)A->g[t] + b;
                for (j = 0; j < L; j++) d[j] = bf16_to_f32(g[j]) * gs;
            }
            if (buf) {
                float *bb = buf + b;
                for (j = 0; j < L; j++) { bb[j] = mu * bb[j] + d[j]; d[j] = bb[j]; }
            }
            for (j = 0; j < L; j++) { float x = tt[j] * decay + alpha * d[j]; t0[j] = tt[j]; tt[j] = x; th[j] = x; }
        }
        if (A->own)
            continue;
        /* 2. the inverse map into m, over whole vectors (th is zero-padded) */
        int LV = (L + VF_LANES - 1) & ~(VF_LANES - 1);
        for (j = L; j < LV; j++) th[j] = 0.0f;
        if (f64_power) {
            for (j = 0; j < LV; j++) m[j] = fabsf(th[j]);
            pow_block_f64(m, LV, A->e);
            for (j = 0; j < L; j++) m[j] = th[j] != th[j] ? th[j] : copysignf(m[j] < omax ? m[j] : omax, th[j]);
        } else {
            inverse_vectors(m, th, LV, P.kind, &P, omax);
        }
        /* 3. the weights */
        int stream = A->stream && !A->masked && A->numel[t] >= STREAM_MIN;
        if (A->w_dtype == DT_F32 && A->masked) {
            store_w_f32_changed((float *)A->w[t] + b, m, th, t0, L, stream, A->inexact + t);
        } else if (A->w_dtype == DT_F32) {
            store_w_f32((float *)A->w[t] + b, m, L, stream);
        } else if (A->masked) {
            uint16_t *w = (uint16_t *)A->w[t] + b;
            for (j = 0; j < L; j++) {
                uint16_t v = f32_to_bf16(m[j]);
                if (th[j] != t0[j]) w[j] = v;
                else if (w[j] != v) __atomic_store_n(A->inexact + t, 1, __ATOMIC_RELAXED);
            }
        } else {
            uint16_t *w = (uint16_t *)A->w[t] + b;
            for (j = 0; j < L; j++) w[j] = f32_to_bf16(m[j]);
        }
    }
}

static int64_t *chunk_starts(int nt, const int64_t *numel) {
    int64_t *starts = (int64_t *)malloc(sizeof(int64_t) * (nt + 1));
    if (!starts) return NULL;
    starts[0] = 0;
    for (int t = 0; t < nt; t++) starts[t + 1] = starts[t] + (numel[t] + CHUNK - 1) / CHUNK;
    return starts;
}

static int find_tensor(const int64_t *starts, int nt, int64_t c) {
    int lo = 0, hi = nt - 1; /* the last t with starts[t] <= c */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (starts[mid] <= c) lo = mid; else hi = mid - 1;
    }
    return lo;
}

int attnopt_md_step(int nt, void **w, float **theta, const void **g, float **buf, const int64_t *numel,
                    const double *gscale, int w_dtype, int g_dtype, int own, double alpha, double decay,
                    double mu, int kind, int n, double e, double omax, int stream, int nthreads, int masked,
                    int *inexact) {
    md_args A = {nt, w, theta, g, buf, numel, gscale, w_dtype, g_dtype, own, alpha, decay, mu, e, omax,
                 kind, n, stream, 0, NULL, masked, inexact};
#if defined(__AVX512F__)
    third_table table;
    /* e = n + f/3 (3e an integer up to the rounding of 1/(p - 1)) in the float32 power's range */
    if (kind == K_GENERAL && e <= E_F32_MAX && fabs(3.0 * e - nearbyint(3.0 * e)) < 1e-9) {
        int N = (int)nearbyint(3.0 * e);
        if (N % 3) { /* N % 3 == 0 would be an integer e, classified in Python */
            make_third_table(&table);
            A.third = K_THIRD + N;
            A.table = &table;
        }
    }
#endif
    int64_t *starts = chunk_starts(nt, numel);
    if (!starts) return -1;
    int64_t total = starts[nt];
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t c = 0; c < total; c++) {
        int t = find_tensor(starts, nt, c);
        int64_t s = (c - starts[t]) * CHUNK;
        int64_t end = s + CHUNK < numel[t] ? s + CHUNK : numel[t];
        process(&A, t, s, end);
    }
#if defined(__AVX512F__) || defined(__AVX__)
    _mm_sfence();
#endif
    free(starts);
    return 0;
}

int64_t attnopt_count_nonfinite(int nt, const void **g, const int64_t *numel, int g_dtype, int nthreads) {
    int64_t *starts = chunk_starts(nt, numel);
    if (!starts) return -1;
    int64_t total = starts[nt], count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count) num_threads(nthreads)
    for (int64_t c = 0; c < total; c++) {
        int t = find_tensor(starts, nt, c);
        int64_t s = (c - starts[t]) * CHUNK;
        int64_t end = s + CHUNK < numel[t] ? s + CHUNK : numel[t];
        int32_t local = 0;
        if (g_dtype == DT_F32) { /* max of the exponent fields: all ones iff NaN/inf somewhere */
            const uint32_t *x = (const uint32_t *)g[t];
            uint32_t mx = 0;
            for (int64_t i = s; i < end; i++) { uint32_t ex = x[i] & 0x7f800000u; mx = ex > mx ? ex : mx; }
            if (mx == 0x7f800000u)
                for (int64_t i = s; i < end; i++) local += (x[i] & 0x7f800000u) == 0x7f800000u;
        } else {
            const uint16_t *x = (const uint16_t *)g[t];
            uint16_t mx = 0;
            for (int64_t i = s; i < end; i++) { uint16_t ex = x[i] & 0x7f80u; mx = ex > mx ? ex : mx; }
            if (mx == 0x7f80u)
                for (int64_t i = s; i < end; i++) local += (x[i] & 0x7f80u) == 0x7f80u;
        }
        count += local;
    }
    free(starts);
    return count;
}
