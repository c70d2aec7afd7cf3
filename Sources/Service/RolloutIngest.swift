// RolloutIngest: POST /v1/rollouts and POST /v1/rollouts/{id}/turns, read as the body streams in (a 32K-token
// rollout's routes never exist as text or int32 here). A turn extends a rollout's tokens, log-probs, loss
// mask and routes together under a prefix check, with SGLang's routed_experts_start_len semantics: the
// stored rows before start_len are kept and the new rows follow them.
import Foundation
import HTTP
import JSON
import Routes
import Store

extension HTTPBodyStream: JSONSource {
    public func lend(upTo: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Int? { try lend(max: upTo, body) }
}

/// A body source that refuses to deliver more than `limit` bytes (413), for bodies without a length.
final class LimitedSource: JSONSource {
    let inner: JSONSource
    let limit: Int
    let name: String
    var total = 0
    init(_ inner: JSONSource, limit: Int, name: String = "R3_MAX_IMPORT_BYTES") { self.inner = inner; self.limit = limit; self.name = name }
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = try inner.read(into: buffer)
        total += n
        if total > limit { throw ServiceError(413, "the body exceeds the limit of \(limit) bytes (\(name))") }
        return n
    }
    func lend(upTo: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Int? {
        let n = try inner.lend(upTo: upTo) { piece in
            if total + piece.count > limit { throw ServiceError(413, "the body exceeds the limit of \(limit) bytes (\(name))") }
            try body(piece)
        }
        total += n ?? 0
        return n
    }
}

extension App {
    func reader(_ body: HTTPBodyStream) -> JSONReader {
        JSONReader(LimitedSource(body, limit: config.maxImportBytes), window: 1 << 20)
    }

    /// Reads the top-level object of a streamed JSON body, calling `field` with each key.
    func readBody(_ r: JSONReader, _ field: (String) throws -> Void) throws {
        guard try r.peek() == .object else { throw ServiceError.unprocessable("the body must be a JSON object") }
        try r.readObject(field)
        try r.finish()
    }

    func createRollout(_ req: HTTPRequest, _ body: HTTPBodyStream, project: Int) throws -> HTTPResponse {
        let r = reader(body)
        guard try r.peek() == .object else { throw ServiceError.unprocessable("the body must be a JSON object") }
        let (row, received) = try readRollout(r, project: project)
        try r.finish()
        let id = try rollouts.insert(project: project, row)
        var reply: [String: Any] = ["id": id]
        if let p = row.routes { reply["routes"] = routesSummary(p, received: received) }
        return .json(201, reply, headers: [("Location", "/v1/rollouts/\(id)")])
    }

    /// POST /v1/rollouts:batchCreate: NDJSON (JSON Lines), one POST /v1/rollouts object per line, stored in one
    /// transaction through binary COPY while the next lines are read. All or nothing; an error names its
    /// rollout by its 0-based line index, [i].
    func createRollouts(_ req: HTTPRequest, _ body: HTTPBodyStream, project: Int) throws -> HTTPResponse {
        let r = reader(body)
        guard try !r.atEnd() else { throw ServiceError.unprocessable("the body holds no rollouts: send one JSON object per line") }
        var i = 0, routeBytes = 0, routed = 0
        let ids = try rollouts.insertBatch(project: project) {
            guard try !r.atEnd() else { return nil }
            guard i < config.maxImportRollouts else {
                throw ServiceError.unprocessable("the body holds more than \(config.maxImportRollouts) rollouts; this server stores at most that many per request (R3_MAX_IMPORT_ROLLOUTS)")
            }
            let (row, _) = try r.element(i) { () throws -> (NewRollout, IncomingRoutes?) in
                guard try r.peek() == .object else { throw ServiceError.unprocessable("[\(i)]: each line must be a JSON object (a rollout)") }
                return try readRollout(r, project: project, path: "[\(i)]")
            }
            if let p = row.routes { routeBytes += p.bytes.count; routed += 1 }
            i += 1
            return row
        }
        return .json(201, ["ids": ids, "count": ids.count, "with_routes": routed, "stored_route_bytes": routeBytes])
    }

