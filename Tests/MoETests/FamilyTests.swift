// FamilyTests: every family's odd parts on self-made configs: finite differences through each router,
// MLA (with and without the q bottleneck), shared experts, biases and partial rotary; record → replay
// bit-identical in every numerics mode; KV-cache decoding against the full forward; configs and
// checkpoints in each family's own field and key names.
import Foundation
import Testing
@testable import MoE
import Routes

enum FamilyConfigs {
    static let glm: [String: Any] = [
        "model_type": "glm4_moe", "vocab_size": 50, "hidden_size": 24, "intermediate_size": 20, "moe_intermediate_size": 8,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "attention_bias": true,
        "use_qk_norm": true, "partial_rotary_factor": 0.5, "n_routed_experts": 8, "num_experts_per_tok": 3, "n_group": 4,
        "topk_group": 2, "n_shared_experts": 1, "routed_scaling_factor": 2.5, "norm_topk_prob": true, "first_k_dense_replace": 1,
        "rms_norm_eps": 1e-5, "rope_theta": 10_000.0,
    ]
    /// GLM without normalisation, q/k norm or groups, two shared experts, tied embeddings.
    static let glmB: [String: Any] = glm.merging(["norm_topk_prob": false, "use_qk_norm": false, "n_group": 1, "topk_group": 1,
                                                  "n_shared_experts": 2, "tie_word_embeddings": true, "attention_bias": false]) { $1 }
    static let deepseek: [String: Any] = [
        "model_type": "deepseek_v3", "vocab_size": 50, "hidden_size": 24, "intermediate_size": 20, "moe_intermediate_size": 8,
        "num_hidden_layers": 3, "num_attention_heads": 3, "num_key_value_heads": 3, "q_lora_rank": 12, "kv_lora_rank": 8,
        "qk_nope_head_dim": 6, "qk_rope_head_dim": 4, "v_head_dim": 5, "n_routed_experts": 8, "num_experts_per_tok": 2,
        "n_group": 2, "topk_group": 1, "n_shared_experts": 1, "routed_scaling_factor": 1.5, "norm_topk_prob": true,
        "first_k_dense_replace": 1, "rms_norm_eps": 1e-6, "rope_theta": 10_000.0,
    ]
    /// DeepSeek without the q bottleneck (q_lora_rank null, as DeepSeek-V2-Lite).
    static let deepseekB: [String: Any] = deepseek.merging(["q_lora_rank": NSNull(), "first_k_dense_replace": 0]) { $1 }
    static let mixtral: [String: Any] = [
        "model_type": "mixtral", "vocab_size": 50, "hidden_size": 24, "intermediate_size": 8, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": 6, "num_experts_per_tok": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 1_000_000.0, "sliding_window": NSNull(),
    ]
    /// DeepSeek with YaRN as DeepSeek-V3's published config has it (mscale and mscale_all_dim scale cos/sin and the softmax).
    static let deepseekYarn: [String: Any] = deepseek.merging(["rope_scaling": ["type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4,
                                                                                "mscale": 1.0, "mscale_all_dim": 0.7, "beta_fast": 32, "beta_slow": 1]]) { $1 }
    static let all: [(String, [String: Any])] = [("glm", glm), ("glmB", glmB), ("deepseek", deepseek), ("deepseekB", deepseekB), ("mixtral", mixtral),
                                                 ("deepseekYarn", deepseekYarn)]
    static func named(_ n: String) -> [String: Any] { all.first { $0.0 == n }!.1 }

    /// A random model of that config with decisive routing and a non-zero e_score_correction_bias.
    static func model(_ name: String, seed: UInt64, std: Float = 0.3) throws -> Model {
        let m = try Model(config: try ModelConfig(json: named(name)), seed: seed, std: std, routerStd: 1.0)
        var rng = SeededRandom(seed: seed &+ 99)
        for slot in m.layout.tensors where slot.isBuffer {
            for i in 0..<slot.count { m.params[slot.offset + i] = Float(rng.normal() * 0.2) }
        }
        return m
    }
}

