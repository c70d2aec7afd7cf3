// FixtureTests: the engine against HF transformers' float64 outputs for qwen3moe-tiny-a.
import Foundation
import Testing
@testable import MoE
import Routes

struct FixtureTests {
    let model: Model
    let ref: SafetensorsFile
    let seqs: [[Int32]]

    init() throws {
        model = try Model.load(directory: Fixture.tinyA)
        ref = try SafetensorsFile(url: Fixture.tinyA.appendingPathComponent("reference.safetensors"))
        var s: [[Int32]] = []
        var i = 0
        while ref.entries["seq\(i).input_ids"] != nil { s.append(try ref.ints("seq\(i).input_ids").map { Int32($0) }); i += 1 }
        seqs = s
    }

    func refRoutes(_ name: String, seq: Int) throws -> RouteArray {
        let e = try ref.entry("seq\(seq).\(name)")
        return try RouteArray(rows: e.shape[0], layers: e.shape[1], topK: e.shape[2], ids: try ref.ints("seq\(seq).\(name)").map { Int32($0) })
    }

    @Test func liveLogitsAndRoutesMatchReference() throws {
        let engine = Engine(model: model)
        let out = try engine.forward(seqs, options: ForwardOptions(keepLogits: true))
        let V = model.config.vocabSize
        for s in seqs.indices {
            let rows = out.rows(ofSequence: s)
            let logits = Array(out.logits[(rows.lowerBound * V)..<(rows.upperBound * V)])
            if let msg = worstDifference("seq\(s).logits", logits, try ref.doubles("seq\(s).logits"), tol: 1e-4) { Issue.record("\(msg)") }
            let want = try refRoutes("routed_experts", seq: s)
            let got = try out.routes.rows(rows)
            #expect(got.ids == want.ids, "seq\(s).routed_experts differ (order = descending probability)")
            if let msg = worstDifference("seq\(s).router_weights", Array(out.gates[(rows.lowerBound * 8)..<(rows.upperBound * 8)]),
                                         try ref.doubles("seq\(s).router_weights"), tol: 1e-4) { Issue.record("\(msg)") }
        }
    }

    @Test func replayLogitsAndGatesMatchReference() throws {
        let engine = Engine(model: model)
        let tables = try seqs.indices.map { try refRoutes("replay_routed_experts", seq: $0) }
        let out = try engine.forward(seqs, routing: .replay(tables), options: ForwardOptions(keepLogits: true))
        let V = model.config.vocabSize
        #expect(out.replayFallbackRows == 0)
        for s in seqs.indices {
            let rows = out.rows(ofSequence: s)
            #expect(try out.routes.rows(rows).ids == tables[s].ids, "replayed routes are the ones used")
            if let msg = worstDifference("seq\(s).replay_logits", Array(out.logits[(rows.lowerBound * V)..<(rows.upperBound * V)]),
                                         try ref.doubles("seq\(s).replay_logits"), tol: 1e-4) { Issue.record("\(msg)") }
            if let msg = worstDifference("seq\(s).replay_router_weights", Array(out.gates[(rows.lowerBound * 8)..<(rows.upperBound * 8)]),
                                         try ref.doubles("seq\(s).replay_router_weights"), tol: 1e-4) { Issue.record("\(msg)") }
        }
    }

    @Test func replayGradientsMatchReference() throws {
        let engine = Engine(model: model)
        let tables = try seqs.indices.map { try refRoutes("replay_routed_experts", seq: $0) }
        let out = try engine.forward(seqs, routing: .replay(tables), options: ForwardOptions(training: true))
        let adv = try ref.doubles("advantages")
        let promptLen = 4
        var dLogp = [Float](repeating: 0, count: out.logprobs.count)
        var loss = 0.0
        for s in seqs.indices {
            let rows = out.rows(ofSequence: s), n = seqs[s].count - promptLen
            let want = try ref.doubles("seq\(s).target_logprobs_replay")
            for t in promptLen..<seqs[s].count {   // log p(ids[t]) sits at row t - 1
                let row = rows.lowerBound + t - 1
                dLogp[row] = Float(-adv[s] / Double(n))
                loss += -adv[s] / Double(n) * Double(out.logprobs[row])
                #expect(abs(Double(out.logprobs[row]) - want[t - promptLen]) < 1e-4, "seq\(s) target logprob at t=\(t)")
            }
        }
        let refLoss = 2.9392971135070316
        #expect(abs(loss - refLoss) < 1e-4, "loss \(loss) vs reference \(refLoss)")
        try engine.backward(dLogp: dLogp)
        let g = engine.grads!
        var checked = 0
        for slot in model.layout.tensors {
            let want = try ref.doubles("grad.\(slot.name)")
            let got = Array(UnsafeBufferPointer(start: g.base + slot.offset, count: slot.count))
            let scale = max(want.map(abs).max() ?? 0, 1e-12)
            if let msg = worstDifference("grad.\(slot.name)", got, want, tol: 1e-4, relativeTo: scale) { Issue.record("\(msg)") }
            checked += 1
        }
        #expect(checked == model.layout.tensors.count)
    }
}
