// EngineImport: POST /v1/rollouts:sglang and :vllm take an inference engine's response exactly as it
// came back (one, or a batch / a GRPO group), plus what it lacks (prompt token ids, reward, group), and
// store every sampled sequence as a rollout with its routes, in one transaction: all or nothing.
//
// SGLang /generate (0.5.x, sglang/srt/managers/tokenizer_manager.py, detokenizer_manager.py,
// state_capturer/routed_experts.py): a dict, or a list of dicts prompt-major for a batch and n > 1, each
// {text, output_ids, meta_info{routed_experts: base64 of int32 [T−1−start_len, num_hidden_layers, top_k],
// output_token_logprobs: [[logprob, token_id, text], …], prompt_tokens, weight_version, …}}.
// vLLM (OpenAI server, --enable-return-routed-experts): completions / chat / generate responses whose
// choices carry token_ids (return_token_ids), log-probs and routed_experts: 0.21 nested lists of the
// completion rows with the prompt rows in the response's prompt_routed_experts (MoE layers only); 0.33 a
// base64 .npy of rows [routed_experts_prompt_start, T−1) over every hidden layer.
import Foundation
import HTTP
import JSON
import Routes
import Store

enum InferenceEngine: String { case sglang, vllm }

/// One sampled sequence as an engine reported it.
struct EngineSample {
    var path = ""
    var promptIDs: [Int32]?
    var outputIDs: [Int32]?
    var logprobs: [Float]?
    /// The token id reported beside each log-prob, to check it against the output.
    var logprobTokens: [Int32?] = []
    var routes: IncomingRoutes?
    /// vLLM 0.21: the prompt's rows, reported once per response.
    var promptRoutes: IncomingRoutes?
    var engineMeta = JSONObject()
    var weightVersion: String?
    var promptTokens: Int?
    var completionTokens: Int?
    var startLen: Int?
    /// The routes already checked and packed while the body was still arriving (the builder is then freed).
    var packed: PackedRoutes?
    var routesEncoding: String?
}

/// A value given once for every sample, or one per sample (or per prompt).
enum PerSample<T> {
    case one(T)
    case many([T])
}

/// What an engine import's body holds, read in one pass.
struct EngineImportBody {
    var template = RolloutDraft()
    var samples: [EngineSample] = []
    var prompts: PerSample<[Int32]>?
    var rewards: PerSample<Double?>?
    var groups: PerSample<String>?
    var startLen = 0
    var appendTo: String?
    var sawResponse = false
}

extension InferenceEngine {
    var promptsKey: String { self == .sglang ? "input_ids" : "prompt_token_ids" }
    var startKey: String { self == .sglang ? "routed_experts_start_len" : "routed_experts_prompt_start" }
}

extension App {
    /// An SGLang or vLLM response, unchanged, with its prompts: read, checked, paired, then stored as
    /// rollouts (or, with append_to, as the next turn of one).
    func importEngine(_ engine: InferenceEngine, _ req: HTTPRequest, _ body: HTTPBodyStream, project: Int) throws -> HTTPResponse {
        let b = try readEngineImport(engine, body, project: project)
        try checkEngineImport(engine, b)
        let drafts = try engineDrafts(engine, b)
        if let id = b.appendTo {
            guard drafts.count == 1, let d = drafts.first else {
                throw ServiceError.unprocessable("append_to takes one sequence; response holds \(drafts.count)")
            }
            var t = TurnDraft()
            t.tokens = d.tokens; t.responseStart = d.promptLength; t.logprobs = d.logprobs
            t.routes = d.routes ?? d.packed.map(App.incoming)
            t.routesStart = d.routesStart; t.path = d.path
            if b.rewards != nil { t.reward = d.reward; t.rewardGiven = true }
            t.metadata = d.metadata
            return try appendTurn(t, id: id, project: project)
        }
        return try storeEngineDrafts(drafts, model: b.template.model, project: project)
    }

