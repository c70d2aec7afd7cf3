// FastMathTests: the vectorised exps against Double's exp, their edge values, and the row kernels' tails
// (a value's result must not depend on where it sits in a row).
import Foundation
import Testing
@testable import MoE

struct FastMathTests {
    /// Inputs over exp's whole float range: a dense sweep of [-88, 88] and random values, plus the edges.
    static let inputs: [Float] = {
        var x: [Float] = []
        var v: Float = -88
        while v <= 88 { x.append(v); v += 0.000_37 }
        var rng = SeededRandom(seed: 3)
        for _ in 0..<200_000 { x.append(Float(rng.normal()) * 4) }
        return x
    }()

    static func maxRelativeError(_ f: (SIMD8<Float>) -> SIMD8<Float>) -> Double {
        var worst = 0.0
        var i = 0
        let x = inputs
        while i + 8 <= x.count {
            var v = SIMD8<Float>()
            for j in 0..<8 { v[j] = x[i + j] }
            let e = f(v)
            for j in 0..<8 {
                guard x[i + j] >= -87.3 else { continue }   // flushed to 0 by design (edgeValues)
                let want = Foundation.exp(Double(x[i + j]))
                worst = max(worst, abs(Double(e[j]) - want) / want)
            }
            i += 8
        }
        return worst
    }

    @Test func expApproxIsWithinARelative2_5e7OfDoublesExp() {
        let a = Self.maxRelativeError { expApprox($0) }
        #expect(a < 2.5e-7, "expApprox relative error \(a)")
    }

    /// exp2FMA over its whole range, [-126, 127] swept densely plus the scores' usual range at random,
    /// against Double's exp2; the 8e-8 of its polynomial plus the final product's rounding.
    @Test func exp2FMAIsWithinARelative1_5e7OfDoublesExp2() {
        var y: [Float] = []
        var v: Float = -126
        while v <= 127 { y.append(v); v += 0.000_53 }
        var rng = SeededRandom(seed: 5)
        for _ in 0..<200_000 { y.append(-abs(Float(rng.normal())) * 12) }
        var worst = 0.0, i = 0
        while i + 8 <= y.count {
            var x = SIMD8<Float>()
            for j in 0..<8 { x[j] = y[i + j] }
            let e = exp2FMA(x)
            for j in 0..<8 {
                let want = Foundation.exp2(Double(y[i + j]))
                worst = max(worst, abs(Double(e[j]) - want) / want)
            }
            i += 8
        }
        #expect(worst < 1.5e-7, "exp2FMA relative error \(worst)")
    }

    @Test func edgeValues() {
        let x = SIMD8<Float>(-.infinity, -1000, -87.4, 0, .nan, 89, .infinity, -0.0)
        let e = expApprox(x)
        #expect(e[0] == 0 && e[1] == 0 && e[2] == 0, "\(e)")    // below -87.3: 0, so a masked score gives 0
        #expect(e[3] == 1 && e[7] == 1)
        #expect(e[4].isNaN)                                       // a NaN score stays visible
        #expect(e[5] > 1e38 && e[6] > 1e38)                        // clamped at 88.3: large, finite
    }

    /// exp2FMA's edges: below -126 (and a masked -inf) 0, above 127 +inf, NaN stays NaN, and an integer
    /// gives its power of two exactly (the polynomial is 1 at 0), the range's ends included.
    @Test func exp2FMAEdgeValues() {
        let e = exp2FMA(SIMD8<Float>(-.infinity, -1000, -126.6, .nan, 127.5, .infinity, -0.0, 0))
        #expect(e[0] == 0 && e[1] == 0 && e[2] == 0, "\(e)")
        #expect(e[3].isNaN)
        #expect(e[4] == .infinity && e[5] == .infinity)
        #expect(e[6] == 1 && e[7] == 1)
        for n in -126...127 {
            #expect(exp2FMA(SIMD8(repeating: Float(n)))[0] == Float(sign: .plus, exponent: n, significand: 1), "2^\(n)")
        }
    }

    /// exp2InPlace's scalar tail goes through the same vector code: every element equals exp2FMA of it,
    /// whatever n mod 8, and the sum is theirs.
    @Test(arguments: [1, 7, 8, 13, 256, 261])
    func exp2InPlaceTailMatchesTheVectorBody(n: Int) {
        var rng = SeededRandom(seed: UInt64(n))
        let x = (0..<n).map { _ in Float(rng.normal()) * 3 }
        var p = x
        let shift: Float = 0.75
        let sum = p.withUnsafeMutableBufferPointer { exp2InPlace($0.baseAddress!, n, shift: shift) }
        var want: Float = 0
        for i in 0..<n {
            let e = exp2FMA(SIMD8(repeating: x[i] - shift))[0]
            #expect(p[i].bitPattern == e.bitPattern, "element \(i) of \(n)")
            want += e
        }
        #expect(abs(sum - want) <= 1e-5 * want)
    }

    /// rowMax is the largest of any length's row, wherever it sits (vector body, its reduction, the tail).
    @Test(arguments: [1, 7, 8, 9, 16, 256, 261])
    func rowMaxFindsTheLargestAnywhere(n: Int) {
        var rng = SeededRandom(seed: UInt64(100 + n))
        for at in Set([0, n / 2, n - 1]) {
            var x = (0..<n).map { _ in Float(rng.normal()) - 10 }
            x[at] = 3.5
            #expect(x.withUnsafeBufferPointer { rowMax($0.baseAddress!, n) } == 3.5, "n \(n), at \(at)")
        }
    }
}
