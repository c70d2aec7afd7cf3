// JobRepository: the job queue in PostgreSQL. A claim is one statement (CTE + FOR UPDATE SKIP LOCKED)
// that takes a queued job or one whose lease expired, and issues a fresh lease token. Every write a
// worker makes afterwards runs in `fenced`, which locks the row only if the token still holds: a zombie
// worker whose lease was taken over cannot overwrite anything.
import Foundation

/// A job's state, as the jobs.state column holds it.
public enum JobState: String, Sendable, CaseIterable {
    case queued, running, paused, succeeded, failed, cancelled, collapsed

    /// Ended: no worker runs it again and its event stream is complete.
    public var isTerminal: Bool {
        switch self {
        case .succeeded, .failed, .cancelled, .collapsed: return true
        case .queued, .running, .paused: return false
        }
    }
}

public struct JobRecord: Sendable {
    public var id: String
    public var seq: Int
    public var type: String
    public var modelID: String
    public var paramsJSON: String
    public var state: JobState
    public var progressJSON: String
    public var attempts: Int
    public var maxAttempts: Int
    public var cancelRequested: Bool
    public var error: String?
    public var resultJSON: String?
    public var checkpointJSON: String?
    public var projectID: Int
    public var createdAt: String
    public var startedAt: String?
    public var finishedAt: String?
    public var updatedAt: String
    public var runAfter: String
}

public struct JobClaim: Sendable {
    public var job: JobRecord
    public var token: String
}

public struct JobEvent: Sendable {
    public var id: Int
    public var type: String
    public var dataJSON: String
    public var createdAt: String
}

public struct JobRepository: Sendable {
    public let pool: ConnectionPool
    public init(pool: ConnectionPool) { self.pool = pool }
    public static let channel = "r3_jobs"

    static func ts(_ c: String) -> String { "to_char(\(c) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS \(c.split(separator: ".").last!)" }
    static let columns = """
        j.id, j.seq, j.type, j.model_id, j.params, j.state, j.progress, j.attempts, j.max_attempts, j.cancel_requested, j.error,
        j.result, j.checkpoint, j.project_id, \(ts("j.created_at")), \(ts("j.started_at")), \(ts("j.finished_at")),
        \(ts("j.updated_at")), \(ts("j.run_after"))
        """

    static func state(_ r: PGResult, _ i: Int) throws -> JobState {
        let s = try r.string(i, "state")
        guard let st = JobState(rawValue: s) else { throw StoreError.decode("column state = '\(s)' is not a job state") }
        return st
    }

    static func record(_ r: PGResult, _ i: Int) throws -> JobRecord {
        JobRecord(id: try r.string(i, "id"), seq: try r.int(i, "seq"), type: try r.string(i, "type"), modelID: try r.string(i, "model_id"),
                  paramsJSON: try r.string(i, "params"), state: try JobRepository.state(r, i), progressJSON: try r.string(i, "progress"),
                  attempts: try r.int(i, "attempts"), maxAttempts: try r.int(i, "max_attempts"),
                  cancelRequested: try r.bool(i, "cancel_requested"), error: try r.stringOrNil(i, "error"),
                  resultJSON: try r.stringOrNil(i, "result"), checkpointJSON: try r.stringOrNil(i, "checkpoint"),
                  projectID: try r.int(i, "project_id"), createdAt: try r.string(i, "created_at"),
                  startedAt: try r.stringOrNil(i, "started_at"), finishedAt: try r.stringOrNil(i, "finished_at"),
                  updatedAt: try r.string(i, "updated_at"), runAfter: try r.string(i, "run_after"))
    }

    /// A job event; the ones webhooks carry also go to the outbox, in the same transaction.
    public static func addEvent(_ c: PGConnection, job: String, type: String, data: Any) throws {
        try c.query("INSERT INTO job_events (job_id, type, data) VALUES (\(job)::uuid, \(type), \(json: data)::jsonb)")
        if WebhookRepository.eventTypes.contains(type) { try WebhookRepository.enqueue(c, job: job, type: type, data: data) }
    }

