// FP8Tests: e4m3 rounding on its grid (the OCP e4m3fn format as torch.float8_e4m3fn holds it), the
// per-row scaling, and the fp8 inference mode: close to fp32, different from bf16, and replayable
// bit-identically like every mode.
import Foundation
import Testing
@testable import MoE
import Routes

struct FP8Tests {
    /// Every finite e4m3fn value, from its bit fields (sign, 4-bit exponent bias 7, 3-bit mantissa; 0x7F is NaN).
    static let grid: [Float] = {
        var v: [Float] = []
        for e in 0..<16 {
            for m in 0..<8 where !(e == 15 && m == 7) {
                v.append(e == 0 ? Float(m) / 8 * Float.pow2(-6) : (1 + Float(m) / 8) * Float.pow2(e - 7))
            }
        }
        return v
    }()

    @Test func e4m3RoundsToTheNearestGridValueTiesToEven() {
        #expect(FP8Tests.grid.max() == 448 && FP8Tests.grid.count == 127)
        for x in FP8Tests.grid { #expect(FP8.e4m3(x) == x && FP8.e4m3(-x) == -x, "\(x) is on the grid") }
        var rng = SeededRandom(seed: 4)
        for _ in 0..<20_000 {
            let x = Float(rng.normal()) * Float.pow2(Int(rng.next() % 20) - 10)
            let q = FP8.e4m3(x)
            let best = FP8Tests.grid.flatMap { [$0, -$0] }.min { abs($0 - x) < abs($1 - x) }!
            if abs(x) <= 448 { #expect(abs(q - x) <= abs(best - x), "\(x) → \(q), nearest \(best)") } else { #expect(abs(q) == 448) }
        }
        #expect(FP8.e4m3(1.0625) == 1.0 && FP8.e4m3(1.1875) == 1.25, "ties go to the even mantissa")
        #expect(FP8.e4m3(3 * Float.pow2(-10)) == 2 * Float.pow2(-9), "subnormal ties to even")
        #expect(FP8.e4m3(1000) == 448 && FP8.e4m3(-1e30) == -448, "saturates")
    }

    @Test func rowsAreScaledSoTheirLargestValueIsKeptExactly() {
        var rows: [Float] = [0.001, -3.7, 2.5, 0.02, 0, 0, 0, 0, 1e-5, 5e-6, -2e-5, 1e-7]
        let before = rows
        rows.withUnsafeMutableBufferPointer { FP8.quantizeRows($0.baseAddress!, rows: 3, cols: 4) }
        #expect(rows[1] == -3.7, "the row's largest magnitude maps to ±448 and back exactly")
        #expect(rows[4...7].allSatisfy { $0 == 0 }, "a zero row stays zero")
        #expect(abs(rows[10] - before[10]) < 1e-12 && rows[10] == -2e-5, "tiny rows keep their own scale")
        for i in [0, 2, 3, 8, 9, 11] { #expect(abs(rows[i] - before[i]) <= abs(before[i]) * 0.0625 + 3.7 / 448 * Float.pow2(-9) + 1e-12) }
    }

    @Test func fp8InferenceIsCloseToFP32AndReplaysBitIdentically() throws {
        let model = try Model(config: Factory.routedConfig(), seed: 21, std: 0.08, routerStd: 0.5)
        let seqs = Factory.randomSequences(count: 3, lengths: 10...40, vocab: 128, seed: 1)
        let fp32 = try Engine(model: model, numerics: .fp32).forward(seqs, options: ForwardOptions(keepLogits: true))
        let bf16 = try Engine(model: model, numerics: .bf16).forward(seqs, options: ForwardOptions(keepLogits: true))
        let engine = Engine(model: model, numerics: .fp8)
        let fp8 = try engine.forward(seqs, options: ForwardOptions(keepLogits: true))
        func worst(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max()! }
        #expect(worst(fp8.logits, fp32.logits) < 0.5, "fp8 logits stay near fp32 (\(worst(fp8.logits, fp32.logits)))")
        #expect(worst(fp8.logits, fp32.logits) > 2 * worst(bf16.logits, fp32.logits), "fp8 is coarser than bf16")
        let tables = try seqs.indices.map { try fp8.routes.rows(fp8.rows(ofSequence: $0)) }
        let replay = try engine.forward(seqs, routing: .replay(tables), options: ForwardOptions(keepLogits: true))
        #expect(replay.logits.map(\.bitPattern) == fp8.logits.map(\.bitPattern))
        // the engine's own weights: routers, embeddings and LM head bf16, the rest on the e4m3 grid per row
        let w = engine.model
        let router = w.layout.tensors.first { $0.name.hasSuffix("mlp.gate.weight") }!
        #expect((0..<router.count).allSatisfy { BF16.round(w.params[router.offset + $0]) == w.params[router.offset + $0] })
        let down = w.layout.tensors.first { $0.name.hasSuffix("experts.3.down_proj.weight") }!
        let row = (0..<down.shape[1]).map { w.params[down.offset + $0] }
        let scale = row.map(abs).max()! / 448
        #expect(row.allSatisfy { FP8.e4m3($0 / scale) * scale == $0 || abs(FP8.e4m3($0 / scale) * scale - $0) <= abs($0) * 1e-6 })
    }
}

extension Float {
    static func pow2(_ e: Int) -> Float { Float(sign: .plus, exponent: e, significand: 1) }
}
