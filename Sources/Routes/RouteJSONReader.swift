// RouteJSONReader: reads a routes value out of a JSON document as it streams by, straight into a
// RouteBuilder: nested lists [rows][layers][K]; the {dtype, shape, data} object (rllm, our base64 form);
// NeMo-RL's "nrlre1:<dtype>:<S>x<L>x<K>:<base64>"; SGLang's bare base64 of int32 (no shape); and vLLM
// 0.33's base64 of a .npy file (its header carries dtype and shape). The base64 text is decoded piece
// by piece, never held whole.
import JSON

/// Shapes from the wire: each dimension bounded and the product checked, so no arithmetic on them traps.
public enum RouteShape {
    /// rows ≤ 2^31, layers ≤ 4096, top_k ≤ 65535.
    public static func check(_ s: [Int], what: String) throws -> [Int] {
        guard s.count == 3, s[0] >= 0, s[0] <= Int(Int32.max), s[1] >= 0, s[1] <= 4096, s[2] >= 0, s[2] <= 65_535, count(s) >= 0 else {
            throw RoutesError.invalid("\(what) shape \(s) is not [rows <= 2^31, layers <= 4096, top_k <= 65535]")
        }
        return s
    }
    /// The product, or -1 on overflow.
    public static func count(_ s: [Int]) -> Int {
        var n = 1
        for d in s { let (p, o) = n.multipliedReportingOverflow(by: d); if o || d < 0 { return -1 }; n = p }
        return n
    }
}

/// Routes as they arrived: packed ids, and the shape when the encoding carried one.
public struct IncomingRoutes: Sendable {
    public var builder: RouteBuilder
    /// [rows, layers, top_k], or nil for a bare base64 string (SGLang), whose shape follows from the model.
    public var shape: [Int]?
    /// What the value was: lists, base64_object, nrlre1, sglang_base64, npy_base64.
    public var encoding: String

    public init(builder: RouteBuilder, shape: [Int]?, encoding: String) { self.builder = builder; self.shape = shape; self.encoding = encoding }
}

public enum RouteJSONReader {
    /// Reads the routes value at the reader's position. Errors are RoutesError (content) or JSONError (syntax).
    public static func read(_ r: JSONReader, maxValues: Int) throws -> IncomingRoutes {
        switch try r.peek() {
        case .array: return try lists(r, maxValues: maxValues)
        case .object: return try object(r, maxValues: maxValues)
        case .string: return try string(r, maxValues: maxValues)
        default:
            throw RoutesError.malformed("must be nested lists [rows][layers][top_k], a {dtype, shape, data} object, an nrlre1: string or base64 of int32 (SGLang)")
        }
    }

    static func lists(_ r: JSONReader, maxValues: Int) throws -> IncomingRoutes {
        var b = RouteBuilder(maxValues: maxValues)
        var rows = 0, layers = -1, topK = -1
        try r.readArray { t in
            guard try r.peek() == .array else { throw RoutesError.malformed("row \(t) is not a list of layers") }
            var l = 0
            try r.readArray { _ in
                guard try r.peek() == .array else { throw RoutesError.malformed("row \(t), layer \(l) is not a list of experts") }
                var k = 0
                try r.readArray { j in
                    guard try r.peek() == .number, let v = try r.readNumber().exactInt else {
                        throw RoutesError.malformed("row \(t), layer \(l), slot \(j) is not an integer")
                    }
                    try b.append(v)
                    k += 1
                }
                if topK < 0 { topK = k } else if k != topK {
                    throw RoutesError.malformed("row \(t), layer \(l) has \(k) experts; earlier rows have \(topK)")
                }
                l += 1
            }
            if layers < 0 { layers = l } else if l != layers {
                throw RoutesError.malformed("row \(t) has \(l) layers; row 0 has \(layers)")
            }
            rows += 1
        }
        if rows == 0 { throw RoutesError.malformed("routed_experts is empty; an array needs its shape, send the base64 form") }
        return IncomingRoutes(builder: b, shape: [rows, layers, topK], encoding: "lists")
    }

