// CollapseDetector: reads each training step's metrics and says when a run starts to collapse. Pure:
// fed steps in order, it keeps running medians and the best reward; each rule fires at most once per
// job (a latch), so a collapsing run raises one alarm per symptom rather than one per step.
//   nonfinite            any NaN / ±Inf in loss, grad_norm, entropy, k3_kl, reward_mean: at once
//   extreme_frac_tau2    > 0.1 (the level the R3 paper saw before collapse)
//   k3_kl                > k3_factor (10) × its running median and > k3_floor (1e-3)
//   grad_norm            > grad_norm_factor (10) × its running median on `grad_norm_patience` (2) steps in a row
//                        (GRPO on small batches has lone spikes: a step whose groups all tie has almost no gradient)
//   entropy_crash        < entropy_fraction (0.1) × its running median
//   reward_drop          the mean reward of the last 5 steps ≤ (1 − reward_drop) × its best so far (drop 0.5), once
//                        that best is ≥ 0.1 (a mean, so one unlucky small batch does not raise it)
// The median rules need `warmup` (5) earlier steps; medians are over the last `window` (20) steps.
import Foundation
import JSON

public struct CollapseRules: Sendable, Equatable {
    public var extremeFracTau2: Double? = 0.1
    public var k3Factor: Double? = 10
    public var k3Floor = 1e-3
    public var gradNormFactor: Double? = 10
    public var gradNormPatience = 2
    public var entropyFraction: Double? = 0.1
    public var rewardDrop: Double? = 0.5
    public var window = 20
    public var warmup = 5
    public init() {}

    /// Reads per-job overrides (`collapse` object of a train job); a rule set to null is off.
    public init(json o: JSONObject) throws {
        self.init()
        let known: Set<String> = ["extreme_frac_tau2", "k3_factor", "k3_floor", "grad_norm_factor", "grad_norm_patience", "entropy_fraction",
                                  "reward_drop", "window", "warmup"]
        if let k = o.keys.sorted().first(where: { !known.contains($0) }) { throw RLError.invalid("collapse.\(k) is not a rule") }
        func num(_ k: String, _ range: ClosedRange<Double>) throws -> Double?? {
            guard let v = o[k] else { return .none }
            if v.isNull { return .some(nil) }
            guard let n = v.doubleValue, range.contains(n) else {
                throw RLError.invalid("collapse.\(k) must be null or a number in \(range.lowerBound)...\(range.upperBound)")
            }
            return .some(n)
        }
        if let v = try num("extreme_frac_tau2", 0...1) { extremeFracTau2 = v }
        if let v = try num("k3_factor", 1...1e6) { k3Factor = v }
        if let v = try num("k3_floor", 0...1e6) { k3Floor = v ?? 0 }
        if let v = try num("grad_norm_factor", 1...1e6) { gradNormFactor = v }
        if let v = try num("entropy_fraction", 0...1) { entropyFraction = v }
        if let v = try num("reward_drop", 0...1) { rewardDrop = v }
        func int(_ k: String, _ range: ClosedRange<Double>, _ d: Int) throws -> Int? {
            guard let v = try num(k, range) else { return nil }
            guard let x = v else { return d }
            guard x == x.rounded() else { throw RLError.invalid("collapse.\(k) must be an integer") }
            return Int(x)
        }
        gradNormPatience = try int("grad_norm_patience", 1...100, 2) ?? gradNormPatience
        window = try int("window", 2...10_000, 20) ?? window
        warmup = try int("warmup", 1...10_000, 5) ?? warmup
    }

    public var json: [String: Any] {
        ["extreme_frac_tau2": extremeFracTau2 ?? NSNull(), "k3_factor": k3Factor ?? NSNull(), "k3_floor": k3Floor,
         "grad_norm_factor": gradNormFactor ?? NSNull(), "grad_norm_patience": gradNormPatience, "entropy_fraction": entropyFraction ?? NSNull(),
         "reward_drop": rewardDrop ?? NSNull(), "window": window, "warmup": warmup]
    }
}

public struct CollapseAlarm: Sendable, Equatable {
    public var step: Int
    public var rule: String
    public var metric: String
    public var value: Double
    public var threshold: Double
    /// The watched metrics of the last steps up to this one, oldest first.
    public var history: [[String: Double]]
}

public struct CollapseDetector: Sendable {
    public let rules: CollapseRules
    static let watched = ["k3_kl", "extreme_frac_tau2", "grad_norm", "entropy", "reward_mean", "loss"]
    private var past: [[String: Double]] = []
    private var bestReward = -Double.infinity
    private var fired: Set<String> = []
    private var gradNormRun = 0

    public init(rules: CollapseRules = CollapseRules()) { self.rules = rules }

    static func median(_ xs: [Double]) -> Double {
        let s = xs.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    /// Feeds one step's metrics (absent keys: not applicable); returns the rules that fire now.
    public mutating func observe(step: Int, _ m: [String: Double]) -> [CollapseAlarm] {
        let now = m.filter { CollapseDetector.watched.contains($0.key) }
        var alarms: [CollapseAlarm] = []
        let history = Array((past + [now]).suffix(10))
        func fire(_ rule: String, _ metric: String, _ value: Double, _ threshold: Double) {
            guard !fired.contains(rule) else { return }
            fired.insert(rule)
            alarms.append(CollapseAlarm(step: step, rule: rule, metric: metric, value: value, threshold: threshold, history: history))
        }
        for k in CollapseDetector.watched.sorted() { if let v = now[k], !v.isFinite { fire("nonfinite", k, v, 0) } }
        let recent = past.suffix(rules.window)
        func runningMedian(_ k: String) -> Double? {
            let xs = recent.compactMap { $0[k] }.filter(\.isFinite)
            return xs.count >= rules.warmup ? CollapseDetector.median(xs) : nil
        }
        if let t = rules.extremeFracTau2, let v = now["extreme_frac_tau2"], v.isFinite, v > t { fire("extreme_frac_tau2", "extreme_frac_tau2", v, t) }
        if let f = rules.k3Factor, let v = now["k3_kl"], v.isFinite, let med = runningMedian("k3_kl") {
            let t = max(f * med, rules.k3Floor)
            if v > t { fire("k3_kl", "k3_kl", v, t) }
        }
        if let f = rules.gradNormFactor, let v = now["grad_norm"], v.isFinite, let med = runningMedian("grad_norm"), med > 0, v > f * med {
            gradNormRun += 1
            if gradNormRun >= rules.gradNormPatience { fire("grad_norm", "grad_norm", v, f * med) }
        } else {
            gradNormRun = 0
        }
        if let f = rules.entropyFraction, let v = now["entropy"], v.isFinite, let med = runningMedian("entropy"), med > 0, v < f * med {
            fire("entropy_crash", "entropy", v, f * med)
        }
        if let d = rules.rewardDrop, now["reward_mean"]?.isFinite ?? false {
            let last = (past + [now]).suffix(5).compactMap { $0["reward_mean"] }.filter(\.isFinite)
            if last.count == 5 {
                let smoothed = last.reduce(0, +) / 5
                if bestReward >= 0.1 && smoothed <= (1 - d) * bestReward { fire("reward_drop", "reward_mean_5", smoothed, (1 - d) * bestReward) }
                bestReward = max(bestReward, smoothed)
            }
        }
        past.append(now)
        if past.count > rules.window + 1 { past.removeFirst(past.count - rules.window - 1) }
        return alarms
    }
}
