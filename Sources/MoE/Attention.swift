// Attention: self-attention's core, forward and backward side by side: optional per-head q/k RMSNorm,
// rotate-half RoPE (on the first rotaryDim dims of a head), causal grouped-query attention with q/k and
// value widths of their own (MLA) over packed sequences (or a KV cache), computed in
// blocks of query rows so the score matrix is never larger than [Bq, keys] and only the causal part is
// multiplied. The projections around it are plain `linear` calls in Engine.swift (MLA's in MLA.swift).

/// One sequence's share of a packed batch, and where its keys and values live.
struct AttnSpan {
    var row: Int      // first packed row of this sequence's queries
    var count: Int    // query rows
    var pos0: Int     // position of the first query row; row i attends keys 0...pos0+i
    var k: UnsafeMutablePointer<Float>   // key of position 0, kv-head 0; head g at +g·D
    var v: UnsafeMutablePointer<Float>
    var ldk: Int
    var ldv: Int
    var slot = 0      // KV-cache slot of this sequence (generation)
}

struct AttnShape {
    let H, Hkv, D: Int   // D: q/k head width
    let Dv: Int          // value head width
    let scale: Float
    init(H: Int, Hkv: Int, D: Int, Dv: Int, scale: Float) {
        self.H = H; self.Hkv = Hkv; self.D = D; self.Dv = Dv; self.scale = scale
    }
    var group: Int { H / Hkv }
    var QKV: Int { (H + 2 * Hkv) * D }   // GQA raw projection row
    var QK: Int { (H + Hkv) * D }        // normed + rotated q,k row
    var HD: Int { H * D }                // q width
    var HDv: Int { H * Dv }              // attention output width
    /// scale·log2(e): the tiled path's score product in log2 units, for `exp2FMA`
    var log2Scale: Float { Float(Double(scale) * log2e) }
}

// MARK: q/k norm + RoPE

/// qk[t] = rope(rmsnorm(qkv[t] per head)) for the H query and Hkv key heads of every row (without
/// norm weights: rope(qkv[t])). RoPE covers the rope table's width, the first rotaryDim dims of a head.
func qkNormRopeForward(_ s: AttnShape, spans: [AttnSpan], qkv: UnsafePointer<Float>, qk: UnsafeMutablePointer<Float>,
                       rstd: UnsafeMutablePointer<Float>, qNorm: UnsafePointer<Float>?, kNorm: UnsafePointer<Float>?,
                       rope: RopeTable, eps: Float) {
    let heads = s.H + s.Hkv
    for span in spans {
        for i in 0..<span.count {
            let t = span.row + i, pos = span.pos0 + i
            for h in 0..<heads {
                let src = qkv + t * s.QKV + h * s.D, dst = qk + t * s.QK + h * s.D
                if let qNorm, let kNorm {
                    rmsnormForward(src, ldx: s.D, h < s.H ? qNorm : kNorm, dst, ldy: s.D, rstd: rstd + t * heads + h,
                                   rows: 1, n: s.D, eps: eps)
                } else {
                    dst.update(from: src, count: s.D)
                }
                rope.apply(dst, pos: pos)
            }
        }
    }
}

/// From dqk (gradient at the rotated q,k) writes the q,k columns of dqkv; dqk is overwritten.
func qkNormRopeBackward(_ s: AttnShape, spans: [AttnSpan], qkv: UnsafePointer<Float>, dqk: UnsafeMutablePointer<Float>,
                        dqkv: UnsafeMutablePointer<Float>, rstd: UnsafePointer<Float>, qNorm: UnsafePointer<Float>?,
                        kNorm: UnsafePointer<Float>?, dqNorm: UnsafeMutablePointer<Float>?, dkNorm: UnsafeMutablePointer<Float>?,
                        rope: RopeTable) {
    let heads = s.H + s.Hkv
    for span in spans {
        for i in 0..<span.count {
            let t = span.row + i, pos = span.pos0 + i
            for h in 0..<heads {
                let d = dqk + t * s.QK + h * s.D
                rope.applyBackward(d, pos: pos)
                if let qNorm, let kNorm, let dqNorm, let dkNorm {
                    rmsnormBackward(qkv + t * s.QKV + h * s.D, ldx: s.D, h < s.H ? qNorm : kNorm, rstd: rstd + t * heads + h,
                                    d, lddy: s.D, dqkv + t * s.QKV + h * s.D, lddx: s.D, h < s.H ? dqNorm : dkNorm,
                                    rows: 1, n: s.D, accumulate: false)
                } else {
                    (dqkv + t * s.QKV + h * s.D).update(from: d, count: s.D)
                }
            }
        }
    }
}