    /// Reads the body in one pass. When model (and the prompts) came before the response, as they usually
    /// do, each sequence's routes are checked and packed as soon as it has been read: the request then
    /// holds one byte per expert id.
    func readEngineImport(_ engine: InferenceEngine, _ body: HTTPBodyStream, project: Int) throws -> EngineImportBody {
        let r = reader(body)
        var b = EngineImportBody()
        let promptsKey = engine.promptsKey, startKey = engine.startKey
        try readBody(r) { key in
            switch key {
            case "model": b.template.model = try r.string(max: 200)
            case "policy_version": b.template.policyVersion = try r.readNullIfPresent() ? nil : try r.int(0...Int(Int64.max / 2))
            case promptsKey: b.prompts = try r.readNullIfPresent() ? nil : try r.tokenLists()
            case "reward":
                if try r.peek() == .array {
                    var l: [Double?] = []
                    try r.readArray { _ in l.append(try r.optionalDouble()) }
                    b.rewards = .many(l)
                } else { b.rewards = .one(try r.optionalDouble()) }
            case "group_id":
                if try r.readNullIfPresent() { b.groups = nil } else if try r.peek() == .array {
                    var l: [String] = []
                    try r.readArray { _ in l.append(try r.string(max: 200)) }
                    b.groups = .many(l)
                } else { b.groups = .one(try r.string(max: 200)) }
            case "metadata": b.template.metadata = try r.readNullIfPresent() ? JSONObject() : try r.metadataObject()
            case startKey: b.startLen = try r.int(0...4_000_000)
            case "append_to" where engine == .sglang: b.appendTo = try r.string(max: 64)
            case "response":
                b.sawResponse = true
                let registered = b.appendTo == nil ? try registeredLayout(project: project, model: b.template.model) : nil
                let (template, prompts, appendTo) = (b.template, b.prompts, b.appendTo)   // nothing else is read while the response is
                let early: (inout EngineSample) throws -> Void = { s in
                    guard appendTo == nil, template.model != nil, s.promptRoutes == nil, let routes = s.routes, let out = s.outputIDs else { return }
                    var promptLength: Int? = s.promptIDs?.count ?? s.promptTokens
                    if promptLength == nil, case let .one(p)? = prompts { promptLength = p.count }
                    guard let P = promptLength else { return }
                    var d = template
                    d.path = s.path; d.routes = routes; d.tokens = [Int32](repeating: 0, count: P + out.count)
                    // keys after "response" (append_to, start_len, layout fields) may still change the reading:
                    // anything early packing cannot settle is left to the full check at the end
                    guard let l = try? self.layout(d, registered: registered), let p = try? self.pack(d, layout: l) else { return }
                    s.packed = p
                    s.routesEncoding = routes.encoding
                    s.routes = nil
                }
                let read = engine == .sglang ? try sglangResponse(r, early) : try vllmResponse(r)
                b.samples = read
            default:
                if try !readLayoutField(key, r, into: &b.template) { throw ServiceError.unprocessable("unknown field \(key)") }
            }
        }
        return b
    }

    /// What the body must hold: a response with 1 to R3_MAX_IMPORT_ROLLOUTS sequences, and rows from the
    /// first token unless the response is appended to the rollout that holds the earlier ones.
    func checkEngineImport(_ engine: InferenceEngine, _ b: EngineImportBody) throws {
        let samples = b.samples, startLen = b.startLen, appendTo = b.appendTo
        guard b.sawResponse else { throw ServiceError.unprocessable("response is required: the engine's response, unchanged") }
        guard !samples.isEmpty else { throw ServiceError.unprocessable("response holds no sampled sequence") }
        guard samples.count <= config.maxImportRollouts else {
            throw ServiceError.unprocessable("response holds \(samples.count) sequences; this server stores at most \(config.maxImportRollouts) per request (R3_MAX_IMPORT_ROLLOUTS)")
        }
        if engine == .vllm && startLen > 0 {
            throw ServiceError.unprocessable("routed_experts_prompt_start \(startLen): the rows before it are not in the response, and a rollout's routes must cover the whole sequence; send 0, or add this turn to the rollout that holds them with POST /v1/rollouts/{id}/turns")
        }
        if engine == .sglang && appendTo == nil, let s = samples.first(where: { ($0.startLen ?? 0) > 0 }) {
            throw ServiceError.unprocessable("\(s.path).meta_info.routed_experts_start_len \(s.startLen!) without append_to: the rows before it are not in the response; send the first turn with 0, then append_to that rollout")
        }
        if engine == .sglang && startLen > 0 && appendTo == nil {
            throw ServiceError.unprocessable("routed_experts_start_len \(startLen) without append_to: the rows before it are not in the response; send the first turn with 0, then append_to that rollout")
        }
    }

