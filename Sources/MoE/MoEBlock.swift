// MoEBlock: the sparse MoE block (router + SwiGLU experts) and the dense SwiGLU MLP, forward and
// backward side by side.
//
// Router, live and replay (the R3 contract):
//   p = softmax(h · W_gateᵀ) over all E experts; live idx = topk(p, K) (descending p), replay idx = recorded
//   w = p[idx], divided by Σ w when norm_topk_prob; gradients reach W_gate through w (dense softmax).
// Experts run grouped: assignments are counting-sorted by expert, inputs gathered, one GEMM per expert.

struct MoEShape {
    let T, C, E, K, I: Int
    let norm: Bool
    var A: Int { T * K }
}

/// Routing of one MoE layer: fills probs, idx (used), gates, liveIdx; returns the replay fallback rows.
/// `forced` is the layer's replay rows (stride `forcedStride` between tokens) or nil for live routing.
func routeForward(_ m: MoEShape, probs: UnsafeMutablePointer<Float>, idx: UnsafeMutablePointer<Int32>,
                  gates: UnsafeMutablePointer<Float>, liveIdx: UnsafeMutablePointer<Int32>,
                  forced: UnsafePointer<Int32>?, forcedStride: Int) -> Int {
    var fallbacks = 0
    for t in 0..<m.T {
        let p = probs + t * m.E
        softmaxRow(p, m.E)
        let live = liveIdx + t * m.K
        for j in 0..<m.K {   // top-k by repeated selection; ties go to the lower expert id
            var best = -1
            var bestP = -Float.infinity
            for e in 0..<m.E {
                var taken = false
                for j2 in 0..<j where live[j2] == Int32(e) { taken = true; break }
                if !taken && (best < 0 || p[e] > bestP) { best = e; bestP = p[e] }
            }
            live[j] = Int32(best)
        }
        let row = idx + t * m.K
        if let f = forced, f[t * forcedStride] >= 0 {
            for j in 0..<m.K { row[j] = f[t * forcedStride + j] }
        } else {
            if let f = forced, f[t * forcedStride] == -1 { fallbacks += 1 }
            for j in 0..<m.K { row[j] = live[j] }
        }
        var sum: Float = 0
        for j in 0..<m.K { gates[t * m.K + j] = p[Int(row[j])]; sum += p[Int(row[j])] }
        if m.norm { for j in 0..<m.K { gates[t * m.K + j] /= sum } }
    }
    return fallbacks
}

/// Counting sort of the T·K assignments by expert: perm[r] = t·K + j in expert order (stable),
/// slot[t·K + j] = r, offsets [E + 1], order = experts by decreasing load.
func groupByExpert(_ m: MoEShape, idx: UnsafePointer<Int32>, perm: UnsafeMutablePointer<Int32>, slot: UnsafeMutablePointer<Int32>,
                   offsets: UnsafeMutablePointer<Int32>, order: UnsafeMutablePointer<Int32>) {
    offsets.update(repeating: 0, count: m.E + 1)
    for a in 0..<m.A { offsets[Int(idx[a]) + 1] += 1 }
    for e in 0..<m.E { offsets[e + 1] += offsets[e] }
    for e in 0..<m.E { order[e] = offsets[e] }   // reuse as fill cursors
    for a in 0..<m.A {
        let e = Int(idx[a])
        let r = Int(order[e]); order[e] += 1
        perm[r] = Int32(a); slot[a] = Int32(r)
    }
    groupOrder(m, offsets: offsets, order: order)
}

/// order = experts by decreasing load (insertion sort: E is small, and nothing is allocated).
func groupOrder(_ m: MoEShape, offsets: UnsafePointer<Int32>, order: UnsafeMutablePointer<Int32>) {
    for e in 0..<m.E { order[e] = Int32(e) }
    for i in 1..<max(m.E, 1) {
        let e = order[i], load = offsets[Int(e) + 1] - offsets[Int(e)]
        var j = i - 1
        while j >= 0, offsets[Int(order[j]) + 1] - offsets[Int(order[j])] < load { order[j + 1] = order[j]; j -= 1 }
        order[j + 1] = e
    }
}

/// Experts forward: for each expert e over its rows of the gathered xg [A, C]:
/// gu = xg·Wguᵀ [n, 2I]; act = silu(g)·u [n, I]; eo = act·Wdᵀ [n, C]. One task per expert.
func expertsForward(_ m: MoEShape, ctx: GemmContext, xg: UnsafePointer<Float>, gateUp: UnsafePointer<Float>,
                    down: UnsafePointer<Float>, offsets: UnsafePointer<Int32>, order: UnsafePointer<Int32>,
                    gu: UnsafeMutablePointer<Float>, act: UnsafeMutablePointer<Float>, eo: UnsafeMutablePointer<Float>,
                    bf16: Bool, scratch: (Int) -> UnsafeMutablePointer<Float>) {
    let active = (0..<m.E).reduce(0) { $0 + (offsets[Int(order[$1]) + 1] > offsets[Int(order[$1])] ? 1 : 0) }
    // Few busy experts (decode): split each product across workers instead of running experts in parallel.
    let inner = active < ctx.workers ? ctx : ctx.serial
    parallelFor(active, workers: active < ctx.workers ? 1 : ctx.workers) { task, worker in
        let e = Int(order[task])
        let r0 = Int(offsets[e]), n = Int(offsets[e + 1]) - r0
        let I = m.I, C = m.C
        inner.linear(n, 2 * I, C, xg + r0 * C, C, gateUp + e * 2 * I * C, 0, gu + r0 * 2 * I, 2 * I, scratch: scratch(worker))
        swigluForward(gu + r0 * 2 * I, act + r0 * I, rows: n, I: I)
        if bf16 { BF16.roundInPlace(act + r0 * I, n * I) }
        inner.linear(n, C, I, act + r0 * I, I, down + e * C * I, 0, eo + r0 * C, C, scratch: scratch(worker))
    }
}

