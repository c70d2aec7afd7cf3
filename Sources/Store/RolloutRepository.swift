// RolloutRepository: rollouts and their packed routes, always scoped to a project (another project's
// rows are indistinguishable from missing ones).
import CPosix
import Foundation
import Routes

public struct NewRollout: Sendable {
    public var model: String
    public var policyVersion: Int
    public var tokenIDs: [Int32]
    public var promptLength: Int
    public var logprobs: [Float]?
    public var reward: Double?
    public var groupID: String?
    public var metadataJSON: String
    public var routes: PackedRoutes?
    /// One byte per response token: 1 where the policy sampled it, 0 for tokens a later turn added as
    /// context (tool output, the user's next message). nil: every response token was sampled.
    public var lossMask: [UInt8]?
    public var turns: Int
    public init(model: String, policyVersion: Int, tokenIDs: [Int32], promptLength: Int, logprobs: [Float]?, reward: Double?,
                groupID: String?, metadataJSON: String, routes: PackedRoutes?, lossMask: [UInt8]? = nil, turns: Int = 1) {
        self.model = model; self.policyVersion = policyVersion; self.tokenIDs = tokenIDs; self.promptLength = promptLength
        self.logprobs = logprobs; self.reward = reward; self.groupID = groupID; self.metadataJSON = metadataJSON; self.routes = routes
        self.lossMask = lossMask; self.turns = turns
    }
}

public struct RolloutRecord: Sendable {
    public var id: String
    public var seq: Int
    public var model: String
    public var policyVersion: Int
    public var tokenIDs: [Int32]
    public var promptLength: Int
    public var logprobs: [Float]?
    public var reward: Double?
    public var groupID: String?
    public var metadataJSON: String
    public var createdAt: String
    /// [rows, layers, top_k, num_experts] when routes are stored.
    public var routesShape: [Int]?
    /// The routes' model layout: num_hidden_layers and the hidden index of each stored (MoE) layer.
    public var routesHiddenLayers: Int?
    public var routesMoELayers: [Int]?
    public var lossMask: [UInt8]?
    public var turns: Int
    /// The rollout was stored with routes.
    public var routesStored: Bool = false
    /// It was stored with routes and they are gone: the project's retention dropped its week.
    public var routesExpired: Bool { routesStored && routesShape == nil }
}

public struct RolloutRepository: Sendable {
    public let pool: ConnectionPool
    public init(pool: ConnectionPool) { self.pool = pool }

    static func pgArray<T>(_ xs: [T]) -> String { "{" + xs.map { "\($0)" }.joined(separator: ",") + "}" }
    static func parseArray(_ s: String?) -> [String]? {
        guard let s, s.hasPrefix("{"), s.hasSuffix("}") else { return nil }
        let inner = s.dropFirst().dropLast()
        return inner.isEmpty ? [] : inner.split(separator: ",").map(String.init)
    }

    /// Inserts the rollout and its routes in one transaction; returns the new id.
    public func insert(project: Int, _ r: NewRollout) throws -> String {
        try pool.transaction { c in
            try RolloutRepository.reserveRouteBytes(c, project: project, adding: r.routes?.bytes.count ?? 0)
            return try RolloutRepository.insert(c, project: project, r, job: nil)
        }
    }

    /// Inserts several rollouts in one transaction (all or nothing), within the route storage quota.
    public func insert(project: Int, _ rows: [NewRollout]) throws -> [String] {
        try pool.transaction { c in
            try RolloutRepository.reserveRouteBytes(c, project: project, adding: rows.reduce(0) { $0 + ($1.routes?.bytes.count ?? 0) })
            return try rows.map { try RolloutRepository.insert(c, project: project, $0, job: nil) }
        }
    }

    /// Inserts on `c` (inside the caller's transaction); `job` tags a job step's sample.
    public static func insert(_ c: PGConnection, project: Int, _ r: NewRollout, job: (id: String, step: Int, index: Int)?) throws -> String {
        let res = try c.query("""
            INSERT INTO rollouts (project_id, model, policy_version, token_ids, prompt_length, logprobs, reward, group_id, metadata,
                                  job_id, job_step, sample_index, loss_mask, turns, routes_stored, route_shape, route_moe_layers)
            VALUES (\(project), \(r.model), \(r.policyVersion), \(int4Array: r.tokenIDs)::integer[], \(r.promptLength),
                    \(floatBytes(r.logprobs)), \(r.reward), \(r.groupID), \(r.metadataJSON)::jsonb, \(job?.id)::uuid, \(job?.step),
                    \(job?.index), \(r.lossMask.map { SQLValue.bytes(Data($0)) } ?? .null), \(r.turns), \(r.routes != nil),
                    \(summary(r.routes).shape)::integer[], \(summary(r.routes).moe)::integer[])
            RETURNING id, \(raw: SQL(stringLiteral: RolloutRepository.partitionKey))
            """)
        let id = try res.string(0, "id")
        if let p = r.routes { try writeRoutes(c, id: id, project: project, at: try RolloutRepository.partitionKey(res, 0), p, tokens: r.tokenIDs.count) }
        return id
    }

