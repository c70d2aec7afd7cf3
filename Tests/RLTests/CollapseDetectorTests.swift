// Tests of the collapse detector: each rule on a synthetic run, the latch, warm-up, overrides.
import XCTest
import JSON
@testable import RL

final class CollapseDetectorTests: XCTestCase {
    /// A healthy run: small wobbling metrics.
    func healthy(_ s: Int) -> [String: Double] {
        let w = Double(s % 3) * 0.1
        return ["k3_kl": 1e-4 * (1 + w), "extreme_frac_tau2": 0.001, "grad_norm": 1 + w, "entropy": 2 - w, "reward_mean": 0.5 + w / 10, "loss": -0.1]
    }

    func run(_ rules: CollapseRules = CollapseRules(), steps: Int = 30, at bad: Int = 20, _ change: (inout [String: Double]) -> Void) -> [CollapseAlarm] {
        var d = CollapseDetector(rules: rules)
        var out: [CollapseAlarm] = []
        for s in 0..<steps {
            var m = healthy(s)
            if s >= bad { change(&m) }
            out += d.observe(step: s, m)
        }
        return out
    }

    func testAHealthyRunNeverFires() {
        XCTAssertEqual(run(steps: 200) { _ in }, [])
    }

    func testEachRuleFiresOnceAtTheStepItsMetricBreaks() {
        let cases: [(String, Int, (inout [String: Double]) -> Void)] = [
            ("nonfinite", 20, { $0["loss"] = .nan }),
            ("extreme_frac_tau2", 20, { $0["extreme_frac_tau2"] = 0.2 }),
            ("k3_kl", 20, { $0["k3_kl"] = 0.05 }),
            ("grad_norm", 21, { $0["grad_norm"] = 50 }),       // the second step in a row above 10× the median
            ("entropy_crash", 20, { $0["entropy"] = 0.05 }),
            ("reward_drop", 23, { $0["reward_mean"] = 0.1 }),   // the 5-step mean falls below half its best at the 4th bad step
        ]
        for (rule, step, change) in cases {
            let alarms = run(CollapseRules(), steps: 30, at: 20, change)
            XCTAssertEqual(alarms.map(\.rule), [rule], rule)
            XCTAssertEqual(alarms.first?.step, step, rule)
            XCTAssertEqual(alarms.first?.history.count, 10, rule)
        }
    }

    func testALoneGradNormSpikeIsNotACollapse() {
        var d = CollapseDetector()
        var alarms: [CollapseAlarm] = []
        for s in 0..<40 { alarms += d.observe(step: s, ["grad_norm": s % 9 == 8 ? 40 : 1]) }
        XCTAssertEqual(alarms, [])
    }

    func testOneBadBatchDoesNotLookLikeARewardDrop() {
        var d = CollapseDetector()
        var alarms: [CollapseAlarm] = []
        for s in 0..<40 { alarms += d.observe(step: s, ["reward_mean": s % 7 == 6 ? 0.05 : 0.5]) }
        XCTAssertEqual(alarms, [])
    }

    func testK3BelowItsFloorDoesNotFireEvenWhenFarAboveItsMedian() {
        XCTAssertEqual(run { $0["k3_kl"] = 5e-4 }, [])   // 5× … 50× the median but under 1e-3
        var r = CollapseRules(); r.k3Floor = 1e-4
        XCTAssertEqual(run(r) { $0["k3_kl"] = 5e-3 }.map(\.rule), ["k3_kl"])
    }

    func testMedianRulesWaitForTheirWarmUp() {
        XCTAssertEqual(run(at: 2) { $0["grad_norm"] = 50 }.map { "\($0.rule)@\($0.step)" }, [],
                       "a constant 50 from step 2 is the median by the time the warm-up ends")
        XCTAssertEqual(run(at: 0) { $0["loss"] = .infinity }.map(\.step), [0], "non-finite values fire at once")
    }

    func testOverridesTurnRulesOffAndRejectUnknownOnes() throws {
        let r = try CollapseRules(json: rules(#"{"extreme_frac_tau2": null, "grad_norm_factor": 100}"#))
        XCTAssertNil(r.extremeFracTau2)
        XCTAssertEqual(run(r) { $0["extreme_frac_tau2"] = 0.9; $0["grad_norm"] = 50 }, [])
        XCTAssertThrowsError(try CollapseRules(json: rules(#"{"kl": 1}"#))) { XCTAssertTrue("\($0)".contains("collapse.kl")) }
        XCTAssertThrowsError(try CollapseRules(json: rules(#"{"k3_factor": true}"#))) { XCTAssertTrue("\($0)".contains("collapse.k3_factor must be null or a number")) }
    }
}

private func rules(_ text: String) throws -> JSONObject {
    guard let o = try JSONReader.parse(Array(text.utf8)).objectValue else { throw RLError.invalid("not an object") }
    return o
}
