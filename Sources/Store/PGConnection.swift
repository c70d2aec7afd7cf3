// PGConnection: the one wrapper around a libpq connection. Statements always go through PQexecParams
// with bind parameters; bytea travels in binary. Nothing outside this file sees a libpq pointer.
import CLibPQ
import Foundation

public final class PGConnection {
    private var conn: OpaquePointer?
    public let conninfo: String

    public init(conninfo: String) throws {
        self.conninfo = conninfo
        try connect()
    }

    deinit { if let conn { PQfinish(conn) } }

    private func connect() throws {
        if let conn { PQfinish(conn) }
        conn = PQconnectdb(conninfo)
        guard let c = conn, PQstatus(c) == CONNECTION_OK else {
            let msg = conn.map { String(cString: PQerrorMessage($0)) } ?? "out of memory"
            throw StoreError.unavailable(PGConnection.firstLine(msg))
        }
        PQsetNoticeProcessor(c, { _, _ in }, nil)
    }

    public var isHealthy: Bool { conn.map { PQstatus($0) == CONNECTION_OK } ?? false }

    /// Reconnects if the connection went bad (e.g. the server restarted).
    public func ensureConnected() throws { if !isHealthy { try connect() } }

    /// Runs one statement. `binary` asks for binary results (use for bytea-only selects).
    @discardableResult
    public func query(_ sql: SQL, binary: Bool = false) throws -> PGResult {
        guard let c = conn else { throw StoreError.unavailable("not connected") }
        let n = sql.binds.count
        var lengths: [Int32] = [], formats: [Int32] = []
        for b in sql.binds {
            switch b {
            case .null, .text: lengths.append(0); formats.append(0)
            case let .bytes(d): lengths.append(Int32(d.count)); formats.append(1)
            }
        }
        // the values are lent where they lie (a 12.6 MB routes blob is not copied again before libpq's own copy)
        var values: [UnsafePointer<CChar>?] = []
        values.reserveCapacity(n)
        let res: OpaquePointer? = PGConnection.lending(sql.binds[...], &values) { v in
            lengths.withUnsafeBufferPointer { lp in
                formats.withUnsafeBufferPointer { fp in
                    v.withUnsafeBufferPointer { vp in
                        PQexecParams(c, sql.text, Int32(n), nil, n > 0 ? vp.baseAddress : nil, lp.baseAddress, fp.baseAddress, binary ? 1 : 0)
                    }
                }
            }
        }
        return try check(res)
    }

    /// Calls `body` with a pointer to each bind value, valid during the call: text as a C string, bytes
    /// where they lie, nil for NULL.
    private static func lending<R>(_ binds: ArraySlice<SQLValue>, _ out: inout [UnsafePointer<CChar>?],
                                   _ body: ([UnsafePointer<CChar>?]) -> R) -> R {
        guard let first = binds.first else { return body(out) }
        let rest = binds.dropFirst()
        switch first {
        case .null:
            out.append(nil)
            return lending(rest, &out, body)
        case let .text(s):
            return s.withCString { p in
                out.append(p)
                return lending(rest, &out, body)
            }
        case let .bytes(d):
            if d.isEmpty {   // a non-NULL pointer for an empty value (NULL would mean SQL NULL)
                return "".withCString { p in
                    out.append(p)
                    return lending(rest, &out, body)
                }
            }
            return d.withUnsafeBytes { raw in
                out.append(raw.baseAddress!.assumingMemoryBound(to: CChar.self))
                return lending(rest, &out, body)
            }
        }
    }

    /// Runs a script of several statements (migrations); no parameters.
    public func execute(script: String) throws {
        guard let c = conn else { throw StoreError.unavailable("not connected") }
        _ = try check(PQexec(c, script))
    }