    /// One rollout draft per sampled sequence: paired with its prompt, its log-probs checked against its
    /// tokens, its routes (packed early, or as received), reward, group and the engine's meta_info.
    func engineDrafts(_ engine: InferenceEngine, _ b: EngineImportBody) throws -> [RolloutDraft] {
        let samples = b.samples, prompts = b.prompts, template = b.template, promptsKey = engine.promptsKey
        // pair every sample with its prompt
        let promptOf = try pairPrompts(samples, prompts, key: promptsKey)
        var promptIndex = [Int](repeating: 0, count: samples.count)   // consecutive samples of one prompt share an index
        if case let .many(ps)? = prompts, samples.allSatisfy({ $0.promptIDs == nil }) {
            for i in 0..<samples.count { promptIndex[i] = i / (samples.count / ps.count) }
        } else {
            for i in 1..<max(1, samples.count) { promptIndex[i] = promptIndex[i - 1] + (promptOf[i] == promptOf[i - 1] ? 0 : 1) }
        }
        let promptCount = (promptIndex.last ?? 0) + 1
        return try samples.enumerated().map { i, s -> RolloutDraft in
            var d = template
            d.path = s.path
            let prompt = promptOf[i]
            guard let out = s.outputIDs else {
                throw ServiceError.unprocessable(engine == .sglang ? "\(s.path).output_ids is missing" :
                    "\(s.path).token_ids is missing: request with return_token_ids: true (or return_tokens_as_token_ids with logprobs)")
            }
            if let p = s.promptTokens, p != prompt.count {
                throw ServiceError.unprocessable("\(s.path): the engine read \(p) prompt tokens, but its \(promptsKey) have \(prompt.count): prompts and responses are not paired")
            }
            if let c = s.completionTokens, c != out.count {
                throw ServiceError.unprocessable("\(s.path): completion_tokens is \(c), but output_ids has \(out.count)")
            }
            d.tokens = prompt + out
            d.promptLength = prompt.count
            if let lp = s.logprobs {
                guard lp.count == out.count else {
                    throw ServiceError.unprocessable("\(s.path): \(lp.count) output log-probs for \(out.count) output tokens")
                }
                if let j = lp.firstIndex(where: { $0.isNaN }) { throw ServiceError.unprocessable("\(s.path): log-prob \(j) of the output is null") }
                for (j, t) in s.logprobTokens.enumerated() where t != nil && j < out.count && t! != out[j] {
                    throw ServiceError.unprocessable("\(s.path): log-prob \(j) is for token \(t!), but output token \(j) is \(out[j])")
                }
                d.logprobs = lp
            }
            if let p = s.packed {   // packed while the body arrived; the final check follows below
                d.packed = p
                d.encoding = s.routesEncoding
            } else {
            guard let routes = s.routes ?? s.promptRoutes else {
                throw ServiceError.unprocessable(engine == .sglang
                    ? "\(s.path).meta_info.routed_experts is missing: start SGLang with --enable-return-routed-experts and send return_routed_experts: true"
                    : "\(s.path).routed_experts is missing: start vLLM with --enable-return-routed-experts")
            }
            if let pr = s.promptRoutes, let cr = s.routes {   // vLLM 0.21: prompt rows, then the completion's
                var b = pr.builder
                do { try b.append(contentsOf: cr.builder) } catch let e as RoutesError { throw ServiceError.unprocessable("\(s.path).routed_experts: \(e)") }
                guard let ps = pr.shape, let cs = cr.shape, ps[1] == cs[1], ps[2] == cs[2] else {
                    throw ServiceError.unprocessable("\(s.path): prompt_routed_experts and routed_experts differ in layers or top_k")
                }
                d.routes = IncomingRoutes(builder: b, shape: [ps[0] + cs[0], ps[1], ps[2]], encoding: "vllm_lists")
            } else {
                d.routes = routes
            }
            }
            d.routesStart = b.appendTo == nil ? 0 : min(s.startLen ?? b.startLen, max(0, d.tokens.count - 1))
            if d.policyVersion == nil, let w = s.weightVersion, let v = Int(w), v >= 0 { d.policyVersion = v }
            d.reward = try pick(b.rewards, i, count: samples.count, prompt: promptIndex[i], prompts: nil, field: "reward") ?? nil
            d.groupID = try pick(b.groups, i, count: samples.count, prompt: promptIndex[i], prompts: promptCount, field: "group_id")
            d.metadata.append(engine.rawValue, .object(s.engineMeta))
            return d
        }
    }

