// RouteCodec: the wire encodings of a routes array, on ingest and fetch: JSON nested lists, the
// {dtype, shape, data} base64 object (SGLang / rllm), NeMo-RL's "nrlre1:<dtype>:<S>x<L>x<K>:<base64>"
// envelope, .npy, and raw little-endian bytes with a given dtype and shape. Decoding checks the
// encoding only; `RouteArray.validate` checks the content against the model.
import Foundation

public enum RouteCodec {
    /// Limits a decoder enforces before allocating (a hostile shape must not allocate terabytes).
    public static let maxValues = 1 << 31 - 1

    // MARK: decode

    /// A JSON value already parsed by JSONSerialization: nested lists, a base64 object, or an envelope string.
    public static func decode(json value: Any, numExperts: Int) throws -> RouteArray {
        if let s = value as? String { return try decode(envelope: s, numExperts: numExperts) }
        if let o = value as? [String: Any] { return try decode(base64Object: o, numExperts: numExperts) }
        if let l = value as? [Any] { return try decode(lists: l) }
        throw RoutesError.malformed("routed_experts must be nested lists [T][L][K], a {dtype, shape, data} object or an nrlre1: string")
    }

    /// [[[e, ...], ...], ...] with every row the same length.
    public static func decode(lists: [Any]) throws -> RouteArray {
        let rows = lists.count
        var layers = -1, topK = -1
        var ids: [Int32] = []
        for (t, rowAny) in lists.enumerated() {
            guard let row = rowAny as? [Any] else { throw RoutesError.malformed("routed_experts[\(t)] is not a list") }
            if layers < 0 { layers = row.count } else if row.count != layers {
                throw RoutesError.malformed("routed_experts[\(t)] has \(row.count) layers, routed_experts[0] has \(layers)")
            }
            for (l, layerAny) in row.enumerated() {
                guard let layer = layerAny as? [Any] else { throw RoutesError.malformed("routed_experts[\(t)][\(l)] is not a list") }
                if topK < 0 { topK = layer.count; ids.reserveCapacity(rows * max(layers, 1) * max(topK, 1)) } else if layer.count != topK {
                    throw RoutesError.malformed("routed_experts[\(t)][\(l)] has \(layer.count) experts, expected \(topK)")
                }
                for (j, v) in layer.enumerated() {
                    guard let n = v as? NSNumber, !String(describing: type(of: v)).contains("Bool"),
                          let i = Int32(exactly: n.doubleValue) else {
                        throw RoutesError.malformed("routed_experts[\(t)][\(l)][\(j)] is not an integer")
                    }
                    ids.append(i)
                }
            }
        }
        if rows == 0 { throw RoutesError.malformed("routed_experts is empty; an array needs its shape, send the base64 form") }
        return try RouteArray(rows: rows, layers: max(layers, 0), topK: max(topK, 0), ids: ids)
    }

    /// {"dtype": "int32"|"int16"|"uint8", "shape": [T, L, K], "data": "<base64, little-endian>"}
    public static func decode(base64Object o: [String: Any], numExperts: Int) throws -> RouteArray {
        guard let dt = o["dtype"] as? String else { throw RoutesError.malformed("routed_experts.dtype is missing") }
        guard let dtype = IntDType(rawValue: dt) else {
            throw RoutesError.malformed("routed_experts.dtype '\(dt)' is not one of int32, int16, int8, uint8, uint16")
        }
        guard let shapeAny = o["shape"] as? [Any] else { throw RoutesError.malformed("routed_experts.shape is missing") }
        let shape = try parseShape(shapeAny.map { ($0 as? NSNumber).map { "\($0.intValue)" } ?? "x" })
        guard let text = o["data"] as? String else { throw RoutesError.malformed("routed_experts.data must be a base64 string") }
        return try decode(base64: text, dtype: dtype, shape: shape, numExperts: numExperts)
    }

