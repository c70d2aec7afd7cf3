// ModelConfig: the hyper-parameters that change the maths, read from and written to a Hugging Face
// config.json, for four MoE families. A family is a small set of differences from Qwen3-MoE:
//   qwen3_moe    softmax router (norm_topk_prob), per-head q/k RMSNorm, decoder_sparse_step / mlp_only_layers
//   mixtral      softmax router always renormalised over k, no q/k norm, every layer MoE, keys block_sparse_moe.*.w1/w3/w2
//   glm4_moe     sigmoid group-limited router with e_score_correction_bias and routed_scaling_factor, shared
//                experts, first_k_dense_replace dense layers, q/k/v biases, optional q/k norm, partial rotary
//   deepseek_v3  the same router and layers, multi-head latent attention (MLA) with interleaved RoPE
import Foundation
import JSON

/// The model families the engine computes exactly (`model_type` in config.json).
public enum Family: String, Sendable, Equatable, CaseIterable {
    case qwen3Moe = "qwen3_moe"
    case mixtral = "mixtral"
    case glm4Moe = "glm4_moe"
    case deepseekV3 = "deepseek_v3"

    var architecture: String {
        switch self {
        case .qwen3Moe: return "Qwen3MoeForCausalLM"
        case .mixtral: return "MixtralForCausalLM"
        case .glm4Moe: return "Glm4MoeForCausalLM"
        case .deepseekV3: return "DeepseekV3ForCausalLM"
        }
    }
}

/// How a router turns its logits into the selected experts and their gate weights.
public enum RouterKind: Sendable, Equatable {
    /// p = softmax(logits); idx = topk(p); w = p[idx] (÷ Σ when normTopKProb). Qwen3-MoE, Mixtral, OLMoE.
    case softmax
    /// s = sigmoid(logits); selection by s + e_score_correction_bias inside the topk_group best of n_group
    /// groups (group score: sum of its two best); w = s[idx] (÷ (Σ + 1e-20) when normTopKProb) × scaling.
    /// DeepSeek-V3 "noaux_tc", GLM-4.5, Kimi-K2.
    case sigmoidGrouped
}

/// Multi-head latent attention (DeepSeek-V2/V3): q through a low-rank bottleneck (or q_proj), k and v from
/// one shared latent, RoPE on a separate part of each q/k head with a single k_rope shared by all heads.
public struct MLAConfig: Sendable, Equatable {
    public var qLoraRank: Int      // 0: q = q_proj(h) (no q bottleneck)
    public var kvLoraRank: Int
    public var nopeDim: Int        // qk_nope_head_dim
    public var ropeDim: Int        // qk_rope_head_dim
    public var vDim: Int           // v_head_dim
    public init(qLoraRank: Int, kvLoraRank: Int, nopeDim: Int, ropeDim: Int, vDim: Int) {
        self.qLoraRank = qLoraRank; self.kvLoraRank = kvLoraRank; self.nopeDim = nopeDim; self.ropeDim = ropeDim; self.vDim = vDim
    }
    /// The q/k head width.
    public var qkDim: Int { nopeDim + ropeDim }
}

/// YaRN rotary scaling (rope_type "yarn"): interpolated low frequencies, extrapolated high ones, a linear
/// ramp between (beta_fast / beta_slow rotations), cos/sin × attention_factor, and for MLA models the
/// softmax scale × mscale(factor, mscale_all_dim)². transformers 5.25 modeling_rope_utils.py L346-L501.
public struct YarnScaling: Sendable, Equatable {
    public var factor: Double
    public var originalMaxPositions: Int
    public var betaFast: Double = 32
    public var betaSlow: Double = 1
    public var mscale: Double = 0
    public var mscaleAllDim: Double = 0
    public var attentionFactor: Double? = nil
    public var truncate = true

    /// 0.1 · m · ln(s) + 1 (1 when s ≤ 1): YaRN's Eq. 21.
    static func mscale(_ s: Double, _ m: Double) -> Double { s <= 1 ? 1 : 0.1 * m * Foundation.log(s) + 1 }

