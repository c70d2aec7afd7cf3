// Policy: a model being trained, with its fp32 training engine, its inference engine (bf16 by default:
// the train/infer mismatch R3 removes), and AdamW. One RL optimisation is `optimise(samples)`:
//   mini-step 0's forward is the old-policy forward (π_old): it gives the mismatch metrics and, under R2,
//   the routes replayed in later mini-steps; each mini-step then takes one clipped-surrogate step.
import Foundation
import MoE
import Routes

public struct OptimConfig: Sendable {
    public var loss = LossConfig()
    public var replay: ReplayMode = .R3
    public var miniSteps = 1
    public var maxGradNorm = 1.0
    /// Softmax temperature of sampling and of the training log-probs.
    public var temperature: Float = 1
    /// Coefficient of the load-balancing aux loss (HF's router_aux_loss_coef; softmax routers).
    public var auxLossCoef: Float = 0
    public init() {}
}

public final class Policy {
    public let model: Model
    public let optimizer: AdamW
    let train: Engine
    let infer: Engine
    let workers: Int
    private var inferStale = false

    /// `workers` compute threads per engine (BLAS runs single-threaded inside each).
    public init(model: Model, learningRate: Float, weightDecay: Float = 0, inference: Numerics = .bf16, workers: Int) {
        self.model = model
        self.workers = max(1, workers)
        train = Engine(model: model, numerics: .fp32, workers: self.workers)
        infer = Engine(model: model, numerics: inference, workers: self.workers)
        optimizer = AdamW(layout: model.layout, config: AdamWConfig(learningRate: learningRate, weightDecay: weightDecay))
    }

    public var config: ModelConfig { model.config }
    public var inferenceNumerics: Numerics { infer.numerics }

    /// Samples with the inference engine (weights synced from the training policy first when they changed).
    public func generate(_ prompts: [[Int32]], sampling: SamplingParams) throws -> [Generation] {
        if inferStale { infer.syncWeights(from: model); inferStale = false }
        return try infer.generate(prompts, sampling: sampling)
    }

    /// Response rows of each packed sequence: row t predicts token t + 1.
    static func responseRows(_ samples: [Sample]) -> (segments: [Range<Int>], offsets: [Int]) {
        var segs: [Range<Int>] = [], offs: [Int] = []
        var off = 0
        for s in samples {
            offs.append(off)
            segs.append((off + max(s.promptLength, 1) - 1)..<(off + s.tokens.count - 1))
            off += s.tokens.count
        }
        return (segs, offs)
    }

    /// One RL optimisation over `samples` (`miniSteps` AdamW steps). Returns the step's metrics.
    public func optimise(_ samples: [Sample], _ c: OptimConfig) throws -> [String: Double] {
        guard !samples.isEmpty else { throw RLError.invalid("no samples to train on") }
        guard c.miniSteps >= 1 else { throw RLError.invalid("mini_steps must be at least 1") }
        try check(samples)
        let K = config.topK
        let seqs = samples.map(\.tokens)
        let (segments, offsets) = Policy.responseRows(samples)
        let T = seqs.reduce(0) { $0 + $1.count }
        let (inferLP, recorded, recordedRows, tables) = try packInference(samples, offsets: offsets, tokens: T)
        let advantages = PolicyLoss.advantages(rewards: samples.map(\.reward), groups: samples.map(\.group))

        var m: [String: Double] = [:]
        var old: [Float] = []
        var r2: [RouteArray] = []
        var gradNorms: [Double] = [], clipFracs: [Double] = [], agreements: [Double] = [], losses: [Double] = []
        for step in 0..<c.miniSteps {
            let routing: Routing
            switch c.replay {
            case .none: routing = .live
            case .R3: routing = .replay(tables)
            case .R2: routing = step == 0 ? .live : .replay(r2)
            }
            let f = try train.forward(seqs, routing: routing, options: ForwardOptions(temperature: c.temperature, training: true, entropy: step == 0,
                                                                                     auxLossCoef: c.auxLossCoef))
            if step == 0 && !f.auxLoss.isNaN { m["aux_loss"] = f.auxLoss }
            if step == 0 {
                old = f.logprobs
                let replayed = samples.indices.map { i in
                    Mismatch.ReplayedSequence(replayed: c.replay == .R3, rows: tables[i].rows, responseRows: segments[i].lowerBound - offsets[i]..<segments[i].upperBound - offsets[i],
                                              missingRows: c.replay == .R3 ? tables[i].missingRowIndices : [])
                }
                m.merge(Policy.mismatchMetrics(f, inferLP: inferLP, recorded: recorded, recordedRows: recordedRows, segments: segments, topK: K,
                                               tisCap: c.loss.tisCap, replay: Mismatch.replayShare(replayed))) { $1 }
                if c.replay == .R2 { r2 = try (0..<samples.count).map { try f.routes.rows(f.rows(ofSequence: $0)) } }
            }
            if case .replay = routing {
                let a = Mismatch.routers(f.liveRoutes, f.routes, rows: c.replay == .R3 ? recordedRows : segments.indices.map { offsets[$0]..<(offsets[$0] + seqs[$0].count) })
                if a.pairs > 0 { agreements.append(1 - a.routerDisagreement) }
            }
            let loss = PolicyLoss.gradient(logp: f.logprobs, old: old, infer: inferLP, advantages: advantages, segments: segments, config: c.loss)
            train.zeroGrad()
            try train.backward(dLogp: loss.dLogp)
            let gn = GradClip.clip(train.grads!, maxNorm: c.maxGradNorm)
            gradNorms.append(gn); clipFracs.append(loss.clipFrac); losses.append(loss.loss)
            if gn.isFinite { optimizer.update(params: model.params, grads: train.grads!, workers: workers) }
        }
        inferStale = true
        func mean(_ a: [Double]) -> Double { a.isEmpty ? .nan : a.reduce(0, +) / Double(a.count) }
        m["grad_norm"] = mean(gradNorms)
        m["clip_frac"] = mean(clipFracs)
        m["loss"] = mean(losses)
        if !agreements.isEmpty { m["replay_live_agreement"] = mean(agreements) }
        m["reward_mean"] = samples.reduce(0) { $0 + $1.reward } / Double(samples.count)
        m["response_len_mean"] = Double(samples.reduce(0) { $0 + $1.responseLength }) / Double(samples.count)
        return m
    }