    /// Stores the drafts as new rollouts in one transaction, each under its layout (routes packed early
    /// are packed again only if the final layout or length differs).
    func storeEngineDrafts(_ drafts: [RolloutDraft], model: String?, project: Int) throws -> HTTPResponse {
        let registered = try registeredLayout(project: project, model: model)
        guard model != nil else { throw ServiceError.unprocessable("model is required: a registered model's id or name (it gives the route layout), or any name with num_experts, top_k and num_hidden_layers") }
        var rows: [NewRollout] = []
        for d in drafts {
            let l = try layout(d, registered: registered)
            if let p = d.packed {
                // packed early under the same layout, for a sequence of the same length
                guard p.hiddenLayers == l.hiddenLayers, p.moeLayers == l.moeLayers, p.numExperts == l.numExperts, p.topK == l.topK,
                      d.routesStart == 0, p.rows == d.tokens.count - 1 || p.rows == d.tokens.count else {
                    var again = d; again.routes = App.incoming(p); again.packed = nil
                    rows.append(try newRollout(d, routes: try pack(again, layout: l)))
                    continue
                }
                rows.append(try newRollout(d, routes: p))
                continue
            }
            rows.append(try newRollout(d, routes: try pack(d, layout: l)))
        }
        let ids = try rollouts.insert(project: project, rows)
        let list = zip(ids, zip(rows, drafts)).map { id, rd -> [String: Any] in
            ["id": id, "routes": routesSummary(rd.0.routes!, received: rd.1.routes, encoding: rd.1.encoding), "url": "/v1/rollouts/\(id)"]
        }
        return .json(201, ["ids": ids, "rollouts": list])
    }

    /// Packed (MoE-layer) routes as incoming routes again, with their shape.
    static func incoming(_ p: PackedRoutes) -> IncomingRoutes {
        var b = RouteBuilder()
        if let ids = try? p.ids(RouteOutput()) { for v in ids { try? b.append(Int64(v)) } }
        return IncomingRoutes(builder: b, shape: [p.rows, p.layers, p.topK], encoding: "packed")
    }

    /// The prompt of each sample: from the response itself, else the body's list (one shared, one per
    /// prompt with samples prompt-major, or one per sample).
    func pairPrompts(_ samples: [EngineSample], _ given: PerSample<[Int32]>?, key: String) throws -> [[Int32]] {
        try samples.enumerated().map { i, s in
            var fromBody: [Int32]?
            switch given {
            case nil: fromBody = nil
            case let .one(p): fromBody = p
            case let .many(ps):
                guard !ps.isEmpty, samples.count % ps.count == 0 else {
                    throw ServiceError.unprocessable("\(key) has \(ps.count) prompts for \(samples.count) sampled sequences: give one prompt, one per prompt (n samples each, in order), or one per sequence")
                }
                fromBody = ps[i / (samples.count / ps.count)]
            }
            switch (s.promptIDs, fromBody) {
            case let (p?, b?):
                guard p == b else { throw ServiceError.unprocessable("\(s.path): the response's prompt token ids differ from \(key)") }
                return p
            case let (p?, nil): return p
            case let (nil, b?): return b
            case (nil, nil):
                throw ServiceError.unprocessable("\(key) is required: the response does not carry the prompt's token ids (SGLang: return_prompt_token_ids; vLLM: return_token_ids)")
            }
        }
    }