    /// The factor on cos and sin.
    public var cosSinFactor: Double {
        if let attentionFactor { return attentionFactor }
        if mscale != 0 && mscaleAllDim != 0 { return YarnScaling.mscale(factor, mscale) / YarnScaling.mscale(factor, mscaleAllDim) }
        return YarnScaling.mscale(factor, 1)
    }

    /// The inverse frequencies of a rotary width `dim` at base `theta`.
    public func inverseFrequencies(dim: Int, theta: Double) -> [Double] {
        func correctionDim(_ rotations: Double) -> Double {
            Double(dim) * Foundation.log(Double(originalMaxPositions) / (rotations * 2 * Double.pi)) / (2 * Foundation.log(theta))
        }
        var low = correctionDim(betaFast), high = correctionDim(betaSlow)
        if truncate { low = low.rounded(.down); high = high.rounded(.up) }
        low = max(low, 0); high = min(high, Double(dim - 1))
        if low == high { high += 0.001 }
        return (0..<(dim / 2)).map { i in
            let posFreq = Foundation.pow(theta, Double(2 * i) / Double(dim))
            let ramp = min(max((Double(i) - low) / (high - low), 0), 1)
            let extrapolation = 1 - ramp
            return (1 / (factor * posFreq)) * (1 - extrapolation) + (1 / posFreq) * extrapolation
        }
    }
}

public struct ModelConfig: Sendable, Equatable {
    public var family: Family = .qwen3Moe
    public var vocabSize: Int            // V
    public var hiddenSize: Int           // C
    public var intermediateSize: Int     // F: dense SwiGLU width (dense layers)
    public var moeIntermediateSize: Int  // I: per-expert SwiGLU width
    public var numLayers: Int            // L
    public var numHeads: Int             // H
    public var numKVHeads: Int           // Hkv (GQA: H % Hkv == 0); MLA: every head has its own k and v
    public var headDim: Int              // D: q/k head width (MLA: nope + rope)
    public var numExperts: Int           // E (0: every layer dense)
    public var topK: Int                 // K
    public var normTopKProb: Bool        // renormalise the K gate weights
    public var decoderSparseStep: Int    // Qwen3: layer l is MoE when (l + 1) % step == 0 ...
    public var mlpOnlyLayers: [Int]      // ... and l is not listed here
    public var tieWordEmbeddings: Bool   // LM head shares the embedding matrix
    public var ropeTheta: Double
    public var rmsNormEps: Float
    public var maxPositionEmbeddings: Int
    // family differences (defaults: Qwen3-MoE)
    public var qkNorm = true             // per-head RMSNorm of q and k before RoPE
    public var attentionBias = false     // q/k/v projection biases (GLM-4.5)
    public var rotaryDim: Int            // RoPE on the first rotaryDim dims of each head (partial rotary); MLA: ropeDim
    public var mla: MLAConfig? = nil
    public var router: RouterKind = .softmax
    public var nGroup = 1
    public var topkGroup = 1
    public var routedScalingFactor: Float = 1
    public var nSharedExperts = 0        // shared experts: one SwiGLU of width I · nSharedExperts, ungated
    public var firstKDenseReplace = 0    // GLM / DeepSeek: layers < k are dense ...
    public var moeLayerFreq = 1          // ... and MoE layers are those with l % freq == 0
    public var mtpLayers = 0             // num_nextn_predict_layers: their checkpoint tensors are skipped
    public var yarn: YarnScaling? = nil  // rope_scaling / rope_parameters of rope_type "yarn"

    /// RoPE's inverse frequencies (rotaryDim / 2 of them) and the factor on cos and sin.
    public var ropeFrequencies: (inverse: [Double], cosSinFactor: Double) {
        if let y = yarn { return (y.inverseFrequencies(dim: rotaryDim, theta: ropeTheta), y.cosSinFactor) }
        return ((0..<(rotaryDim / 2)).map { 1 / Foundation.pow(ropeTheta, Double(2 * $0) / Double(rotaryDim)) }, 1)
    }

