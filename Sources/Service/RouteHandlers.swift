// RouteHandlers: a rollout's routes served in the layout each reader takes unchanged, uploaded as .npy or
// raw bytes, and fetched for many rollouts at once (.npz, JSON, verl's padded batch, Megatron's packed
// tokens). Each peer's form follows its own code (cited in Tests/service/peers/).
//   nemo      NeMo-RL routed_experts_codec.py: "nrlre1:<int8|int16|int32>:SxLxK:<base64>", signed only, narrowest
//             by default; T rows for T tokens, the last (never forwarded) row arange(K); MoE layers.
//   slime     slime/utils/types.py _apply_meta_info: base64 of int32 [T−1, num_layers, K], every decoder layer.
//   megatron  megatron/core/transformer/moe/router_replay.py set_replay_data: one int64 [tokens, K] per MoE
//             router in layer order; tokens = T (the training forward's input), the last row arange(K).
//   verl      verl/experimental/agent_loop/agent_loop.py: [B, P+R, num_layers, K], prompts left-padded to P and
//             responses right-padded to R, row i at the position of token i; every decoder layer.
import Foundation
import HTTP
import JSON
import Routes
import Store

extension App {
    /// Route bodies of this many bytes or more go as one chunk: Python requests reads them faster so
    /// (`HTTPResponse.oneChunk`).
    static let oneChunkFrom = 1 << 20

    enum RouteFormat: String, CaseIterable { case json, npy, raw, base64, nemo, slime, megatron }

    /// The format: ?format=, else negotiated from Accept (q=0 refuses a type).
    func routeFormat(_ req: HTTPRequest) throws -> RouteFormat {
        if let f = req.query["format"] {
            guard let v = RouteFormat(rawValue: f) else { throw ServiceError.badRequest("format must be one of \(RouteFormat.allCases.map(\.rawValue).joined(separator: ", "))") }
            return v
        }
        switch negotiate(req.headers["Accept"], offered: ["application/json", "application/x-npy", "application/octet-stream"]) {
        case "application/x-npy"?: return .npy
        case "application/octet-stream"?: return .raw
        case "application/json"?: return .json
        default: throw ServiceError(406, "routes are served as application/json, application/x-npy or application/octet-stream")
        }
    }

    /// How the routes of `p` are served in `format`, from the query: dtype, layout, pad, rows.
    func routeOutput(_ q: [String: String], _ format: RouteFormat, _ p: PackedRoutes, tokens: Int) throws -> RouteOutput {
        var o = RouteOutput()
        if let s = q["layout"] {
            guard let l = RouteOutput.Layers(rawValue: s) else { throw ServiceError.badRequest("layout must be moe_only or all_layers") }
            o.layers = l
        }
        if let s = q["pad"] {
            guard s == "0" || s == "-1" else { throw ServiceError.badRequest("pad must be 0 or -1 (a dense layer's row in layout=all_layers)") }
            o.pad = Int32(s)!
        }
        var dtype: IntDType?
        if let s = q["dtype"] {
            guard let d = IntDType(rawValue: s) else { throw ServiceError.badRequest("dtype must be one of int64, int32, int16, int8, uint8, uint16") }
            dtype = d
        }
        if q["start"] != nil || q["end"] != nil {
            guard format != .nemo && format != .megatron && format != .slime else {
                throw ServiceError.badRequest("start and end select rows of the stored routes; \(format.rawValue) serves the whole sequence")
            }
            guard let s = Int(q["start"] ?? "0"), let e = Int(q["end"] ?? String(p.rows)), 0 <= s, s <= e, e <= p.rows else {
                throw ServiceError.badRequest("start and end must satisfy 0 <= start <= end <= \(p.rows)")
            }
            o.rows = s..<e
        }
        switch format {
        case .nemo:
            // NeMo-RL: signed dtypes only, the narrowest that holds the ids and -1 by default; T rows
            if let d = dtype, ![.int8, .int16, .int32].contains(d) {
                throw ServiceError.unprocessable("dtype: NeMo-RL's codec reads int8, int16 or int32 only")
            }
            o.dtype = dtype ?? (p.numExperts <= 128 ? .int8 : p.numExperts <= 32_768 ? .int16 : .int32)
            if p.rows == tokens { o.finalRow = false } else { o.finalRow = true }
        case .slime:
            if let d = dtype, d != .int32 { throw ServiceError.unprocessable("dtype: slime decodes int32 only") }
            if q["layout"] != nil && o.layers != .allLayers { throw ServiceError.unprocessable("layout: slime reads every decoder layer (all_layers)") }
            o.dtype = .int32; o.layers = .allLayers
            if p.rows == tokens { o.rows = 0..<(tokens - 1) }
        case .megatron:
            if let d = dtype, d != .int64 { throw ServiceError.unprocessable("dtype: Megatron's RouterReplay takes int64 indices") }
            if q["layout"] != nil && o.layers != .moeOnly { throw ServiceError.unprocessable("layout: Megatron has one router per MoE layer (moe_only)") }
            o.dtype = .int64; o.layers = .moeOnly
            o.finalRow = p.rows != tokens
        default:
            o.dtype = dtype ?? .int32
        }
        return o
    }

