// Sample: one sequence a policy is trained on — prompt + response tokens, what inference recorded
// (sampling log-probs and routes, either may be missing for external rollouts), reward and group.
import MoE
import Routes

public struct Sample: Sendable {
    public var tokens: [Int32]
    public var promptLength: Int
    /// One per response token (tokens.count − promptLength), from the inference engine.
    public var inferLogprobs: [Float]?
    /// Inference routes, [T − 1 or T, moe_layers, K].
    public var routes: RouteArray?
    public var reward: Double
    /// Samples of one prompt share a group; advantages are normalised within it.
    public var group: Int
    public var finishReason: String

    public init(tokens: [Int32], promptLength: Int, inferLogprobs: [Float]? = nil, routes: RouteArray? = nil, reward: Double = 0,
                group: Int = 0, finishReason: String = "stop") {
        self.tokens = tokens; self.promptLength = promptLength; self.inferLogprobs = inferLogprobs; self.routes = routes
        self.reward = reward; self.group = group; self.finishReason = finishReason
    }

    public var responseLength: Int { tokens.count - promptLength }
}

public enum ReplayMode: String, Sendable, CaseIterable {
    case none
    /// Routes recorded by the training engine's old-policy forward, replayed in the mini-steps.
    case R2
    /// The inference engine's routes, replayed in every training forward.
    case R3
}
