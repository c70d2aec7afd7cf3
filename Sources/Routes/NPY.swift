// NPY: numpy's .npy format (v1–v3): magic "\x93NUMPY", version, header dict, data 64-byte aligned.
import Foundation

public enum NPYDType: String, Sendable, CaseIterable {
    case int32 = "i4", int16 = "i2", uint8 = "u1", int64 = "i8", int8 = "i1", uint16 = "u2", float32 = "f4"

    public var size: Int {
        switch self {
        case .uint8, .int8: return 1
        case .int16, .uint16: return 2
        case .int32, .float32: return 4
        case .int64: return 8
        }
    }
    /// numpy's descr string, little-endian (single bytes have no byte order).
    public var descr: String { size == 1 ? "|" + rawValue : "<" + rawValue }
}

public struct NPYArray: Sendable, Equatable {
    public var dtype: NPYDType
    public var shape: [Int]
    /// Element bytes, little-endian, C order.
    public var bytes: Data

    public init(dtype: NPYDType, shape: [Int], bytes: Data) {
        self.dtype = dtype; self.shape = shape; self.bytes = bytes
    }

    public var count: Int { shape.reduce(1, *) }

    public init(int32 values: [Int32], shape: [Int]) {
        precondition(values.count == shape.reduce(1, *))
        self.init(dtype: .int32, shape: shape, bytes: values.map(\.littleEndian).withUnsafeBufferPointer { Data(buffer: $0) })
    }

    /// The elements as Int32 (any integer dtype; values outside Int32 are an error).
    public func int32s() throws -> [Int32] {
        let n = count
        return try bytes.withUnsafeBytes { raw -> [Int32] in
            switch dtype {
            case .int32: return (0..<n).map { Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self)) }
            case .int16: return (0..<n).map { Int32(Int16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * $0, as: Int16.self))) }
            case .uint16: return (0..<n).map { Int32(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self))) }
            case .uint8: return (0..<n).map { Int32(raw[$0]) }
            case .int8: return (0..<n).map { Int32(Int8(bitPattern: raw[$0])) }
            case .int64:
                return try (0..<n).map {
                    let v = Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))
                    guard let w = Int32(exactly: v) else { throw RoutesError.invalid("value \(v) at flat index \($0) does not fit int32") }
                    return w
                }
            case .float32: throw RoutesError.invalid("expected an integer array, got float32")
            }
        }
    }
}

