// FastMath: vectorised exp and the row kernels built on it (softmax, SiLU). One polynomial serves the
// SIMD body and the scalar tail, so a value's result never depends on where it sits in a row.

/// exp(x) with relative error about 1e-7 (Cephes expf): x = n·ln2 + r, |r| ≤ ln2/2, exp(x) = 2^n · p(r).
/// Below -87.3 it returns 0 (so a masked -inf gives 0); NaN stays NaN.
/// `@_transparent`, not `@inline(__always)`: Swift 6.3 kept the latter as a call per 8 values in
/// `expInPlace` and both SwiGLU kernels (the vector passed in two halves, `vzeroupper` each time).
@_transparent func expApprox(_ x: SIMD8<Float>) -> SIMD8<Float> {
    let lo = SIMD8<Float>(repeating: -87.3), hi = SIMD8<Float>(repeating: 88.3)
    // clamped with two selects: SIMD's generic clamped(lowerBound:upperBound:) is not inlined (a call to
    // pointwiseMin and pointwiseMax per vector); NaN passes both and is restored below
    let xl = x.replacing(with: lo, where: x .< lo)
    let xc = xl.replacing(with: hi, where: xl .> hi)
    let n = (xc * 1.442_695_04).rounded(.toNearestOrEven)
    let r = xc - n * 0.693_359_375 + n * 2.121_944_4e-4
    var p = SIMD8<Float>(repeating: 1.987_569_15e-4)
    p = p * r + 1.398_199_95e-3
    p = p * r + 8.333_451_9e-3
    p = p * r + 4.166_579_59e-2
    p = p * r + 1.666_666_55e-1
    p = p * r + 5.000_000_12e-1
    p = p * (r * r) + r + 1
    // 2^n from the bits: adding 1.5·2²³ puts the integer n in the low mantissa bits (no slow generic conversion)
    let magic = unsafeBitCast(n + 12_582_912.0, to: SIMD8<Int32>.self) &- 0x4B40_0000
    let out = p * unsafeBitCast((magic &+ 127) &<< 23, to: SIMD8<Float>.self)
    return out.replacing(with: 0, where: x .< lo).replacing(with: .nan, where: x .!= x)
}

@_transparent func expScalar(_ x: Float) -> Float { expApprox(SIMD8<Float>(repeating: x))[0] }

/// log2(e) and ln(2) in Double, for converting scores and log-sums between natural and log2 units.
let log2e = 1.442_695_040_888_963_4
let ln2 = 0.693_147_180_559_945_3

/// 2^y for the tiled training attention, whose scores come in log2 units (scale·log2(e) is folded into the
/// score product, so no multiply by log2(e) per score): y = n + f with n = round(y) and |f| ≤ 1/2, and
/// 2^y = 2^n · p(f), p a degree-6 near-minimax fit of 2^f on [-1/2, 1/2] (fitted in float64 by iterated
/// weighted least squares; 8e-8 relative error evaluated in float). About a third fewer operations than a
/// natural exp (no reduction by ln2 in two parts, no clamp before the polynomial). Below -126 it returns 0
/// (a masked -inf too), above 127 +inf; NaN stays NaN. Only the tiled attention uses it (sequences over
/// 2,048 tokens); every other path keeps `expApprox`'s bits.
@_transparent func exp2FMA(_ y: SIMD8<Float>) -> SIMD8<Float> {
    let n = y.rounded(.toNearestOrEven), f = y - n
    var p = SIMD8<Float>(repeating: 1.339_993_1e-3).addingProduct(SIMD8(repeating: 1.534_581_1e-4), f)
    p = SIMD8<Float>(repeating: 9.618_489_1e-3).addingProduct(p, f)
    p = SIMD8<Float>(repeating: 5.550_328_6e-2).addingProduct(p, f)
    p = SIMD8<Float>(repeating: 2.402_264_6e-1).addingProduct(p, f)
    p = SIMD8<Float>(repeating: 6.931_471_8e-1).addingProduct(p, f)
    p = SIMD8<Float>(repeating: 1).addingProduct(p, f)
    // 2^n from the bits: n + 1.5·2²³ + 127 holds n + 127 in its low mantissa bits, and the shift by 23
    // moves them into the exponent field while the float's own exponent bits leave the word. Out of range
    // (and the garbage n then makes) is replaced below.
    let two = unsafeBitCast(unsafeBitCast(n + 12_583_039.0, to: SIMD8<Int32>.self) &<< 23, to: SIMD8<Float>.self)
    return (p * two).replacing(with: 0, where: y .< -126).replacing(with: .infinity, where: y .> 127)
}

@_transparent func exp2Scalar(_ y: Float) -> Float { exp2FMA(SIMD8<Float>(repeating: y))[0] }

/// p[i] = 2^(p[i] - shift) for i in 0..<n with `exp2FMA` (the tail through the same vector code, padded),
/// returns the sum. The tiled attention's kernel.
@discardableResult
func exp2InPlace(_ p: UnsafeMutablePointer<Float>, _ n: Int, shift: Float) -> Float {
    var sum8 = SIMD8<Float>()
    var i = 0
    let s8 = SIMD8<Float>(repeating: shift)
    let raw = UnsafeMutableRawPointer(p)
    while i + 8 <= n {
        let e = exp2FMA(raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) - s8)
        raw.storeBytes(of: e, toByteOffset: 4 * i, as: SIMD8<Float>.self)
        sum8 += e
        i += 8
    }
    var sum = sum8.sum()
    if i < n {
        var t = SIMD8<Float>(repeating: -.infinity)
        for j in i..<n { t[j - i] = p[j] - shift }
        let e = exp2FMA(t)
        for j in i..<n { p[j] = e[j - i]; sum += e[j - i] }
    }
    return sum
}

