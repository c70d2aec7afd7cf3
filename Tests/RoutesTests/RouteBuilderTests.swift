// RouteBuilderTests: routes streamed in pieces (base64, .npy, nrlre1, raw int32) pack to the same bytes as
// the whole-array path; finish() fixes the shape from the layout, keeps only MoE layers, checks dense rows,
// and the stored routes serve every reader's layout (all layers, pad, NeMo's T-th row) and splice turns.
import Foundation
import JSON
import CPosix
import Testing
@testable import Routes

/// Distinct experts per MoE row, dense rows 0, over every hidden layer.
func allLayers(rows: Int, layout l: RouteLayout, seed: UInt64 = 1, missing: Set<Int> = []) -> [Int32] {
    var s = seed
    var out = [Int32](repeating: 0, count: rows * l.hiddenLayers * l.topK)
    for t in 0..<rows {
        for (m, h) in l.moeLayers.enumerated() {
            let base = (t * l.hiddenLayers + h) * l.topK
            if missing.contains(t * l.moeLayers.count + m) { for j in 0..<l.topK { out[base + j] = -1 }; continue }
            var row: [Int32] = []
            while row.count < l.topK {
                s = s &* 6364136223846793005 &+ 1442695040888963407
                let e = Int32((s >> 33) % UInt64(l.numExperts))
                if !row.contains(e) { row.append(e) }
            }
            for j in 0..<l.topK { out[base + j] = row[j] }
        }
    }
    return out
}

func int32Bytes(_ v: [Int32]) -> [UInt8] { v.withUnsafeBytes { Array($0) } }

/// Reads a JSON string value through the streaming route reader, fed in `piece`-byte pieces.
func readRoutes(_ json: String, piece: Int, max: Int = 1 << 30) throws -> IncomingRoutes {
    let r = JSONReader(Trickle(json, piece: piece), window: 4096)
    return try RouteJSONReader.read(r, maxValues: max)
}

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

struct RouteBuilderTests {
    static let glm = try! RouteLayout(hiddenLayers: 5, moeLayers: [1, 2, 3, 4], numExperts: 160, topK: 8)

    @Test(arguments: [1, 3, 7, 4096])
    func sglangBareBase64InAnyPiecesPacksAndDropsDenseLayers(piece: Int) throws {
        let l = RouteBuilderTests.glm
        let ids = allLayers(rows: 12, layout: l, missing: [5])
        let text = "\"" + Data(int32Bytes(ids)).base64EncodedString() + "\""
        let incoming = try readRoutes(text, piece: piece)
        #expect(incoming.shape == nil && incoming.encoding == "sglang_base64")
        let p = try incoming.builder.finish(shape: nil, rows: [12, 13], layout: l)
        #expect(p.rows == 12 && p.layers == 4 && p.width == 1 && p.moeLayers == [1, 2, 3, 4] && p.hiddenLayers == 5)
        #expect(try p.ids(RouteOutput(layers: .allLayers)) == ids)
        var moeOnly: [Int32] = []
        for t in 0..<12 { for h in l.moeLayers { moeOnly += ids[((t * 5 + h) * 8)..<((t * 5 + h + 1) * 8)] } }
        #expect(try p.ids(RouteOutput()) == moeOnly)
    }

    @Test func vllmNpyBase64AndNemoEnvelopeCarryTheirShape() throws {
        let l = try RouteLayout(hiddenLayers: 3, moeLayers: [0, 1, 2], numExperts: 200, topK: 4)
        let ids = allLayers(rows: 6, layout: l)
        let npy = NPY.encode(NPYArray(dtype: .uint8, shape: [6, 3, 4], bytes: Data(ids.map { UInt8($0) })))
        let a = try readRoutes("\"" + npy.base64EncodedString() + "\"", piece: 5)
        #expect(a.shape == [6, 3, 4] && a.encoding == "npy_base64")
        #expect(try a.builder.finish(shape: a.shape, rows: [6, 7], layout: l).ids(RouteOutput()) == ids)
        let env = "\"nrlre1:int16:6x3x4:" + Data(ids.flatMap { v -> [UInt8] in let x = Int16(v); return [UInt8(truncatingIfNeeded: x), UInt8(truncatingIfNeeded: x >> 8)] }).base64EncodedString() + "\""
        let b = try readRoutes(env, piece: 2)
        #expect(b.shape == [6, 3, 4] && b.encoding == "nrlre1")
        #expect(try b.builder.finish(shape: b.shape, rows: [6, 7], layout: l).ids(RouteOutput()) == ids)
    }

