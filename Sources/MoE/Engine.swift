// Engine: the forward and backward passes of every family, top-down, over packed variable-length
// sequences. Routing is data: every forward takes `.live` or `.replay(tables)` and returns the routes it used.
//
//   x = embed[ids]
//   per layer: x += o(attn(q, k, v))   GQA: q, k, v = rope(qk_norm(qkv(rmsnorm(x)) + bias)); MLA: MLA.swift
//              x += moe_or_mlp(rmsnorm(x))   (MoE: routed experts + shared experts)
//   logits = rmsnorm(x) · W_lmᵀ
import Foundation
import Routes

public struct ForwardOptions: Sendable {
    /// Packed target ids, one per token (-1: none). Default: the next token of the same sequence.
    public var targets: [Int32]? = nil
    /// Log-probs and entropy are of softmax(logits / temperature).
    public var temperature: Float = 1
    /// Return the full logits [T, V].
    public var keepLogits = false
    /// Keep every layer's activations so that `backward` can run.
    public var training = false
    /// Return the per-token entropy.
    public var entropy = false
    /// Coefficient of the load-balancing loss added to the loss whose gradient `backward` computes (HF's
    /// router_aux_loss_coef; softmax routers only). The loss itself is always reported in `auxLoss`.
    public var auxLossCoef: Float = 0
    /// Return the router logits [T, moe_layers, E].
    public var routerLogits = false
    public init(targets: [Int32]? = nil, temperature: Float = 1, keepLogits: Bool = false, training: Bool = false, entropy: Bool = false,
                auxLossCoef: Float = 0, routerLogits: Bool = false) {
        self.targets = targets; self.temperature = temperature; self.keepLogits = keepLogits
        self.training = training; self.entropy = entropy; self.auxLossCoef = auxLossCoef; self.routerLogits = routerLogits
    }
}

public struct ForwardResult: Sendable {
    public var sequenceLengths: [Int]
    /// [T]: log p(target) at each token row (NaN where there is no target).
    public var logprobs: [Float]
    /// [T] when requested, else empty.
    public var entropy: [Float]
    /// [T, V] when requested, else empty.
    public var logits: [Float]
    /// The experts used, [T, moe_layers, K] (descending router probability when live).
    public var routes: RouteArray
    /// The experts the live router picks, whatever was used (equal to `routes` under live routing).
    public var liveRoutes: RouteArray
    /// Gate weights used, [T, moe_layers, K].
    public var gates: [Float]
    /// Replay rows (token, layer) that were all -1 and fell back to the live router.
    public var replayFallbackRows: Int
    /// HF's load-balancing loss over every MoE layer and row (NaN for sigmoid routers or no MoE layer).
    public var auxLoss: Double = .nan
    /// [T, moe_layers, E] when requested, else empty.
    public var routerLogits: [Float] = []

    /// Row range of sequence s in the packed arrays.
    public func rows(ofSequence s: Int) -> Range<Int> {
        let start = sequenceLengths[..<s].reduce(0, +)
        return start..<(start + sequenceLengths[s])
    }
}

public final class Engine {
    public let config: ModelConfig
    public let numerics: Numerics
    public let workers: Int
    /// The weights this engine computes with. In bf16 mode a private copy rounded to bf16.
    public private(set) var model: Model
    /// Gradients, in the parameter layout (allocated by the first training forward).
    public internal(set) var grads: Buffer<Float>?
    /// Timing of the last `generate`.
    public internal(set) var lastTiming = GenerationTiming()

