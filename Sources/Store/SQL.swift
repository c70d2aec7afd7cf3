// SQL: a statement whose interpolated values become bind parameters ($1, $2, …), never text: injection
// is impossible by construction (as postgres-nio's PostgresQuery).
import Foundation

public enum SQLValue: Sendable, Equatable {
    case null
    case text(String)
    case bytes(Data)
}

public struct SQL: ExpressibleByStringInterpolation, Sendable {
    public private(set) var text = ""
    public private(set) var binds: [SQLValue] = []

    public init(stringLiteral value: String) { text = value }

    public init(stringInterpolation: Interpolation) { text = stringInterpolation.text; binds = stringInterpolation.binds }

    public struct Interpolation: StringInterpolationProtocol {
        var text = ""
        var binds: [SQLValue] = []
        public init(literalCapacity: Int, interpolationCount: Int) { text.reserveCapacity(literalCapacity + 4 * interpolationCount) }
        public mutating func appendLiteral(_ literal: String) { text += literal }
        mutating func bind(_ v: SQLValue) { binds.append(v); text += "$\(binds.count)" }
        public mutating func appendInterpolation(_ v: String) { bind(.text(v)) }
        public mutating func appendInterpolation(_ v: String?) { bind(v.map { .text($0) } ?? .null) }
        public mutating func appendInterpolation<I: BinaryInteger>(_ v: I) { bind(.text(String(v))) }
        public mutating func appendInterpolation<I: BinaryInteger>(_ v: I?) { bind(v.map { .text(String($0)) } ?? .null) }
        public mutating func appendInterpolation(_ v: Double) { bind(.text(v.isFinite ? String(v) : (v.isNaN ? "NaN" : v > 0 ? "Infinity" : "-Infinity"))) }
        public mutating func appendInterpolation(_ v: Double?) { if let v { appendInterpolation(v) } else { bind(.null) } }
        public mutating func appendInterpolation(_ v: Bool) { bind(.text(v ? "true" : "false")) }
        public mutating func appendInterpolation(_ v: Bool?) { if let v { appendInterpolation(v) } else { bind(.null) } }
        public mutating func appendInterpolation(_ v: Data) { bind(.bytes(v)) }
        public mutating func appendInterpolation(_ v: SQLValue) { bind(v) }
        /// An integer[] in binary (cast it: `\(int4Array: xs)::integer[]`); nil is NULL.
        public mutating func appendInterpolation(int4Array xs: [Int32]?) { bind(xs.map { .bytes(BinaryCopy.int4ArrayValue($0)) } ?? .null) }
        /// JSON text for a jsonb column.
        public mutating func appendInterpolation(json v: Any) {
            let d = (try? JSONSerialization.data(withJSONObject: v, options: [.sortedKeys, .fragmentsAllowed])) ?? Data("null".utf8)
            bind(.text(String(decoding: d, as: UTF8.self)))
        }
        /// A fragment of trusted SQL text (identifiers chosen by code, never by input).
        public mutating func appendInterpolation(raw: SQL) {
            var t = raw.text
            for (i, _) in raw.binds.enumerated().reversed() { t = t.replacingOccurrences(of: "$\(i + 1)", with: "$\(binds.count + i + 1)") }
            text += t; binds += raw.binds
        }
    }
}
