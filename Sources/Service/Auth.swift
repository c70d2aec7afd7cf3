// Auth: who a request is, from its bearer key, cached for a few seconds (a revoked or expired key stops in
// every process within `ttl`; the database sees one lookup per key per TTL, not one per request), what
// each route needs (scopes), and each project's request rate (a token bucket per project and process).
import Foundation
import HTTP
import MoE
import Store

final class AuthCache: @unchecked Sendable {
    let ttl: Double
    private let lock = NSLock()
    private var entries: [String: (principal: Principal?, until: ContinuousClock.Instant)] = [:]

    init(ttl: Double) { self.ttl = ttl }

    /// The principal of `key` (nil: unknown, revoked or expired), from the cache while fresh. Unknown keys
    /// are remembered for a second, so guessing does not reach the database on every try.
    func principal(_ key: String, lookup: (String) throws -> Principal?) throws -> Principal? {
        let id = SHA256.hex(Array(key.utf8))   // the cache never holds the key itself
        let now = ContinuousClock.now
        lock.lock()
        if let e = entries[id], now < e.until { lock.unlock(); return e.principal }
        lock.unlock()
        if HTTPInline.isActive { throw HTTPInline.WouldBlock() }   // the event loop never waits for the database
        let p = try lookup(key)
        var keep = p == nil ? min(1, ttl) : ttl
        if let until = p?.validUntil { keep = min(keep, max(0, until - Date().timeIntervalSince1970)) }   // never past expiry
        lock.lock()
        if entries.count > 10_000 { entries.removeAll(keepingCapacity: true) }
        entries[id] = (p, now + .milliseconds(Int(keep * 1000)))
        lock.unlock()
        return p
    }
}

/// Requests per second per project: a token bucket (rate, burst) per project in this process.
final class RateLimiter: @unchecked Sendable {
    private let lock = NSLock()
    private var buckets: [Int: (tokens: Double, at: ContinuousClock.Instant)] = [:]

    /// nil when the request may go; else the seconds until a token is back (Retry-After).
    func take(project: Int, rate: Double, burst: Int) -> Double? {
        let now = ContinuousClock.now
        lock.lock(); defer { lock.unlock() }
        var b = buckets[project] ?? (Double(burst), now)
        let elapsed = (now - b.at).inSeconds
        b.tokens = min(Double(burst), b.tokens + elapsed * rate)
        b.at = now
        if b.tokens >= 1 { b.tokens -= 1; buckets[project] = b; return nil }
        buckets[project] = b
        return (1 - b.tokens) / rate
    }
}

extension App {
    /// The request's principal: 401 without a usable key, 403 without one of `scopes`, 429 past the project's rate.
    func authorize(_ req: HTTPRequest, scopes: [Scope]) throws -> Principal {
        guard let h = req.headers["Authorization"], h.lowercased().hasPrefix("bearer ") else {
            throw ServiceError(401, "missing bearer API key (Authorization: Bearer r3_...)")
        }
        let key = App.bearerToken(h)
        guard let p = try authCache.principal(key, lookup: { try keys.authenticate($0) }) else {
            throw ServiceError(401, "invalid, revoked or expired API key")
        }
        if !scopes.isEmpty && !scopes.contains(where: { p.scopes.contains($0.rawValue) }) {
            throw ServiceError(403, "this key lacks the \(scopes.map(\.rawValue).joined(separator: " or ")) scope (it has \(p.scopes.sorted().joined(separator: ", ")))")
        }
        if let rate = p.quotas.requestsPerSecond {
            let burst = p.quotas.requestBurst ?? max(1, Int(rate.rounded(.up)))
            if let wait = rateLimiter.take(project: p.projectID, rate: rate, burst: burst) {
                throw ServiceError(429, "the project's request rate is \(rate) per second (burst \(burst)); retry after \(Int(wait.rounded(.up))) s",
                                   headers: [("Retry-After", String(max(1, Int(wait.rounded(.up)))))])
            }
        }
        return p
    }
}

/// Uploads in progress per project: one tenant's stalled or slow uploads cannot take every upload thread.
final class UploadGate: @unchecked Sendable {
    private let lock = NSLock()
    private var running: [Int: Int] = [:]
    let limit: Int
    init(limit: Int) { self.limit = limit }

    /// Counts an upload in, or says no when the project has `limit` already.
    func enter(_ project: Int) -> Bool {
        lock.lock(); defer { lock.unlock() }
        let n = running[project, default: 0]
        if n >= limit { return false }
        running[project] = n + 1
        return true
    }

    func leave(_ project: Int) {
        lock.lock(); defer { lock.unlock() }
        let n = running[project, default: 1] - 1
        running[project] = n > 0 ? n : nil
    }
}