struct FamilyTests {
    @Test func configsParseIntoTheirFamilies() throws {
        let glm = try ModelConfig(json: FamilyConfigs.glm)
        #expect(glm.family == .glm4Moe && glm.router == .sigmoidGrouped && glm.rotaryDim == 4 && glm.attentionBias && glm.qkNorm)
        #expect(glm.moeLayers == [1, 2] && glm.sharedIntermediateSize == 8)
        let ds = try ModelConfig(json: FamilyConfigs.deepseek)
        #expect(ds.mla == MLAConfig(qLoraRank: 12, kvLoraRank: 8, nopeDim: 6, ropeDim: 4, vDim: 5) && ds.headDim == 10 && ds.valueDim == 5)
        #expect(try ModelConfig(json: FamilyConfigs.deepseekB).mla?.qLoraRank == 0)
        let mx = try ModelConfig(json: FamilyConfigs.mixtral)
        #expect(mx.family == .mixtral && mx.headDim == 6 && mx.moeIntermediateSize == 8 && mx.normTopKProb && !mx.qkNorm && mx.moeLayers == [0, 1])
        for (name, json) in FamilyConfigs.all {
            let c = try ModelConfig(json: json)
            #expect(try ModelConfig(json: c.jsonObject()) == c, "\(name): config.json round trip")
            // the routes API derives its layout from the same config.json: the same MoE layers
            let layout = try RouteLayout(hfConfig: try ModelConfig.object(JSONSerialization.data(withJSONObject: c.jsonObject()), what: "c"))
            #expect(layout.moeLayers == c.moeLayers && layout.numExperts == c.numExperts && layout.topK == c.topK, "\(name): route layout")
        }
        // omitted fields take HF's defaults: rope_interleave true, q_lora_rank 1536, Mixtral head_dim = hidden / heads
        var bare = FamilyConfigs.deepseek
        bare["q_lora_rank"] = nil
        #expect(try ModelConfig(json: bare).mla?.qLoraRank == 1536)
    }

    func configError(_ base: [String: Any], _ edit: [String: Any?]) -> String {
        var json = base
        for (k, v) in edit { json[k] = v ?? nil }
        do { _ = try ModelConfig(json: json); return "accepted" } catch { return "\(error)" }
    }

    @Test func unsupportedFamilyFieldsAreRefusedByName() {
        let dynamic: [String: Any] = ["rope_type": "dynamic", "factor": 4.0]
        #expect(configError(FamilyConfigs.deepseek, ["rope_scaling": dynamic]) == "config field 'rope_scaling': rope_type dynamic is not supported (default and yarn are)")
        #expect(configError(FamilyConfigs.glm, ["rope_parameters": ["rope_type": "llama3", "rope_theta": 1e4]]).hasPrefix("config field 'rope_parameters': rope_type llama3"))
        #expect(configError(FamilyConfigs.glm, ["rope_scaling": ["type": "yarn", "factor": -2.0]]).hasPrefix("config field 'rope_scaling': yarn needs"))
        #expect(configError(FamilyConfigs.deepseek, ["model_type": "deepseek_v2"]).hasPrefix("config field 'model_type'"))
        #expect(configError(FamilyConfigs.deepseek, ["scoring_func": "softmax"]).hasPrefix("config field 'scoring_func'"))
        #expect(configError(FamilyConfigs.deepseek, ["topk_method": "greedy"]).hasPrefix("config field 'topk_method'"))
        #expect(configError(FamilyConfigs.deepseek, ["rope_interleave": false]).hasPrefix("config field 'rope_interleave'"))
        #expect(configError(FamilyConfigs.deepseek, ["qk_rope_head_dim": 5]).hasPrefix("config field 'qk_rope_head_dim'"))
        #expect(configError(FamilyConfigs.deepseek, ["q_lora_rank": 0]).hasPrefix("config field 'q_lora_rank'"))
        #expect(configError(FamilyConfigs.glm, ["n_group": 3]).hasPrefix("config field 'n_group'"))
        #expect(configError(FamilyConfigs.glm, ["topk_group": 5]).hasPrefix("config field 'topk_group'"))
        #expect(configError(FamilyConfigs.glm, ["topk_group": 1, "num_experts_per_tok": 3]).hasPrefix("config field 'num_experts_per_tok'"))
        #expect(configError(FamilyConfigs.glm, ["partial_rotary_factor": 0.0]).hasPrefix("config field 'partial_rotary_factor'"))
        #expect(configError(FamilyConfigs.glm, ["routed_scaling_factor": -1.0]).hasPrefix("config field 'routed_scaling_factor'"))
        #expect(configError(FamilyConfigs.mixtral, ["sliding_window": 4096]).hasPrefix("config field 'sliding_window'"))
        #expect(configError(FamilyConfigs.mixtral, ["router_jitter_noise": 0.1]).hasPrefix("config field 'router_jitter_noise'"))
        #expect(configError(FamilyConfigs.mixtral, ["num_local_experts": 1]).hasPrefix("config field 'num_experts_per_tok'"))
    }

