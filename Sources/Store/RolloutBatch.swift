// RolloutBatch: many rollouts written in one transaction through binary COPY, while the caller is still
// reading the next ones. Each rollout's routes go to a writer thread as soon as they are packed; it streams
// them into `COPY routes … FROM STDIN (FORMAT binary)` (the blob itself is sent as it is, never copied
// into a row), so PostgreSQL stores rollout i on one core while the request's thread parses rollout i + 1
// on the other. The rollout rows follow in a second COPY, then the commit: all or nothing.
import CPosix
import Foundation
import Routes

extension RolloutRepository {
    /// Inserts the rollouts `next` yields (nil ends them) in one transaction, within the route storage
    /// quota; returns their ids in order. An error from `next` rolls back every rollout of the batch.
    public func insertBatch(project: Int, _ next: () throws -> NewRollout?) throws -> [String] {
        try pool.transaction { c in
            // one created_at for the batch: now() is the transaction's start, the default of rollouts.created_at
            let k = try c.query("""
                SELECT \(raw: SQL(stringLiteral: RolloutRepository.nowKey)),
                       (extract(epoch FROM now()) * 1000000)::bigint - 946684800000000 AS us
                """)
            let key = try RolloutRepository.partitionKey(k, 0)
            let micros = Int64(try k.int(0, "us"))
            try RoutePartitions.ensure(c, project: project, key)
            let quota = try c.query("SELECT route_bytes, max_route_bytes FROM projects WHERE id = \(project) FOR UPDATE")
            let stored = try quota.intOrNil(0, "route_bytes") ?? 0, limit = try quota.intOrNil(0, "max_route_bytes")
            let writer = RouteCopyWriter(c, project: project, createdAt: micros)
            var rows: [(UUID, NewRollout)] = []
            var adding = 0
            do {
                while var r = try next() {
                    let id = UUID()
                    if let p = r.routes {
                        adding += p.bytes.count
                        if let limit, stored + adding > limit { throw QuotaExceeded(stored: stored, adding: adding, limit: limit) }
                        try writer.add(id: id, p, tokens: r.tokenIDs.count)
                        r.routes = PackedRoutes(rows: p.rows, layers: p.layers, topK: p.topK, numExperts: p.numExperts, width: p.width,
                                                bytes: Data(), checksum: 0, hiddenLayers: p.hiddenLayers, moeLayers: p.moeLayers)   // the shape stays, the bytes go
                    }
                    rows.append((id, r))
                }
            } catch {
                writer.abort()
                throw error
            }
            try writer.finish()
            // every routes row must carry its rollout's created_at exactly (the partition key): checked, not assumed
            let routed = rows.filter { $0.1.routes != nil }.map { $0.0.uuidString.lowercased() }
            if !routed.isEmpty {
                let n = try c.query("""
                    SELECT count(*) AS n FROM routes WHERE project_id = \(project) AND created_at = now() AND rollout_id = ANY(\(RolloutRepository.pgArray(routed))::uuid[])
                    """).int(0, "n")
                guard n == routed.count else { throw StoreError.query(sqlState: "", message: "batch routes were written with another created_at than their rollouts'") }
            }
            try c.copyIn("""
                COPY rollouts (id, project_id, model, policy_version, token_ids, prompt_length, logprobs, reward, group_id, metadata,
                               loss_mask, turns, routes_stored, route_shape, route_moe_layers) FROM STDIN (FORMAT binary)
                """) { send in
                try BinaryCopy.header.withUnsafeBytes(send)
                for (id, r) in rows {
                    var row = BinaryCopy(fields: 15)
                    row.uuid(id); row.int8(project); row.text(r.model); row.int8(r.policyVersion)
                    row.int4Array(r.tokenIDs); row.int4(r.promptLength); row.bytea(RolloutRepository.floatData(r.logprobs))
                    row.float8(r.reward); row.text(r.groupID); row.jsonb(r.metadataJSON)
                    row.bytea(r.lossMask.map { Data($0) }); row.int4(r.turns); row.bool(r.routes != nil)
                    if let p = r.routes {
                        row.int4Array([p.rows, p.layers, p.topK, p.numExperts, p.hiddenLayers]); row.int4Array(p.moeLayers)
                    } else {
                        row.null(); row.null()
                    }
                    try row.data.withUnsafeBytes(send)
                }
                try BinaryCopy.trailer.withUnsafeBytes(send)
            }
            return rows.map { $0.0.uuidString.lowercased() }
        }
    }