    /// A strong validator over everything that changes the bytes served: the stored data (CRC), its
    /// shape, expert count and layout, the token count, and every output choice.
    func routesETag(_ p: PackedRoutes, tokens: Int, _ format: RouteFormat, _ o: RouteOutput, extra: String = "") -> String {
        let d = "\(p.checksum)|\(p.rows)x\(p.layers)x\(p.topK)|E\(p.numExperts)|H\(p.hiddenLayers)|\(p.moeLayers)|T\(tokens)|\(format.rawValue)|\(o.dtype.rawValue)|\(o.layers.rawValue)|\(o.pad)|\(o.rows.map { "\($0.lowerBound)-\($0.upperBound)" } ?? "all")|\(o.finalRow)|\(extra)"
        return "\"\(String(CRC32C.checksum(Data(d.utf8)), radix: 16))-\(String(p.checksum, radix: 16))\""
    }

    func getRoutes(_ req: HTTPRequest, id: String, project: Int) throws -> HTTPResponse {
        let format = try routeFormat(req)
        let (found, from) = try readByID(req, project: project) { try $0.routesAndTokens(project: project, id: id) }
        guard let (p, tokens) = found else { throw try routesGone(id, project: project) }
        let o = try routeOutput(req.query, format, p, tokens: tokens)
        let container = req.query["container"] ?? "npz"
        guard format == .megatron || req.query["container"] == nil else { throw ServiceError.badRequest("container applies to format=megatron") }
        guard container == "npz" || container == "safetensors" else { throw ServiceError.badRequest("container must be npz or safetensors") }
        let etag = routesETag(p, tokens: tokens, format, o, extra: container)
        if let inm = req.headers["If-None-Match"], inm.split(separator: ",").contains(where: { let t = $0.trimmingCharacters(in: .whitespaces); return t == etag || t == "*" }) {
            return HTTPResponse(status: 304, headers: HTTPHeaders([("ETag", etag)]))
        }
        var h = HTTPHeaders([("ETag", etag), ("Cache-Control", "private, max-age=0, must-revalidate"), ("R3-Read-From", from)])
        if format == .megatron {
            let (body, ct, _) = try encodeRoutes(p, format, o, container: container, id: id)
            h.set("Content-Type", ct)
            var r = HTTPResponse(status: 200, headers: h, body: body)
            r.oneChunk = body.count >= App.oneChunkFrom
            return r
        }
        let (source, ct, extra) = try streamRoutes(p, format, o, id: id)
        h.set("Content-Type", ct)
        for (n, v) in extra { h.set(n, v) }
        var r = HTTPResponse(status: 200, headers: h)
        r.source = source
        r.oneChunk = source.length >= App.oneChunkFrom
        return r
    }

