// HTTPRequestHead: the request line and header section, validated strictly (RFC 9112 §3, §5, §6).

public struct HTTPRequestHead: Sendable, Equatable {
    public enum Framing: Sendable, Equatable { case none, length(Int), chunked }

    public var method: String
    public var target: String
    public var version: String
    public var headers: HTTPHeaders
    public var framing: Framing
    public var keepAlive: Bool
    public var expectContinue: Bool

    static func isTChar(_ c: UInt8) -> Bool {
        switch c {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"),
             UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"),
             UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"): return true
        default: return false
        }
    }

    /// Parses the head without its final CRLFCRLF.
    static func parse(_ b: UnsafeRawBufferPointer, limits: HTTPLimits) throws -> HTTPRequestHead {
        func bad(_ m: String, _ status: Int = 400) -> HTTPParseError { HTTPParseError(status: status, message: m) }
        // split into lines on CRLF; a bare CR or LF is an error
        var lines: [Range<Int>] = []
        var start = 0, i = 0
        while i < b.count {
            let c = b[i]
            if c == 0x0D {
                guard i + 1 < b.count, b[i + 1] == 0x0A else { throw bad("bare CR in request head") }
                lines.append(start..<i); i += 2; start = i; continue
            }
            if c == 0x0A { throw bad("bare LF in request head") }
            if c == 0 { throw bad("NUL in request head") }
            i += 1
        }
        lines.append(start..<b.count)
        // request-line = method SP request-target SP HTTP-version
        let rl = lines[0]
        if rl.count > limits.maxRequestLine { throw bad("request line longer than \(limits.maxRequestLine) bytes", 414) }
        let parts = b[rl].split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else { throw bad("malformed request line") }
        guard parts[0].allSatisfy(isTChar) else { throw bad("invalid method") }
        guard parts[1].allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { throw bad("invalid request-target") }
        let method = String(decoding: parts[0], as: UTF8.self)
        let target = String(decoding: parts[1], as: UTF8.self)
        let version = String(decoding: parts[2], as: UTF8.self)
        guard version.hasPrefix("HTTP/"), version.count == 8 else { throw bad("malformed HTTP version") }
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else { throw bad("\(version) is not supported", 505) }
        guard target.hasPrefix("/") || (target == "*" && method == "OPTIONS") else {
            throw bad("request-target must be in origin-form (start with '/')")
        }
        // field-line = field-name ":" OWS field-value OWS
        if lines.count - 1 > limits.maxHeaderCount { throw bad("more than \(limits.maxHeaderCount) header fields", 431) }
        var headers = HTTPHeaders()
        for line in lines.dropFirst() {
            guard let first = line.first.map({ b[$0] }) else { throw bad("empty header line") }
            if first == 0x20 || first == 0x09 { throw bad("obsolete line folding is not accepted") }
            guard let colon = line.first(where: { b[$0] == UInt8(ascii: ":") }), colon > line.lowerBound else { throw bad("header field without a name") }
            guard b[line.lowerBound..<colon].allSatisfy(isTChar) else { throw bad("invalid header field name") }
            var v0 = colon + 1, v1 = line.upperBound
            while v0 < v1 && (b[v0] == 0x20 || b[v0] == 0x09) { v0 += 1 }
            while v1 > v0 && (b[v1 - 1] == 0x20 || b[v1 - 1] == 0x09) { v1 -= 1 }
            for k in v0..<v1 { let c = b[k]; if (c < 0x20 && c != 0x09) || c == 0x7F { throw bad("control character in header value") } }
            headers.add(String(decoding: b[line.lowerBound..<colon], as: UTF8.self), String(decoding: b[v0..<v1], as: UTF8.self))
        }
        let http11 = version == "HTTP/1.1"
        let hosts = headers.all("Host")
        if http11 && hosts.count != 1 { throw bad(hosts.isEmpty ? "missing Host header" : "more than one Host header") }
        // message framing (§6.3)
        let te = headers.all("Transfer-Encoding"), cl = headers.all("Content-Length")
        var framing = Framing.none
        if !te.isEmpty {
            if !cl.isEmpty { throw bad("both Transfer-Encoding and Content-Length") }
            if !http11 { throw bad("Transfer-Encoding in an HTTP/1.0 request") }
            let codings = te.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            guard codings.last == "chunked" else { throw bad("the final transfer coding must be chunked") }
            guard codings.filter({ $0 == "chunked" }).count == 1 else { throw bad("chunked is applied more than once") }
            guard codings.count == 1 else { throw bad("transfer codings other than chunked are not implemented", 501) }
            framing = .chunked
        } else if !cl.isEmpty {
            let values = Set(cl.flatMap { $0.split(separator: ",", omittingEmptySubsequences: false) }.map { $0.trimmingCharacters(in: .whitespaces) })
            guard values.count == 1, let v = values.first, !v.isEmpty, v.count <= 18, v.allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(v) else {
                throw bad("invalid Content-Length")
            }
            if n > 0 { framing = .length(n) }
        }
        let connection = headers.all("Connection").flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        let keepAlive = http11 ? !connection.contains("close") : connection.contains("keep-alive")
        var expectContinue = false
        if let e = headers["Expect"] {
            guard e.lowercased() == "100-continue" else { throw bad("unsupported expectation '\(e)'", 417) }
            expectContinue = http11 && framing != .none
        }
        return HTTPRequestHead(method: method, target: target, version: version, headers: headers, framing: framing,
                               keepAlive: keepAlive, expectContinue: expectContinue)
    }
}

import Foundation
