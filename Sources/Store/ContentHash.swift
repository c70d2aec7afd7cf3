// ContentHash: incremental SHA-256 (CPosix's sha256.c: the CPU's SHA instructions when it has them), for
// checkpoint files of hundreds of megabytes, hashed as they stream.
import CPosix
import Foundation

public struct ContentHash: Sendable {
    private var ctx = r3_sha256_ctx()

    public init() { r3_sha256_init(&ctx) }

    public mutating func update(_ p: UnsafeRawBufferPointer) {
        if let base = p.baseAddress, p.count > 0 { r3_sha256_update(&ctx, base, UInt64(p.count)) }
    }
    public mutating func update(_ d: Data) { d.withUnsafeBytes { update($0) } }
    public mutating func update(_ a: [UInt8]) { a.withUnsafeBytes { update($0) } }

    /// The 32-byte digest (the hasher is spent).
    public mutating func digest() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        out.withUnsafeMutableBufferPointer { r3_sha256_final(&ctx, $0.baseAddress!) }
        return out
    }

    /// The digest as 64 lowercase hex digits.
    public mutating func hex() -> String { ContentHash.hex(digest()) }

    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8](); out.reserveCapacity(bytes.count * 2)
        for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }

    public static func digest(_ message: [UInt8]) -> [UInt8] { var h = ContentHash(); h.update(message); return h.digest() }
}