    /// Log-probs as stored: float32 big-endian bytes; NaN marks a token without a log-prob (a later turn's context).
    static func floatBytes(_ xs: [Float]?) -> SQLValue { floatData(xs).map(SQLValue.bytes) ?? .null }

    /// The same as bytes (a COPY row).
    static func floatData(_ xs: [Float]?) -> Data? {
        guard let xs else { return nil }
        var d = Data(count: xs.count * 4)
        d.withUnsafeMutableBytes { raw in for (i, v) in xs.enumerated() { raw.storeBytes(of: v.bitPattern.bigEndian, toByteOffset: 4 * i, as: UInt32.self) } }
        return d
    }

    /// The stored bytes back as floats.
    static func floats(_ d: Data) throws -> [Float] {
        guard d.count % 4 == 0 else { throw StoreError.decode("log-probs of \(d.count) bytes are not float32 values") }
        return d.withUnsafeBytes { raw in (0..<(d.count / 4)).map { Float(bitPattern: UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) } }
    }

    /// A rollout's partition key for its routes, as RETURNING / SELECT columns: its created_at exactly (text
    /// that casts back to the same timestamptz) and the start of its week.
    static let partitionKey = "created_at::text AS key_at, (date_trunc('week', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')::text AS key_week"

    static func partitionKey(_ res: PGResult, _ i: Int) throws -> RouteKey {
        RouteKey(at: try res.string(i, "key_at"), week: try res.string(i, "key_week"))
    }

    /// Writes (or replaces) a rollout's routes in its week's partition, made first when missing. The expert
    /// load is counted beside them; for large routes on another thread while PostgreSQL stores the bytes
    /// (a 32K-token rollout's count took a fifth of its ingest), then set in the same transaction.
    static func writeRoutes(_ c: PGConnection, id: String, project: Int, at key: RouteKey, _ p: PackedRoutes, tokens: Int) throws {
        try RoutePartitions.ensure(c, project: project, key)
        let allMoE = p.moeLayers == Array(0..<p.layers) && p.hiddenLayers == p.layers
        let moe: String? = allMoE ? nil : pgArray(p.moeLayers)
        let background = p.bytes.count >= 1 << 20
        let counting = background ? BackgroundResult(name: "r3-expert-load") { try ExpertLoad.count(p, tokens: tokens) } : nil
        let (load, missing) = background ? (nil, nil) : try ExpertLoad.count(p, tokens: tokens)
        try c.query("""
            INSERT INTO routes (project_id, created_at, rollout_id, rows, layers, top_k, num_experts, width, checksum, data, hidden_layers,
                                moe_layers, expert_counts, missing_rows)
            VALUES (\(project), \(key.at)::timestamptz, \(id)::uuid, \(p.rows), \(p.layers), \(p.topK), \(p.numExperts), \(p.width),
                    \(Int64(p.checksum)), \(p.bytes), \(allMoE ? nil : p.hiddenLayers), \(moe)::integer[], \(load.map { SQLValue.bytes($0.bytes) } ?? .null), \(int4Array: missing.map { $0.map { Int32($0) } })::integer[])
            ON CONFLICT (rollout_id, project_id, created_at) DO UPDATE SET rows = EXCLUDED.rows, layers = EXCLUDED.layers, top_k = EXCLUDED.top_k,
                num_experts = EXCLUDED.num_experts, width = EXCLUDED.width, checksum = EXCLUDED.checksum, data = EXCLUDED.data,
                hidden_layers = EXCLUDED.hidden_layers, moe_layers = EXCLUDED.moe_layers, expert_counts = EXCLUDED.expert_counts,
                missing_rows = EXCLUDED.missing_rows
            """)
        if let counting {
            let (load, missing) = try counting.get()
            try c.query("""
                UPDATE routes SET expert_counts = \(load.bytes), missing_rows = \(int4Array: missing.map { Int32($0) })::integer[]
                WHERE rollout_id = \(id)::uuid AND project_id = \(project) AND created_at = \(key.at)::timestamptz
                """)
        }
        guard p.bytes.count >= RouteCache.minimumBytes else { return }
        // (RETURNING cannot name system columns of a partitioned table: read back)
        let res = try c.query("""
            SELECT \(raw: SQL(stringLiteral: RouteCache.versionColumns)) FROM routes t
            WHERE t.rollout_id = \(id)::uuid AND t.project_id = \(project) AND t.created_at = \(key.at)::timestamptz
            """)
        // before the commit: if the transaction rolls back, this version never becomes the row's, and the entry is never served
        RouteCache.shared.put(project: project, id: id, version: try RouteCache.version(res, 0), p)
    }

