// HTTPTypes: requests, responses, limits and the HTTP module's one error type.
import Foundation
import JSON

public struct HTTPLimits: Sendable {
    public var maxRequestLine = 8 * 1024          // longer → 414
    public var maxHeaderBytes = 64 * 1024         // request line + fields; longer → 431
    public var maxHeaderCount = 128               // more → 431
    public var maxBodyBytes = 512 * 1024 * 1024   // larger → 413
    public var maxChunkLine = 4 * 1024            // chunk-size line with extensions
    public init() {}
}

public struct HTTPHeaders: Sendable, Equatable, Sequence {
    public private(set) var fields: [(name: String, value: String)] = []
    public init(_ fields: [(String, String)] = []) { for (n, v) in fields { add(n, v) } }

    public mutating func add(_ name: String, _ value: String) { fields.append((name, value)) }
    public mutating func set(_ name: String, _ value: String) { remove(name); add(name, value) }
    public mutating func remove(_ name: String) { fields.removeAll { HTTPHeaders.same($0.name, name) } }

    /// The first value of `name` (case-insensitive).
    public subscript(_ name: String) -> String? { fields.first { HTTPHeaders.same($0.name, name) }?.value }
    public func all(_ name: String) -> [String] { fields.filter { HTTPHeaders.same($0.name, name) }.map(\.value) }

    /// Field names are ASCII tokens (RFC 9110 5.1): compared byte by byte with ASCII case folded (Foundation's
    /// caseInsensitiveCompare went through NSString and was a tenth of a small request's CPU).
    static func same(_ a: String, _ b: String) -> Bool {
        var a = a, b = b
        return a.withUTF8 { x in
            b.withUTF8 { y in
                guard x.count == y.count else { return false }
                for i in 0..<x.count {
                    let p = x[i], q = y[i]
                    if p == q { continue }
                    if p | 0x20 != q | 0x20 || !((p | 0x20) >= 0x61 && (p | 0x20) <= 0x7A) { return false }
                }
                return true
            }
        }
    }
    public func makeIterator() -> IndexingIterator<[(name: String, value: String)]> { fields.makeIterator() }

    public static func == (a: HTTPHeaders, b: HTTPHeaders) -> Bool {
        a.fields.count == b.fields.count && zip(a.fields, b.fields).allSatisfy { $0.name == $1.name && $0.value == $1.value }
    }
}

public struct HTTPRequest: Sendable {
    public var method: String
    /// The request-target as sent (origin-form: path and query).
    public var target: String
    public var version: String
    public var headers: HTTPHeaders
    public var body: Data
    public var keepAlive: Bool
    /// How the body is framed: none, Content-Length or chunked (the responder sees the head before any body).
    public var framing: HTTPRequestHead.Framing

    public init(method: String, target: String, version: String, headers: HTTPHeaders, body: Data, keepAlive: Bool,
                framing: HTTPRequestHead.Framing? = nil) {
        self.method = method; self.target = target; self.version = version; self.headers = headers; self.body = body
        self.keepAlive = keepAlive; self.framing = framing ?? (body.isEmpty ? .none : .length(body.count))
    }

    /// The head of a request whose body has not been read.
    public init(head: HTTPRequestHead) {
        self.init(method: head.method, target: head.target, version: head.version, headers: head.headers, body: Data(),
                  keepAlive: head.keepAlive, framing: head.framing)
    }

    /// Whether a body follows the head.
    public var hasBody: Bool { framing != .none }
    /// The Content-Length, when the body has one.
    public var declaredLength: Int? { if case let .length(n) = framing { return n }; return framing == .none ? 0 : nil }

    /// The path without the query, percent-decoded segments left as sent.
    public var path: String { String(target.prefix { $0 != "?" }) }
    /// Query parameters (percent-decoded; '+' is a space), first value wins.
    public var query: [String: String] {
        guard let q = target.firstIndex(of: "?") else { return [:] }
        var out: [String: String] = [:]
        for pair in target[target.index(after: q)...].split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let k = String(kv[0]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(kv[0])
            let v = kv.count > 1 ? (String(kv[1]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(kv[1])) : ""
            if out[k] == nil { out[k] = v }
        }
        return out
    }
}

/// A response body produced piece by piece as the client reads it, so a large body costs a bounded
/// buffer instead of all of it. `length` is the Content-Length; `next` is called on the event loop (keep it
/// cheap: a piece of at most `maxBytes`, nil at the end) and must produce exactly `length` bytes in all.
public protocol HTTPBodySource: AnyObject, Sendable {
    var length: Int { get }
    func next(maxBytes: Int) -> Data?
}

public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: HTTPHeaders
    public var body: Data
    /// A body produced as it is sent (instead of `body`).
    public var source: HTTPBodySource?
    /// The Content-Length to declare for a body that is not `body`: a HEAD response's (what the GET
    /// would have sent), or a stream's whose length is known (a file).
    public var headLength: Int?
    /// Close the connection after sending.
    public var close: Bool
    /// Frame the body (`body`, or a `source` of known length) as one chunk of `Transfer-Encoding: chunked`
    /// instead of declaring its Content-Length, when the request is HTTP/1.1 and not HEAD (else the server
    /// declares the length). Python requests reads a large chunked body through urllib3's chunked path,
    /// which costs about a quarter less than its Content-Length path for the same bytes (README,
    /// *Ingest and fetch: PostgreSQL no longer waits on us*); curl, `raw.read()` and browsers read both alike.
    public var oneChunk = false
    /// A streamed body (e.g. Server-Sent Events): after the head, the server hands the connection to a
    /// thread of its own that runs this; the body ends, and the connection closes, when it returns.
    public var stream: (@Sendable (HTTPStreamWriter) -> Void)?