/// p[i] = exp(p[i] - shift) for i in 0..<n; returns the sum.
@discardableResult
func expInPlace(_ p: UnsafeMutablePointer<Float>, _ n: Int, shift: Float = 0, scale: Float = 1) -> Float {
    var sum8 = SIMD8<Float>()
    var i = 0
    let s8 = SIMD8<Float>(repeating: shift), k8 = SIMD8<Float>(repeating: scale)
    let raw = UnsafeMutableRawPointer(p)
    while i + 8 <= n {
        let v = raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
        let e = expApprox(v * k8 - s8)
        raw.storeBytes(of: e, toByteOffset: 4 * i, as: SIMD8<Float>.self)
        sum8 += e
        i += 8
    }
    var sum = sum8.sum()
    while i < n {
        let e = expScalar(p[i] * scale - shift)
        p[i] = e
        sum += e
        i += 1
    }
    return sum
}

@inline(__always) func rowMax(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var m8 = SIMD8<Float>(repeating: -.infinity)
    var i = 0
    let raw = UnsafeRawPointer(p)
    while i + 8 <= n {
        let v = raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
        m8 = m8.replacing(with: v, where: v .> m8)
        i += 8
    }
    // the reduction in selects too: SIMD8's generic max() stayed a call
    let m4 = m8.lowHalf.replacing(with: m8.highHalf, where: m8.highHalf .> m8.lowHalf)
    let m2 = m4.lowHalf.replacing(with: m4.highHalf, where: m4.highHalf .> m4.lowHalf)
    var m = m2[1] > m2[0] ? m2[1] : m2[0]
    while i < n { if p[i] > m { m = p[i] }; i += 1 }
    return m
}

@inline(__always) func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc8 = SIMD8<Float>()
    var i = 0
    let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
    while i + 8 <= n {
        acc8 += ra.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) * rb.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
        i += 8
    }
    var acc = acc8.sum()
    while i < n { acc += a[i] * b[i]; i += 1 }
    return acc
}

/// y[i] += a · x[i]
@inline(__always) func axpy(_ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    for i in 0..<n { y[i] += a * x[i] }
}

/// In-place softmax of a row scaled by `scale`: p = exp(scale·x - max) / sum. Returns log-sum-exp.
@inline(__always) @discardableResult
func softmaxRow(_ p: UnsafeMutablePointer<Float>, _ n: Int, scale: Float = 1) -> Float {
    let m = rowMax(p, n) * scale
    let s = expInPlace(p, n, shift: m, scale: scale)
    let inv = 1 / s
    for i in 0..<n { p[i] *= inv }
    return m + Float(_log(Double(s)))
}

/// SwiGLU over fused rows: out[r, i] = silu(gu[r, i]) · gu[r, I + i], gu [rows, 2I], out [rows, I].
func swigluForward(_ gu: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, rows: Int, I: Int) {
    for r in 0..<rows {
        let g = gu + r * 2 * I, u = g + I, o = out + r * I
        var i = 0
        while i + 8 <= I {
            let gv = UnsafeRawPointer(g).loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            let uv = UnsafeRawPointer(u).loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            let s = 1 / (1 + expApprox(-gv))
            UnsafeMutableRawPointer(o).storeBytes(of: gv * s * uv, toByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        while i < I { let s = 1 / (1 + expScalar(-g[i])); o[i] = g[i] * s * u[i]; i += 1 }
    }
}

/// SwiGLU backward: from dOut [rows, I] and the saved gu, writes dGu [rows, 2I]. dGu may be gu itself
/// (each element pair is read before it is written). d silu(g)/dg = s·(1 + g·(1 − s)) with s = sigmoid(g).
func swigluBackward(_ gu: UnsafePointer<Float>, _ dOut: UnsafePointer<Float>, _ dGu: UnsafeMutablePointer<Float>, rows: Int, I: Int) {
    for r in 0..<rows {
        let g = UnsafeRawPointer(gu + r * 2 * I), u = g + 4 * I, d = UnsafeRawPointer(dOut + r * I)
        let dg = UnsafeMutableRawPointer(dGu + r * 2 * I), du = dg + 4 * I
        var i = 0
        while i + 8 <= I {
            let gv = g.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            let uv = u.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            let dv = d.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            let s = 1 / (1 + expApprox(-gv))
            du.storeBytes(of: dv * gv * s, toByteOffset: 4 * i, as: SIMD8<Float>.self)
            dg.storeBytes(of: dv * uv * s * (1 + gv * (1 - s)), toByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        let gs = gu + r * 2 * I, ds = dOut + r * I, dgs = dGu + r * 2 * I
        while i < I {
            let gv = gs[i], uv = gs[I + i], dv = ds[i]
            let s = 1 / (1 + expScalar(-gv))
            dgs[I + i] = dv * gv * s
            dgs[i] = dv * uv * s * (1 + gv * (1 - s))
            i += 1
        }
    }
}
