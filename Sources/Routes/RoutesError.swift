// RoutesError: the Routes module's one error type; one line, naming what was wrong and where.

public enum RoutesError: Error, CustomStringConvertible, Equatable {
    /// The bytes are not in the claimed encoding.
    case malformed(String)
    /// Well-formed, but the content breaks the routes contract (shape, range, duplicates).
    case invalid(String)

    public var description: String {
        switch self {
        case let .malformed(m): return m
        case let .invalid(m): return m
        }
    }
}