    let s: AttnShape
    let mlaShape: MLAShape?
    let rope: RopeTable
    var ws: Workspace?
    var spans: [AttnSpan] = []
    // state of the last training forward, for backward
    var last: (T: Int, tokens: [Int32], targets: [Int32], temperature: Float, lengths: [Int])?
    /// Load-balancing statistics of the last forward: per expert, assignments and summed router
    /// probabilities over every MoE layer and row; and the aux loss gradient per probability (empty: none).
    var auxCounts: [Double] = [], auxProbSum: [Double] = []
    var auxGrad: [Float] = []
    var routerLogitsBuffer: Buffer<Float>?
    /// bf16 engines: the weights again as bf16 bits, read by linear layers of few rows (decode).
    var bf16Bits: Buffer<UInt16>?
    var bf16Twin: BF16Weights?
    /// Tests switch the twin off to compare with the fp32-weight path.
    var useBF16Twin = true
    /// LM-head rows held at once (nil: `Workspace.headChunk(vocab:)`); tests make it small.
    var headChunkRows: Int? = nil
    /// Training inputs of more rows than this keep one layer's MLP activations, not every layer's, and
    /// backward computes each layer's again (about a third more expert work; 670 MB less per layer at
    /// 32K tokens of bench-m). Tests set 0.
    var recomputeMLPAbove = 8192
    /// fp32 training inputs whose longest sequence has more tokens than this run attention in tiles
    /// (`attentionForwardTiled` / `attentionBackwardTiled`); shorter ones keep the one-pass kernels and
    /// their bits. Tests set 0.
    var tiledAttentionAbove = 2048
    /// The tiled attention's tile sizes (tests make them small, so that sequences cross many tiles).
    var attnTiles = AttnTiles()

    /// Whether this pass's attention runs tiled: fp32 training without a KV cache, on long sequences.
    func tiledAttention(ws: Workspace, cache: KVCache?) -> Bool {
        cache == nil && ws.hasBackward && !bf16 && !numerics.batchInvariant && attnTiles.scratchFloats <= ws.attnStride
            && spans.contains { $0.count > tiledAttentionAbove }
    }

    /// `workers` threads share the work (default: every core); OpenBLAS is set single-threaded.
    public init(model: Model, numerics: Numerics = .fp32, workers: Int = ProcessInfo.processInfo.activeProcessorCount) {
        BLASThreads.useSingleThreadedBLAS()
        config = model.config
        self.numerics = numerics
        self.workers = max(1, workers)
        self.model = model
        s = AttnShape(H: config.numHeads, Hkv: config.kvHeads, D: config.headDim, Dv: config.valueDim, scale: config.softmaxScale)
        let c = model.config
        mlaShape = c.mla.map { MLAShape(m: $0, H: c.numHeads, C: c.hiddenSize) }
        let freqs = c.ropeFrequencies
        rope = RopeTable(inverseFrequencies: freqs.inverse, cosSinFactor: freqs.cosSinFactor)
        if numerics.precision != .fp32 { syncWeights(from: model) }
    }

    /// Takes new weights (e.g. the training policy after an optimiser step); bf16 engines round a copy.
    public func syncWeights(from source: Model) {
        precondition(source.config == config)
        if numerics.precision != .fp32 {
            if model === source { model = source.clone() } else { model.params.copy(from: source.params) }
            BF16.roundInPlace(model.params.base, model.params.count)
            if numerics.precision == .fp8 {   // the linear layers' matrices: e4m3 with a scale per output row
                for slot in model.layout.tensors where slot.role == .matrix && slot.shape.count == 2 && !Engine.keptBF16(slot.name) {
                    FP8.quantizeRows(model.params.base + slot.offset, rows: slot.shape[0], cols: slot.shape[1])
                }
            } else {   // bf16: every value is a bf16, so the twin holds them exactly in half the bytes
                if bf16Bits?.count != model.params.count { bf16Bits = Buffer(count: model.params.count, zero: false) }
                bf16Twin = BF16Weights(fp32: model.params.base, count: model.params.count, into: bf16Bits!.base)
            }
        } else {
            model = source
        }
    }

    var ctx: GemmContext { GemmContext(workers: workers, batchInvariant: numerics.batchInvariant, bf16: useBF16Twin ? bf16Twin : nil) }
    /// bf16 rounding of what FP8 serving keeps in 16 bits too (attention, router input, LM head input).
    var bf16: Bool { numerics.precision != .fp32 }
    /// Rounding of a linear layer's input.
    var linearInput: InputRounding { InputRounding(precision: numerics.precision) }

    /// Matrices an FP8 deployment keeps in bf16: embeddings, LM head and routers.
    static func keptBF16(_ name: String) -> Bool {
        name == "model.embed_tokens.weight" || name == "lm_head.weight" || name.hasSuffix(".gate.weight")
    }

    public func zeroGrad() { grads?.zero() }

    // MARK: forward

