// App: the R3 HTTP API: routing, bearer-key auth scoped to a project, the handlers, metrics. One
// function turns every error into problem+json (ServiceError.response).
import Foundation
import HTTP
import JSON
import Log
import Logging
import MoE
import Routes
import Store

public final class App: @unchecked Sendable {
    public let config: ServiceConfig
    public let pool: ConnectionPool
    let keys: KeyRepository
    let rollouts: RolloutRepository
    let models: ModelRepository
    let jobs: JobRepository
    let runs: RunRepository
    let metrics = Metrics()
    let authCache: AuthCache
    let rateLimiter = RateLimiter()
    let uploadGate: UploadGate
    /// JSON lines on stderr once `R3Log.bootstrap` ran (the r3 commands), else nothing.
    let logger = R3Log.logger("r3.api")
    /// Request lines go to stderr as JSON (the process bootstrapped R3Log), at level info.
    let logRequests = R3Log.isBootstrapped
    /// Absolute data directory: the local checkpoint cache and scratch space (the checkpoints themselves
    /// are in the database).
    let dataDirectory: URL
    /// This machine's cache of stored checkpoints.
    let checkpoints: CheckpointCache
    /// Which database a read goes to (ReadReplica.swift).
    let reads: ReadRouting
    let pageKeyLock = NSLock()
    var pageKeyCache: [UInt8]?

    typealias Handler = (App, HTTPRequest, [String: String], Int) throws -> HTTPResponse
    typealias StreamHandler = (App, HTTPRequest, HTTPBodyStream, [String: String], Int) throws -> HTTPResponse
    /// What a route does with a request body, decided from the head before any body byte is read.
    enum BodyMode {
        /// No body is read (GET, DELETE, …).
        case none
        /// Buffered up to this many bytes, of one of these media types, then the handler runs.
        case buffered(Int, [String])
        /// The handler runs at once and reads the body as it streams in (JSON ingest of any size).
        case streamed([String], max: Int)
    }
    /// Immutable after init; its closures only call into the App.
    struct Route: @unchecked Sendable {
        let method: String; let pattern: [String]; let name: String; let auth: Bool; let body: BodyMode
        /// Any one of these scopes lets a key in (empty: any key).
        let scopes: [Scope]
        let handler: Handler?; let stream: StreamHandler?
    }
    let routes: [Route]
    /// Paths that only routes without variables match: the indexes of those routes, in order.
    private(set) var staticRoutes: [String: [Int]] = [:]

