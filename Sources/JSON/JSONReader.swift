// JSONReader: a strict pull parser (RFC 8259) over bytes from a source that may arrive in pieces, e.g. a
// request body still streaming in. It keeps a small window of the input, never the whole document:
// long strings are handed out in pieces (`readStringChunks`), numbers are parsed exactly (integers to
// Int64 without a Double in between), and every error names the path of the value it is about.

import CPosix

/// Where the bytes come from. `read` fills the buffer with up to its size and returns the count; 0 is the
/// end of the input.
public protocol JSONSource: AnyObject {
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    /// Hands the next bytes (at most `upTo`, in one piece) to `body` where they lie, and counts them read:
    /// returns how many, 0 at the end of the input, or nil when the source cannot lend (the reader then
    /// copies with `read`). The bytes are valid only inside `body`. A long string is read this way.
    func lend(upTo: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Int?
}

extension JSONSource {
    public func lend(upTo: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Int? { nil }
}

/// An in-memory document.
public final class JSONBytes: JSONSource {
    let bytes: [UInt8]
    var offset = 0
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public convenience init<S: Sequence>(_ s: S) where S.Element == UInt8 { self.init(Array(s)) }
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = min(buffer.count, bytes.count - offset)
        if n > 0 { bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + offset, byteCount: n) } }
        offset += n
        return n
    }
}

public enum JSONKind: Sendable, Equatable { case object, array, string, number, bool, null }

/// A JSON error: `syntax` is a document that is not JSON (HTTP 400); `content` is valid JSON whose value
/// breaks a rule (HTTP 422). `path` names the value (`response[3].meta_info.routed_experts`).
public struct JSONError: Error, CustomStringConvertible, Equatable {
    public enum Kind: Sendable, Equatable { case syntax, content }
    public var kind: Kind
    public var path: String
    public var message: String
    public init(_ kind: Kind, path: String, _ message: String) { self.kind = kind; self.path = path; self.message = message }
    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}

public final class JSONReader {
    enum PathItem { case key(String), index(Int) }

    let source: JSONSource
    private var buf: UnsafeMutableRawPointer
    private var cap: Int
    private var pos = 0
    private var end = 0
    private var eof = false
    /// Input bytes before buf[0], for error offsets.
    private var base = 0
    private var path: [PathItem] = []
    public let maxDepth: Int
    /// Longest string `readString` materialises; longer ones must be read with `readStringChunks`.
    public var maxStringBytes = 1 << 20

    public init(_ source: JSONSource, window: Int = 1 << 20, maxDepth: Int = 64) {
        self.source = source
        cap = max(window, 4096)
        buf = UnsafeMutableRawPointer.allocate(byteCount: cap, alignment: 16)
        self.maxDepth = maxDepth
    }
    public convenience init(bytes: [UInt8]) { self.init(JSONBytes(bytes), window: max(4096, min(bytes.count, 1 << 20))) }
    deinit { buf.deallocate() }

    /// Bytes read from the source so far that the parser has consumed.
    public var offset: Int { base + pos }

    // MARK: errors and paths

    public var pathString: String {
        var s = ""
        for p in path {
            switch p {
            case let .key(k): s += s.isEmpty ? k : "." + k
            case let .index(i): s += "[\(i)]"
            }
        }
        return s
    }
    public func syntax(_ m: String) -> JSONError { JSONError(.syntax, path: pathString, "\(m) (at byte \(offset))") }
    public func content(_ m: String) -> JSONError { JSONError(.content, path: pathString, m) }

    // MARK: the window

    /// Makes at least `n` unread bytes available unless the input ends first; returns how many are.
    @discardableResult
    private func fill(_ n: Int) throws -> Int {
        while end - pos < n && !eof {
            if pos > 0 && (cap - end < cap / 4 || end == pos) {
                if end > pos { buf.copyMemory(from: buf + pos, byteCount: end - pos) }
                base += pos; end -= pos; pos = 0
            }
            if end == cap {
                let bigger = UnsafeMutableRawPointer.allocate(byteCount: cap * 2, alignment: 16)
                bigger.copyMemory(from: buf, byteCount: end)
                buf.deallocate(); buf = bigger; cap *= 2
            }
            let got = try source.read(into: UnsafeMutableRawBufferPointer(start: buf + end, count: cap - end))
            if got == 0 { eof = true } else { end += got }
        }
        return end - pos
    }

