// EmbeddedPostgres: a private PostgreSQL cluster under the data directory, used when DATABASE_URL is
// unset. initdb refuses root, so as root the server runs as the `postgres` system user (runuser). It
// listens on a unix socket in the cluster directory only (no TCP).
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public final class EmbeddedPostgres: @unchecked Sendable {
    public let directory: URL          // <data>/pg
    public let database = "r3"
    let bin: URL
    let asUser: String?                // run the server's tools as this user when we are root
    /// Whether `start()` launched the server (so this process should stop it).
    public private(set) var startedHere = false

    public init(dataDirectory: URL) throws {
        directory = dataDirectory.appendingPathComponent("pg").standardizedFileURL
        guard let b = EmbeddedPostgres.findBin() else {
            throw StoreError.embedded("PostgreSQL server binaries not found (install the Debian package 'postgresql')")
        }
        bin = b
        asUser = getuid() == 0 ? "postgres" : nil
    }

    static func findBin() -> URL? {
        let root = URL(fileURLWithPath: "/usr/lib/postgresql")
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root.path)) ?? []).compactMap(Int.init).sorted(by: >)
        for v in versions {
            let b = root.appendingPathComponent("\(v)/bin")
            if FileManager.default.isExecutableFile(atPath: b.appendingPathComponent("initdb").path) { return b }
        }
        return nil
    }

    var dataDir: URL { directory.appendingPathComponent("data") }
    var socketDir: URL { directory.appendingPathComponent("run") }
    var logFile: URL { directory.appendingPathComponent("postgres.log") }

    /// libpq connection string for the cluster's unix socket.
    public var conninfo: String { "host=\(socketDir.path) port=5432 dbname=\(database) user=r3 connect_timeout=5" }

    /// Held while a process initialises or starts the cluster: `r3 serve` and several `r3 worker`s started
    /// together on one data directory must not run initdb, chown or pg_ctl start at the same time.
    var lockFile: URL { directory.deletingLastPathComponent().appendingPathComponent("pg.lock") }

    /// Initialises the cluster if needed, starts it if not running, and creates the database.
    public func start() throws {
        let fm = FileManager.default
        try fm.createDirectory(at: directory.deletingLastPathComponent(), withIntermediateDirectories: true)
        let lock = open(lockFile.path, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard lock >= 0 else { throw StoreError.embedded("cannot open \(lockFile.path): \(String(cString: strerror(errno)))") }
        defer { close(lock) }   // closing releases the lock
        while flock(lock, LOCK_EX) != 0 {
            if errno != EINTR { throw StoreError.embedded("cannot lock \(lockFile.path): \(String(cString: strerror(errno)))") }
        }
        try fm.createDirectory(at: socketDir, withIntermediateDirectories: true)
        if let u = asUser {
            // the server user must own its directories and be able to reach them
            try run("/bin/chown", ["-R", "\(u):\(u)", directory.path], asServer: false)
            var p = directory.deletingLastPathComponent()
            while p.path != "/" && p.path.count > 1 {
                _ = try? run("/bin/chmod", ["o+x", p.path], asServer: false)
                p = p.deletingLastPathComponent()
            }
        }
        if !fm.fileExists(atPath: dataDir.appendingPathComponent("PG_VERSION").path) {
            try run(bin.appendingPathComponent("initdb").path,
                    ["-D", dataDir.path, "-U", "r3", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"], asServer: true)
        }
        let status = try? run(bin.appendingPathComponent("pg_ctl").path, ["-D", dataDir.path, "status"], asServer: true)
        if status == nil {
            // Bulk writes (checkpoints of hundreds of MB, route batches) are WAL-bound: with the defaults
            // (4 MB of WAL buffers, a checkpoint every 1 GB of WAL) storing 256 MB took 2.8 s in the
            // server; with these 1.4–1.8 s (measured here, 2026-12-02). README: PostgreSQL sizing.
            // wal_writer_delay 10ms (default 200ms): the WAL writer flushes a large insert's WAL while the
            // backend is still writing it, so its COMMIT waits for the tail only. A 32K-token rollout's
            // COMMIT took 16.6 ms (median of 12) with the default and 0.5 ms with this, measured in
            // PostgreSQL's own statement log (2026-12-03). Durability is unchanged: the commit still waits
            // for its WAL to be flushed.
            try run(bin.appendingPathComponent("pg_ctl").path,
                    ["-D", dataDir.path, "-l", logFile.path, "-w", "-t", "60", "-o",
                     "-c listen_addresses='' -c unix_socket_directories='\(socketDir.path)' -c port=5432 -c fsync=on " +
                     "-c shared_buffers=256MB -c wal_buffers=32MB -c max_wal_size=4GB -c wal_writer_delay=10ms", "start"],
                    asServer: true)
            startedHere = true
        }
        let admin = try PGConnection(conninfo: "host=\(socketDir.path) port=5432 dbname=postgres user=r3 connect_timeout=5")
        let exists = try admin.query("SELECT 1 FROM pg_database WHERE datname = \(database)")
        if exists.count == 0 { try admin.execute(script: "CREATE DATABASE \(database)") }
    }

    /// Stops the server (fast shutdown: in-flight transactions roll back, committed data is durable).
    public func stop() {
        _ = try? run(bin.appendingPathComponent("pg_ctl").path, ["-D", dataDir.path, "-m", "fast", "-w", "stop"], asServer: true)
    }

    /// Stops the server abruptly (tests: a crash), or restarts it.
    public func restart() throws {
        try run(bin.appendingPathComponent("pg_ctl").path, ["-D", dataDir.path, "-m", "immediate", "-w", "stop"], asServer: true)
        try start()
    }

    @discardableResult
    func run(_ path: String, _ args: [String], asServer: Bool) throws -> String {
        var argv = [path] + args
        if asServer, let u = asUser { argv = ["/usr/sbin/runuser", "-u", u, "--"] + argv }
        // Output goes to a file, not a pipe: the server pg_ctl starts would hold a pipe open forever. The file
        // is outside the cluster directory, which another process may be chown -R'ing at this moment.
        let outURL = FileManager.default.temporaryDirectory.appendingPathComponent("r3-pg-ctl-\(getpid())-\(UUID().uuidString).out")
        defer { try? FileManager.default.removeItem(at: outURL) }
        let status = try spawnAndWait(argv, output: outURL.path)
        let text = (try? String(contentsOf: outURL, encoding: .utf8)) ?? ""
        if status != 0 {
            throw StoreError.embedded("\(URL(fileURLWithPath: path).lastPathComponent) failed: \(PGConnection.firstLine(text.split(separator: "\n").last.map(String.init) ?? "exit \(status)"))")
        }
        return text
    }
}

/// posix_spawn + waitpid on the direct child only (Foundation's Process waits for every descendant
/// holding its descriptors, and postgres outlives pg_ctl). Returns the exit status.
func spawnAndWait(_ argv: [String], output: String) throws -> Int32 {
    var fa = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&fa)
    defer { posix_spawn_file_actions_destroy(&fa) }
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&fa, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&fa, 1, 2)
    let cargs = argv.map { strdup($0) } + [nil]
    defer { for a in cargs { free(a) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, argv[0], &fa, nil, cargs, environ)
    guard rc == 0 else { throw StoreError.embedded("cannot run \(argv[0]): \(String(cString: strerror(rc)))") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 {
        if errno != EINTR { throw StoreError.embedded("waitpid failed for \(argv[0])") }
    }
    return (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
}