    /// The attention softmax scale: head width^-1/2, and for MLA with yarn × mscale(factor, mscale_all_dim)²
    /// (transformers 5.25 yarn_apply_mscale, modeling_rope_utils.py L353-L365; DeepseekV3Attention L389).
    public var softmaxScale: Float {
        var s = 1 / Double(headDim).squareRoot()
        if mla != nil, let y = yarn, y.mscaleAllDim != 0 { let m = YarnScaling.mscale(y.factor, y.mscaleAllDim); s *= m * m }
        return Float(s)
    }

    public init(vocabSize: Int = 256, hiddenSize: Int = 64, intermediateSize: Int = 128,
                moeIntermediateSize: Int = 32, numLayers: Int = 4, numHeads: Int = 4, numKVHeads: Int = 2,
                headDim: Int = 16, numExperts: Int = 8, topK: Int = 2, normTopKProb: Bool = true,
                decoderSparseStep: Int = 1, mlpOnlyLayers: [Int] = [], tieWordEmbeddings: Bool = false,
                ropeTheta: Double = 10_000, rmsNormEps: Float = 1e-6, maxPositionEmbeddings: Int = 4096) {
        self.vocabSize = vocabSize; self.hiddenSize = hiddenSize; self.intermediateSize = intermediateSize
        self.moeIntermediateSize = moeIntermediateSize; self.numLayers = numLayers; self.numHeads = numHeads
        self.numKVHeads = numKVHeads; self.headDim = headDim; self.numExperts = numExperts; self.topK = topK
        self.normTopKProb = normTopKProb; self.decoderSparseStep = decoderSparseStep
        self.mlpOnlyLayers = mlpOnlyLayers; self.tieWordEmbeddings = tieWordEmbeddings
        self.ropeTheta = ropeTheta; self.rmsNormEps = rmsNormEps; self.maxPositionEmbeddings = maxPositionEmbeddings
        self.rotaryDim = headDim
    }

    /// Whether decoder layer `l` has a sparse MoE block (else a dense SwiGLU MLP), as the family's HF class decides.
    public func isMoE(layer l: Int) -> Bool {
        guard numExperts > 0 else { return false }
        switch family {
        case .qwen3Moe: return !mlpOnlyLayers.contains(l) && (l + 1) % decoderSparseStep == 0
        case .mixtral: return true
        case .glm4Moe, .deepseekV3: return l >= firstKDenseReplace && l % moeLayerFreq == 0
        }
    }

    /// The MoE layers in increasing layer index: the middle axis of every routes array.
    public var moeLayers: [Int] { (0..<numLayers).filter { isMoE(layer: $0) } }

    /// Width of the shared experts' SwiGLU (0: none).
    public var sharedIntermediateSize: Int { nSharedExperts * moeIntermediateSize }
    /// Heads that carry keys and values (MLA: every head).
    public var kvHeads: Int { mla == nil ? numKVHeads : numHeads }
    /// Value head width.
    public var valueDim: Int { mla?.vDim ?? headDim }

    /// The config.json key of the expert count in this family.
    var expertsKey: String {
        switch family {
        case .qwen3Moe: return "num_experts"
        case .mixtral: return "num_local_experts"
        case .glm4Moe, .deepseekV3: return "n_routed_experts"
        }
    }

