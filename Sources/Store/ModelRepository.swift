// ModelRepository: registered models and their policy versions (version 0: as registered; one more per
// training step, with the stored checkpoint of the versions whose weights were saved).
import Foundation

public struct ModelRecord: Sendable {
    public var id: String
    public var name: String
    public var configJSON: String
    public var source: String
    public var createdAt: String
    public var latestVersion: Int
}

public struct PolicyVersion: Sendable {
    public var version: Int
    public var jobID: String?
    public var jobStep: Int?
    public var checkpointID: String?
    /// A checkpoint an older installation left on some machine's disk, not yet moved into the store.
    public var legacyPath: String?
    public var createdAt: String
}

public struct ModelRepository: Sendable {
    public let pool: ConnectionPool
    public init(pool: ConnectionPool) { self.pool = pool }

    static let columns = """
        m.id, m.name, m.config, m.source, \(JobRepository.ts("m.created_at")),
        (SELECT max(version) FROM policy_versions v WHERE v.model_id = m.id) AS latest_version
        """
    static func record(_ r: PGResult, _ i: Int) throws -> ModelRecord {
        ModelRecord(id: try r.string(i, "id"), name: try r.string(i, "name"), configJSON: try r.string(i, "config"),
                    source: try r.string(i, "source"), createdAt: try r.string(i, "created_at"), latestVersion: try r.intOrNil(i, "latest_version") ?? 0)
    }

    /// Registers a model whose version 0 is the checkpoint `store` puts in the same transaction (given
    /// the connection and the new model's id; nil for a model registered from its config alone, which
    /// has no weights). Returns nil when the project already has a model of that name.
    public func create(project: Int, name: String, configJSON: String, source: String,
                       store: (PGConnection, String) throws -> String?) throws -> ModelRecord? {
        do {
            return try pool.transaction { c in
                let r = try c.query("""
                    INSERT INTO models (project_id, name, config, source) VALUES (\(project), \(name), \(configJSON)::jsonb, \(source))
                    RETURNING id
                    """)
                let id = try r.string(0, "id")
                let checkpoint = try store(c, id)
                try c.query("INSERT INTO policy_versions (model_id, version, checkpoint_id) VALUES (\(id)::uuid, 0, \(checkpoint)::uuid)")
                let out = try c.query("SELECT \(raw: SQL(stringLiteral: ModelRepository.columns)) FROM models m WHERE m.id = \(id)::uuid")
                return try ModelRepository.record(out, 0)
            }
        } catch let e as StoreError where e.isUniqueViolation { return nil }
    }

    public func get(project: Int, id: String) throws -> ModelRecord? {
        guard UUID(uuidString: id) != nil else { return nil }
        let r = try pool.withRetry { try $0.query("SELECT \(raw: SQL(stringLiteral: ModelRepository.columns)) FROM models m WHERE m.project_id = \(project) AND m.id = \(id)::uuid") }
        return r.count == 0 ? nil : try ModelRepository.record(r, 0)
    }

    /// A model of this project named by its id or its name (a rollout's `model` may be either).
    public func find(project: Int, idOrName: String) throws -> ModelRecord? {
        let r = try pool.withRetry { c in
            try c.query("""
                SELECT \(raw: SQL(stringLiteral: ModelRepository.columns)) FROM models m
                WHERE m.project_id = \(project) AND (m.name = \(idOrName) OR m.id::text = lower(\(idOrName)))
                ORDER BY (m.id::text = lower(\(idOrName))) DESC LIMIT 1
                """)
        }
        return r.count == 0 ? nil : try ModelRepository.record(r, 0)
    }

    public func list(project: Int) throws -> [ModelRecord] {
        let r = try pool.withRetry { try $0.query("SELECT \(raw: SQL(stringLiteral: ModelRepository.columns)) FROM models m WHERE m.project_id = \(project) ORDER BY m.created_at, m.id") }
        return try (0..<r.count).map { try ModelRepository.record(r, $0) }
    }

    public func versions(model: String) throws -> [PolicyVersion] {
        let r = try pool.withRetry { c in
            try c.query("""
                SELECT version, job_id, job_step, checkpoint_id, checkpoint_path, \(raw: SQL(stringLiteral: JobRepository.ts("created_at")))
                FROM policy_versions WHERE model_id = \(model)::uuid ORDER BY version
                """)
        }
        return try (0..<r.count).map {
            PolicyVersion(version: try r.int($0, "version"), jobID: try r.stringOrNil($0, "job_id"), jobStep: try r.intOrNil($0, "job_step"),
                          checkpointID: try r.stringOrNil($0, "checkpoint_id"), legacyPath: try r.stringOrNil($0, "checkpoint_path"),
                          createdAt: try r.string($0, "created_at"))
        }
    }

    /// The checkpoint of `version`, or of the newest checkpointed version when nil. A version whose
    /// checkpoint an older installation left on a disk that never moved it into the store throws,
    /// naming the path.
    public func checkpoint(model: String, version: Int?) throws -> (version: Int, checkpoint: CheckpointRecord)? {
        try pool.withRetry { c in
            let r = try c.query("""
                SELECT version, checkpoint_id, checkpoint_path FROM policy_versions
                WHERE model_id = \(model)::uuid AND (checkpoint_id IS NOT NULL OR checkpoint_path IS NOT NULL)
                  AND (\(version)::integer IS NULL OR version = \(version)) ORDER BY version DESC LIMIT 1
                """)
            guard r.count == 1 else { return nil }
            let v = try r.int(0, "version")
            guard let id = try r.stringOrNil(0, "checkpoint_id") else {
                throw StoreError.checkpoint("policy version \(v) of model \(model) was checkpointed at \(try r.string(0, "checkpoint_path")) by an older installation and has not been moved into the database; start r3 once on the machine that has that directory")
            }
            guard let k = try CheckpointStore.get(c, id: id) else { throw StoreError.checkpoint("checkpoint \(id) of model \(model) is gone") }
            return (v, k)
        }
    }

    /// Adds the next version of `model` (inside the caller's transaction); returns its number.
    public static func addVersion(_ c: PGConnection, model: String, job: String, step: Int, checkpointID: String?) throws -> Int {
        try c.query("SELECT 1 FROM models WHERE id = \(model)::uuid FOR UPDATE")
        let r = try c.query("""
            INSERT INTO policy_versions (model_id, version, job_id, job_step, checkpoint_id)
            SELECT \(model)::uuid, coalesce(max(version), -1) + 1, \(job)::uuid, \(step), \(checkpointID)::uuid FROM policy_versions WHERE model_id = \(model)::uuid
            RETURNING version
            """)
        return try r.int(0, "version")
    }
}
