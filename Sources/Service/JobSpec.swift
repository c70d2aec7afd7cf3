// JobSpec: a job request, validated once and stored normalised (every default filled in) as the job's
// params; the worker reads the same spec back. Field errors are 422 and name the field.
import Foundation
import JSON
import MoE
import RL

/// The numerics a job's inference engine samples with (training is always fp32).
enum Precision: String, CaseIterable, Sendable {
    case bf16, fp32, deterministic, fp8
    var numerics: Numerics {
        switch self {
        case .bf16: return .bf16
        case .fp32: return .fp32
        case .fp8: return .fp8
        case .deterministic: return .deterministic
        }
    }
}

/// What a collapse alarm does to a train job: continue (alert only), pause (resumable), or stop (state collapsed).
enum CollapseAction: String, CaseIterable, Sendable {
    case `continue`, pause, stop
}

/// A train job's batch limits (prompts per step, samples per prompt, samples per step): the job spec
/// enforces them, and clients that check before submitting (`r3 study`) read them from here.
public enum TrainBatchLimits {
    public static let batchSize = 1...256
    public static let n = 2...64
    public static let samples = 4096
}

struct JobSpec {
    enum Kind: String, CaseIterable { case rollout, sft, train }
    var type: Kind
    var model: String
    /// The policy version to start from (nil: the newest checkpointed one).
    var policyVersion: Int?
    var maxAttempts = 3
    var seed = 0
    // rollout
    var prompts: [[Int32]] = []
    var n = 1
    var maxTokens: Int?
    var temperature = 1.0
    var topP = 1.0
    var topK = 0
    var stopTokenIDs: [Int] = []
    var precision = Precision.bf16
    // sft / train
    var task: String?
    var difficulty: Int?
    var rolloutIDs: [String]?
    var steps = 20
    var batchSize = 8
    var learningRate = 1e-4
    var algorithm = Algorithm.grpo
    var replay = ReplayMode.R3
    var tis = false
    var tisCap = 2.0
    var miniSteps = 1
    var maxGradNorm = 1.0
    /// Load-balancing aux loss coefficient (sft and train; HF's router_aux_loss_coef, softmax routers only).
    var auxLossCoef = 0.0
    var checkpointEvery = 5
    var evalEvery = 10
    /// What a collapse alarm does to a train job: continue (alert only), pause, or stop (state collapsed).
    var onCollapse = CollapseAction.continue
    var collapse = CollapseRules()

    var numerics: Numerics { precision.numerics }
    var builtInTask: Task? { task.flatMap { Task.Kind(rawValue: $0) }.flatMap { try? Task(kind: $0, difficulty: difficulty) } }

    /// Parses and validates a request body (`vocab`: the model's vocabulary, for token checks).
    init(_ o: JSONObject, vocab: (String) throws -> Int) throws {
        let known: Set<String> = ["type", "model", "policy_version", "max_attempts", "seed", "prompts", "n", "max_tokens", "temperature",
                                  "top_p", "top_k", "stop_token_ids", "precision", "task", "difficulty", "rollout_ids", "steps", "batch_size",
                                  "learning_rate", "algorithm", "replay", "tis", "tis_cap", "mini_steps", "max_grad_norm", "checkpoint_every",
                                  "eval_every", "on_collapse", "collapse", "aux_loss_coef"]
        let f = try Fields(o, allowed: known)
        guard let t = try f.string("type", required: true, max: 20), let kind = Kind(rawValue: t) else {
            throw ServiceError.unprocessable("type must be rollout, sft or train")
        }
        type = kind
        model = try f.string("model", required: true, max: 64)!
        guard UUID(uuidString: model) != nil else { throw ServiceError.unprocessable("model must be a model id (a UUID)") }
        let V = try vocab(model)
        policyVersion = try f.int("policy_version", range: 0...1_000_000_000)
        maxAttempts = try f.int("max_attempts", range: 1...20) ?? maxAttempts
        seed = try f.int("seed", range: 0...Int(Int32.max)) ?? seed
        task = try JobSpec.choice(f, "task", Task.Kind.self)?.rawValue
        difficulty = try f.int("difficulty", range: 1...12)
        if let k = task.flatMap(Task.Kind.init) {
            do { _ = try Task(kind: k, difficulty: difficulty) } catch { throw ServiceError.unprocessable("\(error)") }
            if V < CharTokenizer.vocabSize { throw ServiceError.unprocessable("built-in tasks need a model with vocab_size >= \(CharTokenizer.vocabSize)") }
        }
        maxTokens = try f.int("max_tokens", range: 1...4096)
        temperature = try f.number("temperature") ?? temperature
        guard (0...10).contains(temperature) else { throw ServiceError.unprocessable("temperature must be in 0...10") }
        precision = try JobSpec.choice(f, "precision", Precision.self) ?? precision
        steps = try f.int("steps", range: 1...100_000) ?? steps
        switch kind {
        case .rollout: try parseRollout(f, o, vocab: V)
        case .sft: try parseSFT(f)
        case .train: try parseTrain(f)
        }
        if kind == .rollout && o["aux_loss_coef"] != nil { throw ServiceError.unprocessable("aux_loss_coef applies to sft and train jobs") }
        if kind != .train && (o["on_collapse"] != nil || o["collapse"] != nil) {
            throw ServiceError.unprocessable("on_collapse and collapse apply to train jobs")
        }
        if kind != .rollout {
            auxLossCoef = try f.number("aux_loss_coef") ?? auxLossCoef
            guard auxLossCoef >= 0 && auxLossCoef <= 10 else { throw ServiceError.unprocessable("aux_loss_coef must be in 0...10") }
            guard learningRate > 0 && learningRate <= 1 else { throw ServiceError.unprocessable("learning_rate must be in (0, 1]") }
            checkpointEvery = try f.int("checkpoint_every", range: 1...100_000) ?? checkpointEvery
        }
    }

