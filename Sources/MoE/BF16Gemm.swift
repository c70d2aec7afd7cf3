// BF16Gemm: linear layers of few token rows (decode) against weights stored as bf16 bit patterns, half the
// bytes of fp32, which is what bounds a decode step. fp32 accumulation on AVX2 (the module is built for
// Haswell-class CPUs). Every output element is computed by the same instruction sequence as
// `invariantRows4` (an 8-wide FMA chain over K, the same horizontal sum, a scalar FMA tail); widening bf16
// to fp32 is exact, so against the bf16-rounded fp32 weights the results are bit-identical to the
// batch-invariant kernel, and the deterministic mode keeps its outputs.
import CPosix

/// The bf16 twin of an engine's (bf16-rounded) fp32 parameters: same layout, same offsets.
public struct BF16Weights {
    let fp32: UnsafePointer<Float>
    let bits: UnsafePointer<UInt16>
    let count: Int

    /// The twin of `count` bf16-rounded fp32 values at `fp32`, written into `bits`.
    init(fp32: UnsafePointer<Float>, count: Int, into bits: UnsafeMutablePointer<UInt16>) {
        let u = UnsafeRawPointer(fp32).assumingMemoryBound(to: UInt32.self)
        for i in 0..<count { bits[i] = UInt16(truncatingIfNeeded: u[i] >> 16) }
        self.fp32 = fp32; self.bits = UnsafePointer(bits); self.count = count
    }

    /// The bf16 twin of fp32 weights at `w`, if `w` lies inside the parameters.
    @inline(__always) func twin(of w: UnsafePointer<Float>) -> UnsafePointer<UInt16>? {
        let d = w - fp32
        return d >= 0 && d < count ? bits + d : nil
    }

    /// Rows at or below which a linear layer reads the bf16 twin instead of calling sgemm.
    public static let maxRows = 16
    /// How far ahead of the weights a tile reads it asks for the next ones: a tile walks its columns'
    /// rows of W, contiguous, at (columns × 16) bytes per step; the next blocks follow.
    static let prefetchBytes = 8192
}

/// Y[M,N] = X[M,K] · Wᵀ + beta·Y (beta 0 or 1) with W [N,K] as bf16 bits, over output columns `cols`.
/// Rows go four at a time (then two, then one); each block of W's rows is read once for all of them.
func bf16Linear(_ M: Int, _ K: Int, _ X: UnsafePointer<Float>, _ ldx: Int, _ W: UnsafePointer<UInt16>, _ cols: Range<Int>,
                _ beta: Float, _ Y: UnsafeMutablePointer<Float>, _ ldy: Int) {
    var j = cols.lowerBound
    while j < cols.upperBound {
        let n = min(4, cols.upperBound - j)
        var r = 0
        while r + 4 <= M { bf16Block(4, n, K, X + r * ldx, ldx, W + j * K, beta, Y + r * ldy + j, ldy); r += 4 }
        if r + 2 <= M { bf16Block(2, n, K, X + r * ldx, ldx, W + j * K, beta, Y + r * ldy + j, ldy); r += 2 }
        if r < M { bf16Block(1, n, K, X + r * ldx, ldx, W + j * K, beta, Y + r * ldy + j, ldy) }
        j += n
    }
}

/// Eight bf16 values at `p + k`, widened to fp32 (exact).
@inline(__always)
func loadBF16x8(_ p: UnsafeRawPointer, _ k: Int) -> SIMD8<Float> {
    let h = p.loadUnaligned(fromByteOffset: 2 * k, as: SIMD8<UInt16>.self)
    return unsafeBitCast(SIMD8<UInt32>(truncatingIfNeeded: h) &<< 16, to: SIMD8<Float>.self)
}

@inline(__always)
func widenBF16(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }

/// R ∈ {1, 2, 4} rows × n ≤ 4 columns.
@inline(__always)
func bf16Block(_ R: Int, _ n: Int, _ K: Int, _ X: UnsafePointer<Float>, _ ldx: Int, _ W: UnsafePointer<UInt16>,
               _ beta: Float, _ Y: UnsafeMutablePointer<Float>, _ ldy: Int) {
    switch (R, n) {
    case (4, 4):
        bf16Tile4x2(K, X, ldx, W, beta, Y, ldy)
        bf16Tile4x2(K, X, ldx, W + 2 * K, beta, Y + 2, ldy)
    case (2, 4): bf16Tile2x4(K, X, ldx, W, beta, Y, ldy)
    case (1, 4): bf16Tile1x4(K, X, ldx, W, beta, Y, ldy)
    default:
        for c in 0..<n { for r in 0..<R { bf16Tile1x1(K, X + r * ldx, ldx, W + c * K, beta, Y + r * ldy + c, ldy) } }
    }
}

