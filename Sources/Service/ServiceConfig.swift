// ServiceConfig: every setting, from environment variables with documented defaults.
import Foundation
import HTTP
import Log
import Logging

public struct ServiceConfig: Sendable {
    /// The HTTP server's settings from this config (its parser admits the largest body any route takes).
    public var http: HTTPServerConfig {
        var h = HTTPServerConfig()
        h.host = host; h.port = port
        h.limits.maxBodyBytes = max(maxBodyBytes, maxImportBytes)
        h.maxConnections = maxConnections; h.handlerThreads = httpThreads; h.eventLoops = eventLoops
        h.uploadThreads = uploadThreads; h.maxUploads = maxUploads
        h.headerTimeout = headerTimeout; h.bodyTimeout = bodyTimeout; h.idleTimeout = idleTimeout
        return h
    }

    public static let documentation = """
    Environment:
      DATABASE_URL           libpq connection string; unset: a private PostgreSQL cluster under R3_DATA_DIR/pg
      DATABASE_URL_READ      a streaming replica of it: route fetches and rollout listings read there once it has replayed
                             the caller's writes (R3-Write-LSN / R3-Min-LSN), else the primary (default: none)
      R3_READ_REPLICA_WAIT   seconds a read waits for the replica to catch up before reading the primary (default 1)
      R3_LISTEN              host:port to listen on (default 127.0.0.1:8080)
      R3_DATA_DIR            data directory (default ./.r3): the embedded cluster, and the local checkpoint cache
      R3_RETENTION_SECONDS   how often route partitions are made and every project's route retention applied (default 3600)
      R3_CHECKPOINT_CACHE_BYTES  size limit of this machine's cache of checkpoints (the database holds them all;
                             least recently used evicted first; default 8589934592 = 8 GiB)
      R3_MAX_BODY_BYTES      largest buffered request body: jobs, route uploads (default 536870912 = 512 MiB)
      R3_MAX_IMPORT_BYTES    largest streamed rollout body: POST /v1/rollouts, :sglang, :vllm, turns (default 17179869184 = 16 GiB)
      R3_MAX_IMPORT_ROLLOUTS most rollouts one import request may store (default 4096)
      R3_MAX_CONNECTIONS     open connections before 503 (default 1024)
      R3_HTTP_THREADS        request handler threads (default 8)
      R3_EVENT_LOOPS         HTTP event loop threads; each accepts and serves its own connections (default: CPU cores, at most 8)
      R3_UPLOAD_THREADS      threads reading streamed uploads (rollouts, imports, turns), apart from the others (default 8)
      R3_MAX_UPLOADS         uploads running or waiting for an upload thread before 503 (default 64)
      R3_MAX_UPLOADS_PER_PROJECT  one project's uploads at once before 429 (default 4)
      R3_DB_POOL             PostgreSQL connections (default 8)
      R3_HEADER_TIMEOUT      seconds to receive a request head (default 10)
      R3_BODY_TIMEOUT        seconds a request body may stall with no byte arriving (default 120)
      R3_IDLE_TIMEOUT        seconds a keep-alive connection may idle (default 60)
      R3_MAX_ROUTE_VALUES    largest routes array, in expert ids (default 268435456)
      R3_WORKERS             job workers in this process (default 1; 0: API only, e.g. beside `r3 worker`s)
      R3_ENGINE_THREADS      compute threads per job worker (default: the cores divided among the workers)
      R3_JOB_LEASE_SECONDS   a running job's lease; a dead worker's job is taken over after it (default 30)
      R3_JOB_POLL_SECONDS    queue polling interval besides LISTEN/NOTIFY (default 2)
      R3_MODEL_ROOTS         colon-separated directories checkpoint_path must lie under (default: any readable path)
      R3_MAX_MODEL_PARAMS    largest model POST /v1/models will create or load, in parameters (default 200000000)
      R3_MAX_JOB_STEPS       most steps a job may ask for (default 100000)
      R3_MAX_JOB_SAMPLES     most sequences a job step may sample or train on (default 4096)
      R3_MAX_NEW_TOKENS      largest max_tokens a job may ask for (default 4096)
      R3_WEBHOOK_WORKERS     webhook delivery threads of `r3 serve` (default 2)
      R3_WEBHOOK_TIMEOUT     seconds a webhook receiver has to answer (default 15)
      R3_WEBHOOK_ALLOW_PRIVATE  1: webhook URLs may resolve to loopback / private / link-local addresses (default 0)
      R3_AUTH_CACHE_SECONDS  how long a process trusts a key lookup; a revoked key stops within it (default 4, at most 5)
      R3_LOG_LEVEL           trace, debug, info (default: one JSON line per request), notice, warning, error or critical;
                             logs are JSON lines on standard error
    """