    /// Checks that every value is one the engine can compute with; throws naming the field.
    public func validate() throws {
        func positive(_ v: Int, _ f: String) throws {
            if v <= 0 { throw MoEError.config(field: f, reason: "must be a positive integer, got \(v)") }
        }
        try positive(vocabSize, "vocab_size"); try positive(hiddenSize, "hidden_size")
        try positive(numLayers, "num_hidden_layers"); try positive(numHeads, "num_attention_heads")
        try positive(decoderSparseStep, "decoder_sparse_step"); try positive(maxPositionEmbeddings, "max_position_embeddings")
        if let m = mla {
            try positive(m.kvLoraRank, "kv_lora_rank"); try positive(m.nopeDim, "qk_nope_head_dim")
            try positive(m.ropeDim, "qk_rope_head_dim"); try positive(m.vDim, "v_head_dim")
            if m.qLoraRank < 0 { throw MoEError.config(field: "q_lora_rank", reason: "must be null or a positive integer, got \(m.qLoraRank)") }
            if m.ropeDim % 2 != 0 { throw MoEError.config(field: "qk_rope_head_dim", reason: "must be even for rotary embeddings, got \(m.ropeDim)") }
            if headDim != m.qkDim || rotaryDim != m.ropeDim {
                throw MoEError.config(field: "qk_rope_head_dim", reason: "head widths are inconsistent (q/k \(headDim), rope \(rotaryDim))")
            }
        } else {
            try positive(numKVHeads, "num_key_value_heads"); try positive(headDim, "head_dim")
            if numHeads % numKVHeads != 0 {
                throw MoEError.config(field: "num_key_value_heads", reason: "\(numKVHeads) does not divide num_attention_heads \(numHeads)")
            }
            if headDim % 2 != 0 { throw MoEError.config(field: "head_dim", reason: "must be even for rotary embeddings, got \(headDim)") }
            if rotaryDim <= 0 || rotaryDim > headDim || rotaryDim % 2 != 0 {
                throw MoEError.config(field: "partial_rotary_factor", reason: "gives a rotary width of \(rotaryDim) dims of head_dim \(headDim): it must be even and in 2...\(headDim)")
            }
        }
        if numExperts < 0 { throw MoEError.config(field: expertsKey, reason: "must be >= 0, got \(numExperts)") }
        if numExperts > 65_536 { throw MoEError.config(field: expertsKey, reason: "at most 65536 experts are supported, got \(numExperts)") }
        if moeLayerFreq < 1 { throw MoEError.config(field: "moe_layer_freq", reason: "must be a positive integer, got \(moeLayerFreq)") }
        if firstKDenseReplace < 0 { throw MoEError.config(field: "first_k_dense_replace", reason: "must be >= 0, got \(firstKDenseReplace)") }
        if nSharedExperts < 0 { throw MoEError.config(field: "n_shared_experts", reason: "must be >= 0, got \(nSharedExperts)") }
        if !moeLayers.isEmpty {
            try positive(moeIntermediateSize, family == .mixtral ? "intermediate_size" : "moe_intermediate_size")
            if topK < 1 || topK > numExperts {
                throw MoEError.config(field: "num_experts_per_tok", reason: "must be in 1...\(numExperts), got \(topK)")
            }
            if router == .sigmoidGrouped {
                if nGroup < 1 || numExperts % nGroup != 0 || numExperts / nGroup < 2 {
                    throw MoEError.config(field: "n_group", reason: "must divide \(expertsKey) \(numExperts) into groups of at least 2 experts, got \(nGroup)")
                }
                if topkGroup < 1 || topkGroup > nGroup {
                    throw MoEError.config(field: "topk_group", reason: "must be in 1...\(nGroup) (n_group), got \(topkGroup)")
                }
                if topK > topkGroup * (numExperts / nGroup) {
                    throw MoEError.config(field: "num_experts_per_tok", reason: "\(topK) is more than the \(topkGroup * (numExperts / nGroup)) experts of topk_group \(topkGroup) groups")
                }
                if !(routedScalingFactor > 0) || !routedScalingFactor.isFinite {
                    throw MoEError.config(field: "routed_scaling_factor", reason: "must be a positive number, got \(routedScalingFactor)")
                }
            }
        }
        if moeLayers.count < numLayers { try positive(intermediateSize, "intermediate_size") }
        for l in mlpOnlyLayers where l < 0 || l >= numLayers {
            throw MoEError.config(field: "mlp_only_layers", reason: "layer \(l) is outside 0..<\(numLayers)")
        }
        if !(ropeTheta > 0) || !ropeTheta.isFinite { throw MoEError.config(field: "rope_theta", reason: "must be a positive number") }
        if !(rmsNormEps > 0) || !rmsNormEps.isFinite { throw MoEError.config(field: "rms_norm_eps", reason: "must be a positive number") }
    }

    // MARK: config.json