    /// `readPool`: a streaming replica (DATABASE_URL_READ) for route fetches and rollout listings.
    public init(config: ServiceConfig, pool: ConnectionPool, readPool: ConnectionPool? = nil) throws {
        self.config = config
        self.pool = pool
        reads = ReadRouting(primary: pool, replica: readPool, wait: config.replicaWaitSeconds)
        keys = KeyRepository(pool: pool)
        rollouts = RolloutRepository(pool: pool)
        models = ModelRepository(pool: pool)
        jobs = JobRepository(pool: pool)
        runs = RunRepository(pool: pool)
        authCache = AuthCache(ttl: config.authCacheSeconds)
        RouteCache.shared.limitBytes = config.routeCacheBytes
        uploadGate = UploadGate(limit: config.maxUploadsPerProject)
        dataDirectory = URL(fileURLWithPath: config.dataDir.path, relativeTo: URL(fileURLWithPath: FileManager.default.currentDirectoryPath)).standardizedFileURL
        checkpoints = try CheckpointCache(dataDirectory: dataDirectory, limit: config.checkpointCacheBytes)
        let json = ["application/json"]
        let small = 1 << 20
        let read: [Scope] = [.routesRead], write: [Scope] = [.routesWrite], jobsScope: [Scope] = [.jobs], admin: [Scope] = [.admin]
        // a trainer reporting steps holds a routes key (it stores the rollouts) or a jobs key
        let runScope: [Scope] = [.jobs, .routesWrite]
        func r(_ m: String, _ p: String, auth: Bool = true, _ scopes: [Scope] = [], body: BodyMode = .none, _ h: @escaping Handler) -> Route {
            Route(method: m, pattern: p.split(separator: "/").map(String.init), name: p, auth: auth, body: body, scopes: scopes, handler: h, stream: nil)
        }
        func s(_ m: String, _ p: String, _ scopes: [Scope], types: [String] = json, max: Int = config.maxImportBytes, _ h: @escaping StreamHandler) -> Route {
            Route(method: m, pattern: p.split(separator: "/").map(String.init), name: p, auth: true, body: .streamed(types, max: max), scopes: scopes, handler: nil, stream: h)
        }
        routes = [
            r("GET", "/livez", auth: false) { _, _, _, _ in HTTPResponse.livez },
            r("GET", "/readyz", auth: false) { app, _, _, _ in try app.ready() },
            r("GET", "/metrics", auth: false) { app, req, _, _ in try app.renderMetrics(req) },
            r("GET", "/jobs", auth: false) { app, req, _, _ in try app.jobsPage(req) },
            r("GET", "/jobs/{id}", auth: false) { app, req, v, _ in try app.jobPage(req, id: v["id"]!) },
            r("GET", "/runs/{id}", auth: false) { app, req, v, _ in try app.runPage(req, id: v["id"]!) },
            s("POST", "/v1/rollouts", write) { app, req, body, _, p in try app.createRollout(req, body, project: p) },
            s("POST", "/v1/rollouts:batchCreate", write, types: ["application/x-ndjson", "application/jsonl", "application/json"]) { app, req, body, _, p in
                try app.createRollouts(req, body, project: p)
            },
            s("POST", "/v1/rollouts:sglang", write) { app, req, body, _, p in try app.importEngine(.sglang, req, body, project: p) },
            s("POST", "/v1/rollouts:vllm", write) { app, req, body, _, p in try app.importEngine(.vllm, req, body, project: p) },
            r("GET", "/v1/rollouts", read) { app, req, _, p in try app.listRollouts(req, project: p) },
            r("GET", "/v1/rollouts/{id}", read) { app, req, v, p in try app.getRollout(req, v["id"]!, project: p) },
            r("DELETE", "/v1/rollouts/{id}", write) { app, _, v, p in try app.deleteRollout(v["id"]!, project: p) },
            s("POST", "/v1/rollouts/{id}/turns", write) { app, req, body, v, p in try app.appendTurn(req, body, id: v["id"]!, project: p) },
            r("GET", "/v1/rollouts/{id}/routes", read) { app, req, v, p in try app.getRoutes(req, id: v["id"]!, project: p) },
            s("PUT", "/v1/rollouts/{id}/routes", write, types: ["application/x-npy", "application/octet-stream"], max: config.maxBodyBytes) { app, req, body, v, p in
                try app.putRoutes(req, body, id: v["id"]!, project: p)
            },
            r("POST", "/v1/routes:batchGet", read, body: .buffered(small, json)) { app, req, _, p in try app.batchGet(req, project: p) },
            r("POST", "/v1/routes:stats", read, body: .buffered(small, json)) { app, req, _, p in try app.routeStats(req, project: p) },
            r("POST", "/v1/models", write + jobsScope, body: .buffered(small, json)) { app, req, _, p in try app.createModel(req, project: p) },
            r("GET", "/v1/models", read + jobsScope) { app, _, _, p in try app.listModels(project: p) },
            r("GET", "/v1/models/{id}", read + jobsScope) { app, _, v, p in try app.getModel(v["id"]!, project: p) },
            r("GET", "/v1/models/{id}/versions", read + jobsScope) { app, _, v, p in try app.modelVersions(v["id"]!, project: p) },
            r("GET", "/v1/models/{id}/versions/{version}/checkpoint", read + jobsScope) { app, _, v, p in
                try app.checkpointManifest(v["id"]!, version: v["version"]!, project: p)
            },
            r("GET", "/v1/models/{id}/versions/{version}/checkpoint/{file}", read + jobsScope) { app, req, v, p in
                try app.checkpointFile(req, v["id"]!, version: v["version"]!, file: v["file"]!, project: p)
            },
            r("GET", "/v1/retention", read + jobsScope + admin) { app, _, _, p in try app.getRetention(project: p) },
            r("PUT", "/v1/retention", admin, body: .buffered(small, json)) { app, req, _, p in try app.putRetention(req, project: p) },
            r("POST", "/v1/retention:apply", admin) { app, _, _, p in try app.applyRetention(project: p) },
            r("POST", "/v1/jobs", jobsScope, body: .buffered(config.maxBodyBytes, json)) { app, req, _, p in try app.createJob(req, project: p) },
            r("GET", "/v1/jobs", jobsScope) { app, req, _, p in try app.listJobs(req, project: p) },
            r("GET", "/v1/jobs/{id}", jobsScope) { app, _, v, p in try app.getJob(v["id"]!, project: p) },
            r("POST", "/v1/jobs/{id}/cancel", jobsScope) { app, _, v, p in try app.cancelJob(v["id"]!, project: p) },
            r("GET", "/v1/jobs/{id}/events", jobsScope) { app, req, v, p in try app.jobEvents(req, id: v["id"]!, project: p) },
            r("GET", "/v1/jobs/{id}/metrics", jobsScope) { app, req, v, p in try app.jobMetrics(req, id: v["id"]!, project: p) },
            r("POST", "/v1/jobs/{id}/resume", jobsScope) { app, _, v, p in try app.resumeJob(v["id"]!, project: p) },
            r("POST", "/v1/runs", runScope, body: .buffered(small, json)) { app, req, _, p in try app.createRun(req, project: p) },
            r("GET", "/v1/runs", runScope) { app, req, _, p in try app.listRuns(req, project: p) },
            r("GET", "/v1/runs/{id}", runScope) { app, _, v, p in try app.getRun(v["id"]!, project: p) },
            s("POST", "/v1/runs/{id}/steps", runScope, max: config.maxBodyBytes) { app, req, body, v, p in try app.reportStep(req, body, id: v["id"]!, project: p) },
            r("GET", "/v1/runs/{id}/steps/{step}", runScope) { app, _, v, p in try app.runStep(v["id"]!, step: v["step"]!, project: p) },
            r("GET", "/v1/runs/{id}/metrics", runScope) { app, req, v, p in try app.runMetrics(req, id: v["id"]!, project: p) },
            r("GET", "/v1/runs/{id}/events", runScope) { app, req, v, p in try app.runEvents(req, id: v["id"]!, project: p) },
            r("POST", "/v1/runs/{id}/pause", runScope) { app, _, v, p in try app.transitionRun(v["id"]!, project: p, to: .paused) },
            r("POST", "/v1/runs/{id}/resume", runScope) { app, _, v, p in try app.transitionRun(v["id"]!, project: p, to: .active) },
            r("POST", "/v1/runs/{id}/finish", runScope) { app, _, v, p in try app.transitionRun(v["id"]!, project: p, to: .finished) },
            r("POST", "/v1/webhooks", jobsScope, body: .buffered(small, json)) { app, req, _, p in try app.createWebhook(req, project: p) },
            r("GET", "/v1/webhooks", jobsScope) { app, req, _, p in try app.listWebhooks(req, project: p) },
            r("GET", "/v1/webhooks/{id}", jobsScope) { app, _, v, p in try app.getWebhook(v["id"]!, project: p) },
            r("PATCH", "/v1/webhooks/{id}", jobsScope, body: .buffered(small, json)) { app, req, v, p in try app.updateWebhook(req, id: v["id"]!, project: p) },
            r("DELETE", "/v1/webhooks/{id}", jobsScope) { app, _, v, p in try app.deleteWebhook(v["id"]!, project: p) },
            r("POST", "/v1/webhooks/{id}/rotate-secret", jobsScope) { app, req, v, p in try app.rotateWebhookSecret(req, id: v["id"]!, project: p) },
            r("GET", "/v1/webhooks/{id}/deliveries", jobsScope) { app, req, v, p in try app.webhookDeliveries(req, id: v["id"]!, project: p) },
            r("POST", "/v1/webhooks/{id}/deliveries/{did}/redeliver", jobsScope) { app, _, v, p in try app.redeliver(v["id"]!, delivery: v["did"]!, project: p) },
            r("GET", "/v1/keys", admin) { app, _, _, p in try app.listKeys(project: p) },
            r("POST", "/v1/keys", admin, body: .buffered(small, json)) { app, req, _, p in try app.createKey(req, project: p) },
            r("POST", "/v1/keys/{id}/revoke", admin) { app, req, v, p in try app.revokeKey(req, v["id"]!, project: p) },
            r("POST", "/v1/keys/{id}/rotate", admin) { app, req, v, p in try app.rotateKey(req, id: v["id"]!, project: p) },
            r("GET", "/v1/quota") { app, _, _, p in try app.quota(project: p) },
            r("GET", "/v1/whoami") { app, req, _, _ in try app.whoami(req) },
        ]
        for (i, route) in routes.enumerated() where !route.pattern.contains(where: { $0.hasPrefix("{") }) {
            let path = route.name
            let segs = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
            // a path a route with variables also matches keeps the scan (whose order decides)
            if routes.contains(where: { $0.pattern.contains(where: { $0.hasPrefix("{") }) && match($0.pattern, segs) != nil }) { continue }
            staticRoutes[path, default: []].append(i)
        }
    }