    public enum Created: Sendable { case created(JobRecord), existing(JobRecord), conflict }

    /// Whether a job of this project was created with this Idempotency-Key (a retry replays it).
    public func hasIdempotencyKey(project: Int, key: String) throws -> Bool {
        try pool.withRetry { try $0.query("SELECT 1 FROM jobs WHERE project_id = \(project) AND idempotency_key = \(key)") }.count == 1
    }

    /// Queues a job (and its `job.queued` event) and wakes the workers. With an idempotency key, a
    /// repeated request returns the job the first one created; a different request under the same key is a conflict.
    public func create(project: Int, type: String, modelID: String, paramsJSON: String, maxAttempts: Int,
                       idempotencyKey: String?, requestHash: String?) throws -> Created {
        try pool.transaction { c in
            let res = try c.query("""
                INSERT INTO jobs AS j (project_id, type, model_id, params, max_attempts, idempotency_key, request_hash)
                VALUES (\(project), \(type), \(modelID)::uuid, \(paramsJSON)::jsonb, \(maxAttempts), \(idempotencyKey), \(requestHash))
                ON CONFLICT (project_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                RETURNING \(raw: SQL(stringLiteral: JobRepository.columns))
                """)
            if res.count == 1 {
                let job = try JobRepository.record(res, 0)
                try JobRepository.addEvent(c, job: job.id, type: "job.queued", data: ["state": "queued"])
                try c.query("SELECT pg_notify(\(JobRepository.channel), \(job.id))")
                return .created(job)
            }
            let prior = try c.query("""
                SELECT \(raw: SQL(stringLiteral: JobRepository.columns)), j.request_hash FROM jobs j
                WHERE j.project_id = \(project) AND j.idempotency_key = \(idempotencyKey)
                """)
            guard prior.count == 1 else { throw StoreError.decode("idempotency key vanished") }
            if try prior.stringOrNil(0, "request_hash") != requestHash { return .conflict }
            return .existing(try JobRepository.record(prior, 0))
        }
    }

    public func get(project: Int, id: String) throws -> JobRecord? {
        guard UUID(uuidString: id) != nil else { return nil }
        let r = try pool.withRetry { try $0.query("SELECT \(raw: SQL(stringLiteral: JobRepository.columns)) FROM jobs j WHERE j.project_id = \(project) AND j.id = \(id)::uuid") }
        return r.count == 0 ? nil : try JobRepository.record(r, 0)
    }

    /// A job by id whatever its project (for signed page links, which name the job).
    public func getAny(id: String) throws -> JobRecord? {
        guard UUID(uuidString: id) != nil else { return nil }
        let r = try pool.withRetry { try $0.query("SELECT \(raw: SQL(stringLiteral: JobRepository.columns)) FROM jobs j WHERE j.id = \(id)::uuid") }
        return r.count == 0 ? nil : try JobRepository.record(r, 0)
    }

    public func list(project: Int, state: JobState?, type: String?, after cursor: Int, limit: Int) throws -> [JobRecord] {
        let r = try pool.withRetry { c in
            try c.query("""
                SELECT \(raw: SQL(stringLiteral: JobRepository.columns)) FROM jobs j
                WHERE j.project_id = \(project) AND j.seq > \(cursor) AND (\(state?.rawValue)::text IS NULL OR j.state = \(state?.rawValue))
                  AND (\(type)::text IS NULL OR j.type = \(type))
                ORDER BY j.seq LIMIT \(limit)
                """)
        }
        return try (0..<r.count).map { try JobRepository.record(r, $0) }
    }

