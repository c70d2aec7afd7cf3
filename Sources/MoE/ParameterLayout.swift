// ParameterLayout: the size table that carves every parameter (and its gradient and AdamW state) out of
// one flat fp32 allocation, and maps each Hugging Face tensor name to its contiguous slice.
//
// Fused layouts (each HF tensor is still one contiguous block, so load and save are plain copies):
//   qkv     [(H + 2·Hkv)·D, C]  = q_proj rows, then k_proj rows, then v_proj rows: one GEMM
//   gateUp  [E, 2·I, C]         = per expert gate_proj rows then up_proj rows: one GEMM per expert
//   down    [E, C, I]

public struct LayerParams: Sendable {
    public let index: Int
    public let isMoE: Bool
    public let inputNorm: Int   // [C]
    public let qkv: Int         // [(H+2Hkv)D, C]
    public let qNorm: Int       // [D]
    public let kNorm: Int       // [D]
    public let o: Int           // [C, H·D]
    public let postNorm: Int    // [C]
    public let router: Int      // [E, C] (MoE layers only)
    public let gateUp: Int      // MoE [E, 2I, C] or dense [2F, C]
    public let down: Int        // MoE [E, C, I] or dense [C, F]
}

public struct TensorSlot: Sendable {
    public let name: String
    public let shape: [Int]
    public let offset: Int
    public var count: Int { shape.reduce(1, *) }
    /// Norm weights start at 1 and are not decayed; matrices are drawn from N(0, std²).
    public var isNorm: Bool { shape.count == 1 }
}

public struct ParameterLayout: Sendable {
    public let config: ModelConfig
    public let embed: Int        // [V, C]
    public let layers: [LayerParams]
    public let finalNorm: Int    // [C]
    public let lmHead: Int       // [V, C]; equals `embed` when tie_word_embeddings
    public let total: Int
    public let tensors: [TensorSlot]

    public init(_ c: ModelConfig) {
        let C = c.hiddenSize, D = c.headDim, H = c.numHeads, Hkv = c.numKVHeads
        var total = 0
        var tensors: [TensorSlot] = []
        func take(_ name: String, _ shape: [Int]) -> Int {
            let o = total
            tensors.append(TensorSlot(name: name, shape: shape, offset: o))
            total += shape.reduce(1, *)
            return o
        }
        embed = take("model.embed_tokens.weight", [c.vocabSize, C])
        var layers: [LayerParams] = []
        for l in 0..<c.numLayers {
            let p = "model.layers.\(l)."
            let inNorm = take(p + "input_layernorm.weight", [C])
            let qkv = take(p + "self_attn.q_proj.weight", [H * D, C])
            _ = take(p + "self_attn.k_proj.weight", [Hkv * D, C])
            _ = take(p + "self_attn.v_proj.weight", [Hkv * D, C])
            let qn = take(p + "self_attn.q_norm.weight", [D])
            let kn = take(p + "self_attn.k_norm.weight", [D])
            let o = take(p + "self_attn.o_proj.weight", [C, H * D])
            let post = take(p + "post_attention_layernorm.weight", [C])
            let moe = c.isMoE(layer: l)
            var router = -1, gateUp = 0, down = 0
            if moe {
                let E = c.numExperts, I = c.moeIntermediateSize
                router = take(p + "mlp.gate.weight", [E, C])
                gateUp = total
                for e in 0..<E {
                    _ = take(p + "mlp.experts.\(e).gate_proj.weight", [I, C])
                    _ = take(p + "mlp.experts.\(e).up_proj.weight", [I, C])
                }
                down = total
                for e in 0..<E { _ = take(p + "mlp.experts.\(e).down_proj.weight", [C, I]) }
            } else {
                let F = c.intermediateSize
                gateUp = take(p + "mlp.gate_proj.weight", [F, C])
                _ = take(p + "mlp.up_proj.weight", [F, C])
                down = take(p + "mlp.down_proj.weight", [C, F])
            }
            layers.append(LayerParams(index: l, isMoE: moe, inputNorm: inNorm, qkv: qkv, qNorm: qn, kNorm: kn,
                                      o: o, postNorm: post, router: router, gateUp: gateUp, down: down))
        }
        self.layers = layers
        finalNorm = take("model.norm.weight", [C])
        lmHead = c.tieWordEmbeddings ? embed : take("lm_head.weight", [c.vocabSize, C])
        self.config = c
        self.total = total
        self.tensors = tensors
    }

    public func slot(_ name: String) -> TensorSlot? { tensors.first { $0.name == name } }
}
