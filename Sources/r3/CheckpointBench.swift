// CheckpointBench: `r3 bench checkpoints`: a training checkpoint (bench-m weights + AdamW state, fp32)
// through the shared store: saved to local scratch, stored in PostgreSQL, fetched back into an empty
// cache (a machine that never saw it), loaded from a warm cache, and downloaded over HTTP. Median of
// `--rounds`; MB are 10^6 bytes.
import ArgumentParser
import Foundation
import MoE
import RL
import Service
import Store

struct CheckpointBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "checkpoints", abstract: "Checkpoint store benchmark; one JSON object per case.")

    @Option(help: "Model config.json (default: the built-in bench-m).") var config: String?
    @Option var rounds = 3
    @Flag(help: "A tiny model, one round (smoke test).") var quick = false

    func run() throws {
        var json = EngineBenchCommand.benchM
        if let path = config {
            guard let data = FileManager.default.contents(atPath: path),
                  let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { throw ValidationError("cannot read \(path)") }
            json = obj
        }
        if quick { json["num_hidden_layers"] = 1; json["num_experts"] = 4; json["vocab_size"] = 512 }
        let cfg = try ModelConfig(json: json)
        let svc = try BenchService(name: "checkpoints")
        defer { svc.stop() }
        let pool = svc.pool
        let policy = Policy(model: try Model(config: cfg, seed: 1), learningRate: 1e-4, workers: 2)
        // a project, a model and a running job for the rows to refer to
        let project = try pool.with { try $0.query("SELECT project_id FROM api_keys ORDER BY id DESC LIMIT 1").int(0, "project_id") }
        guard let model = try ModelRepository(pool: pool).create(project: project, name: "bench-checkpoints", configJSON: "{}", source: "random", store: { _, _ in nil }) else {
            throw ValidationError("cannot create the bench model")
        }
        let job = try pool.with {
            try $0.query("""
                INSERT INTO jobs (project_id, type, model_id, params, state, lease_token)
                VALUES (\(project), 'sft', \(model.id)::uuid, '{}', 'running', gen_random_uuid()) RETURNING id, lease_token
                """)
        }
        let claim = (try job.string(0, "id"), try job.string(0, "lease_token"))
        let n = quick ? 1 : max(1, rounds)
        var save: [Double] = [], store: [Double] = [], fetch: [Double] = [], cold: [Double] = [], warm: [Double] = [], http: [Double] = []
        var bytes = 0
        for round in 0..<n {
            let cacheDir = svc.tmp.appendingPathComponent("machine-\(round)")
            let cache = try CheckpointCache(dataDirectory: cacheDir, limit: 1 << 40)
            let scratch = try cache.scratch()
            let dir = scratch.appendingPathComponent("checkpoint")
            var t = ContinuousClock.now
            try policy.save(directory: dir, meta: ["round": round])
            save.append(seconds(since: t))
            t = ContinuousClock.now
            let record = try CheckpointStore.put(pool, model: model.id, directory: dir, job: claim)
            store.append(seconds(since: t))
            bytes = record.bytes
            try FileManager.default.removeItem(at: scratch)
            let into = svc.tmp.appendingPathComponent("fetch-\(round)")
            t = ContinuousClock.now
            try CheckpointStore.fetch(pool, record, into: into)
            fetch.append(seconds(since: t))
            try FileManager.default.removeItem(at: into)
            // another machine: an empty cache, then the same machine again
            let other = try CheckpointCache(dataDirectory: svc.tmp.appendingPathComponent("other-\(round)"), limit: 1 << 40)
            t = ContinuousClock.now
            _ = try other.with(record, pool: pool) { try Policy.load(directory: $0, learningRate: 1e-4, inference: .bf16, workers: 2) }
            cold.append(seconds(since: t))
            t = ContinuousClock.now
            _ = try other.with(record, pool: pool) { try Policy.load(directory: $0, learningRate: 1e-4, inference: .bf16, workers: 2) }
            warm.append(seconds(since: t))
            // the weights over HTTP, as a user downloads them (policy version rows refer to the checkpoint)
            let version = try pool.with { try ModelRepository.addVersion($0, model: model.id, job: claim.0, step: round, checkpointID: record.id) }
            let file = record.files.first { $0.name == "model.safetensors" }!
            t = ContinuousClock.now
            let client = try LoopbackClient(port: svc.port)   // a file is streamed on a connection of its own, closed at its end
            let r = try client.request("GET", "/v1/models/\(model.id)/versions/\(version)/checkpoint/model.safetensors",
                                           headers: ["Authorization: Bearer \(svc.key)"], body: nil)
            http.append(seconds(since: t))
            guard r.status == 200, r.body.count == file.size else { throw ValidationError("download: HTTP \(r.status), \(r.body.count) bytes") }
            try? FileManager.default.removeItem(at: cacheDir)
            try? FileManager.default.removeItem(at: svc.tmp.appendingPathComponent("other-\(round)"))
        }
        let weightsBytes = ParameterLayout(cfg).total * 4
        let base: [String: Any] = ["model": config ?? (quick ? "bench-m, 1 layer, 4 experts" : "qwen3moe-bench-m (built-in)"),
                                   "parameters": ParameterLayout(cfg).total, "rounds": n, "database": svc.label]
        func mbps(_ b: Int, _ s: [Double]) -> Double { Double(b) / median(s) / 1e6 }
        for (name, s, b) in [("save_local", save, bytes), ("store", store, bytes), ("fetch", fetch, bytes),
                             ("load_other_machine", cold, bytes), ("load_cached", warm, bytes), ("http_download_weights", http, weightsBytes)] {
            try printJSON(["case": name, "seconds": median(s), "bytes": b, "mb_per_s": mbps(b, s), "config": base])
        }
    }
}
