// CheckpointCache: a machine's local copies of stored checkpoints, under <data>/cache/checkpoints, one
// directory per content hash, bounded by a size limit with least-recently-used eviction. The database
// holds the only durable copy; deleting the cache (or the whole data directory) loses nothing.
//
// Processes that share a data directory share the cache. An flock on <cache>/.lock serialises changes
// to the set of entries; a reader holds a shared flock on its entry's .lock file while it uses the
// files, and eviction skips entries someone holds. An entry appears by rename from <data>/tmp (the
// same filesystem), so it is complete or absent. Last use is the entry's .lock file's mtime.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public final class CheckpointCache: @unchecked Sendable {
    public let directory: URL
    public let scratchDirectory: URL
    public let limit: Int

    /// `dataDirectory`'s cache/checkpoints, at most `limit` bytes of files.
    public init(dataDirectory: URL, limit: Int) throws {
        directory = dataDirectory.appendingPathComponent("cache/checkpoints").standardizedFileURL
        scratchDirectory = dataDirectory.appendingPathComponent("tmp").standardizedFileURL
        self.limit = max(0, limit)
        let fm = FileManager.default
        try fm.createDirectory(at: directory, withIntermediateDirectories: true)
        try fm.createDirectory(at: scratchDirectory, withIntermediateDirectories: true)
        removeAbandonedScratch()
    }

    /// A new empty directory beside the cache (same filesystem), named after this process so that one
    /// left by a process that died is removed by the next one to start.
    public func scratch() throws -> URL {
        let u = scratchDirectory.appendingPathComponent("\(getpid())-\(UUID().uuidString.lowercased())")
        try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
        return u
    }

    /// Takes an entry out of the cache at once (a rename), then deletes it: a crash in between leaves
    /// debris under a name no reader looks up, never a half-deleted entry.
    private func remove(_ entry: URL) {
        let trash = scratchDirectory.appendingPathComponent("\(getpid())-trash-\(UUID().uuidString.lowercased())")
        if (try? FileManager.default.moveItem(at: entry, to: trash)) != nil { try? FileManager.default.removeItem(at: trash) }
        else { try? FileManager.default.removeItem(at: entry) }
    }

    private func removeAbandonedScratch() {
        let fm = FileManager.default
        for name in (try? fm.contentsOfDirectory(atPath: scratchDirectory.path)) ?? [] {
            guard let pid = Int32(name.prefix { $0 != "-" }), pid != getpid() else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { try? fm.removeItem(at: scratchDirectory.appendingPathComponent(name)) }
        }
    }

    /// Bytes of cached files and entries now (the .lock files not counted).
    public var usage: (bytes: Int, entries: Int) {
        let list = entries()
        return (list.reduce(0) { $0 + $1.bytes }, list.count)
    }

    /// Runs `body` with a local directory holding the checkpoint's files: the cached entry, downloaded
    /// first when missing. The entry cannot be evicted while `body` runs. A checkpoint larger than the
    /// whole cache is used from a scratch directory and removed afterwards.
    public func with<T>(_ record: CheckpointRecord, pool: ConnectionPool, _ body: (URL) throws -> T) throws -> T {
        let entry = directory.appendingPathComponent(record.sha256)
        if let held = try locked({ try holdIfPresent(entry) }) {
            defer { release(held) }
            return try body(entry)
        }
        let tmp = try scratch()
        let files = tmp.appendingPathComponent("checkpoint")
        defer { try? FileManager.default.removeItem(at: tmp) }
        try CheckpointStore.fetch(pool, record, into: files)
        if let held = try adoptAndHold(files, sha256: record.sha256, bytes: record.bytes) {
            defer { release(held) }
            return try body(entry)
        }
        return try body(files)   // too large to cache beside what others are using: used once
    }

    /// Moves a directory this process just wrote and stored (a saved checkpoint) into the cache, when
    /// it fits; otherwise it is left for the caller to remove.
    public func adopt(_ files: URL, record: CheckpointRecord) {
        if let held = try? adoptAndHold(files, sha256: record.sha256, bytes: record.bytes) { release(held) }
    }

    // MARK: entries and locks

    private func adoptAndHold(_ files: URL, sha256: String, bytes: Int) throws -> Int32? {
        let entry = directory.appendingPathComponent(sha256)
        return try locked {
            if let held = try holdIfPresent(entry) { return held }   // another process cached it meanwhile
            guard bytes <= limit, evict(toFit: bytes) else { return nil }
            let fm = FileManager.default
            guard fm.createFile(atPath: files.appendingPathComponent(".lock").path, contents: nil) else { return nil }
            try fm.moveItem(at: files, to: entry)
            return try holdIfPresent(entry)
        }
    }

    /// Under the cache lock: opens the entry's lock file, takes it shared and marks the use; nil when
    /// the entry is absent.
    private func holdIfPresent(_ entry: URL) throws -> Int32? {
        let lockPath = entry.appendingPathComponent(".lock").path
        let fd = open(lockPath, O_RDWR | O_CLOEXEC)
        if fd < 0 { return nil }
        while flock(fd, LOCK_SH) != 0 {
            if errno != EINTR { close(fd); throw StoreError.checkpoint("cannot lock \(lockPath): \(String(cString: strerror(errno)))") }
        }
        _ = futimens(fd, nil)   // last use: now
        return fd
    }

    private func release(_ fd: Int32) { close(fd) }   // closing drops the flock

    private struct Entry { var url: URL; var bytes: Int; var lastUse: Double }

    private func entries() -> [Entry] {
        let fm = FileManager.default
        var out: [Entry] = []
        for name in (try? fm.contentsOfDirectory(atPath: directory.path)) ?? [] where !name.hasPrefix(".") {
            let url = directory.appendingPathComponent(name)
            var bytes = 0
            for f in (try? fm.contentsOfDirectory(atPath: url.path)) ?? [] where f != ".lock" {
                bytes += ((try? fm.attributesOfItem(atPath: url.appendingPathComponent(f).path))?[.size] as? NSNumber)?.intValue ?? 0
            }
            let used = ((try? fm.attributesOfItem(atPath: url.appendingPathComponent(".lock").path))?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
            out.append(Entry(url: url, bytes: bytes, lastUse: used))
        }
        return out
    }

    /// Under the cache lock: removes least recently used entries that nobody holds until `bytes` more
    /// fit under the limit; false when they cannot (entries in use fill it).
    private func evict(toFit bytes: Int) -> Bool {
        var list = entries().sorted { $0.lastUse < $1.lastUse }
        var total = list.reduce(0) { $0 + $1.bytes }
        while total + bytes > limit {
            guard let i = list.firstIndex(where: { canEvict($0.url) }) else { return false }
            remove(list[i].url)
            total -= list[i].bytes
            list.remove(at: i)
        }
        return true
    }

    /// Whether nobody holds the entry; when so it is deleted by the caller while no one can take it
    /// (taking an entry needs the cache lock, which the caller holds).
    private func canEvict(_ entry: URL) -> Bool {
        let fd = open(entry.appendingPathComponent(".lock").path, O_RDWR | O_CLOEXEC)
        if fd < 0 { return true }   // an entry without its lock file is debris
        defer { close(fd) }
        return flock(fd, LOCK_EX | LOCK_NB) == 0
    }

    /// Runs `body` holding the cache-wide lock (across the processes sharing the data directory).
    private func locked<T>(_ body: () throws -> T) throws -> T {
        let path = directory.appendingPathComponent(".lock").path
        let fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw StoreError.checkpoint("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            if errno != EINTR { throw StoreError.checkpoint("cannot lock \(path): \(String(cString: strerror(errno)))") }
        }
        return try body()
    }
}