// MARK: causal attention

/// out[t, h] = softmax(q[t,h]·K[0...pos]ᵀ · scale) · V for every span and head; lse [T, H] saved.
/// q [T, ldq] with head h at column h·D; out [T, H·Dv]. `scratch` holds per worker [Bq, maxKeys].
/// `gemvDecode`: single query rows take `decodeAttention` (the deterministic mode keeps sgemm, so that its
/// outputs stay the bits they were).
func attentionForward(_ s: AttnShape, spans: [AttnSpan], q: UnsafePointer<Float>, ldq: Int,
                      out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                      scratch: UnsafeMutablePointer<Float>, scratchStride: Int, workers: Int, bf16: Bool,
                      gemvDecode: Bool = true) {
    let Bq = Workspace.blockRows
    let tasks = spans.count * s.H
    parallelFor(tasks, workers: workers) { task, worker in
        let span = spans[task / s.H], h = task % s.H, g = h / s.group
        let S = scratch + worker * scratchStride
        var i0 = 0
        while i0 < span.count {
            let nb = min(Bq, span.count - i0), nk = span.pos0 + i0 + nb
            let qb = q + (span.row + i0) * ldq + h * s.D
            if nb == 1 && gemvDecode {   // one query row (decode): dot products and a weighted sum, no sgemm packing
                decodeAttention(s, q: qb, k: span.k + g * s.D, ldk: span.ldk, v: span.v + g * s.Dv, ldv: span.ldv, keys: nk,
                                p: S, out: out + (span.row + i0) * s.HDv + h * s.Dv, lse: lse + (span.row + i0) * s.H + h, bf16: bf16)
                i0 += 1
                continue
            }
            sgemm(false, true, nb, nk, s.D, s.scale, qb, ldq, span.k + g * s.D, span.ldk, 0, S, nk)
            for r in 0..<nb {
                let row = S + r * nk, valid = span.pos0 + i0 + r + 1
                lse[(span.row + i0 + r) * s.H + h] = softmaxRow(row, valid)
                if valid < nk { (row + valid).update(repeating: 0, count: nk - valid) }
            }
            if bf16 { BF16.roundInPlace(S, nb * nk) }
            sgemm(false, false, nb, s.Dv, nk, 1, S, nk, span.v + g * s.Dv, span.ldv, 0, out + (span.row + i0) * s.HDv + h * s.Dv, s.HDv)
            i0 += nb
        }
    }
}

