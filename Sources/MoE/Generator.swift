// Generator: batched KV-cache decoding with temperature / top-k / top-p sampling from a seed. It records
// the routes of every token that goes into the model (prompt + generated but the last: T−1 rows, as
// SGLang's return_routed_experts) and the log-prob of every sampled token.
import Routes

public struct SamplingParams: Sendable, Equatable {
    public var maxTokens: Int
    /// 0: greedy. Otherwise tokens are drawn from softmax(logits / temperature).
    public var temperature: Float
    /// Nucleus sampling: keep the smallest set of most likely tokens whose probability reaches topP (1: off).
    public var topP: Float
    /// Keep only the topK most likely tokens (0: off).
    public var topK: Int
    /// Sequence b draws from its own generator seeded by `seed + b`, so its samples do not depend on the batch.
    public var seed: UInt64
    /// Generation of a sequence stops after it samples one of these.
    public var stopTokens: [Int32]

    public init(maxTokens: Int = 64, temperature: Float = 1, topP: Float = 1, topK: Int = 0, seed: UInt64 = 0, stopTokens: [Int32] = []) {
        self.maxTokens = maxTokens; self.temperature = temperature; self.topP = topP; self.topK = topK
        self.seed = seed; self.stopTokens = stopTokens
    }

    public func validate(vocab: Int) throws {
        guard maxTokens >= 1 else { throw MoEError.input("max_tokens must be at least 1, got \(maxTokens)") }
        guard temperature >= 0, temperature.isFinite else { throw MoEError.input("temperature must be >= 0, got \(temperature)") }
        guard topP > 0, topP <= 1 else { throw MoEError.input("top_p must be in (0, 1], got \(topP)") }
        guard topK >= 0 else { throw MoEError.input("top_k must be >= 0, got \(topK)") }
        for t in stopTokens where t < 0 || Int(t) >= vocab { throw MoEError.input("stop token \(t) is outside [0, \(vocab))") }
    }
}

public struct Generation: Sendable {
    public var promptLength: Int
    /// Prompt followed by the generated tokens.
    public var tokens: [Int32]
    /// Per generated token: log softmax(logits / τ)[token] (τ = 1 when greedy), before top-k/top-p truncation.
    public var logprobs: [Float]
    /// Routes of every input token: [tokens.count − 1, moe_layers, K].
    public var routes: RouteArray
    /// "stop" (a stop token) or "length" (max_tokens).
    public var finishReason: String
    public var generated: ArraySlice<Int32> { tokens[promptLength...] }
}

/// Wall-clock split of the last `generate` call.
public struct GenerationTiming: Sendable {
    public var prefillSeconds = 0.0
    public var decodeSeconds = 0.0
    public var prefillTokens = 0
    public var decodeTokens = 0
}