    /// The value for sample `i`: shared, one per sample, or (for groups) one per distinct prompt in order.
    func pick<T>(_ v: PerSample<T>?, _ i: Int, count: Int, prompt: Int, prompts: Int?, field: String) throws -> T? {
        switch v {
        case nil: return nil
        case let .one(x): return x
        case let .many(l):
            if l.count == count { return l[i] }
            if let p = prompts, l.count == p { return l[prompt] }
            throw ServiceError.unprocessable("\(field) has \(l.count) entries for \(count) sequences\(prompts.map { " from \($0) prompts" } ?? "")")
        }
    }

    // MARK: SGLang

    func sglangResponse(_ r: JSONReader, _ early: (inout EngineSample) throws -> Void) throws -> [EngineSample] {
        switch try r.peek() {
        case .object: var s = try sglangItem(r, path: "response"); try early(&s); return [s]
        case .array:
            var out: [EngineSample] = []
            try r.readArray { i in
                guard i < config.maxImportRollouts else { throw ServiceError.unprocessable("response holds more than \(config.maxImportRollouts) sequences (R3_MAX_IMPORT_ROLLOUTS)") }
                var s = try sglangItem(r, path: "response[\(i)]")
                try early(&s)
                out.append(s)
            }
            return out
        default: throw ServiceError.unprocessable("response must be SGLang's /generate response: an object, or a list of them")
        }
    }

    func sglangItem(_ r: JSONReader, path: String) throws -> EngineSample {
        guard try r.peek() == .object else { throw ServiceError.unprocessable("\(path) must be an object, as SGLang's /generate returns") }
        var s = EngineSample(path: path)
        try r.readObject(keysMayHoldNUL: true) { key in
            switch key {
            case "output_ids": s.outputIDs = try r.tokenIDs(max: 4_000_000)
            case "prompt_token_ids": s.promptIDs = try r.readNullIfPresent() ? nil : try r.tokenIDs(max: 4_000_000)
            case "meta_info":
                guard try r.peek() == .object else { throw ServiceError.unprocessable("\(path).meta_info must be an object") }
                try r.readObject(keysMayHoldNUL: true) { k in
                    switch k {
                    case "routed_experts": s.routes = try r.readNullIfPresent() ? nil : try r.routes(maxValues: config.maxRouteValues)
                    case "output_token_logprobs":
                        if try r.readNullIfPresent() { break }
                        var lps: [Float] = [], ids: [Int32?] = []
                        try r.readArray { _ in
                            guard try r.peek() == .array else { throw r.content("must be [logprob, token_id, text]") }
                            var lp: Float = .nan, id: Int32?
                            try r.readArray { j in
                                if j == 0 { lp = try r.readNullIfPresent() ? .nan : try r.logprob() }
                                else if j == 1 { id = Int32(try r.readInt(in: 0...Int64(Int32.max))) }
                                else { try r.skipValue() }
                            }
                            lps.append(lp); ids.append(id)
                        }
                        s.logprobs = lps; s.logprobTokens = ids
                    case "prompt_tokens": s.promptTokens = try r.readNullIfPresent() ? nil : try r.int(0...Int(Int32.max))
                    case "completion_tokens": s.completionTokens = try r.readNullIfPresent() ? nil : try r.int(0...Int(Int32.max))
                    case "routed_experts_start_len": s.startLen = try r.readNullIfPresent() ? nil : try r.int(0...Int(Int32.max))
                    case "weight_version":
                        let v = try r.readValue(maxValues: 16)
                        s.weightVersion = v.stringValue ?? v.intValue.map(String.init)
                        s.engineMeta.append(k, v)
                    default: try keepSmall(r, k, into: &s.engineMeta)
                    }
                }
            default: try r.skipValue()   // text and whatever later SGLang versions add
            }
        }
        if let p = s.promptTokens { s.engineMeta.append("prompt_tokens", .int(Int64(p))) }
        if let c = s.completionTokens { s.engineMeta.append("completion_tokens", .int(Int64(c))) }
        return s
    }