    /// Parses a Hugging Face `config.json` object of one of the four families (`model_type`; absent means
    /// qwen3_moe). Fields that would change the maths in a way the engine does not implement (rope scaling,
    /// sliding windows, other activations, other router kinds) are refused, naming the field and the value.
    public init(json: JSONObject) throws {
        let r = ConfigReader(json)
        var family = Family.qwen3Moe
        if let t = r.present("model_type") {
            let names = ["qwen3_moe": Family.qwen3Moe, "qwen3": .qwen3Moe, "mixtral": .mixtral, "glm4_moe": .glm4Moe,
                         "deepseek_v3": .deepseekV3, "kimi_k2": .deepseekV3]
            guard let s = t.stringValue, let f = names[s] else {
                throw MoEError.config(field: "model_type", reason: "expected one of \"qwen3_moe\", \"mixtral\", \"glm4_moe\", \"deepseek_v3\" (or \"kimi_k2\"), got \(t.serialized())")
            }
            family = f
        }
        if let act = r.present("hidden_act"), act.stringValue != "silu" {
            throw MoEError.config(field: "hidden_act", reason: "only \"silu\" is supported, got \(act.serialized())")
        }
        if try r.bool("use_sliding_window", default: false) {
            throw MoEError.config(field: "use_sliding_window", reason: "sliding-window attention is not supported")
        }
        // rotary settings: transformers 5 writes `rope_parameters` (rope_theta and partial_rotary_factor
        // inside); older configs `rope_theta` and `rope_scaling`
        let ropeField = r.present("rope_parameters") != nil ? "rope_parameters" : "rope_scaling"
        var rope = JSONObject()
        if let v = r.present(ropeField) {
            guard let o = v.objectValue else { throw MoEError.config(field: ropeField, reason: "must be an object, got \(v.serialized())") }
            rope = o
        }
        let rr = ConfigReader(rope)
        let hidden = try r.int("hidden_size"), heads = try r.int("num_attention_heads")
        guard heads > 0 else { throw MoEError.config(field: "num_attention_heads", reason: "must be a positive integer, got \(heads)") }
        self.init(
            vocabSize: try r.int("vocab_size"), hiddenSize: hidden,
            intermediateSize: try r.int("intermediate_size", default: 0),
            moeIntermediateSize: try r.int("moe_intermediate_size", default: 0),
            numLayers: try r.int("num_hidden_layers"), numHeads: heads,
            numKVHeads: try r.int("num_key_value_heads", default: heads),
            headDim: try r.int("head_dim", default: hidden / heads),
            numExperts: 0, topK: try r.int("num_experts_per_tok", default: 0),
            normTopKProb: try r.bool("norm_topk_prob", default: false),
            tieWordEmbeddings: try r.bool("tie_word_embeddings", default: false),
            ropeTheta: try rr.double("rope_theta", default: try r.double("rope_theta", default: 10_000)),
            rmsNormEps: Float(try r.double("rms_norm_eps", default: 1e-6)),
            maxPositionEmbeddings: try r.int("max_position_embeddings", default: 32_768))
        self.family = family
        let type = (rope["rope_type"] ?? rope["type"])?.stringValue ?? "default"
        switch type {
        case "default": break
        case "yarn":
            let original = try r.int("original_max_position_embeddings", default: try rr.int("original_max_position_embeddings", default: maxPositionEmbeddings))
            var y = YarnScaling(factor: try rr.double("factor", default: Double(maxPositionEmbeddings) / Double(max(original, 1))), originalMaxPositions: original)
            let beta = try rr.double("beta_fast", default: 32), betaSlow = try rr.double("beta_slow", default: 1)
            y.betaFast = beta == 0 ? 32 : beta; y.betaSlow = betaSlow == 0 ? 1 : betaSlow
            y.mscale = try rr.double("mscale", default: 0); y.mscaleAllDim = try rr.double("mscale_all_dim", default: 0)
            if rr.present("attention_factor") != nil { y.attentionFactor = try rr.double("attention_factor", default: 1) }
            y.truncate = try rr.bool("truncate", default: true)
            guard y.factor > 0, y.factor.isFinite, original > 0, y.betaFast > 0, y.betaSlow > 0 else {
                throw MoEError.config(field: ropeField, reason: "yarn needs a positive factor, original_max_position_embeddings, beta_fast and beta_slow")
            }
            yarn = y
        default:
            throw MoEError.config(field: ropeField, reason: "rope_type \(type) is not supported (default and yarn are)")
        }
        r.partialRotary = rope["partial_rotary_factor"].flatMap { $0.isNull ? nil : $0 }
        switch family {
        case .qwen3Moe: try readQwen3(r)
        case .mixtral: try readMixtral(r)
        case .glm4Moe: try readGLM(r)
        case .deepseekV3: try readDeepSeek(r)
        }
        try validate()
    }

