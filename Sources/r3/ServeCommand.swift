// ServeCommand: `r3 serve`, `r3 migrate` and `r3 keys create`: the service and its administration,
// all configured from the same environment (ServiceConfig.documentation).
import ArgumentParser
import Dispatch
import Foundation
import HTTP
import Log
import Logging
import Service
import Store

/// Opens the database: DATABASE_URL, or the embedded cluster under R3_DATA_DIR, then migrates.
func openDatabase(_ config: ServiceConfig) throws -> (ConnectionPool, EmbeddedPostgres?, String) {
    var embedded: EmbeddedPostgres?
    let conninfo: String
    let label: String
    if let url = config.databaseURL {
        conninfo = url; label = "DATABASE_URL"
    } else {
        let pg = try EmbeddedPostgres(dataDirectory: config.dataDir)
        try pg.start()
        embedded = pg; conninfo = pg.conninfo; label = "embedded PostgreSQL in \(pg.directory.path)"
    }
    do {
        let pool = ConnectionPool(conninfo: conninfo, size: config.dbPool)
        try Migrator.migrate(pool, Migrator.load(directory: try migrationsDirectory()))
        // checkpoints an installation from before the checkpoint store wrote to this machine's disk
        let log = R3Log.logger("r3")
        let own = URL(fileURLWithPath: config.dataDir.path, relativeTo: URL(fileURLWithPath: FileManager.default.currentDirectoryPath)).standardizedFileURL
        let (moved, missing) = try CheckpointStore.importLegacyFiles(pool, ownDirectory: own) { log.warning("\($0)") }
        if moved + missing > 0 {
            log.notice("checkpoints moved into the database", metadata: ["moved": .stringConvertible(moved), "not_on_this_machine": .stringConvertible(missing)])
        }
        return (pool, embedded, label)
    } catch {   // a cluster started here must not outlive a failed start (the next run would not own it)
        if embedded?.startedHere == true { embedded?.stop() }
        throw error
    }
}

/// R3_MIGRATIONS_DIR, else Migrations/ beside the repository the binary was built in, else ./Migrations,
/// else /usr/share/r3/migrations (the Docker image).
func migrationsDirectory() throws -> URL {
    let fm = FileManager.default
    var candidates: [URL] = []
    if let d = ProcessInfo.processInfo.environment["R3_MIGRATIONS_DIR"] { candidates.append(URL(fileURLWithPath: d)) }
    var exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    for _ in 0..<4 { candidates.append(exe.appendingPathComponent("Migrations")); exe = exe.deletingLastPathComponent() }
    candidates.append(URL(fileURLWithPath: "Migrations"))
    candidates.append(URL(fileURLWithPath: "/usr/share/r3/migrations"))
    for c in candidates where fm.fileExists(atPath: c.appendingPathComponent("0001_projects_keys_rollouts_routes.sql").path) { return c }
    throw ValidationError("cannot find the Migrations directory; set R3_MIGRATIONS_DIR")
}

/// Write end of the self-pipe the signal handler uses.
nonisolated(unsafe) var signalPipe: Int32 = -1

/// SIGTERM / SIGINT: an async-signal-safe handler writes to a pipe (any thread may take the signal);
/// returns the read end, for a thread that starts the graceful shutdown.
func installStopSignals() throws -> Int32 {
    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { throw ValidationError("cannot create the signal pipe") }
    signalPipe = fds[1]
    signal(SIGPIPE, SIG_IGN)
    for sig in [SIGTERM, SIGINT] { signal(sig) { _ in var b: UInt8 = 1; _ = write(signalPipe, &b, 1) } }
    return fds[0]
}

/// On a thread of its own: waits for the stop signal, says what it is finishing, then runs `stop`.
func onStopSignal(_ fd: Int32, _ finishing: String, _ stop: @escaping @Sendable () -> Void) {
    Thread {
        var b: UInt8 = 0
        while read(fd, &b, 1) < 0 && errno == EINTR {}
        R3Log.logger("r3").notice("stopping", metadata: ["finishing": .string(finishing)])
        stop()
    }.start()
}

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve", abstract: "Run the R3 HTTP service.", discussion: ServiceConfig.documentation)

    func run() throws {
        let readEnd = try installStopSignals()
        let config = try ServiceConfig.fromEnvironment()
        R3Log.bootstrap(level: config.logLevel)
        let log = R3Log.logger("r3")
        log.info("settings", metadata: config.logMetadata)
        let (pool, embedded, label) = try openDatabase(config)
        let readPool = config.databaseReadURL.map { ConnectionPool(conninfo: $0, size: config.dbPool) }
        let app = try App(config: config, pool: pool, readPool: readPool)
        let server = HTTPServer(config: config.http, inline: { app.decideInline($0) }) { app.decide($0) }
        server.logger = R3Log.logger("r3.http")
        let port = try server.start()
        let runner = JobRunner(app: app, config: config.jobRunner)
        runner.start()
        let webhooks = WebhookDispatcher(pool: pool, workers: config.webhookWorkers, timeout: config.webhookTimeout,
                                         allowPrivate: config.webhookAllowPrivate)
        webhooks.start()
        let maintenance = Maintenance(pool: pool, interval: config.retentionSeconds)
        maintenance.start()
        onStopSignal(readEnd, "finishing in-flight requests and job steps") { server.shutdown(); runner.stop(); webhooks.stop(); maintenance.stop() }
        log.notice("listening", metadata: ["url": .string("http://\(config.host):\(port)"), "database": .string(label),
                                           "workers": .stringConvertible(config.workers), "threads_per_worker": .stringConvertible(config.jobRunner.threadsPerWorker)])
        server.waitUntilStopped()
        runner.waitUntilStopped()
        webhooks.waitUntilStopped()
        if embedded?.startedHere == true { embedded?.stop() }
        log.notice("stopped")
    }
}

