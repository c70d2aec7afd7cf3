// StudyCommand: `r3 study`: the replay study under a stress setting, through the public API of a service it
// starts itself (data kept in --out, so a study resumes): per seed one model and one SFT checkpoint, then
// the grid {none, R3, TIS, GSPO, R3+TIS} from it. Each finished cell is a file; a crash or Ctrl-C re-runs
// only the missing cells. Writes study.json, study.md (collapse matrix, k3 and F(2) tables) and SVG plots.
import ArgumentParser
import Foundation
import HTTP
import MoE
import Service
import Store

struct StudyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "study", abstract: "The replay study: {none, R3, TIS, GSPO, R3+TIS} × seeds under stress, through the API; resumable.")

    @Option(help: "Seeds (1...N).") var seeds = 3
    @Option(help: "RL steps per cell.") var steps: Int?
    @Option(name: .customLong("learning-rate"), help: "RL learning rate (stress: 4× the demo's).") var learningRate = 2e-3
    @Option(name: .customLong("mini-steps"), help: "AdamW steps per rollout batch (stress: 4).") var miniSteps = 4
    @Option(help: "Decoder layers.") var layers = 4
    @Option(help: "Experts per MoE layer.") var experts = 16
    @Option(name: .customLong("top-k")) var topK = 4
    @Option var hidden = 128
    @Option(help: "Rollout numerics: bf16 or fp8.") var precision = "bf16"
    @Option(name: .customLong("aux-loss-coef")) var auxLossCoef = 0.0
    @Option(help: "Output directory (cells, report, plots, the service's data).") var out = "r3-study"
    @Flag(help: "Small: 60 SFT steps, 4 prompts × 4 samples, 4 RL steps (tests).") var quick = false
    @Option(help: "Runs of the grid, comma-separated (default all: none,R3,TIS,GSPO,R3+TIS).") var runs: String?
    @Option(name: .customLong("batch-size"), help: "Prompts per RL step (default 8, --quick 4).") var batchSize: Int?
    @Option(help: "Samples per prompt (default 8, --quick 4). batch-size × samples is at most 4,096.") var samples: Int?
    @Flag(name: .customLong("native-blas"), help: "Let OpenBLAS pick its kernels (see r3 demo).") var nativeBLAS = false
    @Option(name: .customLong("init-std"), help: "Std of the random weight matrices (HF's initializer_range; default 0.02).") var initStd: Double?
    @Option(name: .customLong("router-std"), help: "Std of the routers' initial weights (default: --init-std).") var routerStd: Double?
    @Option(name: .customLong("sft-steps"), help: "SFT steps per seed (default 150, --quick 60).") var sftSteps: Int?

    @Flag(help: "The demo's realistic preset (16 layers × 128 experts, top-8, aux loss 0.1, FP8 rollouts, init std 0.08). Explicit options override it.") var realistic = false

    /// The realistic preset fills in what was not given, before anything runs.
    mutating func validate() throws {
        guard realistic else { return }
        let p = DemoCommand.realisticPreset, given = DemoCommand.given
        if !given("layers") { layers = p.layers }
        if !given("experts") { experts = p.experts }
        if !given("top-k") { topK = p.topK }
        if !given("precision") { precision = p.precision }
        if !given("aux-loss-coef") { auxLossCoef = p.aux }
        if initStd == nil { initStd = p.initStd }
    }

    struct Cell { let name, replay, algorithm: String; let tis: Bool }
    static let grid = [Cell(name: "none", replay: "none", algorithm: "grpo", tis: false), Cell(name: "R3", replay: "R3", algorithm: "grpo", tis: false),
                       Cell(name: "TIS", replay: "none", algorithm: "grpo", tis: true), Cell(name: "GSPO", replay: "none", algorithm: "gspo", tis: false),
                       Cell(name: "R3+TIS", replay: "R3", algorithm: "grpo", tis: true)]
    static let metrics = ["k3_kl", "extreme_frac_tau2", "reward_mean", "grad_norm", "entropy", "router_disagreement", "token_disagreement",
                          "response_len_mean"]

    /// `--runs` as grid cells, in the grid's order.
    func selectedRuns() throws -> [Cell] {
        guard let runs else { return StudyCommand.grid }
        let names = runs.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        for n in names where !StudyCommand.grid.contains(where: { $0.name == n }) {
            throw ValidationError("--runs: '\(n)' is not a run; choose from \(StudyCommand.grid.map(\.name).joined(separator: ","))")
        }
        return StudyCommand.grid.filter { names.contains($0.name) }
    }

    func run() throws {
        let rlSteps = steps ?? (quick ? 4 : 40)
        guard seeds >= 1, seeds <= 20, rlSteps >= 2, rlSteps <= 1000 else { throw ValidationError("need --seeds in 1...20 and --steps in 2...1000") }
        guard ["bf16", "fp8"].contains(precision) else { throw ValidationError("--precision must be bf16 or fp8") }
        guard learningRate > 0, learningRate <= 1, miniSteps >= 1, miniSteps <= 64, auxLossCoef >= 0, auxLossCoef <= 10 else {
            throw ValidationError("need --learning-rate in (0, 1], --mini-steps in 1...64, --aux-loss-coef in 0...10")
        }
        guard experts >= topK, topK >= 1, layers >= 1, hidden >= 16, hidden % 4 == 0 else {
            throw ValidationError("need experts >= top-k >= 1, layers >= 1, and hidden a multiple of 4 (>= 16)")
        }
        try DemoCommand.checkInit(initStd: initStd, routerStd: routerStd, sftSteps: sftSteps)
        let grid = try selectedRuns()
        let defaultBatch = quick ? 4 : 8
        let prompts = batchSize ?? defaultBatch, perPrompt = samples ?? defaultBatch
        let limits = (TrainBatchLimits.batchSize, TrainBatchLimits.n, TrainBatchLimits.samples)
        guard limits.0.contains(prompts), limits.1.contains(perPrompt), prompts * perPrompt <= limits.2 else {
            throw ValidationError("need --batch-size in \(limits.0), --samples in \(limits.1), and batch-size × samples at most \(limits.2)")
        }
        try DemoCommand.pinBLASKernels(native: nativeBLAS)
        let outDir = URL(fileURLWithPath: out).standardizedFileURL, cells = outDir.appendingPathComponent("cells")
        try FileManager.default.createDirectory(at: cells, withIntermediateDirectories: true)
        let log = DemoLog(tty: isatty(STDERR_FILENO) == 1)
        // the settings a cell was made with: a study resumes only into the same settings
        var settings: [String: Any] = ["steps": rlSteps, "learning_rate": learningRate, "mini_steps": miniSteps, "layers": layers, "experts": experts,
                                       "top_k": topK, "hidden": hidden, "precision": precision, "aux_loss_coef": auxLossCoef, "quick": quick,
                                       "blas_core": BLASThreads.coreName]
        // set only when given, so that studies made before these options resume into the same settings
        if let v = initStd { settings["init_std"] = v }
        if let v = routerStd { settings["router_std"] = v }
        if let v = sftSteps { settings["sft_steps"] = v }
        // only when not the default, so that studies made before these options (or with the defaults given
        // explicitly) resume into the same settings
        if prompts != defaultBatch || perPrompt != defaultBatch { settings["batch_size"] = prompts; settings["n"] = perPrompt }
        let settingsURL = outDir.appendingPathComponent("settings.json")
        let settingsText = try JSONSerialization.data(withJSONObject: settings, options: [.sortedKeys])
        if let old = try? Data(contentsOf: settingsURL) {
            guard old == settingsText else {
                throw ValidationError("\(outDir.path) holds a study with other settings (\(settingsURL.lastPathComponent)); use another --out")
            }
        } else {
            try settingsText.write(to: settingsURL, options: .atomic)
        }

        // one project: a resumed study sees its models
        let service = try LocalService(dataDir: outDir.appendingPathComponent("data"), nativeBLAS: nativeBLAS, project: "r3-study")
        defer { service.stop() }
        let api = service.api
        // jobs an interrupted study left behind would compete with the re-run cells
        for state in ["queued", "running", "paused"] {
            for j in try api.call("GET", "/v1/jobs?state=\(state)&limit=100")["data"] as? [[String: Any]] ?? [] {
                if let id = j["id"] as? String { _ = try? api.call("POST", "/v1/jobs/\(id)/cancel") }
            }
        }

        let total = seeds * grid.count
        var done = 0, reused = 0
        var results: [[String: Any]] = []
        let task: [String: Any] = ["task": "reverse", "difficulty": quick ? 4 : 6]
        for seed in 1...seeds {
            let sftURL = cells.appendingPathComponent("sft-seed\(seed).json")
            var sft = (try? JSONSerialization.jsonObject(with: Data(contentsOf: sftURL))) as? [String: Any]
            if sft == nil {
                let m = try api.call("POST", "/v1/models", DemoCommand.modelBody(name: "study-seed\(seed)", seed: seed, layers: layers, experts: experts,
                                                                                  topK: topK, hidden: hidden, initStd: initStd, routerStd: routerStd))
                let n = sftSteps ?? (quick ? 60 : 150)
                let job = try api.submitAndWait(["type": "sft", "model": m["id"]!, "steps": n, "learning_rate": 3e-3, "seed": seed, "checkpoint_every": n,
                                                 "eval_every": n, "aux_loss_coef": auxLossCoef].merging(task) { $1 }, label: "sft \(seed)", log: log)
                let r = job["result"] as? [String: Any] ?? [:]
                sft = ["model": m["id"]!, "policy_version": r["policy_version"] ?? 0, "eval_reward": r["eval_reward_mean"] ?? 0, "steps": n]
                try JSONSerialization.data(withJSONObject: sft!, options: [.sortedKeys]).write(to: sftURL, options: .atomic)
            }
            for c in grid {
                done += 1
                let url = cells.appendingPathComponent("\(c.name)-seed\(seed).json")
                if let cell = (try? JSONSerialization.jsonObject(with: Data(contentsOf: url))) as? [String: Any] {
                    reused += 1; results.append(cell)
                    log.line("[\(done)/\(total)] \(c.name) seed \(seed): done earlier")
                    continue
                }
                log.line("[\(done)/\(total)] \(c.name) seed \(seed)")
                let body: [String: Any] = ["type": "train", "model": sft!["model"]!, "policy_version": sft!["policy_version"]!, "steps": rlSteps,
                                           "batch_size": prompts, "n": perPrompt, "learning_rate": learningRate, "mini_steps": miniSteps,
                                           "replay": c.replay, "algorithm": c.algorithm, "tis": c.tis, "seed": seed, "on_collapse": "continue",
                                           "checkpoint_every": rlSteps, "precision": precision, "aux_loss_coef": auxLossCoef]
                let job = try api.submitAndWait(body.merging(task) { $1 }, label: "\(c.name) \(seed)", log: log)
                let id = job["id"] as! String
                let rows = try api.call("GET", "/v1/jobs/\(id)/metrics")["data"] as? [[String: Any]] ?? []
                let collapse = try api.events(id).filter { $0["type"] as? String == "training.collapse_detected" }
                    .compactMap { ($0["data"] as? [String: Any])?["step"] as? Int }.min()
                let series = rows.map { r in
                    var o: [String: Any] = ["step": r["step"] ?? 0]
                    for k in StudyCommand.metrics { o[k] = (r[k] as? NSNumber)?.doubleValue ?? NSNull() }
                    return o
                }
                // the batch as the server took it (the job's normalised params), not as this command meant it
                let params = job["params"] as? [String: Any] ?? [:]
                let cell: [String: Any] = ["name": c.name, "seed": seed, "job_id": id, "collapse_step": collapse ?? NSNull(), "series": series,
                                           "sft_reward": sft!["eval_reward"]!,
                                           "job_batch": ["batch_size": params["batch_size"] ?? NSNull(), "n": params["n"] ?? NSNull()]]
                try JSONSerialization.data(withJSONObject: cell, options: [.sortedKeys]).write(to: url, options: .atomic)
                results.append(cell)
            }
        }
        let report = try StudyCommand.report(results, grid: grid, batch: (prompts, perPrompt), seeds: seeds, settings: settings, reused: reused, outDir: outDir)
        print(report)
    }

    /// study.json, study.md and the plots from the cells; returns the Markdown.
    static func report(_ cells: [[String: Any]], grid: [Cell], batch: (prompts: Int, samples: Int), seeds: Int, settings: [String: Any], reused: Int, outDir: URL) throws -> String {
        func values(_ cell: [String: Any], _ k: String) -> [Double] {
            (cell["series"] as? [[String: Any]] ?? []).compactMap { $0[k] as? Double }.filter(\.isFinite)
        }
        func cell(_ name: String, _ seed: Int) -> [String: Any]? { cells.first { $0["name"] as? String == name && $0["seed"] as? Int == seed } }
        func mean(_ v: [Double]) -> Double? { v.isEmpty ? nil : v.reduce(0, +) / Double(v.count) }
        // three significant digits: k3 and F(2) live between 1e-5 and 1e-1, where 0.001 would hide them
        func fmt(_ d: Double?) -> String {
            guard let d else { return "n/a" }
            return d == 0 ? "0" : abs(d) < 1e-2 ? String(format: "%.2e", d) : String(format: "%.3g", d)
        }
        let seedCols = (1...seeds).map { "seed \($0)" }
        var md = "`r3 study`: \(settings["steps"]!) RL steps per cell, lr \(settings["learning_rate"]!), mini_steps \(settings["mini_steps"]!), "
        md += "\(settings["layers"]!) layers × \(settings["experts"]!) experts top-\(settings["top_k"]!), rollouts \(settings["precision"]!), "
        md += "aux \(settings["aux_loss_coef"]!), \(batch.prompts) prompts × \(batch.samples) samples per step, "
        if let v = settings["init_std"] { md += "init std \(v), " }
        if let v = settings["router_std"] { md += "router std \(v), " }
        if let v = settings["sft_steps"] { md += "\(v) SFT steps, " }
        md += "OpenBLAS \(settings["blas_core"]!).\n\n"
        md += "**Collapse matrix** (the step at which the detector first fired; — = never)\n\n| run | " + seedCols.joined(separator: " | ") + " | collapsed |\n|---|"
        md += String(repeating: "---|", count: seeds + 1) + "\n"
        var summary: [[String: Any]] = []
        for g in grid {
            let steps = (1...seeds).map { s in cell(g.name, s)?["collapse_step"] as? Int }
            md += "| \(g.name) | " + steps.map { $0.map { "step \($0)" } ?? "—" }.joined(separator: " | ") + " | \(steps.compactMap { $0 }.count)/\(seeds) |\n"
        }
        md += "\n**Mismatch and reward** (per run: mean over seeds of each seed's value)\n\n"
        md += "| run | k3 step 0 | k3 mean | F(2) step 0 | F(2) mean | reward first | reward last |\n|---|---|---|---|---|---|---|\n"
        for g in grid {
            let cs = (1...seeds).compactMap { cell(g.name, $0) }
            func over(_ f: ([String: Any]) -> Double?) -> Double? { mean(cs.compactMap(f)) }
            let k30 = over { values($0, "k3_kl").first }, k3m = over { mean(values($0, "k3_kl")) }
            let f0 = over { values($0, "extreme_frac_tau2").first }, fm = over { mean(values($0, "extreme_frac_tau2")) }
            let r0 = over { mean(Array(values($0, "reward_mean").prefix(3))) }, r1 = over { mean(Array(values($0, "reward_mean").suffix(3))) }
            md += "| \(g.name) | \(fmt(k30)) | \(fmt(k3m)) | \(fmt(f0)) | \(fmt(fm)) | \(fmt(r0)) | \(fmt(r1)) |\n"
            summary.append(["name": g.name, "k3_kl_step0": k30 ?? NSNull(), "k3_kl_mean": k3m ?? NSNull(), "extreme_frac_tau2_step0": f0 ?? NSNull(),
                            "extreme_frac_tau2_mean": fm ?? NSNull(), "reward_first": r0 ?? NSNull(), "reward_last": r1 ?? NSNull(),
                            "collapsed": (1...seeds).filter { cell(g.name, $0)?["collapse_step"] is Int }.count])
        }
        // replay per seed: the paired step-0 measurement (the same SFT policy and samples under none and R3)
        // and the run means, none against R3 on the same seed
        md += "\n**Replay per seed** (none against R3; step 0 is the same SFT policy and samples in both)\n\n"
        md += "| seed | router dis. step 0 | tokens with ≥ 1 | k3 step 0 none / R3 | cut | F(2) step 0 none / R3 (response tokens) | cut "
        md += "| k3 mean none / R3 | cut | F(2) mean none / R3 | cut |\n"
        md += "|---|---|---|---|---|---|---|---|---|---|---|\n"
        var perSeed: [[String: Any]] = []
        for seed in 1...seeds {
            guard let n = cell("none", seed), let r = cell("R3", seed) else { continue }
            func ratio(_ a: Double?, _ b: Double?) -> Double? { guard let a, let b, b > 0 else { return nil }; return a / b }
            let rd = values(n, "router_disagreement").first, td = values(n, "token_disagreement").first
            let k0 = (values(n, "k3_kl").first, values(r, "k3_kl").first)
            let km = (mean(values(n, "k3_kl")), mean(values(r, "k3_kl")))
            let fm = (mean(values(n, "extreme_frac_tau2")), mean(values(r, "extreme_frac_tau2")))
            let f0 = (values(n, "extreme_frac_tau2").first, values(r, "extreme_frac_tau2").first)
            // the step's response tokens (both runs sample the same ones at step 0): F(2)'s resolution
            let tokens0 = values(n, "response_len_mean").first.map { Int(($0 * Double(batch.prompts * batch.samples)).rounded()) }
            let pct = { (v: Double?) in v.map { String(format: "%.1f%%", 100 * $0) } ?? "—" }
            let x = { (v: Double?) in v.map { String(format: "%.2f×", $0) } ?? "—" }
            // a cut with R3 at 0 has no finite ratio: say how many tokens none had beyond [½, 2] instead
            let noneCount = tokens0.map { Int(((f0.0 ?? 0) * Double($0)).rounded()) }
            let f0cut = f0.1 == 0 && (f0.0 ?? 0) > 0
                ? "R3 0, none \(noneCount.map { "\($0) token\($0 == 1 ? "" : "s")" } ?? "> 0")" : x(ratio(f0.0, f0.1))
            md += "| \(seed) | \(pct(rd)) | \(pct(td)) | \(fmt(k0.0)) / \(fmt(k0.1)) | \(x(ratio(k0.0, k0.1))) | "
            md += "\(fmt(f0.0)) / \(fmt(f0.1)) (\(tokens0.map(String.init) ?? "?")) | \(f0cut) | \(fmt(km.0)) / \(fmt(km.1)) | "
            md += "\(x(ratio(km.0, km.1))) | \(fmt(fm.0)) / \(fmt(fm.1)) | \(x(ratio(fm.0, fm.1))) |\n"
            func pair(_ p: (Double?, Double?)) -> [Any] { [p.0 ?? NSNull(), p.1 ?? NSNull()] }
            var row: [String: Any] = ["seed": seed, "k3_kl_step0": pair(k0), "k3_kl_mean": pair(km), "extreme_frac_tau2_mean": pair(fm),
                                      "extreme_frac_tau2_step0": pair(f0), "response_tokens_step0": tokens0 ?? NSNull()]
            row["router_disagreement_step0"] = rd ?? NSNull()
            row["token_disagreement_step0"] = td ?? NSNull()
            perSeed.append(row)
        }
        // plots: one line per run, the mean over seeds at each step
        var plots: [String] = []
        for (key, title, logY) in [("k3_kl", "k3 KL (mean over seeds)", true), ("extreme_frac_tau2", "F(2) (mean over seeds)", false),
                                   ("reward_mean", "reward (mean over seeds)", false), ("grad_norm", "grad norm (mean over seeds)", true),
                                   ("entropy", "entropy (mean over seeds)", false)] {
            let series = grid.enumerated().map { i, g -> SVGChart.Series in
                let cs = (1...seeds).compactMap { cell(g.name, $0)?["series"] as? [[String: Any]] }
                let n = cs.map(\.count).max() ?? 0
                let pts: [(Double, Double?)] = (0..<n).map { t in (Double(t), mean(cs.compactMap { t < $0.count ? $0[t][key] as? Double : nil }.filter(\.isFinite))) }
                return SVGChart.Series(name: g.name, color: SVGChart.palette[i % SVGChart.palette.count], points: pts)
            }
            var chart = SVGChart(title: title, series: series, logY: logY)
            chart.width = 720; chart.height = 360
            let url = outDir.appendingPathComponent("study_\(key).svg")
            try Data(chart.render().utf8).write(to: url)
            plots.append(url.path)
        }
        let json: [String: Any] = ["version": 1, "settings": settings, "seeds": seeds, "cells_reused": reused, "runs": summary, "replay_per_seed": perSeed,
                                   "cells": cells, "plots": plots]
        try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
            .write(to: outDir.appendingPathComponent("study.json"))
        try Data(md.utf8).write(to: outDir.appendingPathComponent("study.md"))
        return md + "\n\(reused) of \(cells.count) cells were done earlier. Report: \(outDir.appendingPathComponent("study.json").path)"
    }
}
