// CPosix: the Linux calls Swift's Glibc module does not export (epoll, eventfd), as small C functions
// that avoid the packed epoll_event struct; and the byte loops that want CPU instructions (CRC-32C,
// base64, JSON scanning, SHA-256), each with a portable path for CPUs (and architectures) without them.
#ifndef R3_CPOSIX_H
#define R3_CPOSIX_H
#include <stdint.h>

/// A hint to fetch the cache line at `p` for reading (never faults): the bf16 decode kernels stream
/// weights with it, one block ahead of the rows they multiply.
static inline void r3_prefetch(const void *p) { __builtin_prefetch(p, 0, 0); }

enum { R3_EPOLLIN = 0x001, R3_EPOLLOUT = 0x004, R3_EPOLLERR = 0x008, R3_EPOLLHUP = 0x010, R3_EPOLLRDHUP = 0x2000 };

int r3_epoll_create(void);
/// op: 0 add, 1 modify, 2 delete. Returns 0 or -1 (errno set).
int r3_epoll_ctl(int epfd, int op, int fd, uint32_t events);
/// Waits; fills fds[i] and events[i]; returns the count or -1 (errno set).
int r3_epoll_wait(int epfd, int32_t *fds, uint32_t *events, int max, int timeout_ms);
int r3_eventfd(void);
/// Names the calling thread for the kernel (ps, top, perf, /proc/…/comm), at most 15 bytes. Foundation's
/// Thread.name reaches the kernel only when the thread's handle is already stored, which races with
/// the thread's start: a thread could keep its creator's name.
void r3_name_this_thread(const char *name);
/* the HTTP loop thread running an inline responder (see cposix.c) */
void r3_set_inline_context(int on);
int r3_in_inline_context(void);
int r3_set_nodelay(int fd);
/// A non-blocking, close-on-exec IPv4 TCP socket.
int r3_tcp_socket(void);
/// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC.
int r3_accept(int fd);
/// CRC-32C (Castagnoli), with the SSE4.2 crc32 instruction when the CPU has it: `crc` is the running value (start with 0).
uint32_t r3_crc32c(uint32_t crc, const void *data, uint64_t n);
/// Bulk base64 decoding (Muła & Lemire's AVX2 method, 32 characters to 24 bytes a step) of the
/// leading part of `src` that it can decode without care: it stops before padding, before a byte
/// outside the alphabet, when fewer than 32 characters are left, or when `dst` has under 32 bytes of
/// room. Returns the characters consumed (a multiple of 32) and sets *written; the caller's scalar
/// decoder does the rest and reports errors. Without AVX2 it consumes nothing.
uint64_t r3_base64_decode_bulk(const uint8_t *src, uint64_t n, uint8_t *dst, uint64_t room, uint64_t *written);
/// The length of the leading run of `p` that a JSON string reader can pass on as it is: no '"', no
/// '\\' and no control character below 0x20 (AVX2, 32 bytes a step, with a scalar tail).
uint64_t r3_json_plain_run(const uint8_t *p, uint64_t n);
/// CRC-32 (IEEE 802.3, the ZIP and PNG checksum; slicing by 8): `crc` is the running value (start with 0).
uint32_t r3_crc32(uint32_t crc, const void *data, uint64_t n);
/// Standard padded base64 of n bytes into dst, which must hold 4 * ((n + 2) / 3) bytes; returns that count.
uint64_t r3_base64_encode(const uint8_t *src, uint64_t n, uint8_t *dst);
/// 1 when the CPU has AVX2 (asked once), for the kernels that have an AVX2 path.
int r3_has_avx2(void);
/// Route kernels (routes.c). Little-endian int32 ids to one byte each while every id is in [-1, 254]
/// (-1 → 0xFF): returns how many were converted, stopping before the first id outside that range.
uint64_t r3_narrow_i32_u8(const void *src, uint64_t n, uint8_t *dst);
/// Checks uint8 routes [rows, L, K] of E ≤ 255 experts: each MoE layer's row (hidden index moe[i]) is all
/// 0xFF (missing) or K distinct ids below E, each dense layer's row all 0 or all 0xFF. Copies the MoE rows
/// to dst in order, unless dst is NULL. Returns 1, or 0 at the first problem (the caller names it).
int r3_routes_pack_u8(const uint8_t *src, uint64_t rows, uint32_t L, uint32_t K, uint32_t E,
                      const int32_t *moe, uint32_t nmoe, const int32_t *dense, uint32_t ndense, uint8_t *dst);
/// Adds packed routes [rows, L, K] (width 1 or 2 bytes per id) to counts[L * E] per (layer, expert),
/// skipping missing rows (0xFF / 0xFFFF, except with width 1 and 256 experts), and sets missing[t] to 1
/// for a row missing in some layer, else 0. Returns -1, or the first id ≥ E it met (counts are then partial).
int64_t r3_routes_histogram(const uint8_t *src, uint64_t rows, uint32_t L, uint32_t K, uint32_t E, uint32_t width,
                            int32_t *counts, uint8_t *missing);
/// SHA-256, incremental (sha256.c): SHA extensions when the CPU has them, else portable C.
typedef struct { uint32_t h[8]; uint64_t length; uint8_t buffer[64]; uint64_t buffered; } r3_sha256_ctx;
void r3_sha256_init(r3_sha256_ctx *c);
void r3_sha256_update(r3_sha256_ctx *c, const void *data, uint64_t n);
void r3_sha256_final(r3_sha256_ctx *c, uint8_t out[32]);
/// The compression functions themselves, for the tests that compare them (n blocks of 64 bytes).
void r3_sha256_blocks_portable(uint32_t h[8], const uint8_t *p, uint64_t n);
void r3_sha256_blocks_shani(uint32_t h[8], const uint8_t *p, uint64_t n);
int r3_sha256_has_shani(void);
#endif