extension Engine {
    public func generate(_ prompts: [[Int32]], sampling: SamplingParams) throws -> [Generation] {
        let c = config, V = c.vocabSize, C = c.hiddenSize, moeL = c.moeLayers.count, K = c.topK, RW = moeL * K
        try sampling.validate(vocab: V)
        guard !prompts.isEmpty, prompts.allSatisfy({ !$0.isEmpty }) else { throw MoEError.input("every prompt needs at least one token") }
        for (b, p) in prompts.enumerated() {
            for (i, t) in p.enumerated() where t < 0 || Int(t) >= V { throw MoEError.input("prompt \(b) token \(t) at \(i) is outside [0, \(V))") }
        }
        last = nil   // generation reuses the workspace: a pending backward is no longer possible
        let B = prompts.count
        let capacity = prompts.map(\.count).max()! + sampling.maxTokens
        let prefillT = prompts.reduce(0) { $0 + $1.count }
        let ws = prepare(T: max(prefillT, B), maxLen: capacity, training: false, maxKeys: capacity)
        let cache = KVCache(config: c, slots: B, capacity: capacity)
        var rngs = (0..<B).map { SeededRandom(seed: sampling.seed &+ UInt64($0)) }
        var out = try prompts.enumerated().map { b, p in
            Generation(promptLength: p.count, tokens: p, logprobs: [], routes: try RouteArray(rows: 0, layers: moeL, topK: K, ids: []), finishReason: "length")
        }
        for b in 0..<B { out[b].routes.ids.reserveCapacity((capacity - 1) * RW) }
        var routes = [Int32](repeating: 0, count: max(prefillT, B) * RW)
        var live = routes
        var gates = [Float](repeating: 0, count: max(prefillT, B) * RW)
        let sampler = Sampler(vocab: V)
        var tokens = [Int32](repeating: 0, count: max(prefillT, B))
        var active = Array(0..<B)

        // One model step over the spans in `self.spans`; samples the next token of each active sequence.
        func step(T: Int, lastRows: ArraySlice<Int>) {
            tokens.withUnsafeBufferPointer { tk in
                routes.withUnsafeMutableBufferPointer { r in
                    live.withUnsafeMutableBufferPointer { lv in
                        gates.withUnsafeMutableBufferPointer { g in
                            _ = layers(tokens: tk.baseAddress!, T: T, ws: ws, save: false, cache: cache, forced: nil,
                                       routesOut: r.baseAddress!, liveOut: lv.baseAddress!, gatesOut: g.baseAddress!)
                        }
                    }
                }
            }
            for span in spans {
                let b = span.slot
                out[b].routes.ids += routes[(span.row * RW)..<((span.row + span.count) * RW)]
                out[b].routes.rows += span.count
                cache.lengths[b] = span.pos0 + span.count
            }
            finalNorm(ws: ws, T: T)
            for (i, r) in lastRows.enumerated() where i != r { (ws.hF + i * C).update(from: ws.hF + r * C, count: C) }   // i < r
            var i0 = 0   // the LM head ws.headRows sequences at a time
            while i0 < active.count {
                let n = min(ws.headRows, active.count - i0)
                ctx.linear(n, V, C, ws.hF + i0 * C, C, model.params.base + model.layout.lmHead, 0, ws.logits, V,
                           scratch: ws.linScratch(worker: 0, config: c))
                for i in i0..<(i0 + n) {
                    let b = active[i]
                    let (tok, lp) = sampler.sample(ws.logits + (i - i0) * V, params: sampling, rng: &rngs[b])
                    out[b].tokens.append(tok)
                    out[b].logprobs.append(lp)
                    if sampling.stopTokens.contains(tok) { out[b].finishReason = "stop" }
                }
                i0 += n
            }
        }

        // prefill
        spans.removeAll(keepingCapacity: true)
        var row = 0
        var lastRows: [Int] = []
        let identity = Array(0..<B)
        for (b, p) in prompts.enumerated() {
            for (i, t) in p.enumerated() { tokens[row + i] = t }
            spans.append(AttnSpan(row: row, count: p.count, pos0: 0, k: ws.hF, v: ws.hF, ldk: 0, ldv: 0, slot: b))
            row += p.count
            lastRows.append(row - 1)
        }
        var clock = ContinuousClock.now
        step(T: prefillT, lastRows: lastRows[...])
        lastTiming = GenerationTiming(prefillSeconds: seconds(since: clock), prefillTokens: prefillT)
        clock = ContinuousClock.now
        // decode
        while true {
            active.removeAll { out[$0].finishReason == "stop" || out[$0].tokens.count - out[$0].promptLength >= sampling.maxTokens }
            if active.isEmpty { break }
            spans.removeAll(keepingCapacity: true)
            for (i, b) in active.enumerated() {
                tokens[i] = out[b].tokens.last!
                spans.append(AttnSpan(row: i, count: 1, pos0: out[b].tokens.count - 1, k: ws.hF, v: ws.hF, ldk: 0, ldv: 0, slot: b))
            }
            lastTiming.decodeTokens += active.count
            step(T: active.count, lastRows: identity[0..<active.count])
        }
        lastTiming.decodeSeconds = seconds(since: clock)
        return out
    }
}

/// Sampler: turns one row of logits into a token and its log-prob; buffers are sized once per vocab.
struct Sampler {
    let probs: Buffer<Float>
    let order: Buffer<Int32>

    init(vocab: Int) { probs = Buffer(count: vocab); order = Buffer(count: vocab) }

    func sample(_ logits: UnsafePointer<Float>, params: SamplingParams, rng: inout SeededRandom) -> (Int32, Float) {
        let V = probs.count
        let greedy = params.temperature == 0
        let invT: Float = greedy ? 1 : 1 / params.temperature
        do {
            let p = probs.base
            p.update(from: logits, count: V)
            let lse = softmaxRow(p, V, scale: invT)
            var tok = 0
            if greedy {
                for v in 1..<V where logits[v] > logits[tok] { tok = v }
            } else if params.topK == 0 && params.topP >= 1 {
                let u = Float(rng.uniform())
                var acc: Float = 0
                tok = V - 1
                for v in 0..<V { acc += p[v]; if u < acc { tok = v; break } }
            } else {
                tok = truncatedDraw(p, V: V, params: params, rng: &rng)
            }
            return (Int32(tok), logits[tok] * invT - lse)
        }
    }

    /// Draws from the top-k / nucleus-truncated distribution (renormalised).
    private func truncatedDraw(_ p: UnsafeMutablePointer<Float>, V: Int, params: SamplingParams, rng: inout SeededRandom) -> Int {
        for v in 0..<V { order[v] = Int32(v) }
        var ob = order.buffer
        ob.sort { (a: Int32, b: Int32) -> Bool in
            let pa = p[Int(a)], pb = p[Int(b)]
            return pa > pb || (pa == pb && a < b)
        }
        var keep = params.topK > 0 ? min(params.topK, V) : V
        if params.topP < 1 {
            var acc: Float = 0
            for i in 0..<keep {
                acc += p[Int(order[i])]
                if acc >= params.topP { keep = i + 1; break }
            }
        }
        var total: Float = 0
        for i in 0..<keep { total += p[Int(order[i])] }
        let u = Float(rng.uniform()) * total
        var acc: Float = 0
        for i in 0..<keep { acc += p[Int(order[i])]; if u < acc { return Int(order[i]) } }
        return Int(order[keep - 1])
    }
}

extension Duration {
    /// The duration in seconds.
    public var inSeconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}

/// Seconds elapsed since `t`.
public func seconds(since t: ContinuousClock.Instant) -> Double { (ContinuousClock.now - t).inSeconds }
