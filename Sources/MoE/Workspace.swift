// Workspace: every activation and scratch buffer of a forward/backward pass, carved once per shape
// from one float arena and one int32 arena. Nothing is allocated inside the passes themselves.

/// One decoder layer's saved activations (shapes in the engine's vocabulary; A = T·K assignments).
struct LayerActs {
    var rstd1, h1, qkv, qk, qkRstd, attn, lse, xMid, rstd2, h2: UnsafeMutablePointer<Float>
    // qkv [T, (H+2Hkv)D] raw projection; qk [T, (H+Hkv)D] normed + rotated q and k; lse [T, H]
    var probs, gates: UnsafeMutablePointer<Float>         // [T, E] (softmax p or sigmoid s), [T, K]
    // MLA (empty otherwise): qa, qan [T, Rq], qaRstd [T], kva [T, Rkv+Dr], kvn [T, Rkv], kvRstd [T],
    // kvb [T, H·(Dn+Dv)], v [T, H·Dv]; the raw q [T, H·Dq] lives in qkv
    var qa, qan, qaRstd, kva, kvn, kvRstd, kvb, v: UnsafeMutablePointer<Float>
    var sgu, sact: UnsafeMutablePointer<Float>            // shared experts [T, 2Is], [T, Is]
    var gu, act, eo: UnsafeMutablePointer<Float>          // MoE [A, 2I], [A, I], [A, C]; dense [T, 2F], [T, F]
    var idx, perm, slot, offsets: UnsafeMutablePointer<Int32>  // [T, K], [A], [A], [E + 1]
}

final class Workspace {
    let rows: Int            // T capacity
    let savedLayers: Int     // L when activations are kept for backward, else 1 (reused by every layer)
    let maxKeys: Int         // longest key range one attention row may see
    let workers: Int
    let hasBackward: Bool
    /// Every layer's MLP activations (gate/up, SwiGLU output, expert outputs) share one buffer instead of
    /// one per layer; backward computes a layer's again before using them (long inputs).
    let mlpShared: Bool
    /// Every layer's normed + rotated q/k share one buffer (long inputs, GQA): backward computes a layer's
    /// again from its raw projection before its attention backward.
    let recomputesQK: Bool
    let floats: Buffer<Float>
    let ints: Buffer<Int32>

    var x: [UnsafeMutablePointer<Float>] = []   // residual stream: L+1 buffers [T, C] (2 when not saving)
    var layers: [LayerActs] = []
    var rstdF, hF, logits, lseRow: UnsafeMutablePointer<Float>     // [T], [T, C], [headRows, V], [T]
    /// Rows of logits held at once: all T up to `Workspace.headChunk(vocab:)`; past that the LM head runs
    /// in chunks of that many rows, and backward recomputes each chunk's logits instead of keeping [T, V].
    let headRows: Int
    var xg: UnsafeMutablePointer<Float>          // gathered expert inputs [A, C]
    var attnScratch: UnsafeMutablePointer<Float> // per worker [2, Bq, maxKeys], or the tiled attention's tiles
    /// Floats of `attnScratch` per worker.
    let attnStride: Int
    var linScratch: UnsafeMutablePointer<Float>  // per worker [tile, maxIn + maxOut]
    var rowScratch: UnsafeMutablePointer<Float>  // per worker [V]
    var routeScratch: UnsafeMutablePointer<Float> // [E + n_group] router selection scores
    var order: UnsafeMutablePointer<Int32>       // [E] experts by decreasing load
    var liveIdx: UnsafeMutablePointer<Int32>     // [T, K]
    // backward
    var dx, dh, dqkv, dqk, dattn, di: UnsafeMutablePointer<Float>
    var dProbs, dGates: UnsafeMutablePointer<Float>   // the MLP's gradients take its activations' place
    var dlogits, hFc, dhFc: UnsafeMutablePointer<Float>
    var dv: UnsafeMutablePointer<Float>          // MLA [T, H·Dv]
    var mla: MLAGrads                            // MLA projection gradients
    var gradRows: UnsafeMutablePointer<Int32>    // [T] rows kept for the LM-head backward

    static let blockRows = 64

    /// LM-head rows held at once for a vocabulary of V: 2^27 floats' worth (512 MB), 256 to 4,096 rows.
    /// Bench-m's 8 × 512 tokens fit whole; a 32K-token sequence runs in 8 chunks.
    static func headChunk(vocab V: Int) -> Int { min(4096, max(256, (1 << 27) / max(V, 1))) }