    public func forward(_ sequences: [[Int32]], routing: Routing = .live, options: ForwardOptions = ForwardOptions()) throws -> ForwardResult {
        let lengths = sequences.map(\.count)
        guard !sequences.isEmpty, lengths.allSatisfy({ $0 > 0 }) else { throw MoEError.input("every sequence needs at least one token") }
        let tokens = sequences.flatMap { $0 }
        let T = tokens.count, V = config.vocabSize
        for (i, t) in tokens.enumerated() where t < 0 || Int(t) >= V {
            throw MoEError.input("token id \(t) at packed position \(i) is outside [0, \(V))")
        }
        var targets: [Int32]
        if let given = options.targets {
            guard given.count == T else { throw MoEError.input("\(given.count) targets for \(T) tokens") }
            for (i, t) in given.enumerated() where t < -1 || Int(t) >= V {
                throw MoEError.input("target id \(t) at packed position \(i) is outside [-1, \(V))")
            }
            targets = given
        } else {
            targets = []
            targets.reserveCapacity(T)
            for seq in sequences { targets += seq.dropFirst(); targets.append(-1) }
        }
        guard options.temperature > 0, options.temperature.isFinite else { throw MoEError.input("temperature must be positive") }
        guard options.auxLossCoef >= 0, options.auxLossCoef.isFinite else { throw MoEError.input("aux loss coefficient must be >= 0") }
        if options.auxLossCoef > 0 && config.router != .softmax {
            throw MoEError.input("the load-balancing aux loss applies to softmax routers (qwen3_moe, mixtral); \(config.family.rawValue) balances its experts with e_score_correction_bias")
        }
        let moeL = config.moeLayers.count, K = config.topK
        var forced: [Int32]? = nil
        if case let .replay(tables) = routing {
            guard tables.count == sequences.count else {
                throw MoEError.routes("\(tables.count) route tables for \(sequences.count) sequences")
            }
            // -2 marks the row a T−1 table does not have (the last token's): routed live, not a fallback.
            var packed = [Int32](repeating: -2, count: T * moeL * K)
            var row = 0
            for (sIdx, table) in tables.enumerated() {
                do { try table.validate(tokens: lengths[sIdx], moeLayers: moeL, topK: K, experts: config.numExperts) } catch let MoEError.routes(msg) {
                    throw MoEError.routes(tables.count > 1 ? "sequence \(sIdx): \(msg)" : msg)
                }
                for i in 0..<table.ids.count { packed[row * moeL * K + i] = table.ids[i] }
                row += lengths[sIdx]
            }
            forced = packed
        }
        let ws = prepare(T: T, maxLen: lengths.max()!, training: options.training)
        setSpansPacked(lengths: lengths)
        var routes = [Int32](repeating: -1, count: T * moeL * K)
        var live = routes
        var gates = [Float](repeating: 0, count: T * moeL * K)
        let logitsCount = T * moeL * config.numExperts
        if options.routerLogits && (routerLogitsBuffer?.count ?? 0) < logitsCount { routerLogitsBuffer = Buffer(count: logitsCount) }
        let logitsOut = options.routerLogits ? routerLogitsBuffer?.base : nil
        let fallbacks = tokens.withUnsafeBufferPointer { tok in
            routes.withUnsafeMutableBufferPointer { r in
                live.withUnsafeMutableBufferPointer { lv in
                    gates.withUnsafeMutableBufferPointer { g in
                        if let forced {
                            return forced.withUnsafeBufferPointer { f in
                                layers(tokens: tok.baseAddress!, T: T, ws: ws, save: options.training, cache: nil,
                                       forced: f.baseAddress, routesOut: r.baseAddress!, liveOut: lv.baseAddress!, gatesOut: g.baseAddress!,
                                       routerLogitsOut: logitsOut)
                            }
                        }
                        return layers(tokens: tok.baseAddress!, T: T, ws: ws, save: options.training, cache: nil,
                                      forced: nil, routesOut: r.baseAddress!, liveOut: lv.baseAddress!, gatesOut: g.baseAddress!,
                                      routerLogitsOut: logitsOut)
                    }
                }
            }
        }
        // LM head over every row, in chunks of ws.headRows rows (one chunk up to that many)
        finalNorm(ws: ws, T: T)
        var logp = [Float](repeating: .nan, count: T)
        var entropy = [Float](repeating: .nan, count: options.entropy ? T : 0)
        var keptLogits = [Float](repeating: 0, count: options.keepLogits ? T * V : 0)
        let C = config.hiddenSize, lmHead = model.params.base + model.layout.lmHead
        targets.withUnsafeBufferPointer { tg in
            logp.withUnsafeMutableBufferPointer { lp in
                entropy.withUnsafeMutableBufferPointer { en in
                    var r0 = 0
                    while r0 < T {
                        let n = min(ws.headRows, T - r0)
                        ctx.linear(n, V, C, ws.hF + r0 * C, C, lmHead, 0, ws.logits, V, scratch: ws.linScratch(worker: 0, config: config))
                        headForward(logits: ws.logits, rows: n, V: V, targets: tg.baseAddress! + r0, temperature: options.temperature,
                                    logp: lp.baseAddress! + r0, entropy: options.entropy ? en.baseAddress! + r0 : nil, lse: ws.lseRow + r0,
                                    scratch: ws.rowScratch, workers: workers)
                        if options.keepLogits { for i in 0..<(n * V) { keptLogits[r0 * V + i] = ws.logits[i] } }
                        r0 += n
                    }
                }
            }
        }
        if options.training { last = (T, tokens, targets, options.temperature, lengths) } else { last = nil }
        // HF's load_balancing_loss_func over the concatenated MoE layers: E · Σ_e f_e · P_e with f_e the share of
        // the L·T rows' K choices that went to e and P_e the mean router probability (the experts used: under
        // replay, the replayed ones). Its gradient reaches the router through P only.
        var auxLoss = Double.nan
        auxGrad = []
        if config.router == .softmax && moeL > 0 {
            let E = config.numExperts, rows = Double(T * moeL)
            auxLoss = Double(E) * (0..<E).reduce(0.0) { $0 + (auxCounts[$1] / rows) * (auxProbSum[$1] / rows) }
            if options.training && options.auxLossCoef > 0 {
                auxGrad = (0..<E).map { Float(Double(options.auxLossCoef) * Double(E) * (auxCounts[$0] / rows) / rows) }
            }
        }
        return ForwardResult(
            sequenceLengths: lengths, logprobs: logp, entropy: entropy,
            logits: keptLogits,
            routes: try RouteArray(rows: T, layers: moeL, topK: K, ids: routes),
            liveRoutes: try RouteArray(rows: T, layers: moeL, topK: K, ids: live),
            gates: gates, replayFallbackRows: fallbacks, auxLoss: auxLoss,
            routerLogits: options.routerLogits ? Array(UnsafeBufferPointer(start: routerLogitsBuffer!.base, count: logitsCount)) : [])
    }

