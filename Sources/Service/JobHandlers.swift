// JobHandlers: submit (202 + Location, Idempotency-Key), read, list, cancel, per-step metrics (JSON or
// CSV) and a live Server-Sent Events stream of a job's events (Last-Event-ID resumes it).
import Foundation
import JSON
import HTTP
import MoE
import RL
import Store

extension App {
    func parseJSON(_ text: String?) -> Any {
        guard let t = text, let o = try? JSONSerialization.jsonObject(with: Data(t.utf8), options: [.fragmentsAllowed]) else { return NSNull() }
        return o
    }

    func jobJSON(_ j: JobRecord) -> [String: Any] {
        var params = parseJSON(j.paramsJSON) as? [String: Any] ?? [:]
        if let prompts = params["prompts"] as? [Any] { params["prompts"] = ["count": prompts.count] }   // the list itself can be large
        if let ids = params["rollout_ids"] as? [Any] { params["rollout_ids"] = ["count": ids.count] }
        return ["id": j.id, "type": j.type, "model": j.modelID, "state": j.state.rawValue, "progress": parseJSON(j.progressJSON),
                "attempts": j.attempts, "max_attempts": j.maxAttempts, "cancel_requested": j.cancelRequested,
                "error": j.error ?? NSNull(), "result": parseJSON(j.resultJSON), "params": params,
                "created_at": j.createdAt, "started_at": j.startedAt ?? NSNull(), "finished_at": j.finishedAt ?? NSNull(),
                "updated_at": j.updatedAt, "run_after": j.runAfter,
                "links": ["self": "/v1/jobs/\(j.id)", "events": "/v1/jobs/\(j.id)/events", "metrics": "/v1/jobs/\(j.id)/metrics",
                          "page": pageURL(job: j.id) as Any? ?? NSNull()] as [String: Any]]
    }

    /// SHA-256 (hex) of the normalised request: what an Idempotency-Key is bound to. A 64-bit
    /// non-cryptographic hash would let a client find two bodies that pass for one another.
    static func fingerprint(_ s: String) -> String { SHA256.hex(Array(s.utf8)) }

    func createJob(_ req: HTTPRequest, project: Int) throws -> HTTPResponse {
        let key = req.headers["Idempotency-Key"]
        if let k = key, k.isEmpty || k.count > 200 || !k.unicodeScalars.allSatisfy({ $0.value >= 0x21 && $0.value < 0x7f }) {
            throw ServiceError.badRequest("Idempotency-Key must be 1 to 200 visible ASCII characters")
        }
        let o = try jsonBody(req)
        var router = RouterKind.softmax
        let spec = try JobSpec(o) { id in
            guard let m = try models.get(project: project, id: id) else { throw ServiceError.unprocessable("model \(id) does not exist in this project") }
            if m.source == "config" {
                throw ServiceError.unprocessable("model \(id) was registered from its config.json alone (hf_config): it has no weights to run a job on")
            }
            guard let cfg = try? ModelConfig(json: (try? JSONReader.parse(Array(m.configJSON.utf8)))?.objectValue ?? JSONObject()) else { throw ServiceError(500, "stored model config is unreadable") }
            router = cfg.router
            return cfg.vocabSize
        }
        if spec.auxLossCoef > 0 && router != .softmax {
            throw ServiceError.unprocessable("aux_loss_coef applies to softmax routers (qwen3_moe, mixtral); this model's router balances its experts with e_score_correction_bias")
        }
        // this server's limits (R3_MAX_JOB_STEPS, R3_MAX_JOB_SAMPLES, R3_MAX_NEW_TOKENS)
        if spec.type != .rollout && spec.steps > config.maxJobSteps { throw ServiceError.unprocessable("steps: this server runs at most \(config.maxJobSteps) steps per job") }
        let samples = spec.type == .rollout ? spec.prompts.count * spec.n : spec.type == .sft ? spec.batchSize : (spec.rolloutIDs?.count ?? spec.batchSize * spec.n)
        if samples > config.maxJobSamples { throw ServiceError.unprocessable("this server samples or trains on at most \(config.maxJobSamples) sequences per step; the request asks for \(samples)") }
        if let t = spec.maxTokens, t > config.maxNewTokens { throw ServiceError.unprocessable("max_tokens: this server generates at most \(config.maxNewTokens) tokens") }
        if let ids = spec.rolloutIDs {
            let missing = try rollouts.missing(project: project, ids: ids)
            if let m = missing.first { throw ServiceError.unprocessable("rollout_ids: rollout \(m) does not exist in this project") }
            let expired = try rollouts.expired(project: project, ids: ids)
            if !expired.isEmpty {
                throw ServiceError.unprocessable("rollout_ids: the routes of \(expired.count) rollout(s) expired under this project's retention (\(expired.prefix(5).joined(separator: ", "))\(expired.count > 5 ? ", …" : "")); GET /v1/retention shows the policy")
            }
            if let m = try rollouts.masked(project: project, ids: ids).first {
                throw ServiceError.unprocessable("rollout_ids: rollout \(m) has response tokens with loss_mask 0 (a multi-turn conversation's context); offline training here trains on every response token and does not take such rollouts yet")
            }
        }
        if let v = spec.policyVersion {
            let found: (version: Int, checkpoint: CheckpointRecord)?
            do { found = try models.checkpoint(model: spec.model, version: v) } catch let e as StoreError {
                if case .checkpoint = e { throw ServiceError.unprocessable("policy_version: \(e)") }
                throw e
            }
            if found == nil { throw ServiceError.unprocessable("policy_version \(v) of model \(spec.model) has no checkpoint") }
        }
        let usage = try keys.usage(projectID: project)
        if let limit = usage.quotas.maxActiveJobs, usage.activeJobs >= limit, try key.map({ try jobs.hasIdempotencyKey(project: project, key: $0) }) != true {
            throw ServiceError(429, "the project runs at most \(limit) jobs at once (\(usage.activeJobs) are queued, running or paused); retry when one ends",
                               headers: [("Retry-After", "10")])
        }
        let params = String(decoding: try JSONSerialization.data(withJSONObject: spec.json, options: [.sortedKeys]), as: UTF8.self)
        switch try jobs.create(project: project, type: spec.type.rawValue, modelID: spec.model, paramsJSON: params, maxAttempts: spec.maxAttempts,
                               idempotencyKey: key, requestHash: key == nil ? nil : App.fingerprint(params)) {
        case let .created(j):
            return .json(202, jobJSON(j), headers: [("Location", "/v1/jobs/\(j.id)")])
        case let .existing(j):
            return .json(202, jobJSON(j), headers: [("Location", "/v1/jobs/\(j.id)"), ("Idempotent-Replayed", "true")])
        case .conflict:
            throw ServiceError.unprocessable("Idempotency-Key was already used for a different request")
        }
    }

