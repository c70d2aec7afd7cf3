// Maintenance: a thread of `r3 serve` and `r3 worker` that, at start and every R3_RETENTION_SECONDS,
// makes this and next week's route partitions of every project and applies every project's route
// retention (one process at a time: an advisory lock; the others skip the round).
import CPosix
import Foundation
import Log
import Logging
import Store

public final class Maintenance: @unchecked Sendable {
    let pool: ConnectionPool
    let interval: Double
    let log = R3Log.logger("r3.maintenance")
    private let cond = NSCondition()
    private var stopping = false
    private let done = DispatchGroup()

    public init(pool: ConnectionPool, interval: Double) { self.pool = pool; self.interval = interval }

    /// One round: partitions, then retention. Errors are logged (the next round tries again).
    public func round() {
        do { try RoutePartitions.prepare(pool) } catch { log.error("cannot make route partitions", metadata: ["error": "\(error)"]) }
        do {
            for (project, outcome) in try RoutePartitions.apply(pool) {
                for d in outcome.dropped {
                    log.notice("route partition dropped", metadata: ["project": .stringConvertible(project), "start": .string(d.start),
                                                                     "routes": .stringConvertible(d.routes), "bytes": .stringConvertible(d.bytes)])
                }
                for d in outcome.deferred {
                    log.warning("route partition past retention not dropped this round", metadata: ["project": .stringConvertible(project),
                                                                                                   "start": .string(d.partition.start), "reason": .string(d.reason)])
                }
                for h in outcome.held {
                    log.info("route partition past retention kept for jobs", metadata: ["project": .stringConvertible(project),
                                                                                       "start": .string(h.partition.start), "jobs": "\(h.jobs)"])
                }
            }
        } catch { log.error("route retention failed", metadata: ["error": "\(error)"]) }
    }

    public func start() {
        done.enter()
        let t = Thread { [self] in
            r3_name_this_thread("r3-maintenance")
            defer { done.leave() }
            while true {
                round()
                cond.lock()
                let deadline = Date().addingTimeInterval(interval)
                while !stopping && Date() < deadline { _ = cond.wait(until: deadline) }
                let stop = stopping
                cond.unlock()
                if stop { return }
            }
        }
        t.name = "r3-maintenance"
        t.start()
    }

    public func stop() { cond.lock(); stopping = true; cond.broadcast(); cond.unlock(); done.wait() }
}
