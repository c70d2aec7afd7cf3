// AnyJSONWriterTests: the service's JSON answers, written without JSONSerialization, read back by
// JSONSerialization as the same tree; NSNumber from parsed JSON keeps bool / int / double.
import Foundation
import Testing
@testable import JSON

struct AnyJSONWriterTests {
    func roundTrip(_ v: Any) throws -> Any {
        try JSONSerialization.jsonObject(with: try AnyJSONWriter.data(v), options: [.fragmentsAllowed])
    }

    @Test func treesReadBackAsWhatTheyWere() throws {
        let tree: [String: Any] = [
            "s": "quote \" backslash \\ slash / newline \n tab \t nul \u{0} é 😀", "i": 42, "neg": -7, "zero": 0,
            "d": 1.5, "tiny": 1e-05, "big": 1e20, "integral": 3.0, "t": true, "f": false, "null": NSNull(),
            "ints": [1, 2, 3], "floats": [Float(0.25), Float(-1.5)], "nested": ["a": [["b": [Any]()]], "empty": [String: Any]()],
            "strings": ["x", "y"], "i64": Int64(1) << 40, "u8": UInt8(200), "i32": Int32(-5),
        ]
        let back = try roundTrip(tree) as! NSDictionary
        #expect(back == tree as NSDictionary)
        let text = String(decoding: try AnyJSONWriter.data(["b": 1, "a": ["d": 1, "c": 2], "_x": 0] as [String: Any]), as: UTF8.self)
        #expect(text == #"{"_x":0,"a":{"c":2,"d":1},"b":1}"#, "sorted keys, compact")
        #expect(String(decoding: try AnyJSONWriter.data(["u": "a/b"]), as: UTF8.self) == #"{"u":"a/b"}"#, "slashes unescaped")
    }

    @Test func numbersParsedByJSONSerializationKeepTheirKind() throws {
        let parsed = try JSONSerialization.jsonObject(with: Data(#"{"t": true, "f": false, "i": 5, "d": 2.5, "one": 1, "big": 12345678901234}"#.utf8))
        let text = String(decoding: try AnyJSONWriter.data(parsed), as: UTF8.self)
        #expect(text == #"{"big":12345678901234,"d":2.5,"f":false,"i":5,"one":1,"t":true}"#)
        // long decimals come back from JSONSerialization as NSDecimalNumber: their digits are kept
        let long = try JSONSerialization.jsonObject(with: Data(#"{"x": 1.2444444444444445, "y": -0.10000000000000001}"#.utf8))
        #expect(String(decoding: try AnyJSONWriter.data(long), as: UTF8.self) == #"{"x":1.2444444444444445,"y":-0.10000000000000001}"#)
    }

    @Test func nonFiniteNumbersAreNullAndUnknownTypesAreRefused() throws {
        let text = String(decoding: try AnyJSONWriter.data(["n": Double.nan, "inf": Double.infinity, "fl": [Float.nan]] as [String: Any]), as: UTF8.self)
        #expect(text == #"{"fl":[null],"inf":null,"n":null}"#)
        #expect(throws: AnyJSONWriter.Unsupported.self) { try AnyJSONWriter.data(["when": Date()]) }
    }
}
