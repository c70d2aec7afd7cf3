// LMHead: final logits, log-probabilities of targets and entropy, forward and backward side by side.
//   logits [R, V] = hF · W_lmᵀ;  log p(y) = logits[y]/τ − lse(logits/τ);  H = lse − Σ p·logits/τ

/// Per row r with targets[r] ≥ 0: logp[r], entropy[r] (if wanted) and lse[r]; rows without a target get NaN.
func headForward(logits: UnsafePointer<Float>, rows R: Int, V: Int, targets: UnsafePointer<Int32>, temperature: Float,
                 logp: UnsafeMutablePointer<Float>, entropy: UnsafeMutablePointer<Float>?, lse: UnsafeMutablePointer<Float>,
                 scratch: UnsafeMutablePointer<Float>, workers: Int) {
    let invT = 1 / temperature
    parallelFor(R, workers: R * V >= 1 << 16 ? workers : 1) { r, worker in
        let y = Int(targets[r])
        if y < 0 && entropy == nil { logp[r] = .nan; lse[r] = .nan; return }
        let l = logits + r * V, e = scratch + worker * V
        e.update(from: l, count: V)
        let m = rowMax(l, V) * invT
        let sum = expInPlace(e, V, shift: m, scale: invT)
        let z = m + Float(_log(Double(sum)))
        lse[r] = z
        logp[r] = y >= 0 ? l[y] * invT - z : .nan
        if let entropy { entropy[r] = z - dot(e, l, V) * invT / sum }
    }
}

/// dlogits[i] = (c/τ)·(onehot(y) − p) for the compacted rows with a non-zero coefficient c = ∂L/∂log p.
/// `logits` holds row r at r·V, or (`compact`) the i-th compacted row at i·V.
func headBackward(logits: UnsafePointer<Float>, compact: Bool = false, V: Int, rows: UnsafePointer<Int32>, count: Int, targets: UnsafePointer<Int32>,
                  coef: UnsafePointer<Float>, lse: UnsafePointer<Float>, temperature: Float,
                  dlogits: UnsafeMutablePointer<Float>, workers: Int) {
    let invT = 1 / temperature
    parallelFor(count, workers: count * V >= 1 << 16 ? workers : 1) { i in
        let r = Int(rows[i]), c = coef[r] * invT
        let d = dlogits + i * V
        d.update(from: logits + (compact ? i : r) * V, count: V)
        expInPlace(d, V, shift: lse[r], scale: invT)
        for v in 0..<V { d[v] *= -c }
        d[Int(targets[r])] += c
    }
}
