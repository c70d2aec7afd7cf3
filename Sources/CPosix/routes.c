// Route kernels (see include/cposix.h): the passes over a rollout's expert ids at ingest. Each has a
// portable twin here and a Swift reference in the tests (RouteKernelTests) that they are compared with.
#include "cposix.h"
#include <string.h>

// MARK: int32 → uint8

static uint64_t narrow_portable(const uint8_t *src, uint64_t n, uint8_t *dst) {
    for (uint64_t i = 0; i < n; i++) {
        int32_t v;
        memcpy(&v, src + 4 * i, 4);
        if ((uint32_t)(v + 1) > 255u) return i;   // outside [-1, 254]
        dst[i] = (uint8_t)v;
    }
    return n;
}

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx2")))
static uint64_t narrow_avx2(const uint8_t *src, uint64_t n, uint8_t *dst) {
    const __m256i one = _mm256_set1_epi32(1), high = _mm256_set1_epi32((int)0xFFFFFF00u), low = _mm256_set1_epi32(0xFF);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    uint64_t i = 0;
    while (i + 32 <= n) {
        const __m256i a = _mm256_loadu_si256((const __m256i *)(src + 4 * i));
        const __m256i b = _mm256_loadu_si256((const __m256i *)(src + 4 * i + 32));
        const __m256i c = _mm256_loadu_si256((const __m256i *)(src + 4 * i + 64));
        const __m256i d = _mm256_loadu_si256((const __m256i *)(src + 4 * i + 96));
        // v + 1 in [0, 255] for every lane ⇔ v in [-1, 254]
        const __m256i any = _mm256_or_si256(_mm256_or_si256(_mm256_add_epi32(a, one), _mm256_add_epi32(b, one)),
                                            _mm256_or_si256(_mm256_add_epi32(c, one), _mm256_add_epi32(d, one)));
        if (!_mm256_testz_si256(any, high)) break;   // the scalar loop finds the exact place
        // low bytes (-1 → 0xFF), packed without saturation, lanes put back in order
        const __m256i ab = _mm256_packus_epi32(_mm256_and_si256(a, low), _mm256_and_si256(b, low));
        const __m256i cd = _mm256_packus_epi32(_mm256_and_si256(c, low), _mm256_and_si256(d, low));
        const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), order);
        _mm256_storeu_si256((__m256i *)(dst + i), bytes);
        i += 32;
    }
    return i + narrow_portable(src + 4 * i, n - i, dst + i);
}

// Rows of 8 ids, 4 rows per 32 bytes, every layer MoE: each row is all 0xFF (missing) or 8 distinct ids < E.
__attribute__((target("avx2")))
static int check8_avx2(const uint8_t *src, uint64_t bytes, uint32_t E, uint64_t *done) {
    const __m256i ones = _mm256_set1_epi8((char)0xFF), limit = _mm256_set1_epi8((char)(E - 1));
    __m256i rot[7];
    for (int r = 1; r < 8; r++) {
        char idx[32];
        for (int j = 0; j < 32; j++) idx[j] = (char)((j & ~7) % 16 + ((j & 7) + r) % 8);
        rot[r - 1] = _mm256_loadu_si256((const __m256i *)idx);
    }
    uint64_t i = 0;
    while (i + 32 <= bytes) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(src + i));
        const __m256i missing = _mm256_cmpeq_epi64(v, ones);                                   // whole rows of 0xFF
        __m256i bad = _mm256_andnot_si256(_mm256_cmpeq_epi8(_mm256_max_epu8(v, limit), limit), ones);   // id > E - 1
        for (int r = 0; r < 7; r++) bad = _mm256_or_si256(bad, _mm256_cmpeq_epi8(v, _mm256_shuffle_epi8(v, rot[r])));
        if (!_mm256_testz_si256(bad, _mm256_andnot_si256(missing, ones))) return 0;
        i += 32;
    }
    *done = i;
    return 1;
}
#endif

uint64_t r3_narrow_i32_u8(const void *src, uint64_t n, uint8_t *dst) {
#if defined(__x86_64__)
    if (r3_has_avx2()) return narrow_avx2((const uint8_t *)src, n, dst);
#endif
    return narrow_portable((const uint8_t *)src, n, dst);
}

// MARK: checking and packing uint8 routes

