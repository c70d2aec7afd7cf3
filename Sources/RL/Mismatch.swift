// Mismatch: the training–inference mismatch metrics of CONVENTIONS §2, over packed rows. One
// implementation: the service's own train jobs and the runs that external trainers report both call
// `metrics(…)` here.
//   Δ = log π_train − log π_infer over response tokens; r = e^Δ (the token ratio π_old / π_infer)
//   k3_kl = mean(r − 1 − Δ);  extreme_frac_tau{2,5} = mean 1[|Δ| > ln τ] (the paper's F(τ))
//   token_ratio_{min,p01,p05,p50,p95,p99,max}: quantiles of r over tokens (numpy's linear interpolation)
//   seq_ratio_*: the same over sequences of the sequence ratio exp(mean Δ) (GSPO's geometric mean)
//   tis_weight_mean / tis_weight_max: of min(r, C); tis_capped_frac = mean 1[r > C]  (C = the TIS cap, 2)
//   router_disagreement: (token, MoE layer) pairs whose expert *set* differs; token_disagreement: tokens
//   with ≥ 1 differing layer; routers_differing_per_token: mean count of differing (layer, expert) slots.
//   replayed_token_frac: response tokens whose rows were replayed (R3, row recorded in every layer);
//   replay_fallback_tokens: rows of replayed sequences that had no recorded route (the live router ran).
import Foundation
import MoE
import Routes

public enum Mismatch {
    /// The quantile levels reported for token and sequence ratios, with their metric suffixes.
    public static let quantiles: [(suffix: String, q: Double)] = [("min", 0), ("p01", 0.01), ("p05", 0.05), ("p50", 0.5), ("p95", 0.95),
                                                                   ("p99", 0.99), ("max", 1)]

    public struct LogProb: Sendable, Equatable {
        public var k3KL = 0.0, extremeFracTau2 = 0.0, extremeFracTau5 = 0.0
        public var tokens = 0, sequences = 0
        /// Token and sequence ratio quantiles, at the levels of `Mismatch.quantiles`.
        public var tokenRatio: [Double] = [], seqRatio: [Double] = []
        public var tisWeightMean = 0.0, tisWeightMax = 0.0, tisCappedFrac = 0.0
    }

    /// Over `rows` (one range per sequence) where both log-probs are finite. `tisCap` is C.
    public static func logprobs(train: [Float], infer: [Float], rows: [Range<Int>], tisCap: Double = 2) -> LogProb {
        var m = LogProb()
        let l2 = log(2.0), l5 = log(5.0)
        let total = rows.reduce(0) { $0 + $1.count }
        var ratios = [Double](repeating: 0, count: total)
        var seq: [Double] = []
        var k3 = 0.0, f2 = 0, f5 = 0, tis = 0.0, tisMax = 0.0, capped = 0, n = 0
        train.withUnsafeBufferPointer { tr in
            infer.withUnsafeBufferPointer { inf in
                ratios.withUnsafeMutableBufferPointer { out in
                    for r in rows {
                        var sum = 0.0, c = 0
                        for t in r {
                            let a = tr[t], b = inf[t]
                            guard a.isFinite && b.isFinite else { continue }
                            let d = Double(a) - Double(b)
                            let ratio = exp(d)
                            k3 += ratio - 1 - d
                            let ad = abs(d)
                            if ad > l2 { f2 += 1; if ad > l5 { f5 += 1 } }
                            out[n] = ratio; n += 1
                            let w = min(ratio, tisCap)
                            tis += w
                            if w > tisMax { tisMax = w }
                            if ratio > tisCap { capped += 1 }
                            sum += d; c += 1
                        }
                        if c > 0 { seq.append(exp(sum / Double(c))) }
                    }
                }
            }
        }
        ratios.removeLast(total - n)
        m.tokens = n
        m.sequences = seq.count
        if n > 0 {
            let dn = Double(n)
            m.k3KL = k3 / dn; m.extremeFracTau2 = Double(f2) / dn; m.extremeFracTau5 = Double(f5) / dn
            m.tisWeightMean = tis / dn; m.tisWeightMax = tisMax; m.tisCappedFrac = Double(capped) / dn
            m.tokenRatio = quantiles(&ratios, quantiles.map(\.q))
            m.seqRatio = quantiles(&seq, quantiles.map(\.q))
        }
        return m
    }

