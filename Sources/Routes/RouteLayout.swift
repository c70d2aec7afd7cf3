// RouteLayout: which decoder layers of a model have a router, and so the shape its routes take: every
// hidden layer (SGLang, vLLM, verl, slime send that, dense layers' rows 0) or the MoE layers only (NeMo-RL,
// Megatron). Read from a Hugging Face config.json by every convention in use for marking dense layers.
import JSON

public struct RouteLayout: Sendable, Equatable {
    /// num_hidden_layers.
    public var hiddenLayers: Int
    /// The hidden-layer index of each MoE layer, increasing: the stored layer axis.
    public var moeLayers: [Int]
    public var numExperts: Int
    public var topK: Int

    public init(hiddenLayers: Int, moeLayers: [Int], numExperts: Int, topK: Int) throws {
        guard hiddenLayers >= 1, hiddenLayers <= 4096 else { throw RoutesError.invalid("num_hidden_layers must be in 1...4096, got \(hiddenLayers)") }
        guard numExperts >= 1, numExperts <= 65_535 else { throw RoutesError.invalid("num_experts must be in 1...65535, got \(numExperts)") }
        guard topK >= 1, topK <= numExperts else { throw RoutesError.invalid("top_k must be in 1...\(numExperts), got \(topK)") }
        guard !moeLayers.isEmpty else { throw RoutesError.invalid("the model has no MoE layer") }
        for (i, l) in moeLayers.enumerated() {
            guard l >= 0, l < hiddenLayers else { throw RoutesError.invalid("MoE layer \(l) is outside 0..<\(hiddenLayers)") }
            guard i == 0 || l > moeLayers[i - 1] else { throw RoutesError.invalid("MoE layers must be increasing and distinct") }
        }
        self.hiddenLayers = hiddenLayers; self.moeLayers = moeLayers; self.numExperts = numExperts; self.topK = topK
    }

    /// Every layer an MoE layer.
    public static func allMoE(layers: Int, numExperts: Int, topK: Int) throws -> RouteLayout {
        try RouteLayout(hiddenLayers: layers, moeLayers: Array(0..<layers), numExperts: numExperts, topK: topK)
    }

    public var denseLayers: [Int] { let m = Set(moeLayers); return (0..<hiddenLayers).filter { !m.contains($0) } }
    public var hasDenseLayers: Bool { moeLayers.count < hiddenLayers }

    public var json: JSONValue {
        .object(JSONObject([("num_hidden_layers", .int(Int64(hiddenLayers))), ("moe_layers", .array(moeLayers.map { .int(Int64($0)) })),
                            ("dense_layers", .array(denseLayers.map { .int(Int64($0)) })),
                            ("num_experts", .int(Int64(numExperts))), ("top_k", .int(Int64(topK)))]))
    }
}