    @inline(__always) private func byte(_ i: Int) -> UInt8 { buf.load(fromByteOffset: pos + i, as: UInt8.self) }

    /// The next non-whitespace byte, not consumed; nil at the end of the input.
    private func peekByte() throws -> UInt8? {
        while true {
            if pos == end { if try fill(1) == 0 { return nil } }
            let c = byte(0)
            if c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 { pos += 1; continue }
            return c
        }
    }

    private func expect(_ c: UInt8, _ what: String) throws {
        guard let b = try peekByte() else { throw syntax("unexpected end of input, expected \(what)") }
        guard b == c else { throw syntax("expected \(what), found \(describe(b))") }
        pos += 1
    }

    private func describe(_ b: UInt8) -> String {
        b >= 0x21 && b < 0x7F ? "'\(Character(Unicode.Scalar(b)))'" : "byte 0x\(String(b, radix: 16))"
    }

    // MARK: structure

    /// The kind of the next value, not consumed.
    public func peek() throws -> JSONKind {
        guard let c = try peekByte() else { throw syntax("unexpected end of input, expected a value") }
        switch c {
        case UInt8(ascii: "{"): return .object
        case UInt8(ascii: "["): return .array
        case UInt8(ascii: "\""): return .string
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number
        case UInt8(ascii: "t"), UInt8(ascii: "f"): return .bool
        case UInt8(ascii: "n"): return .null
        case UInt8(ascii: "N"), UInt8(ascii: "I"):
            throw syntax("NaN and Infinity are not JSON numbers (Python: json.dumps(..., allow_nan=False) finds them)")
        default: throw syntax("expected a value, found \(describe(c))")
        }
    }

    /// Reads an object, calling `body` with each key; `body` must read (or skip) the value. A key seen
    /// twice is an error. `keysMayHoldNUL`: for objects whose unknown members are skipped, not stored.
    public func readObject(keysMayHoldNUL: Bool = false, _ body: (String) throws -> Void) throws {
        try expect(UInt8(ascii: "{"), "'{'")
        guard path.count < maxDepth else { throw syntax("nested deeper than \(maxDepth) levels") }
        var seen: Set<String> = []
        if try peekByte() == UInt8(ascii: "}") { pos += 1; return }
        while true {
            guard try peekByte() == UInt8(ascii: "\"") else { throw syntax("expected a key string") }
            let key = try readString(allowNUL: keysMayHoldNUL)
            guard seen.insert(key).inserted else { throw syntax("key '\(key)' appears twice in one object") }
            try expect(UInt8(ascii: ":"), "':'")
            path.append(.key(key))
            try body(key)
            path.removeLast()
            guard let c = try peekByte() else { throw syntax("unexpected end of input in an object") }
            pos += 1
            if c == UInt8(ascii: "}") { return }
            guard c == UInt8(ascii: ",") else { pos -= 1; throw syntax("expected ',' or '}', found \(describe(c))") }
        }
    }

    /// Reads an array, calling `body` with each element's index; `body` must read (or skip) the element.
    public func readArray(_ body: (Int) throws -> Void) throws {
        try expect(UInt8(ascii: "["), "'['")
        guard path.count < maxDepth else { throw syntax("nested deeper than \(maxDepth) levels") }
        if try peekByte() == UInt8(ascii: "]") { pos += 1; return }
        var i = 0
        path.append(.index(0))
        while true {
            path[path.count - 1] = .index(i)
            try body(i)
            guard let c = try peekByte() else { throw syntax("unexpected end of input in an array") }
            pos += 1
            if c == UInt8(ascii: "]") { path.removeLast(); return }
            guard c == UInt8(ascii: ",") else { pos -= 1; throw syntax("expected ',' or ']', found \(describe(c))") }
            i += 1
        }
    }

