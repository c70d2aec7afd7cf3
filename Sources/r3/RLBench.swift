// RLBench: `r3 bench rl`: SFT a small MoE on a built-in task, then RL from that one checkpoint with the
// same seeds under each replay mode; prints one JSON object per run (mismatch means, reward first → last,
// step time) and the SFT reward curve. In-process: the engine and the RL module, no service.
import ArgumentParser
import Foundation
import MoE
import RL

struct RLBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rl", abstract: "SFT then RL per replay mode (none, R2, R3) from one checkpoint and seeds; JSON per run.")

    @Option(help: "Built-in task: addition | sort | reverse.") var task = "reverse"
    @Option(help: "Task difficulty.") var difficulty: Int = 3
    @Option(name: .customLong("sft-steps")) var sftSteps = 300
    @Option(help: "RL steps per run.") var steps = 30
    @Option(help: "Prompts per RL step.") var batch = 8
    @Option(help: "Samples per prompt (group size).") var n = 8
    @Option var layers = 4
    @Option var experts = 16
    @Option(name: .customLong("top-k")) var topK = 4
    @Option var hidden = 128
    @Option(name: .customLong("learning-rate")) var learningRate: Float = 1e-4
    @Option(name: .customLong("mini-steps")) var miniSteps = 1
    @Option(help: "Comma-separated replay modes.") var modes = "none,R2,R3"
    @Option var seed: UInt64 = 1
    @Option(name: .customLong("init-std"), help: "Init std of the weight matrices (larger: experts differ more).") var initStd: Float = 0.02
    @Option(name: .customLong("router-std"), help: "Init std of the routers (HF's 0.02; much larger makes the gates degenerate after SFT).") var routerStd: Float = 0.02
    @Option(help: "Worker threads (default: all cores).") var workers = ProcessInfo.processInfo.activeProcessorCount

    func run() throws {
        guard let kind = Task.Kind(rawValue: task) else { throw ValidationError("--task must be addition, sort or reverse") }
        let t = try Task(kind: kind, difficulty: difficulty)
        let cfg = ModelConfig(vocabSize: 128, hiddenSize: hidden, intermediateSize: 2 * hidden, moeIntermediateSize: hidden / 2,
                              numLayers: layers, numHeads: 4, numKVHeads: 2, headDim: hidden / 4, numExperts: experts, topK: topK,
                              normTopKProb: true)
        let sft = Policy(model: try Model(config: cfg, seed: seed, std: initStd, routerStd: routerStd), learningRate: 3e-3, workers: workers)
        var curve: [[String: Any]] = []
        let t0 = ContinuousClock.now
        for s in 0..<sftSteps {
            let (loss, _, _) = try sft.supervisedStep(try sft.supervisedBatch(task: t, step: s, batch: 32, seed: seed))
            if (s + 1) % max(1, sftSteps / 10) == 0 || s + 1 == sftSteps {
                curve.append(["step": s + 1, "loss": loss, "eval_reward": try sft.evaluate(task: t, count: 64, seed: seed)])
            }
        }
        try printJSON(["case": "sft", "task": task, "difficulty": difficulty, "steps": sftSteps, "curve": curve,
                       "seconds": seconds(since: t0), "init_std": initStd, "router_std": routerStd, "experts": experts, "top_k": topK, "layers": layers, "hidden": hidden])
        for mode in modes.split(separator: ",").map(String.init) {
            guard let replay = ReplayMode(rawValue: mode) else { throw ValidationError("unknown replay mode \(mode)") }
            let p = Policy(model: sft.model.clone(), learningRate: learningRate, workers: workers)
            var opt = OptimConfig(); opt.replay = replay; opt.miniSteps = miniSteps
            var rc = RolloutConfig(); rc.promptsPerStep = batch; rc.samplesPerPrompt = n; rc.seed = seed
            var rows: [[String: Double]] = []
            var trainSeconds: [Double] = [], rolloutSeconds: [Double] = []
            for s in 0..<steps {
                let r0 = ContinuousClock.now
                let samples = try p.rollout(task: t, step: s, rc).samples
                rolloutSeconds.append(seconds(since: r0))
                let o0 = ContinuousClock.now
                rows.append(try p.optimise(samples, opt))
                trainSeconds.append(seconds(since: o0))
            }
            // null where a metric does not apply (replay_live_agreement without replay)
            func mean(_ k: String) -> Any { let v = rows.compactMap { $0[k] }.filter(\.isFinite); return v.isEmpty ? NSNull() : v.reduce(0, +) / Double(v.count) }
            func maxOf(_ k: String) -> Any { rows.compactMap { $0[k] }.filter(\.isFinite).max() ?? NSNull() }
            let rewards = rows.map { $0["reward_mean"] ?? .nan }
            let third = max(1, steps / 3)
            try printJSON(["case": "rl", "replay": mode, "steps": steps, "samples_per_step": batch * n, "mini_steps": miniSteps,
                           "k3_kl_mean": mean("k3_kl"), "k3_kl_max": maxOf("k3_kl"),
                           "k3_kl_step0": rows.first?["k3_kl"] ?? NSNull(),   // the same policy and samples in every mode
                           "extreme_frac_tau2_mean": mean("extreme_frac_tau2"), "extreme_frac_tau5_mean": mean("extreme_frac_tau5"),
                           "router_disagreement_mean": mean("router_disagreement"), "token_disagreement_mean": mean("token_disagreement"),
                           "replay_live_agreement_mean": mean("replay_live_agreement"), "router_gate_entropy_mean": mean("router_gate_entropy"), "grad_norm_mean": mean("grad_norm"),
                           "reward_first_third": rewards.prefix(third).reduce(0, +) / Double(third),
                           "reward_last_third": rewards.suffix(third).reduce(0, +) / Double(third),
                           "reward_curve": rewards.map { ($0 * 1000).rounded() / 1000 },
                           "k3_kl_curve": rows.map { $0["k3_kl"].map { $0.isFinite ? $0 as Any : NSNull() } ?? NSNull() },
                           "router_disagreement_curve": rows.map { $0["router_disagreement"].map { $0.isFinite ? $0 as Any : NSNull() } ?? NSNull() },
                           "train_step_seconds_mean": trainSeconds.reduce(0, +) / Double(steps),
                           "rollout_seconds_mean": rolloutSeconds.reduce(0, +) / Double(steps)])
        }
    }

}
