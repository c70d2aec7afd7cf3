// RouteCache: packed routes this process wrote or read lately, so that a trainer fetching a rollout soon
// after the rollout engine posted it (the usual order in RL) is served from memory instead of
// PostgreSQL detoasting, sending and libpq copying megabytes. An entry is served only while the routes
// row is still the version it was filled from: its (xmin, ctid), read with the rest of the row's small
// columns in a query that leaves the blob alone. A replaced, deleted or rolled-back row, or one another
// process rewrote, no longer matches and is read again. Bounded by bytes (R3_ROUTE_CACHE_MB); the least
// recently used entries go first.
import Foundation
import Routes

public final class RouteCache: @unchecked Sendable {
    /// The process's cache, shared by the primary's and the replica's repositories (physical replicas
    /// keep xmin and ctid).
    public static let shared = RouteCache(limitBytes: 512 << 20)

    struct Entry { var version: String; var routes: PackedRoutes; var tick: UInt64 }
    private let lock = NSLock()
    private var entries: [String: Entry] = [:]
    private var tick: UInt64 = 0
    private var held = 0, hitCount = 0, missCount = 0
    public var bytes: Int { lock.withLock { held } }
    public var hits: Int { lock.withLock { hitCount } }
    public var misses: Int { lock.withLock { missCount } }
    public var limitBytes: Int { get { lock.withLock { limit } } set { lock.withLock { limit = newValue; evict() } } }
    private var limit: Int
    /// Smaller routes are not kept: reading them from the database costs about what the check does.
    public static let minimumBytes = 256 << 10

    public init(limitBytes: Int) { limit = limitBytes }

    /// The row version of routes row t, as text columns (readable in text and binary results alike).
    static let versionColumns = "t.xmin::text || ':' || t.ctid::text AS row_version"

    static func version(_ res: PGResult, _ row: Int) throws -> String { String(decoding: try res.bytes(row, "row_version"), as: UTF8.self) }

    static func key(_ project: Int, _ id: String) -> String { "\(project)|\(id.lowercased())" }

    /// The routes of (project, id) if the cached entry is of `version`.
    func get(project: Int, id: String, version: String) -> PackedRoutes? {
        lock.lock(); defer { lock.unlock() }
        let k = RouteCache.key(project, id)
        guard var e = entries[k], e.version == version else { missCount += 1; return nil }
        tick += 1; e.tick = tick; entries[k] = e
        hitCount += 1
        return e.routes
    }

    func put(project: Int, id: String, version: String, _ p: PackedRoutes) {
        guard p.bytes.count >= RouteCache.minimumBytes else { return }
        lock.lock(); defer { lock.unlock() }
        guard p.bytes.count <= limit / 4 else { return }
        let k = RouteCache.key(project, id)
        if let old = entries[k] { held -= old.routes.bytes.count }
        tick += 1
        entries[k] = Entry(version: version, routes: p, tick: tick)
        held += p.bytes.count
        evict()
    }

    func remove(project: Int, id: String) {
        lock.lock(); defer { lock.unlock() }
        if let old = entries.removeValue(forKey: RouteCache.key(project, id)) { held -= old.routes.bytes.count }
    }

    public func removeAll() { lock.withLock { entries.removeAll(); held = 0 } }

    public var count: Int { lock.withLock { entries.count } }

    /// Under the lock: drops least recently used entries until 90% of the limit is left.
    private func evict() {
        guard held > limit else { return }
        for (k, e) in entries.sorted(by: { $0.value.tick < $1.value.tick }) {
            if held <= limit * 9 / 10 { break }
            entries.removeValue(forKey: k); held -= e.routes.bytes.count
        }
    }
}
