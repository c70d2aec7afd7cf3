// ModelConfig: the Qwen3-MoE hyper-parameters that change the maths, read from and written to config.json.
import Foundation

public struct ModelConfig: Sendable, Equatable {
    public var vocabSize: Int            // V
    public var hiddenSize: Int           // C
    public var intermediateSize: Int     // F: dense SwiGLU width (mlp_only_layers / non-sparse layers)
    public var moeIntermediateSize: Int  // I: per-expert SwiGLU width
    public var numLayers: Int            // L
    public var numHeads: Int             // H
    public var numKVHeads: Int           // Hkv (GQA: H % Hkv == 0)
    public var headDim: Int              // D (may differ from C / H)
    public var numExperts: Int           // E (0: every layer dense)
    public var topK: Int                 // K
    public var normTopKProb: Bool        // renormalise the K gate weights to sum 1
    public var decoderSparseStep: Int    // layer l is MoE when (l + 1) % step == 0 ...
    public var mlpOnlyLayers: [Int]      // ... and l is not listed here
    public var tieWordEmbeddings: Bool   // LM head shares the embedding matrix
    public var ropeTheta: Double
    public var rmsNormEps: Float
    public var maxPositionEmbeddings: Int

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
    }

    /// Whether decoder layer `l` has a sparse MoE block (else a dense SwiGLU MLP), as in HF Qwen3-MoE.
    public func isMoE(layer l: Int) -> Bool {
        numExperts > 0 && !mlpOnlyLayers.contains(l) && (l + 1) % decoderSparseStep == 0
    }

    /// The MoE layers in increasing layer index: the middle axis of every routes array.
    public var moeLayers: [Int] { (0..<numLayers).filter { isMoE(layer: $0) } }

    /// Checks that every value is one the engine can compute with; throws naming the field.
    public func validate() throws {
        func positive(_ v: Int, _ f: String) throws {
            if v <= 0 { throw MoEError.config(field: f, reason: "must be a positive integer, got \(v)") }
        }
        try positive(vocabSize, "vocab_size"); try positive(hiddenSize, "hidden_size")
        try positive(numLayers, "num_hidden_layers"); try positive(numHeads, "num_attention_heads")
        try positive(numKVHeads, "num_key_value_heads"); try positive(headDim, "head_dim")
        try positive(decoderSparseStep, "decoder_sparse_step"); try positive(maxPositionEmbeddings, "max_position_embeddings")
        if numHeads % numKVHeads != 0 {
            throw MoEError.config(field: "num_key_value_heads", reason: "\(numKVHeads) does not divide num_attention_heads \(numHeads)")
        }
        if headDim % 2 != 0 { throw MoEError.config(field: "head_dim", reason: "must be even for rotary embeddings, got \(headDim)") }
        if numExperts < 0 { throw MoEError.config(field: "num_experts", reason: "must be >= 0, got \(numExperts)") }
        if numExperts > 65_536 { throw MoEError.config(field: "num_experts", reason: "at most 65536 experts are supported, got \(numExperts)") }
        if !moeLayers.isEmpty {
            try positive(moeIntermediateSize, "moe_intermediate_size")
            if topK < 1 || topK > numExperts {
                throw MoEError.config(field: "num_experts_per_tok", reason: "must be in 1...\(numExperts), got \(topK)")
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

    /// Parses a Hugging Face `config.json` object. Fields that would change the maths in a way the
    /// engine does not implement (biases, rope scaling, sliding windows, other activations) are refused.
    public init(json: [String: Any]) throws {
        func int(_ key: String, default d: Int? = nil) throws -> Int {
            guard let v = json[key], !(v is NSNull) else {
                if let d { return d }
                throw MoEError.config(field: key, reason: "is missing")
            }
            if let n = v as? NSNumber, !isJSONBool(n), n.doubleValue == n.doubleValue.rounded(), abs(n.doubleValue) < 1e15 {
                return n.intValue
            }
            throw MoEError.config(field: key, reason: "must be an integer, got \(v)")
        }
        func double(_ key: String, default d: Double) throws -> Double {
            guard let v = json[key], !(v is NSNull) else { return d }
            if let n = v as? NSNumber, !isJSONBool(n) { return n.doubleValue }
            throw MoEError.config(field: key, reason: "must be a number, got \(v)")
        }
        func bool(_ key: String, default d: Bool) throws -> Bool {
            guard let v = json[key], !(v is NSNull) else { return d }
            if let n = v as? NSNumber, isJSONBool(n) { return n.boolValue }
            throw MoEError.config(field: key, reason: "must be true or false, got \(v)")
        }
        if let t = json["model_type"], !(t is NSNull) {
            guard let s = t as? String, s == "qwen3_moe" || s == "qwen3" else {
                throw MoEError.config(field: "model_type", reason: "expected \"qwen3_moe\", got \(t)")
            }
        }
        if let act = json["hidden_act"], !(act is NSNull), (act as? String) != "silu" {
            throw MoEError.config(field: "hidden_act", reason: "only \"silu\" is supported, got \(act)")
        }
        if try bool("attention_bias", default: false) {
            throw MoEError.config(field: "attention_bias", reason: "attention biases are not supported")
        }
        if try bool("use_sliding_window", default: false) {
            throw MoEError.config(field: "use_sliding_window", reason: "sliding-window attention is not supported")
        }
        if let rs = json["rope_scaling"], !(rs is NSNull) {
            let type = (rs as? [String: Any]).flatMap { ($0["rope_type"] ?? $0["type"]) as? String }
            if type != "default" {
                throw MoEError.config(field: "rope_scaling", reason: "only the default rotary embedding is supported, got \(type ?? "\(rs)")")
            }
        }
        let hidden = try int("hidden_size"), heads = try int("num_attention_heads")
        guard heads > 0 else { throw MoEError.config(field: "num_attention_heads", reason: "must be a positive integer, got \(heads)") }
        var mlpOnly: [Int] = []
        if let v = json["mlp_only_layers"], !(v is NSNull) {
            guard let list = v as? [Any] else { throw MoEError.config(field: "mlp_only_layers", reason: "must be a list of layer indices") }
            for item in list {
                guard let n = item as? NSNumber, !isJSONBool(n), n.doubleValue == n.doubleValue.rounded() else {
                    throw MoEError.config(field: "mlp_only_layers", reason: "must be a list of layer indices, got \(item)")
                }
                mlpOnly.append(n.intValue)
            }
        }
        let eps = try double("rms_norm_eps", default: 1e-6)
        self.init(
            vocabSize: try int("vocab_size"), hiddenSize: hidden,
            intermediateSize: try int("intermediate_size", default: 0),
            moeIntermediateSize: try int("moe_intermediate_size", default: 0),
            numLayers: try int("num_hidden_layers"), numHeads: heads,
            numKVHeads: try int("num_key_value_heads", default: heads),
            headDim: try int("head_dim", default: hidden / heads),
            numExperts: try int("num_experts", default: 0), topK: try int("num_experts_per_tok", default: 0),
            normTopKProb: try bool("norm_topk_prob", default: false),
            decoderSparseStep: try int("decoder_sparse_step", default: 1), mlpOnlyLayers: mlpOnly,
            tieWordEmbeddings: try bool("tie_word_embeddings", default: false),
            ropeTheta: try double("rope_theta", default: 10_000), rmsNormEps: Float(eps),
            maxPositionEmbeddings: try int("max_position_embeddings", default: 32_768))
        try validate()
    }

    /// Reads `dir/config.json`.
    public static func load(directory: URL) throws -> ModelConfig {
        let url = directory.appendingPathComponent("config.json")
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw MoEError.file(path: url.path, reason: "cannot read config.json")
        }
        guard let obj = try? JSONSerialization.jsonObject(with: data), let dict = obj as? [String: Any] else {
            throw MoEError.file(path: url.path, reason: "not a JSON object")
        }
        return try ModelConfig(json: dict)
    }

    /// The Hugging Face `config.json` object for this config (Qwen3MoeForCausalLM).
    public func jsonObject() -> [String: Any] {
        [
            "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
            "vocab_size": vocabSize, "hidden_size": hiddenSize, "intermediate_size": intermediateSize,
            "moe_intermediate_size": moeIntermediateSize, "num_hidden_layers": numLayers,
            "num_attention_heads": numHeads, "num_key_value_heads": numKVHeads, "head_dim": headDim,
            "num_experts": numExperts, "num_experts_per_tok": topK, "norm_topk_prob": normTopKProb,
            "decoder_sparse_step": decoderSparseStep, "mlp_only_layers": mlpOnlyLayers,
            "tie_word_embeddings": tieWordEmbeddings, "rope_theta": ropeTheta, "rms_norm_eps": Double("\(rmsNormEps)") ?? Double(rmsNormEps),
            "max_position_embeddings": maxPositionEmbeddings, "hidden_act": "silu", "attention_bias": false,
            "attention_dropout": 0.0, "torch_dtype": "float32", "rope_scaling": NSNull(), "use_sliding_window": false,
        ]
    }

    public func write(directory: URL) throws {
        let data = try JSONSerialization.data(withJSONObject: jsonObject(), options: [.prettyPrinted, .sortedKeys])
        try data.write(to: directory.appendingPathComponent("config.json"), options: .atomic)
    }
}

/// JSONSerialization boxes JSON booleans as a Boolean subclass of NSNumber; tell them apart from integers.
@inline(__always) func isJSONBool(_ v: Any) -> Bool { String(describing: type(of: v)).contains("Boolean") }