    /// NeMo-RL's "nrlre1:<dtype>:<S>x<L>x<K>:<base64>".
    public static func decode(envelope s: String, numExperts: Int) throws -> RouteArray {
        let parts = s.split(separator: ":", maxSplits: 3, omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "nrlre1" else {
            throw RoutesError.malformed("routes envelope must be nrlre1:<dtype>:<S>x<L>x<K>:<base64>")
        }
        guard let dtype = IntDType(rawValue: String(parts[1])) else {
            throw RoutesError.malformed("routes envelope dtype '\(parts[1])' is not one of int32, int16, int8, uint8, uint16")
        }
        let shape = try parseShape(parts[2].split(separator: "x", omittingEmptySubsequences: false).map(String.init))
        return try decode(base64: String(parts[3]), dtype: dtype, shape: shape, numExperts: numExperts)
    }

    /// A .npy file of an integer dtype and rank 3.
    public static func decode(npy data: Data, numExperts: Int) throws -> RouteArray {
        let a = try NPY.decode(data)
        guard a.shape.count == 3 else { throw RoutesError.invalid("routes must have rank 3 [T, L, K], got shape \(a.shape)") }
        if let dtype = IntDType(npy: a.dtype) {
            return try RouteArray(rows: a.shape[0], layers: a.shape[1], topK: a.shape[2],
                                  ids: dtype.decode(a.bytes, count: a.count, numExperts: numExperts))
        }
        return try RouteArray(rows: a.shape[0], layers: a.shape[1], topK: a.shape[2], ids: a.int32s())
    }

    /// Raw little-endian bytes whose dtype and shape come from headers or the query.
    public static func decode(raw data: Data, dtype: IntDType, shape: [Int], numExperts: Int) throws -> RouteArray {
        guard shape.count == 3 else { throw RoutesError.invalid("routes shape must be [T, L, K], got \(shape)") }
        let n = try checkedCount(shape)
        return try RouteArray(rows: shape[0], layers: shape[1], topK: shape[2], ids: dtype.decode(data, count: n, numExperts: numExperts))
    }

    static func decode(base64 text: String, dtype: IntDType, shape: [Int], numExperts: Int) throws -> RouteArray {
        guard let bytes = Data(base64Encoded: text) else { throw RoutesError.malformed("routed_experts data is not valid base64") }
        return try decode(raw: bytes, dtype: dtype, shape: shape, numExperts: numExperts)
    }

    static func parseShape(_ parts: [String]) throws -> [Int] {
        guard parts.count == 3 else { throw RoutesError.invalid("routes shape must have 3 dimensions [T, L, K], got \(parts.count)") }
        let dims = parts.compactMap { Int($0) }
        guard dims.count == 3, dims.allSatisfy({ $0 >= 0 }) else { throw RoutesError.malformed("routes shape \(parts) is not three non-negative integers") }
        _ = try checkedCount(dims)
        return dims
    }

    static func checkedCount(_ shape: [Int]) throws -> Int {
        var n = 1
        for d in shape {
            let (p, o) = n.multipliedReportingOverflow(by: d)
            guard !o, p <= maxValues else { throw RoutesError.invalid("routes shape \(shape) is too large") }
            n = p
        }
        return n
    }

    // MARK: encode

    public static func lists(_ r: RouteArray) -> [[[Int32]]] {
        (0..<r.rows).map { t in (0..<r.layers).map { l in Array(r.ids[((t * r.layers + l) * r.topK)..<((t * r.layers + l + 1) * r.topK)]) } }
    }

    public static func base64Object(_ r: RouteArray, dtype: IntDType, numExperts: Int) throws -> [String: Any] {
        ["dtype": dtype.rawValue, "shape": r.shape, "data": try dtype.encode(r.ids, numExperts: numExperts).base64EncodedString()]
    }

    public static func envelope(_ r: RouteArray, dtype: IntDType, numExperts: Int) throws -> String {
        "nrlre1:\(dtype.rawValue):\(r.rows)x\(r.layers)x\(r.topK):" + (try dtype.encode(r.ids, numExperts: numExperts).base64EncodedString())
    }

    public static func npy(_ r: RouteArray, dtype: IntDType, numExperts: Int) throws -> Data {
        NPY.encode(NPYArray(dtype: dtype.npy, shape: r.shape, bytes: try dtype.encode(r.ids, numExperts: numExperts)))
    }

    public static func raw(_ r: RouteArray, dtype: IntDType, numExperts: Int) throws -> Data {
        try dtype.encode(r.ids, numExperts: numExperts)
    }
}
