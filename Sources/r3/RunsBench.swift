// RunsBench: `r3 bench runs`: one external trainer's step report end to end over loopback HTTP: the body
// (training log-probs of every rollout as base64 float32) in, the stored inference log-probs read in one
// query, the mismatch metrics, expert load and collapse detector, the step written, the reply out. Cases:
// without stored routes; with 30B-A3B-shaped routes stored (48 MoE layers, 128 experts, top-8: the expert
// load comes from the histograms kept with them); and a run with a long history (the detector replays it).
import ArgumentParser
import Foundation
import MoE
import Service
import Store

struct RunsBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "runs", abstract: "Run step-report benchmark; one JSON object per case.")

    @Option var rollouts = 256
    @Option(name: .customLong("prompt-tokens")) var promptTokens = 512
    @Option(name: .customLong("response-tokens")) var responseTokens = 4096
    @Option var layers = 48
    @Option(name: .customLong("top-k")) var topK = 8
    @Option(help: "At most 255 (the routes are sent as uint8).") var experts = 128
    @Option(help: "Step reports timed per case.") var reports = 20
    @Option(help: "Steps already in the run of the long-history case.") var history = 2000
    @Flag(help: "Few, small rollouts (smoke test).") var quick = false

    func run() throws {
        let n = quick ? 8 : rollouts, P = quick ? 16 : promptTokens, R = quick ? 64 : responseTokens, count = quick ? 3 : reports
        let svc = try BenchService(name: "runs")
        defer { svc.stop() }
        let auth = "Authorization: Bearer \(svc.key)"
        let json = [auth, "Content-Type: application/json"]
        func call(_ method: String, _ path: String, _ body: Any?) throws -> [String: Any] {
            let data = try body.map { try JSONSerialization.data(withJSONObject: $0) }
            let r = try svc.client.request(method, path, headers: json, body: data)
            guard (200..<300).contains(r.status) else { throw ValidationError("\(method) \(path): HTTP \(r.status) \(String(decoding: r.body.prefix(300), as: UTF8.self))") }
            return (try? JSONSerialization.jsonObject(with: r.body)) as? [String: Any] ?? [:]
        }
        let hf: [String: Any] = ["model_type": "qwen3_moe", "num_hidden_layers": layers, "num_experts": experts, "num_experts_per_tok": topK]
        _ = try call("POST", "/v1/models", ["name": "bench-30b-a3b", "hf_config": hf])
        var rng = SystemRandomNumberGenerator()
        let T = P + R
        func store(routes: Bool) throws -> [String] {
            try (0..<n).map { _ in
                var body: [String: Any] = ["model": "bench-30b-a3b", "token_ids": (0..<T).map { _ in Int.random(in: 0..<150_000, using: &rng) },
                                           "prompt_length": P, "logprobs": (0..<R).map { _ in -Double.random(in: 0.01...4, using: &rng) }]
                if routes {
                    // distinct experts per row, cheaply: a random start, then strides of E / K
                    var ids = [UInt8](repeating: 0, count: (T - 1) * layers * topK)
                    let stride = max(1, experts / topK)
                    for row in 0..<((T - 1) * layers) {
                        let start = Int.random(in: 0..<experts, using: &rng)
                        for j in 0..<topK { ids[row * topK + j] = UInt8((start + j * stride) % experts) }
                    }
                    body["routed_experts"] = ["dtype": "uint8", "shape": [T - 1, layers, topK], "data": Data(ids).base64EncodedString()]
                }
                guard let id = try call("POST", "/v1/rollouts", body)["id"] as? String else { throw ValidationError("no rollout id") }
                return id
            }
        }
        // the trainer's log-probs: one float32 array per rollout, base64
        let lp = (0..<n).map { _ in
            Data((0..<R).flatMap { _ -> [UInt8] in withUnsafeBytes(of: Float(-Double.random(in: 0.01...4, using: &rng)).bitPattern.littleEndian, Array.init) })
                .base64EncodedString()
        }
        func report(run: String, step: Int, ids: [String]) throws -> (seconds: Double, bytes: Int, reply: [String: Any]) {
            let body = try JSONSerialization.data(withJSONObject: [
                "step": step, "policy_version": step, "replay": "R3", "metrics": ["reward": 0.5, "grad_norm": 1.0, "entropy": 1.2, "loss": -0.01],
                "rollouts": zip(ids, lp).map { ["id": $0, "logprobs": $1] }] as [String: Any])
            let t0 = ContinuousClock.now
            let r = try svc.client.request("POST", "/v1/runs/\(run)/steps", headers: json, body: body)
            let s = seconds(since: t0)
            guard r.status == 201 else { throw ValidationError("report: HTTP \(r.status) \(String(decoding: r.body.prefix(300), as: UTF8.self))") }
            return (s, body.count, (try? JSONSerialization.jsonObject(with: r.body)) as? [String: Any] ?? [:])
        }
        let config: [String: Any] = ["rollouts": n, "prompt_tokens": P, "response_tokens": R, "reports": count, "database": svc.label,
                                     "log_level": svc.config.logLevel.rawValue]
        let plain = try store(routes: false)
        try timed("step_report", ids: plain, config: config, count: count, report: report, call: call)
        let routed = try store(routes: true)
        try timed("step_report_with_routes", ids: routed, config: config.merging(["layers": layers, "experts": experts, "top_k": topK]) { $1 },
                  count: count, report: report, call: call)
        // a long run: `history` metric-only steps first, then the same reports (the detector replays the series)
        let long = try call("POST", "/v1/runs", ["name": "bench-history"])["id"] as? String ?? ""
        for s in 0..<(quick ? 50 : history) {
            _ = try call("POST", "/v1/runs/\(long)/steps", ["step": s, "metrics": ["reward": 0.5, "grad_norm": 1.0, "entropy": 1.2, "loss": -0.01]])
        }
        try timed("step_report_after_history", ids: plain, config: config.merging(["history_steps": quick ? 50 : history]) { $1 }, count: count,
                  run: long, first: quick ? 50 : history, report: report, call: call)
    }

    /// Times `count` reports of `ids` to a run (a new one unless given) and prints the case.
    func timed(_ name: String, ids: [String], config: [String: Any], count: Int, run: String? = nil, first: Int = 0,
               report: (String, Int, [String]) throws -> (seconds: Double, bytes: Int, reply: [String: Any]),
               call: (String, String, Any?) throws -> [String: Any]) throws {
        let id = try run ?? (call("POST", "/v1/runs", ["name": "bench-\(name)"])["id"] as? String ?? "")
        var times: [Double] = []
        var bytes = 0
        var load: Any = NSNull()
        for s in 0..<count {
            let x = try report(id, first + s, ids)
            times.append(x.seconds); bytes = x.bytes
            if let l = x.reply["expert_load"] as? [String: Any] { load = ["tokens": l["tokens"] ?? 0, "imbalance_max": l["imbalance_max"] ?? 0] }
        }
        times.sort()
        try printJSON(["case": name, "config": config, "body_mb": Double(bytes) / 1e6, "expert_load": load,
                       "p50_ms": times[times.count / 2] * 1000, "p99_ms": times[min(times.count - 1, Int(Double(times.count) * 0.99))] * 1000,
                       "min_ms": times[0] * 1000])
    }
}