    static func choice<E: RawRepresentable & CaseIterable>(_ f: Fields, _ k: String, _: E.Type) throws -> E? where E.RawValue == String {
        guard let v = try f.string(k, max: 40) else { return nil }
        guard let e = E(rawValue: v) else {
            throw ServiceError.unprocessable("\(k) must be one of \(E.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return e
    }

    /// A rollout job's sampling settings and prompts.
    private mutating func parseRollout(_ f: Fields, _ o: JSONObject, vocab V: Int) throws {
        n = try f.int("n", range: 1...64) ?? n
        topP = try f.number("top_p") ?? topP
        guard topP > 0 && topP <= 1 else { throw ServiceError.unprocessable("top_p must be in (0, 1]") }
        topK = try f.int("top_k", range: 0...100_000) ?? topK
        stopTokenIDs = try f.intList("stop_token_ids") ?? []
        guard stopTokenIDs.count <= 64 else { throw ServiceError.unprocessable("stop_token_ids has more than 64 entries") }
        if let bad = stopTokenIDs.first(where: { $0 >= V }) { throw ServiceError.unprocessable("stop_token_ids: \(bad) is outside [0, \(V))") }
        guard let list = try? f.list("prompts"), !list.isEmpty, list.count <= 1024 else {
            throw ServiceError.unprocessable("prompts must be a list of 1 to 1024 prompts")
        }
        guard list.count * n <= 4096 else { throw ServiceError.unprocessable("prompts × n must be at most 4096 samples") }
        let usedText = try parsePrompts(list, vocab: V)
        if usedText && o["stop_token_ids"] == nil { stopTokenIDs = [Int(CharTokenizer.eos)] }
        if maxTokens == nil { maxTokens = 64 }
    }

    /// The prompts, as token ids or text for the built-in tokenizer; whether any was text.
    private mutating func parsePrompts(_ list: [JSONValue], vocab V: Int) throws -> Bool {
        var usedText = false
        for (i, p) in list.enumerated() {
            guard let d = p.objectValue, d.count == 1 else { throw ServiceError.unprocessable("prompts[\(i)] must be {\"token_ids\": [...]} or {\"text\": \"...\"}") }
            let pf = Fields(d, path: "prompts[\(i)]")
            if d["text"] != nil {
                let text = try pf.string("text", required: true, max: 8192)!
                guard V >= CharTokenizer.vocabSize else { throw ServiceError.unprocessable("prompts[\(i)].text needs a model with vocab_size >= \(CharTokenizer.vocabSize) (the built-in tokenizer)") }
                do { prompts.append(try CharTokenizer().encode(text)) } catch { throw ServiceError.unprocessable("prompts[\(i)].\(error)") }
                usedText = true
            } else if d["token_ids"] != nil {
                let ids = try pf.intList("token_ids", required: true)!
                guard !ids.isEmpty, ids.count <= 8192 else { throw ServiceError.unprocessable("prompts[\(i)].token_ids must have 1 to 8192 entries") }
                if let bad = ids.first(where: { $0 >= V }) { throw ServiceError.unprocessable("prompts[\(i)].token_ids: \(bad) is outside [0, \(V))") }
                prompts.append(ids.map(Int32.init))
            } else {
                throw ServiceError.unprocessable("prompts[\(i)] must be {\"token_ids\": [...]} or {\"text\": \"...\"}")
            }
        }
        return usedText
    }

    private mutating func parseSFT(_ f: Fields) throws {
        guard task != nil else { throw ServiceError.unprocessable("an sft job needs task (addition, sort or reverse)") }
        batchSize = try f.int("batch_size", range: 1...512) ?? 32
        learningRate = try f.number("learning_rate") ?? 1e-3
        evalEvery = try f.int("eval_every", range: 1...100_000) ?? evalEvery
    }

    /// A train job: online on a task or offline on stored rollouts, its algorithm and its collapse rules.
    private mutating func parseTrain(_ f: Fields) throws {
        if f.has("rollout_ids") {
            guard let l = try? f.list("rollout_ids"), !l.isEmpty, l.count <= 4096 else { throw ServiceError.unprocessable("rollout_ids must be a list of 1 to 4096 ids") }
            rolloutIDs = try l.enumerated().map { i, v in
                guard let s = v.stringValue, UUID(uuidString: s) != nil else { throw ServiceError.unprocessable("rollout_ids[\(i)] must be a rollout id (a UUID)") }
                return s.lowercased()
            }
        }
        guard (task == nil) != (rolloutIDs == nil) else { throw ServiceError.unprocessable("a train job needs exactly one of task or rollout_ids") }
        batchSize = try f.int("batch_size", range: TrainBatchLimits.batchSize) ?? batchSize
        n = try f.int("n", range: TrainBatchLimits.n) ?? 8
        guard batchSize * n <= TrainBatchLimits.samples else {
            throw ServiceError.unprocessable("batch_size × n must be at most \(TrainBatchLimits.samples) samples")
        }
        learningRate = try f.number("learning_rate") ?? learningRate
        algorithm = try JobSpec.choice(f, "algorithm", Algorithm.self) ?? algorithm
        replay = try JobSpec.choice(f, "replay", ReplayMode.self) ?? replay
        tis = try f.bool("tis") ?? tis
        tisCap = try f.number("tis_cap") ?? tisCap
        guard tisCap >= 1 && tisCap <= 100 else { throw ServiceError.unprocessable("tis_cap must be in 1...100") }
        miniSteps = try f.int("mini_steps", range: 1...64) ?? miniSteps
        maxGradNorm = try f.number("max_grad_norm") ?? maxGradNorm
        guard maxGradNorm > 0 && maxGradNorm <= 1e6 else { throw ServiceError.unprocessable("max_grad_norm must be in (0, 1e6]") }
        onCollapse = try JobSpec.choice(f, "on_collapse", CollapseAction.self) ?? onCollapse
        if f.has("collapse") {
            guard let d = try? f.object("collapse") else { throw ServiceError.unprocessable("collapse must be an object of rule overrides") }
            do { collapse = try CollapseRules(json: d) } catch { throw ServiceError.unprocessable("\(error)") }
        }
    }

    /// The normalised params, stored with the job (every default explicit).
    var json: [String: Any] {
        var o: [String: Any] = ["type": type.rawValue, "model": model, "max_attempts": maxAttempts, "seed": seed, "precision": precision.rawValue,
                                "temperature": temperature]
        if let v = policyVersion { o["policy_version"] = v }
        if let t = task { o["task"] = t; o["difficulty"] = difficulty ?? Task.defaultDifficulty(Task.Kind(rawValue: t)!) }
        if let m = maxTokens { o["max_tokens"] = m }
        switch type {
        case .rollout:
            o["prompts"] = prompts.map { ["token_ids": $0.map(Int.init)] }
            o["n"] = n; o["top_p"] = topP; o["top_k"] = topK; o["stop_token_ids"] = stopTokenIDs
        case .sft:
            o["steps"] = steps; o["batch_size"] = batchSize; o["learning_rate"] = learningRate; o["checkpoint_every"] = checkpointEvery
            o["eval_every"] = evalEvery; o["aux_loss_coef"] = auxLossCoef
        case .train:
            o["steps"] = steps; o["batch_size"] = batchSize; o["n"] = n; o["learning_rate"] = learningRate
            o["algorithm"] = algorithm.rawValue; o["replay"] = replay.rawValue; o["tis"] = tis; o["tis_cap"] = tisCap
            o["mini_steps"] = miniSteps; o["max_grad_norm"] = maxGradNorm; o["checkpoint_every"] = checkpointEvery
            o["aux_loss_coef"] = auxLossCoef
            o["on_collapse"] = onCollapse.rawValue; o["collapse"] = collapse.json
            if let ids = rolloutIDs { o["rollout_ids"] = ids }
        }
        return o
    }
}
