// EncodingTests: the C encoders the responses use against their reference twins: CRC-32 (ZIP) by slicing
// against the byte-at-a-time table, base64 against Foundation, and the hand-built JSON against a parser.
import CPosix
import Foundation
import JSON
import Testing
@testable import Service

struct EncodingTests {
    static func bytes(_ n: Int, seed: UInt64) -> Data {
        var s = seed
        return Data((0..<n).map { _ -> UInt8 in s = s &* 6364136223846793005 &+ 1442695040888963407; return UInt8(truncatingIfNeeded: s >> 33) })
    }

    @Test(arguments: [0, 1, 7, 8, 9, 63, 64, 1000, 65_537])
    func crc32SlicingEqualsTheTable(n: Int) {
        let d = EncodingTests.bytes(n, seed: UInt64(n))
        #expect(Zip.crc32(d) == Zip.reference(d), "\(n) bytes")
        if n == 9 { #expect(Zip.crc32(Data("123456789".utf8)) == 0xCBF4_3926) }   // the CRC-32 check value
    }

    @Test(arguments: [0, 1, 2, 3, 4, 5, 100, 4097])
    func base64EqualsFoundation(n: Int) {
        let d = EncodingTests.bytes(n, seed: 3)
        #expect(String(decoding: base64Text(d), as: UTF8.self) == d.base64EncodedString())
    }

    @Test func handBuiltJSONParses() throws {
        let d = EncodingTests.bytes(100, seed: 5)
        let body = try jsonObject(["num_experts": 8, "shape": [1, 2, 3]], key: "routed_experts", prefix: "nrlre1:int8:1x2x3:", base64: d)
        let v = try JSONReader.parse([UInt8](body))
        #expect(v.objectValue?["routed_experts"]?.stringValue == "nrlre1:int8:1x2x3:" + d.base64EncodedString())
        #expect(v.objectValue?["num_experts"] == .int(8))
        let outer = jsonObject(key: "routes", members: [("a\"b", body), ("c", Data("{}".utf8))])
        let o = try JSONReader.parse([UInt8](outer))
        #expect(o.objectValue?["routes"]?.objectValue?.keys == ["a\"b", "c"])
    }
}