    /// Subscribes this connection to NOTIFY on `channel` (a code-chosen identifier, never input).
    public func listen(_ channel: String) throws {
        precondition(channel.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" })
        try query(SQL(stringLiteral: "LISTEN \(channel)"))
    }

    /// Waits up to `timeout` seconds for a notification on a channel this connection listens to;
    /// returns the payloads received (empty on timeout). Throws when the connection broke.
    public func waitForNotifications(timeout: Double) throws -> [String] {
        guard let c = conn else { throw StoreError.unavailable("not connected") }
        var out: [String] = []
        func drain() {
            while let n = PQnotifies(c) {
                out.append(String(cString: n.pointee.extra))
                PQfreemem(n)
            }
        }
        drain()
        if !out.isEmpty { return out }
        var pfd = pollfd(fd: PQsocket(c), events: Int16(POLLIN), revents: 0)
        let rc = poll(&pfd, 1, Int32(max(0, timeout) * 1000))
        if rc > 0 {
            guard PQconsumeInput(c) == 1 else { throw StoreError.unavailable(PGConnection.firstLine(String(cString: PQerrorMessage(c)))) }
            drain()
        } else if rc < 0 && errno != EINTR {
            throw StoreError.unavailable("poll failed")
        }
        if !isHealthy { throw StoreError.unavailable("connection lost") }
        return out
    }

    /// Listens on `channel` from a connection of its own until `stopping()`, calling `notified()` for each
    /// batch of notifications; reconnects after a second while the database is away.
    public static func listenLoop(conninfo: String, channel: String, stopping: () -> Bool, notified: () -> Void) {
        while !stopping() {
            do {
                let conn = try PGConnection(conninfo: conninfo)
                try conn.listen(channel)
                while !stopping() { if !(try conn.waitForNotifications(timeout: 1)).isEmpty { notified() } }
            } catch {
                Thread.sleep(forTimeInterval: 1)   // callers poll meanwhile
            }
        }
    }

    /// COPY … FROM STDIN: `produce` sends the data through the function it is given (pieces of any size),
    /// then the copy ends and its result is checked. An error thrown by `produce` aborts the COPY (the
    /// caller's transaction then rolls back) and is rethrown. Returns the rows copied.
    @discardableResult
    public func copyIn(_ sql: String, _ produce: ((UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws -> Int {
        guard let c = conn else { throw StoreError.unavailable("not connected") }
        guard let start = PQexec(c, sql) else { _ = try check(nil); return 0 }
        guard PQresultStatus(start) == PGRES_COPY_IN else { _ = try check(start); throw StoreError.query(sqlState: "", message: "COPY did not start") }
        PQclear(start)
        func failure() -> StoreError { StoreError.unavailable(PGConnection.firstLine(String(cString: PQerrorMessage(c)))) }
        do {
            try produce { piece in
                var off = 0
                while off < piece.count {   // slices: libpq never grows its buffer to a whole blob
                    let n = min(piece.count - off, 1 << 18)
                    let p = piece.baseAddress!.assumingMemoryBound(to: CChar.self) + off
                    guard PQputCopyData(c, p, Int32(n)) == 1 else { throw failure() }
                    off += n
                }
            }
        } catch {
            _ = PQputCopyEnd(c, "aborted by the client")
            while let r = PQgetResult(c) { PQclear(r) }
            throw error
        }
        guard PQputCopyEnd(c, nil) == 1 else { throw failure() }
        var copied = 0
        var firstError: Error?
        while let r = PQgetResult(c) {
            do { copied = try check(r).affected } catch { if firstError == nil { firstError = error } }
        }
        if let e = firstError { throw e }
        return copied
    }

    private func check(_ res: OpaquePointer?) throws -> PGResult {
        guard let r = res else {
            throw StoreError.unavailable(PGConnection.firstLine(conn.map { String(cString: PQerrorMessage($0)) } ?? "no connection"))
        }
        switch PQresultStatus(r) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY:
            return PGResult(r)
        default:
            let state = PQresultErrorField(r, 67 /* PG_DIAG_SQLSTATE 'C' */).map { String(cString: $0) } ?? ""
            let msg = PQresultErrorField(r, 77 /* PG_DIAG_MESSAGE_PRIMARY 'M' */).map { String(cString: $0) } ?? String(cString: PQresultErrorMessage(r))
            PQclear(r)
            if !isHealthy || state.isEmpty || state.hasPrefix("08") || state == "57P01" || state == "57P02" || state == "57P03" {
                throw StoreError.unavailable(PGConnection.firstLine(msg))
            }
            throw StoreError.query(sqlState: state, message: PGConnection.firstLine(msg))
        }
    }

    static func firstLine(_ s: String) -> String {
        String(s.split(whereSeparator: \.isNewline).first ?? "").trimmingCharacters(in: .whitespaces)
    }
}

/// A query result, copied out of libpq at once so no pointer escapes.
public struct PGResult: Sendable {
    public let columns: [String]
    public let rows: [[Data?]]
    public let affected: Int

    init(_ r: OpaquePointer) {
        defer { PQclear(r) }
        let nc = Int(PQnfields(r)), nr = Int(PQntuples(r))
        columns = (0..<nc).map { String(cString: PQfname(r, Int32($0))) }
        var rows: [[Data?]] = []
        rows.reserveCapacity(nr)
        for i in 0..<nr {
            rows.append((0..<nc).map { j -> Data? in
                if PQgetisnull(r, Int32(i), Int32(j)) == 1 { return nil }
                let len = Int(PQgetlength(r, Int32(i), Int32(j)))
                return Data(bytes: PQgetvalue(r, Int32(i), Int32(j)), count: len)
            })
        }
        self.rows = rows
        affected = Int(String(cString: PQcmdTuples(r))) ?? 0
    }

    public var count: Int { rows.count }

    public func column(_ name: String) throws -> Int {
        guard let i = columns.firstIndex(of: name) else { throw StoreError.decode("no column \(name)") }
        return i
    }

    /// Text-format accessors: `string`, `int`, `double`, `bool` and `bytes` for a column that must hold a
    /// value (a NULL or an unparsable value throws an error naming the column, never traps); the `…OrNil`
    /// forms for a nullable column.
    public func stringOrNil(_ row: Int, _ name: String) throws -> String? {
        try cell(row, name).map { String(decoding: $0, as: UTF8.self) }
    }
    public func intOrNil(_ row: Int, _ name: String) throws -> Int? {
        guard let s = try stringOrNil(row, name) else { return nil }
        guard let v = Int(s) else { throw StoreError.decode("column \(name) = '\(s)' is not an integer") }
        return v
    }
    public func doubleOrNil(_ row: Int, _ name: String) throws -> Double? {
        guard let s = try stringOrNil(row, name) else { return nil }
        guard let v = Double(s) else { throw StoreError.decode("column \(name) = '\(s)' is not a number") }
        return v
    }
    public func boolOrNil(_ row: Int, _ name: String) throws -> Bool? {
        guard let s = try stringOrNil(row, name) else { return nil }
        guard s == "t" || s == "f" else { throw StoreError.decode("column \(name) = '\(s)' is not a boolean") }
        return s == "t"
    }
    /// Raw bytes (binary-format results, e.g. bytea).
    public func bytesOrNil(_ row: Int, _ name: String) throws -> Data? { try cell(row, name) }

    private func cell(_ row: Int, _ name: String) throws -> Data? {
        let j = try column(name)
        guard row >= 0, row < rows.count else { throw StoreError.decode("no row \(row) for column \(name): the result has \(rows.count)") }
        return rows[row][j]
    }

    public func string(_ row: Int, _ name: String) throws -> String { try required(stringOrNil(row, name), name) }
    public func int(_ row: Int, _ name: String) throws -> Int { try required(intOrNil(row, name), name) }
    public func double(_ row: Int, _ name: String) throws -> Double { try required(doubleOrNil(row, name), name) }
    public func bool(_ row: Int, _ name: String) throws -> Bool { try required(boolOrNil(row, name), name) }
    public func bytes(_ row: Int, _ name: String) throws -> Data { try required(bytesOrNil(row, name), name) }

    private func required<T>(_ v: T?, _ name: String) throws -> T {
        guard let v else { throw StoreError.decode("column \(name) is NULL") }
        return v
    }
}
