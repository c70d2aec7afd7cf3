// JobExecutor: runs one claimed job — rollout, sft or train — on the engine. A training step's results
// (rollouts with routes, metrics, the new policy version, progress, its event, and every K steps the
// checkpoint) are written in one transaction fenced on the claim; a resumed attempt starts at the last
// checkpoint and rewrites the steps after it, so no rollout is lost or duplicated.
import Foundation
import JSON
import MoE
import RL
import Routes
import Store

struct JobExecutor {
    let app: App
    let claim: JobClaim
    let control: JobControl
    let threads: Int
    var jobs: JobRepository { JobRepository(pool: app.pool) }
    var job: JobRecord { claim.job }

    func run() throws -> [String: Any] {
        guard let params = (try? JSONReader.parse(Array(job.paramsJSON.utf8)))?.objectValue else {
            throw RLError.invalid("the job's params are not a JSON object")
        }
        guard let model = try app.models.get(project: job.projectID, id: job.modelID) else { throw RLError.invalid("model \(job.modelID) no longer exists") }
        let config = try ModelConfig(json: (try? JSONReader.parse(Array(model.configJSON.utf8)))?.objectValue ?? JSONObject())
        let spec = try JobSpec(params, vocab: { _ in config.vocabSize })
        switch spec.type {
        case .rollout: return try rollout(spec)
        case .sft, .train: return try train(spec)
        }
    }

    // MARK: policies and files

    /// The checkpoint a job starts from: its own last checkpoint when resuming, else the model's. Either
    /// may have been written on another machine: it comes from the store, through this machine's cache.
    func start(_ spec: JobSpec) throws -> (policy: Policy, step: Int, version: Int) {
        _ = try? app.pool.with { try CheckpointStore.collectGarbage($0, model: job.modelID) }   // uploads of attempts that died
        if let text = job.checkpointJSON, let ck = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
           let step = ck["step"] as? Int, let version = ck["version"] as? Int {
            guard let id = ck["checkpoint_id"] as? String else {
                throw StoreError.checkpoint("the job's checkpoint at step \(step) was written to \(ck["path"] ?? "a local directory") by an older installation and has not been moved into the database; start r3 once on the machine that has it")
            }
            guard let record = try app.pool.withRetry({ try CheckpointStore.get($0, id: id) }) else {
                throw StoreError.checkpoint("the job's checkpoint \(id) at step \(step) is gone")
            }
            let p = try app.checkpoints.with(record, pool: app.pool) { dir in
                try Policy.load(directory: dir, learningRate: Float(spec.learningRate), inference: spec.numerics, workers: threads)
            }
            return (p, step, version)
        }
        guard let (version, record) = try app.models.checkpoint(model: job.modelID, version: spec.policyVersion) else {
            throw RLError.invalid(spec.policyVersion.map { "model \(job.modelID) has no checkpointed policy version \($0)" } ?? "model \(job.modelID) has no checkpoint")
        }
        let model = try app.checkpoints.with(record, pool: app.pool) { try Model.load(directory: $0) }
        return (Policy(model: model, learningRate: Float(spec.learningRate), inference: spec.numerics, workers: threads), 0, version)
    }

    /// Saves the policy after `step` steps and stores it (in its own transaction, marked as this
    /// attempt's until the step's commit refers to it); the local copy stays in the cache.
    func storeCheckpoint(_ policy: Policy, step: Int) throws -> CheckpointRecord {
        let scratch = try app.checkpoints.scratch()
        defer { try? FileManager.default.removeItem(at: scratch) }
        let dir = scratch.appendingPathComponent("checkpoint")
        try policy.save(directory: dir, meta: ["job_id": job.id, "model_id": job.modelID, "step": step])
        let record = try CheckpointStore.put(app.pool, model: job.modelID, directory: dir, job: (job.id, claim.token))
        app.checkpoints.adopt(dir, record: record)
        return record
    }

    /// A sequence's recorded routes in the stored form, with the model's layout (its dense layers too).
    static func packed(_ t: RouteArray, config c: ModelConfig) throws -> PackedRoutes {
        var p = try PackedRoutes(t, numExperts: c.numExperts)
        p.hiddenLayers = c.numLayers
        p.moeLayers = c.moeLayers
        return p
    }