    /// numpy's default (linear) quantiles of `xs` at increasing levels `qs`, by selection rather than a
    /// full sort (a step holds a million tokens). `xs` is reordered. For each level the (lo+1)-th order
    /// statistic is selected in the part not yet ordered; the lo-th is then the largest before it, in the
    /// gap since the previous level: the suffixes shrink and the gaps add up to one pass.
    public static func quantiles(_ xs: inout [Double], _ qs: [Double]) -> [Double] {
        precondition(!xs.isEmpty)
        let n = xs.count
        var out: [Double] = []
        var from = 0                        // x[..<from] are the `from` smallest values
        var last: (lo: Int, a: Double, b: Double)?
        xs.withUnsafeMutableBufferPointer { x in
            for q in qs {
                let h = Double(n - 1) * q
                let lo = Int(h.rounded(.down))
                if lo + 1 >= n {   // the maximum: the largest of the part not yet ordered
                    var b = x[from]
                    for i in from..<n where x[i] > b { b = x[i] }
                    out.append(b); continue
                }
                if last?.lo != lo {
                    select(x, lo + 1, from: from)
                    var a = x[from]   // the lo-th: the largest of x[from...lo]
                    for i in from...lo where x[i] > a { a = x[i] }
                    last = (lo, a, x[lo + 1])
                    from = lo + 1
                }
                let (_, a, b) = last!
                out.append(h > Double(lo) ? a + (h - Double(lo)) * (b - a) : a)
            }
        }
        return out
    }

    /// Places the k-th smallest of xs[from...] at k, smaller ones before it and larger ones after (quickselect, median of three).
    static func select(_ xs: UnsafeMutableBufferPointer<Double>, _ k: Int, from: Int) {
        var lo = from, hi = xs.count - 1
        while hi > lo {
            let mid = lo + (hi - lo) / 2
            if xs[mid] < xs[lo] { xs.swapAt(mid, lo) }
            if xs[hi] < xs[lo] { xs.swapAt(hi, lo) }
            if xs[hi] < xs[mid] { xs.swapAt(hi, mid) }
            let pivot = xs[mid]
            var i = lo, j = hi
            while i <= j {
                while xs[i] < pivot { i += 1 }
                while xs[j] > pivot { j -= 1 }
                if i <= j { xs.swapAt(i, j); i += 1; j -= 1 }
            }
            if k <= j { hi = j } else if k >= i { lo = i } else { return }
        }
    }

    public struct Router: Sendable, Equatable {
        public var routerDisagreement = 0.0, tokenDisagreement = 0.0, routersDifferingPerToken = 0.0
        public var pairs = 0, tokens = 0
    }

    /// Compares `a` and `b` ([T, layers, K], packed) over `rows`, skipping (token, layer) rows missing (-1) in either.
    public static func routers(_ a: RouteArray, _ b: RouteArray, rows: [Range<Int>]) -> Router {
        precondition(a.layers == b.layers && a.topK == b.topK)
        var m = Router()
        var differing = (pairs: 0, tokens: 0, slots: 0)
        for r in rows { accumulate(a, b, rowsA: r, rowsB: r, into: &m, &differing) }
        return finish(m, differing)
    }

    /// The same over pairs of separate arrays (the rows of sequence i of `a[i]` against `b[i]`, over their common rows).
    public static func routers(_ pairs: [(RouteArray, RouteArray)]) -> Router {
        var m = Router()
        var differing = (pairs: 0, tokens: 0, slots: 0)
        for (a, b) in pairs {
            precondition(a.layers == b.layers && a.topK == b.topK)
            let n = min(a.rows, b.rows)
            accumulate(a, b, rowsA: 0..<n, rowsB: 0..<n, into: &m, &differing)
        }
        return finish(m, differing)
    }

    static func accumulate(_ a: RouteArray, _ b: RouteArray, rowsA: Range<Int>, rowsB: Range<Int>, into m: inout Router,
                           _ differing: inout (pairs: Int, tokens: Int, slots: Int)) {
        let L = a.layers, K = a.topK
        for (ta, tb) in zip(rowsA, rowsB) {
            var tokenDiffers = false, counted = false
            for l in 0..<L {
                let oa = (ta * L + l) * K, ob = (tb * L + l) * K
                if a.ids[oa] < 0 || b.ids[ob] < 0 { continue }
                counted = true
                m.pairs += 1
                var missing = 0
                for j in 0..<K {
                    let e = a.ids[oa + j]
                    var found = false
                    for i in 0..<K where b.ids[ob + i] == e { found = true; break }
                    if !found { missing += 1 }
                }
                if missing > 0 { differing.pairs += 1; tokenDiffers = true; differing.slots += missing }
            }
            if counted { m.tokens += 1; if tokenDiffers { differing.tokens += 1 } }
        }
    }

