#define _GNU_SOURCE 1
// CPosix: see include/cposix.h.
#include "cposix.h"
#include <pthread.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>


int r3_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int r3_epoll_ctl(int epfd, int op, int fd, uint32_t events) {
    struct epoll_event ev = {0};
    ev.events = events;
    ev.data.fd = fd;
    int o = op == 0 ? EPOLL_CTL_ADD : op == 1 ? EPOLL_CTL_MOD : EPOLL_CTL_DEL;
    return epoll_ctl(epfd, o, fd, &ev);
}

int r3_epoll_wait(int epfd, int32_t *fds, uint32_t *events, int max, int timeout_ms) {
    struct epoll_event evs[256];
    if (max > 256) max = 256;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    for (int i = 0; i < n; i++) { fds[i] = evs[i].data.fd; events[i] = evs[i].events; }
    return n;
}

int r3_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

int r3_set_nodelay(int fd) {
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int r3_tcp_socket(void) { return socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0); }

int r3_accept(int fd) { return accept4(fd, 0, 0, SOCK_NONBLOCK | SOCK_CLOEXEC); }

static uint32_t crc32c_portable(uint32_t crc, const unsigned char *p, uint64_t n) {
    static uint32_t table[256];
    static int ready = 0;
    if (!__atomic_load_n(&ready, __ATOMIC_ACQUIRE)) {   // threads racing here write the same values
        for (uint32_t i = 0; i < 256; i++) { uint32_t c = i; for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1; table[i] = c; }
        __atomic_store_n(&ready, 1, __ATOMIC_RELEASE);
    }
    uint32_t c = ~crc;
    while (n--) c = table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const unsigned char *p, uint64_t n) {
    uint64_t c = ~crc;
    while (n >= 8) { uint64_t v; __builtin_memcpy(&v, p, 8); c = __builtin_ia32_crc32di(c, v); p += 8; n -= 8; }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

#if defined(__x86_64__)
// The CRC of A‖B from crc(A), crc(B) and B's length (the CRCs finished, with their pre- and post-inversion):
// crc(A) carried through len(B) zero bytes, XOR crc(B). Carrying a register through zero bits is linear
// over GF(2): a 32 × 32 bit matrix (column i: where register bit i goes), squared to get 2, 4, 8 … bits.
static uint32_t gf2_apply(const uint32_t *m, uint32_t v) {
    uint32_t s = 0;
    for (int i = 0; v; i++, v >>= 1) if (v & 1) s ^= m[i];
    return s;
}
static void gf2_square(uint32_t *out, const uint32_t *m) { for (int i = 0; i < 32; i++) out[i] = gf2_apply(m, m[i]); }

static uint32_t crc32c_combine(uint32_t crcA, uint32_t crcB, uint64_t lenB) {
    uint32_t op[32], sq[32];
    op[0] = 0x82F63B78u;   // one zero bit: the reflected register shifts right; bit 0 falls out as the polynomial
    for (int i = 1; i < 32; i++) op[i] = 1u << (i - 1);
    gf2_square(sq, op); gf2_square(op, sq); gf2_square(sq, op);   // 2, 4, 8 bits: one zero byte, in sq
    uint32_t v = crcA;
    for (;;) {   // sq is the operator for 2^k zero bytes at step k
        if (lenB & 1) v = gf2_apply(sq, v);
        lenB >>= 1;
        if (!lenB) break;
        gf2_square(op, sq);
        for (int i = 0; i < 32; i++) sq[i] = op[i];
    }
    return v ^ crcB;
}

// Three independent CRCs over thirds of the buffer in one loop: the crc32 instruction has a latency of three
// cycles and a throughput of one, so one chain runs at a third of the speed the unit can. The thirds are
// joined with crc32c_combine (two combines, some 10–20 µs per call).
__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42_3way(uint32_t crc, const unsigned char *p, uint64_t n) {
    const uint64_t part = (n / 3) & ~(uint64_t)7;
    const unsigned char *pb = p + part, *pc = p + 2 * part;
    uint64_t a = (uint32_t)~crc, b = 0xFFFFFFFFu, c = 0xFFFFFFFFu;
    for (uint64_t i = 0; i < part; i += 8) {
        uint64_t va, vb, vc;
        __builtin_memcpy(&va, p + i, 8); __builtin_memcpy(&vb, pb + i, 8); __builtin_memcpy(&vc, pc + i, 8);
        a = __builtin_ia32_crc32di(a, va); b = __builtin_ia32_crc32di(b, vb); c = __builtin_ia32_crc32di(c, vc);
    }
    const uint32_t crcC = crc32c_sse42(~(uint32_t)c, pc + part, n - 3 * part);   // the third runs on over the tail
    return crc32c_combine(crc32c_combine(~(uint32_t)a, ~(uint32_t)b, part), crcC, n - 2 * part);
}
#endif

uint32_t r3_crc32c(uint32_t crc, const void *data, uint64_t n) {
#if defined(__x86_64__)
    static int sse42 = -1;
    if (sse42 < 0) { __builtin_cpu_init(); sse42 = __builtin_cpu_supports("sse4.2") ? 1 : 0; }
    // joining the thirds costs two combines (some 20–40k cycles): worth it from a few hundred KB
    if (sse42) return n >= 256 * 1024 ? crc32c_sse42_3way(crc, data, n) : crc32c_sse42(crc, data, n);
#endif
    return crc32c_portable(crc, data, n);
}

// MARK: base64 and JSON scanning. Each has a scalar twin in Swift that the tests compare it with.
#if defined(__x86_64__)
#include <immintrin.h>

int r3_has_avx2(void) {
    static int cached = -1;
    if (cached < 0) { __builtin_cpu_init(); cached = __builtin_cpu_supports("avx2") ? 1 : 0; }
    return cached;
}

__attribute__((target("avx2")))
static uint64_t base64_avx2(const uint8_t *src, uint64_t n, uint8_t *dst, uint64_t room, uint64_t *written) {
    // Per character, two nibble lookups flag bytes outside the alphabet (their AND is non-zero); a third,
    // indexed by the high nibble (and by '/' itself), gives the offset that maps the character to its 6 bits.
    const __m256i lut_lo = _mm256_setr_epi8(0x15, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x13, 0x1A, 0x1B, 0x1B, 0x1B, 0x1A,
                                            0x15, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x13, 0x1A, 0x1B, 0x1B, 0x1B, 0x1A);
    const __m256i lut_hi = _mm256_setr_epi8(0x10, 0x10, 0x01, 0x02, 0x04, 0x08, 0x04, 0x08, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,
                                            0x10, 0x10, 0x01, 0x02, 0x04, 0x08, 0x04, 0x08, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10);
    const __m256i lut_roll = _mm256_setr_epi8(0, 16, 19, 4, -65, -65, -71, -71, 0, 0, 0, 0, 0, 0, 0, 0,
                                              0, 16, 19, 4, -65, -65, -71, -71, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m256i mask_2f = _mm256_set1_epi8(0x2f);
    const __m256i pack = _mm256_setr_epi8(2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1,
                                          2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 4, 5, 6, -1, -1);
    uint64_t i = 0, o = 0;
    while (i + 32 <= n && o + 32 <= room) {
        __m256i str = _mm256_loadu_si256((const __m256i *)(src + i));
        const __m256i hi_nibbles = _mm256_and_si256(_mm256_srli_epi32(str, 4), mask_2f);
        const __m256i lo_nibbles = _mm256_and_si256(str, mask_2f);
        const __m256i hi = _mm256_shuffle_epi8(lut_hi, hi_nibbles);
        const __m256i lo = _mm256_shuffle_epi8(lut_lo, lo_nibbles);
        if (!_mm256_testz_si256(lo, hi)) break;          // '=' or a byte outside the alphabet: the scalar path
        const __m256i eq_2f = _mm256_cmpeq_epi8(str, mask_2f);
        str = _mm256_add_epi8(str, _mm256_shuffle_epi8(lut_roll, _mm256_add_epi8(eq_2f, hi_nibbles)));
        // four 6-bit values → 24 bits per 32-bit lane, then the 3 bytes of each lane together
        const __m256i ab = _mm256_maddubs_epi16(str, _mm256_set1_epi32(0x01400140));
        __m256i out = _mm256_madd_epi16(ab, _mm256_set1_epi32(0x00011000));
        out = _mm256_shuffle_epi8(out, pack);
        out = _mm256_permutevar8x32_epi32(out, lanes);
        _mm256_storeu_si256((__m256i *)(dst + o), out);   // 24 bytes of data; the room check covers all 32
        i += 32; o += 24;
    }
    *written = o;
    return i;
}

__attribute__((target("avx2")))
static uint64_t plain_avx2(const uint8_t *p, uint64_t n) {
    const __m256i quote = _mm256_set1_epi8('"'), backslash = _mm256_set1_epi8('\\'), ctl = _mm256_set1_epi8(0x1f);
    uint64_t i = 0;
    while (i + 32 <= n) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(p + i));
        const __m256i control = _mm256_cmpeq_epi8(_mm256_max_epu8(v, ctl), ctl);   // v <= 0x1f
        const __m256i hit = _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(v, quote), _mm256_cmpeq_epi8(v, backslash)), control);
        const unsigned mask = (unsigned)_mm256_movemask_epi8(hit);
        if (mask) return i + (uint64_t)__builtin_ctz(mask);
        i += 32;
    }
    while (i < n) { const uint8_t c = p[i]; if (c == '"' || c == '\\' || c < 0x20) return i; i++; }
    return n;
}
#endif