    /// The partition key of now(): what a rollout inserted in this transaction gets as created_at.
    static let nowKey = "now()::text AS key_at, (date_trunc('week', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')::text AS key_week"
}

/// The writer thread of a batch: takes packed routes from a queue of at most two and streams them into
/// one COPY on the batch's connection (which nothing else uses until `finish` or `abort` returns).
final class RouteCopyWriter: @unchecked Sendable {
    private enum Item { case routes(UUID, PackedRoutes, Int), end, abort }
    private let cond = NSCondition()
    private var queue: [Item] = []
    private var failure: Error?
    private var done = false
    private let capacity = 2

    /// The batch's connection, lent to the writer thread while the batch's own thread leaves it alone.
    private struct Lent: @unchecked Sendable { let c: PGConnection }

    init(_ connection: PGConnection, project: Int, createdAt micros: Int64) {
        let lent = Lent(c: connection)
        let t = Thread { [self] in
            let c = lent.c
            Thread.current.name = "r3-copy-routes"; r3_name_this_thread("r3-copy-routes")
            do {
                try c.copyIn("""
                    COPY routes (project_id, created_at, rollout_id, rows, layers, top_k, num_experts, width, checksum, hidden_layers,
                                 moe_layers, expert_counts, missing_rows, data) FROM STDIN (FORMAT binary)
                    """) { send in
                    try BinaryCopy.header.withUnsafeBytes(send)
                    while true {
                        switch take() {
                        case .abort: throw CancellationError()
                        case .end:
                            try BinaryCopy.trailer.withUnsafeBytes(send)
                            return
                        case let .routes(id, p, tokens):
                            try p.verify()
                            let (load, missing) = try ExpertLoad.count(p, tokens: tokens)
                            let allMoE = p.moeLayers == Array(0..<p.layers) && p.hiddenLayers == p.layers
                            var row = BinaryCopy(fields: 14)
                            row.int8(project); row.timestamptz(microsecondsSince2000: micros); row.uuid(id)
                            row.int4(p.rows); row.int4(p.layers); row.int4(p.topK); row.int4(p.numExperts); row.int2(p.width)
                            row.int8(Int(p.checksum))
                            if allMoE { row.null(); row.null() } else { row.int4(p.hiddenLayers); row.int4Array(p.moeLayers) }
                            row.bytea(load.bytes); row.int4Array(missing)
                            row.byteaLength(p.bytes.count)
                            try row.data.withUnsafeBytes(send)
                            try p.bytes.withUnsafeBytes(send)
                        }
                    }
                }
            } catch {
                cond.lock(); if failure == nil { failure = error }; cond.unlock()
            }
            cond.lock(); done = true; queue.removeAll(); cond.broadcast(); cond.unlock()
        }
        t.start()
    }

    private func take() -> Item {
        cond.lock(); defer { cond.unlock() }
        while queue.isEmpty { cond.wait() }
        let item = queue.removeFirst()
        cond.broadcast()
        return item
    }

    private func put(_ item: Item, waiting: Bool) throws {
        cond.lock(); defer { cond.unlock() }
        while waiting && queue.count >= capacity && !done { cond.wait() }
        if let e = failure { throw e }
        if done { return }
        queue.append(item)
        cond.broadcast()
    }

    /// Hands over one rollout's routes (waits while two are queued); rethrows the writer's error.
    func add(id: UUID, _ p: PackedRoutes, tokens: Int) throws { try put(.routes(id, p, tokens), waiting: true) }

    /// Ends the COPY and waits for it; throws the writer's error.
    func finish() throws {
        try put(.end, waiting: true)
        cond.lock(); defer { cond.unlock() }
        while !done { cond.wait() }
        if let e = failure { throw e }
    }

    /// Aborts the COPY (the transaction then rolls back) and waits until the connection is free.
    func abort() {
        cond.lock()
        queue.insert(.abort, at: 0)
        cond.broadcast()
        while !done { cond.wait() }
        cond.unlock()
    }
}