    init(config c: ModelConfig, rows T: Int, saveLayers: Bool, maxKeys: Int, workers: Int, backward: Bool, headChunk: Int? = nil,
         shareMLP: Bool = false) {
        rows = T; savedLayers = saveLayers ? c.numLayers : 1; self.maxKeys = maxKeys; self.workers = workers
        hasBackward = backward
        mlpShared = shareMLP && saveLayers
        headRows = max(1, min(T, headChunk ?? Workspace.headChunk(vocab: c.vocabSize)))
        let C = c.hiddenSize, D = c.headDim, H = c.numHeads, Hkv = c.kvHeads, V = c.vocabSize
        let QK = (H + Hkv) * D, HDv = H * c.valueDim
        let QKV = c.mla == nil ? (H + 2 * Hkv) * D : H * D   // raw projection row (MLA: q only)
        let E = max(c.numExperts, 1), K = max(c.topK, 1), I = c.moeIntermediateSize, F = c.intermediateSize
        let Is = c.sharedIntermediateSize
        let hasMoE = !c.moeLayers.isEmpty, hasDense = c.moeLayers.count < c.numLayers
        let A = hasMoE ? T * K : 0
        let guRows = max(hasMoE ? A * 2 * I : 0, hasDense ? T * 2 * F : 0, hasMoE ? T * 2 * Is : 0)
        let actRows = max(hasMoE ? A * I : 0, hasDense ? T * F : 0, hasMoE ? T * Is : 0)
        let (maxIn, maxOut) = Workspace.linearWidths(c)
        let m = c.mla.map { MLAShape(m: $0, H: H, C: C) }
        let Rq = m?.Rq ?? 0, R = m?.R ?? 0, KVA = m?.KVA ?? 0, KVBW = (m?.KVB ?? 0) * H, mlaV = m == nil ? 0 : HDv
        let sharedLayers = hasMoE && Is > 0

        var fp = ArenaPlan(), ip = ArenaPlan()
        let nx = saveLayers ? c.numLayers + 1 : 2
        let xOff = (0..<nx).map { _ in fp.take(T * C) }
        struct Off {
            var rstd1, h1, qkv, qk, qkRstd, attn, lse, xMid, rstd2, h2, probs, gates, gu, act, eo, idx, perm, slot, offsets: Int
            var qa, qan, qaRstd, kva, kvn, kvRstd, kvb, v, sgu, sact: Int
        }
        var offs: [Off] = []
        // Long inputs (mlpShared): the MLP's buffers of one layer (gate/up, SwiGLU output, expert outputs,
        // gathered inputs) form one region, and what is live only while they are dead shares it: the
        // normed + rotated q/k and attention's gradients (live from a layer's attention forward to its MLP,
        // and in backward from its attention part to the next layer's MLP), and the LM head's buffers
        // (after the last layer's forward, before the last layer's backward). The norms' outputs h1 and h2
        // are one buffer, computed again in backward where used; q/k (GQA) too.
        func al(_ n: Int) -> Int { (n + 15) & ~15 }
        let regionSize = al(guRows) + al(actRows) + 2 * al(A * C)
        let region = mlpShared ? fp.take(regionSize) : nil
        var cursor = 0
        func place(_ n: Int) -> Int {
            let n16 = (n + 15) & ~15
            guard let region, cursor + n16 <= regionSize else { return fp.take(n) }
            defer { cursor += n16 }
            return region + cursor
        }
        let sharedMLP = region.map { (gu: $0, act: $0 + al(guRows), eo: $0 + al(guRows) + al(actRows)) }
        let oXg = region.map { $0 + al(guRows) + al(actRows) + al(A * C) } ?? fp.take(A * C)
        let sharedH = mlpShared ? fp.take(T * C) : nil
        let sharedQK = mlpShared && m == nil ? place(T * QK) : nil
        recomputesQK = sharedQK != nil
        let b = backward ? 1 : 0
        let oDqkv = place(b * T * QKV), oDqk = place(b * T * QK), oDattn = place(b * T * HDv)
        cursor = 0
        let oLogits = place(headRows * V), oDlogits = place(b * headRows * V), oHFc = place(b * T * C), oDhFc = place(b * T * C)
        for _ in 0..<savedLayers {
            offs.append(Off(rstd1: fp.take(T), h1: sharedH ?? fp.take(T * C), qkv: fp.take(T * QKV), qk: sharedQK ?? fp.take(T * QK),
                            qkRstd: fp.take(c.qkNorm ? T * (H + Hkv) : 0), attn: fp.take(T * HDv), lse: fp.take(T * H),
                            xMid: fp.take(T * C), rstd2: fp.take(T), h2: sharedH ?? fp.take(T * C),
                            probs: fp.take(hasMoE ? T * E : 0), gates: fp.take(hasMoE ? T * K : 0),
                            gu: sharedMLP?.gu ?? fp.take(guRows), act: sharedMLP?.act ?? fp.take(actRows), eo: sharedMLP?.eo ?? fp.take(A * C),
                            idx: ip.take(A), perm: ip.take(A), slot: ip.take(A), offsets: ip.take(E + 1),
                            qa: fp.take(T * Rq), qan: fp.take(T * Rq), qaRstd: fp.take(Rq > 0 ? T : 0), kva: fp.take(T * KVA),
                            kvn: fp.take(T * R), kvRstd: fp.take(m == nil ? 0 : T), kvb: fp.take(T * KVBW), v: fp.take(T * mlaV),
                            sgu: fp.take(sharedLayers ? T * 2 * Is : 0), sact: fp.take(sharedLayers ? T * Is : 0)))
        }
        let oRstdF = fp.take(T), oHF = fp.take(T * C), oLse = fp.take(T)
        attnStride = max(2 * Workspace.blockRows * maxKeys, backward ? AttnTiles().scratchFloats : 0)
        let oAttn = fp.take(workers * attnStride)
        let oLin = fp.take(workers * GemmContext.tile * (maxIn + maxOut))
        let oRow = fp.take(workers * V)
        let oRoute = fp.take(E + max(c.nGroup, 1))
        let oOrder = ip.take(E), oLive = ip.take(hasMoE ? T * K : 0), oHeadRows = ip.take(T)
        let oDx = fp.take(b * T * C), oDh = fp.take(b * T * C), oDi = fp.take(b * T * H)
        let oDv = fp.take(b * T * mlaV), oDqan = fp.take(b * T * Rq), oDqa = fp.take(b * T * Rq), oDkvb = fp.take(b * T * KVBW)
        let oDkvn = fp.take(b * T * R), oDkva = fp.take(b * T * KVA)
        let oDProbs = fp.take(b * (hasMoE ? T * E : 0)), oDGates = fp.take(b * (hasMoE ? T * K : 0))

        floats = Buffer(count: fp.total)
        ints = Buffer(count: ip.total)
        let f = floats.base, i = ints.base
        x = xOff.map { f + $0 }
        layers = offs.map { o in
            LayerActs(rstd1: f + o.rstd1, h1: f + o.h1, qkv: f + o.qkv, qk: f + o.qk, qkRstd: f + o.qkRstd, attn: f + o.attn,
                      lse: f + o.lse, xMid: f + o.xMid, rstd2: f + o.rstd2, h2: f + o.h2, probs: f + o.probs, gates: f + o.gates,
                      qa: f + o.qa, qan: f + o.qan, qaRstd: f + o.qaRstd, kva: f + o.kva, kvn: f + o.kvn, kvRstd: f + o.kvRstd,
                      kvb: f + o.kvb, v: f + o.v, sgu: f + o.sgu, sact: f + o.sact,
                      gu: f + o.gu, act: f + o.act, eo: f + o.eo, idx: i + o.idx, perm: i + o.perm, slot: i + o.slot,
                      offsets: i + o.offsets)
        }
        routeScratch = f + oRoute
        dv = f + oDv
        mla = MLAGrads(dqan: f + oDqan, dqa: f + oDqa, dkvb: f + oDkvb, dkvn: f + oDkvn, dkva: f + oDkva)
        rstdF = f + oRstdF; hF = f + oHF; logits = f + oLogits; lseRow = f + oLse; xg = f + oXg
        attnScratch = f + oAttn; linScratch = f + oLin; rowScratch = f + oRow
        order = i + oOrder; liveIdx = i + oLive; gradRows = i + oHeadRows
        dx = f + oDx; dh = f + oDh; dqkv = f + oDqkv; dqk = f + oDqk; dattn = f + oDattn; di = f + oDi
        dProbs = f + oDProbs; dGates = f + oDGates
        dlogits = f + oDlogits; hFc = f + oHFc; dhFc = f + oDhFc
    }