    func getJob(_ id: String, project: Int) throws -> HTTPResponse {
        guard let j = try jobs.get(project: project, id: id) else { throw ServiceError.notFound("job \(id)") }
        return .json(200, jobJSON(j))
    }

    func listJobs(_ req: HTTPRequest, project: Int) throws -> HTTPResponse {
        let q = req.query
        let (limit, cursor) = try page(q)
        let state = try q["state"].map { s in
            guard let st = JobState(rawValue: s) else {
                throw ServiceError.badRequest("state must be one of \(JobState.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return st
        }
        if let t = q["type"], !["rollout", "sft", "train"].contains(t) { throw ServiceError.badRequest("type must be rollout, sft or train") }
        let rows = try jobs.list(project: project, state: state, type: q["type"], after: cursor, limit: limit + 1)
        let page = rows.prefix(limit)
        return .json(200, ["data": page.map(jobJSON), "next_cursor": rows.count > limit ? String(page.last!.seq) as Any : NSNull(),
                           "page_url": pageURL(project: project) as Any? ?? NSNull()])
    }

    func cancelJob(_ id: String, project: Int) throws -> HTTPResponse {
        guard let j = try jobs.requestCancel(project: project, id: id) else { throw ServiceError.notFound("job \(id)") }
        switch j.state {
        case .cancelled: return .json(200, jobJSON(j))
        case .running: return .json(202, jobJSON(j))
        default: throw ServiceError(409, "job \(id) already ended (\(j.state.rawValue))")
        }
    }

    /// A train job's metric columns: the mismatch metrics (RL's Mismatch, shared with runs) after reward and length.
    static let metricColumns = ["step", "policy_version", "reward_mean", "response_len_mean"] + Mismatch.metricNames
        + ["replay_live_agreement", "router_gate_entropy", "grad_norm", "entropy", "clip_frac", "loss", "rollout_seconds", "train_seconds",
           "checkpoint_seconds", "step_seconds"]

    func jobMetrics(_ req: HTTPRequest, id: String, project: Int) throws -> HTTPResponse {
        guard try jobs.get(project: project, id: id) != nil else { throw ServiceError.notFound("job \(id)") }
        let rows = try jobs.metrics(job: id).map { parseJSON($0.json) as? [String: Any] ?? [:] }
        return try metricsResponse(req, rows: rows, columns: App.metricColumns)
    }

    /// Per-step metrics as JSON ({"data": rows}) or CSV (known columns first, then the rest by name; only numbers and strings).
    func metricsResponse(_ req: HTTPRequest, rows: [[String: Any]], columns: [String]) throws -> HTTPResponse {
        let accept = (req.headers["Accept"] ?? "").lowercased()
        let wantsCSV = req.query["format"] == "csv" || (req.query["format"] == nil && accept.contains("text/csv"))
        if let f = req.query["format"], f != "csv" && f != "json" { throw ServiceError.badRequest("format must be json or csv") }
        guard wantsCSV else { return .json(200, ["data": rows]) }
        func scalar(_ v: Any?) -> Bool { v is NSNumber || v is String }
        var cols = columns.filter { c in rows.contains { scalar($0[c]) } }
        cols += Set(rows.flatMap { r in r.keys.filter { scalar(r[$0]) } }).subtracting(cols).sorted()
        func cell(_ s: String) -> String { s.contains(",") || s.contains("\"") || s.contains("\n") ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s }
        var csv = cols.map(cell).joined(separator: ",") + "\n"
        for r in rows {
            csv += cols.map { c -> String in
                switch r[c] {
                case let n as NSNumber: return Int(exactly: n.doubleValue).map(String.init) ?? "\(n.doubleValue)"
                case let s as String: return cell(s)
                default: return ""
                }
            }.joined(separator: ",") + "\n"
        }
        return .text(200, csv, contentType: "text/csv; charset=utf-8")
    }

    /// `text/event-stream`: every event of the job from Last-Event-ID (or ?after) on, live until the job
    /// ends; a comment line every 15 s keeps proxies from closing an idle stream.
    func jobEvents(_ req: HTTPRequest, id: String, project: Int) throws -> HTTPResponse {
        guard try jobs.get(project: project, id: id) != nil else { throw ServiceError.notFound("job \(id)") }
        let jobs = self.jobs
        return try eventStream(req, key: "job_id", id: id, fetch: { try jobs.events(job: id, after: $0, limit: $1) }, ended: { e in
            e.type.hasPrefix("job.") && (JobState(rawValue: String(e.type.dropFirst(4)))?.isTerminal ?? false)
        }, isOver: { (try? jobs.get(project: project, id: id))??.state.isTerminal ?? false })
    }

    /// An SSE stream of a job's or run's events: `fetch(after, limit)` reads them, `ended` marks the last
    /// one, `isOver` says the stream is complete once no event is left.
    /// `?follow=false` sends the events so far and ends.
    func eventStream(_ req: HTTPRequest, key: String, id: String, fetch: @escaping @Sendable (Int, Int) throws -> [JobEvent],
                     ended: @escaping @Sendable (JobEvent) -> Bool, isOver: @escaping @Sendable () -> Bool) throws -> HTTPResponse {
        guard ["true", "false", nil].contains(req.query["follow"]) else { throw ServiceError.badRequest("follow must be true or false") }
        let follow = req.query["follow"] != "false"
        func eventID(_ v: String?, _ name: String) throws -> Int? {
            guard let v else { return nil }
            guard (1...18).contains(v.count), v.allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(v) else {
                throw ServiceError.badRequest("\(name) must be an event id this server sent")
            }
            return n
        }
        let header = try eventID(req.headers["Last-Event-ID"], "Last-Event-ID"), query = try eventID(req.query["after"], "after")
        let after = header ?? query ?? 0
        let headers = HTTPHeaders([("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")])
        return HTTPResponse(status: 200, headers: headers, stream: { w in
            var last = after
            var quiet = ContinuousClock.now
            _ = w.write("retry: 2000\n\n")
            while w.isOpen {
                guard let events = try? fetch(last, 500) else { Thread.sleep(forTimeInterval: 1); continue }
                for e in events {
                    let data = "{\"id\":\(e.id),\"type\":\"\(e.type)\",\"\(key)\":\"\(id)\",\"created_at\":\"\(e.createdAt)\",\"data\":\(e.dataJSON)}"
                    guard w.write("id: \(e.id)\nevent: \(e.type)\ndata: \(data)\n\n") else { return }
                    last = e.id
                    quiet = .now
                    if ended(e) { return }
                }
                if events.isEmpty {
                    if !follow { return }
                    // it ended and its last event was already sent (or skipped by Last-Event-ID): the stream ends too
                    if isOver(), (try? fetch(last, 1))?.isEmpty ?? false { return }
                    if ContinuousClock.now - quiet > .seconds(15) { guard w.write(": keep-alive\n\n") else { return }; quiet = .now }
                    Thread.sleep(forTimeInterval: 0.25)
                }
            }
        })
    }
}
