// KVCache: per layer, per sequence slot, the rotated keys and the values of every position so far.

public final class KVCache {
    public let layers: Int
    public let slots: Int
    public let capacity: Int       // positions per slot
    let width: Int                 // Hkv · D
    let k: Buffer<Float>           // [L, slots, capacity, Hkv·D]
    let v: Buffer<Float>
    public internal(set) var lengths: [Int]

    init(config c: ModelConfig, slots: Int, capacity: Int) {
        layers = c.numLayers; self.slots = slots; self.capacity = capacity
        width = c.numKVHeads * c.headDim
        k = Buffer(count: layers * slots * capacity * width, zero: false)
        v = Buffer(count: layers * slots * capacity * width, zero: false)
        lengths = Array(repeating: 0, count: slots)
    }

    @inline(__always) func keys(layer l: Int, slot: Int) -> UnsafeMutablePointer<Float> { k.base + (l * slots + slot) * capacity * width }
    @inline(__always) func values(layer l: Int, slot: Int) -> UnsafeMutablePointer<Float> { v.base + (l * slots + slot) * capacity * width }

    /// Copies the new rows' keys (from the rotated qk buffer) and values (from the raw projection) into
    /// each span's slot at positions pos0 ..< pos0 + count.
    func store(layer l: Int, spans: [AttnSpan], qk: UnsafePointer<Float>, qkv: UnsafePointer<Float>, s: AttnShape) {
        for span in spans {
            let kd = keys(layer: l, slot: span.slot), vd = values(layer: l, slot: span.slot)
            for i in 0..<span.count {
                let t = span.row + i, pos = span.pos0 + i
                (kd + pos * width).update(from: qk + t * s.QK + s.HD, count: width)
                (vd + pos * width).update(from: qkv + t * s.QKV + s.QK, count: width)
            }
        }
    }
}
