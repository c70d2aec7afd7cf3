// KeyRepository: projects, their bearer API keys and their quotas. A key is shown once at creation; only its
// SHA-256 is stored (hashed by PostgreSQL), so a leaked database does not leak keys. A key carries scopes
// (routes:read, routes:write, jobs, admin), an optional expiry and the time it was last used; revoking
// one (now, or after an overlap when it is rotated) stops it in every process within the auth cache's TTL.
import Foundation

public enum Scope: String, CaseIterable, Sendable {
    case routesRead = "routes:read", routesWrite = "routes:write", jobs, admin
}

/// Who a request is: the key, its project and what it may do, and the project's quotas.
public struct Principal: Sendable, Equatable {
    public var keyID: Int
    public var projectID: Int
    public var projectName: String = ""
    /// The key's first characters, as listings show them.
    public var keyPrefix: String = ""
    public var keyName: String = ""
    public var scopes: Set<String>
    public var quotas: Quotas
    /// When the key stops (expiry, or the end of a rotation's overlap): caches must not outlive it.
    public var validUntil: Double?
}

/// A project's quotas; nil is unlimited.
public struct Quotas: Sendable, Equatable {
    public var maxRouteBytes: Int?
    public var maxActiveJobs: Int?
    public var requestsPerSecond: Double?
    public var requestBurst: Int?
    public init(maxRouteBytes: Int? = nil, maxActiveJobs: Int? = nil, requestsPerSecond: Double? = nil, requestBurst: Int? = nil) {
        self.maxRouteBytes = maxRouteBytes; self.maxActiveJobs = maxActiveJobs; self.requestsPerSecond = requestsPerSecond; self.requestBurst = requestBurst
    }
}

public struct KeyInfo: Sendable {
    public var id: Int
    public var project: String
    public var prefix: String
    public var name: String
    public var scopes: [String]
    public var createdAt: String
    public var expiresAt: String?
    public var lastUsedAt: String?
    public var revokedAt: String?
    public var replacedBy: Int?
}

public struct KeyRepository: Sendable {
    public let pool: ConnectionPool
    public init(pool: ConnectionPool) { self.pool = pool }

