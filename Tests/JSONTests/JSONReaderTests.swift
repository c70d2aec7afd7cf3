// JSONReaderTests: the pull parser against literal JSON text: exact integers, strict grammar, escapes,
// paths in errors, documents that arrive in pieces of any size, and a seeded fuzz against Foundation.
import Foundation
import Testing
@testable import JSON
import CPosix

/// A source that hands out at most `piece` bytes per read, as a socket might.
final class Trickle: JSONSource {
    let bytes: [UInt8]; let piece: Int; var offset = 0
    init(_ s: String, piece: Int) { bytes = Array(s.utf8); self.piece = piece }
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = min(piece, buffer.count, bytes.count - offset)
        for i in 0..<n { buffer[i] = bytes[offset + i] }
        offset += n
        return n
    }
}

/// A source that lends its bytes where they lie, at most `piece` per call, and counts how many it lent
/// and how many it copied (a request body in the server's queue buffers).
final class Lender: JSONSource {
    let bytes: [UInt8]; let piece: Int; var offset = 0, lent = 0, copied = 0
    init(_ s: String, piece: Int) { bytes = Array(s.utf8); self.piece = piece }
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = min(piece, buffer.count, bytes.count - offset)
        for i in 0..<n { buffer[i] = bytes[offset + i] }
        offset += n; copied += n
        return n
    }
    func lend(upTo: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws -> Int? {
        let n = min(piece, upTo, bytes.count - offset)
        if n > 0 { try bytes.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + n)])) } }
        offset += n; lent += n
        return n
    }
}

func parse(_ s: String) throws -> JSONValue { try JSONReader.parse(Array(s.utf8)) }

func error(_ s: String) -> JSONError? {
    do { _ = try parse(s); return nil } catch let e as JSONError { return e } catch { return nil }
}

struct JSONReaderTests {
    @Test func integersAreExactBeyondTwoToTheFiftyThree() throws {
        #expect(try parse("9007199254740993") == .int(9_007_199_254_740_993))
        #expect(try parse("-9223372036854775808") == .int(Int64.min))
        #expect(try parse("9223372036854775808") == .double(9_223_372_036_854_775_808))   // beyond Int64: a double
        #expect(JSONValue.double(9_007_199_254_740_992).intValue == 9_007_199_254_740_992)
        #expect(JSONValue.double(18_014_398_509_481_984).intValue == nil, "a double beyond 2^53 may have been rounded")
        #expect(try parse("1e3").intValue == 1000)
        #expect(try parse("1.5").intValue == nil)
        #expect(try parse("-0.25e-2") == .double(-0.0025))
    }

    @Test(arguments: ["01", "1.", ".5", "-", "1e", "+1", "0x10", "1.2.3", "--1", "1e+"])
    func malformedNumbersAreSyntaxErrors(_ text: String) {
        #expect(error(text)?.kind == .syntax, "'\(text)' should not parse")
    }

    @Test(arguments: ["NaN", "Infinity", "-Infinity", "[1, NaN]"])
    func nanAndInfinityAreRefusedWithAHint(_ text: String) {
        let e = error(text)
        #expect(e?.kind == .syntax)
        #expect(e?.message.contains("allow_nan=False") == true, "\(String(describing: e))")
    }

    @Test func escapesDecodeAndSurrogatesPair() throws {
        #expect(try parse(#""a\"b\\c\/d\n\t\u00e9\ud83d\ude00""#) == .string("a\"b\\c/d\n\té😀"))
        #expect(error(#""\ud83d""#)?.kind == .syntax)
        #expect(error(#""\x41""#)?.kind == .syntax)
        #expect(error("\"a\u{01}b\"")?.kind == .syntax)   // raw control character
    }

