// RunRepository: runs that train elsewhere and report their steps here. A step is written in one
// transaction that locks its run: the idempotency check (same body replays its reply, another is a
// conflict), the collapse detector's series, the step, its events and webhooks, and the run's new state.
import Foundation

/// A run's state, as the runs.state column holds it.
public enum RunState: String, Sendable, CaseIterable {
    case active, paused, collapsed, finished
    /// Takes step reports.
    public var acceptsSteps: Bool { self == .active }
}

public struct RunRecord: Sendable {
    public var id: String
    public var seq: Int
    public var projectID: Int
    public var name: String
    public var modelID: String?
    public var paramsJSON: String
    public var state: RunState
    public var lastStep: Int?
    public var createdAt: String
    public var updatedAt: String
    public var finishedAt: String?
}

/// One stored step: the detector's inputs (as numbers, NaN kept) in step order.
public struct RunSeriesPoint: Sendable {
    public var step: Int
    public var watchedJSON: String
}

/// What a step report writes once its metrics are computed.
public struct RunStepWrite: Sendable {
    public var step: Int
    public var policyVersion: Int?
    public var requestHash: String
    public var metricsJSON: String
    public var watchedJSON: String
    public init(step: Int, policyVersion: Int?, requestHash: String, metricsJSON: String, watchedJSON: String) {
        self.step = step; self.policyVersion = policyVersion; self.requestHash = requestHash; self.metricsJSON = metricsJSON
        self.watchedJSON = watchedJSON
    }
}

/// What the caller decides inside the step's transaction, from the run and the series with this step in it.
public struct RunStepDecision {
    public var replyJSON: String
    /// (type, data) events; types the webhook outbox knows are delivered too.
    public var events: [(String, Any)]
    public var newState: RunState?
    public init(replyJSON: String, events: [(String, Any)], newState: RunState?) { self.replyJSON = replyJSON; self.events = events; self.newState = newState }
}

public struct RunRepository: Sendable {
    public let pool: ConnectionPool
    public init(pool: ConnectionPool) { self.pool = pool }

    static let columns = """
        r.id, r.seq, r.project_id, r.name, r.model_id, r.params, r.state, r.last_step, \(JobRepository.ts("r.created_at")),
        \(JobRepository.ts("r.updated_at")), \(JobRepository.ts("r.finished_at"))
        """

    static func record(_ r: PGResult, _ i: Int) throws -> RunRecord {
        let s = try r.string(i, "state")
        guard let st = RunState(rawValue: s) else { throw StoreError.decode("column state = '\(s)' is not a run state") }
        return RunRecord(id: try r.string(i, "id"), seq: try r.int(i, "seq"), projectID: try r.int(i, "project_id"), name: try r.string(i, "name"),
                         modelID: try r.stringOrNil(i, "model_id"), paramsJSON: try r.string(i, "params"), state: st,
                         lastStep: try r.intOrNil(i, "last_step"), createdAt: try r.string(i, "created_at"), updatedAt: try r.string(i, "updated_at"),
                         finishedAt: try r.stringOrNil(i, "finished_at"))
    }

    public enum Created: Sendable { case created(RunRecord), existing(RunRecord), conflict(RunRecord) }

    /// Creates a run; a second create with the same name and the same params returns the first (a
    /// restarted trainer), with other params it is a conflict.
    public func create(project: Int, name: String, modelID: String?, paramsJSON: String) throws -> Created {
        try pool.transaction { c in
            let res = try c.query("""
                INSERT INTO runs AS r (project_id, name, model_id, params) VALUES (\(project), \(name), \(modelID)::uuid, \(paramsJSON)::jsonb)
                ON CONFLICT (project_id, name) DO NOTHING
                RETURNING \(raw: SQL(stringLiteral: RunRepository.columns))
                """)
            if res.count == 1 {
                let run = try RunRepository.record(res, 0)
                try RunRepository.addEvent(c, run: run.id, project: project, type: "run.created", data: ["state": "active", "name": name])
                return .created(run)
            }
            let prior = try c.query("""
                SELECT \(raw: SQL(stringLiteral: RunRepository.columns)), r.params = \(paramsJSON)::jsonb AS same
                FROM runs r WHERE r.project_id = \(project) AND r.name = \(name)
                """)
            let run = try RunRepository.record(prior, 0)
            return try prior.bool(0, "same") ? .existing(run) : .conflict(run)
        }
    }

