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
    /// A DETACH … CONCURRENTLY that did not finish: the next round finalises it.
    public var detachPending = false
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
    /// Partitions known to exist, with the end of their week (epoch seconds): retention never drops a week
    /// that has not ended, so until then a writer need not ask. Only partitions whose creation committed.
    nonisolated(unsafe) private static var known: [String: Double] = [:]
    /// One connection per database for making partitions, outside any writer's transaction (so a
    /// writer that rolls back cannot leave a partition it believed made, and a new project's first write
    /// does not hold the parent's lock until it commits). Serialised by `maker`.
    private static let maker = NSLock()
    nonisolated(unsafe) private static var makers: [String: PGConnection] = [:]

    /// Makes the partition of the rollout's week when missing, in a transaction of its own.
    static func ensure(_ c: PGConnection, project: Int, _ key: RouteKey) throws {
        let id = "\(project)|\(key.week)"
        lock.lock(); let end = known[id]; lock.unlock()
        if let end, end > Date().timeIntervalSince1970 { return }
        maker.lock(); defer { maker.unlock() }
        let m: PGConnection
        if let existing = makers[c.conninfo] { m = existing; try m.ensureConnected() } else {
            m = try PGConnection(conninfo: c.conninfo); makers[c.conninfo] = m
        }
        // a week whose partition retention dropped stays dropped: its rollouts' routes expired
        let r = try m.query("""
            SELECT CASE WHEN EXISTS (SELECT 1 FROM route_partitions_dropped WHERE project_id = \(project) AND range_start = \(key.week)::timestamptz)
                        THEN NULL ELSE r3_route_partition(\(project), \(key.at)::timestamptz) END AS name,
                   extract(epoch FROM \(key.week)::timestamptz + interval '7 days')::float8 AS week_end
            """)
        guard try r.stringOrNil(0, "name") != nil else {
            throw StoreError.expired("the rollout was created in the week of \(key.week), whose routes this project's retention dropped; routes are not stored for it again")
        }
        let weekEnd = try r.double(0, "week_end")
        lock.lock(); known[id] = weekEnd; lock.unlock()
    }

    /// Makes this and next week's partitions of every project (run at start and by the maintenance loop),
    /// so that writers rarely make one; one project per transaction.
    public static func prepare(_ pool: ConnectionPool) throws {
        try pool.withRetry { c in
            let projects = try c.query("SELECT id FROM projects ORDER BY id")
            for i in 0..<projects.count {
                let p = try projects.int(i, "id")
                try c.query("SELECT r3_route_partition(\(p), now()), r3_route_partition(\(p), now() + interval '7 days')")
            }
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
            SELECT c.relname AS name, i.inhdetachpending AS pending FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
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
                       to_char(to_date(\(String(name.suffix(8))), 'YYYYMMDD'), 'YYYY-MM-DD"T00:00:00Z"') AS start,
                       to_char(to_date(\(String(name.suffix(8))), 'YYYYMMDD') + 7, 'YYYY-MM-DD"T00:00:00Z"') AS "end"
                FROM \(raw: SQL(stringLiteral: "\"\(name)\""))
                """)
            return RoutePartition(name: name, start: try r.string(0, "start"), end: try r.string(0, "end"), routes: try r.int(0, "n"), bytes: try r.int(0, "b"),
                                  detachPending: try names.bool(i, "pending"))
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

    /// Whether the week [start, end) is past the policy: ended, and (by days) older than keep_days and/or
    /// (by versions) holding no route of any model's last keep_versions versions. With both, past both.
    static func isPast(_ c: PGConnection, project: Int, _ p: RetentionPolicy, start: String, end: String) throws -> Bool {
        guard p.keepDays != nil || p.keepVersions != nil else { return false }
        let r = try c.query("""
            WITH kept AS (
                SELECT model, policy_version FROM (
                    SELECT model, policy_version, dense_rank() OVER (PARTITION BY model ORDER BY policy_version DESC) AS rank
                    FROM (SELECT DISTINCT model, policy_version FROM rollouts WHERE project_id = \(project) AND routes_stored) v) x
                WHERE rank <= \(p.keepVersions ?? 0))
            SELECT \(end)::timestamptz <= now() AS ended,
                   \(end)::timestamptz <= now() - make_interval(days => \(p.keepDays ?? 0)) AS by_days,
                   NOT EXISTS (SELECT 1 FROM rollouts r JOIN kept k ON k.model = r.model AND k.policy_version = r.policy_version
                               WHERE r.project_id = \(project) AND r.routes_stored
                                 AND r.created_at >= \(start)::timestamptz AND r.created_at < \(end)::timestamptz) AS by_versions
            """)
        guard try r.bool(0, "ended") else { return false }
        let days = p.keepDays == nil ? nil : try r.bool(0, "by_days")
        let versions = p.keepVersions == nil ? nil : try r.bool(0, "by_versions")
        switch (days, versions) {
        case let (d?, v?): return d && v
        case let (d?, nil): return d
        case let (nil, v?): return v
        default: return false
        }
    }

    public struct RetentionOutcome: Sendable {
        public var dropped: [RoutePartition] = []
        /// Partitions past the policy that a job still needs: kept.
        public var held: [(partition: RoutePartition, jobs: [String])] = []
        /// Partitions past the policy not dropped this round (a lock not granted in time, an error): retried next round.
        public var deferred: [(partition: RoutePartition, reason: String)] = []
        public init() {}
    }

    /// Applies the retention of `project` (or of every project with a policy): drops each week's partition
    /// past the policy that no queued, running or paused job needs. One process at a time: with `wait`
    /// false, a round another process is running is skipped.
    @discardableResult
    public static func apply(_ pool: ConnectionPool, project only: Int? = nil, wait: Bool = false) throws -> [Int: RetentionOutcome] {
        try pool.with { c in
            if wait { try c.query("SELECT pg_advisory_lock(724000315)") }
            else { guard try c.query("SELECT pg_try_advisory_lock(724000315) AS ok").bool(0, "ok") else { return [:] } }
            defer { _ = try? c.query("SELECT pg_advisory_unlock(724000315)") }
            let projects = try c.query("""
                SELECT id FROM projects WHERE (route_keep_days IS NOT NULL OR route_keep_versions IS NOT NULL OR
                       EXISTS (SELECT 1 FROM pg_class WHERE relname LIKE 'routes\\_p' || id || '\\_w%' AND relkind = 'r' AND NOT relispartition))
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

    static func quoted(_ name: String) -> SQL { SQL(stringLiteral: "\"\(name)\"") }

    static func applyOne(_ c: PGConnection, project: Int) throws -> RetentionOutcome {
        var outcome = RetentionOutcome()
        let p = try policy(c, project: project)
        let parent = "routes_p\(project)"
        // a week detached by a round that stopped before dropping it: finish it first
        let leftovers = try c.query("""
            SELECT relname FROM pg_class WHERE relname LIKE \(parent.replacingOccurrences(of: "_", with: "\\_") + "\\_w%") AND relkind = 'r' AND NOT relispartition
            ORDER BY relname
            """)
        for i in 0..<leftovers.count {
            let name = try leftovers.string(i, "relname")
            guard name.utf8.count == parent.utf8.count + 10, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else { continue }
            let bounds = try c.query("""
                SELECT to_char(to_date(\(String(name.suffix(8))), 'YYYYMMDD'), 'YYYY-MM-DD"T00:00:00Z"') AS start,
                       to_char(to_date(\(String(name.suffix(8))), 'YYYYMMDD') + 7, 'YYYY-MM-DD"T00:00:00Z"') AS "end"
                """)
            let part = RoutePartition(name: name, start: try bounds.string(0, "start"), end: try bounds.string(0, "end"), routes: 0, bytes: 0)
            do { outcome.dropped.append(try drop(c, project: project, part, policy: p)) } catch {
                outcome.deferred.append((part, "\(error)"))
            }
        }
        for part in try partitions(c, project: project) where try isPast(c, project: project, p, start: part.start, end: part.end) {
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
            do {
                // DETACH … CONCURRENTLY takes only a SHARE UPDATE EXCLUSIVE lock on the parent: the project's
                // other weeks stay readable and writable while it waits for transactions using this one
                try c.query("SET lock_timeout = '30s'")
                defer { _ = try? c.query("RESET lock_timeout") }
                try c.query("ALTER TABLE \(raw: quoted(parent)) DETACH PARTITION \(raw: quoted(part.name)) \(raw: SQL(stringLiteral: part.detachPending ? "FINALIZE" : "CONCURRENTLY"))")
                outcome.dropped.append(try drop(c, project: project, part, policy: p))
            } catch {
                outcome.deferred.append((part, "\(error)"))
            }
        }
        return outcome
    }

    /// Drops a detached week: counts what it held (nothing can write to it any more), takes it off the
    /// project's stored bytes, records it, and drops the table, in one transaction.
    static func drop(_ c: PGConnection, project: Int, _ part: RoutePartition, policy p: RetentionPolicy) throws -> RoutePartition {
        try c.query("BEGIN")
        do {
            try c.query("SET LOCAL lock_timeout = '60s'")
            let now = try c.query("SELECT count(*) AS n, coalesce(sum(octet_length(data)), 0) AS b FROM \(raw: quoted(part.name))")
            let n = try now.int(0, "n"), b = try now.int(0, "b")
            try c.query("DROP TABLE \(raw: quoted(part.name))")
            try c.query("""
                INSERT INTO route_partitions_dropped (project_id, range_start, range_end, routes, bytes, policy)
                VALUES (\(project), \(part.start)::timestamptz, \(part.end)::timestamptz, \(n), \(b), \(json: p.json)::jsonb)
                ON CONFLICT (project_id, range_start) DO UPDATE SET routes = route_partitions_dropped.routes + EXCLUDED.routes,
                    bytes = route_partitions_dropped.bytes + EXCLUDED.bytes, policy = EXCLUDED.policy, dropped_at = now()
                """)
            try c.query("UPDATE projects SET route_bytes = greatest(route_bytes - \(b), 0) WHERE id = \(project)")
            try c.query("COMMIT")
            return RoutePartition(name: part.name, start: part.start, end: part.end, routes: n, bytes: b)
        } catch {
            _ = try? c.query("ROLLBACK")
            throw error
        }
    }

    /// Why the routes of a rollout created at `createdAt` in `project` are gone: the dropped partition
    /// that held them, or nil.
    public static func expiry(_ c: PGConnection, project: Int, createdAt: String) throws -> DroppedPartition? {
        try dropped(c, project: project, containing: createdAt).first
    }
}
