// Gemm: every matrix product of the engine goes through here: row-major sgemm on OpenBLAS, split across
// the engine's workers, with a batch-invariant tiled mode and a plain reference twin used by tests.
import CBLAS

public struct GemmContext {
    /// Worker threads for one product (1 inside an already-parallel region).
    public var workers: Int
    /// Batch-invariant mode: products over token rows use a fixed-order kernel, so a row's result never
    /// depends on which other rows share the batch.
    public var batchInvariant: Bool
    /// The bf16 twin of the weights (bf16 inference engines): linear layers of few rows read it instead.
    public var bf16: BF16Weights?
    public static let tile = 16

    public init(workers: Int, batchInvariant: Bool = false, bf16: BF16Weights? = nil) {
        self.workers = workers
        self.batchInvariant = batchInvariant
        self.bf16 = bf16
    }
    public var serial: GemmContext { GemmContext(workers: 1, batchInvariant: batchInvariant, bf16: bf16) }
}

/// C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C, row-major. op(A) = A[M,K] (lda) or Aᵀ with A [K,M];
/// op(B) = B[K,N] or Bᵀ with B [N,K]. Never allocates.
@inline(__always)
func sgemm(_ transA: Bool, _ transB: Bool, _ M: Int, _ N: Int, _ K: Int, _ alpha: Float,
           _ A: UnsafePointer<Float>, _ lda: Int, _ B: UnsafePointer<Float>, _ ldb: Int,
           _ beta: Float, _ C: UnsafeMutablePointer<Float>, _ ldc: Int) {
    if M == 0 || N == 0 { return }
    if K == 0 {
        for i in 0..<M { for j in 0..<N { C[i * ldc + j] = beta == 0 ? 0 : beta * C[i * ldc + j] } }
        return
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                Int32(M), Int32(N), Int32(K), alpha, A, Int32(lda), B, Int32(ldb), beta, C, Int32(ldc))
}

extension GemmContext {
    /// The same product as `sgemm`, split over the workers: by rows of C when M is large, else by columns.
    func gemm(_ transA: Bool, _ transB: Bool, _ M: Int, _ N: Int, _ K: Int, _ alpha: Float,
              _ A: UnsafePointer<Float>, _ lda: Int, _ B: UnsafePointer<Float>, _ ldb: Int,
              _ beta: Float, _ C: UnsafeMutablePointer<Float>, _ ldc: Int) {
        let work = M * N * K
        if workers <= 1 || work < 1 << 18 {
            sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
            return
        }
        let parts = workers
        if M >= N || M >= 64 * parts {
            parallelFor(parts, workers: workers) { p in
                let r = chunk(M, parts: parts, part: p, align: 16)
                if r.isEmpty { return }
                let a = transA ? A + r.lowerBound : A + r.lowerBound * lda
                sgemm(transA, transB, r.count, N, K, alpha, a, lda, B, ldb, beta, C + r.lowerBound * ldc, ldc)
            }
        } else {
            parallelFor(parts, workers: workers) { p in
                let r = chunk(N, parts: parts, part: p, align: 16)
                if r.isEmpty { return }
                let b = transB ? B + r.lowerBound * ldb : B + r.lowerBound
                sgemm(transA, transB, M, r.count, K, alpha, A, lda, b, ldb, beta, C + r.lowerBound, ldc)
            }
        }
    }

    /// Y[M,N] = X[M,K] · Wᵀ + beta·Y for token rows X and a weight W [N,K]: the product of every linear
    /// layer. In batch-invariant mode it runs the fixed-order kernel below instead of sgemm (OpenBLAS's
    /// result for a row depends on the row's slot inside its micro-tile, measured here); `scratch`
    /// (≥ tile·(K+N) floats) pads the last rows. With a bf16 twin of W and at most `BF16Weights.maxRows`
    /// rows it reads the twin (`bf16Linear`: the same per-element order as the batch-invariant kernel).
    func linear(_ M: Int, _ N: Int, _ K: Int, _ X: UnsafePointer<Float>, _ ldx: Int,
                _ W: UnsafePointer<Float>, _ beta: Float, _ Y: UnsafeMutablePointer<Float>, _ ldy: Int,
                scratch: UnsafeMutablePointer<Float>?) {
        if M <= BF16Weights.maxRows, let wb = bf16?.twin(of: W) {
            let parts = M * N * K >= 1 << 17 ? workers : 1
            parallelFor(parts, workers: parts) { p in
                let cols = chunk(N, parts: parts, part: p, align: 8)
                if !cols.isEmpty { bf16Linear(M, K, X, ldx, wb, cols, beta, Y, ldy) }
            }
            return
        }
        if !batchInvariant {
            gemm(false, true, M, N, K, 1, X, ldx, W, K, beta, Y, ldy)
            return
        }
        let full = M / 4 * 4
        let parts = full * N * K >= 1 << 18 ? workers : 1
        parallelFor(parts, workers: parts) { p in
            let cols = chunk(N, parts: parts, part: p, align: 8)
            var r = 0
            while r < full {
                invariantRows4(K, X + r * ldx, ldx, W, cols, beta, Y + r * ldy, ldy)
                r += 4
            }
        }
        let rest = M - full
        if rest == 0 { return }
        guard let s = scratch else { preconditionFailure("batch-invariant linear needs scratch") }
        let xs = s, ys = s + 4 * K
        xs.update(repeating: 0, count: 4 * K)
        for r in 0..<rest { (xs + r * K).update(from: X + (full + r) * ldx, count: K) }
        invariantRows4(K, xs, K, W, 0..<N, 0, ys, N)
        for r in 0..<rest {
            let y = Y + (full + r) * ldy, src = ys + r * N
            if beta == 0 { y.update(from: src, count: N) } else { for j in 0..<N { y[j] = beta * y[j] + src[j] } }
        }
    }
}

