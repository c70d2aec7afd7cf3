// RouteCodecTests: every wire encoding and dtype round-trips bit-exactly; bad input names what is wrong.
import Foundation
import Testing
@testable import Routes
import CPosix

enum RouteFactory {
    /// Distinct experts per row, drawn from a fixed LCG; rows listed in `missing` are all -1.
    static func make(rows: Int = 9, layers: Int = 3, topK: Int = 4, experts: Int = 64, missing: Set<Int> = [], seed: UInt64 = 1) -> RouteArray {
        var s = seed
        var ids: [Int32] = []
        for r in 0..<(rows * layers) {
            if missing.contains(r) { ids += Array(repeating: -1, count: topK); continue }
            var row: [Int32] = []
            while row.count < topK {
                s = s &* 6364136223846793005 &+ 1442695040888963407
                let e = Int32((s >> 33) % UInt64(experts))
                if !row.contains(e) { row.append(e) }
            }
            ids += row
        }
        return try! RouteArray(rows: rows, layers: layers, topK: topK, ids: ids)
    }
}

struct RouteCodecTests {
    static let cases: [(IntDType, Int)] = [(.int32, 300), (.int16, 300), (.int8, 100), (.uint8, 200), (.uint16, 300), (.uint8, 256)]

    @Test(arguments: RouteCodecTests.cases)
    func everyEncodingRoundTripsBitExactly(dtype: IntDType, experts: Int) throws {
        let missing: Set<Int> = experts == 256 && dtype == .uint8 ? [] : [4, 5]
        let r = RouteFactory.make(experts: experts, missing: missing)
        try r.validate(numExperts: experts)
        let obj = try RouteCodec.base64Object(r, dtype: dtype, numExperts: experts)
        let viaJSON = try JSONSerialization.jsonObject(with: JSONSerialization.data(withJSONObject: obj))
        #expect(try RouteCodec.decode(json: viaJSON, numExperts: experts) == r)
        let env = try RouteCodec.envelope(r, dtype: dtype, numExperts: experts)
        #expect(env.hasPrefix("nrlre1:\(dtype.rawValue):9x3x4:"))
        #expect(try RouteCodec.decode(json: env, numExperts: experts) == r)
        #expect(try RouteCodec.decode(npy: RouteCodec.npy(r, dtype: dtype, numExperts: experts), numExperts: experts) == r)
        #expect(try RouteCodec.decode(raw: RouteCodec.raw(r, dtype: dtype, numExperts: experts), dtype: dtype, shape: r.shape, numExperts: experts) == r)
        let lists = try JSONSerialization.jsonObject(with: JSONSerialization.data(withJSONObject: RouteCodec.lists(r)))
        #expect(try RouteCodec.decode(json: lists, numExperts: experts) == r)
    }

    @Test func decodesNeMoRLsOwnExample() throws {
        let r = try RouteCodec.decode(envelope: "nrlre1:int16:2x1x2:AAABAAIAAwA=", numExperts: 8)
        #expect(r.shape == [2, 1, 2] && r.ids == [0, 1, 2, 3])
    }

