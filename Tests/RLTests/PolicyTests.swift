// Tests of Policy on a small random MoE: metrics of an RL step under each replay mode, SFT learning,
// and checkpoints that resume bit-identically.
import Foundation
import MoE
import XCTest
@testable import RL

final class PolicyTests: XCTestCase {
    static func config() -> ModelConfig {
        ModelConfig(vocabSize: 98, hiddenSize: 32, intermediateSize: 64, moeIntermediateSize: 16, numLayers: 2, numHeads: 4,
                    numKVHeads: 2, headDim: 8, numExperts: 8, topK: 2)
    }
    func policy(seed: UInt64 = 1, lr: Float = 3e-3) throws -> Policy {
        Policy(model: try Model(config: PolicyTests.config(), seed: seed, std: 0.05, routerStd: 0.5), learningRate: lr, workers: 2)
    }
    func rolloutConfig() -> RolloutConfig { var r = RolloutConfig(); r.promptsPerStep = 4; r.samplesPerPrompt = 4; r.seed = 3; return r }

    func testRLStepReportsEveryMetricFiniteUnderEachReplayMode() throws {
        let task = try Task(kind: .addition, difficulty: 1)
        for mode in ReplayMode.allCases {
            let p = try policy()
            let (samples, problems) = try p.rollout(task: task, step: 0, rolloutConfig())
            XCTAssertEqual(samples.count, 16); XCTAssertEqual(problems.count, 4)
            var c = OptimConfig(); c.replay = mode; c.miniSteps = 2
            let m = try p.optimise(samples, c)
            for k in ["k3_kl", "extreme_frac_tau2", "extreme_frac_tau5", "router_disagreement", "token_disagreement",
                      "routers_differing_per_token", "grad_norm", "entropy", "reward_mean", "response_len_mean", "clip_frac",
                      "replay_fallback_tokens", "router_gate_entropy"] {
                XCTAssertTrue(m[k]?.isFinite ?? false, "\(mode): \(k) = \(String(describing: m[k]))")
            }
            XCTAssertEqual(m["replay_live_agreement"]?.isFinite ?? false, mode != .none, "\(mode): no replay, no agreement")
            XCTAssertGreaterThan(m["k3_kl"]!, 0, "bf16 inference against fp32 training must differ")
            XCTAssertTrue((0...log(2.0) + 1e-9).contains(m["router_gate_entropy"]!), "top-2 gate entropy is within [0, ln 2]")
            if mode == .R3 {
                XCTAssertEqual(m["replay_live_agreement"]!, 1 - m["router_disagreement"]!, accuracy: 1e-12)
            }
        }
    }

    func testR3ReplaysTheInferenceRoutesAndMissingRowsFallBack() throws {
        let p = try policy()
        var (samples, _) = try p.rollout(task: try Task(kind: .reverse, difficulty: 2), step: 0, rolloutConfig())
        let L = p.config.moeLayers.count, K = p.config.topK
        for k in 0..<(L * K) { samples[0].routes!.ids[k] = -1 }   // token 0 of sample 0: every layer missing
        var c = OptimConfig(); c.replay = .R3
        let m = try p.optimise(samples, c)
        XCTAssertEqual(m["replay_fallback_tokens"], 1)
        samples[1].routes!.ids[0] = 99
        XCTAssertThrowsError(try p.optimise(samples, c)) { XCTAssertTrue("\($0)".contains("sample 1 routes"), "\($0)") }
    }

    func testSupervisedStepsLowerTheLoss() throws {
        let p = try policy(lr: 1e-2)
        let task = try Task(kind: .reverse, difficulty: 2)
        var first = 0.0, last = 0.0
        for s in 0..<25 {
            let (loss, gn, _) = try p.supervisedStep(try p.supervisedBatch(task: task, step: s, batch: 16, seed: 1))
            XCTAssertTrue(gn.isFinite)
            if s == 0 { first = loss }
            last = loss
        }
        XCTAssertLessThan(last, first * 0.7, "cross-entropy \(first) → \(last)")
    }

    func testCheckpointResumesBitIdentically() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("r3-ckpt-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let task = try Task(kind: .sort, difficulty: 3)
        let a = try policy()
        var c = OptimConfig(); c.replay = .R3
        _ = try a.optimise(try a.rollout(task: task, step: 0, rolloutConfig()).samples, c)
        try a.save(directory: dir, meta: ["step": 1])
        let b = try Policy.load(directory: dir, learningRate: 3e-3, inference: .bf16, workers: 2)
        XCTAssertEqual(b.optimizer.step, 1)
        let ma = try a.optimise(try a.rollout(task: task, step: 1, rolloutConfig()).samples, c)
        let mb = try b.optimise(try b.rollout(task: task, step: 1, rolloutConfig()).samples, c)
        XCTAssertEqual(ma["k3_kl"], mb["k3_kl"])
        XCTAssertEqual(a.model.params.array(), b.model.params.array(), "weights after the resumed step")
    }
}