    /// Sizes the workspace for T rows (kept while large enough) and the rotary table.
    func prepare(T: Int, maxLen: Int, training: Bool, maxKeys: Int? = nil) -> Workspace {
        let keys = maxKeys ?? maxLen
        rope.reserve(keys)
        let saved = training ? config.numLayers : 1
        let chunk = headChunkRows ?? Workspace.headChunk(vocab: config.vocabSize)
        if let ws, ws.rows >= T, ws.savedLayers == saved, ws.maxKeys >= keys, ws.hasBackward || !training, ws.headRows == min(ws.rows, chunk),
           ws.mlpShared == (training && ws.rows > recomputeMLPAbove) {
            return ws
        }
        let rows = max(T, ws?.rows ?? 0)
        let next = Workspace(config: config, rows: rows, saveLayers: training, maxKeys: max(keys, ws?.maxKeys ?? 0),
                             workers: workers, backward: training, headChunk: chunk, shareMLP: rows > recomputeMLPAbove)
        ws = next
        return next
    }

    /// Spans of a packed batch whose keys are its own rows (no cache); key pointers are set per layer.
    func setSpansPacked(lengths: [Int]) {
        spans.removeAll(keepingCapacity: true)
        var row = 0
        let dummy = UnsafeMutablePointer<Float>(bitPattern: 64)!
        for n in lengths {
            spans.append(AttnSpan(row: row, count: n, pos0: 0, k: dummy, v: dummy, ldk: 0, ldv: 0))
            row += n
        }
    }

