// IntDType: the integer element types routes travel in, and little-endian conversion to and from Int32.
// In unsigned types the all-ones value (255, 65535) stands for -1 (missing) when it is not a valid
// expert id (i.e. when it is >= num_experts); with exactly 256 (65536) experts it is an id.
import Foundation

public enum IntDType: String, Sendable, CaseIterable {
    case int32, int16, int8, uint8, uint16, int64

    public var size: Int {
        switch self {
        case .int64: return 8
        case .int32: return 4
        case .int16, .uint16: return 2
        case .int8, .uint8: return 1
        }
    }

    public var npy: NPYDType {
        switch self {
        case .int32: return .int32
        case .int16: return .int16
        case .int8: return .int8
        case .uint8: return .uint8
        case .uint16: return .uint16
        case .int64: return .int64
        }
    }

    public init?(npy: NPYDType) {
        switch npy {
        case .int32: self = .int32
        case .int16: self = .int16
        case .int8: self = .int8
        case .uint8: self = .uint8
        case .uint16: self = .uint16
        case .int64: self = .int64
        case .float32: return nil
        }
    }

    /// Decodes `count` little-endian values; unsigned all-ones becomes -1 when >= numExperts.
    public func decode(_ bytes: Data, count: Int, numExperts: Int) throws -> [Int32] {
        guard bytes.count == count * size else {
            throw RoutesError.malformed("\(bytes.count) bytes of \(rawValue) data for \(count) values (expected \(count * size))")
        }
        return bytes.withUnsafeBytes { raw -> [Int32] in
            var out = [Int32](repeating: 0, count: count)
            switch self {
            case .int32: for i in 0..<count { out[i] = Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self)) }
            case .int64:
                for i in 0..<count { out[i] = Int32(clamping: Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))) }
            case .int16: for i in 0..<count { out[i] = Int32(Int16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self))) }
            case .int8: for i in 0..<count { out[i] = Int32(Int8(bitPattern: raw[i])) }
            case .uint8:
                for i in 0..<count { let v = Int32(raw[i]); out[i] = v == 0xFF && v >= numExperts ? -1 : v }
            case .uint16:
                for i in 0..<count {
                    let v = Int32(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
                    out[i] = v == 0xFFFF && v >= numExperts ? -1 : v
                }
            }
            return out
        }
    }

    /// Encodes little-endian; fails when a value does not fit (or -1 cannot be told from an id).
    public func encode(_ ids: [Int32], numExperts: Int) throws -> Data {
        var out = Data(count: ids.count * size)
        try out.withUnsafeMutableBytes { raw in
            switch self {
            case .int32: for (i, v) in ids.enumerated() { raw.storeBytes(of: v.littleEndian, toByteOffset: 4 * i, as: Int32.self) }
            case .int64: for (i, v) in ids.enumerated() { raw.storeBytes(of: Int64(v).littleEndian, toByteOffset: 8 * i, as: Int64.self) }
            case .int16:
                for (i, v) in ids.enumerated() {
                    guard let w = Int16(exactly: v) else { throw RoutesError.invalid("expert id \(v) does not fit int16") }
                    raw.storeBytes(of: w.littleEndian, toByteOffset: 2 * i, as: Int16.self)
                }
            case .int8:
                for (i, v) in ids.enumerated() {
                    guard let w = Int8(exactly: v) else { throw RoutesError.invalid("expert id \(v) does not fit int8") }
                    raw[i] = UInt8(bitPattern: w)
                }
            case .uint8, .uint16:
                let allOnes: Int32 = self == .uint8 ? 0xFF : 0xFFFF
                for (i, v) in ids.enumerated() {
                    var w = v
                    if v == -1 {
                        guard allOnes >= numExperts else {
                            throw RoutesError.invalid("\(rawValue) cannot mark missing rows for \(numExperts) experts; use int16 or int32")
                        }
                        w = allOnes
                    }
                    guard w >= 0, w <= allOnes else { throw RoutesError.invalid("expert id \(v) does not fit \(rawValue)") }
                    if self == .uint8 { raw[i] = UInt8(w) } else { raw.storeBytes(of: UInt16(w).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
                }
            }
        }
        return out
    }
}