    /// The residual stream entering layer l (its output is `residual(l + 1)`).
    @inline(__always) func residual(_ l: Int) -> UnsafeMutablePointer<Float> { savedLayers > 1 ? x[l] : x[l % 2] }
    @inline(__always) func acts(_ l: Int) -> LayerActs { savedLayers > 1 ? layers[l] : layers[0] }

    /// The widest input and output of any `linear` of this config (the batch-invariant kernel's scratch).
    static func linearWidths(_ c: ModelConfig) -> (maxIn: Int, maxOut: Int) {
        let H = c.numHeads, Is = c.sharedIntermediateSize
        var maxIn = max(c.hiddenSize, H * c.valueDim, c.moeIntermediateSize, c.intermediateSize, Is)
        var maxOut = max(c.vocabSize, (H + 2 * c.kvHeads) * c.headDim, 2 * c.moeIntermediateSize, 2 * c.intermediateSize,
                         c.hiddenSize, max(c.numExperts, 1), 2 * Is)
        if let m = c.mla {
            maxIn = max(maxIn, m.qLoraRank, m.kvLoraRank)
            maxOut = max(maxOut, m.qLoraRank, H * m.qkDim, m.kvLoraRank + m.ropeDim, H * (m.nopeDim + m.vDim))
        }
        return (maxIn, maxOut)
    }

    func linScratch(worker: Int, config c: ModelConfig) -> UnsafeMutablePointer<Float> {
        let (maxIn, maxOut) = Workspace.linearWidths(c)
        return linScratch + worker * GemmContext.tile * (maxIn + maxOut)
    }
}