/// One query row against `keys` cached keys and values: p = softmax(scale · q·kⱼ), out = Σⱼ pⱼ vⱼ.
/// Scores take four keys at a time; the weighted sum keeps 32 output columns in registers over all keys.
@inline(__always)
func decodeAttention(_ s: AttnShape, q: UnsafePointer<Float>, k: UnsafePointer<Float>, ldk: Int, v: UnsafePointer<Float>, ldv: Int,
                     keys: Int, p: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>, bf16: Bool) {
    let D = s.D, D8 = D / 8 * 8
    let rq = UnsafeRawPointer(q)
    var j = 0
    while j + 4 <= keys {
        let k0 = UnsafeRawPointer(k + j * ldk), k1 = UnsafeRawPointer(k + (j + 1) * ldk)
        let k2 = UnsafeRawPointer(k + (j + 2) * ldk), k3 = UnsafeRawPointer(k + (j + 3) * ldk)
        var a0 = SIMD8<Float>(), a1 = SIMD8<Float>(), a2 = SIMD8<Float>(), a3 = SIMD8<Float>()
        var d = 0
        while d < D8 {
            let qv = rq.loadUnaligned(fromByteOffset: 4 * d, as: SIMD8<Float>.self)
            a0.addProduct(qv, k0.loadUnaligned(fromByteOffset: 4 * d, as: SIMD8<Float>.self))
            a1.addProduct(qv, k1.loadUnaligned(fromByteOffset: 4 * d, as: SIMD8<Float>.self))
            a2.addProduct(qv, k2.loadUnaligned(fromByteOffset: 4 * d, as: SIMD8<Float>.self))
            a3.addProduct(qv, k3.loadUnaligned(fromByteOffset: 4 * d, as: SIMD8<Float>.self))
            d += 8
        }
        var s0 = a0.sum(), s1 = a1.sum(), s2 = a2.sum(), s3 = a3.sum()
        while d < D {
            s0.addProduct(q[d], k[j * ldk + d]); s1.addProduct(q[d], k[(j + 1) * ldk + d])
            s2.addProduct(q[d], k[(j + 2) * ldk + d]); s3.addProduct(q[d], k[(j + 3) * ldk + d])
            d += 1
        }
        p[j] = s.scale * s0; p[j + 1] = s.scale * s1; p[j + 2] = s.scale * s2; p[j + 3] = s.scale * s3
        j += 4
    }
    while j < keys { p[j] = s.scale * dot(q, k + j * ldk, D); j += 1 }
    lse.pointee = softmaxRow(p, keys)
    if bf16 { BF16.roundInPlace(p, keys) }
    let Dv = s.Dv, D32 = Dv / 32 * 32
    var c = 0
    while c < D32 {
        var o0 = SIMD8<Float>(), o1 = SIMD8<Float>(), o2 = SIMD8<Float>(), o3 = SIMD8<Float>()
        for j in 0..<keys {
            let pj = SIMD8<Float>(repeating: p[j]), vr = UnsafeRawPointer(v + j * ldv + c)
            o0.addProduct(pj, vr.loadUnaligned(as: SIMD8<Float>.self))
            o1.addProduct(pj, vr.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self))
            o2.addProduct(pj, vr.loadUnaligned(fromByteOffset: 64, as: SIMD8<Float>.self))
            o3.addProduct(pj, vr.loadUnaligned(fromByteOffset: 96, as: SIMD8<Float>.self))
        }
        let ro = UnsafeMutableRawPointer(out + c)
        ro.storeBytes(of: o0, as: SIMD8<Float>.self); ro.storeBytes(of: o1, toByteOffset: 32, as: SIMD8<Float>.self)
        ro.storeBytes(of: o2, toByteOffset: 64, as: SIMD8<Float>.self); ro.storeBytes(of: o3, toByteOffset: 96, as: SIMD8<Float>.self)
        c += 32
    }
    while c < Dv {
        var acc: Float = 0
        for j in 0..<keys { acc.addProduct(p[j], v[j * ldv + c]) }
        out[c] = acc
        c += 1
    }
}

/// Backward of `attentionForward` for spans starting at position 0 whose keys/values are rows of the
/// same packed buffers. Writes dq (into dq, ldq), and dk, dv (overwritten, strides as the spans'
/// key/value strides, at the same offsets from dkBase/dvBase as k/v from kBase/vBase).
/// One task per (span, kv head), so the dk/dv accumulations of a task never meet another's.
func attentionBackward(_ s: AttnShape, spans: [AttnSpan], q: UnsafePointer<Float>, ldq: Int,
                       out: UnsafePointer<Float>, dout: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                       di: UnsafeMutablePointer<Float>, dq: UnsafeMutablePointer<Float>,
                       dk: (AttnSpan) -> UnsafeMutablePointer<Float>, dv: (AttnSpan) -> UnsafeMutablePointer<Float>,
                       scratch: UnsafeMutablePointer<Float>, scratchStride: Int, workers: Int) {
    let Bq = Workspace.blockRows
    let tasks = spans.count * s.Hkv
    parallelFor(tasks, workers: workers) { task, worker in
        let span = spans[task / s.Hkv], g = task % s.Hkv
        let P = scratch + worker * scratchStride, dP = P + Bq * span.count
        let kg = span.k + g * s.D, vg = span.v + g * s.Dv
        let dkg = dk(span) + g * s.D, dvg = dv(span) + g * s.Dv
        for t in 0..<span.count {
            (dkg + t * span.ldk).update(repeating: 0, count: s.D)
            (dvg + t * span.ldv).update(repeating: 0, count: s.Dv)
        }
        for h in (g * s.group)..<((g + 1) * s.group) {
            for t in span.row..<(span.row + span.count) {
                di[t * s.H + h] = dot(dout + t * s.HDv + h * s.Dv, out + t * s.HDv + h * s.Dv, s.Dv)
            }
            var i0 = 0
            while i0 < span.count {
                let nb = min(Bq, span.count - i0), nk = i0 + nb
                let r0 = span.row + i0
                attentionBackwardTile(s, h: h, rows: nb, firstRow: r0, diagonal: i0, keys: nk, q: q, ldq: ldq, dout: dout, lse: lse, di: di,
                                      dq: dq, dqBeta: 0, k: kg, v: vg, dk: dkg, dv: dvg, span: span, P: P, dP: dP, tiled: false)
                i0 += nb
            }
        }
    }
}

