// Safetensors: reading and writing the safetensors format (8-byte header length, JSON header, raw data).
import Foundation

public enum STDType: String, Sendable, CaseIterable {
    case f64 = "F64", f32 = "F32", f16 = "F16", bf16 = "BF16"
    case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8", u8 = "U8", bool = "BOOL"

    public var size: Int {
        switch self {
        case .f64, .i64: return 8
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .i8, .u8, .bool: return 1
        }
    }
    var isFloat: Bool { [.f64, .f32, .f16, .bf16].contains(self) }
}

/// A safetensors file mapped read-only; tensors are converted on access.
public struct SafetensorsFile {
    public struct Entry: Sendable {
        public let dtype: STDType
        public let shape: [Int]
        let start: Int   // absolute byte offset in the file
        let byteCount: Int
        public var count: Int { shape.reduce(1, *) }
    }

    public let path: String
    public let entries: [String: Entry]
    public let metadata: [String: String]
    private let data: Data

    public init(url: URL) throws {
        path = url.path
        do { data = try Data(contentsOf: url, options: .alwaysMapped) } catch {
            throw MoEError.file(path: url.path, reason: "cannot read file")
        }
        guard data.count >= 8 else { throw MoEError.file(path: path, reason: "too short to be safetensors") }
        let n = data.withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
        guard n >= 2, n <= 100_000_000, 8 + n <= data.count else {
            throw MoEError.file(path: path, reason: "bad safetensors header length \(n)")
        }
        guard let obj = try? JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + n))),
              let header = obj as? [String: Any] else {
            throw MoEError.file(path: path, reason: "safetensors header is not a JSON object")
        }
        let dataStart = 8 + n, dataLength = data.count - dataStart
        var entries: [String: Entry] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in header {
            if name == "__metadata__" {
                for (k, v) in (value as? [String: Any]) ?? [:] { metadata[k] = v as? String }
                continue
            }
            guard let desc = value as? [String: Any], let ds = desc["dtype"] as? String,
                  let shapeAny = desc["shape"] as? [Any], let offAny = desc["data_offsets"] as? [Any], offAny.count == 2 else {
                throw MoEError.tensor(name: name, reason: "malformed safetensors entry in \(url.lastPathComponent)")
            }
            guard let dtype = STDType(rawValue: ds) else { throw MoEError.tensor(name: name, reason: "unsupported dtype \(ds)") }
            let shape = shapeAny.compactMap { ($0 as? NSNumber)?.intValue }
            let offs = offAny.compactMap { ($0 as? NSNumber)?.intValue }
            guard shape.count == shapeAny.count, shape.allSatisfy({ $0 >= 0 }), offs.count == 2 else {
                throw MoEError.tensor(name: name, reason: "malformed shape or data_offsets")
            }
            let bytes = shape.reduce(1, *) * dtype.size
            guard offs[0] >= 0, offs[1] - offs[0] == bytes, offs[1] <= dataLength else {
                throw MoEError.tensor(name: name, reason: "data_offsets \(offs) do not match shape \(shape) of \(ds) within the file")
            }
            entries[name] = Entry(dtype: dtype, shape: shape, start: dataStart + offs[0], byteCount: bytes)
        }
        self.entries = entries
        self.metadata = metadata
    }

    public func entry(_ name: String) throws -> Entry {
        guard let e = entries[name] else { throw MoEError.tensor(name: name, reason: "missing from \(URL(fileURLWithPath: path).lastPathComponent)") }
        return e
    }

    /// Converts a floating-point tensor to f32 into `dst` (which must hold exactly `count` elements).
    public func readFloats(_ name: String, into dst: UnsafeMutablePointer<Float>, count: Int) throws {
        let e = try entry(name)
        guard e.count == count else { throw MoEError.tensor(name: name, reason: "has \(e.count) elements, expected \(count)") }
        guard e.dtype.isFloat else { throw MoEError.tensor(name: name, reason: "dtype \(e.dtype.rawValue) is not floating point") }
        data.withUnsafeBytes { raw in
            let src = raw.baseAddress! + e.start
            switch e.dtype {
            case .f32:
                UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: e.byteCount)
            case .bf16:
                for i in 0..<count { dst[i] = Float(bitPattern: UInt32(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16) }
            case .f16:
                for i in 0..<count { dst[i] = Float(Float16(bitPattern: UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))) }
            case .f64:
                for i in 0..<count { dst[i] = Float(src.loadUnaligned(fromByteOffset: 8 * i, as: Double.self)) }
            default: break
            }
        }
    }

    public func floats(_ name: String) throws -> [Float] {
        let e = try entry(name)
        var out = [Float](repeating: 0, count: e.count)
        try out.withUnsafeMutableBufferPointer { try readFloats(name, into: $0.baseAddress!, count: e.count) }
        return out
    }

    public func doubles(_ name: String) throws -> [Double] {
        let e = try entry(name)
        if e.dtype != .f64 { return try floats(name).map(Double.init) }
        return data.withUnsafeBytes { raw in (0..<e.count).map { raw.loadUnaligned(fromByteOffset: e.start + 8 * $0, as: Double.self) } }
    }

    public func ints(_ name: String) throws -> [Int64] {
        let e = try entry(name)
        return try data.withUnsafeBytes { raw -> [Int64] in
            let b = e.start
            switch e.dtype {
            case .i64: return (0..<e.count).map { raw.loadUnaligned(fromByteOffset: b + 8 * $0, as: Int64.self) }
            case .i32: return (0..<e.count).map { Int64(raw.loadUnaligned(fromByteOffset: b + 4 * $0, as: Int32.self)) }
            case .i16: return (0..<e.count).map { Int64(raw.loadUnaligned(fromByteOffset: b + 2 * $0, as: Int16.self)) }
            case .i8: return (0..<e.count).map { Int64(raw.load(fromByteOffset: b + $0, as: Int8.self)) }
            case .u8, .bool: return (0..<e.count).map { Int64(raw.load(fromByteOffset: b + $0, as: UInt8.self)) }
            default: throw MoEError.tensor(name: name, reason: "dtype \(e.dtype.rawValue) is not an integer type")
            }
        }
    }
}