    public init(status: Int, headers: HTTPHeaders = HTTPHeaders(), body: Data = Data(), close: Bool = false,
                stream: (@Sendable (HTTPStreamWriter) -> Void)? = nil) {
        self.status = status; self.headers = headers; self.body = body; self.close = close; self.stream = stream
    }

    public static func text(_ status: Int, _ s: String, contentType: String = "text/plain; charset=utf-8") -> HTTPResponse {
        HTTPResponse(status: status, headers: HTTPHeaders([("Content-Type", contentType)]), body: Data(s.utf8))
    }

    /// RFC 9457 problem details.
    public static func problem(_ status: Int, title: String? = nil, detail: String, close: Bool = false) -> HTTPResponse {
        // {"detail","status","title","type"}, keys sorted, written directly (JSONSerialization was most of a 401's cost)
        var b = [UInt8]()
        b.reserveCapacity(96 + detail.utf8.count)
        b.append(contentsOf: #"{"detail":"#.utf8); JSONValue.writeString(detail, &b)
        b.append(contentsOf: #","status":"#.utf8); b.append(contentsOf: String(status).utf8)
        b.append(contentsOf: #","title":"#.utf8); JSONValue.writeString(title ?? HTTPResponse.reason(status), &b)
        b.append(contentsOf: #","type":"about:blank"}"#.utf8)
        let data = Data(b)
        return HTTPResponse(status: status, headers: HTTPHeaders([("Content-Type", "application/problem+json")]), body: data, close: close)
    }

    /// Status line and header block, CRLF-terminated (Content-Length or `chunked`, and Connection, added here).
    public func head(keepAlive: Bool, date: String, chunked: Bool = false) -> Data {
        var b = [UInt8]()
        b.reserveCapacity(160 + headers.fields.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 })
        func put(_ s: String) { var s = s; s.withUTF8 { b.append(contentsOf: $0) } }
        func put(_ s: StaticString) { s.withUTF8Buffer { b.append(contentsOf: $0) } }
        func number(_ n: Int) { put(String(n)) }
        put("HTTP/1.1 "); number(status); put(" " as StaticString); put(HTTPResponse.reason(status)); put("\r\n" as StaticString)
        for (n, v) in headers.fields where !HTTPHeaders.same(n, "Content-Length") && !HTTPHeaders.same(n, "Connection")
                                           && !(HTTPHeaders.same(n, "Transfer-Encoding") && stream == nil) {   // a `stream` frames its own body
            put(n); put(": " as StaticString); put(v); put("\r\n" as StaticString)
        }
        var length: Int?
        if let n = headLength { length = n }
        else if let src = source { length = src.length }
        else if stream == nil && (status >= 200 && status != 204 && status != 304 || !body.isEmpty) { length = body.count }
        if chunked { put("Transfer-Encoding: chunked\r\n" as StaticString) }
        else if let n = length { put("Content-Length: " as StaticString); number(n); put("\r\n" as StaticString) }
        put("Date: " as StaticString); put(date); put("\r\n" as StaticString)
        if !keepAlive { put("Connection: close\r\n" as StaticString) }
        put("\r\n" as StaticString)
        return Data(b)
    }

    public static func reason(_ status: Int) -> String {
        switch status {
        case 100: return "Continue"
        case 200: return "OK"
        case 201: return "Created"
        case 202: return "Accepted"
        case 204: return "No Content"
        case 304: return "Not Modified"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 406: return "Not Acceptable"
        case 408: return "Request Timeout"
        case 409: return "Conflict"
        case 410: return "Gone"
        case 411: return "Length Required"
        case 412: return "Precondition Failed"
        case 413: return "Content Too Large"
        case 414: return "URI Too Long"
        case 415: return "Unsupported Media Type"
        case 417: return "Expectation Failed"
        case 422: return "Unprocessable Content"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 503: return "Service Unavailable"
        case 505: return "HTTP Version Not Supported"
        default: return "Status \(status)"
        }
    }
}

/// A protocol violation with the status it earns; the connection is closed after the reply.
public struct HTTPParseError: Error, Equatable, CustomStringConvertible {
    public var status: Int
    public var message: String
    public var description: String { "\(status): \(message)" }
}
