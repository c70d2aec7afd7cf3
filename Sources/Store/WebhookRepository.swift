// WebhookRepository: endpoints, the outbox (events and their deliveries, enqueued inside the caller's
// transaction so they commit with the state change that caused them), the delivery workers' claims and
// every attempt's record.
import Foundation

public struct WebhookEndpoint: Sendable {
    public var id: String
    public var url: String
    public var events: [String]
    public var description: String
    public var enabled: Bool
    public var disabledReason: String?
    public var previousExpiresAt: String?
    public var createdAt: String
    public var updatedAt: String
}

public struct WebhookAttempt: Sendable {
    public var attempt: Int
    public var at: String
    public var statusCode: Int?
    public var latencyMs: Double
    public var error: String?
}

public struct WebhookDelivery: Sendable {
    public var id: String
    public var seq: Int
    public var eventID: String
    public var eventType: String
    public var status: String
    public var attempts: Int
    public var nextAttemptAt: String?
    public var lastStatus: Int?
    public var lastError: String?
    public var createdAt: String
    public var history: [WebhookAttempt]
}

/// A delivery a worker has claimed: what to send and with which secrets.
public struct DueDelivery: Sendable {
    public var id: String
    public var attempt: Int
    public var scheduleAttempt: Int
    public var endpointID: String
    public var url: String
    public var secrets: [String]
    public var messageID: String
    public var body: String
}

public struct WebhookRepository: Sendable {
    public let pool: ConnectionPool
    public init(pool: ConnectionPool) { self.pool = pool }
    public static let channel = "r3_webhooks"
    /// The events an endpoint can subscribe to.
    public static let eventTypes: Set<String> = ["training.collapse_detected", "job.succeeded", "job.failed", "job.cancelled", "job.collapsed",
                                                  "run.collapse_detected", "run.paused", "run.collapsed", "run.finished"]

    static let columns = """
        e.id, e.url, e.events, e.description, e.enabled, e.disabled_reason, \(JobRepository.ts("e.previous_expires_at")),
        \(JobRepository.ts("e.created_at")), \(JobRepository.ts("e.updated_at"))
        """
    static func endpoint(_ r: PGResult, _ i: Int) throws -> WebhookEndpoint {
        WebhookEndpoint(id: try r.string(i, "id"), url: try r.string(i, "url"), events: RolloutRepository.parseArray(try r.stringOrNil(i, "events")) ?? [],
                        description: try r.stringOrNil(i, "description") ?? "", enabled: try r.bool(i, "enabled"),
                        disabledReason: try r.stringOrNil(i, "disabled_reason"),
                        previousExpiresAt: try r.stringOrNil(i, "previous_expires_at"),
                        createdAt: try r.string(i, "created_at"), updatedAt: try r.string(i, "updated_at"))
    }

    // MARK: outbox

    static func messageID() -> String {
        var g = SystemRandomNumberGenerator()
        let alphabet = Array("0123456789abcdefghijklmnopqrstuvwxyz")
        return "msg_" + String((0..<26).map { _ in alphabet[Int(g.next() % UInt64(alphabet.count))] })
    }

