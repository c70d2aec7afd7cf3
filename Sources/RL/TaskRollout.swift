// TaskRollout: a built-in task's batches for a policy: sampled rollouts with rewards (RL), reference
// answers (SFT) and a greedy evaluation. Every batch is a pure function of (seed, step), so a resumed
// job sees the very prompts it would have seen.
import MoE

public struct RolloutConfig: Sendable {
    public var promptsPerStep = 8
    /// Samples per prompt (the GRPO group size).
    public var samplesPerPrompt = 8
    /// nil: the task's longest answer plus <eos> and two spare tokens.
    public var maxTokens: Int? = nil
    public var temperature: Float = 1
    public var seed: UInt64 = 0
    public init() {}
}

extension Task {
    /// The problems of batch `step`.
    public func problems(count: Int, seed: UInt64, step: Int, stream: UInt64) -> [Problem] {
        var rng = SeededRandom(seed: seed &* 0x9E37_79B9 &+ UInt64(step) &* 0x1000_0001 &+ stream)
        return (0..<count).map { _ in sample(&rng) }
    }
}

extension Policy {
    func checkVocab() throws {
        guard config.vocabSize >= CharTokenizer.vocabSize else {
            throw RLError.invalid("built-in tasks need vocab_size >= \(CharTokenizer.vocabSize) (the character tokenizer); the model has \(config.vocabSize)")
        }
    }

    /// Rollouts of step `step`: `promptsPerStep` problems × `samplesPerPrompt` samples on the inference
    /// engine, with routes, sampling log-probs and rewards. Group g holds the samples of problem g.
    public func rollout(task: Task, step: Int, _ c: RolloutConfig) throws -> (samples: [Sample], problems: [Task.Problem]) {
        try checkVocab()
        let tok = CharTokenizer()
        let problems = task.problems(count: c.promptsPerStep, seed: c.seed, step: step, stream: 1)
        var prompts: [[Int32]] = []
        for p in problems { let ids = try tok.encode(p.prompt); for _ in 0..<c.samplesPerPrompt { prompts.append(ids) } }
        let sampling = SamplingParams(maxTokens: c.maxTokens ?? task.maxAnswerLength + 3, temperature: c.temperature,
                                      seed: c.seed &* 0x5851_F42D &+ UInt64(step) &* 0x10_0001, stopTokens: [CharTokenizer.eos])
        let gens = try generate(prompts, sampling: sampling)
        let samples = gens.enumerated().map { i, g -> Sample in
            let problem = problems[i / c.samplesPerPrompt]
            let reward = Task.reward(response: tok.decode(g.generated), answer: problem.answer)
            return Sample(tokens: g.tokens, promptLength: g.promptLength, inferLogprobs: g.logprobs, routes: g.routes,
                          reward: reward, group: i / c.samplesPerPrompt, finishReason: g.finishReason)
        }
        return (samples, problems)
    }

    /// Reference answers of SFT batch `step`: prompt + answer + <eos>.
    public func supervisedBatch(task: Task, step: Int, batch: Int, seed: UInt64) throws -> [Sample] {
        try checkVocab()
        let tok = CharTokenizer()
        return try task.problems(count: batch, seed: seed, step: step, stream: 2).enumerated().map { i, p in
            let prompt = try tok.encode(p.prompt)
            return Sample(tokens: prompt + (try tok.encode(p.answer, bos: false)) + [CharTokenizer.eos], promptLength: prompt.count,
                          reward: 1, group: i)
        }
    }

    /// Mean reward of greedy answers to `count` held-out problems (stream 3: never trained on by batch order).
    public func evaluate(task: Task, count: Int, seed: UInt64) throws -> Double {
        try checkVocab()
        let tok = CharTokenizer()
        let problems = task.problems(count: count, seed: seed, step: 0, stream: 3)
        let gens = try generate(try problems.map { try tok.encode($0.prompt) },
                                sampling: SamplingParams(maxTokens: task.maxAnswerLength + 3, temperature: 0, stopTokens: [CharTokenizer.eos]))
        return zip(gens, problems).reduce(0) { $0 + Task.reward(response: tok.decode($1.0.generated), answer: $1.1.answer) } / Double(max(1, count))
    }
}
