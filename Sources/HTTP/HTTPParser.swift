// HTTPParser: a strict HTTP/1.1 request parser (RFC 9112) as a pure state machine over bytes. The
// connection feeds it its unread bytes; it says how many it consumed and what happened. No I/O.

public struct HTTPParser {
    public enum Event: Equatable {
        case needMore
        /// The head asked for `Expect: 100-continue` and the body has not started: send 100 now.
        case sendContinue
        case request(HTTPRequestHead, body: [UInt8])
        case error(HTTPParseError)
    }

    enum State {
        case head(scanned: Int)
        case fixed(HTTPRequestHead, remaining: Int)
        case chunkSize(HTTPRequestHead)
        case chunkData(HTTPRequestHead, remaining: Int)
        case chunkDataEnd(HTTPRequestHead)
        case trailers(HTTPRequestHead, scanned: Int)
        case failed
    }

    public let limits: HTTPLimits
    var state: State = .head(scanned: 0)
    var body: [UInt8] = []
    var continueSent = false

    public init(limits: HTTPLimits = HTTPLimits()) { self.limits = limits }

    /// True while a request's head is complete and its body is still arriving.
    public var inBody: Bool { if case .head = state { return false }; if case .failed = state { return false }; return true }

    /// Parses from the front of `buf`; returns the bytes consumed and the event. Call again while the
    /// event is not `.needMore` (a pipelined request may follow).
    public mutating func next(_ buf: UnsafeRawBufferPointer) -> (consumed: Int, event: Event) {
        var used = 0
        while true {
            let rest = UnsafeRawBufferPointer(rebasing: buf[used...])
            switch state {
            case .failed:
                return (used, .error(HTTPParseError(status: 400, message: "connection is closing after an error")))
            case let .head(scanned):
                guard let end = find(rest, crlfcrlf, from: max(0, scanned - 3)) else {
                    let line = firstLineLength(rest)
                    if (line == nil && rest.count > limits.maxRequestLine) || (line ?? 0) > limits.maxRequestLine {
                        return fail(used, 414, "request line longer than \(limits.maxRequestLine) bytes")
                    }
                    if rest.count > limits.maxHeaderBytes { return fail(used, 431, "request head larger than \(limits.maxHeaderBytes) bytes") }
                    state = .head(scanned: rest.count)
                    return (used, .needMore)
                }
                if end + 4 > limits.maxHeaderBytes { return fail(used, 431, "request head larger than \(limits.maxHeaderBytes) bytes") }
                let head: HTTPRequestHead
                do { head = try HTTPRequestHead.parse(UnsafeRawBufferPointer(rebasing: rest[..<end]), limits: limits) } catch let e as HTTPParseError {
                    return fail(used, e.status, e.message)
                } catch { return fail(used, 400, "malformed request head") }
                used += end + 4
                body = []
                continueSent = false
                switch head.framing {
                case .none:
                    state = .head(scanned: 0)
                    return (used, .request(head, body: []))
                case let .length(n):
                    if n > limits.maxBodyBytes { return fail(used, 413, "body of \(n) bytes exceeds the limit of \(limits.maxBodyBytes)") }
                    body.reserveCapacity(n)
                    state = .fixed(head, remaining: n)
                case .chunked:
                    state = .chunkSize(head)
                }
                if head.expectContinue && used == buf.count { continueSent = true; return (used, .sendContinue) }
            case let .fixed(head, remaining):
                let take = min(remaining, rest.count)
                body.append(contentsOf: rest[..<take])
                used += take
                if take < remaining { state = .fixed(head, remaining: remaining - take); return (used, .needMore) }
                state = .head(scanned: 0)
                return (used, .request(head, body: finish()))
            case let .chunkSize(head):
                guard let eol = find(rest, crlf, from: 0) else {
                    if rest.count > limits.maxChunkLine { return fail(used, 400, "chunk-size line too long") }
                    return (used, .needMore)
                }
                if eol > limits.maxChunkLine { return fail(used, 400, "chunk-size line too long") }
                var size = 0, i = 0
                while i < eol, let d = hexValue(rest[i]) {
                    if size > (Int.max >> 4) - 1 { return fail(used, 413, "chunk size overflows") }
                    size = size << 4 | d; i += 1
                }
                if i == 0 { return fail(used, 400, "invalid chunk size") }
                // optional chunk extensions: ;name[=value], bounded by maxChunkLine and otherwise ignored
                if i < eol && rest[i] != UInt8(ascii: ";") && rest[i] != UInt8(ascii: " ") && rest[i] != UInt8(ascii: "\t") {
                    return fail(used, 400, "invalid chunk size")
                }
                for j in i..<eol where rest[j] == 0x0D || rest[j] == 0x0A || rest[j] == 0 { return fail(used, 400, "invalid chunk extension") }
                used += eol + 2
                if size == 0 { state = .trailers(head, scanned: 0); continue }
                if body.count + size > limits.maxBodyBytes { return fail(used, 413, "chunked body exceeds the limit of \(limits.maxBodyBytes) bytes") }
                state = .chunkData(head, remaining: size)
            case let .chunkData(head, remaining):
                let take = min(remaining, rest.count)
                body.append(contentsOf: rest[..<take])
                used += take
                if take < remaining { state = .chunkData(head, remaining: remaining - take); return (used, .needMore) }
                state = .chunkDataEnd(head)
            case let .chunkDataEnd(head):
                if rest.count < 2 { return (used, .needMore) }
                guard rest[0] == 0x0D, rest[1] == 0x0A else { return fail(used, 400, "chunk data not followed by CRLF") }
                used += 2
                state = .chunkSize(head)
            case let .trailers(head, scanned):
                if rest.count >= 2 && rest[0] == 0x0D && rest[1] == 0x0A {   // no trailer fields
                    used += 2
                    state = .head(scanned: 0)
                    return (used, .request(head, body: finish()))
                }
                guard let end = find(rest, crlfcrlf, from: max(0, scanned - 3)) else {
                    if rest.count > limits.maxHeaderBytes { return fail(used, 431, "trailer section too large") }
                    state = .trailers(head, scanned: rest.count)
                    return (used, .needMore)
                }
                for j in 0..<end where rest[j] == 0 { return fail(used, 400, "NUL in trailer section") }
                used += end + 4
                state = .head(scanned: 0)
                return (used, .request(head, body: finish()))
            }
        }
    }

    private mutating func finish() -> [UInt8] {
        defer { body = [] }
        return body
    }

    private mutating func fail(_ used: Int, _ status: Int, _ message: String) -> (Int, Event) {
        state = .failed
        return (used, .error(HTTPParseError(status: status, message: message)))
    }
}

let crlf: [UInt8] = [0x0D, 0x0A]
let crlfcrlf: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A]

@inline(__always) func find(_ b: UnsafeRawBufferPointer, _ pat: [UInt8], from: Int) -> Int? {
    let n = b.count, m = pat.count
    if n < m { return nil }
    var i = from
    while i <= n - m {
        if b[i] == pat[0] {
            var k = 1
            while k < m && b[i + k] == pat[k] { k += 1 }
            if k == m { return i }
        }
        i += 1
    }
    return nil
}

func firstLineLength(_ b: UnsafeRawBufferPointer) -> Int? { find(b, crlf, from: 0) }

@inline(__always) func hexValue(_ c: UInt8) -> Int? {
    switch c {
    case 0x30...0x39: return Int(c - 0x30)
    case 0x41...0x46: return Int(c - 0x41 + 10)
    case 0x61...0x66: return Int(c - 0x61 + 10)
    default: return nil
    }
}
