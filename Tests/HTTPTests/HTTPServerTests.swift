// HTTPServerTests: the server over real loopback sockets with a raw client: keep-alive, pipelining,
// 100-continue, deadlines, the connection cap, idle clients that hold no thread, graceful shutdown.
import Foundation
import Glibc
import Testing
@testable import HTTP

/// A blocking TCP client that speaks raw bytes.
final class RawClient {
    let fd: Int32
    init(port: UInt16) throws { fd = try connectLoopback(port: port, receiveTimeout: 5) }
    deinit { close(fd) }
    func send(_ s: String) { let b = Array(s.utf8); _ = b.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
    /// Reads until `count` complete responses (Content-Length framed) have arrived, or EOF / timeout.
    func responses(_ count: Int) -> [(status: Int, headers: [String: String], body: String)] {
        var data = [UInt8](), out: [(Int, [String: String], String)] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while out.count < count {
            if let r = parseOne(&data) { out.append(r); continue }
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            data += buf[0..<n]
        }
        return out
    }
    /// The next response's head alone (a HEAD request's answer), up to its blank line.
    func head() -> String {
        var data = [UInt8](), b = [UInt8](repeating: 0, count: 1)
        while !data.suffix(4).elementsEqual([13, 10, 13, 10]) {
            guard recv(fd, &b, 1, 0) == 1 else { break }
            data.append(b[0])
        }
        return String(decoding: data, as: UTF8.self)
    }
    /// True when the server has closed the connection (EOF within the timeout).
    func closedByServer() -> Bool {
        var b = [UInt8](repeating: 0, count: 1024)
        while true {
            let n = recv(fd, &b, b.count, 0)
            if n == 0 { return true }
            if n < 0 { return false }
        }
    }
    private func parseOne(_ data: inout [UInt8]) -> (Int, [String: String], String)? {
        guard let end = (0..<max(0, data.count - 3)).first(where: { data[$0] == 13 && data[$0 + 1] == 10 && data[$0 + 2] == 13 && data[$0 + 3] == 10 }) else { return nil }
        let head = String(decoding: data[0..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let status = Int(head[0].split(separator: " ")[1])!
        var h: [String: String] = [:]
        for l in head.dropFirst() { let p = l.split(separator: ":", maxSplits: 1); h[p[0].lowercased()] = p[1].trimmingCharacters(in: .whitespaces) }
        if h["transfer-encoding"] == "chunked" {
            // chunks of hex-size CRLF bytes CRLF, then 0 CRLF CRLF (no trailers); "x-chunks" counts the data chunks
            var at = end + 4, body = [UInt8](), chunks = 0
            while true {
                guard let eol = (at..<max(at, data.count - 1)).first(where: { data[$0] == 13 && data[$0 + 1] == 10 }) else { return nil }
                let size = Int(String(decoding: data[at..<eol], as: UTF8.self), radix: 16)!
                guard data.count >= eol + 2 + size + 2 else { return nil }
                precondition(data[eol + 2 + size] == 13 && data[eol + 3 + size] == 10, "a chunk must end with CRLF")
                body += data[(eol + 2)..<(eol + 2 + size)]
                at = eol + 4 + size
                if size == 0 { break }
                chunks += 1
            }
            h["x-chunks"] = String(chunks)
            data.removeFirst(at)
            return (status, h, String(decoding: body, as: UTF8.self))
        }
        let len = Int(h["content-length"] ?? "0")!
        guard data.count >= end + 4 + len else { return nil }
        let body = String(decoding: data[(end + 4)..<(end + 4 + len)], as: UTF8.self)
        data.removeFirst(end + 4 + len)
        return (status, h, body)
    }
}

func makeServer(_ edit: (inout HTTPServerConfig) -> Void = { _ in }, handler: HTTPHandler? = nil) throws -> HTTPServer {
    var c = HTTPServerConfig()
    c.port = 0
    edit(&c)
    let s = HTTPServer(config: c, handler: handler ?? { req in
        if req.path == "/slow" { usleep(400_000) }
        return .text(200, "\(req.method) \(req.target) \(req.body.count)")
    })
    try s.start()
    return s
}

/// CPU seconds (user + system) of this process's event-loop threads, from /proc (other tests' threads
/// running in parallel do not count).
func loopCPUSeconds() -> Double {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    var ticks = 0.0
    for t in tasks {
        guard let comm = try? String(contentsOfFile: "/proc/self/task/\(t)/comm", encoding: .utf8), comm.hasPrefix("r3-http-loop"),
              let stat = try? String(contentsOfFile: "/proc/self/task/\(t)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { continue }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        ticks += (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)   // utime, stime (fields 14, 15 of the line)
    }
    return ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
}

@Suite(.serialized) struct HTTPServerTests {
    @Test func keepAliveAndPipelining() throws {
        let s = try makeServer(); defer { s.shutdown(); s.waitUntilStopped() }
        let c = try RawClient(port: s.boundPort)
        c.send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(c.responses(1).first?.body == "GET /a 0")
        c.send("GET /b HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        let rs = c.responses(3)
        #expect(rs.map(\.body) == ["GET /b 0", "POST /c 3", "GET /d 0"])
        #expect(rs.last?.headers["connection"] == "close")
        #expect(c.closedByServer())
    }

    /// A body marked `oneChunk` goes to an HTTP/1.1 GET as one chunk of a chunked body (Python requests reads
    /// that faster), a source's as a `Data` body's, with the connection kept for the next request; an
    /// HTTP/1.0 request and HEAD get Content-Length instead.
    @Test func aOneChunkBodyIsOneChunkForHTTP11AndContentLengthElse() throws {
        final class Pieces: HTTPBodySource, @unchecked Sendable {
            let data: Data
            var at = 0
            init(_ d: Data) { data = d }
            var length: Int { data.count }
            func next(maxBytes: Int) -> Data? {
                guard at < data.count else { return nil }
                let n = min(maxBytes, 100_003, data.count - at)
                defer { at += n }
                return data.subdata(in: at..<(at + n))
            }
        }
        /// A source whose bytes are not its declared length (a bug the server must not frame as a whole body).
        final class Liar: HTTPBodySource, @unchecked Sendable {
            let inner: Pieces, length: Int
            init(_ d: Data, claims: Int) { inner = Pieces(d); length = claims }
            func next(maxBytes: Int) -> Data? { inner.next(maxBytes: maxBytes) }
        }
        let text = (0..<40_000).map { "\($0 % 997)," }.joined()   // ~160 KB, more than one refill of the queue
        let s = try makeServer(handler: { req in
            var r = HTTPResponse(status: 200)
            if req.path == "/short" { r.source = Liar(Data(text.utf8), claims: text.utf8.count + 10) }
            else if req.path == "/long" { r.source = Liar(Data(text.utf8), claims: text.utf8.count - 10) }
            else if req.path == "/source" { r.source = Pieces(Data(text.utf8)) } else { r.body = Data(text.utf8) }
            if req.method == "HEAD" { r.headLength = text.utf8.count; r.source = nil; r.body = Data() }
            r.oneChunk = true
            return r
        })
        defer { s.shutdown(); s.waitUntilStopped() }
        let c = try RawClient(port: s.boundPort)
        c.send("GET /source HTTP/1.1\r\nHost: x\r\n\r\nGET /body HTTP/1.1\r\nHost: x\r\n\r\n")
        let rs = c.responses(2)
        #expect(rs.count == 2)
        for r in rs {
            #expect(r.headers["transfer-encoding"] == "chunked" && r.headers["content-length"] == nil && r.headers["x-chunks"] == "1")
            #expect(r.body == text)
        }
        c.send("HEAD /source HTTP/1.1\r\nHost: x\r\n\r\n")
        let head = c.head()
        #expect(head.contains("\r\nContent-Length: \(text.utf8.count)\r\n") && !head.contains("Transfer-Encoding"), "\(head)")
        let old = try RawClient(port: s.boundPort)
        old.send("GET /source HTTP/1.0\r\n\r\n")
        let r0 = old.responses(1).first
        #expect(r0?.headers["content-length"] == String(text.utf8.count) && r0?.headers["transfer-encoding"] == nil && r0?.body == text)
        // a source short of its length, or past it: the bytes up to the length, no last chunk, then the close
        for (path, version, sent) in [("/short", "1.1", text.utf8.count), ("/long", "1.1", text.utf8.count - 10),
                                      ("/short", "1.0", text.utf8.count), ("/long", "1.0", text.utf8.count - 10)] {
            let c = try RawClient(port: s.boundPort)
            c.send("GET \(path) HTTP/\(version)\r\nHost: x\r\n\r\n")
            var all = [UInt8](), buf = [UInt8](repeating: 0, count: 65536), closed = false
            while true { let n = recv(c.fd, &buf, buf.count, 0); if n <= 0 { closed = n == 0; break }; all += buf[0..<n] }
            #expect(closed, "\(path) HTTP/\(version): the server must close (not leave the client waiting for its 5 s timeout)")
            let cut = all.firstRange(of: Array("\r\n\r\n".utf8))!.upperBound
            var body = Array(all[cut...])
            if version == "1.1" {
                let line = body.firstRange(of: [13, 10])!
                #expect(Int(String(decoding: body[..<line.lowerBound], as: UTF8.self), radix: 16) == (path == "/short" ? text.utf8.count + 10 : text.utf8.count - 10))
                body = Array(body[line.upperBound...])
            }
            #expect(body == Array(text.utf8.prefix(sent)), "\(path) HTTP/\(version): \(body.count) body bytes")
        }
    }

    @Test func chunkedBodyAndContinue() throws {
        let s = try makeServer(); defer { s.shutdown(); s.waitUntilStopped() }
        let c = try RawClient(port: s.boundPort)
        c.send("PUT /r HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        #expect(c.responses(1).first?.status == 100)
        c.send("wxyz")
        #expect(c.responses(1).first?.body == "PUT /r 4")
        c.send("POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        #expect(c.responses(1).first?.body == "POST /c 5")
    }

    @Test func protocolErrorsAreProblemJSONAndClose() throws {
        let s = try makeServer({ $0.limits.maxBodyBytes = 100 }); defer { s.shutdown(); s.waitUntilStopped() }
        for (wire, status) in [("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
                               ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n", 413),
                               ("GET /" + String(repeating: "a", count: 9000) + " HTTP/1.1\r\n", 414)] {
            let c = try RawClient(port: s.boundPort)
            c.send(wire)
            let r = c.responses(1).first
            #expect(r?.status == status)
            #expect(r?.headers["content-type"] == "application/problem+json")
            #expect(c.closedByServer())
        }
    }

    @Test func slowHeadGets408AndIdleConnectionsAreClosed() throws {
        let s = try makeServer({ $0.headerTimeout = 0.3; $0.idleTimeout = 0.5 }); defer { s.shutdown(); s.waitUntilStopped() }
        let slow = try RawClient(port: s.boundPort)
        slow.send("GET / HTTP/1.1\r\nHost:")
        #expect(slow.responses(1).first?.status == 408)
        let idle = try RawClient(port: s.boundPort)
        let t0 = Date()
        #expect(idle.closedByServer())
        #expect(Date().timeIntervalSince(t0) > 0.3)
    }

    @Test func idleClientsHoldNoThreadAndTheCapAnswers503() throws {
        let s = try makeServer({ $0.handlerThreads = 1; $0.maxConnections = 40 }); defer { s.shutdown(); s.waitUntilStopped() }
        let idle = try (0..<30).map { _ in try RawClient(port: s.boundPort) }
        for (i, c) in idle.enumerated() where i % 2 == 0 { c.send("GET / HTTP/1.1\r\nHo") }   // half-sent heads
        let active = try RawClient(port: s.boundPort)
        active.send("GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(active.responses(1).first?.status == 200, "one handler thread still serves while 30 clients stall")
        let more = try (0..<9).map { _ in try RawClient(port: s.boundPort) }
        // each event loop accepts from its own queue: wait until all 40 are in before the 41st arrives
        for _ in 0..<500 where s.connectionCount < 40 { usleep(10_000) }
        #expect(s.connectionCount == 40)
        let over = try RawClient(port: s.boundPort)
        // all 40 others must stay open until the 41st is answered (release builds end lifetimes at last use)
        withExtendedLifetime((idle, active, more)) {
            #expect(over.responses(1).first?.status == 503)
        }
    }

    /// A streamed body larger than the queue, sent whole and then the client's write side shut: every byte
    /// still reaches the handler (the bytes buffered behind a full queue are not lost to the half-close).
    @Test func aStreamedBodyFollowedByAHalfCloseArrivesWhole() throws {
        var c = HTTPServerConfig(); c.port = 0; c.streamQueueBytes = 64 * 1024; c.inputBufferBytes = 256 * 1024
        let s = HTTPServer(config: c) { req in
            .stream { body in
                var total = 0
                var buf = [UInt8](repeating: 0, count: 4096)
                do {
                    while true {
                        usleep(200)   // a slow consumer: the queue fills and the loop stops reading
                        let n = try buf.withUnsafeMutableBytes { try body.read(into: $0) }
                        if n == 0 { break }
                        total += n
                    }
                } catch { return .text(400, "\(error)") }
                return .text(200, "\(total)")
            }
        }
        try s.start(); defer { s.shutdown(); s.waitUntilStopped() }
        let client = try RawClient(port: s.boundPort)
        let n = 3 * 1024 * 1024
        client.send("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: \(n)\r\n\r\n")
        let payload = [UInt8](repeating: 0x61, count: n)
        var off = 0
        while off < n { let w = payload[off...].withUnsafeBytes { Glibc.send(client.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }; if w <= 0 { break }; off += w }
        Glibc.shutdown(client.fd, Int32(SHUT_WR))
        let r = client.responses(1).first
        #expect(r?.status == 200 && r?.body == "\(n)", "\(String(describing: r))")
    }

    /// A streamed body reaches the handler byte for byte whichever way it is framed and read: with a
    /// Content-Length (the loop receives it straight into the queue's buffers) or chunked (framing parsed
    /// out of the connection buffer, large chunks received straight again), read by copy (`read(into:)`)
    /// or borrowed (`lend`), by a slow reader behind a full queue or a fast one racing the loop, and sent
    /// whole or in thousands of tiny writes (each appended to the tail of the buffer the handler may be
    /// reading). A request pipelined right behind the body is parsed as the next request: the direct reads
    /// stop where the framing says the body ends.
    @Test func aStreamedBodyArrivesByteForByteHoweverItIsFramedAndRead() throws {
        @Sendable func fnv(_ h: inout UInt64, _ p: UnsafeRawBufferPointer) { for b in p { h = (h ^ UInt64(b)) &* 0x100000001b3 } }
        var c = HTTPServerConfig(); c.port = 0; c.streamQueueBytes = 64 * 1024
        let s = HTTPServer(config: c) { req in
            guard req.path.hasPrefix("/upload") else { return .respond(.text(200, "next \(req.path)")) }
            let lending = req.path.contains("lend"), slow = req.path.contains("slow")
            return .stream { body in
                var h: UInt64 = 0xcbf29ce484222325, total = 0, calls = 0
                var buf = [UInt8](repeating: 0, count: 7919)
                do {
                    while true {
                        calls += 1
                        if slow && calls % 8 == 0 { usleep(300) }
                        let n: Int
                        if lending {
                            n = try body.lend(max: 1 + (calls * 7_777) % 300_000) { fnv(&h, $0) }
                        } else {
                            n = try buf.withUnsafeMutableBytes { b in try body.read(into: UnsafeMutableRawBufferPointer(rebasing: b[0..<(1 + calls % b.count)])) }
                            buf.withUnsafeBytes { fnv(&h, UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                        }
                        if n == 0 { break }
                        total += n
                    }
                } catch { return .text(400, "\(error)") }
                return .text(200, "\(total) \(h)")
            }
        }
        try s.start(); defer { s.shutdown(); s.waitUntilStopped() }
        var rng = SystemRandomNumberGenerator()
        func sendAll(_ fd: Int32, _ bytes: [UInt8]) {
            var off = 0
            while off < bytes.count { let w = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }; if w <= 0 { break }; off += w }
        }
        for chunked in [false, true] {
            for mode in ["copy", "lend", "copy-slow", "lend-slow", "lend-drip", "copy-drip"] {
                let drip = mode.hasSuffix("drip")
                let n = drip ? 60_000 : 3 * 1024 * 1024 + 17
                let payload = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
                var want: UInt64 = 0xcbf29ce484222325
                payload.withUnsafeBytes { fnv(&want, $0) }
                let client = try RawClient(port: s.boundPort)
                var flag: Int32 = 1
                setsockopt(client.fd, Int32(IPPROTO_TCP), TCP_NODELAY, &flag, socklen_t(MemoryLayout<Int32>.size))
                client.send("POST /upload-\(mode) HTTP/1.1\r\nHost: x\r\n" + (chunked ? "Transfer-Encoding: chunked\r\n\r\n" : "Content-Length: \(n)\r\n\r\n"))
                var wire: [[UInt8]] = []   // the body as the client writes it, framing included
                var off = 0
                while off < n {
                    let piece = drip ? Int.random(in: 1...7, using: &rng) : (chunked ? [300_000, 5, 70_000, 1][wire.count % 4] : 256 * 1024 + 3)
                    let part = Array(payload[off..<min(n, off + piece)])
                    wire.append(chunked ? Array("\(String(part.count, radix: 16))\r\n".utf8) + part + Array("\r\n".utf8) : part)
                    off += part.count
                }
                if chunked { wire.append(Array("0\r\n\r\n".utf8)) }
                wire[wire.count - 1] += Array("GET /after HTTP/1.1\r\nHost: x\r\n\r\n".utf8)   // pipelined behind the body's last bytes
                if drip { for w in wire { sendAll(client.fd, w) } } else { sendAll(client.fd, wire.flatMap { $0 }) }
                let rs = client.responses(2)
                #expect(rs.count == 2 && rs[0].status == 200 && rs[0].body == "\(n) \(want)", "\(chunked ? "chunked" : "length") \(mode): \(rs.map { $0.body.prefix(200) })")
                #expect(rs.count == 2 && rs[1].body == "next /after", "\(chunked ? "chunked" : "length") \(mode)")
            }
        }
    }

    /// A client that goes away in the middle of its body: the handler's read (by copy or borrowed) throws,
    /// and the stream is left usable by the loop, which goes on serving everyone else.
    @Test func aBodyCutOffMidwayFailsTheReadAndTheServerGoesOn() throws {
        let s = HTTPServer(config: { var c = HTTPServerConfig(); c.port = 0; return c }()) { req in
            guard req.path.hasPrefix("/upload") else { return .respond(.text(200, "ok")) }
            let lending = req.path.hasSuffix("lend")
            return .stream { body in
                do {
                    var buf = [UInt8](repeating: 0, count: 4096)
                    while try (lending ? body.lend(max: 4096) { _ in } : buf.withUnsafeMutableBytes { try body.read(into: $0) }) > 0 {}
                    return .text(200, "whole")
                } catch { return .text(400, "\(error)") }
            }
        }
        try s.start(); defer { s.shutdown(); s.waitUntilStopped() }
        for mode in ["copy", "lend", "copy", "lend"] {
            let client = try RawClient(port: s.boundPort)
            client.send("POST /upload-\(mode) HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + String(repeating: "x", count: 70_000))
            usleep(50_000)
            Glibc.shutdown(client.fd, Int32(SHUT_RDWR))   // gone: the server reads the end of the stream
            let other = try RawClient(port: s.boundPort)
            other.send("GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(other.responses(1).first?.body == "ok", "the server answers after a \(mode) upload was cut off")
        }
    }

    /// A client that half-closes while the server is not reading it (a handler runs, a pipelined request
    /// waits) must not make the event loop spin: EPOLLRDHUP is level-triggered.
    @Test func aHalfClosedClientDoesNotMakeTheLoopSpin() throws {
        let s = try makeServer(); defer { s.shutdown(); s.waitUntilStopped() }
        let client = try RawClient(port: s.boundPort)
        client.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        Glibc.shutdown(client.fd, Int32(SHUT_WR))
        let before = loopCPUSeconds()
        let rs = client.responses(2)
        let used = loopCPUSeconds() - before
        #expect(rs.map(\.status) == [200, 200])
        #expect(used < 0.2, "the event loop used \(used) s of CPU while the slow handler ran for 0.4 s")
    }

    @Test func shutdownFinishesInFlightRequestsAndStopsAccepting() throws {
        let s = try makeServer()
        let c = try RawClient(port: s.boundPort)
        c.send("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        usleep(100_000)
        s.shutdown()
        let r = c.responses(1).first
        #expect(r?.status == 200 && r?.headers["connection"] == "close")
        s.waitUntilStopped()
        #expect(throws: SyscallError.self) { try RawClient(port: s.boundPort) }
    }

    /// The inline responder runs on the event loop (HTTPInline.isActive) and answers there; what it declines
    /// goes to a worker, in order with what it answered. Thousands of pipelined requests answered inline on
    /// one connection do not deepen the loop's stack (process is not reentrant).
    @Test func inlineAnswersOnTheLoopAndDeclinesToAWorker() throws {
        var c = HTTPServerConfig(); c.port = 0
        let s = HTTPServer(config: c, inline: { req in
            req.path == "/fast" ? .respond(.text(200, "inline \(HTTPInline.isActive)")) : nil
        }) { req in .respond(.text(200, "worker \(HTTPInline.isActive) \(req.path)")) }
        try s.start(); defer { s.shutdown(); s.waitUntilStopped() }
        let client = try RawClient(port: s.boundPort)
        client.send("GET /fast HTTP/1.1\r\nHost: x\r\n\r\nGET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(client.responses(3).map(\.body) == ["inline true", "worker false /slow", "inline true"])

        let n = 20_000
        let many = try RawClient(port: s.boundPort)
        many.send(String(repeating: "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n", count: n - 1) + "GET /fast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        var data = [UInt8](), buf = [UInt8](repeating: 0, count: 1 << 16)
        while true { let k = recv(many.fd, &buf, buf.count, 0); if k <= 0 { break }; data += buf[0..<k] }
        let text = String(decoding: data, as: UTF8.self)
        #expect(text.components(separatedBy: "HTTP/1.1 200 OK").count - 1 == n)
        #expect(text.components(separatedBy: "inline true").count - 1 == n)
    }

    /// Several event loops share the port (SO_REUSEPORT): connections land on more than one of them, each
    /// is served by the loop that accepted it, and shutdown stops them all.
    @Test func eventLoopsShareThePort() throws {
        var c = HTTPServerConfig(); c.port = 0; c.eventLoops = 2
        let s = HTTPServer(config: c, inline: { _ in
            let name = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? "?"
            return .respond(.text(200, name.trimmingCharacters(in: .whitespacesAndNewlines)))
        }) { _ in .respond(.text(500, "")) }
        try s.start()
        let clients = try (0..<64).map { _ in try RawClient(port: s.boundPort) }
        var names = Set<String>()
        for cl in clients {
            cl.send("GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            let rs = cl.responses(2)
            #expect(rs.count == 2 && rs[0].body == rs[1].body, "one connection, one loop")
            names.formUnion(rs.map(\.body))
        }
        #expect(names == ["r3-http-loop-0", "r3-http-loop-1"], "64 connections all on one loop: \(names)")
        #expect(s.connectionCount == 64)
        s.shutdown()
        s.waitUntilStopped()
        #expect(clients.allSatisfy { $0.closedByServer() })
        #expect(throws: SyscallError.self) { try RawClient(port: s.boundPort) }
    }

    /// problem+json bodies are written by hand: valid JSON with the four fields, whatever the detail holds.
    @Test func problemBodiesAreJSON() throws {
        let detail = "a \"quoted\" path /x\\y, a newline\n, a tab\t, a bell \u{7} and é"
        let r = HTTPResponse.problem(422, detail: detail)
        let o = try #require(try JSONSerialization.jsonObject(with: r.body) as? [String: Any])
        #expect(o["detail"] as? String == detail && o["status"] as? Int == 422)
        #expect(o["title"] as? String == "Unprocessable Content" || o["title"] as? String == HTTPResponse.reason(422))
        #expect(o["type"] as? String == "about:blank" && o.count == 4)
        #expect(r.headers["content-type"] == "application/problem+json")
    }
}