uint64_t r3_base64_decode_bulk(const uint8_t *src, uint64_t n, uint8_t *dst, uint64_t room, uint64_t *written) {
#if defined(__x86_64__)
    if (r3_has_avx2()) return base64_avx2(src, n, dst, room, written);
#endif
    *written = 0;
    return 0;
}

uint64_t r3_json_plain_run(const uint8_t *p, uint64_t n) {
#if defined(__x86_64__)
    if (r3_has_avx2()) return plain_avx2(p, n);
#endif
    uint64_t i = 0;
    while (i < n) { const uint8_t c = p[i]; if (c == '"' || c == '\\' || c < 0x20) return i; i++; }
    return n;
}

// MARK: CRC-32 (IEEE) by slicing 8 bytes at a time, and base64 encoding.
static uint32_t crc_tables[8][256];
static int crc_ready = 0;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_tables[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++) crc_tables[t][i] = (crc_tables[t - 1][i] >> 8) ^ crc_tables[0][crc_tables[t - 1][i] & 0xFF];
    __atomic_store_n(&crc_ready, 1, __ATOMIC_RELEASE);
}

uint32_t r3_crc32(uint32_t crc, const void *data, uint64_t n) {
    if (!__atomic_load_n(&crc_ready, __ATOMIC_ACQUIRE)) crc_init();   // idempotent: racing threads write the same tables
    const unsigned char *p = data;
    uint32_t c = ~crc;
    while (n >= 8) {
        uint32_t lo, hi;
        __builtin_memcpy(&lo, p, 4); __builtin_memcpy(&hi, p + 4, 4);
        lo ^= c;
        c = crc_tables[7][lo & 0xFF] ^ crc_tables[6][(lo >> 8) & 0xFF] ^ crc_tables[5][(lo >> 16) & 0xFF] ^ crc_tables[4][lo >> 24] ^
            crc_tables[3][hi & 0xFF] ^ crc_tables[2][(hi >> 8) & 0xFF] ^ crc_tables[1][(hi >> 16) & 0xFF] ^ crc_tables[0][hi >> 24];
        p += 8; n -= 8;
    }
    while (n--) c = crc_tables[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return ~c;
}

uint64_t r3_base64_encode(const uint8_t *src, uint64_t n, uint8_t *dst) {
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint64_t i = 0, o = 0;
    while (i + 3 <= n) {
        const uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8 | src[i + 2];
        dst[o] = alphabet[v >> 18]; dst[o + 1] = alphabet[(v >> 12) & 63]; dst[o + 2] = alphabet[(v >> 6) & 63]; dst[o + 3] = alphabet[v & 63];
        i += 3; o += 4;
    }
    if (i < n) {
        const uint32_t v = (uint32_t)src[i] << 16 | (i + 1 < n ? (uint32_t)src[i + 1] << 8 : 0);
        dst[o] = alphabet[v >> 18]; dst[o + 1] = alphabet[(v >> 12) & 63];
        dst[o + 2] = i + 1 < n ? alphabet[(v >> 6) & 63] : '='; dst[o + 3] = '=';
        o += 4;
    }
    return o;
}

/* Set while the HTTP event loop runs an inline responder: code that would block (a database call)
   checks it and declines, so the request goes to a worker instead. */
void r3_name_this_thread(const char *name) {
    char n[16];
    strncpy(n, name, 15); n[15] = 0;   // the kernel keeps 15 bytes
    pthread_setname_np(pthread_self(), n);
}

static __thread int r3_inline_context;
void r3_set_inline_context(int on) { r3_inline_context = on; }
int r3_in_inline_context(void) { return r3_inline_context; }
