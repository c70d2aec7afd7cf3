// RunReport: one training step reported by an external trainer, read as the body streams in, and the
// metrics computed from it against what the service stores for those rollouts (inference log-probs,
// routes, expert load), with RL's one implementation of the mismatch metrics (`Mismatch`).
//   body: {"step", "policy_version"?, "metrics"?: {name: number | null | "NaN" | "Infinity" | "-Infinity"},
//          "replay"?: "none" | "R2" | "R3", "rollouts"?: [{"id", "logprobs": [..] | "<base64 float32 LE>",
//          "routes"?: <any routes encoding>, "replay"?: ..}]}
import Foundation
import JSON
import RL
import Routes
import Store

/// A body source that also keeps every byte it delivers (the report's SHA-256 is its idempotency fingerprint).
final class KeepingSource: JSONSource {
    let inner: JSONSource
    var bytes: [UInt8] = []
    init(_ inner: JSONSource) { self.inner = inner }
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = try inner.read(into: buffer)
        bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        return n
    }
}

struct ReportedRollout {
    var id = ""
    var logprobs: [Float]?
    var routes: IncomingRoutes?
    var replay: ReplayMode?
    /// Where errors about it point.
    var path: String
}

struct StepReport {
    var step = -1
    var policyVersion: Int?
    /// The trainer's own scalars; NaN / ±Inf when it sent null or a non-finite marker.
    var metrics: [String: Double] = [:]
    var metricOrder: [String] = []
    var replay: ReplayMode?
    var rollouts: [ReportedRollout] = []
}

extension JSONReader {
    /// Log-probs as a list of finite numbers or a base64 string of little-endian float32; at most `max`.
    func reportedLogprobs(max: Int) throws -> [Float] {
        let path = pathString
        switch try peek() {
        case .array:
            var out: [Float] = []
            try readArray { i in
                guard i < max else { throw content("has more than \(max) entries") }
                guard try peek() == .number else { throw ServiceError.unprocessable("\(path)[\(i)] must be a finite number") }
                let d = try readNumber().double
                guard d.isFinite, abs(d) <= Double(Float.greatestFiniteMagnitude) else { throw ServiceError.unprocessable("\(path)[\(i)] is outside float32's range") }
                out.append(Float(d))
            }
            return out
        case .string:
            var bytes: [UInt8] = []
            var dec = Base64Decoder()
            do {
                try readStringChunks { piece in
                    try dec.feed(piece) { out in
                        if bytes.count + out.count > 4 * max { throw content("has more than \(max) float32 values") }
                        bytes.append(contentsOf: out)
                    }
                }
                try dec.finish()
            } catch let e as RoutesError {
                throw ServiceError.unprocessable("\(path) must be a list of numbers or base64 of little-endian float32: \(e)")
            }
            guard bytes.count % 4 == 0 else { throw content("decodes to \(bytes.count) bytes, not a whole number of float32 values") }
            var out = [Float](repeating: 0, count: bytes.count / 4)
            bytes.withUnsafeBytes { raw in for i in out.indices { out[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) } }
            if let i = out.firstIndex(where: { !$0.isFinite }) {
                throw ServiceError.unprocessable("\(path)[\(i)] is \(out[i].isNaN ? "NaN" : out[i] > 0 ? "Infinity" : "-Infinity"): log-probs must be finite")
            }
            return out
        default: throw content("must be a list of numbers or a base64 string of little-endian float32")
        }
    }

    func replayMode() throws -> ReplayMode {
        guard try peek() == .string, let m = ReplayMode(rawValue: try readString()) else { throw content("must be one of none, R2, R3") }
        return m
    }
}

extension App {
    /// Metric names the service computes for a step; a trainer's metric may not take one of them.
    static var computedRunMetrics: Set<String> {
        Set(Mismatch.metricNames + ["step", "policy_version", "rollouts", "tokens", "expert_load_imbalance", "expert_load_imbalance_max",
                                    "expert_load_imbalance_mean"])
    }