    /// Cancels a queued job at once; marks a running one for its worker to stop between steps.
    public func requestCancel(project: Int, id: String) throws -> JobRecord? {
        guard UUID(uuidString: id) != nil else { return nil }
        return try pool.transaction { c in
            let r = try c.query("SELECT state FROM jobs WHERE project_id = \(project) AND id = \(id)::uuid FOR UPDATE")
            guard r.count == 1 else { return nil }
            switch try JobRepository.state(r, 0) {
            case .queued, .paused:
                try c.query("""
                    UPDATE jobs SET state = 'cancelled', cancel_requested = true, finished_at = now(), updated_at = now() WHERE id = \(id)::uuid
                    """)
                try JobRepository.addEvent(c, job: id, type: "job.cancelled", data: ["state": "cancelled"])
            case .running:
                try c.query("UPDATE jobs SET cancel_requested = true, updated_at = now() WHERE id = \(id)::uuid")
                try JobRepository.addEvent(c, job: id, type: "job.cancel_requested", data: ["state": "running"])
            default: break
            }
            let out = try c.query("SELECT \(raw: SQL(stringLiteral: JobRepository.columns)) FROM jobs j WHERE j.id = \(id)::uuid")
            return try JobRepository.record(out, 0)
        }
    }

    // MARK: workers

    /// Claims the oldest runnable job: queued and due, or running with an expired lease (its worker
    /// died). Returns nil when there is none.
    public func claim(worker: String, leaseSeconds: Double) throws -> JobClaim? {
        try pool.withRetry { c in
            let r = try c.query("""
                WITH next AS (
                    SELECT id FROM jobs
                    WHERE (state = 'queued' AND run_after <= now()) OR (state = 'running' AND lease_expires_at < now())
                    ORDER BY run_after, seq
                    LIMIT 1
                    FOR UPDATE SKIP LOCKED
                )
                UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, lease_token = gen_random_uuid(),
                    lease_expires_at = now() + make_interval(secs => \(leaseSeconds)), worker = \(worker),
                    started_at = coalesce(j.started_at, now()), updated_at = now()
                FROM next WHERE j.id = next.id
                RETURNING \(raw: SQL(stringLiteral: JobRepository.columns)), j.lease_token
                """)
            guard r.count == 1 else { return nil }
            return JobClaim(job: try JobRepository.record(r, 0), token: try r.string(0, "lease_token"))
        }
    }

    /// The claim no longer holds (lease expired and taken, or the job was finished elsewhere).
    public struct LeaseLost: Error, CustomStringConvertible { public var description: String { "the job's lease was lost" } }

    /// Runs `body` in a transaction that holds the job's row, only while `claim` still owns it.
    /// Returns the body's value and whether a cancel was requested.
    public func fenced<T>(_ claim: JobClaim, _ body: (PGConnection) throws -> T) throws -> (T, cancelRequested: Bool) {
        try pool.transaction { c in
            let r = try c.query("""
                SELECT cancel_requested FROM jobs WHERE id = \(claim.job.id)::uuid AND lease_token = \(claim.token)::uuid
                  AND state = 'running' FOR UPDATE
                """)
            guard r.count == 1 else { throw LeaseLost() }
            return (try body(c), try r.boolOrNil(0, "cancel_requested") ?? false)
        }
    }

    /// Extends the lease; returns whether a cancel was requested. Throws LeaseLost when the claim is gone.
    public func heartbeat(_ claim: JobClaim, leaseSeconds: Double) throws -> Bool {
        try fenced(claim) { c in
            try c.query("UPDATE jobs SET lease_expires_at = now() + make_interval(secs => \(leaseSeconds)) WHERE id = \(claim.job.id)::uuid")
        }.cancelRequested
    }

    public static func setProgress(_ c: PGConnection, job: String, progress: Any) throws {
        try c.query("UPDATE jobs SET progress = \(json: progress)::jsonb, updated_at = now() WHERE id = \(job)::uuid")
    }

    public static func setCheckpoint(_ c: PGConnection, job: String, checkpoint: Any) throws {
        try c.query("UPDATE jobs SET checkpoint = \(json: checkpoint)::jsonb WHERE id = \(job)::uuid")
    }