    static func object(_ r: JSONReader, maxValues: Int) throws -> IncomingRoutes {
        var b = RouteBuilder(maxValues: maxValues)
        var dtype: IntDType?
        var shape: [Int]?
        var pending: [UInt8]?    // data decoded before its dtype was known
        var sawData = false
        try r.readObject { key in
            switch key {
            case "dtype":
                guard try r.peek() == .string else { throw RoutesError.malformed("routed_experts.dtype must be a string") }
                let s = try r.readString()
                guard let d = IntDType(rawValue: s) else {
                    throw RoutesError.malformed("routed_experts.dtype '\(s)' is not one of int64, int32, int16, int8, uint8, uint16")
                }
                dtype = d
                if let p = pending { try p.withUnsafeBytes { try feedWhole($0, dtype: d, into: &b, what: "routed_experts.data") }; pending = nil }
            case "shape":
                var dims: [Int] = []
                guard try r.peek() == .array else { throw RoutesError.malformed("routed_experts.shape must be a list of 3 integers") }
                try r.readArray { _ in
                    guard try r.peek() == .number, let v = try r.readNumber().exactInt, v >= 0, v < 1 << 40 else {
                        throw RoutesError.malformed("routed_experts.shape must be a list of 3 non-negative integers")
                    }
                    dims.append(Int(v))
                }
                guard dims.count == 3 else { throw RoutesError.invalid("routes shape must have 3 dimensions [rows, layers, top_k], got \(dims.count)") }
                shape = try RouteShape.check(dims, what: "routed_experts.shape")
            case "data":
                sawData = true
                guard try r.peek() == .string else { throw RoutesError.malformed("routed_experts.data must be a base64 string") }
                var dec = Base64Decoder()
                if let s = shape { b.reserve(values: s[0] * s[1] * s[2]) }   // shape first, as json.dumps of {dtype, shape, data} sends it
                if let d = dtype {
                    var sink = ElementSink(dtype: d)
                    try r.readStringChunks { text in try dec.feed(text) { try sink.feed($0, into: &b) } }
                    try dec.finish(); try sink.finish("routed_experts.data")
                } else {
                    var raw: [UInt8] = []
                    try r.readStringChunks { text in
                        try dec.feed(text) { bytes in
                            raw.append(contentsOf: bytes)
                            if raw.count > maxValues * 8 { throw RoutesError.invalid("routes have more than \(maxValues) values") }
                        }
                    }
                    try dec.finish()
                    pending = raw
                }
            case "num_experts":
                guard try r.peek() == .number else { throw RoutesError.malformed("routed_experts.num_experts must be a number") }
                _ = try r.readNumber()   // informational (our own fetch form carries it)
            default:
                throw RoutesError.malformed("routed_experts has an unknown field \(key) (expected dtype, shape, data)")
            }
        }
        guard let d = dtype else { throw RoutesError.malformed("routed_experts.dtype is missing") }
        guard let s = shape else { throw RoutesError.malformed("routed_experts.shape is missing") }
        guard sawData else { throw RoutesError.malformed("routed_experts.data must be a base64 string") }
        _ = d
        return IncomingRoutes(builder: b, shape: s, encoding: "base64_object")
    }

    static func string(_ r: JSONReader, maxValues: Int) throws -> IncomingRoutes {
        var b = RouteBuilder(maxValues: maxValues)
        var dec = StringRoutes()
        try r.readStringChunks { text in try dec.feed(text, into: &b) }
        let (shape, encoding) = try dec.finish(into: &b)
        return IncomingRoutes(builder: b, shape: shape, encoding: encoding)
    }

    static func feedWhole(_ raw: UnsafeRawBufferPointer, dtype: IntDType, into b: inout RouteBuilder, what: String) throws {
        guard raw.count % dtype.size == 0 else { throw RoutesError.malformed("\(what) has \(raw.count) bytes, not a whole number of \(dtype.rawValue) values") }
        try b.append(raw, dtype: dtype)
    }
}

/// Little-endian elements from bytes arriving in pieces of any size (a partial element waits for the rest).
public struct ElementSink {
    public let dtype: IntDType
    var carry: [UInt8] = []
    public init(dtype: IntDType) { self.dtype = dtype }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer, into b: inout RouteBuilder) throws {
        var bytes = bytes
        let s = dtype.size
        if !carry.isEmpty {
            let need = min(s - carry.count, bytes.count)
            carry.append(contentsOf: bytes[0..<need])
            bytes = UnsafeRawBufferPointer(rebasing: bytes[need...])
            if carry.count < s { return }
            try carry.withUnsafeBytes { try b.append($0, dtype: dtype) }
            carry.removeAll(keepingCapacity: true)
        }
        let whole = bytes.count / s * s
        if whole > 0 { try b.append(UnsafeRawBufferPointer(rebasing: bytes[0..<whole]), dtype: dtype) }
        if whole < bytes.count { carry.append(contentsOf: bytes[whole...]) }
    }

    public func finish(_ what: String) throws {
        if !carry.isEmpty { throw RoutesError.malformed("\(what) ends inside a \(dtype.rawValue) value (its byte count is not a multiple of \(dtype.size))") }
    }
}

