// MoEError: the engine's one error type; every message is one line naming the field, tensor or index.

public enum MoEError: Error, CustomStringConvertible, Equatable {
    /// A config.json field is missing, has the wrong type, or a value the engine cannot honour.
    case config(field: String, reason: String)
    /// A checkpoint tensor is missing, unexpected, or has the wrong shape or dtype.
    case tensor(name: String, reason: String)
    /// A file is unreadable or not in the expected format.
    case file(path: String, reason: String)
    /// Recorded routes do not fit the model or the batch.
    case routes(String)
    /// Token ids, targets, batch layout or sampling parameters are invalid.
    case input(String)

    public var description: String {
        switch self {
        case let .config(field, reason): return "config field '\(field)': \(reason)"
        case let .tensor(name, reason): return "tensor '\(name)': \(reason)"
        case let .file(path, reason): return "\(path): \(reason)"
        case let .routes(reason): return "routes: \(reason)"
        case let .input(reason): return "input: \(reason)"
        }
    }
}
