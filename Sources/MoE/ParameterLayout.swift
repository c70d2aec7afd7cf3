// ParameterLayout: the size table that carves every parameter (and its gradient and AdamW state) out of
// one flat fp32 allocation, and maps each Hugging Face tensor name (in the family's own naming) to its
// contiguous slice.
//
// Fused layouts (each HF tensor is still one contiguous block, so load and save are plain copies):
//   qkv     [(H + 2·Hkv)·D, C]  = q_proj rows, then k_proj rows, then v_proj rows: one GEMM (biases likewise)
//   gateUp  [E, 2·I, C]         = per expert gate_proj (Mixtral w1) rows then up_proj (w3) rows
//   down    [E, C, I]           = per expert down_proj (Mixtral w2)
//   shared  [2·Is, C], [C, Is]  = shared_experts gate_proj then up_proj; down_proj
// MLA layers (DeepSeek-V3) have q_a_proj / q_a_layernorm / q_b_proj (or q_proj), kv_a_proj_with_mqa,
// kv_a_layernorm and kv_b_proj instead of qkv. Absent parts have offset -1.

public struct LayerParams: Sendable {
    public let index: Int
    public let isMoE: Bool
    public let inputNorm: Int   // [C]
    public let qkv: Int         // GQA [(H+2Hkv)D, C]
    public let qkvBias: Int     // GQA [(H+2Hkv)D] (attention_bias)
    public let qNorm: Int       // [D] (qk norm)
    public let kNorm: Int       // [D]
    public let qA: Int          // MLA [Rq, C]
    public let qANorm: Int      // MLA [Rq]
    public let qProj: Int       // MLA [H·(Dn+Dr), Rq] (q_b_proj) or [H·(Dn+Dr), C] (q_proj)
    public let kvA: Int         // MLA [Rkv + Dr, C]
    public let kvANorm: Int     // MLA [Rkv]
    public let kvB: Int         // MLA [H·(Dn+Dv), Rkv]
    public let o: Int           // [C, H·Dv]
    public let postNorm: Int    // [C]
    public let router: Int      // [E, C] (MoE layers only)
    public let routerBias: Int  // [E] e_score_correction_bias (a buffer: selection only, never trained)
    public let gateUp: Int      // MoE [E, 2I, C] or dense [2F, C]
    public let down: Int        // MoE [E, C, I] or dense [C, F]
    public let sharedGateUp: Int  // [2Is, C]
    public let sharedDown: Int    // [C, Is]
}

