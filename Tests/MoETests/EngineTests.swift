// EngineTests: routing as data (record, replay, fallbacks, validation), generation against the full
// forward, the numerics modes, and packing.
import Foundation
import Testing
@testable import MoE
import Routes

struct EngineTests {
    let config = Factory.routedConfig()
    let model: Model

    init() throws { model = try Model(config: config, seed: 21, std: 0.08, routerStd: 0.5) }

    @Test(arguments: [Numerics.fp32, .bf16, .deterministic])
    func recordThenReplayGivesBitIdenticalLogits(numerics: Numerics) throws {
        let engine = Engine(model: model, numerics: numerics)
        let seqs = Factory.randomSequences(count: 3, lengths: 10...40, vocab: config.vocabSize, seed: 1)
        let live = try engine.forward(seqs, options: ForwardOptions(keepLogits: true))
        let tables = try seqs.indices.map { try live.routes.rows(live.rows(ofSequence: $0)) }
        let replay = try engine.forward(seqs, routing: .replay(tables), options: ForwardOptions(keepLogits: true))
        #expect(replay.logits.map(\.bitPattern) == live.logits.map(\.bitPattern), "logits differ under replay of own routes (\(numerics.name))")
        #expect(replay.gates.map(\.bitPattern) == live.gates.map(\.bitPattern))
        #expect(replay.replayFallbackRows == 0)
    }