    /// Between top-level values of a sequence (NDJSON, JSON Lines): true when only whitespace is left.
    public func atEnd() throws -> Bool { try peekByte() == nil }

    /// Reads the `i`-th top-level value of a sequence with `[i]` on the path, so errors name it.
    public func element<T>(_ i: Int, _ body: () throws -> T) throws -> T {
        path.append(.index(i))
        defer { path.removeLast() }
        return try body()
    }

    /// After the top-level value: only whitespace may follow.
    public func finish() throws {
        if let c = try peekByte() { throw syntax("unexpected \(describe(c)) after the JSON value") }
    }

    // MARK: literals

    public func readNull() throws { try literal("null") }
    public func readBool() throws -> Bool {
        guard let c = try peekByte() else { throw syntax("unexpected end of input, expected true or false") }
        if c == UInt8(ascii: "t") { try literal("true"); return true }
        try literal("false"); return false
    }
    /// Consumes `null` and returns true when the next value is null.
    public func readNullIfPresent() throws -> Bool {
        if try peekByte() == UInt8(ascii: "n") { try readNull(); return true }
        return false
    }

    private func literal(_ word: String) throws {
        _ = try peekByte()
        let w = Array(word.utf8)
        let n = w.count
        guard try fill(n) >= n else { throw syntax("unexpected end of input, expected \(word)") }
        for i in 0..<n where byte(i) != w[i] { throw syntax("expected \(word)") }
        pos += n
        if try fill(1) > 0, isIdentifierByte(byte(0)) { throw syntax("expected \(word)") }
    }
    @inline(__always) private func isIdentifierByte(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F
    }

    // MARK: numbers

    /// A number as written: an exact integer when it has no fraction or exponent and fits Int64, else a Double.
    public enum Number: Sendable, Equatable {
        case int(Int64)
        case double(Double)
        public var double: Double { switch self { case let .int(i): return Double(i); case let .double(d): return d } }
        /// The exact integer value, if the number is one (1.0 and 1e3 count; 2^53 + 1 written as a double does not).
        public var exactInt: Int64? {
            switch self {
            case let .int(i): return i
            case let .double(d):
                guard d.rounded() == d, abs(d) <= 9_007_199_254_740_992 else { return nil }
                return Int64(d)
            }
        }
    }

    public func readNumber() throws -> Number {
        guard let c = try peekByte() else { throw syntax("unexpected end of input, expected a number") }
        guard c == UInt8(ascii: "-") || (c >= 0x30 && c <= 0x39) else {
            if c == UInt8(ascii: "N") || c == UInt8(ascii: "I") { _ = try peek() }
            throw syntax("expected a number, found \(describe(c))")
        }
        // A number is short; keep it in the window.
        var n = 0
        while true {
            if n == end - pos { if try fill(n + 1) <= n { break } }
            let b = byte(n)
            if (b >= 0x30 && b <= 0x39) || b == UInt8(ascii: "-") || b == UInt8(ascii: "+") || b == UInt8(ascii: ".")
                || b == UInt8(ascii: "e") || b == UInt8(ascii: "E") { n += 1; if n > 400 { throw syntax("number longer than 400 characters") }; continue }
            if b == UInt8(ascii: "I") || b == UInt8(ascii: "N") { throw syntax("NaN and Infinity are not JSON numbers (Python: json.dumps(..., allow_nan=False) finds them)") }
            break
        }
        // grammar: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
        var i = 0
        var negative = false
        if byte(0) == UInt8(ascii: "-") { negative = true; i = 1 }
        let intStart = i
        while i < n, byte(i) >= 0x30, byte(i) <= 0x39 { i += 1 }
        let intDigits = i - intStart
        guard intDigits > 0, !(intDigits > 1 && byte(intStart) == 0x30) else { throw syntax("malformed number") }
        var integral = true
        if i < n, byte(i) == UInt8(ascii: ".") {
            integral = false; i += 1
            let s = i
            while i < n, byte(i) >= 0x30, byte(i) <= 0x39 { i += 1 }
            guard i > s else { throw syntax("malformed number") }
        }
        if i < n, byte(i) == UInt8(ascii: "e") || byte(i) == UInt8(ascii: "E") {
            integral = false; i += 1
            if i < n, byte(i) == UInt8(ascii: "+") || byte(i) == UInt8(ascii: "-") { i += 1 }
            let s = i
            while i < n, byte(i) >= 0x30, byte(i) <= 0x39 { i += 1 }
            guard i > s else { throw syntax("malformed number") }
        }
        guard i == n else { throw syntax("malformed number") }
        defer { pos += n }
        if integral {
            var v: Int64 = 0
            var overflow = false
            for k in intStart..<n {
                let d = Int64(byte(k) - 0x30)
                let (m, o1) = v.multipliedReportingOverflow(by: 10)
                let (s, o2) = negative ? m.subtractingReportingOverflow(d) : m.addingReportingOverflow(d)
                if o1 || o2 { overflow = true; break }
                v = s
            }
            if !overflow { return .int(v) }
        }
        let text = String(decoding: UnsafeRawBufferPointer(start: buf + pos, count: n), as: UTF8.self)
        guard let d = Double(text) else { throw syntax("malformed number") }
        return .double(d)
    }

