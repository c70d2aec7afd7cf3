// HTTPParserTests: the parser on literal wire text, byte-at-a-time feeding, and a seeded fuzz run.
import Foundation
import Testing
@testable import HTTP

/// Feeds `wire` in pieces of `step` bytes, as a connection would, collecting events.
func parse(_ wire: String, step: Int = Int.max, limits: HTTPLimits = HTTPLimits()) -> [HTTPParser.Event] {
    parseBytes(Array(wire.utf8), step: step, limits: limits).events
}

/// Feeds `bytes` in pieces of `step` bytes, as a connection would; body events are rebased to the
/// concatenated body bytes, which come back beside them.
func parseBytes(_ bytes: [UInt8], step: Int = Int.max, limits: HTTPLimits = HTTPLimits()) -> (events: [HTTPParser.Event], bodies: [UInt8]) {
    var p = HTTPParser(limits: limits)
    var buffer: [UInt8] = []
    var events: [HTTPParser.Event] = []
    var bodies: [UInt8] = []
    var offset = 0
    while offset < bytes.count {
        let n = min(step, bytes.count - offset)
        buffer += bytes[offset..<(offset + n)]
        offset += n
        while true {
            let (used, ev) = buffer.withUnsafeBytes { p.next($0) }
            if case let .body(r) = ev {
                events.append(.body(bodies.count..<(bodies.count + r.count)))
                bodies += buffer[r]
                buffer.removeFirst(used)
                continue
            }
            buffer.removeFirst(used)
            if ev == .needMore { break }
            events.append(ev)
            if case .error = ev { return (events, bodies) }
        }
    }
    return (events, bodies)
}

func status(_ events: [HTTPParser.Event]) -> Int? {
    for e in events { if case let .error(err) = e { return err.status } }
    return nil
}

/// Whole requests: each head with its body (the pieces up to its `.end`; none without a body).
func requests(_ wire: String, step: Int = Int.max, limits: HTTPLimits = HTTPLimits()) -> [(HTTPRequestHead, String)] {
    let (events, bodies) = parseBytes(Array(wire.utf8), step: step, limits: limits)
    var out: [(HTTPRequestHead, String)] = []
    var open: HTTPRequestHead?
    var from = 0, to = 0
    for e in events {
        switch e {
        case let .head(h):
            if h.framing == .none { out.append((h, "")) } else { open = h; from = to }
        case let .body(r): to = r.upperBound
        case .end:
            out.append((open!, String(decoding: bodies[from..<to], as: UTF8.self)))
            open = nil; from = to
        default: break
        }
    }
    return out
}

struct HTTPParserTests {
    @Test(arguments: [1, 3, 1000])
    func parsesGetAndPipelinedPostInAnyPieces(step: Int) {
        let wire = "GET /v1/rollouts?model=a&x=1%202 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n" +
                   "POST /v1/rollouts HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nhello"
        let rs = requests(wire, step: step)
        #expect(rs.count == 2)
        #expect(rs[0].0.method == "GET" && rs[0].0.target == "/v1/rollouts?model=a&x=1%202" && rs[0].0.keepAlive)
        #expect(rs[1].0.method == "POST" && rs[1].1 == "hello" && rs[1].0.headers["content-type"] == "application/json")
    }

    @Test(arguments: [1, 7, 1000])
    func parsesChunkedBodiesWithExtensionsAndTrailers(step: Int) {
        let wire = "POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" +
                   "5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n" +
                   "POST /v HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        let rs = requests(wire, step: step)
        #expect(rs.count == 2)
        #expect(rs[0].1 == "helloabcdefghijklmnopqrstuvwxyz")
        #expect(rs[1].1 == "")
    }