    /// A rollout r's routes t: by the full key, so one partition is read.
    static let routesJoin = "t.rollout_id = r.id AND t.project_id = r.project_id AND t.created_at = r.created_at"

    static let columns = """
        r.id, r.seq, r.model, r.policy_version, r.token_ids, r.prompt_length, encode(r.logprobs, 'hex') AS logprobs, r.reward, r.group_id, r.metadata,
        to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at, encode(r.loss_mask, 'hex') AS loss_mask, r.turns, r.routes_stored,
        r.route_shape, r.route_moe_layers,
        EXISTS (SELECT 1 FROM route_partitions_dropped d WHERE d.project_id = r.project_id AND d.range_start <= r.created_at
                AND d.range_end > r.created_at) AS routes_dropped
        """

    static func record(_ res: PGResult, _ i: Int) throws -> RolloutRecord {
        let stored = try res.boolOrNil(i, "routes_stored") ?? false
        let dropped = try res.boolOrNil(i, "routes_dropped") ?? false
        let shape = stored && !dropped ? try parseArray(res.stringOrNil(i, "route_shape"))?.compactMap { Int($0) } : nil
        return RolloutRecord(
            id: try res.string(i, "id"), seq: try res.int(i, "seq"), model: try res.string(i, "model"),
            policyVersion: try res.int(i, "policy_version"),
            tokenIDs: (parseArray(try res.stringOrNil(i, "token_ids")) ?? []).compactMap { Int32($0) },
            promptLength: try res.int(i, "prompt_length"),
            logprobs: try res.stringOrNil(i, "logprobs").map { try floats(Data(hexBytes($0))) },
            reward: try res.doubleOrNil(i, "reward"), groupID: try res.stringOrNil(i, "group_id"),
            metadataJSON: try res.stringOrNil(i, "metadata") ?? "{}", createdAt: try res.string(i, "created_at"),
            routesShape: shape.flatMap { $0.count == 5 ? Array($0.prefix(4)) : nil },
            routesHiddenLayers: shape.flatMap { $0.count == 5 ? $0[4] : nil },
            routesMoELayers: shape == nil ? nil : try parseArray(res.stringOrNil(i, "route_moe_layers")).map { $0.compactMap { Int($0) } },
            lossMask: try res.stringOrNil(i, "loss_mask").map(hexBytes), turns: try res.intOrNil(i, "turns") ?? 1,
            routesStored: stored)
    }

    /// A rollout row's route summary columns for `p` (route_shape, route_moe_layers).
    static func summary(_ p: PackedRoutes?) -> (shape: String?, moe: String?) {
        guard let p else { return (nil, nil) }
        return (pgArray([p.rows, p.layers, p.topK, p.numExperts, p.hiddenLayers]), pgArray(p.moeLayers))
    }

    static func hexBytes(_ s: String) -> [UInt8] {
        var out: [UInt8] = []; out.reserveCapacity(s.utf8.count / 2)
        var hi: UInt8?
        for c in s.utf8 {
            let v: UInt8 = c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x61 + 10
            if let h = hi { out.append(h << 4 | v); hi = nil } else { hi = v }
        }
        return out
    }

    public func get(project: Int, id: String) throws -> RolloutRecord? {
        guard UUID(uuidString: id) != nil else { return nil }
        let res = try pool.withRetry { c in
            try c.query("SELECT \(raw: SQL(stringLiteral: RolloutRepository.columns)) FROM rollouts r WHERE r.project_id = \(project) AND r.id = \(id)::uuid")
        }
        return res.count == 0 ? nil : try RolloutRepository.record(res, 0)
    }

