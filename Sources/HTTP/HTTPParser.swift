// HTTPParser: a strict HTTP/1.1 request parser (RFC 9112) as a pure state machine over bytes. The
// connection feeds it its unread bytes; it says how many it consumed and what happened: a head, a piece
// of body (framing removed), the end of a message, or an error. It never buffers a body itself, so the
// server decides when (and whether) body bytes are read at all. No I/O.

public struct HTTPParser {
    public enum Event: Equatable {
        case needMore
        /// A complete head. With a body (`framing` not `.none`), `.body` pieces and `.end` follow.
        case head(HTTPRequestHead)
        /// Body bytes at this range of the buffer given to `next` (already counted as consumed).
        case body(Range<Int>)
        /// The body (and any trailer section) is complete.
        case end
        case error(HTTPParseError)
    }

    enum State: Equatable {
        case head(scanned: Int)
        case fixed(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers(scanned: Int)
        case failed
    }

    public let limits: HTTPLimits
    var state: State = .head(scanned: 0)
    /// Body bytes of the current message so far (chunked bodies are checked against the limit).
    public private(set) var bodyBytes = 0

    public init(limits: HTTPLimits = HTTPLimits()) { self.limits = limits }

    /// True while a message's head has been parsed and its body is not finished.
    public var inBody: Bool { if case .head = state { return false }; if case .failed = state { return false }; return true }

    /// Body bytes that come next in the stream with no framing among them (the rest of a Content-Length
    /// body, or of the current chunk): a caller may read that many straight into a body buffer and count
    /// them with `consumeDirectBody` instead of passing them through `next`. 0 when framing comes next.
    public var directBodyBytes: Int {
        switch state {
        case let .fixed(remaining), let .chunkData(remaining): return remaining
        default: return 0
        }
    }

    /// Counts `n` (≤ `directBodyBytes`) body bytes the caller read itself, as `next` would have.
    public mutating func consumeDirectBody(_ n: Int) {
        switch state {
        case let .fixed(remaining):
            precondition(n <= remaining, "more body bytes than the framing allows")
            state = .fixed(remaining: remaining - n)
        case let .chunkData(remaining):
            precondition(n <= remaining, "more body bytes than the framing allows")
            state = n < remaining ? .chunkData(remaining: remaining - n) : .chunkDataEnd
        default:
            precondition(n == 0, "no body bytes are due")
        }
        bodyBytes += n
    }

