// BenchCommand: `r3 bench engine`: the engine's speed on the shared bench config, one JSON object per
// case, with the OpenBLAS sgemm ceiling measured in the same run.
import ArgumentParser
import Foundation
import MoE
import Routes

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Benchmarks that print JSON.", subcommands: [EngineBenchCommand.self, RoutesBenchCommand.self, RunsBenchCommand.self, CheckpointBenchCommand.self, RLBenchCommand.self])
}

struct EngineBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "engine",
        abstract: "sgemm ceiling, training step (replay off and R3), prefill and decode; one JSON object per case.")

    @Option(help: "Model config.json (default: the built-in copy of shared/bench/qwen3moe-bench-m.json).") var config: String?
    @Option(help: "Timed training steps per mode (after one warm-up).") var steps: Int = 4
    @Option(help: "Worker threads (default: all cores).") var workers: Int = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Sequences × tokens per training step / prefill.") var batch: Int = 8
    @Option(name: .customLong("seq-len")) var seqLen: Int = 512
    @Option(help: "Comma-separated cases to run (default all but train_step_32k and attention_tiles, which run only when named).") var cases: String?
    @Option(name: .customLong("long-seq"), help: "Tokens of the one sequence of train_step_32k and attention_tiles (--quick: 2,048).") var longSeq: Int = 32768
    @Option(help: "Tile sizes (query rows x key rows) that attention_tiles times, comma-separated.") var tiles = "64x256,128x256,128x512,256x256,256x512,512x256"
    @Option(help: "Rounds of attention_tiles (the tile sizes alternate within a round, after one untimed pass; the median is reported).") var rounds = 2
    @Flag(help: "A small, fast run (smoke test): 1 step, 2 × 128 tokens, 16 decode tokens.") var quick = false
    @Flag(help: "Training steps (replay off and R3) of every family's bench-m config in one run, with each family's GFLOP/s relative to Qwen3-MoE's.") var families = false

    nonisolated(unsafe) static let benchM: [String: Any] = [
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 8192, "hidden_size": 512,
        "intermediate_size": 1408, "moe_intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 4, "head_dim": 64, "num_experts": 32, "num_experts_per_tok": 4, "norm_topk_prob": true,
        "decoder_sparse_step": 1, "mlp_only_layers": [Int](), "tie_word_embeddings": false, "rope_theta": 1_000_000.0,
        "rms_norm_eps": 1e-06, "max_position_embeddings": 4096, "hidden_act": "silu", "attention_bias": false,
    ]

    /// Bench-m-sized configs of the other families: the same width, depth, heads and active expert width
    /// (4 × 256, or Mixtral's 2 × 512) as qwen3moe-bench-m, with each family's own parts switched on.
    nonisolated(unsafe) static let familyBenchM: [(String, [String: Any])] = [
        ("qwen3moe-bench-m", benchM),
        ("glm4moe-bench-m", [
            "architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe", "vocab_size": 8192, "hidden_size": 512,
            "intermediate_size": 1408, "moe_intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8,
            "num_key_value_heads": 4, "head_dim": 64, "n_routed_experts": 32, "num_experts_per_tok": 4, "n_group": 4,
            "topk_group": 2, "n_shared_experts": 1, "routed_scaling_factor": 2.5, "norm_topk_prob": true,
            "first_k_dense_replace": 1, "attention_bias": true, "use_qk_norm": true, "partial_rotary_factor": 0.5,
            "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-05, "max_position_embeddings": 4096]),
        ("deepseekv3-bench-m", [
            "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 8192, "hidden_size": 512,
            "intermediate_size": 1408, "moe_intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8,
            "num_key_value_heads": 8, "q_lora_rank": 192, "kv_lora_rank": 128, "qk_nope_head_dim": 64, "qk_rope_head_dim": 32,
            "v_head_dim": 64, "n_routed_experts": 32, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2,
            "n_shared_experts": 1, "routed_scaling_factor": 2.5, "norm_topk_prob": true, "first_k_dense_replace": 1,
            "rope_theta": 10_000.0, "rms_norm_eps": 1e-06, "max_position_embeddings": 4096]),
        ("mixtral-bench-m", [
            "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 8192, "hidden_size": 512,
            "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4,
            "num_local_experts": 8, "num_experts_per_tok": 2, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-05,
            "max_position_embeddings": 4096, "sliding_window": NSNull()]),
    ]

    func run() throws {
        if families { return try runFamilies() }
        var json = EngineBenchCommand.benchM
        var configName = "qwen3moe-bench-m (built-in)"
        if let path = config, let builtIn = EngineBenchCommand.familyBenchM.first(where: { $0.0 == path }) {
            json = builtIn.1; configName = path + " (built-in)"
        } else if let path = config {
            guard let data = FileManager.default.contents(atPath: path),
                  let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { throw ValidationError("cannot read \(path)") }
            json = obj; configName = path
        }
        let cfg = try ModelConfig(json: json)
        let want = cases.map { Set($0.split(separator: ",").map(String.init)) }
        func on(_ c: String) -> Bool { want?.contains(c) ?? true }
        let base: [String: Any] = ["model": configName, "workers": workers, "experts": cfg.numExperts, "top_k": cfg.topK, "blas_core": BLASThreads.coreName,
                                   "layers": cfg.numLayers, "hidden": cfg.hiddenSize, "vocab": cfg.vocabSize]
        var peak = 0.0
        if on("sgemm_peak") {
            for threads in Set([1, workers]).sorted() {
                let n = quick ? 512 : 1536
                let g = sgemmPeak(n: n, threads: threads)
                if threads == workers { peak = g }
                try EngineBenchCommand.emit("sgemm_peak", ["gflops": g, "threads": threads], base, ["m": n, "n": n, "k": n])
            }
            BLASThreads.useSingleThreadedBLAS()
        }
        var readGBs = 0.0
        if on("memory_bandwidth") {
            let (read, copy) = memoryBandwidth(megabytes: quick ? 64 : 512, threads: workers)
            readGBs = read
            try EngineBenchCommand.emit("memory_bandwidth", ["read_gb_s": read, "copy_gb_s": copy, "threads": workers], base,
                                        ["bytes": (quick ? 64 : 512) << 20, "read": "sum of fp32 over the array", "copy": "bytes read + bytes written"])
        }
        // only when asked for by name, and before the model is built: attention alone needs none
        if want?.contains("attention_tiles") == true {
            try attentionTiles(cfg, base: base, peak: peak)
            if want!.isSubset(of: ["sgemm_peak", "memory_bandwidth", "attention_tiles"]) { return }
        }
        var bench = try Bench(cfg: cfg, workers: workers, steps: quick ? 1 : max(1, steps), B: quick ? 2 : batch, S: quick ? 128 : seqLen,
                              newTokens: quick ? 16 : 128, promptLen: quick ? 32 : 128, peak: peak, base: base)
        bench.readGBs = readGBs
        if on("route_disagreement") { try bench.routeDisagreement() }
        if on("batch_variance") { try bench.batchVariance() }
        try bench.trainSteps([("train_step", false), ("train_step_r3", true)].filter { on($0.0) })
        if on("prefill") { try bench.prefill() }
        for (name, b) in [("decode_b1", 1), ("decode_b16", 16)] where on(name) { try bench.decode(name, batch: b) }
        // only when asked for by name: minutes per step
        if want?.contains("train_step_32k") == true {
            let long = try Bench(cfg: cfg, workers: workers, steps: 1, B: 1, S: quick ? 2048 : longSeq, newTokens: 16, promptLen: 32,
                                 peak: peak, base: base)
            try long.trainSteps([("train_step_32k", false)])
        }
    }

    /// `--tiles` as (query rows, key rows) pairs.
    func tileSizes() throws -> [(Int, Int)] {
        var sizes: [(Int, Int)] = []
        for part in tiles.split(separator: ",", omittingEmptySubsequences: false) {
            let xy = part.split(separator: "x", omittingEmptySubsequences: false).map { Int($0) }
            guard xy.count == 2, let q = xy[0], let k = xy[1], (1...4096).contains(q), (1...4096).contains(k) else {
                throw ValidationError("--tiles: '\(part)' is not ROWSxKEYS with both in 1...4096")
            }
            sizes.append((q, k))
        }
        return sizes
    }

    func validate() throws {
        _ = try tileSizes()
        guard rounds >= 1 && rounds <= 100 else { throw ValidationError("--rounds must be in 1...100") }
    }

    /// The tiled training attention alone, one layer's forward and backward over one sequence of `--long-seq`
    /// tokens, for each of `--tiles`: the measurement `AttnTiles`' sizes come from.
    func attentionTiles(_ cfg: ModelConfig, base: [String: Any], peak: Double) throws {
        let sizes = try tileSizes()
        let T = quick ? 2048 : longSeq
        BLASThreads.useSingleThreadedBLAS()   // as the engine runs it: one BLAS thread per worker
        let results = AttentionBench.run(T: T, heads: cfg.numHeads, kvHeads: cfg.kvHeads, headDim: cfg.headDim, valueDim: cfg.valueDim,
                                         tiles: sizes, rounds: rounds, workers: workers)
        let f = AttentionBench.flops(T: T, heads: cfg.numHeads, D: cfg.headDim, Dv: cfg.valueDim)
        for r in results {
            let g = (f.forward + f.backward) / (r.forwardSeconds + r.backwardSeconds) / 1e9
            try EngineBenchCommand.emit("attention_tiles", [
                "query_rows": r.queryRows, "key_rows": r.keyRows, "forward_s": r.forwardSeconds, "backward_s": r.backwardSeconds,
                "forward_gflops": r.forwardGflops, "backward_gflops": r.backwardGflops, "gflops": g,
                "fraction_of_sgemm_peak": peak > 0 ? g / peak : NSNull()],
                base, ["seq_len": T, "rounds": rounds, "heads": cfg.numHeads, "kv_heads": cfg.kvHeads, "head_dim": cfg.headDim, "value_dim": cfg.valueDim,
                       "layers": 1])
        }
    }

    /// Every family's training steps in one run; then each one's GFLOP/s and R3 overhead beside Qwen3-MoE's.
    func runFamilies() throws {
        let peak = sgemmPeak(n: quick ? 512 : 1536, threads: workers)
        BLASThreads.useSingleThreadedBLAS()
        try printJSON(["case": "sgemm_peak", "gflops": peak, "threads": workers, "blas_core": BLASThreads.coreName])
        var summary: [[String: Any]] = []
        var qwen = 0.0
        for (name, json) in EngineBenchCommand.familyBenchM {
            let cfg = try ModelConfig(json: json)
            let base: [String: Any] = ["model": name + " (built-in)", "family": cfg.family.rawValue, "workers": workers, "experts": cfg.numExperts,
                                       "top_k": cfg.topK, "layers": cfg.numLayers, "moe_layers": cfg.moeLayers, "hidden": cfg.hiddenSize]
            let bench = try Bench(cfg: cfg, workers: workers, steps: quick ? 1 : max(1, steps), B: quick ? 2 : batch, S: quick ? 128 : seqLen,
                                  newTokens: 16, promptLen: 32, peak: peak, base: base)
            let r = try bench.trainSteps([("train_step", false), ("train_step_r3", true)])
            let g = r["train_step"]?.gflops ?? 0
            if cfg.family == .qwen3Moe { qwen = g }
            summary.append(["model": name, "train_gflops": g, "train_r3_gflops": r["train_step_r3"]?.gflops ?? 0,
                            "relative_to_qwen3": qwen > 0 ? g / qwen : NSNull(), "r3_overhead_pct": r["train_step_r3"]?.overhead ?? NSNull()])
        }
        try printJSON(["case": "families", "families": summary, "sgemm_gflops": peak,
                       "note": "training-step GFLOP/s of each family's bench-m config (model FLOPs incl. shared experts and MLA projections) in this run"])
    }

    static func emit(_ name: String, _ fields: [String: Any], _ base: [String: Any], _ extra: [String: Any]) throws {
        var o = fields
        o["case"] = name
        o["config"] = base.merging(extra) { $1 }
        o["peak_rss_mb"] = peakRSSMegabytes()
        try printJSON(o)
    }

    /// One run's model, token batch and settings; each case a method.
    struct Bench {
        let cfg: ModelConfig, model: Model, workers: Int, steps: Int
        let B: Int, S: Int, newTokens: Int, promptLen: Int
        let peak: Double, base: [String: Any]
        let seqs: [[Int32]]
        var rng = SeededRandom(seed: 2)
        /// The memory_bandwidth case's read GB/s in this run (0: not measured).
        var readGBs = 0.0
        var T: Int { B * S }

        init(cfg: ModelConfig, workers: Int, steps: Int, B: Int, S: Int, newTokens: Int, promptLen: Int, peak: Double, base: [String: Any]) throws {
            self.cfg = cfg; self.workers = workers; self.steps = steps; self.B = B; self.S = S
            self.newTokens = newTokens; self.promptLen = promptLen; self.peak = peak; self.base = base
            model = try Model(config: cfg, seed: 1, std: 0.02, routerStd: 0.02)
            var r = rng
            seqs = (0..<B).map { _ in (0..<S).map { _ in Int32(r.next() % UInt64(cfg.vocabSize)) } }
            rng = r
        }

        func emit(_ name: String, _ fields: [String: Any], _ extra: [String: Any]) throws {
            try EngineBenchCommand.emit(name, fields, base, extra)
        }

        /// The mismatch R3 removes: bf16 inference vs fp32 training routes, on the initial weights.
        func routeDisagreement() throws {
            let a = try Engine(model: model, numerics: .fp32, workers: workers).forward(seqs)
            for numerics in [Numerics.bf16, .fp8] {
            let b = try Engine(model: model, numerics: numerics, workers: workers).forward(seqs)
            let L = cfg.moeLayers.count, K = cfg.topK
            var pairs = 0, tokens = 0
            for t in 0..<T {
                var any = false
                for l in 0..<L {
                    let o = (t * L + l) * K
                    if Set(a.routes.ids[o..<(o + K)]) != Set(b.routes.ids[o..<(o + K)]) { pairs += 1; any = true }
                }
                if any { tokens += 1 }
            }
            try emit("route_disagreement", ["numerics": numerics.name, "router_disagreement": Double(pairs) / Double(T * L),
                                            "token_disagreement": Double(tokens) / Double(T)],
                     ["sequences": B, "seq_len": S, "compared": "\(numerics.name) vs fp32 live routes, same weights and tokens"])
            }
        }

        /// The paper's repeated-forward claim: the same sequences, alone and in other batch compositions (packed
        /// with the others, in reverse order, with extra sequences), through the same weights. Per numerics
        /// mode: the share of (token, MoE layer) expert sets and of tokens that differ from the sequence alone,
        /// and the largest log-prob difference. Only the deterministic mode is batch-invariant by design.
        mutating func batchVariance() throws {
            let L = cfg.moeLayers.count, K = cfg.topK
            let extra = (0..<max(2, B / 2)).map { _ in (0..<S).map { _ in Int32(rng.next() % UInt64(cfg.vocabSize)) } }
            for numerics in [Numerics.bf16, .fp32, .deterministic] {
                let engine = Engine(model: model, numerics: numerics, workers: workers)
                let alone = try seqs.map { try engine.forward([$0]) }
                var pairs = 0, tokens = 0, rows = 0
                var maxLP: Float = 0
                let compositions: [[[Int32]]] = [seqs, Array(seqs.reversed()), extra + seqs]
                for batch in compositions {
                    let out = try engine.forward(batch)
                    for (b, s) in batch.enumerated() {
                        guard let i = seqs.firstIndex(of: s) else { continue }
                        let r = out.rows(ofSequence: b)
                        for (k, t) in r.enumerated() {
                            var any = false
                            for l in 0..<L {
                                let o = (t * L + l) * K, a = (k * L + l) * K
                                if Set(out.routes.ids[o..<(o + K)]) != Set(alone[i].routes.ids[a..<(a + K)]) { pairs += 1; any = true }
                            }
                            if any { tokens += 1 }
                            rows += 1
                            let x = out.logprobs[t], y = alone[i].logprobs[k]
                            if !x.isNaN && !y.isNaN { maxLP = max(maxLP, abs(x - y)) }
                        }
                    }
                }
                try emit("batch_variance", ["numerics": numerics.name, "router_disagreement": Double(pairs) / Double(max(1, rows * L)),
                                            "token_disagreement": Double(tokens) / Double(max(1, rows)), "max_abs_logprob_diff": Double(maxLP)],
                         ["sequences": B, "seq_len": S, "compositions": "each sequence alone vs packed with the others, reversed, and after \(extra.count) other sequences",
                          "weights": "initial (random)"])
            }
        }

        /// Replay off and R3 run interleaved on one trainer, so both see the same machine state; medians.
        @discardableResult
        func trainSteps(_ modes: [(String, Bool)]) throws -> [String: (gflops: Double, overhead: Double?)] {
            guard !modes.isEmpty else { return [:] }
            var results: [String: (gflops: Double, overhead: Double?)] = [:]
            let trainer = Engine(model: model, numerics: .fp32, workers: workers)
            let opt = AdamW(layout: model.layout, config: AdamWConfig(learningRate: 1e-5))
            // R3: the routes a bf16 inference engine recorded for these tokens
            var r3 = Routing.live
            if modes.contains(where: { $0.1 }) {
                let rec = try Engine(model: model, numerics: .bf16, workers: workers).forward(seqs)
                r3 = .replay(try seqs.indices.map { try rec.routes.rows(rec.rows(ofSequence: $0)) })
            }
            var phases: [String: [[Double]]] = [:]
            var fallback = 0
            for step in 0...steps {
                for (name, replay) in modes {
                    var t0 = Date()
                    trainer.zeroGrad()
                    let out = try trainer.forward(seqs, routing: replay ? r3 : .live, options: ForwardOptions(training: true))
                    let f = Date().timeIntervalSince(t0); t0 = Date()
                    let n = Float(out.logprobs.filter { !$0.isNaN }.count)
                    try trainer.backward(dLogp: out.logprobs.map { $0.isNaN ? 0 : -1 / n })
                    let b = Date().timeIntervalSince(t0); t0 = Date()
                    GradClip.clip(trainer.grads!, maxNorm: 1.0)
                    opt.update(params: model.params, grads: trainer.grads!, workers: workers)
                    let o = Date().timeIntervalSince(t0)
                    if replay { fallback = out.replayFallbackRows }
                    if step > 0 { phases[name, default: []].append([f + b + o, f, b, o]) }   // step 0 warms up
                }
            }
            let trainFlops = FlopCount.trainStep(cfg, lengths: seqs.map(\.count))
            let off = phases["train_step"].map { median($0.map { $0[0] }) }
            for (name, replay) in modes {
                let ph = (0..<4).map { i in median(phases[name]!.map { $0[i] }) }
                let t = ph[0]
                var fields: [String: Any] = ["gflops": trainFlops / t / 1e9, "tokens_per_s": Double(T) / t, "seconds": t,
                                             "forward_s": ph[1], "backward_s": ph[2], "optimizer_s": ph[3],
                                             "fraction_of_sgemm_peak": peak > 0 ? trainFlops / t / 1e9 / peak : NSNull()]
                if replay {
                    fields["replay_fallback_rows"] = fallback
                    if let off { fields["r3_overhead_pct"] = (t / off - 1) * 100 }
                }
                results[name] = (trainFlops / t / 1e9, replay ? off.map { (t / $0 - 1) * 100 } : nil)
                try emit(name, fields, ["sequences": B, "seq_len": S, "precision": "fp32", "steps": steps,
                                        "loss": "mean log-prob over all positions", "optimizer": "AdamW + clip 1.0"])
            }
            return results
        }

        func prefill() throws {
            let infer = Engine(model: model, numerics: .bf16, workers: workers)
            _ = try infer.forward(seqs)
            var times: [Double] = []
            for _ in 0..<max(2, steps) {
                let t0 = Date(); _ = try infer.forward(seqs); times.append(Date().timeIntervalSince(t0))
            }
            let t = median(times)
            try emit("prefill", ["gflops": FlopCount.forward(cfg, lengths: seqs.map(\.count)) / t / 1e9, "tokens_per_s": Double(T) / t, "seconds": t],
                     ["sequences": B, "seq_len": S, "precision": "bf16"])
        }

        /// Greedy decode after a prompt. Also the bytes a step reads: every weight matrix it multiplies by (only
        /// the experts the step's rows were routed to, counted from the recorded routes) at 2 bytes (the bf16
        /// twin) plus the fp32 KV cache it attends over, and that traffic per second against the memory_bandwidth
        /// case's read rate.
        mutating func decode(_ name: String, batch b: Int) throws {
            let infer = Engine(model: model, numerics: .bf16, workers: workers)
            let prompts = (0..<b).map { _ in (0..<promptLen).map { _ in Int32(rng.next() % UInt64(cfg.vocabSize)) } }
            let params = SamplingParams(maxTokens: newTokens, temperature: 0)
            _ = try infer.generate(prompts, sampling: SamplingParams(maxTokens: 4, temperature: 0))
            let gens = try infer.generate(prompts, sampling: params)
            let tm = infer.lastTiming
            // decode steps feed tokens at positions promptLen ..< promptLen + newTokens − 1
            let attn = (0..<(newTokens - 1)).reduce(0.0) { $0 + FlopCount.attention(cfg, queries: 1, pos0: promptLen + $1) } * Double(b)
            let flops = Double(tm.decodeTokens) * FlopCount.perToken(cfg) + attn
            let steps = newTokens - 1
            var distinct = 0   // Σ over decode steps and MoE layers of the experts the batch's rows used
            let L = cfg.moeLayers.count, K = cfg.topK
            for step in 0..<steps {
                for l in 0..<L {
                    var used = Set<Int32>()
                    for g in gens { let o = ((promptLen + step) * L + l) * K; used.formUnion(g.routes.ids[o..<(o + K)]) }
                    distinct += used.count
                }
            }
            let perExpert = Double(3 * cfg.hiddenSize * cfg.moeIntermediateSize)
            let weightBytes = 2 * (Double(steps) * FlopCount.perToken(cfg) / 2 - Double(steps * L * K) * perExpert + Double(distinct) * perExpert)
            let kvWidth = Double(cfg.numLayers * cfg.numKVHeads * (cfg.headDim + cfg.valueDim))
            let kvBytes = 4 * kvWidth * Double(b) * (0..<steps).reduce(0.0) { $0 + Double(promptLen + $1 + 1) }
            let gbs = (weightBytes + kvBytes) / tm.decodeSeconds / 1e9
            try emit(name, ["gflops": flops / tm.decodeSeconds / 1e9, "tokens_per_s": Double(tm.decodeTokens) / tm.decodeSeconds,
                            "seconds": tm.decodeSeconds, "prefill_s": tm.prefillSeconds,
                            "bytes_per_step": (weightBytes + kvBytes) / Double(steps), "read_gb_s": gbs,
                            "fraction_of_read_bandwidth": readGBs > 0 ? gbs / readGBs : NSNull()],
                     ["batch": b, "prompt_tokens": promptLen, "new_tokens": newTokens, "precision": "bf16", "sampling": "greedy",
                      "weights": "bf16 twin for linear layers of <= \(BF16Weights.maxRows) rows"])
        }
    }
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.isEmpty ? 0 : s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// OpenBLAS sgemm GFLOP/s on n³ with `threads` BLAS threads (best of 5 after a warm-up).
func sgemmPeak(n: Int, threads: Int) -> Double {
    BLASThreads.set(threads)
    var rng = SeededRandom(seed: 9)
    let a = (0..<(n * n)).map { _ in Float(rng.normal()) }, b = a
    var c = [Float](repeating: 0, count: n * n)
    var best = 0.0
    for i in 0..<6 {
        let t0 = Date()
        rawSgemm(n, a, b, &c)
        let t = Date().timeIntervalSince(t0)
        if i > 0 { best = max(best, 2 * Double(n * n * n) / t / 1e9) }
    }
    return best
}

/// Peak resident set (VmHWM) of this process in MiB.
func peakRSSMegabytes() -> Double {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in s.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        return (Double(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) / 1024
    }
    return 0
}
