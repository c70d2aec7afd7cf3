// Routing: recorded expert choices as data. A RouteTable is the contract's [rows, moe_layers, top_k]
// int32 array, token-major; `Routing` tells a forward pass to route live or to replay a table.

public struct RouteTable: Sendable, Equatable {
    public var rows: Int
    public var layers: Int
    public var topK: Int
    /// Expert ids, row-major [rows, layers, topK]; a row (token, layer) of all -1 means "missing".
    public var ids: [Int32]

    public init(rows: Int, layers: Int, topK: Int, ids: [Int32]) {
        precondition(ids.count == rows * layers * topK)
        self.rows = rows; self.layers = layers; self.topK = topK; self.ids = ids
    }

    public var shape: [Int] { [rows, layers, topK] }

    /// Rows [start, end) of the table.
    public func slice(_ r: Range<Int>) -> RouteTable {
        let w = layers * topK
        return RouteTable(rows: r.count, layers: layers, topK: topK, ids: Array(ids[(r.lowerBound * w)..<(r.upperBound * w)]))
    }

    /// Checks the table against a model and a sequence of `tokens` tokens: `tokens` or `tokens - 1`
    /// rows, ids in [0, experts), no duplicate within a (token, layer), and a missing entry only as a
    /// whole row of -1. Throws a one-line error naming the first offending index.
    public func validate(tokens: Int, moeLayers: Int, topK k: Int, experts: Int) throws {
        guard layers == moeLayers, topK == k else {
            throw MoEError.routes("shape \(shape) does not match the model: expected [\(tokens) or \(tokens - 1), \(moeLayers), \(k)]")
        }
        guard rows == tokens || rows == tokens - 1 else {
            throw MoEError.routes("\(rows) rows for a sequence of \(tokens) tokens: expected \(tokens) or \(tokens - 1)")
        }
        for t in 0..<rows {
            for l in 0..<layers {
                let base = (t * layers + l) * topK
                var missing = 0
                for j in 0..<topK {
                    let e = ids[base + j]
                    if e == -1 { missing += 1; continue }
                    if e < 0 || Int(e) >= experts {
                        throw MoEError.routes("expert id \(e) at [\(t), \(l), \(j)] is outside [0, \(experts))")
                    }
                    for j2 in 0..<j where ids[base + j2] == e {
                        throw MoEError.routes("expert \(e) appears twice in row [\(t), \(l)]")
                    }
                }
                if missing != 0 && missing != topK {
                    throw MoEError.routes("row [\(t), \(l)] is partly missing: -1 must fill a whole row")
                }
            }
        }
    }
}

public enum Routing: Sendable {
    /// The live router: top-k of the softmax.
    case live
    /// Force these experts, one table per sequence of the batch (T or T-1 rows each).
    case replay([RouteTable])
}
