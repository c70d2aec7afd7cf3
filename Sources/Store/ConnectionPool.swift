// ConnectionPool: a fixed number of libpq connections handed out one caller at a time. A connection
// that went bad (server restart) is reconnected on checkout; a read that fails on a broken connection
// is retried once on a fresh one.
import Foundation

public final class ConnectionPool: @unchecked Sendable {
    public let size: Int
    public let conninfo: String
    private let cond = NSCondition()
    private var idle: [PGConnection] = []
    private var opened = 0

    public init(conninfo: String, size: Int) {
        self.conninfo = conninfo
        self.size = max(1, size)
    }

    /// Connections currently open and idle, for /metrics.
    public var stats: (open: Int, idle: Int, size: Int) { cond.lock(); defer { cond.unlock() }; return (opened, idle.count, size) }

    /// Runs `body` with a connection of its own.
    public func with<T>(_ body: (PGConnection) throws -> T) throws -> T {
        let c = try checkout()
        defer { checkin(c) }
        return try body(c)
    }

    /// Like `with`, retried once on a new connection when the database was unavailable: for reads and
    /// for writes that are idempotent.
    public func withRetry<T>(_ body: (PGConnection) throws -> T) throws -> T {
        do { return try with(body) } catch StoreError.unavailable {
            discardIdle()   // after a server restart every idle connection is dead, though libpq cannot tell yet
            return try with(body)
        }
    }

    /// Runs `body` inside BEGIN … COMMIT (ROLLBACK on error).
    public func transaction<T>(_ body: (PGConnection) throws -> T) throws -> T {
        try with { c in
            try c.query("BEGIN")
            do {
                let v = try body(c)
                try c.query("COMMIT")
                return v
            } catch {
                _ = try? c.query("ROLLBACK")
                throw error
            }
        }
    }

    private func checkout() throws -> PGConnection {
        cond.lock()
        while idle.isEmpty && opened >= size { cond.wait() }
        if let c = idle.popLast() {
            cond.unlock()
            do { try c.ensureConnected() } catch { drop(); throw error }
            return c
        }
        opened += 1
        cond.unlock()
        do { return try PGConnection(conninfo: conninfo) } catch { drop(); throw error }
    }

    private func checkin(_ c: PGConnection) {
        cond.lock()
        if c.isHealthy { idle.append(c) } else { opened -= 1 }
        cond.signal()
        cond.unlock()
    }

    /// Closes every idle connection; the next checkouts open fresh ones.
    public func discardIdle() {
        cond.lock(); opened -= idle.count; idle.removeAll(); cond.broadcast(); cond.unlock()
    }

    private func drop() { cond.lock(); opened -= 1; cond.signal(); cond.unlock() }
}