// MARK: tiled attention for training (FlashAttention-2's blocking on the CPU)

/// Tile sizes of the tiled training attention: query rows × key rows per score tile, forward and backward
/// each their own. A tile pair's products are sgemms of [Bq, Bk, D] and [Bq, Dv, Bk]; the tiles stay in L2
/// instead of streaming a [Bq, keys] score block through memory, and each key/value block is reused by every
/// query block of a span without the whole key range being repacked per query block.
/// Chosen with `r3 bench engine --cases sgemm_peak,attention_tiles --long-seq 16384 --rounds 3` (bench-m's
/// 8 × 64 heads, 2026-12-03, 2 cores): forward 110 GFLOP/s at 128 × 256, 122 at 256 × 256, 127–128 at
/// 512 × 256 and 512 × 512, 121 at 1,024 × 256 (larger query blocks repack each key block less often and
/// pay the sgemm's setup fewer times); backward 147–148 at 128 × 256 and 512 × 256, 137–142 at the others,
/// so it keeps the smaller tiles (two [Bq, Bk] buffers, 256 KB, in L2 on any x86 core).
struct AttnTiles: Sendable {
    var queryRows = 512
    var keyRows = 256
    var backwardQueryRows = 128
    var backwardKeyRows = 256
    init() {}
    /// The same sizes forward and backward.
    init(queryRows: Int, keyRows: Int) {
        self.queryRows = queryRows; self.keyRows = keyRows
        backwardQueryRows = queryRows; backwardKeyRows = keyRows
    }
    /// Floats of per-worker scratch the tiled forward and backward need.
    var scratchFloats: Int { max(queryRows * keyRows + 2 * queryRows, 2 * backwardQueryRows * backwardKeyRows) }
}