static int row_ok(const uint8_t *p, uint32_t K, uint32_t E) {
    if (p[0] == 0xFF) {
        for (uint32_t j = 1; j < K; j++) if (p[j] != 0xFF) return 0;
        return 1;
    }
    uint64_t seen[4] = {0, 0, 0, 0};
    for (uint32_t j = 0; j < K; j++) {
        const uint8_t e = p[j];
        if (e >= E) return 0;                       // 0xFF too (E ≤ 255): a partly missing row
        const uint64_t bit = 1ull << (e & 63);
        if (seen[e >> 6] & bit) return 0;
        seen[e >> 6] |= bit;
    }
    return 1;
}

int r3_routes_pack_u8(const uint8_t *src, uint64_t rows, uint32_t L, uint32_t K, uint32_t E,
                      const int32_t *moe, uint32_t nmoe, const int32_t *dense, uint32_t ndense, uint8_t *dst) {
    if (E == 0 || E > 255 || K == 0 || K > E) return 0;
    uint64_t t0 = 0;
#if defined(__x86_64__)
    if (dst == 0 && ndense == 0 && nmoe == L && K == 8 && r3_has_avx2()) {
        uint64_t done = 0;
        if (!check8_avx2(src, rows * L * 8, E, &done)) return 0;
        t0 = done / (8ull * L);                      // whole token rows checked; the loop below does the rest
    }
#endif
    uint64_t o = t0 * nmoe * K;
    for (uint64_t t = t0; t < rows; t++) {
        const uint8_t *row = src + t * L * K;
        for (uint32_t i = 0; i < ndense; i++) {
            const uint8_t *p = row + (uint64_t)dense[i] * K, first = p[0];
            if (first != 0 && first != 0xFF) return 0;
            for (uint32_t j = 1; j < K; j++) if (p[j] != first) return 0;
        }
        for (uint32_t i = 0; i < nmoe; i++) {
            const uint8_t *p = row + (uint64_t)moe[i] * K;
            if (!row_ok(p, K, E)) return 0;
            if (dst) memcpy(dst + o, p, K);
            o += K;
        }
    }
    return 1;
}

// MARK: expert load

int64_t r3_routes_histogram(const uint8_t *src, uint64_t rows, uint32_t L, uint32_t K, uint32_t E, uint32_t width,
                            int32_t *counts, uint8_t *missing) {
    if (width == 1 && K == 8 && E <= 255) {
        // top-8 in one 64-bit load per row: no load from the routes between the counters' stores
        for (uint64_t t = 0; t < rows; t++) {
            const uint8_t *row = src + t * L * 8;
            uint8_t rowMissing = 0;
            for (uint32_t l = 0; l < L; l++) {
                uint64_t w;
                memcpy(&w, row + 8ull * l, 8);
                if ((w & 0xFF) == 0xFF) { rowMissing = 1; continue; }
                int32_t *c = counts + (uint64_t)l * E;
                for (int j = 0; j < 8; j++) {
                    const uint32_t e = (uint32_t)(w >> (8 * j)) & 0xFF;
                    if (e >= E) return e;
                    c[e]++;
                }
            }
            missing[t] = rowMissing;
        }
        return -1;
    }
    if (width == 1) {
        const int marker = E == 256 ? -1 : 0xFF;   // with 256 experts 0xFF is expert 255
        for (uint64_t t = 0; t < rows; t++) {
            const uint8_t *row = src + t * L * K;
            uint8_t rowMissing = 0;
            for (uint32_t l = 0; l < L; l++) {
                const uint8_t *p = row + (uint64_t)l * K;
                if ((int)p[0] == marker) { rowMissing = 1; continue; }
                int32_t *c = counts + (uint64_t)l * E;
                for (uint32_t j = 0; j < K; j++) {
                    if (p[j] >= E) return p[j];
                    c[p[j]]++;
                }
            }
            missing[t] = rowMissing;
        }
        return -1;
    }
    for (uint64_t t = 0; t < rows; t++) {
        const uint8_t *row = src + 2 * t * L * K;
        uint8_t rowMissing = 0;
        for (uint32_t l = 0; l < L; l++) {
            const uint8_t *p = row + 2ull * l * K;
            if ((p[0] | p[1] << 8) == 0xFFFF) { rowMissing = 1; continue; }
            int32_t *c = counts + (uint64_t)l * E;
            for (uint32_t j = 0; j < K; j++) {
                const uint32_t e = p[2 * j] | (uint32_t)p[2 * j + 1] << 8;
                if (e >= E) return e;
                c[e]++;
            }
        }
        missing[t] = rowMissing;
    }
    return -1;
}