    static func newKey() -> String {
        var bytes = [UInt8](repeating: 0, count: 32)
        var rng = SystemRandomNumberGenerator()
        for i in 0..<bytes.count { bytes[i] = UInt8.random(in: 0...255, using: &rng) }
        return "r3_" + Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    static let columns = """
        k.id, p.name AS project, k.prefix, k.name, array_to_string(k.scopes, ',') AS scopes, \(JobRepository.ts("k.created_at")),
        \(JobRepository.ts("k.expires_at")), \(JobRepository.ts("k.last_used_at")), \(JobRepository.ts("k.revoked_at")), k.replaced_by
        """

    static func info(_ r: PGResult, _ i: Int) throws -> KeyInfo {
        KeyInfo(id: try r.int(i, "id"), project: try r.string(i, "project"), prefix: try r.string(i, "prefix"), name: try r.stringOrNil(i, "name") ?? "",
                scopes: (try r.stringOrNil(i, "scopes") ?? "").split(separator: ",").map(String.init), createdAt: try r.string(i, "created_at"),
                expiresAt: try r.stringOrNil(i, "expires_at"), lastUsedAt: try r.stringOrNil(i, "last_used_at"), revokedAt: try r.stringOrNil(i, "revoked_at"),
                replacedBy: try r.intOrNil(i, "replaced_by"))
    }

    /// Creates the project if needed and a new key for it; returns the key (shown once) and its record.
    public func create(project: String, name: String = "", scopes: [Scope] = Scope.allCases, expiresIn: Double? = nil) throws -> (key: String, info: KeyInfo) {
        try pool.transaction { c in
            let p = try c.query("""
                INSERT INTO projects (name) VALUES (\(project))
                ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id
                """)
            return try KeyRepository.insert(c, projectID: try p.int(0, "id"), name: name, scopes: scopes.map(\.rawValue), expiresIn: expiresIn)
        }
    }

    /// The same for a project by id (the admin API).
    public func create(projectID: Int, name: String, scopes: [Scope], expiresIn: Double?) throws -> (key: String, info: KeyInfo) {
        try pool.transaction { c in try KeyRepository.insert(c, projectID: projectID, name: name, scopes: scopes.map(\.rawValue), expiresIn: expiresIn) }
    }

    static func insert(_ c: PGConnection, projectID: Int, name: String, scopes: [String], expiresIn: Double?, expiresAt: String? = nil) throws -> (key: String, info: KeyInfo) {
        let key = newKey()
        let r = try c.query("""
            INSERT INTO api_keys (project_id, prefix, key_hash, name, scopes, expires_at)
            VALUES (\(projectID), \(String(key.prefix(10))), sha256(convert_to(\(key), 'UTF8')), \(name), string_to_array(\(scopes.joined(separator: ",")), ','),
                    coalesce(\(expiresAt)::timestamptz, now() + make_interval(secs => \(expiresIn)::double precision)))
            RETURNING id
            """)
        let id = try r.int(0, "id")
        let out = try c.query("SELECT \(raw: SQL(stringLiteral: columns)) FROM api_keys k JOIN projects p ON p.id = k.project_id WHERE k.id = \(id)")
        return (key, try info(out, 0))
    }

    /// The principal of a usable key (not revoked, not expired), or nil. Records last_used_at (at most once a minute).
    public func authenticate(_ key: String) throws -> Principal? {
        guard key.count <= 200 else { return nil }
        return try pool.withRetry { c -> Principal? in
            let r = try c.query("""
                SELECT k.id, k.project_id, p.name AS project_name, k.prefix, k.name AS key_name, array_to_string(k.scopes, ',') AS scopes,
                       (k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds') AS stale,
                       extract(epoch from least(k.expires_at, k.revoked_at))::double precision AS valid_until,
                       p.max_route_bytes, p.max_active_jobs, p.requests_per_second, p.request_burst
                FROM api_keys k JOIN projects p ON p.id = k.project_id
                WHERE k.key_hash = sha256(convert_to(\(key), 'UTF8')) AND (k.revoked_at IS NULL OR k.revoked_at > now())
                  AND (k.expires_at IS NULL OR k.expires_at > now())
                """)
            guard r.count == 1 else { return nil }
            let id = try r.int(0, "id")
            if try r.boolOrNil(0, "stale") == true { try c.query("UPDATE api_keys SET last_used_at = now() WHERE id = \(id)") }
            return Principal(keyID: id, projectID: try r.int(0, "project_id"), projectName: try r.stringOrNil(0, "project_name") ?? "",
                             keyPrefix: try r.stringOrNil(0, "prefix") ?? "", keyName: try r.stringOrNil(0, "key_name") ?? "", scopes: Set((try r.stringOrNil(0, "scopes") ?? "").split(separator: ",").map(String.init)),
                             quotas: Quotas(maxRouteBytes: try r.intOrNil(0, "max_route_bytes"), maxActiveJobs: try r.intOrNil(0, "max_active_jobs"),
                                            requestsPerSecond: try r.doubleOrNil(0, "requests_per_second"), requestBurst: try r.intOrNil(0, "request_burst")),
                             validUntil: try r.doubleOrNil(0, "valid_until"))
        }
    }

    /// The project a key belongs to, or nil for an unknown, revoked or expired key.
    public func project(forKey key: String) throws -> Int? { try authenticate(key)?.projectID }

    /// Keys of a project (by name), or of every project.
    public func list(project: String?) throws -> [KeyInfo] {
        let r = try pool.withRetry { c in
            try c.query("""
                SELECT \(raw: SQL(stringLiteral: KeyRepository.columns)) FROM api_keys k JOIN projects p ON p.id = k.project_id
                WHERE \(project)::text IS NULL OR p.name = \(project) ORDER BY k.id
                """)
        }
        return try (0..<r.count).map { try KeyRepository.info(r, $0) }
    }

    public func list(projectID: Int) throws -> [KeyInfo] {
        let r = try pool.withRetry { c in
            try c.query("SELECT \(raw: SQL(stringLiteral: KeyRepository.columns)) FROM api_keys k JOIN projects p ON p.id = k.project_id WHERE k.project_id = \(projectID) ORDER BY k.id")
        }
        return try (0..<r.count).map { try KeyRepository.info(r, $0) }
    }

    /// Revokes a key now; false when no such key (of this project, when one is given).
    public func revoke(id: Int, projectID: Int? = nil) throws -> Bool {
        try pool.with { c in
            try c.query("""
                UPDATE api_keys SET revoked_at = now() WHERE id = \(id) AND (\(projectID)::bigint IS NULL OR project_id = \(projectID))
                  AND (revoked_at IS NULL OR revoked_at > now())
                """).affected == 1
        }
    }

    /// A new key with the same project, name, scopes and expiry; the old one stops after `overlap` seconds
    /// (0: at once), so a trainer can switch without a failed request. Nil when no such usable key.
    public func rotate(id: Int, projectID: Int? = nil, overlap: Double = 0) throws -> (key: String, info: KeyInfo)? {
        try pool.transaction { c in
            let r = try c.query("""
                SELECT project_id, name, array_to_string(scopes, ',') AS scopes, expires_at::text AS expires_at FROM api_keys
                WHERE id = \(id) AND (\(projectID)::bigint IS NULL OR project_id = \(projectID)) AND (revoked_at IS NULL OR revoked_at > now())
                  AND (expires_at IS NULL OR expires_at > now()) FOR UPDATE
                """)
            guard r.count == 1 else { return nil }
            let made = try KeyRepository.insert(c, projectID: try r.int(0, "project_id"), name: try r.stringOrNil(0, "name") ?? "",
                                                scopes: (try r.stringOrNil(0, "scopes") ?? "").split(separator: ",").map(String.init), expiresIn: nil,
                                                expiresAt: try r.stringOrNil(0, "expires_at"))
            try c.query("""
                UPDATE api_keys SET revoked_at = now() + make_interval(secs => \(overlap)), replaced_by = \(made.info.id) WHERE id = \(id)
                """)
            return made
        }
    }

    // MARK: quotas

    /// Sets a project's quotas (nil fields unchanged; .some(nil) clears one: unlimited).
    public func setQuotas(project: String, routeBytes: Int??, activeJobs: Int??, requestsPerSecond: Double??, burst: Int??) throws -> Bool {
        try pool.with { c in
            try c.query("""
                UPDATE projects SET
                    max_route_bytes = CASE WHEN \(routeBytes != nil) THEN \(routeBytes ?? nil)::bigint ELSE max_route_bytes END,
                    max_active_jobs = CASE WHEN \(activeJobs != nil) THEN \(activeJobs ?? nil)::integer ELSE max_active_jobs END,
                    requests_per_second = CASE WHEN \(requestsPerSecond != nil) THEN \(requestsPerSecond ?? nil)::double precision ELSE requests_per_second END,
                    request_burst = CASE WHEN \(burst != nil) THEN \(burst ?? nil)::integer ELSE request_burst END
                WHERE name = \(project)
                """).affected == 1
        }
    }

    /// A project's quotas and usage: stored route bytes and jobs queued, running or paused.
    public func usage(projectID: Int) throws -> (quotas: Quotas, routeBytes: Int, activeJobs: Int, name: String) {
        let r = try pool.withRetry { c in
            try c.query("""
                SELECT p.name, p.max_route_bytes, p.max_active_jobs, p.requests_per_second, p.request_burst, p.route_bytes,
                       (SELECT count(*) FROM jobs j WHERE j.project_id = p.id AND j.state IN ('queued', 'running', 'paused')) AS active
                FROM projects p WHERE p.id = \(projectID)
                """)
        }
        guard r.count == 1 else { throw StoreError.decode("project \(projectID) not found") }
        return (Quotas(maxRouteBytes: try r.intOrNil(0, "max_route_bytes"), maxActiveJobs: try r.intOrNil(0, "max_active_jobs"),
                       requestsPerSecond: try r.doubleOrNil(0, "requests_per_second"), requestBurst: try r.intOrNil(0, "request_burst")),
                try r.intOrNil(0, "route_bytes") ?? 0, try r.intOrNil(0, "active") ?? 0, try r.string(0, "name"))
    }

    public func projectID(named name: String) throws -> Int? {
        let r = try pool.withRetry { try $0.query("SELECT id FROM projects WHERE name = \(name)") }
        return r.count == 0 ? nil : try r.intOrNil(0, "id")
    }
}

/// Raised inside a write's transaction when the project's stored route bytes would pass its quota.
public struct QuotaExceeded: Error, CustomStringConvertible {
    public var stored: Int, adding: Int, limit: Int
    public var description: String {
        "the project's route storage quota is \(limit) bytes; \(stored) are stored and this write adds \(adding)"
    }
}

extension RolloutRepository {
    /// Inside a write's transaction: locks the project's row (serialising route writes of one project) and
    /// refuses `adding` more route bytes beyond its quota.
    public static func reserveRouteBytes(_ c: PGConnection, project: Int, adding: Int) throws {
        guard adding > 0 else { return }
        let r = try c.query("SELECT route_bytes, max_route_bytes FROM projects WHERE id = \(project) FOR UPDATE")
        guard r.count == 1, let limit = try r.intOrNil(0, "max_route_bytes") else { return }
        let stored = try r.intOrNil(0, "route_bytes") ?? 0
        if stored + adding > limit { throw QuotaExceeded(stored: stored, adding: adding, limit: limit) }
    }
}