    /// Embedding and every decoder layer. Returns the count of replay fallback rows.
    func layers(tokens: UnsafePointer<Int32>, T: Int, ws: Workspace, save: Bool, cache: KVCache?,
                forced: UnsafePointer<Int32>?, routesOut: UnsafeMutablePointer<Int32>, liveOut: UnsafeMutablePointer<Int32>,
                gatesOut: UnsafeMutablePointer<Float>, routerLogitsOut: UnsafeMutablePointer<Float>? = nil) -> Int {
        let c = config, C = c.hiddenSize, W = model.params.base, lay = model.layout
        let moeL = c.moeLayers.count, K = c.topK
        let x0 = ws.residual(0)
        for t in 0..<T { (x0 + t * C).update(from: W + lay.embed + Int(tokens[t]) * C, count: C) }
        var fallbacks = 0
        var moeIndex = 0
        let scratch0 = ws.linScratch(worker: 0, config: c)
        let E = c.numExperts
        if auxCounts.count != E { auxCounts = Array(repeating: 0, count: E); auxProbSum = auxCounts }
        for e in 0..<E { auxCounts[e] = 0; auxProbSum[e] = 0 }
        for l in 0..<c.numLayers {
            let p = lay.layers[l], a = ws.acts(l)
            let xIn = ws.residual(l), xOut = ws.residual(l + 1)
            // attention
            rmsnormForward(xIn, ldx: C, W + p.inputNorm, a.h1, ldy: C, rstd: a.rstd1, rows: T, n: C, eps: c.rmsNormEps)
            linearInput(a.h1, rows: T, cols: C)
            if let ms = mlaShape {
                mlaForward(s, ms, spans: spans, ctx: ctx, W: W, p: p, a: a, T: T, rope: rope, bf16: bf16, input: linearInput, scratch: scratch0)
            } else {
                ctx.linear(T, s.QKV, C, a.h1, C, W + p.qkv, 0, a.qkv, s.QKV, scratch: scratch0)
                if p.qkvBias >= 0 { for t in 0..<T { axpy(1, W + p.qkvBias, a.qkv + t * s.QKV, s.QKV) } }
                qkNormRopeForward(s, spans: spans, qkv: a.qkv, qk: a.qk, rstd: a.qkRstd, qNorm: p.qNorm >= 0 ? W + p.qNorm : nil,
                                  kNorm: p.kNorm >= 0 ? W + p.kNorm : nil, rope: rope, eps: c.rmsNormEps)
                if bf16 {
                    BF16.roundInPlace(a.qk, T * s.QK)
                    BF16.roundInPlace(a.qkv + s.QK, rows: T, cols: s.Hkv * s.D, ld: s.QKV)
                }
            }
            let (vBase, ldv) = values(a)
            for i in spans.indices {
                if let cache {
                    spans[i].k = cache.keys(layer: l, slot: spans[i].slot); spans[i].ldk = cache.kWidth
                    spans[i].v = cache.values(layer: l, slot: spans[i].slot); spans[i].ldv = cache.vWidth
                } else {
                    spans[i].k = a.qk + spans[i].row * s.QK + s.HD; spans[i].ldk = s.QK
                    spans[i].v = vBase + spans[i].row * ldv; spans[i].ldv = ldv
                }
            }
            cache?.store(layer: l, spans: spans, k: a.qk + s.HD, ldk: s.QK, v: vBase, ldv: ldv)
            if tiledAttention(ws: ws, cache: cache) {
                attentionForwardTiled(s, spans: spans, q: a.qk, ldq: s.QK, out: a.attn, lse: a.lse, tiles: attnTiles,
                                      scratch: ws.attnScratch, scratchStride: ws.attnStride, workers: workers)
            } else {
                attentionForward(s, spans: spans, q: a.qk, ldq: s.QK, out: a.attn, lse: a.lse, scratch: ws.attnScratch,
                                 scratchStride: ws.attnStride, workers: workers, bf16: bf16,
                                 gemvDecode: !numerics.batchInvariant)
            }
            linearInput(a.attn, rows: T, cols: s.HDv)
            a.xMid.update(from: xIn, count: T * C)
            ctx.linear(T, C, s.HDv, a.attn, s.HDv, W + p.o, 1, a.xMid, C, scratch: scratch0)
            // MLP
            rmsnormForward(a.xMid, ldx: C, W + p.postNorm, a.h2, ldy: C, rstd: a.rstd2, rows: T, n: C, eps: c.rmsNormEps)
            if bf16 { BF16.roundInPlace(a.h2, T * C) }
            xOut.update(from: a.xMid, count: T * C)
            if p.isMoE {
                let m = moeShape(T: T, p: p)
                ctx.linear(T, m.E, C, a.h2, C, W + p.router, 0, a.probs, m.E, scratch: scratch0)
                if let out = routerLogitsOut {
                    for t in 0..<T { (out + (t * moeL + moeIndex) * E).update(from: a.probs + t * E, count: E) }
                }
                fallbacks += routeForward(m, probs: a.probs, idx: a.idx, gates: a.gates, liveIdx: ws.liveIdx,
                                          forced: forced.map { $0 + moeIndex * K }, forcedStride: moeL * K, scratch: ws.routeScratch)
                if numerics.precision == .fp8 { linearInput(a.h2, rows: T, cols: C) }   // the router saw bf16; the experts take e4m3
                if m.router == .softmax {
                    for i in 0..<(T * K) { auxCounts[Int(a.idx[i])] += 1 }
                    for t in 0..<T { for e in 0..<E { auxProbSum[e] += Double(a.probs[t * E + e]) } }
                }
                groupByExpert(m, idx: a.idx, perm: a.perm, slot: a.slot, offsets: a.offsets, order: ws.order)
                for r in 0..<m.A { (ws.xg + r * C).update(from: a.h2 + (Int(a.perm[r]) / K) * C, count: C) }
                expertsForward(m, ctx: ctx, xg: ws.xg, gateUp: W + p.gateUp, down: W + p.down, offsets: a.offsets,
                               order: ws.order, gu: a.gu, act: a.act, eo: a.eo, input: linearInput,
                               scratch: { ws.linScratch(worker: $0, config: c) })
                combineExperts(m, gates: a.gates, slot: a.slot, eo: a.eo, y: xOut, workers: workers)
                if p.sharedGateUp >= 0 {   // shared experts: ungated, unscaled
                    let Is = c.sharedIntermediateSize
                    ctx.linear(T, 2 * Is, C, a.h2, C, W + p.sharedGateUp, 0, a.sgu, 2 * Is, scratch: scratch0)
                    swigluForward(a.sgu, a.sact, rows: T, I: Is)
                    linearInput(a.sact, rows: T, cols: Is)
                    ctx.linear(T, C, Is, a.sact, Is, W + p.sharedDown, 1, xOut, C, scratch: scratch0)
                }
                for t in 0..<T {
                    let o = (t * moeL + moeIndex) * K
                    for j in 0..<K {
                        routesOut[o + j] = a.idx[t * K + j]; liveOut[o + j] = ws.liveIdx[t * K + j]
                        gatesOut[o + j] = a.gates[t * K + j]
                    }
                }
                moeIndex += 1
            } else {
                let F = c.intermediateSize
                if numerics.precision == .fp8 { linearInput(a.h2, rows: T, cols: C) }
                ctx.linear(T, 2 * F, C, a.h2, C, W + p.gateUp, 0, a.gu, 2 * F, scratch: scratch0)
                swigluForward(a.gu, a.act, rows: T, I: F)
                linearInput(a.act, rows: T, cols: F)
                ctx.linear(T, C, F, a.act, F, W + p.down, 1, xOut, C, scratch: scratch0)
            }
        }
        return fallbacks
    }

    /// Where a layer's attention values live: GQA in the raw projection after q and k, MLA in its own buffer.
    func values(_ a: LayerActs) -> (UnsafeMutablePointer<Float>, Int) {
        mlaShape == nil ? (a.qkv + s.QK, s.QKV) : (a.v, s.HDv)
    }

    /// The MoE block's shape and router of layer `p` for T rows.
    func moeShape(T: Int, p: LayerParams) -> MoEShape {
        let c = config
        return MoEShape(T: T, C: c.hiddenSize, E: c.numExperts, K: c.topK, I: c.moeIntermediateSize, norm: c.normTopKProb,
                        router: c.router, nGroup: c.nGroup, topkGroup: c.topkGroup, scale: c.routedScalingFactor,
                        bias: p.routerBias >= 0 ? UnsafePointer(model.params.base + p.routerBias) : nil)
    }

    func finalNorm(ws: Workspace, T: Int) {
        let C = config.hiddenSize
        rmsnormForward(ws.residual(config.numLayers), ldx: C, model.params.base + model.layout.finalNorm, ws.hF, ldy: C,
                       rstd: ws.rstdF, rows: T, n: C, eps: config.rmsNormEps)
        if bf16 { BF16.roundInPlace(ws.hF, T * C) }
    }
}
