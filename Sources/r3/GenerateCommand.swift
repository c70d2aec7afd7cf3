// GenerateCommand: `r3 generate`: batched KV-cache sampling from a checkpoint, printed as JSON with routes.
import ArgumentParser
import Foundation
import MoE

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Sample continuations and print tokens, log-probs and the recorded routes as JSON.")

    @Option(help: "Checkpoint directory.")
    var model: String
    @Option(name: .customLong("prompt-ids"), help: "Comma-separated prompt token ids; repeat the option for a batch.")
    var promptIDs: [String]
    @Option(name: .customLong("max-tokens")) var maxTokens: Int = 32
    @Option var seed: UInt64 = 0
    @Option(help: "0 for greedy.") var temperature: Float = 1
    @Option(name: .customLong("top-p")) var topP: Float = 1
    @Option(name: .customLong("top-k")) var topK: Int = 0
    @Option(name: .customLong("stop-ids"), help: "Comma-separated token ids that end a sequence.") var stopIDs: String?
    @Option(help: "fp32 | bf16 | deterministic.") var precision: String = "bf16"

    func run() throws {
        guard !promptIDs.isEmpty else { throw ValidationError("give at least one --prompt-ids") }
        let prompts = try promptIDs.map { try parseIDs($0, option: "--prompt-ids") }
        let stops = try stopIDs.map { try parseIDs($0, option: "--stop-ids") } ?? []
        let engine = Engine(model: try loadModel(model), numerics: try parseNumerics(precision))
        let params = SamplingParams(maxTokens: maxTokens, temperature: temperature, topP: topP, topK: topK, seed: seed, stopTokens: stops)
        let gens = try engine.generate(prompts, sampling: params)
        let L = engine.config.moeLayers.count, K = engine.config.topK
        let results: [[String: Any]] = gens.map { g in
            let routes: [[[Int32]]] = (0..<g.routes.rows).map { t in
                (0..<L).map { l in Array(g.routes.ids[((t * L + l) * K)..<((t * L + l) * K + K)]) }
            }
            return ["prompt_length": g.promptLength, "tokens": g.tokens, "generated": Array(g.generated),
                    "logprobs": g.logprobs, "finish_reason": g.finishReason, "routed_experts": routes,
                    "routed_experts_shape": [g.routes.rows, L, K]]
        }
        try printJSON(["precision": engine.numerics.name, "seed": seed, "results": results])
    }
}

struct InitModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init-model",
        abstract: "Write a randomly initialised checkpoint (HF layout) for a config.json (qwen3_moe, mixtral, glm4_moe or deepseek_v3).")

    @Option(help: "A config.json of one of the engine's families.") var config: String
    @Option var seed: UInt64 = 0
    @Option(help: "Std of the matrices (HF initializer_range).") var std: Float = 0.02
    @Option(name: .customLong("router-std"), help: "Std of the routers (larger: more decisive routing).") var routerStd: Float?
    @Option(help: "Output directory.") var out: String
    @Option(help: "f32 | bf16 | f16.") var dtype: String = "f32"

    func run() throws {
        let url = URL(fileURLWithPath: config)
        guard let data = FileManager.default.contents(atPath: url.path),
              let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ValidationError("\(config) is not a readable JSON object")
        }
        guard let d = ["f32": STDType.f32, "bf16": .bf16, "f16": .f16][dtype] else { throw ValidationError("--dtype must be f32, bf16 or f16") }
        let m = try Model(config: try ModelConfig(json: obj), seed: seed, std: std, routerStd: routerStd)
        try m.save(directory: URL(fileURLWithPath: out), dtype: d)
        try printJSON(["path": out, "parameters": m.layout.total, "moe_layers": m.config.moeLayers])
    }
}