    /// An integer in `range` (exactly: no rounding through a Double).
    public func readInt(in range: ClosedRange<Int64>) throws -> Int64 {
        guard try peek() == .number else { throw content("must be an integer in \(range.lowerBound)...\(range.upperBound)") }
        guard let v = try readNumber().exactInt, range.contains(v) else {
            throw content("must be an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return v
    }

    public func readDouble() throws -> Double {
        guard try peek() == .number else { throw content("must be a number") }
        return try readNumber().double
    }

    // MARK: strings

    /// Reads a string of at most `maxStringBytes` UTF-8 bytes. NUL (\u0000) is refused unless `allowNUL`.
    public func readString(allowNUL: Bool = false) throws -> String {
        var out: [UInt8] = []
        try readStringChunks(allowNUL: allowNUL) { piece in
            if out.count + piece.count > maxStringBytes { throw content("string longer than \(maxStringBytes) bytes") }
            out.append(contentsOf: piece)
        }
        guard let s = String(validating: out, as: UTF8.self) else { throw syntax("string is not valid UTF-8") }
        return s
    }

    /// Reads a string, handing its unescaped UTF-8 bytes to `sink` in pieces (never the whole string at
    /// once). Escapes are decoded; raw control characters are an error.
    public func readStringChunks(allowNUL: Bool = false, _ sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard try peekByte() == UInt8(ascii: "\"") else { throw content("must be a string") }
        pos += 1
        var scratch = [UInt8](); scratch.reserveCapacity(8)
        var lends = true
        while true {
            if pos == end && !eof && lends {
                // the window is empty: scan the source's next piece where it lies, and keep in the window
                // only what follows the run of plain bytes (an escape, the closing quote and what is after it)
                base += pos; pos = 0; end = 0
                let window = buf, room = cap
                var plain = 0
                let got = try source.lend(upTo: room) { piece in
                    plain = Int(r3_json_plain_run(piece.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(piece.count)))
                    if plain > 0 { try sink(UnsafeRawBufferPointer(rebasing: piece[..<plain])) }
                    window.copyMemory(from: piece.baseAddress! + plain, byteCount: piece.count - plain)
                }
                guard let got else { lends = false; continue }
                if got == 0 { eof = true; throw syntax("unterminated string") }
                base += plain; end = got - plain
                continue
            }
            if pos == end { guard try fill(1) > 0 else { throw syntax("unterminated string") } }
            // a run of plain bytes (AVX2: 32 a step)
            let i = pos + Int(r3_json_plain_run(buf.assumingMemoryBound(to: UInt8.self) + pos, UInt64(end - pos)))
            if i > pos { try sink(UnsafeRawBufferPointer(start: buf + pos, count: i - pos)); pos = i }
            if pos == end { continue }
            let c = byte(0)
            if c == 0x22 { pos += 1; return }
            if c < 0x20 { throw syntax("control character in a string (escape it)") }
            // an escape
            guard try fill(2) >= 2 else { throw syntax("unterminated string") }
            let e = byte(1)
            scratch.removeAll(keepingCapacity: true)
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): scratch.append(e); pos += 2
            case UInt8(ascii: "b"): scratch.append(0x08); pos += 2
            case UInt8(ascii: "f"): scratch.append(0x0C); pos += 2
            case UInt8(ascii: "n"): scratch.append(0x0A); pos += 2
            case UInt8(ascii: "r"): scratch.append(0x0D); pos += 2
            case UInt8(ascii: "t"): scratch.append(0x09); pos += 2
            case UInt8(ascii: "u"):
                var scalar = try hex4(2)
                pos += 6
                if scalar >= 0xD800 && scalar < 0xDC00 {   // a surrogate pair
                    guard try fill(6) >= 6, byte(0) == 0x5C, byte(1) == UInt8(ascii: "u") else { throw syntax("unpaired surrogate in \\u escape") }
                    let low = try hex4(2)
                    guard low >= 0xDC00 && low < 0xE000 else { throw syntax("unpaired surrogate in \\u escape") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    pos += 6
                } else if scalar >= 0xDC00 && scalar < 0xE000 {
                    throw syntax("unpaired surrogate in \\u escape")
                }
                if scalar == 0 && !allowNUL { throw content("strings must not contain NUL (\\u0000)") }
                guard let u = Unicode.Scalar(scalar) else { throw syntax("invalid \\u escape") }
                scratch.append(contentsOf: Array(String(Character(u)).utf8))
            default: throw syntax("invalid escape \\\(Character(Unicode.Scalar(e)))")
            }
            try scratch.withUnsafeBytes { try sink($0) }
        }
    }

    private func hex4(_ at: Int) throws -> UInt32 {
        guard try fill(at + 4) >= at + 4 else { throw syntax("unterminated \\u escape") }
        var v: UInt32 = 0
        for k in 0..<4 {
            let c = byte(at + k)
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw syntax("invalid \\u escape")
            }
            v = v << 4 | d
        }
        return v
    }