    /// Reads a step report from the body (errors name the field by its path).
    func readStepReport(_ r: JSONReader) throws -> StepReport {
        var s = StepReport()
        var have: Set<String> = []
        let computed = App.computedRunMetrics
        try readBody(r) { key in
            guard have.insert(key).inserted else { throw r.content("\(key) appears twice") }
            switch key {
            case "step": s.step = try r.int(0...Int(Int32.max))
            case "policy_version": s.policyVersion = try r.readNullIfPresent() ? nil : try r.int(0...Int(Int64.max / 2))
            case "replay": s.replay = try r.readNullIfPresent() ? nil : try r.replayMode()
            case "metrics":
                guard try r.peek() == .object else { throw r.content("must be an object of numbers") }
                try r.readObject { name in
                    guard App.isMetricName(name) else { throw r.content("metric names are 1 to 100 visible ASCII characters other than \" and \\") }
                    guard !computed.contains(name) else { throw r.content("is computed by the service from the stored rollouts; report yours under another name") }
                    guard s.metrics[name] == nil else { throw r.content("appears twice") }
                    guard s.metrics.count < 256 else { throw r.content("has more than 256 metrics") }
                    switch try r.peek() {
                    case .number: s.metrics[name] = try r.readNumber().double
                    case .null: try r.readNull(); s.metrics[name] = .nan
                    case .string:
                        switch try r.readString() {
                        case "NaN", "nan": s.metrics[name] = .nan
                        case "Infinity", "inf": s.metrics[name] = .infinity
                        case "-Infinity", "-inf": s.metrics[name] = -.infinity
                        default: throw r.content("must be a number, null (not finite) or \"NaN\", \"Infinity\", \"-Infinity\"")
                        }
                    default: throw r.content("must be a number, null (not finite) or \"NaN\", \"Infinity\", \"-Infinity\"")
                    }
                    s.metricOrder.append(name)
                }
            case "rollouts":
                guard try r.peek() == .array else { throw r.content("must be a list of {id, logprobs} objects") }
                try r.readArray { i in
                    guard i < App.maxReportRollouts else { throw r.content("has more than \(App.maxReportRollouts) rollouts") }
                    var one = ReportedRollout(path: "rollouts[\(i)]")
                    var fields: Set<String> = []
                    guard try r.peek() == .object else { throw r.content("must be an object {id, logprobs, routes?, replay?}") }
                    try r.readObject { k in
                        guard fields.insert(k).inserted else { throw r.content("appears twice") }
                        switch k {
                        case "id":
                            let id = try r.string(max: 64)
                            guard UUID(uuidString: id) != nil else { throw r.content("must be a rollout id (a UUID)") }
                            one.id = id.lowercased()
                        case "logprobs": one.logprobs = try r.reportedLogprobs(max: 4_000_000)
                        case "routes": one.routes = try r.readNullIfPresent() ? nil : try r.routes(maxValues: config.maxRouteValues)
                        case "replay": one.replay = try r.readNullIfPresent() ? nil : try r.replayMode()
                        default: throw ServiceError.unprocessable("unknown field rollouts[\(i)].\(k)")
                        }
                    }
                    guard fields.contains("id") else { throw ServiceError.unprocessable("rollouts[\(i)].id is required") }
                    s.rollouts.append(one)
                }
            default: throw ServiceError.unprocessable("unknown field \(key)")
            }
        }
        guard s.step >= 0 else { throw ServiceError.unprocessable("step is required") }
        var seen: [String: Int] = [:]
        for (i, x) in s.rollouts.enumerated() {
            if let j = seen[x.id] { throw ServiceError.unprocessable("rollouts[\(i)].id repeats rollouts[\(j)].id (\(x.id))") }
            seen[x.id] = i
        }
        return s
    }
}

/// The metrics of one reported step, computed from the report and the stored rollouts.
struct StepComputation {
    var metrics: [String: Double] = [:]
    var load: ExpertLoad?
    var moeLayers: [Int] = []
    var tokens = 0

