// CheckpointStore: model weights and training checkpoints (weights + AdamW state) in PostgreSQL
// (Migrations/0009), so that any worker on any machine can load any policy version and resume any job.
// A checkpoint's files go in and out one chunk (≤ 8 MiB) at a time: never two copies of a file in
// memory. Every file has its SHA-256, checked when it is read back; the checkpoint's content hash (the
// SHA-256 of its manifest) keys the machines' local caches (CheckpointCache).
import CPosix
import Foundation

public struct CheckpointFile: Sendable, Equatable {
    public var name: String
    public var size: Int
    public var sha256: String
    public var chunks: Int

    var json: [String: Any] { ["name": name, "size": size, "sha256": sha256, "chunks": chunks] }
}

public struct CheckpointRecord: Sendable, Equatable {
    public var id: String
    public var modelID: String
    /// The SHA-256 of the manifest: the lines "name size sha256\n" in name order.
    public var sha256: String
    public var bytes: Int
    public var files: [CheckpointFile]
    public var createdAt: String

    public static func manifestHash(_ files: [CheckpointFile]) -> String {
        var h = ContentHash()
        for f in files { h.update(Array("\(f.name) \(f.size) \(f.sha256)\n".utf8)) }
        return h.hex()
    }
}

public enum CheckpointStore {
    /// Bytes per stored chunk: large enough that a query's cost is small against its data, small enough
    /// to hold one in memory per transfer.
    public static let chunkBytes = 8 << 20

    /// A file of a checkpoint directory that is stored: regular files, not hidden ones.
    static func storedFiles(_ directory: URL) throws -> [(name: String, url: URL, size: Int)] {
        let fm = FileManager.default
        var out: [(String, URL, Int)] = []
        for name in try fm.contentsOfDirectory(atPath: directory.path).sorted() where !name.hasPrefix(".") {
            let url = directory.appendingPathComponent(name)
            let a = try fm.attributesOfItem(atPath: url.path)
            guard (a[.type] as? FileAttributeType) == .typeRegular else { continue }
            out.append((name, url, (a[.size] as? NSNumber)?.intValue ?? 0))
        }
        guard !out.isEmpty else { throw StoreError.checkpoint("\(directory.lastPathComponent) holds no files to store") }
        return out
    }

    /// Stores every file of `directory` as a new checkpoint of `model`, inside the caller's transaction
    /// (a model's registration: the checkpoint commits with it).
    public static func put(_ c: PGConnection, model: String, directory: URL) throws -> CheckpointRecord {
        let (id, created) = try begin(c, model: model, job: nil)
        let files = try chunks(of: directory) { file, seq, data in
            try c.query("INSERT INTO checkpoint_chunks (checkpoint_id, file, seq, data) VALUES (\(id)::uuid, \(file), \(seq), \(data))")
        }
        return try finish(c, id: id, model: model, files: files, createdAt: created)
    }

    /// Stores every file of `directory` as a new checkpoint of `model` written by a job's attempt (its id
    /// and claim token), outside any transaction of the caller's: `connections` uploaders insert chunks
    /// while this thread reads and hashes the next ones (storing is bound by the server's WAL writes,
    /// which overlap). The chunks commit without waiting for their WAL flush: the step's transaction that
    /// refers to the checkpoint commits synchronously, which flushes the WAL up to it, chunks included.
    /// Until then nothing refers to it, and an attempt that dies leaves garbage `collectGarbage` removes.
    public static func put(_ pool: ConnectionPool, model: String, directory: URL, job: (id: String, token: String), connections: Int = 2) throws -> CheckpointRecord {
        let (id, created) = try pool.with { try begin($0, model: model, job: job) }
        let queue = ChunkQueue(capacity: connections + 1)
        let group = DispatchGroup()
        for _ in 0..<max(1, connections) {
            group.enter()
            let t = Thread {
                r3_name_this_thread("r3-ckpt-upload")   // the kernel keeps 15 bytes: "r3-checkpoint-upload" was refused
                defer { group.leave() }
                do {
                    try pool.transaction { c in
                        try c.query("SET LOCAL synchronous_commit = off")
                        while let (file, seq, data) = queue.take() {
                            try c.query("INSERT INTO checkpoint_chunks (checkpoint_id, file, seq, data) VALUES (\(id)::uuid, \(file), \(seq), \(data))")
                        }
                        if let e = queue.error { throw e }   // the reader or another uploader failed: keep nothing
                    }
                } catch { queue.fail(error) }
            }
            t.name = "r3-checkpoint-upload"
            t.start()
        }
        var files: [CheckpointFile] = []
        do {
            files = try chunks(of: directory) { file, seq, data in try queue.put((file, seq, data)) }
            queue.close()
        } catch { queue.fail(error) }
        group.wait()
        if let e = queue.error { throw e }
        return try pool.with { try finish($0, id: id, model: model, files: files, createdAt: created) }
    }