    public var databaseURL: String?
    public var host = "127.0.0.1"
    public var port: UInt16 = 8080
    public var dataDir = URL(fileURLWithPath: ".r3")
    public var checkpointCacheBytes = 8 << 30
    /// Packed routes kept in memory for fetches soon after ingest (RouteCache), R3_ROUTE_CACHE_MB.
    public var routeCacheBytes = 512 << 20
    public var databaseReadURL: String?
    public var replicaWaitSeconds = 1.0
    public var retentionSeconds = 3600.0
    public var maxBodyBytes = 512 * 1024 * 1024
    public var maxImportBytes = 16 << 30
    public var maxImportRollouts = 4096
    public var maxConnections = 1024
    public var httpThreads = 8
    public var eventLoops = max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8))
    public var uploadThreads = 8
    public var maxUploads = 64
    public var maxUploadsPerProject = 4
    public var dbPool = 8
    public var headerTimeout = 10.0
    public var bodyTimeout = 120.0
    public var idleTimeout = 60.0
    public var maxRouteValues = 1 << 28
    public var workers = 1
    public var engineThreads: Int?
    public var leaseSeconds = 30.0
    public var pollSeconds = 2.0
    public var modelRoots: [String]?
    public var maxModelParams = 200_000_000
    public var maxJobSteps = 100_000
    public var maxJobSamples = 4096
    public var maxNewTokens = 4096
    public var webhookWorkers = 2
    public var webhookTimeout = 15.0
    public var webhookAllowPrivate = false
    public var authCacheSeconds = 4.0
    public var logLevel = Logger.Level.info

    public init() {}

    /// Reads the environment; a malformed value is an error naming the variable.
    public static func fromEnvironment(_ env: [String: String] = ProcessInfo.processInfo.environment) throws -> ServiceConfig {
        var c = ServiceConfig()
        func int(_ k: String, _ range: ClosedRange<Int>) throws -> Int? {
            guard let v = env[k] else { return nil }
            guard let n = Int(v), range.contains(n) else { throw ServiceError(400, "\(k)='\(v)' must be an integer in \(range)") }
            return n
        }
        func seconds(_ k: String) throws -> Double? {
            guard let v = env[k] else { return nil }
            guard let d = Double(v), d > 0, d < 86_400 else { throw ServiceError(400, "\(k)='\(v)' must be a number of seconds") }
            return d
        }
        if let u = env["DATABASE_URL"], !u.isEmpty { c.databaseURL = u }
        if let u = env["DATABASE_URL_READ"], !u.isEmpty { c.databaseReadURL = u }
        if let v = env["R3_READ_REPLICA_WAIT"] {
            guard let d = Double(v), d >= 0, d <= 30 else { throw ServiceError(400, "R3_READ_REPLICA_WAIT='\(v)' must be a number of seconds in 0...30") }
            c.replicaWaitSeconds = d
        }
        if let l = env["R3_LISTEN"] {
            guard let colon = l.lastIndex(of: ":"), let p = UInt16(l[l.index(after: colon)...]) else {
                throw ServiceError(400, "R3_LISTEN='\(l)' must be host:port")
            }
            c.host = String(l[..<colon]); c.port = p
            if c.host == "localhost" { c.host = "127.0.0.1" }
        }
        if let d = env["R3_DATA_DIR"], !d.isEmpty { c.dataDir = URL(fileURLWithPath: d) }   // empty is unset, as for DATABASE_URL (not the working directory)
        c.checkpointCacheBytes = try int("R3_CHECKPOINT_CACHE_BYTES", 0...(1 << 50)) ?? c.checkpointCacheBytes
        c.routeCacheBytes = (try int("R3_ROUTE_CACHE_MB", 0...(1 << 30))).map { $0 << 20 } ?? c.routeCacheBytes
        c.retentionSeconds = try seconds("R3_RETENTION_SECONDS") ?? c.retentionSeconds
        c.maxBodyBytes = try int("R3_MAX_BODY_BYTES", 1024...(1 << 34)) ?? c.maxBodyBytes
        c.maxImportBytes = try int("R3_MAX_IMPORT_BYTES", 1024...(1 << 40)) ?? c.maxImportBytes
        c.maxImportRollouts = try int("R3_MAX_IMPORT_ROLLOUTS", 1...100_000) ?? c.maxImportRollouts
        c.maxConnections = try int("R3_MAX_CONNECTIONS", 1...100_000) ?? c.maxConnections
        c.httpThreads = try int("R3_HTTP_THREADS", 1...256) ?? c.httpThreads
        c.eventLoops = try int("R3_EVENT_LOOPS", 1...64) ?? c.eventLoops
        c.uploadThreads = try int("R3_UPLOAD_THREADS", 1...256) ?? c.uploadThreads
        c.maxUploads = try int("R3_MAX_UPLOADS", 1...100_000) ?? c.maxUploads
        c.maxUploadsPerProject = try int("R3_MAX_UPLOADS_PER_PROJECT", 1...100_000) ?? c.maxUploadsPerProject
        c.dbPool = try int("R3_DB_POOL", 1...256) ?? c.dbPool
        c.headerTimeout = try seconds("R3_HEADER_TIMEOUT") ?? c.headerTimeout
        c.bodyTimeout = try seconds("R3_BODY_TIMEOUT") ?? c.bodyTimeout
        c.idleTimeout = try seconds("R3_IDLE_TIMEOUT") ?? c.idleTimeout
        c.maxRouteValues = try int("R3_MAX_ROUTE_VALUES", 1...(1 << 31 - 1)) ?? c.maxRouteValues
        c.workers = try int("R3_WORKERS", 0...64) ?? c.workers
        c.engineThreads = try int("R3_ENGINE_THREADS", 1...256)
        c.leaseSeconds = try seconds("R3_JOB_LEASE_SECONDS") ?? c.leaseSeconds
        c.pollSeconds = try seconds("R3_JOB_POLL_SECONDS") ?? c.pollSeconds
        if let r = env["R3_MODEL_ROOTS"], !r.isEmpty { c.modelRoots = r.split(separator: ":").map { URL(fileURLWithPath: String($0)).standardizedFileURL.path } }
        c.maxModelParams = try int("R3_MAX_MODEL_PARAMS", 1...(1 << 40)) ?? c.maxModelParams
        c.maxJobSteps = try int("R3_MAX_JOB_STEPS", 1...100_000) ?? c.maxJobSteps
        c.maxJobSamples = try int("R3_MAX_JOB_SAMPLES", 1...4096) ?? c.maxJobSamples
        c.maxNewTokens = try int("R3_MAX_NEW_TOKENS", 1...4096) ?? c.maxNewTokens
        c.webhookWorkers = try int("R3_WEBHOOK_WORKERS", 0...64) ?? c.webhookWorkers
        c.webhookTimeout = try seconds("R3_WEBHOOK_TIMEOUT") ?? c.webhookTimeout
        if let v = env["R3_AUTH_CACHE_SECONDS"] {
            guard let d = Double(v), d >= 0, d <= 5 else { throw ServiceError(400, "R3_AUTH_CACHE_SECONDS='\(v)' must be a number of seconds in 0...5") }
            c.authCacheSeconds = d
        }
        do { c.logLevel = try R3Log.level(env) } catch { throw ServiceError(400, "\(error)") }
        if let v = env["R3_WEBHOOK_ALLOW_PRIVATE"] {
            guard v == "0" || v == "1" else { throw ServiceError(400, "R3_WEBHOOK_ALLOW_PRIVATE='\(v)' must be 0 or 1") }
            c.webhookAllowPrivate = v == "1"
        }
        return c
    }
}

