// MismatchTests: the mismatch metrics against their definitions written out plainly: quantiles by
// selection against a full sort (numpy's linear interpolation), TIS statistics, sequence ratios, the
// replay share, and the metric set `Mismatch.metrics` names.
import Foundation
import Routes
import XCTest
@testable import RL

final class MismatchTests: XCTestCase {
    /// numpy.quantile(xs, q) (method "linear"), by sorting: the reference twin of Mismatch.quantiles.
    static func reference(_ xs: [Double], _ q: Double) -> Double {
        let s = xs.sorted()
        let h = Double(s.count - 1) * q
        let lo = Int(h.rounded(.down)), hi = min(lo + 1, s.count - 1)
        return s[lo] + (h - Double(lo)) * (s[hi] - s[lo])
    }

    func testQuantilesBySelectionEqualAFullSort() {
        var g = SystemRandomNumberGenerator()
        for n in [1, 2, 3, 7, 100, 1001, 50_000] {
            for dupes in [false, true] {
                let xs = (0..<n).map { _ in dupes ? Double(Int.random(in: 0..<5, using: &g)) : Double.random(in: -3...3, using: &g) }
                var work = xs
                let qs = Mismatch.quantiles.map(\.q)
                let got = Mismatch.quantiles(&work, qs)
                for (q, v) in zip(qs, got) {
                    XCTAssertEqual(v, MismatchTests.reference(xs, q), accuracy: 1e-12, "n \(n) dupes \(dupes) q \(q)")
                }
            }
        }
    }

    func testRatioQuantilesTISAndSequenceRatios() {
        // two sequences: Δ = [0, ln 3, −ln 2] and [ln 0.5]
        let infer: [Float] = [-1, -2, -1, -3]
        let train: [Float] = [-1, -2 + log(3), -1 - log(2), -3 + log(0.5)]
        let m = Mismatch.logprobs(train: train, infer: infer, rows: [0..<3, 3..<4], tisCap: 2)
        let r = zip(train, infer).map { exp(Double($0) - Double($1)) }
        XCTAssertEqual(m.tokens, 4); XCTAssertEqual(m.sequences, 2)
        XCTAssertEqual(m.tisWeightMean, r.map { min($0, 2) }.reduce(0, +) / 4, accuracy: 1e-6)
        XCTAssertEqual(m.tisWeightMax, 2, accuracy: 1e-6)
        XCTAssertEqual(m.tisCappedFrac, 0.25)                       // only ratio 3 exceeds C = 2
        let s0 = exp((0 + log(3.0) - log(2.0)) / 3), s1 = 0.5
        for (i, q) in Mismatch.quantiles.enumerated() {
            XCTAssertEqual(m.tokenRatio[i], MismatchTests.reference(r, q.q), accuracy: 1e-6, "token \(q.suffix)")
            XCTAssertEqual(m.seqRatio[i], MismatchTests.reference([s0, s1], q.q), accuracy: 1e-6, "seq \(q.suffix)")
        }
        let names = Mismatch.metrics(m, routers: nil, replay: nil)
        XCTAssertEqual(Set(names.keys), Set(Mismatch.metricNames).subtracting(["router_disagreement", "token_disagreement", "routers_differing_per_token",
                                                                                 "replayed_token_frac", "replay_fallback_tokens"]))
        XCTAssertTrue(Mismatch.metrics(Mismatch.logprobs(train: [.nan], infer: [0], rows: [0..<1]), routers: nil, replay: nil).isEmpty,
                      "no comparable tokens: no metric rather than NaN")
    }

    func testReplayShareCountsResponseRowsThatHadRoutes() {
        let seqs = [
            Mismatch.ReplayedSequence(replayed: true, rows: 9, responseRows: 3..<9, missingRows: [0, 4]),   // 5 of 6 response rows replayed
            Mismatch.ReplayedSequence(replayed: false, rows: 5, responseRows: 1..<5, missingRows: []),      // trained live
            Mismatch.ReplayedSequence(replayed: true, rows: 4, responseRows: 2..<4, missingRows: [0, 1, 2, 3]),   // nothing recorded
        ]
        let s = Mismatch.replayShare(seqs)
        XCTAssertEqual(s.replayedTokenFrac, 5.0 / 12.0, accuracy: 1e-12)
        XCTAssertEqual(s.fallbackTokens, 6)
        let r = try! RouteArray(rows: 3, layers: 2, topK: 1, ids: [0, 1, -1, 1, 0, -1])
        XCTAssertEqual(r.missingRowIndices, [1, 2])
    }
}
