// App: the R3 HTTP API: routing, bearer-key auth scoped to a project, the handlers, metrics. One
// function turns every error into problem+json (ServiceError.response).
import Foundation
import HTTP
import Routes
import Store

public final class App: @unchecked Sendable {
    public let config: ServiceConfig
    public let pool: ConnectionPool
    let keys: KeyRepository
    let rollouts: RolloutRepository
    let models: ModelRepository
    let jobs: JobRepository
    let metrics = Metrics()
    /// Absolute data directory: model checkpoints live under models/.
    let dataDirectory: URL
    let pageKeyLock = NSLock()
    var pageKeyCache: [UInt8]?

    typealias Handler = (App, HTTPRequest, [String: String], Int) throws -> HTTPResponse
    struct Route { let method: String; let pattern: [String]; let name: String; let auth: Bool; let handler: Handler }
    let routes: [Route]

    public init(config: ServiceConfig, pool: ConnectionPool) {
        self.config = config
        self.pool = pool
        keys = KeyRepository(pool: pool)
        rollouts = RolloutRepository(pool: pool)
        models = ModelRepository(pool: pool)
        jobs = JobRepository(pool: pool)
        dataDirectory = URL(fileURLWithPath: config.dataDir.path, relativeTo: URL(fileURLWithPath: FileManager.default.currentDirectoryPath)).standardizedFileURL
        func r(_ m: String, _ p: String, auth: Bool = true, _ h: @escaping Handler) -> Route {
            Route(method: m, pattern: p.split(separator: "/").map(String.init), name: p, auth: auth, handler: h)
        }
        routes = [
            r("GET", "/livez", auth: false) { _, _, _, _ in .json(200, ["status": "ok"]) },
            r("GET", "/readyz", auth: false) { app, _, _, _ in try app.ready() },
            r("GET", "/metrics", auth: false) { app, _, _, _ in try app.renderMetrics() },
            r("GET", "/jobs", auth: false) { app, req, _, _ in try app.jobsPage(req) },
            r("GET", "/jobs/{id}", auth: false) { app, req, v, _ in try app.jobPage(req, id: v["id"]!) },
            r("POST", "/v1/rollouts") { app, req, _, p in try app.createRollout(req, project: p) },
            r("GET", "/v1/rollouts") { app, req, _, p in try app.listRollouts(req, project: p) },
            r("GET", "/v1/rollouts/{id}") { app, _, v, p in try app.getRollout(v["id"]!, project: p) },
            r("DELETE", "/v1/rollouts/{id}") { app, _, v, p in try app.deleteRollout(v["id"]!, project: p) },
            r("GET", "/v1/rollouts/{id}/routes") { app, req, v, p in try app.getRoutes(req, id: v["id"]!, project: p) },
            r("PUT", "/v1/rollouts/{id}/routes") { app, req, v, p in try app.putRoutes(req, id: v["id"]!, project: p) },
            r("POST", "/v1/routes:batchGet") { app, req, _, p in try app.batchGet(req, project: p) },
            r("POST", "/v1/models") { app, req, _, p in try app.createModel(req, project: p) },
            r("GET", "/v1/models") { app, _, _, p in try app.listModels(project: p) },
            r("GET", "/v1/models/{id}") { app, _, v, p in try app.getModel(v["id"]!, project: p) },
            r("GET", "/v1/models/{id}/versions") { app, _, v, p in try app.modelVersions(v["id"]!, project: p) },
            r("POST", "/v1/jobs") { app, req, _, p in try app.createJob(req, project: p) },
            r("GET", "/v1/jobs") { app, req, _, p in try app.listJobs(req, project: p) },
            r("GET", "/v1/jobs/{id}") { app, _, v, p in try app.getJob(v["id"]!, project: p) },
            r("POST", "/v1/jobs/{id}/cancel") { app, _, v, p in try app.cancelJob(v["id"]!, project: p) },
            r("GET", "/v1/jobs/{id}/events") { app, req, v, p in try app.jobEvents(req, id: v["id"]!, project: p) },
            r("GET", "/v1/jobs/{id}/metrics") { app, req, v, p in try app.jobMetrics(req, id: v["id"]!, project: p) },
            r("POST", "/v1/jobs/{id}/resume") { app, _, v, p in try app.resumeJob(v["id"]!, project: p) },
            r("POST", "/v1/webhooks") { app, req, _, p in try app.createWebhook(req, project: p) },
            r("GET", "/v1/webhooks") { app, req, _, p in try app.listWebhooks(req, project: p) },
            r("GET", "/v1/webhooks/{id}") { app, _, v, p in try app.getWebhook(v["id"]!, project: p) },
            r("PATCH", "/v1/webhooks/{id}") { app, req, v, p in try app.updateWebhook(req, id: v["id"]!, project: p) },
            r("DELETE", "/v1/webhooks/{id}") { app, _, v, p in try app.deleteWebhook(v["id"]!, project: p) },
            r("POST", "/v1/webhooks/{id}/rotate-secret") { app, req, v, p in try app.rotateWebhookSecret(req, id: v["id"]!, project: p) },
            r("GET", "/v1/webhooks/{id}/deliveries") { app, req, v, p in try app.webhookDeliveries(req, id: v["id"]!, project: p) },
            r("POST", "/v1/webhooks/{id}/deliveries/{did}/redeliver") { app, _, v, p in try app.redeliver(v["id"]!, delivery: v["did"]!, project: p) },
        ]
    }