    /// One rollout object of POST /v1/rollouts (or a line of a batch, `path` "[i]"), checked and packed.
    func readRollout(_ r: JSONReader, project: Int, path: String = "") throws -> (NewRollout, IncomingRoutes?) {
        var d = RolloutDraft()
        d.path = path
        var have: Set<String> = []
        var mask: [UInt8]?
        try r.readObject { key in
            have.insert(key)
            switch key {
            case "model": d.model = try r.string(max: 200)
            case "policy_version": d.policyVersion = try r.readNullIfPresent() ? nil : try r.int(0...Int(Int64.max / 2))
            case "token_ids": d.tokens = try r.tokenIDs(max: 4_000_000)
            case "prompt_length": d.promptLength = try r.int(0...4_000_000)
            case "logprobs": d.logprobs = try r.readNullIfPresent() ? nil : try r.logprobsOrNull(max: 4_000_000)
            case "loss_mask": mask = try r.readNullIfPresent() ? nil : try r.lossMask(max: 4_000_000)
            case "reward": d.reward = try r.optionalDouble()
            case "group_id": d.groupID = try r.readNullIfPresent() ? nil : try r.string(max: 200)
            case "metadata": d.metadata = try r.readNullIfPresent() ? JSONObject() : try r.metadataObject()
            case "routed_experts": d.routes = try r.readNullIfPresent() ? nil : try r.routes(maxValues: config.maxRouteValues)
            default:
                if try !readLayoutField(key, r, into: &d) { throw ServiceError.unprocessable("unknown field \(d.name(key))") }
            }
        }
        for f in ["model", "token_ids", "prompt_length"] where !have.contains(f) { throw ServiceError.unprocessable("\(d.name(f)) is required") }
        try checkMask(d, mask)
        var packed: PackedRoutes?
        if d.routes != nil {
            let l = try layout(d, registered: try registeredLayout(project: project, model: d.model))
            packed = try pack(d, layout: l)
        }
        return (try newRollout(d, routes: packed, lossMask: mask), d.routes)
    }

    /// A loss mask covers the response; a token without a log-prob (null) must have mask 0.
    func checkMask(_ d: RolloutDraft, _ mask: [UInt8]?) throws {
        let n = d.tokens.count - d.promptLength
        if let m = mask, m.count != n {
            throw ServiceError.unprocessable("\(d.name("loss_mask")) has \(m.count) entries; the response has \(max(0, n)) tokens")
        }
        if let lp = d.logprobs {
            guard lp.count == max(0, n) else {
                throw ServiceError.unprocessable("\(d.name("logprobs")) has \(lp.count) entries; the response has \(max(0, n)) tokens")
            }
            for (i, v) in lp.enumerated() where v.isNaN && (mask?[i] ?? 1) != 0 {
                throw ServiceError.unprocessable("\(d.name("logprobs"))[\(i)] is null: only a token with loss_mask 0 (not sampled by the policy) may lack a log-prob")
            }
        }
    }

    // MARK: turns

    func appendTurn(_ req: HTTPRequest, _ body: HTTPBodyStream, id: String, project: Int) throws -> HTTPResponse {
        // a turn of no rollout is a 404 before the body is read (the write re-checks under its lock)
        guard try rollouts.tokenCount(project: project, id: id) != nil else { throw ServiceError.notFound("rollout \(id)") }
        let r = reader(body)
        var t = TurnDraft()
        var have: Set<String> = []
        try readBody(r) { key in
            have.insert(key)
            switch key {
            case "token_ids": t.tokens = try r.tokenIDs(max: 4_000_000)
            case "response_start": t.responseStart = try r.int(0...4_000_000)
            case "logprobs": t.logprobs = try r.readNullIfPresent() ? nil : try r.logprobs(max: 4_000_000)
            case "routed_experts": t.routes = try r.readNullIfPresent() ? nil : try r.routes(maxValues: config.maxRouteValues)
            case "routed_experts_start_len": t.routesStart = try r.int(0...4_000_000)
            case "reward": t.reward = try r.optionalDouble(); t.rewardGiven = true
            case "metadata": t.metadata = try r.readNullIfPresent() ? nil : try r.metadataObject()
            default: throw ServiceError.unprocessable("unknown field \(key)")
            }
        }
        for f in ["token_ids", "response_start"] where !have.contains(f) { throw ServiceError.unprocessable("\(f) is required") }
        return try appendTurn(t, id: id, project: project)
    }

    /// Extends rollout `id` with turn `t` (shared with SGLang's append_to).
    func appendTurn(_ t: TurnDraft, id: String, project: Int) throws -> HTTPResponse {
        let outcome = try rollouts.append(project: project, id: id) { old, stored in try self.extended(old, stored, with: t) }
        guard case let .appended(record, packed) = outcome else { throw ServiceError.notFound("rollout \(id)") }
        var reply = rolloutJSON(record)
        if let p = packed { reply["routes"] = routesSummary(p, received: t.routes).merging(["url": "/v1/rollouts/\(id)/routes"]) { a, _ in a } }
        return .json(200, reply)
    }