    @Test func routesAreInDescendingRouterProbability() throws {
        let engine = Engine(model: model)
        let seqs = Factory.randomSequences(count: 2, lengths: 20...30, vocab: config.vocabSize, seed: 2)
        let out = try engine.forward(seqs)
        let K = config.topK
        for r in 0..<(out.gates.count / K) {
            for j in 1..<K { #expect(out.gates[r * K + j - 1] >= out.gates[r * K + j], "gates row \(r) not descending") }
        }
    }

    @Test func missingRowsFallBackToLiveAndAreCounted() throws {
        let engine = Engine(model: model)
        let seq = Factory.randomSequences(count: 1, lengths: 12...12, vocab: config.vocabSize, seed: 3)
        let live = try engine.forward(seq)
        let L = config.moeLayers.count, K = config.topK
        var table = Factory.randomRoutes(rows: 11, layers: L, topK: K, experts: config.numExperts, seed: 4)   // T − 1 rows
        for t in [2, 5] { for j in 0..<K { table.ids[(t * L + 1) * K + j] = -1 } }
        let out = try engine.forward(seq, routing: .replay([table]))
        #expect(out.replayFallbackRows == 2)
        for t in [2, 5] {
            let o = (t * L + 1) * K
            #expect(Array(out.routes.ids[o..<(o + K)]) == Array(out.liveRoutes.ids[o..<(o + K)]), "fallback row \(t) uses the live router")
            #expect(Array(out.routes.ids[o..<(o + K)]) != Array(table.ids[o..<(o + K)]))
        }
        // T rows are accepted too
        let full = Factory.randomRoutes(rows: 12, layers: L, topK: K, experts: config.numExperts, seed: 5)
        #expect(try engine.forward(seq, routing: .replay([full])).routes.ids == full.ids)
    }

    @Test func invalidRoutesAreRejectedWithTheirIndex() throws {
        let engine = Engine(model: model)
        let seq = Factory.randomSequences(count: 1, lengths: 6...6, vocab: config.vocabSize, seed: 6)
        let L = config.moeLayers.count, K = config.topK, E = config.numExperts
        func err(_ t: RouteArray) -> String {
            do { _ = try engine.forward(seq, routing: .replay([t])); return "accepted" } catch { return "\(error)" }
        }
        let good = Factory.randomRoutes(rows: 5, layers: L, topK: K, experts: E, seed: 7)
        #expect(err(Factory.randomRoutes(rows: 4, layers: L, topK: K, experts: E, seed: 7)).contains("4 rows for a sequence of 6 tokens"))
        #expect(err(try RouteArray(rows: 5, layers: L, topK: K - 1, ids: Array(good.ids.prefix(5 * L * (K - 1))))).contains("does not match the model"))
        var bad = good; bad.ids[7] = Int32(E)
        #expect(err(bad).contains("expert id \(E) at [0, 1, 3] is outside [0, \(E))"))
        bad = good; bad.ids[1] = bad.ids[0]
        #expect(err(bad).contains("expert \(bad.ids[0]) appears twice at [0, 0]"))
        bad = good; bad.ids[0] = -1
        #expect(err(bad).contains("partly missing"))
        #expect(err(good) == "accepted")
    }

    @Test func packedBatchMatchesSequencesAlone() throws {
        let engine = Engine(model: model)
        let seqs = Factory.randomSequences(count: 4, lengths: 1...70, vocab: config.vocabSize, seed: 8)
        let batch = try engine.forward(seqs, options: ForwardOptions(keepLogits: true))
        let V = config.vocabSize
        for (s, seq) in seqs.enumerated() {
            let alone = try engine.forward([seq], options: ForwardOptions(keepLogits: true))
            let r = batch.rows(ofSequence: s)
            let part = Array(batch.logits[(r.lowerBound * V)..<(r.upperBound * V)])
            let worst = zip(part, alone.logits).map { abs($0 - $1) }.max() ?? 0
            #expect(worst < 1e-5, "sequence \(s) logits differ by \(worst) in a batch")
            #expect(try batch.routes.rows(r).ids == alone.routes.ids)
        }
    }

    @Test(arguments: [Float(1), 0.7])
    func generationLogprobsMatchFullForward(temperature: Float) throws {
        let engine = Engine(model: model)
        let prompts = Factory.randomSequences(count: 3, lengths: 3...20, vocab: config.vocabSize, seed: 9)
        let gens = try engine.generate(prompts, sampling: SamplingParams(maxTokens: 24, temperature: temperature, seed: 42))
        for (b, g) in gens.enumerated() {
            #expect(g.tokens.count == prompts[b].count + 24)
            #expect(g.routes.rows == g.tokens.count - 1, "routes cover every input token (T − 1 rows)")
            let full = try engine.forward([g.tokens], options: ForwardOptions(temperature: temperature))
            var worst: Float = 0
            for (i, lp) in g.logprobs.enumerated() {
                worst = max(worst, abs(lp - full.logprobs[g.promptLength - 1 + i]))
            }
            #expect(worst < 1e-4, "prompt \(b): KV-cache log-probs differ from the full forward by \(worst)")
            #expect(Array(full.routes.ids.prefix(g.routes.ids.count)) == g.routes.ids, "prompt \(b): recorded routes differ from the full forward")
        }
    }

    @Test func samplingIsSeededAndTopKOneIsGreedy() throws {
        let engine = Engine(model: model)
        let prompts = [[Int32(1), 2, 3]]
        let a = try engine.generate(prompts, sampling: SamplingParams(maxTokens: 10, temperature: 1, seed: 5))
        let b = try engine.generate(prompts, sampling: SamplingParams(maxTokens: 10, temperature: 1, seed: 5))
        let c = try engine.generate(prompts, sampling: SamplingParams(maxTokens: 10, temperature: 1, seed: 6))
        #expect(a[0].tokens == b[0].tokens)
        #expect(a[0].tokens != c[0].tokens)
        let greedy = try engine.generate(prompts, sampling: SamplingParams(maxTokens: 10, temperature: 0))
        let top1 = try engine.generate(prompts, sampling: SamplingParams(maxTokens: 10, temperature: 0.9, topK: 1, seed: 3))
        #expect(greedy[0].tokens == top1[0].tokens)
        let stop = greedy[0].tokens[5]
        let stopped = try engine.generate(prompts, sampling: SamplingParams(maxTokens: 10, temperature: 0, stopTokens: [stop]))
        #expect(stopped[0].finishReason == "stop")
        #expect(stopped[0].tokens.last == stop)
        #expect(throws: MoEError.self) { try engine.generate(prompts, sampling: SamplingParams(topP: 0)) }
    }

    @Test func bf16RoutesMeasurablyDifferFromFP32() throws {
        let fp32 = Engine(model: model, numerics: .fp32), bf16 = Engine(model: model, numerics: .bf16)
        let seqs = Factory.randomSequences(count: 8, lengths: 64...64, vocab: config.vocabSize, seed: 10)
        let a = try fp32.forward(seqs), b = try bf16.forward(seqs)
        let K = config.topK, rows = a.routes.ids.count / K
        var differ = 0
        for r in 0..<rows where Set(a.routes.ids[(r * K)..<(r * K + K)]) != Set(b.routes.ids[(r * K)..<(r * K + K)]) { differ += 1 }
        let rate = Double(differ) / Double(rows)
        print("bf16 vs fp32 router disagreement: \(differ)/\(rows) (token, layer) pairs = \(rate)")
        #expect(differ > 0, "bf16 inference should flip some routing decisions")
        #expect(rate < 0.5)
    }

    /// Decode reads the weights' bf16 twin. Deterministic: the same bits as the fp32-weight path. bf16: the
    /// same tokens and routes; sgemm sums in another order, and a last-bit difference that crosses a bf16
    /// rounding of the next layer's input moves log-probs by up to about 2e-3 here (the bench's
    /// batch_variance case measures the same effect of batch composition at 0.058).
    @Test(arguments: [Numerics.deterministic, .bf16])
    func decodeOnTheBF16TwinKeepsItsOutputs(numerics: Numerics) throws {
        let prompts = Factory.randomSequences(count: 5, lengths: 3...30, vocab: config.vocabSize, seed: 17)
        for sampling in [SamplingParams(maxTokens: 20, temperature: 0), SamplingParams(maxTokens: 20, temperature: 1, seed: 8)] {
            let twin = Engine(model: model, numerics: numerics), plain = Engine(model: model, numerics: numerics)
            plain.useBF16Twin = false
            for batch in [Array(prompts.prefix(1)), prompts] {
                let a = try twin.generate(batch, sampling: sampling), b = try plain.generate(batch, sampling: sampling)
                for (x, y) in zip(a, b) {
                    #expect(x.tokens == y.tokens)
                    #expect(x.routes == y.routes)
                    if numerics.batchInvariant {
                        #expect(x.logprobs.map(\.bitPattern) == y.logprobs.map(\.bitPattern))
                    } else {
                        let worst = zip(x.logprobs, y.logprobs).map { abs($0 - $1) }.max()!
                        #expect(worst < 5e-3, "log-probs off by \(worst)")
                    }
                }
            }
        }
    }

    /// Long sequences run the LM head in chunks and recompute each chunk's logits in backward, instead of
    /// holding [T, V] logits and their gradient: log-probs, entropy, logits and every gradient as whole.
    @Test func chunkedLMHeadGivesTheSameLossAndGradients() throws {
        let seqs = Factory.randomSequences(count: 3, lengths: 15...40, vocab: config.vocabSize, seed: 19)
        let T = seqs.reduce(0) { $0 + $1.count }
        var rng = SeededRandom(seed: 20)
        let dLogp = (0..<T).map { t in t % 5 == 0 ? Float(0) : Float(rng.normal()) }
        func run(chunk: Int?) throws -> (ForwardResult, [Float]) {
            let e = Engine(model: model.clone(), numerics: .fp32)
            e.headChunkRows = chunk
            let r = try e.forward(seqs, options: ForwardOptions(keepLogits: true, training: true, entropy: true))
            try e.backward(dLogp: dLogp)
            return (r, e.grads!.array())
        }
        let (whole, gWhole) = try run(chunk: nil)
        for chunk in [7, 16] {
            let (parts, gParts) = try run(chunk: chunk)
            #expect(T > chunk)
            let lp = zip(whole.logprobs, parts.logprobs).map { $0.isNaN && $1.isNaN ? 0 : abs($0 - $1) }.max()!
            let en = zip(whole.entropy, parts.entropy).map { abs($0 - $1) }.max()!
            let lg = zip(whole.logits, parts.logits).map { abs($0 - $1) }.max()!
            #expect(lp < 1e-5 && en < 1e-5 && lg < 1e-5, "chunk \(chunk): log-probs \(lp), entropy \(en), logits \(lg)")
            let scale = gWhole.map { abs($0) }.max()!
            let g = zip(gWhole, gParts).map { abs($0 - $1) }.max()!
            #expect(g < 1e-5 * scale, "chunk \(chunk): gradients differ by \(g) (largest \(scale))")
        }
    }

    /// Long inputs keep one layer's MLP activations and recompute each layer's in backward, share one
    /// buffer for h1 and h2 (and for GQA's normed q/k) computed again where used, and lay attention's
    /// gradients and the LM head's buffers over the MLP's: the same gradients, bit for bit (the same
    /// products on the same inputs), with dense and MoE layers, GQA and MLA.
    @Test(arguments: ["tiny", "odd", "deepseek"])
    func recomputedMLPActivationsGiveTheSameGradients(which: String) throws {
        let cfg = which == "odd" ? Factory.oddConfig() : which == "deepseek" ? try ModelConfig(json: FamilyConfigs.deepseek) : config
        let m = which == "tiny" ? model : try Model(config: cfg, seed: 5)
        let seqs = Factory.randomSequences(count: 3, lengths: 10...30, vocab: cfg.vocabSize, seed: 23)
        let T = seqs.reduce(0) { $0 + $1.count }
        var rng = SeededRandom(seed: 24)
        let dLogp = (0..<T).map { _ in Float(rng.normal()) }
        func grads(recomputeAbove: Int) throws -> [Float] {
            let e = Engine(model: m.clone(), numerics: .fp32)
            e.recomputeMLPAbove = recomputeAbove
            _ = try e.forward(seqs, options: ForwardOptions(training: true))
            #expect(e.ws!.mlpShared == (recomputeAbove == 0))
            #expect(e.ws!.recomputesQK == (recomputeAbove == 0 && cfg.mla == nil))
            try e.backward(dLogp: dLogp)
            return e.grads!.array()
        }
        #expect(try grads(recomputeAbove: 0).map(\.bitPattern) == grads(recomputeAbove: 1 << 20).map(\.bitPattern))
    }

    /// Long training inputs run attention in FlashAttention-2's tiles (online softmax over key blocks in
    /// forward; key blocks outside, query blocks inside in backward). Tiles of 5 query × 7 key rows forward
    /// and 3 × 11 backward here, so
    /// that every sequence crosses many tiles, partial ones and the causal diagonal inside a tile: the same
    /// log-probs and gradients as the one-pass kernels, to rounding, for GQA (q/k norm) and for MLA
    /// (query and value widths of their own).
    @Test(arguments: ["odd", "deepseek"])
    func tiledAttentionGivesTheSameLossAndGradients(which: String) throws {
        let cfg = which == "odd" ? Factory.oddConfig() : try ModelConfig(json: FamilyConfigs.deepseek)
        let m = try Model(config: cfg, seed: 7, std: 0.2)
        let seqs = Factory.randomSequences(count: 3, lengths: 9...40, vocab: cfg.vocabSize, seed: 29)
        let T = seqs.reduce(0) { $0 + $1.count }
        var rng = SeededRandom(seed: 30)
        let dLogp = (0..<T).map { _ in Float(rng.normal()) }
        func run(tiled: Bool) throws -> (ForwardResult, [Float]) {
            let e = Engine(model: m.clone(), numerics: .fp32)
            e.tiledAttentionAbove = tiled ? 0 : 1 << 30
            e.attnTiles = AttnTiles(queryRows: 5, keyRows: 7)
            e.attnTiles.backwardQueryRows = 3; e.attnTiles.backwardKeyRows = 11   // backward's own sizes
            let r = try e.forward(seqs, options: ForwardOptions(training: true, entropy: true))
            #expect(e.tiledAttention(ws: e.ws!, cache: nil) == tiled)
            try e.backward(dLogp: dLogp)
            return (r, e.grads!.array())
        }
        let (one, gOne) = try run(tiled: false)
        let (tiles, gTiles) = try run(tiled: true)
        let lp = zip(one.logprobs, tiles.logprobs).map { abs($0 - $1) }.max()!
        let en = zip(one.entropy, tiles.entropy).map { abs($0 - $1) }.max()!
        #expect(lp < 1e-5 && en < 1e-5, "log-probs \(lp), entropy \(en)")
        let scale = gOne.map { abs($0) }.max()!
        let g = zip(gOne, gTiles).map { abs($0 - $1) }.max()!
        #expect(g < 1e-5 * scale, "gradients differ by \(g) (largest \(scale))")
        #expect(gOne != gTiles, "the tiled path did not run")
    }

    /// The per-worker scratch covers the forward's score tile and its row max and sum, and the backward's
    /// P and dP tiles, whichever sizes are larger; the workspace allocates at least that.
    @Test func attentionTileScratchCoversForwardAndBackward() {
        var t = AttnTiles()
        #expect(t.scratchFloats >= t.queryRows * t.keyRows + 2 * t.queryRows)
        #expect(t.scratchFloats >= 2 * t.backwardQueryRows * t.backwardKeyRows)
        t.backwardQueryRows = 4 * t.queryRows   // a backward larger than the forward sets the size
        #expect(t.scratchFloats == 2 * t.backwardQueryRows * t.backwardKeyRows)
        let ws = Workspace(config: config, rows: 64, saveLayers: true, maxKeys: 64, workers: 1, backward: true,
                           headChunk: 64, shareMLP: false)
        #expect(ws.attnStride >= AttnTiles().scratchFloats)
    }

    @Test func deterministicModeIsBatchInvariant() throws {
        let engine = Engine(model: model, numerics: .deterministic)
        let seqs = Factory.randomSequences(count: 5, lengths: 3...50, vocab: config.vocabSize, seed: 11)
        let batch = try engine.forward(seqs, options: ForwardOptions(keepLogits: true))
        let V = config.vocabSize
        for s in seqs.indices {
            let alone = try engine.forward([seqs[s]], options: ForwardOptions(keepLogits: true))
            let r = batch.rows(ofSequence: s)
            let same = Array(batch.logits[(r.lowerBound * V)..<(r.upperBound * V)]).map(\.bitPattern) == alone.logits.map(\.bitPattern)
            #expect(same, "sequence \(s) logits are not bit-identical alone and in a batch")
        }
        let prompts = Array(seqs.prefix(4))
        let together = try engine.generate(prompts, sampling: SamplingParams(maxTokens: 12, temperature: 1, seed: 100))
        for (b, p) in prompts.enumerated() {
            let alone = try engine.generate([p], sampling: SamplingParams(maxTokens: 12, temperature: 1, seed: 100 + UInt64(b)))
            #expect(alone[0].tokens == together[b].tokens)
            let same = alone[0].logprobs.map(\.bitPattern) == together[b].logprobs.map(\.bitPattern)
            #expect(same, "prompt \(b) log-probs differ alone vs batched")
            #expect(alone[0].routes == together[b].routes)
        }
    }
}

struct EngineMisuseTests {
    @Test func backwardAfterGenerateIsRefused() throws {
        let model = try Model(config: Factory.oddConfig(), seed: 1, std: 0.1)
        let engine = Engine(model: model)
        let out = try engine.forward([[1, 2, 3]], options: ForwardOptions(training: true))
        _ = try engine.generate([[4, 5]], sampling: SamplingParams(maxTokens: 2, temperature: 0))
        #expect(throws: MoEError.self) { try engine.backward(dLogp: out.logprobs.map { _ in 1 }) }
    }

