// RoutePartitions: routes are partitioned by project, then by week (Migrations/0010). This makes the
// partitions (ahead of time, and on demand when a rollout's week has none), and applies each project's
// retention: a week's partition whose routes are all past the policy is dropped whole (never deleted row
// by row), unless a queued, running or paused job names one of its rollouts; the drop is recorded so
// that an expired rollout says so.
import Foundation

/// A rollout's partition key for its routes: its created_at exactly, and the start of its week (UTC).
public struct RouteKey: Sendable, Hashable {
    public var at: String
    public var week: String
}

/// A project's retention: keep routes N days, and/or those of each model's last K policy versions. With
/// both, a route is kept while either keeps it. Neither: routes are kept for ever.
public struct RetentionPolicy: Sendable, Equatable {
    public var keepDays: Int?
    public var keepVersions: Int?
    public init(keepDays: Int?, keepVersions: Int?) { self.keepDays = keepDays; self.keepVersions = keepVersions }
    public var json: [String: Any] { ["keep_days": keepDays ?? NSNull(), "keep_versions": keepVersions ?? NSNull()] }
}

public struct RoutePartition: Sendable {
    public var name: String
    public var start: String
    public var end: String
    public var routes: Int
    public var bytes: Int
}

public struct DroppedPartition: Sendable {
    public var start: String
    public var end: String
    public var routes: Int
    public var bytes: Int
    public var policyJSON: String
    public var droppedAt: String
}

public enum RoutePartitions {
    private static let lock = NSLock()
    /// Partitions known to exist whose week has not ended: never dropped (retention keeps at least the
    /// current week), so the check is skipped for them.
    nonisolated(unsafe) private static var known: Set<String> = []

    /// Makes the partition of the rollout's week when missing (inside the caller's transaction: it
    /// commits with the routes, and ATTACH does not block other writers or readers of the parent).
    static func ensure(_ c: PGConnection, project: Int, _ key: RouteKey) throws {
        let id = "\(project)|\(key.week)"
        lock.lock(); let hit = known.contains(id); lock.unlock()
        if hit { return }
        // a week whose partition retention dropped stays dropped: its rollouts' routes expired
        let r = try c.query("""
            SELECT CASE WHEN EXISTS (SELECT 1 FROM route_partitions_dropped WHERE project_id = \(project) AND range_start = \(key.week)::timestamptz)
                        THEN NULL ELSE r3_route_partition(\(project), \(key.at)::timestamptz) END AS name,
                   \(key.week)::timestamptz + interval '7 days' > now() AS current
            """)
        guard try r.stringOrNil(0, "name") != nil else {
            throw StoreError.expired("the rollout was created in the week of \(key.week), whose routes this project's retention dropped; routes are not stored for it again")
        }
        if try r.bool(0, "current") { lock.lock(); known.insert(id); lock.unlock() }
    }

    /// Makes this and next week's partitions of every project (run at start and by the maintenance loop),
    /// so that writers rarely make one.
    public static func prepare(_ pool: ConnectionPool) throws {
        try pool.withRetry { c in
            try c.query("""
                SELECT r3_route_partition(id, now()), r3_route_partition(id, now() + interval '7 days') FROM projects ORDER BY id
                """)
        }
    }

    // MARK: retention

    public static func policy(_ c: PGConnection, project: Int) throws -> RetentionPolicy {
        let r = try c.query("SELECT route_keep_days, route_keep_versions FROM projects WHERE id = \(project)")
        guard r.count == 1 else { return RetentionPolicy(keepDays: nil, keepVersions: nil) }
        return RetentionPolicy(keepDays: try r.intOrNil(0, "route_keep_days"), keepVersions: try r.intOrNil(0, "route_keep_versions"))
    }

    public static func setPolicy(_ pool: ConnectionPool, project: Int, _ p: RetentionPolicy) throws {
        try pool.withRetry { c in
            try c.query("UPDATE projects SET route_keep_days = \(p.keepDays), route_keep_versions = \(p.keepVersions) WHERE id = \(project)")
        }
    }