    public func get(project: Int, id: String) throws -> RunRecord? {
        guard UUID(uuidString: id) != nil else { return nil }
        let r = try pool.withRetry { try $0.query("SELECT \(raw: SQL(stringLiteral: RunRepository.columns)) FROM runs r WHERE r.project_id = \(project) AND r.id = \(id)::uuid") }
        return r.count == 1 ? try RunRepository.record(r, 0) : nil
    }

    /// Any project's run (the signed page link names it).
    public func getAny(id: String) throws -> RunRecord? {
        guard UUID(uuidString: id) != nil else { return nil }
        let r = try pool.withRetry { try $0.query("SELECT \(raw: SQL(stringLiteral: RunRepository.columns)) FROM runs r WHERE r.id = \(id)::uuid") }
        return r.count == 1 ? try RunRepository.record(r, 0) : nil
    }

    public func list(project: Int, state: RunState?, after cursor: Int, limit: Int) throws -> [RunRecord] {
        let r = try pool.withRetry { c in
            try c.query("""
                SELECT \(raw: SQL(stringLiteral: RunRepository.columns)) FROM runs r
                WHERE r.project_id = \(project) AND r.seq > \(cursor) AND (\(state?.rawValue)::text IS NULL OR r.state = \(state?.rawValue))
                ORDER BY r.seq LIMIT \(limit)
                """)
        }
        return try (0..<r.count).map { try RunRepository.record(r, $0) }
    }

    /// Moves a run from one of `from` to `to` with its event; nil when no such run, else the run after (unchanged when its state was not in `from`).
    public func transition(project: Int, id: String, from: [RunState], to: RunState, event: String) throws -> (RunRecord, changed: Bool)? {
        guard UUID(uuidString: id) != nil else { return nil }
        return try pool.transaction { c in
            let cur = try c.query("SELECT \(raw: SQL(stringLiteral: RunRepository.columns)) FROM runs r WHERE r.project_id = \(project) AND r.id = \(id)::uuid FOR UPDATE")
            guard cur.count == 1 else { return nil }
            let run = try RunRepository.record(cur, 0)
            guard from.contains(run.state) else { return (run, false) }
            let r = try c.query("""
                UPDATE runs r SET state = \(to.rawValue), updated_at = now(), finished_at = CASE WHEN \(to == .finished)::boolean THEN now() ELSE r.finished_at END
                WHERE r.id = \(id)::uuid RETURNING \(raw: SQL(stringLiteral: RunRepository.columns))
                """)
            try RunRepository.addEvent(c, run: id, project: project, type: event, data: ["state": to.rawValue, "from": run.state.rawValue])
            return (try RunRepository.record(r, 0), true)
        }
    }

    /// The stored reply of a step and the hash of the body that made it, or nil.
    public func storedStep(run: String, step: Int) throws -> (hash: String, replyJSON: String)? {
        let r = try pool.withRetry { try $0.query("SELECT request_hash, reply FROM run_steps WHERE run_id = \(run)::uuid AND step = \(step)") }
        return r.count == 1 ? (try r.string(0, "request_hash"), try r.string(0, "reply")) : nil
    }

    public enum StepOutcome: Sendable {
        case written(replyJSON: String)
        /// The same step with the same body was written before: its reply.
        case replayed(replyJSON: String)
        /// The same step with another body.
        case conflict
        /// The run does not take reports in this state.
        case refused(RunRecord)
        case notFound
    }