    /// Rollouts after `cursor` (a seq) in insertion order, optionally filtered.
    public func list(project: Int, model: String?, policyVersion: Int?, job: String? = nil, after cursor: Int, limit: Int) throws -> [RolloutRecord] {
        let res = try pool.withRetry { c in
            try c.query("""
                SELECT \(raw: SQL(stringLiteral: RolloutRepository.columns)) FROM rollouts r
                WHERE r.project_id = \(project) AND r.seq > \(cursor)
                  AND (\(model)::text IS NULL OR r.model = \(model)) AND (\(policyVersion)::bigint IS NULL OR r.policy_version = \(policyVersion))
                  AND (\(job)::uuid IS NULL OR r.job_id = \(job)::uuid)
                ORDER BY r.seq LIMIT \(limit)
                """)
        }
        return try (0..<res.count).map { try RolloutRepository.record(res, $0) }
    }

    public func delete(project: Int, id: String) throws -> Bool {
        guard UUID(uuidString: id) != nil else { return false }
        return try pool.with { try $0.query("DELETE FROM rollouts WHERE project_id = \(project) AND id = \(id)::uuid").affected } == 1
    }

    /// The stored routes (binary fetch of the packed blob), or nil when the rollout or its routes do not exist.
    public func routes(project: Int, id: String) throws -> PackedRoutes? {
        guard UUID(uuidString: id) != nil else { return nil }
        let res = try pool.withRetry { c in
            try c.query("""
                SELECT t.rows, t.layers, t.top_k, t.num_experts, t.width::integer AS width, t.checksum, t.data, t.hidden_layers,
                       convert_to(array_to_string(t.moe_layers, ','), 'UTF8') AS moe_layers
                FROM routes t JOIN rollouts r ON t.rollout_id = r.id AND t.project_id = r.project_id AND t.created_at = r.created_at WHERE r.project_id = \(project) AND r.id = \(id)::uuid
                """, binary: true)
        }
        guard res.count == 1 else { return nil }
        return try RolloutRepository.packed(res, 0)
    }

    /// Packed routes from a binary-format row of rows, layers, top_k, num_experts, width, checksum, data,
    /// hidden_layers and moe_layers (as comma-separated text bytes).
    static func packed(_ res: PGResult, _ row: Int) throws -> PackedRoutes {
        func int(_ n: String) throws -> Int? { try res.bytesOrNil(row, n).map(RolloutRepository.bigEndianInt) }
        func required(_ n: String) throws -> Int { try binaryInt(res, row, n) }
        let moe = try res.bytesOrNil(row, "moe_layers").map { String(decoding: $0, as: UTF8.self).split(separator: ",").compactMap { Int($0) } }
        return PackedRoutes(rows: try required("rows"), layers: try required("layers"), topK: try required("top_k"), numExperts: try required("num_experts"),
                            width: try required("width"), bytes: try res.bytesOrNil(row, "data") ?? Data(), checksum: UInt32(truncatingIfNeeded: try required("checksum")),
                            hiddenLayers: try int("hidden_layers"), moeLayers: moe)
    }

    static let packedColumns = """
        t.rows, t.layers, t.top_k, t.num_experts, t.width::integer AS width, t.checksum, t.data, t.hidden_layers,
        convert_to(array_to_string(t.moe_layers, ','), 'UTF8') AS moe_layers, cardinality(r.token_ids) AS tokens,
        convert_to(r.id::text, 'UTF8') AS rid
        """

    /// A rollout's stored routes and its token count, or nil. Large routes come from the RouteCache when
    /// the row is still the version cached (checked by a query that leaves the blob alone).
    public func routesAndTokens(project: Int, id: String) throws -> (PackedRoutes, Int)? {
        guard UUID(uuidString: id) != nil else { return nil }
        let from = "FROM routes t JOIN rollouts r ON t.rollout_id = r.id AND t.project_id = r.project_id AND t.created_at = r.created_at"
        return try pool.withRetry { c -> (PackedRoutes, Int)? in
            // small routes come whole with the row's small columns; large ones only if the cache lacks this version
            let meta = try c.query("""
                SELECT \(raw: SQL(stringLiteral: RolloutRepository.packedColumns.replacingOccurrences(
                    of: "t.data,", with: "CASE WHEN octet_length(t.data) < \(RouteCache.minimumBytes) THEN t.data END AS data, octet_length(t.data) AS data_bytes,"))),
                       \(raw: SQL(stringLiteral: RouteCache.versionColumns))
                \(raw: SQL(stringLiteral: from)) WHERE r.project_id = \(project) AND r.id = \(id)::uuid
                """, binary: true)
            guard meta.count == 1 else { return nil }
            let tokens = try RolloutRepository.binaryInt(meta, 0, "tokens")
            if try RolloutRepository.binaryInt(meta, 0, "data_bytes") < RouteCache.minimumBytes { return (try RolloutRepository.packed(meta, 0), tokens) }
            if let p = RouteCache.shared.get(project: project, id: id, version: try RouteCache.version(meta, 0)) {
                let m = try RolloutRepository.packed(meta, 0)
                guard m.rows == p.rows, m.layers == p.layers, m.topK == p.topK, m.numExperts == p.numExperts, m.width == p.width,
                      m.checksum == p.checksum, m.hiddenLayers == p.hiddenLayers, m.moeLayers == p.moeLayers else { RouteCache.shared.remove(project: project, id: id); return try read(c, from, project, id) }   // the same version holds the same row
                return (p, tokens)
            }
            return try read(c, from, project, id)
        }
    }

