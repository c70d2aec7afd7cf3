// ModelHandlers: register a checkpoint directory, create a random model, or register a Hugging Face
// config.json alone (any MoE family) for its route layout; list models and their policy versions, and
// download a version's checkpoint. A model's version 0 is stored in the database in the transaction
// that registers it (in our layout: the registered directory may change later).
import Foundation
import HTTP
import JSON
import MoE
import Routes
import Store

extension App {
    func modelJSON(_ m: ModelRecord) -> [String: Any] {
        let config = (try? JSONReader.parse(Array(m.configJSON.utf8))) ?? .object(JSONObject())
        var o: [String: Any] = ["id": m.id, "name": m.name, "source": m.source, "latest_version": m.latestVersion, "created_at": m.createdAt,
                                "config": config.foundation, "versions_url": "/v1/models/\(m.id)/versions", "has_weights": m.source != "config"]
        if let l = try? RouteLayout(hfConfig: config.objectValue ?? JSONObject()) { o["route_layout"] = l.json.foundation } else { o["route_layout"] = NSNull() }
        return o
    }

    func createModel(_ req: HTTPRequest, project: Int) throws -> HTTPResponse {
        let o = try jsonBody(req)
        let f = try Fields(o, allowed: ["name", "checkpoint_path", "config", "hf_config", "seed", "init_std", "router_std"])
        let name = try f.string("name", required: true, max: 200)!
        let path = try f.string("checkpoint_path", max: 4096)
        let cfgObject = try f.object("config")
        let hf = try f.object("hf_config")
        guard [path != nil, cfgObject != nil, hf != nil].filter({ $0 }).count == 1 else {
            throw ServiceError.unprocessable("give exactly one of checkpoint_path, config (a random model: qwen3_moe, mixtral, glm4_moe or deepseek_v3) or hf_config (a config.json, for its route layout)")
        }
        if let hf {
            for k in ["seed", "init_std", "router_std"] where f.has(k) { throw ServiceError.unprocessable("\(k) applies to a random model (config), not to hf_config") }
            let layout: RouteLayout
            do { layout = try RouteLayout(hfConfig: hf) } catch { throw ServiceError.unprocessable("hf_config: \(error)") }
            _ = layout
            let text = JSONValue.object(hf).jsonText
            guard text.utf8.count <= 256 * 1024 else { throw ServiceError.unprocessable("hf_config is larger than 256 KiB") }
            guard let m = try models.create(project: project, name: name, configJSON: text, source: "config", store: { _, _ in nil }) else {
                throw ServiceError(409, "this project already has a model named '\(name)'")
            }
            return .json(201, modelJSON(m), headers: [("Location", "/v1/models/\(m.id)")])
        }
        let model: Model
        let source: String
        if path != nil { for k in ["seed", "init_std", "router_std"] where f.has(k) { throw ServiceError.unprocessable("\(k) applies to a random model (config), not to checkpoint_path") } }
        if let path {
            guard path.hasPrefix("/") else { throw ServiceError.unprocessable("checkpoint_path must be an absolute path on the server") }
            let dir = URL(fileURLWithPath: path).standardizedFileURL
            if let roots = config.modelRoots, !roots.contains(where: { dir.path == $0 || dir.path.hasPrefix($0 + "/") }) {
                throw ServiceError.unprocessable("checkpoint_path is outside the directories this server allows (R3_MODEL_ROOTS)")
            }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: dir.path, isDirectory: &isDir), isDir.boolValue else {
                throw ServiceError.unprocessable("checkpoint_path is not a directory the server can read")
            }
            let cfg: ModelConfig
            do { cfg = try ModelConfig.load(directory: dir) } catch { throw ServiceError.unprocessable("checkpoint_path: \(error)") }
            guard ParameterLayout(cfg).total <= config.maxModelParams else {
                throw ServiceError.unprocessable("the model has more than \(config.maxModelParams) parameters (R3_MAX_MODEL_PARAMS)")
            }
            do { model = try Model.load(directory: dir) } catch { throw ServiceError.unprocessable("checkpoint_path: \(error)") }
            source = "checkpoint"
        } else {
            let cfg: ModelConfig
            do { cfg = try ModelConfig(json: cfgObject!) } catch { throw ServiceError.unprocessable("config: \(error)") }
            guard ParameterLayout(cfg).total <= config.maxModelParams else {
                throw ServiceError.unprocessable("the model has more than \(config.maxModelParams) parameters (R3_MAX_MODEL_PARAMS)")
            }
            let seed = try f.int("seed", range: 0...Int(Int32.max)) ?? 0
            let std = try f.number("init_std") ?? 0.02
            let routerStd = try f.number("router_std")
            guard std > 0 && std <= 1, (routerStd ?? 0.02) > 0 && (routerStd ?? 0.02) <= 10 else {
                throw ServiceError.unprocessable("init_std must be in (0, 1] and router_std in (0, 10]")
            }
            model = try Model(config: cfg, seed: UInt64(seed), std: Float(std), routerStd: routerStd.map(Float.init))
            source = "random"
        }
        let cfgJSON = String(decoding: try JSONSerialization.data(withJSONObject: model.config.jsonObject(), options: [.sortedKeys]), as: UTF8.self)
        let scratch = try checkpoints.scratch()
        defer { try? FileManager.default.removeItem(at: scratch) }
        let dir = scratch.appendingPathComponent("checkpoint")
        do { try model.save(directory: dir) } catch {
            logger.error("cannot write a model to scratch space", metadata: ["error": "\(error)", "path": .string(dir.path)])
            throw ServiceError(500, "cannot write the model to the data directory's scratch space")
        }
        var stored: CheckpointRecord?
        let created = try models.create(project: project, name: name, configJSON: cfgJSON, source: source) { c, id in
            stored = try CheckpointStore.put(c, model: id, directory: dir)
            return stored!.id
        }
        if created != nil, let stored { checkpoints.adopt(dir, record: stored) }
        guard let m = created else { throw ServiceError(409, "this project already has a model named '\(name)'") }
        return .json(201, modelJSON(m), headers: [("Location", "/v1/models/\(m.id)")])
    }

    func listModels(project: Int) throws -> HTTPResponse {
        .json(200, ["data": try models.list(project: project).map(modelJSON)])
    }

    func getModel(_ id: String, project: Int) throws -> HTTPResponse {
        guard let m = try models.get(project: project, id: id) else { throw ServiceError.notFound("model \(id)") }
        return .json(200, modelJSON(m))
    }

    func modelVersions(_ id: String, project: Int) throws -> HTTPResponse {
        guard try models.get(project: project, id: id) != nil else { throw ServiceError.notFound("model \(id)") }
        let vs = try models.versions(model: id).map { v -> [String: Any] in
            ["version": v.version, "job_id": v.jobID ?? NSNull(), "job_step": v.jobStep ?? NSNull(),
             "checkpointed": v.checkpointID != nil || v.legacyPath != nil, "created_at": v.createdAt,
             "checkpoint_url": v.checkpointID != nil ? "/v1/models/\(id)/versions/\(v.version)/checkpoint" : NSNull()]
        }
        return .json(200, ["data": vs])
    }

    /// A stored checkpoint of a model's policy version: (model, version, manifest).
    func storedCheckpoint(_ id: String, version text: String, project: Int) throws -> (ModelRecord, Int, CheckpointRecord) {
        guard let m = try models.get(project: project, id: id) else { throw ServiceError.notFound("model \(id)") }
        guard let v = Int(text), v >= 0 else { throw ServiceError.unprocessable("version must be a policy version number, not '\(text.prefix(40))'") }
        let found: (version: Int, checkpoint: CheckpointRecord)?
        do { found = try models.checkpoint(model: m.id, version: v) } catch let e as StoreError {
            if case .checkpoint = e { throw ServiceError(409, e.description) }
            throw e
        }
        guard let (_, k) = found else {
            throw ServiceError.notFound("a checkpoint of version \(v) of model \(id) (versions are checkpointed every checkpoint_every steps and at a job's end)")
        }
        return (m, v, k)
    }

    /// The files of a policy version's checkpoint (a Hugging Face directory, plus the AdamW state of a
    /// training checkpoint), with their sizes, SHA-256 and download URLs.
    func checkpointManifest(_ id: String, version: String, project: Int) throws -> HTTPResponse {
        let (m, v, k) = try storedCheckpoint(id, version: version, project: project)
        let base = "/v1/models/\(m.id)/versions/\(v)/checkpoint"
        return .json(200, ["id": k.id, "model_id": m.id, "version": v, "sha256": k.sha256, "bytes": k.bytes, "created_at": k.createdAt,
                           "files": k.files.map { ["name": $0.name, "size": $0.size, "sha256": $0.sha256, "url": "\(base)/\($0.name)"] }])
    }

    /// One file of a checkpoint, streamed from the database chunk by chunk, with its length, its SHA-256
    /// as the ETag and as Repr-Digest (RFC 9530). The digest is checked as it streams; a mismatch (which
    /// would mean corrupted storage) cuts the connection short of Content-Length, so no client takes a
    /// damaged file for a whole one.
    func checkpointFile(_ req: HTTPRequest, _ id: String, version: String, file: String, project: Int) throws -> HTTPResponse {
        let (_, _, k) = try storedCheckpoint(id, version: version, project: project)
        guard let index = k.files.firstIndex(where: { $0.name == file }) else {
            throw ServiceError.notFound("file '\(file.prefix(200))' in checkpoint \(k.id) (it has \(k.files.map(\.name).joined(separator: ", ")))")
        }
        let f = k.files[index]
        let etag = "\"\(f.sha256)\""
        let hex = Array(f.sha256.utf8)
        let digest = Data(stride(from: 0, to: hex.count, by: 2).map { UInt8(String(decoding: hex[$0..<$0 + 2], as: UTF8.self), radix: 16) ?? 0 })
            .base64EncodedString()
        let headers = HTTPHeaders([("Content-Type", file.hasSuffix(".json") ? "application/json" : "application/octet-stream"),
                                   ("ETag", etag), ("Repr-Digest", "sha-256=:\(digest):"), ("Cache-Control", "private, max-age=31536000, immutable"),
                                   ("Content-Disposition", "attachment; filename=\"\(file)\"")])
        if req.headers["If-None-Match"] == etag { return HTTPResponse(status: 304, headers: headers) }
        let pool = self.pool, log = logger
        var r = HTTPResponse(status: 200, headers: headers, stream: { w in
            do {
                try CheckpointStore.read(pool, k, file: index) { w.write($0) }
            } catch {
                log.error("checkpoint download cut short", metadata: ["checkpoint": .string(k.id), "file": .string(file), "error": "\(error)"])
            }
        })
        r.headLength = f.size
        return r
    }
}