struct MigrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "migrate", abstract: "Apply pending database migrations.",
                                                    discussion: ServiceConfig.documentation)
    func run() throws {
        let config = try ServiceConfig.fromEnvironment()
        let (pool, embedded, label) = try openDatabase(config)
        defer { if embedded?.startedHere == true { embedded?.stop() } }
        let r = try pool.with { try $0.query("SELECT count(*) AS n FROM schema_migrations") }
        print("migrations applied: \(try r.intOrNil(0, "n") ?? 0) (\(label))")
    }
}

/// Runs `body` with the database of this environment (the embedded cluster is stopped after, if started here).
func withStore<T>(_ body: (ConnectionPool) throws -> T) throws -> T {
    let config = try ServiceConfig.fromEnvironment()
    let (pool, embedded, _) = try openDatabase(config)
    defer { if embedded?.startedHere == true { embedded?.stop() } }
    return try body(pool)
}

/// "30d", "12h", "90m", "45s" or seconds.
func parseDuration(_ s: String, _ what: String) throws -> Double {
    let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
    if let u = s.last, let m = units[u], let v = Double(s.dropLast()), v > 0 { return v * m }
    if let v = Double(s), v > 0 { return v }
    throw ValidationError("\(what) must be a duration such as 30d, 12h, 90m or 45s")
}

struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "keys", abstract: "Manage API keys: create, list, revoke, rotate.",
                                                    subcommands: [Create.self, List.self, Revoke.self, Rotate.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "create", abstract: "Create an API key for a project (printed once).")
        @Option(help: "Project name (created if new).") var project: String
        @Option(help: "A name to tell keys apart.") var name = ""
        @Option(help: "Comma-separated scopes: routes:read, routes:write, jobs, admin (default: all).") var scopes = "routes:read,routes:write,jobs,admin"
        @Option(name: .customLong("expires-in"), help: "Expiry, e.g. 30d or 12h (default: never).") var expiresIn: String?
        func run() throws {
            guard !project.isEmpty, project.count <= 200 else { throw ValidationError("--project must have 1 to 200 characters") }
            guard name.count <= 200 else { throw ValidationError("--name must have at most 200 characters") }
            let list = try scopes.split(separator: ",").map { s -> Scope in
                guard let v = Scope(rawValue: s.trimmingCharacters(in: .whitespaces)) else {
                    throw ValidationError("--scopes: '\(s)' is not one of \(Scope.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                return v
            }
            guard !list.isEmpty else { throw ValidationError("--scopes needs at least one scope") }
            let expires = try expiresIn.map { try parseDuration($0, "--expires-in") }
            let (key, info) = try withStore { try KeyRepository(pool: $0).create(project: project, name: name, scopes: list, expiresIn: expires) }
            print(key)
            FileHandle.standardError.write(Data("r3: key \(info.id) (\(info.prefix)…, \(info.scopes.joined(separator: ","))) created for project '\(project)'; it is shown only this once\n".utf8))
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List keys (never the keys themselves), one per line.")
        @Option(help: "Only this project's keys.") var project: String?
        @Flag(help: "JSON lines instead of a table.") var json = false
        func run() throws {
            let keys = try withStore { try KeyRepository(pool: $0).list(project: project) }
            for k in keys {
                if json {
                    let o: [String: Any] = ["id": k.id, "project": k.project, "prefix": k.prefix, "name": k.name, "scopes": k.scopes,
                                            "created_at": k.createdAt, "expires_at": k.expiresAt ?? NSNull(), "last_used_at": k.lastUsedAt ?? NSNull(),
                                            "revoked_at": k.revokedAt ?? NSNull()]
                    print(String(decoding: try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]), as: UTF8.self))
                } else {
                    print([String(k.id), k.project, k.prefix + "…", k.name.isEmpty ? "-" : k.name, k.scopes.joined(separator: ","),
                           "created " + k.createdAt, "expires " + (k.expiresAt ?? "never"), "used " + (k.lastUsedAt ?? "never"),
                           k.revokedAt.map { "revoked " + $0 } ?? "active"].joined(separator: "\t"))
                }
            }
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Revoke a key (every server stops it within R3_AUTH_CACHE_SECONDS).")
        @Option(help: "The key's id (r3 keys list).") var id: Int
        func run() throws {
            guard try withStore({ try KeyRepository(pool: $0).revoke(id: id) }) else { throw ValidationError("no active key has id \(id)") }
            FileHandle.standardError.write(Data("r3: key \(id) revoked\n".utf8))
        }
    }

    struct Rotate: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rotate", abstract: "Replace a key with a new one (printed once) of the same project, name, scopes and expiry.")
        @Option(help: "The key's id (r3 keys list).") var id: Int
        @Option(help: "How long the old key keeps working, e.g. 1h (default: it stops now).") var overlap: String?
        func run() throws {
            let o = try overlap.map { try parseDuration($0, "--overlap") } ?? 0
            guard let (key, info) = try withStore({ try KeyRepository(pool: $0).rotate(id: id, overlap: o) }) else {
                throw ValidationError("no active key has id \(id)")
            }
            print(key)
            FileHandle.standardError.write(Data("r3: key \(info.id) replaces key \(id)\(o > 0 ? ", which stops in \(Int(o)) s" : ", which is revoked"); it is shown only this once\n".utf8))
        }
    }
}