    @Test func objectFormWithDataBeforeDtypeStillDecodes() throws {
        let ids: [Int32] = [0, 1, 2, 3, 4, 5, 6, 7]
        let json = #"{"data": "\#(Data(int32Bytes(ids)).base64EncodedString())", "shape": [2, 2, 2], "dtype": "int32"}"#
        let r = try readRoutes(json, piece: 3)
        let l = try RouteLayout.allMoE(layers: 2, numExperts: 8, topK: 2)
        #expect(try r.builder.finish(shape: r.shape, rows: [2], layout: l).ids(RouteOutput()) == ids)
    }

    @Test func base64DecoderAgreesWithFoundationOnEveryLengthAndPiece() throws {
        var s: UInt64 = 7
        for n in [0, 1, 2, 3, 4, 5, 100, 1001] {
            let bytes = (0..<n).map { _ -> UInt8 in s = s &* 6364136223846793005 &+ 1; return UInt8(truncatingIfNeeded: s >> 40) }
            let text = Data(bytes).base64EncodedString()
            for piece in [1, 2, 3, 5, 64] {
                var d = Base64Decoder(), out: [UInt8] = []
                let t = Array(text.utf8)
                var i = 0
                while i < t.count {
                    let e = min(t.count, i + piece)
                    try t[i..<e].withUnsafeBytes { try d.feed($0) { out += $0 } }
                    i = e
                }
                try d.finish()
                #expect(out == bytes, "length \(n), pieces of \(piece)")
            }
        }
        // the AVX2 bulk path against the scalar table twin, with a byte outside the alphabet at every position
        var text = Array(Data((0..<3000).map { _ -> UInt8 in s = s &* 6364136223846793005 &+ 1; return UInt8(truncatingIfNeeded: s >> 40) }).base64EncodedString().utf8)
        for pos in stride(from: 0, to: 300, by: 7) {
            let saved = text[pos]
            for bad: UInt8 in [0x00, 0x2C, 0x2E, 0x3A, 0x40, 0x5B, 0x60, 0x7B, 0x80, 0xFF, UInt8(ascii: "=")] {
                text[pos] = bad
                #expect(throws: RoutesError.self, "byte 0x\(String(bad, radix: 16)) at \(pos)") { _ = try Base64Decoder.decode(String(decoding: text, as: UTF8.self)) }
            }
            text[pos] = saved
        }
        var scalar: [UInt8] = []
        let tbl = Base64Decoder.table
        for g in stride(from: 0, to: text.count, by: 4) {
            let q = (0..<4).map { text[g + $0] == UInt8(ascii: "=") ? UInt8(0) : tbl[Int(text[g + $0])] }
            scalar += [q[0] << 2 | q[1] >> 4, q[1] << 4 | q[2] >> 2, q[2] << 6 | q[3]]
        }
        scalar.removeLast(text.reversed().prefix { $0 == UInt8(ascii: "=") }.count)
        #expect(try Base64Decoder.decode(String(decoding: text, as: UTF8.self)) == scalar)
        for bad in ["A", "AB=C", "A===", "AB$D", "ABCD=", "ABC"] {
            #expect(throws: RoutesError.self, "\(bad)") { _ = try Base64Decoder.decode(bad) }
        }
    }

    @Test(arguments: [
        ([7, 5, 4], "top_k 4"),                    // wrong K
        ([7, 3, 8], "3 layers"),                   // neither hidden (5) nor MoE (4)
        ([9, 5, 8], "9 rows"),                     // rows != T-1, T
    ])
    func shapesThatDoNotFitTheModelAreRefused(shape: [Int], words: String) throws {
        var b = RouteBuilder()
        for _ in 0..<(shape.reduce(1, *)) { try b.append(0) }
        do { _ = try b.finish(shape: shape, rows: [7, 8], layout: RouteBuilderTests.glm); Issue.record("accepted \(shape)") } catch {
            #expect("\(error)".contains(words), "\(error)")
        }
    }