    /// What the training engine sees of `samples` before an update (mini-step 0's forward, as `optimise`
    /// runs it): per sample, the log-probs of its response tokens and the live router's routes. What an
    /// external trainer reports to a run.
    public func trainingView(_ samples: [Sample], replay: ReplayMode, temperature: Float = 1) throws -> [(logprobs: [Float], routes: RouteArray)] {
        try check(samples)
        let (segments, offsets) = Policy.responseRows(samples)
        let T = samples.reduce(0) { $0 + $1.tokens.count }
        let tables = try packInference(samples, offsets: offsets, tokens: T).tables
        let f = try train.forward(samples.map(\.tokens), routing: replay == .R3 ? .replay(tables) : .live,
                                  options: ForwardOptions(temperature: temperature, training: true, entropy: true))
        return try samples.indices.map { i in
            (Array(f.logprobs[segments[i]]), try f.liveRoutes.rows(f.rows(ofSequence: i)))
        }
    }

    /// Every sample has a response, log-probs of its length and routes that fit the model.
    func check(_ samples: [Sample]) throws {
        let E = config.numExperts, L = config.moeLayers.count, K = config.topK
        for (i, s) in samples.enumerated() {
            guard s.tokens.count >= 2, s.promptLength >= 0, s.promptLength < s.tokens.count else {
                throw RLError.invalid("sample \(i) needs at least one response token and two tokens in all")
            }
            if let lp = s.inferLogprobs, lp.count != s.responseLength {
                throw RLError.invalid("sample \(i) has \(lp.count) inference log-probs for \(s.responseLength) response tokens")
            }
            if let r = s.routes {
                do { try r.validate(tokens: s.tokens.count, moeLayers: L, topK: K, experts: E) } catch {
                    throw RLError.invalid("sample \(i) routes: \(error)")
                }
            }
        }
    }

    /// The inference side, packed like the training batch: log-probs per position (NaN where none) and
    /// recorded routes (all -1 where none), with each sequence's rows and its replay table.
    func packInference(_ samples: [Sample], offsets: [Int], tokens T: Int) throws
        -> (inferLP: [Float], recorded: RouteArray, recordedRows: [Range<Int>], tables: [RouteArray]) {
        let L = config.moeLayers.count, K = config.topK
        var inferLP = [Float](repeating: .nan, count: T)
        var recorded = try RouteArray(rows: T, layers: L, topK: K, ids: [Int32](repeating: -1, count: T * L * K))
        var recordedRows: [Range<Int>] = []
        var tables: [RouteArray] = []
        for (i, s) in samples.enumerated() {
            if let lp = s.inferLogprobs {
                for j in 0..<lp.count where s.promptLength + j >= 1 { inferLP[offsets[i] + s.promptLength + j - 1] = lp[j] }
            }
            let table = try s.routes ?? RouteArray(rows: s.tokens.count - 1, layers: L, topK: K,
                                               ids: [Int32](repeating: -1, count: (s.tokens.count - 1) * L * K))
            for k in 0..<table.ids.count { recorded.ids[offsets[i] * L * K + k] = table.ids[k] }
            recordedRows.append(offsets[i]..<(offsets[i] + table.rows))
            tables.append(table)
        }
        return (inferLP, recorded, recordedRows, tables)
    }