    /// Writes one step under the run's lock. `decide` sees the run, the series of stored steps with this one
    /// in step order, and the rules already fired (latched), and returns the reply, events and new state.
    public func writeStep(project: Int, run id: String, _ w: RunStepWrite,
                          decide: (RunRecord, [RunSeriesPoint], Set<String>) throws -> RunStepDecision) throws -> StepOutcome {
        try pool.transaction { c in
            let cur = try c.query("SELECT \(raw: SQL(stringLiteral: RunRepository.columns)) FROM runs r WHERE r.project_id = \(project) AND r.id = \(id)::uuid FOR UPDATE")
            guard cur.count == 1 else { return .notFound }
            let run = try RunRepository.record(cur, 0)
            let prior = try c.query("SELECT request_hash, reply FROM run_steps WHERE run_id = \(id)::uuid AND step = \(w.step)")
            if prior.count == 1 {
                return try prior.string(0, "request_hash") == w.requestHash ? .replayed(replyJSON: try prior.string(0, "reply")) : .conflict
            }
            guard run.state.acceptsSteps else { return .refused(run) }
            let s = try c.query("SELECT step, watched FROM run_steps WHERE run_id = \(id)::uuid ORDER BY step")
            var series = try (0..<s.count).map { RunSeriesPoint(step: try s.int($0, "step"), watchedJSON: try s.string($0, "watched")) }
            series.append(RunSeriesPoint(step: w.step, watchedJSON: w.watchedJSON))
            series.sort { $0.step < $1.step }
            let f = try c.query("SELECT DISTINCT data->>'rule' AS rule FROM run_events WHERE run_id = \(id)::uuid AND type = 'run.collapse_detected'")
            let fired = Set(try (0..<f.count).map { try f.string($0, "rule") })
            let d = try decide(run, series, fired)
            try c.query("""
                INSERT INTO run_steps (run_id, step, policy_version, request_hash, metrics, watched, reply)
                VALUES (\(id)::uuid, \(w.step), \(w.policyVersion), \(w.requestHash), \(w.metricsJSON)::jsonb, \(w.watchedJSON)::jsonb,
                        \(d.replyJSON)::jsonb)
                """)
            for (type, data) in d.events { try RunRepository.addEvent(c, run: id, project: project, type: type, data: data) }
            try c.query("""
                UPDATE runs SET last_step = greatest(coalesce(last_step, \(w.step)), \(w.step)), updated_at = now(),
                                state = coalesce(\(d.newState?.rawValue), state) WHERE id = \(id)::uuid
                """)
            return .written(replyJSON: d.replyJSON)
        }
    }

    public static func addEvent(_ c: PGConnection, run: String, project: Int, type: String, data: Any) throws {
        try c.query("INSERT INTO run_events (run_id, type, data) VALUES (\(run)::uuid, \(type), \(json: data)::jsonb)")
        if WebhookRepository.eventTypes.contains(type) { try WebhookRepository.enqueue(c, project: project, type: type, payload: data) }
    }

    public func events(run: String, after: Int, limit: Int = 500) throws -> [JobEvent] {
        try JobRepository.events(pool, table: "run_events", owner: "run_id", id: run, after: after, limit: limit)
    }

    /// Per-step metrics in step order, as (step, JSON object text).
    public func metrics(run: String) throws -> [(step: Int, json: String)] {
        let r = try pool.withRetry { try $0.query("SELECT step, metrics FROM run_steps WHERE run_id = \(run)::uuid ORDER BY step") }
        return try (0..<r.count).map { (try r.int($0, "step"), try r.string($0, "metrics")) }
    }

    /// One step's metrics, expert load and reply.
    public func step(run: String, step: Int) throws -> (metricsJSON: String, expertLoadJSON: String?, replyJSON: String, createdAt: String)? {
        let r = try pool.withRetry { c in
            try c.query("""
                SELECT metrics, reply->'expert_load' AS expert_load, reply, \(raw: SQL(stringLiteral: JobRepository.ts("created_at"))) FROM run_steps
                WHERE run_id = \(run)::uuid AND step = \(step)
                """)
        }
        guard r.count == 1 else { return nil }
        return (try r.string(0, "metrics"), try r.stringOrNil(0, "expert_load"), try r.string(0, "reply"), try r.string(0, "created_at"))
    }

    /// The latest step's metrics of every active or paused run of a project, for Prometheus (at most `limit` runs).
    public func latestOfActive(project: Int, limit: Int = 1000) throws -> [(run: String, name: String, project: Int, step: Int, json: String)] {
        let r = try pool.withRetry { c in
            try c.query("""
                SELECT r.id, r.name, r.project_id, s.step, s.metrics FROM runs r
                JOIN LATERAL (SELECT step, metrics FROM run_steps WHERE run_id = r.id ORDER BY step DESC LIMIT 1) s ON true
                WHERE r.project_id = \(project) AND r.state IN ('active', 'paused') ORDER BY r.seq LIMIT \(limit)
                """)
        }
        return try (0..<r.count).map { (try r.string($0, "id"), try r.string($0, "name"), try r.int($0, "project_id"), try r.int($0, "step"),
                                        try r.string($0, "metrics")) }
    }
}
