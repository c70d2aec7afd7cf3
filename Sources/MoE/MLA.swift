// MLA: DeepSeek-V3's multi-head latent attention projections, forward and backward side by side. They
// produce what the shared attention core (Attention.swift) takes: per head q = [q_nope, rope(q_rope)] and
// k = [k_nope, rope(k_rope)] of width Dn + Dr, with one k_rope shared by every head, and v of width Dv.
//
//   q    = q_b_proj(RMSNorm_1e-6(q_a_proj(h)))            (or q_proj(h) when q_lora_rank is null)
//   kva  = kv_a_proj_with_mqa(h) = [c_kv (Rkv), k_rope (Dr)]
//   kvb  = kv_b_proj(RMSNorm_1e-6(c_kv)) = per head [k_nope (Dn), v (Dv)]
// RoPE is interleaved (pairs 2i, 2i+1) on the rope parts only; the softmax scale is (Dn + Dr)^-1/2.
// Reference: transformers models/deepseek_v3/modeling_deepseek_v3.py, DeepseekV3Attention.

/// The latent RMSNorms use eps 1e-6 whatever rms_norm_eps says (DeepseekV3RMSNorm's default in HF).
let mlaNormEps: Float = 1e-6

struct MLAShape {
    let m: MLAConfig
    let H, C: Int
    var Dq: Int { m.qkDim }
    var Rq: Int { m.qLoraRank }
    var R: Int { m.kvLoraRank }
    var KVA: Int { m.kvLoraRank + m.ropeDim }   // kv_a_proj_with_mqa row
    var KVB: Int { m.nopeDim + m.vDim }         // kv_b_proj row per head
    var QW: Int { H * m.qkDim }                 // q row
}

/// Fills a.qk (q heads, then k heads, [T, 2·H·Dq]) and a.v ([T, H·Dv]) from a.h1 for every span row.
func mlaForward(_ s: AttnShape, _ ms: MLAShape, spans: [AttnSpan], ctx: GemmContext, W: UnsafePointer<Float>, p: LayerParams,
                a: LayerActs, T: Int, rope: RopeTable, bf16: Bool, input: InputRounding, scratch: UnsafeMutablePointer<Float>) {
    let m = ms.m, C = ms.C, H = ms.H, Dq = ms.Dq, Dn = m.nopeDim, Dr = m.ropeDim, Dv = m.vDim
    if ms.Rq > 0 {
        ctx.linear(T, ms.Rq, C, a.h1, C, W + p.qA, 0, a.qa, ms.Rq, scratch: scratch)
        rmsnormForward(a.qa, ldx: ms.Rq, W + p.qANorm, a.qan, ldy: ms.Rq, rstd: a.qaRstd, rows: T, n: ms.Rq, eps: mlaNormEps)
        input(a.qan, rows: T, cols: ms.Rq)
        ctx.linear(T, ms.QW, ms.Rq, a.qan, ms.Rq, W + p.qProj, 0, a.qkv, ms.QW, scratch: scratch)
    } else {
        ctx.linear(T, ms.QW, C, a.h1, C, W + p.qProj, 0, a.qkv, ms.QW, scratch: scratch)
    }
    ctx.linear(T, ms.KVA, C, a.h1, C, W + p.kvA, 0, a.kva, ms.KVA, scratch: scratch)
    rmsnormForward(a.kva, ldx: ms.KVA, W + p.kvANorm, a.kvn, ldy: ms.R, rstd: a.kvRstd, rows: T, n: ms.R, eps: mlaNormEps)
    input(a.kvn, rows: T, cols: ms.R)
    ctx.linear(T, H * ms.KVB, ms.R, a.kvn, ms.R, W + p.kvB, 0, a.kvb, H * ms.KVB, scratch: scratch)
    for span in spans {
        for i in 0..<span.count {
            let t = span.row + i, pos = span.pos0 + i
            let qRow = a.qk + t * s.QK, kRow = qRow + s.HD
            // the shared k_rope, rotated once into head 0's rope part, then copied to every head
            (kRow + Dn).update(from: a.kva + t * ms.KVA + ms.R, count: Dr)
            rope.applyInterleaved(kRow + Dn, pos: pos)
            for h in 0..<H {
                (qRow + h * Dq).update(from: a.qkv + t * ms.QW + h * Dq, count: Dq)
                rope.applyInterleaved(qRow + h * Dq + Dn, pos: pos)
                let src = a.kvb + t * H * ms.KVB + h * ms.KVB
                (kRow + h * Dq).update(from: src, count: Dn)
                if h > 0 { (kRow + h * Dq + Dn).update(from: kRow + Dn, count: Dr) }
                (a.v + t * H * Dv + h * Dv).update(from: src + Dn, count: Dv)
            }
        }
    }
    if bf16 {
        BF16.roundInPlace(a.qk, T * s.QK)
        BF16.roundInPlace(a.v, T * s.HDv)
    }
}