    private func read(_ c: PGConnection, _ from: String, _ project: Int, _ id: String) throws -> (PackedRoutes, Int)? {
        let res = try c.query("""
            SELECT \(raw: SQL(stringLiteral: RolloutRepository.packedColumns)), \(raw: SQL(stringLiteral: RouteCache.versionColumns))
            \(raw: SQL(stringLiteral: from)) WHERE r.project_id = \(project) AND r.id = \(id)::uuid
            """, binary: true)
        guard res.count == 1 else { return nil }
        let p = try RolloutRepository.packed(res, 0)
        RouteCache.shared.put(project: project, id: id, version: try RouteCache.version(res, 0), p)
        return (p, try RolloutRepository.binaryInt(res, 0, "tokens"))
    }

    /// Routes and token counts of many rollouts in one query, keyed by lower-case id (missing ones absent).
    public func routesAndTokens(project: Int, ids: [String]) throws -> [String: (PackedRoutes, Int)] {
        let valid = ids.filter { UUID(uuidString: $0) != nil }
        if valid.isEmpty { return [:] }
        let res = try pool.withRetry { c in
            try c.query("""
                SELECT \(raw: SQL(stringLiteral: RolloutRepository.packedColumns))
                FROM routes t JOIN rollouts r ON t.rollout_id = r.id AND t.project_id = r.project_id AND t.created_at = r.created_at WHERE r.project_id = \(project) AND r.id = ANY(\(RolloutRepository.pgArray(valid))::uuid[])
                """, binary: true)
        }
        var out: [String: (PackedRoutes, Int)] = [:]
        for i in 0..<res.count {
            let id = String(decoding: try res.bytesOrNil(i, "rid") ?? Data(), as: UTF8.self).lowercased()
            out[id] = (try RolloutRepository.packed(res, i), try RolloutRepository.binaryInt(res, i, "tokens"))
        }
        return out
    }

    static func binaryInt(_ res: PGResult, _ row: Int, _ name: String) throws -> Int { bigEndianInt(try res.bytes(row, name)) }

    /// A binary-format integer column (int2/int4/int8: big-endian two's complement).
    static func bigEndianInt(_ d: Data) -> Int {
        d.reduce(0) { $0 << 8 | Int($1) } - (d.first.map { $0 & 0x80 != 0 ? 1 << (8 * d.count) : 0 } ?? 0)
    }

    /// Token count of a rollout of this project, or nil.
    public func tokenCount(project: Int, id: String) throws -> Int? {
        guard UUID(uuidString: id) != nil else { return nil }
        let r = try pool.withRetry { try $0.query("SELECT cardinality(token_ids) AS n FROM rollouts WHERE project_id = \(project) AND id = \(id)::uuid") }
        return r.count == 0 ? nil : try r.intOrNil(0, "n")
    }