/// The horizontal sum and scalar tail of one output element, in `invariantRows4`'s order.
@inline(__always)
func finishBF16(_ a: SIMD8<Float>, _ K8: Int, _ K: Int, _ x: UnsafePointer<Float>, _ w: UnsafePointer<UInt16>, _ beta: Float,
                _ y: UnsafeMutablePointer<Float>) {
    var s = a.sum()
    var k = K8
    while k < K { s.addProduct(x[k], widenBF16(w[k])); k += 1 }
    if beta == 0 { y.pointee = s } else { y.pointee += s }
}

/// 4 rows × 2 columns: 8 accumulators in registers.
@inline(__always)
func bf16Tile4x2(_ K: Int, _ X: UnsafePointer<Float>, _ ldx: Int, _ W: UnsafePointer<UInt16>, _ beta: Float,
                _ Y: UnsafeMutablePointer<Float>, _ ldy: Int) {
    let K8 = K / 8 * 8
    let x0 = UnsafeRawPointer(X + 0 * ldx)
    let x1 = UnsafeRawPointer(X + 1 * ldx)
    let x2 = UnsafeRawPointer(X + 2 * ldx)
    let x3 = UnsafeRawPointer(X + 3 * ldx)
    let w0 = UnsafeRawPointer(W + 0 * K)
    let w1 = UnsafeRawPointer(W + 1 * K)
    var a00 = SIMD8<Float>(); var a01 = SIMD8<Float>()
    var a10 = SIMD8<Float>(); var a11 = SIMD8<Float>()
    var a20 = SIMD8<Float>(); var a21 = SIMD8<Float>()
    var a30 = SIMD8<Float>(); var a31 = SIMD8<Float>()
    let ahead = UnsafeRawPointer(W) + BF16Weights.prefetchBytes
    var k = 0
    while k < K8 {
        r3_prefetch(ahead + 4 * k)
        let xv0 = x0.loadUnaligned(fromByteOffset: 4 * k, as: SIMD8<Float>.self)
        let xv1 = x1.loadUnaligned(fromByteOffset: 4 * k, as: SIMD8<Float>.self)
        let xv2 = x2.loadUnaligned(fromByteOffset: 4 * k, as: SIMD8<Float>.self)
        let xv3 = x3.loadUnaligned(fromByteOffset: 4 * k, as: SIMD8<Float>.self)
        let wv0 = loadBF16x8(w0, k)
        a00.addProduct(xv0, wv0); a10.addProduct(xv1, wv0); a20.addProduct(xv2, wv0); a30.addProduct(xv3, wv0)
        let wv1 = loadBF16x8(w1, k)
        a01.addProduct(xv0, wv1); a11.addProduct(xv1, wv1); a21.addProduct(xv2, wv1); a31.addProduct(xv3, wv1)
        k += 8
    }
    finishBF16(a00, K8, K, X + 0 * ldx, W + 0 * K, beta, Y + 0 * ldy + 0)
    finishBF16(a01, K8, K, X + 0 * ldx, W + 1 * K, beta, Y + 0 * ldy + 1)
    finishBF16(a10, K8, K, X + 1 * ldx, W + 0 * K, beta, Y + 1 * ldy + 0)
    finishBF16(a11, K8, K, X + 1 * ldx, W + 1 * K, beta, Y + 1 * ldy + 1)
    finishBF16(a20, K8, K, X + 2 * ldx, W + 0 * K, beta, Y + 2 * ldy + 0)
    finishBF16(a21, K8, K, X + 2 * ldx, W + 1 * K, beta, Y + 2 * ldy + 1)
    finishBF16(a30, K8, K, X + 3 * ldx, W + 0 * K, beta, Y + 3 * ldy + 0)
    finishBF16(a31, K8, K, X + 3 * ldx, W + 1 * K, beta, Y + 3 * ldy + 1)
}

