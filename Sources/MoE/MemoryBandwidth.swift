// MemoryBandwidth: the machine's memory rate, measured in the same run as the decode benchmark that
// is bound by it (`r3 bench engine --cases memory_bandwidth,decode_b1`).

/// A STREAM-like measure with `threads` threads over a buffer of `megabytes`: the best of 5 of a sum over it
/// (read GB/s) and of a copy into a second buffer (bytes read + written per second).
public func memoryBandwidth(megabytes: Int, threads: Int) -> (read: Double, copy: Double) {
    let n = (megabytes << 20) / 4
    let a = UnsafeMutablePointer<Float>.allocate(capacity: n), b = UnsafeMutablePointer<Float>.allocate(capacity: n)
    defer { a.deallocate(); b.deallocate() }
    a.initialize(repeating: 1, count: n); b.initialize(repeating: 0, count: n)
    var sink: Float = 0
    var read = 0.0, copy = 0.0
    for i in 0..<6 {
        let parts = threads
        var sums = [Float](repeating: 0, count: parts)
        var t0 = ContinuousClock.now
        sums.withUnsafeMutableBufferPointer { out in
            let o = out.baseAddress!
            parallelFor(parts, workers: parts) { p in
                let lo = n / parts * p, hi = p == parts - 1 ? n : n / parts * (p + 1)
                var s0 = SIMD8<Float>(), s1 = SIMD8<Float>(), s2 = SIMD8<Float>(), s3 = SIMD8<Float>()
                let raw = UnsafeRawPointer(a)
                var k = lo
                while k + 32 <= hi {
                    s0 += raw.loadUnaligned(fromByteOffset: 4 * k, as: SIMD8<Float>.self)
                    s1 += raw.loadUnaligned(fromByteOffset: 4 * k + 32, as: SIMD8<Float>.self)
                    s2 += raw.loadUnaligned(fromByteOffset: 4 * k + 64, as: SIMD8<Float>.self)
                    s3 += raw.loadUnaligned(fromByteOffset: 4 * k + 96, as: SIMD8<Float>.self)
                    k += 32
                }
                o[p] = (s0 + s1 + s2 + s3).sum()
            }
        }
        let tr = seconds(since: t0)
        sink += sums.reduce(0, +)
        t0 = ContinuousClock.now
        parallelFor(threads, workers: threads) { p in
            let lo = n / threads * p, hi = p == threads - 1 ? n : n / threads * (p + 1)
            (b + lo).update(from: a + lo, count: hi - lo)
        }
        let tc = seconds(since: t0)
        if i > 0 { read = max(read, Double(4 * n) / tr / 1e9); copy = max(copy, Double(8 * n) / tc / 1e9) }
    }
    precondition(sink.isFinite)   // uses the sums, so the reads cannot be optimised away
    return (read, copy)
}

