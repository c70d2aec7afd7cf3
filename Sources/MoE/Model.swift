// Model: an MoE model's config and fp32 weights in one flat buffer; random init, and checkpoint load and
// save in the Hugging Face layout (model.safetensors, or shards plus model.safetensors.index.json).
import Foundation

public final class Model {
    public let config: ModelConfig
    public let layout: ParameterLayout
    public let params: Buffer<Float>

    /// A zero-filled model; weights are then loaded or drawn.
    public init(config: ModelConfig) throws {
        try config.validate()
        self.config = config
        layout = ParameterLayout(config)
        params = Buffer(count: layout.total)
    }

    /// A randomly initialised model: matrices ~ N(0, std²) (HF's initializer_range), norm weights 1,
    /// biases and buffers (e_score_correction_bias) 0.
    /// `routerStd` overrides the router's std: larger values make routing decisive rather than near-uniform.
    public convenience init(config: ModelConfig, seed: UInt64, std: Float = 0.02, routerStd: Float? = nil) throws {
        try self.init(config: config)
        var rng = SeededRandom(seed: seed)
        for slot in layout.tensors {
            let p = params.base + slot.offset
            switch slot.role {
            case .norm: p.update(repeating: 1, count: slot.count)
            case .bias, .buffer: p.update(repeating: 0, count: slot.count)
            case .matrix:
                let s = Double(slot.name.hasSuffix(".gate.weight") ? (routerStd ?? std) : std)
                for i in 0..<slot.count { p[i] = Float(rng.normal() * s) }
            }
        }
    }

    /// A copy with its own weights (e.g. the inference engine's copy of the training policy).
    public func clone() -> Model {
        let m = try! Model(config: config)
        m.params.copy(from: params)
        return m
    }

    // MARK: checkpoints

    /// Loads `config.json` and the weights of a Hugging Face checkpoint directory. f32, bf16 and f16
    /// tensors load into f32. A missing, unexpected or misshapen tensor is an error naming it. Tensors of
    /// multi-token-prediction layers (num_nextn_predict_layers, numbered after the decoder layers) are
    /// skipped, as transformers skips them.
    public static func load(directory: URL) throws -> Model {
        let config = try ModelConfig.load(directory: directory)
        let model = try Model(config: config)
        let files = try checkpointFiles(directory)
        var seen = Set<String>()
        let expected = Dictionary(uniqueKeysWithValues: model.layout.tensors.map { ($0.name, $0) })
        for url in files {
            let file = try SafetensorsFile(url: url)
            for (name, entry) in file.entries.sorted(by: { $0.key < $1.key }) {
                guard let slot = expected[name] else {
                    // Tied checkpoints sometimes still carry lm_head; rotary caches are derived, not weights.
                    if (name == "lm_head.weight" && config.tieWordEmbeddings) || name.hasSuffix("rotary_emb.inv_freq") { continue }
                    if config.mtpLayers > 0, let l = layerIndex(name), l >= config.numLayers, l < config.numLayers + config.mtpLayers { continue }
                    throw MoEError.tensor(name: name, reason: "is not a parameter of this \(config.family.rawValue) config (\(url.lastPathComponent))")
                }
                guard entry.shape == slot.shape else {
                    throw MoEError.tensor(name: name, reason: "has shape \(entry.shape), config implies \(slot.shape)")
                }
                guard [.f32, .bf16, .f16].contains(entry.dtype) else {
                    throw MoEError.tensor(name: name, reason: "dtype \(entry.dtype.rawValue) is not one of F32, BF16, F16")
                }
                try file.readFloats(name, into: model.params.base + slot.offset, count: slot.count)
                seen.insert(name)
            }
        }
        for slot in model.layout.tensors where !seen.contains(slot.name) {
            throw MoEError.tensor(name: slot.name, reason: "missing from checkpoint \(directory.path)")
        }
        return model
    }

    /// N of a `model.layers.N.` tensor name.
    static func layerIndex(_ name: String) -> Int? {
        guard name.hasPrefix("model.layers.") else { return nil }
        return Int(name.dropFirst("model.layers.".count).prefix { $0 != "." })
    }

    static func checkpointFiles(_ dir: URL) throws -> [URL] {
        let fm = FileManager.default
        let single = dir.appendingPathComponent("model.safetensors")
        if fm.fileExists(atPath: single.path) { return [single] }
        let indexURL = dir.appendingPathComponent("model.safetensors.index.json")
        guard let data = fm.contents(atPath: indexURL.path) else {
            throw MoEError.file(path: dir.path, reason: "neither model.safetensors nor model.safetensors.index.json is present")
        }
        guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let map = obj["weight_map"] as? [String: String] else {
            throw MoEError.file(path: indexURL.path, reason: "no weight_map object")
        }
        let shards = Set(map.values).sorted()
        for s in shards where s.contains("/") || s.hasPrefix(".") {
            throw MoEError.file(path: indexURL.path, reason: "shard name '\(s)' must be a plain file name")
        }
        return shards.map { dir.appendingPathComponent($0) }
    }

    /// Writes `config.json` and the weights in the Hugging Face layout. Above `maxShardBytes` the
    /// weights are split into `model-0000i-of-0000n.safetensors` shards with an index.
    public func save(directory: URL, dtype: STDType = .f32, maxShardBytes: Int = 4 << 30) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try config.write(directory: directory)
        var shards: [SafetensorsWriter] = [SafetensorsWriter()]
        var names: [[String]] = [[]]
        for slot in layout.tensors {
            let bytes = slot.count * dtype.size
            if shards[shards.count - 1].byteCount > 0 && shards[shards.count - 1].byteCount + bytes > maxShardBytes {
                shards.append(SafetensorsWriter()); names.append([])
            }
            shards[shards.count - 1].add(slot.name, floats: UnsafeBufferPointer(start: params.base + slot.offset, count: slot.count),
                                         shape: slot.shape, as: dtype)
            names[names.count - 1].append(slot.name)
        }
        let fm = FileManager.default
        for stale in (try? fm.contentsOfDirectory(atPath: directory.path)) ?? []
        where stale.hasSuffix(".safetensors") || stale == "model.safetensors.index.json" {
            try? fm.removeItem(at: directory.appendingPathComponent(stale))
        }
        if shards.count == 1 {
            try shards[0].write(to: directory.appendingPathComponent("model.safetensors"))
            return
        }
        var weightMap: [String: String] = [:]
        for (i, shard) in shards.enumerated() {
            let file = String(format: "model-%05d-of-%05d.safetensors", i + 1, shards.count)
            try shard.write(to: directory.appendingPathComponent(file))
            for n in names[i] { weightMap[n] = file }
        }
        let index: [String: Any] = ["metadata": ["total_size": layout.total * dtype.size], "weight_map": weightMap]
        let data = try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: directory.appendingPathComponent("model.safetensors.index.json"), options: .atomic)
    }
}