/// Builds a safetensors file from named tensors; written in one pass with the header first.
public struct SafetensorsWriter {
    private var items: [(name: String, dtype: STDType, shape: [Int], bytes: Data)] = []
    public var metadata: [String: String] = ["format": "pt"]
    public init() {}

    public var byteCount: Int { items.reduce(0) { $0 + $1.bytes.count } }

    public mutating func add(_ name: String, floats p: UnsafeBufferPointer<Float>, shape: [Int], as dtype: STDType = .f32) {
        precondition(shape.reduce(1, *) == p.count)
        switch dtype {
        case .f32: items.append((name, .f32, shape, Data(buffer: p)))
        case .bf16: items.append((name, .bf16, shape, p.map { BF16.bits($0).littleEndian }.withUnsafeBufferPointer { Data(buffer: $0) }))
        case .f16: items.append((name, .f16, shape, p.map { Float16($0).bitPattern.littleEndian }.withUnsafeBufferPointer { Data(buffer: $0) }))
        default: preconditionFailure("floats can be saved as F32, BF16 or F16")
        }
    }

    public mutating func add(_ name: String, floats: [Float], shape: [Int]) {
        floats.withUnsafeBufferPointer { add(name, floats: $0, shape: shape) }
    }

    public mutating func add(_ name: String, int32s: [Int32], shape: [Int]) {
        precondition(shape.reduce(1, *) == int32s.count)
        items.append((name, .i32, shape, int32s.withUnsafeBufferPointer { Data(buffer: $0) }))
    }

    public func write(to url: URL) throws {
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        let sorted = items.sorted(by: { $0.name < $1.name })
        for item in sorted {
            header[item.name] = ["dtype": item.dtype.rawValue, "shape": item.shape, "data_offsets": [offset, offset + item.bytes.count]]
            offset += item.bytes.count
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while json.count % 8 != 0 { json.append(0x20) }
        var out = Data(capacity: 8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(json)
        for item in sorted { out.append(item.bytes) }
        do { try out.write(to: url, options: .atomic) } catch {
            throw MoEError.file(path: url.path, reason: "cannot write: \(error.localizedDescription)")
        }
    }
}
