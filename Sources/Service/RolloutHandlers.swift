// RolloutHandlers: store, read, list and delete rollouts, and serve their routes in the formats
// trainers already use. Bad input is rejected before anything is written.
import Foundation
import HTTP
import Routes
import Store

extension App {
    func jsonBody(_ req: HTTPRequest) throws -> [String: Any] {
        let ct = (req.headers["Content-Type"] ?? "").lowercased()
        guard ct.hasPrefix("application/json") else { throw ServiceError(415, "expected Content-Type: application/json") }
        guard let obj = try? JSONSerialization.jsonObject(with: req.body), let dict = obj as? [String: Any] else {
            throw ServiceError.badRequest("the body is not a JSON object")
        }
        return dict
    }

    func createRollout(_ req: HTTPRequest, project: Int) throws -> HTTPResponse {
        let o = try jsonBody(req)
        let f = Fields(o)
        let model = try f.string("model", required: true, max: 200)!
        let policy = try f.int("policy_version", range: 0...Int(Int64.max / 2)) ?? 0
        let tokens = try f.intList("token_ids", required: true)!.map(Int32.init)
        guard !tokens.isEmpty, tokens.count <= 4_000_000 else { throw ServiceError.unprocessable("token_ids must have 1 to 4000000 entries") }
        let promptLen = try f.int("prompt_length", range: 0...tokens.count, required: true)!
        let logprobs = try f.numberList("logprobs").map { $0.map(Float.init) }
        if let lp = logprobs, lp.count != tokens.count - promptLen {
            throw ServiceError.unprocessable("logprobs has \(lp.count) entries; the response has \(tokens.count - promptLen) tokens")
        }
        let reward = try f.number("reward")
        let group = try f.string("group_id", max: 200)
        var metadata = "{}"
        if let m = o["metadata"], !(m is NSNull) {
            guard m is [String: Any] else { throw ServiceError.unprocessable("metadata must be an object") }
            let d = try JSONSerialization.data(withJSONObject: m, options: [.sortedKeys])
            guard d.count <= 64 * 1024 else { throw ServiceError.unprocessable("metadata is larger than 64 KiB") }
            metadata = String(decoding: d, as: UTF8.self)
        }
        var packed: PackedRoutes?
        if let re = o["routed_experts"], !(re is NSNull) {
            guard let experts = try f.int("num_experts", range: 1...65_535) else {
                throw ServiceError.unprocessable("num_experts is required with routed_experts")
            }
            do {   // the body is valid JSON: whatever is wrong with the routes is wrong content (422)
                let routes = try RouteCodec.decode(json: re, numExperts: experts)
                guard routes.count <= config.maxRouteValues else { throw ServiceError(413, "routed_experts has more than \(config.maxRouteValues) values") }
                try routes.validate(numExperts: experts, tokens: tokens.count)
                packed = try PackedRoutes(routes, numExperts: experts)
            } catch let e as RoutesError {
                throw ServiceError.unprocessable("routed_experts: \(e)")
            }
        }
        let id = try rollouts.insert(project: project, NewRollout(
            model: model, policyVersion: policy, tokenIDs: tokens, promptLength: promptLen, logprobs: logprobs, reward: reward,
            groupID: group, metadataJSON: metadata, routes: packed))
        var body: [String: Any] = ["id": id]
        if let p = packed { body["routes"] = ["shape": [p.rows, p.layers, p.topK], "num_experts": p.numExperts, "stored_bytes": p.bytes.count] }
        return .json(201, body, headers: [("Location", "/v1/rollouts/\(id)")])
    }

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
        o["reward"] = r.reward ?? NSNull()
        o["group_id"] = r.groupID ?? NSNull()
        if let s = r.routesShape {
            o["routes"] = ["shape": Array(s.prefix(3)), "num_experts": s[3], "url": "/v1/rollouts/\(r.id)/routes"]
        } else { o["routes"] = NSNull() }
        return o
    }

    func getRollout(_ id: String, project: Int) throws -> HTTPResponse {
        guard let r = try rollouts.get(project: project, id: id) else { throw ServiceError.notFound("rollout \(id)") }
        return .json(200, rolloutJSON(r))
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
        let rows = try rollouts.list(project: project, model: q["model"], policyVersion: pv, job: q["job_id"], after: cursor, limit: limit + 1)
        let page = rows.prefix(limit)
        let next: Any = rows.count > limit ? String(page.last!.seq) : NSNull()
        return .json(200, ["data": page.map(rolloutJSON), "next_cursor": next])
    }

    func deleteRollout(_ id: String, project: Int) throws -> HTTPResponse {
        guard try rollouts.delete(project: project, id: id) else { throw ServiceError.notFound("rollout \(id)") }
        return HTTPResponse(status: 204)
    }

    // MARK: routes

    enum Format: String { case json, npy, raw, base64, nemo }

    func format(_ req: HTTPRequest) throws -> Format {
        if let f = req.query["format"] {
            guard let v = Format(rawValue: f) else { throw ServiceError.badRequest("format must be json, npy, raw, base64 or nemo") }
            return v
        }
        let accept = (req.headers["Accept"] ?? "*/*").lowercased()
        if accept.contains("application/x-npy") { return .npy }
        if accept.contains("application/octet-stream") { return .raw }
        if accept.contains("application/json") || accept.contains("*/*") || accept.isEmpty { return .json }
        throw ServiceError(406, "routes are served as application/json, application/x-npy or application/octet-stream")
    }

    func dtype(_ req: HTTPRequest, default d: IntDType = .int32) throws -> IntDType {
        guard let s = req.query["dtype"] else { return d }
        guard let v = IntDType(rawValue: s) else { throw ServiceError.badRequest("dtype must be int32, int16, int8, uint8 or uint16") }
        return v
    }

    func rowRange(_ q: [String: String], rows: Int) throws -> Range<Int>? {
        if q["start"] == nil && q["end"] == nil { return nil }
        guard let s = Int(q["start"] ?? "0"), let e = Int(q["end"] ?? String(rows)), 0 <= s, s <= e, e <= rows else {
            throw ServiceError.badRequest("start and end must satisfy 0 <= start <= end <= \(rows)")
        }
        return s..<e
    }

    /// Encodes routes in a format; returns body, content type and extra headers.
    func encode(_ r: RouteArray, _ f: Format, _ dt: IntDType, experts: Int) throws -> (Data, String, [(String, String)]) {
        do {
            switch f {
            case .json:
                let obj: [String: Any] = ["shape": r.shape, "dtype": dt.rawValue, "num_experts": experts, "routed_experts": RouteCodec.lists(r)]
                _ = try dt.encode(r.ids, numExperts: experts)   // the same range checks as the binary forms
                return (try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), "application/json", [])
            case .base64:
                var o = try RouteCodec.base64Object(r, dtype: dt, numExperts: experts); o["num_experts"] = experts
                return (try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]), "application/json", [])
            case .nemo:
                let o: [String: Any] = ["routed_experts": try RouteCodec.envelope(r, dtype: dt, numExperts: experts), "num_experts": experts]
                return (try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys, .withoutEscapingSlashes]), "application/json", [])
            case .npy:
                return (try RouteCodec.npy(r, dtype: dt, numExperts: experts), "application/x-npy", [])
            case .raw:
                return (try RouteCodec.raw(r, dtype: dt, numExperts: experts), "application/octet-stream",
                        [("X-R3-Shape", r.shape.map(String.init).joined(separator: ",")), ("X-R3-Dtype", dt.rawValue)])
            }
        } catch let e as RoutesError {
            throw ServiceError.unprocessable("routes cannot be served as \(dt.rawValue): \(e)")
        }
    }

    func getRoutes(_ req: HTTPRequest, id: String, project: Int) throws -> HTTPResponse {
        let f = try format(req), dt = try dtype(req)
        guard let p = try rollouts.routes(project: project, id: id) else { throw ServiceError.notFound("routes of rollout \(id)") }
        let range = try rowRange(req.query, rows: p.rows)
        let etag = "\"\(String(p.checksum, radix: 16))-\(p.rows)-\(f.rawValue)-\(dt.rawValue)-\(range.map { "\($0.lowerBound)-\($0.upperBound)" } ?? "all")\""
        if let inm = req.headers["If-None-Match"], inm.split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == etag || $0.trimmingCharacters(in: .whitespaces) == "*" }) {
            return HTTPResponse(status: 304, headers: HTTPHeaders([("ETag", etag)]))
        }
        // Fast path: bytes of the requested dtype straight from the packed form (as stored for the
        // matching unsigned width; widened in one pass for int32 / int16).
        let direct: IntDType? = p.width == 1 ? .uint8 : .uint16
        var fast: Data?
        if range == nil, f != .json {
            do {
                if dt == direct {
                    guard CRC32C.checksum(p.bytes) == p.checksum else { throw RoutesError.malformed("checksum") }
                    fast = p.bytes
                } else {
                    fast = try p.encoded(as: dt)
                }
            } catch { throw ServiceError(500, "stored routes of rollout \(id) failed their integrity check") }
        }
        if let bytes = fast {
            let shape = [p.rows, p.layers, p.topK]
            let body: Data, ct: String
            var extra: [(String, String)] = []
            switch f {
            case .npy: body = NPY.encode(NPYArray(dtype: dt.npy, shape: shape, bytes: bytes)); ct = "application/x-npy"
            case .raw: body = bytes; ct = "application/octet-stream"; extra = [("X-R3-Shape", shape.map(String.init).joined(separator: ",")), ("X-R3-Dtype", dt.rawValue)]
            case .base64:
                body = try JSONSerialization.data(withJSONObject: ["dtype": dt.rawValue, "shape": shape, "data": bytes.base64EncodedString(), "num_experts": p.numExperts], options: [.sortedKeys])
                ct = "application/json"
            default:
                body = try JSONSerialization.data(withJSONObject: ["routed_experts": "nrlre1:\(dt.rawValue):\(p.rows)x\(p.layers)x\(p.topK):" + bytes.base64EncodedString(), "num_experts": p.numExperts], options: [.sortedKeys, .withoutEscapingSlashes])
                ct = "application/json"
            }
            var h = HTTPHeaders([("Content-Type", ct), ("ETag", etag), ("Cache-Control", "private, max-age=0, must-revalidate")])
            for (n, v) in extra { h.set(n, v) }
            return HTTPResponse(status: 200, headers: h, body: body)
        }
        var routes: RouteArray
        do { routes = try p.unpack() } catch { throw ServiceError(500, "stored routes of rollout \(id) failed their integrity check") }
        if let r = range { routes = try routes.rows(r) }
        let (body, ct, extra) = try encode(routes, f, dt, experts: p.numExperts)
        var h = HTTPHeaders([("Content-Type", ct), ("ETag", etag), ("Cache-Control", "private, max-age=0, must-revalidate")])
        for (n, v) in extra { h.set(n, v) }
        return HTTPResponse(status: 200, headers: h, body: body)
    }

    func putRoutes(_ req: HTTPRequest, id: String, project: Int) throws -> HTTPResponse {
        let q = req.query
        guard let es = q["num_experts"] ?? req.headers["X-R3-Num-Experts"], let experts = Int(es), (1...65_535).contains(experts) else {
            throw ServiceError.badRequest("num_experts (query or X-R3-Num-Experts header) must be an integer in 1...65535")
        }
        let ct = (req.headers["Content-Type"] ?? "").lowercased()
        let routes: RouteArray
        if ct.hasPrefix("application/x-npy") {
            routes = try RouteCodec.decode(npy: req.body, numExperts: experts)
        } else if ct.hasPrefix("application/octet-stream") {
            guard let shapeText = q["shape"] ?? req.headers["X-R3-Shape"] else {
                throw ServiceError.badRequest("octet-stream routes need shape=T,L,K (query or X-R3-Shape header)")
            }
            let shape = shapeText.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard shape.count == 3, shape.allSatisfy({ $0 >= 0 }) else { throw ServiceError.badRequest("shape must be three non-negative integers T,L,K") }
            let dt = try IntDType(rawValue: q["dtype"] ?? req.headers["X-R3-Dtype"] ?? "int32").unwrap("dtype must be int32, int16, int8, uint8 or uint16")
            routes = try RouteCodec.decode(raw: req.body, dtype: dt, shape: shape, numExperts: experts)
        } else {
            throw ServiceError(415, "routes are uploaded as application/x-npy or application/octet-stream")
        }
        guard routes.count <= config.maxRouteValues else { throw ServiceError(413, "routes have more than \(config.maxRouteValues) values") }
        guard let tokens = try rollouts.tokenCount(project: project, id: id) else { throw ServiceError.notFound("rollout \(id)") }
        try routes.validate(numExperts: experts, tokens: tokens)
        let packed = try PackedRoutes(routes, numExperts: experts)
        guard try rollouts.putRoutes(project: project, id: id, packed) else { throw ServiceError.notFound("rollout \(id)") }
        return .json(200, ["id": id, "shape": routes.shape, "num_experts": experts, "stored_bytes": packed.bytes.count])
    }

    func batchGet(_ req: HTTPRequest, project: Int) throws -> HTTPResponse {
        let o = try jsonBody(req)
        let f = Fields(o)
        guard let ids = o["ids"] as? [Any], !ids.isEmpty, ids.count <= 1000, ids.allSatisfy({ $0 is String }) else {
            throw ServiceError.unprocessable("ids must be a list of 1 to 1000 rollout ids")
        }
        let fmt = try f.string("format", max: 10) ?? "npz"
        guard fmt == "npz" || fmt == "json" else { throw ServiceError.unprocessable("format must be npz or json") }
        let dt = try IntDType(rawValue: try f.string("dtype", max: 10) ?? "int32").unwrap("dtype must be int32, int16, int8, uint8 or uint16")
        let start = try f.int("start", range: 0...Int(Int32.max)), end = try f.int("end", range: 0...Int(Int32.max))
        var files: [(String, Data)] = []
        var json: [String: Any] = [:]
        var total = 0
        for case let id as String in ids {
            guard let p = try rollouts.routes(project: project, id: id) else { throw ServiceError.notFound("routes of rollout \(id)") }
            var r: RouteArray
            do { r = try p.unpack() } catch { throw ServiceError(500, "stored routes of rollout \(id) failed their integrity check") }
            if start != nil || end != nil {
                let s = start ?? 0, e = min(end ?? r.rows, r.rows)
                guard s <= e else { throw ServiceError.unprocessable("start must not exceed end") }
                r = try r.rows(min(s, r.rows)..<e)
            }
            total += r.count * dt.size
            guard total <= 1 << 30 else { throw ServiceError(413, "the batch would exceed 1 GiB; ask for fewer rollouts") }
            if fmt == "npz" {
                files.append(("\(id).npy", try encode(r, .npy, dt, experts: p.numExperts).0))
            } else {
                var b = try RouteCodec.base64Object(r, dtype: dt, numExperts: p.numExperts); b["num_experts"] = p.numExperts
                json[id] = b
            }
        }
        if fmt == "json" { return .json(200, ["routes": json]) }
        return HTTPResponse(status: 200, headers: HTTPHeaders([("Content-Type", "application/zip"),
                                                               ("Content-Disposition", "attachment; filename=\"routes.npz\"")]),
                            body: Zip.stored(files))
    }
}

