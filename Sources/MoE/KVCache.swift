// KVCache: per layer, per sequence slot, the rotated keys and the values of every position so far.
// MLA layers cache the expanded per-head k = [k_nope, rope(k_rope)] and v, not the latent: decode then
// runs the same attention core on the same values as the full forward (see the README).

public final class KVCache {
    public let layers: Int
    public let slots: Int
    public let capacity: Int       // positions per slot
    let kWidth: Int                // kv heads · q/k head width
    let vWidth: Int                // kv heads · value width
    let k: Buffer<Float>           // [L, slots, capacity, kWidth]
    let v: Buffer<Float>           // [L, slots, capacity, vWidth]
    public internal(set) var lengths: [Int]

    init(config c: ModelConfig, slots: Int, capacity: Int) {
        layers = c.numLayers; self.slots = slots; self.capacity = capacity
        kWidth = c.kvHeads * c.headDim
        vWidth = c.kvHeads * c.valueDim
        k = Buffer(count: layers * slots * capacity * kWidth, zero: false)
        v = Buffer(count: layers * slots * capacity * vWidth, zero: false)
        lengths = Array(repeating: 0, count: slots)
    }

    @inline(__always) func keys(layer l: Int, slot: Int) -> UnsafeMutablePointer<Float> { k.base + (l * slots + slot) * capacity * kWidth }
    @inline(__always) func values(layer l: Int, slot: Int) -> UnsafeMutablePointer<Float> { v.base + (l * slots + slot) * capacity * vWidth }

    /// Copies the new rows' keys (row t at k + t·ldk) and values (v + t·ldv) into each span's slot at
    /// positions pos0 ..< pos0 + count.
    func store(layer l: Int, spans: [AttnSpan], k src: UnsafePointer<Float>, ldk: Int, v vsrc: UnsafePointer<Float>, ldv: Int) {
        for span in spans {
            let kd = keys(layer: l, slot: span.slot), vd = values(layer: l, slot: span.slot)
            for i in 0..<span.count {
                let t = span.row + i, pos = span.pos0 + i
                (kd + pos * kWidth).update(from: src + t * ldk, count: kWidth)
                (vd + pos * vWidth).update(from: vsrc + t * ldv, count: vWidth)
            }
        }
    }
}
