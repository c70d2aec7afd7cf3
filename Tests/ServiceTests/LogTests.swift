// LogTests: the JSON-lines handler writes one parseable object per event (escapes, numbers, nested
// metadata), and the start-up settings never carry the database password.
import Foundation
import JSON
import Log
import Logging
import Testing
@testable import Service

struct LogTests {
    @Test func eachEventIsOneJSONObjectLine() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]) }
        let h = JSONLogHandler(label: "t", level: .info, fd: fds[1])
        var logger = Logger(label: "t", factory: { _ in h })
        logger[metadataKey: "fixed"] = "x"
        logger.info("quote \" backslash \\ newline \n tab \t bell \u{7}", metadata: [
            "n": .stringConvertible(42), "d": .stringConvertible(1.5), "b": .stringConvertible(true),
            "list": .array([.string("a"), .stringConvertible(2)]), "obj": .dictionary(["k": .string("v")]), "msg": "not overriding",
        ])
        logger.debug("below the level")
        close(fds[1])
        let all = readToEnd(fds[0])
        let lines = all.split(separator: 0x0A)
        #expect(lines.count == 1)
        let o = try JSONReader.parse(Array(lines[0])).objectValue!
        #expect(o["msg"]?.stringValue == "quote \" backslash \\ newline \n tab \t bell \u{7}")
        #expect(o["level"]?.stringValue == "info" && o["logger"]?.stringValue == "t" && o["fixed"]?.stringValue == "x")
        #expect(o["n"] == .int(42) && o["b"] == .bool(true))
        #expect(o["list"]?.arrayValue?.count == 2 && o["obj"]?.objectValue?["k"]?.stringValue == "v")
        #expect(o["ts"]?.stringValue?.hasSuffix("Z") == true)
    }

    /// The request log's field-by-field line is byte for byte what the handler writes for the same event
    /// (apart from the timestamp).
    @Test func aLineBuiltFieldByFieldIsTheHandlersLine() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]) }
        let h = JSONLogHandler(label: "r3.api", level: .info, fd: fds[1])
        let logger = Logger(label: "r3.api", factory: { _ in h })
        logger.info("request", metadata: ["request_id": "a\"b", "method": "GET", "route": "/v1/x", "status": .stringConvertible(200),
                                          "bytes_in": .stringConvertible(0), "bytes_out": .stringConvertible(15),
                                          "duration_ms": .stringConvertible(0.07), "project": .stringConvertible(3), "key_id": .stringConvertible(9)])
        var line = JSONLogLine(level: .info, label: "r3.api", message: "request")
        line.field("bytes_in", 0); line.field("bytes_out", 15); line.field("duration_ms", 0.07); line.field("key_id", 9)
        line.field("method", "GET"); line.field("project", 3); line.field("request_id", "a\"b"); line.field("route", "/v1/x")
        line.field("status", 200)
        line.write(fd: fds[1])
        close(fds[1])
        let all = readToEnd(fds[0])
        let lines = all.split(separator: 0x0A).map { String(decoding: $0, as: UTF8.self) }
        #expect(lines.count == 2)
        let noTime = lines.map { $0.replacingOccurrences(of: #""ts":"[^"]*""#, with: "", options: .regularExpression) }
        #expect(noTime[0] == noTime[1])
        #expect(noTime[0].contains(#""duration_ms":0.07,"#) && noTime[0].contains(#""request_id":"a\"b""#))
    }

    @Test(arguments: [
        ("postgres://r3:hunter2@db.example:5432/r3?sslmode=require", "postgres://r3:***@db.example:5432/r3?sslmode=require"),
        ("postgresql://r3@db/r3?password=hunter2&sslmode=require", "postgresql://r3@db/r3?password=***&sslmode=require"),
        ("host=db user=r3 password=hunter2 dbname=r3", "host=db user=r3 password=*** dbname=r3"),
        ("host=db password = 'hun ter\\'2' dbname=r3", "host=db password =*** dbname=r3"),
        ("host=/run/pg dbname=r3", "host=/run/pg dbname=r3"),
    ])
    func databasePasswordsAreRedacted(given: String, shown: String) {
        #expect(ServiceConfig.redacted(given) == shown)
        #expect(!ServiceConfig.redacted(given).contains("hunter2") && !ServiceConfig.redacted(given).contains("hun ter"))
    }

    /// An empty R3_DATA_DIR (`R3_DATA_DIR= r3 …`) is the default ./.r3, as an empty DATABASE_URL is the
    /// embedded default: not the working directory, where a cluster would land beside the user's files.
    @Test func anEmptyDataDirIsTheDefault() throws {
        #expect(try ServiceConfig.fromEnvironment(["R3_DATA_DIR": ""]).dataDir.lastPathComponent == ".r3")
        #expect(try ServiceConfig.fromEnvironment(["R3_DATA_DIR": "", "DATABASE_URL": ""]).databaseURL == nil)
        #expect(try ServiceConfig.fromEnvironment(["R3_DATA_DIR": "/tmp/x"]).dataDir.path == "/tmp/x")
    }

    @Test func aBadLogLevelNamesTheVariable() {
        #expect(throws: LogLevelError.self) { try R3Log.level(["R3_LOG_LEVEL": "loud"]) }
        #expect((try? R3Log.level(["R3_LOG_LEVEL": "WARNING"])) == .warning)
        #expect((try? R3Log.level([:])) == .info)
    }
}

/// Every byte left in a pipe whose write end is closed.
private func readToEnd(_ fd: Int32) -> [UInt8] {
    var all = [UInt8]()
    var buf = [UInt8](repeating: 0, count: 4096)
    while true { let n = read(fd, &buf, buf.count); if n <= 0 { break }; all += buf[0..<n] }
    return all
}