    @Test func uint8CannotMarkMissingRowsFor256Experts() {
        let r = RouteFactory.make(experts: 256, missing: [0])
        #expect(throws: RoutesError.invalid("uint8 cannot mark missing rows for 256 experts; use int16 or int32")) {
            try RouteCodec.npy(r, dtype: .uint8, numExperts: 256)
        }
    }

    func decodeError(_ v: Any, experts: Int = 8) -> String {
        do { _ = try RouteCodec.decode(json: v, numExperts: experts); return "accepted" } catch { return "\(error)" }
    }

    @Test func malformedEncodingsSayWhatIsWrong() {
        #expect(decodeError([[[0, 1]], [[2]]]).contains("routed_experts[1][0] has 1 experts, expected 2"))
        #expect(decodeError([[[0, 1]], [[2, 3], [4, 5]]]).contains("routed_experts[1] has 2 layers"))
        #expect(decodeError([[[0, 1.5]]]).contains("routed_experts[0][0][1] is not an integer"))
        #expect(decodeError([[[0, true]]]).contains("is not an integer"))
        #expect(decodeError(try! JSONSerialization.jsonObject(with: Data("[[[0, true]]]".utf8))).contains("is not an integer"))
        #expect(decodeError(["dtype": "int32", "shape": [1, 1, 2], "data": "!!"]).contains("not valid base64"))
        #expect(decodeError(["dtype": "int32", "shape": [1, 1, 2], "data": "AAAA"]).contains("3 bytes of int32 data for 2 values"))
        #expect(decodeError(["dtype": "float32", "shape": [1, 1, 2], "data": ""]).contains("dtype 'float32'"))
        #expect(decodeError(["dtype": "int32", "shape": [1, 2], "data": ""]).contains("3 dimensions"))
        #expect(decodeError(["dtype": "int32", "shape": [1 << 30, 1 << 30, 8], "data": ""]).contains("too large"))
        #expect(decodeError("nrlre2:int16:1x1x1:AAA=").contains("nrlre1:<dtype>"))
        #expect(decodeError(42).contains("nested lists"))
    }

    @Test func contentErrorsNameTheIndex() throws {
        func err(_ ids: [Int32], tokens: Int? = nil) -> String {
            do { try RouteArray(rows: 2, layers: 1, topK: 2, ids: ids).validate(numExperts: 8, tokens: tokens); return "ok" } catch { return "\(error)" }
        }
        #expect(err([0, 1, 2, 3]) == "ok")
        #expect(err([0, 1, -1, -1]) == "ok")
        #expect(err([0, 1, 2, 8]) == "expert id 8 at [1, 0, 1] is outside [0, 8)")
        #expect(err([0, 1, 3, 3]) == "expert 3 appears twice at [1, 0]")
        #expect(err([0, 1, -1, 3]) == "row [1, 0] is partly missing: -1 must fill a whole row")
        #expect(err([0, 1, 2, 3], tokens: 5) == "routes have 2 rows for 5 tokens: expected 5 or 4")
        #expect(err([0, 1, 2, 3], tokens: 3) == "ok")
        #expect(throws: RoutesError.self) { try RouteArray(rows: 2, layers: 1, topK: 2, ids: [1, 2, 3]) }
    }

    @Test func rowSlicesForMultiTurn() throws {
        let r = RouteFactory.make()
        let s = try r.rows(2..<5)
        #expect(s.rows == 3 && s.ids == Array(r.ids[(2 * 12)..<(5 * 12)]))
        #expect(throws: RoutesError.self) { try r.rows(5..<10) }
    }
}

struct PackedRoutesTests {
    @Test(arguments: [(64, 1), (255, 1), (256, 1), (300, 2), (4096, 2)])
    func packsToOneByteWhenItCan(experts: Int, width: Int) throws {
        let r = RouteFactory.make(rows: 50, layers: 4, topK: 8, experts: experts, missing: experts == 256 ? [] : [7])
        let p = try PackedRoutes(r, numExperts: experts)
        #expect(p.width == width)
        #expect(p.bytes.count == r.count * width)
        #expect(try p.unpack() == r)
    }

    @Test(arguments: [64, 256, 300, 4096])
    func directEncodingEqualsUnpackThenEncode(experts: Int) throws {
        let r = RouteFactory.make(rows: 20, layers: 3, topK: 4, experts: experts, missing: experts == 256 ? [] : [5])
        let p = try PackedRoutes(r, numExperts: experts)
        for dt in IntDType.allCases {
            let direct = Result { try p.encode(RouteOutput(dtype: dt)) }
            let twin = Result { try dt.encode(p.unpack().ids, numExperts: experts) }
            switch (direct, twin) {
            case let (.success(a), .success(b)): #expect(a == b, "\(dt) with \(experts) experts")
            case (.failure, .failure): break
            default: Issue.record("\(dt) with \(experts) experts: direct \(direct), reference \(twin)")
            }
        }
    }

    @Test func corruptionIsDetected() throws {
        var p = try PackedRoutes(RouteFactory.make(), numExperts: 64)
        p.bytes[3] ^= 1
        #expect(throws: RoutesError.malformed("stored routes fail their checksum")) { try p.unpack() }
    }

    @Test func crc32cKnownAnswerAndReferenceTwin() {
        #expect(CRC32C.checksum(Data("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.reference(Data("123456789".utf8)) == 0xE306_9283)
        // from 256 KiB three interleaved CRCs are joined (crc32c_combine in cposix.c): lengths around that,
        // thirds that are not whole words, a long tail, and a large buffer
        for n in [0, 1, 7, 8, 9, 1000, 4097, 262_143, 262_144, 262_145, 262_151, 262_167, 1_000_003, 12_582_912] {
            let d = Data((0..<n).map { UInt8(truncatingIfNeeded: ($0 &* 131 &+ 7) ^ ($0 >> 9)) })
            #expect(CRC32C.checksum(d) == CRC32C.reference(d), "length \(n)")
        }
        // chained: the CRC of a whole is the CRC of its second part started from the first part's
        let d = Data((0..<1_000_000).map { UInt8(truncatingIfNeeded: $0 &* 17) })
        let first = d.prefix(300_001).withUnsafeBytes { r3_crc32c(0, $0.baseAddress, UInt64($0.count)) }
        let whole = d.suffix(from: 300_001).withUnsafeBytes { r3_crc32c(first, $0.baseAddress, UInt64($0.count)) }
        #expect(whole == CRC32C.reference(d))
    }
}
