// RMSNorm: y = w ⊙ x / sqrt(mean(x²) + eps), forward and backward side by side. Also used per head
// for Qwen3's q_norm / k_norm.

/// x [rows, n] (row stride ldx) → y [rows, n] (ldy); saves 1/rms per row in rstd.
func rmsnormForward(_ x: UnsafePointer<Float>, ldx: Int, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, ldy: Int,
                    rstd: UnsafeMutablePointer<Float>, rows: Int, n: Int, eps: Float) {
    for r in 0..<rows {
        let xr = x + r * ldx, yr = y + r * ldy
        let ss = dot(xr, xr, n)
        let inv = 1 / (ss / Float(n) + eps).squareRoot()
        rstd[r] = inv
        for i in 0..<n { yr[i] = w[i] * (xr[i] * inv) }
    }
}

/// dx (+)= ∂L/∂x and dw += ∂L/∂w for dy [rows, n]. With `accumulate` dx is added to (the residual path).
func rmsnormBackward(_ x: UnsafePointer<Float>, ldx: Int, _ w: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                     _ dy: UnsafePointer<Float>, lddy: Int, _ dx: UnsafeMutablePointer<Float>, lddx: Int,
                     _ dw: UnsafeMutablePointer<Float>, rows: Int, n: Int, accumulate: Bool) {
    for r in 0..<rows {
        let xr = x + r * ldx, dyr = dy + r * lddy, dxr = dx + r * lddx
        let inv = rstd[r]
        var s: Float = 0   // Σ (w ⊙ dy) ⊙ x
        for i in 0..<n {
            let g = w[i] * dyr[i]
            s += g * xr[i]
            dw[i] += dyr[i] * xr[i] * inv
        }
        let c = s * inv * inv * inv / Float(n)
        if accumulate {
            for i in 0..<n { dxr[i] += inv * w[i] * dyr[i] - c * xr[i] }
        } else {
            for i in 0..<n { dxr[i] = inv * w[i] * dyr[i] - c * xr[i] }
        }
    }
}

/// Rotary tables: cos and sin of position · invFreq[i] for i < D/2, computed in Double, times the yarn
/// attention factor (1 without yarn), grown on demand. D is the rotary width: head_dim, its
/// partial_rotary_factor share (GLM-4.5), or qk_rope_head_dim (MLA); invFreq[i] = θ^(-2i/D) by default.
final class RopeTable {
    let half: Int
    let invFreq: [Double]
    let factor: Double
    private(set) var positions = 0
    private(set) var cos: Buffer<Float> = Buffer(count: 0)
    private(set) var sin: Buffer<Float> = Buffer(count: 0)

    init(inverseFrequencies: [Double], cosSinFactor: Double) {
        half = inverseFrequencies.count; invFreq = inverseFrequencies; factor = cosSinFactor
    }

    /// Makes positions 0..<n available (called at shape set-up, never inside a pass).
    func reserve(_ n: Int) {
        if n <= positions { return }
        let cap = max(n, positions * 2, 256)
        let c = Buffer<Float>(count: cap * half), s = Buffer<Float>(count: cap * half)
        for p in 0..<cap {
            for i in 0..<half {
                let a = Double(p) * invFreq[i]
                c[p * half + i] = Float(_cosD(a) * factor); s[p * half + i] = Float(_sinD(a) * factor)
            }
        }
        cos = c; sin = s; positions = cap
    }

    /// Rotate-half RoPE in place on one head vector at `pos`.
    @inline(__always) func apply(_ x: UnsafeMutablePointer<Float>, pos: Int) {
        let c = cos.base + pos * half, s = sin.base + pos * half
        for i in 0..<half {
            let a = x[i], b = x[i + half]
            x[i] = a * c[i] - b * s[i]
            x[i + half] = b * c[i] + a * s[i]
        }
    }

    /// Interleaved RoPE (DeepSeek-V3's rope_interleave): pair (2i, 2i+1) rotated by frequency i. HF's
    /// apply_rotary_pos_emb_interleave first permutes the pairs apart and then rotates halves; the values
    /// are the same, in another order, and every use of q and k is a dot product under the same permutation.
    @inline(__always) func applyInterleaved(_ x: UnsafeMutablePointer<Float>, pos: Int) {
        let c = cos.base + pos * half, s = sin.base + pos * half
        for i in 0..<half {
            let a = x[2 * i], b = x[2 * i + 1]
            x[2 * i] = a * c[i] - b * s[i]
            x[2 * i + 1] = b * c[i] + a * s[i]
        }
    }

    /// The transpose of `applyInterleaved`, in place.
    @inline(__always) func applyInterleavedBackward(_ d: UnsafeMutablePointer<Float>, pos: Int) {
        let c = cos.base + pos * half, s = sin.base + pos * half
        for i in 0..<half {
            let a = d[2 * i], b = d[2 * i + 1]
            d[2 * i] = a * c[i] + b * s[i]
            d[2 * i + 1] = b * c[i] - a * s[i]
        }
    }

    /// The transpose rotation: gradient of `apply`, in place.
    @inline(__always) func applyBackward(_ d: UnsafeMutablePointer<Float>, pos: Int) {
        let c = cos.base + pos * half, s = sin.base + pos * half
        for i in 0..<half {
            let a = d[i], b = d[i + half]
            d[i] = a * c[i] + b * s[i]
            d[i + half] = b * c[i] - a * s[i]
        }
    }
}

#if canImport(Glibc)
import Glibc
@inline(__always) func _cosD(_ x: Double) -> Double { Glibc.cos(x) }
@inline(__always) func _sinD(_ x: Double) -> Double { Glibc.sin(x) }
#else
import Foundation
@inline(__always) func _cosD(_ x: Double) -> Double { Foundation.cos(x) }
@inline(__always) func _sinD(_ x: Double) -> Double { Foundation.sin(x) }
#endif
