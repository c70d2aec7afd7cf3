// FixtureTests: the engine against HF transformers' float64 outputs, for one fixture of each family
// (../shared/fixtures; their READMEs state each family's gating formula). The HF code these fixtures come
// from (transformers 5.24/5.25):
// - Qwen3-MoE: models/qwen3_moe/modeling_qwen3_moe.py (softmax router, norm_topk_prob, q/k norm).
// - GLM-4.5: models/glm4_moe/modeling_glm4_moe.py L275-L306 (sigmoid router, e_score_correction_bias for
//   selection only, top-2 group scores, -inf outside the kept groups at L300, (Σ + 1e-20), routed_scaling_factor),
//   L385-L392 (shared experts added), L188-L221 (q/k/v bias, per-head q/k norm before RoPE), L74-L82 and
//   L138-L171 (partial rotary: rotate-half on the first head_dim · partial_rotary_factor dims).
// - DeepSeek-V3: models/deepseek_v3/modeling_deepseek_v3.py L119-L157 (the same router), L364-L446 (MLA:
//   q_a/kv_a layernorms at eps 1e-6, kv_b_proj rows per head [k_nope | v], one k_rope for all heads),
//   L294-L330 (interleaved RoPE), L389 (scale (nope + rope)^-1/2).
// - Mixtral: models/mixtral/modeling_mixtral.py L106-L109 (softmax, top-k, always renormalised); hub keys
//   block_sparse_moe.experts.E.w1/w3/w2 (conversion_mapping.py L1436-L1461 maps them on load).
import Foundation
import Testing
@testable import MoE
import Routes

let familyFixtures = ["qwen3moe-tiny-a", "glm4moe-tiny-a", "deepseekv3-tiny-a", "mixtral-tiny-a"]

struct FamilyFixture {
    let dir: URL
    let model: Model
    let ref: SafetensorsFile
    let seqs: [[Int32]]
    let loss: Double
    let promptLen: Int

    init(_ name: String) throws {
        dir = Fixture.shared.appendingPathComponent("fixtures/\(name)")
        model = try Model.load(directory: dir)
        ref = try SafetensorsFile(url: dir.appendingPathComponent("reference.safetensors"))
        var s: [[Int32]] = []
        var i = 0
        while ref.entries["seq\(i).input_ids"] != nil { s.append(try ref.ints("seq\(i).input_ids").map { Int32($0) }); i += 1 }
        seqs = s
        let meta = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("reference.json"))) as! [String: Any]
        loss = meta["loss"] as! Double
        promptLen = meta["prompt_len"] as! Int
    }

    var width: Int { model.config.moeLayers.count * model.config.topK }

    func routes(_ name: String, seq: Int) throws -> RouteArray {
        let e = try ref.entry("seq\(seq).\(name)")
        return try RouteArray(rows: e.shape[0], layers: e.shape[1], topK: e.shape[2], ids: try ref.ints("seq\(seq).\(name)").map { Int32($0) })
    }

    /// The loss of the fixture (sum_s -adv[s] · mean log p over response targets) and its dLogp.
    func lossGradient(_ out: ForwardResult) throws -> (loss: Double, dLogp: [Float], logprobs: [(Float, Double)]) {
        let adv = try ref.doubles("advantages")
        var dLogp = [Float](repeating: 0, count: out.logprobs.count)
        var loss = 0.0
        var pairs: [(Float, Double)] = []
        for s in seqs.indices {
            let rows = out.rows(ofSequence: s), n = seqs[s].count - promptLen
            let want = try ref.doubles("seq\(s).target_logprobs_replay")
            for t in promptLen..<seqs[s].count {   // log p(ids[t]) sits at row t - 1
                let row = rows.lowerBound + t - 1
                dLogp[row] = Float(-adv[s] / Double(n))
                loss += -adv[s] / Double(n) * Double(out.logprobs[row])
                pairs.append((out.logprobs[row], want[t - promptLen]))
            }
        }
        return (loss, dLogp, pairs)
    }
}