    public static func putMetrics(_ c: PGConnection, job: String, step: Int, metricsJSON: String) throws {
        try c.query("""
            INSERT INTO job_metrics (job_id, step, metrics) VALUES (\(job)::uuid, \(step), \(metricsJSON)::jsonb)
            ON CONFLICT (job_id, step) DO UPDATE SET metrics = EXCLUDED.metrics, created_at = now()
            """)
    }

    /// Forgets what steps >= `step` wrote (a resumed attempt redoes them): rollouts, metrics, versions.
    public static func discardSteps(_ c: PGConnection, job: String, from step: Int) throws {
        try c.query("DELETE FROM rollouts WHERE job_id = \(job)::uuid AND job_step >= \(step)")
        try c.query("DELETE FROM job_metrics WHERE job_id = \(job)::uuid AND step >= \(step)")
        try c.query("DELETE FROM policy_versions WHERE job_id = \(job)::uuid AND job_step > \(step)")
    }

    /// Ends the attempt: succeeded or cancelled with a result.
    public func finish(_ claim: JobClaim, state: JobState, result: Any, event data: Any) throws {
        _ = try fenced(claim) { c in
            try c.query("""
                UPDATE jobs SET state = \(state.rawValue), result = \(json: result)::jsonb, finished_at = now(), updated_at = now(),
                    lease_token = NULL, lease_expires_at = NULL WHERE id = \(claim.job.id)::uuid
                """)
            try JobRepository.addEvent(c, job: claim.job.id, type: "job.\(state.rawValue)", data: data)
        }
    }

    /// Ends the attempt with an error: queued again after `retryIn` seconds, or failed for good when nil.
    public func fail(_ claim: JobClaim, error: String, retryIn: Double?) throws {
        _ = try fenced(claim) { c in
            if let d = retryIn {
                try c.query("""
                    UPDATE jobs SET state = 'queued', error = \(error), run_after = now() + make_interval(secs => \(d)),
                        lease_token = NULL, lease_expires_at = NULL, updated_at = now() WHERE id = \(claim.job.id)::uuid
                    """)
                try JobRepository.addEvent(c, job: claim.job.id, type: "job.retrying", data: ["error": error, "retry_in_seconds": d, "attempt": claim.job.attempts])
            } else {
                try c.query("""
                    UPDATE jobs SET state = 'failed', error = \(error), finished_at = now(), updated_at = now(),
                        lease_token = NULL, lease_expires_at = NULL WHERE id = \(claim.job.id)::uuid
                    """)
                try JobRepository.addEvent(c, job: claim.job.id, type: "job.failed", data: ["error": error, "attempts": claim.job.attempts])
            }
        }
    }

    // MARK: reads for the API

    public func events(job: String, after: Int, limit: Int = 500) throws -> [JobEvent] {
        try JobRepository.events(pool, table: "job_events", owner: "job_id", id: job, after: after, limit: limit)
    }

    /// Events of a job or a run (`table` and `owner` are chosen by code, never by input) after an id, in order.
    static func events(_ pool: ConnectionPool, table: String, owner: String, id: String, after: Int, limit: Int) throws -> [JobEvent] {
        let r = try pool.withRetry { c in
            try c.query("""
                SELECT id, type, data, \(raw: SQL(stringLiteral: ts("created_at"))) FROM \(raw: SQL(stringLiteral: table))
                WHERE \(raw: SQL(stringLiteral: owner)) = \(id)::uuid AND id > \(after) ORDER BY id LIMIT \(limit)
                """)
        }
        return try (0..<r.count).map { JobEvent(id: try r.int($0, "id"), type: try r.string($0, "type"), dataJSON: try r.string($0, "data"),
                                                createdAt: try r.string($0, "created_at")) }
    }

    /// Per-step metrics in step order, as (step, JSON object text).
    public func metrics(job: String) throws -> [(step: Int, json: String)] {
        let r = try pool.withRetry { try $0.query("SELECT step, metrics FROM job_metrics WHERE job_id = \(job)::uuid ORDER BY step") }
        return try (0..<r.count).map { (try r.int($0, "step"), try r.string($0, "metrics")) }
    }

