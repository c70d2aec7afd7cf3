// Body: the typed JSON boundary of every write endpoint. Bodies are parsed by our strict reader (exact
// integers, no NUL in strings, no duplicate keys), unknown fields are a 422 naming the field, and each
// field is read with a check whose error names it. Media types are matched exactly, parameters included.
import CPosix
import Foundation
import HTTP
import JSON

extension JSONError {
    /// 400 for a document that is not JSON, 422 for JSON whose content breaks a rule.
    var service: ServiceError {
        kind == .syntax ? ServiceError.badRequest("the body is not valid JSON: \(description)") : ServiceError.unprocessable(description)
    }
}

/// A media type: `type/subtype` (lower-cased) and its parameters (names lower-cased).
struct MediaType: Equatable {
    var type: String
    var parameters: [String: String]

    init?(_ text: String) {
        let parts = text.split(separator: ";", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        let t = parts[0].lowercased()
        let halves = t.split(separator: "/", omittingEmptySubsequences: false)
        guard halves.count == 2, !halves[0].isEmpty, !halves[1].isEmpty,
              t.unicodeScalars.allSatisfy({ $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "!#$&-^_.+/*".unicodeScalars.contains($0)) }) else { return nil }
        type = t
        parameters = [:]
        for p in parts.dropFirst() where !p.isEmpty {
            let kv = p.split(separator: "=", maxSplits: 1)
            guard kv.count == 2 else { return nil }
            var v = kv[1].trimmingCharacters(in: .whitespaces)
            if v.hasPrefix("\"") && v.hasSuffix("\"") && v.count >= 2 { v = String(v.dropFirst().dropLast()) }
            parameters[kv[0].trimmingCharacters(in: .whitespaces).lowercased()] = v
        }
    }

    /// `application/json` exactly, with no charset or `charset=utf-8`.
    var isJSON: Bool {
        type == "application/json" && parameters.keys.allSatisfy { $0 == "charset" } && (parameters["charset"].map { $0.lowercased() == "utf-8" } ?? true)
    }
}

/// The request's Content-Type must be one of `types` (exact type/subtype); JSON allows only charset=utf-8.
func requireContentType(_ req: HTTPRequest, _ types: [String]) throws -> MediaType {
    let what = types.joined(separator: " or ")
    guard let text = req.headers["Content-Type"], let m = MediaType(text) else { throw ServiceError(415, "expected Content-Type: \(what)") }
    guard types.contains(m.type) else { throw ServiceError(415, "Content-Type \(m.type) is not accepted here; expected \(what)") }
    if m.type == "application/json" && !m.isJSON { throw ServiceError(415, "application/json bodies are UTF-8; drop the other parameters") }
    return m
}

/// The offered media type the client's Accept header prefers (RFC 9110 §12.5.1: q-values, q=0 refuses,
/// more specific ranges win); nil when none is acceptable. No Accept header accepts the first offered.
func negotiate(_ accept: String?, offered: [String]) -> String? {
    guard let accept, !accept.trimmingCharacters(in: .whitespaces).isEmpty else { return offered.first }
    var ranges: [(type: String, q: Double, specificity: Int)] = []
    for item in accept.split(separator: ",") {
        guard let m = MediaType(String(item)) else { continue }
        let q = m.parameters["q"].flatMap(Double.init) ?? 1
        let spec = m.type == "*/*" ? 0 : m.type.hasSuffix("/*") ? 1 : 2
        ranges.append((m.type, min(max(q, 0), 1), spec))
    }
    func quality(_ t: String) -> Double {
        var best: (spec: Int, q: Double)?
        for r in ranges {
            let matches = r.type == t || r.type == "*/*" || (r.type.hasSuffix("/*") && t.hasPrefix(String(r.type.dropLast())))
            if matches && (best == nil || r.specificity > best!.spec) { best = (r.specificity, r.q) }
        }
        return best?.q ?? 0
    }
    var choice: (String, Double)?
    for t in offered { let q = quality(t); if q > 0 && (choice == nil || q > choice!.1) { choice = (t, q) } }
    return choice?.0
}

extension App {
    /// A strict JSON object body (400 not JSON, 415 wrong media type, 422 not an object).
    func jsonBody(_ req: HTTPRequest) throws -> JSONObject {
        _ = try requireContentType(req, ["application/json"])
        let v: JSONValue
        do { v = try JSONReader.parse([UInt8](req.body), maxValues: 5_000_000) } catch let e as JSONError { throw e.service }
        guard let o = v.objectValue else { throw ServiceError.unprocessable("the body must be a JSON object") }
        return o
    }
}

/// Typed access to a JSON object's fields, with 422s that name the field.
struct Fields {
    let o: JSONObject
    /// The path of this object in the body ("" at the top), for error messages.
    let path: String

    init(_ o: JSONObject, path: String = "") { self.o = o; self.path = path }

    /// Also refuses any field not in `allowed`, naming the first (in document order).
    init(_ o: JSONObject, allowed: Set<String>, path: String = "") throws {
        self.init(o, path: path)
        if let k = o.keys.first(where: { !allowed.contains($0) }) { throw ServiceError.unprocessable("unknown field \(name(k))") }
    }

