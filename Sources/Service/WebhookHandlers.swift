// WebhookHandlers: webhook endpoints (create with a signing secret shown once, read, list, update,
// delete, rotate the secret), their deliveries with every attempt, and redelivery.
import Foundation
import JSON
import HTTP
import Store

extension App {
    var webhooks: WebhookRepository { WebhookRepository(pool: pool) }

    func webhookJSON(_ e: WebhookEndpoint) -> [String: Any] {
        ["id": e.id, "url": e.url, "events": e.events, "description": e.description, "enabled": e.enabled,
         "disabled_reason": e.disabledReason ?? NSNull(), "previous_secret_valid_until": e.previousExpiresAt ?? NSNull(),
         "created_at": e.createdAt, "updated_at": e.updatedAt, "deliveries_url": "/v1/webhooks/\(e.id)/deliveries"]
    }

    func deliveryJSON(_ d: WebhookDelivery) -> [String: Any] {
        ["id": d.id, "event_id": d.eventID, "event_type": d.eventType, "status": d.status, "attempts": d.attempts,
         "next_attempt_at": d.nextAttemptAt ?? NSNull(), "last_status": d.lastStatus ?? NSNull(), "last_error": d.lastError ?? NSNull(),
         "created_at": d.createdAt,
         "history": d.history.map { a -> [String: Any] in
             ["attempt": a.attempt, "at": a.at, "status_code": a.statusCode ?? NSNull(), "latency_ms": a.latencyMs, "error": a.error ?? NSNull()]
         }]
    }

    func webhookFields(_ o: JSONObject, creating: Bool) throws -> (url: String?, events: [String]?, description: String?, enabled: Bool?) {
        let allowed: Set<String> = creating ? ["url", "events", "description"] : ["url", "events", "description", "enabled"]
        let f = try Fields(o, allowed: allowed)
        var url: String?
        if let u = try f.string("url", required: creating, max: 2048) {
            do { url = try URLGuard.check(u, allowPrivate: config.webhookAllowPrivate).absoluteString } catch {
                throw ServiceError.unprocessable("\(error)")
            }
        }
        var events: [String]?
        if f.has("events") {
            guard let l = try? f.stringList("events", max: 100), !l.isEmpty, l.count <= 10, Set(l).count == l.count,
                  l.allSatisfy(WebhookRepository.eventTypes.contains) else {
                throw ServiceError.unprocessable("events must be a list of distinct event types from: \(WebhookRepository.eventTypes.sorted().joined(separator: ", "))")
            }
            events = l
        } else if creating { throw ServiceError.unprocessable("events is required") }
        var description: String?
        if let v = f.present("description") {
            guard let s = v.stringValue, s.count <= 1000 else { throw ServiceError.unprocessable("description must be a string of at most 1000 characters") }
            description = s
        }
        var enabled: Bool?
        enabled = try f.bool("enabled")
        return (url, events, description, enabled)
    }

    func createWebhook(_ req: HTTPRequest, project: Int) throws -> HTTPResponse {
        let f = try webhookFields(try jsonBody(req), creating: true)
        let secret = WebhookSigner.newSecret()
        let e = try webhooks.create(project: project, url: f.url!, events: f.events!, description: f.description ?? "", secret: secret)
        var body = webhookJSON(e)
        body["secret"] = secret
        return .json(201, body, headers: [("Location", "/v1/webhooks/\(e.id)")])
    }

    func listWebhooks(_ req: HTTPRequest, project: Int) throws -> HTTPResponse {
        let (limit, cursor) = try page(req.query)
        let rows = try webhooks.list(project: project, after: cursor, limit: limit + 1)
        let pageRows = rows.prefix(limit)
        return .json(200, ["data": pageRows.map { webhookJSON($0.0) },
                           "next_cursor": rows.count > limit ? String(pageRows.last!.seq) as Any : NSNull()])
    }

    func endpoint(_ id: String, project: Int) throws -> WebhookEndpoint {
        guard let e = try webhooks.get(project: project, id: id) else { throw ServiceError.notFound("webhook \(id)") }
        return e
    }

    func getWebhook(_ id: String, project: Int) throws -> HTTPResponse { .json(200, webhookJSON(try endpoint(id, project: project))) }

    func updateWebhook(_ req: HTTPRequest, id: String, project: Int) throws -> HTTPResponse {
        let f = try webhookFields(try jsonBody(req), creating: false)
        guard let e = try webhooks.update(project: project, id: id, url: f.url, events: f.events, description: f.description, enabled: f.enabled) else {
            throw ServiceError.notFound("webhook \(id)")
        }
        return .json(200, webhookJSON(e))
    }

    func deleteWebhook(_ id: String, project: Int) throws -> HTTPResponse {
        guard try webhooks.delete(project: project, id: id) else { throw ServiceError.notFound("webhook \(id)") }
        return HTTPResponse(status: 204)
    }

    /// A new secret (shown once); the previous one keeps signing beside it for `overlap_seconds` (default 24 h).
    func rotateWebhookSecret(_ req: HTTPRequest, id: String, project: Int) throws -> HTTPResponse {
        var overlap = 86_400.0
        if let v = req.query["overlap_seconds"] {
            guard let n = Int(v), (0...604_800).contains(n) else { throw ServiceError.badRequest("overlap_seconds must be an integer in 0...604800") }
            overlap = Double(n)
        }
        let secret = WebhookSigner.newSecret()
        guard let e = try webhooks.rotate(project: project, id: id, secret: secret, overlapSeconds: overlap) else { throw ServiceError.notFound("webhook \(id)") }
        var body = webhookJSON(e)
        body["secret"] = secret
        return .json(200, body)
    }

    func webhookDeliveries(_ req: HTTPRequest, id: String, project: Int) throws -> HTTPResponse {
        _ = try endpoint(id, project: project)
        let (limit, cursor) = try page(req.query)
        let rows = try webhooks.deliveries(endpoint: id, after: cursor, limit: limit + 1)
        let pageRows = rows.prefix(limit)
        return .json(200, ["data": pageRows.map(deliveryJSON), "next_cursor": rows.count > limit ? String(pageRows.last!.seq) as Any : NSNull()])
    }

    func redeliver(_ id: String, delivery: String, project: Int) throws -> HTTPResponse {
        _ = try endpoint(id, project: project)
        guard let d = try webhooks.redeliver(endpoint: id, delivery: delivery) else { throw ServiceError.notFound("delivery \(delivery)") }
        return .json(202, deliveryJSON(d))
    }

    func resumeJob(_ id: String, project: Int) throws -> HTTPResponse {
        guard let (j, resumed) = try jobs.resume(project: project, id: id) else { throw ServiceError.notFound("job \(id)") }
        guard resumed else { throw ServiceError(409, "job \(id) is \(j.state.rawValue), not paused") }
        return .json(202, jobJSON(j))
    }
}