    /// The HTTP entry point.
    public func handle(_ req: HTTPRequest) -> HTTPResponse {
        let start = ContinuousClock.now
        var routeName = "unmatched"
        var resp: HTTPResponse
        do {
            resp = try dispatch(req, &routeName)
        } catch {
            resp = ServiceError.response(for: error)
        }
        let d = ContinuousClock.now - start
        metrics.observe(route: routeName, method: req.method, status: resp.status,
                        seconds: Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18)
        return resp
    }

    private func dispatch(_ req: HTTPRequest, _ routeName: inout String) throws -> HTTPResponse {
        let segs = req.path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        var allowed: [String] = []
        for route in routes {
            guard let vars = match(route.pattern, segs) else { continue }
            guard route.method == req.method || (route.method == "GET" && req.method == "HEAD") else { allowed.append(route.method); continue }
            routeName = route.name
            var project = 0
            if route.auth { project = try authenticate(req) }
            var resp = try route.handler(self, req, vars, project)
            if req.method == "HEAD" { resp.headers.set("Content-Length", String(resp.body.count)); resp.body = Data() }
            return resp
        }
        if !allowed.isEmpty {
            var r = HTTPResponse.problem(405, detail: "\(req.method) is not allowed here")
            r.headers.set("Allow", allowed.joined(separator: ", "))
            return r
        }
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

    private func authenticate(_ req: HTTPRequest) throws -> Int {
        guard let h = req.headers["Authorization"], h.lowercased().hasPrefix("bearer ") else {
            throw ServiceError(401, "missing bearer API key (Authorization: Bearer r3_...)")
        }
        let key = String(h.dropFirst(7)).trimmingCharacters(in: .whitespaces)
        guard let p = try keys.project(forKey: key) else { throw ServiceError(401, "invalid API key") }
        return p
    }

    func ready() throws -> HTTPResponse {
        do {
            _ = try pool.withRetry { try $0.query("SELECT 1") }
            return .json(200, ["status": "ready"])
        } catch { return .problem(503, detail: "the database is unavailable") }
    }

    func renderMetrics() throws -> HTTPResponse {
        let s = pool.stats
        var extra: [(String, String, Double)] = [("r3_db_pool_open", "Open database connections.", Double(s.open)),
                                                 ("r3_db_pool_idle", "Idle database connections.", Double(s.idle)),
                                                 ("r3_db_pool_size", "Database pool size.", Double(s.size))]
        if let stored = try? rollouts.storedRouteBytes() {
            extra.append(("r3_routes_stored_bytes", "Bytes of packed routes stored.", Double(stored.bytes)))
            extra.append(("r3_routes_stored_count", "Rollouts with stored routes.", Double(stored.count)))
        }
        return .text(200, metrics.render(extra: extra), contentType: "text/plain; version=0.0.4")
    }
}

extension HTTPResponse {
    static func json(_ status: Int, _ obj: Any, headers: [(String, String)] = []) -> HTTPResponse {
        let data = (try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        var h = HTTPHeaders([("Content-Type", "application/json")])
        for (n, v) in headers { h.set(n, v) }
        return HTTPResponse(status: status, headers: h, body: data)
    }
}