/// y[t] += Σ_j gates[t, j] · eo[slot[t·K + j]]
func combineExperts(_ m: MoEShape, gates: UnsafePointer<Float>, slot: UnsafePointer<Int32>, eo: UnsafePointer<Float>,
                    y: UnsafeMutablePointer<Float>, workers: Int) {
    let parts = m.T * m.C >= 1 << 16 ? workers : 1
    parallelFor(parts, workers: parts) { p in
        for t in chunk(m.T, parts: parts, part: p) {
            for j in 0..<m.K {
                axpy(gates[t * m.K + j], eo + Int(slot[t * m.K + j]) * m.C, y + t * m.C, m.C)
            }
        }
    }
}

/// Backward of the MoE block for dy [T, C]. Writes dh [T, C] (both paths: experts and router) and
/// accumulates dWgu, dWd, dWgate. `xg` must hold the gathered inputs again.
func moeBackward(_ m: MoEShape, ctx: GemmContext, h: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                 probs: UnsafePointer<Float>, idx: UnsafePointer<Int32>, gates: UnsafePointer<Float>,
                 perm: UnsafePointer<Int32>, slot: UnsafePointer<Int32>, offsets: UnsafePointer<Int32>, order: UnsafePointer<Int32>,
                 xg: UnsafePointer<Float>, gu: UnsafePointer<Float>, act: UnsafePointer<Float>, eo: UnsafePointer<Float>,
                 router: UnsafePointer<Float>, gateUp: UnsafePointer<Float>, down: UnsafePointer<Float>,
                 dRouter: UnsafeMutablePointer<Float>, dGateUp: UnsafeMutablePointer<Float>, dDown: UnsafeMutablePointer<Float>,
                 dEo: UnsafeMutablePointer<Float>, dAct: UnsafeMutablePointer<Float>, dGu: UnsafeMutablePointer<Float>,
                 dXg: UnsafeMutablePointer<Float>, dProbs: UnsafeMutablePointer<Float>, dGates: UnsafeMutablePointer<Float>,
                 dh: UnsafeMutablePointer<Float>) {
    let C = m.C, I = m.I, K = m.K, E = m.E
    // gate gradients and the experts' output gradients
    for t in 0..<m.T {
        for j in 0..<K {
            let r = Int(slot[t * K + j])
            dGates[t * K + j] = dot(dy + t * C, eo + r * C, C)
            let g = gates[t * K + j], src = dy + t * C, dst = dEo + r * C
            for c in 0..<C { dst[c] = g * src[c] }
        }
    }
    let active = (0..<E).reduce(0) { $0 + (offsets[Int(order[$1]) + 1] > offsets[Int(order[$1])] ? 1 : 0) }
    parallelFor(active, workers: ctx.workers) { task in
        let e = Int(order[task])
        let r0 = Int(offsets[e]), n = Int(offsets[e + 1]) - r0
        let wgu = gateUp + e * 2 * I * C, wd = down + e * C * I
        sgemm(false, false, n, I, C, 1, dEo + r0 * C, C, wd, I, 0, dAct + r0 * I, I)                 // dAct = dEo·Wd
        sgemm(true, false, C, I, n, 1, dEo + r0 * C, C, act + r0 * I, I, 1, dDown + e * C * I, I)     // dWd += dEoᵀ·act
        swigluBackward(gu + r0 * 2 * I, dAct + r0 * I, dGu + r0 * 2 * I, rows: n, I: I)
        sgemm(true, false, 2 * I, C, n, 1, dGu + r0 * 2 * I, 2 * I, xg + r0 * C, C, 1, dGateUp + e * 2 * I * C, C) // dWgu += dGuᵀ·xg
        sgemm(false, false, n, C, 2 * I, 1, dGu + r0 * 2 * I, 2 * I, wgu, C, 0, dXg + r0 * C, C)      // dXg = dGu·Wgu
    }
    // scatter the expert input gradients back to tokens
    for t in 0..<m.T {
        let d = dh + t * C
        d.update(from: dXg + Int(slot[t * K]) * C, count: C)
        for j in 1..<K { axpy(1, dXg + Int(slot[t * K + j]) * C, d, C) }
    }
    // router: w → p (renormalisation) → logits (softmax), over the dense softmax
    dProbs.update(repeating: 0, count: m.T * E)
    for t in 0..<m.T {
        let p = probs + t * E, dp = dProbs + t * E
        if m.norm {
            var sum: Float = 0, s: Float = 0
            for j in 0..<K { sum += p[Int(idx[t * K + j])] }
            for j in 0..<K { s += dGates[t * K + j] * gates[t * K + j] }
            for j in 0..<K { dp[Int(idx[t * K + j])] = (dGates[t * K + j] - s) / sum }
        } else {
            for j in 0..<K { dp[Int(idx[t * K + j])] = dGates[t * K + j] }
        }
        let s = dot(dp, p, E)
        for e in 0..<E { dp[e] = p[e] * (dp[e] - s) }
    }
    ctx.gemm(true, false, E, C, m.T, 1, dProbs, E, h, C, 1, dRouter, C)    // dWgate += drᵀ·h
    ctx.gemm(false, false, m.T, C, E, 1, dProbs, E, router, C, 1, dh, C)   // dh += dr·Wgate
}