    func name(_ k: String) -> String { path.isEmpty ? k : "\(path).\(k)" }
    func present(_ k: String) -> JSONValue? { guard let v = o[k], !v.isNull else { return nil }; return v }
    func has(_ k: String) -> Bool { present(k) != nil }

    func string(_ k: String, required: Bool = false, max: Int) throws -> String? {
        guard let v = present(k) else { if required { throw ServiceError.unprocessable("\(name(k)) is required") }; return nil }
        guard let s = v.stringValue, !s.isEmpty, s.count <= max else { throw ServiceError.unprocessable("\(name(k)) must be a string of 1 to \(max) characters") }
        return s
    }
    func int(_ k: String, range: ClosedRange<Int>, required: Bool = false) throws -> Int? {
        guard let v = present(k) else { if required { throw ServiceError.unprocessable("\(name(k)) is required") }; return nil }
        guard let i = v.intValue, let n = Int(exactly: i), range.contains(n) else {
            throw ServiceError.unprocessable("\(name(k)) must be an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return n
    }
    func number(_ k: String) throws -> Double? {
        guard let v = present(k) else { return nil }
        guard let d = v.doubleValue, d.isFinite else { throw ServiceError.unprocessable("\(name(k)) must be a finite number") }
        return d
    }
    func bool(_ k: String) throws -> Bool? {
        guard let v = present(k) else { return nil }
        guard case let .bool(b) = v else { throw ServiceError.unprocessable("\(name(k)) must be true or false") }
        return b
    }
    func object(_ k: String) throws -> JSONObject? {
        guard let v = present(k) else { return nil }
        guard let d = v.objectValue else { throw ServiceError.unprocessable("\(name(k)) must be an object") }
        return d
    }
    func list(_ k: String, required: Bool = false) throws -> [JSONValue]? {
        guard let v = present(k) else { if required { throw ServiceError.unprocessable("\(name(k)) is required") }; return nil }
        guard let l = v.arrayValue else { throw ServiceError.unprocessable("\(name(k)) must be a list") }
        return l
    }
    func intList(_ k: String, required: Bool = false, range: ClosedRange<Int> = 0...Int(Int32.max)) throws -> [Int]? {
        guard let l = try list(k, required: required) else { return nil }
        return try l.enumerated().map { i, x in
            guard let v = x.intValue, let n = Int(exactly: v), range.contains(n) else {
                throw ServiceError.unprocessable("\(name(k))[\(i)] must be an integer in \(range.lowerBound)...\(range.upperBound)")
            }
            return n
        }
    }
    func stringList(_ k: String, max: Int) throws -> [String]? {
        guard let l = try list(k) else { return nil }
        return try l.enumerated().map { i, x in
            guard let s = x.stringValue, !s.isEmpty, s.count <= max else { throw ServiceError.unprocessable("\(name(k))[\(i)] must be a string of 1 to \(max) characters") }
            return s
        }
    }
}

/// Standard padded base64 text of `d` (the C encoder; ~10× Foundation's).
func base64Text(_ d: Data) -> Data {
    var out = Data(count: 4 * ((d.count + 2) / 3))
    out.withUnsafeMutableBytes { o in d.withUnsafeBytes { i in _ = r3_base64_encode(i.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(i.count), o.baseAddress!.assumingMemoryBound(to: UInt8.self)) } }
    return out
}

/// A JSON object of small members (sorted) and one large string member written as it is: `prefix` and
/// base64 text need no escaping, so megabytes of routes skip JSONSerialization's per-character writer.
func jsonObject(_ small: [String: Any], key: String, prefix: String = "", base64 data: Data) throws -> Data {
    var out = try JSONSerialization.data(withJSONObject: small, options: [.sortedKeys, .withoutEscapingSlashes])
    out.removeLast()   // "}"
    out.append(contentsOf: Array((small.isEmpty ? "" : ",").utf8))
    out.append(contentsOf: Array("\"\(key)\":\"\(prefix)".utf8))
    out.append(base64Text(data))
    out.append(contentsOf: Array("\"}".utf8))
    return out
}

/// {"key": {"name": <raw JSON>, …}} from members already serialized.
func jsonObject(key: String, members: [(String, Data)]) -> Data {
    var out = Data("{\"\(key)\":{".utf8)
    for (i, (name, value)) in members.enumerated() {
        if i > 0 { out.append(UInt8(ascii: ",")) }
        var n: [UInt8] = []
        JSONValue.writeString(name, &n)
        out.append(contentsOf: n); out.append(UInt8(ascii: ":")); out.append(value)
    }
    out.append(contentsOf: Array("}}".utf8))
    return out
}

extension JSONValue {
    /// The Foundation form, exactly as JSONSerialization reads this text (its NSNumber booleans included),
    /// for code that takes `Any` (ModelConfig, CollapseRules, response bodies).
    var foundation: Any {
        (try? JSONSerialization.jsonObject(with: Data(serialized().utf8), options: [.fragmentsAllowed])) ?? NSNull()
    }

    /// Compact text for a jsonb column (never NUL: the reader refused it).
    var jsonText: String { serialized() }
}