    /// Replaces a rollout's routes; false when the rollout does not exist in this project.
    public func putRoutes(project: Int, id: String, _ p: PackedRoutes) throws -> Bool {
        guard UUID(uuidString: id) != nil else { return false }
        return try pool.transaction { c in
            let r = try c.query("""
                SELECT cardinality(token_ids) AS n, \(raw: SQL(stringLiteral: RolloutRepository.partitionKey))
                FROM rollouts WHERE project_id = \(project) AND id = \(id)::uuid FOR UPDATE
                """)
            if r.count == 0 { return false }
            let key = try RolloutRepository.partitionKey(r, 0)
            let old = try c.query("""
                SELECT octet_length(data) AS n FROM routes WHERE project_id = \(project) AND created_at = \(key.at)::timestamptz AND rollout_id = \(id)::uuid
                """)
            try RolloutRepository.reserveRouteBytes(c, project: project, adding: p.bytes.count - (old.count == 1 ? try old.intOrNil(0, "n") ?? 0 : 0))
            try RolloutRepository.writeRoutes(c, id: id, project: project, at: key, p, tokens: try r.int(0, "n"))
            let sum = RolloutRepository.summary(p)
            try c.query("""
                UPDATE rollouts SET routes_stored = true, route_shape = \(sum.shape)::integer[], route_moe_layers = \(sum.moe)::integer[]
                WHERE id = \(id)::uuid
                """)
            return true
        }
    }

    /// Total stored route bytes and rows, for /metrics.
    public func storedRouteBytes() throws -> (bytes: Int, count: Int) {
        let r = try pool.withRetry { try $0.query("SELECT coalesce(sum(octet_length(data)), 0) AS b, count(*) AS n FROM routes") }
        return (try r.intOrNil(0, "b") ?? 0, try r.intOrNil(0, "n") ?? 0)
    }
}

extension RolloutRepository {
    /// The ids among `ids` that are not rollouts of this project, in one query.
    public func missing(project: Int, ids: [String]) throws -> [String] {
        let valid = ids.filter { UUID(uuidString: $0) != nil }
        let r = try pool.withRetry { c in
            try c.query("SELECT id FROM rollouts WHERE project_id = \(project) AND id = ANY(\(RolloutRepository.pgArray(valid))::uuid[])")
        }
        let found = Set(try (0..<r.count).map { try r.string($0, "id").lowercased() })
        return ids.filter { !found.contains($0.lowercased()) }
    }

    /// The ids among `ids` whose routes the project's retention dropped, in one query.
    public func expired(project: Int, ids: [String]) throws -> [String] {
        let valid = ids.filter { UUID(uuidString: $0) != nil }
        let r = try pool.withRetry { c in
            try c.query("""
                SELECT r.id FROM rollouts r WHERE r.project_id = \(project) AND r.id = ANY(\(RolloutRepository.pgArray(valid))::uuid[]) AND r.routes_stored
                  AND NOT EXISTS (SELECT 1 FROM routes t WHERE \(raw: SQL(stringLiteral: RolloutRepository.routesJoin)))
                """)
        }
        return try (0..<r.count).map { try r.string($0, "id") }
    }

    /// The ids among `ids` whose loss mask leaves some response token out (multi-turn context), in one query.
    public func masked(project: Int, ids: [String]) throws -> [String] {
        let valid = ids.filter { UUID(uuidString: $0) != nil }
        let r = try pool.withRetry { c in
            try c.query("""
                SELECT id FROM rollouts WHERE project_id = \(project) AND id = ANY(\(RolloutRepository.pgArray(valid))::uuid[])
                  AND loss_mask IS NOT NULL AND position('\\x00'::bytea IN loss_mask) > 0
                """)
        }
        return try (0..<r.count).map { try r.string($0, "id") }
    }

    /// Rollouts of this project by id, in the order given, each with its packed routes (nil when none).
    /// Ids not found are returned in `missing`.
    public func withRoutes(project: Int, ids: [String]) throws -> (found: [(RolloutRecord, PackedRoutes?)], missing: [String]) {
        var out: [(RolloutRecord, PackedRoutes?)] = [], missing: [String] = []
        for id in ids {
            guard let r = try get(project: project, id: id) else { missing.append(id); continue }
            out.append((r, r.routesShape == nil ? nil : try routes(project: project, id: id)))
        }
        return (out, missing)
    }
}

extension RolloutRepository {
    /// The outcome of an append: the rollout after it, or why nothing changed.
    public enum AppendOutcome: Sendable {
        case appended(RolloutRecord, PackedRoutes?)
        case notFound
    }