    @Test(arguments: ["glm", "glmB", "deepseek", "deepseekB", "mixtral", "deepseekYarn"])
    func finiteDifferencesMatchBackwardUnderReplay(family: String) throws {
        let model = try FamilyConfigs.model(family, seed: 7)
        let c = model.config
        let seqs = Factory.randomSequences(count: 2, lengths: 6...9, vocab: c.vocabSize, seed: 3)
        let tables = seqs.enumerated().map { i, s in
            Factory.randomRoutes(rows: s.count - 1, layers: c.moeLayers.count, topK: c.topK, experts: c.numExperts, seed: UInt64(11 + i))
        }
        let engine = Engine(model: model, workers: 1)
        var rng = SeededRandom(seed: 5)
        let T = seqs.reduce(0) { $0 + $1.count }
        let coef = (0..<T).map { _ in Float(rng.uniform() * 2 - 1) }
        func loss() throws -> Double {
            let out = try engine.forward(seqs, routing: .replay(tables))
            return zip(out.logprobs, coef).reduce(0.0) { $0 + ($1.0.isNaN ? 0 : Double($1.0) * Double($1.1)) }
        }
        let out = try engine.forward(seqs, routing: .replay(tables), options: ForwardOptions(training: true))
        #expect(out.replayFallbackRows == 0)
        engine.zeroGrad()
        try engine.backward(dLogp: zip(out.logprobs, coef).map { $0.0.isNaN ? 0 : $0.1 })
        let grads = engine.grads!.array()
        let eps: Float = 1e-2
        var failures: [String] = []
        var checked = 0
        for slot in model.layout.tensors {
            let g = Array(grads[slot.offset..<(slot.offset + slot.count)])
            let scale = Double(g.map(abs).max() ?? 0)
            var picks = [g.indices.max { abs(g[$0]) < abs(g[$1]) }!]
            picks.append(Int(rng.next() % UInt64(slot.count)))
            picks.append(Int(rng.next() % UInt64(slot.count)))
            for i in picks {
                let p = model.params.base + slot.offset + i
                let saved = p.pointee
                p.pointee = saved + eps; let up = try loss()
                p.pointee = saved - eps; let down = try loss()
                p.pointee = saved
                let fd = (up - down) / Double(2 * eps)
                let tol = 2e-2 * scale + 2e-3
                if abs(fd - Double(g[i])) > tol { failures.append("\(slot.name)[\(i)]: backward \(g[i]), finite difference \(fd), tol \(tol)") }
                checked += 1
            }
            if slot.isBuffer { #expect(g.allSatisfy { $0 == 0 }, "\(slot.name) is a buffer: no gradient") }
            if slot.name.hasSuffix(".gate.weight") { #expect(scale > 1e-3, "\(slot.name): the router gets gradient through the gate weights") }
        }
        #expect(failures.isEmpty, "\(family): \(failures.count) of \(checked) gradient checks fail, first: \(failures.prefix(3))")
    }

    @Test(arguments: ["glm", "deepseek", "mixtral"], [Numerics.fp32, .bf16, .deterministic])
    func recordThenReplayIsBitIdentical(family: String, numerics: Numerics) throws {
        let model = try FamilyConfigs.model(family, seed: 21, std: 0.1)
        let engine = Engine(model: model, numerics: numerics)
        let seqs = Factory.randomSequences(count: 3, lengths: 10...40, vocab: model.config.vocabSize, seed: 1)
        let live = try engine.forward(seqs, options: ForwardOptions(keepLogits: true))
        let tables = try seqs.indices.map { try live.routes.rows(live.rows(ofSequence: $0)) }
        let replay = try engine.forward(seqs, routing: .replay(tables), options: ForwardOptions(keepLogits: true))
        #expect(replay.logits.map(\.bitPattern) == live.logits.map(\.bitPattern), "\(family): logits differ under replay of own routes (\(numerics.name))")
        #expect(replay.gates.map(\.bitPattern) == live.gates.map(\.bitPattern))
        #expect(replay.replayFallbackRows == 0)
    }

    @Test(arguments: ["glm", "deepseek", "deepseekB", "mixtral", "deepseekYarn"])
    func generationLogprobsMatchFullForward(family: String) throws {
        let model = try FamilyConfigs.model(family, seed: 31, std: 0.1)
        let engine = Engine(model: model)
        let prompts = Factory.randomSequences(count: 3, lengths: 3...20, vocab: model.config.vocabSize, seed: 9)
        let gens = try engine.generate(prompts, sampling: SamplingParams(maxTokens: 16, temperature: 1, seed: 42))
        for (b, g) in gens.enumerated() {
            #expect(g.routes.rows == g.tokens.count - 1)
            let full = try engine.forward([g.tokens])
            var worst: Float = 0
            for (i, lp) in g.logprobs.enumerated() { worst = max(worst, abs(lp - full.logprobs[g.promptLength - 1 + i])) }
            #expect(worst < 1e-4, "\(family) prompt \(b): KV-cache log-probs differ from the full forward by \(worst)")
            #expect(Array(full.routes.ids.prefix(g.routes.ids.count)) == g.routes.ids, "\(family) prompt \(b): recorded routes differ")
        }
    }

    @Test(arguments: familyFixtures)
    func savedCheckpointsKeepTheHubKeysAndLoadBack(fixture: String) throws {
        let src = Fixture.shared.appendingPathComponent("fixtures/\(fixture)")
        let m = try Model.load(directory: src)
        let hubKeys = Set(try SafetensorsFile(url: src.appendingPathComponent("model.safetensors")).entries.keys)
        let dir = tmpDir("family")
        try m.save(directory: dir)
        #expect(Set(try SafetensorsFile(url: dir.appendingPathComponent("model.safetensors")).entries.keys) == hubKeys,
                "\(fixture): saved keys are the hub's")
        let back = try Model.load(directory: dir)
        #expect(back.config == m.config && back.params.array() == m.params.array())
        let sharded = tmpDir("family-sharded")
        try m.save(directory: sharded, dtype: .bf16, maxShardBytes: 20_000)
        let half = try Model.load(directory: sharded)
        #expect(half.params.array() == m.params.array().map { BF16.round($0) })
    }

    /// YaRN against HF itself: tiny DeepSeek-V3 (MLA; mscale / mscale_all_dim) and GLM-4.5 (partial rotary)
    /// checkpoints saved by transformers 5.24 (config.json with `rope_parameters`, as transformers 5 writes
    /// it) and their float64 logits over 96 tokens, 3× original_max_position_embeddings
    /// (Tests/MoETests/Fixtures/make_yarn_fixtures.py made them).
    @Test(arguments: ["deepseekv3-yarn", "glm4moe-yarn"])
    func yarnMatchesTransformers(fixture: String) throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/\(fixture)")
        let m = try Model.load(directory: dir)
        #expect(m.config.yarn?.factor == 4 && m.config.yarn?.originalMaxPositions == 32)
        let ref = try SafetensorsFile(url: dir.appendingPathComponent("reference.safetensors"))
        let ids = try ref.ints("input_ids").map { Int32($0) }
        let out = try Engine(model: m).forward([ids], options: ForwardOptions(keepLogits: true))
        if let msg = worstDifference("\(fixture) logits", out.logits, try ref.doubles("logits"), tol: 1e-4) { Issue.record("\(msg)") }
        // without yarn the same weights give other logits: the test can tell
        var plain = m.config
        plain.yarn = nil
        let p = try Model(config: plain)
        p.params.copy(from: m.params)
        let other = try Engine(model: p).forward([ids], options: ForwardOptions(keepLogits: true))
        let want = try ref.doubles("logits")
        func worst(_ a: [Float]) -> Double { zip(a, want).map { abs(Double($0) - $1) }.max()! }
        #expect(worst(other.logits) > 20 * worst(out.logits), "\(fixture): without yarn \(worst(other.logits)), with \(worst(out.logits))")
        // and the config survives a save
        #expect(try ModelConfig(json: m.config.jsonObject()) == m.config)
    }