    /// Parses from the front of `buf`; returns the bytes consumed and the event. Call again while the
    /// event is not `.needMore` (a pipelined request may follow). At most `bodyAllowance` body bytes are
    /// handed out per call; with 0 nothing of a body is consumed.
    public mutating func next(_ buf: UnsafeRawBufferPointer, bodyAllowance: Int = .max) -> (consumed: Int, event: Event) {
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
                bodyBytes = 0
                switch head.framing {
                case .none: state = .head(scanned: 0)
                case let .length(n):
                    if n > limits.maxBodyBytes { return fail(used, 413, "body of \(n) bytes exceeds the limit of \(limits.maxBodyBytes)") }
                    state = .fixed(remaining: n)
                case .chunked: state = .chunkSize
                }
                return (used, .head(head))
            case let .fixed(remaining):
                if remaining == 0 { state = .head(scanned: 0); return (used, .end) }
                let take = min(remaining, rest.count, bodyAllowance)
                if take == 0 { return (used, .needMore) }
                state = .fixed(remaining: remaining - take)
                bodyBytes += take
                return (used + take, .body(used..<(used + take)))
            case .chunkSize:
                guard let eol = find(rest, crlf, from: 0) else {
                    if rest.count > limits.maxChunkLine { return fail(used, 400, "chunk-size line too long") }
                    if let lf = rest.firstIndex(of: 0x0A) { _ = lf; return fail(used, 400, "bare LF in a chunk-size line") }
                    return (used, .needMore)
                }
                if eol > limits.maxChunkLine { return fail(used, 400, "chunk-size line too long") }
                var size = 0, i = 0
                while i < eol, let d = hexValue(rest[i]) {
                    if size > (Int.max >> 4) - 1 { return fail(used, 413, "chunk size overflows") }
                    size = size << 4 | d; i += 1
                }
                if i == 0 { return fail(used, 400, "invalid chunk size") }
                if let problem = chunkExtensions(UnsafeRawBufferPointer(rebasing: rest[i..<eol])) { return fail(used, 400, problem) }
                used += eol + 2
                if size == 0 { state = .trailers(scanned: 0); continue }
                if bodyBytes + size > limits.maxBodyBytes { return fail(used, 413, "chunked body exceeds the limit of \(limits.maxBodyBytes) bytes") }
                state = .chunkData(remaining: size)
            case let .chunkData(remaining):
                let take = min(remaining, rest.count, bodyAllowance)
                if take == 0 { return (used, .needMore) }
                state = take < remaining ? .chunkData(remaining: remaining - take) : .chunkDataEnd
                bodyBytes += take
                return (used + take, .body(used..<(used + take)))
            case .chunkDataEnd:
                if rest.count < 2 { return (used, .needMore) }
                guard rest[0] == 0x0D, rest[1] == 0x0A else { return fail(used, 400, "chunk data not followed by CRLF") }
                used += 2
                state = .chunkSize
            case let .trailers(scanned):
                if rest.count >= 2 && rest[0] == 0x0D && rest[1] == 0x0A {   // no trailer fields
                    used += 2
                    state = .head(scanned: 0)
                    return (used, .end)
                }
                if rest.count >= 1 && rest[0] == 0x0A { return fail(used, 400, "bare LF in the trailer section") }
                guard let end = find(rest, crlfcrlf, from: max(0, scanned - 3)) else {
                    if rest.count > limits.maxHeaderBytes { return fail(used, 431, "trailer section too large") }
                    if let problem = trailerProblem(UnsafeRawBufferPointer(rebasing: rest[..<rest.count]), complete: false) { return fail(used, 400, problem) }
                    state = .trailers(scanned: rest.count)
                    return (used, .needMore)
                }
                if let problem = trailerProblem(UnsafeRawBufferPointer(rebasing: rest[..<(end + 2)]), complete: true) { return fail(used, 400, problem) }
                used += end + 4
                state = .head(scanned: 0)
                return (used, .end)
            }
        }
    }

    /// chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ), names tokens, values
    /// tokens or quoted strings (RFC 9112 §7.1.1). Returns what is wrong, or nil.
    func chunkExtensions(_ b: UnsafeRawBufferPointer) -> String? {
        var i = 0
        func bws() { while i < b.count && (b[i] == 0x20 || b[i] == 0x09) { i += 1 } }
        func token() -> Bool { let s = i; while i < b.count && HTTPRequestHead.isTChar(b[i]) { i += 1 }; return i > s }
        while true {
            bws()
            if i == b.count { return nil }
            guard b[i] == UInt8(ascii: ";") else { return "invalid chunk size line: unexpected bytes after the size" }
            i += 1; bws()
            guard token() else { return "invalid chunk extension name" }
            bws()
            if i < b.count && b[i] == UInt8(ascii: "=") {
                i += 1; bws()
                if i < b.count && b[i] == UInt8(ascii: "\"") {
                    i += 1
                    var closed = false
                    while i < b.count {
                        let c = b[i]
                        if c == UInt8(ascii: "\"") { i += 1; closed = true; break }
                        if c == UInt8(ascii: "\\") { i += 2; continue }
                        if (c < 0x20 && c != 0x09) || c == 0x7F { return "control character in a chunk extension" }
                        i += 1
                    }
                    if !closed { return "unterminated quoted chunk extension value" }
                } else if !token() { return "invalid chunk extension value" }
            }
        }
    }

    /// The trailer section's lines (each `name: value` CRLF): a bare CR or LF, NUL, or a line without a
    /// field name is refused. `complete`: `b` ends with the last line's CRLF.
    func trailerProblem(_ b: UnsafeRawBufferPointer, complete: Bool) -> String? {
        var lineStart = 0, i = 0
        while i < b.count {
            let c = b[i]
            if c == 0 { return "NUL in the trailer section" }
            if c == 0x0A { return "bare LF in the trailer section" }
            if c == 0x0D {
                guard i + 1 < b.count else { return complete ? "bare CR in the trailer section" : nil }
                guard b[i + 1] == 0x0A else { return "bare CR in the trailer section" }
                let line = UnsafeRawBufferPointer(rebasing: b[lineStart..<i])
                guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0, line[..<colon].allSatisfy(HTTPRequestHead.isTChar) else {
                    return "malformed trailer field"
                }
                i += 2; lineStart = i; continue
            }
            i += 1
        }
        return nil
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