/// 2 rows × 4 columns: 8 accumulators in registers.
@inline(__always)
func bf16Tile2x4(_ K: Int, _ X: UnsafePointer<Float>, _ ldx: Int, _ W: UnsafePointer<UInt16>, _ beta: Float,
                _ Y: UnsafeMutablePointer<Float>, _ ldy: Int) {
    let K8 = K / 8 * 8
    let x0 = UnsafeRawPointer(X + 0 * ldx)
    let x1 = UnsafeRawPointer(X + 1 * ldx)
    let w0 = UnsafeRawPointer(W + 0 * K)
    let w1 = UnsafeRawPointer(W + 1 * K)
    let w2 = UnsafeRawPointer(W + 2 * K)
    let w3 = UnsafeRawPointer(W + 3 * K)
    var a00 = SIMD8<Float>(); var a01 = SIMD8<Float>(); var a02 = SIMD8<Float>(); var a03 = SIMD8<Float>()
    var a10 = SIMD8<Float>(); var a11 = SIMD8<Float>(); var a12 = SIMD8<Float>(); var a13 = SIMD8<Float>()
    let ahead = UnsafeRawPointer(W) + BF16Weights.prefetchBytes
    var k = 0
    while k < K8 {
        r3_prefetch(ahead + 8 * k)
        let xv0 = x0.loadUnaligned(fromByteOffset: 4 * k, as: SIMD8<Float>.self)
        let xv1 = x1.loadUnaligned(fromByteOffset: 4 * k, as: SIMD8<Float>.self)
        let wv0 = loadBF16x8(w0, k)
        a00.addProduct(xv0, wv0); a10.addProduct(xv1, wv0)
        let wv1 = loadBF16x8(w1, k)
        a01.addProduct(xv0, wv1); a11.addProduct(xv1, wv1)
        let wv2 = loadBF16x8(w2, k)
        a02.addProduct(xv0, wv2); a12.addProduct(xv1, wv2)
        let wv3 = loadBF16x8(w3, k)
        a03.addProduct(xv0, wv3); a13.addProduct(xv1, wv3)
        k += 8
    }
    finishBF16(a00, K8, K, X + 0 * ldx, W + 0 * K, beta, Y + 0 * ldy + 0)
    finishBF16(a01, K8, K, X + 0 * ldx, W + 1 * K, beta, Y + 0 * ldy + 1)
    finishBF16(a02, K8, K, X + 0 * ldx, W + 2 * K, beta, Y + 0 * ldy + 2)
    finishBF16(a03, K8, K, X + 0 * ldx, W + 3 * K, beta, Y + 0 * ldy + 3)
    finishBF16(a10, K8, K, X + 1 * ldx, W + 0 * K, beta, Y + 1 * ldy + 0)
    finishBF16(a11, K8, K, X + 1 * ldx, W + 1 * K, beta, Y + 1 * ldy + 1)
    finishBF16(a12, K8, K, X + 1 * ldx, W + 2 * K, beta, Y + 1 * ldy + 2)
    finishBF16(a13, K8, K, X + 1 * ldx, W + 3 * K, beta, Y + 1 * ldy + 3)
}

/// 1 row × 4 columns: 4 accumulators in registers.
@inline(__always)
func bf16Tile1x4(_ K: Int, _ X: UnsafePointer<Float>, _ ldx: Int, _ W: UnsafePointer<UInt16>, _ beta: Float,
                _ Y: UnsafeMutablePointer<Float>, _ ldy: Int) {
    let K8 = K / 8 * 8
    let x0 = UnsafeRawPointer(X + 0 * ldx)
    let w0 = UnsafeRawPointer(W + 0 * K)
    let w1 = UnsafeRawPointer(W + 1 * K)
    let w2 = UnsafeRawPointer(W + 2 * K)
    let w3 = UnsafeRawPointer(W + 3 * K)
    var a00 = SIMD8<Float>(); var a01 = SIMD8<Float>(); var a02 = SIMD8<Float>(); var a03 = SIMD8<Float>()
    let ahead = UnsafeRawPointer(W) + BF16Weights.prefetchBytes
    var k = 0
    while k < K8 {
        r3_prefetch(ahead + 8 * k)
        let xv0 = x0.loadUnaligned(fromByteOffset: 4 * k, as: SIMD8<Float>.self)
        let wv0 = loadBF16x8(w0, k)
        a00.addProduct(xv0, wv0)
        let wv1 = loadBF16x8(w1, k)
        a01.addProduct(xv0, wv1)
        let wv2 = loadBF16x8(w2, k)
        a02.addProduct(xv0, wv2)
        let wv3 = loadBF16x8(w3, k)
        a03.addProduct(xv0, wv3)
        k += 8
    }
    finishBF16(a00, K8, K, X + 0 * ldx, W + 0 * K, beta, Y + 0 * ldy + 0)
    finishBF16(a01, K8, K, X + 0 * ldx, W + 1 * K, beta, Y + 0 * ldy + 1)
    finishBF16(a02, K8, K, X + 0 * ldx, W + 2 * K, beta, Y + 0 * ldy + 2)
    finishBF16(a03, K8, K, X + 0 * ldx, W + 3 * K, beta, Y + 0 * ldy + 3)
}

/// One dot product.
@inline(__always)
func bf16Tile1x1(_ K: Int, _ X: UnsafePointer<Float>, _ ldx: Int, _ W: UnsafePointer<UInt16>, _ beta: Float,
                _ Y: UnsafeMutablePointer<Float>, _ ldy: Int) {
    let K8 = K / 8 * 8
    let x0 = UnsafeRawPointer(X + 0 * ldx)
    let w0 = UnsafeRawPointer(W + 0 * K)
    var a00 = SIMD8<Float>()
    let ahead = UnsafeRawPointer(W) + BF16Weights.prefetchBytes
    var k = 0
    while k < K8 {
        r3_prefetch(ahead + 2 * k)
        let xv0 = x0.loadUnaligned(fromByteOffset: 4 * k, as: SIMD8<Float>.self)
        let wv0 = loadBF16x8(w0, k)
        a00.addProduct(xv0, wv0)
        k += 8
    }
    finishBF16(a00, K8, K, X + 0 * ldx, W + 0 * K, beta, Y + 0 * ldy + 0)
}