extension Optional {
    func unwrap(_ message: String) throws -> Wrapped {
        guard let v = self else { throw ServiceError.unprocessable(message) }
        return v
    }
}

/// Typed access to JSON request fields with 422s that name the field.
struct Fields {
    let o: [String: Any]
    init(_ o: [String: Any]) { self.o = o }
    func present(_ k: String) -> Any? { guard let v = o[k], !(v is NSNull) else { return nil }; return v }
    static func isBool(_ v: Any) -> Bool { String(describing: type(of: v)).contains("Bool") }

    func string(_ k: String, required: Bool = false, max: Int) throws -> String? {
        guard let v = present(k) else { if required { throw ServiceError.unprocessable("\(k) is required") }; return nil }
        guard let s = v as? String, !s.isEmpty, s.count <= max else { throw ServiceError.unprocessable("\(k) must be a string of 1 to \(max) characters") }
        return s
    }
    func int(_ k: String, range: ClosedRange<Int>, required: Bool = false) throws -> Int? {
        guard let v = present(k) else { if required { throw ServiceError.unprocessable("\(k) is required") }; return nil }
        guard let n = v as? NSNumber, !Fields.isBool(v), let i = Int(exactly: n.doubleValue), range.contains(i) else {
            throw ServiceError.unprocessable("\(k) must be an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return i
    }
    func number(_ k: String) throws -> Double? {
        guard let v = present(k) else { return nil }
        guard let n = v as? NSNumber, !Fields.isBool(v), n.doubleValue.isFinite else { throw ServiceError.unprocessable("\(k) must be a finite number") }
        return n.doubleValue
    }
    func intList(_ k: String, required: Bool = false) throws -> [Int]? {
        guard let v = present(k) else { if required { throw ServiceError.unprocessable("\(k) is required") }; return nil }
        guard let l = v as? [Any] else { throw ServiceError.unprocessable("\(k) must be a list of integers") }
        return try l.enumerated().map { i, x in
            guard let n = x as? NSNumber, !Fields.isBool(x), let v = Int(exactly: n.doubleValue), v >= 0, v <= Int(Int32.max) else {
                throw ServiceError.unprocessable("\(k)[\(i)] must be an integer in 0...\(Int32.max)")
            }
            return v
        }
    }
    func numberList(_ k: String) throws -> [Double]? {
        guard let v = present(k) else { return nil }
        guard let l = v as? [Any] else { throw ServiceError.unprocessable("\(k) must be a list of numbers") }
        return try l.enumerated().map { i, x in
            guard let n = x as? NSNumber, !Fields.isBool(x), n.doubleValue.isFinite else { throw ServiceError.unprocessable("\(k)[\(i)] must be a finite number") }
            return n.doubleValue
        }
    }
}