    private mutating func readQwen3(_ r: ConfigReader) throws {
        if try r.bool("attention_bias", default: false) {
            throw MoEError.config(field: "attention_bias", reason: "attention biases are not supported in qwen3_moe")
        }
        numExperts = try r.int("num_experts", default: 0)
        decoderSparseStep = try r.int("decoder_sparse_step", default: 1)
        mlpOnlyLayers = try r.intList("mlp_only_layers") ?? []
        rotaryDim = headDim
    }

    // Mixtral (transformers models/mixtral/configuration_mixtral.py): intermediate_size is each expert's
    // width; head_dim defaults to hidden_size / heads; the router always renormalises.
    private mutating func readMixtral(_ r: ConfigReader) throws {
        if let w = r.present("sliding_window") {
            throw MoEError.config(field: "sliding_window", reason: "sliding-window attention is not supported, got \(w.serialized())")
        }
        if let j = r.present("router_jitter_noise"), (j.doubleValue ?? 1) != 0 {
            throw MoEError.config(field: "router_jitter_noise", reason: "router noise is not supported, got \(j.serialized())")
        }
        numExperts = try r.int("num_local_experts", default: 8)
        moeIntermediateSize = intermediateSize
        intermediateSize = 0
        normTopKProb = true
        qkNorm = false
        rotaryDim = headDim
    }

    /// The sigmoid group-limited router and layer pattern shared by GLM-4.5 and DeepSeek-V3. Absent fields
    /// take the HF config class's defaults (transformers 5.25 configuration_glm4_moe.py L102-L111,
    /// configuration_deepseek_v3.py L86-L103), as from_pretrained would.
    private mutating func readGroupedRouter(_ r: ConfigReader) throws {
        let ds = family == .deepseekV3
        router = .sigmoidGrouped
        numExperts = try r.int("n_routed_experts", default: ds ? 256 : 128)
        topK = try r.int("num_experts_per_tok", default: 8)
        moeIntermediateSize = try r.int("moe_intermediate_size", default: ds ? 2048 : 1408)
        nGroup = try r.int("n_group", default: ds ? 8 : 1)
        topkGroup = try r.int("topk_group", default: ds ? 4 : 1)
        nSharedExperts = try r.int("n_shared_experts", default: 1)
        routedScalingFactor = Float(try r.double("routed_scaling_factor", default: ds ? 2.5 : 1))
        normTopKProb = try r.bool("norm_topk_prob", default: true)
        firstKDenseReplace = try r.int("first_k_dense_replace", default: ds ? 3 : 1)
        mtpLayers = try r.int("num_nextn_predict_layers", default: 0)
        if let f = r.present("moe_layer_freq") {
            guard let n = f.intValue else { throw MoEError.config(field: "moe_layer_freq", reason: "per-layer lists are not supported, got \(f.serialized())") }
            moeLayerFreq = Int(n)
        }
        if let s = r.present("scoring_func"), s.stringValue != "sigmoid" {
            throw MoEError.config(field: "scoring_func", reason: "only \"sigmoid\" scoring is supported, got \(s.serialized())")
        }
        if let s = r.present("topk_method"), s.stringValue != "noaux_tc" {
            throw MoEError.config(field: "topk_method", reason: "only \"noaux_tc\" (biased group-limited top-k) is supported, got \(s.serialized())")
        }
    }

    // GLM-4.5 (transformers models/glm4_moe/configuration_glm4_moe.py): partial_rotary_factor defaults to 0.5.
    private mutating func readGLM(_ r: ConfigReader) throws {
        try readGroupedRouter(r)
        attentionBias = try r.bool("attention_bias", default: false)
        qkNorm = try r.bool("use_qk_norm", default: false)
        let factor = try r.partialRotary?.doubleValue ?? r.double("partial_rotary_factor", default: 0.5)
        guard factor > 0, factor <= 1 else { throw MoEError.config(field: "partial_rotary_factor", reason: "must be in (0, 1], got \(factor)") }
        rotaryDim = Int(Double(headDim) * factor)
    }