    /// The train/inference mismatch of the first mini-step's forward pass: log-prob k3 and tails, router
    /// disagreement, entropy and gate spread. Metrics that do not apply (no inference log-probs or routes)
    /// are left out, never NaN: a NaN in the metrics is a real one, which the collapse detector acts on.
    static func mismatchMetrics(_ f: ForwardResult, inferLP: [Float], recorded: RouteArray, recordedRows: [Range<Int>],
                                segments: [Range<Int>], topK K: Int, tisCap: Double, replay: (replayedTokenFrac: Double, fallbackTokens: Int)) -> [String: Double] {
        let lp = Mismatch.logprobs(train: f.logprobs, infer: inferLP, rows: segments, tisCap: tisCap)
        let rt = Mismatch.routers(f.liveRoutes, recorded, rows: recordedRows)
        var m = Mismatch.metrics(lp, routers: rt, replay: replay)
        var ent = 0.0, n = 0
        for r in segments { for t in r { ent += Double(f.entropy[t]); n += 1 } }   // a NaN stays visible
        m["entropy"] = ent / Double(max(1, n))
        // how spread the used gate weights are (nats, of the K weights normalised): near 0 means one
        // expert carries the token, and a flipped lower expert barely matters (replay cannot help)
        var ge = 0.0
        for g in stride(from: 0, to: f.gates.count, by: K) {
            var sum = 0.0
            for j in 0..<K { sum += Double(f.gates[g + j]) }
            guard sum > 0 else { continue }
            for j in 0..<K { let p = Double(f.gates[g + j]) / sum; if p > 0 { ge -= p * log(p) } }
        }
        if !f.gates.isEmpty { m["router_gate_entropy"] = ge / Double(f.gates.count / K) }
        return m
    }

    /// One supervised step: cross-entropy on the response tokens of `samples` (plus auxLossCoef × the
    /// load-balancing loss). Returns loss, grad norm and the aux loss (NaN for sigmoid routers).
    @discardableResult
    public func supervisedStep(_ samples: [Sample], maxGradNorm: Double = 1, auxLossCoef: Float = 0) throws -> (loss: Double, gradNorm: Double, auxLoss: Double) {
        let (segments, _) = Policy.responseRows(samples)
        let f = try train.forward(samples.map(\.tokens), options: ForwardOptions(training: true, auxLossCoef: auxLossCoef))
        let loss = PolicyLoss.crossEntropy(logp: f.logprobs, segments: segments)
        train.zeroGrad()
        try train.backward(dLogp: loss.dLogp)
        let gn = GradClip.clip(train.grads!, maxNorm: maxGradNorm)
        if gn.isFinite { optimizer.update(params: model.params, grads: train.grads!, workers: workers) }
        inferStale = true
        return (loss.loss, gn, f.auxLoss)
    }

    // MARK: checkpoints

    /// Writes the model (HF layout) and the optimiser state into `directory`, atomically: a crash leaves
    /// either the previous checkpoint or this one.
    public func save(directory: URL, meta: [String: Any]) throws {
        let fm = FileManager.default
        let tmp = directory.deletingLastPathComponent().appendingPathComponent(".\(directory.lastPathComponent).tmp-\(getpid())")
        try? fm.removeItem(at: tmp)
        try model.save(directory: tmp)
        try optimizer.save(to: tmp.appendingPathComponent("optimizer.safetensors"))
        let data = try JSONSerialization.data(withJSONObject: meta, options: [.sortedKeys, .prettyPrinted])
        try data.write(to: tmp.appendingPathComponent("trainer_state.json"))
        try? fm.removeItem(at: directory)
        try fm.moveItem(at: tmp, to: directory)
    }

    /// A policy from a checkpoint directory; the optimiser state is restored when present.
    public static func load(directory: URL, learningRate: Float, weightDecay: Float = 0, inference: Numerics, workers: Int) throws -> Policy {
        let p = Policy(model: try Model.load(directory: directory), learningRate: learningRate, weightDecay: weightDecay,
                       inference: inference, workers: workers)
        let opt = directory.appendingPathComponent("optimizer.safetensors")
        if FileManager.default.fileExists(atPath: opt.path) { try p.optimizer.load(from: opt) }
        return p
    }
}