    @Test func multiTokenPredictionLayersAreSkippedOnLoad() throws {
        var json = FamilyConfigs.glm
        json["num_nextn_predict_layers"] = 1
        let m = try Model(config: try ModelConfig(json: json), seed: 3)
        let dir = tmpDir("mtp")
        try m.save(directory: dir)
        // an MTP layer's tensor, as published GLM-4.5 checkpoints carry (model.layers.<num_hidden_layers>.*)
        var w = SafetensorsWriter()
        let extra = [Float](repeating: 0.5, count: 24 * 48)
        extra.withUnsafeBufferPointer { w.add("model.layers.3.eh_proj.weight", floats: $0, shape: [24, 48]) }
        let single = dir.appendingPathComponent("model.safetensors")
        try FileManager.default.moveItem(at: single, to: dir.appendingPathComponent("model-00001-of-00002.safetensors"))
        try w.write(to: dir.appendingPathComponent("model-00002-of-00002.safetensors"))
        var map: [String: String] = [:]
        for s in m.layout.tensors { map[s.name] = "model-00001-of-00002.safetensors" }
        map["model.layers.3.eh_proj.weight"] = "model-00002-of-00002.safetensors"
        try JSONSerialization.data(withJSONObject: ["weight_map": map]).write(to: dir.appendingPathComponent("model.safetensors.index.json"))
        #expect(try Model.load(directory: dir).params.array() == m.params.array())
        json["num_nextn_predict_layers"] = 0
        try JSONSerialization.data(withJSONObject: json).write(to: dir.appendingPathComponent("config.json"))
        #expect(throws: MoEError.tensor(name: "model.layers.3.eh_proj.weight", reason: "is not a parameter of this glm4_moe config (model-00002-of-00002.safetensors)")) {
            try Model.load(directory: dir)
        }
    }

    @Test func adamWNeverMovesTheRouterBias() throws {
        let model = try FamilyConfigs.model("glm", seed: 8)
        let engine = Engine(model: model)
        let seqs = Factory.randomSequences(count: 2, lengths: 8...12, vocab: model.config.vocabSize, seed: 2)
        let out = try engine.forward(seqs, options: ForwardOptions(training: true))
        try engine.backward(dLogp: out.logprobs.map { $0.isNaN ? 0 : -0.1 })
        let bias = model.layout.tensors.filter(\.isBuffer)
        #expect(bias.count == 2)
        let before = model.params.array()
        let opt = AdamW(layout: model.layout, config: AdamWConfig(learningRate: 1e-2, weightDecay: 0.1))
        opt.update(params: model.params, grads: engine.grads!)
        let after = model.params.array()
        for s in bias { #expect(after[s.offset..<(s.offset + s.count)] == before[s.offset..<(s.offset + s.count)], "\(s.name) moved") }
        #expect(after != before)
    }
}
