// JobPages: the browser view of jobs and runs. `GET /jobs/{id}` and `GET /runs/{id}` show a job's or run's
// state, parameters, collapse alarms and server-rendered SVG charts of its metrics (StatusPage),
// refreshing themselves while it runs; `GET /jobs` lists a project's jobs. No scripts, no external assets. A browser cannot send a bearer key, so pages
// take a signed, expiring, read-only link token (minted into the API's `links.page` / `page_url`).
import Foundation
import HTTP
import JSON
import Store

extension App {
    /// The HMAC key for page links, shared through the database by every server process.
    func pageKey() throws -> [UInt8] {
        pageKeyLock.lock(); defer { pageKeyLock.unlock() }
        if let k = pageKeyCache { return k }
        var g = SystemRandomNumberGenerator()
        let fresh = Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &g) })
        let r = try pool.withRetry { c in
            try c.query("INSERT INTO server_secrets (name, value) VALUES ('page_links', \(fresh)) ON CONFLICT (name) DO NOTHING")
            return try c.query("SELECT value FROM server_secrets WHERE name = 'page_links'", binary: true)
        }
        guard let k = try r.bytesOrNil(0, "value") else { throw ServiceError(500, "no page key") }
        pageKeyCache = [UInt8](k)
        return pageKeyCache!
    }

    /// "<expiry>.<base64url HMAC(scope:expiry)>", valid for `seconds`.
    func pageToken(scope: String, seconds: Double = 7 * 86_400) -> String? {
        guard let key = try? pageKey() else { return nil }
        let exp = Int(Date().timeIntervalSince1970 + seconds)
        return "\(exp).\(App.b64url(SHA256.hmac(key: key, message: Array("\(scope):\(exp)".utf8))))"
    }

    static func b64url(_ b: [UInt8]) -> String {
        Data(b).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    func checkPageToken(_ token: String?, scope: String) throws {
        guard let t = token, let dot = t.firstIndex(of: "."), let exp = Int(t[..<dot]) else {
            throw ServiceError(401, "this page needs the signed link from the API (links.page of a job, or page_url of GET /v1/jobs)")
        }
        let key = try pageKey()
        let want = App.b64url(SHA256.hmac(key: key, message: Array("\(scope):\(exp)".utf8)))
        let got = String(t[t.index(after: dot)...])
        var diff = UInt8(want.utf8.count == got.utf8.count ? 0 : 1)
        for (a, b) in zip(want.utf8, got.utf8) { diff |= a ^ b }
        guard diff == 0 else { throw ServiceError(401, "the page link is not valid") }
        guard Double(exp) > Date().timeIntervalSince1970 else { throw ServiceError(401, "the page link has expired; get a new one from the API") }
    }

    func pageURL(job: String) -> String? { pageToken(scope: "job:\(job)").map { "/jobs/\(job)?token=\($0)" } }
    func pageURL(run: String) -> String? { pageToken(scope: "run:\(run)").map { "/runs/\(run)?token=\($0)" } }
    func pageURL(project: Int) -> String? { pageToken(scope: "project:\(project)").map { "/jobs?token=\($0)&project=\(project)" } }

    func html(_ title: String, _ body: String, refresh: Bool) -> HTTPResponse {
        let page = """
            <!doctype html><html lang="en"><head><meta charset="utf-8"><title>\(SVGChart.esc(title))</title>
            \(refresh ? "<meta http-equiv=\"refresh\" content=\"2\">" : "")
            <style>body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
            .charts{display:flex;flex-wrap:wrap;gap:12px}.bar{width:360px;height:14px;border:1px solid #888;display:inline-block;vertical-align:middle}
            .bar>div{height:100%;background:#1f77b4}.alarm{color:#b00}</style></head><body>\(body)</body></html>
            """
        var r = HTTPResponse.text(200, page, contentType: "text/html; charset=utf-8")
        r.headers.set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:")
        r.headers.set("Cache-Control", "no-store")
        r.headers.set("Referrer-Policy", "no-referrer")
        return r
    }

    func jobPage(_ req: HTTPRequest, id: String) throws -> HTTPResponse {
        try checkPageToken(req.query["token"], scope: "job:\(id)")
        guard let j = try jobs.getAny(id: id) else { throw ServiceError.notFound("job \(id)") }
        let rows = try jobs.metrics(job: id).map { (step: $0.step, m: JobExecutor.numbers($0.json)) }
        let progress = parseJSON(j.progressJSON) as? [String: Any] ?? [:]
        let done = (progress["step"] as? Int) ?? (progress["samples"] as? Int) ?? 0
        let total = (progress["steps"] as? Int) ?? (progress["total"] as? Int) ?? 0
        var facts: [(String, String)] = [("created", j.createdAt), ("started", j.startedAt ?? "—"), ("finished", j.finishedAt ?? "—")]
        facts += App.facts(j.paramsJSON, skip: ["model"])
        let page = StatusPage(
            heading: "Job \(j.id)",
            summary: "<b>\(SVGChart.esc(j.type))</b> on model <code>\(SVGChart.esc(j.modelID))</code> — state <b id=\"state\">\(j.state.rawValue)</b>, attempt \(j.attempts) of \(j.maxAttempts)",
            facts: facts, progress: (done, total), error: j.error,
            alarms: pageAlarms(try jobs.events(job: id, after: 0, limit: 5000).filter { $0.type == "training.collapse_detected" }), rows: rows)
        return html("R3 job \(j.id)", page.render(), refresh: j.state == .queued || j.state == .running)
    }

    func runPage(_ req: HTTPRequest, id: String) throws -> HTTPResponse {
        try checkPageToken(req.query["token"], scope: "run:\(id)")
        guard let r = try runs.getAny(id: id) else { throw ServiceError.notFound("run \(id)") }
        let rows = try runs.metrics(run: id).map { (step: $0.step, m: JobExecutor.numbers($0.json)) }
        var facts: [(String, String)] = [("created", r.createdAt), ("updated", r.updatedAt), ("finished", r.finishedAt ?? "—"),
                                         ("last step", r.lastStep.map(String.init) ?? "—")]
        if let o = (try? JSONReader.parse(Array(r.paramsJSON.utf8)))?.objectValue {
            facts += App.facts(o["params"]?.objectValue ?? JSONObject())   // the trainer's own settings first
            facts += App.facts(o, skip: ["params", "model"])
        }
        let model = r.modelID.map { " on model <code>\(SVGChart.esc($0))</code>" } ?? ""
        let page = StatusPage(
            heading: "Run \(r.name)",
            summary: "external training run <code>\(SVGChart.esc(r.id))</code>\(model) — state <b id=\"state\">\(r.state.rawValue)</b>",
            facts: facts, progress: nil, error: nil,
            alarms: pageAlarms(try runs.events(run: id, after: 0, limit: 5000).filter { $0.type == "run.collapse_detected" }), rows: rows)
        return html("R3 run \(r.name)", page.render(), refresh: r.state == .active)
    }

    func jobsPage(_ req: HTTPRequest) throws -> HTTPResponse {
        guard let p = req.query["project"], let project = Int(p) else { throw ServiceError(401, "this page needs the signed link from the API (page_url of GET /v1/jobs)") }
        try checkPageToken(req.query["token"], scope: "project:\(project)")
        let list = try jobs.list(project: project, state: nil, type: nil, after: 0, limit: 500)
        var body = "<h1>Jobs</h1><table><tr><th>job</th><th>type</th><th>state</th><th>progress</th><th>created</th></tr>"
        for j in list.reversed() {
            let link = pageURL(job: j.id).map { "<a href=\"\(SVGChart.esc($0))\">\(SVGChart.esc(j.id))</a>" } ?? SVGChart.esc(j.id)
            body += "<tr><td>\(link)</td><td>\(j.type)</td><td>\(j.state.rawValue)</td><td>\(SVGChart.esc(j.progressJSON))</td><td>\(j.createdAt)</td></tr>"
        }
        body += "</table>"
        return html("R3 jobs", body, refresh: list.contains { $0.state == .queued || $0.state == .running })
    }
}
