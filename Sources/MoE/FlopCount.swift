// FlopCount: model FLOPs the usual way: 2 × multiply-adds of every matmul executed, only the K routed
// experts, plus the causal part of the attention score and value products. Backward counts 2× forward.

public enum FlopCount {
    /// Forward FLOPs of the projections, experts and LM head for one token.
    public static func perToken(_ c: ModelConfig) -> Double {
        let C = Double(c.hiddenSize), D = Double(c.headDim), H = Double(c.numHeads), Hkv = Double(c.numKVHeads)
        var macs = 0.0
        for l in 0..<c.numLayers {
            if let m = c.mla {
                let Rq = Double(m.qLoraRank), R = Double(m.kvLoraRank), Dq = Double(m.qkDim)
                macs += (m.qLoraRank > 0 ? C * Rq + Rq * H * Dq : C * H * Dq)
                macs += C * (R + Double(m.ropeDim)) + R * H * Double(m.nopeDim + m.vDim) + H * Double(m.vDim) * C
            } else {
                macs += C * (H + 2 * Hkv) * D + H * D * C
            }
            if c.isMoE(layer: l) {
                let I = Double(c.moeIntermediateSize)
                macs += C * Double(c.numExperts) + Double(c.topK) * 3 * C * I + 3 * C * Double(c.sharedIntermediateSize)
            } else {
                macs += 3 * C * Double(c.intermediateSize)
            }
        }
        macs += C * Double(c.vocabSize)
        return 2 * macs
    }

    /// Attention FLOPs (scores and values) of `queries` rows that see keys 0...pos0+i, over all layers.
    public static func attention(_ c: ModelConfig, queries: Int, pos0: Int) -> Double {
        let keys = Double(queries) * Double(pos0) + Double(queries) * Double(queries + 1) / 2
        return 2 * Double(c.numHeads * (c.headDim + c.valueDim)) * keys * Double(c.numLayers)
    }

    /// Forward FLOPs of a packed batch of sequences.
    public static func forward(_ c: ModelConfig, lengths: [Int]) -> Double {
        lengths.reduce(0) { $0 + Double($1) * perToken(c) + attention(c, queries: $1, pos0: 0) }
    }

    /// A training step: forward + backward (2× forward).
    public static func trainStep(_ c: ModelConfig, lengths: [Int]) -> Double { 3 * forward(c, lengths: lengths) }
}
