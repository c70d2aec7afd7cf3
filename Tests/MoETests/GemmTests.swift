// GemmTests: the BLAS paths against their plain reference twins, and batch-invariant tiling.
import Testing
@testable import MoE

struct GemmTests {
    func random(_ n: Int, seed: UInt64) -> [Float] {
        var rng = SeededRandom(seed: seed)
        return (0..<n).map { _ in Float(rng.normal()) }
    }

    @Test(arguments: [(false, false), (false, true), (true, false), (true, true)])
    func splitGemmMatchesReference(trans: (Bool, Bool)) {
        for (M, N, K) in [(1, 7, 5), (37, 300, 65), (700, 40, 33), (129, 513, 64)] {
            let A = random(M * K, seed: 1), B = random(K * N, seed: 2)
            var C = random(M * N, seed: 3), R = C
            let lda = trans.0 ? M : K, ldb = trans.1 ? K : N
            parallelGemm(workers: 2, trans.0, trans.1, M, N, K, 0.5, A, lda, B, ldb, 0.25, &C, N)
            referenceGemm(trans.0, trans.1, M, N, K, 0.5, A, lda, B, ldb, 0.25, &R, N)
            let worst = zip(C, R).map { abs($0 - $1) }.max()!
            #expect(worst < 1e-4 * Float(K).squareRoot(), "C[\(M)x\(N)x\(K)] trans \(trans) off by \(worst)")
        }
    }

    @Test func batchInvariantLinearGivesEachRowTheSameBitsAnywhere() {
        let N = 96, K = 80
        let W = random(N * K, seed: 4)
        let rows = random(60 * K, seed: 5)
        let scratch = Buffer<Float>(count: GemmContext.tile * (K + N))
        let ctx = GemmContext(workers: 2, batchInvariant: true)
        func run(_ X: [Float], _ M: Int) -> [Float] {
            var Y = [Float](repeating: 0, count: M * N)
            ctx.linear(M, N, K, X, K, W, 0, &Y, N, scratch: scratch.base)
            return Y
        }
        let alone = run(Array(rows[0..<(5 * K)]), 5)
        for offset in [0, 3, 16, 21, 40] {
            var X = random(60 * K, seed: 6)
            X.replaceSubrange((offset * K)..<((offset + 5) * K), with: rows[0..<(5 * K)])
            let Y = run(X, 60)
            #expect(Array(Y[(offset * N)..<((offset + 5) * N)]).map(\.bitPattern) == alone.map(\.bitPattern), "rows at offset \(offset)")
        }
    }

    /// bf16 weights for the decode kernel: rounded fp32 values and their bf16 twin.
    func bf16Weights(_ n: Int, seed: UInt64) -> (Buffer<Float>, Buffer<UInt16>, BF16Weights) {
        let w = Buffer<Float>(count: n), bits = Buffer<UInt16>(count: n)
        for (i, v) in random(n, seed: seed).enumerated() { w[i] = BF16.round(v) }
        return (w, bits, BF16Weights(fp32: w.base, count: n, into: bits.base))
    }

    /// The decode kernel reads bf16 bits but must give, element for element, the bits of the batch-invariant
    /// kernel on the same (bf16-rounded) fp32 weights: the deterministic mode keeps its outputs.
    @Test func bf16LinearMatchesTheBatchInvariantKernelBitForBit() {
        for (N, K) in [(37, 83), (96, 64), (5, 8), (130, 7)] {
            let (w, bits, twin) = bf16Weights(N * K, seed: 11)
            let scratch = Buffer<Float>(count: GemmContext.tile * (K + N))
            for M in [1, 2, 3, 4, 5, 7, 8, 13, 16] {
                let X = random(M * K, seed: 12).map(BF16.round)
                for beta: Float in [0, 1] {
                    let Y0 = random(M * N, seed: 13)
                    var fast = Y0, invariant = Y0
                    GemmContext(workers: 2, bf16: twin).linear(M, N, K, X, K, w.base, beta, &fast, N, scratch: nil)
                    GemmContext(workers: 2, batchInvariant: true).linear(M, N, K, X, K, w.base, beta, &invariant, N, scratch: scratch.base)
                    let differ = zip(fast, invariant).filter { $0.bitPattern != $1.bitPattern }.count
                    #expect(differ == 0, "M \(M) N \(N) K \(K) beta \(beta): \(differ) elements differ")
                }
            }
            withExtendedLifetime(bits) {}
        }
    }

    /// … and agrees with OpenBLAS's sgemm on the same weights to rounding.
    @Test func bf16LinearMatchesOpenBLAS() {
        let N = 1000, K = 512
        let (w, bits, twin) = bf16Weights(N * K, seed: 14)
        for M in [1, 4, 11, 16] {
            let X = random(M * K, seed: 15)
            var fast = [Float](repeating: 0, count: M * N), blas = fast
            GemmContext(workers: 2, bf16: twin).linear(M, N, K, X, K, w.base, 0, &fast, N, scratch: nil)
            sgemm(false, true, M, N, K, 1, X, K, w.base, K, 0, &blas, N)
            let worst = zip(fast, blas).map { abs($0 - $1) }.max()!
            #expect(worst < 1e-4 * Float(K).squareRoot(), "M \(M): off by \(worst)")
            #expect(fast != blas || M == 0, "the twin was not read")
        }
        // more rows than the kernel takes: sgemm on the fp32 weights
        let M = BF16Weights.maxRows + 1
        let X = random(M * K, seed: 16)
        var viaCtx = [Float](repeating: 0, count: M * N), blas = viaCtx
        GemmContext(workers: 1, bf16: twin).linear(M, N, K, X, K, w.base, 0, &viaCtx, N, scratch: nil)
        sgemm(false, true, M, N, K, 1, X, K, w.base, K, 0, &blas, N)
        #expect(viaCtx == blas)
        withExtendedLifetime(bits) {}
    }

    @Test func bf16RoundsToNearestEven() {
        #expect(BF16.round(1.0) == 1.0)
        #expect(BF16.round(Float(bitPattern: 0x3F80_8000)) == 1.0)                          // tie → even (down)
        #expect(BF16.round(Float(bitPattern: 0x3F81_8000)) == Float(bitPattern: 0x3F82_0000)) // tie → even (up)
        #expect(BF16.round(Float(bitPattern: 0x3F80_8001)) == Float(bitPattern: 0x3F81_0000))
        var xs: [Float] = [1, Float(bitPattern: 0x3F80_8000), Float(bitPattern: 0x3F81_8000), -3.14159, .infinity, 1e-40]
        let want = xs.map(BF16.round)
        BF16.roundInPlace(&xs, xs.count)
        #expect(xs.map(\.bitPattern) == want.map(\.bitPattern))
        var nan: [Float] = [.nan]
        BF16.roundInPlace(&nan, 1)
        #expect(nan[0].isNaN)
    }

    @Test func fastExpIsAccurate() {
        var worst = 0.0
        for i in 0..<20_000 {
            let x = Float(-87 + Double(i) * 175 / 20_000)
            let rel = abs(Double(expScalar(x)) - Foundation.exp(Double(x))) / Foundation.exp(Double(x))
            worst = max(worst, rel)
        }
        #expect(worst < 5e-7, "worst relative error \(worst)")
        #expect(expScalar(-.infinity) == 0)
        #expect(expScalar(.nan).isNaN)
    }
}

import Foundation
