// Optimizer: global-norm gradient clipping and AdamW (decoupled weight decay, as torch.optim.AdamW),
import Foundation
// over the flat parameter buffer.

public struct AdamWConfig: Sendable {
    public var learningRate: Float = 1e-4
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var eps: Float = 1e-8
    /// Applied to matrices only; norm weights, biases and buffers are not decayed.
    public var weightDecay: Float = 0.0
    public init(learningRate: Float = 1e-4, beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0) {
        self.learningRate = learningRate; self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
    }
}

public final class AdamW {
    public var config: AdamWConfig
    public private(set) var step = 0
    let m: Buffer<Float>, v: Buffer<Float>
    let decayMask: [Range<Int>]   // parameter ranges that are decayed

    public init(layout: ParameterLayout, config: AdamWConfig) {
        self.config = config
        m = Buffer(count: layout.total); v = Buffer(count: layout.total)
        decayMask = layout.tensors.filter { $0.role == .matrix }.map { $0.offset..<($0.offset + $0.count) }
    }

    /// One update of `params` from `grads`, split over `workers` threads (it is memory-bound).
    public func update(params: Buffer<Float>, grads: Buffer<Float>, workers: Int = 2) {
        step += 1
        let c = config
        let bc1 = 1 - Float(pow(Double(c.beta1), Double(step))), bc2 = 1 - Float(pow(Double(c.beta2), Double(step)))
        let p = params.base, g = grads.base, mm = m.base, vv = v.base
        let lrc = c.learningRate / bc1, invSqrtBc2 = 1 / bc2.squareRoot()
        if c.weightDecay != 0 {
            let keep = 1 - c.learningRate * c.weightDecay
            for r in decayMask { for i in r { p[i] *= keep } }
        }
        let b1 = c.beta1, b2 = c.beta2, eps = c.eps
        parallelFor(workers, workers: workers) { part in
            for i in chunk(params.count, parts: workers, part: part, align: 16) {
                let gi = g[i]
                mm[i] = b1 * mm[i] + (1 - b1) * gi
                vv[i] = b2 * vv[i] + (1 - b2) * gi * gi
                p[i] -= lrc * mm[i] / ((vv[i]).squareRoot() * invSqrtBc2 + eps)
            }
        }
    }
}

public enum GradClip {
    /// The global L2 norm of `grads` (accumulated in Double).
    public static func norm(_ grads: Buffer<Float>) -> Double {
        let blocks = (grads.count + 4095) / 4096, g = grads.base
        let sums = Buffer<Double>(count: blocks)
        parallelFor(blocks, workers: 2) { b in
            let r = (b * 4096)..<min(grads.count, b * 4096 + 4096)
            sums[b] = Double(dot(g + r.lowerBound, g + r.lowerBound, r.count))
        }
        return sums.buffer.reduce(0, +).squareRoot()
    }

    /// Scales `grads` so that their global norm is at most `maxNorm`; returns the norm before clipping.
    @discardableResult
    public static func clip(_ grads: Buffer<Float>, maxNorm: Double) -> Double {
        let total = norm(grads)
        if total.isFinite && total > maxNorm {
            let s = Float(maxNorm / (total + 1e-6)), g = grads.base
            parallelFor(2, workers: 2) { part in for i in chunk(grads.count, parts: 2, part: part, align: 16) { g[i] *= s } }
        }
        return total
    }
}

extension AdamW {
    /// Writes the moments and the step count (`optimizer.safetensors`) so training resumes exactly.
    public func save(to url: URL) throws {
        var w = SafetensorsWriter()
        w.metadata["step"] = String(step)
        w.add("exp_avg", floats: UnsafeBufferPointer(start: m.base, count: m.count), shape: [m.count])
        w.add("exp_avg_sq", floats: UnsafeBufferPointer(start: v.base, count: v.count), shape: [v.count])
        try w.write(to: url)
    }

    /// Restores what `save` wrote; the layout must match.
    public func load(from url: URL) throws {
        let f = try SafetensorsFile(url: url)
        guard let s = f.metadata["step"].flatMap(Int.init), s >= 0 else { throw MoEError.file(path: url.path, reason: "no step in metadata") }
        for (name, buf) in [("exp_avg", m), ("exp_avg_sq", v)] {
            let e = try f.entry(name)
            guard e.count == buf.count else { throw MoEError.tensor(name: name, reason: "has \(e.count) values, the model has \(buf.count) parameters") }
            try f.readFloats(name, into: buf.base, count: buf.count)
        }
        step = s
    }
}
