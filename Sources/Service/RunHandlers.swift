// RunHandlers: runs that train elsewhere. Create (idempotent by name), read, list, pause/resume/finish,
// step reports (computed against the stored rollouts, collapse detector on the combined series, alarms
// in the reply and as webhooks), metrics as JSON or CSV, SSE events, one step's record, and the expert
// load of any set of rollouts (POST /v1/routes:stats).
import Foundation
import HTTP
import JSON
import RL
import Routes
import Store

/// A run's settings as created: the collapse rules and action, the TIS cap, which of the trainer's
/// metrics feed the detector, and free-form trainer parameters for the page.
struct RunSettings {
    var rules = CollapseRules()
    var onCollapse = CollapseAction.continue
    var tisCap = 2.0
    /// Detector input → the trainer's metric name (identity when absent).
    var metricNames: [String: String] = [:]
    var params = JSONObject()
    var model: String?

    static let detectorInputs = ["grad_norm", "entropy", "reward_mean", "loss"]

    init() {}

    /// From a create body; 422 naming the field.
    init(body o: JSONObject, model: String?) throws {
        let f = try Fields(o, allowed: ["name", "model", "collapse", "on_collapse", "tis_cap", "metric_names", "params"])
        self.model = model
        onCollapse = try JobSpec.choice(f, "on_collapse", CollapseAction.self) ?? .continue
        if f.has("collapse") {
            guard let d = try? f.object("collapse") else { throw ServiceError.unprocessable("collapse must be an object of rule overrides") }
            do { rules = try CollapseRules(json: d) } catch { throw ServiceError.unprocessable("\(error)") }
        }
        if let c = try f.number("tis_cap") {
            guard (1...1000).contains(c) else { throw ServiceError.unprocessable("tis_cap must be a number in 1...1000") }
            tisCap = c
        }
        if let m = try f.object("metric_names") {
            for k in m.keys {
                guard RunSettings.detectorInputs.contains(k) else {
                    throw ServiceError.unprocessable("metric_names.\(k) is not a detector input (\(RunSettings.detectorInputs.joined(separator: ", ")))")
                }
                guard let v = m[k]?.stringValue, App.isMetricName(v) else {
                    throw ServiceError.unprocessable("metric_names.\(k) must be a metric name: 1 to 100 visible ASCII characters other than \" and \\")
                }
                metricNames[k] = v
            }
        }
        if let p = try f.object("params") {
            guard JSONValue.object(p).serialized().utf8.count <= 16 * 1024 else { throw ServiceError.unprocessable("params is larger than 16 KiB") }
            // finite numbers, at most 64 items per list and 64 members per object (as the OpenAPI JSONObject)
            func check(_ v: JSONValue, _ path: String) throws {
                switch v {
                case let .double(d) where !d.isFinite: throw ServiceError.unprocessable("\(path) is not a finite number")
                case let .array(l):
                    guard l.count <= 64 else { throw ServiceError.unprocessable("\(path) has more than 64 items") }
                    for (i, x) in l.enumerated() { try check(x, "\(path)[\(i)]") }
                case let .object(o):
                    guard o.count <= 64 else { throw ServiceError.unprocessable("\(path) has more than 64 members") }
                    for k in o.keys { try check(o[k]!, "\(path).\(k)") }
                default: break
                }
            }
            try check(.object(p), "params")
            params = p
        }
    }

    /// As stored (runs.params) and shown.
    var json: [String: Any] {
        ["collapse": rules.json, "on_collapse": onCollapse.rawValue, "tis_cap": tisCap, "metric_names": metricNames,
         "params": JSONValue.object(params).foundation, "model": model ?? NSNull()]
    }