    /// The HTTP entry point: routes and authenticates a request from its head, then says how its body is
    /// read (if at all). 404, 405, 401, 415 and a declared length over the route's limit (413) are
    /// answered before any body byte is read.
    /// Routes the event loop answers itself when they can be answered from memory: no database read, no
    /// file, no lock held for long. An authenticated one is answered inline only while its key is in the
    /// cache (`AuthCache` throws `HTTPInline.WouldBlock` otherwise, and the request goes to a worker).
    static let inlineRoutes: Set<String> = ["/livez", "/v1/whoami"]

    /// The event loop's inline responder (HTTPServer `inline:`): nil hands the request to a worker.
    public func decideInline(_ req: HTTPRequest) -> HTTPHeadDecision? {
        guard let matched = try? match(req), App.inlineRoutes.contains(matched.0.name), case .none = matched.0.body else { return nil }
        return decideOrDecline(req, matched: matched)
    }

    public func decide(_ req: HTTPRequest) -> HTTPHeadDecision {
        decideOrDecline(req) ?? .respond(.problem(500, detail: "internal error"))   // declines only inline
    }

    /// nil when, on the event loop, answering would block (`HTTPInline.WouldBlock`): nothing was logged or
    /// counted. `matched`: the route the caller already found for `req`.
    private func decideOrDecline(_ req: HTTPRequest, matched: (Route, [String: String])? = nil) -> HTTPHeadDecision? {
        let start = ContinuousClock.now
        var ctx = RequestContext(id: App.requestID(req.headers["X-Request-Id"]))
        do {
            let (route, vars) = try matched ?? match(req)
            ctx.route = route.name
            if route.auth {
                let p = try authorize(req, scopes: route.scopes)
                ctx.project = p.projectID; ctx.keyID = p.keyID
            }
            let project = ctx.project ?? 0
            let ctx = ctx
            switch route.body {
            case .none:
                return .respond(try finishOrDecline(ctx, req, start) { try self.run(route, req, vars, project) })
            case let .buffered(limit, types):
                guard req.hasBody else {
                    return .respond(finish(ctx, req, start) { _ = try requireContentType(req, types); return try self.run(route, req, vars, project) })
                }
                _ = try requireContentType(req, types)
                if let n = req.declaredLength, n > limit { throw ServiceError(413, "the body of \(n) bytes exceeds the limit of \(limit) bytes for this request") }
                return .collect(maxBytes: limit) { body in
                    var r = req; r.body = body
                    return self.finish(ctx, req, start, bytesIn: { body.count }) { try self.run(route, r, vars, project) }
                }
            case let .streamed(types, max):
                _ = try requireContentType(req, types)
                if let n = req.declaredLength, n > max {
                    throw ServiceError(413, "the body of \(n) bytes exceeds the limit of \(max) bytes (\(max == config.maxImportBytes ? "R3_MAX_IMPORT_BYTES" : "R3_MAX_BODY_BYTES"))")
                }
                return .stream { body in
                    self.finish(ctx, req, start, bytesIn: { body.bytesRead }) {
                        // before the first body read: a refused upload is never invited (no 100 Continue)
                        guard self.uploadGate.enter(project) else {
                            throw ServiceError(429, "the project has \(self.uploadGate.limit) uploads in progress already (R3_MAX_UPLOADS_PER_PROJECT); retry after 5 s",
                                               headers: [("Retry-After", "5")])
                        }
                        defer { self.uploadGate.leave(project) }
                        return try route.stream!(self, req, body, vars, project)
                    }
                }
            }
        } catch is HTTPInline.WouldBlock {
            return nil
        } catch {
            return .respond(finish(ctx, req, start) { throw error })
        }
    }