    /// One rollout's routes in `format` as a body written while the client reads it (every format but
    /// Megatron's archive). Checked whole first: a response that starts is one that can finish.
    func streamRoutes(_ p: PackedRoutes, _ format: RouteFormat, _ o: RouteOutput, id: String) throws -> (RoutesSource, String, [(String, String)]) {
        do { try p.verify() } catch { throw ServiceError(500, "stored routes of rollout \(id) failed their integrity check") }
        do { try p.check(o) } catch let e as RoutesError { throw ServiceError.unprocessable("routes cannot be served as \(o.dtype.rawValue): \(e)") }
        let shape = p.shape(o)
        let layout = o.layers.rawValue
        func head(_ small: [String: Any], key: String, prefix: String = "") throws -> Data {
            var out = try JSONSerialization.data(withJSONObject: small, options: [.sortedKeys, .withoutEscapingSlashes])
            out.removeLast()   // "}"
            out.append(contentsOf: Array("\(small.isEmpty ? "" : ",")\"\(key)\":\(prefix)".utf8))
            return out
        }
        let quoted = Data("\"}".utf8)
        switch format {
        case .json:
            // routed_experts last, so a streaming reader has the shape before the ids
            return (try RoutesSource(p, o, text: .lists, prefix: try head(["shape": shape, "dtype": o.dtype.rawValue, "num_experts": p.numExperts, "layout": layout],
                                                                          key: "routed_experts"), suffix: Data("}".utf8)), "application/json", [])
        case .base64:
            return (try RoutesSource(p, o, text: .base64, prefix: try head(["dtype": o.dtype.rawValue, "shape": shape, "num_experts": p.numExperts, "layout": layout],
                                                                           key: "data", prefix: "\""), suffix: quoted), "application/json", [])
        case .nemo:
            return (try RoutesSource(p, o, text: .base64, prefix: try head(["num_experts": p.numExperts], key: "routed_experts",
                                                                           prefix: "\"nrlre1:\(o.dtype.rawValue):\(shape[0])x\(shape[1])x\(shape[2]):"),
                                     suffix: quoted), "application/json", [])
        case .slime:
            return (try RoutesSource(p, o, text: .base64, prefix: try head(["shape": shape, "dtype": "int32", "num_experts": p.numExperts],
                                                                           key: "routed_experts", prefix: "\""), suffix: quoted), "application/json", [])
        case .npy:
            return (try RoutesSource(p, o, text: .raw, prefix: NPY.encodeHeader(dtype: o.dtype.npy, shape: shape)), "application/x-npy", [])
        case .raw:
            return (try RoutesSource(p, o, text: .raw), "application/octet-stream",
                    [("X-R3-Shape", shape.map(String.init).joined(separator: ",")), ("X-R3-Dtype", o.dtype.rawValue), ("X-R3-Layout", layout)])
        case .megatron:
            throw ServiceError(500, "Megatron's archive is not streamed")
        }
    }