struct FixtureTests {
    @Test(arguments: familyFixtures)
    func liveLogitsAndRoutesMatchReference(fixture: String) throws {
        let f = try FamilyFixture(fixture)
        let engine = Engine(model: f.model)
        let out = try engine.forward(f.seqs, options: ForwardOptions(keepLogits: true))
        let V = f.model.config.vocabSize, W = f.width
        for s in f.seqs.indices {
            let rows = out.rows(ofSequence: s)
            let logits = Array(out.logits[(rows.lowerBound * V)..<(rows.upperBound * V)])
            if let msg = worstDifference("\(fixture) seq\(s).logits", logits, try f.ref.doubles("seq\(s).logits"), tol: 1e-4) { Issue.record("\(msg)") }
            let want = try f.routes("routed_experts", seq: s)
            let got = try out.routes.rows(rows)
            #expect(got.ids == want.ids, "\(fixture) seq\(s).routed_experts differ (order: descending selection score)")
            if let msg = worstDifference("\(fixture) seq\(s).router_weights", Array(out.gates[(rows.lowerBound * W)..<(rows.upperBound * W)]),
                                         try f.ref.doubles("seq\(s).router_weights"), tol: 1e-4) { Issue.record("\(msg)") }
        }
    }

    @Test(arguments: familyFixtures)
    func replayLogitsAndGatesMatchReference(fixture: String) throws {
        let f = try FamilyFixture(fixture)
        let engine = Engine(model: f.model)
        let tables = try f.seqs.indices.map { try f.routes("replay_routed_experts", seq: $0) }
        let out = try engine.forward(f.seqs, routing: .replay(tables), options: ForwardOptions(keepLogits: true))
        let V = f.model.config.vocabSize, W = f.width
        #expect(out.replayFallbackRows == 0)
        for s in f.seqs.indices {
            let rows = out.rows(ofSequence: s)
            #expect(try out.routes.rows(rows).ids == tables[s].ids, "replayed routes are the ones used")
            if let msg = worstDifference("\(fixture) seq\(s).replay_logits", Array(out.logits[(rows.lowerBound * V)..<(rows.upperBound * V)]),
                                         try f.ref.doubles("seq\(s).replay_logits"), tol: 1e-4) { Issue.record("\(msg)") }
            if let msg = worstDifference("\(fixture) seq\(s).replay_router_weights", Array(out.gates[(rows.lowerBound * W)..<(rows.upperBound * W)]),
                                         try f.ref.doubles("seq\(s).replay_router_weights"), tol: 1e-4) { Issue.record("\(msg)") }
        }
    }

    @Test(arguments: familyFixtures)
    func replayGradientsMatchReference(fixture: String) throws {
        let f = try FamilyFixture(fixture)
        let engine = Engine(model: f.model)
        let tables = try f.seqs.indices.map { try f.routes("replay_routed_experts", seq: $0) }
        let out = try engine.forward(f.seqs, routing: .replay(tables), options: ForwardOptions(training: true))
        let (loss, dLogp, pairs) = try f.lossGradient(out)
        for (i, (got, want)) in pairs.enumerated() { #expect(abs(Double(got) - want) < 1e-4, "\(fixture) target logprob \(i): \(got) vs \(want)") }
        #expect(abs(loss - f.loss) < 1e-4, "\(fixture) loss \(loss) vs reference \(f.loss)")
        try engine.backward(dLogp: dLogp)
        let g = engine.grads!
        var checked = 0
        for slot in f.model.layout.tensors {
            if slot.isBuffer {   // e_score_correction_bias: a buffer, no gradient in HF or here
                #expect(f.ref.entries["grad.\(slot.name)"] == nil)
                #expect(UnsafeBufferPointer(start: g.base + slot.offset, count: slot.count).allSatisfy { $0 == 0 }, "\(slot.name) got a gradient")
                continue
            }
            let want = try f.ref.doubles("grad.\(slot.name)")
            let got = Array(UnsafeBufferPointer(start: g.base + slot.offset, count: slot.count))
            let scale = max(want.map(abs).max() ?? 0, 1e-12)
            if let msg = worstDifference("\(fixture) grad.\(slot.name)", got, want, tol: 1e-4, relativeTo: scale) { Issue.record("\(msg)") }
            checked += 1
        }
        #expect(checked == f.model.layout.tensors.filter { !$0.isBuffer }.count)
        #expect(checked == f.ref.entries.keys.filter { $0.hasPrefix("grad.") }.count, "every reference gradient is checked")
    }
}
