// RouteArray: the routes contract: an integer array [rows, moe_layers, top_k], token-major, as SGLang's
// return_routed_experts and vLLM's enable_return_routed_experts give it. -1 fills a missing row.

public struct RouteArray: Sendable, Equatable {
    public var rows: Int
    public var layers: Int
    public var topK: Int
    /// Expert ids, row-major; -1 marks a missing (token, layer) row.
    public var ids: [Int32]

    public init(rows: Int, layers: Int, topK: Int, ids: [Int32]) throws {
        guard rows >= 0, layers >= 1, topK >= 1 else {
            throw RoutesError.invalid("shape [\(rows), \(layers), \(topK)] needs rows >= 0, layers >= 1, top_k >= 1")
        }
        let (n, overflow) = rows.multipliedReportingOverflow(by: layers * topK)
        guard !overflow, n == ids.count else {
            throw RoutesError.invalid("shape [\(rows), \(layers), \(topK)] does not match \(ids.count) values")
        }
        self.rows = rows; self.layers = layers; self.topK = topK; self.ids = ids
    }

    public var shape: [Int] { [rows, layers, topK] }
    public var count: Int { ids.count }

    /// Checks ids against `numExperts` and, when given, the row count against a sequence of `tokens`
    /// tokens (`tokens` or `tokens − 1` rows). Rejects ids outside [0, E), duplicates within a row and
    /// partly missing rows, naming the first offending index.
    public func validate(numExperts: Int, tokens: Int? = nil) throws {
        guard numExperts >= 1, numExperts <= 65_535 else { throw RoutesError.invalid("num_experts must be in 1...65535, got \(numExperts)") }
        guard topK <= numExperts else { throw RoutesError.invalid("top_k \(topK) exceeds num_experts \(numExperts)") }
        if let T = tokens, rows != T, rows != T - 1 {
            throw RoutesError.invalid("routes have \(rows) rows for \(T) tokens: expected \(T) or \(T - 1)")
        }
        for r in 0..<(rows * layers) {
            let base = r * topK
            var missing = 0
            for j in 0..<topK {
                let e = ids[base + j]
                if e == -1 { missing += 1; continue }
                if e < 0 || Int(e) >= numExperts {
                    throw RoutesError.invalid("expert id \(e) at [\(r / layers), \(r % layers), \(j)] is outside [0, \(numExperts))")
                }
                var k = 0
                while k < j {
                    if ids[base + k] == e { throw RoutesError.invalid("expert \(e) appears twice at [\(r / layers), \(r % layers)]") }
                    k += 1
                }
            }
            if missing != 0 && missing != topK {
                throw RoutesError.invalid("row [\(r / layers), \(r % layers)] is partly missing: -1 must fill a whole row")
            }
        }
    }

    /// Rows [start, end) (multi-turn slices).
    public func rows(_ range: Range<Int>) throws -> RouteArray {
        guard range.lowerBound >= 0, range.upperBound <= rows, range.lowerBound <= range.upperBound else {
            throw RoutesError.invalid("rows [\(range.lowerBound), \(range.upperBound)) are outside [0, \(rows))")
        }
        let w = layers * topK
        return try RouteArray(rows: range.count, layers: layers, topK: topK, ids: Array(ids[(range.lowerBound * w)..<(range.upperBound * w)]))
    }

    /// The number of (token, layer) rows marked missing.
    public var missingRows: Int {
        var n = 0
        for r in 0..<(rows * layers) where ids[r * topK] == -1 { n += 1 }
        return n
    }
}