    /// The project's live partitions, oldest first, with their routes and bytes.
    public static func partitions(_ c: PGConnection, project: Int) throws -> [RoutePartition] {
        let parent = "routes_p\(project)"
        let names = try c.query("""
            SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = to_regclass(\(parent)) ORDER BY c.relname
            """)
        return try (0..<names.count).map { i in
            let name = try names.string(i, "name")
            guard name.hasPrefix(parent + "_w"), name.utf8.count == parent.utf8.count + 10, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                throw StoreError.decode("unexpected partition \(name) of \(parent)")
            }
            // the name is ours (checked above): an identifier, not input
            let r = try c.query("""
                SELECT count(*) AS n, coalesce(sum(octet_length(data)), 0) AS b,
                       to_char(to_timestamp(\(String(name.suffix(8))), 'YYYYMMDD') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS start,
                       to_char((to_timestamp(\(String(name.suffix(8))), 'YYYYMMDD') AT TIME ZONE 'UTC') + interval '7 days', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS "end"
                FROM \(raw: SQL(stringLiteral: "\"\(name)\""))
                """)
            return RoutePartition(name: name, start: try r.string(0, "start"), end: try r.string(0, "end"), routes: try r.int(0, "n"), bytes: try r.int(0, "b"))
        }
    }

    public static func dropped(_ c: PGConnection, project: Int, containing at: String? = nil) throws -> [DroppedPartition] {
        let ts = { (col: String) in "to_char(\(col) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS \(col)" }
        let r = try c.query("""
            SELECT \(raw: SQL(stringLiteral: ts("range_start"))), \(raw: SQL(stringLiteral: ts("range_end"))), routes, bytes, policy,
                   \(raw: SQL(stringLiteral: ts("dropped_at")))
            FROM route_partitions_dropped WHERE project_id = \(project)
              AND (\(at)::timestamptz IS NULL OR (range_start <= \(at)::timestamptz AND range_end > \(at)::timestamptz))
            ORDER BY range_start
            """)
        return try (0..<r.count).map {
            DroppedPartition(start: try r.string($0, "range_start"), end: try r.string($0, "range_end"), routes: try r.int($0, "routes"),
                             bytes: try r.int($0, "bytes"), policyJSON: try r.string($0, "policy"), droppedAt: try r.string($0, "dropped_at"))
        }
    }

    /// The time before which the project's routes are past its policy, or nil (nothing is).
    static func cutoff(_ c: PGConnection, project: Int, _ p: RetentionPolicy) throws -> String? {
        guard p.keepDays != nil || p.keepVersions != nil else { return nil }
        // the earliest rollout of each model's last K policy versions: every rollout before it is of an older version
        let r = try c.query("""
            WITH versions AS (
                SELECT model, policy_version, min(created_at) AS first_at,
                       dense_rank() OVER (PARTITION BY model ORDER BY policy_version DESC) AS rank
                FROM rollouts WHERE project_id = \(project) AND routes_stored GROUP BY model, policy_version),
            by_versions AS (SELECT min(first_at) AS at FROM versions WHERE rank <= \(p.keepVersions ?? 0)),
            by_days AS (SELECT now() - make_interval(days => \(p.keepDays ?? 0)) AS at)
            SELECT (CASE
                WHEN \(p.keepDays)::integer IS NULL THEN (SELECT coalesce(at, now()) FROM by_versions)
                WHEN \(p.keepVersions)::integer IS NULL THEN (SELECT at FROM by_days)
                ELSE least((SELECT at FROM by_days), (SELECT coalesce(at, now()) FROM by_versions)) END)::text AS cutoff
            """)
        return try r.stringOrNil(0, "cutoff")
    }

    public struct RetentionOutcome: Sendable {
        public var dropped: [RoutePartition] = []
        /// Partitions past the policy that a job still needs: kept.
        public var held: [(partition: RoutePartition, jobs: [String])] = []
        public init() {}
    }

    /// Applies the retention of `project` (or of every project with a policy): drops each week's partition
    /// that ends before the cutoff and that no queued, running or paused job needs. One process at a time:
    /// with `wait` false, a round another process is running is skipped.
    @discardableResult
    public static func apply(_ pool: ConnectionPool, project only: Int? = nil, wait: Bool = false) throws -> [Int: RetentionOutcome] {
        try pool.with { c in
            if wait { try c.query("SELECT pg_advisory_lock(724000315)") }
            else { guard try c.query("SELECT pg_try_advisory_lock(724000315) AS ok").bool(0, "ok") else { return [:] } }
            defer { _ = try? c.query("SELECT pg_advisory_unlock(724000315)") }
            let projects = try c.query("""
                SELECT id FROM projects WHERE (route_keep_days IS NOT NULL OR route_keep_versions IS NOT NULL)
                  AND (\(only)::bigint IS NULL OR id = \(only)) ORDER BY id
                """)
            var out: [Int: RetentionOutcome] = [:]
            for i in 0..<projects.count {
                let project = try projects.int(i, "id")
                out[project] = try applyOne(c, project: project)
            }
            return out
        }
    }

    static func applyOne(_ c: PGConnection, project: Int) throws -> RetentionOutcome {
        var outcome = RetentionOutcome()
        let p = try policy(c, project: project)
        guard let cutoff = try cutoff(c, project: project, p) else { return outcome }
        for part in try partitions(c, project: project) {
            let past = try c.query("SELECT \(part.end)::timestamptz <= \(cutoff)::timestamptz AS past").bool(0, "past")
            guard past else { continue }
            let holders = try c.query("""
                SELECT DISTINCT j.id FROM jobs j
                WHERE j.project_id = \(project) AND j.state IN ('queued', 'running', 'paused') AND jsonb_typeof(j.params->'rollout_ids') = 'array'
                  AND EXISTS (SELECT 1 FROM jsonb_array_elements_text(j.params->'rollout_ids') x JOIN rollouts r ON r.id = x::uuid
                              WHERE r.project_id = \(project) AND r.created_at >= \(part.start)::timestamptz AND r.created_at < \(part.end)::timestamptz)
                ORDER BY j.id
                """)
            if holders.count > 0 {
                outcome.held.append((part, try (0..<holders.count).map { try holders.string($0, "id") }))
                continue
            }
            try c.query("BEGIN")
            do {
                try c.query("SET LOCAL lock_timeout = '5s'")
                // the rows as they are now (a writer may have added one since the count above)
                let now = try c.query("SELECT count(*) AS n, coalesce(sum(octet_length(data)), 0) AS b FROM \(raw: SQL(stringLiteral: "\"\(part.name)\""))")
                let n = try now.int(0, "n"), b = try now.int(0, "b")
                try c.query("UPDATE projects SET route_bytes = greatest(route_bytes - \(b), 0) WHERE id = \(project)")
                try c.query("""
                    INSERT INTO route_partitions_dropped (project_id, range_start, range_end, routes, bytes, policy)
                    VALUES (\(project), \(part.start)::timestamptz, \(part.end)::timestamptz, \(n), \(b), \(json: p.json)::jsonb)
                    ON CONFLICT (project_id, range_start) DO UPDATE SET routes = route_partitions_dropped.routes + EXCLUDED.routes,
                        bytes = route_partitions_dropped.bytes + EXCLUDED.bytes, policy = EXCLUDED.policy, dropped_at = now()
                    """)
                try c.query("DROP TABLE \(raw: SQL(stringLiteral: "\"\(part.name)\""))")
                try c.query("COMMIT")
                outcome.dropped.append(RoutePartition(name: part.name, start: part.start, end: part.end, routes: n, bytes: b))
            } catch {
                _ = try? c.query("ROLLBACK")
                throw error
            }
        }
        return outcome
    }

    /// Why the routes of a rollout created at `createdAt` in `project` are gone: the dropped partition
    /// that held them, or nil.
    public static func expiry(_ c: PGConnection, project: Int, createdAt: String) throws -> DroppedPartition? {
        try dropped(c, project: project, containing: createdAt).first
    }
}
