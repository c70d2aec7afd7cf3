// ExpertLoad: how many tokens each expert of each MoE layer received, from stored routes, and its
// imbalance max/mean per layer (1 is perfect balance; E / K when every token of a layer went to the same
// K experts). Computed once when routes are written and kept beside them (int32 little-endian [layers, E],
// with the rows that had no route), so the load of a training step is a sum of small histograms rather
// than a pass over gigabytes of routes. ReLibra (2025) balances expert-parallel load from exactly this.
import CPosix
import Foundation

public struct ExpertLoad: Sendable, Equatable {
    public var layers: Int
    public var numExperts: Int
    /// Tokens routed to each expert, [layers, E] row-major.
    public var counts: [Int]
    /// Rows (tokens into the model) with a route in every layer.
    public var tokens: Int

    public init(layers: Int, numExperts: Int) {
        self.layers = layers; self.numExperts = numExperts
        counts = [Int](repeating: 0, count: layers * numExperts)
        tokens = 0
    }

    /// The load of `p` and its rows without a route (in some layer), in one pass over the packed bytes.
    /// `tokens`: the sequence's length, when known; a T-th row (NeMo-RL's placeholder for the last token,
    /// which never went into the model) is then left out.
    public static func count(_ p: PackedRoutes, tokens: Int? = nil) throws -> (load: ExpertLoad, missingRows: [Int]) {
        try p.verify()
        var load = ExpertLoad(layers: p.layers, numExperts: p.numExperts)
        var missing: [Int] = []
        let L = p.layers, K = p.topK, E = p.numExperts
        var c = [Int32](repeating: 0, count: L * E)
        let rows = min(p.rows, tokens.map { max(0, $0 - 1) } ?? p.rows)
        var flags = [UInt8](repeating: 0, count: rows)
        let bad = p.bytes.withUnsafeBytes { raw in
            c.withUnsafeMutableBufferPointer { counts in
                flags.withUnsafeMutableBufferPointer { f in
                    r3_routes_histogram(raw.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(rows), UInt32(L), UInt32(K), UInt32(E),
                                        UInt32(p.width), counts.baseAddress, f.baseAddress)   // ids are validated on write; never a write past the histogram
                }
            }
        }
        for t in 0..<rows where flags[t] != 0 { missing.append(t) }
        if bad >= 0 { throw RoutesError.malformed("stored routes hold expert \(bad) of \(E)") }
        load.counts = c.map(Int.init)
        load.tokens = rows - missing.count
        return (load, missing)
    }

    /// Adds another histogram of the same layout.
    public mutating func add(_ o: ExpertLoad) {
        precondition(o.layers == layers && o.numExperts == numExperts)
        for i in counts.indices { counts[i] += o.counts[i] }
        tokens += o.tokens
    }

    /// max / mean tokens per expert, per layer (0 for a layer that received none).
    public var imbalance: [Double] {
        (0..<layers).map { l in
            let row = counts[(l * numExperts)..<((l + 1) * numExperts)]
            let sum = row.reduce(0, +)
            return sum == 0 ? 0 : Double(row.max()!) * Double(numExperts) / Double(sum)
        }
    }

    /// The stored form: int32 little-endian [layers, E].
    public var bytes: Data {
        var d = Data(count: counts.count * 4)
        d.withUnsafeMutableBytes { raw in for (i, v) in counts.enumerated() { raw.storeBytes(of: Int32(truncatingIfNeeded: v).littleEndian, toByteOffset: 4 * i, as: Int32.self) } }
        return d
    }

    /// From the stored form (`tokens` rows counted).
    public init(bytes: Data, layers: Int, numExperts: Int, tokens: Int) throws {
        guard bytes.count == layers * numExperts * 4 else {
            throw RoutesError.malformed("stored expert load has \(bytes.count) bytes for [\(layers), \(numExperts)] int32 counts")
        }
        self.layers = layers; self.numExperts = numExperts; self.tokens = tokens
        counts = bytes.withUnsafeBytes { raw in (0..<(layers * numExperts)).map { Int(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) } }
    }
}