    /// The rollout after turn `t`: tokens, log-probs (NaN for the new context tokens), loss mask and routes.
    func extended(_ old: RolloutRecord, _ stored: PackedRoutes?, with t: TurnDraft) throws -> NewRollout {
        let T0 = old.tokenIDs.count, T = t.tokens.count
        guard T > T0, Array(t.tokens[0..<T0]) == old.tokenIDs else {
            throw ServiceError(409, "\(t.name("token_ids")) must start with the rollout's \(T0) tokens and add more: the rollout changed since this turn was built, or this is another rollout's turn")
        }
        guard t.responseStart >= T0, t.responseStart <= T else {
            throw ServiceError.unprocessable("\(t.name("response_start")) must be in \(T0)...\(T) (the new turn's sampled tokens start there)")
        }
        // log-probs: both turns have them, or neither
        var logprobs: [Float]?
        switch (old.logprobs, t.logprobs) {
        case (nil, nil): logprobs = nil
        case let (a?, b?):
            guard b.count == T - t.responseStart else {
                throw ServiceError.unprocessable("\(t.name("logprobs")) has \(b.count) entries; the turn samples \(T - t.responseStart) tokens")
            }
            logprobs = a + [Float](repeating: .nan, count: t.responseStart - T0) + b
        case (nil, _?): throw ServiceError.unprocessable("\(t.name("logprobs")): the rollout has no log-probs to extend")
        case (_?, nil): throw ServiceError.unprocessable("\(t.name("logprobs")) is required: the rollout's earlier turns have log-probs")
        }
        let oldMask = old.lossMask ?? [UInt8](repeating: 1, count: T0 - old.promptLength)
        let mask = oldMask + [UInt8](repeating: 0, count: t.responseStart - T0) + [UInt8](repeating: 1, count: T - t.responseStart)
        // routes: the stored rows before start_len, then the new rows (SGLang's routed_experts_start_len)
        var routes: PackedRoutes?
        switch (stored, t.routes) {
        case (nil, nil): routes = nil
        case let (s?, incoming?):
            // rows the rollout has for tokens that went into the model: at most T0 − 1 (a T-th row, like
            // NeMo-RL's, is a placeholder for the token that never did, and the new turn must replace it)
            let known = min(s.rows, T0 - 1)
            guard t.routesStart <= known else {
                throw ServiceError.unprocessable("\(t.name("routed_experts_start_len")) \(t.routesStart) is past the \(known) rows the rollout has for tokens that went into the model: rows in between would be missing")
            }
            do { try s.verify() } catch { throw ServiceError(500, "stored routes of this rollout failed their integrity check") }
            var d = RolloutDraft(); d.tokens = t.tokens; d.routes = incoming; d.routesStart = t.routesStart; d.path = t.path
            let new = try pack(d, layout: try s.layout)!
            routes = try s.splicing(new, at: t.routesStart)
        case (nil, _?): throw ServiceError.unprocessable("\(t.name("routed_experts")): the rollout has no routes to extend")
        case (_?, nil): throw ServiceError.unprocessable("\(t.name("routed_experts")) is required: the rollout's earlier turns have routes")
        }
        var metadata = (try? JSONReader.parse(Array(old.metadataJSON.utf8)).objectValue) ?? JSONObject()
        if let m = t.metadata { for k in m.keys { metadata.append(k, m[k]!) } }
        return NewRollout(model: old.model, policyVersion: old.policyVersion, tokenIDs: t.tokens, promptLength: old.promptLength,
                          logprobs: logprobs, reward: t.rewardGiven ? t.reward : old.reward, groupID: old.groupID,
                          metadataJSON: JSONValue.object(metadata).jsonText, routes: routes,
                          lossMask: mask.allSatisfy({ $0 == 1 }) ? nil : mask, turns: old.turns + 1)
    }
}

/// The next turn of a rollout: the whole conversation so far, where its sampled tokens start, their
/// log-probs and the routes from `routesStart` on.
struct TurnDraft {
    var tokens: [Int32] = []
    var responseStart = 0
    var logprobs: [Float]?
    var routes: IncomingRoutes?
    var routesStart = 0
    var reward: Double?
    var rewardGiven = false
    var metadata: JSONObject?
    var path = ""
    func name(_ field: String) -> String { path.isEmpty ? field : "\(path).\(field)" }
}

extension JSONReader {
    /// Log-probs where null marks a token without one (NaN).
    func logprobsOrNull(max: Int) throws -> [Float] {
        guard try peek() == .array else { throw content("must be a list of numbers") }
        var out: [Float] = []
        try readArray { i in
            guard i < max else { throw content("has more than \(max) entries") }
            out.append(try readNullIfPresent() ? .nan : try logprob())
        }
        return out
    }
    /// 0/1 per response token.
    func lossMask(max: Int) throws -> [UInt8] {
        guard try peek() == .array else { throw content("must be a list of 0 and 1") }
        var out: [UInt8] = []
        try readArray { i in
            guard i < max else { throw content("has more than \(max) entries") }
            out.append(UInt8(try readInt(in: 0...1)))
        }
        return out
    }
}