    static func finish(_ m0: Router, _ differing: (pairs: Int, tokens: Int, slots: Int)) -> Router {
        var m = m0
        if m.pairs > 0 { m.routerDisagreement = Double(differing.pairs) / Double(m.pairs) }
        if m.tokens > 0 {
            m.tokenDisagreement = Double(differing.tokens) / Double(m.tokens)
            m.routersDifferingPerToken = Double(differing.slots) / Double(m.tokens)
        }
        return m
    }

    /// One sequence as the replay share sees it: whether it trained on replayed routes, how many rows
    /// went into the model, which of them predict response tokens, and which rows had no recorded route.
    public struct ReplayedSequence: Sendable {
        public var replayed: Bool
        public var rows: Int
        public var responseRows: Range<Int>
        /// Sorted row indices with no recorded route (in some layer), or every row when nothing was recorded.
        public var missingRows: [Int]
        public init(replayed: Bool, rows: Int, responseRows: Range<Int>, missingRows: [Int]) {
            self.replayed = replayed; self.rows = rows; self.responseRows = responseRows; self.missingRows = missingRows
        }
    }

    /// replayed_token_frac and replay_fallback_tokens over the sequences of one step.
    public static func replayShare(_ seqs: [ReplayedSequence]) -> (replayedTokenFrac: Double, fallbackTokens: Int) {
        var response = 0, replayed = 0, fallback = 0
        for s in seqs {
            let resp = s.responseRows.clamped(to: 0..<max(0, s.rows))
            response += s.responseRows.count
            guard s.replayed else { continue }
            fallback += s.missingRows.count
            let missingInResponse = s.missingRows.reduce(0) { $0 + (resp.contains($1) ? 1 : 0) }
            replayed += resp.count - missingInResponse
        }
        return (response > 0 ? Double(replayed) / Double(response) : 0, fallback)
    }

    /// The step's mismatch metrics as named in CONVENTIONS §2 (and the module comment). Metrics that do
    /// not apply (no log-probs on either side, no routes) are left out, never NaN.
    public static func metrics(_ lp: LogProb, routers rt: Router?, replay: (replayedTokenFrac: Double, fallbackTokens: Int)?) -> [String: Double] {
        var m: [String: Double] = [:]
        if lp.tokens > 0 {
            m["k3_kl"] = lp.k3KL; m["extreme_frac_tau2"] = lp.extremeFracTau2; m["extreme_frac_tau5"] = lp.extremeFracTau5
            for (i, q) in quantiles.enumerated() { m["token_ratio_\(q.suffix)"] = lp.tokenRatio[i]; m["seq_ratio_\(q.suffix)"] = lp.seqRatio[i] }
            m["tis_weight_mean"] = lp.tisWeightMean; m["tis_weight_max"] = lp.tisWeightMax; m["tis_capped_frac"] = lp.tisCappedFrac
        }
        if let rt, rt.pairs > 0 {
            m["router_disagreement"] = rt.routerDisagreement; m["token_disagreement"] = rt.tokenDisagreement
            m["routers_differing_per_token"] = rt.routersDifferingPerToken
        }
        if let r = replay { m["replayed_token_frac"] = r.replayedTokenFrac; m["replay_fallback_tokens"] = Double(r.fallbackTokens) }
        return m
    }

    /// The names `metrics` can produce, mismatch first, in the order pages and CSV show them.
    public static var metricNames: [String] {
        ["k3_kl", "extreme_frac_tau2", "extreme_frac_tau5"] + quantiles.map { "token_ratio_\($0.suffix)" } + quantiles.map { "seq_ratio_\($0.suffix)" }
            + ["tis_weight_mean", "tis_weight_max", "tis_capped_frac", "router_disagreement", "token_disagreement", "routers_differing_per_token",
               "replayed_token_frac", "replay_fallback_tokens"]
    }
}

extension RouteArray {
    /// Rows with no recorded route in some layer (-1), in order.
    public var missingRowIndices: [Int] {
        var out: [Int] = []
        for t in 0..<rows where (0..<layers).contains(where: { ids[(t * layers + $0) * topK] < 0 }) { out.append(t) }
        return out
    }
}
