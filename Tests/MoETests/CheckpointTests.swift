// CheckpointTests: HF-layout load and save (single file, shards, bf16/f16), and one-line errors that
// name the offending config field or tensor.
import Foundation
import Testing
@testable import MoE

struct CheckpointTests {
    @Test func saveThenLoadIsExactInF32AndAcrossShards() throws {
        let m = try Model(config: Factory.oddConfig(), seed: 3, std: 0.1)
        for shard in [Int.max, 20_000] {
            let dir = tmpDir("ckpt")
            try m.save(directory: dir, maxShardBytes: shard)
            let files = try FileManager.default.contentsOfDirectory(atPath: dir.path)
            if shard == 20_000 {
                #expect(files.contains("model.safetensors.index.json"))
                #expect(files.filter { $0.hasSuffix(".safetensors") }.count > 1)
            } else {
                #expect(files.contains("model.safetensors"))
            }
            let back = try Model.load(directory: dir)
            #expect(back.config == m.config)
            #expect(back.params.array() == m.params.array())
            #expect(!files.contains { $0.hasPrefix("lm_head") })
        }
    }

    @Test(arguments: [STDType.bf16, .f16])
    func halfPrecisionCheckpointsLoadIntoF32(dtype: STDType) throws {
        let m = try Model(config: Factory.oddConfig(), seed: 4, std: 0.1)
        let dir = tmpDir("half")
        try m.save(directory: dir, dtype: dtype)
        let back = try Model.load(directory: dir)
        let want = m.params.array().map { dtype == .bf16 ? BF16.round($0) : Float(Float16($0)) }
        let got = back.params.array()
        let bad = got.indices.first { got[$0] != want[$0] }
        #expect(bad == nil, "param[\(bad ?? -1)]: loaded \(bad.map { got[$0] } ?? 0), expected \(bad.map { want[$0] } ?? 0) from \(bad.map { m.params[$0] } ?? 0)")
    }

    @Test func fixtureConfigParsesEveryField() throws {
        let c = try ModelConfig.load(directory: Fixture.tinyA)
        #expect(c.numExperts == 8 && c.topK == 2 && c.normTopKProb && c.headDim == 16 && c.numKVHeads == 2)
        #expect(c.moeLayers == [0, 1, 2, 3])
        #expect(!c.tieWordEmbeddings)
    }

    func configError(_ edit: (inout [String: Any]) -> Void) -> String {
        var json = Factory.oddConfig().jsonObject()
        edit(&json)
        do { _ = try ModelConfig(json: json); return "accepted" } catch { return "\(error)" }
    }

    @Test func badConfigsNameTheField() {
        #expect(configError { $0["hidden_size"] = nil } == "config field 'hidden_size': is missing")
        #expect(configError { $0["num_key_value_heads"] = 2 }.hasPrefix("config field 'num_key_value_heads'"))
        #expect(configError { $0["num_experts_per_tok"] = 9 }.hasPrefix("config field 'num_experts_per_tok'"))
        #expect(configError { $0["attention_bias"] = true }.hasPrefix("config field 'attention_bias'"))
        #expect(configError { $0["hidden_act"] = "gelu" }.hasPrefix("config field 'hidden_act'"))
        #expect(configError { $0["rope_scaling"] = ["rope_type": "dynamic", "factor": 4.0] }.hasPrefix("config field 'rope_scaling'"))
        #expect(configError { $0["mlp_only_layers"] = [9] }.hasPrefix("config field 'mlp_only_layers'"))
        #expect(configError { $0["vocab_size"] = "many" }.hasPrefix("config field 'vocab_size': must be an integer"))
        // a JSON boolean is never an integer, and 1 is never a boolean (typed JSON values, not NSNumber)
        #expect(configError { $0["vocab_size"] = true } == "config field 'vocab_size': must be an integer, got true")
        #expect(configError { $0["norm_topk_prob"] = 1 } == "config field 'norm_topk_prob': must be true or false, got 1")
        #expect(configError { $0["norm_topk_prob"] = 1 }.hasPrefix("config field 'norm_topk_prob'"))
        #expect(configError { _ in } == "accepted")
    }

    @Test func missingOrMisshapenTensorsAreNamed() throws {
        let m = try Model(config: Factory.oddConfig(), seed: 5)
        let dir = tmpDir("bad")
        try m.save(directory: dir)
        // wrong config for these weights: a different expert width
        var json = m.config.jsonObject(); json["moe_intermediate_size"] = 12
        try JSONSerialization.data(withJSONObject: json).write(to: dir.appendingPathComponent("config.json"))
        #expect(throws: MoEError.tensor(name: "model.layers.1.mlp.experts.0.down_proj.weight", reason: "has shape [24, 8], config implies [24, 12]")) {
            try Model.load(directory: dir)
        }
        // a tensor missing from the file
        try m.config.write(directory: dir)
        var w = SafetensorsWriter()
        for slot in m.layout.tensors where slot.name != "model.norm.weight" {
            w.add(slot.name, floats: UnsafeBufferPointer(start: m.params.base + slot.offset, count: slot.count), shape: slot.shape)
        }
        try w.write(to: dir.appendingPathComponent("model.safetensors"))
        do { _ = try Model.load(directory: dir); Issue.record("accepted a checkpoint without model.norm.weight") } catch {
            #expect("\(error)".hasPrefix("tensor 'model.norm.weight': missing from checkpoint"))
        }
        // not safetensors at all
        try Data("not a checkpoint".utf8).write(to: dir.appendingPathComponent("model.safetensors"))
        #expect(throws: MoEError.self) { try Model.load(directory: dir) }
    }
}

struct OptimizerTests {
    @Test func adamWFirstStepMovesEachWeightByLearningRate() throws {
        let m = try Model(config: Factory.oddConfig(), seed: 6, std: 0.1)
        let before = m.params.array()
        let g = Buffer<Float>(count: m.params.count)
        for i in 0..<g.count { g[i] = i % 3 == 0 ? 0.5 : -2 }
        let opt = AdamW(layout: m.layout, config: AdamWConfig(learningRate: 1e-3, weightDecay: 0.1))
        opt.update(params: m.params, grads: g)
        // step 1: m̂ = g, v̂ = g², so the update is lr·sign(g) (plus decoupled decay on matrices)
        let norm = m.layout.tensors.first { $0.isNorm }!
        for i in [0, 1, 2, norm.offset] {
            let decay: Float = i == norm.offset ? 1 : 1 - 1e-3 * 0.1
            let want = before[i] * decay - 1e-3 * (g[i] > 0 ? 1 : -1)
            #expect(abs(m.params[i] - want) < 1e-7, "param[\(i)]: \(m.params[i]) vs \(want)")
        }
    }

    @Test func clipScalesToMaxNormAndReportsTheNormBefore() {
        let g = Buffer<Float>(count: 10_000)
        for i in 0..<g.count { g[i] = 0.03 }
        let before = GradClip.clip(g, maxNorm: 1)
        #expect(abs(before - 3) < 1e-5)
        #expect(abs(GradClip.norm(g) - 1) < 1e-5)
    }
}
