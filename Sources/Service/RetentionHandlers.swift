// RetentionHandlers: a project's route retention (keep N days and/or each model's last K policy versions),
// its week partitions with their routes and bytes, the partitions retention dropped, and applying it now.
// The maintenance loop (Maintenance.swift) applies every project's policy every R3_RETENTION_SECONDS.
import Foundation
import HTTP
import JSON
import Store

extension App {
    func retentionState(project: Int) throws -> [String: Any] {
        let (policy, parts, dropped) = try pool.withRetry { c in
            (try RoutePartitions.policy(c, project: project), try RoutePartitions.partitions(c, project: project),
             try RoutePartitions.dropped(c, project: project))
        }
        var o = policy.json
        o["interval_seconds"] = config.retentionSeconds
        o["partitions"] = parts.map { ["start": $0.start, "end": $0.end, "routes": $0.routes, "bytes": $0.bytes] }
        o["dropped"] = dropped.map { d -> [String: Any] in
            ["start": d.start, "end": d.end, "routes": d.routes, "bytes": d.bytes, "dropped_at": d.droppedAt,
             "policy": (try? JSONSerialization.jsonObject(with: Data(d.policyJSON.utf8))) ?? [:]]
        }
        return o
    }

    func getRetention(project: Int) throws -> HTTPResponse { .json(200, try retentionState(project: project)) }

    /// Replaces the policy: a field left out or null keeps routes for ever by that criterion.
    func putRetention(_ req: HTTPRequest, project: Int) throws -> HTTPResponse {
        let f = try Fields(try jsonBody(req), allowed: ["keep_days", "keep_versions"])
        let p = RetentionPolicy(keepDays: try f.int("keep_days", range: 1...36_500), keepVersions: try f.int("keep_versions", range: 1...1_000_000))
        try RoutePartitions.setPolicy(pool, project: project, p)
        logger.notice("route retention set", metadata: ["project": .stringConvertible(project), "keep_days": "\(p.keepDays.map(String.init) ?? "none")",
                                                         "keep_versions": "\(p.keepVersions.map(String.init) ?? "none")"])
        return .json(200, try retentionState(project: project))
    }

    /// Applies the project's policy now: what it dropped, and what jobs hold past it.
    func applyRetention(project: Int) throws -> HTTPResponse {
        let outcome = try RoutePartitions.apply(pool, project: project, wait: true)[project] ?? RoutePartitions.RetentionOutcome()
        for d in outcome.dropped {
            logger.notice("route partition dropped", metadata: ["project": .stringConvertible(project), "start": .string(d.start),
                                                                "routes": .stringConvertible(d.routes), "bytes": .stringConvertible(d.bytes)])
        }
        var o = try retentionState(project: project)
        o["dropped_now"] = outcome.dropped.map { ["start": $0.start, "end": $0.end, "routes": $0.routes, "bytes": $0.bytes] }
        o["deferred"] = outcome.deferred.map { ["start": $0.partition.start, "end": $0.partition.end, "reason": $0.reason] }
        o["held"] = outcome.held.map { ["start": $0.partition.start, "end": $0.partition.end, "routes": $0.partition.routes, "jobs": $0.jobs] }
        return .json(200, o)
    }
}
