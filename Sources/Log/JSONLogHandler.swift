// JSONLogHandler: swift-log events as JSON lines on standard error, one line per event, written whole
// with one write(2) so lines from threads and processes never interleave:
//   {"ts":"2026-12-01T22:52:01.123Z","level":"info","logger":"r3.http","msg":"request","request_id":"…",…}
// Metadata holding an Int, a Double or a Bool is written as a JSON number or boolean. Nothing here
// redacts: callers never put secrets into messages or metadata (keys, passwords, webhook secrets, URLs).
import Foundation
import Logging

public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    let label: String
    let fd: Int32

    public init(label: String, level: Logger.Level, fd: Int32 = 2) {
        self.label = label; self.logLevel = level; self.fd = fd
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line = JSONLogLine(level: event.level, label: label, message: event.message.description)
        var all = metadata
        if let m = event.metadata { all.merge(m) { _, new in new } }
        for key in all.keys.sorted() where key != "ts" && key != "level" && key != "logger" && key != "msg" {
            line.key(key)
            JSONLogHandler.value(all[key]!, &line.bytes)
        }
        line.write(fd: fd)
    }

    static func value(_ v: Logger.Metadata.Value, _ out: inout [UInt8]) {
        switch v {
        case let .string(s): string(s, &out)
        case let .stringConvertible(c):
            switch c {
            case let i as Int: out.append(contentsOf: String(i).utf8)
            case let i as Int64: out.append(contentsOf: String(i).utf8)
            case let d as Double where d.isFinite: out.append(contentsOf: String(d).utf8)
            case let b as Bool: out.append(contentsOf: (b ? "true" : "false").utf8)
            default: string(c.description, &out)
            }
        case let .array(a):
            out.append(UInt8(ascii: "["))
            for (i, x) in a.enumerated() { if i > 0 { out.append(UInt8(ascii: ",")) }; value(x, &out) }
            out.append(UInt8(ascii: "]"))
        case let .dictionary(d):
            out.append(UInt8(ascii: "{"))
            for (i, k) in d.keys.sorted().enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                string(k, &out); out.append(UInt8(ascii: ":")); value(d[k]!, &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// A JSON string literal (control characters escaped; invalid UTF-8 was already repaired by String).
    static func string(_ s: String, _ out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out += [0x5C, 0x22]
            case UInt8(ascii: "\\"): out += [0x5C, 0x5C]
            case 0x0A: out += [0x5C, UInt8(ascii: "n")]
            case 0x0D: out += [0x5C, UInt8(ascii: "r")]
            case 0x09: out += [0x5C, UInt8(ascii: "t")]
            case 0..<0x20, 0x7F:
                let hex = Array("0123456789abcdef".utf8)
                out += [0x5C, UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(b >> 4)], hex[Int(b & 15)]]
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// UTC with milliseconds, RFC 3339, written as digits (String(format:) costs more than the rest of a line).
    static func timestamp(_ out: inout [UInt8]) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var tm = tm()
        gmtime_r(&t, &tm)
        func digits(_ v: Int, _ n: Int) {
            var d = 1
            for _ in 1..<n { d *= 10 }
            while d > 0 { out.append(UInt8(48 + (v / d) % 10)); d /= 10 }
        }
        digits(Int(tm.tm_year) + 1900, 4); out.append(UInt8(ascii: "-")); digits(Int(tm.tm_mon) + 1, 2); out.append(UInt8(ascii: "-"))
        digits(Int(tm.tm_mday), 2); out.append(UInt8(ascii: "T")); digits(Int(tm.tm_hour), 2); out.append(UInt8(ascii: ":"))
        digits(Int(tm.tm_min), 2); out.append(UInt8(ascii: ":")); digits(Int(tm.tm_sec), 2); out.append(UInt8(ascii: "."))
        digits(Int(ts.tv_nsec / 1_000_000), 3); out.append(UInt8(ascii: "Z"))
    }
}

/// One JSON log line built field by field: the bytes `JSONLogHandler` writes for the same event, without a
/// Metadata dictionary (the request log's hot path). The caller adds fields in sorted key order, as the
/// handler writes them.
public struct JSONLogLine {
    var bytes: [UInt8] = []

    public init(level: Logger.Level, label: String, message: String) {
        bytes.reserveCapacity(320)
        bytes.append(contentsOf: #"{"ts":""#.utf8)
        JSONLogHandler.timestamp(&bytes)
        bytes.append(contentsOf: #"","level":""#.utf8)
        bytes.append(contentsOf: level.rawValue.utf8)
        bytes.append(contentsOf: #"","logger":"#.utf8); JSONLogHandler.string(label, &bytes)
        bytes.append(contentsOf: #","msg":"#.utf8); JSONLogHandler.string(message, &bytes)
    }

    mutating func key(_ k: String) {
        bytes.append(UInt8(ascii: ",")); JSONLogHandler.string(k, &bytes); bytes.append(UInt8(ascii: ":"))
    }
    public mutating func field(_ k: String, _ v: String) { key(k); JSONLogHandler.string(v, &bytes) }
    public mutating func field(_ k: String, _ v: Int) { key(k); bytes.append(contentsOf: String(v).utf8) }
    public mutating func field(_ k: String, _ v: Double) {
        key(k)
        if v.isFinite { bytes.append(contentsOf: String(v).utf8) } else { JSONLogHandler.string(v.description, &bytes) }
    }

    /// The line with its newline, in one write(2) (lines from threads and processes never interleave).
    public func write(fd: Int32 = 2) {
        var line = bytes
        line.append(contentsOf: "}\n".utf8)
        line.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = Foundation.write(fd, raw.baseAddress! + off, raw.count - off)
                if n > 0 { off += n } else if n < 0 && errno == EINTR { continue } else { return }
            }
        }
    }
}

public enum R3Log {
    /// Whether `bootstrap` ran: loggers write JSON lines to stderr (set once, before any server starts).
    public static var isBootstrapped: Bool { lock.lock(); defer { lock.unlock() }; return bootstrapped }

    nonisolated(unsafe) private static var bootstrapped = false
    private static let lock = NSLock()

    /// The level named by R3_LOG_LEVEL (trace, debug, info, notice, warning, error, critical; default `fallback`).
    public static func level(_ env: [String: String] = ProcessInfo.processInfo.environment, fallback: Logger.Level = .info) throws -> Logger.Level {
        guard let v = env["R3_LOG_LEVEL"], !v.isEmpty else { return fallback }
        guard let l = Logger.Level(rawValue: v.lowercased()) else {
            throw LogLevelError(value: v)
        }
        return l
    }

    /// A logger writing JSON lines once `bootstrap` ran; before (tests, in-process use) one that drops everything.
    public static func logger(_ label: String) -> Logger {
        lock.lock(); let on = bootstrapped; lock.unlock()
        return on ? Logger(label: label) : Logger(label: label, factory: { _ in SwiftLogNoOpLogHandler() })
    }

    /// Sends every Logger of the process to JSON lines on stderr at `level` (once per process; later calls
    /// only change nothing).
    public static func bootstrap(level: Logger.Level) {
        lock.lock(); defer { lock.unlock() }
        if bootstrapped { return }
        bootstrapped = true
        LoggingSystem.bootstrap { label in JSONLogHandler(label: label, level: level) }
    }
}

public struct LogLevelError: Error, CustomStringConvertible {
    public let value: String
    public var description: String { "R3_LOG_LEVEL='\(value)' must be one of trace, debug, info, notice, warning, error, critical" }
}
