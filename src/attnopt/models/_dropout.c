/* Counter-based dropout for the encoder on CPU (attnopt.models.dropout).
 *
 * Element i of a tensor is kept when its 32-bit random number u_i >= thr (keep probability
 * 1 - thr / 2^32) and then scaled by `scale` = 1 / (1 - p).  The numbers come from a
 * counter-based generator, SplitMix64's output function applied to seed + (j + 1) * golden:
 * u_2j is the low and u_2j+1 the high half of word j.  So the mask is a pure function of
 * (seed, i): every thread count gives the same mask, and the backward pass recomputes it
 * instead of storing it (dropout is linear: dx = mask * scale * dy is this same call on dy).
 * The Python module holds a NumPy-free torch reference of the same arithmetic for the tests.
 */
#include <stdint.h>

#define GOLDEN 0x9e3779b97f4a7c15ULL

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

#define BLOCK 2048 /* words per block: 4096 elements, 16 KB of numbers on the stack */

/* y[i] = keep(i) ? x[i] * scale : 0 for i < n (x and y may be the same array).  Per block,
 * one loop hashes the words and one reads them as 32-bit halves (little-endian: the low half
 * of word j is element 2j's number); both vectorise. */
void attnopt_dropout_f32(const float *x, float *y, int64_t n, uint64_t seed, uint32_t thr, float scale,
                         int threads) {
    const int64_t blocks = (n + 2 * BLOCK - 1) / (2 * BLOCK);
    if (n < 65536) threads = 1;  /* below that a thread team costs more than it saves */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
        uint64_t words[BLOCK];
        const int64_t first = b * BLOCK;
        for (int64_t j = 0; j < BLOCK; ++j)
            words[j] = mix64(seed + (uint64_t)(first + j + 1) * GOLDEN);
        const uint32_t *u = (const uint32_t *)words;
        const int64_t i0 = 2 * first, m = (n - i0 < 2 * BLOCK) ? n - i0 : 2 * BLOCK;
        const float *xs = x + i0;
        float *ys = y + i0;
        for (int64_t i = 0; i < m; ++i)
            ys[i] = u[i] >= thr ? xs[i] * scale : 0.0f;
    }
}
