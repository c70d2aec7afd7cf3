// ModelConfig: the Qwen3-MoE hyper-parameters that change the maths, read from and written to config.json.
import Foundation
import JSON

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
    public init(json: JSONObject) throws {
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
        if let t = present("model_type") {
            guard let s = t.stringValue, s == "qwen3_moe" || s == "qwen3" else {
                throw MoEError.config(field: "model_type", reason: "expected \"qwen3_moe\", got \(t.serialized())")
            }
        }
        if let act = present("hidden_act"), act.stringValue != "silu" {
            throw MoEError.config(field: "hidden_act", reason: "only \"silu\" is supported, got \(act.serialized())")
        }
        if try bool("attention_bias", default: false) {
            throw MoEError.config(field: "attention_bias", reason: "attention biases are not supported")
        }
        if try bool("use_sliding_window", default: false) {
            throw MoEError.config(field: "use_sliding_window", reason: "sliding-window attention is not supported")
        }
        if let rs = present("rope_scaling") {
            let type = rs.objectValue.flatMap { ($0["rope_type"] ?? $0["type"])?.stringValue }
            if type != "default" {
                throw MoEError.config(field: "rope_scaling", reason: "only the default rotary embedding is supported, got \(type ?? rs.serialized())")
            }
        }
        let hidden = try int("hidden_size"), heads = try int("num_attention_heads")
        guard heads > 0 else { throw MoEError.config(field: "num_attention_heads", reason: "must be a positive integer, got \(heads)") }
        var mlpOnly: [Int] = []
        if let v = present("mlp_only_layers") {
            guard let list = v.arrayValue else { throw MoEError.config(field: "mlp_only_layers", reason: "must be a list of layer indices") }
            for item in list {
                guard let n = item.intValue, abs(n) < 1 << 31 else {
                    throw MoEError.config(field: "mlp_only_layers", reason: "must be a list of layer indices, got \(item.serialized())")
                }
                mlpOnly.append(Int(n))
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