    nonisolated(unsafe) static let iso: ISO8601DateFormatter = {   // thread-safe (Foundation documents it)
        let f = ISO8601DateFormatter(); f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]; return f
    }()

    /// Writes the event (thin: ids and URLs) and a delivery per enabled endpoint of the job's project that
    /// subscribes to `type`, on `c` inside the caller's transaction; nothing when nobody subscribes.
    static func enqueue(_ c: PGConnection, job: String, type: String, data: Any) throws {
        let r = try c.query("SELECT project_id, type, model_id, state, error FROM jobs WHERE id = \(job)::uuid")
        guard r.count == 1, let project = try r.intOrNil(0, "project_id") else { return }
        var payload: Any = data
        if type.hasPrefix("job.") {
            var d: [String: Any] = ["job_id": job, "job_type": try r.stringOrNil(0, "type") ?? "", "model": try r.stringOrNil(0, "model_id") ?? "",
                                    "state": String(type.dropFirst(4)), "job_url": "/v1/jobs/\(job)", "metrics_url": "/v1/jobs/\(job)/metrics",
                                    "events_url": "/v1/jobs/\(job)/events"]
            if type == "job.failed", let e = try r.stringOrNil(0, "error") { d["error"] = String(e.prefix(500)) }
            payload = d
        }
        try enqueue(c, project: project, type: type, payload: payload)
    }

    /// Writes an event of `project` with its payload and a delivery per subscribed endpoint (inside the caller's transaction).
    static func enqueue(_ c: PGConnection, project: Int, type: String, payload: Any) throws {
        let id = messageID()
        let body = ["type": type, "timestamp": iso.string(from: Date()), "data": payload] as [String: Any]
        let text = String(decoding: try JSONSerialization.data(withJSONObject: body, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)
        let res = try c.query("""
            WITH subscribers AS (
                SELECT id FROM webhook_endpoints WHERE project_id = \(project) AND enabled AND \(type) = ANY(events)
            ), ev AS (
                INSERT INTO webhook_events (id, project_id, type, body)
                SELECT \(id), \(project), \(type), \(text) WHERE EXISTS (SELECT 1 FROM subscribers)
                RETURNING id
            )
            INSERT INTO webhook_deliveries (event_id, endpoint_id) SELECT ev.id, s.id FROM ev, subscribers s
            """)
        if res.affected > 0 { try c.query("SELECT pg_notify(\(WebhookRepository.channel), '')") }
    }

    // MARK: endpoints

    public func create(project: Int, url: String, events: [String], description: String, secret: String) throws -> WebhookEndpoint {
        try pool.with { c in
            let r = try c.query("""
                INSERT INTO webhook_endpoints AS e (project_id, url, events, description, secret)
                VALUES (\(project), \(url), \(RolloutRepository.pgArray(events.map { "\"\($0)\"" }))::text[], \(description), \(secret))
                RETURNING \(raw: SQL(stringLiteral: WebhookRepository.columns))
                """)
            return try WebhookRepository.endpoint(r, 0)
        }
    }

    public func list(project: Int, after cursor: Int, limit: Int) throws -> [(WebhookEndpoint, seq: Int)] {
        let r = try pool.withRetry { c in
            try c.query("""
                SELECT \(raw: SQL(stringLiteral: WebhookRepository.columns)), e.seq FROM webhook_endpoints e
                WHERE e.project_id = \(project) AND e.seq > \(cursor) ORDER BY e.seq LIMIT \(limit)
                """)
        }
        return try (0..<r.count).map { (try WebhookRepository.endpoint(r, $0), try r.int($0, "seq")) }
    }

    public func get(project: Int, id: String) throws -> WebhookEndpoint? {
        guard UUID(uuidString: id) != nil else { return nil }
        let r = try pool.withRetry { try $0.query("SELECT \(raw: SQL(stringLiteral: WebhookRepository.columns)) FROM webhook_endpoints e WHERE e.project_id = \(project) AND e.id = \(id)::uuid") }
        return r.count == 0 ? nil : try WebhookRepository.endpoint(r, 0)
    }

    /// Changes the given fields; re-enabling clears the disabled reason.
    public func update(project: Int, id: String, url: String?, events: [String]?, description: String?, enabled: Bool?) throws -> WebhookEndpoint? {
        guard UUID(uuidString: id) != nil else { return nil }
        let ev: String? = events.map { RolloutRepository.pgArray($0.map { "\"\($0)\"" }) }
        let r = try pool.with { c in
            try c.query("""
                UPDATE webhook_endpoints e SET url = coalesce(\(url), e.url), events = coalesce(\(ev)::text[], e.events),
                    description = coalesce(\(description), e.description), enabled = coalesce(\(enabled)::boolean, e.enabled),
                    disabled_reason = CASE WHEN \(enabled)::boolean THEN NULL ELSE e.disabled_reason END, updated_at = now()
                WHERE e.project_id = \(project) AND e.id = \(id)::uuid
                RETURNING \(raw: SQL(stringLiteral: WebhookRepository.columns))
                """)
        }
        return r.count == 0 ? nil : try WebhookRepository.endpoint(r, 0)
    }

    public func delete(project: Int, id: String) throws -> Bool {
        guard UUID(uuidString: id) != nil else { return false }
        return try pool.with { try $0.query("DELETE FROM webhook_endpoints WHERE project_id = \(project) AND id = \(id)::uuid").affected } == 1
    }

    /// A new secret; the old one keeps signing (second signature) for `overlapSeconds`.
    public func rotate(project: Int, id: String, secret: String, overlapSeconds: Double) throws -> WebhookEndpoint? {
        guard UUID(uuidString: id) != nil else { return nil }
        let r = try pool.with { c in
            try c.query("""
                UPDATE webhook_endpoints e SET previous_secret = e.secret, secret = \(secret),
                    previous_expires_at = now() + make_interval(secs => \(overlapSeconds)), updated_at = now()
                WHERE e.project_id = \(project) AND e.id = \(id)::uuid
                RETURNING \(raw: SQL(stringLiteral: WebhookRepository.columns))
                """)
        }
        return r.count == 0 ? nil : try WebhookRepository.endpoint(r, 0)
    }

    // MARK: deliveries

    static let deliveryColumns = """
        d.id, d.seq, d.event_id, ev.type AS event_type, d.status, d.attempts, d.last_status, d.last_error,
        CASE WHEN d.status = 'pending' THEN to_char(d.next_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END AS next_attempt_at,
        \(JobRepository.ts("d.created_at"))
        """

    func deliveries(_ c: PGConnection, where cond: SQL, limit: Int) throws -> [WebhookDelivery] {
        let r = try c.query("""
            SELECT \(raw: SQL(stringLiteral: WebhookRepository.deliveryColumns)) FROM webhook_deliveries d JOIN webhook_events ev ON ev.id = d.event_id
            WHERE \(raw: cond) ORDER BY d.seq LIMIT \(limit)
            """)
        var out: [WebhookDelivery] = []
        for i in 0..<r.count {
            let id = try r.string(i, "id")
            let a = try c.query("""
                SELECT attempt, \(raw: SQL(stringLiteral: JobRepository.ts("at"))), status_code, latency_ms, error FROM webhook_attempts
                WHERE delivery_id = \(id)::uuid ORDER BY attempt
                """)
            let history = try (0..<a.count).map {
                WebhookAttempt(attempt: try a.int($0, "attempt"), at: try a.string($0, "at"), statusCode: try a.intOrNil($0, "status_code"),
                               latencyMs: try a.doubleOrNil($0, "latency_ms") ?? 0, error: try a.stringOrNil($0, "error"))
            }
            out.append(WebhookDelivery(id: id, seq: try r.int(i, "seq"), eventID: try r.string(i, "event_id"), eventType: try r.string(i, "event_type"),
                                       status: try r.string(i, "status"), attempts: try r.int(i, "attempts"),
                                       nextAttemptAt: try r.stringOrNil(i, "next_attempt_at"), lastStatus: try r.intOrNil(i, "last_status"),
                                       lastError: try r.stringOrNil(i, "last_error"), createdAt: try r.string(i, "created_at"), history: history))
        }
        return out
    }

    /// An endpoint's deliveries in creation order, each with its attempts.
    public func deliveries(endpoint: String, after cursor: Int, limit: Int) throws -> [WebhookDelivery] {
        try pool.withRetry { c in try deliveries(c, where: "d.endpoint_id = \(endpoint)::uuid AND d.seq > \(cursor)", limit: limit) }
    }

    /// Sends a delivery again (same webhook-id), with a fresh retry schedule. nil when it does not exist.
    public func redeliver(endpoint: String, delivery: String) throws -> WebhookDelivery? {
        guard UUID(uuidString: delivery) != nil else { return nil }
        return try pool.transaction { c in
            let r = try c.query("""
                UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = now(), retry_base = attempts, updated_at = now()
                WHERE id = \(delivery)::uuid AND endpoint_id = \(endpoint)::uuid
                """)
            guard r.affected == 1 else { return nil }
            try c.query("SELECT pg_notify(\(WebhookRepository.channel), '')")
            return try deliveries(c, where: "d.id = \(delivery)::uuid", limit: 1).first
        }
    }

    /// Claims the next due delivery of an enabled endpoint: it stays pending, with `next_attempt_at`
    /// pushed `leaseSeconds` ahead as an in-flight lease (a crash mid-send retries it after that).
    public func claimDue(leaseSeconds: Double) throws -> DueDelivery? {
        try pool.withRetry { c in
            let r = try c.query("""
                WITH due AS (
                    SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
                    WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND e.enabled
                    ORDER BY d.next_attempt_at LIMIT 1 FOR UPDATE OF d SKIP LOCKED
                )
                UPDATE webhook_deliveries d SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => \(leaseSeconds)),
                    updated_at = now()
                FROM due WHERE d.id = due.id
                RETURNING d.id, d.attempts, d.retry_base, d.endpoint_id, d.event_id
                """)
            guard r.count == 1 else { return nil }
            let endpoint = try r.string(0, "endpoint_id"), event = try r.string(0, "event_id")
            let e = try c.query("""
                SELECT url, secret, CASE WHEN previous_expires_at > now() THEN previous_secret END AS previous FROM webhook_endpoints
                WHERE id = \(endpoint)::uuid
                """)
            let b = try c.query("SELECT body FROM webhook_events WHERE id = \(event)")
            let attempts = try r.int(0, "attempts")
            return DueDelivery(id: try r.string(0, "id"), attempt: attempts, scheduleAttempt: attempts - (try r.intOrNil(0, "retry_base") ?? 0),
                               endpointID: endpoint, url: try e.string(0, "url"),
                               secrets: [try e.string(0, "secret")] + [try e.stringOrNil(0, "previous")].compactMap { $0 },
                               messageID: event, body: try b.string(0, "body"))
        }
    }

    /// Records an attempt and applies its outcome.
    public func record(_ d: DueDelivery, statusCode: Int?, latencyMs: Double, error: String?, outcome: WebhookSchedule.Outcome) throws {
        try pool.transaction { c in
            try c.query("""
                INSERT INTO webhook_attempts (delivery_id, attempt, status_code, latency_ms, error)
                VALUES (\(d.id)::uuid, \(d.attempt), \(statusCode), \(latencyMs), \(error))
                ON CONFLICT (delivery_id, attempt) DO NOTHING
                """)
            let (status, delay): (String, Double) = {
                switch outcome {
                case .delivered: return ("succeeded", 0)
                case let .retry(after): return ("pending", after)
                case .failed, .disableEndpoint: return ("failed", 0)
                }
            }()
            try c.query("""
                UPDATE webhook_deliveries SET status = \(status), last_status = \(statusCode), last_error = \(error),
                    next_attempt_at = now() + make_interval(secs => \(delay)), updated_at = now() WHERE id = \(d.id)::uuid
                """)
            if outcome == .disableEndpoint {
                try c.query("""
                    UPDATE webhook_endpoints SET enabled = false, disabled_reason = 'the endpoint answered 410 Gone', updated_at = now()
                    WHERE id = \(d.endpointID)::uuid
                    """)
            }
        }
    }
}