    /// The bytes of one rollout's routes in `format`.
    func encodeRoutes(_ p: PackedRoutes, _ format: RouteFormat, _ o: RouteOutput, container: String = "npz", id: String) throws -> (Data, String, [(String, String)]) {
        let bytes: Data
        do { try p.verify() } catch { throw ServiceError(500, "stored routes of rollout \(id) failed their integrity check") }
        // JSON lists carry the ids themselves (-1 for missing); their dtype only bounds the ids
        var enc = o
        if format == .json { enc.dtype = .int32 }
        do { try p.check(o); bytes = format == .megatron ? Data() : try p.encode(enc, verified: true) } catch let e as RoutesError {
            throw ServiceError.unprocessable("routes cannot be served as \(o.dtype.rawValue): \(e)")
        }
        let shape = p.shape(o)
        let layout = o.layers.rawValue
        func json(_ obj: [String: Any]) throws -> Data { try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes]) }
        switch format {
        case .json:
            let ids = bytes.withUnsafeBytes { raw -> [[[Int]]] in
                func v(_ i: Int) -> Int { Int(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self))) }
                return (0..<shape[0]).map { t in (0..<shape[1]).map { l in (0..<shape[2]).map { k in v((t * shape[1] + l) * shape[2] + k) } } }
            }
            return (try json(["shape": shape, "dtype": o.dtype.rawValue, "num_experts": p.numExperts, "layout": layout, "routed_experts": ids]), "application/json", [])
        case .base64:
            return (try jsonObject(["dtype": o.dtype.rawValue, "shape": shape, "num_experts": p.numExperts, "layout": layout], key: "data", base64: bytes),
                    "application/json", [])
        case .nemo:
            return (try jsonObject(["num_experts": p.numExperts], key: "routed_experts", prefix: "nrlre1:\(o.dtype.rawValue):\(shape[0])x\(shape[1])x\(shape[2]):",
                                   base64: bytes), "application/json", [])
        case .slime:
            return (try jsonObject(["shape": shape, "dtype": "int32", "num_experts": p.numExperts], key: "routed_experts", base64: bytes),
                    "application/json", [])
        case .npy:
            return (NPY.encode(NPYArray(dtype: o.dtype.npy, shape: shape, bytes: bytes)), "application/x-npy", [])
        case .raw:
            return (bytes, "application/octet-stream", [("X-R3-Shape", shape.map(String.init).joined(separator: ",")), ("X-R3-Dtype", o.dtype.rawValue),
                                                        ("X-R3-Layout", layout)])
        case .megatron:
            let layers = try p.encodeLayersInt64(finalRow: o.finalRow)
            let arrays = zip(p.moeLayers, layers).map { (name: String(format: "layer_%03d", $0), shape: [shape[0], shape[2]], data: $1) }
            if container == "safetensors" { return (Safetensors.int64(arrays), "application/octet-stream", []) }
            return (Zip.stored(arrays.map { ("\($0.name).npy", NPY.encode(NPYArray(dtype: .int64, shape: $0.shape, bytes: $0.data))) }), "application/zip", [])
        }
    }

    /// int64 [tokens, L, K] split into one [tokens, K] array per MoE layer, named by hidden layer index so
    /// that sorted names are Megatron's router order.
    static func perLayer(_ bytes: Data, shape: [Int], moeLayers: [Int]) -> [(name: String, shape: [Int], data: Data)] {
        let (T, L, K) = (shape[0], shape[1], shape[2])
        return (0..<L).map { l in
            var d = Data(count: T * K * 8)
            d.withUnsafeMutableBytes { dst in
                bytes.withUnsafeBytes { src in
                    for t in 0..<T { (dst.baseAddress! + t * K * 8).copyMemory(from: src.baseAddress! + ((t * L + l) * K) * 8, byteCount: K * 8) }
                }
            }
            return (String(format: "layer_%03d", moeLayers[l]), [T, K], d)
        }
    }

    // MARK: upload

    /// PUT /v1/rollouts/{id}/routes: a .npy file or raw little-endian elements (shape and dtype in the query
    /// or headers), read as the body streams in: the ids go to the packed form as they arrive, and a raw
    /// body whose length does not match its shape is refused before it is read.
    func putRoutes(_ req: HTTPRequest, _ body: HTTPBodyStream, id: String, project: Int) throws -> HTTPResponse {
        let q = req.query
        guard let record = try rollouts.get(project: project, id: id) else { throw ServiceError.notFound("rollout \(id)") }
        var d = RolloutDraft()
        d.model = record.model
        d.tokens = record.tokenIDs
        d.path = ""
        func intParam(_ name: String, _ header: String, _ range: ClosedRange<Int>) throws -> Int? {
            guard let s = q[name] ?? req.headers[header] else { return nil }
            guard let v = Int(s), range.contains(v) else { throw ServiceError.badRequest("\(name) must be an integer in \(range.lowerBound)...\(range.upperBound)") }
            return v
        }
        d.numExperts = try intParam("num_experts", "X-R3-Num-Experts", 1...65_535)
        d.topK = try intParam("top_k", "X-R3-Top-K", 1...65_535)
        d.hiddenLayers = try intParam("num_hidden_layers", "X-R3-Num-Hidden-Layers", 1...4096)
        if let s = q["moe_layers"] {
            let l = s.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard l.allSatisfy({ $0 != nil }) else { throw ServiceError.badRequest("moe_layers must be comma-separated layer indices") }
            d.moeLayers = l.map { $0! }
        }
        var b = RouteBuilder(maxValues: config.maxRouteValues)
        let isNPY = MediaType(req.headers["Content-Type"] ?? "")?.type == "application/x-npy"
        var reader: RouteBytesReader
        var declaredShape: [Int]?
        if isNPY {
            reader = RouteBytesReader(.npy)
        } else {
            guard let shapeText = q["shape"] ?? req.headers["X-R3-Shape"] else {
                throw ServiceError.badRequest("octet-stream routes need shape=T,L,K (query or X-R3-Shape header)")
            }
            let dims = shapeText.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard dims.count == 3, dims.allSatisfy({ $0 >= 0 && $0 < 1 << 31 }) else { throw ServiceError.badRequest("shape must be three non-negative integers T,L,K") }
            guard let dt = IntDType(rawValue: q["dtype"] ?? req.headers["X-R3-Dtype"] ?? "int32") else {
                throw ServiceError.badRequest("dtype must be one of int64, int32, int16, int8, uint8, uint16")
            }
            let (n, over) = dims[0].multipliedReportingOverflow(by: dims[1] * dims[2])
            guard !over, n <= config.maxRouteValues else { throw ServiceError(413, "routes have more than \(config.maxRouteValues) values") }
            let length = body.declaredLength ?? -1
            guard length == n * dt.size else {
                throw ServiceError.badRequest("the body has \(length < 0 ? "no declared length" : "\(length) bytes"); shape \(dims) of \(dt.rawValue) needs \(n * dt.size)")
            }
            reader = RouteBytesReader(.raw(dt))
            declaredShape = dims
        }
        do {
            if let dims = declaredShape { b.reserve(values: dims[0] * dims[1] * dims[2]) }
            var reserved = declaredShape != nil
            while true {
                // the body's bytes where the server received them, without a copy
                let n = try body.lend(max: 1 << 20) { try reader.feed($0, into: &b) }
                if n == 0 { break }
                if let s = reader.shape, !reserved {   // the .npy header's claim, before its data
                    guard RouteShape.count(s) <= config.maxRouteValues else { throw ServiceError(413, "routes have more than \(config.maxRouteValues) values") }
                    b.reserve(values: RouteShape.count(s)); reserved = true
                }
            }
            try reader.finish(into: &b, what: isNPY ? "the .npy data" : "the body")
        } catch let e as RoutesError {
            throw ServiceError(e.isMalformed ? 400 : 422, "routes: \(e)")
        }
        d.routes = IncomingRoutes(builder: b, shape: isNPY ? reader.shape : declaredShape, encoding: isNPY ? "npy" : "raw")
        let l = try layout(d, registered: try registeredLayout(project: project, model: record.model))
        let packed = try pack(d, layout: l)!
        guard try rollouts.putRoutes(project: project, id: id, packed) else { throw ServiceError.notFound("rollout \(id)") }
        return .json(200, ["id": id, "routes": routesSummary(packed, received: d.routes)])
    }

    // MARK: batches

    /// Routes of many rollouts in one response: on the replica when it is fresh enough, on the primary for
    /// ids the replica does not have yet.
    func batchGet(_ req: HTTPRequest, project: Int) throws -> HTTPResponse {
        // a missing id (404) on the replica is looked for on the primary
        typealias Outcome = Result<HTTPResponse, ServiceError>
        let missing: (Outcome) -> Bool = { r in if case let .failure(e) = r { return e.status == 404 }; return false }
        let (result, from) = try readRollouts(req, project: project, stale: missing) { repo -> Outcome in
            do { return .success(try batchGet(req, project: project, on: repo)) } catch let e as ServiceError { return .failure(e) }
        }
        var resp = try result.get()
        resp.headers.set("R3-Read-From", from)
        resp.oneChunk = resp.body.count >= App.oneChunkFrom
        return resp
    }

    func batchGet(_ req: HTTPRequest, project: Int, on rollouts: RolloutRepository) throws -> HTTPResponse {
        let f = try Fields(try jsonBody(req), allowed: ["ids", "format", "dtype", "start", "end", "layout", "pad", "prompt_length", "response_length", "truncate"])
        guard let list = try f.list("ids", required: true), !list.isEmpty, list.count <= 1000 else {
            throw ServiceError.unprocessable("ids must be a list of 1 to 1000 rollout ids")
        }
        let ids = try list.enumerated().map { i, v -> String in
            guard let s = v.stringValue, !s.isEmpty, s.count <= 64 else { throw ServiceError.unprocessable("ids[\(i)] must be a rollout id") }
            return s
        }
        if let dup = ids.indices.first(where: { i in ids[..<i].contains(ids[i]) }) {
            throw ServiceError.unprocessable("ids[\(dup)] repeats an earlier id")
        }
        let fmt = try f.string("format", max: 10) ?? "npz"
        guard ["npz", "json", "slime", "verl", "megatron"].contains(fmt) else { throw ServiceError.unprocessable("format must be npz, json, slime, verl or megatron") }
        var q: [String: String] = [:]
        if let d = try f.string("dtype", max: 10) { q["dtype"] = d }
        if let l = try f.string("layout", max: 20) { q["layout"] = l }
        if let p = try f.int("pad", range: -1...0) { q["pad"] = String(p) }
        let start = try f.int("start", range: 0...Int(Int32.max)), end = try f.int("end", range: 0...Int(Int32.max))
        if let s = start, let e = end, s > e { throw ServiceError.unprocessable("start must not exceed end") }
        if fmt == "verl" { return try verlBatch(ids, f, q, project: project, on: rollouts) }
        if (start != nil || end != nil) && (fmt == "slime" || fmt == "megatron") {
            throw ServiceError.unprocessable("start and end do not apply to format \(fmt): it serves whole sequences")
        }
        let rows = try rollouts.routesAndTokens(project: project, ids: ids)
        var files: [(String, Data)] = []
        var json: [(String, Data)] = []
        var megatron: [(Data, Int)] = []   // int64 [tokens, L, K] per rollout
        var total = 0
        var megatronLayout: PackedRoutes?
        for id in ids {
            guard let (p, tokens) = rows[id.lowercased()] else { throw try routesGone(id, project: project) }
            var qq = q
            if start != nil || end != nil {
                let s = min(start ?? 0, p.rows), e = min(end ?? p.rows, p.rows)
                qq["start"] = String(s); qq["end"] = String(max(s, e))
            }
            let format: RouteFormat = fmt == "npz" ? .npy : fmt == "json" ? .base64 : fmt == "slime" ? .slime : .megatron
            let o: RouteOutput
            do { o = try routeOutput(qq, format, p, tokens: tokens) } catch let e as ServiceError { throw ServiceError(e.status == 400 ? 422 : e.status, e.detail) }
            total += p.shape(o).reduce(1, *) * o.dtype.size
            guard total <= 1 << 30 else { throw ServiceError(413, "the batch would exceed 1 GiB; ask for fewer rollouts") }
            switch fmt {
            case "npz": files.append(("\(id).npy", try encodeRoutes(p, .npy, o, id: id).0))
            case "megatron":
                if let m = megatronLayout, m.moeLayers != p.moeLayers || m.topK != p.topK {
                    throw ServiceError.unprocessable("rollout \(id) has another route layout than the batch's first; Megatron packs one model's tokens")
                }
                megatronLayout = p
                do { megatron.append((try p.encode(o), p.shape(o)[0])) } catch { throw ServiceError.unprocessable("routes of \(id): \(error)") }
            default:
                json.append((id, try encodeRoutes(p, format, o, id: id).0))
            }
        }
        switch fmt {
        case "npz":
            return HTTPResponse(status: 200, headers: HTTPHeaders([("Content-Type", "application/zip"), ("Content-Disposition", "attachment; filename=\"routes.npz\"")]),
                                body: Zip.stored(files))
        case "megatron":
            // THD packing: the rollouts' tokens one after another, one [Σ tokens, K] int64 array per MoE router
            var all = Data(); var tokens = 0
            for (d, t) in megatron { all.append(d); tokens += t }
            let p = megatronLayout!
            let arrays = App.perLayer(all, shape: [tokens, p.layers, p.topK], moeLayers: p.moeLayers)
            var files = arrays.map { ("\($0.name).npy", NPY.encode(NPYArray(dtype: .int64, shape: $0.shape, bytes: $0.data))) }
            var offsets = [Int64(0)]
            for (_, t) in megatron { offsets.append(offsets.last! + Int64(t)) }
            files.append(("cu_seqlens.npy", NPY.encode(NPYArray(dtype: .int64, shape: [offsets.count], bytes: offsets.withUnsafeBytes { Data($0) }))))
            return HTTPResponse(status: 200, headers: HTTPHeaders([("Content-Type", "application/zip"), ("Content-Disposition", "attachment; filename=\"routes.npz\"")]),
                                body: Zip.stored(files))
        default:
            return HTTPResponse(status: 200, headers: HTTPHeaders([("Content-Type", "application/json")]), body: jsonObject(key: "routes", members: json))
        }
    }

    /// verl's padded batch: routed_experts [B, P+R, num_layers, K], input_ids, attention_mask, position_ids
    /// [B, P+R] and response_mask [B, R] (the loss mask), prompts left-padded to P, responses right-padded to R.
    func verlBatch(_ ids: [String], _ f: Fields, _ q: [String: String], project: Int, on rollouts: RolloutRepository) throws -> HTTPResponse {
        guard let P = try f.int("prompt_length", range: 1...1_000_000), let R = try f.int("response_length", range: 1...1_000_000) else {
            throw ServiceError.unprocessable("format verl needs prompt_length and response_length (the padded lengths, as in verl's config)")
        }
        let truncate = try f.bool("truncate") ?? false
        if q["layout"] != nil && q["layout"] != "all_layers" { throw ServiceError.unprocessable("layout: verl replays every decoder layer (all_layers)") }
        let records = try rollouts.withRoutes(project: project, ids: ids)
        if let m = records.missing.first { throw ServiceError.notFound("rollout \(m)") }
        let S = P + R, B = ids.count
        var layout: PackedRoutes?
        for (r, p) in records.found {
            guard let p else { throw ServiceError.unprocessable("rollout \(r.id) has no routes") }
            if let l = layout, l.hiddenLayers != p.hiddenLayers || l.topK != p.topK { throw ServiceError.unprocessable("rollout \(r.id) has another route layout than the batch's first") }
            layout = p
        }
        let H = layout!.hiddenLayers, K = layout!.topK
        var dt = IntDType.int16
        if layout!.numExperts > 32_768 { dt = .int32 }
        if let s = q["dtype"] { guard let d = IntDType(rawValue: s) else { throw ServiceError.unprocessable("dtype must be one of int64, int32, int16, int8, uint8, uint16") }; dt = d }
        let pad = Int32(q["pad"] ?? "0")!
        guard Double(B) * Double(S) * Double(H * K * dt.size) <= Double(1 << 30) else { throw ServiceError(413, "the batch would exceed 1 GiB; ask for fewer rollouts") }
        var routes = pad == 0 ? Data(count: B * S * H * K * dt.size) : Data(repeating: 0xFF, count: B * S * H * K * dt.size)   // -1 in every dtype
        var inputIDs = [Int64](repeating: 0, count: B * S), mask = [Int64](repeating: 0, count: B * S), pos = [Int64](repeating: 0, count: B * S)
        var responseMask = [Int64](repeating: 0, count: B * R)
        let rowBytes = H * K * dt.size
        for (b, (r, p)) in records.found.enumerated() {
            let prompt = r.promptLength, resp = r.tokenIDs.count - prompt
            guard prompt <= P else { throw ServiceError.unprocessable("rollout \(r.id) has a \(prompt)-token prompt, longer than prompt_length \(P)") }
            guard resp <= R || truncate else { throw ServiceError.unprocessable("rollout \(r.id) has a \(resp)-token response, longer than response_length \(R) (truncate: true cuts it, as verl does)") }
            let start = P - prompt
            let T = min(r.tokenIDs.count, prompt + R)
            var o = RouteOutput(dtype: dt, layers: .allLayers, pad: pad)
            o.rows = 0..<min(p!.rows, T)
            let bytes: Data
            do { bytes = try p!.encode(o) } catch { throw ServiceError.unprocessable("routes of \(r.id) cannot be served as \(dt.rawValue): \(error)") }
            routes.withUnsafeMutableBytes { dst in
                bytes.withUnsafeBytes { src in (dst.baseAddress! + (b * S + start) * rowBytes).copyMemory(from: src.baseAddress!, byteCount: bytes.count) }
            }
            for i in 0..<T {
                inputIDs[b * S + start + i] = Int64(r.tokenIDs[i]); mask[b * S + start + i] = 1; pos[b * S + start + i] = Int64(i)
            }
            for j in 0..<min(resp, R) { responseMask[b * R + j] = Int64(r.lossMask.map { $0[j] } ?? 1) }
        }
        func npy(_ a: [Int64], _ shape: [Int]) -> Data { NPY.encode(NPYArray(dtype: .int64, shape: shape, bytes: a.withUnsafeBytes { Data($0) })) }
        let files: [(String, Data)] = [
            ("routed_experts.npy", NPY.encode(NPYArray(dtype: dt.npy, shape: [B, S, H, K], bytes: routes))),
            ("input_ids.npy", npy(inputIDs, [B, S])), ("attention_mask.npy", npy(mask, [B, S])), ("position_ids.npy", npy(pos, [B, S])),
            ("response_mask.npy", npy(responseMask, [B, R])),
        ]
        return HTTPResponse(status: 200, headers: HTTPHeaders([("Content-Type", "application/zip"), ("Content-Disposition", "attachment; filename=\"verl_batch.npz\"")]),
                            body: Zip.stored(files))
    }
}

