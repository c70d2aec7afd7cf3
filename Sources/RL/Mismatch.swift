// Mismatch: the training–inference mismatch metrics of CONVENTIONS §2, over packed rows.
//   Δ = log π_train − log π_infer over response tokens
//   k3_kl = mean(e^Δ − 1 − Δ);  extreme_frac_tau{2,5} = mean 1[|Δ| > ln τ]
//   router_disagreement: (token, MoE layer) pairs whose expert *set* differs; token_disagreement: tokens
//   with ≥ 1 differing layer; routers_differing_per_token: mean count of differing (layer, expert) slots.
import Foundation
import MoE
import Routes

public enum Mismatch {
    public struct LogProb: Sendable, Equatable {
        public var k3KL = 0.0, extremeFracTau2 = 0.0, extremeFracTau5 = 0.0
        public var tokens = 0
    }

    /// Over `rows` where both log-probs are finite.
    public static func logprobs(train: [Float], infer: [Float], rows: [Range<Int>]) -> LogProb {
        var m = LogProb()
        let l2 = log(2.0), l5 = log(5.0)
        for r in rows {
            for t in r where train[t].isFinite && infer[t].isFinite {
                let d = Double(train[t]) - Double(infer[t])
                m.k3KL += exp(d) - 1 - d
                if abs(d) > l2 { m.extremeFracTau2 += 1 }
                if abs(d) > l5 { m.extremeFracTau5 += 1 }
                m.tokens += 1
            }
        }
        if m.tokens > 0 { let n = Double(m.tokens); m.k3KL /= n; m.extremeFracTau2 /= n; m.extremeFracTau5 /= n }
        return m
    }

    public struct Router: Sendable, Equatable {
        public var routerDisagreement = 0.0, tokenDisagreement = 0.0, routersDifferingPerToken = 0.0
        public var pairs = 0, tokens = 0
    }

    /// Compares `a` and `b` ([T, layers, K], packed) over `rows`, skipping (token, layer) rows missing (-1) in either.
    public static func routers(_ a: RouteArray, _ b: RouteArray, rows: [Range<Int>]) -> Router {
        precondition(a.layers == b.layers && a.topK == b.topK)
        let L = a.layers, K = a.topK
        var m = Router()
        var differingPairs = 0, differingTokens = 0, differingSlots = 0
        for r in rows {
            for t in r {
                var tokenDiffers = false, counted = false
                for l in 0..<L {
                    let o = (t * L + l) * K
                    if a.ids[o] < 0 || b.ids[o] < 0 { continue }
                    counted = true
                    m.pairs += 1
                    var missing = 0
                    for j in 0..<K {
                        let e = a.ids[o + j]
                        var found = false
                        for i in 0..<K where b.ids[o + i] == e { found = true; break }
                        if !found { missing += 1 }
                    }
                    if missing > 0 { differingPairs += 1; tokenDiffers = true; differingSlots += missing }
                }
                if counted { m.tokens += 1; if tokenDiffers { differingTokens += 1 } }
            }
        }
        if m.pairs > 0 { m.routerDisagreement = Double(differingPairs) / Double(m.pairs) }
        if m.tokens > 0 {
            m.tokenDisagreement = Double(differingTokens) / Double(m.tokens)
            m.routersDifferingPerToken = Double(differingSlots) / Double(m.tokens)
        }
        return m
    }
}
