// ModelHandlers: register a checkpoint directory, create a random model, or register a Hugging Face
// config.json alone (any MoE family) for its route layout; list models and their policy versions. A
// model's version 0 is written under the data directory before the row commits.
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
            throw ServiceError.unprocessable("give exactly one of checkpoint_path, config (a random Qwen3-MoE) or hf_config (a config.json, for its route layout)")
        }
        if let hf {
            for k in ["seed", "init_std", "router_std"] where f.has(k) { throw ServiceError.unprocessable("\(k) applies to a random model (config), not to hf_config") }
            let layout: RouteLayout
            do { layout = try RouteLayout(hfConfig: hf) } catch { throw ServiceError.unprocessable("hf_config: \(error)") }
            _ = layout
            let text = JSONValue.object(hf).jsonText
            guard text.utf8.count <= 256 * 1024 else { throw ServiceError.unprocessable("hf_config is larger than 256 KiB") }
            guard let m = try models.create(project: project, name: name, configJSON: text, source: "config", checkpointPath: { _ in nil }) else {
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
        let dataDir = dataDirectory
        let created = try models.create(project: project, name: name, configJSON: cfgJSON, source: source) { id in
            // version 0: a copy in our layout under the data directory (the registered directory may change later)
            let dir = dataDir.appendingPathComponent("models/\(id)/v0")
            do { try model.save(directory: dir) } catch { throw ServiceError(500, "cannot write the model under the data directory") }
            return dir.path
        }
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
             "checkpointed": v.checkpointPath != nil, "created_at": v.createdAt]
        }
        return .json(200, ["data": vs])
    }
}
