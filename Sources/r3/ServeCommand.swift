// ServeCommand: `r3 serve`, `r3 migrate` and `r3 keys create`: the service and its administration,
// all configured from the same environment (ServiceConfig.documentation).
import ArgumentParser
import Dispatch
import Foundation
import HTTP
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
    let pool = ConnectionPool(conninfo: conninfo, size: config.dbPool)
    try Migrator.migrate(pool, Migrator.load(directory: try migrationsDirectory()))
    return (pool, embedded, label)
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
        FileHandle.standardError.write(Data("r3: \(finishing), then stopping\n".utf8))
        stop()
    }.start()
}

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve", abstract: "Run the R3 HTTP service.", discussion: ServiceConfig.documentation)

    func run() throws {
        let readEnd = try installStopSignals()
        let config = try ServiceConfig.fromEnvironment()
        let (pool, embedded, label) = try openDatabase(config)
        let app = App(config: config, pool: pool)
        let server = HTTPServer(config: config.http) { app.decide($0) }
        let port = try server.start()
        let runner = JobRunner(app: app, config: config.jobRunner)
        runner.start()
        let webhooks = WebhookDispatcher(pool: pool, workers: config.webhookWorkers, timeout: config.webhookTimeout,
                                         allowPrivate: config.webhookAllowPrivate)
        webhooks.start()
        onStopSignal(readEnd, "finishing in-flight requests and job steps") { server.shutdown(); runner.stop(); webhooks.stop() }
        FileHandle.standardError.write(Data("r3: listening on http://\(config.host):\(port) (database: \(label); \(config.workers) job worker(s) × \(config.jobRunner.threadsPerWorker) threads)\n".utf8))
        server.waitUntilStopped()
        runner.waitUntilStopped()
        webhooks.waitUntilStopped()
        if embedded?.startedHere == true { embedded?.stop() }
        FileHandle.standardError.write(Data("r3: stopped\n".utf8))
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
        print("migrations applied: \(try r.int(0, "n") ?? 0) (\(label))")
    }
}

struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "keys", abstract: "Manage API keys.", subcommands: [Create.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "create", abstract: "Create an API key for a project (printed once).")
        @Option(help: "Project name (created if new).") var project: String
        func run() throws {
            guard !project.isEmpty, project.count <= 200 else { throw ValidationError("--project must have 1 to 200 characters") }
            let config = try ServiceConfig.fromEnvironment()
            let (pool, embedded, _) = try openDatabase(config)
            defer { if embedded?.startedHere == true { embedded?.stop() } }
            let (key, id) = try KeyRepository(pool: pool).create(project: project)
            print(key)
            FileHandle.standardError.write(Data("r3: key created for project '\(project)' (id \(id)); it is shown only this once\n".utf8))
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
        let (pool, embedded, label) = try openDatabase(config)
        let runner = JobRunner(app: App(config: config, pool: pool), config: config.jobRunner)
        runner.start()
        onStopSignal(readEnd, "finishing the current job steps") { runner.stop() }
        FileHandle.standardError.write(Data("r3: \(config.workers) job worker(s) × \(config.jobRunner.threadsPerWorker) threads (database: \(label))\n".utf8))
        runner.waitUntilStopped()
        if embedded?.startedHere == true { embedded?.stop() }
        FileHandle.standardError.write(Data("r3: stopped\n".utf8))
    }
}