/// A routes string: "nrlre1:<dtype>:<S>x<L>x<K>:<base64>" (NeMo-RL), or base64 of either a .npy file
/// (vLLM 0.33) or raw little-endian int32 with no shape (SGLang), told apart by their first bytes.
struct StringRoutes {
    enum Stage { case sniffing, envelopeHeader, base64 }
    var stage = Stage.sniffing
    var text: [UInt8] = []          // text held while sniffing or reading the envelope header
    var shape: [Int]?
    var encoding = "sglang_base64"
    var b64 = Base64Decoder()
    // decoded bytes: a .npy file (vLLM 0.33) or raw int32 (SGLang); the envelope's own dtype once it is read
    var reader = RouteBytesReader(.npyOrInt32)

    mutating func feed(_ piece: UnsafeRawBufferPointer, into b: inout RouteBuilder) throws {
        switch stage {
        case .sniffing:
            text.append(contentsOf: piece)
            let magic = Array("nrlre1:".utf8)
            if text.count < magic.count && Array(text) == Array(magic.prefix(text.count)) { return }
            if text.starts(with: magic) { stage = .envelopeHeader; encoding = "nrlre1"; try feedHeader(into: &b); return }
            stage = .base64
            let t = text; text = []
            try t.withUnsafeBytes { try decode($0, into: &b) }
        case .envelopeHeader:
            text.append(contentsOf: piece)
            try feedHeader(into: &b)
        case .base64:
            try decode(piece, into: &b)
        }
    }

    /// nrlre1:<dtype>:<S>x<L>x<K>: then base64.
    mutating func feedHeader(into b: inout RouteBuilder) throws {
        var colons = 0, end = -1
        for (i, c) in text.enumerated() where c == UInt8(ascii: ":") { colons += 1; if colons == 3 { end = i; break } }
        if end < 0 {
            if text.count > 128 { throw RoutesError.malformed("routes envelope must be nrlre1:<dtype>:<S>x<L>x<K>:<base64>") }
            return
        }
        let parts = String(decoding: text[0..<end], as: UTF8.self).split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 3, let d = IntDType(rawValue: String(parts[1])), d != .int64 else {
            throw RoutesError.malformed("routes envelope dtype '\(parts.count > 1 ? String(parts[1]) : "")' is not one of int32, int16, int8, uint8, uint16")
        }
        let dims = parts[2].split(separator: "x", omittingEmptySubsequences: false).map { Int($0) }
        guard dims.count == 3, dims.allSatisfy({ ($0 ?? -1) >= 0 }) else { throw RoutesError.malformed("routes envelope shape '\(parts[2])' is not <S>x<L>x<K>") }
        shape = try RouteShape.check(dims.map { $0! }, what: "routes envelope")
        reader = RouteBytesReader(.raw(d))
        stage = .base64
        let rest = Array(text[(end + 1)...]); text = []
        try rest.withUnsafeBytes { try decode($0, into: &b) }
    }

    mutating func decode(_ piece: UnsafeRawBufferPointer, into b: inout RouteBuilder) throws {
        var d = Base64Decoder()
        swap(&d, &b64)   // take the decoder out (no copy of its buffer) while its sink mutates self
        defer { swap(&d, &b64) }
        try d.feed(piece) { bytes in try self.bytes(bytes, into: &b) }
    }

    mutating func bytes(_ bytes: UnsafeRawBufferPointer, into b: inout RouteBuilder) throws {
        try reader.feed(bytes, into: &b)
        if reader.isNPY && encoding == "sglang_base64" { encoding = "npy_base64" }
    }