    /// Extends a rollout with a next turn in one transaction: the row is locked, `extend` sees it as it is
    /// and returns it as it must become (throwing leaves it unchanged).
    public func append(project: Int, id: String, _ extend: (RolloutRecord, PackedRoutes?) throws -> NewRollout) throws -> AppendOutcome {
        guard UUID(uuidString: id) != nil else { return .notFound }
        return try pool.transaction { c in
            let res = try c.query("""
                SELECT \(raw: SQL(stringLiteral: RolloutRepository.columns)), r.created_at::text AS key_at,
                       (date_trunc('week', r.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')::text AS key_week
                FROM rollouts r WHERE r.project_id = \(project) AND r.id = \(id)::uuid FOR UPDATE OF r
                """)
            guard res.count == 1 else { return .notFound }
            let key = try RolloutRepository.partitionKey(res, 0)
            let record = try RolloutRepository.record(res, 0)
            var packed: PackedRoutes?
            if record.routesShape != nil {
                let b = try c.query("""
                    SELECT t.rows, t.layers, t.top_k, t.num_experts, t.width::integer AS width, t.checksum, t.data, t.hidden_layers,
                           convert_to(array_to_string(t.moe_layers, ','), 'UTF8') AS moe_layers
                    FROM routes t WHERE t.project_id = \(project) AND t.created_at = \(key.at)::timestamptz AND t.rollout_id = \(id)::uuid
                    """, binary: true)
                packed = try RolloutRepository.packed(b, 0)
            }
            let n = try extend(record, packed)
            try RolloutRepository.reserveRouteBytes(c, project: project, adding: (n.routes?.bytes.count ?? 0) - (packed?.bytes.count ?? 0))
            try c.query("""
                UPDATE rollouts SET token_ids = \(int4Array: n.tokenIDs)::integer[], prompt_length = \(n.promptLength),
                    logprobs = \(RolloutRepository.floatBytes(n.logprobs)), reward = \(n.reward), metadata = \(n.metadataJSON)::jsonb,
                    loss_mask = \(n.lossMask.map { SQLValue.bytes(Data($0)) } ?? .null), turns = \(n.turns),
                    policy_version = \(n.policyVersion), routes_stored = routes_stored OR \(n.routes != nil),
                    route_shape = coalesce(\(RolloutRepository.summary(n.routes).shape)::integer[], route_shape),
                    route_moe_layers = coalesce(\(RolloutRepository.summary(n.routes).moe)::integer[], route_moe_layers)
                WHERE id = \(id)::uuid
                """)
            if let p = n.routes { try RolloutRepository.writeRoutes(c, id: id, project: project, at: key, p, tokens: n.tokenIDs.count) }
            let after = try c.query("""
                SELECT \(raw: SQL(stringLiteral: RolloutRepository.columns)) FROM rollouts r
                WHERE r.id = \(id)::uuid
                """)
            return .appended(try RolloutRepository.record(after, 0), n.routes)
        }
    }
}

/// A stored rollout as a step report needs it: response span, inference log-probs, loss mask, and its
/// routes' layout, expert load and missing rows (the packed routes themselves only when asked for).
public struct ReportRollout: Sendable {
    public var id: String
    public var tokens: Int
    public var promptLength: Int
    public var logprobs: [Float]?
    public var lossMask: [UInt8]?
    /// [rows, layers, top_k] and the layout of the stored routes, nil when the rollout has none.
    public var routeShape: (rows: Int, layers: Int, topK: Int, numExperts: Int, hiddenLayers: Int, moeLayers: [Int])?
    public var load: ExpertLoad?
    public var missingRows: [Int]?
    public var packed: PackedRoutes?
    public init(id: String, tokens: Int, promptLength: Int, logprobs: [Float]? = nil, lossMask: [UInt8]? = nil) {
        self.id = id; self.tokens = tokens; self.promptLength = promptLength; self.logprobs = logprobs; self.lossMask = lossMask
    }
}