    @Test func bodyIsHandedOutOnlyAsAllowed() {
        var p = HTTPParser()
        let wire = Array("PUT /r HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nabcdef".utf8)
        var buf = wire[...]
        let (u1, e1) = buf.withUnsafeBytes { p.next($0, bodyAllowance: 0) }
        guard case let .head(h) = e1 else { Issue.record("expected the head, got \(e1)"); return }
        #expect(h.expectContinue == false && h.framing == .length(6))
        buf = buf.dropFirst(u1)
        #expect(buf.withUnsafeBytes { p.next($0, bodyAllowance: 0) } == (0, .needMore), "no body byte without an allowance")
        let (u2, e2) = buf.withUnsafeBytes { p.next($0, bodyAllowance: 4) }
        #expect(u2 == 4 && e2 == .body(0..<4))
        buf = buf.dropFirst(u2)
        let (u3, e3) = buf.withUnsafeBytes { p.next($0) }
        #expect(u3 == 2 && e3 == .body(0..<2))
        #expect(buf.dropFirst(u3).withUnsafeBytes { p.next($0) } == (0, .end))
    }

    /// The bytes a caller may read straight into a body buffer: the rest of a Content-Length body, the rest
    /// of the current chunk, and none while framing (a chunk-size line, a CRLF, the trailers) comes next.
    @Test func directBodyBytesStopAtTheFraming() {
        var p = HTTPParser()
        #expect(p.directBodyBytes == 0, "no body before a head")
        var wire = Array("PUT /r HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc".utf8)[...]
        var (u, e) = wire.withUnsafeBytes { p.next($0) }
        wire = wire.dropFirst(u)
        #expect(p.directBodyBytes == 10)
        (u, e) = wire.withUnsafeBytes { p.next($0) }
        #expect(e == .body(0..<3) && p.directBodyBytes == 7)
        p.consumeDirectBody(7)   // read from the socket by the caller
        #expect(p.directBodyBytes == 0 && p.bodyBytes == 10)
        #expect([UInt8]().withUnsafeBytes { p.next($0) } == (0, .end))
        // chunked: 5 bytes of a 0x10-byte chunk in the buffer, the other 11 read directly, then framing
        var q = HTTPParser()
        wire = Array("POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabcde".utf8)[...]
        (u, e) = wire.withUnsafeBytes { q.next($0) }
        wire = wire.dropFirst(u)
        #expect(q.directBodyBytes == 0, "the chunk-size line comes first")
        (u, e) = wire.withUnsafeBytes { q.next($0) }
        #expect(e == .body(4..<9) && q.directBodyBytes == 11)
        q.consumeDirectBody(11)
        #expect(q.directBodyBytes == 0, "the chunk's CRLF is framing")
        let rest = Array("\r\n2\r\nxy\r\n0\r\n\r\n".utf8)
        var events: [HTTPParser.Event] = []
        var at = 0
        while true {
            let (used, ev) = rest[at...].withUnsafeBytes { q.next($0) }
            at += used
            if ev == .needMore { break }
            events.append(ev)
            if ev == .end { break }
        }
        #expect(events == [.body(5..<7), .end] && q.bodyBytes == 18 && at == rest.count)
    }

    @Test func expectContinueIsInTheHead() {
        let head = "PUT /r HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        guard case let .head(h) = parse(head).first else { Issue.record("no head"); return }
        #expect(h.expectContinue)
    }

    @Test func keepAliveFollowsVersionAndConnection() {
        #expect(requests("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")[0].0.keepAlive == false)
        #expect(requests("GET / HTTP/1.0\r\n\r\n")[0].0.keepAlive == false)
        #expect(requests("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")[0].0.keepAlive == true)
    }

