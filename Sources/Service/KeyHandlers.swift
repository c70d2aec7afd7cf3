// KeyHandlers: an admin-scoped key manages its project's keys (list, create with scopes and expiry, revoke,
// rotate with an overlap), and any key reads its project's quotas and usage, and itself (whoami).
import Foundation
import HTTP
import JSON
import Store

extension App {
    func keyJSON(_ k: KeyInfo) -> [String: Any] {
        ["id": k.id, "prefix": k.prefix, "name": k.name, "scopes": k.scopes, "created_at": k.createdAt,
         "expires_at": k.expiresAt ?? NSNull(), "last_used_at": k.lastUsedAt ?? NSNull(), "revoked_at": k.revokedAt ?? NSNull(),
         "replaced_by": k.replacedBy ?? NSNull()]
    }

    func listKeys(project: Int) throws -> HTTPResponse {
        .json(200, ["data": try keys.list(projectID: project).map(keyJSON)])
    }

    func createKey(_ req: HTTPRequest, project: Int) throws -> HTTPResponse {
        let f = try Fields(try jsonBody(req), allowed: ["name", "scopes", "expires_in_seconds"])
        let name = try f.string("name", max: 200) ?? ""
        var scopes = Scope.allCases
        if let l = try f.stringList("scopes", max: 20) {
            guard !l.isEmpty, Set(l).count == l.count else { throw ServiceError.unprocessable("scopes must be a list of distinct scopes") }
            scopes = try l.map { s in
                guard let v = Scope(rawValue: s) else { throw ServiceError.unprocessable("scopes: \(s) is not one of \(Scope.allCases.map(\.rawValue).joined(separator: ", "))") }
                return v
            }
        }
        let expires = try f.int("expires_in_seconds", range: 1...(10 * 365 * 86_400))
        let made = try keys.create(projectID: project, name: name, scopes: scopes, expiresIn: expires.map(Double.init))
        var o = keyJSON(made.info); o["key"] = made.key
        return .json(201, o, headers: [("Location", "/v1/keys/\(made.info.id)")])
    }

    func keyID(_ s: String) throws -> Int {
        guard let id = Int(s), id > 0 else { throw ServiceError.notFound("key \(s)") }
        return id
    }

    func revokeKey(_ req: HTTPRequest, _ id: String, project: Int) throws -> HTTPResponse {
        if try authorize(req, scopes: [.admin]).keyID == (try keyID(id)) {
            throw ServiceError(409, "a key cannot revoke itself: use another admin key, or r3 keys revoke")
        }
        guard try keys.revoke(id: try keyID(id), projectID: project) else { throw ServiceError.notFound("key \(id) (or it is already revoked)") }
        guard let k = try keys.list(projectID: project).first(where: { $0.id == (try? keyID(id)) }) else { throw ServiceError.notFound("key \(id)") }
        return .json(200, keyJSON(k))
    }

    func rotateKey(_ req: HTTPRequest, id: String, project: Int) throws -> HTTPResponse {
        var overlap = 0.0
        if let s = req.query["overlap_seconds"] {
            guard let v = Int(s), (0...(7 * 86_400)).contains(v) else { throw ServiceError.badRequest("overlap_seconds must be an integer in 0...604800") }
            overlap = Double(v)
        }
        if overlap == 0, try authorize(req, scopes: [.admin]).keyID == (try keyID(id)) {
            throw ServiceError(409, "a key rotating itself needs overlap_seconds > 0, or it would stop before its caller has the new one")
        }
        guard let made = try keys.rotate(id: try keyID(id), projectID: project, overlap: overlap) else {
            throw ServiceError.notFound("key \(id) (or it is revoked or expired)")
        }
        var o = keyJSON(made.info); o["key"] = made.key
        return .json(201, o, headers: [("Location", "/v1/keys/\(made.info.id)")])
    }

    func quota(project: Int) throws -> HTTPResponse {
        let u = try keys.usage(projectID: project)
        func v(_ x: Int?) -> Any { x ?? NSNull() }
        return .json(200, ["project": u.name, "route_bytes": ["used": u.routeBytes, "limit": v(u.quotas.maxRouteBytes)],
                           "active_jobs": ["used": u.activeJobs, "limit": v(u.quotas.maxActiveJobs)],
                           "requests_per_second": u.quotas.requestsPerSecond.map { $0 as Any } ?? NSNull(),
                           "request_burst": v(u.quotas.requestBurst ?? u.quotas.requestsPerSecond.map { max(1, Int($0.rounded(.up))) })])
    }

    /// The calling key: its project, prefix, scopes, expiry and the project's quotas. Answered from the
    /// per-process key cache that authenticated the request, so it costs no database read while cached:
    /// a check for CI scripts, and the bench's measure of what authentication alone costs.
    func whoami(_ req: HTTPRequest) throws -> HTTPResponse {
        let key = App.bearerToken(req.headers["Authorization"] ?? "")
        guard let p = try authCache.principal(key, lookup: { try keys.authenticate($0) }) else {
            throw ServiceError(401, "invalid, revoked or expired API key")
        }
        // typed JSON in sorted key order (answered on the event loop: no dynamic casts, no JSONSerialization)
        func v(_ x: Int?) -> JSONValue { x.map { .int(Int64($0)) } ?? .null }
        let until: JSONValue = p.validUntil.map { .string(ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: $0))) } ?? .null
        let body = JSONValue.object(JSONObject([
            ("cache_seconds", .double(authCache.ttl)), ("key_id", .int(Int64(p.keyID))), ("key_name", .string(p.keyName)),
            ("key_prefix", .string(p.keyPrefix)), ("project", .string(p.projectName)),
            ("quotas", .object(JSONObject([("active_jobs", v(p.quotas.maxActiveJobs)), ("request_burst", v(p.quotas.requestBurst)),
                                           ("requests_per_second", p.quotas.requestsPerSecond.map { .double($0) } ?? .null),
                                           ("route_bytes", v(p.quotas.maxRouteBytes))]))),
            ("scopes", .array(p.scopes.sorted().map { .string($0) })), ("valid_until", until),
        ]))
        var out: [UInt8] = []
        body.write(&out)
        return HTTPResponse(status: 200, headers: HTTPHeaders([("Content-Type", "application/json")]), body: Data(out))
    }

    /// The token of an `Authorization: Bearer <token>` value, ASCII spaces and tabs trimmed (after the
    /// 7-byte scheme; the caller checked the scheme).
    static func bearerToken(_ header: String) -> String {
        let u = Array(header.utf8.dropFirst(7))
        var a = 0, b = u.count
        while a < b && (u[a] == 0x20 || u[a] == 0x09) { a += 1 }
        while b > a && (u[b - 1] == 0x20 || u[b - 1] == 0x09) { b -= 1 }
        return String(decoding: u[a..<b], as: UTF8.self)
    }
}
