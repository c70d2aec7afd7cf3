// AuxLossTests: the load-balancing aux loss of HF's Qwen3-MoE and Mixtral (transformers 5.24
// models/qwen3_moe/modeling_qwen3_moe.py L504-L573, load_balancing_loss_func; added to the loss as
// router_aux_loss_coef × aux at L655-L662): E · Σ_e f_e · P_e over the rows of every MoE layer, f_e the
// share of the K choices that went to expert e, P_e the mean router probability. Its gradient reaches the
// router through P. The numpy transcription of the same function is in Tests/cli/test_cli.py.
import Foundation
import Testing
@testable import MoE
import Routes

struct AuxLossTests {
    /// The same loss written out from the router logits the forward returns (a Swift twin of HF's code).
    func transcription(_ out: ForwardResult, _ c: ModelConfig) -> Double {
        let E = c.numExperts, L = c.moeLayers.count, K = c.topK, T = out.logprobs.count
        var counts = [Double](repeating: 0, count: E), probs = counts
        for t in 0..<T {
            for l in 0..<L {
                let z = out.routerLogits[((t * L + l) * E)..<((t * L + l + 1) * E)].map(Double.init)
                let mx = z.max()!, ex = z.map { Foundation.exp($0 - mx) }, s = ex.reduce(0, +)
                for e in 0..<E { probs[e] += ex[e] / s }
                for j in 0..<K { counts[Int(out.routes.ids[(t * L + l) * K + j])] += 1 }
            }
        }
        let rows = Double(T * L)
        return Double(E) * (0..<E).reduce(0.0) { $0 + counts[$1] / rows * probs[$1] / rows }
    }

    @Test(arguments: ["qwen3", "mixtral"])
    func auxLossIsHFsFormulaAndItsGradientMatchesFiniteDifferences(family: String) throws {
        let model = family == "qwen3" ? try Model(config: Factory.oddConfig(), seed: 7, std: 0.3, routerStd: 1.0)
                                      : try FamilyConfigs.model("mixtral", seed: 7)
        let c = model.config
        let seqs = Factory.randomSequences(count: 2, lengths: 6...9, vocab: c.vocabSize, seed: 3)
        let engine = Engine(model: model, workers: 1)
        let live = try engine.forward(seqs, options: ForwardOptions(routerLogits: true))
        #expect(abs(live.auxLoss - transcription(live, c)) < 1e-6, "aux \(live.auxLoss) vs transcription \(transcription(live, c))")
        #expect(live.auxLoss > 1, "an unbalanced random router has aux > 1 (1 is perfect balance)")
        // replay: f counts the forced experts, so the loss is smooth in every parameter
        let tables = seqs.enumerated().map { i, s in
            Factory.randomRoutes(rows: s.count - 1, layers: c.moeLayers.count, topK: c.topK, experts: c.numExperts, seed: UInt64(11 + i))
        }
        let lambda: Float = 0.7
        var rng = SeededRandom(seed: 5)
        let T = seqs.reduce(0) { $0 + $1.count }
        let coef = (0..<T).map { _ in Float(rng.uniform() * 2 - 1) }
        func loss() throws -> Double {
            let out = try engine.forward(seqs, routing: .replay(tables))
            return zip(out.logprobs, coef).reduce(0.0) { $0 + ($1.0.isNaN ? 0 : Double($1.0) * Double($1.1)) } + Double(lambda) * out.auxLoss
        }
        let out = try engine.forward(seqs, routing: .replay(tables), options: ForwardOptions(training: true, auxLossCoef: lambda))
        engine.zeroGrad()
        try engine.backward(dLogp: zip(out.logprobs, coef).map { $0.0.isNaN ? 0 : $0.1 })
        let withAux = engine.grads!.array()
        _ = try engine.forward(seqs, routing: .replay(tables), options: ForwardOptions(training: true))
        engine.zeroGrad()
        try engine.backward(dLogp: zip(out.logprobs, coef).map { $0.0.isNaN ? 0 : $0.1 })
        let without = engine.grads!.array()
        var failures: [String] = []
        var routerChecked = 0
        for slot in model.layout.tensors {
            let g = Array(withAux[slot.offset..<(slot.offset + slot.count)])
            let scale = Double(g.map(abs).max() ?? 0)
            var picks = [g.indices.max { abs(g[$0]) < abs(g[$1]) }!]
            picks.append(Int(rng.next() % UInt64(slot.count)))
            for i in picks {
                let p = model.params.base + slot.offset + i
                let saved = p.pointee
                p.pointee = saved + 1e-2; let up = try loss()
                p.pointee = saved - 1e-2; let down = try loss()
                p.pointee = saved
                let fd = (up - down) / 2e-2
                if abs(fd - Double(g[i])) > 2e-2 * scale + 2e-3 { failures.append("\(slot.name)[\(i)]: backward \(g[i]), finite difference \(fd)") }
            }
            if slot.name.hasSuffix("gate.weight") {
                routerChecked += 1
                let differs = zip(g, without[slot.offset..<(slot.offset + slot.count)]).contains { abs($0 - $1) > 1e-6 }
                #expect(differs, "\(slot.name): the aux loss changes the router's gradient")
            }
        }
        #expect(routerChecked == c.moeLayers.count)
        #expect(failures.isEmpty, "\(family): \(failures.count) mismatches, first: \(failures.prefix(3))")
    }

    @Test func sigmoidRoutersRefuseTheCoefficientAndReportNoAuxLoss() throws {
        let model = try FamilyConfigs.model("glm", seed: 1)
        let engine = Engine(model: model)
        let seqs = [[Int32(1), 2, 3, 4]]
        #expect(try engine.forward(seqs).auxLoss.isNaN)
        #expect(throws: MoEError.self) { try engine.forward(seqs, options: ForwardOptions(training: true, auxLossCoef: 0.01)) }
    }
}