    /// Keeps an engine's small descriptive values (ids, finish reasons, counters) in the rollout's
    /// metadata; large ones (log-prob tables, hidden states) are skipped.
    func keepSmall(_ r: JSONReader, _ key: String, into meta: inout JSONObject) throws {
        if key.unicodeScalars.contains("\u{0}") || key.utf8.count > 200 { try r.skipValue(); return }   // never stored (jsonb has no NUL)
        switch try r.peek() {
        case .string, .number, .bool, .null:
            let v = try r.readValue(maxValues: 1)
            if case let .string(t) = v, t.utf8.count > 1024 { return }
            meta.append(key, v)
        case .object where key == "finish_reason":
            meta.append(key, try r.readValue(maxValues: 64))
        default: try r.skipValue()
        }
    }

    // MARK: vLLM

    func vllmResponse(_ r: JSONReader) throws -> [EngineSample] {
        switch try r.peek() {
        case .object: return try vllmOne(r, path: "response")
        case .array:
            var out: [EngineSample] = []
            try r.readArray { i in out += try vllmOne(r, path: "response[\(i)]") }
            return out
        default: throw ServiceError.unprocessable("response must be vLLM's completion, chat completion or generate response (or a list of them)")
        }
    }

    func vllmOne(_ r: JSONReader, path: String) throws -> [EngineSample] {
        guard try r.peek() == .object else { throw ServiceError.unprocessable("\(path) must be an object, as vLLM returns") }
        var choices: [EngineSample] = []
        var prompt: [Int32]?
        var promptRoutes: IncomingRoutes?
        var meta = JSONObject()
        try r.readObject(keysMayHoldNUL: true) { key in
            switch key {
            case "choices":
                guard try r.peek() == .array else { throw ServiceError.unprocessable("\(path).choices must be a list") }
                try r.readArray { i in choices.append(try vllmChoice(r, path: "\(path).choices[\(i)]")) }
            case "prompt_token_ids": prompt = try r.readNullIfPresent() ? nil : try r.tokenIDs(max: 4_000_000)
            case "prompt_routed_experts": promptRoutes = try r.readNullIfPresent() ? nil : try r.routes(maxValues: config.maxRouteValues)
            case "id", "model", "created", "object", "request_id": try keepSmall(r, key, into: &meta)
            default: try r.skipValue()
            }
        }
        if promptRoutes != nil {
            let distinct = Set(choices.compactMap { $0.promptIDs })
            if distinct.count > 1 {
                throw ServiceError.unprocessable("\(path): vLLM reports prompt_routed_experts for the first prompt only; send one prompt per request")
            }
        }
        return choices.map { c in
            var c = c
            if c.promptIDs == nil { c.promptIDs = prompt }
            c.promptRoutes = promptRoutes
            for k in meta.keys where c.engineMeta[k] == nil { c.engineMeta.append(k, meta[k]!) }
            return c
        }
    }

