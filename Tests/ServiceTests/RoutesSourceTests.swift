// RoutesSourceTests: a streamed routes body is, piece by piece, exactly the whole encoding: the same bytes
// (raw, base64 across piece boundaries) or the same ids (JSON lists), and exactly `length` of them, for
// every output choice (dtype, all layers with a pad, a row range, NeMo-RL's final row, missing ids).
import Foundation
import HTTP
import JSON
import Routes
import Testing
@testable import Service

struct RoutesSourceTests {
    /// 3000 rows of GLM-like routes (5 hidden layers, 4 MoE, 160 experts, top-8), some ids missing.
    static let packed: PackedRoutes = {
        let l = try! RouteLayout(hiddenLayers: 5, moeLayers: [1, 2, 3, 4], numExperts: 160, topK: 8)
        var s: UInt64 = 7
        var ids = [Int32](repeating: 0, count: 3000 * 5 * 8)
        for t in 0..<3000 {
            for h in 1...4 {
                var row: [Int32] = []
                while row.count < 8 {
                    s = s &* 6364136223846793005 &+ 1442695040888963407
                    let e = Int32((s >> 33) % 160)
                    if !row.contains(e) { row.append(e) }
                }
                if t % 997 == 3 { row = Array(repeating: -1, count: 8) }
                for k in 0..<8 { ids[(t * 5 + h) * 8 + k] = row[k] }
            }
        }
        var b = RouteBuilder()
        try! ids.withUnsafeBytes { try b.append($0, dtype: .int32) }
        return try! b.finish(shape: [3000, 5, 8], rows: [3000], layout: l)
    }()

    static let outputs: [RouteOutput] = [
        RouteOutput(), RouteOutput(dtype: .int64), RouteOutput(dtype: .int16, finalRow: true),
        RouteOutput(layers: .allLayers, pad: -1), RouteOutput(dtype: .uint8, rows: 100..<2101), RouteOutput(rows: 5..<5),
        RouteOutput(dtype: .int32, layers: .allLayers, rows: 2999..<3000, finalRow: true),
    ]

    static func drain(_ s: RoutesSource, piece: Int) -> Data {
        var out = Data()
        while let d = s.next(maxBytes: piece) { out.append(d) }
        return out
    }

    @Test(arguments: [1, 1000, 256 * 1024])
    func rawAndBase64AreTheWholeEncoding(piece: Int) throws {
        let p = RoutesSourceTests.packed
        for o in RoutesSourceTests.outputs {
            if (try? p.check(o)) == nil { continue }   // uint8 cannot hold the missing marker
            let whole = try p.encode(o)
            let raw = try RoutesSource(p, o, text: .raw, prefix: Data("<".utf8), suffix: Data(">".utf8))
            let r = RoutesSourceTests.drain(raw, piece: piece)
            #expect(r == Data("<".utf8) + whole + Data(">".utf8), "\(o)")
            #expect(r.count == raw.length)
            let b64 = try RoutesSource(p, o, text: .base64, prefix: Data("\"".utf8), suffix: Data("\"".utf8))
            let t = RoutesSourceTests.drain(b64, piece: piece)
            #expect(t == Data(("\"" + whole.base64EncodedString() + "\"").utf8), "\(o)")
            #expect(t.count == b64.length)
        }
    }

    @Test(arguments: [1, 4096, 256 * 1024])
    func listsAreTheIdsAndTheirLengthIsExact(piece: Int) throws {
        let p = RoutesSourceTests.packed
        for o in RoutesSourceTests.outputs {
            let s = try RoutesSource(p, o, text: .lists, prefix: Data("{\"r\":".utf8), suffix: Data("}".utf8))
            let body = RoutesSourceTests.drain(s, piece: piece)
            #expect(body.count == s.length, "\(o)")
            let v = try JSONReader.parse([UInt8](body))
            let rows = v.objectValue?["r"]?.arrayValue ?? []
            let shape = p.shape(o)
            #expect(rows.count == shape[0])
            var i32 = o; i32.dtype = .int32
            let ids = try p.ids(i32)
            let flat = rows.flatMap { $0.arrayValue ?? [] }.flatMap { $0.arrayValue ?? [] }.map { v -> Int in if case let .int(x) = v { return Int(x) }; return Int.min }
            #expect(flat == ids.map(Int.init), "\(o)")
            #expect(rows.allSatisfy { $0.arrayValue?.count == shape[1] })
        }
    }

    /// The in-process handler path makes a streamed body whole, byte for byte what the socket would carry.
    @Test func headAnswersTheLengthAGetWouldSend() throws {
        var r = HTTPResponse(status: 200)
        r.source = try RoutesSource(RoutesSourceTests.packed, RouteOutput(), text: .raw)
        let get = String(decoding: r.head(keepAlive: true, date: "x"), as: UTF8.self)
        #expect(get.contains("Content-Length: \(3000 * 4 * 8 * 4)\r\n"))
        r.headLength = r.source!.length; r.source = nil
        #expect(String(decoding: r.head(keepAlive: true, date: "x"), as: UTF8.self) == get)
    }
}