struct QuotasCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "quotas", abstract: "A project's quotas: stored route bytes, jobs at once, requests per second.",
                                                    subcommands: [Set.self, Show.self])

    struct Set: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "set", abstract: "Set quotas (\"none\" removes one).")
        @Option(help: "Project name.") var project: String
        @Option(name: .customLong("route-bytes"), help: "Stored route bytes (507 beyond).") var routeBytes: String?
        @Option(name: .customLong("active-jobs"), help: "Jobs queued, running or paused at once (429 beyond).") var activeJobs: String?
        @Option(help: "Requests per second, per server process (429 with Retry-After beyond).") var rps: String?
        @Option(help: "Requests allowed in a burst (default: rps rounded up).") var burst: String?
        func run() throws {
            func int(_ s: String?, _ what: String) throws -> Int?? {
                guard let s else { return nil }
                if s == "none" { return .some(nil) }
                guard let v = Int(s), v >= 0 else { throw ValidationError("--\(what) must be a non-negative integer or none") }
                return .some(v)
            }
            var rate: Double?? = nil
            if let r = rps { if r == "none" { rate = .some(nil) } else { guard let v = Double(r), v > 0 else { throw ValidationError("--rps must be a positive number or none") }; rate = .some(v) } }
            let b = try int(burst, "burst")
            if case let .some(.some(v)) = b, v < 1 { throw ValidationError("--burst must be at least 1") }
            let ok = try withStore { try KeyRepository(pool: $0).setQuotas(project: project, routeBytes: try int(routeBytes, "route-bytes"),
                                                                           activeJobs: try int(activeJobs, "active-jobs"), requestsPerSecond: rate, burst: b) }
            guard ok else { throw ValidationError("no project is named '\(project)'") }
            try Show(project: project).run()
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "A project's quotas and usage as JSON.")
        @Option(help: "Project name.") var project: String
        init() {}
        init(project: String) { self.project = project }
        func run() throws {
            let (u, name) = try withStore { pool -> ((quotas: Quotas, routeBytes: Int, activeJobs: Int, name: String), String) in
                let repo = KeyRepository(pool: pool)
                guard let id = try repo.projectID(named: project) else { throw ValidationError("no project is named '\(project)'") }
                return (try repo.usage(projectID: id), project)
            }
            func v(_ x: Any?) -> Any { x ?? NSNull() }
            let o: [String: Any] = ["project": name, "route_bytes": ["used": u.routeBytes, "limit": v(u.quotas.maxRouteBytes)] as [String: Any],
                                    "active_jobs": ["used": u.activeJobs, "limit": v(u.quotas.maxActiveJobs)] as [String: Any],
                                    "requests_per_second": v(u.quotas.requestsPerSecond), "request_burst": v(u.quotas.requestBurst)]
            print(String(decoding: try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]), as: UTF8.self))
        }
    }
}

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker", abstract: "Run job workers only (no HTTP): more processes on one database share the queue.",
        discussion: ServiceConfig.documentation)

    func run() throws {
        let readEnd = try installStopSignals()
        var config = try ServiceConfig.fromEnvironment()
        if config.workers == 0 { config.workers = 1 }
        R3Log.bootstrap(level: config.logLevel)
        let log = R3Log.logger("r3")
        log.info("settings", metadata: config.logMetadata)
        let (pool, embedded, label) = try openDatabase(config)
        let runner = JobRunner(app: try App(config: config, pool: pool), config: config.jobRunner)
        runner.start()
        let maintenance = Maintenance(pool: pool, interval: config.retentionSeconds)
        maintenance.start()
        onStopSignal(readEnd, "finishing the current job steps") { runner.stop(); maintenance.stop() }
        log.notice("workers started", metadata: ["database": .string(label), "workers": .stringConvertible(config.workers),
                                                 "threads_per_worker": .stringConvertible(config.jobRunner.threadsPerWorker)])
        runner.waitUntilStopped()
        if embedded?.startedHere == true { embedded?.stop() }
        log.notice("stopped")
    }
}
