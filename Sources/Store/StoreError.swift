// StoreError: the Store module's one error type. Messages never contain connection strings or passwords.

public enum StoreError: Error, CustomStringConvertible, Equatable {
    /// The database could not be reached or the connection broke (retryable: 503).
    case unavailable(String)
    /// A statement failed; `sqlState` is PostgreSQL's five-character code.
    case query(sqlState: String, message: String)
    /// The embedded cluster could not be initialised or started.
    case embedded(String)
    /// A migration failed.
    case migration(file: String, message: String)
    /// A row was not in the expected shape.
    case decode(String)
    /// A stored checkpoint is missing, incomplete or does not match its checksums, or its files cannot
    /// be read or written locally.
    case checkpoint(String)
    /// Routes for a week the retention dropped.
    case expired(String)

    public var description: String {
        switch self {
        case let .unavailable(m): return "database unavailable: \(m)"
        case let .query(state, m): return "database error \(state): \(m)"
        case let .embedded(m): return "embedded PostgreSQL: \(m)"
        case let .migration(file, m): return "migration \(file): \(m)"
        case let .decode(m): return "unexpected row: \(m)"
        case let .checkpoint(m): return "checkpoint store: \(m)"
        case let .expired(m): return m
        }
    }

    public var isUniqueViolation: Bool { if case let .query(s, _) = self { return s == "23505" }; return false }
}