    // DeepSeek-V3 (transformers models/deepseek_v3/configuration_deepseek_v3.py): MLA; rope_interleave
    // defaults to true and the non-interleaved variant is refused.
    private mutating func readDeepSeek(_ r: ConfigReader) throws {
        try readGroupedRouter(r)
        if try r.bool("attention_bias", default: false) {
            throw MoEError.config(field: "attention_bias", reason: "MLA projection biases are not supported")
        }
        if !(try r.bool("rope_interleave", default: true)) {
            throw MoEError.config(field: "rope_interleave", reason: "only the interleaved rotary layout of DeepSeek-V3 is supported, got false")
        }
        // q_lora_rank: absent → HF's default 1536; null → q_proj without a bottleneck
        let qLora = r.json["q_lora_rank"] == nil ? 1536 : try r.int("q_lora_rank", default: 0)
        if qLora == 0, r.present("q_lora_rank") != nil {
            throw MoEError.config(field: "q_lora_rank", reason: "must be null or a positive integer, got 0")
        }
        let m = MLAConfig(qLoraRank: qLora, kvLoraRank: try r.int("kv_lora_rank", default: 512),
                          nopeDim: try r.int("qk_nope_head_dim", default: 128), ropeDim: try r.int("qk_rope_head_dim", default: 64),
                          vDim: try r.int("v_head_dim", default: 128))
        mla = m
        qkNorm = false
        headDim = m.qkDim
        rotaryDim = m.ropeDim
        numKVHeads = numHeads
    }

    /// A config built in code (a dictionary of Swift values): written as JSON text and read back by the
    /// same reader as a config.json, so a Bool is never taken for an integer.
    public init(json: [String: Any]) throws {
        guard JSONSerialization.isValidJSONObject(json), let data = try? JSONSerialization.data(withJSONObject: json) else {
            throw MoEError.config(field: "config", reason: "is not a JSON object")
        }
        try self.init(json: try ModelConfig.object(data, what: "config"))
    }

    /// A JSON object from bytes, or a one-line error.
    static func object(_ data: Data, what: String) throws -> JSONObject {
        guard let v = try? JSONReader.parse([UInt8](data), maxValues: 1_000_000), let o = v.objectValue else {
            throw MoEError.config(field: what, reason: "is not a JSON object")
        }
        return o
    }

