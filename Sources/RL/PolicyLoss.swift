// PolicyLoss: the RL objectives as their gradient with respect to each token's log-prob (what the
// engine's backward takes), over packed rows. Pure functions on arrays; tested without an engine.
//   GRPO  per token: −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A),  r = π/π_old,  mean over response tokens
//   GSPO  per sequence: −min(s·A, clip(s, 1−ε_low, 1+ε_high)·A),  s = exp(mean_t log(π/π_old)),  mean over sequences
//   TIS   multiplies each token's term by w = min(π_old/π_infer, C)
import Foundation

public enum Algorithm: String, Sendable, CaseIterable { case grpo, gspo }

public struct LossConfig: Sendable, Equatable {
    public var algorithm: Algorithm = .grpo
    /// Clip range; the defaults depend on the algorithm (GRPO clip-higher 0.2 / 0.28; GSPO 3e-4 / 4e-4).
    public var clipLow: Double
    public var clipHigh: Double
    public var tis = false
    public var tisCap = 2.0

    public init(algorithm: Algorithm = .grpo, clipLow: Double? = nil, clipHigh: Double? = nil, tis: Bool = false, tisCap: Double = 2) {
        self.algorithm = algorithm
        self.clipLow = clipLow ?? (algorithm == .grpo ? 0.2 : 3e-4)
        self.clipHigh = clipHigh ?? (algorithm == .grpo ? 0.28 : 4e-4)
        self.tis = tis; self.tisCap = tisCap
    }
}

public struct LossResult: Sendable {
    /// ∂L/∂log π at each packed row (0 outside response rows).
    public var dLogp: [Float]
    public var loss: Double
    /// Fraction of response tokens (GRPO) or sequences (GSPO) whose clipped branch was taken.
    public var clipFrac: Double
}

public enum PolicyLoss {
    /// Group-normalised advantages: (r − mean_g) / (std_g + 1e-6); a group with one sample, or all equal rewards, gets 0.
    public static func advantages(rewards: [Double], groups: [Int]) -> [Double] {
        var byGroup: [Int: [Int]] = [:]
        for (i, g) in groups.enumerated() { byGroup[g, default: []].append(i) }
        var out = [Double](repeating: 0, count: rewards.count)
        for idx in byGroup.values where idx.count > 1 {
            let mean = idx.reduce(0) { $0 + rewards[$1] } / Double(idx.count)
            let variance = idx.reduce(0) { $0 + (rewards[$1] - mean) * (rewards[$1] - mean) } / Double(idx.count)
            let std = variance.squareRoot()
            if std < 1e-9 { continue }
            for i in idx { out[i] = (rewards[i] - mean) / (std + 1e-6) }
        }
        return out
    }

    /// TIS weight of one token: min(π_old/π_infer, C); 1 when the inference log-prob is unknown.
    @inline(__always) static func tisWeight(old: Float, infer: Float, cap: Double) -> Double {
        guard infer.isFinite else { return 1 }
        return min(exp(Double(old) - Double(infer)), cap)
    }

    /// The loss gradient. `segments[s]` are sequence s's response rows; `advantages[s]` its advantage;
    /// `infer` the inference log-probs at the same rows (NaN when unknown), used by TIS only.
    public static func gradient(logp: [Float], old: [Float], infer: [Float], advantages: [Double], segments: [Range<Int>],
                                config c: LossConfig) -> LossResult {
        precondition(logp.count == old.count && logp.count == infer.count && advantages.count == segments.count)
        var d = [Float](repeating: 0, count: logp.count)
        var loss = 0.0, clipped = 0
        switch c.algorithm {
        case .grpo:
            let n = max(1, segments.reduce(0) { $0 + $1.count })
            for (s, rows) in segments.enumerated() {
                let A = advantages[s]
                for t in rows {
                    let r = exp(Double(logp[t]) - Double(old[t]))
                    let w = c.tis ? tisWeight(old: old[t], infer: infer[t], cap: c.tisCap) : 1
                    let rc = min(max(r, 1 - c.clipLow), 1 + c.clipHigh)
                    loss -= w * min(r * A, rc * A) / Double(n)
                    if (A > 0 && r > 1 + c.clipHigh) || (A < 0 && r < 1 - c.clipLow) { clipped += 1; continue }
                    d[t] = Float(-w * A * r / Double(n))
                }
            }
            return LossResult(dLogp: d, loss: loss, clipFrac: Double(clipped) / Double(n))
        case .gspo:
            let live = segments.filter { !$0.isEmpty }.count
            let nSeq = Double(max(1, live))
            for (s, rows) in segments.enumerated() where !rows.isEmpty {
                let A = advantages[s]
                var meanLog = 0.0
                for t in rows { meanLog += Double(logp[t]) - Double(old[t]) }
                meanLog /= Double(rows.count)
                let sr = exp(meanLog)
                let sc = min(max(sr, 1 - c.clipLow), 1 + c.clipHigh)
                var w = 1.0
                if c.tis {   // the sequence's TIS weight: mean of its token weights
                    w = rows.reduce(0) { $0 + tisWeight(old: old[$1], infer: infer[$1], cap: c.tisCap) } / Double(rows.count)
                }
                loss -= w * min(sr * A, sc * A) / nSeq
                if (A > 0 && sr > 1 + c.clipHigh) || (A < 0 && sr < 1 - c.clipLow) { clipped += 1; continue }
                let g = Float(-w * A * sr / (Double(rows.count) * nSeq))
                for t in rows { d[t] = g }
            }
            return LossResult(dLogp: d, loss: loss, clipFrac: Double(clipped) / nSeq)
        }
    }

    /// Supervised cross-entropy: L = −mean log π over `segments`' rows.
    public static func crossEntropy(logp: [Float], segments: [Range<Int>]) -> LossResult {
        var d = [Float](repeating: 0, count: logp.count)
        let n = max(1, segments.reduce(0) { $0 + $1.count })
        var loss = 0.0
        for rows in segments { for t in rows { d[t] = -1 / Float(n); loss -= Double(logp[t]) / Double(n) } }
        return LossResult(dLogp: d, loss: loss, clipFrac: 0)
    }
}