    /// Backward consumes the forward's MLP activations (they take their gradients' place), so a second
    /// backward without a new forward is refused rather than computed from overwritten buffers; after a new
    /// forward it gives the same gradients as the first.
    @Test func secondBackwardNeedsANewForward() throws {
        let model = try Model(config: Factory.oddConfig(), seed: 1, std: 0.1)
        let engine = Engine(model: model)
        let seqs: [[Int32]] = [[1, 2, 3, 4, 5], [6, 7, 8]]
        let out = try engine.forward(seqs, options: ForwardOptions(training: true))
        let dLogp = out.logprobs.map { $0.isNaN ? Float(0) : -1 }
        try engine.backward(dLogp: dLogp)
        let first = engine.grads!.array()
        #expect(throws: MoEError.self) { try engine.backward(dLogp: dLogp) }
        engine.zeroGrad()
        _ = try engine.forward(seqs, options: ForwardOptions(training: true))
        try engine.backward(dLogp: dLogp)
        #expect(engine.grads!.array().map(\.bitPattern) == first.map(\.bitPattern))
    }

    @Test func badTokensAndTargetsAreRejected() throws {
        let engine = Engine(model: try Model(config: Factory.oddConfig(), seed: 1))
        #expect(throws: MoEError.input("token id 50 at packed position 1 is outside [0, 50)")) { try engine.forward([[1, 50]]) }
        #expect(throws: MoEError.self) { try engine.forward([[]]) }
        #expect(throws: MoEError.self) { try engine.forward([[1, 2]], options: ForwardOptions(targets: [1])) }
        #expect(throws: MoEError.self) { try engine.forward([[1, 2]], options: ForwardOptions(temperature: 0)) }
    }
}