    func vllmChoice(_ r: JSONReader, path: String) throws -> EngineSample {
        guard try r.peek() == .object else { throw ServiceError.unprocessable("\(path) must be an object") }
        var s = EngineSample(path: path)
        var idsFromLogprobs: [Int32]?
        try r.readObject(keysMayHoldNUL: true) { key in
            switch key {
            case "token_ids": s.outputIDs = try r.readNullIfPresent() ? nil : try r.tokenIDs(max: 4_000_000)
            case "prompt_token_ids": s.promptIDs = try r.readNullIfPresent() ? nil : try r.tokenIDs(max: 4_000_000)
            case "routed_experts": s.routes = try r.readNullIfPresent() ? nil : try r.routes(maxValues: config.maxRouteValues)
            case "logprobs":
                if try r.readNullIfPresent() { break }
                let (lps, ids) = try vllmLogprobs(r)
                s.logprobs = lps
                s.logprobTokens = ids
                if ids.allSatisfy({ $0 != nil }) { idsFromLogprobs = ids.map { $0! } }
            case "index", "finish_reason", "stop_reason": try keepSmall(r, key, into: &s.engineMeta)
            default: try r.skipValue()
            }
        }
        if s.outputIDs == nil { s.outputIDs = idsFromLogprobs }
        return s
    }

    /// Completions: {token_logprobs: [...], tokens: [...]}; chat and generate: {content: [{logprob, token, token_id?}]}.
    /// Token ids come from `token_id`, or from tokens written "token_id:N" (return_tokens_as_token_ids).
    func vllmLogprobs(_ r: JSONReader) throws -> ([Float], [Int32?]) {
        var lps: [Float] = [], ids: [Int32?] = [], tokens: [Int32?] = []
        func tokenID(_ s: String) -> Int32? { s.hasPrefix("token_id:") ? Int32(s.dropFirst(9)) : nil }
        guard try r.peek() == .object else { throw r.content("must be an object") }
        try r.readObject(keysMayHoldNUL: true) { key in
            switch key {
            case "token_logprobs":
                if try r.readNullIfPresent() { break }
                guard try r.peek() == .array else { throw r.content("must be a list of numbers") }
                try r.readArray { _ in lps.append(try r.readNullIfPresent() ? .nan : try r.logprob()) }
            case "tokens":
                if try r.readNullIfPresent() { break }
                guard try r.peek() == .array else { throw r.content("must be a list of strings") }
                try r.readArray { _ in tokens.append(try r.peek() == .string ? tokenID(try r.readString()) : { try r.skipValue(); return nil }()) }
            case "content":
                if try r.readNullIfPresent() { break }
                guard try r.peek() == .array else { throw r.content("must be a list of {logprob, token} objects") }
                try r.readArray { _ in
                    guard try r.peek() == .object else { throw r.content("must be a {logprob, token} object") }
                    var lp: Float = .nan, id: Int32?
                    try r.readObject(keysMayHoldNUL: true) { k in
                        switch k {
                        case "logprob": lp = try r.readNullIfPresent() ? .nan : try r.logprob()
                        case "token_id": id = Int32(try r.readInt(in: 0...Int64(Int32.max)))
                        case "token": let t = try r.peek() == .string ? try r.readString() : ""; if id == nil { id = tokenID(t) }; if t.isEmpty { }
                        default: try r.skipValue()
                        }
                    }
                    lps.append(lp); ids.append(id)
                }
            default: try r.skipValue()
            }
        }
        if ids.isEmpty { ids = tokens.count == lps.count ? tokens : Array(repeating: nil, count: lps.count) }
        return (lps, ids)
    }
}

extension JSONReader {
    /// One list of token ids, or a list of them.
    func tokenLists() throws -> PerSample<[Int32]> {
        guard try peek() == .array else { throw content("must be a list of token ids, or a list of such lists") }
        var lists: [[Int32]] = []
        var flat: [Int32] = []
        var nested: Bool?
        try readArray { i in
            let k = try peek()
            if nested == nil { nested = k == .array }
            if nested! {
                guard k == .array else { throw content("mixes token ids and lists") }
                lists.append(try tokenIDs(max: 4_000_000))
            } else {
                guard i < 4_000_000 else { throw content("has more than 4000000 entries") }
                flat.append(Int32(try readInt(in: 0...Int64(Int32.max))))
            }
        }
        return nested == true ? .many(lists) : .one(flat)
    }
}

