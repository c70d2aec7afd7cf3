// ForwardCommand: `r3 forward`: one sequence through a checkpoint, live or with replayed routes, to safetensors.
import ArgumentParser
import Foundation
import MoE
import Routes

struct ForwardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forward",
        abstract: "Run one forward pass and write logits, routed_experts, router_weights and router_logits (and the load-balancing aux_loss in the metadata) to a safetensors file.")

    @Option(help: "Checkpoint directory (config.json + model.safetensors, or shards with an index).")
    var model: String
    @Option(name: .customLong("input-ids"), help: "Comma-separated token ids, e.g. 3,17,42.")
    var inputIDs: String
    @Option(name: .customLong("replay-routes"), help: "A .npy integer array [T or T-1, moe_layers, top_k] of experts to force; rows of -1 route live.")
    var replayRoutes: String?
    @Option(help: "fp32 | bf16 | deterministic.")
    var precision: String = "fp32"
    @Option(help: "Output .safetensors path.")
    var output: String

    func run() throws {
        let ids = try parseIDs(inputIDs, option: "--input-ids")
        let numerics = try parseNumerics(precision)
        let m = try loadModel(model)
        var routing = Routing.live
        if let path = replayRoutes {
            guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("cannot read \(path)") }
            let arr = try NPY.decode(data)
            guard arr.shape.count == 3 else { throw ValidationError("\(path): routes must have rank 3 [T or T-1, moe_layers, top_k], got shape \(arr.shape)") }
            routing = .replay([try RouteArray(rows: arr.shape[0], layers: arr.shape[1], topK: arr.shape[2], ids: try arr.int32s())])
        }
        let engine = Engine(model: m, numerics: numerics)
        let out = try engine.forward([ids], routing: routing, options: ForwardOptions(keepLogits: true, routerLogits: true))
        var w = SafetensorsWriter()
        let T = ids.count, L = out.routes.layers, K = out.routes.topK
        w.add("logits", floats: out.logits, shape: [T, m.config.vocabSize])
        w.add("routed_experts", int32s: out.routes.ids, shape: [T, L, K])
        w.add("router_weights", floats: out.gates, shape: [T, L, K])
        w.add("router_logits", floats: out.routerLogits, shape: [T, L, m.config.numExperts])
        if !out.auxLoss.isNaN { w.metadata["aux_loss"] = String(out.auxLoss) }
        w.metadata["precision"] = numerics.name
        w.metadata["replay_fallback_rows"] = String(out.replayFallbackRows)
        try w.write(to: URL(fileURLWithPath: output))
    }
}