    /// The rollout ids a job wrote, in (step, sample) order.
    public func rolloutIDs(job: String) throws -> [String] {
        let r = try pool.withRetry { try $0.query("SELECT id FROM rollouts WHERE job_id = \(job)::uuid ORDER BY job_step, sample_index") }
        return try (0..<r.count).map { try r.string($0, "id") }
    }
}

extension JobRepository {
    /// Gives a job back to the queue without counting the attempt (this process is shutting down).
    public func release(_ claim: JobClaim) throws {
        _ = try fenced(claim) { c in
            try c.query("""
                UPDATE jobs SET state = 'queued', attempts = greatest(attempts - 1, 0), lease_token = NULL, lease_expires_at = NULL,
                    run_after = now(), updated_at = now() WHERE id = \(claim.job.id)::uuid
                """)
            try JobRepository.addEvent(c, job: claim.job.id, type: "job.requeued", data: ["reason": "worker shutdown"])
            try c.query("SELECT pg_notify(\(JobRepository.channel), \(claim.job.id))")
        }
    }
}

extension JobRepository {
    /// Ends a running job from inside its fenced step transaction (collapsed).
    public static func end(_ c: PGConnection, job: String, state: JobState, result: Any, event data: Any) throws {
        try c.query("""
            UPDATE jobs SET state = \(state.rawValue), result = \(json: result)::jsonb, finished_at = now(), updated_at = now(),
                lease_token = NULL, lease_expires_at = NULL WHERE id = \(job)::uuid
            """)
        try addEvent(c, job: job, type: "job.\(state.rawValue)", data: data)
    }

    /// Pauses a running job after `step` (from inside its fenced step transaction); `resume` queues it again.
    public static func pause(_ c: PGConnection, job: String, step: Int) throws {
        try c.query("UPDATE jobs SET state = 'paused', lease_token = NULL, lease_expires_at = NULL, updated_at = now() WHERE id = \(job)::uuid")
        try addEvent(c, job: job, type: "job.paused", data: ["step": step])
    }

    /// The job's last checkpoint (step, policy version), if it has one.
    public static func checkpoint(_ c: PGConnection, job: String) throws -> (step: Int, version: Int)? {
        let r = try c.query("SELECT (checkpoint->>'step')::int AS step, (checkpoint->>'version')::int AS version FROM jobs WHERE id = \(job)::uuid")
        guard r.count == 1, let s = try r.intOrNil(0, "step"), let v = try r.intOrNil(0, "version") else { return nil }
        return (s, v)
    }

    /// Queues a paused job again (its pause does not count as an attempt). nil: no such job; the record
    /// otherwise (the caller checks that it was paused).
    public func resume(project: Int, id: String) throws -> (JobRecord, resumed: Bool)? {
        guard UUID(uuidString: id) != nil else { return nil }
        return try pool.transaction { c in
            let r = try c.query("SELECT state FROM jobs WHERE project_id = \(project) AND id = \(id)::uuid FOR UPDATE")
            guard r.count == 1 else { return nil }
            let paused = try JobRepository.state(r, 0) == .paused
            if paused {
                try c.query("""
                    UPDATE jobs SET state = 'queued', attempts = greatest(attempts - 1, 0), run_after = now(), updated_at = now()
                    WHERE id = \(id)::uuid
                    """)
                try JobRepository.addEvent(c, job: id, type: "job.queued", data: ["state": "queued", "reason": "resumed after a pause"])
                try c.query("SELECT pg_notify(\(JobRepository.channel), \(id))")
            }
            let out = try c.query("SELECT \(raw: SQL(stringLiteral: JobRepository.columns)) FROM jobs j WHERE j.id = \(id)::uuid")
            return (try JobRepository.record(out, 0), paused)
        }
    }
}
