// Migrator: applies Migrations/NNNN_name.sql in order, each in its own transaction, recorded in
// schema_migrations; an advisory lock keeps two starting processes from racing.
import Foundation

public struct Migration: Sendable {
    public let version: Int
    public let name: String
    public let sql: String
}

public enum Migrator {
    /// Reads NNNN_name.sql files from `directory`, sorted by number.
    public static func load(directory: URL) throws -> [Migration] {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        var out: [Migration] = []
        for f in files where f.hasSuffix(".sql") {
            guard let v = Int(f.prefix { $0.isNumber }), f.prefix(while: { $0.isNumber }).count == 4 else {
                throw StoreError.migration(file: f, message: "name must start with a 4-digit number")
            }
            let sql = try String(contentsOf: directory.appendingPathComponent(f), encoding: .utf8)
            out.append(Migration(version: v, name: f, sql: sql))
        }
        out.sort { $0.version < $1.version }
        for (a, b) in zip(out, out.dropFirst()) where a.version == b.version {
            throw StoreError.migration(file: b.name, message: "duplicate version \(b.version)")
        }
        return out
    }

    /// Applies the migrations not yet recorded; returns the names applied.
    @discardableResult
    public static func migrate(_ pool: ConnectionPool, _ migrations: [Migration]) throws -> [String] {
        try pool.with { c in
            try c.query("SELECT pg_advisory_lock(724000313)")
            defer { _ = try? c.query("SELECT pg_advisory_unlock(724000313)") }
            try c.execute(script: """
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())
                """)
            let done = try c.query("SELECT version FROM schema_migrations")
            let applied = Set(try (0..<done.count).compactMap { try done.intOrNil($0, "version") })
            var names: [String] = []
            for m in migrations where !applied.contains(m.version) {
                do {
                    try c.execute(script: "BEGIN;\n\(m.sql)\n;")
                    try c.query("INSERT INTO schema_migrations (version, name) VALUES (\(m.version), \(m.name))")
                    try c.query("COMMIT")
                } catch {
                    _ = try? c.query("ROLLBACK")
                    throw StoreError.migration(file: m.name, message: "\(error)")
                }
                names.append(m.name)
            }
            return names
        }
    }
}