public struct TensorSlot: Sendable {
    public enum Role: Sendable { case matrix, norm, bias, buffer }
    public let name: String
    public let shape: [Int]
    public let offset: Int
    public let role: Role
    public var count: Int { shape.reduce(1, *) }
    /// Norm weights start at 1 and are not decayed; matrices are drawn from N(0, std²); biases and buffers start at 0.
    public var isNorm: Bool { role == .norm }
    /// Not a trained parameter: no gradient, no optimiser update (HF registers it as a buffer).
    public var isBuffer: Bool { role == .buffer }
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
        func take(_ name: String, _ shape: [Int], _ role: TensorSlot.Role = .matrix) -> Int {
            let o = total
            tensors.append(TensorSlot(name: name, shape: shape, offset: o, role: role))
            total += shape.reduce(1, *)
            return o
        }
        embed = take("model.embed_tokens.weight", [c.vocabSize, C])
        var layers: [LayerParams] = []
        for l in 0..<c.numLayers {
            let p = "model.layers.\(l)."
            let inNorm = take(p + "input_layernorm.weight", [C], .norm)
            var qkv = -1, qkvBias = -1, qn = -1, kn = -1, qA = -1, qANorm = -1, qProj = -1, kvA = -1, kvANorm = -1, kvB = -1
            if let m = c.mla {
                if m.qLoraRank > 0 {
                    qA = take(p + "self_attn.q_a_proj.weight", [m.qLoraRank, C])
                    qANorm = take(p + "self_attn.q_a_layernorm.weight", [m.qLoraRank], .norm)
                    qProj = take(p + "self_attn.q_b_proj.weight", [H * m.qkDim, m.qLoraRank])
                } else {
                    qProj = take(p + "self_attn.q_proj.weight", [H * m.qkDim, C])
                }
                kvA = take(p + "self_attn.kv_a_proj_with_mqa.weight", [m.kvLoraRank + m.ropeDim, C])
                kvANorm = take(p + "self_attn.kv_a_layernorm.weight", [m.kvLoraRank], .norm)
                kvB = take(p + "self_attn.kv_b_proj.weight", [H * (m.nopeDim + m.vDim), m.kvLoraRank])
            } else {
                qkv = take(p + "self_attn.q_proj.weight", [H * D, C])
                _ = take(p + "self_attn.k_proj.weight", [Hkv * D, C])
                _ = take(p + "self_attn.v_proj.weight", [Hkv * D, C])
                if c.attentionBias {
                    qkvBias = take(p + "self_attn.q_proj.bias", [H * D], .bias)
                    _ = take(p + "self_attn.k_proj.bias", [Hkv * D], .bias)
                    _ = take(p + "self_attn.v_proj.bias", [Hkv * D], .bias)
                }
                if c.qkNorm {
                    qn = take(p + "self_attn.q_norm.weight", [D], .norm)
                    kn = take(p + "self_attn.k_norm.weight", [D], .norm)
                }
            }
            let o = take(p + "self_attn.o_proj.weight", [C, H * c.valueDim])
            let post = take(p + "post_attention_layernorm.weight", [C], .norm)
            let moe = c.isMoE(layer: l)
            var router = -1, routerBias = -1, gateUp = 0, down = 0, sharedGateUp = -1, sharedDown = -1
            if moe {
                let E = c.numExperts, I = c.moeIntermediateSize
                let mixtral = c.family == .mixtral
                let block = p + (mixtral ? "block_sparse_moe." : "mlp.")
                let (g, u, d) = mixtral ? ("w1", "w3", "w2") : ("gate_proj", "up_proj", "down_proj")
                router = take(block + "gate.weight", [E, C])
                if c.router == .sigmoidGrouped { routerBias = take(block + "gate.e_score_correction_bias", [E], .buffer) }
                gateUp = total
                for e in 0..<E {
                    _ = take(block + "experts.\(e).\(g).weight", [I, C])
                    _ = take(block + "experts.\(e).\(u).weight", [I, C])
                }
                down = total
                for e in 0..<E { _ = take(block + "experts.\(e).\(d).weight", [C, I]) }
                if c.nSharedExperts > 0 {
                    let Is = c.sharedIntermediateSize
                    sharedGateUp = take(block + "shared_experts.gate_proj.weight", [Is, C])
                    _ = take(block + "shared_experts.up_proj.weight", [Is, C])
                    sharedDown = take(block + "shared_experts.down_proj.weight", [C, Is])
                }
            } else {
                let F = c.intermediateSize
                gateUp = take(p + "mlp.gate_proj.weight", [F, C])
                _ = take(p + "mlp.up_proj.weight", [F, C])
                down = take(p + "mlp.down_proj.weight", [C, F])
            }
            layers.append(LayerParams(index: l, isMoE: moe, inputNorm: inNorm, qkv: qkv, qkvBias: qkvBias, qNorm: qn, kNorm: kn,
                                      qA: qA, qANorm: qANorm, qProj: qProj, kvA: kvA, kvANorm: kvANorm, kvB: kvB,
                                      o: o, postNorm: post, router: router, routerBias: routerBias, gateUp: gateUp, down: down,
                                      sharedGateUp: sharedGateUp, sharedDown: sharedDown))
        }
        self.layers = layers
        finalNorm = take("model.norm.weight", [C], .norm)
        lmHead = c.tieWordEmbeddings ? embed : take("lm_head.weight", [c.vocabSize, C])
        self.config = c
        self.total = total
        self.tensors = tensors
    }

    public func slot(_ name: String) -> TensorSlot? { tensors.first { $0.name == name } }
}
