// Tests of advantages, the GRPO / GSPO / TIS loss gradients (against finite differences of the loss)
// and the mismatch metrics.
import MoE
import XCTest
@testable import RL
import Routes

final class PolicyLossTests: XCTestCase {
    func testAdvantagesAreNormalisedWithinEachGroup() {
        let a = PolicyLoss.advantages(rewards: [1, 0, 0, 1, 0.5, 0.5, 7], groups: [0, 0, 0, 0, 1, 1, 2])
        XCTAssertEqual(a[0...3].reduce(0, +), 0, accuracy: 1e-9)
        XCTAssertEqual(a[0], 1, accuracy: 1e-5)
        XCTAssertEqual(a[1], -1, accuracy: 1e-5)
        XCTAssertEqual(Array(a[4...6]), [0, 0, 0], "equal rewards and a lone sample carry no advantage")
    }

    /// A batch of two sequences, response rows 1..<4 and 6..<9, with log-probs near their old values.
    func fixture(seed: UInt64, spread: Double) -> (logp: [Float], old: [Float], infer: [Float], segs: [Range<Int>], adv: [Double]) {
        var rng = SeededRandom(seed: seed)
        let old = (0..<10).map { _ in Float(-0.2 - rng.uniform() * 2) }
        let logp = old.map { $0 + Float((rng.uniform() - 0.5) * spread) }
        let infer = old.map { $0 + Float((rng.uniform() - 0.5) * 1.5) }
        return (logp, old, infer, [1..<4, 6..<9], [0.8, -1.3])
    }

    func checkAgainstFiniteDifferences(_ c: LossConfig, spread: Double, file: StaticString = #filePath, line: UInt = #line) {
        for seed in 0..<6 as Range<UInt64> {
            let f = fixture(seed: seed, spread: spread)
            let g = PolicyLoss.gradient(logp: f.logp, old: f.old, infer: f.infer, advantages: f.adv, segments: f.segs, config: c)
            for t in 0..<f.logp.count {
                var plus = f.logp, minus = f.logp
                let h: Float = 1e-3
                plus[t] += h; minus[t] -= h
                let lp = PolicyLoss.gradient(logp: plus, old: f.old, infer: f.infer, advantages: f.adv, segments: f.segs, config: c).loss
                let lm = PolicyLoss.gradient(logp: minus, old: f.old, infer: f.infer, advantages: f.adv, segments: f.segs, config: c).loss
                let fd = (lp - lm) / Double(2 * h)
                XCTAssertEqual(Double(g.dLogp[t]), fd, accuracy: 2e-3, "\(c.algorithm) tis=\(c.tis) seed \(seed): dLogp[\(t)]", file: file, line: line)
            }
        }
    }

    func testGRPOGradientMatchesFiniteDifferencesInAndOutOfTheClipRange() {
        checkAgainstFiniteDifferences(LossConfig(algorithm: .grpo), spread: 0.2)
        checkAgainstFiniteDifferences(LossConfig(algorithm: .grpo), spread: 1.2)   // many tokens clipped
        checkAgainstFiniteDifferences(LossConfig(algorithm: .grpo, tis: true), spread: 0.6)
    }

    func testGSPOGradientMatchesFiniteDifferences() {
        checkAgainstFiniteDifferences(LossConfig(algorithm: .gspo, clipLow: 0.3, clipHigh: 0.4), spread: 0.3)
        checkAgainstFiniteDifferences(LossConfig(algorithm: .gspo, clipLow: 0.3, clipHigh: 0.4, tis: true), spread: 0.3)
    }

    func testClippedTokensGetNoGradientAndAreCounted() {
        // A > 0 with r = e^0.5 > 1.28: clipped. A < 0 with r = e^−0.5 < 0.8: clipped. r = 1: not clipped.
        let old: [Float] = [0, -1, -1, -1]
        let logp: [Float] = [0, -0.5, -1.5, -1]
        let g = PolicyLoss.gradient(logp: logp, old: old, infer: [Float](repeating: .nan, count: 4), advantages: [1, -1, 1],
                                    segments: [1..<2, 2..<3, 3..<4], config: LossConfig())
        XCTAssertEqual(g.dLogp, [0, 0, 0, Float(-1.0 / 3.0)])
        XCTAssertEqual(g.clipFrac, 2.0 / 3.0, accuracy: 1e-12)
        XCTAssertEqual(LossConfig(algorithm: .gspo).clipHigh, 4e-4)
    }

    func testTISWeightIsCappedAndOneWithoutInferenceLogprobs() {
        XCTAssertEqual(PolicyLoss.tisWeight(old: 0, infer: -3, cap: 2), 2)
        XCTAssertEqual(PolicyLoss.tisWeight(old: -1, infer: -0.5, cap: 2), exp(-0.5), accuracy: 1e-9)
        XCTAssertEqual(PolicyLoss.tisWeight(old: -1, infer: .nan, cap: 2), 1)
    }

    func testLogprobMismatchMetrics() {
        let train: [Float] = [0, -1, -1, -1, -1, .nan]
        let infer: [Float] = [9, -1, -2, -1 + log(3), -1 - log(6), -1]
        let m = Mismatch.logprobs(train: train, infer: infer, rows: [1..<6])
        let ds = [0.0, 1, -Double(log(Float(3))), Double(log(Float(6)))]
        XCTAssertEqual(m.tokens, 4)
        XCTAssertEqual(m.k3KL, ds.map { exp($0) - 1 - $0 }.reduce(0, +) / 4, accuracy: 1e-6)
        XCTAssertEqual(m.extremeFracTau2, 0.75)   // |Δ| = 1, ln 3, ln 6 exceed ln 2
        XCTAssertEqual(m.extremeFracTau5, 0.25)
    }

    func testRouterMismatchComparesExpertSetsNotOrder() throws {
        // 3 tokens × 2 layers × top-2
        let a = try RouteArray(rows: 3, layers: 2, topK: 2, ids: [0, 1, 2, 3,   4, 5, 6, 7,   1, 2, 3, 4])
        let b = try RouteArray(rows: 3, layers: 2, topK: 2, ids: [1, 0, 2, 3,   4, 6, 0, 1,   -1, -1, 3, 4])
        let m = Mismatch.routers(a, b, rows: [0..<3])
        XCTAssertEqual(m.pairs, 5)                               // the missing row is skipped
        XCTAssertEqual(m.routerDisagreement, 2.0 / 5.0)         // token 1: both layers differ
        XCTAssertEqual(m.tokenDisagreement, 1.0 / 3.0)
        XCTAssertEqual(m.routersDifferingPerToken, 3.0 / 3.0)   // one slot + two slots
    }
}