    static func metadata(_ o: [String: Any]) -> String {
        String(decoding: (try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])) ?? Data("{}".utf8), as: UTF8.self)
    }

    /// Metrics as a JSON object; NaN and ±Inf become null.
    static func metricsJSON(_ m: [String: Double], extra: [String: Any]) -> (String, [String: Any]) {
        var o = extra
        for (k, v) in m { o[k] = v.isFinite ? v : NSNull() }
        return (metadata(o), o)
    }

    static func jsonNumber(_ v: Double) -> Any { v.isFinite ? v : NSNull() }

    /// A stored metrics object as numbers (null and non-numbers dropped).
    static func numbers(_ text: String) -> [String: Double] {
        guard let o = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else { return [:] }
        return o.compactMapValues { ($0 as? NSNumber)?.doubleValue }
    }


    // MARK: rollout

    func rollout(_ spec: JobSpec) throws -> [String: Any] {
        let t0 = ContinuousClock.now
        let (policy, _, version) = try start(spec)
        let c = policy.config
        var all: [(Generation, Int)] = []   // generation, prompt index
        var flat: [([Int32], Int)] = []
        for (i, p) in spec.prompts.enumerated() { for _ in 0..<spec.n { flat.append((p, i)) } }
        let chunk = 64
        var start = 0
        while start < flat.count {
            try control.check()
            let part = Array(flat[start..<min(flat.count, start + chunk)])
            // sequence b of the job always samples from seed + b, whatever the chunking
            let sampling = SamplingParams(maxTokens: spec.maxTokens ?? 64, temperature: Float(spec.temperature), topP: Float(spec.topP),
                                          topK: spec.topK, seed: UInt64(spec.seed + start), stopTokens: spec.stopTokenIDs.map(Int32.init))
            let gens = try policy.generate(part.map(\.0), sampling: sampling)
            all += zip(gens, part.map(\.1)).map { ($0, $1) }
            start += chunk
            _ = try jobs.fenced(claim) { conn in
                try JobRepository.setProgress(conn, job: job.id, progress: ["samples": min(start, flat.count), "total": flat.count])
            }
        }
        try control.check()
        var ids: [String] = []
        var generated = 0
        _ = try jobs.fenced(claim) { conn in
            let rows = try all.map { g, p in
                NewRollout(model: job.modelID, policyVersion: version, tokenIDs: g.tokens, promptLength: g.promptLength,
                           logprobs: g.logprobs, reward: nil, groupID: "\(job.id):\(p)",
                           metadataJSON: JobExecutor.metadata(["job_id": job.id, "prompt_index": p, "finish_reason": g.finishReason,
                                                               "precision": spec.precision.rawValue]),
                           routes: try JobExecutor.packed(g.routes, config: c))
            }
            try RolloutRepository.reserveRouteBytes(conn, project: job.projectID, adding: rows.reduce(0) { $0 + ($1.routes?.bytes.count ?? 0) })
            for (i, (r, (g, _))) in zip(rows, all).enumerated() {
                generated += g.tokens.count - g.promptLength
                ids.append(try RolloutRepository.insert(conn, project: job.projectID, r, job: (job.id, 0, i)))
            }
            try JobRepository.setProgress(conn, job: job.id, progress: ["samples": flat.count, "total": flat.count])
        }
        var result: [String: Any] = ["rollout_ids": ids, "policy_version": version, "samples": ids.count, "generated_tokens": generated,
                                     "seconds": seconds(since: t0)]
        // with a read replica: the position a client's reads of these rollouts name (R3-Min-LSN)
        if let lsn = app.reads.noteWrite(project: job.projectID) { result["write_lsn"] = ReadRouting.format(lsn) }
        return result
    }

    // MARK: sft and train

    /// Samples of stored rollouts for offline training (their rewards, groups, log-probs and routes).
    func storedSamples(_ spec: JobSpec, config c: ModelConfig) throws -> [Sample] {
        let (found, missing) = try app.rollouts.withRoutes(project: job.projectID, ids: spec.rolloutIDs ?? [])
        if let m = missing.first { throw RLError.invalid("rollout \(m) does not exist in this project") }
        let expired = found.filter { $0.1 == nil && $0.0.routesExpired }.map(\.0.id)
        if !expired.isEmpty {
            throw RLError.invalid("the routes of \(expired.count) rollout(s) expired under the project's retention: \(expired.prefix(5).joined(separator: ", "))\(expired.count > 5 ? ", …" : "")")
        }
        var groups: [String: Int] = [:]
        return try found.map { r, packed in
            guard let reward = r.reward else { throw RLError.invalid("rollout \(r.id) has no reward; offline training needs one per rollout") }
            guard r.tokenIDs.count - r.promptLength >= 1 else { throw RLError.invalid("rollout \(r.id) has no response tokens") }
            if let m = r.lossMask, m.contains(0) {
                throw RLError.invalid("rollout \(r.id) has response tokens with loss_mask 0 (multi-turn context); offline training does not take such rollouts yet")
            }
            if let bad = r.tokenIDs.first(where: { Int($0) >= c.vocabSize }) { throw RLError.invalid("rollout \(r.id) has token \(bad) outside the model's vocabulary") }
            var table: RouteArray?
            if let p = packed {
                let sameLayers = (p.hiddenLayers == c.numLayers && p.moeLayers == c.moeLayers) || !p.hasDenseLayers   // rows stored without a layout: the MoE layers in order
                guard p.layers == c.moeLayers.count, sameLayers, p.topK == c.topK, p.numExperts <= c.numExperts else {
                    throw RLError.invalid("rollout \(r.id) routes are [\(p.rows), \(p.layers), \(p.topK)] over \(p.numExperts) experts; the model has \(c.moeLayers.count) MoE layers, top-\(c.topK), \(c.numExperts) experts")
                }
                table = try p.unpack()
            }
            let g = groups[r.groupID ?? "", default: groups.count]
            groups[r.groupID ?? ""] = g
            return Sample(tokens: r.tokenIDs, promptLength: r.promptLength, inferLogprobs: r.logprobs, routes: table, reward: reward, group: g)
        }
    }

    func train(_ spec: JobSpec) throws -> [String: Any] {
        var (policy, first, version) = try start(spec)
        let c = policy.config
        let task = spec.builtInTask
        let stored = spec.rolloutIDs == nil ? nil : try storedSamples(spec, config: c)
        if first > 0 || job.attempts > 1 {
            _ = try jobs.fenced(claim) { c in
                try JobRepository.discardSteps(c, job: job.id, from: first)
                try JobRepository.addEvent(c, job: job.id, type: "job.resumed", data: ["from_step": first, "policy_version": version])
            }
        }
        let (opt, rc) = JobExecutor.configs(spec)
        var last: [String: Any] = [:]
        var lastEval: Double?
        var detector = CollapseDetector(rules: spec.collapse)
        let startVersion = version
        if spec.type == .train && first > 0 {   // the medians and latches of the steps before the resume, silently
            for (s, text) in try jobs.metrics(job: job.id) where s < first { _ = detector.observe(step: s, JobExecutor.numbers(text)) }
        }
        for step in first..<spec.steps {
            try control.check()
            let t0 = ContinuousClock.now
            var extra: [String: Any] = ["step": step, "policy_version": version]
            var (metrics, samples) = try compute(step: step, spec, policy, task: task, stored: stored, opt, rc, extra: &extra)
            if spec.type == .sft, let e = metrics["reward_mean"] { lastEval = e }
            if task == nil { samples = [] }   // offline: the rollouts are already stored
            let alarms = spec.type == .train ? detector.observe(step: step, metrics) : []
            let action = alarms.isEmpty ? CollapseAction.continue : spec.onCollapse
            let done = step + 1
            // stop: this step's update is not kept (the last checkpoint is the last good policy); pause: it is, to resume from
            let save = action == .pause || (action != .stop && (done % spec.checkpointEvery == 0 || done == spec.steps))
            var checkpoint: CheckpointRecord?
            let t2 = ContinuousClock.now
            if save { checkpoint = try storeCheckpoint(policy, step: done) }
            extra["checkpoint_seconds"] = seconds(since: t2)
            extra["step_seconds"] = seconds(since: t0)
            if spec.type == .train { for k in App.metricColumns where metrics[k] == nil && extra[k] == nil { extra[k] = NSNull() } }
            let (text, object) = JobExecutor.metricsJSON(metrics, extra: extra)
            let record = StepRecord(step: step, samples: samples, metricsText: text, metricsObject: object, alarms: alarms, action: action,
                                    checkpoint: checkpoint, generatingVersion: version, startVersion: startVersion)
            let (newVersion, cancel) = try jobs.fenced(claim) { conn in try commit(conn, record, spec, config: c) }
            if action != .continue { throw JobInterruption.ended }
            version = newVersion
            control.set(cancel: cancel)
            last = object
        }
        var result: [String: Any] = ["policy_version": version, "steps": spec.steps, "last_metrics": last]
        if task != nil, let lsn = app.reads.noteWrite(project: job.projectID) { result["write_lsn"] = ReadRouting.format(lsn) }
        if let e = lastEval { result["eval_reward_mean"] = e }
        if let (v, ck) = try app.models.checkpoint(model: job.modelID, version: version) {
            result["checkpoint_id"] = ck.id
            result["checkpoint_url"] = "/v1/models/\(job.modelID)/versions/\(v)/checkpoint"
        }
        return result
    }

    /// The train/sft settings of the RL library, from the job's spec.
    static func configs(_ spec: JobSpec) -> (OptimConfig, RolloutConfig) {
        var opt = OptimConfig()
        opt.loss = LossConfig(algorithm: spec.algorithm, tis: spec.tis, tisCap: spec.tisCap)
        opt.replay = spec.replay; opt.miniSteps = spec.miniSteps; opt.maxGradNorm = spec.maxGradNorm
        opt.temperature = Float(spec.temperature == 0 ? 1 : spec.temperature)
        opt.auxLossCoef = Float(spec.auxLossCoef)
        var rc = RolloutConfig()
        rc.promptsPerStep = spec.batchSize; rc.samplesPerPrompt = spec.n; rc.maxTokens = spec.maxTokens
        rc.temperature = opt.temperature; rc.seed = UInt64(spec.seed)
        return (opt, rc)
    }

    /// One step's compute: an SFT update (with an evaluation every eval_every steps), or rollouts (online
    /// on the task, or the stored ones) and the policy update. Times go into `extra`.
    func compute(step: Int, _ spec: JobSpec, _ policy: Policy, task: Task?, stored: [Sample]?, _ opt: OptimConfig, _ rc: RolloutConfig,
                 extra: inout [String: Any]) throws -> ([String: Double], [Sample]) {
        let t0 = ContinuousClock.now
        if spec.type == .sft {
            let batch = try policy.supervisedBatch(task: task!, step: step, batch: spec.batchSize, seed: UInt64(spec.seed))
            let (loss, gn, aux) = try policy.supervisedStep(batch, maxGradNorm: spec.maxGradNorm, auxLossCoef: Float(spec.auxLossCoef))
            extra["train_seconds"] = seconds(since: t0)
            var metrics = ["loss": loss, "grad_norm": gn]
            if !aux.isNaN { metrics["aux_loss"] = aux }
            if (step + 1) % spec.evalEvery == 0 || step + 1 == spec.steps {
                metrics["reward_mean"] = try policy.evaluate(task: task!, count: 32, seed: UInt64(spec.seed))
            }
            return (metrics, [])
        }
        let samples = try task.map { try policy.rollout(task: $0, step: step, rc).samples } ?? stored!
        extra["rollout_seconds"] = seconds(since: t0)
        let t1 = ContinuousClock.now
        let metrics = try policy.optimise(samples, opt)
        extra["train_seconds"] = seconds(since: t1)
        return (metrics, samples)
    }

    /// What one step's transaction writes.
    struct StepRecord {
        var step: Int
        var samples: [Sample]
        var metricsText: String
        var metricsObject: Any
        var alarms: [CollapseAlarm]
        var action: CollapseAction
        var checkpoint: CheckpointRecord?
        /// The policy version that generated this step's rollouts.
        var generatingVersion: Int
        /// The version the job started from (the last good policy when no checkpoint exists).
        var startVersion: Int
    }

    /// One step's transaction (fenced on the claim): its rollouts with routes, alarms, metrics, then either
    /// the job's end (collapse with stop) or the new policy version, progress, checkpoint and a pause.
    /// Returns the policy version the next step samples with.
    func commit(_ conn: PGConnection, _ r: StepRecord, _ spec: JobSpec, config c: ModelConfig) throws -> Int {
        let done = r.step + 1
        let rows = try r.samples.map { s in
            NewRollout(model: job.modelID, policyVersion: r.generatingVersion, tokenIDs: s.tokens, promptLength: s.promptLength,
                       logprobs: s.inferLogprobs, reward: s.reward, groupID: "\(job.id):\(r.step):\(s.group)",
                       metadataJSON: JobExecutor.metadata(["job_id": job.id, "step": r.step, "finish_reason": s.finishReason,
                                                           "task": spec.task ?? ""]),
                       routes: try s.routes.map { try JobExecutor.packed($0, config: c) })
        }
        try RolloutRepository.reserveRouteBytes(conn, project: job.projectID, adding: rows.reduce(0) { $0 + ($1.routes?.bytes.count ?? 0) })
        for (i, row) in rows.enumerated() { _ = try RolloutRepository.insert(conn, project: job.projectID, row, job: (job.id, r.step, i)) }
        for a in r.alarms {
            try JobRepository.addEvent(conn, job: job.id, type: "training.collapse_detected", data: [
                "job_id": job.id, "step": a.step, "rule": a.rule, "metric": a.metric, "value": JobExecutor.jsonNumber(a.value),
                "threshold": a.threshold, "action": spec.onCollapse.rawValue, "history": a.history.map { $0.mapValues(JobExecutor.jsonNumber) },
                "job_url": "/v1/jobs/\(job.id)", "metrics_url": "/v1/jobs/\(job.id)/metrics"])
        }
        try JobRepository.putMetrics(conn, job: job.id, step: r.step, metricsJSON: r.metricsText)
        if r.action == .stop {
            // the last good policy: the job's last checkpoint, or the version it started from
            let good: Any = try JobRepository.checkpoint(conn, job: job.id).map { ["policy_version": $0.version, "step": $0.step] }
                ?? ["policy_version": r.startVersion, "step": 0]
            try JobRepository.end(conn, job: job.id, state: .collapsed, result: [
                "collapsed_at_step": r.step, "rules": r.alarms.map(\.rule), "last_good_checkpoint": good], event: [
                "state": "collapsed", "job_id": job.id, "step": r.step, "rules": r.alarms.map(\.rule)])
            return r.generatingVersion
        }
        let v = try ModelRepository.addVersion(conn, model: job.modelID, job: job.id, step: done, checkpointID: r.checkpoint?.id)
        try JobRepository.setProgress(conn, job: job.id, progress: ["step": done, "steps": spec.steps])
        try JobRepository.addEvent(conn, job: job.id, type: "job.progress", data: ["step": done, "steps": spec.steps, "metrics": r.metricsObject])
        if let k = r.checkpoint { try JobRepository.setCheckpoint(conn, job: job.id, checkpoint: ["step": done, "checkpoint_id": k.id, "version": v]) }
        if r.action == .pause { try JobRepository.pause(conn, job: job.id, step: done) }
        return v
    }

    // MARK: errors

    /// Errors a retry cannot fix (bad input, bad checkpoint): the job fails at once.
    static func isPermanent(_ e: Error) -> Bool {
        switch e {
        case is RLError, is MoEError, is RoutesError, is QuotaExceeded: return true
        case let s as StoreError:
            switch s {
            case .query, .checkpoint: return true
            default: return false
            }
        default: return false
        }
    }

    /// A one-line error for the job record; nothing about the database's address or credentials.
    static func describe(_ e: Error) -> String {
        switch e {
        case let s as ServiceError: return s.detail
        case let r as RLError: return r.description
        case let m as MoEError: return m.description
        case let r as RoutesError: return "routes: \(r)"
        case let q as QuotaExceeded: return "\(q)"
        case let s as StoreError:
            if case .unavailable = s { return "the database was unavailable" }
            if case .checkpoint = s { return s.description }
            return "database error"
        default: return String(describing: e).prefix(300).description
        }
    }
}
