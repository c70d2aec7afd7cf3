// PackedRoutes: the stored form: one byte per expert id when the experts fit in uint8 (with 0xFF free
// for "missing"), else two (uint16 little-endian): at most a quarter of int32. CRC-32C guards the bytes.
import CPosix
import Foundation

public struct PackedRoutes: Sendable, Equatable {
    public var rows: Int
    public var layers: Int
    public var topK: Int
    public var numExperts: Int
    /// 1 (uint8) or 2 (uint16 little-endian).
    public var width: Int
    public var bytes: Data
    public var checksum: UInt32

    /// Packs validated routes; uint8 when every id and the missing marker fit in a byte.
    public init(_ r: RouteArray, numExperts: Int) throws {
        try r.validate(numExperts: numExperts)
        let narrow = numExperts <= 255 || (numExperts == 256 && r.missingRows == 0)
        let dtype: IntDType = narrow ? .uint8 : .uint16
        rows = r.rows; layers = r.layers; topK = r.topK; self.numExperts = numExperts
        width = dtype.size
        bytes = try dtype.encode(r.ids, numExperts: numExperts)
        checksum = CRC32C.checksum(bytes)
    }

    public init(rows: Int, layers: Int, topK: Int, numExperts: Int, width: Int, bytes: Data, checksum: UInt32) {
        self.rows = rows; self.layers = layers; self.topK = topK; self.numExperts = numExperts
        self.width = width; self.bytes = bytes; self.checksum = checksum
    }

    /// Unpacks, verifying size and checksum (a corrupted blob is an error, never silently wrong routes).
    public func unpack() throws -> RouteArray {
        guard width == 1 || width == 2 else { throw RoutesError.malformed("stored routes width \(width) is not 1 or 2") }
        guard CRC32C.checksum(bytes) == checksum else { throw RoutesError.malformed("stored routes fail their checksum") }
        let dtype: IntDType = width == 1 ? .uint8 : .uint16
        return try RouteArray(rows: rows, layers: layers, topK: topK, ids: dtype.decode(bytes, count: rows * layers * topK, numExperts: numExperts))
    }
}

extension PackedRoutes {
    /// The ids as little-endian `dtype` bytes straight from the packed form (one pass, no [Int32] in
    /// between), verifying the checksum; nil for combinations the general path handles.
    public func encoded(as dtype: IntDType) throws -> Data? {
        guard dtype == .int32 || (dtype == .int16 && numExperts <= Int(Int16.max) + 1) else { return nil }
        guard CRC32C.checksum(bytes) == checksum else { throw RoutesError.malformed("stored routes fail their checksum") }
        let n = rows * layers * topK
        guard bytes.count == n * width else { throw RoutesError.malformed("stored routes have \(bytes.count) bytes for \(n) ids") }
        let missing = width == 1 ? 0xFF : 0xFFFF
        let sentinel = missing >= numExperts   // all-ones means -1 only when it is not an expert id
        var out = Data(count: n * dtype.size)
        bytes.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                switch (width, dtype) {
                case (1, .int32):
                    let d = dst.bindMemory(to: Int32.self)
                    for i in 0..<n { let v = Int32(src[i]); d[i] = (sentinel && v == 0xFF ? -1 : v).littleEndian }
                case (1, _):
                    let d = dst.bindMemory(to: Int16.self)
                    for i in 0..<n { let v = Int16(src[i]); d[i] = (sentinel && v == 0xFF ? -1 : v).littleEndian }
                case (_, .int32):
                    let d = dst.bindMemory(to: Int32.self)
                    for i in 0..<n {
                        let v = Int32(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                        d[i] = (sentinel && v == 0xFFFF ? -1 : v).littleEndian
                    }
                default:
                    let d = dst.bindMemory(to: Int16.self)
                    for i in 0..<n {
                        let v = Int32(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                        d[i] = Int16(truncatingIfNeeded: sentinel && v == 0xFFFF ? -1 : v).littleEndian
                    }
                }
            }
        }
        return out
    }
}

/// CRC-32C (Castagnoli): the SSE4.2 instruction, with a table-driven reference twin for tests.
public enum CRC32C {
    public static func checksum(_ data: Data) -> UInt32 {
        data.withUnsafeBytes { r3_crc32c(0, $0.baseAddress, UInt64($0.count)) }
    }

    static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? 0x82F6_3B78 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func reference(_ data: Data) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        data.withUnsafeBytes { raw in
            table.withUnsafeBufferPointer { t in
                for b in raw { c = t[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
            }
        }
        return c ^ 0xFFFF_FFFF
    }
}
