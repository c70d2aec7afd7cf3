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

    @Test func expApproxAndExpFMAAreWithinARelative2_5e7OfDoublesExp() {
        let a = Self.maxRelativeError { expApprox($0) }, f = Self.maxRelativeError { expFMA($0) }
        #expect(a < 2.5e-7, "expApprox relative error \(a)")
        #expect(f < 2.5e-7, "expFMA relative error \(f)")
    }

    /// expFMA is the fused form, not a copy of expApprox: it rounds differently on some inputs, and is no
    /// less accurate on average (mean absolute relative error against Double's exp).
    @Test func expFMAIsTheFusedFormAndNoWorse() {
        var differ = 0, errA = 0.0, errF = 0.0, n = 0
        let x = Self.inputs
        var i = 0
        while i + 8 <= x.count {
            var v = SIMD8<Float>()
            for j in 0..<8 { v[j] = x[i + j] }
            let a = expApprox(v), f = expFMA(v)
            for j in 0..<8 where x[i + j] >= -87.3 {
                let want = Foundation.exp(Double(x[i + j]))
                if a[j] != f[j] { differ += 1 }
                errA += abs(Double(a[j]) - want) / want; errF += abs(Double(f[j]) - want) / want; n += 1
            }
            i += 8
        }
        #expect(differ > n / 100, "expFMA differs from expApprox on \(differ) of \(n) inputs")
        #expect(errF <= errA * 1.01, "mean relative error: expFMA \(errF / Double(n)), expApprox \(errA / Double(n))")
    }

    @Test(arguments: [0, 1])
    func edgeValues(fma: Int) {
        let f: (SIMD8<Float>) -> SIMD8<Float> = { fma == 1 ? expFMA($0) : expApprox($0) }
        let x = SIMD8<Float>(-.infinity, -1000, -87.4, 0, .nan, 89, .infinity, -0.0)
        let e = f(x)
        #expect(e[0] == 0 && e[1] == 0 && e[2] == 0, "\(e)")    // below -87.3: 0, so a masked score gives 0
        #expect(e[3] == 1 && e[7] == 1)
        #expect(e[4].isNaN)                                       // a NaN score stays visible
        #expect(e[5] > 1e38 && e[6] > 1e38)                        // clamped at 88.3: large, finite
    }

    /// expInPlaceFMA's scalar tail goes through the same vector code: every element equals expFMA of it,
    /// whatever n mod 8, and the sum is theirs.
    @Test(arguments: [1, 7, 8, 13, 256, 261])
    func expInPlaceFMATailMatchesTheVectorBody(n: Int) {
        var rng = SeededRandom(seed: UInt64(n))
        let x = (0..<n).map { _ in Float(rng.normal()) * 3 }
        var p = x
        let shift: Float = 0.75
        let sum = p.withUnsafeMutableBufferPointer { expInPlaceFMA($0.baseAddress!, n, shift: shift) }
        var want: Float = 0
        for i in 0..<n {
            let e = expFMA(SIMD8(repeating: x[i] - shift))[0]
            #expect(p[i].bitPattern == e.bitPattern, "element \(i) of \(n)")
            want += e
        }
        #expect(abs(sum - want) <= 1e-5 * want)
    }
}