    static func begin(_ c: PGConnection, model: String, job: (id: String, token: String)?) throws -> (id: String, createdAt: String) {
        let r = try c.query("""
            INSERT INTO checkpoints (model_id, sha256, bytes, files, job_id, lease_token)
            VALUES (\(model)::uuid, \(String(repeating: "0", count: 64)), 0, '[]', \(job?.id)::uuid, \(job?.token)::uuid)
            RETURNING id, \(raw: SQL(stringLiteral: JobRepository.ts("created_at")))
            """)
        return (try r.string(0, "id"), try r.string(0, "created_at"))
    }

    /// Reads the directory's stored files in order, chunk by chunk, hashing each file; `send` stores a
    /// chunk. An empty file is one empty chunk.
    static func chunks(of directory: URL, send: (Int, Int, Data) throws -> Void) throws -> [CheckpointFile] {
        var files: [CheckpointFile] = []
        for (index, f) in try storedFiles(directory).enumerated() {
            guard let handle = FileHandle(forReadingAtPath: f.url.path) else { throw StoreError.checkpoint("cannot read \(f.name)") }
            defer { try? handle.close() }
            var hash = ContentHash()
            var size = 0, seq = 0
            while true {
                let chunk = try handle.read(upToCount: chunkBytes) ?? Data()
                if chunk.isEmpty && seq > 0 { break }
                hash.update(chunk)
                size += chunk.count
                try send(index, seq, chunk)
                seq += 1
                if chunk.count < chunkBytes { break }
            }
            files.append(CheckpointFile(name: f.name, size: size, sha256: hash.hex(), chunks: seq))
        }
        return files
    }

    static func finish(_ c: PGConnection, id: String, model: String, files: [CheckpointFile], createdAt: String) throws -> CheckpointRecord {
        let record = CheckpointRecord(id: id, modelID: model, sha256: CheckpointRecord.manifestHash(files),
                                      bytes: files.reduce(0) { $0 + $1.size }, files: files, createdAt: createdAt)
        try c.query("""
            UPDATE checkpoints SET sha256 = \(record.sha256), bytes = \(record.bytes), files = \(json: files.map(\.json))::jsonb
            WHERE id = \(id)::uuid
            """)
        return record
    }

    /// A checkpoint's manifest, or nil when there is none with that id.
    public static func get(_ c: PGConnection, id: String) throws -> CheckpointRecord? {
        guard UUID(uuidString: id) != nil else { return nil }
        let r = try c.query("""
            SELECT id, model_id, sha256, bytes, files, \(raw: SQL(stringLiteral: JobRepository.ts("created_at")))
            FROM checkpoints WHERE id = \(id)::uuid
            """)
        guard r.count == 1 else { return nil }
        guard let list = try JSONSerialization.jsonObject(with: Data(try r.string(0, "files").utf8)) as? [[String: Any]] else {
            throw StoreError.decode("checkpoint \(id) has a malformed manifest")
        }
        let files = try list.map { o -> CheckpointFile in
            guard let n = o["name"] as? String, let s = o["size"] as? Int, let h = o["sha256"] as? String, let k = o["chunks"] as? Int else {
                throw StoreError.decode("checkpoint \(id) has a malformed manifest")
            }
            return CheckpointFile(name: n, size: s, sha256: h, chunks: k)
        }
        return CheckpointRecord(id: try r.string(0, "id"), modelID: try r.string(0, "model_id"), sha256: try r.string(0, "sha256"),
                                bytes: try r.int(0, "bytes"), files: files, createdAt: try r.string(0, "created_at"))
    }

    /// Streams file `index` of a checkpoint to `sink`, one chunk at a time, and checks its size and
    /// SHA-256 at the end (a mismatch throws after the last chunk: a caller writing a file discards it).
    /// `sink` returns false to stop early (a client that left). A connection is held only for each chunk's
    /// query, never while `sink` writes (a slow client cannot take a connection from the pool).
    public static func read(_ pool: ConnectionPool, _ record: CheckpointRecord, file index: Int, sink: (Data) throws -> Bool) throws {
        let f = record.files[index]
        var hash = ContentHash()
        var size = 0
        for seq in 0..<f.chunks {
            let r = try pool.withRetry { c in
                try c.query("""
                    SELECT data FROM checkpoint_chunks WHERE checkpoint_id = \(record.id)::uuid AND file = \(index) AND seq = \(seq)
                    """, binary: true)
            }
            guard r.count == 1, let data = try r.bytesOrNil(0, "data") else {
                throw StoreError.checkpoint("checkpoint \(record.id) is missing chunk \(seq) of \(f.name)")
            }
            hash.update(data)
            size += data.count
            guard try sink(data) else { return }
        }
        let got = hash.hex()
        guard size == f.size, got == f.sha256 else {
            throw StoreError.checkpoint("checkpoint \(record.id): \(f.name) read back as \(size) bytes with SHA-256 \(got); the manifest says \(f.size) bytes, \(f.sha256)")
        }
    }