    /// From the stored params.
    init(stored text: String) throws {
        guard let o = (try? JSONReader.parse(Array(text.utf8)))?.objectValue else { throw ServiceError(500, "stored run settings are unreadable") }
        self.init()
        if let c = o["collapse"]?.objectValue { rules = try CollapseRules(json: c) }
        onCollapse = o["on_collapse"]?.stringValue.flatMap(CollapseAction.init(rawValue:)) ?? .continue
        tisCap = o["tis_cap"]?.doubleValue ?? 2
        if let m = o["metric_names"]?.objectValue { for k in m.keys { metricNames[k] = m[k]?.stringValue } }
        params = o["params"]?.objectValue ?? JSONObject()
        model = o["model"]?.stringValue
    }
}

extension App {
    /// A trainer's metric name: 1 to 100 visible ASCII characters other than `"` and `\`.
    static func isMetricName(_ s: String) -> Bool {
        (1...100).contains(s.utf8.count) && s.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f && $0 != 0x22 && $0 != 0x5c }
    }

    /// Rollouts per step report, and per routes:stats request.
    static let maxReportRollouts = 65_536, maxStatsRollouts = 10_000

    func runJSON(_ r: RunRecord) -> [String: Any] {
        let stored = parseJSON(r.paramsJSON) as? [String: Any] ?? [:]
        return ["id": r.id, "name": r.name, "model": r.modelID ?? NSNull(), "state": r.state.rawValue, "last_step": r.lastStep ?? NSNull(),
                "settings": stored, "created_at": r.createdAt, "updated_at": r.updatedAt, "finished_at": r.finishedAt ?? NSNull(),
                "links": ["self": "/v1/runs/\(r.id)", "steps": "/v1/runs/\(r.id)/steps", "metrics": "/v1/runs/\(r.id)/metrics",
                          "events": "/v1/runs/\(r.id)/events", "page": pageURL(run: r.id) as Any? ?? NSNull()] as [String: Any]]
    }

    func createRun(_ req: HTTPRequest, project: Int) throws -> HTTPResponse {
        let o = try jsonBody(req)
        let f = Fields(o)
        guard let name = try f.string("name", required: true, max: 200) else { throw ServiceError.unprocessable("name is required") }
        var modelID: String?
        if let m = try f.string("model", max: 200) {
            guard let rec = try models.find(project: project, idOrName: m) else { throw ServiceError.unprocessable("model: \(m) is not a model registered in this project") }
            modelID = rec.id
        }
        let settings = try RunSettings(body: o, model: modelID)
        let text = String(decoding: try JSONSerialization.data(withJSONObject: settings.json, options: [.sortedKeys]), as: UTF8.self)
        switch try runs.create(project: project, name: name, modelID: modelID, paramsJSON: text) {
        case let .created(r): return .json(201, runJSON(r), headers: [("Location", "/v1/runs/\(r.id)")])
        case let .existing(r): return .json(200, runJSON(r), headers: [("Location", "/v1/runs/\(r.id)")])
        case let .conflict(r):
            throw ServiceError(409, "name: run \(r.name) (\(r.id)) already exists with other settings; use another name, or the same settings to get it back")
        }
    }

    func getRun(_ id: String, project: Int) throws -> HTTPResponse {
        guard let r = try runs.get(project: project, id: id) else { throw ServiceError.notFound("run \(id)") }
        return .json(200, runJSON(r))
    }

    func listRuns(_ req: HTTPRequest, project: Int) throws -> HTTPResponse {
        let (limit, cursor) = try page(req.query)
        let state = try req.query["state"].map { s in
            guard let st = RunState(rawValue: s) else { throw ServiceError.badRequest("state must be one of \(RunState.allCases.map(\.rawValue).joined(separator: ", "))") }
            return st
        }
        let rows = try runs.list(project: project, state: state, after: cursor, limit: limit + 1)
        let page = rows.prefix(limit)
        return .json(200, ["data": page.map(runJSON), "next_cursor": rows.count > limit ? String(page.last!.seq) as Any : NSNull()])
    }

    /// pause (active → paused), resume (paused or collapsed → active), finish (any but finished → finished).
    func transitionRun(_ id: String, project: Int, to: RunState) throws -> HTTPResponse {
        let (from, event): ([RunState], String) = switch to {
        case .paused: ([.active], "run.paused")
        case .active: ([.paused, .collapsed], "run.resumed")
        case .finished: ([.active, .paused, .collapsed], "run.finished")
        case .collapsed: ([.active], "run.collapsed")
        }
        guard let (r, changed) = try runs.transition(project: project, id: id, from: from, to: to, event: event) else { throw ServiceError.notFound("run \(id)") }
        guard changed || r.state == to else { throw ServiceError(409, "run \(id) is \(r.state.rawValue); it can become \(to.rawValue) only from \(from.map(\.rawValue).joined(separator: " or "))") }
        return .json(200, runJSON(r))
    }

    // MARK: step reports

    func reportStep(_ req: HTTPRequest, _ body: HTTPBodyStream, id: String, project: Int) throws -> HTTPResponse {
        // another project's run, or none: 404 before a byte of the body is read
        guard let run = try runs.get(project: project, id: id) else { throw ServiceError.notFound("run \(id)") }
        let keep = KeepingSource(LimitedSource(body, limit: config.maxBodyBytes, name: "R3_MAX_BODY_BYTES"))
        let report = try readStepReport(JSONReader(keep, window: 1 << 20))
        let headers = [("Location", "/v1/runs/\(id)/steps/\(report.step)")]
        // the body's SHA-256 (the idempotency fingerprint) is computed on another core while the stored
        // rollouts are read and the metrics computed; a step reported before is judged at once
        let body = keep.bytes
        keep.bytes = []
        if let prior = try runs.storedStep(run: id, step: report.step) {
            guard prior.hash == SHA256.hex(body) else { throw ServiceError(409, "step \(report.step) of run \(id) was already reported with another body; steps are written once") }
            return .rawJSON(200, prior.replyJSON, headers: headers + [("Idempotent-Replayed", "true")])
        }
        let hashing = BackgroundValue { SHA256.hex(body) }
        guard run.state.acceptsSteps else { throw refusal(run) }
        let settings = try RunSettings(stored: run.paramsJSON)
        let stored = try rollouts.reportInputs(project: project, ids: report.rollouts.map(\.id), withRoutes: report.rollouts.contains { $0.routes != nil })
        let c = try StepComputation(report, stored: stored, tisCap: settings.tisCap)
        var metrics = report.metrics
        for (k, v) in c.metrics { metrics[k] = v }
        var object: [String: Any] = metrics.mapValues(JobExecutor.jsonNumber)
        object["step"] = report.step
        object["policy_version"] = report.policyVersion ?? NSNull()
        object["rollouts"] = report.rollouts.count
        object["tokens"] = c.tokens
        if let l = c.load { object["expert_load_imbalance"] = l.imbalance }
        var watched: [String: Any] = [:]
        for k in ["k3_kl", "extreme_frac_tau2"] { if let v = metrics[k] { watched[k] = App.detectorNumber(v) } }
        for k in RunSettings.detectorInputs { if let v = metrics[settings.metricNames[k] ?? k] { watched[k] = App.detectorNumber(v) } }
        let write = RunStepWrite(step: report.step, policyVersion: report.policyVersion, requestHash: hashing.value, metricsJSON: try App.jsonText(object),
                                 watchedJSON: try App.jsonText(watched))
        let outcome = try runs.writeStep(project: project, run: id, write) { run, series, fired in
            try self.decide(run, settings: settings, step: report, metrics: object, load: c.loadJSON, series: series, fired: fired)
        }
        switch outcome {
        case let .written(reply): return .rawJSON(201, reply, headers: headers)
        case let .replayed(reply): return .rawJSON(200, reply, headers: headers + [("Idempotent-Replayed", "true")])
        case .conflict: throw ServiceError(409, "step \(report.step) of run \(id) was already reported with another body; steps are written once")
        case let .refused(r): throw refusal(r)
        case .notFound: throw ServiceError.notFound("run \(id)")
        }
    }

    func refusal(_ r: RunRecord) -> ServiceError {
        ServiceError(409, "run \(r.id) is \(r.state.rawValue) and takes no step reports" + (r.state == .finished ? "" : "; POST /v1/runs/\(r.id)/resume to go on"))
    }

    /// A detector input as stored: a number, or "NaN" / "Infinity" / "-Infinity".
    static func detectorNumber(_ v: Double) -> Any { v.isFinite ? v : v.isNaN ? "NaN" : v > 0 ? "Infinity" : "-Infinity" }

    static func jsonText(_ o: Any) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)
    }

    /// Inside the step's transaction: the detector over the run's whole series in step order (so a late
    /// step is judged in its place), the alarms of rules not fired before, the action and the reply.
    func decide(_ run: RunRecord, settings: RunSettings, step s: StepReport, metrics: [String: Any], load: [String: Any]?,
                series: [RunSeriesPoint], fired: Set<String>) throws -> RunStepDecision {
        var detector = CollapseDetector(rules: settings.rules)
        var alarms: [CollapseAlarm] = []
        for p in series {
            let o = parseJSON(p.watchedJSON) as? [String: Any] ?? [:]
            var m: [String: Double] = [:]
            for (k, v) in o {
                switch v {
                case let n as NSNumber: m[k] = n.doubleValue
                case let t as String: m[k] = t == "NaN" ? .nan : t == "Infinity" ? .infinity : -.infinity
                default: break
                }
            }
            alarms += detector.observe(step: p.step, m).filter { !fired.contains($0.rule) }
        }
        let action = alarms.isEmpty ? CollapseAction.continue : settings.onCollapse
        let newState: RunState? = alarms.isEmpty ? nil : settings.onCollapse == .pause ? .paused : settings.onCollapse == .stop ? .collapsed : nil
        let alarmJSON: [[String: Any]] = alarms.map { a in
            ["step": a.step, "rule": a.rule, "metric": a.metric, "value": JobExecutor.jsonNumber(a.value), "threshold": a.threshold]
        }
        var events: [(String, Any)] = [("run.step", ["step": s.step, "policy_version": s.policyVersion ?? NSNull(), "metrics": metrics])]
        for a in alarms {
            events.append(("run.collapse_detected", [
                "run_id": run.id, "run_name": run.name, "step": a.step, "rule": a.rule, "metric": a.metric, "value": JobExecutor.jsonNumber(a.value),
                "threshold": a.threshold, "action": action.rawValue, "history": a.history.map { $0.mapValues(JobExecutor.jsonNumber) },
                "run_url": "/v1/runs/\(run.id)", "metrics_url": "/v1/runs/\(run.id)/metrics"] as [String: Any]))
        }
        if let st = newState {
            events.append(("run.\(st.rawValue)", ["run_id": run.id, "run_name": run.name, "state": st.rawValue, "step": s.step, "rules": alarms.map(\.rule),
                                                  "run_url": "/v1/runs/\(run.id)"] as [String: Any]))
        }
        let reply: [String: Any] = [
            "run_id": run.id, "step": s.step, "policy_version": s.policyVersion ?? NSNull(), "state": (newState ?? run.state).rawValue,
            "action": action.rawValue, "alarms": alarmJSON, "metrics": metrics, "expert_load": load ?? NSNull(),
            "links": ["run": "/v1/runs/\(run.id)", "step": "/v1/runs/\(run.id)/steps/\(s.step)", "metrics": "/v1/runs/\(run.id)/metrics"]]
        return RunStepDecision(replyJSON: try App.jsonText(reply), events: events, newState: newState)
    }

    // MARK: reading runs back

    func runMetrics(_ req: HTTPRequest, id: String, project: Int) throws -> HTTPResponse {
        guard try runs.get(project: project, id: id) != nil else { throw ServiceError.notFound("run \(id)") }
        let rows = try runs.metrics(run: id).map { parseJSON($0.json) as? [String: Any] ?? [:] }
        return try metricsResponse(req, rows: rows, columns: App.runMetricColumns)
    }

    static var runMetricColumns: [String] {
        ["step", "policy_version", "rollouts", "tokens"] + Mismatch.metricNames + ["expert_load_imbalance_max", "expert_load_imbalance_mean"]
    }

    func runStep(_ id: String, step: String, project: Int) throws -> HTTPResponse {
        guard try runs.get(project: project, id: id) != nil else { throw ServiceError.notFound("run \(id)") }
        guard let n = Int(step), n >= 0, let s = try runs.step(run: id, step: n) else { throw ServiceError.notFound("step \(step) of run \(id)") }
        let o: [String: Any] = ["run_id": id, "step": n, "metrics": parseJSON(s.metricsJSON), "expert_load": parseJSON(s.expertLoadJSON),
                                "reply": parseJSON(s.replyJSON), "created_at": s.createdAt]
        return .json(200, o)
    }

    func runEvents(_ req: HTTPRequest, id: String, project: Int) throws -> HTTPResponse {
        guard try runs.get(project: project, id: id) != nil else { throw ServiceError.notFound("run \(id)") }
        let runs = self.runs
        return try eventStream(req, key: "run_id", id: id, fetch: { try runs.events(run: id, after: $0, limit: $1) }, ended: { e in
            e.type == "run.finished"   // a collapsed run can be resumed: its stream goes on
        }, isOver: { (try? runs.get(project: project, id: id)).flatMap { $0.map { $0.state == .finished } } ?? false })
    }

    /// POST /v1/routes:stats: the expert load of any set of rollouts, from their stored histograms.
    func routeStats(_ req: HTTPRequest, project: Int) throws -> HTTPResponse {
        let o = try jsonBody(req)
        let f = try Fields(o, allowed: ["rollout_ids"])
        guard let ids = try f.stringList("rollout_ids", max: 64), !ids.isEmpty else { throw ServiceError.unprocessable("rollout_ids is required: a list of rollout ids") }
        guard ids.count <= App.maxStatsRollouts else { throw ServiceError.unprocessable("rollout_ids has more than \(App.maxStatsRollouts) ids") }
        for (i, x) in ids.enumerated() where UUID(uuidString: x) == nil { throw ServiceError.unprocessable("rollout_ids[\(i)] is not a rollout id") }
        let stored = try rollouts.reportInputs(project: project, ids: ids, withRoutes: false)
        var report = StepReport()
        var without: [String] = []
        for (i, x) in ids.enumerated() {
            guard let r = stored[x.lowercased()] else { throw ServiceError.unprocessable("rollout_ids[\(i)]: rollout \(x) does not exist in this project") }
            if r.routeShape == nil { without.append(x) }
            report.rollouts.append(ReportedRollout(id: x.lowercased(), path: "rollout_ids[\(i)]"))
        }
        var seen = Set<String>()
        for (i, x) in report.rollouts.enumerated() where !seen.insert(x.id).inserted { throw ServiceError.unprocessable("rollout_ids[\(i)] repeats an id") }
        let c = try StepComputation(report, stored: stored, tisCap: 2)
        return .json(200, ["rollouts": ids.count, "rollouts_without_routes": without, "expert_load": c.loadJSON as Any? ?? NSNull()])
    }
}

/// A value computed on a thread of its own; `value` waits for it.
final class BackgroundValue<T>: @unchecked Sendable {
    private var result: T?
    private let done = DispatchSemaphore(value: 0)
    init(_ make: @escaping @Sendable () -> T) {
        let t = Thread { [self] in result = make(); done.signal() }
        t.stackSize = 1 << 20
        t.start()
    }
    var value: T {
        done.wait()
        done.signal()   // later reads return at once
        return result!
    }
}