    // MARK: skipping and values

    /// Skips one value of any kind (still checking that it is JSON).
    public func skipValue() throws {
        switch try peek() {
        case .object: try readObject(keysMayHoldNUL: true) { _ in try skipValue() }
        case .array: try readArray { _ in try skipValue() }
        case .string: try readStringChunks(allowNUL: true) { _ in }
        case .number: _ = try readNumber()
        case .bool: _ = try readBool()
        case .null: try readNull()
        }
    }

    /// Reads one value into a tree; at most `maxValues` values in all (a hostile document must not
    /// allocate without bound).
    public func readValue(maxValues: Int = 1_000_000) throws -> JSONValue {
        var budget = maxValues
        return try value(&budget)
    }

    private func value(_ budget: inout Int) throws -> JSONValue {
        budget -= 1
        if budget < 0 { throw content("has too many values") }
        switch try peek() {
        case .object:
            var o = JSONObject()
            try readObject { k in o.append(k, try value(&budget)) }
            return .object(o)
        case .array:
            var a: [JSONValue] = []
            try readArray { _ in a.append(try value(&budget)) }
            return .array(a)
        case .string: return .string(try readString())
        case .number:
            switch try readNumber() {
            case let .int(i): return .int(i)
            case let .double(d): return .double(d)
            }
        case .bool: return .bool(try readBool())
        case .null: try readNull(); return .null
        }
    }

    /// Parses a whole in-memory document.
    public static func parse(_ bytes: [UInt8], maxValues: Int = 1_000_000) throws -> JSONValue {
        let r = JSONReader(bytes: bytes)
        let v = try r.readValue(maxValues: maxValues)
        try r.finish()
        return v
    }
}
