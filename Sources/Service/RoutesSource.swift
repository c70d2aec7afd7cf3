// RoutesSource: a routes response written while the client reads it: the packed routes (one byte per id)
// are encoded a block of rows at a time, as raw bytes, base64 text or JSON lists, between a fixed prefix
// and suffix. A 32K-token rollout's int32 fetch then holds its 12.6 MB packed form and a 256 KiB piece,
// never the 50 MB body (or JSONSerialization's boxed lists).
import CPosix
import Foundation
import HTTP
import Routes

final class RoutesSource: HTTPBodySource, @unchecked Sendable {
    enum Text { case raw, base64, lists }
    let packed: PackedRoutes
    let output: RouteOutput
    let text: Text
    let prefix: Data, suffix: Data
    let length: Int
    private let rows: Range<Int>
    private let rowValues: Int            // ids per output row
    private var nextRow: Int
    private var stage = 0                 // 0 prefix, 1 rows, 2 the final row (NeMo), 3 suffix, 4 done
    private var carry = Data()            // base64: bytes not yet a multiple of 3
    private var firstList = true

    /// `prefix` + the routes in `output` as `text` + `suffix`.
    init(_ p: PackedRoutes, _ o: RouteOutput, text: Text, prefix: Data = Data(), suffix: Data = Data()) throws {
        packed = p; output = o; self.text = text; self.prefix = prefix; self.suffix = suffix
        rows = o.rows ?? 0..<p.rows
        let shape = p.shape(o)
        rowValues = shape[1] * shape[2]
        nextRow = rows.lowerBound
        let bytes = shape.reduce(1, *) * o.dtype.size
        switch text {
        case .raw: length = prefix.count + bytes + suffix.count
        case .base64: length = prefix.count + 4 * ((bytes + 2) / 3) + suffix.count
        case .lists:
            // one pass to size the text: digits of each id, brackets and commas
            var digits = 0
            var probe = o; probe.dtype = .int32
            for start in stride(from: rows.lowerBound, to: rows.upperBound, by: 4096) {
                probe.rows = start..<min(rows.upperBound, start + 4096); probe.finalRow = false
                digits += RoutesSource.digits(try p.encode(probe, verified: true))
            }
            if o.finalRow { probe.rows = 0..<0; probe.finalRow = true; digits += RoutesSource.digits(try p.encode(probe, verified: true)) }
            let n = shape[0], L = shape[1], K = shape[2]
            // rows "[" ... "]" joined by ","; each row: L layers "[...]" joined by ","; each layer K ids joined by ","
            let perRow = 2 + L * 2 + max(0, L - 1) + L * max(0, K - 1)
            length = prefix.count + 2 + n * perRow + max(0, n - 1) + digits + suffix.count
        }
    }

    static func digits(_ d: Data) -> Int {
        d.withUnsafeBytes { raw in
            var n = 0
            for i in 0..<(raw.count / 4) {
                let v = Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self))
                n += v < 0 ? 1 + String(-Int(v)).utf8.count : v < 10 ? 1 : v < 100 ? 2 : v < 1000 ? 3 : v < 10_000 ? 4 : String(v).utf8.count
            }
            return n
        }
    }

    func next(maxBytes: Int) -> Data? {
        switch stage {
        case 0: stage = 1; return prefix.isEmpty ? next(maxBytes: maxBytes) : prefix
        case 1:
            if nextRow >= rows.upperBound {
                stage = output.finalRow ? 2 : 3
                return next(maxBytes: maxBytes)
            }
            let perRowBytes = max(1, rowValues * (text == .lists ? 7 : output.dtype.size))
            let n = max(1, min(rows.upperBound - nextRow, maxBytes / perRowBytes))
            var o = output; o.rows = nextRow..<(nextRow + n); o.finalRow = false
            nextRow += n
            return piece(o)
        case 2:
            stage = 3
            var o = output; o.rows = 0..<0; o.finalRow = true
            return piece(o)
        case 3:
            stage = 4
            var tail = Data()
            if text == .base64 && !carry.isEmpty { tail = base64Text(carry); carry = Data() }
            if text == .lists { tail.append(contentsOf: Array((firstList ? "[]" : "]").utf8)) }
            tail.append(suffix)
            return tail
        default: return nil
        }
    }

    /// One block of rows in the response's text. The data was verified when the response began.
    private func piece(_ o: RouteOutput) -> Data {
        switch text {
        case .raw: return (try? packed.encode(o, verified: true)) ?? Data()
        case .base64:
            var bytes = carry
            bytes.append((try? packed.encode(o, verified: true)) ?? Data())
            let whole = bytes.count / 3 * 3
            carry = bytes.subdata(in: (bytes.startIndex + whole)..<bytes.endIndex)
            return base64Text(bytes.prefix(whole))
        case .lists:
            var i32 = o; i32.dtype = .int32
            let d = (try? packed.encode(i32, verified: true)) ?? Data()
            let shape = packed.shape(o)
            let (L, K) = (shape[1], shape[2])
            var out = [UInt8](); out.reserveCapacity(d.count * 2 + 16)
            d.withUnsafeBytes { raw in
                let rowsHere = raw.count / 4 / max(1, L * K)
                for r in 0..<rowsHere {
                    out.append(firstList ? UInt8(ascii: "[") : UInt8(ascii: ","))
                    if firstList { out.append(UInt8(ascii: "[")); firstList = false } else { out.append(UInt8(ascii: "[")) }
                    for l in 0..<L {
                        if l > 0 { out.append(UInt8(ascii: ",")) }
                        out.append(UInt8(ascii: "["))
                        for k in 0..<K {
                            if k > 0 { out.append(UInt8(ascii: ",")) }
                            let v = Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * ((r * L + l) * K + k), as: Int32.self))
                            out.append(contentsOf: String(v).utf8)
                        }
                        out.append(UInt8(ascii: "]"))
                    }
                    out.append(UInt8(ascii: "]"))
                }
            }
            return Data(out)
        }
    }
}
