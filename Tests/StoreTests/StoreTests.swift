// StoreTests: against a real PostgreSQL: the embedded cluster this code starts, migrations, bind
// parameters, the pool surviving a server restart.
import Foundation
import Testing
@testable import Store

/// One private cluster for the whole test process (initdb takes a few seconds).
enum TestDatabase {
    static let shared: (EmbeddedPostgres, ConnectionPool) = {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("r3-store-tests-\(getpid())")
        let pg = try! EmbeddedPostgres(dataDirectory: dir)
        try! pg.start()
        let pool = ConnectionPool(conninfo: pg.conninfo, size: 4)
        try! Migrator.migrate(pool, Migrator.load(directory: migrations))
        atexit { TestDatabase.shared.0.stop() }
        return (pg, pool)
    }()
    static var migrations: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Migrations")
    }
}

@Suite(.serialized) struct StoreTests {
    var pool: ConnectionPool { TestDatabase.shared.1 }

    @Test func migrationsAreRecordedAndIdempotent() throws {
        let again = try Migrator.migrate(pool, Migrator.load(directory: TestDatabase.migrations))
        #expect(again.isEmpty)
        let r = try pool.with { try $0.query("SELECT name FROM schema_migrations ORDER BY version") }
        #expect(try r.stringOrNil(0, "name") == "0001_projects_keys_rollouts_routes.sql")
        #expect(r.count >= 2)
        let storage = try pool.with { try $0.query("SELECT attstorage FROM pg_attribute WHERE attrelid = 'routes'::regclass AND attname = 'data'") }
        #expect(try storage.stringOrNil(0, "attstorage") == "e", "routes.data is STORAGE EXTERNAL")
    }

    /// The embedded cluster runs with the WAL settings the README's sizing section gives (bulk writes are
    /// WAL-bound; a short wal_writer_delay lets a large insert's COMMIT wait for the tail of its WAL only).
    @Test func embeddedClusterRunsWithTheDocumentedWALSettings() throws {
        let want = ["wal_buffers": "32MB", "max_wal_size": "4GB", "shared_buffers": "256MB", "wal_writer_delay": "10ms",
                    "fsync": "on", "synchronous_commit": "on"]
        for (name, value) in want {
            let r = try pool.with { try $0.query("SELECT current_setting(\(name)) AS v") }
            #expect(try r.stringOrNil(0, "v") == value, "\(name)")
        }
    }

    @Test func interpolatedValuesAreBindsNotText() throws {
        let evil = "x'); DROP TABLE projects; --"
        let q: SQL = "INSERT INTO projects (name) VALUES (\(evil)) RETURNING id, name"
        #expect(q.text == "INSERT INTO projects (name) VALUES ($1) RETURNING id, name")
        let r = try pool.with { try $0.query(q) }
        #expect(try r.stringOrNil(0, "name") == evil)
        let blob = Data((0..<300).map { UInt8($0 % 256) })
        let back = try pool.with { try $0.query("SELECT \(blob)::bytea AS b", binary: true) }
        #expect(try back.bytesOrNil(0, "b") == blob)
        #expect(throws: StoreError.self) { try pool.with { try $0.query("INSERT INTO projects (name) VALUES (\(evil))") } }
    }

    @Test func rowAccessorsNameTheColumnInsteadOfTrapping() throws {
        let r = try pool.with { try $0.query("SELECT NULL::text AS gone, 'x'::text AS word, 7 AS n") }
        #expect(try r.stringOrNil(0, "gone") == nil)
        #expect(throws: StoreError.decode("column gone is NULL")) { try r.string(0, "gone") }
        #expect(throws: StoreError.decode("column word = 'x' is not an integer")) { try r.int(0, "word") }
        #expect(throws: StoreError.decode("no column missing")) { try r.int(0, "missing") }
        #expect(throws: StoreError.decode("no row 1 for column n: the result has 1")) { try r.int(1, "n") }
        #expect(try r.int(0, "n") == 7)
    }

    @Test func poolReconnectsAfterAServerRestart() throws {
        #expect(try pool.with { try $0.query("SELECT 1 AS one").intOrNil(0, "one") } == 1)
        try TestDatabase.shared.0.restart()
        let v = try pool.withRetry { try $0.query("SELECT 2 AS two").intOrNil(0, "two") }
        #expect(v == 2)
    }
}
