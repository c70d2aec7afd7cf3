// Backward: the engine's backward pass, the forward of Engine.swift in reverse, for a loss given by its
// gradient with respect to each token's target log-prob (what GRPO, GSPO and TIS losses reduce to).

extension Engine {
    /// Accumulates into `grads` the gradient of L, where dLogp[t] = ∂L/∂log p(target_t), through the
    /// last `forward(…, options.training: true)`; replayed routes stay forced, and the router still gets
    /// its gradient through the gate weights.
    public func backward(dLogp: [Float]) throws {
        guard let last, let ws, ws.hasBackward else {
            throw MoEError.input("backward needs a forward with training: true first (and one forward per backward: backward consumes its activations)")
        }
        self.last = nil   // the MLP's activations become their gradients below: a second backward needs a new forward
        guard dLogp.count == last.T else { throw MoEError.input("\(dLogp.count) gradients for \(last.T) tokens") }
        if grads == nil { grads = Buffer(count: model.layout.total) }
        let c = config, T = last.T, C = c.hiddenSize, V = c.vocabSize, K = c.topK
        let G = grads!.base, W = model.params.base, lay = model.layout

        // LM head, over the rows that carry gradient only, ws.headRows at a time. When the forward ran in
        // chunks (T > ws.headRows) it kept no logits: each chunk's are computed again here.
        var R = 0
        for t in 0..<T where dLogp[t] != 0 && last.targets[t] >= 0 { ws.gradRows[R] = Int32(t); R += 1 }
        for i in 0..<R { (ws.hFc + i * C).update(from: ws.hF + Int(ws.gradRows[i]) * C, count: C) }
        let recompute = T > ws.headRows
        var i0 = 0
        while i0 < R {
            let n = min(ws.headRows, R - i0)
            if recompute {
                ctx.linear(n, V, C, ws.hFc + i0 * C, C, W + lay.lmHead, 0, ws.logits, V, scratch: ws.linScratch(worker: 0, config: c))
            }
            last.targets.withUnsafeBufferPointer { tg in
                dLogp.withUnsafeBufferPointer { coef in
                    headBackward(logits: ws.logits, compact: recompute, V: V, rows: ws.gradRows + i0, count: n, targets: tg.baseAddress!,
                                 coef: coef.baseAddress!, lse: ws.lseRow, temperature: last.temperature, dlogits: ws.dlogits, workers: workers)
                }
            }
            ctx.gemm(true, false, V, C, n, 1, ws.dlogits, V, ws.hFc + i0 * C, C, 1, G + lay.lmHead, C)
            ctx.gemm(false, false, n, C, V, 1, ws.dlogits, V, W + lay.lmHead, C, 0, ws.dhFc + i0 * C, C)
            i0 += n
        }
        ws.dh.update(repeating: 0, count: T * C)
        for i in 0..<R { (ws.dh + Int(ws.gradRows[i]) * C).update(from: ws.dhFc + i * C, count: C) }
        ws.dx.update(repeating: 0, count: T * C)
        rmsnormBackward(ws.residual(c.numLayers), ldx: C, W + lay.finalNorm, rstd: ws.rstdF, ws.dh, lddy: C, ws.dx, lddx: C,
                        G + lay.finalNorm, rows: T, n: C, accumulate: true)

        var moeIndex = c.moeLayers.count
        for l in stride(from: c.numLayers - 1, through: 0, by: -1) {
            let p = lay.layers[l], a = ws.acts(l)
            // MLP block: x_out = x_mid + f(h2); dx holds ∂L/∂x_out
            if ws.mlpShared { recomputeH2(l, a: a, T: T) }
            if p.isMoE {
                moeIndex -= 1
                let m = moeShape(T: T, p: p)
                groupOrder(m, offsets: a.offsets, order: ws.order)
                for r in 0..<m.A { (ws.xg + r * C).update(from: a.h2 + (Int(a.perm[r]) / K) * C, count: C) }
                if ws.mlpShared {   // the forward kept only the last layer's expert activations
                    expertsForward(m, ctx: ctx, xg: ws.xg, gateUp: W + p.gateUp, down: W + p.down, offsets: a.offsets, order: ws.order,
                                   gu: a.gu, act: a.act, eo: a.eo, input: linearInput, scratch: { ws.linScratch(worker: $0, config: c) })
                }
                moeBackward(m, ctx: ctx, h: a.h2, dy: ws.dx, probs: a.probs, idx: a.idx, gates: a.gates, perm: a.perm, slot: a.slot,
                            offsets: a.offsets, order: ws.order, xg: ws.xg, gu: a.gu, act: a.act, eo: a.eo,
                            router: W + p.router, gateUp: W + p.gateUp, down: W + p.down,
                            dRouter: G + p.router, dGateUp: G + p.gateUp, dDown: G + p.down,
                            dProbs: ws.dProbs, dGates: ws.dGates, dh: ws.dh,
                            auxGrad: auxGrad.isEmpty ? nil : auxGrad)
                if p.sharedGateUp >= 0 {   // shared experts: a dense SwiGLU on the same input, added to dh
                    denseMLPBackward(T: T, width: c.sharedIntermediateSize, gateUp: p.sharedGateUp, down: p.sharedDown, gu: a.sgu,
                                     act: a.sact, h: a.h2, ws: ws, accumulate: true)
                }
            } else {
                if ws.mlpShared {
                    let F = c.intermediateSize
                    ctx.linear(T, 2 * F, C, a.h2, C, W + p.gateUp, 0, a.gu, 2 * F, scratch: ws.linScratch(worker: 0, config: c))
                    swigluForward(a.gu, a.act, rows: T, I: F)
                    linearInput(a.act, rows: T, cols: F)
                }
                denseMLPBackward(T: T, width: c.intermediateSize, gateUp: p.gateUp, down: p.down, gu: a.gu, act: a.act, h: a.h2,
                                 ws: ws, accumulate: false)
            }
            rmsnormBackward(a.xMid, ldx: C, W + p.postNorm, rstd: a.rstd2, ws.dh, lddy: C, ws.dx, lddx: C, G + p.postNorm,
                            rows: T, n: C, accumulate: true)
            // attention block: x_mid = x_in + o(attn); dx holds ∂L/∂x_mid
            if ws.mlpShared { recomputeAttentionInputs(l, a: a, T: T, ws: ws) }
            ctx.gemm(false, false, T, s.HDv, C, 1, ws.dx, C, W + p.o, s.HDv, 0, ws.dattn, s.HDv)
            ctx.gemm(true, false, C, s.HDv, T, 1, ws.dx, C, a.attn, s.HDv, 1, G + p.o, s.HDv)
            let (vBase, ldv) = values(a)
            for i in spans.indices {
                spans[i].k = a.qk + spans[i].row * s.QK + s.HD; spans[i].ldk = s.QK
                spans[i].v = vBase + spans[i].row * ldv; spans[i].ldv = ldv
            }
            let shape = s, dqk = ws.dqk
            let dvBase = mlaShape == nil ? ws.dqkv + s.QK : ws.dv
            if tiledAttention(ws: ws, cache: nil) {
                attentionBackwardTiled(s, spans: spans, q: a.qk, ldq: s.QK, out: a.attn, dout: ws.dattn, lse: a.lse, di: ws.di,
                                       dq: ws.dqk, dk: { dqk + $0.row * shape.QK + shape.HD }, dv: { dvBase + $0.row * ldv },
                                       tiles: attnTiles, scratch: ws.attnScratch, scratchStride: ws.attnStride, workers: workers)
            } else {
                attentionBackward(s, spans: spans, q: a.qk, ldq: s.QK, out: a.attn, dout: ws.dattn, lse: a.lse, di: ws.di,
                                  dq: ws.dqk, dk: { dqk + $0.row * shape.QK + shape.HD }, dv: { dvBase + $0.row * ldv },
                                  scratch: ws.attnScratch, scratchStride: ws.attnStride, workers: workers)
            }
            if let ms = mlaShape {
                mlaBackward(s, ms, spans: spans, ctx: ctx, W: W, G: G, p: p, a: a, T: T, rope: rope, dqk: ws.dqk, dv: ws.dv,
                            dq: ws.dqkv, g: ws.mla, dh: ws.dh)
            } else {
                qkNormRopeBackward(s, spans: spans, qkv: a.qkv, dqk: ws.dqk, dqkv: ws.dqkv, rstd: a.qkRstd,
                                   qNorm: p.qNorm >= 0 ? W + p.qNorm : nil, kNorm: p.kNorm >= 0 ? W + p.kNorm : nil,
                                   dqNorm: p.qNorm >= 0 ? G + p.qNorm : nil, dkNorm: p.kNorm >= 0 ? G + p.kNorm : nil, rope: rope)
                if p.qkvBias >= 0 { for t in 0..<T { axpy(1, ws.dqkv + t * s.QKV, G + p.qkvBias, s.QKV) } }
                ctx.gemm(true, false, s.QKV, C, T, 1, ws.dqkv, s.QKV, a.h1, C, 1, G + p.qkv, C)
                ctx.gemm(false, false, T, C, s.QKV, 1, ws.dqkv, s.QKV, W + p.qkv, C, 0, ws.dh, C)
            }
            rmsnormBackward(ws.residual(l), ldx: C, W + p.inputNorm, rstd: a.rstd1, ws.dh, lddy: C, ws.dx, lddx: C, G + p.inputNorm,
                            rows: T, n: C, accumulate: true)
        }
        for t in 0..<T { axpy(1, ws.dx + t * C, G + lay.embed + Int(last.tokens[t]) * C, C) }
    }