    /// Routes whose writes change rollouts or routes: a later read of the project must see them.
    static let rolloutWrites: Set<String> = ["/v1/rollouts", "/v1/rollouts:batchCreate", "/v1/rollouts:sglang", "/v1/rollouts:vllm", "/v1/rollouts/{id}",
                                             "/v1/rollouts/{id}/turns", "/v1/rollouts/{id}/routes"]

    /// What the request log says about a request beyond its method and status.
    struct RequestContext: Sendable {
        var id: String
        var route = "unmatched"
        var project: Int?
        var keyID: Int?
    }

    /// The client's X-Request-Id when it is 1 to 128 characters of [A-Za-z0-9._:-], else a new one.
    static func requestID(_ given: String?) -> String {
        if let g = given, (1...128).contains(g.utf8.count),
           g.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2E || $0 == 0x5F || $0 == 0x3A || $0 == 0x2D }) {
            return g
        }
        return RequestIDs.shared.next()
    }

    /// Request ids made without a syscall: 16 random hex digits drawn once per process, then a counter
    /// (UUID() reads the kernel's random source for every request).
    final class RequestIDs: @unchecked Sendable {
        static let shared = RequestIDs()
        private let prefix: String
        private var counter: UInt64 = 0
        private let lock = NSLock()
        init() {
            var g = SystemRandomNumberGenerator()
            let p = String(g.next() as UInt64, radix: 16)
            prefix = String(repeating: "0", count: 16 - p.count) + p
        }
        func next() -> String {
            lock.lock(); counter &+= 1; let n = counter; lock.unlock()
            let c = String(n, radix: 16)
            return prefix + "-" + String(repeating: "0", count: max(0, 8 - c.count)) + c
        }
    }

    /// In-process: the whole request at once (its body already read).
    public func handle(_ req: HTTPRequest) -> HTTPResponse {
        var r: HTTPResponse
        switch decide(req) {
        case let .respond(x): r = x
        case let .collect(_, then): r = then(req.body)
        case let .stream(handler): r = handler(HTTPBodyStream(data: req.body))
        }
        if let src = r.source {   // a body made as it is sent, made whole here
            r.source = nil
            while let d = src.next(maxBytes: 1 << 20) { r.body.append(d) }
        }
        return r
    }

    private func run(_ route: Route, _ req: HTTPRequest, _ vars: [String: String], _ project: Int) throws -> HTTPResponse {
        var resp = try route.handler!(self, req, vars, project)
        if req.method == "HEAD" {
            if resp.stream != nil && resp.headLength != nil { resp.stream = nil; return resp }   // a stream of known length
            resp.headLength = resp.source?.length ?? resp.body.count; resp.source = nil; resp.body = Data(); resp.oneChunk = false
        }
        return resp
    }

    /// Runs a handler, turns any error into its problem+json, records the request's metrics, tags the
    /// response with its request id and logs one line (a 500 a second one, with its cause). Never the
    /// request's body, query or headers: they may hold keys.
    private func finish(_ ctx: RequestContext, _ req: HTTPRequest, _ start: ContinuousClock.Instant, bytesIn: () -> Int = { 0 },
                        _ body: () throws -> HTTPResponse) -> HTTPResponse {
        do { return try finishOrDecline(ctx, req, start, bytesIn: bytesIn, body) } catch {
            // only inline code throws WouldBlock, and it goes through finishOrDecline; a worker never sees it
            return finish(ctx, req, start, bytesIn: bytesIn) { throw ServiceError(500, "a handler declined to block off the event loop") }
        }
    }

    /// `finish`, except that `HTTPInline.WouldBlock` is thrown on, before anything is logged or counted.
    private func finishOrDecline(_ ctx: RequestContext, _ req: HTTPRequest, _ start: ContinuousClock.Instant, bytesIn: () -> Int = { 0 },
                                 _ body: () throws -> HTTPResponse) throws -> HTTPResponse {
        var resp: HTTPResponse
        do { resp = try body() } catch is HTTPInline.WouldBlock {
            throw HTTPInline.WouldBlock()
        } catch {
            resp = ServiceError.response(for: error)
            if resp.status >= 500 {
                logger.error("internal error", metadata: ["request_id": .string(ctx.id), "method": .string(req.method), "route": .string(ctx.route),
                                                          "status": .stringConvertible(resp.status), "cause": .string(String(String(describing: error).prefix(500)))])
            }
        }
        resp.headers.set("X-Request-Id", ctx.id)
        if (200..<300).contains(resp.status), req.method != "GET", req.method != "HEAD", App.rolloutWrites.contains(ctx.route),
           let p = ctx.project, let lsn = reads.noteWrite(project: p) {
            resp.headers.set("R3-Write-LSN", ReadRouting.format(lsn))
        }
        let elapsed = seconds(since: start)
        metrics.observe(route: ctx.route, method: req.method, status: resp.status, seconds: elapsed)
        if logRequests && logger.logLevel <= .info {
            // the request log, written field by field in the order JSONLogHandler sorts them (no Metadata dictionary)
            var line = JSONLogLine(level: .info, label: "r3.api", message: "request")
            line.field("bytes_in", bytesIn())
            if resp.stream == nil { line.field("bytes_out", resp.headLength ?? resp.source?.length ?? resp.body.count) }
            line.field("duration_ms", (elapsed * 1e5).rounded() / 100)
            if let k = ctx.keyID { line.field("key_id", k) }
            line.field("method", req.method)
            if let p = ctx.project { line.field("project", p) }
            line.field("request_id", ctx.id)
            line.field("route", ctx.route)
            line.field("status", resp.status)
            line.write()
        }
        return resp
    }

    private func match(_ req: HTTPRequest) throws -> (Route, [String: String]) {
        if let candidates = staticRoutes[req.path] {   // the same answer as the scan below, without splitting the path
            var allowed: [String] = []
            for i in candidates {
                let route = routes[i]
                if route.method == req.method || (route.method == "GET" && req.method == "HEAD") { return (route, [:]) }
                allowed.append(route.method)
            }
            throw ServiceError(405, "\(req.method) is not allowed here", headers: [("Allow", allowed.joined(separator: ", "))])
        }
        let segs = req.path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        var allowed: [String] = []
        for route in routes {
            guard let vars = match(route.pattern, segs) else { continue }
            guard route.method == req.method || (route.method == "GET" && req.method == "HEAD") else { allowed.append(route.method); continue }
            return (route, vars)
        }
        if !allowed.isEmpty { throw ServiceError(405, "\(req.method) is not allowed here", headers: [("Allow", allowed.joined(separator: ", "))]) }
        throw ServiceError.notFound("\(req.path)")
    }

    private func match(_ pattern: [String], _ segs: [String]) -> [String: String]? {
        guard pattern.count == segs.count else { return nil }
        var vars: [String: String] = [:]
        for (p, s) in zip(pattern, segs) {
            if p.hasPrefix("{") { guard !s.isEmpty else { return nil }; vars[String(p.dropFirst().dropLast())] = s.removingPercentEncoding ?? s }
            else if p != s { return nil }
        }
        return vars
    }

    func ready() throws -> HTTPResponse {
        do {
            _ = try pool.withRetry { try $0.query("SELECT 1") }
            return .json(200, ["status": "ready"])
        } catch { return .problem(503, detail: "the database is unavailable") }
    }

    /// Process metrics for anyone who reaches the port; the run gauges only for a scrape with a key, of its project.
    func renderMetrics(_ req: HTTPRequest) throws -> HTTPResponse {
        let s = pool.stats
        var extra: [(String, String, Double)] = [("r3_db_pool_open", "Open database connections.", Double(s.open)),
                                                 ("r3_db_pool_idle", "Idle database connections.", Double(s.idle)),
                                                 ("r3_db_pool_size", "Database pool size.", Double(s.size))]
        let cache = RouteCache.shared
        extra += [("r3_route_cache_bytes", "Bytes of packed routes held for fetches (R3_ROUTE_CACHE_MB).", Double(cache.bytes)),
                  ("r3_route_cache_entries", "Rollouts whose routes are held for fetches.", Double(cache.count)),
                  ("r3_route_cache_hits_total", "Route fetches served from memory (the row was still the cached version).", Double(cache.hits)),
                  ("r3_route_cache_misses_total", "Route fetches of large routes read from the database.", Double(cache.misses))]
        if let stored = try? rollouts.storedRouteBytes() {
            extra.append(("r3_routes_stored_bytes", "Bytes of packed routes stored.", Double(stored.bytes)))
            extra.append(("r3_routes_stored_count", "Rollouts with stored routes.", Double(stored.count)))
        }
        let project = req.headers["Authorization"] == nil ? nil : (try? authorize(req, scopes: []))?.projectID
        return .text(200, metrics.render(extra: extra) + (project.map(runGauges) ?? ""), contentType: "text/plain; version=0.0.4")
    }

    /// Gauges of the latest step of every active or paused run: its step and each numeric metric.
    func runGauges(project: Int) -> String {
        guard let latest = try? runs.latestOfActive(project: project) else { return "" }
        func label(_ s: String) -> String { s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n") }
        var steps = "# HELP r3_run_step The latest reported step of each active or paused run.\n# TYPE r3_run_step gauge\n"
        var values = "# HELP r3_run_metric The latest step's metrics of each active or paused run.\n# TYPE r3_run_metric gauge\n"
        for r in latest {
            let l = "run_id=\"\(r.run)\",run=\"\(label(r.name))\",project=\"\(r.project)\""
            steps += "r3_run_step{\(l)} \(r.step)\n"
            for (k, v) in JobExecutor.numbers(r.json).sorted(by: { $0.key < $1.key }) where k != "step" {
                values += "r3_run_metric{\(l),metric=\"\(label(k))\"} \(v)\n"
            }
        }
        return steps + values
    }
}

extension HTTPResponse {
    /// A body that is JSON text already (a stored reply).
    static func rawJSON(_ status: Int, _ text: String, headers: [(String, String)] = []) -> HTTPResponse {
        var h = HTTPHeaders([("Content-Type", "application/json")])
        for (n, v) in headers { h.set(n, v) }
        return HTTPResponse(status: status, headers: h, body: Data(text.utf8))
    }

    /// The liveness answer, made once.
    static let livez = HTTPResponse.json(200, ["status": "ok"])

    static func json(_ status: Int, _ obj: Any, headers: [(String, String)] = []) -> HTTPResponse {
        let data = (try? AnyJSONWriter.data(obj))
            ?? (try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        var h = HTTPHeaders([("Content-Type", "application/json")])
        for (n, v) in headers { h.set(n, v) }
        return HTTPResponse(status: status, headers: h, body: data)
    }
}
