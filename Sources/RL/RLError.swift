// RLError: the RL module's one error type. Messages are one line and name the offending field.
public enum RLError: Error, CustomStringConvertible, Equatable {
    /// A request or config value the trainer cannot honour.
    case invalid(String)
    public var description: String {
        switch self { case let .invalid(m): return m }
    }
}