    /// Long inputs keep one h buffer for every layer's h1 and h2: h2 = the post-attention norm's output,
    /// rounded as the forward rounded it (bf16, then e4m3 for FP8's experts), computed again from x_mid.
    func recomputeH2(_ l: Int, a: LayerActs, T: Int) {
        let c = config, C = c.hiddenSize, p = model.layout.layers[l]
        rmsnormForward(a.xMid, ldx: C, model.params.base + p.postNorm, a.h2, ldy: C, rstd: a.rstd2, rows: T, n: C, eps: c.rmsNormEps)
        if bf16 { BF16.roundInPlace(a.h2, T * C) }
        if numerics.precision == .fp8 { linearInput(a.h2, rows: T, cols: C) }
    }

    /// h1 (the input norm's output, as the projections saw it) from the layer's input; and for GQA the
    /// normed + rotated q/k from the raw projection, when they share one buffer across layers.
    func recomputeAttentionInputs(_ l: Int, a: LayerActs, T: Int, ws: Workspace) {
        let c = config, C = c.hiddenSize, p = model.layout.layers[l], W = model.params.base
        rmsnormForward(ws.residual(l), ldx: C, W + p.inputNorm, a.h1, ldy: C, rstd: a.rstd1, rows: T, n: C, eps: c.rmsNormEps)
        linearInput(a.h1, rows: T, cols: C)
        if ws.recomputesQK {
            qkNormRopeForward(s, spans: spans, qkv: a.qkv, qk: a.qk, rstd: a.qkRstd, qNorm: p.qNorm >= 0 ? W + p.qNorm : nil,
                              kNorm: p.kNorm >= 0 ? W + p.kNorm : nil, rope: rope, eps: c.rmsNormEps)
            if bf16 { BF16.roundInPlace(a.qk, T * s.QK) }   // v, in qkv, kept its rounding
        }
    }

    /// Backward of a dense SwiGLU MLP of `width` (a dense layer, or an MoE layer's shared experts) for
    /// dy = ws.dx: accumulates its weight gradients and writes (or, with `accumulate`, adds) dh = ∂L/∂h.
    /// Consumes the forward's gu and act in place (act → dAct, gu → dGu).
    func denseMLPBackward(T: Int, width F: Int, gateUp: Int, down: Int, gu: UnsafeMutablePointer<Float>, act: UnsafeMutablePointer<Float>,
                          h: UnsafePointer<Float>, ws: Workspace, accumulate: Bool) {
        let C = config.hiddenSize, W = model.params.base, G = grads!.base
        ctx.gemm(true, false, C, F, T, 1, ws.dx, C, act, F, 1, G + down, F)
        ctx.gemm(false, false, T, F, C, 1, ws.dx, C, W + down, F, 0, act, F)
        swigluBackward(gu, act, gu, rows: T, I: F)
        ctx.gemm(true, false, 2 * F, C, T, 1, gu, 2 * F, h, C, 1, G + gateUp, C)
        ctx.gemm(false, false, T, C, 2 * F, 1, gu, 2 * F, W + gateUp, C, accumulate ? 1 : 0, ws.dh, C)
    }
}
