// AttentionBench: the tiled training attention alone (forward and backward of one layer's causal GQA over
// one long sequence), timed for given tile sizes. `r3 bench engine --cases attention_tiles` prints it, so the
// tile sizes in `AttnTiles` are chosen by a measurement anyone can repeat.

import Foundation

public enum AttentionBench {
    public struct Result: Sendable {
        public let queryRows, keyRows: Int
        public let forwardSeconds, backwardSeconds: Double
        public let forwardGflops, backwardGflops: Double
    }

    /// FLOPs of causal attention over one sequence of T tokens: 2·D + 2·Dv per (query, visible key) and
    /// head in forward (scores, then P·V); backward recomputes the scores (2·D) and adds dV = Pᵀ·dO (2·Dv),
    /// dP = dO·Vᵀ (2·Dv), dQ = dS·K (2·D) and dK = dSᵀ·Q (2·D).
    public static func flops(T: Int, heads: Int, D: Int, Dv: Int) -> (forward: Double, backward: Double) {
        let pairs = Double(T) * Double(T + 1) / 2 * Double(heads)
        return (pairs * 2 * Double(D + Dv), pairs * 2 * Double(3 * D + 2 * Dv))
    }

    /// Runs forward then backward `rounds` times per tile size (the sizes alternate within a round, after
    /// one untimed pass of the first size) on random q/k/v of T tokens; returns the median time of each size.
    /// D: q/k head width, Dv: value head width (MLA's differ). Inputs come from `seed`.
    public static func run(T: Int, heads H: Int, kvHeads Hkv: Int, headDim D: Int, valueDim Dv: Int, tiles: [(Int, Int)],
                           rounds: Int, workers: Int, seed: UInt64 = 1) -> [Result] {
        let s = AttnShape(H: H, Hkv: Hkv, D: D, Dv: Dv, scale: 1 / Float(D).squareRoot())
        let ldq = s.QK, ldv = Hkv * Dv
        let qk = Buffer<Float>(count: T * ldq, zero: false), v = Buffer<Float>(count: T * ldv, zero: false)
        let dout = Buffer<Float>(count: T * s.HDv, zero: false)
        var rng = SeededRandom(seed: seed)
        for i in 0..<qk.count { qk.base[i] = Float(rng.normal()) }
        for i in 0..<v.count { v.base[i] = Float(rng.normal()) }
        for i in 0..<dout.count { dout.base[i] = Float(rng.normal()) * 1e-3 }
        let out = Buffer<Float>(count: T * s.HDv), lse = Buffer<Float>(count: T * H), di = Buffer<Float>(count: T * H)
        let dq = Buffer<Float>(count: T * ldq), dv = Buffer<Float>(count: T * ldv)
        let stride = tiles.map { AttnTiles(queryRows: $0.0, keyRows: $0.1).scratchFloats }.max() ?? 0
        let scratch = Buffer<Float>(count: stride * workers)
        let span = AttnSpan(row: 0, count: T, pos0: 0, k: qk.base + s.HD, v: v.base, ldk: ldq, ldv: ldv)
        let dkBase = dq.base + s.HD
        var times = Array(repeating: [(Double, Double)](), count: tiles.count)
        for round in -1..<max(1, rounds) {
            for (i, t) in tiles.enumerated() where round >= 0 || i == 0 {
                let at = AttnTiles(queryRows: t.0, keyRows: t.1)
                let t0 = Date()
                attentionForwardTiled(s, spans: [span], q: qk.base, ldq: ldq, out: out.base, lse: lse.base, tiles: at,
                                      scratch: scratch.base, scratchStride: stride, workers: workers)
                let t1 = Date()
                attentionBackwardTiled(s, spans: [span], q: qk.base, ldq: ldq, out: out.base, dout: dout.base, lse: lse.base,
                                       di: di.base, dq: dq.base, dk: { _ in dkBase }, dv: { _ in dv.base }, tiles: at,
                                       scratch: scratch.base, scratchStride: stride, workers: workers)
                if round >= 0 { times[i].append((t1.timeIntervalSince(t0), Date().timeIntervalSince(t1))) }
            }
        }
        let f = flops(T: T, heads: H, D: D, Dv: Dv)
        func median(_ x: [Double]) -> Double {
            let y = x.sorted()
            return y.count % 2 == 1 ? y[y.count / 2] : (y[y.count / 2 - 1] + y[y.count / 2]) / 2
        }
        return tiles.enumerated().map { i, t in
            let fs = median(times[i].map(\.0)), bs = median(times[i].map(\.1))
            return Result(queryRows: t.0, keyRows: t.1, forwardSeconds: fs, backwardSeconds: bs,
                          forwardGflops: f.forward / fs / 1e9, backwardGflops: f.backward / bs / 1e9)
        }
    }
}
