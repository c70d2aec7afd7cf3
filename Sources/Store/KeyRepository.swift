// KeyRepository: projects and their bearer API keys. A key is shown once at creation; only its
// SHA-256 is stored (hashed by PostgreSQL), so a leaked database does not leak keys.
import Foundation

public struct KeyRepository: Sendable {
    public let pool: ConnectionPool
    public init(pool: ConnectionPool) { self.pool = pool }

    /// Creates the project if needed and a new key for it; returns the key (shown once) and project id.
    public func create(project: String) throws -> (key: String, projectID: Int) {
        var bytes = [UInt8](repeating: 0, count: 32)
        var rng = SystemRandomNumberGenerator()
        for i in 0..<bytes.count { bytes[i] = UInt8.random(in: 0...255, using: &rng) }
        let key = "r3_" + Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        let id = try pool.transaction { c -> Int in
            let p = try c.query("""
                INSERT INTO projects (name) VALUES (\(project))
                ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id
                """)
            let pid = try p.int(0, "id")!
            try c.query("INSERT INTO api_keys (project_id, prefix, key_hash) VALUES (\(pid), \(String(key.prefix(10))), sha256(convert_to(\(key), 'UTF8')))")
            return pid
        }
        return (key, id)
    }

    /// The project a key belongs to, or nil for an unknown or revoked key.
    public func project(forKey key: String) throws -> Int? {
        guard key.count <= 200 else { return nil }
        let r = try pool.withRetry { c in
            try c.query("SELECT project_id FROM api_keys WHERE key_hash = sha256(convert_to(\(key), 'UTF8')) AND revoked_at IS NULL")
        }
        return r.count == 0 ? nil : try r.int(0, "project_id")
    }
}