    @Test(arguments: [
        ("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc", 400),   // CL + TE
        ("GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),                      // double space
        ("GET / HTTP/1.1\nHost: h\r\n\r\n", 400),                         // bare LF
        ("G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),                       // bad method token
        ("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400),                    // space in target
        ("GET http://x/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),               // absolute-form
        ("GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
        ("GET / HTTP/1.1\r\n\r\n", 400),                                  // no Host
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),                      // space before colon
        ("GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", 400),            // obs-fold
        ("GET / HTTP/1.1\r\nHost: h\r\nX: a\u{01}b\r\n\r\n", 400),        // control char
        ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n", 400),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n", 417),
        // RFC 9112 strictness (issue 16): junk after a chunk size, bare LF in chunk lines and trailers,
        // chunked applied twice, malformed chunk extensions and trailer fields
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2 junk\r\nab\r\n0\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nX: 1\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\n", 400),
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nno colon\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;\r\nab\r\n0\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;a=\"x\r\nab\r\n0\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b c\r\nab\r\n0\r\n\r\n", 400),
    ])
    func malformedRequestsGetTheirStatus(wire: String, expected: Int) {
        #expect(status(parse(wire)) == expected, "\(wire.debugDescription)")
    }

    @Test func chunkExtensionsPerRFC9112AreAccepted() {
        let wire = "POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" +
                   "2 ; a=1;b ;c = \"q \\\" v\"\r\nab\r\n0;last\r\nT: 1\r\n\r\n"
        let rs = requests(wire, step: 3)
        #expect(rs.count == 1 && rs.first?.1 == "ab")
    }

    @Test func limitsGiveTheirStatus() {
        var l = HTTPLimits()
        l.maxRequestLine = 64; l.maxHeaderBytes = 256; l.maxBodyBytes = 10; l.maxHeaderCount = 4
        #expect(status(parse("GET /" + String(repeating: "a", count: 100), limits: l)) == 414, "long URI, line still open")
        #expect(status(parse("GET /" + String(repeating: "a", count: 100) + " HTTP/1.1\r\nHost: h\r\n\r\n", limits: l)) == 414)
        #expect(status(parse("GET / HTTP/1.1\r\nHost: h\r\nX: " + String(repeating: "v", count: 300), limits: l)) == 431)
        #expect(status(parse("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\n\r\n", limits: l)) == 431)
        #expect(status(parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n", limits: l)) == 413, "413 before the body is read")
        #expect(status(parse("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n", limits: l)) == 413)
        #expect(status(parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n", limits: l)) == 400)
    }

    @Test func queryParameters() {
        let r = HTTPRequest(method: "GET", target: "/x?a=1&b=two%20words&c=x+y&a=2&flag", version: "HTTP/1.1", headers: HTTPHeaders(), body: Data(), keepAlive: true)
        #expect(r.path == "/x")
        #expect(r.query == ["a": "1", "b": "two words", "c": "x y", "flag": ""])
    }

    /// Seeded random mutations of valid requests: the parser must never trap, must consume only what it
    /// was given, and must end each input in a request, an error or a wait for more bytes.
    @Test func fuzzNeverTrapsAndAlwaysDecides() {
        let seeds = [
            "GET /a?b=c HTTP/1.1\r\nHost: h\r\n\r\n",
            "POST /v1/rollouts HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nabcd",
            "PUT /r HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n4\r\nwxyz\r\n0\r\nT: 1\r\n\r\n",
        ].map { Array($0.utf8) }
        var rng = SplitMix(seed: 20261124)
        var decided = 0
        let alphabet: [UInt8] = Array("\r\n :;,0123456789aAfF-/?&=%\t\u{0}GETPOSHost".utf8) + [0x7F, 0x80, 0xFF]
        for _ in 0..<20_000 {
            var b = seeds[Int(rng.next() % UInt64(seeds.count))]
            for _ in 0..<(1 + Int(rng.next() % 6)) {
                let i = Int(rng.next() % UInt64(b.count + 1))
                switch rng.next() % 4 {
                case 0 where i < b.count: b[i] = alphabet[Int(rng.next() % UInt64(alphabet.count))]
                case 1: b.insert(alphabet[Int(rng.next() % UInt64(alphabet.count))], at: i)
                case 2 where i < b.count: b.remove(at: i)
                default: b.insert(contentsOf: b[i...].prefix(Int(rng.next() % 20)), at: i)
                }
            }
            var limits = HTTPLimits(); limits.maxBodyBytes = 64; limits.maxHeaderBytes = 512
            let events = parseBytes(b, step: 1 + Int(rng.next() % 16), limits: limits).events
            if !events.isEmpty { decided += 1 }
        }
        #expect(decided > 10_000)
    }
}

struct SplitMix {
    var s: UInt64
    init(seed: UInt64) { s = seed }
    mutating func next() -> UInt64 {
        s &+= 0x9E37_79B9_7F4A_7C15
        var z = s
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
