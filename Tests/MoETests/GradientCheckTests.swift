// GradientCheckTests: finite differences against backward on a config that exercises every odd field.
import Foundation
import Testing
@testable import MoE
import Routes

struct GradientCheckTests {
    @Test func oddConfigHasDenseLayersBetweenMoELayers() {
        let c = Factory.oddConfig()
        #expect(c.moeLayers == [1, 5])
        #expect(c.headDim * c.numHeads != c.hiddenSize)
        #expect(ParameterLayout(c).lmHead == ParameterLayout(c).embed)
    }

    @Test func finiteDifferencesMatchBackwardUnderReplay() throws {
        let c = Factory.oddConfig()
        let model = try Model(config: c, seed: 7, std: 0.3, routerStd: 1.0)
        let seqs = Factory.randomSequences(count: 2, lengths: 7...9, vocab: c.vocabSize, seed: 3)
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
        let dLogp = zip(out.logprobs, coef).map { $0.0.isNaN ? 0 : $0.1 }
        engine.zeroGrad()
        try engine.backward(dLogp: dLogp)
        let grads = engine.grads!.array()
        let eps: Float = 1e-2
        var failures: [String] = []
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
                if abs(fd - Double(g[i])) > tol {
                    failures.append("\(slot.name)[\(i)]: backward \(g[i]), finite difference \(fd), tol \(tol)")
                }
            }
        }
        #expect(failures.isEmpty, "\(failures.count) gradient mismatches, first: \(failures.prefix(3))")
    }

    @Test func liveRoutingGradientsEqualReplayOfOwnRoutes() throws {
        let c = Factory.oddConfig()
        let model = try Model(config: c, seed: 9, std: 0.3, routerStd: 1.0)
        let seqs = Factory.randomSequences(count: 3, lengths: 5...12, vocab: c.vocabSize, seed: 4)
        let engine = Engine(model: model, workers: 2)
        let live = try engine.forward(seqs, options: ForwardOptions(training: true))
        let dLogp = live.logprobs.map { $0.isNaN ? Float(0) : -0.1 }
        try engine.backward(dLogp: dLogp)
        let g1 = engine.grads!.array()
        let tables = try seqs.indices.map { try live.routes.rows(live.rows(ofSequence: $0)) }
        let replay = try engine.forward(seqs, routing: .replay(tables), options: ForwardOptions(training: true))
        #expect(replay.logprobs.map(\.bitPattern) == live.logprobs.map(\.bitPattern))
        engine.zeroGrad()
        try engine.backward(dLogp: dLogp)
        #expect(engine.grads!.array() == g1, "live and replay-of-own-routes gradients differ")
        let routerGrad = model.layout.tensors.first { $0.name.hasSuffix("mlp.gate.weight") }!
        let rg = g1[routerGrad.offset..<(routerGrad.offset + routerGrad.count)]
        #expect(rg.contains { $0 != 0 }, "the router receives gradient through the gate weights")
    }
}
