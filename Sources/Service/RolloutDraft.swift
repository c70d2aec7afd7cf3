// RolloutDraft: a rollout as read from a request body, before it is checked against its model's route
// layout and stored: tokens, where the response starts, log-probs, the routes still packed as they came,
// and the explicit layout fields when no registered model gives one. Shared by POST /v1/rollouts, the
// SGLang and vLLM imports, and turns.
import Foundation
import JSON
import Routes
import Store

struct RolloutDraft {
    var model: String?
    var policyVersion: Int?
    var tokens: [Int32] = []
    var promptLength = 0
    /// One per response token (NaN where a later turn's context has none).
    var logprobs: [Float]?
    var reward: Double?
    var groupID: String?
    var metadata = JSONObject()
    var routes: IncomingRoutes?
    /// Routes already packed (checked while the body arrived).
    var packed: PackedRoutes?
    /// How the routes were sent (kept when the builder is freed early).
    var encoding: String?
    /// The first row the routes cover (SGLang's routed_experts_start_len, vLLM's routed_experts_prompt_start).
    var routesStart = 0
    /// Where an error about this draft points ("response[3]" in an import).
    var path = ""
    /// Explicit layout (without a registered model, or checked against it).
    var numExperts: Int?
    var topK: Int?
    var hiddenLayers: Int?
    var moeLayers: [Int]?

    func name(_ field: String) -> String { path.isEmpty ? field : "\(path).\(field)" }
}

/// Reading typed values at a JSONReader's position; errors name the value's path.
extension JSONReader {
    func string(max: Int) throws -> String {
        guard try peek() == .string else { throw content("must be a string of 1 to \(max) characters") }
        let s = try readString()
        guard !s.isEmpty, s.count <= max else { throw content("must be a string of 1 to \(max) characters") }
        return s
    }
    func int(_ range: ClosedRange<Int>) throws -> Int { Int(try readInt(in: Int64(range.lowerBound)...Int64(range.upperBound))) }
    func optionalDouble() throws -> Double? {
        if try readNullIfPresent() { return nil }
        let d = try readDouble()
        guard d.isFinite else { throw content("must be a finite number") }
        return d
    }
    /// Token ids: integers in 0...Int32.max, at most `max` of them.
    func tokenIDs(max: Int) throws -> [Int32] {
        guard try peek() == .array else { throw content("must be a list of token ids") }
        var out: [Int32] = []
        try readArray { i in
            guard i < max else { throw content("has more than \(max) entries") }
            out.append(Int32(try readInt(in: 0...Int64(Int32.max))))
        }
        return out
    }
    /// A log-prob: finite and within float32's range (it is stored as real).
    func logprob() throws -> Float {
        guard try peek() == .number else { throw content("must be a finite number") }
        let d = try readNumber().double
        guard d.isFinite, abs(d) <= Double(Float.greatestFiniteMagnitude) else { throw content("is outside float32's range (log-probs are stored as float32)") }
        return Float(d)
    }
    func logprobs(max: Int) throws -> [Float] {
        guard try peek() == .array else { throw content("must be a list of numbers") }
        var out: [Float] = []
        try readArray { i in
            guard i < max else { throw content("has more than \(max) entries") }
            out.append(try logprob())
        }
        return out
    }
    /// A free-form object (metadata), at most 64 KiB as JSON.
    func metadataObject() throws -> JSONObject {
        guard try peek() == .object, case let .object(o) = try readValue(maxValues: 10_000) else { throw content("must be an object") }
        guard JSONValue.object(o).serialized().utf8.count <= 64 * 1024 else { throw content("is larger than 64 KiB") }
        return o
    }
    /// Routes into a builder; a routes error becomes a content error at this path.
    func routes(maxValues: Int) throws -> IncomingRoutes {
        do { return try RouteJSONReader.read(self, maxValues: maxValues) } catch let e as RoutesError { throw content("\(e)") }
    }
}

extension App {
    /// The layout fields a rollout body may carry instead of naming a registered model.
    static let layoutFields: Set<String> = ["num_experts", "top_k", "num_hidden_layers", "moe_layers"]

    /// Reads one of the explicit layout fields into `d`; false when `key` is not one.
    func readLayoutField(_ key: String, _ r: JSONReader, into d: inout RolloutDraft) throws -> Bool {
        switch key {
        case "num_experts": d.numExperts = try r.readNullIfPresent() ? nil : try r.int(1...65_535)
        case "top_k": d.topK = try r.readNullIfPresent() ? nil : try r.int(1...65_535)
        case "num_hidden_layers": d.hiddenLayers = try r.readNullIfPresent() ? nil : try r.int(1...4096)
        case "moe_layers":
            if try r.readNullIfPresent() { d.moeLayers = nil; return true }
            guard try r.peek() == .array else { throw r.content("must be a list of layer indices") }
            var l: [Int] = []
            try r.readArray { _ in l.append(try r.int(0...4095)) }
            d.moeLayers = l
        default: return false
        }
        return true
    }

