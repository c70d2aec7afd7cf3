// MoEBlock: the sparse MoE block (router + SwiGLU experts) and the dense SwiGLU MLP, forward and
// backward side by side.
//
// Router, live and replay (the R3 contract), by kind:
//   softmax (Qwen3-MoE, Mixtral): p = softmax(h · W_gateᵀ) over all E experts; live idx = topk(p, K)
//     (descending p), replay idx = recorded; w = p[idx], divided by Σ w when norm_topk_prob (Mixtral: always).
//   sigmoidGrouped (GLM-4.5, DeepSeek-V3): s = sigmoid(h · W_gateᵀ); c = s + e_score_correction_bias;
//     keep the topk_group groups (of n_group) with the largest sum of their two best c, the rest -inf;
//     live idx = topk(c, K) (descending c); replay idx = recorded (no bias, no groups);
//     w = s[idx] (never the bias), ÷ (Σ + 1e-20) when norm_topk_prob, × routed_scaling_factor.
//     transformers 5.25 models/deepseek_v3/modeling_deepseek_v3.py L119-L157 (-inf at L150, as DeepSeek's
//     inference/model.py L592 and vLLM; transformers 4.x filled 0.0).
// Gradients reach W_gate through w (dense softmax / the sigmoid); the bias is a buffer and gets none.
// Experts run grouped: assignments are counting-sorted by expert, inputs gathered, one GEMM per expert.

import Foundation

struct MoEShape {
    let T, C, E, K, I: Int
    let norm: Bool
    var router: RouterKind = .softmax
    var nGroup = 1, topkGroup = 1
    var scale: Float = 1
    var bias: UnsafePointer<Float>? = nil
    var A: Int { T * K }
}