    mutating func finish(into b: inout RouteBuilder) throws -> ([Int]?, String) {
        if stage == .sniffing { stage = .base64; let t = text; text = []; try t.withUnsafeBytes { try decode($0, into: &b) } }
        if stage == .envelopeHeader { throw RoutesError.malformed("routes envelope must be nrlre1:<dtype>:<S>x<L>x<K>:<base64>") }
        try b64.finish()
        try reader.finish(into: &b, what: "routed_experts")   // a .npy's shape is checked there
        if reader.isNPY { return (reader.shape, encoding) }
        if let s = shape, RouteShape.count(s) != b.count {
            throw RoutesError.malformed("routes envelope shape \(s) does not match the \(b.count) values of its data")
        }
        return (shape, encoding)
    }
}

/// Route bytes arriving in pieces of any size: a .npy file (its header gives dtype and shape), raw
/// little-endian elements of a known dtype, or either told apart by the .npy magic (raw int32 otherwise:
/// SGLang). Elements go to a RouteBuilder as they complete; the input is never held whole.
public struct RouteBytesReader {
    public enum Form { case npy, raw(IntDType), npyOrInt32 }
    let form: Form
    var head: [UInt8] = []
    var stage = 0                   // 0 sniffing the magic, 1 .npy header, 2 elements
    var sink: ElementSink?
    /// The .npy header's shape, once read.
    public private(set) var shape: [Int]?
    public private(set) var isNPY = false

    public init(_ form: Form) {
        self.form = form
        if case let .raw(d) = form { stage = 2; sink = ElementSink(dtype: d) }
    }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer, into b: inout RouteBuilder) throws {
        if stage == 2 { try sink!.feed(bytes, into: &b); return }
        head.append(contentsOf: bytes)
        if stage == 0 {
            if head.count < 6 && head == Array(NPY.magic.prefix(head.count)) { return }
            if head.starts(with: NPY.magic) { stage = 1; isNPY = true } else {
                guard case .npyOrInt32 = form else { throw RoutesError.malformed(".npy: missing the \\x93NUMPY magic") }
                try rawInt32(into: &b)
                return
            }
        }
        // .npy header: magic, version, header length, header dict
        guard head.count >= 10 else { return }
        let major = head[6]
        guard [1, 2, 3].contains(major) else { throw RoutesError.malformed(".npy: unsupported format version \(major)") }
        let prefix = major == 1 ? 10 : 12
        guard head.count >= prefix else { return }
        let hl = major == 1 ? Int(head[8]) | Int(head[9]) << 8 : Int(head[8]) | Int(head[9]) << 8 | Int(head[10]) << 16 | Int(head[11]) << 24
        guard hl <= 1 << 16 else { throw RoutesError.malformed(".npy: header longer than 64 KiB") }
        guard head.count >= prefix + hl else { return }
        let h = try NPY.header(Array(head[0..<(prefix + hl)]))
        guard h.shape.count == 3 else { throw RoutesError.invalid("routes must have rank 3 [rows, layers, top_k], got shape \(h.shape)") }
        guard let d = IntDType(npy: h.dtype) else { throw RoutesError.malformed(".npy: routes must be an integer array, got \(h.dtype.rawValue)") }
        shape = try RouteShape.check(h.shape, what: ".npy")
        sink = ElementSink(dtype: d)
        stage = 2
        let rest = Array(head[(prefix + hl)...]); head = []
        try rest.withUnsafeBytes { try sink!.feed($0, into: &b) }
    }

    private mutating func rawInt32(into b: inout RouteBuilder) throws {
        stage = 2; sink = ElementSink(dtype: .int32)
        let h = head; head = []
        try h.withUnsafeBytes { try sink!.feed($0, into: &b) }
    }

    /// Ends the input (`what` names it in errors); a .npy's data must fill its shape.
    public mutating func finish(into b: inout RouteBuilder, what: String) throws {
        if stage == 0 && !head.isEmpty {
            guard case .npyOrInt32 = form else { throw RoutesError.malformed(".npy: missing the \\x93NUMPY magic") }
            try rawInt32(into: &b)
        }
        if stage == 0, case .npy = form { throw RoutesError.malformed(".npy: the body is empty") }
        if stage == 1 { throw RoutesError.malformed(".npy: truncated header") }
        try sink?.finish(what)
        if isNPY, let s = shape, RouteShape.count(s) != b.count {
            throw RoutesError.malformed(".npy shape \(s) does not match the \(b.count) values of its data")
        }
    }
}