/// fp32 training forward, the same function as `attentionForward` with bf16 off, over key blocks with an
/// online softmax (running max and sum per row; the output rows rescaled as the max grows), so no score
/// block is wider than `AttnTiles.keyRows`. Spans start at position 0 (packed training sequences).
/// Scores are kept in log2 units (scale·log2(e) folded into the score product) for `exp2FMA`; rows that
/// see none of a key block (below the diagonal's first key) are left out of its products.
/// Writes out [T, H·Dv] and lse [T, H] (natural log) as `attentionForward` does.
func attentionForwardTiled(_ s: AttnShape, spans: [AttnSpan], q: UnsafePointer<Float>, ldq: Int,
                           out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>, tiles: AttnTiles,
                           scratch: UnsafeMutablePointer<Float>, scratchStride: Int, workers: Int) {
    let Bq = tiles.queryRows, Bk = tiles.keyRows
    precondition(scratchStride >= tiles.scratchFloats)
    // tasks: (span, head, query block), the largest (last) query blocks first
    var tasks: [(span: Int, h: Int, i0: Int)] = []
    for (si, span) in spans.enumerated() {
        precondition(span.pos0 == 0)
        var i0 = (span.count - 1) / Bq * Bq
        while i0 >= 0 { for h in 0..<s.H { tasks.append((si, h, i0)) }; i0 -= Bq }
    }
    tasks.sort { $0.i0 > $1.i0 }
    parallelFor(tasks.count, workers: workers) { task, worker in
        let (si, h, i0) = tasks[task]
        let span = spans[si], g = h / s.group
        let S = scratch + worker * scratchStride, m = S + Bq * Bk, l = m + Bq
        let nb = min(Bq, span.count - i0), nk = i0 + nb
        let qb = q + (span.row + i0) * ldq + h * s.D
        let ob = out + (span.row + i0) * s.HDv + h * s.Dv
        for r in 0..<nb { m[r] = -.infinity; l[r] = 0; (ob + r * s.HDv).update(repeating: 0, count: s.Dv) }
        var j0 = 0
        while j0 < nk {
            // rows above the block's first key see none of it: the products start at row r0
            let bk = min(Bk, nk - j0), r0 = max(0, j0 - i0), rows = nb - r0
            sgemm(false, true, rows, bk, s.D, s.log2Scale, qb + r0 * ldq, ldq, span.k + g * s.D + j0 * span.ldk, span.ldk, 0, S, bk)
            for r in r0..<nb {
                let row = S + (r - r0) * bk, valid = min(bk, i0 + r + 1 - j0)
                let mNew = max(m[r], rowMax(row, valid))
                let sum = exp2InPlace(row, valid, shift: mNew)
                if valid < bk { (row + valid).update(repeating: 0, count: bk - valid) }
                if m[r] != -.infinity && m[r] != mNew {
                    let alpha = exp2Scalar(m[r] - mNew)
                    l[r] *= alpha
                    let o = ob + r * s.HDv
                    for c in 0..<s.Dv { o[c] *= alpha }
                }
                l[r] += sum
                m[r] = mNew
            }
            sgemm(false, false, rows, s.Dv, bk, 1, S, bk, span.v + g * s.Dv + j0 * span.ldv, span.ldv, 1, ob + r0 * s.HDv, s.HDv)
            j0 += bk
        }
        for r in 0..<nb {
            let inv = 1 / l[r], o = ob + r * s.HDv
            for c in 0..<s.Dv { o[c] *= inv }
            // m is in log2 units; lse is stored in natural ones, as the one-pass forward stores it
            lse[(span.row + i0 + r) * s.H + h] = Float(Double(m[r]) * ln2 + _log(Double(l[r])))
        }
    }
}

/// Backward of `attentionForwardTiled` (and of `attentionForward` in fp32: the same function), in
/// FlashAttention-2's order: per (span, kv head), key blocks outside, query blocks from the diagonal down
/// inside. A key block's dK and dV rows take every query block's contribution while they are in cache;
/// probabilities come again from q, k and the saved lse, never from a [T, T] buffer. Same arguments as
/// `attentionBackward`.
func attentionBackwardTiled(_ s: AttnShape, spans: [AttnSpan], q: UnsafePointer<Float>, ldq: Int,
                            out: UnsafePointer<Float>, dout: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                            di: UnsafeMutablePointer<Float>, dq: UnsafeMutablePointer<Float>,
                            dk: (AttnSpan) -> UnsafeMutablePointer<Float>, dv: (AttnSpan) -> UnsafeMutablePointer<Float>,
                            tiles: AttnTiles, scratch: UnsafeMutablePointer<Float>, scratchStride: Int, workers: Int) {
    let Bq = tiles.backwardQueryRows, Bk = tiles.backwardKeyRows
    precondition(scratchStride >= tiles.scratchFloats)
    // D_i = rowsum(dO ∘ O) per row and head, and dq zeroed: every key block adds to it
    for span in spans {
        parallelFor(s.H, workers: workers) { h in
            for t in span.row..<(span.row + span.count) {
                di[t * s.H + h] = dot(dout + t * s.HDv + h * s.Dv, out + t * s.HDv + h * s.Dv, s.Dv)
                (dq + t * ldq + h * s.D).update(repeating: 0, count: s.D)
            }
        }
    }
    // tasks: (span, kv head, key block); a key block's dK/dV rows belong to one task, but dq rows are
    // shared by every key block of a head, so the tasks of one (span, kv head) run in one worker
    let tasks = spans.count * s.Hkv
    parallelFor(tasks, workers: workers) { task, worker in
        let span = spans[task / s.Hkv], g = task % s.Hkv
        let P = scratch + worker * scratchStride, dP = P + Bq * Bk
        let kg = span.k + g * s.D, vg = span.v + g * s.Dv
        let dkg = dk(span) + g * s.D, dvg = dv(span) + g * s.Dv
        for t in 0..<span.count {
            (dkg + t * span.ldk).update(repeating: 0, count: s.D)
            (dvg + t * span.ldv).update(repeating: 0, count: s.Dv)
        }
        var j0 = 0
        while j0 < span.count {
            let bk = min(Bk, span.count - j0)
            let kb = kg + j0 * span.ldk, vb = vg + j0 * span.ldv
            let dkb = dkg + j0 * span.ldk, dvb = dvg + j0 * span.ldv
            for h in (g * s.group)..<((g + 1) * s.group) {
                var i0 = j0
                while i0 < span.count {
                    // a query block near the diagonal sees only the block's first i0 - j0 + nb keys
                    let nb = min(Bq, span.count - i0), seen = min(bk, i0 - j0 + nb)
                    attentionBackwardTile(s, h: h, rows: nb, firstRow: span.row + i0, diagonal: i0 - j0, keys: seen, q: q, ldq: ldq, dout: dout,
                                          lse: lse, di: di, dq: dq, dqBeta: 1, k: kb, v: vb, dk: dkb, dv: dvb, span: span, P: P, dP: dP, tiled: true)
                    i0 += nb
                }
            }
            j0 += bk
        }
    }
}