/// Four token rows against output columns `cols` of W. Every output element is computed by the same
/// instruction sequence (8-wide FMA chain over K, fixed horizontal sum, scalar FMA tail), whatever rows
/// share its block: the batch-invariant product. beta is 0 or 1.
@inline(__always)
func invariantRows4(_ K: Int, _ X: UnsafePointer<Float>, _ ldx: Int, _ W: UnsafePointer<Float>, _ cols: Range<Int>,
                    _ beta: Float, _ Y: UnsafeMutablePointer<Float>, _ ldy: Int) {
    let K8 = K / 8 * 8
    let x0 = UnsafeRawPointer(X), x1 = UnsafeRawPointer(X + ldx), x2 = UnsafeRawPointer(X + 2 * ldx), x3 = UnsafeRawPointer(X + 3 * ldx)
    for j in cols {
        let w = UnsafeRawPointer(W + j * K)
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
        var k = 0
        while k < K8 {
            let wv = w.loadUnaligned(fromByteOffset: 4 * k, as: SIMD8<Float>.self)
            a0.addProduct(x0.loadUnaligned(fromByteOffset: 4 * k, as: SIMD8<Float>.self), wv)
            a1.addProduct(x1.loadUnaligned(fromByteOffset: 4 * k, as: SIMD8<Float>.self), wv)
            a2.addProduct(x2.loadUnaligned(fromByteOffset: 4 * k, as: SIMD8<Float>.self), wv)
            a3.addProduct(x3.loadUnaligned(fromByteOffset: 4 * k, as: SIMD8<Float>.self), wv)
            k += 8
        }
        var s0 = a0.sum(), s1 = a1.sum(), s2 = a2.sum(), s3 = a3.sum()
        while k < K {
            let wk = W[j * K + k]
            s0.addProduct(X[k], wk); s1.addProduct(X[ldx + k], wk); s2.addProduct(X[2 * ldx + k], wk); s3.addProduct(X[3 * ldx + k], wk)
            k += 1
        }
        if beta == 0 {
            Y[j] = s0; Y[ldy + j] = s1; Y[2 * ldy + j] = s2; Y[3 * ldy + j] = s3
        } else {
            Y[j] += s0; Y[ldy + j] += s1; Y[2 * ldy + j] += s2; Y[3 * ldy + j] += s3
        }
    }
}

/// The plain reference twin of `sgemm`: triple loop with a Double accumulator. Tests only.
public func referenceGemm(_ transA: Bool, _ transB: Bool, _ M: Int, _ N: Int, _ K: Int, _ alpha: Float,
                          _ A: UnsafePointer<Float>, _ lda: Int, _ B: UnsafePointer<Float>, _ ldb: Int,
                          _ beta: Float, _ C: UnsafeMutablePointer<Float>, _ ldc: Int) {
    for i in 0..<M {
        for j in 0..<N {
            var acc = 0.0
            for k in 0..<K {
                let a = transA ? A[k * lda + i] : A[i * lda + k]
                let b = transB ? B[j * ldb + k] : B[k * ldb + j]
                acc += Double(a) * Double(b)
            }
            C[i * ldc + j] = Float(Double(alpha) * acc + (beta == 0 ? 0 : Double(beta) * Double(C[i * ldc + j])))
        }
    }
}

/// Public entry for tests and benchmarks: the engine's split product with `workers` threads.
public func parallelGemm(workers: Int, _ transA: Bool, _ transB: Bool, _ M: Int, _ N: Int, _ K: Int, _ alpha: Float,
                         _ A: UnsafePointer<Float>, _ lda: Int, _ B: UnsafePointer<Float>, _ ldb: Int,
                         _ beta: Float, _ C: UnsafeMutablePointer<Float>, _ ldc: Int) {
    GemmContext(workers: workers).gemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc)
}

/// A plain n×n×n OpenBLAS sgemm with the current BLAS thread count: the benchmark's ceiling.
public func rawSgemm(_ n: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>) {
    sgemm(false, false, n, n, n, 1, a, n, b, n, 0, c, n)
}
