// Support: fixture location and comparison helpers whose failure messages name tensor, index and tolerance.
import Foundation
import MoE
import Routes

enum Fixture {
    /// ../shared/fixtures beside the repository (R3_SHARED overrides the shared directory).
    static var shared: URL {
        if let s = ProcessInfo.processInfo.environment["R3_SHARED"] { return URL(fileURLWithPath: s) }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("shared")
    }
    static var tinyA: URL { shared.appendingPathComponent("fixtures/qwen3moe-tiny-a") }
}

/// The largest |a - b| and where it is; nil when within `tol`.
func worstDifference(_ name: String, _ a: [Float], _ b: [Double], tol: Double, relativeTo scale: Double = 1) -> String? {
    guard a.count == b.count else { return "\(name): \(a.count) elements, reference has \(b.count)" }
    var worst = 0.0, at = 0
    for i in 0..<a.count {
        let d = abs(Double(a[i]) - b[i])
        if !(d <= worst) { worst = d; at = i }
    }
    if worst / scale <= tol { return nil }
    return "\(name)[\(at)]: got \(a[at]), reference \(b[at]), |diff| \(worst) (relative to \(scale): \(worst / scale)) > tol \(tol)"
}

func tmpDir(_ tag: String) -> URL {
    let u = FileManager.default.temporaryDirectory.appendingPathComponent("r3-test-\(tag)-\(UUID().uuidString)")
    try? FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
    return u
}

/// Factories with defaults: small configs and random models for tests.
enum Factory {
    /// The self-made config of the gradient check: dense layers between MoE layers (decoder_sparse_step 2
    /// and mlp_only_layers), norm_topk_prob false, tied embeddings, head_dim (10) ≠ hidden/heads (8), GQA.
    static func oddConfig() -> ModelConfig {
        ModelConfig(vocabSize: 50, hiddenSize: 24, intermediateSize: 16, moeIntermediateSize: 8, numLayers: 6, numHeads: 3,
                    numKVHeads: 1, headDim: 10, numExperts: 6, topK: 2, normTopKProb: false, decoderSparseStep: 2,
                    mlpOnlyLayers: [3], tieWordEmbeddings: true, ropeTheta: 10_000, rmsNormEps: 1e-6)
    }

    /// A 16-expert top-4 model whose routing is decisive enough to matter.
    static func routedConfig(vocab: Int = 128) -> ModelConfig {
        ModelConfig(vocabSize: vocab, hiddenSize: 64, intermediateSize: 96, moeIntermediateSize: 32, numLayers: 3, numHeads: 4,
                    numKVHeads: 2, headDim: 16, numExperts: 16, topK: 4, normTopKProb: true)
    }

    static func randomSequences(count: Int, lengths: ClosedRange<Int>, vocab: Int, seed: UInt64) -> [[Int32]] {
        var rng = SeededRandom(seed: seed)
        return (0..<count).map { _ in
            let n = lengths.lowerBound + Int(rng.next() % UInt64(lengths.count))
            return (0..<n).map { _ in Int32(rng.next() % UInt64(vocab)) }
        }
    }

    /// Random distinct experts for every (token, layer).
    static func randomRoutes(rows: Int, layers: Int, topK: Int, experts: Int, seed: UInt64) -> RouteArray {
        var rng = SeededRandom(seed: seed)
        var ids: [Int32] = []
        for _ in 0..<(rows * layers) {
            var row: [Int32] = []
            while row.count < topK {
                let e = Int32(rng.next() % UInt64(experts))
                if !row.contains(e) { row.append(e) }
            }
            ids += row
        }
        return try! RouteArray(rows: rows, layers: layers, topK: topK, ids: ids)
    }
}