    @Test func denseRowsMustBeAllZeroOrAllMissingNamingTheLayer() throws {
        let l = RouteBuilderTests.glm
        var ids = allLayers(rows: 4, layout: l)
        for j in 0..<8 { ids[(2 * 5 + 0) * 8 + j] = -1 }   // token 2, dense layer 0: all -1 is fine
        var b = RouteBuilder()
        try int32Bytes(ids).withUnsafeBytes { try b.append($0, dtype: .int32) }
        _ = try b.finish(shape: nil, rows: [4], layout: l)
        ids[(3 * 5 + 0) * 8 + 2] = 9
        var c = RouteBuilder()
        try int32Bytes(ids).withUnsafeBytes { try c.append($0, dtype: .int32) }
        #expect(throws: RoutesError.invalid("layer 0 is dense in this model, but row [3, 0] holds [0, 0, 9, 0, 0, 0, 0, 0]: a dense layer's row must be all 0 or all -1")) {
            _ = try c.finish(shape: nil, rows: [4], layout: l)
        }
    }

    @Test func contentErrorsNameTheRow() throws {
        let l = try RouteLayout.allMoE(layers: 1, numExperts: 8, topK: 2)
        for (vals, words) in [([0, 8], "outside [0, 8)"), ([3, 3], "appears twice at [0, 0]"), ([1, -1], "partly missing")] as [([Int64], String)] {
            var b = RouteBuilder()
            for v in vals { try b.append(v) }
            do { _ = try b.finish(shape: [1, 1, 2], rows: [1], layout: l); Issue.record("accepted \(vals)") } catch {
                #expect("\(error)".contains(words), "\(error)")
            }
        }
    }

    /// The one-byte fast path (top-8 rows as 64-bit words) finds what the general path finds.
    @Test func fastPathCatchesEveryDuplicatePairRangeAndPartlyMissingRow() throws {
        let l = try RouteLayout(hiddenLayers: 2, moeLayers: [1], numExperts: 128, topK: 8)
        let good = allLayers(rows: 3, layout: l, seed: 9)
        func finish(_ ids: [Int32]) throws -> PackedRoutes {
            var b = RouteBuilder()
            try int32Bytes(ids).withUnsafeBytes { try b.append($0, dtype: .int32) }
            return try b.finish(shape: [3, 2, 8], rows: [3], layout: l)
        }
        #expect(try finish(good).ids(RouteOutput(layers: .allLayers)) == good)
        let base = (1 * 2 + 1) * 8   // token 1, layer 1
        for i in 0..<8 {
            for j in 0..<8 where j != i {
                var ids = good; ids[base + j] = ids[base + i]
                #expect(throws: RoutesError.invalid("expert \(ids[base + i]) appears twice at [1, 1]"), "slots \(i), \(j)") { _ = try finish(ids) }
            }
            var far = good; far[base + i] = 128
            #expect(throws: RoutesError.invalid("expert id 128 at [1, 1, \(i)] is outside [0, 128)")) { _ = try finish(far) }
            var part = good; part[base + i] = -1
            #expect(throws: RoutesError.invalid("row [1, 1] is partly missing: -1 must fill a whole row")) { _ = try finish(part) }
        }
    }

    /// Every layer MoE and top-8: the AVX2 check (four rows a step, no copy) over enough rows that
    /// problems land inside its steps and in the scalar tail, each named at its row by the general path.
    @Test func vectorCheckFindsEveryProblemWhereverItIs() throws {
        let l = try RouteLayout.allMoE(layers: 3, numExperts: 100, topK: 8)
        let rows = 50   // 1,200 bytes: 37 vector steps, then 2 rows' worth of tail
        let gone = [2, 31, 49]   // whole tokens missing: in the vector steps and in the tail
        let good = allLayers(rows: rows, layout: l, seed: 4, missing: Set(gone.flatMap { t in (0..<3).map { t * 3 + $0 } }))
        func finish(_ ids: [Int32]) throws -> PackedRoutes {
            var b = RouteBuilder()
            try int32Bytes(ids).withUnsafeBytes { try b.append($0, dtype: .int32) }
            return try b.finish(shape: [rows, 3, 8], rows: [rows], layout: l)
        }
        #expect(try finish(good).ids(RouteOutput()) == good)
        for t in [0, 1, 16, 17, 36, 48, 49] {
            for layer in 0..<3 where !gone.contains(t) {
                let b = (t * 3 + layer) * 8
                for i in [0, 3, 7] {
                    var dup = good; dup[b + (i + 1) % 8] = dup[b + i]
                    #expect(throws: RoutesError.invalid("expert \(dup[b + i]) appears twice at [\(t), \(layer)]")) { _ = try finish(dup) }
                    var far = good; far[b + i] = 100
                    #expect(throws: RoutesError.invalid("expert id 100 at [\(t), \(layer), \(i)] is outside [0, 100)")) { _ = try finish(far) }
                    var part = good; part[b + i] = -1
                    #expect(throws: RoutesError.invalid("row [\(t), \(layer)] is partly missing: -1 must fill a whole row")) { _ = try finish(part) }
                }
            }
        }
    }

    /// int32 → uint8 narrowing (AVX2, 32 ids a step) stops exactly at the first id outside [-1, 254].
    @Test func narrowingStopsAtTheFirstWideID() throws {
        var s: UInt64 = 3
        for n in [0, 1, 31, 32, 33, 64, 100, 1000] {
            let ids = (0..<n).map { _ in s = s &* 6364136223846793005 &+ 1442695040888963407; return Int32(Int((s >> 33) % 256) - 1) }
            var cases: [(Int, Int32)] = [(-1, 0)]
            if n > 0 { cases += [(0, 255), (n / 2, -2), (n - 1, 70_000), (n / 3, Int32.min)] }
            for (pos, wide) in cases {
                var v = ids
                if pos >= 0 { v[pos] = wide }
                var out = [UInt8](repeating: 0xAA, count: n)
                let done = v.withUnsafeBytes { raw in out.withUnsafeMutableBufferPointer { Int(r3_narrow_i32_u8(raw.baseAddress!, UInt64(n), $0.baseAddress!)) } }
                let want = pos >= 0 ? pos : n
                #expect(done == want, "n \(n), wide \(wide) at \(pos)")
                #expect(Array(out[0..<done]) == v[0..<done].map { UInt8(truncatingIfNeeded: $0) })
            }
        }
    }

    @Test(arguments: [255, 256, 300, 4096])
    func widthFollowsTheExpertCountAndMissingRowsSurvive(experts: Int) throws {
        let l = try RouteLayout(hiddenLayers: 2, moeLayers: [0, 1], numExperts: experts, topK: 3)
        let ids = allLayers(rows: 5, layout: l, seed: UInt64(experts), missing: [3])
        var b = RouteBuilder()
        try int32Bytes(ids).withUnsafeBytes { try b.append($0, dtype: .int32) }
        let p = try b.finish(shape: [5, 2, 3], rows: [5], layout: l)
        #expect(p.width == (experts <= 255 ? 1 : 2))
        #expect(try p.ids(RouteOutput()) == ids)
        #expect(try p.unpack().ids == ids, "the reference path reads the same bytes")
    }

    @Test func uint8InputWithExactly256ExpertsKeeps255AsAnExpert() throws {
        let l = try RouteLayout.allMoE(layers: 1, numExperts: 256, topK: 2)
        var b = RouteBuilder()
        try [UInt8(255), 3].withUnsafeBytes { try b.append($0, dtype: .uint8) }
        #expect(try b.finish(shape: [1, 1, 2], rows: [1], layout: l).ids(RouteOutput()) == [255, 3])
        let l2 = try RouteLayout.allMoE(layers: 1, numExperts: 200, topK: 2)
        var c = RouteBuilder()
        try [UInt8(255), 255].withUnsafeBytes { try c.append($0, dtype: .uint8) }
        #expect(try c.finish(shape: [1, 1, 2], rows: [1], layout: l2).ids(RouteOutput()) == [-1, -1], "255 with 200 experts is NumPy's -1")
    }

    @Test func outputsForEveryReader() throws {
        let l = RouteBuilderTests.glm
        let ids = allLayers(rows: 3, layout: l)
        var b = RouteBuilder()
        try int32Bytes(ids).withUnsafeBytes { try b.append($0, dtype: .int32) }
        let p = try b.finish(shape: nil, rows: [3, 4], layout: l)
        // all layers with dense rows -1
        let padded = try p.ids(RouteOutput(layers: .allLayers, pad: -1))
        for t in 0..<3 { #expect(Array(padded[((t * 5) * 8)..<((t * 5 + 1) * 8)]) == Array(repeating: -1, count: 8)) }
        // NeMo-RL: one more row, arange(K) on the MoE layers
        let nemo = try p.ids(RouteOutput(dtype: .int16, finalRow: true))
        #expect(p.shape(RouteOutput(finalRow: true)) == [4, 4, 8])
        #expect(Array(nemo[(3 * 4 * 8)...]) == Array(repeating: Array(0..<8), count: 4).flatMap { $0 })
        // int64 little-endian
        let d = try p.encode(RouteOutput(dtype: .int64))
        #expect(d.count == 3 * 4 * 8 * 8)
        #expect(throws: RoutesError.self) { try p.encode(RouteOutput(dtype: .int8)) }   // 160 experts do not fit int8
    }

    @Test func splicingKeepsTheRowsBeforeStartLen() throws {
        let l = try RouteLayout.allMoE(layers: 2, numExperts: 300, topK: 2)
        func packed(_ rows: Int, seed: UInt64) throws -> PackedRoutes {
            var b = RouteBuilder()
            try int32Bytes(allLayers(rows: rows, layout: l, seed: seed)).withUnsafeBytes { try b.append($0, dtype: .int32) }
            return try b.finish(shape: [rows, 2, 2], rows: [rows], layout: l)
        }
        let first = try packed(6, seed: 1), second = try packed(5, seed: 2)
        let joined = try first.splicing(second, at: 4)
        #expect(joined.rows == 9)
        #expect(try joined.ids(RouteOutput()) == Array(try first.ids(RouteOutput())[0..<(4 * 4)]) + (try second.ids(RouteOutput())))
        #expect(throws: RoutesError.self) { try first.splicing(second, at: 7) }
    }
}