    /// Checks the report against the stored rollouts (every id stored, one log-prob per response token,
    /// routes in the stored layout) and computes: the mismatch metrics, router disagreement when the
    /// trainer sent its routes, the replay share when it said how it trained, and the expert load.
    init(_ s: StepReport, stored: [String: ReportRollout], tisCap: Double) throws {
        var train: [Float] = [], infer: [Float] = [], rows: [Range<Int>] = []
        var routePairs: [(RouteArray, RouteArray)] = []
        var replayed: [Mismatch.ReplayedSequence] = []
        var layoutOf: (String, [Int], Int)?
        for x in s.rollouts {
            guard let r = stored[x.id] else { throw ServiceError.unprocessable("\(x.path).id: rollout \(x.id) does not exist in this project") }
            let n = r.tokens - r.promptLength
            if let lp = x.logprobs {
                guard lp.count == n else {
                    throw ServiceError.unprocessable("\(x.path).logprobs has \(lp.count) values; rollout \(x.id) has \(n) response tokens")
                }
                let start = train.count
                let inferLP = r.logprobs ?? []
                let hasInfer = inferLP.count == n
                for j in 0..<n where r.promptLength + j >= 1 {   // the row predicting token P + j (as the trainer's packing)
                    let masked = r.lossMask.map { j < $0.count && $0[j] == 0 } ?? false
                    train.append(lp[j])
                    infer.append(hasInfer && !masked ? inferLP[j] : .nan)
                }
                rows.append(start..<train.count)
            }
            let T = r.tokens
            if let shape = r.routeShape {
                let key = (shape.moeLayers.map(String.init).joined(separator: ","), shape.moeLayers, shape.numExperts)
                if let l = layoutOf, l.0 != key.0 || l.2 != key.2 {
                    throw ServiceError.unprocessable("\(x.path).id: rollout \(x.id) has routes of MoE layers \(shape.moeLayers) over \(shape.numExperts) experts; this step's other rollouts have \(l.1) over \(l.2): a step's rollouts come from one model")
                }
                layoutOf = key
                if let load = r.load { if self.load == nil { self.load = load } else { self.load!.add(load) } }
            }
            if let incoming = x.routes {
                guard let shape = r.routeShape, let stored = r.packed else {
                    throw ServiceError.unprocessable("\(x.path).routes: rollout \(x.id) has no stored routes to compare the training routes with")
                }
                let layout: RouteLayout
                do { layout = try RouteLayout(hiddenLayers: shape.hiddenLayers, moeLayers: shape.moeLayers, numExperts: shape.numExperts, topK: shape.topK) } catch {
                    throw ServiceError(500, "the stored route layout of rollout \(x.id) is unreadable: \(error)")
                }
                let mine: RouteArray
                do { mine = try incoming.builder.finish(shape: incoming.shape, rows: [T - 1, T], layout: layout).unpack() } catch let e as RoutesError {
                    throw ServiceError.unprocessable("\(x.path).routes: \(e)")
                }
                let theirs: RouteArray
                do { theirs = try stored.unpack() } catch { throw ServiceError(500, "stored routes of rollout \(x.id) failed their integrity check") }
                routePairs.append((mine, theirs))
            }
            if let mode = x.replay ?? s.replay {
                let rowsIn = r.routeShape?.rows ?? max(0, T - 1)
                replayed.append(Mismatch.ReplayedSequence(replayed: mode == .R3, rows: rowsIn, responseRows: max(0, r.promptLength - 1)..<max(0, T - 1),
                                                          missingRows: r.routeShape == nil ? Array(0..<rowsIn) : (r.missingRows ?? [])))
            }
        }
        let lp = Mismatch.logprobs(train: train, infer: infer, rows: rows, tisCap: tisCap)
        metrics = Mismatch.metrics(lp, routers: routePairs.isEmpty ? nil : Mismatch.routers(routePairs), replay: replayed.isEmpty ? nil : Mismatch.replayShare(replayed))
        tokens = lp.tokens
        moeLayers = layoutOf?.1 ?? []
        if let load {
            let imb = load.imbalance
            metrics["expert_load_imbalance_max"] = imb.max() ?? 0
            metrics["expert_load_imbalance_mean"] = imb.isEmpty ? 0 : imb.reduce(0, +) / Double(imb.count)
        }
    }

    /// The expert load as the reply and the step record show it.
    var loadJSON: [String: Any]? {
        guard let l = load else { return nil }
        let imb = l.imbalance
        return ["moe_layers": moeLayers, "num_experts": l.numExperts, "tokens": l.tokens, "imbalance": imb,
                "imbalance_max": imb.max() ?? 0, "imbalance_mean": imb.isEmpty ? 0 : imb.reduce(0, +) / Double(imb.count),
                "counts": (0..<l.layers).map { Array(l.counts[($0 * l.numExperts)..<(($0 + 1) * l.numExperts)]) }]
    }
}