/// Routing of one MoE layer from the router logits in `probs` (replaced by p or s): fills idx (used),
/// gates, liveIdx; returns the replay fallback rows. `forced` is the layer's replay rows (stride
/// `forcedStride` between tokens) or nil for live routing. `scratch` holds E + n_group floats.
func routeForward(_ m: MoEShape, probs: UnsafeMutablePointer<Float>, idx: UnsafeMutablePointer<Int32>,
                  gates: UnsafeMutablePointer<Float>, liveIdx: UnsafeMutablePointer<Int32>,
                  forced: UnsafePointer<Int32>?, forcedStride: Int, scratch: UnsafeMutablePointer<Float>) -> Int {
    var fallbacks = 0
    for t in 0..<m.T {
        let p = probs + t * m.E
        let live = liveIdx + t * m.K
        switch m.router {
        case .softmax:
            softmaxRow(p, m.E)
            topK(p, m.E, m.K, into: live)
        case .sigmoidGrouped:
            let c = scratch, groupScore = scratch + m.E
            for e in 0..<m.E {
                p[e] = 1 / (1 + expf(-p[e]))
                c[e] = p[e] + (m.bias?[e] ?? 0)
            }
            if m.topkGroup < m.nGroup {
                let size = m.E / m.nGroup
                for g in 0..<m.nGroup {   // a group's score: the sum of its two largest c
                    var a = -Float.infinity, b = -Float.infinity
                    for e in (g * size)..<((g + 1) * size) {
                        if c[e] > a { b = a; a = c[e] } else if c[e] > b { b = c[e] }
                    }
                    groupScore[g] = a + b
                }
                for _ in 0..<m.topkGroup {   // mark the kept groups by +inf, lowest index on ties
                    var best = -1
                    for g in 0..<m.nGroup where groupScore[g] != .infinity && (best < 0 || groupScore[g] > groupScore[best]) { best = g }
                    groupScore[best] = .infinity
                }
                for g in 0..<m.nGroup where groupScore[g] != .infinity {
                    (c + g * size).update(repeating: -.infinity, count: size)
                }
            }
            topK(c, m.E, m.K, into: live)
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
        switch m.router {
        case .softmax:
            if m.norm { for j in 0..<m.K { gates[t * m.K + j] /= sum } }
        case .sigmoidGrouped:
            let f = m.norm ? m.scale / (sum + 1e-20) : m.scale
            for j in 0..<m.K { gates[t * m.K + j] *= f }
        }
    }
    return fallbacks
}

/// The K largest of x[0..<n] in descending order by repeated selection; ties go to the lower index.
@inline(__always)
func topK(_ x: UnsafePointer<Float>, _ n: Int, _ k: Int, into out: UnsafeMutablePointer<Int32>) {
    for j in 0..<k {
        var best = -1
        var bestV = -Float.infinity
        for e in 0..<n {
            var taken = false
            for j2 in 0..<j where out[j2] == Int32(e) { taken = true; break }
            if !taken && (best < 0 || x[e] > bestV) { best = e; bestV = x[e] }
        }
        out[j] = Int32(best)
    }
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
                    input: InputRounding, scratch: (Int) -> UnsafeMutablePointer<Float>) {
    let active = (0..<m.E).reduce(0) { $0 + (offsets[Int(order[$1]) + 1] > offsets[Int(order[$1])] ? 1 : 0) }
    // Few busy experts (decode): split each product across workers instead of running experts in parallel.
    let inner = active < ctx.workers ? ctx : ctx.serial
    parallelFor(active, workers: active < ctx.workers ? 1 : ctx.workers) { task, worker in
        let e = Int(order[task])
        let r0 = Int(offsets[e]), n = Int(offsets[e + 1]) - r0
        let I = m.I, C = m.C
        inner.linear(n, 2 * I, C, xg + r0 * C, C, gateUp + e * 2 * I * C, 0, gu + r0 * 2 * I, 2 * I, scratch: scratch(worker))
        swigluForward(gu + r0 * 2 * I, act + r0 * I, rows: n, I: I)
        input(act + r0 * I, rows: n, cols: I)
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
                 xg: UnsafeMutablePointer<Float>, gu: UnsafeMutablePointer<Float>, act: UnsafeMutablePointer<Float>, eo: UnsafeMutablePointer<Float>,
                 router: UnsafePointer<Float>, gateUp: UnsafePointer<Float>, down: UnsafePointer<Float>,
                 dRouter: UnsafeMutablePointer<Float>, dGateUp: UnsafeMutablePointer<Float>, dDown: UnsafeMutablePointer<Float>,
                 dProbs: UnsafeMutablePointer<Float>, dGates: UnsafeMutablePointer<Float>,
                 dh: UnsafeMutablePointer<Float>, auxGrad: [Float]? = nil) {
    let C = m.C, I = m.I, K = m.K, E = m.E
    // The forward's expert activations are consumed in place: each buffer takes its own gradient once the
    // last product that reads it is done (eo → dEo, act → dAct, gu → dGu, xg → dXg), so backward holds no
    // second [A, ·] buffer of its own (940 MB at 32K tokens of bench-m).
    // gate gradients, then the experts' output gradients over their outputs
    for t in 0..<m.T {
        for j in 0..<K {
            let r = Int(slot[t * K + j])
            dGates[t * K + j] = dot(dy + t * C, eo + r * C, C)
            let g = gates[t * K + j], src = dy + t * C, dst = eo + r * C
            for c in 0..<C { dst[c] = g * src[c] }
        }
    }
    let dEo = eo
    let active = (0..<E).reduce(0) { $0 + (offsets[Int(order[$1]) + 1] > offsets[Int(order[$1])] ? 1 : 0) }
    parallelFor(active, workers: ctx.workers) { task in
        let e = Int(order[task])
        let r0 = Int(offsets[e]), n = Int(offsets[e + 1]) - r0
        let wgu = gateUp + e * 2 * I * C, wd = down + e * C * I
        sgemm(true, false, C, I, n, 1, dEo + r0 * C, C, act + r0 * I, I, 1, dDown + e * C * I, I)     // dWd += dEoᵀ·act
        sgemm(false, false, n, I, C, 1, dEo + r0 * C, C, wd, I, 0, act + r0 * I, I)                   // dAct = dEo·Wd
        swigluBackward(gu + r0 * 2 * I, act + r0 * I, gu + r0 * 2 * I, rows: n, I: I)                  // dGu
        sgemm(true, false, 2 * I, C, n, 1, gu + r0 * 2 * I, 2 * I, xg + r0 * C, C, 1, dGateUp + e * 2 * I * C, C) // dWgu += dGuᵀ·xg
        sgemm(false, false, n, C, 2 * I, 1, gu + r0 * 2 * I, 2 * I, wgu, C, 0, xg + r0 * C, C)        // dXg = dGu·Wgu
    }
    // scatter the expert input gradients back to tokens
    let dXg = xg
    for t in 0..<m.T {
        let d = dh + t * C
        d.update(from: dXg + Int(slot[t * K]) * C, count: C)
        for j in 1..<K { axpy(1, dXg + Int(slot[t * K + j]) * C, d, C) }
    }
    // router: w → p (renormalisation) → logits (softmax), over the dense softmax; or w → s → logits (sigmoid)
    dProbs.update(repeating: 0, count: m.T * E)
    for t in 0..<m.T where m.router == .sigmoidGrouped {
        let s = probs + t * E, dl = dProbs + t * E
        var sum: Float = 0, dot: Float = 0
        for j in 0..<K { sum += s[Int(idx[t * K + j])]; dot += dGates[t * K + j] * gates[t * K + j] }
        for j in 0..<K {
            let e = Int(idx[t * K + j])
            // g_j = r·s_j / (Σs + 1e-20): ∂L/∂s_j = (r·dG_j − Σ_i dG_i·g_i) / (Σs + 1e-20); without norm r·dG_j
            let ds = m.norm ? (m.scale * dGates[t * K + j] - dot) / (sum + 1e-20) : m.scale * dGates[t * K + j]
            dl[e] = ds * s[e] * (1 - s[e])
        }
    }
    for t in 0..<m.T where m.router == .softmax {
        let p = probs + t * E, dp = dProbs + t * E
        if m.norm {
            var sum: Float = 0, s: Float = 0
            for j in 0..<K { sum += p[Int(idx[t * K + j])] }
            for j in 0..<K { s += dGates[t * K + j] * gates[t * K + j] }
            for j in 0..<K { dp[Int(idx[t * K + j])] = (dGates[t * K + j] - s) / sum }
        } else {
            for j in 0..<K { dp[Int(idx[t * K + j])] = dGates[t * K + j] }
        }
        if let a = auxGrad { for e in 0..<E { dp[e] += a[e] } }   // ∂(coef · aux)/∂p_e, the same for every row
        let s = dot(dp, p, E)
        for e in 0..<E { dp[e] = p[e] * (dp[e] - s) }
    }
    ctx.gemm(true, false, E, C, m.T, 1, dProbs, E, h, C, 1, dRouter, C)    // dWgate += drᵀ·h
    ctx.gemm(false, false, m.T, C, E, 1, dProbs, E, router, C, 1, dh, C)   // dh += dr·Wgate
}