    /// Writes every file of the checkpoint into `directory` (which must not exist yet), verified.
    public static func fetch(_ pool: ConnectionPool, _ record: CheckpointRecord, into directory: URL) throws {
        let fm = FileManager.default
        try fm.createDirectory(at: directory, withIntermediateDirectories: false)
        for (i, f) in record.files.enumerated() {
            let url = directory.appendingPathComponent(f.name)
            guard fm.createFile(atPath: url.path, contents: nil), let out = FileHandle(forWritingAtPath: url.path) else {
                throw StoreError.checkpoint("cannot write \(url.path)")
            }
            defer { try? out.close() }
            try read(pool, record, file: i) { data in try out.write(contentsOf: data); return true }
        }
    }

    /// Deletes the checkpoints of `model` that no policy version or job refers to and whose uploading
    /// attempt is over (a step that died between its upload and its commit); returns how many.
    @discardableResult
    public static func collectGarbage(_ c: PGConnection, model: String) throws -> Int {
        let r = try c.query("""
            DELETE FROM checkpoints k WHERE k.model_id = \(model)::uuid
              AND NOT EXISTS (SELECT 1 FROM policy_versions v WHERE v.checkpoint_id = k.id)
              AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.checkpoint->>'checkpoint_id' = k.id::text)
              AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = k.job_id AND j.lease_token = k.lease_token AND j.state = 'running')
            RETURNING k.id
            """)
        return r.count
    }

    // MARK: installations from before the store

    /// Moves the checkpoints an older installation wrote to disk (policy_versions.checkpoint_path) into
    /// the store, when this machine has their files; jobs' checkpoints follow. Files under
    /// `ownDirectory` (the service's own copies) are removed once stored; a directory someone registered
    /// is left alone. Returns (moved, not found here).
    public static func importLegacyFiles(_ pool: ConnectionPool, ownDirectory: URL, log: (String) -> Void) throws -> (moved: Int, missing: Int) {
        // a migrations directory that stops before the store (tests of older schemas) has nothing to move into
        let present = try pool.withRetry { try $0.query("SELECT to_regclass('checkpoint_chunks') IS NOT NULL AS present").bool(0, "present") }
        guard present else { return (0, 0) }
        let pending = try pool.withRetry { c in
            try c.query("SELECT model_id, version, checkpoint_path FROM policy_versions WHERE checkpoint_path IS NOT NULL AND checkpoint_id IS NULL ORDER BY model_id, version")
        }
        var moved = 0, missing = 0
        let fm = FileManager.default
        for i in 0..<pending.count {
            let model = try pending.string(i, "model_id"), version = try pending.int(i, "version"), path = try pending.string(i, "checkpoint_path")
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
                missing += 1
                log("policy version \(version) of model \(model) is checkpointed at \(path), which this machine does not have; start r3 once on the machine that does")
                continue
            }
            let done: Bool = try pool.transaction { c in
                let still = try c.query("""
                    SELECT 1 FROM policy_versions WHERE model_id = \(model)::uuid AND version = \(version) AND checkpoint_id IS NULL FOR UPDATE
                    """)
                guard still.count == 1 else { return false }   // another process moved it meanwhile
                let k = try put(c, model: model, directory: URL(fileURLWithPath: path))
                try c.query("UPDATE policy_versions SET checkpoint_id = \(k.id)::uuid, checkpoint_path = NULL WHERE model_id = \(model)::uuid AND version = \(version)")
                try c.query("""
                    UPDATE jobs SET checkpoint = (checkpoint - 'path') || jsonb_build_object('checkpoint_id', \(k.id)::text)
                    WHERE model_id = \(model)::uuid AND checkpoint ? 'path' AND (checkpoint->>'version')::int = \(version)
                    """)
                return true
            }
            guard done else { continue }
            moved += 1
            let own = ownDirectory.standardizedFileURL.path
            if URL(fileURLWithPath: path).standardizedFileURL.path.hasPrefix(own + "/") { try? fm.removeItem(atPath: path) }
        }
        return (moved, missing)
    }
}

/// Chunks handed from the reading thread to the uploaders: bounded (memory is a few chunks), closed at
/// the end, failed by the first error on either side (then both sides stop).
final class ChunkQueue: @unchecked Sendable {
    private let cond = NSCondition()
    private var items: [(Int, Int, Data)] = []
    private var closed = false
    private(set) var error: Error?
    let capacity: Int
    init(capacity: Int) { self.capacity = capacity }

    func put(_ item: (Int, Int, Data)) throws {
        cond.lock(); defer { cond.unlock() }
        while items.count >= capacity && error == nil { cond.wait() }
        if let error { throw error }
        items.append(item)
        cond.broadcast()
    }

    /// The next chunk, or nil when closed and drained or failed.
    func take() -> (Int, Int, Data)? {
        cond.lock(); defer { cond.unlock() }
        while items.isEmpty && !closed && error == nil { cond.wait() }
        if error != nil || items.isEmpty { return nil }
        cond.broadcast()
        return items.removeFirst()
    }

    func close() { cond.lock(); closed = true; cond.broadcast(); cond.unlock() }
    func fail(_ e: Error) { cond.lock(); if error == nil { error = e }; cond.broadcast(); cond.unlock() }
}
