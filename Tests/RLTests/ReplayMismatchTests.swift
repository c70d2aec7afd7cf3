// ReplayMismatchTests: what R3 is for. On tokens whose bf16-recorded experts differ from the fp32
// training router's choice, replaying the recorded experts must bring the training log-prob closer to
// the inference log-prob than live routing does.
import MoE
import XCTest
@testable import RL

final class ReplayMismatchTests: XCTestCase {
    func testReplayShrinksTheMismatchOnTokensWhoseRoutesFlipped() throws {
        let cfg = ModelConfig(vocabSize: 98, hiddenSize: 64, intermediateSize: 128, moeIntermediateSize: 32, numLayers: 2, numHeads: 4,
                              numKVHeads: 2, headDim: 16, numExperts: 16, topK: 4, normTopKProb: true)
        let p = Policy(model: try Model(config: cfg, seed: 3, std: 0.1, routerStd: 0.3), learningRate: 1e-4, workers: 2)
        var rc = RolloutConfig(); rc.promptsPerStep = 16; rc.samplesPerPrompt = 4; rc.seed = 5; rc.maxTokens = 12
        let samples = try p.rollout(task: try Task(kind: .reverse, difficulty: 4), step: 0, rc).samples
        let seqs = samples.map(\.tokens)
        let live = try p.train.forward(seqs)
        let replay = try p.train.forward(seqs, routing: .replay(samples.map { $0.routes! }))
        let L = cfg.moeLayers.count, K = cfg.topK
        var flipped = (live: 0.0, replay: 0.0, n: 0), same = (live: 0.0, replay: 0.0, n: 0)
        for (s, sample) in samples.enumerated() {
            let rows = live.rows(ofSequence: s)
            for j in 0..<sample.responseLength {
                let t = sample.promptLength + j - 1          // row predicting response token j
                let infer = Double(sample.inferLogprobs![j])
                // any layer of token t routed differently by the fp32 live router?
                var differs = false
                for l in 0..<L {
                    let rec = Set((0..<K).map { sample.routes!.ids[(t * L + l) * K + $0] })
                    let got = Set((0..<K).map { live.routes.ids[((rows.lowerBound + t) * L + l) * K + $0] })
                    if rec != got { differs = true }
                }
                let dl = abs(Double(live.logprobs[rows.lowerBound + t]) - infer), dr = abs(Double(replay.logprobs[rows.lowerBound + t]) - infer)
                if differs { flipped.live += dl; flipped.replay += dr; flipped.n += 1 } else { same.live += dl; same.replay += dr; same.n += 1 }
            }
        }
        XCTAssertGreaterThan(flipped.n, 0, "bf16 inference should flip some routes")
        XCTAssertLessThan(flipped.replay, flipped.live * 0.5, "replay must remove most of the flipped tokens' mismatch")
    }
}

