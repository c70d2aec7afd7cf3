// BF16: bfloat16 emulation by rounding fp32 bit patterns (round-to-nearest-even on the top 16 bits).
// OpenBLAS here has no bf16 GEMM; rounding the inputs and calling sgemm is what tensor cores compute.

public enum BF16 {
    /// The bf16 bit pattern nearest to `x` (ties to even); NaN stays a quiet NaN.
    @inline(__always) public static func bits(_ x: Float) -> UInt16 {
        let u = x.bitPattern
        if x.isNaN { return UInt16(truncatingIfNeeded: (u >> 16) | 0x40) }
        let rounded = u &+ 0x7FFF &+ ((u >> 16) & 1)
        return UInt16(truncatingIfNeeded: rounded >> 16)
    }

    /// `x` rounded to the nearest bf16 value, returned as fp32.
    @inline(__always) public static func round(_ x: Float) -> Float {
        Float(bitPattern: UInt32(bits(x)) << 16)
    }

    /// Rounds `n` values in place. Branch-free on finite input so the loop vectorises.
    public static func roundInPlace(_ p: UnsafeMutablePointer<Float>, _ n: Int) {
        let u = UnsafeMutableRawPointer(p).assumingMemoryBound(to: UInt32.self)
        for i in 0..<n {
            let x = u[i]
            let isNaN = (x & 0x7FFF_FFFF) > 0x7F80_0000
            let r = (x &+ 0x7FFF &+ ((x >> 16) & 1)) & 0xFFFF_0000
            u[i] = isNaN ? (x | 0x0040_0000) & 0xFFFF_0000 : r
        }
    }

    /// Rounds rows of a strided matrix in place: `rows` rows of `cols` values, `ld` apart.
    public static func roundInPlace(_ p: UnsafeMutablePointer<Float>, rows: Int, cols: Int, ld: Int) {
        if ld == cols { roundInPlace(p, rows * cols); return }
        for r in 0..<rows { roundInPlace(p + r * ld, cols) }
    }
}
