// The C kernels on a CPU without the x86 instructions: test_portability.py cross-compiles this with
// CPosix for aarch64 and runs it under qemu. SHA-256 and CRC-32C take their portable paths, base64
// bulk decoding leaves everything to the scalar decoder, JSON scanning runs its scalar loop, and the route
// kernels (routes.c) their portable loops.
#include "cposix.h"
#include <stdio.h>
#include <string.h>

static int check(int ok, const char *what) { if (!ok) printf("FAILED: %s\n", what); return ok; }

static int sha(const void *data, uint64_t n, int pieces, const char *want) {
    r3_sha256_ctx c; uint8_t d[32]; char h[65];
    r3_sha256_init(&c);
    uint64_t step = n / (uint64_t)pieces + 1;
    for (uint64_t off = 0; off < n; off += step) r3_sha256_update(&c, (const uint8_t *)data + off, off + step > n ? n - off : step);
    r3_sha256_final(&c, d);
    for (int i = 0; i < 32; i++) sprintf(h + 2 * i, "%02x", d[i]);
    return strcmp(h, want) == 0;
}

int main(void) {
    static uint8_t a[1000000];
    memset(a, 'a', sizeof a);
    int ok = 1;
    ok &= check(sha("abc", 3, 1, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"), "sha256 abc");
    ok &= check(sha("", 0, 1, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"), "sha256 empty");
    ok &= check(sha(a, sizeof a, 7, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"), "sha256 million a, in pieces");
    ok &= check(r3_sha256_has_shani() == 0, "no SHA extensions off x86");
    ok &= check(r3_crc32c(0, "123456789", 9) == 0xE3069283u, "crc32c check value");
    ok &= check(r3_crc32c(r3_crc32c(0, "1234", 4), "56789", 5) == 0xE3069283u, "crc32c running value");
    ok &= check(r3_crc32(0, "123456789", 9) == 0xCBF43926u, "crc32 check value");
    uint8_t out[64]; uint64_t written = 99;
    const char *b64 = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2";
    ok &= check(r3_base64_decode_bulk((const uint8_t *)b64, strlen(b64), out, sizeof out, &written) == 0 && written == 0, "base64 bulk defers to the scalar decoder");
    const char *json = "plain text then a quote\" and more";
    ok &= check(r3_json_plain_run((const uint8_t *)json, strlen(json)) == 23, "json plain run");
    uint8_t enc[8];
    ok &= check(r3_base64_encode((const uint8_t *)"abc", 3, enc) == 4 && memcmp(enc, "YWJj", 4) == 0, "base64 encode");
    const int32_t ids[6] = {3, -1, 254, 0, 255, 7};
    uint8_t narrow[6];
    ok &= check(r3_narrow_i32_u8(ids, 6, narrow) == 4 && memcmp(narrow, "\x03\xff\xfe\x00", 4) == 0, "narrowing stops before 255");
    const uint8_t rows[16] = {1, 2, 3, 4, 5, 6, 7, 8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
    const int32_t moe[1] = {0};
    uint8_t dup[16];
    memcpy(dup, rows, 16); dup[3] = 1;
    ok &= check(r3_routes_pack_u8(rows, 2, 1, 8, 16, moe, 1, 0, 0, 0) == 1 && r3_routes_pack_u8(dup, 2, 1, 8, 16, moe, 1, 0, 0, 0) == 0,
                "route rows checked, a repeat refused");
    int32_t counts[16] = {0}; uint8_t missing[2];
    ok &= check(r3_routes_histogram(rows, 2, 1, 8, 16, 1, counts, missing) == -1 && counts[1] == 1 && counts[0] == 0 && missing[0] == 0 && missing[1] == 1,
                "expert histogram");
    printf(ok ? "aarch64 kernels: ok\n" : "aarch64 kernels: FAILED\n");
    return ok ? 0 : 1;
}
