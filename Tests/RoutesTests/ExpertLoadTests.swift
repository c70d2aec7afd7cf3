// ExpertLoadTests: the per-layer expert histogram counted from packed bytes (uint8 and uint16, with
// missing rows) against counting the unpacked ids, its stored form, and the imbalance definition.
import Foundation
import XCTest
@testable import Routes

final class ExpertLoadTests: XCTestCase {
    /// RouteFactory's routes with whole tokens missing (every layer of them).
    func routes(rows: Int, layers: Int, topK: Int, experts: Int, missing: Set<Int>, seed: UInt64) -> RouteArray {
        RouteFactory.make(rows: rows, layers: layers, topK: topK, experts: experts,
                          missing: Set(missing.flatMap { t in (0..<layers).map { t * layers + $0 } }), seed: seed)
    }

    func testCountsFromPackedBytesEqualCountingTheIds() throws {
        for experts in [8, 255, 300] {   // uint8, uint8 with the 0xFF marker, uint16
            let r = routes(rows: 37, layers: 3, topK: 4, experts: experts, missing: [0, 5, 36], seed: UInt64(experts))
            let p = try PackedRoutes(r, numExperts: experts)
            XCTAssertEqual(p.width, experts <= 255 ? 1 : 2)
            let (load, missing) = try ExpertLoad.count(p)
            var want = [Int](repeating: 0, count: 3 * experts)
            for t in 0..<r.rows { for l in 0..<3 { for j in 0..<4 { let e = r.ids[(t * 3 + l) * 4 + j]; if e >= 0 { want[l * experts + Int(e)] += 1 } } } }
            XCTAssertEqual(load.counts, want, "E \(experts)")
            XCTAssertEqual(missing, [0, 5, 36])
            XCTAssertEqual(load.tokens, 34)
            let back = try ExpertLoad(bytes: load.bytes, layers: 3, numExperts: experts, tokens: 34)
            XCTAssertEqual(back, load)
            for l in 0..<3 {
                let row = want[(l * experts)..<((l + 1) * experts)]
                XCTAssertEqual(load.imbalance[l], Double(row.max()!) / (Double(row.reduce(0, +)) / Double(experts)), accuracy: 1e-12)
            }
        }
    }

    func testATthRowPlaceholderIsNotCounted() throws {
        // NeMo-RL sends T rows, the last a placeholder for the token that never went into the model
        let r = routes(rows: 6, layers: 2, topK: 2, experts: 8, missing: [], seed: 9)
        let all = try ExpertLoad.count(PackedRoutes(r, numExperts: 8)).load
        let load = try ExpertLoad.count(PackedRoutes(r, numExperts: 8), tokens: 6).load
        XCTAssertEqual(load.tokens, 5)
        XCTAssertEqual(all.counts.reduce(0, +) - load.counts.reduce(0, +), 2 * 2)   // one row: 2 layers × top-2
        XCTAssertEqual(try ExpertLoad.count(PackedRoutes(r, numExperts: 8), tokens: 7).load, all)   // T − 1 rows: all of them
    }

    func testAllTokensOnTheSameExpertsIsEOverK() throws {
        let r = try RouteArray(rows: 10, layers: 1, topK: 2, ids: [Int32](repeating: 0, count: 0) + (0..<10).flatMap { _ in [Int32(3), 5] })
        var load = try ExpertLoad.count(PackedRoutes(r, numExperts: 16)).load
        XCTAssertEqual(load.imbalance, [8])      // E / K
        load.add(load)
        XCTAssertEqual(load.counts[3], 20)
        XCTAssertThrowsError(try ExpertLoad(bytes: Data(count: 7), layers: 1, numExperts: 2, tokens: 0))
    }
}