/// One (query block, key block) pair of attention's backward for head h: P = exp(scale·q·kᵀ − lse) with
/// query row r seeing keys 0...diagonal + r of the block, dV += Pᵀ·dO, dS = P ∘ (dO·Vᵀ − D),
/// dQ = dqBeta·dQ + scale·dS·K, dK += scale·dSᵀ·q. `k`, `v`, `dk`, `dv` point at the block's first key row
/// (kv head applied, strides the span's); P and dP are [rows, keys] scratch. `tiled`: the tiled path's
/// exp, scores in log2 units through `exp2FMA` (lse converted per row); the one-pass path keeps
/// `expApprox`'s bits.
@inline(__always)
func attentionBackwardTile(_ s: AttnShape, h: Int, rows nb: Int, firstRow r0: Int, diagonal: Int, keys bk: Int,
                           q: UnsafePointer<Float>, ldq: Int, dout: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                           di: UnsafePointer<Float>, dq: UnsafeMutablePointer<Float>, dqBeta: Float,
                           k: UnsafePointer<Float>, v: UnsafePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                           span: AttnSpan, P: UnsafeMutablePointer<Float>, dP: UnsafeMutablePointer<Float>, tiled: Bool) {
    let qb = q + r0 * ldq + h * s.D, dob = dout + r0 * s.HDv + h * s.Dv
    sgemm(false, true, nb, bk, s.D, tiled ? s.log2Scale : s.scale, qb, ldq, k, span.ldk, 0, P, bk)
    for r in 0..<nb {
        let row = P + r * bk, valid = min(bk, diagonal + r + 1), l = lse[(r0 + r) * s.H + h]
        if tiled { exp2InPlace(row, valid, shift: Float(Double(l) * log2e)) } else { expInPlace(row, valid, shift: l) }
        if valid < bk { (row + valid).update(repeating: 0, count: bk - valid) }
    }
    sgemm(true, false, bk, s.Dv, nb, 1, P, bk, dob, s.HDv, 1, dv, span.ldv)
    sgemm(false, true, nb, bk, s.Dv, 1, dob, s.HDv, v, span.ldv, 0, dP, bk)
    for r in 0..<nb {
        let p = P + r * bk, d = dP + r * bk, dr = di[(r0 + r) * s.H + h]
        for j in 0..<bk { d[j] = p[j] * (d[j] - dr) }
    }
    sgemm(false, false, nb, s.D, bk, s.scale, dP, bk, k, span.ldk, dqBeta, dq + r0 * ldq + h * s.D, ldq)
    sgemm(true, false, bk, s.D, nb, s.scale, dP, bk, qb, ldq, 1, dk, span.ldk)
}