extension RolloutRepository {
    /// The rollouts among `ids` of this project, keyed by lower-case id, in one query (binary results: a
    /// step's million log-probs are not parsed from text). `withRoutes` also reads the packed routes.
    public func reportInputs(project: Int, ids: [String], withRoutes: Bool) throws -> [String: ReportRollout] {
        let valid = ids.filter { UUID(uuidString: $0) != nil }
        if valid.isEmpty { return [:] }
        let res = try pool.withRetry { c in
            try c.query("""
                SELECT r.id::text AS rid, cardinality(r.token_ids) AS tokens, r.prompt_length, r.logprobs, r.loss_mask,
                       t.rows, t.layers, t.top_k, t.num_experts, t.width::integer AS width, t.checksum, t.hidden_layers, t.moe_layers,
                       t.expert_counts, t.missing_rows, CASE WHEN \(withRoutes)::boolean OR t.expert_counts IS NULL THEN t.data END AS data
                FROM rollouts r LEFT JOIN routes t ON t.rollout_id = r.id AND t.project_id = r.project_id AND t.created_at = r.created_at
                WHERE r.project_id = \(project) AND r.id = ANY(\(RolloutRepository.pgArray(valid))::uuid[])
                """, binary: true)
        }
        var out: [String: ReportRollout] = [:]
        for i in 0..<res.count {
            let id = String(decoding: try res.bytes(i, "rid"), as: UTF8.self).lowercased()
            var r = ReportRollout(id: id, tokens: try RolloutRepository.binaryInt(res, i, "tokens"), promptLength: try RolloutRepository.binaryInt(res, i, "prompt_length"))
            r.logprobs = try res.bytesOrNil(i, "logprobs").map(RolloutRepository.floats)
            r.lossMask = try res.bytesOrNil(i, "loss_mask").map { [UInt8]($0) }
            if try res.bytesOrNil(i, "rows") != nil {
                func int(_ n: String) throws -> Int { try RolloutRepository.binaryInt(res, i, n) }
                let layers = try int("layers"), E = try int("num_experts")
                let moe = try res.bytesOrNil(i, "moe_layers").map { try PGBinaryArray.ints($0) } ?? Array(0..<layers)
                let hidden = try res.bytesOrNil(i, "hidden_layers").map(RolloutRepository.bigEndianInt) ?? layers
                r.routeShape = (try int("rows"), layers, try int("top_k"), E, hidden, moe)
                if let d = try res.bytesOrNil(i, "data") {
                    let p = PackedRoutes(rows: try int("rows"), layers: layers, topK: try int("top_k"), numExperts: E, width: try int("width"), bytes: d,
                                         checksum: UInt32(truncatingIfNeeded: try int("checksum")), hiddenLayers: hidden, moeLayers: moe)
                    if withRoutes { r.packed = p }
                    if try res.bytesOrNil(i, "expert_counts") == nil { (r.load, r.missingRows) = try ExpertLoad.count(p, tokens: r.tokens) }   // written before the counts were kept
                }
                if r.load == nil, let counts = try res.bytesOrNil(i, "expert_counts") {
                    let missing = try res.bytesOrNil(i, "missing_rows").map { try PGBinaryArray.ints($0) } ?? []
                    r.missingRows = missing
                    r.load = try ExpertLoad(bytes: counts, layers: layers, numExperts: E, tokens: min(try int("rows"), max(0, r.tokens - 1)) - missing.count)
                }
            }
            out[id] = r
        }
        return out
    }
}

/// PostgreSQL's binary array format (one dimension): ndim, has-null flag, element type, then per dimension
/// its length and lower bound, then each element as a length (−1 for NULL) and big-endian bytes.
enum PGBinaryArray {
    static func elements(_ d: Data, width: Int, _ each: (UInt32?) -> Void) throws {
        try d.withUnsafeBytes { raw in
            func u32(_ o: Int) -> UInt32 { UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
            guard raw.count >= 12 else { throw StoreError.decode("binary array of \(raw.count) bytes") }
            let ndim = Int(u32(0))
            if ndim == 0 { return }
            guard ndim == 1, raw.count >= 20 else { throw StoreError.decode("binary array with \(ndim) dimensions") }
            let n = Int(u32(12))
            var o = 20
            for _ in 0..<n {
                guard o + 4 <= raw.count else { throw StoreError.decode("binary array is truncated") }
                let len = Int32(bitPattern: u32(o)); o += 4
                if len < 0 { each(nil); continue }
                guard Int(len) == width, o + width <= raw.count else { throw StoreError.decode("binary array element of \(len) bytes, expected \(width)") }
                each(u32(o)); o += width
            }
        }
    }

    /// integer[] (NULL elements are not allowed).
    static func ints(_ d: Data) throws -> [Int] {
        var out: [Int] = [], nulls = false
        try elements(d, width: 4) { if let v = $0 { out.append(Int(Int32(bitPattern: v))) } else { nulls = true } }
        if nulls { throw StoreError.decode("integer array holds NULL") }
        return out
    }
}

/// A value computed on a thread of its own while the caller goes on; `get` waits for it.
final class BackgroundResult<T: Sendable>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<T, Error>?

    init(name: String, _ work: @escaping @Sendable () throws -> T) {
        let t = Thread { [self] in
            Thread.current.name = name; r3_name_this_thread(name)
            result = Result { try work() }
            done.signal()
        }
        t.start()
    }

    func get() throws -> T {
        done.wait()
        done.signal()   // a second get returns at once
        return try result!.get()
    }
}