    /// The route layout of a registered model of this project, named by id or name; nil when none is.
    func registeredLayout(project: Int, model: String?) throws -> (RouteLayout, ModelRecord)? {
        guard let name = model, let m = try models.find(project: project, idOrName: name) else { return nil }
        let v: JSONValue
        do { v = try JSONReader.parse(Array(m.configJSON.utf8)) } catch { throw ServiceError(500, "the stored config of model \(m.id) is unreadable") }
        do { return (try RouteLayout(hfConfig: v.objectValue ?? JSONObject()), m) } catch {
            throw ServiceError.unprocessable("model \(name): \(error)")
        }
    }

    /// The layout a draft's routes are checked against: its registered model's (explicit fields must
    /// agree), else the explicit fields, filled from the routes' own shape where they carry one.
    func layout(_ d: RolloutDraft, registered: (RouteLayout, ModelRecord)?) throws -> RouteLayout {
        let shape = d.routes?.shape
        if let (l, m) = registered {
            func agree(_ field: String, _ v: Int?, _ want: Int) throws {
                if let v, v != want { throw ServiceError.unprocessable("\(d.name(field)) is \(v), but model \(m.name) has \(want)") }
            }
            try agree("num_experts", d.numExperts, l.numExperts)
            try agree("top_k", d.topK, l.topK)
            try agree("num_hidden_layers", d.hiddenLayers, l.hiddenLayers)
            if let ml = d.moeLayers, ml != l.moeLayers { throw ServiceError.unprocessable("\(d.name("moe_layers")) differ from model \(m.name)'s MoE layers \(l.moeLayers)") }
            return l
        }
        if shape == nil && (d.numExperts == nil || d.topK == nil || (d.hiddenLayers == nil)) {
            throw ServiceError.unprocessable("\(d.name("routed_experts")) has no shape (SGLang's bare base64): name a model registered in this project in model (POST /v1/models with its config.json), or give num_experts, top_k and num_hidden_layers")
        }
        guard let E = d.numExperts else {
            throw ServiceError.unprocessable("\(d.name("num_experts")) is required with routed_experts, unless model names a model registered in this project (POST /v1/models)")
        }
        guard let K = d.topK ?? shape?[2] else {
            throw ServiceError.unprocessable("\(d.name("routed_experts")) has no shape (SGLang's bare base64): give top_k and num_hidden_layers, or name a registered model in model")
        }
        var hidden = d.hiddenLayers
        if hidden == nil && d.moeLayers == nil { hidden = shape?[1] }
        guard let H = hidden else {
            throw ServiceError.unprocessable(d.moeLayers != nil
                ? "\(d.name("num_hidden_layers")) is required with moe_layers"
                : "\(d.name("routed_experts")) has no shape (SGLang's bare base64): give top_k and num_hidden_layers, or name a registered model in model")
        }
        do { return try RouteLayout(hiddenLayers: H, moeLayers: d.moeLayers ?? Array(0..<H), numExperts: E, topK: K) } catch {
            throw ServiceError.unprocessable("\(d.name("routed_experts")): \(error)")
        }
    }

    /// Checks the draft's routes against `layout` and the sequence, and packs them (MoE layers only).
    func pack(_ d: RolloutDraft, layout: RouteLayout) throws -> PackedRoutes? {
        guard let r = d.routes else { return nil }
        let T = d.tokens.count
        let rows = d.routesStart == 0 ? [T - 1, T] : [T - 1 - d.routesStart]
        do { return try r.builder.finish(shape: r.shape, rows: rows, layout: layout) } catch let e as RoutesError {
            throw ServiceError.unprocessable("\(d.name("routed_experts")): \(e)")
        }
    }

    /// The stored row of a draft (checked: prompt inside the tokens, log-probs one per response token).
    func newRollout(_ d: RolloutDraft, routes: PackedRoutes?, lossMask: [UInt8]? = nil, turns: Int = 1) throws -> NewRollout {
        guard !d.tokens.isEmpty else { throw ServiceError.unprocessable("\(d.name("token_ids")) must have at least one token") }
        guard d.promptLength <= d.tokens.count else {
            throw ServiceError.unprocessable("\(d.name("prompt_length")) \(d.promptLength) exceeds the \(d.tokens.count) tokens")
        }
        if let lp = d.logprobs, lp.count != d.tokens.count - d.promptLength {
            throw ServiceError.unprocessable("\(d.name("logprobs")) has \(lp.count) entries; the response has \(d.tokens.count - d.promptLength) tokens")
        }
        return NewRollout(model: d.model ?? "", policyVersion: d.policyVersion ?? 0, tokenIDs: d.tokens, promptLength: d.promptLength,
                          logprobs: d.logprobs, reward: d.reward, groupID: d.groupID, metadataJSON: JSONValue.object(d.metadata).jsonText,
                          routes: routes, lossMask: lossMask, turns: turns)
    }

    /// The `routes` member of a write's reply.
    func routesSummary(_ p: PackedRoutes, received: IncomingRoutes?, encoding: String? = nil) -> [String: Any] {
        var o: [String: Any] = ["shape": [p.rows, p.layers, p.topK], "num_experts": p.numExperts, "num_hidden_layers": p.hiddenLayers,
                                "moe_layers": p.moeLayers, "stored_bytes": p.bytes.count]
        if let e = received?.encoding ?? encoding { o["encoding"] = e }
        return o
    }
}