public enum NPY {
    static let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]   // \x93NUMPY

    /// Serialises as .npy v1.0 (v2.0 when the header needs it), data aligned to 64 bytes.
    public static func encode(_ a: NPYArray) -> Data {
        var out = encodeHeader(dtype: a.dtype, shape: a.shape, reserving: a.bytes.count)
        out.append(a.bytes)
        return out
    }

    /// The bytes a .npy file of `dtype` and `shape` starts with, up to its data.
    public static func encodeHeader(dtype: NPYDType, shape dims: [Int], reserving extra: Int = 0) -> Data {
        let shape = dims.count == 1 ? "(\(dims[0]),)" : "(" + dims.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '\(dtype.descr)', 'fortran_order': False, 'shape': \(shape), }"
        let v1 = 10 + header.utf8.count + 1 <= 65_535 + 10
        let prefix = v1 ? 10 : 12
        let total = (prefix + header.utf8.count + 1 + 63) / 64 * 64
        header += String(repeating: " ", count: total - prefix - header.utf8.count - 1) + "\n"
        var out = Data(capacity: total + extra)
        out.append(contentsOf: magic)
        out.append(contentsOf: v1 ? [1, 0] : [2, 0])
        let hl = header.utf8.count
        if v1 { out.append(contentsOf: [UInt8(hl & 0xFF), UInt8(hl >> 8)]) } else {
            out.append(contentsOf: [UInt8(hl & 0xFF), UInt8((hl >> 8) & 0xFF), UInt8((hl >> 16) & 0xFF), UInt8(hl >> 24)])
        }
        out.append(contentsOf: Array(header.utf8))
        return out
    }

    /// The header of a .npy file: its dtype, shape and the offset where the data starts. `bytes` must hold
    /// at least the whole header.
    public static func header(_ bytes: [UInt8]) throws -> (dtype: NPYDType, shape: [Int], dataOffset: Int) {
        let d = Array(bytes.prefix(12))
        guard d.count >= 10, Array(d[0..<6]) == magic else { throw RoutesError.malformed(".npy: missing the \\x93NUMPY magic") }
        let major = d[6]
        guard [1, 2, 3].contains(major) else { throw RoutesError.malformed(".npy: unsupported format version \(major)") }
        let prefix = major == 1 ? 10 : 12
        guard d.count >= prefix else { throw RoutesError.malformed(".npy: truncated header") }
        let hl = major == 1 ? Int(d[8]) | Int(d[9]) << 8 : Int(d[8]) | Int(d[9]) << 8 | Int(d[10]) << 16 | Int(d[11]) << 24
        guard hl <= 1 << 20, bytes.count >= prefix + hl else { throw RoutesError.malformed(".npy: truncated header") }
        guard let header = String(bytes: bytes[prefix..<(prefix + hl)], encoding: major == 3 ? .utf8 : .isoLatin1) else {
            throw RoutesError.malformed(".npy: header is not text")
        }
        guard let descr = field(header, "descr").map({ $0.trimmingCharacters(in: CharacterSet(charactersIn: "'\"")) }) else {
            throw RoutesError.malformed(".npy: header has no 'descr'")
        }
        let order = descr.first.map { "<|=>".contains($0) ? String($0) : "" } ?? ""
        if order == ">" && !descr.hasSuffix("1") { throw RoutesError.malformed(".npy: big-endian dtype \(descr) is not supported") }
        guard let dtype = NPYDType(rawValue: String(descr.dropFirst(order.count))) else {
            throw RoutesError.malformed(".npy: unsupported dtype \(descr)")
        }
        if field(header, "fortran_order")?.hasPrefix("True") == true {
            throw RoutesError.malformed(".npy: fortran_order arrays are not supported; save with C order")
        }
        guard let shapeText = field(header, "shape"), shapeText.hasPrefix("("), let close = shapeText.firstIndex(of: ")") else {
            throw RoutesError.malformed(".npy: header has no 'shape' tuple")
        }
        var shape: [Int] = []
        for part in shapeText[shapeText.index(after: shapeText.startIndex)..<close].split(separator: ",") {
            let p = part.trimmingCharacters(in: .whitespaces)
            if p.isEmpty { continue }
            guard let n = Int(p), n >= 0, n < 1 << 40 else { throw RoutesError.malformed(".npy: bad dimension '\(p)' in shape") }
            shape.append(n)
        }
        return (dtype, shape, prefix + hl)
    }

    public static func decode(_ data: Data) throws -> NPYArray {
        let h = try header([UInt8](data.prefix(min(data.count, 12 + (1 << 20)))))
        var count = 1, overflow = false
        for d in h.shape + [h.dtype.size] { let (p, o) = count.multipliedReportingOverflow(by: d); overflow = overflow || o; count = p }
        guard !overflow, data.count - h.dataOffset == count else {
            throw RoutesError.malformed(".npy: \(data.count - h.dataOffset) data bytes do not hold shape \(h.shape) of \(h.dtype.descr)")
        }
        return NPYArray(dtype: h.dtype, shape: h.shape, bytes: Data(data[(data.startIndex + h.dataOffset)...]))
    }

    /// The text after `'key':` up to the next top-level comma (or the closing tuple).
    static func field(_ header: String, _ key: String) -> String? {
        for quote in ["'", "\""] {
            if let r = header.range(of: "\(quote)\(key)\(quote)") {
                var rest = header[r.upperBound...].drop { $0 == " " }
                guard rest.first == ":" else { return nil }
                rest = rest.dropFirst().drop { $0 == " " }
                if rest.first == "(" { return rest.firstIndex(of: ")").map { String(rest[...$0]) } }
                return String(rest.prefix { $0 != "," && $0 != "}" }).trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }
}
