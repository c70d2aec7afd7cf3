// FP8: e4m3 (the OCP "e4m3fn" format: 4 exponent bits, bias 7, 3 mantissa bits, largest finite 448,
// subnormals down to 2^-9) emulated in fp32, with the scaling FP8 rollout engines use: a scale per row,
// so the row's largest magnitude maps to 448. Weights get one scale per output row (per channel),
// activations one per token row, computed on the fly (vLLM's dynamic per-token W8A8, SGLang's fp8 path).
// The products then run in fp32 on the dequantised values, as FP8 tensor cores accumulate in fp32.

public enum FP8 {
    public static let maxE4M3: Float = 448

    /// `y` rounded to the nearest e4m3 value (ties to even), saturating at ±448.
    @inline(__always) public static func e4m3(_ y: Float) -> Float {
        let a = abs(y)
        if !(a >= 0.015625) {                              // below 2^-6 (and NaN): the subnormal grid of 2^-9
            return a.isNaN ? y : (y * 512).rounded(.toNearestOrEven) / 512
        }
        let u = y.bitPattern
        let r = (u &+ 0x7FFFF &+ ((u >> 20) & 1)) & 0xFFF0_0000   // keep 3 mantissa bits, nearest even
        return min(max(Float(bitPattern: r), -maxE4M3), maxE4M3)
    }

    /// Quantises each of `rows` rows (`cols` values, `ld` apart) to e4m3 with its own scale amax / 448
    /// and writes back the dequantised values. An all-zero row stays zero.
    public static func quantizeRows(_ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int, ld: Int? = nil) {
        let ld = ld ?? cols
        for r in 0..<rows {
            let x = p + r * ld
            var amax: Float = 0
            for i in 0..<cols { amax = max(amax, abs(x[i])) }
            guard amax > 0, amax.isFinite else { continue }
            let scale = amax / maxE4M3, inv = maxE4M3 / amax
            for i in 0..<cols { x[i] = e4m3(x[i] * inv) * scale }
        }
    }
}

/// How an inference engine rounds the input of a linear layer: not at all (fp32), to bf16, or to e4m3
/// with a per-row scale (fp8).
struct InputRounding {
    let precision: Precision

    @inline(__always) func callAsFunction(_ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int) {
        switch precision {
        case .fp32: break
        case .bf16: BF16.roundInPlace(p, rows * cols)
        case .fp8: FP8.quantizeRows(p, rows: rows, cols: cols)
        }
    }
}
