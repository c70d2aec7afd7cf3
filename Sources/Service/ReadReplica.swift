// ReadReplica: route fetches and rollout listings may be served by a streaming replica
// (DATABASE_URL_READ), so that trainers fetching routes do not load the primary. A read must still see
// its caller's writes: after a write to a project's rollouts or routes this process notes the
// primary's WAL position (and returns it as R3-Write-LSN); a read of that project (or one that sends
// R3-Min-LSN, e.g. a trainer whose writes went through another server) goes to the replica only once
// it has replayed that far, waiting up to R3_READ_REPLICA_WAIT seconds, else to the primary. A rollout
// the replica does not have yet is looked up on the primary. Responses say which served them
// (R3-Read-From). Without DATABASE_URL_READ everything reads the primary.
import Foundation
import HTTP
import Log
import Logging
import Store

final class ReadRouting: @unchecked Sendable {
    let primary: ConnectionPool
    let replica: ConnectionPool?
    let wait: Double
    private let lock = NSLock()
    /// Per project, the primary's WAL position after this process's last write of its rollouts or routes.
    private var written: [Int: UInt64] = [:]
    /// The replica's replay position when last asked (it only moves forward).
    private var replayed: UInt64 = 0
    private let log = R3Log.logger("r3.replica")

    init(primary: ConnectionPool, replica: ConnectionPool?, wait: Double) {
        self.primary = primary; self.replica = replica; self.wait = wait
    }

    /// "16/B374D848" → 0x16_B374D848.
    static func parse(_ s: String) -> UInt64? {
        let parts = s.split(separator: "/")
        guard parts.count == 2, let hi = UInt64(parts[0], radix: 16), let lo = UInt64(parts[1], radix: 16), hi <= 0xFFFF_FFFF, lo <= 0xFFFF_FFFF else { return nil }
        return hi << 32 | lo
    }

    static func format(_ lsn: UInt64) -> String { String(lsn >> 32, radix: 16, uppercase: true) + "/" + String(lsn & 0xFFFF_FFFF, radix: 16, uppercase: true) }

    /// After a committed write of `project`'s rollouts or routes: its WAL position (nil without a replica).
    func noteWrite(project: Int) -> UInt64? {
        guard replica != nil else { return nil }
        guard let text = try? primary.withRetry({ try $0.query("SELECT pg_current_wal_lsn()::text AS lsn").string(0, "lsn") }),
              let lsn = ReadRouting.parse(text) else { return nil }
        lock.lock(); written[project] = max(written[project] ?? 0, lsn); lock.unlock()
        return lsn
    }

    /// The pool a read of `project` may use, and its name for R3-Read-From.
    func pool(project: Int, atLeast client: UInt64?) -> (ConnectionPool, String) {
        guard let replica else { return (primary, "primary") }
        lock.lock(); let need = max(written[project] ?? 0, client ?? 0); let have = replayed; lock.unlock()
        if need <= have { return (replica, "replica") }
        let deadline = ContinuousClock.now + .milliseconds(Int(wait * 1000))
        while true {
            let text: String?
            do { text = try replica.withRetry { try $0.query("SELECT pg_last_wal_replay_lsn()::text AS lsn").stringOrNil(0, "lsn") } } catch {
                log.warning("the read replica is unavailable; reading the primary", metadata: ["error": "\(error)"])
                return (primary, "primary")
            }
            guard let text, let lsn = ReadRouting.parse(text) else { return (primary, "primary") }   // not a standby
            lock.lock(); replayed = max(replayed, lsn); lock.unlock()
            if lsn >= need { return (replica, "replica") }
            if ContinuousClock.now >= deadline { return (primary, "primary") }
            Thread.sleep(forTimeInterval: 0.005)
        }
    }
}

extension App {
    /// The rollouts repository a read of `project` uses (the replica when it is fresh enough for the
    /// caller), and its name.
    func readSource(_ req: HTTPRequest, project: Int) throws -> (RolloutRepository, String) {
        var client: UInt64?
        if let h = req.headers["R3-Min-LSN"] {
            guard let v = ReadRouting.parse(h) else { throw ServiceError.badRequest("R3-Min-LSN must be a WAL position such as 16/B374D848 (an R3-Write-LSN)") }
            client = v
        }
        let (pool, name) = reads.pool(project: project, atLeast: client)
        return (RolloutRepository(pool: pool), name)
    }

    /// Runs a read on the chosen database; on the primary instead when the replica is unreachable, or
    /// when `stale` says the replica's answer lacks something the primary may have.
    func readRollouts<T>(_ req: HTTPRequest, project: Int, stale: (T) -> Bool = { _ in false }, _ body: (RolloutRepository) throws -> T) throws -> (T, String) {
        let (repo, name) = try readSource(req, project: project)
        guard name == "replica" else { return (try body(repo), name) }
        do {
            let v = try body(repo)
            return stale(v) ? (try body(rollouts), "primary") : (v, name)
        } catch StoreError.unavailable(let why) {
            logger.warning("the read replica is unavailable; reading the primary", metadata: ["error": .string(why)])
            return (try body(rollouts), "primary")
        } catch StoreError.query(let state, _) where state == "40001" {
            // a query the standby cancelled for a conflict with recovery (e.g. a dropped partition replayed)
            return (try body(rollouts), "primary")
        }
    }

    /// Reads one row by id: a row the replica does not have yet (written through another server that the
    /// caller did not name with R3-Min-LSN) is looked up on the primary.
    func readByID<T>(_ req: HTTPRequest, project: Int, _ body: (RolloutRepository) throws -> T?) throws -> (T?, String) {
        try readRollouts(req, project: project, stale: { $0 == nil }, body)
    }
}
