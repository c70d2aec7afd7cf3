// Numerics: how an engine instance computes. Training is fp32; inference defaults to bf16, with a
// batch-invariant deterministic mode as the control.

public enum Precision: String, Sendable, CaseIterable {
    /// Plain fp32 products and weights.
    case fp32
    /// Weights and every matmul input rounded to bf16 (nearest-even); fp32 accumulation.
    case bf16
    /// W8A8 FP8 as rollout engines serve it: the linear layers' weights e4m3 with a scale per output row,
    /// their inputs e4m3 with a dynamic scale per token; routers, embeddings, LM head, norms and attention
    /// stay bf16; fp32 accumulation.
    case fp8
}

public struct Numerics: Sendable, Equatable {
    public var precision: Precision
    /// Products over token rows run in fixed tiles, so a sequence's outputs are bit-identical
    /// whether it runs alone or inside any batch.
    public var batchInvariant: Bool

    public init(precision: Precision, batchInvariant: Bool = false) {
        self.precision = precision
        self.batchInvariant = batchInvariant
    }

    public static let fp32 = Numerics(precision: .fp32)
    public static let bf16 = Numerics(precision: .bf16)
    public static let deterministic = Numerics(precision: .bf16, batchInvariant: true)
    public static let fp8 = Numerics(precision: .fp8)

    /// Parses "fp32", "bf16", "fp8", "deterministic" (bf16, batch-invariant), "fp32-deterministic" or "fp8-deterministic".
    public init?(name: String) {
        switch name {
        case "fp32": self = .fp32
        case "bf16": self = .bf16
        case "deterministic", "bf16-deterministic": self = .deterministic
        case "fp32-deterministic": self = Numerics(precision: .fp32, batchInvariant: true)
        case "fp8": self = .fp8
        case "fp8-deterministic": self = Numerics(precision: .fp8, batchInvariant: true)
        default: return nil
        }
    }

    public var name: String {
        switch (precision, batchInvariant) {
        case (.fp32, false): return "fp32"
        case (.bf16, false): return "bf16"
        case (.bf16, true): return "deterministic"
        case (.fp32, true): return "fp32-deterministic"
        case (.fp8, false): return "fp8"
        case (.fp8, true): return "fp8-deterministic"
        }
    }
}