    /// Reads `dir/config.json`.
    public static func load(directory: URL) throws -> ModelConfig {
        let url = directory.appendingPathComponent("config.json")
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw MoEError.file(path: url.path, reason: "cannot read config.json")
        }
        guard let v = try? JSONReader.parse([UInt8](data), maxValues: 1_000_000), let o = v.objectValue else {
            throw MoEError.file(path: url.path, reason: "not a JSON object")
        }
        return try ModelConfig(json: o)
    }

    /// The Hugging Face `config.json` object for this config, in its family's field names.
    public func jsonObject() -> [String: Any] {
        var o: [String: Any] = [
            "architectures": [family.architecture], "model_type": family.rawValue,
            "vocab_size": vocabSize, "hidden_size": hiddenSize, "num_hidden_layers": numLayers,
            "num_attention_heads": numHeads, "num_key_value_heads": numKVHeads,
            "num_experts_per_tok": topK, "tie_word_embeddings": tieWordEmbeddings, "rope_theta": ropeTheta,
            "rms_norm_eps": Double("\(rmsNormEps)") ?? Double(rmsNormEps),
            "max_position_embeddings": maxPositionEmbeddings, "hidden_act": "silu", "attention_dropout": 0.0,
            "torch_dtype": "float32", "rope_scaling": NSNull(),
        ]
        if let y = yarn {
            var rs: [String: Any] = ["rope_type": "yarn", "factor": y.factor, "original_max_position_embeddings": y.originalMaxPositions,
                                     "beta_fast": y.betaFast, "beta_slow": y.betaSlow, "truncate": y.truncate]
            if y.mscale != 0 { rs["mscale"] = y.mscale }
            if y.mscaleAllDim != 0 { rs["mscale_all_dim"] = y.mscaleAllDim }
            if let a = y.attentionFactor { rs["attention_factor"] = a }
            o["rope_scaling"] = rs
        }
        switch family {
        case .qwen3Moe:
            o.merge(["intermediate_size": intermediateSize, "moe_intermediate_size": moeIntermediateSize, "head_dim": headDim,
                     "num_experts": numExperts, "norm_topk_prob": normTopKProb, "decoder_sparse_step": decoderSparseStep,
                     "mlp_only_layers": mlpOnlyLayers, "attention_bias": false, "use_sliding_window": false]) { $1 }
        case .mixtral:
            o.merge(["intermediate_size": moeIntermediateSize, "num_local_experts": numExperts, "head_dim": headDim,
                     "sliding_window": NSNull(), "router_jitter_noise": 0.0]) { $1 }
        case .glm4Moe, .deepseekV3:
            o.merge(["intermediate_size": intermediateSize, "moe_intermediate_size": moeIntermediateSize,
                     "n_routed_experts": numExperts, "n_group": nGroup, "topk_group": topkGroup,
                     "n_shared_experts": nSharedExperts, "routed_scaling_factor": Double("\(routedScalingFactor)") ?? 1,
                     "norm_topk_prob": normTopKProb, "first_k_dense_replace": firstKDenseReplace,
                     "moe_layer_freq": moeLayerFreq, "num_nextn_predict_layers": mtpLayers]) { $1 }
            if let m = mla {
                o.merge(["q_lora_rank": m.qLoraRank > 0 ? m.qLoraRank as Any : NSNull(), "kv_lora_rank": m.kvLoraRank,
                         "qk_nope_head_dim": m.nopeDim, "qk_rope_head_dim": m.ropeDim, "v_head_dim": m.vDim,
                         "rope_interleave": true, "attention_bias": false, "scoring_func": "sigmoid", "topk_method": "noaux_tc"]) { $1 }
            } else {
                o.merge(["head_dim": headDim, "attention_bias": attentionBias, "use_qk_norm": qkNorm,
                         "partial_rotary_factor": Double(rotaryDim) / Double(headDim)]) { $1 }
            }
        }
        return o
    }

    public func write(directory: URL) throws {
        let data = try JSONSerialization.data(withJSONObject: jsonObject(), options: [.prettyPrinted, .sortedKeys])
        try data.write(to: directory.appendingPathComponent("config.json"), options: .atomic)
    }
}

/// Typed reads of config.json fields; null counts as absent; errors name the field.
final class ConfigReader {
    let json: JSONObject
    /// rope_parameters' partial_rotary_factor (transformers 5 keeps it there), when given.
    var partialRotary: JSONValue?
    init(_ json: JSONObject) { self.json = json }

    func present(_ key: String) -> JSONValue? {
        guard let v = json[key], !v.isNull else { return nil }
        return v
    }
    func int(_ key: String, default d: Int? = nil) throws -> Int {
        guard let v = present(key) else {
            if let d { return d }
            throw MoEError.config(field: key, reason: "is missing")
        }
        guard let i = v.intValue, abs(i) < 1_000_000_000_000_000 else { throw MoEError.config(field: key, reason: "must be an integer, got \(v.serialized())") }
        return Int(i)
    }
    func double(_ key: String, default d: Double) throws -> Double {
        guard let v = present(key) else { return d }
        guard let x = v.doubleValue else { throw MoEError.config(field: key, reason: "must be a number, got \(v.serialized())") }
        return x
    }
    func bool(_ key: String, default d: Bool) throws -> Bool {
        guard let v = present(key) else { return d }
        guard case let .bool(b) = v else { throw MoEError.config(field: key, reason: "must be true or false, got \(v.serialized())") }
        return b
    }
    func intList(_ key: String) throws -> [Int]? {
        guard let v = present(key) else { return nil }
        guard let list = v.arrayValue else { throw MoEError.config(field: key, reason: "must be a list of layer indices") }
        return try list.map { item in
            guard let n = item.intValue, abs(n) < 1 << 31 else {
                throw MoEError.config(field: key, reason: "must be a list of layer indices, got \(item.serialized())")
            }
            return Int(n)
        }
    }
}
