// SHA256: SHA-256 (FIPS 180-4, Store's ContentHash over CPosix's sha256.c) and HMAC-SHA256 (RFC 2104),
// for Standard Webhooks signatures, key ids, signed links and request fingerprints. Tested against the
// FIPS and RFC 4231 vectors, and end to end by the reference `standardwebhooks` library verifying what
// the service sends.
import Store

enum SHA256 {
    /// The digest as 64 lowercase hex digits (on every authenticated request: no String(format:)).
    static func hex(_ message: [UInt8]) -> String { ContentHash.hex(hash(message)) }

    static func hash(_ message: [UInt8]) -> [UInt8] { ContentHash.digest(message) }

    static func hmac(key: [UInt8], message: [UInt8]) -> [UInt8] {
        var k = key.count > 64 ? hash(key) : key
        k += [UInt8](repeating: 0, count: 64 - k.count)
        var inner = ContentHash()
        inner.update(k.map { $0 ^ 0x36 })
        inner.update(message)
        var outer = ContentHash()
        outer.update(k.map { $0 ^ 0x5c })
        outer.update(inner.digest())
        return outer.digest()
    }
}
