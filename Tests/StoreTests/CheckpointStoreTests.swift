// CheckpointStoreTests: checkpoints in PostgreSQL (chunked, checksummed, streamed) and the local cache
// (content-hash keys, LRU eviction under a size limit, entries in use never evicted); the SHA-256
// kernels (SHA instructions and portable C) against the FIPS vectors and each other.
import CPosix
import Foundation
import Testing
@testable import Store

extension StoreTests { @Suite struct CheckpointStoreTests {
    var pool: ConnectionPool { TestDatabase.shared.1 }

    @Test func sha256KernelsAgreeWithFIPSAndEachOther() throws {
        var h = ContentHash()
        h.update(Array("abc".utf8))
        #expect(h.hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        var million = ContentHash()
        for _ in 0..<1000 { million.update([UInt8](repeating: 0x61, count: 1000)) }   // fed in pieces
        #expect(million.hex() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        var rng = SystemRandomNumberGenerator()
        for blocks in [1, 2, 3, 17, 64] {
            let data = (0..<(64 * blocks)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            var a: [UInt32] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]
            var b = a
            data.withUnsafeBufferPointer { p in
                r3_sha256_blocks_portable(&a, p.baseAddress!, UInt64(blocks))
                r3_sha256_blocks_shani(&b, p.baseAddress!, UInt64(blocks))   // portable again on CPUs without SHA-NI
            }
            #expect(a == b, "\(blocks) blocks")
        }
        // every split of a message into two updates gives the one-shot digest
        let msg = (0..<300).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) }
        let whole = ContentHash.digest(msg)
        for cut in [0, 1, 55, 56, 63, 64, 65, 128, 299, 300] {
            var s = ContentHash()
            s.update(Array(msg[..<cut])); s.update(Array(msg[cut...]))
            #expect(s.digest() == whole, "cut at \(cut)")
        }
    }

    func model() throws -> String {
        let name = "ckpt-\(UUID().uuidString)"
        let p = try pool.with { try $0.query("INSERT INTO projects (name) VALUES (\(name)) RETURNING id").int(0, "id") }
        return try ModelRepository(pool: pool).create(project: p, name: "m", configJSON: "{}", source: "random") { _, _ in nil }!.id
    }

    /// A directory of files: one of several chunks and not a multiple of the chunk size, one of exactly
    /// one chunk, an empty one, a small JSON, and a hidden file that is not stored.
    func directory(seed: UInt8) throws -> URL {
        let d = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("ckpt-src-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        let big = Data((0..<(2 * CheckpointStore.chunkBytes + 12345)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) })
        try big.write(to: d.appendingPathComponent("model.safetensors"))
        try Data(repeating: seed, count: CheckpointStore.chunkBytes).write(to: d.appendingPathComponent("optimizer.safetensors"))
        try Data().write(to: d.appendingPathComponent("empty.bin"))
        try Data("{\"seed\": \(seed)}".utf8).write(to: d.appendingPathComponent("config.json"))
        try Data("not stored".utf8).write(to: d.appendingPathComponent(".hidden"))
        return d
    }

    @Test func aCheckpointRoundTripsBitExactAndCorruptionIsCaught() throws {
        let m = try model()
        let src = try directory(seed: 1)
        defer { try? FileManager.default.removeItem(at: src) }
        let k = try pool.transaction { try CheckpointStore.put($0, model: m, directory: src) }
        #expect(k.files.map(\.name) == ["config.json", "empty.bin", "model.safetensors", "optimizer.safetensors"])
        #expect(k.files.map(\.chunks) == [1, 1, 3, 1])
        let got = try #require(try pool.with { try CheckpointStore.get($0, id: k.id) })
        #expect(got == k)
        let out = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("ckpt-out-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: out) }
        try CheckpointStore.fetch(pool, got, into: out)
        for f in k.files {
            #expect(try Data(contentsOf: out.appendingPathComponent(f.name)) == Data(contentsOf: src.appendingPathComponent(f.name)), "\(f.name)")
        }
        #expect(!FileManager.default.fileExists(atPath: out.appendingPathComponent(".hidden").path))
        // chunks are stored out of line, uncompressed
        let storage = try pool.with { try $0.query("SELECT attstorage FROM pg_attribute WHERE attrelid = 'checkpoint_chunks'::regclass AND attname = 'data'") }
        #expect(try storage.string(0, "attstorage") == "e")
        // one flipped byte in the database: the read names the file and both digests
        _ = try pool.with { try $0.query("UPDATE checkpoint_chunks SET data = set_byte(data, 100, get_byte(data, 100) # 1) WHERE checkpoint_id = \(k.id)::uuid AND file = 2 AND seq = 1") }
        let again = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("ckpt-bad-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: again) }
        #expect { try CheckpointStore.fetch(pool, got, into: again) } throws: { e in
            "\(e)".contains("model.safetensors read back as") && "\(e)".contains(k.files[2].sha256)
        }
    }

    @Test func garbageIsOnlyWhatNothingReferencesAndNoLiveAttemptIsWriting() throws {
        let m = try model()
        let src = try directory(seed: 2)
        defer { try? FileManager.default.removeItem(at: src) }
        // an upload of no job, referenced by nothing (a registration that rolled back cannot leave one; this is debris)
        let orphan = try pool.transaction { try CheckpointStore.put($0, model: m, directory: src) }
        let kept = try pool.transaction { try CheckpointStore.put($0, model: m, directory: src) }
        _ = try pool.with { try $0.query("INSERT INTO policy_versions (model_id, version, checkpoint_id) VALUES (\(m)::uuid, 1, \(kept.id)::uuid)") }
        #expect(try pool.with { try CheckpointStore.collectGarbage($0, model: m) } == 1)
        #expect(try pool.with { try CheckpointStore.get($0, id: orphan.id) } == nil)
        #expect(try pool.with { try CheckpointStore.get($0, id: kept.id) } != nil)
        let chunks = try pool.with { try $0.query("SELECT count(*) AS n FROM checkpoint_chunks WHERE checkpoint_id = \(orphan.id)::uuid").int(0, "n") }
        #expect(chunks == 0)
    }

    @Test func theCacheStaysUnderItsLimitEvictsLeastRecentlyUsedAndNeverAnEntryInUse() throws {
        let m = try model()
        let data = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("ckpt-cache-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: data) }
        var records: [CheckpointRecord] = []
        for seed in UInt8(10)..<14 {
            let src = try directory(seed: seed)
            defer { try? FileManager.default.removeItem(at: src) }
            records.append(try pool.transaction { try CheckpointStore.put($0, model: m, directory: src) })
        }
        let one = records[0].bytes
        let cache = try CheckpointCache(dataDirectory: data, limit: 2 * one + one / 2)   // room for two
        func cached() -> Set<String> { Set(((try? FileManager.default.contentsOfDirectory(atPath: cache.directory.path)) ?? []).filter { !$0.hasPrefix(".") }) }
        for k in records[0..<2] { try cache.with(k, pool: pool) { dir in #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("config.json").path)) } }
        #expect(cached() == [records[0].sha256, records[1].sha256])
        Thread.sleep(forTimeInterval: 0.02)
        try cache.with(records[0], pool: pool) { _ in }                   // 0 is now more recent than 1
        Thread.sleep(forTimeInterval: 0.02)
        try cache.with(records[2], pool: pool) { _ in }
        #expect(cached() == [records[0].sha256, records[2].sha256])   // 1 was least recently used
        #expect(cache.usage.bytes <= cache.limit)
        // while 0 and 2 are held, 3 cannot be cached: it is used from scratch space and removed
        try cache.with(records[0], pool: pool) { _ in
            try cache.with(records[2], pool: pool) { _ in
                try cache.with(records[3], pool: pool) { dir in
                    #expect(!dir.path.hasPrefix(cache.directory.path))
                    let config = try Data(contentsOf: dir.appendingPathComponent("config.json"))
                    #expect(config == Data("{\"seed\": 13}".utf8))
                }
            }
        }
        #expect(cached() == [records[0].sha256, records[2].sha256])
        #expect(try FileManager.default.contentsOfDirectory(atPath: cache.scratchDirectory.path).isEmpty)
        #expect(cache.usage.bytes <= cache.limit)
        // a checkpoint larger than the whole cache is never cached
        let tiny = try CheckpointCache(dataDirectory: data.appendingPathComponent("tiny"), limit: one - 1)
        try tiny.with(records[1], pool: pool) { dir in #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("model.safetensors").path)) }
        #expect(tiny.usage.entries == 0)
    }
}}