/// safetensors (Hugging Face): an 8-byte little-endian header length, a JSON header of dtype, shape and
/// data offsets per tensor, then the tensors' bytes.
enum Safetensors {
    static func int64(_ tensors: [(name: String, shape: [Int], data: Data)]) -> Data {
        var header = JSONObject()
        var offset = 0
        for t in tensors {
            header.append(t.name, .object(JSONObject([("dtype", .string("I64")), ("shape", .array(t.shape.map { .int(Int64($0)) })),
                                                      ("data_offsets", .array([.int(Int64(offset)), .int(Int64(offset + t.data.count))]))])))
            offset += t.data.count
        }
        var text = Array(JSONValue.object(header).serialized().utf8)
        while text.count % 8 != 0 { text.append(0x20) }
        var out = Data()
        var n = UInt64(text.count).littleEndian
        withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
        out.append(contentsOf: text)
        for t in tensors { out.append(t.data) }
        return out
    }
}

extension RoutesError {
    var isMalformed: Bool { if case .malformed = self { return true }; return false }
}

extension App {
    /// The error for a rollout without routes: 410 naming the retention that dropped them when they
    /// expired, else 404.
    func routesGone(_ id: String, project: Int) throws -> ServiceError {
        guard let r = try rollouts.get(project: project, id: id), r.routesExpired else { return ServiceError.notFound("routes of rollout \(id)") }
        let d = try pool.withRetry { try RoutePartitions.expiry($0, project: project, createdAt: r.createdAt) }
        let when = d.map { " with the week \($0.start) to \($0.end), dropped at \($0.droppedAt) under the policy \($0.policyJSON)" } ?? ""
        return ServiceError(410, "the routes of rollout \(id) expired under this project's retention\(when); GET /v1/retention shows the policy")
    }
}
