// AnyJSONWriter: compact JSON text of the Foundation-style trees the service builds its answers from
// ([String: Any], arrays, strings, numbers, Bool, NSNull, and NSNumber from JSONSerialization), with
// object keys sorted. Foundation's JSONSerialization bridges every value to an Objective-C object and
// sorts keys with a locale-aware compare; measured on `GET /v1/whoami`, that was 62% of the server's
// CPU. This writer switches on the native types instead. It writes what JSONSerialization writes for
// the same tree (`.sortedKeys, .withoutEscapingSlashes`), with two deliberate differences: a non-finite
// number is `null` (JSONSerialization refuses the whole document), and keys sort by code point.
import Foundation

public enum AnyJSONWriter {
    /// A value of a type this writer does not know (the caller may fall back to JSONSerialization).
    public struct Unsupported: Error, CustomStringConvertible {
        public let type: String
        public var description: String { "cannot write a value of type \(type) as JSON" }
    }

    public static func data(_ value: Any) throws -> Data {
        var out: [UInt8] = []
        out.reserveCapacity(512)
        try write(value, &out)
        return Data(out)
    }

    public static func write(_ value: Any, _ out: inout [UInt8]) throws {
        // NSNumber first, by its class (a cast would bridge native numbers to it, and an NSNumber casts to
        // Int or Bool whatever it holds)
        if type(of: value) is NSNumber.Type, let n = value as? NSNumber {
            if String(describing: type(of: n)) == "__NSCFBoolean" {
                out.append(contentsOf: (n.boolValue ? "true" : "false").utf8)
            } else if let d = n as? NSDecimalNumber {   // JSONSerialization reads long decimals as these: write the digits read
                d.decimalValue.isNaN ? out.append(contentsOf: "null".utf8) : out.append(contentsOf: d.description.utf8)
            } else {
                switch String(cString: n.objCType) {
                case "f", "d": writeDouble(n.doubleValue, &out)
                case "Q", "L", "I", "S", "C": out.append(contentsOf: String(n.uint64Value).utf8)
                default: out.append(contentsOf: String(n.int64Value).utf8)
                }
            }
            return
        }
        switch value {
        case let s as String: JSONValue.writeString(s, &out)
        case let d as [String: Any]:
            out.append(UInt8(ascii: "{"))
            var first = true
            for k in d.keys.sorted() {
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                JSONValue.writeString(k, &out)
                out.append(UInt8(ascii: ":"))
                try write(d[k]!, &out)
            }
            out.append(UInt8(ascii: "}"))
        case let i as Int: appendInteger(i, &out)
        case let x as Double: writeDouble(x, &out)
        case let b as Bool: out.append(contentsOf: (b ? "true" : "false").utf8)
        case is NSNull: out.append(contentsOf: "null".utf8)
        case let a as [Int]:
            writeArray(a, &out) { appendInteger($0, &$1) }
        case let a as [Float]:
            writeArray(a, &out) { x, o in x.isFinite ? o.append(contentsOf: "\(x)".utf8) : o.append(contentsOf: "null".utf8) }
        case let a as [Any]:
            out.append(UInt8(ascii: "["))
            for (i, v) in a.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                try write(v, &out)
            }
            out.append(UInt8(ascii: "]"))
        case let x as Float: x.isFinite ? out.append(contentsOf: "\(x)".utf8) : out.append(contentsOf: "null".utf8)
        case let i as any BinaryInteger: out.append(contentsOf: "\(i)".utf8)
        case let s as Substring: JSONValue.writeString(String(s), &out)
        case let v as JSONValue: v.write(&out)
        default: throw Unsupported(type: String(describing: type(of: value)))
        }
    }

    @inline(__always) static func writeArray<T>(_ a: [T], _ out: inout [UInt8], _ each: (T, inout [UInt8]) -> Void) {
        out.append(UInt8(ascii: "["))
        for (i, v) in a.enumerated() {
            if i > 0 { out.append(UInt8(ascii: ",")) }
            each(v, &out)
        }
        out.append(UInt8(ascii: "]"))
    }

    /// As JSONSerialization: integral values below 2^53 without a fraction, others in Swift's shortest
    /// round-trip form (valid JSON, e.g. `1e-05`).
    static func writeDouble(_ x: Double, _ out: inout [UInt8]) {
        if !x.isFinite { out.append(contentsOf: "null".utf8); return }
        if x == x.rounded(), abs(x) < 9.007_199_254_740_992e15 { appendInteger(Int(x), &out); return }
        out.append(contentsOf: "\(x)".utf8)
    }

    @inline(__always) static func appendInteger(_ i: Int, _ out: inout [UInt8]) {
        if i >= 0 && i < 10 { out.append(UInt8(ascii: "0") + UInt8(i)); return }
        out.append(contentsOf: String(i).utf8)
    }
}