    @Test func nulInAStringIsAContentErrorNamingThePath() {
        let e = error(#"{"metadata": {"note": ["ok", "a\u0000b"]}}"#)
        #expect(e?.kind == .content)
        #expect(e?.path == "metadata.note[1]")
    }

    @Test func invalidUTF8IsRefused() {
        var bytes = Array("\"ab".utf8); bytes += [0xC3, 0x28]; bytes += Array("\"".utf8)
        #expect(throws: JSONError.self) { try JSONReader.parse(bytes) }
    }

    @Test func duplicateKeysAndTrailingGarbageAreErrors() {
        #expect(error(#"{"a": 1, "a": 2}"#)?.message.contains("appears twice") == true)
        #expect(error(#"{"a": 1} x"#)?.kind == .syntax)
        #expect(error(#"{"a": 1,}"#)?.kind == .syntax)
        #expect(error(#"[1, 2,]"#)?.kind == .syntax)
        #expect(error("tru")?.kind == .syntax)
        #expect(error("nullx")?.kind == .syntax)
    }

    @Test func depthIsBounded() {
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(error(deep)?.message.contains("nested deeper") == true)
    }

    @Test func valueBudgetIsEnforced() {
        let doc = "[" + Array(repeating: "1", count: 100).joined(separator: ",") + "]"
        #expect(throws: JSONError.self) { try JSONReader.parse(Array(doc.utf8), maxValues: 50) }
    }

    @Test(arguments: [1, 2, 3, 7, 64, 4096])
    func documentsInPiecesParseTheSame(piece: Int) throws {
        let doc = #"{"model": "m\u00e9", "ids": [1, -2, 30000000000], "x": 0.5e-3, "ok": true, "n": null, "s": "\"long\" \ud83d\ude00 text"}"#
        let r = JSONReader(Trickle(doc, piece: piece), window: 4096)
        let v = try r.readValue()
        try r.finish()
        #expect(v == (try parse(doc)))
        #expect(v.objectValue?.keys == ["model", "ids", "x", "ok", "n", "s"])
    }

    @Test func longStringsArriveInPiecesWithoutTheWholeString() throws {
        let body = String(repeating: "QUJD", count: 300_000)   // 1.2 MB, bigger than the window
        let doc = "{\"data\": \"\(body)\"}"
        let r = JSONReader(Trickle(doc, piece: 65_536), window: 4096)
        var total = 0, pieces = 0
        try r.readObject { key in
            #expect(key == "data")
            try r.readStringChunks { total += $0.count; pieces += 1 }
        }
        try r.finish()
        #expect(total == body.utf8.count)
        #expect(pieces > 1)
    }

    /// A long string read from a lending source gives the same bytes as from a copying one, in pieces of any
    /// size, with escapes, the closing quote and the rest of the document falling anywhere in a lent piece;
    /// the plain runs are scanned where they lie (most of the bytes are lent, not copied), and error offsets
    /// still count every byte.
    @Test(arguments: [1, 2, 5, 31, 4096, 65_536])
    func longStringsAreReadFromLentPiecesWhereTheyLie(piece: Int) throws {
        var state = UInt64(piece) &* 0x9E3779B97F4A7C15 | 1
        func next() -> UInt64 { state ^= state << 13; state ^= state >> 7; state ^= state << 17; return state }
        var text = ""
        for i in 0..<20_000 {
            text += String(repeating: "QUJD", count: Int(next() % 40))
            if i % 97 == 0 { text += ["\\n", "\\\"", "\\u00e9", "\\ud83d\\ude00", "\\/"][i % 5] }
        }
        let doc = "{\"data\": \"\(text)\", \"after\": [1, 2, {\"k\": \"v\"}]}"
        func read(_ src: JSONSource) throws -> ([UInt8], JSONValue, Int) {
            let r = JSONReader(src, window: 4096)
            var got: [UInt8] = [], after: JSONValue = .null
            try r.readObject { key in
                if key == "data" { try r.readStringChunks { got += $0 } } else { after = try r.readValue() }
            }
            try r.finish()
            return (got, after, r.offset)
        }
        let lender = Lender(doc, piece: piece)
        let (lentText, lentAfter, lentOffset) = try read(lender)
        let (copiedText, copiedAfter, copiedOffset) = try read(Trickle(doc, piece: piece))
        #expect(lentText == copiedText && lentAfter == copiedAfter && lentOffset == copiedOffset && lentOffset == doc.utf8.count)
        #expect(lentText.count > 1_000_000 && lentText.contains(0xC3))   // é decoded
        if piece >= 4096 { #expect(lender.lent > 9 * lender.copied, "lent \(lender.lent), copied \(lender.copied)") }
        // an error after a lent run names the right byte
        let bad = "{\"data\": \"\(String(repeating: "A", count: 100_000))\u{01}\"}"
        #expect(throws: JSONError.self) { try read(Lender(bad, piece: piece)) }
        do { _ = try read(Lender(bad, piece: piece)) } catch let e as JSONError { #expect(e.message.hasSuffix("(at byte \(10 + 100_000))"), "\(e)") }
    }

    /// The AVX2 scan for the end of a plain run against the byte loop it replaces, at every position.
    @Test func plainRunScanAgreesWithTheByteLoop() {
        var bytes = [UInt8](repeating: UInt8(ascii: "a"), count: 200)
        for pos in 0..<bytes.count {
            for special: UInt8 in [0x22, 0x5C, 0x00, 0x1F, 0x0A] {
                bytes[pos] = special
                let got = bytes.withUnsafeBufferPointer { Int(r3_json_plain_run($0.baseAddress!, UInt64($0.count))) }
                #expect(got == pos, "0x\(String(special, radix: 16)) at \(pos)")
                bytes[pos] = UInt8(ascii: "a")
            }
            bytes[pos] = 0x20   // space and above pass
        }
        #expect(bytes.withUnsafeBufferPointer { Int(r3_json_plain_run($0.baseAddress!, UInt64($0.count))) } == bytes.count)
    }

    @Test func serializedTextRoundTrips() throws {
        let doc = #"{"b":[1,2.5,"x\n\u0001"],"a":{"c":null,"d":false},"e":-7}"#
        let v = try parse(doc)
        #expect(v.serialized() == doc)
        #expect(try parse(v.serialized()) == v)
    }

    /// Random documents: our tree equals Foundation's reading of the same text.
    @Test func seededFuzzAgreesWithFoundation() throws {
        var s: UInt64 = 20261201
        func next(_ n: Int) -> Int { s = s &* 6364136223846793005 &+ 1442695040888963407; return Int((s >> 33) % UInt64(n)) }
        func gen(_ depth: Int) -> String {
            switch next(depth > 3 ? 4 : 6) {
            case 0: return String(next(2_000_000) - 1_000_000)
            case 1: return "\"" + (0..<next(6)).map { _ in ["a", "é", "\\n", "\\u00e9", "\\\"", "z"][next(6)] }.joined() + "\""
            case 2: return ["true", "false", "null"][next(3)]
            case 3: return String(Double(next(100_000)) / 64.0)
            case 4: return "[" + (0..<next(4)).map { _ in gen(depth + 1) }.joined(separator: ",") + "]"
            default: return "{" + (0..<next(4)).map { i in "\"k\(i)\": " + gen(depth + 1) }.joined(separator: ", ") + "}"
            }
        }
        func foundation(_ v: Any) -> JSONValue {
            if v is NSNull { return .null }
            if let n = v as? NSNumber {
                if String(describing: type(of: v)).contains("Bool") { return .bool(n.boolValue) }
                let d = n.doubleValue
                return d == d.rounded() && abs(d) < 1e15 ? .int(Int64(d)) : .double(d)
            }
            if let s = v as? String { return .string(s) }
            if let a = v as? [Any] { return .array(a.map(foundation)) }
            let o = v as! [String: Any]
            return .object(JSONObject(o.keys.sorted().map { ($0, foundation(o[$0]!)) }))
        }
        func normalise(_ v: JSONValue) -> JSONValue {
            switch v {
            case let .double(d) where d == d.rounded() && abs(d) < 1e15: return .int(Int64(d))
            case let .array(a): return .array(a.map(normalise))
            case let .object(o): return .object(JSONObject(o.keys.map { ($0, normalise(o[$0]!)) }))
            default: return v
            }
        }
        for _ in 0..<300 {
            let doc = "[" + gen(0) + "]"
            let ours = normalise(try parse(doc))
            let theirs = foundation(try JSONSerialization.jsonObject(with: Data(doc.utf8), options: [.fragmentsAllowed]))
            #expect(ours == theirs, "document: \(doc)")
        }
    }
}
