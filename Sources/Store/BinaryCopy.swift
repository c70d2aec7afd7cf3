// BinaryCopy: rows in PostgreSQL's binary COPY format (the "PGCOPY" file format of the COPY
// documentation): a signature and header, then per row a field count and each field as a big-endian
// length and its binary send form, then a trailer. Only the types R3 copies are here.
import Foundation

public struct BinaryCopy {
    public private(set) var data = Data()

    /// The file header (signature, flags 0, no extension area).
    public static var header: Data {
        var d = Data([0x50, 0x47, 0x43, 0x4F, 0x50, 0x59, 0x0A, 0xFF, 0x0D, 0x0A, 0x00])   // PGCOPY\n\377\r\n\0
        d.append(contentsOf: [0, 0, 0, 0, 0, 0, 0, 0])
        return d
    }

    /// The file trailer (a field count of -1).
    public static var trailer: Data { Data([0xFF, 0xFF]) }

    public init(fields: Int) { append(UInt16(fields)) }

    private mutating func append<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.bigEndian) { data.append(contentsOf: $0) } }

    public mutating func null() { append(Int32(-1)) }
    public mutating func int2(_ v: Int) { append(Int32(2)); append(Int16(truncatingIfNeeded: v)) }
    public mutating func int4(_ v: Int) { append(Int32(4)); append(Int32(truncatingIfNeeded: v)) }
    public mutating func int8(_ v: Int) { append(Int32(8)); append(Int64(v)) }
    public mutating func float8(_ v: Double?) { guard let v else { return null() }; append(Int32(8)); append(v.bitPattern) }
    public mutating func bool(_ v: Bool) { append(Int32(1)); data.append(v ? 1 : 0) }
    public mutating func text(_ s: String?) { guard let s else { return null() }; let u = Array(s.utf8); append(Int32(u.count)); data.append(contentsOf: u) }
    /// jsonb's binary form: version 1, then the text.
    public mutating func jsonb(_ s: String) { let u = Array(s.utf8); append(Int32(u.count + 1)); data.append(1); data.append(contentsOf: u) }
    public mutating func bytea(_ d: Data?) { guard let d else { return null() }; append(Int32(d.count)); data.append(d) }
    /// Only the length: the caller sends the `count` bytes itself (a large blob is never copied into the row).
    public mutating func byteaLength(_ count: Int) { append(Int32(count)) }
    /// uuid: 16 bytes.
    public mutating func uuid(_ u: UUID) { append(Int32(16)); withUnsafeBytes(of: u.uuid) { data.append(contentsOf: $0) } }
    /// timestamptz: microseconds since 2000-01-01 00:00 UTC.
    public mutating func timestamptz(microsecondsSince2000 v: Int64) { append(Int32(8)); append(v) }
    /// integer[] (one dimension, lower bound 1, no nulls; an empty array has no dimensions).
    public mutating func int4Array<S: Collection>(_ xs: S?) where S.Element: BinaryInteger {
        guard let xs else { return null() }
        let v = BinaryCopy.int4ArrayValue(xs)
        append(Int32(v.count)); data.append(v)
    }

    /// integer[]'s binary send form (what array_recv reads), without the length: also a binary bind
    /// parameter (`SQL`'s `int4Array:`), so that 32K token ids are neither formatted nor parsed as text.
    public static func int4ArrayValue<S: Collection>(_ xs: S) -> Data where S.Element: BinaryInteger {
        let n = xs.count
        var d = Data(count: n == 0 ? 12 : 20 + 8 * n)
        d.withUnsafeMutableBytes { raw in
            func put(_ v: Int32, _ at: Int) { raw.storeBytes(of: v.bigEndian, toByteOffset: at, as: Int32.self) }
            put(n == 0 ? 0 : 1, 0); put(0, 4); put(23, 8)   // ndim, has nulls, int4's oid
            guard n > 0 else { return }
            put(Int32(n), 12); put(1, 16)                    // length, lower bound
            for (i, x) in xs.enumerated() { put(4, 20 + 8 * i); put(Int32(truncatingIfNeeded: x), 24 + 8 * i) }
        }
        return d
    }
}
