// Routing: recorded expert choices as data. The routes contract's type, RouteArray (Routes), is the one
// the engine replays: [rows, moe_layers, top_k] int32, token-major. `Routing` tells a forward pass to
// route live or to replay one array per sequence.
import Routes

extension RouteArray {
    /// Checks an array against a model and a sequence of `tokens` tokens: the model's MoE layers and
    /// top-k, `tokens` or `tokens - 1` rows, then the contract (ids in [0, experts), no duplicate within
    /// a (token, layer), a missing entry only as a whole row of -1). Throws a one-line MoEError naming
    /// the first offending index.
    public func validate(tokens: Int, moeLayers: Int, topK k: Int, experts: Int) throws {
        guard layers == moeLayers, topK == k else {
            throw MoEError.routes("shape \(shape) does not match the model: expected [\(tokens) or \(tokens - 1), \(moeLayers), \(k)]")
        }
        guard rows == tokens || rows == tokens - 1 else {
            throw MoEError.routes("\(rows) rows for a sequence of \(tokens) tokens: expected \(tokens) or \(tokens - 1)")
        }
        do { try validate(numExperts: experts) } catch let RoutesError.invalid(m) { throw MoEError.routes(m) }
    }
}

public enum Routing: Sendable {
    /// The live router: top-k of the softmax.
    case live
    /// Force these experts, one table per sequence of the batch (T or T-1 rows each).
    case replay([RouteArray])
}