extension ServiceConfig {
    /// Every setting, for the start-up log line; the database URL's password is replaced by ***.
    public var logMetadata: Logger.Metadata {
        func n(_ x: Int) -> Logger.Metadata.Value { .stringConvertible(x) }
        func d(_ x: Double) -> Logger.Metadata.Value { .stringConvertible(x) }
        return [
            "database": .string(databaseURL.map(ServiceConfig.redacted) ?? "embedded PostgreSQL in \(dataDir.path)/pg"),
            "database_read": .string(databaseReadURL.map(ServiceConfig.redacted) ?? "none"), "read_replica_wait_s": d(replicaWaitSeconds),
            "listen": .string("\(host):\(port)"), "data_dir": .string(dataDir.path), "checkpoint_cache_bytes": n(checkpointCacheBytes), "route_cache_bytes": n(routeCacheBytes), "retention_s": d(retentionSeconds),
            "max_body_bytes": n(maxBodyBytes), "max_import_bytes": n(maxImportBytes), "max_import_rollouts": n(maxImportRollouts),
            "max_connections": n(maxConnections), "http_threads": n(httpThreads), "event_loops": n(eventLoops), "upload_threads": n(uploadThreads),
            "max_uploads": n(maxUploads), "max_uploads_per_project": n(maxUploadsPerProject), "db_pool": n(dbPool),
            "header_timeout_s": d(headerTimeout), "body_timeout_s": d(bodyTimeout), "idle_timeout_s": d(idleTimeout),
            "max_route_values": n(maxRouteValues), "workers": n(workers), "engine_threads": n(jobRunner.threadsPerWorker),
            "job_lease_s": d(leaseSeconds), "job_poll_s": d(pollSeconds),
            "model_roots": .array((modelRoots ?? []).map { .string($0) }), "max_model_params": n(maxModelParams),
            "max_job_steps": n(maxJobSteps), "max_job_samples": n(maxJobSamples), "max_new_tokens": n(maxNewTokens),
            "webhook_workers": n(webhookWorkers), "webhook_timeout_s": d(webhookTimeout),
            "webhook_allow_private": .stringConvertible(webhookAllowPrivate), "auth_cache_s": d(authCacheSeconds),
            "log_level": .string(logLevel.rawValue),
        ]
    }

