// DemoCommand: `r3 demo`: the R3 result on this machine, end to end through the public API of a service
// it starts itself on the embedded default. It creates a small Qwen3-MoE, fine-tunes it on a built-in
// task until its reward is non-zero, then runs RL from that one checkpoint with the same seeds under
// none, R2, R3, TIS and GSPO+R3; prints a table, and writes SVG plots and a JSON report.
import ArgumentParser
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import HTTP
import MoE
import Service
import Store

struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo", abstract: "Reproduce the R3 result: SFT, then RL under none / R2 / R3 / TIS / GSPO+R3 through the API.")

    @Option(help: "Seed of the model, the data and the sampling.") var seed = 1
    @Option(help: "RL steps per run.") var steps: Int?
    @Option(help: "Decoder layers (all MoE).") var layers = 4
    @Option(help: "Experts per MoE layer.") var experts = 16
    @Option(name: .customLong("top-k"), help: "Experts per token.") var topK = 4
    @Option(help: "Hidden size.") var hidden = 128
    @Option(help: "Output directory (plots, report.json, the service's data).") var out = "r3-demo"
    @Flag(help: "Print the JSON report to stdout instead of the table.") var json = false
    @Flag(help: "A few minutes at most: a short SFT and 6 RL steps per run.") var quick = false
    @Flag(help: "Stress preset: 10× the learning rate and 4 mini-steps per batch.") var stress = false
    @Option(help: "Rollout numerics of the RL runs: bf16 (default) or fp8 (training is fp32).") var precision: String?
    @Option(name: .customLong("aux-loss-coef"), help: "Load-balancing aux loss coefficient in SFT and RL (HF's router_aux_loss_coef).") var auxLossCoef: Double?
    @Flag(name: .customLong("native-blas"), help: "Let OpenBLAS pick its kernels for this CPU (faster on AVX-512) instead of pinning the Haswell kernels, which give the same bits on every x86-64 machine with AVX2 and FMA.") var nativeBLAS = false
    @Flag(help: "The paper's regime (see README): 16 layers, 128 fine-grained experts, top-8, aux loss 0.1, FP8 rollouts, init std 0.08. Explicit options override it.") var realistic = false
    @Option(name: .customLong("init-std"), help: "Std of the random weight matrices (HF's initializer_range; default 0.02).") var initStd: Double?
    @Option(name: .customLong("router-std"), help: "Std of the routers' initial weights (default: --init-std).") var routerStd: Double?
    @Option(name: .customLong("sft-steps"), help: "SFT steps per round (default 150, --quick 60); up to 4 rounds until the greedy reward is non-zero.") var sftSteps: Int?
    @Option(help: "Also write the table into this Markdown file, between <!-- demo:begin --> and <!-- demo:end -->.") var readme: String?

    struct Run { let name: String; let replay: String; let algorithm: String; let tis: Bool }
    static let runs = [Run(name: "none", replay: "none", algorithm: "grpo", tis: false),
                       Run(name: "R2", replay: "R2", algorithm: "grpo", tis: false),
                       Run(name: "R3", replay: "R3", algorithm: "grpo", tis: false),
                       Run(name: "TIS", replay: "none", algorithm: "grpo", tis: true),
                       Run(name: "GSPO+R3", replay: "R3", algorithm: "gspo", tis: false)]

    /// The realistic preset (chosen by measurement, README "Towards the paper's regime"): 16 layers × 128 experts,
    /// top-8, aux loss 0.1, FP8 rollouts, and matrices initialised with std 0.08. HF's 0.02 is meant for
    /// hidden sizes in the thousands: 0.02 × √2048 (Qwen3-30B-A3B) = 0.08 × √128 (ours), so 0.08 gives our
    /// hidden 128 the pre-activation scale a Qwen3-30B layer starts with.
    static let realisticPreset = (layers: 16, experts: 128, topK: 8, precision: "fp8", aux: 0.1, initStd: 0.08)

    /// Whether an option was given on the command line (a preset yields to explicit options).
    static func given(_ name: String) -> Bool {
        CommandLine.arguments.contains { $0 == "--\(name)" || $0.hasPrefix("--\(name)=") }
    }

    /// The shape, aux loss, rollout numerics and init std in effect (the realistic preset's, unless given).
    var shape: (layers: Int, experts: Int, topK: Int, hidden: Int, precision: String, aux: Double, initStd: Double?) {
        if !realistic { return (layers, experts, topK, hidden, precision ?? "bf16", auxLossCoef ?? 0, initStd) }
        let p = DemoCommand.realisticPreset, given = DemoCommand.given
        return (given("layers") ? layers : p.layers, given("experts") ? experts : p.experts, given("top-k") ? topK : p.topK, hidden,
                precision ?? p.precision, auxLossCoef ?? p.aux, initStd ?? p.initStd)
    }

    /// The demo's and the study's init and SFT options, each checked with an error naming it.
    static func checkInit(initStd: Double?, routerStd: Double?, sftSteps: Int?) throws {
        guard (initStd ?? 0.02) > 0 && (initStd ?? 0.02) <= 1 else { throw ValidationError("--init-std must be in (0, 1]") }
        guard (routerStd ?? 0.02) > 0 && (routerStd ?? 0.02) <= 10 else { throw ValidationError("--router-std must be in (0, 10]") }
        guard (1...100_000).contains(sftSteps ?? 1) else { throw ValidationError("--sft-steps must be in 1...100000") }
    }

    /// The POST /v1/models body of the demo's and the study's models: a small Qwen3-MoE on the 128-token
    /// character vocabulary, random weights with the given stds (the router's defaults to the matrices').
    static func modelBody(name: String, seed: Int, layers: Int, experts: Int, topK: Int, hidden: Int, initStd: Double?, routerStd: Double?) -> [String: Any] {
        let config: [String: Any] = [
            "vocab_size": 128, "hidden_size": hidden, "intermediate_size": 2 * hidden, "moe_intermediate_size": hidden / 2,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": hidden / 4,
            "num_experts": experts, "num_experts_per_tok": topK, "norm_topk_prob": true]
        var body: [String: Any] = ["name": "\(name)-\(UUID().uuidString.prefix(6))", "config": config, "seed": seed]
        if let v = initStd { body["init_std"] = v }
        if let v = routerStd ?? initStd { body["router_std"] = v }
        return body
    }

    /// OpenBLAS reads OPENBLAS_CORETYPE when it loads, before any Swift code runs: to pin its kernels the
    /// process starts itself again with the variable set (once; a value already set is respected).
    func pinBLASKernels() throws { try DemoCommand.pinBLASKernels(native: nativeBLAS) }

    static func pinBLASKernels(native nativeBLAS: Bool) throws {
        #if arch(x86_64) && os(Linux)
        guard !nativeBLAS, ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil else { return }
        setenv("OPENBLAS_CORETYPE", "Haswell", 1)
        let argv = CommandLine.arguments.map { strdup($0) } + [nil]
        execv("/proc/self/exe", argv)
        throw ValidationError("cannot restart with OPENBLAS_CORETYPE=Haswell (errno \(errno)); pass --native-blas to run with the CPU's own kernels")
        #endif
    }

    func run() throws {
        let (layers, experts, topK, hidden, precision, auxLossCoef, initStd) = shape
        guard ["bf16", "fp8", "fp32", "deterministic"].contains(precision) else { throw ValidationError("--precision must be bf16, fp8, fp32 or deterministic") }
        guard auxLossCoef >= 0 && auxLossCoef <= 10 else { throw ValidationError("--aux-loss-coef must be in 0...10") }
        guard experts >= topK, topK >= 1, layers >= 1, hidden >= 16, hidden % 4 == 0 else {
            throw ValidationError("need experts >= top-k >= 1, layers >= 1, and hidden a multiple of 4 (>= 16)")
        }
        try DemoCommand.checkInit(initStd: initStd, routerStd: routerStd, sftSteps: sftSteps)
        let rlSteps = steps ?? (quick ? 6 : 60)
        guard rlSteps >= 2 else { throw ValidationError("--steps must be at least 2") }
        try pinBLASKernels()
        let outDir = URL(fileURLWithPath: out).standardizedFileURL
        try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
        let log = DemoLog(tty: isatty(STDERR_FILENO) == 1)

        // the service, on the embedded default, in this process
        let service = try LocalService(dataDir: outDir.appendingPathComponent("data"), nativeBLAS: nativeBLAS,
                                       project: "demo-\(UUID().uuidString.prefix(8))")
        defer { service.stop() }
        let api = service.api
        log.line("r3 demo: service on http://127.0.0.1:\(service.port), data in \(service.dataDir.path), OpenBLAS kernels \(BLASThreads.coreName)")

        // 1. a small Qwen3-MoE. HF's initializer (std 0.02 everywhere, the router included) unless told
        // otherwise. A larger router std alone makes the router degenerate: after SFT its top-1 gate is
        // ~0.9995, so flipped experts carry ~1e-4 of the output and replaying them changes nothing measurable
        // (see README, "What the demo shows").
        let model = try api.call("POST", "/v1/models", DemoCommand.modelBody(name: "demo-moe-\(seed)", seed: seed, layers: layers, experts: experts,
                                                                              topK: topK, hidden: hidden, initStd: initStd, routerStd: routerStd))
        let modelID = model["id"] as! String

        // 2. SFT until the greedy reward is non-zero
        let task = ["task": "reverse", "difficulty": quick ? 4 : 6] as [String: Any]
        var sftReward = 0.0, sftVersion = 0, sftDone = 0
        for round in 0..<4 {
            let n = sftSteps ?? (quick ? 60 : 150)
            let job = try api.submitAndWait(["type": "sft", "model": modelID, "steps": n, "learning_rate": 3e-3, "seed": seed + round, "checkpoint_every": n,
                                             "eval_every": n, "aux_loss_coef": auxLossCoef] .merging(task) { $1 }, label: "sft", log: log)
            sftDone += n
            let result = job["result"] as? [String: Any] ?? [:]
            sftReward = result["eval_reward_mean"] as? Double ?? 0
            sftVersion = result["policy_version"] as? Int ?? 0
            if sftReward > 0 { break }
        }
        guard sftReward > 0 else { throw ValidationError("SFT did not reach a non-zero reward in \(sftDone) steps") }
        log.line("sft: \(sftDone) steps, greedy reward \(String(format: "%.3f", sftReward)) (policy version \(sftVersion))")

        // 3. RL from that checkpoint, same seeds, one run per replay mode / algorithm
        let lr = stress ? 5e-3 : 5e-4
        let miniSteps = stress ? 4 : 2
        var results: [[String: Any]] = [], series: [String: [(Double, [String: Double])]] = [:]
        for r in DemoCommand.runs {
            let body: [String: Any] = ["type": "train", "model": modelID, "policy_version": sftVersion, "steps": rlSteps,
                                       "batch_size": quick ? 4 : 8, "n": quick ? 4 : 8, "learning_rate": lr, "mini_steps": miniSteps,
                                       "replay": r.replay, "algorithm": r.algorithm, "tis": r.tis, "seed": seed,
                                       "checkpoint_every": max(rlSteps, 1), "precision": precision, "aux_loss_coef": auxLossCoef]
            let job = try api.submitAndWait(body.merging(task) { $1 }, label: r.name, log: log)
            let id = job["id"] as! String
            let rows = (try api.call("GET", "/v1/jobs/\(id)/metrics")["data"] as? [[String: Any]] ?? []).map { row in
                (Double(row["step"] as? Int ?? 0), row.compactMapValues { ($0 as? NSNumber)?.doubleValue })
            }
            series[r.name] = rows
            let alarms = try api.events(id).filter { $0["type"] as? String == "training.collapse_detected" }
            let collapse = alarms.compactMap { ($0["data"] as? [String: Any])?["step"] as? Int }.min()
            results.append(DemoCommand.summary(r, job: job, rows: rows.map(\.1), collapse: collapse, base: api.base))
        }

        // 4. report, plots, table
        let plots = try DemoCommand.plots(series, outDir: outDir)
        var report: [String: Any] = [
            "version": 1, "seed": seed, "quick": quick, "stress": stress, "realistic": realistic,
            "model": ["layers": layers, "hidden": hidden, "experts": experts, "top_k": topK, "id": modelID,
                      "init_std": initStd ?? 0.02, "router_std": routerStd ?? initStd ?? 0.02],
            "rollout_precision": precision, "aux_loss_coef": auxLossCoef, "blas_core": BLASThreads.coreName,
            "engine_threads": nativeBLAS ? ProcessInfo.processInfo.activeProcessorCount : 2,
            "task": task, "sft": ["steps": sftDone, "eval_reward": sftReward, "policy_version": sftVersion],
            "rl": ["steps": rlSteps, "learning_rate": lr, "mini_steps": miniSteps, "batch_size": quick ? 4 : 8, "n": quick ? 4 : 8],
            "runs": results, "plots": plots.map(\.path)]
        let byName = Dictionary(uniqueKeysWithValues: results.map { ($0["name"] as! String, $0) })
        func ratio(_ k: String) -> Any {
            guard let a = byName["none"]?[k] as? Double, let b = byName["R3"]?[k] as? Double, b > 0 else { return NSNull() }
            return a / b
        }
        report["none_over_r3"] = ["k3_kl_mean": ratio("k3_kl_mean"), "extreme_frac_tau2_mean": ratio("extreme_frac_tau2_mean"),
                                  "k3_kl_step0": ratio("k3_kl_step0"), "extreme_frac_tau2_step0": ratio("extreme_frac_tau2_step0")]
        if let readme { try DemoCommand.writeReadme(readme, report: report, table: DemoCommand.table(results), plot: plots[0], outDir: outDir) }
        let reportURL = outDir.appendingPathComponent("report.json")
        try JSONSerialization.data(withJSONObject: report, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]).write(to: reportURL)
        if json {
            try printJSON(report)
        } else {
            print(DemoCommand.table(results))
            print("none / R3: mean k3_kl × \(DemoCommand.fmt(ratio("k3_kl_mean"))), mean extreme_frac_tau2 × \(DemoCommand.fmt(ratio("extreme_frac_tau2_mean")))"
                  + "; at step 0 (same policy, same samples): k3_kl × \(DemoCommand.fmt(ratio("k3_kl_step0")))")
            if let none = byName["none"] {
                print("step 0 (none): router disagreement \(DemoCommand.fmt(none["router_disagreement_step0"])) per (token, layer), token disagreement \(DemoCommand.fmt(none["token_disagreement_step0"])); rollouts \(precision), aux loss \(auxLossCoef)")
            }
            print("report: \(reportURL.path)")
            for p in plots { print("plot: \(p.path)") }
        }
    }

    static func fmt(_ v: Any?) -> String {
        guard let d = v as? Double else { return "n/a" }
        if d == 0 { return "0" }
        return abs(d) < 1e-3 || abs(d) >= 1e4 ? String(format: "%.2e", d) : String(format: "%.3f", d)
    }

    static func summary(_ r: Run, job: [String: Any], rows: [[String: Double]], collapse: Int?, base: String) -> [String: Any] {
        func vals(_ k: String) -> [Double] { rows.compactMap { $0[k] }.filter(\.isFinite) }
        func mean(_ k: String) -> Any { let v = vals(k); return v.isEmpty ? NSNull() : v.reduce(0, +) / Double(v.count) }
        func maxv(_ k: String) -> Any { vals(k).max() ?? NSNull() }
        let rewards = vals("reward_mean")
        let w = max(1, min(5, rewards.count / 3))
        // step 0 of every run is the same policy on the same samples: a paired comparison of the replay modes
        let first = rows.first ?? [:]
        return ["name": r.name, "replay": r.replay, "algorithm": r.algorithm, "tis": r.tis, "job_id": job["id"] ?? NSNull(),
                "k3_kl_step0": first["k3_kl"] ?? NSNull(), "extreme_frac_tau2_step0": first["extreme_frac_tau2"] ?? NSNull(),
                "router_disagreement_step0": first["router_disagreement"] ?? NSNull(),
                "token_disagreement_step0": first["token_disagreement"] ?? NSNull(),
                "router_gate_entropy_step0": first["router_gate_entropy"] ?? NSNull(), "router_gate_entropy_mean": mean("router_gate_entropy"),
                "state": job["state"] ?? NSNull(), "steps": rows.count,
                "k3_kl_mean": mean("k3_kl"), "k3_kl_max": maxv("k3_kl"),
                "extreme_frac_tau2_mean": mean("extreme_frac_tau2"), "extreme_frac_tau2_max": maxv("extreme_frac_tau2"),
                "router_disagreement_mean": mean("router_disagreement"), "router_disagreement_max": maxv("router_disagreement"),
                "token_disagreement_mean": mean("token_disagreement"), "token_disagreement_max": maxv("token_disagreement"),
                "reward_first": rewards.isEmpty ? NSNull() : rewards.prefix(w).reduce(0, +) / Double(w),
                "reward_last": rewards.isEmpty ? NSNull() : rewards.suffix(w).reduce(0, +) / Double(w),
                "collapse_step": collapse ?? NSNull(), "step_seconds_mean": mean("step_seconds"), "train_seconds_mean": mean("train_seconds"),
                "page_url": ((job["links"] as? [String: Any])?["page"] as? String).map { base + $0 } ?? NSNull()]
    }

    static func table(_ runs: [[String: Any]]) -> String {
        let cols: [(String, String)] = [("run", "name"), ("k3 mean", "k3_kl_mean"), ("k3 max", "k3_kl_max"), ("F(2) mean", "extreme_frac_tau2_mean"),
                                        ("F(2) max", "extreme_frac_tau2_max"), ("router dis.", "router_disagreement_mean"),
                                        ("token dis.", "token_disagreement_mean"), ("reward first", "reward_first"), ("reward last", "reward_last"),
                                        ("collapse", "collapse_step"), ("step s", "step_seconds_mean")]
        var lines = [cols.map(\.0)]
        for r in runs {
            lines.append(cols.map { c in
                switch r[c.1] {
                case let s as String: return s
                case let i as Int: return String(i)
                case let d as Double: return fmt(d)
                default: return "—"
                }
            })
        }
        let widths = (0..<cols.count).map { i in lines.map { $0[i].count }.max()! }
        return lines.map { l in zip(l, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ") }
            .joined(separator: "\n")
    }

    /// Replaces the text between the demo markers of a Markdown file with this run's table and plot.
    static func writeReadme(_ path: String, report: [String: Any], table: String, plot: URL, outDir: URL) throws {
        guard var text = try? String(contentsOfFile: path, encoding: .utf8),
              let a = text.range(of: "<!-- demo:begin -->"), let b = text.range(of: "<!-- demo:end -->"), a.upperBound <= b.lowerBound else {
            throw ValidationError("\(path) has no <!-- demo:begin --> … <!-- demo:end --> markers")
        }
        let rows = table.split(separator: "\n").map { $0.split(separator: "  ", omittingEmptySubsequences: true).map { $0.trimmingCharacters(in: .whitespaces) } }
        var md = "\n| " + rows[0].joined(separator: " | ") + " |\n|" + String(repeating: "---|", count: rows[0].count) + "\n"
        for r in rows.dropFirst() { md += "| " + r.joined(separator: " | ") + " |\n" }
        let base = URL(fileURLWithPath: path).deletingLastPathComponent().standardizedFileURL.path
        let rel = plot.path.hasPrefix(base + "/") ? String(plot.path.dropFirst(base.count + 1)) : plot.path
        let sft = report["sft"] as? [String: Any] ?? [:], rl = report["rl"] as? [String: Any] ?? [:]
        let ratios = report["none_over_r3"] as? [String: Any] ?? [:]
        md += "\n`r3 demo` (seed \(report["seed"] ?? ""), \(rl["steps"] ?? "") RL steps per run, lr \(rl["learning_rate"] ?? ""), mini_steps \(rl["mini_steps"] ?? ""))"
        md += " after \(sft["steps"] ?? "") SFT steps (greedy reward \(fmt(sft["eval_reward"]))). none ÷ R3: mean k3 ×\(fmt(ratios["k3_kl_mean"])),"
        md += " mean F(2) ×\(fmt(ratios["extreme_frac_tau2_mean"])); at step 0, the same policy and samples: k3 ×\(fmt(ratios["k3_kl_step0"])).\n\n"
        md += "![k3 KL per step, one line per run](\(rel))\n"
        text.replaceSubrange(a.upperBound..<b.lowerBound, with: md)
        try text.write(toFile: path, atomically: true, encoding: .utf8)
    }

    static func plots(_ series: [String: [(Double, [String: Double])]], outDir: URL) throws -> [URL] {
        let metrics: [(String, String, Bool)] = [("k3_kl", "k3 KL between training and inference", true),
                                                 ("extreme_frac_tau2", "F(2): tokens with ratio outside [1/2, 2]", false),
                                                 ("grad_norm", "grad norm", true), ("entropy", "entropy", false), ("reward_mean", "reward", false)]
        var urls: [URL] = []
        for (key, title, log) in metrics {
            let s = runs.enumerated().map { i, r in
                SVGChart.Series(name: r.name, color: SVGChart.palette[i % SVGChart.palette.count],
                                points: (series[r.name] ?? []).map { ($0.0, $0.1[key]) })
            }
            var chart = SVGChart(title: title, series: s, logY: log)
            chart.width = 720; chart.height = 360
            let url = outDir.appendingPathComponent("\(key).svg")
            try Data(chart.render().utf8).write(to: url)
            urls.append(url)
        }
        return urls
    }
}

/// Progress: a redrawn bar on a terminal, plain lines otherwise.
final class DemoLog {
    let tty: Bool
    init(tty: Bool) { self.tty = tty }
    func line(_ s: String) { FileHandle.standardError.write(Data(((tty ? "\r\u{1b}[K" : "") + s + "\n").utf8)) }
    func progress(_ label: String, _ done: Int, _ total: Int) {
        if tty {
            let w = 30, filled = total > 0 ? w * done / total : 0
            FileHandle.standardError.write(Data("\r\u{1b}[K\(label.padding(toLength: 8, withPad: " ", startingAt: 0)) [\(String(repeating: "#", count: filled))\(String(repeating: ".", count: w - filled))] \(done)/\(total)".utf8))
        } else if done == total || done % max(1, total / 4) == 0 {
            line("\(label): step \(done)/\(total)")
        }
    }
}

/// A small synchronous client of the service's public API (URLSession, bearer key).
struct DemoClient {
    let base: String
    let key: String

    func call(_ method: String, _ path: String, _ body: Any? = nil) throws -> [String: Any] {
        var req = URLRequest(url: URL(string: base + path)!)
        req.httpMethod = method
        req.setValue("Bearer \(key)", forHTTPHeaderField: "Authorization")
        if let body {
            req.setValue("application/json", forHTTPHeaderField: "Content-Type")
            req.httpBody = try JSONSerialization.data(withJSONObject: body)
        }
        final class Box: @unchecked Sendable { var data: Data?; var status = 0; var error: Error? }
        let box = Box(), done = DispatchSemaphore(value: 0)
        URLSession.shared.dataTask(with: req) { d, r, e in
            box.data = d; box.status = (r as? HTTPURLResponse)?.statusCode ?? 0; box.error = e; done.signal()
        }.resume()
        done.wait()
        if let e = box.error { throw ValidationError("\(method) \(path): \(e.localizedDescription)") }
        let obj = (box.data.flatMap { try? JSONSerialization.jsonObject(with: $0) } as? [String: Any]) ?? [:]
        guard (200..<300).contains(box.status) else { throw ValidationError("\(method) \(path): \(box.status) \(obj["detail"] ?? "")") }
        return obj
    }

    func submitAndWait(_ body: [String: Any], label: String, log: DemoLog) throws -> [String: Any] {
        let id = try call("POST", "/v1/jobs", body)["id"] as! String
        var last = -1
        while true {
            let j = try call("GET", "/v1/jobs/\(id)")
            let p = j["progress"] as? [String: Any] ?? [:]
            let done = p["step"] as? Int ?? 0, total = p["steps"] as? Int ?? (body["steps"] as? Int ?? 0)
            if done != last { log.progress(label, done, total); last = done }
            switch j["state"] as? String {
            case "succeeded", "collapsed": if log.tty { log.line("") }; return j
            case "failed", "cancelled": throw ValidationError("\(label) job \(id) \(j["state"]!): \(j["error"] ?? "")")
            default: Thread.sleep(forTimeInterval: 0.2)
            }
        }
    }

    /// The job's events (read from its SSE stream, which ends with the job).
    func events(_ id: String) throws -> [[String: Any]] {
        var req = URLRequest(url: URL(string: base + "/v1/jobs/\(id)/events")!)
        req.setValue("Bearer \(key)", forHTTPHeaderField: "Authorization")
        final class Box: @unchecked Sendable { var data = Data() }
        let box = Box(), done = DispatchSemaphore(value: 0)
        URLSession.shared.dataTask(with: req) { d, _, _ in box.data = d ?? Data(); done.signal() }.resume()
        done.wait()
        return String(decoding: box.data, as: UTF8.self).split(separator: "\n").compactMap { line in
            guard line.hasPrefix("data: ") else { return nil }
            return try? JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8)) as? [String: Any]
        }
    }
}
