// RolloutHandlers: read, list and delete rollouts (writes: RolloutIngest, EngineImport; routes: RouteHandlers).
import Foundation
import HTTP
import Routes
import Store

extension App {
    /// `limit` (1...500, default 50) and `cursor` (a seq this server issued) of a list request.
    func page(_ q: [String: String]) throws -> (limit: Int, cursor: Int) {
        let limit = try q["limit"].map { v -> Int in
            guard let n = Int(v), (1...500).contains(n) else { throw ServiceError.badRequest("limit must be an integer in 1...500") }
            return n
        } ?? 50
        let cursor = try q["cursor"].map { v -> Int in
            guard let n = Int(v), n >= 0 else { throw ServiceError.badRequest("cursor is not one this server issued") }
            return n
        } ?? 0
        return (limit, cursor)
    }

    func rolloutJSON(_ r: RolloutRecord) -> [String: Any] {
        var o: [String: Any] = ["id": r.id, "model": r.model, "policy_version": r.policyVersion, "token_ids": r.tokenIDs,
                                "prompt_length": r.promptLength, "created_at": r.createdAt,
                                "metadata": (try? JSONSerialization.jsonObject(with: Data(r.metadataJSON.utf8))) ?? [:]]
        o["logprobs"] = r.logprobs.map { $0.map { $0.isFinite ? (Double("\($0)") ?? Double($0)) as Any : NSNull() } } ?? NSNull()   // shortest float32 text
        o["loss_mask"] = r.lossMask.map { $0.map(Int.init) } ?? NSNull()
        o["turns"] = r.turns
        o["reward"] = r.reward ?? NSNull()
        o["group_id"] = r.groupID ?? NSNull()
        if let s = r.routesShape {
            o["routes"] = ["shape": Array(s.prefix(3)), "num_experts": s[3], "num_hidden_layers": r.routesHiddenLayers ?? s[1],
                           "moe_layers": r.routesMoELayers ?? Array(0..<s[1]), "url": "/v1/rollouts/\(r.id)/routes"]
        } else { o["routes"] = NSNull() }
        o["routes_expired"] = r.routesExpired
        return o
    }

    func getRollout(_ req: HTTPRequest, _ id: String, project: Int) throws -> HTTPResponse {
        let (found, from) = try readByID(req, project: project) { try $0.get(project: project, id: id) }
        guard let r = found else { throw ServiceError.notFound("rollout \(id)") }
        var resp = HTTPResponse.json(200, rolloutJSON(r))
        resp.headers.set("R3-Read-From", from)
        return resp
    }

    func listRollouts(_ req: HTTPRequest, project: Int) throws -> HTTPResponse {
        let q = req.query
        let (limit, cursor) = try page(q)
        let pv = try q["policy_version"].map { v -> Int in
            guard let n = Int(v), n >= 0, n <= Int(Int64.max / 2) else { throw ServiceError.badRequest("policy_version must be an integer in 0...\(Int64.max / 2)") }
            return n
        }
        if let m = q["model"], m.count > 200 { throw ServiceError.badRequest("model is longer than 200 characters") }
        if let j = q["job_id"], UUID(uuidString: j) == nil { throw ServiceError.badRequest("job_id must be a job id (a UUID)") }
        let (rows, from) = try readRollouts(req, project: project) {
            try $0.list(project: project, model: q["model"], policyVersion: pv, job: q["job_id"], after: cursor, limit: limit + 1)
        }
        let page = rows.prefix(limit)
        let next: Any = rows.count > limit ? String(page.last!.seq) : NSNull()
        var resp = HTTPResponse.json(200, ["data": page.map(rolloutJSON), "next_cursor": next])
        resp.headers.set("R3-Read-From", from)
        return resp
    }

    func deleteRollout(_ id: String, project: Int) throws -> HTTPResponse {
        guard try rollouts.delete(project: project, id: id) else { throw ServiceError.notFound("rollout \(id)") }
        return HTTPResponse(status: 204)
    }

}