    /// A libpq connection string without its password: postgres://user:***@host/db, or password=*** in
    /// keyword form (also a password given as a URL query parameter).
    public static func redacted(_ conninfo: String) -> String {
        var s = conninfo
        if let scheme = s.range(of: "://") {
            let rest = s[scheme.upperBound...]
            let authority = rest.prefix { $0 != "/" && $0 != "?" }
            if let at = authority.lastIndex(of: "@"), let colon = authority[..<at].firstIndex(of: ":") {
                s.replaceSubrange(s.index(after: colon)..<at, with: "***")
            }
        }
        // keyword form and URL query: password=… up to a space or &
        var out = ""
        var i = s.startIndex
        while let r = s.range(of: "password", options: .caseInsensitive, range: i..<s.endIndex) {
            out += s[i..<r.upperBound]
            var j = r.upperBound
            while j < s.endIndex, s[j] == " " { out.append(" "); j = s.index(after: j) }
            guard j < s.endIndex, s[j] == "=" else { i = j; continue }
            out += "="; j = s.index(after: j)
            while j < s.endIndex, s[j] == " " { j = s.index(after: j) }
            if j < s.endIndex, s[j] == "'" {   // quoted value: up to the closing quote (\' escapes)
                j = s.index(after: j)
                while j < s.endIndex, s[j] != "'" { if s[j] == "\\" { j = s.index(after: j); if j == s.endIndex { break } }; j = s.index(after: j) }
                if j < s.endIndex { j = s.index(after: j) }
            } else {
                while j < s.endIndex, s[j] != " ", s[j] != "&" { j = s.index(after: j) }
            }
            out += "***"
            i = j
        }
        return out + s[i...]
    }

    /// The job runner's settings from this config.
    public var jobRunner: JobRunnerConfig {
        var j = JobRunnerConfig()
        j.workers = workers
        j.threadsPerWorker = engineThreads ?? max(1, ProcessInfo.processInfo.activeProcessorCount / max(1, workers))
        j.leaseSeconds = leaseSeconds
        j.pollSeconds = pollSeconds
        return j
    }
}