/// Scratch of `mlaBackward`, carved from the workspace.
struct MLAGrads {
    var dqan, dqa, dkvb, dkvn, dkva: UnsafeMutablePointer<Float>
}

/// From dqk (gradients at the rotated q and k, as attentionBackward leaves them) and dv, writes dh
/// (overwritten) and accumulates the projections' and latent norms' gradients. dqk is overwritten.
func mlaBackward(_ s: AttnShape, _ ms: MLAShape, spans: [AttnSpan], ctx: GemmContext, W: UnsafePointer<Float>,
                 G: UnsafeMutablePointer<Float>, p: LayerParams, a: LayerActs, T: Int, rope: RopeTable,
                 dqk: UnsafeMutablePointer<Float>, dv: UnsafePointer<Float>, dq: UnsafeMutablePointer<Float>,
                 g: MLAGrads, dh: UnsafeMutablePointer<Float>) {
    let m = ms.m, C = ms.C, H = ms.H, Dq = ms.Dq, Dn = m.nopeDim, Dr = m.ropeDim, Dv = m.vDim
    for span in spans {
        for i in 0..<span.count {
            let t = span.row + i, pos = span.pos0 + i
            let dqRow = dqk + t * s.QK, dkRow = dqRow + s.HD
            let dkva = g.dkva + t * ms.KVA + ms.R
            dkva.update(repeating: 0, count: Dr)
            for h in 0..<H {
                rope.applyInterleavedBackward(dqRow + h * Dq + Dn, pos: pos)
                (dq + t * ms.QW + h * Dq).update(from: dqRow + h * Dq, count: Dq)
                let dst = g.dkvb + t * H * ms.KVB + h * ms.KVB
                dst.update(from: dkRow + h * Dq, count: Dn)
                axpy(1, dkRow + h * Dq + Dn, dkva, Dr)
                (dst + Dn).update(from: dv + t * H * Dv + h * Dv, count: Dv)
            }
            rope.applyInterleavedBackward(dkva, pos: pos)
        }
    }
    // q path
    if ms.Rq > 0 {
        ctx.gemm(true, false, ms.QW, ms.Rq, T, 1, dq, ms.QW, a.qan, ms.Rq, 1, G + p.qProj, ms.Rq)
        ctx.gemm(false, false, T, ms.Rq, ms.QW, 1, dq, ms.QW, W + p.qProj, ms.Rq, 0, g.dqan, ms.Rq)
        rmsnormBackward(a.qa, ldx: ms.Rq, W + p.qANorm, rstd: a.qaRstd, g.dqan, lddy: ms.Rq, g.dqa, lddx: ms.Rq, G + p.qANorm,
                        rows: T, n: ms.Rq, accumulate: false)
        ctx.gemm(true, false, ms.Rq, C, T, 1, g.dqa, ms.Rq, a.h1, C, 1, G + p.qA, C)
        ctx.gemm(false, false, T, C, ms.Rq, 1, g.dqa, ms.Rq, W + p.qA, C, 0, dh, C)
    } else {
        ctx.gemm(true, false, ms.QW, C, T, 1, dq, ms.QW, a.h1, C, 1, G + p.qProj, C)
        ctx.gemm(false, false, T, C, ms.QW, 1, dq, ms.QW, W + p.qProj, C, 0, dh, C)
    }
    // kv path
    ctx.gemm(true, false, H * ms.KVB, ms.R, T, 1, g.dkvb, H * ms.KVB, a.kvn, ms.R, 1, G + p.kvB, ms.R)
    ctx.gemm(false, false, T, ms.R, H * ms.KVB, 1, g.dkvb, H * ms.KVB, W + p.kvB, ms.R, 0, g.dkvn, ms.R)
    rmsnormBackward(a.kva, ldx: ms.KVA, W + p.kvANorm, rstd: a.kvRstd, g.dkvn, lddy: ms.R, g.dkva, lddx: ms.KVA, G + p.kvANorm,
                    rows: T, n: ms.R, accumulate: false)
    ctx.gemm(true, false, ms.KVA, C, T, 1, g.dkva, ms.KVA, a.h1, C, 1, G + p.kvA, C)
    ctx.gemm(false, false, T, C, ms.KVA, 1, g.dkva, ms.KVA, W + p.kvA, C, 1, dh, C)
}