extension RouteLayout {
    /// The layout of a Hugging Face `config.json` (multimodal configs: their `text_config`). Expert count:
    /// `num_experts` / `n_routed_experts` / `num_local_experts` / `moe_num_experts`; top-k:
    /// `num_experts_per_tok` / `moe_k` / `moe_topk` / `num_experts_per_token` / `experts_per_token`. A
    /// layer is MoE when every dense-layer convention present says so:
    /// - `first_k_dense_replace` (DeepSeek-V2/V3, Kimi-K2, GLM-4.5, dots1, Ling): l >= k, and with
    ///   `moe_layer_freq` (DeepSeek's own modeling code) l % freq == 0, or a per-layer 0/1 list;
    /// - `decoder_sparse_step` and `mlp_only_layers` (Qwen2/3-MoE, Qwen3-Next): (l + 1) % step == 0 and l not listed;
    /// - `moe_layers`, else `interleave_moe_layer_step` (Llama 4);
    /// - `mlp_layer_types` ("sparse" / "dense" per layer);
    /// - `moe_layer_start_index` / `moe_layer_end_index` / `moe_layer_interval` (ERNIE 4.5);
    /// - `expert_layer_period` / `expert_layer_offset` (Jamba).
    /// Without any, every layer is MoE (Mixtral, OLMoE, gpt-oss, Phi-MoE). Errors name the field.
    public init(hfConfig root: JSONObject) throws {
        var c = root
        if let t = root["text_config"]?.objectValue, t["num_hidden_layers"] != nil { c = t }
        func fail(_ field: String, _ why: String) -> RoutesError { .invalid("config.\(field) \(why)") }
        func int(_ k: String) throws -> Int? {
            guard let v = c[k], !v.isNull else { return nil }
            guard let i = v.intValue, i >= 0, i <= 1 << 30 else {
                if case .array = v { throw fail(k, "is a per-layer list; per-layer values are not supported") }
                throw fail(k, "must be a non-negative integer")
            }
            return Int(i)
        }
        func intList(_ k: String) throws -> [Int]? {
            guard let v = c[k], !v.isNull else { return nil }
            guard let a = v.arrayValue else { throw fail(k, "must be a list of integers") }
            return try a.map { x in guard let i = x.intValue, i >= 0, i <= 1 << 30 else { throw fail(k, "must be a list of non-negative integers") }; return Int(i) }
        }
        func first(_ keys: [String]) throws -> (String, Int)? {
            for k in keys { if let v = try int(k) { return (k, v) } }
            return nil
        }
        if c["per_layer_config"].map({ !$0.isNull }) == true {
            throw fail("per_layer_config", "overrides layers one by one; give the route layout explicitly instead")
        }
        guard let hidden = try int("num_hidden_layers") else { throw fail("num_hidden_layers", "is missing") }
        guard hidden >= 1, hidden <= 4096 else { throw fail("num_hidden_layers", "must be in 1...4096, got \(hidden)") }
        guard let (ek, experts) = try first(["num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts"]) else {
            throw fail("num_experts", "is missing (also looked for n_routed_experts, num_local_experts, moe_num_experts): not an MoE config")
        }
        guard experts >= 1 else { throw fail(ek, "is 0: not an MoE config") }
        guard experts <= 65_535 else { throw fail(ek, "must be at most 65535, got \(experts)") }
        guard let (_, k) = try first(["num_experts_per_tok", "moe_k", "moe_topk", "num_experts_per_token", "experts_per_token"]) else {
            throw fail("num_experts_per_tok", "is missing (also looked for moe_k, moe_topk, num_experts_per_token, experts_per_token)")
        }
        var moe = Array(repeating: true, count: hidden)
        if let k = try int("first_k_dense_replace") { for l in 0..<min(k, hidden) { moe[l] = false } }
        if let v = c["moe_layer_freq"], !v.isNull {
            if let list = v.arrayValue {
                guard list.count == hidden, list.allSatisfy({ $0.intValue == 0 || $0.intValue == 1 }) else {
                    throw fail("moe_layer_freq", "as a list must hold one 0 or 1 per hidden layer")
                }
                for l in 0..<hidden where list[l].intValue == 0 { moe[l] = false }
            } else {
                guard let f = try int("moe_layer_freq"), f >= 1 else { throw fail("moe_layer_freq", "must be a positive integer") }
                for l in 0..<hidden where l % f != 0 { moe[l] = false }
            }
        }
        if let step = try int("decoder_sparse_step") {
            guard step >= 1 else { throw fail("decoder_sparse_step", "must be a positive integer") }
            for l in 0..<hidden where (l + 1) % step != 0 { moe[l] = false }
        }
        if let only = try intList("mlp_only_layers") {
            for l in only { guard l < hidden else { throw fail("mlp_only_layers", "lists layer \(l), outside 0..<\(hidden)") }; moe[l] = false }
        }
        if let listed = try intList("moe_layers") {
            let s = Set(listed)
            for l in listed where l >= hidden { throw fail("moe_layers", "lists layer \(l), outside 0..<\(hidden)") }
            for l in 0..<hidden where !s.contains(l) { moe[l] = false }
        } else if let step = try int("interleave_moe_layer_step") {
            guard step >= 1 else { throw fail("interleave_moe_layer_step", "must be a positive integer") }
            for l in 0..<hidden where (l + 1) % step != 0 { moe[l] = false }
        }
        if let v = c["mlp_layer_types"], !v.isNull {
            guard let types = v.arrayValue, types.count == hidden, types.allSatisfy({ $0.stringValue == "sparse" || $0.stringValue == "dense" }) else {
                throw fail("mlp_layer_types", "must list \"sparse\" or \"dense\" for each of the \(hidden) layers")
            }
            for l in 0..<hidden where types[l].stringValue == "dense" { moe[l] = false }
        }
        if c["moe_layer_start_index"] != nil || c["moe_layer_end_index"] != nil || c["moe_layer_interval"] != nil {
            let start = try int("moe_layer_start_index") ?? 0
            let interval = try int("moe_layer_interval") ?? 1
            guard interval >= 1 else { throw fail("moe_layer_interval", "must be a positive integer") }
            var end = hidden - 1
            if let v = c["moe_layer_end_index"], !v.isNull {
                guard let e = v.intValue, e >= -1 else { throw fail("moe_layer_end_index", "must be an integer >= -1") }
                if e >= 0 { end = Int(e) }
            }
            for l in 0..<hidden where !((l + 1) % interval == 0 && l >= start && l <= end) { moe[l] = false }
        }
        if let period = try int("expert_layer_period") {
            guard period >= 1 else { throw fail("expert_layer_period", "must be a positive integer") }
            let offset = try int("expert_layer_offset") ?? 0
            for l in 0..<hidden where l % period != offset { moe[l] = false }
        }
        let layers = (0..<hidden).filter { moe[$0] }
        guard !layers.isEmpty else { throw fail("num_hidden_layers", "leaves no MoE layer after the dense-layer settings") }
        try self.init(hiddenLayers: hidden, moeLayers: layers, numExperts: experts, topK: k)
    }
}
